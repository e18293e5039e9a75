"""How training draws its crops: where they fall and what they are labelled."""

from __future__ import annotations

import numpy as np

from convstream.model.network import HEATMAP_STRIDE
from convstream.model.scenes import render_scene
from convstream.model.train import (
    CROP,
    MARGIN,
    ON_DAMAGE,
    RENDER_SIZE,
    batches,
    cell_targets,
    crop_start,
)


def test_a_crop_start_holds_its_pixel_and_keeps_the_margin_where_the_frame_allows() -> None:
    rng = np.random.default_rng(0)
    for pixel in range(RENDER_SIZE):
        for _ in range(20):
            start = crop_start(pixel, rng) * HEATMAP_STRIDE
            assert 0 <= start <= RENDER_SIZE - CROP, (pixel, start)
            assert start <= pixel < start + CROP, (pixel, start)
            if MARGIN <= pixel < RENDER_SIZE - MARGIN:
                assert start + MARGIN <= pixel < start + CROP - MARGIN, (pixel, start)


def test_crops_fall_on_the_damage_about_as_often_as_asked() -> None:
    images, masks = [], []
    for seed in range(12):
        for damaged in (True, False):
            scene = render_scene(seed, RENDER_SIZE, RENDER_SIZE, damaged=damaged)
            images.append(scene.image)
            masks.append(scene.mask)
    rng = np.random.default_rng(1)
    held = intact_touched = 0
    rounds = 40
    for _ in range(rounds):
        x, _, _, labels = batches(np.stack(images), np.stack(masks), 64, rng)
        assert x.shape == (64, CROP, CROP, 3)
        damaged_rows, intact_rows = labels[0::2].numpy(), labels[1::2].numpy()
        held += int(damaged_rows[:, 0].sum())
        intact_touched += int(intact_rows[:, 0].sum())
    # Uniform crops hold damage in about two damaged crops of three on these scenes; placed
    # on the damage ON_DAMAGE of the time they must hold it more often than that.
    share = held / (32 * rounds)
    assert share >= ON_DAMAGE, share
    assert intact_touched == 0  # the intact twin of each pair is never labelled damaged


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
