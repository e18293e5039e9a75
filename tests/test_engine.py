"""The engine batches frames from many callers and hands each its own result."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import scene

from convstream.model import DamageModel
from convstream.server.engine import Engine
from convstream.server.errors import DeadlineExpired, Draining, Overloaded


@pytest.fixture(scope="module")
def model() -> DamageModel:
    return DamageModel(provider="cpu")


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_return_each_frame_its_own_outputs(model: DamageModel, workers: int) -> None:
    frames = [scene(30 + i, 384, 640) for i in range(8)]
    frames += [scene(40 + i, 480, 640) for i in range(4)]  # a second input size in the mix
    expected = [model.run(f[None])["score"][0] for f in frames]
    engine = Engine(model, max_batch=8, workers=workers)
    try:
        futures = [engine.submit(f, ["stage3"] if i % 2 else []) for i, f in enumerate(frames)]
        results = [f.result(timeout=30) for f in futures]
    finally:
        engine.close()
    for i, (result, score) in enumerate(zip(results, expected, strict=True)):
        assert float(result.arrays["score"]) == pytest.approx(float(score), abs=1e-5)
        assert ("stage3" in result.arrays) == bool(i % 2)
        assert result.arrays["heatmap"].shape[1:] == (
            frames[i].shape[0] // 8,
            frames[i].shape[1] // 8,
        )
    sizes = [r.batch_size for r in results]
    assert max(sizes) > 1, sizes  # frames that waited together ran together
    assert max(sizes) <= 8
    assert engine.frames == len(frames) and engine.runs < len(frames)


@pytest.mark.parametrize(("workers", "first_batch"), [(1, 4), (2, 2)])
def test_idle_workers_share_the_waiting_frames(
    model: DamageModel, workers: int, first_batch: int
) -> None:
    # Four frames wait while every worker is idle (the engine's lock is held while they are
    # queued): one worker batches all four; two workers run two each, side by side, instead
    # of one batching four while the other has nothing to do.
    frames = [scene(50 + i, 256, 256) for i in range(4)]
    engine = Engine(model, max_batch=8, workers=workers)
    try:
        with engine._cond:
            futures = [engine.submit(f) for f in frames]
        sizes = [f.result(timeout=30).batch_size for f in futures]
    finally:
        engine.close()
    assert sizes[0] == first_batch, sizes
    assert max(sizes) == first_batch, sizes  # later takes are never bigger than the first
    assert engine.frames == 4


def test_an_engine_needs_a_worker_and_a_frame_per_run(model: DamageModel) -> None:
    # 0 means "automatic" in the settings; the engine only ever gets resolved values.
    with pytest.raises(ValueError, match="max_batch and workers must be >= 1, got 0 and 1"):
        Engine(model, max_batch=0)
    with pytest.raises(ValueError, match="got 8 and 0"):
        Engine(model, workers=0)


def test_full_queue_is_overloaded_and_closed_engine_is_draining(model: DamageModel) -> None:
    engine = Engine(model, max_batch=1, max_queued=2)
    frame = np.zeros((384, 640, 3), np.uint8)
    try:
        with pytest.raises(Overloaded, match="2 frames waiting"):
            for _ in range(50):
                engine.submit(frame)
    finally:
        engine.close()
    with pytest.raises(Draining):
        engine.submit(frame)


def test_frames_past_their_deadline_are_never_run(model: DamageModel) -> None:
    engine = Engine(model, max_batch=8)
    frame = np.zeros((256, 256, 3), np.uint8)
    try:
        late = engine.submit(frame, deadline=time.perf_counter() - 0.001)
        in_time = engine.submit(frame, deadline=time.perf_counter() + 30)
        assert in_time.result(timeout=30).batch_size == 1  # the late one did not share its run
        with pytest.raises(DeadlineExpired, match="the frame was not analysed"):
            late.result(timeout=30)
    finally:
        engine.close()
    assert engine.frames == 1


def test_cancelled_frames_are_never_run(model: DamageModel) -> None:
    engine = Engine(model, max_batch=1)
    frame = np.zeros((384, 640, 3), np.uint8)
    try:
        futures = [engine.submit(frame) for _ in range(20)]
        cancelled = sum(f.cancel() for f in futures[5:])
        for f in futures[:5]:
            f.result(timeout=30)
        for f in futures[5:]:
            if not f.cancelled():
                f.result(timeout=30)
    finally:
        engine.close()
    assert cancelled > 0
    assert engine.frames == 20 - cancelled
