"""How training draws its crops: where they fall and what they are labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from convstream.model.evaluate import main as evaluate_main
from convstream.model.network import HEATMAP_STRIDE, DamageNet
from convstream.model.scenes import render_scene
from convstream.model.train import (
    CROP,
    DOWNSCALED,
    MARGIN,
    RENDER_SIZE,
    _render_pair,
    batches,
    cell_targets,
    crop_start,
    render_pairs,
    train,
    train_step,
)
from convstream.model.train import main as train_main

SEEDS = list(range(11, -1, -1))  # the 12 scenes the crop tests draw from


def test_a_crop_start_holds_its_pixel_and_keeps_the_margin_where_the_frame_allows() -> None:
    rng = np.random.default_rng(0)
    for pixel in range(RENDER_SIZE):
        for _ in range(20):
            start = crop_start(pixel, rng) * HEATMAP_STRIDE
            assert 0 <= start <= RENDER_SIZE - CROP, (pixel, start)
            assert start <= pixel < start + CROP, (pixel, start)
            if MARGIN <= pixel < RENDER_SIZE - MARGIN:
                assert start + MARGIN <= pixel < start + CROP - MARGIN, (pixel, start)


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    # Seeds out of order, so a row taken from the seed's value rather than its place shows.
    return render_pairs(SEEDS, "test")


def test_pairs_are_rendered_in_order_damaged_then_intact(
    pairs: tuple[np.ndarray, np.ndarray],
) -> None:
    # Worker processes fill the arrays as their renders arrive; row 2i must be the i-th seed
    # damaged and row 2i + 1 the same seed intact, or every pair would teach the wrong difference.
    images, masks = pairs
    assert images.shape == (2 * len(SEEDS), RENDER_SIZE, RENDER_SIZE, 3)
    assert masks.shape == images.shape[:3]
    for i, seed in enumerate(SEEDS):
        damaged, damaged_mask, intact, intact_mask = _render_pair(seed)
        np.testing.assert_array_equal(images[2 * i], damaged)
        np.testing.assert_array_equal(masks[2 * i], damaged_mask)
        np.testing.assert_array_equal(images[2 * i + 1], intact)
        np.testing.assert_array_equal(masks[2 * i + 1], intact_mask)
    assert masks[0::2].any(axis=(1, 2)).all() and not masks[1::2].any()


def test_a_share_of_the_pairs_is_drawn_larger_and_scaled_down_as_the_server_scales_frames() -> None:
    """A model trained on scenes drawn at their size alone raised an alarm on 40-45% of
    intact 720p and 1080p renders that the server scaled down. About DOWNSCALED of the pairs
    are drawn larger and scaled down (INTER_AREA, as the server); the rest as drawn."""
    seeds = range(40)
    scaled = 0
    for seed in seeds:
        damaged, damaged_mask, intact, intact_mask = _render_pair(seed)
        assert damaged.shape == intact.shape == (RENDER_SIZE, RENDER_SIZE, 3)
        assert damaged_mask.any() and not intact_mask.any()
        drawn = render_scene(seed, RENDER_SIZE, RENDER_SIZE, damaged=True)
        if np.array_equal(damaged, drawn.image):
            np.testing.assert_array_equal(damaged_mask, drawn.mask)
            continue
        scaled += 1
    assert 0.15 * len(seeds) <= scaled <= 0.6 * len(seeds), scaled
    assert 0 < DOWNSCALED < 1


def test_crops_fall_on_the_damage_about_as_often_as_asked(
    pairs: tuple[np.ndarray, np.ndarray],
) -> None:
    rng = np.random.default_rng(1)
    held = 0
    rounds = 40
    for _ in range(rounds):
        x, target, _, labels = batches(*pairs, 64, rng)
        assert x.shape == (64, CROP, CROP, 3)
        held += int(labels[0::2, 0].sum())
        assert not target[1::2].any()  # the intact twin of each pair is never a target
    # Uniform crops hold damage in 61-65% of damaged crops on these scenes; placed on the
    # damage ON_DAMAGE of the time, about 0.7 + 0.3 x 0.63 = 89% of them must.
    share = held / (32 * rounds)
    assert share >= 0.8, share


def test_a_pair_keeps_its_damage_aligned_and_only_visible_change_is_taught() -> None:
    # One synthetic pair on a flat grey: the damaged version is 13 levels brighter over one
    # block of cells (visible) and 12 levels darker over the block below (not visible; a
    # wrapping uint8 difference would read it as 244). The mask covers both blocks.
    intact = np.full((RENDER_SIZE, RENDER_SIZE, 3), 100, np.uint8)
    damaged = intact.copy()
    damaged[96:128, 96:160] += 13
    damaged[128:160, 96:160] -= 12
    mask = np.zeros((RENDER_SIZE, RENDER_SIZE), np.uint8)
    mask[96:160, 96:160] = 1
    rng = np.random.default_rng(2)
    for _ in range(5):
        x, target, weight, _ = batches(
            np.stack([damaged, intact]), np.stack([mask, np.zeros_like(mask)]), 16, rng
        )
        change = x[0::2].numpy().astype(np.int16) - x[1::2].numpy()
        # per cell: the change its pixels carry (flat within a cell by construction)
        cells = change[:, ::HEATMAP_STRIDE, ::HEATMAP_STRIDE, 0]
        t, w = target[0::2, 0].numpy(), weight[0::2, 0].numpy()
        assert ((t == 1) == (cells == 13)).all()
        assert (w[cells == -12] == 0).all()
        assert (w[cells == 0] == 1).all() and (t[cells == 0] == 0).all()
        assert (cells == 13).any()  # the crops do hold the damage


def test_damage_the_camera_cannot_see_is_ignored_not_taught() -> None:
    masks = np.zeros((1, 32, 32), np.uint8)
    seen = np.zeros((1, 32, 32), bool)
    masks[0, 0:8, 0:8] = 1  # cell (0, 0): covered and visible
    seen[0, 0:8, 0:8] = True
    masks[0, 0:8, 8:16] = 1  # cell (0, 1): covered, but no pixel differs from the intact twin
    masks[0, 8:10, 0:3] = 1  # cell (1, 0): 6 of 64 pixels, under the positive cover
    seen[0, 8:10, 0:3] = True
    target, weight = cell_targets(masks, seen)
    assert target.shape == weight.shape == (1, 1, 4, 4)
    assert (target[0, 0, 0, 0], weight[0, 0, 0, 0]) == (1.0, 1.0)
    assert (target[0, 0, 0, 1], weight[0, 0, 0, 1]) == (0.0, 0.0)
    assert (target[0, 0, 1, 0], weight[0, 0, 1, 0]) == (0.0, 0.0)
    assert target[0, 0].sum() == 1.0
    assert weight[0, 0].sum() == 16 - 2  # every untouched cell is a negative


@pytest.mark.parametrize("bf16", [False, True])
def test_a_training_step_learns_in_either_precision_and_keeps_float32_weights(
    pairs: tuple[np.ndarray, np.ndarray], bf16: bool
) -> None:
    # bfloat16 is how training runs on CPUs with AMX; its weights and optimiser state must
    # stay float32 (bfloat16 weights would round away the small late updates) and it must
    # still learn: 25 steps on one batch bring that batch's loss well down.
    torch.manual_seed(0)
    net = DamageNet().to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = batches(*pairs, 16, np.random.default_rng(3))
    losses = [train_step(net, optimiser, batch, bf16=bf16) for _ in range(25)]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_training_refuses_an_unknown_precision(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision is auto, bf16, fp32, got 'fp16'"):
        train(tmp_path, scenes=1, steps=1, batch=2, precision="fp16")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "63"], "--batch must be even"),
        (["--steps", "0"], "--scenes and --steps must be at least 1"),
        ([], "the following arguments are required: --out"),
    ],
)
def test_training_arguments_are_checked_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = [] if not argv else ["--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as done:
        train_main([*argv, *out])
    assert done.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "damage.onnx").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "file")])
    assert "is a file; it must be a folder" in capsys.readouterr().err


def test_evaluate_refuses_what_it_cannot_measure(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--images", "1"], "an AUC needs both classes"),
        (["--model", "/nonexistent.onnx"], "--model: /nonexistent.onnx: No such file"),
    ]:
        with pytest.raises(SystemExit) as done:
            evaluate_main(argv)
        assert done.value.code == 2
        assert message in capsys.readouterr().err
