"""The shipped damage model in onnxruntime: its contract, its equivariance, its accuracy."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from convstream.model import (
    MODEL_PATH,
    OUTPUT_NAMES,
    DamageModel,
    ModelInputError,
    export,
    select_providers,
    wants_cuda,
)
from convstream.model.evaluate import (
    CONDITIONS,
    TEST_SEED_BASE,
    Metrics,
    conditions,
    evaluate,
    roc_auc,
)
from convstream.model.export import export_onnx
from convstream.model.network import DamageNet, ExportWrapper
from convstream.model.scenes import render_scene

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "convstream" / "model" / "damage.pt"


# The fallback tests play a host where CUDA does not load; on one with working onnxruntime-gpu
# the session would come up on CUDA (benchmarks/bench_gpu.py checks that host instead).
no_working_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this host's onnxruntime offers CUDA: the CPU fallback cannot be played here",
)


@pytest.fixture(scope="module")
def model() -> DamageModel:
    return DamageModel(provider="cpu")


def test_shipped_model_is_inside_the_package() -> None:
    assert MODEL_PATH.is_file() and MODEL_PATH.parent.name == "model"
    assert MODEL_PATH.stat().st_size < 2_000_000


@pytest.mark.parametrize(("n", "h", "w"), [(1, 256, 256), (2, 384, 640), (1, 100, 75), (3, 8, 8)])
def test_outputs_names_dtypes_and_shapes(model: DamageModel, n: int, h: int, w: int) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), np.uint8)
    out = model.run(pixels)
    assert tuple(out) == OUTPUT_NAMES
    cells = lambda s: (-(-h // s), -(-w // s))  # noqa: E731 - ceil division
    expected = {
        "stage1": (n, 16, *cells(2)),
        "stage2": (n, 32, *cells(4)),
        "stage3": (n, 64, *cells(8)),
        "stage4": (n, 64, *cells(8)),
        "heatmap": (n, 1, *cells(8)),
        "score": (n,),
    }
    assert {k: v.shape for k, v in out.items()} == expected
    assert all(v.dtype == np.float32 for v in out.values())
    assert ((out["heatmap"] >= 0) & (out["heatmap"] <= 1)).all()
    np.testing.assert_allclose(out["score"], out["heatmap"].reshape(n, -1).max(axis=1), atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_shifting_the_input_by_8k_pixels_shifts_the_heatmap_by_k_cells(
    model: DamageModel, k: int
) -> None:
    big = render_scene(TEST_SEED_BASE + 7, 320, 448, damaged=True).image
    h, w = 256, 320
    base = big[:h, 64 : 64 + w]
    # shifted[y, x] = base[y + 8k, x - 8k]: the scene moves up by 8k and right by 8k pixels
    shifted = big[8 * k : 8 * k + h, 64 - 8 * k : 64 - 8 * k + w]
    out = model.run(np.stack([base, shifted]), ["heatmap"])["heatmap"][:, 0]
    margin = 10  # cells: half the 151-pixel receptive field, the zero padding's reach
    a = out[0][margin + k : -margin, margin : -margin - k]  # base at (r + k, c)
    b = out[1][margin : -margin - k, margin + k : -margin]  # shifted at (r, c + k)
    assert a.shape == b.shape and a.size > 20
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-3  # it is equivariant, not invariant


@pytest.fixture(scope="module")
def held_out(model: DamageModel) -> Metrics:
    # A set rendered here, from seeds no training run, threshold or held-out evaluation has
    # used (the model card's "How clean these sets are" says where it has been looked at).
    return evaluate(model, range(TEST_SEED_BASE, TEST_SEED_BASE + 240))


def test_shipped_model_is_far_from_chance(held_out: Metrics) -> None:
    # A regression floor, not the product target: the shipped model scores AUC 0.924 and
    # peak-in-region 0.880 on these 240 scenes (the model of 2026-12-03 0.925 and 0.889); an
    # untrained or mis-exported network scores about 0.5, the model of 2026-11-25 0.934 and
    # 0.872, the one before it (uniform crops,
    # every covered cell a positive) 0.883 and 0.821, and the one before that (2,400 steps on
    # 3,000 pairs) 0.815 and 0.726.
    assert 80 < held_out.damaged < 160
    assert held_out.roc_auc >= 0.90, held_out
    assert held_out.peak_in_region >= 0.83, held_out


@pytest.mark.xfail(
    strict=True,
    reason="the shipped model is below the product target (issue 2 stays open): "
    "see MODEL_CARD.md; strict, so this fails loudly once a model reaches it",
)
def test_held_out_auc_and_peak_location_meet_the_target(held_out: Metrics) -> None:
    assert held_out.roc_auc >= 0.97, held_out
    assert held_out.peak_in_region >= 0.8, held_out


def test_torch_and_onnx_agree(tmp_path: Path) -> None:
    net = DamageNet()
    net.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
    net.eval()
    path = tmp_path / "m.onnx"
    export_onnx(net, path, threshold=0.5)
    onnx_model = DamageModel(path, provider="cpu")
    pixels = np.stack([render_scene(TEST_SEED_BASE + i, 192, 256).image for i in range(3)])
    with torch.no_grad():
        expected = ExportWrapper(net)(torch.from_numpy(pixels))
    got = onnx_model.run(pixels)
    for name, ref in zip(OUTPUT_NAMES, expected, strict=True):
        np.testing.assert_allclose(got[name], ref.numpy(), atol=1e-4, rtol=1e-3, err_msg=name)
    # and the checkpoint is what the shipped file was exported from
    shipped = DamageModel(provider="cpu").run(pixels, ["heatmap"])["heatmap"]
    np.testing.assert_allclose(shipped, got["heatmap"], atol=1e-5)


def test_the_export_command_reproduces_the_shipped_model(tmp_path: Path) -> None:
    # The threshold, too, is chosen again on the validation scenes, as training chose it.
    out = tmp_path / "damage.onnx"
    export.main([str(CHECKPOINT), "--out", str(out)])
    exported, shipped = DamageModel(out, provider="cpu"), DamageModel(provider="cpu")
    assert exported.own_threshold == pytest.approx(shipped.own_threshold, abs=1e-4)
    pixels = render_scene(TEST_SEED_BASE + 7, 96, 160).image[None]
    got, expected = exported.run(pixels), shipped.run(pixels)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, err_msg=name)


def test_the_export_command_says_what_it_cannot_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = DamageNet().state_dict()
    first, second = list(state)[:2]
    state[first] = torch.zeros(3)
    del state[second]
    torch.save(state, tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    cases = [
        (tmp_path / "other.pt", rf"missing: {second}; shape: {first} \(3,\)"),
        (tmp_path / "list.pt", "holds a list; expected a DamageNet state dict"),
        (MODEL_PATH, "is not a PyTorch checkpoint of plain tensors"),
        (tmp_path / "none.pt", "none.pt: No such file"),
    ]
    for checkpoint, message in cases:
        with pytest.raises(SystemExit) as exited:
            export.main([str(checkpoint), "--out", str(tmp_path / "m.onnx")])
        assert exited.value.code == 2
        assert re.search(message, capsys.readouterr().err), message
    with pytest.raises(SystemExit):
        export.main([str(CHECKPOINT), "--out", str(tmp_path)])
    assert "is a folder; expected a file to write" in capsys.readouterr().err
    copy = tmp_path / "copy.pt"
    copy.write_bytes(CHECKPOINT.read_bytes())
    with pytest.raises(SystemExit):
        export.main([str(copy), "--out", str(copy)])
    assert "is the checkpoint: expected another file" in capsys.readouterr().err
    assert copy.read_bytes() == CHECKPOINT.read_bytes()
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((1, 64, 64, 3), np.float32), "uint8 BGR, got dtype float32"),
        (np.zeros((1, 64, 64, 4), np.uint8), r"\(N, H, W, 3\).*got \(1, 64, 64, 4\) \(BGRA: "),
        (np.zeros((64, 64, 3), np.uint8), r"got \(64, 64, 3\) \(one image: image\[None\]"),
        (np.zeros((1, 64, 64), np.uint8), r"\(1, 64, 64\) \(gray frames: np.repeat\(pixels"),
        (np.zeros((64, 64), np.uint8), r"\(64, 64\) \(gray: cv2.cvtColor.*; then one image: "),
        (np.zeros((48, 64, 4), np.uint8), r"\(48, 64, 4\) \(BGRA: .*; then one image: "),
        (np.zeros((1, 0, 64, 3), np.uint8), "H and W > 0"),
        ([[1, 2, 3]], "numpy array, got list"),
    ],
)
def test_bad_input_says_what_was_expected(model: DamageModel, pixels: object, message: str) -> None:
    with pytest.raises(ModelInputError, match=message):
        model.run(pixels)  # type: ignore[arg-type]


def test_unknown_output_is_refused(model: DamageModel) -> None:
    with pytest.raises(ModelInputError, match="unknown output 'stage5'"):
        model.run(np.zeros((1, 16, 16, 3), np.uint8), ["stage5"])
    with pytest.raises(
        ModelInputError, match="outputs is empty; name at least one of stage1, stage2, "
    ):
        model.run(np.zeros((1, 16, 16, 3), np.uint8), [])


@pytest.mark.parametrize(
    ("choice", "available", "expected"),
    [
        ("auto", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            "auto",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            "cuda",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        ("cuda", ["AzureExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ],
)
def test_provider_selection(choice: str, available: list[str], expected: list[str]) -> None:
    assert select_providers(choice, available) == expected  # type: ignore[arg-type]
    # What the server plans its inference workers by (config.Settings.scheduling).
    assert wants_cuda(choice, available) == (expected[0] == "CUDAExecutionProvider")  # type: ignore[arg-type]


@no_working_cuda
def test_cuda_requested_without_a_gpu_falls_back_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="convstream.model.runtime"):
        model = DamageModel(provider="cuda")
    assert model.provider == "CPUExecutionProvider"
    assert "CUDA execution provider requested" in caplog.text
    # what results report as a run's threads: the CPU's, on the CPU (0 on CUDA)
    assert DamageModel(provider="cuda", intra_op_threads=2).run_threads == 2


def test_a_gpu_wheel_overwritten_by_the_cpu_one_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `pip install convstream[gpu]` installs onnxruntime and onnxruntime-gpu, which share one
    # module; when the CPU wheel came last, CUDA is missing though the GPU wheel is there.
    # This host's module is the CPU wheel's: only the GPU wheel's metadata is played.
    import importlib.metadata

    import convstream.model.runtime as runtime

    real = importlib.metadata.version

    def version(name: str) -> str:
        return "1.31.1" if name == "onnxruntime-gpu" else real(name)

    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="convstream.model.runtime"):
        assert select_providers("auto", cpu_only) == ["CPUExecutionProvider"]
        assert caplog.text == ""  # no GPU wheel: auto on a CPU host says nothing
        monkeypatch.setattr(runtime.importlib.metadata, "version", version)
        for choice in ("auto", "cuda", "cpu"):
            select_providers(choice, cpu_only)  # type: ignore[arg-type]
    fix = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]"
    assert caplog.text.count(fix) == 2  # auto and cuda; cpu asked for nothing more
    assert "the CPU onnxruntime wheel has overwritten the module they share" in caplog.text


@no_working_cuda
def test_cuda_libraries_are_preloaded_once_and_what_onnxruntime_says_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As on a host with onnxruntime-gpu whose CUDA wheels are missing: onnxruntime offers
    # CUDA, its preload prints what it could not load, and the session comes up on the CPU.
    import convstream.model.runtime as runtime

    calls: list[str] = []

    def preload() -> None:
        calls.append("preload")
        print("Failed to load libcublasLt.so.13: cannot open shared object file")

    monkeypatch.setattr(runtime.ort, "preload_dlls", preload, raising=False)
    monkeypatch.setattr(runtime, "_cuda_libraries_loaded", False)
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: offered)
    with (
        caplog.at_level(logging.WARNING, logger="convstream.model.runtime"),
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),  # onnxruntime's own
    ):
        first = DamageModel(provider="cuda")
        DamageModel(provider="cuda")
    assert calls == ["preload"]  # once per process
    assert "loading CUDA libraries: Failed to load libcublasLt.so.13" in caplog.text
    assert "execution provider CUDAExecutionProvider could not be loaded" in caplog.text
    assert first.provider == "CPUExecutionProvider"
    assert first.run(np.zeros((1, 64, 64, 3), np.uint8))["score"].shape == (1,)

    # A preload that fails outright is logged the same way, never raised.
    def broken() -> None:
        raise RuntimeError("Invalid parameter of directory=x. The directory does not exist!")

    monkeypatch.setattr(runtime.ort, "preload_dlls", broken, raising=False)
    monkeypatch.setattr(runtime, "_cuda_libraries_loaded", False)
    with caplog.at_level(logging.WARNING, logger="convstream.model.runtime"):
        runtime.load_cuda_libraries()
    assert "loading CUDA libraries: Invalid parameter of directory=x" in caplog.text


def test_fixed_batch_feeds_each_session_one_shape(
    model: DamageModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What the CUDA plan relies on (a new input shape makes onnxruntime's CUDA convolutions
    # choose their kernels again): every run padded to 4 frames, each size its own session,
    # and the same outputs as batches run as they come.
    fixed = DamageModel(provider="cpu", fixed_batch=4)
    fed: list[tuple[int, tuple[int, ...]]] = []  # (session, shape fed)

    def spy(session: ort.InferenceSession) -> ort.InferenceSession:
        run = session.run

        def recording(names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            fed.append((id(session), next(iter(feeds.values())).shape))
            return run(names, feeds)

        session.run = recording  # type: ignore[method-assign]
        return session

    spy(fixed.session)
    make = fixed._new_session
    monkeypatch.setattr(fixed, "_new_session", lambda: spy(make()))
    rng = np.random.default_rng(7)
    wide = rng.integers(0, 256, (6, 64, 96, 3), np.uint8)
    tall = rng.integers(0, 256, (2, 96, 64, 3), np.uint8)
    for batch in (wide[:1], wide[:3], wide, tall, wide[:2], tall[::-1]):
        got, want = fixed.run(batch), model.run(batch)
        for name in OUTPUT_NAMES:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
            assert got[name].base is None or got[name].base.shape[0] == len(batch)  # no padding
    assert [shape[0] for _, shape in fed] == [4] * 7  # 6 frames: 4, then 2 padded to 4
    sizes: dict[int, set[tuple[int, ...]]] = {}
    for session, shape in fed:
        sizes.setdefault(session, set()).add(shape[1:3])
    assert sizes == {id(fixed.session): {(64, 96)}, id(fixed._shaped[(96, 64)]): {(96, 64)}}

    # Past MAX_SHAPED_SESSIONS sizes, the rest share one spare session, said once.
    monkeypatch.setattr("convstream.model.runtime.MAX_SHAPED_SESSIONS", 2)
    fed.clear()
    with caplog.at_level(logging.WARNING, logger="convstream.model.runtime"):
        for size in (32, 40, 48):
            fixed.run(rng.integers(0, 256, (1, size, size, 3), np.uint8))
    assert set(fixed._shaped) == {(64, 96), (96, 64)}
    spare = {session for session, _ in fed}
    assert len(spare) == 1 and spare.isdisjoint(sizes)
    assert caplog.text.count("more than 2 input sizes: sizes after 64x96, 96x64 share") == 1
    with pytest.raises(ValueError, match="fixed_batch must be >= 0, got -1"):
        DamageModel(provider="cpu", fixed_batch=-1)


def test_roc_auc_matches_hand_counts() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == 0.5


def test_conditions_keep_each_scene_and_its_damage_mask_aligned() -> None:
    scene = render_scene(TEST_SEED_BASE + 3, 128, 192, damaged=True)
    by_name = dict(CONDITIONS)
    for name, change in CONDITIONS:
        if change is None:
            continue
        seen = change(scene)
        assert seen.image.dtype == np.uint8, name
        assert seen.image.shape[:2] == seen.mask.shape, name
        assert seen.mask.any(), name
        if not name.startswith(("scale", "shifted")):
            assert seen.image.shape == scene.image.shape, name
            assert np.array_equal(seen.mask, scene.mask), name
            assert not np.array_equal(seen.image, scene.image), name
    far, near = by_name["scale 0.5x"], by_name["scale 1.5x"]
    assert far is not None and near is not None
    assert far(scene).mask.shape == (64, 96)
    assert near(scene).mask.shape == (192, 288)
    shift = by_name["shifted by (5, 3) px"]
    assert shift is not None
    moved = shift(scene)
    assert np.array_equal(moved.mask[3:, 5:], scene.mask)
    assert np.array_equal(moved.image[3:, 5:], scene.image)


def test_conditions_report_covers_every_condition(model: DamageModel) -> None:
    seeds = range(TEST_SEED_BASE + 300, TEST_SEED_BASE + 340)
    report = conditions(model, seeds, (128, 128))
    assert [row.name for row in report["condition"]] == [name for name, _ in CONDITIONS]
    for row in report["condition"]:
        assert row.images == 40
        assert 0.0 <= row.roc_auc <= 1.0
        assert 0.0 <= row.false_alarms <= 1.0
    groups = report["background"] + report["damage kind"] + report["damage size"]
    assert report["damage size"]
    assert sum(row.damaged for row in report["damage size"]) == report["condition"][0].damaged
    for row in groups:
        assert 0 < row.damaged < row.images
