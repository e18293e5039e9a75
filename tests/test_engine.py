"""The engine batches frames from many callers and hands each its own result."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from conftest import scene

from convstream.model import DamageModel
from convstream.server import Settings
from convstream.server.engine import Engine, Inference, runs_wide
from convstream.server.errors import DeadlineExpired, Draining, InvalidFrame, Overloaded
from convstream.server.pipeline import CALLER, ClientCaller, Pipeline, Prepared, WorkPool
from convstream.v1 import convstream_pb2 as pb


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


@pytest.fixture(scope="module")
def narrow_and_wide() -> tuple[DamageModel, DamageModel]:
    """The network on one onnxruntime thread (runs side by side) and on two (a lone frame)."""
    return (
        DamageModel(provider="cpu", intra_op_threads=1),
        DamageModel(provider="cpu", intra_op_threads=2),
    )


def test_only_a_frame_alone_on_an_idle_engine_runs_wide() -> None:
    assert runs_wide(queued=1, idle=2, workers=2)
    assert not runs_wide(queued=2, idle=2, workers=2)  # another frame waits: one core each
    assert not runs_wide(queued=1, idle=1, workers=2)  # a worker is busy: its core is taken
    assert not runs_wide(queued=1, idle=1, workers=1)  # one worker: nothing to widen into
    # A frame being decoded or encoded holds a core the wide run would stall on.
    assert not runs_wide(queued=1, idle=2, workers=2, busy_elsewhere=True)


def test_a_lone_frame_runs_on_every_core_and_a_crowd_one_per_core(
    narrow_and_wide: tuple[DamageModel, DamageModel],
) -> None:
    narrow, wide = narrow_and_wide
    frames = [scene(60 + i, 384, 640) for i in range(4)]
    expected = [narrow.run(f[None], ["score", "stage3"]) for f in frames]
    decoding = threading.Event()
    engine = Engine(narrow, max_batch=1, workers=2, wide_model=wide, busy_elsewhere=decoding.is_set)
    try:
        alone = engine.submit(frames[0], ["stage3"]).result(timeout=30)
        decoding.set()  # the same lone frame, with other work under way: one thread
        beside_work = engine.submit(frames[0], ["stage3"]).result(timeout=30)
        decoding.clear()
        with engine._cond:  # four frames wait at once, every worker idle
            futures = [engine.submit(f, ["stage3"]) for f in frames]
        crowd = [f.result(timeout=30) for f in futures]
    finally:
        engine.close()
    assert alone.threads == 2 and beside_work.threads == 1
    # Each of the first three was taken with another frame still waiting (the fourth may find
    # both workers idle and run wide).
    assert [r.threads for r in crowd[:3]] == [1, 1, 1]
    assert engine.wide_runs in (1, 2) and engine.frames == 6
    # Both sessions compute the same network.
    for result, want in zip([alone, *crowd], [expected[0], *expected], strict=True):
        assert float(result.arrays["score"]) == pytest.approx(float(want["score"][0]), abs=1e-5)
        np.testing.assert_allclose(result.arrays["stage3"], want["stage3"][0], atol=1e-4)


def test_a_frame_waits_for_a_wide_run_rather_than_share_its_cores(
    narrow_and_wide: tuple[DamageModel, DamageModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frame arriving while a lone frame runs wide is not started beside it on the idle
    # worker (three threads on two cores stall the wide run at its barriers): it waits, and
    # then, alone again, runs wide itself. Started beside it, it would have run on 1 thread.
    narrow, wide = narrow_and_wide
    frame = scene(70, 720, 1280)
    started, release = threading.Event(), threading.Event()
    run = wide.run

    def held_run(*args: Any, **kwargs: Any) -> Any:  # the first wide run waits, so that the
        started.set()  # second frame surely arrives during it, however busy this machine is
        release.wait(20)
        return run(*args, **kwargs)

    monkeypatch.setattr(wide, "run", held_run)
    engine = Engine(narrow, max_batch=1, workers=2, wide_model=wide)
    try:
        first = engine.submit(frame)
        assert started.wait(10), "the first frame did not run wide"
        assert engine._wide
        second = engine.submit(frame)
        time.sleep(0.2)  # had the idle worker taken it, it would be running narrow by now
        release.set()
        results = [first.result(timeout=30), second.result(timeout=30)]
    finally:
        release.set()
        engine.close()
    assert [r.threads for r in results] == [2, 2]
    assert engine.wide_runs == 2


def test_the_work_pool_serves_callers_in_turn_and_keeps_a_thread_for_the_others() -> None:
    """One caller runs at most `threads` jobs at once, and another caller's job does not wait
    behind its queue: it starts on the spare thread, or next when a thread frees."""
    pool = WorkPool(2)
    release = threading.Event()
    started: dict[str, threading.Event] = {}

    def job(name: str, block: bool) -> str:
        started[name].set()
        if block:
            release.wait(30)
        return name

    def submit_as(caller: object, name: str, block: bool = True) -> Future[str]:
        started[name] = threading.Event()
        context = contextvars.copy_context()
        context.run(CALLER.set, caller)
        return context.run(pool.submit, job, name, block)

    heavy, light, third = object(), object(), object()
    try:
        slow = [submit_as(heavy, f"heavy{i}") for i in range(4)]
        assert started["heavy0"].wait(10) and started["heavy1"].wait(10)
        # heavy holds its two threads and two more of its jobs wait; light runs at once
        assert submit_as(light, "light0", block=False).result(timeout=10) == "light0"
        assert not any(f.done() for f in slow) and not started["heavy2"].is_set()
        # submitted after heavy's queued jobs, the third caller's starts before them
        last = submit_as(third, "third0")
        assert started["third0"].wait(10)
        assert not started["heavy2"].is_set() and not started["heavy3"].is_set()
        release.set()
        assert [f.result(timeout=10) for f in [*slow, last]] == [
            "heavy0",
            "heavy1",
            "heavy2",
            "heavy3",
            "third0",
        ]
    finally:
        release.set()
        pool.shutdown()


def test_one_clients_calls_share_a_callers_threads_and_each_take_their_turn() -> None:
    """A client's calls (ClientCaller.who, its token or host) run at most `threads` jobs
    together, so the spare thread stays another client's; among them each call still takes
    its turn, so one of its calls does not wait behind another's queue. Each job is let go
    on its own, so that which job a freed thread takes is decided, not raced."""
    pool = WorkPool(2)
    gates: dict[str, threading.Event] = {}
    started: dict[str, threading.Event] = {}

    def job(name: str) -> str:
        started[name].set()
        gates[name].wait(30)
        return name

    def submit_as(caller: object, name: str) -> Future[str]:
        started[name], gates[name] = threading.Event(), threading.Event()
        context = contextvars.copy_context()
        context.run(CALLER.set, caller)
        return context.run(pool.submit, job, name)

    calls = [ClientCaller("token 'a'") for _ in range(3)]
    try:
        held = [submit_as(call, f"a{i}") for i, call in enumerate(calls)]
        queued = submit_as(calls[0], "a0-next")
        assert started["a0"].wait(10) and started["a1"].wait(10)
        # the third call of 'a' waits for 'a's threads, and another client's job runs
        other = submit_as(ClientCaller("token 'b'"), "b0")
        gates["b0"].set()
        assert other.result(timeout=10) == "b0"
        assert not started["a2"].is_set(), "a third call of one client took the spare thread"
        # one of 'a's jobs ends: the waiting call's turn comes before the next job of a call
        # that had one running
        gates["a0"].set()
        assert started["a2"].wait(10)
        assert not started["a0-next"].is_set()
        for gate in gates.values():
            gate.set()
        assert [f.result(timeout=10) for f in [*held, queued]] == ["a0", "a1", "a2", "a0-next"]
    finally:
        for gate in gates.values():
            gate.set()
        pool.shutdown()


def test_the_work_pool_drops_cancelled_jobs_and_refuses_work_after_shutdown() -> None:
    pool = WorkPool(1)
    release = threading.Event()
    first = pool.submit(release.wait, 30)
    second = pool.submit(release.wait, 30)  # one caller: waits for its thread
    waiting = pool.submit(lambda: "never")
    assert waiting.cancel()
    release.set()
    assert first.result(timeout=10) and second.result(timeout=10)
    pool.shutdown()
    assert not pool.busy
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)


def test_the_work_pool_shuts_down_with_jobs_waiting_for_their_callers_turn() -> None:
    """One caller's jobs queued past its share of threads: shutdown runs them and returns."""
    pool = WorkPool(1)
    jobs = [pool.submit(time.sleep, 0.2), pool.submit(time.sleep, 0.2)]
    closer = threading.Thread(target=pool.shutdown)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "shutdown() hung"
    assert all(job.done() and job.exception() is None for job in jobs)
    assert not pool.busy


