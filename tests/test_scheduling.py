"""Scheduling on a real server: freshness policies, admission, and batches that mix streams.

Correctness only: what is dropped, reported, kept in order, refused, and where each result
goes. How fast any of it is lives in benchmarks/, never here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import jpeg, png, scene

from convstream.model import DamageModel
from convstream.server import CameraConfig, Server, Settings, app
from convstream.server.config import MAX_WIDE_THREADS, TokenConfig, cpu_quota, usable_cores
from convstream.server.decode import Limits, decode_encoded
from convstream.server.letterbox import letterbox, reduction
from convstream.server.pipeline import MAX_LISTED_DROPS, DropLog
from convstream.server.security import new_token
from convstream.server.streams import MAX_REFUSALS_WAITING, StreamSession
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

# alone or live (see scripts/test.sh): the tests that compare latencies with decode times, ages, and
# one whose streams end after 0.8 s unread

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def burst() -> list[bytes]:
    """Eight distinct 720p JPEGs."""
    return [jpeg(scene(7000 + i)) for i in range(8)]


async def _burst(
    data: list[bytes], count: int, options: pb.ResultOptions, source: str = ""
) -> AsyncIterator[pb.FrameRequest]:
    """`count` frames sent as fast as gRPC takes them, the stream's options on the first."""
    for i in range(count):
        request = pb.FrameRequest(frame_id=i, source=source, encoded=data[i % len(data)])
        if i == 0:
            request.options.CopyFrom(options)
        yield request


async def _slow_reader(
    call: grpc.aio.StreamStreamCall, pause: float, errors: bool = False
) -> list[pb.FrameResult]:
    """Every result, read with a pause after each; a frame's error fails unless `errors`."""
    results = []
    async for result in call:
        assert errors or not result.status.code, result.status.message
        results.append(result)
        await asyncio.sleep(pause)
    return results


def _check_accounting(results: list[pb.FrameResult], sent: int) -> list[int]:
    """Every frame answered or reported dropped exactly once, answers in order; the drops."""
    answered = [r.frame_id for r in results]
    dropped = [i for r in results for i in r.dropped_frame_ids]
    assert answered == sorted(answered)
    assert sorted(answered + dropped) == list(range(sent))
    assert [r.sequence for r in results] == list(range(1, len(results) + 1))
    running = 0
    for result in results:  # frames_dropped is the running count of the drops listed so far
        running += len(result.dropped_frame_ids)
        assert result.frames_dropped == running
    return dropped


