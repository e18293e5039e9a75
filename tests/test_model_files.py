"""Model files the server is given: what it refuses, in one line, before it serves.

Each bad model is the shipped one edited with the onnx package (its input's shape, an output
reshaped, its metadata), so every other part of it is a model that works.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from conftest import jpeg, scene
from onnx import TensorProto, helper

from convstream.cli import main
from convstream.model import MODEL_PATH, OUTPUT_NAMES, DamageModel, ModelFileError, ModelInputError
from convstream.server import Server, Settings
from convstream.server.config import CameraConfig, ConfigError
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

SERVER_SIZES = [(384, 640), (480, 640), (384, 384), (256, 256)]


def edited(path: Path, change: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(MODEL_PATH))
    change(model)
    onnx.save(model, str(path))
    return path


def metadata(**values: str | None) -> Callable[[onnx.ModelProto], None]:
    """Set metadata entries; None removes one."""

    def change(model: onnx.ModelProto) -> None:
        meta = {p.key: p.value for p in model.metadata_props}
        meta.update(values)
        del model.metadata_props[:]
        for key, value in meta.items():
            if value is not None:
                model.metadata_props.add(key=key, value=value)

    return change


def no_metadata(model: onnx.ModelProto) -> None:
    del model.metadata_props[:]


def input_shape(*dims: int | str) -> Callable[[onnx.ModelProto], None]:
    """The input declared with these dims: a number fixes one, a name leaves it free."""

    def change(model: onnx.ModelProto) -> None:
        shape = model.graph.input[0].type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            if isinstance(d, int):
                shape.dim.add().dim_value = d
            else:
                shape.dim.add().dim_param = d

    return change


def only_names(*dims: int | str) -> Callable[[onnx.ModelProto], None]:
    """A graph that has the model's input (uint8, with these dims) and outputs by name and
    nothing else, for inputs onnxruntime would not even load into the shipped graph."""

    def change(model: onnx.ModelProto) -> None:
        nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT)]
        nodes += [helper.make_node("Identity", ["f"], [name]) for name in OUTPUT_NAMES]
        graph = helper.make_graph(
            nodes,
            "names",
            [helper.make_tensor_value_info("pixels", TensorProto.UINT8, list(dims))],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in OUTPUT_NAMES],
        )
        model.graph.CopyFrom(graph)

    return change


def reshaped(output: str, op: str, **attributes: object) -> Callable[[onnx.ModelProto], None]:
    """Output produced as before, then passed through op (axes [1] where op takes axes)."""

    def change(model: onnx.ModelProto) -> None:
        graph = model.graph
        raw = f"{output}_raw"
        for node in graph.node:
            node.input[:] = [raw if x == output else x for x in node.input]
            node.output[:] = [raw if x == output else x for x in node.output]
        inputs = [raw]
        if op in ("Squeeze", "Unsqueeze"):
            graph.initializer.append(helper.make_tensor("axis_1", TensorProto.INT64, [1], [1]))
            inputs.append("axis_1")
        graph.node.append(helper.make_node(op, inputs, [output], **attributes))
        for value in graph.output:
            if value.name == output:
                value.type.tensor_type.ClearField("shape")

    return change


def dropped(name: str) -> Callable[[onnx.ModelProto], None]:
    """The output `name` no longer an output of the graph."""

    def change(model: onnx.ModelProto) -> None:
        kept = [o for o in model.graph.output if o.name != name]
        del model.graph.output[:]
        model.graph.output.extend(kept)

    return change


def stages_with(name: str, channels: int, stride: int) -> str:
    stages = json.loads(onnx_metadata()["stages"])
    for stage in stages:
        if stage["name"] == name:
            stage.update(channels=channels, stride=stride)
    return json.dumps(stages)


def onnx_metadata() -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(MODEL_PATH)).metadata_props}


@pytest.fixture(scope="module")
def shipped() -> DamageModel:
    return DamageModel(provider="cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            metadata(threshold="high"),
            "metadata's threshold is 'high'; expected a score from 0 to 1",
        ),
        (metadata(threshold="1.5"), "threshold is '1.5'; expected a score from 0 to 1"),
        (metadata(threshold="nan"), "threshold is 'nan'"),
        (metadata(stages="not json"), "metadata's stages is 'not json'; expected a JSON list"),
        (metadata(stages='[{"name": "stage3"}]'), "naming stage1, stage2, stage3, stage4 once"),
        (metadata(stages=stages_with("stage1", 16, 0)), "whole numbers"),
        (metadata(heatmap_stride="eight"), "heatmap_stride is 'eight'; expected input pixels"),
        # metadata that parses but says what the outputs are not
        (
            metadata(stages=stages_with("stage3", 32, 4)),
            r"output stage3 has shape \(1, 64, 8, 12\); expected \(1, 32, 16, 24\) "
            r"\(its metadata's stage3 32 channels at stride 4\)",
        ),
        (
            metadata(heatmap_stride="16"),
            r"output heatmap has shape \(1, 1, 8, 12\); expected \(1, 1, 4, 6\)",
        ),
        # outputs of the wrong shape: every frame would fail, or be read wrong
        (reshaped("score", "Unsqueeze"), r"output score has shape \(1, 1\); expected \(1,\)"),
        (
            reshaped("heatmap", "Squeeze"),
            r"output heatmap has shape \(1, 8, 12\); expected \(1, 1, 8, 12\)",
        ),
        (
            reshaped("heatmap", "MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
            r"output heatmap has shape \(1, 1, 4, 6\); expected \(1, 1, 8, 12\) "
            r"\(one channel at heatmap_stride 8 in its metadata\)",
        ),
        # an input the server cannot feed
        (
            input_shape("batch", 3, "height", "width"),
            r"\(batch, 3, height, width\) \(channels first\)",
        ),
        (
            only_names("batch", "height", "width", 4),
            r"\(batch, height, width, 4\); expected \(N, H, W, 3\)",
        ),
        (only_names("batch", "height", "width"), r"has shape \(batch, height, width\); expected"),
    ],
)
def test_a_model_file_that_cannot_be_right_is_refused_at_load_in_one_line(
    tmp_path: Path, change: Callable[[onnx.ModelProto], None], message: str
) -> None:
    path = edited(tmp_path / "bad.onnx", change)
    with pytest.raises(ModelFileError, match=message) as refused:
        DamageModel(path, provider="cpu")
    assert str(refused.value).startswith(f"{path}: ") and "\n" not in str(refused.value)


def test_a_model_without_an_output_the_server_reads_names_it(tmp_path: Path) -> None:
    path = edited(tmp_path / "three-stages.onnx", dropped("stage4"))
    with pytest.raises(ModelFileError) as refused:
        DamageModel(path, provider="cpu")
    assert str(refused.value).startswith(f"{path} is not a convstream damage model: expected")
    assert str(refused.value).endswith("outputs heatmap, score, stage1, stage2, stage3 (no stage4)")


def scaled(name: str, factor: float) -> Callable[[onnx.ModelProto], None]:
    """The output `name` multiplied by factor: a model that gives logits, or percentages."""

    def change(model: onnx.ModelProto) -> None:
        for node in model.graph.node:
            node.output[:] = [f"{name}_raw" if o == name else o for o in node.output]
            node.input[:] = [f"{name}_raw" if i == name else i for i in node.input]
        factor_name = f"{name}_factor"
        model.graph.initializer.append(
            helper.make_tensor(factor_name, TensorProto.FLOAT, [], [factor])
        )
        model.graph.node.append(helper.make_node("Mul", [f"{name}_raw", factor_name], [name]))

    return change


@pytest.mark.parametrize(("output", "factor"), [("score", -50.0), ("heatmap", -10.0)])
def test_a_model_whose_score_or_heatmap_is_no_probability_is_refused(
    tmp_path: Path, output: str, factor: float
) -> None:
    """Logits (or percentages) where probabilities belong: the threshold in [0, 1] would never
    (or always) call a frame damaged, so such a model is refused as it loads, saying why."""
    path = edited(tmp_path / "logits.onnx", scaled(output, factor))
    with pytest.raises(ModelFileError, match=rf"its {output} for 1 black frame") as refused:
        DamageModel(path, provider="cpu")
    assert "expected probabilities in [0, 1]" in str(refused.value)


def test_weights_kept_in_a_file_of_their_own_are_found_beside_the_model(
    tmp_path: Path, shipped: DamageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's exporter keeps weights in ``model.onnx.data`` beside the model; they are read
    from there whatever the server's working directory (under systemd, usually /)."""
    folder = tmp_path / "models"
    folder.mkdir()
    model = onnx.load(str(MODEL_PATH))
    path = folder / "external.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        location="external.onnx.data",
        size_threshold=0,
    )
    assert (folder / "external.onnx.data").stat().st_size > 500_000  # the weights are there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = DamageModel(path, provider="cpu")
    frame = np.random.default_rng(5).integers(0, 256, (1, 256, 256, 3), np.uint8)
    np.testing.assert_allclose(
        loaded.run(frame)["heatmap"], shipped.run(frame)["heatmap"], atol=1e-5
    )
    # copied without them: said where they were looked for, and what to do
    (folder / "external.onnx.data").rename(elsewhere / "external.onnx.data")
    with pytest.raises(ModelFileError) as refused:
        DamageModel(path, provider="cpu")
    assert (
        f"its weights are kept in a file of their own, read from beside the model, in {folder}: "
        "copy that file there too, or export with external_data=False for one file"
    ) in str(refused.value)