def test_the_work_pool_is_busy_from_submit_until_the_task_ends() -> None:
    pool = WorkPool(2)
    release = threading.Event()
    try:
        assert not pool.busy
        task = pool.submit(release.wait, 30)
        assert pool.busy  # counted from submit, queued or running
        release.set()
        assert task.result(timeout=30) is True
        deadline = time.monotonic() + 10
        while pool.busy and time.monotonic() < deadline:  # the count drops in a done callback
            time.sleep(0.001)
        assert not pool.busy
        with pytest.raises(ZeroDivisionError):  # a task that fails is finished too
            pool.submit(lambda: 1 / 0).result(timeout=30)
        while pool.busy and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not pool.busy
    finally:
        pool.shutdown()


@pytest.mark.parametrize("path", ["answered", "camera", "bad frame", "encode fails", "draining"])
async def test_a_frames_trip_leaves_nothing_for_the_cycle_collector(
    model: DamageModel, path: str
) -> None:
    """Pipeline.through_model chains its steps on the threads that finish them; a step's
    callback and an error's traceback led back to the trip, so a camera's frames and every
    failed one (pixels, outputs) waited for the cycle collector: 276 frames of 1.2 MB held at
    a peak in a reviewer's run. With the collector off, each is freed as its call ends."""
    engine = Engine(model, max_batch=1)
    pool = WorkPool(1)
    pipeline = Pipeline(Settings(), engine, pool)
    if path == "draining":
        engine.close()
    alive = []

    def prepare() -> Prepared:
        prepared = Prepared.fit(scene(1, 360, 640), (384, 640), (640, 360), time.perf_counter())
        alive.append(weakref.ref(prepared.pixels))
        if path == "bad frame":
            raise InvalidFrame("this frame is refused")
        return prepared

    def encode(prepared: Prepared, inference: Inference) -> pb.FrameResult:
        if path == "encode fails":
            raise RuntimeError("encoding failed")
        return pb.FrameResult(score=float(inference.arrays["score"].item()))

    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            try:
                await pipeline.through_model(
                    prepare, [], None, None if path == "camera" else encode
                )
            except (InvalidFrame, RuntimeError, Draining):
                assert path in ("bad frame", "encode fails", "draining")
            else:
                assert path in ("answered", "camera")
        # The engine's or the pool's thread may still be on its way out of the last frame's
        # step (the answer wakes this test first): a moment, never the collector, frees it.
        for _ in range(100):
            await asyncio.sleep(0.01)
            held = [ref for ref in alive if ref() is not None]
            if not held:
                break
    finally:
        gc.enable()
        engine.close()
        pool.shutdown()
    assert len(alive) == 5 and not held, f"{len(held)} of 5 frames' pixels still held"


async def test_a_frame_whose_caller_leaves_while_it_is_decoded_never_reaches_the_model(
    model: DamageModel,
) -> None:
    engine = Engine(model, max_batch=1)
    pool = WorkPool(1)
    pipeline = Pipeline(Settings(), engine, pool)
    decoding, release = threading.Event(), threading.Event()

    def prepare() -> Prepared:
        decoding.set()
        release.wait(10)
        return Prepared.fit(scene(1, 360, 640), (384, 640), (640, 360), time.perf_counter())

    try:
        trip = asyncio.create_task(pipeline.through_model(prepare, []))
        assert await asyncio.to_thread(decoding.wait, 10)
        trip.cancel()  # the stream ended, its deadline passed
        with pytest.raises(asyncio.CancelledError):
            await trip
        release.set()  # the decode finishes after its caller left
        await asyncio.sleep(0.5)
        assert engine.frames == 0 and engine.queued == 0
    finally:
        release.set()
        engine.close()
        pool.shutdown()