def _sessions(monkeypatch: pytest.MonkeyPatch) -> list[StreamSession]:
    """Every StreamSession the server makes from now on, in order."""
    sessions: list[StreamSession] = []
    init = StreamSession.__init__

    def remember(self: StreamSession, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        sessions.append(self)

    monkeypatch.setattr(StreamSession, "__init__", remember)
    return sessions


def _hold_analysis(server: Server, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every inference run waits until the event returned is set (as test_reliability's
    held_run): the frames a stream has in analysis stay there, and the frames after them
    wait in its queue, for as long as the test needs, whatever the machine's speed."""
    engine = server._engine
    assert engine is not None
    release = threading.Event()
    for model in {id(m): m for m in (engine.model, engine.wide_model) if m is not None}.values():

        def held(*args: Any, run: Any = model.run, **kwargs: Any) -> Any:
            release.wait(60)
            return run(*args, **kwargs)

        monkeypatch.setattr(model, "run", held)
    return release


async def _until_a_refusal_waits(sessions: list[StreamSession]) -> None:
    """Until the stream's refused frame waits among its pending ones: every frame before it
    has come, been queued or dropped (the reader takes them in order), none analysed."""
    deadline = time.monotonic() + 30
    while not (sessions and any(item.options is None for item in sessions[0]._pending)):
        assert time.monotonic() < deadline, "the refused frame never came"
        await asyncio.sleep(0.02)


async def test_latest_only_drops_the_stale_and_always_answers_the_newest(
    server: Server, stub: pb_grpc.ConvstreamStub, burst: list[bytes]
) -> None:
    options = pb.ResultOptions(freshness=pb.FRESHNESS_LATEST_ONLY)
    results = await _slow_reader(stub.StreamFrames(_burst(burst, 40, options)), 0.02)
    dropped = _check_accounting(results, 40)
    assert len(dropped) > 0
    # and counted where an operator reads them, as the stream's results said them
    counted = server.metrics.registry.get_sample_value
    assert counted("convstream_frames_total", {"source": "unnamed", "outcome": "dropped"}) == (
        len(dropped)
    )
    assert counted("convstream_frames_total", {"source": "unnamed", "outcome": "ok"}) == (
        len(results)
    )
    assert results[-1].frame_id == 39  # the newest frame is never the one dropped
    # One frame in analysis at a time: each started as the newest, never batched behind others.
    assert {r.timings.batch_size for r in results} == {1}
    # Only one frame waits: between two answers, every frame but the newest was dropped.
    for before, after in itertools.pairwise(results):
        skipped = set(range(before.frame_id + 1, after.frame_id))
        assert skipped <= set(after.dropped_frame_ids) | set(before.dropped_frame_ids)


def test_a_result_lists_at_most_a_thousand_dropped_ids_and_counts_them_all() -> None:
    """A reader 1,500 frames behind: every id listed made a result that could pass the
    message limit, which leaves room for MAX_LISTED_DROPS of them (frames_dropped counts
    them all)."""
    log = DropLog()
    for frame_id in range(1500):
        log.drop(frame_id)
    first, second = pb.FrameResult(), pb.FrameResult()
    log.stamp(first)
    log.stamp(second)
    assert (first.sequence, first.frames_dropped) == (1, 1500)
    assert list(first.dropped_frame_ids) == list(range(MAX_LISTED_DROPS)) == list(range(1000))
    assert (second.sequence, second.frames_dropped, len(second.dropped_frame_ids)) == (2, 1500, 0)


@pytest.mark.parametrize("freshness", [pb.FRESHNESS_LATEST_ONLY, pb.FRESHNESS_BOUNDED_QUEUE])
async def test_a_bad_frame_is_answered_even_where_the_policy_drops_waiting_frames(
    stub: pb_grpc.ConvstreamStub, burst: list[bytes], freshness: int
) -> None:
    """A dropping policy drops good frames it has no time for; a bad one is refused as it
    arrives, so its sender learns why (a camera's wrong buffer size is not just 'dropped')."""
    options = pb.ResultOptions(freshness=freshness, queue_size=2)
    bad = {
        3: pb.FrameRequest(
            raw=pb.RawImage(width=100, height=100, format=pb.PIXEL_FORMAT_BGR8, data=b"\0" * 10)
        ),
        5: pb.FrameRequest(encoded=b"not an image at all"),
        7: pb.FrameRequest(encoded=burst[0][: len(burst[0]) // 2]),  # cut short
        9: pb.FrameRequest(),  # no image
        11: pb.FrameRequest(encoded=burst[1]),  # capture_time in milliseconds, below
    }
    bad[11].capture_time.seconds = int(time.time() * 1000)

    async def frames() -> AsyncIterator[pb.FrameRequest]:
        async for request in _burst(burst, 30, options):
            if request.frame_id in bad:
                request.ClearField("encoded")
                request.MergeFrom(bad[request.frame_id])
            yield request

    results = await _slow_reader(stub.StreamFrames(frames()), 0.05, errors=True)
    dropped = _check_accounting(results, 30)
    assert len(dropped) > 0 and not set(dropped) & set(bad)
    refused = {r.frame_id: r.status for r in results if r.status.code}
    assert set(refused) == set(bad)
    assert {s.code for s in refused.values()} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert "needs 30000 bytes" in refused[3].message
    assert "expected JPEG" in refused[5].message
    assert "truncated JPEG" in refused[7].message
    assert "no image" in refused[9].message
    assert "capture_time" in refused[11].message


@pytest.mark.parametrize(
    ("freshness", "answered", "dropped"),
    [
        (pb.FRESHNESS_LATEST_ONLY, [1, 4, 5], [2, 3]),
        (pb.FRESHNESS_BOUNDED_QUEUE, [1, 2, 3, 4, 6, 7, 8], [5]),
    ],
)
async def test_a_refused_frame_drops_no_good_frame_waiting(
    server: Server,
    stub: pb_grpc.ConvstreamStub,
    burst: list[bytes],
    freshness: int,
    answered: list[int],
    dropped: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trigger camera's last frames, the very last one corrupt: the refusal is answered in
    its place and takes no room of the queue, so the newest good frames waiting are still
    analysed. (It took a place, and under LATEST_ONLY dropped the only good frame left.)"""
    sessions = _sessions(monkeypatch)
    release = _hold_analysis(server, monkeypatch)  # the window's frames stay in analysis
    options = pb.ResultOptions(freshness=freshness, queue_size=2)
    in_analysis = 1 if freshness == pb.FRESHNESS_LATEST_ONLY else 4  # the stream's window

    async def frames() -> AsyncIterator[pb.FrameRequest]:
        for i in range(1, in_analysis + 1):  # held ones fill the window: those after wait
            first = options if i == 1 else None
            yield pb.FrameRequest(frame_id=i, encoded=burst[i % len(burst)], options=first)
        for i in range(in_analysis + 1, in_analysis + 4):
            yield pb.FrameRequest(frame_id=i, encoded=burst[i % len(burst)])
        yield pb.FrameRequest(frame_id=in_analysis + 4, encoded=b"garbage, not a JPEG")

    reading = asyncio.ensure_future(_slow_reader(stub.StreamFrames(frames()), 0.0, errors=True))
    try:
        await _until_a_refusal_waits(sessions)  # every frame in, the window's still held
        assert not reading.done()
        waiting = [item.request.frame_id for item in sessions[0]._pending]
        assert waiting == [i for i in answered if i > in_analysis], waiting
    finally:
        release.set()
    results = await asyncio.wait_for(reading, 60)
    assert [r.frame_id for r in results] == answered
    assert [r.status.code for r in results] == [0] * (len(answered) - 1) + [
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
    ]
    assert [i for r in results for i in r.dropped_frame_ids] == dropped
    assert results[-1].frames_dropped == len(dropped)


async def test_a_bounded_queue_drops_the_oldest_beyond_its_size(
    stub: pb_grpc.ConvstreamStub, burst: list[bytes]
) -> None:
    options = pb.ResultOptions(freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=3)
    results = await _slow_reader(stub.StreamFrames(_burst(burst, 40, options)), 0.05)
    dropped = _check_accounting(results, 40)
    assert len(dropped) > 0
    # The last frames sent were waiting in the queue when the sender stopped: all answered.
    assert [r.frame_id for r in results[-3:]] == [37, 38, 39]


async def test_lossless_never_drops_however_slowly_the_caller_reads(
    stub: pb_grpc.ConvstreamStub, burst: list[bytes]
) -> None:
    options = pb.ResultOptions(freshness=pb.FRESHNESS_LOSSLESS)
    results = await _slow_reader(stub.StreamFrames(_burst(burst, 30, options)), 0.05)
    _check_accounting(results, 30)
    assert [r.frame_id for r in results] == list(range(30))
    assert all(r.frames_dropped == 0 for r in results)


@pytest.mark.parametrize("freshness", [pb.FRESHNESS_LATEST_ONLY, pb.FRESHNESS_BOUNDED_QUEUE])
async def test_frames_sent_lossless_are_answered_after_the_stream_chooses_to_drop(
    stub: pb_grpc.ConvstreamStub, burst: list[bytes], freshness: int
) -> None:
    """A stream is lossless until its first options choose a policy: the frames sent before
    them, still waiting when they come, are answered, and only the frames sent after may be
    dropped (one sent lossless was dropped as soon as the policy changed)."""
    before = 12
    options = pb.ResultOptions(freshness=freshness, queue_size=1)

    async def frames() -> AsyncIterator[pb.FrameRequest]:
        for i in range(40):
            request = pb.FrameRequest(frame_id=i, encoded=burst[i % len(burst)])
            if i == before:
                request.options.CopyFrom(options)
            yield request

    results = await _slow_reader(stub.StreamFrames(frames()), 0.05)
    dropped = _check_accounting(results, 40)
    assert dropped and min(dropped) >= before  # the policy's frame and the ones after it
    assert [r.frame_id for r in results[:before]] == list(range(before))


@pytest.mark.alone
async def test_every_result_carries_its_frames_age(
    stub: pb_grpc.ConvstreamStub, burst: list[bytes]
) -> None:
    async def stamped() -> AsyncIterator[pb.FrameRequest]:
        for i in range(4):
            request = pb.FrameRequest(frame_id=i, encoded=burst[i])
            request.capture_time.GetCurrentTime()
            request.capture_time.FromNanoseconds(request.capture_time.ToNanoseconds() - 10**9)
            yield request

    results = [r async for r in stub.StreamFrames(stamped())]
    for result in results:  # captured a second before it was sent
        assert 1000 <= result.frame_age_ms < 1000 + 30_000
        assert result.capture_time.seconds > 0


@pytest.mark.parametrize(
    "settings",
    [
        # On a CPU the server runs frames one at a time unless told to batch (config.py
        # says why); batching is what a GPU server does, so it is turned on here.
        Settings(port=0, metrics_port=-1, cameras=(), inference_workers=1, max_batch=8),
        Settings(port=0, metrics_port=-1, cameras=(), inference_workers=2, max_batch=8),
    ],
    ids=["1 worker", "2 workers"],
)
async def test_a_batch_mixing_streams_returns_each_result_to_its_own_stream(
    stub: pb_grpc.ConvstreamStub, burst: list[bytes], settings: Settings
) -> None:
    model = DamageModel(provider="cpu")
    limits = Limits(40_000_000, 16384)
    # What the server computes for each frame, run here one frame at a time (no batch).
    target = (384, 640)
    expected = []
    for data in burst:
        image = decode_encoded(data, limits, reduction(1280, 720, target))
        pixels = letterbox(image, target, (1280, 720))[0]
        expected.append(float(model.run(pixels[None], ["score"])["score"][0]))
    options = pb.ResultOptions(freshness=pb.FRESHNESS_LOSSLESS)

    async def one(k: int) -> list[pb.FrameResult]:
        # Stream k sends the burst rotated by k, so the same frame id means a different image
        # on each stream, and a result handed to the wrong stream has the wrong score.
        rotated = burst[k:] + burst[:k]
        results = [r async for r in stub.StreamFrames(_burst(rotated, 16, options, f"s{k}"))]
        for result in results:
            assert not result.status.code, result.status.message
            assert result.source == f"s{k}"
            want = expected[(result.frame_id + k) % len(burst)]
            assert result.score == pytest.approx(want, abs=2e-3), (k, result.frame_id)
        assert [r.frame_id for r in results] == list(range(16))
        return results

    everything = [r for rs in await asyncio.gather(*(one(k) for k in range(4))) for r in rs]
    # Sixteen frames in flight on a couple of cores: batches did form, so this tested them.
    assert max(r.timings.batch_size for r in everything) > 1


async def _open(
    stub: pb_grpc.ConvstreamStub,
    frame: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
    **options: int,
) -> Any:
    call = stub.StreamFrames(metadata=metadata)
    await call.write(
        pb.FrameRequest(frame_id=1, encoded=frame, options=pb.ResultOptions(**options))
    )
    return call


@pytest.mark.parametrize(
    "settings", [Settings(port=0, metrics_port=-1, cameras=(), provider="cpu")]
)
async def test_frames_run_one_at_a_time_on_a_cpu_by_default(
    server: Server, stub: pb_grpc.ConvstreamStub, burst: list[bytes]
) -> None:
    # Sixteen frames in flight, as above, on the shipped settings: one single-threaded run per
    # core and no batches, which measured faster on a CPU (benchmarks/bench_served.py).
    assert server._engine is not None
    cpu = Settings().scheduling(gpu=False, cores=usable_cores())
    assert (server._engine.workers, server._engine.max_batch) == (cpu.workers, 1)
    options = pb.ResultOptions(freshness=pb.FRESHNESS_LOSSLESS)

    async def one(k: int) -> list[pb.FrameResult]:
        return [r async for r in stub.StreamFrames(_burst(burst, 16, options, f"s{k}"))]

    everything = [r for rs in await asyncio.gather(*(one(k) for k in range(4))) for r in rs]
    assert len(everything) == 64 and not any(r.status.code for r in everything)
    assert {r.timings.batch_size for r in everything} == {1}
    # With frames waiting, runs go one per core on one thread each.
    assert 1 in {r.timings.inference_threads for r in everything}


@pytest.mark.parametrize(
    "settings", [Settings(port=0, metrics_port=-1, cameras=(), provider="cpu")]
)
async def test_a_lone_frame_runs_on_every_core(
    server: Server, stub: pb_grpc.ConvstreamStub, burst: list[bytes]
) -> None:
    # One frame on an idle server: no other frame could use the cores, so its run takes them
    # all (the wide session); with one usable core there is nothing to widen into.
    options = pb.ResultOptions(feature_maps=["stage3"])
    for data in burst[:3]:
        result = await stub.Analyze(pb.FrameRequest(encoded=data, options=options))
        assert not result.status.code, result.status.message
        assert result.timings.inference_threads == min(usable_cores(), MAX_WIDE_THREADS)


async def test_a_gpu_wheel_without_a_working_gpu_runs_the_cpu_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if onnxruntime-gpu were installed on a host whose CUDA libraries fail to load: the
    # provider list offers CUDA, the session comes up on the CPU. The server must then run
    # the CPU plan (a worker per core, no batches), not the GPU plan it started from.
    monkeypatch.setattr(app, "wants_cuda", lambda choice: True)
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), provider="cuda"))
    await server.start()
    try:
        assert server._engine is not None and server.servicer is not None
        assert server._engine.model.provider == "CPUExecutionProvider"
        cpu = Settings().scheduling(gpu=False, cores=usable_cores())
        assert (server._engine.workers, server._engine.max_batch) == (cpu.workers, cpu.max_batch)
        info = server.servicer.model_info
        assert info.requested_provider == "cuda"
        assert info.execution_provider == "CPUExecutionProvider"
    finally:
        await server.stop(grace=0)


async def test_the_gpu_plan_pads_every_run_and_gives_each_size_its_session(
    monkeypatch: pytest.MonkeyPatch, burst: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    # The GPU plan's wiring, played on the CPU: only the provider's name is pretended (no
    # CUDA device can exist here). The engine must get a model that pads every run to
    # max_batch with a session per input size, made at start; and frames of two sizes from
    # four streams must come back, batched, each with its own frame's score.
    class ReportsCuda(DamageModel):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "provider": "cpu"})
            self.provider = "CUDAExecutionProvider"

    monkeypatch.setattr(app, "wants_cuda", lambda choice: True)
    monkeypatch.setattr(app, "DamageModel", ReportsCuda)
    settings = Settings(port=0, metrics_port=-1, cameras=(), provider="cuda", max_batch=4)
    frames = [*burst[:4], *(jpeg(scene(7100 + i, 480, 640)) for i in range(4))]
    limits, plain = Limits(40_000_000, 16384), DamageModel(provider="cpu")
    expected = []
    for data, (w, h), target in [
        *[(d, (1280, 720), (384, 640)) for d in frames[:4]],
        *[(d, (640, 480), (480, 640)) for d in frames[4:]],
    ]:
        image = decode_encoded(data, limits, reduction(w, h, target))
        pixels = letterbox(image, target, (w, h))[0]
        expected.append(float(plain.run(pixels[None], ["score"])["score"][0]))
    server = Server(settings)
    caplog.set_level(logging.INFO, logger="convstream.server.app")
    await server.start()
    try:
        # one process on a GPU: the log names the setting that serves more
        assert "--processes 4 served 2-3 times as many frames" in caplog.text
        assert server._engine is not None
        model = server._engine.model
        assert (model.fixed_batch, server._engine.workers) == (4, 1)
        assert set(model._shaped) == set(settings.model_shapes())  # every size, at start
        fed: list[tuple[int, tuple[int, ...]]] = []
        for session in {id(s): s for s in model._shaped.values()}.values():
            run = session.run

            def recording(names: Any, feeds: Any, run: Any = run, key: int = id(session)) -> Any:
                fed.append((key, next(iter(feeds.values())).shape))
                return run(names, feeds)

            session.run = recording
        options = pb.ResultOptions(freshness=pb.FRESHNESS_LOSSLESS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)

            async def one(k: int) -> list[pb.FrameResult]:
                rotated = frames[k:] + frames[:k]  # both sizes in turn on every stream
                calls = stub.StreamFrames(_burst(rotated, 16, options, f"s{k}"))
                results = [r async for r in calls]
                for result in results:
                    assert not result.status.code, result.status.message
                    want = expected[(result.frame_id + k) % len(frames)]
                    assert result.score == pytest.approx(want, abs=2e-3), (k, result.frame_id)
                return results

            everything = [r for rs in await asyncio.gather(*(one(k) for k in range(4))) for r in rs]
    finally:
        await server.stop(grace=0)
    assert max(r.timings.batch_size for r in everything) > 1  # batches formed
    assert {shape[0] for _, shape in fed} == {4}  # every run padded to max_batch
    sizes: dict[int, set[tuple[int, ...]]] = {}
    for key, shape in fed:
        sizes.setdefault(key, set()).add(shape[1:3])
    assert sorted(sizes.values(), key=str) == sorted(({(384, 640)}, {(480, 640)}), key=str)


def _callers(count: int) -> tuple[tuple[TokenConfig, ...], list[tuple[tuple[str, str], ...]]]:
    """``count`` analyze tokens, and the metadata that presents each: one caller holds at most
    half of max_queued_frames, so the server's own limit takes several to reach (every
    client of a test shares its host)."""
    made = [new_token() for _ in range(count)]
    tokens = tuple(
        TokenConfig(name=f"caller-{i}", role="analyze", sha256=digest)
        for i, (_, digest) in enumerate(made)
    )
    return tokens, [(("authorization", f"Bearer {token}"),) for token, _ in made]


async def test_streams_past_the_queued_frames_cap_are_refused_at_once(burst: list[bytes]) -> None:
    # Each stream reserves its queue (4 by default) when it opens; 10 frames fit two streams,
    # of two callers (one may hold 5).
    tokens, callers = _callers(3)
    settings = Settings(
        port=0,
        metrics_port=-1,
        cameras=(),
        max_queued_frames=10,
        stream_queue_size=4,
        tokens=tokens,
    )
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            first = await _open(stub, burst[0], callers[0])
            second = await _open(stub, burst[1], callers[1])
            assert (await first.read()).frame_id == 1
            assert (await second.read()).frame_id == 1
            third = stub.StreamFrames(metadata=callers[2])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await third.read()
            assert refused.value.code() == EXHAUSTED
            told = str(refused.value.details())
            assert "hold 8 of the 10 frames" in told and "a new stream needs 4" in told, told

            # Existing streams never noticed; a closed stream gives its reservation back.
            await second.done_writing()
            assert await second.code() == grpc.StatusCode.OK
            await first.write(pb.FrameRequest(frame_id=2, encoded=burst[2]))
            assert (await first.read()).frame_id == 2

            # A stream asking for more queue than one stream may ever hold here: that frame's
            # INVALID_ARGUMENT (no retry helps), and the stream goes on with the default queue
            # it was admitted with.
            fourth = await _open(
                stub, burst[4], callers[1], freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=100
            )
            failed = await fourth.read()
            code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert failed.frame_id == 1 and failed.status.code == code
            assert "a queue of 100 frames" in failed.status.message
            await fourth.write(pb.FrameRequest(frame_id=2, encoded=burst[5]))
            answered = await fourth.read()
            assert answered.frame_id == 2 and not answered.status.code
            for call in (first, fourth):
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
        assert server.servicer is not None and server.servicer.budget.reserved == 0
    finally:
        await server.stop(grace=0)


async def test_a_queue_that_fits_but_is_not_free_now_is_resource_exhausted(
    burst: list[bytes],
) -> None:
    # 16 frames for streams, 2 reserved by each, one stream may hold up to 4 (one caller 8):
    # with 8 streams of 4 callers open none is left, so a stream asking for 4 is refused for
    # now (RESOURCE_EXHAUSTED: it would fit once another stream ends), unlike one asking for
    # more than 4 (never here).
    tokens, callers = _callers(4)
    settings = Settings(
        port=0,
        metrics_port=-1,
        cameras=(),
        max_queued_frames=16,
        stream_queue_size=2,
        tokens=tokens,
    )
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            calls = [await _open(stub, burst[i], callers[i % 4]) for i in range(7)]
            for call in calls:
                assert not (await call.read()).status.code
            # the eighth is admitted with its 2 (none left), then asks for 4: its caller's
            # 6 would be within its 8
            calls.append(
                await _open(
                    stub, burst[7], callers[3], freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=4
                )
            )
            refused = await calls[-1].read()
            assert refused.status.code == EXHAUSTED.value[0], refused.status.message
            assert "over max_queued_frames 16" in refused.status.message
            for call in calls:
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
    finally:
        await server.stop(grace=0)


async def test_one_stream_never_takes_every_other_streams_room(burst: list[bytes]) -> None:
    settings = Settings(port=0, metrics_port=-1, cameras=(), max_queued_frames=64)
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            greedy = await _open(
                stub, burst[0], freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=64
            )
            refused = await greedy.read()  # never on this server: not a capacity to retry for
            assert refused.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "more than one stream may hold on this server, 16" in refused.status.message
            others = [await _open(stub, burst[i]) for i in range(1, 4)]
            for call in others:
                assert not (await call.read()).status.code
            for call in (greedy, *others):
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
    finally:
        await server.stop(grace=0)


async def _stream_or_refusal(
    server: Server, stub: pb_grpc.ConvstreamStub, frame: bytes, token: str, **options: int
) -> tuple[Any, pb.FrameResult | grpc.aio.AioRpcError]:
    """A stream with ``token``, and its first frame's result (``options`` on it), or the
    error it was refused with as it opened. Its frame is sent once the server has let it in:
    a grpc.aio client refused while a write is under way may read INTERNAL "Internal error
    from Core" in place of the status (grpc/grpc#36066)."""
    servicer = server.servicer
    assert servicer is not None
    before = servicer.open_streams
    call = stub.StreamFrames(metadata=(("authorization", f"Bearer {token}"),))
    deadline = time.monotonic() + 30
    while servicer.open_streams == before and not call.done():
        assert time.monotonic() < deadline, "the stream was neither let in nor refused"
        await asyncio.sleep(0.01)
    if servicer.open_streams > before:
        request = pb.FrameRequest(frame_id=1, encoded=frame, options=pb.ResultOptions(**options))
        await call.write(request)
    try:
        return call, await call.read()
    except grpc.aio.AioRpcError as exc:
        return call, exc


async def test_one_caller_never_takes_every_other_callers_queued_frames(
    burst: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A reviewer's token, within its max_calls of 8, opened streams with queues of 256, 256,
    256, 200 and 50 of the 1024 queued frames: every other client's stream was then refused
    for as long as those lived, and nothing was logged. One caller holds at most half."""
    caplog.set_level(logging.WARNING, logger="convstream.server.streams")
    (hog, hog_hash), (other, other_hash) = new_token(), new_token()
    tokens = (
        TokenConfig(name="hog", role="analyze", sha256=hog_hash, max_calls=8),
        TokenConfig(name="other", role="analyze", sha256=other_hash),
    )
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), tokens=tokens))
    await server.start()
    bounded = pb.FRESHNESS_BOUNDED_QUEUE
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            hogs = []
            for size in (256, 256, 256, 200, 50):
                hogs.append(
                    await _stream_or_refusal(
                        server, stub, burst[0], hog, freshness=bounded, queue_size=size
                    )
                )
            # the other token's streams open, whatever their policy, up to its own half
            others = []
            for options in (
                {},
                {"freshness": pb.FRESHNESS_LATEST_ONLY},
                {"freshness": bounded, "queue_size": 256},
            ):
                call, first = await _stream_or_refusal(server, stub, burst[1], other, **options)
                assert isinstance(first, pb.FrameResult), (
                    f"expected the other token's stream ({options}) to open beside the hog's, "
                    f"got {first.code()}: {first.details()}"
                )
                assert not first.status.code, first.status.message
                others.append(call)

            # the hog's first two took its half; the next ones were refused as they opened
            admitted = [first for _, first in hogs if isinstance(first, pb.FrameResult)]
            assert [r.status.code for r in admitted] == [0, 0], [r.status.message for r in admitted]
            refused = [first for _, first in hogs if isinstance(first, grpc.aio.AioRpcError)]
            assert [e.code() for e in refused] == [EXHAUSTED] * 3, refused
            told = str(refused[0].details())
            assert "token 'hog' holds 512 of the 1024 frames" in told, told
            assert "one caller may hold 512 (half); a new stream needs 4" in told, told
            said = [r.getMessage() for r in caplog.records if r.name == "convstream.server.streams"]
            assert len(said) == 1, f"expected one warning for the hog's 3 refusals, got {said}"
            assert "refused a stream's queue for token 'hog': token 'hog' holds 512" in said[0]

            # the queue a stream's first options ask for counts against its caller's half
            # too: that frame alone is refused, and the stream goes on with the default queue
            first_hog = hogs[0][0]
            await first_hog.done_writing()
            assert await first_hog.code() == grpc.StatusCode.OK  # the hog holds 256 now
            fits, first = await _stream_or_refusal(
                server, stub, burst[2], hog, freshness=bounded, queue_size=200
            )
            assert isinstance(first, pb.FrameResult) and not first.status.code, first
            over, first = await _stream_or_refusal(
                server, stub, burst[3], hog, freshness=bounded, queue_size=60
            )
            assert isinstance(first, pb.FrameResult), first
            assert first.status.code == EXHAUSTED.value[0], first.status.message
            told = first.status.message
            assert "frames token 'hog' holds for its streams to 516, over the 512 one " in told
            assert first.queue_size == server.settings.stream_queue_size
            for call in (fits, over, hogs[1][0], *others):
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
        assert server.servicer is not None and server.servicer.budget.reserved == 0
    finally:
        await server.stop(grace=0)


async def test_refused_options_change_nothing_on_the_stream(burst: list[bytes]) -> None:
    """A first frame whose options are refused neither publishes the stream nor sets its
    policy: the next frame's options do."""
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)

            async def frames() -> AsyncIterator[pb.FrameRequest]:
                yield pb.FrameRequest(
                    frame_id=0,
                    source="pubtest",
                    encoded=burst[0],
                    options=pb.ResultOptions(
                        feature_maps=["bogus"], freshness=pb.FRESHNESS_LATEST_ONLY, publish=True
                    ),
                )
                yield pb.FrameRequest(
                    frame_id=1,
                    encoded=burst[1],
                    options=pb.ResultOptions(freshness=pb.FRESHNESS_LOSSLESS),
                )
                listed = await stub.ListCameras(pb.ListCamerasRequest())
                assert "pubtest" not in [c.id for c in listed.cameras]
                for i in range(2, 30):
                    yield pb.FrameRequest(frame_id=i, encoded=burst[i % len(burst)])

            results = await _slow_reader(stub.StreamFrames(frames()), 0.02, errors=True)
            assert results[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "unknown feature map 'bogus'" in results[0].status.message
            # and it says what the stream goes on with (a typo'd stage left a stream meant to
            # be LATEST_ONLY lossless, falling behind, with nothing said)
            assert results[0].status.message.endswith(
                "; this frame was not analysed and its options not taken: the stream goes on "
                "FRESHNESS_LOSSLESS, no feature maps until a frame's options are accepted"
            )  # (it ended "...are", cut short to a reader: an integrator review's)
            assert [r.frame_id for r in results] == list(range(30))  # lossless: no drops
    finally:
        await server.stop(grace=0)


async def test_frames_past_the_byte_budget_wait_when_lossless_else_are_refused_alone(
    burst: list[bytes],
) -> None:
    """Raw frames of 691 KB into a server that holds 1 MiB of frames for streams at most."""
    settings = Settings(port=0, metrics_port=-1, cameras=(), max_held_bytes=1 << 20)
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            pixels = scene(7100, 480, 480).tobytes()

            async def frames(
                options: pb.ResultOptions, huge: bool = False
            ) -> AsyncIterator[pb.FrameRequest]:
                for i in range(8):
                    raw = pb.RawImage(
                        width=480, height=480, format=pb.PIXEL_FORMAT_BGR8, data=pixels
                    )
                    yield pb.FrameRequest(frame_id=i, raw=raw, options=options if i == 0 else None)
                if huge:  # larger than the whole budget: it can never be held
                    raw = pb.RawImage(
                        width=512,
                        height=1024,
                        format=pb.PIXEL_FORMAT_BGR8,
                        data=bytes(512 * 1024 * 3),
                    )
                    yield pb.FrameRequest(frame_id=8, raw=raw)
                # everything held answered first (a second's sleep alone was not always
                # enough on a busy machine: a flake hunter's reading)
                await asyncio.sleep(1.0)
                assert server.servicer is not None
                for _ in range(200):
                    if server.servicer.byte_budget.held == 0:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the frames held were not answered within 10 s")
                yield pb.FrameRequest(frame_id=9, encoded=burst[0])

            queued = pb.ResultOptions(freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=4)
            call = stub.StreamFrames(frames(queued))
            results = await _slow_reader(call, 0.05, errors=True)
            answered = [r.frame_id for r in results]
            assert answered == [i for i in range(10) if i != 8 and i in answered]
            refused = [r for r in results if r.status.code]
            assert refused and all(r.status.code == EXHAUSTED.value[0] for r in refused)
            assert "max_held_bytes 1048576" in refused[0].status.message
            assert not results[0].status.code and not results[-1].status.code
            # lossless: the reader waits for room, and gRPC slows the sender; nothing refused
            call = stub.StreamFrames(frames(pb.ResultOptions(), huge=True))
            results = await _slow_reader(call, 0.05, errors=True)
            assert [r.frame_id for r in results] == list(range(10))
            assert [r.frame_id for r in results if r.status.code] == [8]
            assert "can never be analysed here" in results[8].status.message
        assert server.servicer is not None and server.servicer.byte_budget.held == 0
    finally:
        await server.stop(grace=0)


async def test_a_client_that_stops_reading_cannot_take_every_other_streams_room() -> None:
    """One stream holds at most a quarter of max_held_bytes (or one frame), so a client that
    sends raw frames and never reads its results stalls only itself."""
    limit = 4 << 20
    settings = Settings(port=0, metrics_port=-1, cameras=(), max_held_bytes=limit)
    server = Server(settings)
    await server.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as stalled_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            pixels = scene(7200, 480, 480).tobytes()  # 691 KB a frame
            raw = pb.RawImage(width=480, height=480, format=pb.PIXEL_FORMAT_BGR8, data=pixels)
            # every stage in float32: a few results fill gRPC's window, then the server's
            # writes to this client wait, and its frames pile up
            heavy = pb.ResultOptions(
                feature_maps=["stage1", "stage2", "stage3", "stage4"],
                encoding=pb.TENSOR_ENCODING_FLOAT32,
            )

            async def flood() -> AsyncIterator[pb.FrameRequest]:
                for i in itertools.count():
                    yield pb.FrameRequest(frame_id=i, raw=raw, options=heavy if i == 0 else None)

            stalled = pb_grpc.ConvstreamStub(stalled_channel).StreamFrames(flood())
            assert server.servicer is not None
            budget = server.servicer.byte_budget
            for _ in range(100):  # until its frames wait for room
                await asyncio.sleep(0.1)
                if budget.held:
                    break
            await asyncio.sleep(2.0)
            assert 0 < budget.held <= budget.share == limit // 4

            async def frames() -> AsyncIterator[pb.FrameRequest]:
                for i in range(6):
                    yield pb.FrameRequest(frame_id=i, raw=raw)

            stub = pb_grpc.ConvstreamStub(channel)
            results = [r async for r in stub.StreamFrames(frames(), timeout=30)]
            assert [(r.frame_id, r.status.code) for r in results] == [(i, 0) for i in range(6)]
            stalled.cancel()
        for _ in range(50):
            if budget.held == 0:
                break
            await asyncio.sleep(0.1)
        assert budget.held == 0
    finally:
        await server.stop(grace=0)


@pytest.mark.live  # its streams end after 0.8 s unread: a loaded machine ended one early
async def test_a_stream_whose_results_wait_unread_is_ended_and_frees_its_place() -> None:
    """A client that keeps its stream open but reads nothing held its place under max_streams
    for ever (the idle timeout only counted frames sent): the stream is now ended once a
    result has waited unread that long, and its client learns why when it reads again. Such
    an ended call still holds the result gRPC could not send until its client reads or
    leaves, so as many as max_streams of them at most: past that a stalled stream keeps its
    place until one is gone."""
    settings = Settings(
        port=0, metrics_port=-1, cameras=(), max_streams=1, stream_idle_timeout_s=0.8
    )
    server = Server(settings)
    await server.start()
    try:
        limit = [("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=limit) as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            data = jpeg(scene(7300, 480, 640))
            heavy = pb.ResultOptions(  # 7.4 MB a result: gRPC's window fills at once
                feature_maps=["stage1", "stage2"], encoding=pb.TENSOR_ENCODING_FLOAT32
            )

            async def then_hold(
                count: int, sent: asyncio.Event, options: pb.ResultOptions | None = None
            ) -> AsyncIterator[pb.FrameRequest]:
                for i in range(count):
                    yield pb.FrameRequest(frame_id=i, encoded=data, options=options)
                sent.set()
                await asyncio.sleep(60)  # open, sending nothing more, reading nothing

            async def stall() -> grpc.aio.StreamStreamCall:
                sent = asyncio.Event()
                call = stub.StreamFrames(then_hold(8, sent, heavy))
                await asyncio.wait_for(sent.wait(), 30)
                return call

            async def admitted_within(seconds: float) -> bool:
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    probe = stub.StreamFrames(then_hold(1, asyncio.Event()))
                    try:
                        answer = await asyncio.wait_for(probe.read(), 30)
                        assert answer.frame_id == 0 and not answer.status.code
                        return True
                    except grpc.aio.AioRpcError as exc:  # the place is still taken
                        assert exc.code() == EXHAUSTED, exc.details()
                        await asyncio.sleep(0.2)
                    finally:
                        probe.cancel()
                return False

            async def read_to_its_end(call: grpc.aio.StreamStreamCall) -> None:
                """What gRPC had delivered before the stall, then why the stream ended."""
                read = []
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    async for result in call:
                        read.append(result.frame_id)
                assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                told = str(ended.value.details())
                assert "results not read for 0.8 s (stream_idle_timeout_s)" in told
                assert read == list(range(len(read))) and 0 < len(read) < 8

            first = await stall()
            assert await admitted_within(30)  # its place was given back
            second = await stall()  # one ended stream already waits for its client
            assert not await admitted_within(3 * 0.8)  # so this one keeps its place
            await read_to_its_end(first)  # the first is gone: the second may end
            assert await admitted_within(30)
            await read_to_its_end(second)
    finally:
        await server.stop(grace=0)


async def test_one_callers_calls_together_leave_a_decoding_thread_to_others(
    burst: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three Analyze calls of one token, each a 6300x6300 PNG that takes most of a second to
    decode, took every decoding thread clients may take (each call was a caller of its own),
    and another client's stream went from 26 ms a frame to 290-380 ms (a review). A caller's
    calls run at most a caller's share of decodes together: the spare thread stays another
    caller's. Here decodes of frames named "heavy" wait until the test lets them go, so what
    runs at once is counted, whatever the machine's speed."""
    tokens, callers = _callers(2)
    settings = Settings(port=0, metrics_port=-1, cameras=(), tokens=tokens, decode_threads=2)
    server = Server(settings)
    await server.start()
    assert server.servicer is not None
    pipeline = server.servicer.pipeline
    prepare = pipeline.prepare
    release, lock = threading.Event(), threading.Lock()
    running, most = 0, 0

    def held(request: pb.FrameRequest) -> Any:
        nonlocal running, most
        if request.source == "heavy":
            with lock:
                running += 1
                most = max(most, running)
            try:
                release.wait(30)
            finally:
                with lock:
                    running -= 1
        return prepare(request)

    monkeypatch.setattr(pipeline, "prepare", held)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            # one more call than a caller's share: as callers of their own, they took every
            # thread but the cameras'
            share = settings.decode_threads
            frame = pb.FrameRequest(source="heavy", encoded=burst[0])
            heavy = [
                asyncio.ensure_future(stub.Analyze(frame, metadata=callers[0], timeout=120))
                for _ in range(share + 1)
            ]
            deadline = time.monotonic() + 30
            while running < share:
                assert time.monotonic() < deadline, f"{running} heavy decodes began, not {share}"
                await asyncio.sleep(0.01)
            # the other caller's frame is decoded and answered while they are held
            other = await _open(stub, burst[1], callers[1])
            answered = await other.read()
            assert not answered.status.code, answered.status.message
            waiting = [call.done() for call in heavy]
            with lock:
                decoding, at_most = running, most
            release.set()
            assert waiting == [False] * (share + 1), (
                "expected the other caller's frame answered while the heavy calls' decodes "
                f"were held, but it came after they had ended ({waiting}): it waited for a "
                "thread they held"
            )
            assert (decoding, at_most) == (share, share), (
                f"expected one caller's calls to decode {share} frames at once, at most, got "
                f"{decoding} when the other's frame was answered, {at_most} at most"
            )
            for result in await asyncio.gather(*heavy):
                assert not result.status.code, result.status.message
            await other.done_writing()
            assert await other.code() == grpc.StatusCode.OK
    finally:
        release.set()
        await server.stop(grace=0)


@pytest.mark.alone
async def test_a_stream_of_slow_frames_does_not_hold_up_another_clients_frames(
    burst: list[bytes],
) -> None:
    """A 6300x6300 PNG is within the default limits and takes most of a second to decode;
    one stream sending them keeps every core decoding, and another client's frame still
    starts at once rather than waiting behind that stream's queue. Another client: a token
    of its own (a caller's calls together take a caller's share of threads)."""
    tokens, callers = _callers(2)
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), tokens=tokens))
    await server.start()
    try:
        heavy = png(np.zeros((6300, 6300, 3), np.uint8))  # 126 KB
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)

            async def pngs() -> AsyncIterator[pb.FrameRequest]:
                for i in range(6):
                    yield pb.FrameRequest(frame_id=i, encoded=heavy)

            flooding = stub.StreamFrames(pngs(), metadata=callers[0])
            flood = asyncio.create_task(_slow_reader(flooding, 0.0))
            await asyncio.sleep(0.5)  # its first frames are decoding, more wait behind them
            latencies = []
            for data in burst[:4]:
                started = time.perf_counter()
                frame = pb.FrameRequest(encoded=data)
                result = await stub.Analyze(frame, metadata=callers[1], timeout=60)
                latencies.append(time.perf_counter() - started)
                assert result.status.code == 0
            slow = await asyncio.wait_for(flood, 120)
        decode_s = float(np.median([r.timings.decode_ms for r in slow])) / 1000
        assert len(slow) == 6
        # behind that stream's queue, each would wait at least one of its decodes
        assert max(latencies) < decode_s / 2, (latencies, decode_s)
    finally:
        await server.stop(grace=0)


@pytest.mark.alone
async def test_clients_heavy_frames_never_keep_a_camera_waiting() -> None:
    """Calls that keep every decoding thread busy with PNGs that take most of a second each
    (a security review sent 24 of 300 KB that take 5 s): a camera's frame waited its turn
    among them, and the camera went 35 s without a result while it read "running". The
    cameras have a thread clients never take: their frames start at once."""
    camera = CameraConfig(id="belt", source="demo:conveyor?fps=5")
    server = Server(Settings(port=0, metrics_port=-1, cameras=(camera,)))
    await server.start()
    try:
        heavy = png(np.zeros((6300, 6300, 3), np.uint8))  # 126 KB
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            watch = stub.WatchCamera(pb.WatchCameraRequest(camera_id="belt"))
            await asyncio.wait_for(watch.read(), 60)  # the camera runs

            async def pngs(n: int) -> list[pb.FrameResult]:
                async def frames() -> AsyncIterator[pb.FrameRequest]:
                    for i in range(n):
                        yield pb.FrameRequest(frame_id=i, encoded=heavy)

                return await _slow_reader(stub.StreamFrames(frames()), 0.0)

            floods = [asyncio.create_task(pngs(3)) for _ in range(2)]
            calls = [stub.Analyze(pb.FrameRequest(encoded=heavy), timeout=120) for _ in range(2)]
            flood = asyncio.gather(*floods, *calls)
            waits = []  # the camera's frames' queueing, while every client's thread decodes
            while not flood.done():
                result = await asyncio.wait_for(watch.read(), 60)
                assert result.status.code == 0, result.status.message
                waits.append(result.timings.queue_ms / 1000)
            done = await flood
            watch.cancel()
        decode_s = float(
            np.median([r.timings.decode_ms for r in [*done[0], *done[1], *done[2:]]]) / 1000
        )
        assert decode_s > 0.2 and len(waits) >= 5, (decode_s, waits)
        # waiting its turn behind them, a frame would wait about one of their decodes
        assert max(waits) < decode_s / 2, (waits, decode_s)
    finally:
        await server.stop(grace=0)


async def test_refused_frames_hold_no_pixels_and_a_full_queue_of_them_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A latest-only stream whose client stops reading, sending raw frames that are refused
    (their options ask for another policy): the refusals wait their turn as shells of a few
    bytes, MAX_REFUSALS_WAITING of them at most, instead of piling up with their pixels."""
    sessions = _sessions(monkeypatch)
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), max_held_bytes=4 << 20))
    await server.start()
    try:
        pixels = scene(7300, 480, 480).tobytes()
        raw = pb.RawImage(width=480, height=480, format=pb.PIXEL_FORMAT_BGR8, data=pixels)
        first = pb.ResultOptions(
            freshness=pb.FRESHNESS_LATEST_ONLY,
            feature_maps=["stage1", "stage2", "stage3", "stage4"],
            encoding=pb.TENSOR_ENCODING_FLOAT32,  # 7 MB results: the writes soon wait
        )
        other = pb.ResultOptions(freshness=pb.FRESHNESS_BOUNDED_QUEUE)  # refused

        async def flood() -> AsyncIterator[pb.FrameRequest]:
            for i in itertools.count():
                options = first if i == 0 else other if i >= 4 else None
                yield pb.FrameRequest(frame_id=i, raw=raw, options=options)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = pb_grpc.ConvstreamStub(channel).StreamFrames(flood())  # never read

            def refusals_waiting() -> int:
                return sum(item.options is None for item in sessions[0]._pending)

            deadline = time.monotonic() + 20  # until the reader has taken that many frames
            while not sessions or refusals_waiting() < MAX_REFUSALS_WAITING:
                assert time.monotonic() < deadline, "the refusals never filled their places"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # and it takes no more
            assert len(sessions) == 1
            pending = list(sessions[0]._pending)
            # (the refusals' small results still flow, into gRPC's window; the frames do not)
            refusals = [item for item in pending if item.options is None]
            assert len(pending) - len(refusals) <= sessions[0].capacity == 1
            assert len(refusals) == MAX_REFUSALS_WAITING  # the reader waits past it
            assert all(item.request.ByteSize() < 20 for item in refusals)
            call.cancel()
    finally:
        await server.stop(grace=0)


async def test_a_frame_that_cannot_fit_drops_none_of_the_frames_waiting(
    burst: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bounded-queue stream with frames waiting, then a raw frame larger than all the server
    holds for streams: that frame alone is refused, and the waiting frames are kept."""
    sessions = _sessions(monkeypatch)
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), max_held_bytes=16 << 20))
    await server.start()
    release = _hold_analysis(server, monkeypatch)  # the window's frames stay in analysis
    try:
        huge = pb.RawImage(
            width=2400, height=2400, format=pb.PIXEL_FORMAT_BGR8, data=bytes(2400 * 2400 * 3)
        )  # 17.3 MB
        queued = pb.ResultOptions(freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=8)

        async def frames() -> AsyncIterator[pb.FrameRequest]:
            for i in range(7):  # 4 in analysis, 3 waiting
                data = burst[i % len(burst)]
                yield pb.FrameRequest(frame_id=i, encoded=data, options=queued if i == 0 else None)
            yield pb.FrameRequest(frame_id=7, raw=huge)

        limit = [("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=limit) as channel:
            call = pb_grpc.ConvstreamStub(channel).StreamFrames(frames())
            reading = asyncio.ensure_future(_slow_reader(call, 0.0, errors=True))
            try:
                await _until_a_refusal_waits(sessions)  # the huge one in, the others held
                assert not reading.done()
                waiting = [item.request.frame_id for item in sessions[0]._pending]
                assert waiting == [4, 5, 6, 7], waiting  # 3 waiting, then the refusal
            finally:
                release.set()
            results = await asyncio.wait_for(reading, 60)
        assert [r.frame_id for r in results] == list(range(8))
        assert [r.status.code for r in results] == [0] * 7 + [INVALID.value[0]]  # never fits
        assert "larger than max_held_bytes" in results[7].status.message
        assert not [i for r in results for i in r.dropped_frame_ids]
    finally:
        await server.stop(grace=0)


async def test_an_analyze_call_that_sends_no_request_gives_its_place_back(
    burst: list[bytes],
) -> None:
    """An Analyze call holds its place from its start (so a call past the cap is refused
    unread): one that never sends its request is ended after 30 s (ANALYZE_REQUEST_S; here
    stream_idle_timeout_s, the shorter), and its place is free again."""
    settings = Settings(
        port=0, metrics_port=-1, cameras=(), max_analyze_calls=1, stream_idle_timeout_s=0.5
    )
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            analyze = channel.stream_unary(
                "/convstream.v1.Convstream/Analyze",
                request_serializer=pb.FrameRequest.SerializeToString,
                response_deserializer=pb.FrameResult.FromString,
            )
            silent = analyze(timeout=30)  # sends nothing, and does not say it is done
            assert await silent.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            details = await silent.details()
            assert "the Analyze request did not arrive within 0.5 s" in details
            deadline = time.monotonic() + 5  # abort() sends the status before finally runs
            while server.servicer.open_analyze_calls:
                assert time.monotonic() < deadline, "the silent call kept its place"
                await asyncio.sleep(0.02)
            answer = await pb_grpc.ConvstreamStub(channel).Analyze(
                pb.FrameRequest(encoded=burst[0]), timeout=30
            )
            assert 0.0 <= answer.score <= 1.0
    finally:
        await server.stop(grace=0)


async def test_analyze_calls_refused_by_a_drain_are_not_counted_as_at_a_limit(
    burst: list[bytes],
) -> None:
    """convstream_calls_refused_total counts calls refused at a limit: every rolling restart
    counted its refusals there too, and read as a server at its max_analyze_calls."""
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    try:
        assert server.servicer is not None
        server.servicer.draining.set()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.ConvstreamStub(channel).Analyze(pb.FrameRequest(encoded=burst[0]))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        value = server.metrics.registry.get_sample_value
        assert not value("convstream_calls_refused_total", {"method": "Analyze"})
        assert value("convstream_frames_total", {"source": "unnamed", "outcome": "rejected"}) == 1
    finally:
        await server.stop(grace=0)


async def test_analyze_calls_past_the_cap_are_refused_at_once(burst: list[bytes]) -> None:
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), max_analyze_calls=2))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            stream = await _open(stub, burst[0])
            assert (await stream.read()).frame_id == 1
            calls = [stub.Analyze(pb.FrameRequest(encoded=burst[i % 8])) for i in range(12)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            answered = [o for o in outcomes if isinstance(o, pb.FrameResult)]
            assert len(answered) >= 2 and refused
            for error in refused:
                assert error.code() == EXHAUSTED
                assert "the limit is 2" in str(error.details())
            # counted, as the open calls are, for an operator to see the limit reached
            value = server.metrics.registry.get_sample_value
            assert value("convstream_calls_refused_total", {"method": "Analyze"}) == len(refused)
            assert value("convstream_analyze_in_flight") == 0
            # The stream is untouched, and once the calls are done, Analyze answers again.
            await stream.write(pb.FrameRequest(frame_id=2, encoded=burst[1]))
            assert (await stream.read()).frame_id == 2
            assert (await stub.Analyze(pb.FrameRequest(encoded=burst[2]))).score >= 0
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK
    finally:
        await server.stop(grace=0)


def test_a_containers_cpu_quota_bounds_the_cores_the_server_sizes_itself_for(
    tmp_path: Path,
) -> None:
    """`docker --cpus=2` or a Kubernetes CPU limit on a 64-core node: the affinity says 64,
    and 64 workers would share 2 cores' time, throttled (an SRE review's). The cgroup's quota
    bounds the cores, rounded up; no quota, or none to read, leaves the affinity."""
    affinity = len(os.sched_getaffinity(0))
    assert cpu_quota(tmp_path) is None and usable_cores(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")  # cgroup v2, no limit
    assert cpu_quota(tmp_path) is None and usable_cores(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: one, not none
    assert cpu_quota(tmp_path) == 0.5 and usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 1.5 and usable_cores(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("6400000 100000\n")  # more than the affinity: that
    assert usable_cores(tmp_path) == affinity
    # a limit set on a parent (a pod's, the container's cgroup under it): the least counts
    pod = tmp_path / "kubepods" / "pod-1" / "container-1"
    pod.mkdir(parents=True)
    (pod / "cpu.max").write_text("max 100000\n")
    (pod.parent / "cpu.max").write_text("200000 100000\n")
    assert cpu_quota(tmp_path, "kubepods/pod-1/container-1") == 2.0  # the root's is 64
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path, "kubepods/pod-1/container-1") == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # cgroup v1, no limit
    assert cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cpu_quota(v1) == 1.0 and usable_cores(v1) == 1