def test_without_metadata_stages_and_stride_come_from_the_outputs_and_the_threshold_is_warned(
    tmp_path: Path,
    shipped: DamageModel,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with caplog.at_level(logging.WARNING, "convstream.model.runtime"):
        model = DamageModel(edited(tmp_path / "bare.onnx", no_metadata), provider="cpu")
        DamageModel(model.path, provider="cpu")  # as the server loads its wide model: once
    assert model.stages == shipped.stages  # so `--maps stage3` finds its map
    assert model.heatmap_stride == shipped.heatmap_stride == 8
    assert model.threshold == model.own_threshold == 0.5
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "no threshold in its metadata: 0.5 is used" in warning
    assert "the server's threshold setting" in warning
    model.warm_up(SERVER_SIZES)
    # --check-config does not call 0.5 the model's own threshold
    assert main(["serve", "--no-cameras", "--check-config", "--model", str(model.path)]) == 0
    said = capsys.readouterr().out
    assert re.search(r"threshold +0\.5 \(a default: the model has none\)", said), said
    # nor does GetModelInfo, which `convstream info` and the dashboard read
    from convstream.server.app import threshold_source

    assert threshold_source(Settings(), model) == "default"
    assert threshold_source(Settings(threshold=0.7), model) == "setting"
    # the shipped model's own metadata is read as before, with nothing to warn of
    caplog.clear()
    with caplog.at_level(logging.WARNING, "convstream.model.runtime"):
        again = DamageModel(provider="cpu")
    assert not caplog.records and again.own_threshold == float(onnx_metadata()["threshold"])
    assert again.threshold == float(np.float32(again.own_threshold))  # as results carry it


@pytest.mark.parametrize("fixed_batch", [0, 8])
def test_the_shipped_model_passes_the_warm_up_checks_at_the_servers_sizes(
    fixed_batch: int,
) -> None:
    model = DamageModel(provider="cpu", fixed_batch=fixed_batch)
    model.warm_up(SERVER_SIZES)


def test_a_fixed_input_size_is_named_with_the_servers_sizes_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DamageModel(edited(tmp_path / "fixed.onnx", input_shape("n", 224, 224, 3)))
    model.warm_up([(224, 224)])  # the size it takes is fine

    def not_to_run(*args: object) -> None:
        raise AssertionError("ran the model at a size its input does not take")

    monkeypatch.setattr(model, "run", not_to_run)
    with pytest.raises(ModelFileError) as refused:
        model.warm_up([(384, 640), (224, 224), (480, 640)])
    assert str(refused.value) == (
        f"{model.path}: its input is fixed at 224x224; the server runs 384x640, 480x640 "
        "(input_sizes and the cameras' input_size): export with dynamic height and width, "
        "or set input_sizes to 224x224"
    )
    monkeypatch.undo()
    with pytest.raises(ModelInputError, match="fixed at 224x224, got 256x256"):
        model.run(np.zeros((1, 256, 256, 3), np.uint8))


def test_a_fixed_batch_is_named_when_the_server_would_run_others(tmp_path: Path) -> None:
    path = edited(tmp_path / "one.onnx", input_shape(1, "h", "w", 3))
    DamageModel(path).warm_up(SERVER_SIZES)  # one frame at a time: what a CPU server runs
    with pytest.raises(ModelFileError, match="takes batches of exactly 1 frames; the server runs"):
        DamageModel(path, fixed_batch=8).warm_up(SERVER_SIZES)
    with pytest.raises(ModelInputError, match="batches of exactly 1 frames, got 2"):
        DamageModel(path).run(np.zeros((2, 64, 64, 3), np.uint8))
    # a server that batches frames (max_batch) without padding: said at start, not per batch
    with pytest.raises(
        ModelFileError, match=r"runs batches of 1 to 4 \(max_batch\).*max_batch = 1"
    ):
        DamageModel(path).warm_up(SERVER_SIZES, max_batch=4)


def test_warm_up_checks_the_output_shapes_at_each_size(
    shipped: DamageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DamageModel(provider="cpu")
    real = model.run

    def odd_heatmap(pixels: np.ndarray, outputs: object = None) -> dict[str, np.ndarray]:
        out = real(pixels)
        if pixels.shape[1:3] == (480, 640):  # a model whose heatmap is cut at some sizes
            out["heatmap"] = out["heatmap"][:, :, :-1]
        return out

    monkeypatch.setattr(model, "run", odd_heatmap)
    model.warm_up([(384, 640)])
    with pytest.raises(
        ModelFileError, match=r"480x640 its output heatmap has shape \(1, 1, 59, 80\); expected"
    ):
        model.warm_up(SERVER_SIZES)


def test_check_config_and_serve_refuse_a_fixed_size_model_alike_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = edited(tmp_path / "fixed.onnx", input_shape("n", 224, 224, 3))
    expected = (
        f"convstream serve: model_path: {path}: its input is fixed at 224x224; the server runs "
        "384x640, 480x640, 384x384 (input_sizes and the cameras' input_size): export with "
        "dynamic height and width, or set input_sizes to 224x224\n"
    )
    assert main(["serve", "--no-cameras", "--check-config", "--model", str(path)]) == 2
    assert capsys.readouterr().err == expected
    # serve itself, in its own process: one line and exit 2, no onnxruntime traceback
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "convstream.cli", "serve", "--no-cameras", "--host"]
    command += ["127.0.0.1", "--port", "0", "--metrics-port", "-1", "--model", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.endswith(expected), done.stderr
    # and with the size it takes, the config is fine
    config = tmp_path / "server.toml"
    config.write_text(f'model_path = "{path}"\ninput_sizes = ["224x224"]\n')
    assert main(["serve", "--no-cameras", "--check-config", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("config OK")


def nan_when_lit(model: onnx.ModelProto) -> None:
    """The score plus sqrt(-mean pixel): itself for a black frame (all the load checks run),
    NaN for any other, as a float16 model that overflows on real frames would give."""
    for node in model.graph.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
    model.graph.node.extend(
        [
            helper.make_node("Cast", ["pixels"], ["lit"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["lit"], ["lit_mean"], keepdims=0),
            helper.make_node("Neg", ["lit_mean"], ["lit_neg"]),
            helper.make_node("Sqrt", ["lit_neg"], ["lit_nan"]),
            helper.make_node("Add", ["score_raw", "lit_nan"], ["score"]),
        ]
    )


async def test_a_frame_the_model_scores_nan_fails_alone_and_never_reads_intact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A NaN score was served as ok, "damaged": false, with a made-up peak: a broken model
    read as an all-clear. Each such frame now fails with INTERNAL saying what the model gave,
    its stream goes on, and the log says it once, not at every frame."""
    path = edited(tmp_path / "nan.onnx", nan_when_lit)
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=10")
    server = Server(Settings(port=0, metrics_port=-1, cameras=(belt,), model_path=path))
    await server.start()
    expected = (
        "the model gave a score of nan for this frame; expected probabilities in [0, 1]: this "
        "frame has no score"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            frame = pb.FrameRequest(frame_id=1, encoded=jpeg(scene(3, 240, 320)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Analyze(frame)
            assert refused.value.code() == grpc.StatusCode.INTERNAL
            assert (refused.value.details() or "").startswith(expected)
            frames = [pb.FrameRequest(frame_id=i, encoded=frame.encoded) for i in (2, 3, 4)]
            black = pb.FrameRequest(frame_id=5, encoded=jpeg(np.zeros((240, 320, 3), np.uint8)))

            async def sent() -> AsyncIterator[pb.FrameRequest]:
                for request in [*frames, black]:
                    yield request

            results = [r async for r in stub.StreamFrames(sent())]
        assert [r.frame_id for r in results] == [2, 3, 4, 5]  # the stream went on
        for result in results[:3]:
            assert result.status.code == grpc.StatusCode.INTERNAL.value[0], result
            assert result.status.message.startswith(expected) and not result.damaged
        assert results[3].status.code == 0 and 0 <= results[3].score <= 1  # black: a score
        said = [  # the engine's own lines: the camera's frames say it too, as their own
            r
            for r in caplog.records
            if r.name == "convstream.server.engine"
            and "the model gave a score of nan" in r.getMessage()
        ]
        assert len(said) == 1 and said[0].levelname == "ERROR", said
        # a camera's frames too: its last error says why it analyses nothing
        assert server.cameras is not None
        feed = server.cameras.feeds["belt"]
        camera = feed.camera
        for _ in range(100):
            if camera.last_error:
                break
            await asyncio.sleep(0.05)
        assert camera.last_error.startswith("a frame could not be analysed: " + expected)
        assert feed.frames_analysed == 0
        assert camera.frames_invalid == 0  # its frames were fine: the model failed on them
    finally:
        await server.stop(grace=0)


def no_score_when_lit(model: onnx.ModelProto) -> None:
    """The score cut to its first N * (frame is black) rows: (N,) for a black frame (all the
    load checks run), (0,) for any other, as a model whose output shape hangs on the pixels
    would give."""
    for node in model.graph.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
    model.graph.initializer.append(helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
    model.graph.node.extend(
        [
            helper.make_node("Cast", ["pixels"], ["lit"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["lit"], ["lit_mean"], keepdims=0),
            helper.make_node("Less", ["lit_mean", "half"], ["dark"]),
            helper.make_node("Cast", ["dark"], ["dark_n"], to=TensorProto.INT64),
            helper.make_node("Shape", ["score_raw"], ["rows"]),
            helper.make_node("Mul", ["rows", "dark_n"], ["kept"]),
            helper.make_node("Slice", ["score_raw", "zero", "kept"], ["score"]),
        ]
    )
    model.graph.initializer.append(helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]))


async def test_outputs_of_another_shape_fail_their_frame_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    """Only the model's run was guarded: a score of another shape than at load (here none
    for a lit frame) raised while its outputs were read, which ended the worker's thread, and
    with it every later frame: they waited for ever. The frame now fails with INTERNAL saying
    what the model gave, and the next frame is analysed, on the one worker there is."""
    path = edited(tmp_path / "shapeless.onnx", no_score_when_lit)
    settings = Settings(port=0, metrics_port=-1, cameras=(), model_path=path, inference_workers=1)
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            lit = pb.FrameRequest(frame_id=1, encoded=jpeg(scene(3, 240, 320)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Analyze(lit, timeout=20)
            assert refused.value.code() == grpc.StatusCode.INTERNAL, refused.value
            assert refused.value.details() == (
                "the model's outputs for this frame are unusable: the model gave score of shape "
                "(0,) for 1 frame; expected one score and one map per frame"
            )
            black = pb.FrameRequest(frame_id=2, encoded=jpeg(np.zeros((240, 320, 3), np.uint8)))
            result = await stub.Analyze(black, timeout=20)
            assert result.status.code == 0 and 0 <= result.score <= 1
    finally:
        await server.stop(grace=0)


async def test_a_reload_bringing_a_size_the_model_cannot_run_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """A camera added by a reload with an input_size the model cannot run was taken: its
    every frame then failed, in the log alone. The reload runs the model at the new sizes
    first, as the start does, and is refused (the caller logs "nothing changed") if one
    fails."""
    path = edited(tmp_path / "fixed.onnx", input_shape("n", 384, 640, 3))
    settings = Settings(
        port=0, metrics_port=-1, cameras=(), model_path=path, input_sizes=("384x640",)
    )
    server = Server(settings)
    await server.start()
    try:
        dock = CameraConfig(id="dock", source="demo:conveyor?fps=5", input_size="360x640")
        with pytest.raises(
            ConfigError,
            match=r"its input is fixed at 384x640; the new config's cameras run 360x640 \(their "
            r"input_size\): export with dynamic height and width, or set their input_size to "
            r"384x640",
        ):
            await server.reload(server.settings.model_copy(update={"cameras": (dock,)}))
        assert server.settings.cameras == ()
        assert server.cameras is not None and not server.cameras.feeds
        # what an alert reads: the log's ERROR line was the only sign
        sample = server.metrics.registry.get_sample_value
        assert sample("convstream_config_last_reload_successful") == 0
        before = sample("convstream_config_last_reload_success_timestamp_seconds")
        fits = dock.model_copy(update={"input_size": "384x640"})
        await server.reload(server.settings.model_copy(update={"cameras": (fits,)}))
        assert [c.id for c in server.settings.cameras] == ["dock"]
        assert sample("convstream_config_last_reload_successful") == 1
        assert sample("convstream_config_last_reload_success_timestamp_seconds") > before
        assert sample("convstream_config_restart_pending") == 0
        # a port changed in the config applies at the next restart, unannounced but for this
        await server.reload(server.settings.model_copy(update={"port": server.port + 1}))
        assert sample("convstream_config_restart_pending") == 1
        assert sample("convstream_config_last_reload_successful") == 1
        await server.reload(server.settings)  # the config put back
        assert sample("convstream_config_restart_pending") == 0
    finally:
        await server.stop(grace=0)


async def test_reloads_apply_in_the_order_they_came() -> None:
    """A reload waits for the model to run its cameras' new sizes: a second reload meanwhile
    applied first, and the first one's older config then over it. Reloads now take turns."""
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    try:
        older = CameraConfig(id="dock", source="demo:conveyor?fps=5", input_size="256x448")
        newer = CameraConfig(id="belt", source="demo:conveyor?fps=5")
        first = asyncio.create_task(
            server.reload(server.settings.model_copy(update={"cameras": (older,)}))
        )
        await asyncio.sleep(0)  # the first is warming the model up at 256x448
        second = asyncio.create_task(
            server.reload(server.settings.model_copy(update={"cameras": (newer,)}))
        )
        await asyncio.gather(first, second)
        assert [c.id for c in server.settings.cameras] == ["belt"]
        assert server.cameras is not None and list(server.cameras.feeds) == ["belt"]
    finally:
        await server.stop(grace=0)


def retrained(lift: float, threshold: str) -> Callable[[onnx.ModelProto], None]:
    """The shipped network with its head's bias raised by ``lift`` and another threshold in
    its metadata: a model trained further, as far as the server can tell."""

    def change(model: onnx.ModelProto) -> None:
        bias = next(t for t in model.graph.initializer if t.name == "net.head.bias")
        raised = onnx.numpy_helper.to_array(bias) + np.float32(lift)
        bias.CopyFrom(onnx.numpy_helper.from_array(raised, bias.name))
        metadata(threshold=threshold)(model)

    return change


def wider_stage1(model: onnx.ModelProto) -> None:
    """stage1 given twice over, 32 channels (as its metadata says): another network's
    outputs, though every one of them has its name."""
    for node in model.graph.node:
        node.output[:] = ["stage1.inner" if o == "stage1" else o for o in node.output]
        node.input[:] = ["stage1.inner" if i == "stage1" else i for i in node.input]
    model.graph.node.append(
        helper.make_node("Concat", ["stage1.inner", "stage1.inner"], ["stage1"], axis=1)
    )
    stages = json.loads(next(p.value for p in model.metadata_props if p.key == "stages"))
    stages[0]["channels"] = 32
    metadata(stages=json.dumps(stages))(model)


async def test_a_reload_serves_a_model_file_replaced_in_place_and_refuses_one_it_cannot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A retrained model took a restart, which ends every stream and watch. A reload (SIGHUP)
    now serves the file its config names when its sha256 changed: open streams go on, their
    next frame on the new model and its threshold. A file it cannot serve in its place (not
    a model; other outputs than the streams asked for) refuses the reload, and the running
    model goes on."""
    path = edited(tmp_path / "damage.onnx", lambda model: None)
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), model_path=path))
    await server.start()
    image = jpeg(scene(12, 384, 640))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            stream = stub.StreamFrames()
            options = pb.ResultOptions(feature_maps=["stage3"])
            frame_ids = iter(range(1, 100))

            async def result() -> pb.FrameResult:
                frame = pb.FrameRequest(frame_id=next(frame_ids), encoded=image, options=options)
                await stream.write(frame)
                got: pb.FrameResult = await stream.read()
                assert got.status.code == 0, got.status
                assert [m.name for m in got.feature_maps] == ["stage3"]
                return got

            before = await result()
            shipped = await stub.GetModelInfo(pb.GetModelInfoRequest())
            assert before.threshold == shipped.threshold != pytest.approx(0.9)
            engine = server._engine
            assert engine is not None
            black = np.zeros((384, 640, 3), np.uint8)
            ran_before = await asyncio.wrap_future(engine.submit(black))

            edited(path, retrained(2.0, "0.9"))
            with caplog.at_level(logging.INFO, logger="convstream.server.app"):
                await server.reload(server.settings)
            after = await result()  # the same stream, on the new model
            assert after.threshold == pytest.approx(0.9)
            # a frame run before the swap and judged after it is judged by the model it ran
            # on (its threshold and strides), not the new one
            assert ran_before.model.threshold == pytest.approx(shipped.threshold)
            ran_after = await asyncio.wrap_future(engine.submit(black))
            assert ran_after.model.threshold == pytest.approx(0.9)
            assert after.score > before.score + 0.05, (before.score, after.score)
            info = await stub.GetModelInfo(pb.GetModelInfoRequest())
            assert info.sha256 != shipped.sha256 and info.threshold == pytest.approx(0.9)
            assert info.threshold_source == "model"
            assert f"reload: model {path} (sha256 {info.sha256[:12]}...) from now on" in caplog.text
            assert server.metrics.registry.get_sample_value(
                "convstream_model_info", {"name": "damage.onnx", "sha256": info.sha256}
            )
            assert not server.metrics.registry.get_sample_value(
                "convstream_model_info", {"name": "damage.onnx", "sha256": shipped.sha256}
            )

            edited(path, wider_stage1)
            with pytest.raises(
                ConfigError,
                match=r"gives a heatmap at stride 8, stage1 of 32 channels at stride 2, .*where "
                r"the model it would replace gives a heatmap at stride 8, stage1 of 16 channels "
                r"at stride 2, .*: open streams asked for those; restart the server to serve it",
            ):
                await server.reload(server.settings)
            path.write_bytes(b"not a model")
            with pytest.raises(ConfigError, match=r"is not an ONNX model onnxruntime loads"):
                await server.reload(server.settings)
            kept = await result()
            assert kept.score == pytest.approx(after.score, abs=1e-6)
            assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).sha256 == info.sha256
            await stream.done_writing()
            assert await stream.read() == grpc.aio.EOF
            assert await stream.code() == grpc.StatusCode.OK
    finally:
        await server.stop(grace=0)
