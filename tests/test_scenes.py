"""Tests for the synthetic scene renderer (convstream.model.scenes)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from convstream.model.scenes import BACKGROUNDS, DAMAGE_KINDS, Conveyor, Scene, render_scene


def _check(scene: Scene, h: int, w: int) -> None:
    assert isinstance(scene, Scene)
    assert scene.image.shape == (h, w, 3)
    assert scene.image.dtype == np.uint8
    assert scene.mask.shape == (h, w)
    assert scene.mask.dtype == np.uint8
    assert set(np.unique(scene.mask).tolist()) <= {0, 1}
    assert scene.damaged == bool(scene.mask.any())
    assert scene.damaged == bool(scene.kinds)
    assert set(scene.kinds) <= set(DAMAGE_KINDS)


def test_damage_kinds_constant() -> None:
    assert DAMAGE_KINDS == (
        "tear",
        "dent",
        "crushed_corner",
        "puncture",
        "torn_label",
        "torn_tape",
    )


@pytest.mark.parametrize("damaged", [None, True, False])
def test_deterministic(damaged: bool | None) -> None:
    for seed in (0, 7, 123456789):
        a = render_scene(seed, damaged=damaged)
        b = render_scene(seed, damaged=damaged)
        assert a.image.tobytes() == b.image.tobytes()
        assert a.mask.tobytes() == b.mask.tobytes()
        assert a.kinds == b.kinds and a.damaged == b.damaged


def test_different_seeds_differ() -> None:
    images = [render_scene(s).image for s in range(6)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j])


def test_negative_and_large_seeds() -> None:
    _check(render_scene(-5), 256, 256)
    _check(render_scene(2**70), 256, 256)


@pytest.mark.parametrize("size", [(256, 256), (192, 320), (384, 640), (64, 96)])
def test_shapes_and_dtypes(size: tuple[int, int]) -> None:
    h, w = size
    for seed in range(3):
        _check(render_scene(seed, h, w), h, w)
        _check(render_scene(seed, h, w, damaged=True), h, w)


def test_rejects_tiny_images() -> None:
    with pytest.raises(ValueError):
        render_scene(0, 8, 8)


def test_damaged_flag_is_honoured() -> None:
    for seed in range(15):
        d = render_scene(seed, damaged=True)
        assert d.damaged and d.mask.sum() > 0 and len(d.kinds) > 0
        # damage should be reasonably sized, not a few stray pixels
        assert d.mask.sum() >= 30
        u = render_scene(seed, damaged=False)
        assert not u.damaged and u.mask.sum() == 0 and u.kinds == ()


def test_images_are_not_degenerate() -> None:
    for seed in range(10):
        img = render_scene(seed).image.astype(np.float32)
        assert img.std() > 5.0  # some structure, not a flat frame
        assert 5.0 < img.mean() < 250.0


def test_damaged_fraction_near_half() -> None:
    flags = [render_scene(seed, 64, 64).damaged for seed in range(200)]
    frac = float(np.mean(flags))
    assert 0.35 <= frac <= 0.65, frac


def test_every_kind_appears() -> None:
    seen: set[str] = set()
    for seed in range(150):
        seen.update(render_scene(seed, 96, 96, damaged=True).kinds)
        if seen == set(DAMAGE_KINDS):
            break
    assert seen == set(DAMAGE_KINDS)


def test_every_background_appears_and_is_named() -> None:
    seen = {render_scene(seed, 64, 64).background for seed in range(120)}
    assert seen == set(BACKGROUNDS)
    # the name belongs to the layout, so the damaged and intact renders of a seed agree
    for seed in range(10):
        pair = (render_scene(seed, 64, 64, damaged=d).background for d in (True, False))
        assert len(set(pair)) == 1


def test_mask_marks_changed_pixels() -> None:
    """Damage pixels differ from the intact render of the same layout (seeds paired)."""
    hits = 0
    for seed in range(12):
        d = render_scene(seed, damaged=True)
        u = render_scene(seed, damaged=False)
        m = d.mask.astype(bool)
        diff = np.abs(d.image.astype(np.int16) - u.image.astype(np.int16)).sum(axis=2)
        if diff[m].mean() > 2 * diff[~m].mean() + 1:
            hits += 1
    assert hits >= 8


def test_damage_changes_nothing_outside_its_mask() -> None:
    """A damaged render and its intact twin differ only at the damage (plus a few pixels of
    JPEG ringing around it): damage must not bring benign content with it (a torn label or
    torn tape used to paint a whole new label or tape strip, visible only on damaged
    scenes), and what damage changes (a crushed corner's cut-away silhouette too) is in the
    mask."""
    for seed in range(20):
        d = render_scene(seed, damaged=True)
        u = render_scene(seed, damaged=False)
        diff = np.abs(d.image.astype(np.int16) - u.image.astype(np.int16)).sum(axis=2)
        near = cv2.dilate(d.mask, np.ones((9, 9), np.uint8)).astype(bool)
        assert (diff[~near] > 90).mean() < 0.002, (seed, d.kinds)


def test_conveyor_deterministic_and_random_access() -> None:
    a, b = Conveyor(seed=3), Conveyor(seed=3)
    for i in (0, 5, 17):
        fa = a.frame(i)
        _check(fa, 360, 640)
        assert fa.image.tobytes() == b.frame(i).image.tobytes()
        assert fa.mask.tobytes() == b.frame(i).mask.tobytes()
    # random access gives the same frame as sequential access
    c = Conveyor(seed=3)
    assert c.frame(17).image.tobytes() == a.frame(17).image.tobytes()
    assert Conveyor(seed=4).frame(5).image.tobytes() != a.frame(5).image.tobytes()


def test_conveyor_moves_and_shows_damage() -> None:
    conv = Conveyor(seed=1, height=180, width=320)
    prev = conv.frame(0)
    _check(prev, 180, 320)
    any_damage = prev.damaged
    for i in range(1, 300):
        cur = conv.frame(i)
        if i < 10:
            # sensor noise alone never changes a pixel by this much; moving edges do
            diff = np.abs(cur.image.astype(np.int16) - prev.image.astype(np.int16)).sum(axis=2)
            assert (diff > 60).mean() > 0.002
        any_damage = any_damage or cur.damaged
        prev = cur
    assert any_damage


def test_conveyor_packages_translate() -> None:
    """A package mask moves to the right at constant speed."""
    conv = Conveyor(seed=0, height=180, width=320, fps=15.0)
    xs = []
    for i in range(0, 400):
        m = conv.frame(i).mask
        if m.any():
            cols = np.nonzero(m.any(axis=0))[0]
            if cols.min() > 5 and cols.max() < 314:
                xs.append((i, cols.mean()))
                if len(xs) >= 2 and xs[-1][0] - xs[0][0] >= 3:
                    break
        else:
            xs.clear()
    assert len(xs) >= 2
    assert xs[-1][1] > xs[0][1]
