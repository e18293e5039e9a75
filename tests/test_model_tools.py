"""The model tools (quantize, evaluate, train): arguments refused before any work, model
files refused in one line, and nothing broken left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import convstream.model.export as export_module
import convstream.model.quantize as quantize_module
import convstream.model.train as train_module
from convstream.model import MODEL_PATH, DamageModel, ModelFileError
from convstream.model.evaluate import Metrics
from convstream.model.evaluate import main as evaluate_main
from convstream.model.quantize import main as quantize_main
from convstream.model.quantize import quantize
from convstream.v1 import shortest_float32


def refused(run: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a tool's main prints when it refuses argv with exit status 2."""
    with pytest.raises(SystemExit) as done:
        run(argv)  # type: ignore[operator]
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    return err


@pytest.fixture(scope="module")
def int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("int8")
    target = folder / "damage.int8.onnx"
    quantize(MODEL_PATH, target, calibration=2)
    assert list(folder.iterdir()) == [target]  # no temporary file left beside it
    return target


def test_quantize_refuses_an_out_that_would_lose_a_file_or_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "damage.onnx"
    source.write_bytes(MODEL_PATH.read_bytes())
    args = ["--model", str(source), "--calibration", "1", "--images", "10", "--out"]
    err = refused(quantize_main, [*args, str(source)], capsys)
    assert f"--out {source} is --model: expected another file" in err
    (tmp_path / "same").symlink_to(source)
    assert "is --model" in refused(quantize_main, [*args, str(tmp_path / "same")], capsys)
    assert source.read_bytes() == MODEL_PATH.read_bytes()
    err = refused(quantize_main, [*args, str(tmp_path)], capsys)
    assert f"--out {tmp_path} is a folder; expected a file to write" in err
    err = refused(quantize_main, [*args, str(tmp_path / "missing" / "q.onnx")], capsys)
    assert f"there is no folder {tmp_path / 'missing'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damage.onnx", "same"]


def test_quantize_refuses_a_quantized_model_before_calibrating(
    int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_to_calibrate(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibrated an int8 model")

    monkeypatch.setattr(quantize_module, "quantize_static", not_to_calibrate)
    out = tmp_path / "twice.onnx"
    err = refused(quantize_main, ["--model", str(int8), "--out", str(out)], capsys)
    assert f"{int8} is already quantized (it has DequantizeLinear, QuantizeLinear nodes)" in err
    assert not out.exists()


def test_quantize_leaves_no_broken_file_and_keeps_the_one_it_would_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(prepared: str, written: str, *args: object, **kwargs: object) -> None:
        model = onnx.load(prepared)
        del model.graph.output[-1]  # no score: not a model the server takes
        onnx.save(model, written)

    monkeypatch.setattr(quantize_module, "quantize_static", broken)
    target = tmp_path / "damage.int8.onnx"
    target.write_text("the earlier one")
    with pytest.raises(ModelFileError, match="is not a convstream damage model"):
        quantize(MODEL_PATH, target, calibration=1)
    assert target.read_text() == "the earlier one"
    assert list(tmp_path.iterdir()) == [target]
    err = refused(quantize_main, ["--out", str(target), "--calibration", "1"], capsys)
    assert "is not a convstream damage model" in err and "nothing was written" in err
    assert "the int8 copy of " in err and ".tmp.onnx" not in err  # not --model's fault
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("height", ["16", "0", "-5"])
def test_evaluate_refuses_a_size_it_cannot_render(
    height: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(evaluate_main, ["--images", "10", "--height", height], capsys)
    assert (
        f"--height and --width must be at least 32 (the smallest scene rendered), got {height}x256"
        in err
    )


def test_evaluate_refuses_a_model_the_server_would_refuse_in_one_line(
    int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = onnx.load(str(MODEL_PATH))
    for dim in fixed.graph.input[0].type.tensor_type.shape.dim[1:3]:
        dim.dim_value = 224
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    err = refused(
        evaluate_main, ["--images", "10", "--model", str(tmp_path / "fixed.onnx")], capsys
    )
    assert "--model: " in err and "its input is fixed at 224x224" in err
    assert "evaluate runs 256x256 here" in err and "set --height and --width to 224x224" in err
    assert "input_sizes" not in err  # the server's setting, not this command's
    bad = onnx.load(str(MODEL_PATH))
    for prop in bad.metadata_props:
        if prop.key == "threshold":
            prop.value = "high"
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    err = refused(evaluate_main, ["--images", "10", "--model", str(tmp_path / "bad.onnx")], capsys)
    assert "metadata's threshold is 'high'" in err
    # the int8 variant is a model like any other
    assert DamageModel(int8, provider="cpu").stages == DamageModel(provider="cpu").stages


def test_train_writes_the_threshold_the_model_file_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Everything but the bookkeeping made small: one pair, one step, scores whose best
    # threshold has more decimals than the file's metadata keeps.
    scores = np.array([0.1234567891, 0.6452201008796692, 0.9])
    labels = np.array([False, True, True])
    monkeypatch.setattr(export_module, "render_scene", lambda *a, **k: None)
    monkeypatch.setattr(export_module, "score_scenes", lambda model, scenes: (scores, labels, []))
    monkeypatch.setattr(
        train_module,
        "evaluate",
        # as evaluate says it: the float32 the server compares, in its shortest decimal
        lambda model, seeds, size=(256, 256): Metrics(
            10, 5, 0.9, 0.9, 0.9, shortest_float32(model.threshold)
        ),
    )
    monkeypatch.setattr(train_module, "latency_ms", lambda model, size: 1.0)
    report = train_module.train(tmp_path, scenes=1, steps=1, batch=2, precision="fp32")
    written = json.loads((tmp_path / "damage.metrics.json").read_text())
    kept = {p.key: p.value for p in onnx.load(str(tmp_path / "damage.onnx")).metadata_props}
    assert kept["threshold"] == "0.645220"
    assert written["threshold"] == report["threshold"] == float(kept["threshold"])
    assert written["held_out_256x256"]["threshold"] == written["threshold"]
