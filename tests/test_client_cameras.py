"""cameras() and watch() of the Python client and CLI, against a real server pulling a demo camera.

The demo conveyor (``demo:conveyor``) is the server's own synthetic camera: 640x360 frames at a
steady rate, letterboxed into the 384x640 model input (12 rows of padding above and below).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from live import FFmpegSource, blackhole, free_port, running

from convstream.cli import main
from convstream.client import (
    AsyncClient,
    CameraInfo,
    Cancelled,
    Client,
    DeadlineExceeded,
    Frame,
    InvalidFrame,
    Limits,
    NotFound,
    Overloaded,
    Result,
    ResultOptions,
    Retry,
    ServerUnavailable,
    draw_overlay,
    save_overlay,
)
from convstream.client import cli as client_cli
from convstream.client._report import cameras_text
from convstream.client.cli import CameraLull
from convstream.server import CameraConfig, Server, Settings
from convstream.server.config import TokenConfig
from convstream.server.security import token_hash
from convstream.v1 import convstream_pb2 as pb

pytestmark = pytest.mark.timeout(60)
# alone or live (see scripts/test.sh): the tests of rates, ages and freshness, and of waits
# in seconds

FPS = 20
INPUT = (384, 640)  # the model input the 640x360 demo frames are letterboxed into
HEATMAP = (INPUT[0] // 8, INPUT[1] // 8)


def belt(**kw: object) -> CameraConfig:
    return CameraConfig(id="belt", source=f"demo:conveyor?fps={FPS}", **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(*cameras: CameraConfig, port: int = 0) -> AsyncIterator[Server]:
    server = Server(Settings(port=port, metrics_port=-1, cameras=cameras))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serving(belt()) as srv:
        yield srv


def address(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


async def camera(client: AsyncClient, camera_id: str) -> CameraInfo:
    return next(c for c in await client.cameras() if c.id == camera_id)


def cameras_of(server: Server) -> list[CameraInfo]:
    with Client(address(server)) as client:
        return client.cameras()


async def take(results: AsyncGenerator[Result, None], n: int) -> list[Result]:
    """The next n results, then end the watch."""
    got = [await anext(results) for _ in range(n)]
    await results.aclose()
    return got


@pytest.mark.alone
async def test_cameras_report_state_figures_and_watchers(tmp_path: Path) -> None:
    missing = CameraConfig(id="dock", source=str(tmp_path / "gone.mp4"))
    async with serving(belt(fps=10.0), missing) as server, AsyncClient(address(server)) as client:

        async def warmed_up() -> bool:
            return (await camera(client, "belt")).frames_analysed >= 15

        await until(warmed_up, 10, "belt analysing")
        results = client.watch("belt")
        await anext(results)
        cams = await client.cameras()
        sync = await asyncio.to_thread(cameras_of, server)
        await results.aclose()

        async def unwatched() -> bool:
            return (await camera(client, "belt")).watchers == 0

        await until(unwatched, 5, "the watch ended on the server")

    assert [c.id for c in cams] == ["belt", "dock"]  # the config's order
    assert [c.id for c in sync] == ["belt", "dock"]
    cam, dock = cams
    now = datetime.now(UTC)
    assert cam.state == "running" and cam.flowing and cam.source_kind == "demo"
    assert cam.since is not None and cam.since.tzinfo is not None and cam.since <= now
    assert cam.last_error == "" and cam.reconnects == 0 and cam.watchers == 1
    assert (cam.frame_width, cam.frame_height) == (640, 360)
    assert cam.fps_cap == 10.0 and 5 <= cam.fps_out <= 12  # the cap, not the camera's 20
    assert cam.fps_in > 12 and cam.frames_read > cam.frames_analysed >= 15
    assert cam.frames_skipped > 0  # read, then passed over to keep to the cap
    accounted = cam.frames_analysed + cam.frames_dropped + cam.frames_skipped
    assert 0 <= cam.frames_read - accounted <= 2  # the newest, not yet taken or analysed
    assert cam.last_score is not None and 0.0 <= cam.last_score <= 1.0
    assert cam.last_frame_time is not None
    assert 0 <= (now - cam.last_frame_time).total_seconds() < 5
    assert cam.latency_ms > 0
    assert dock.state == "failed" and not dock.flowing and dock.source_kind == "file"
    assert "no such video file" in dock.last_error
    assert dock.frames_analysed == 0 and dock.last_score is None and dock.last_frame_time is None


@pytest.mark.alone
async def test_watch_yields_results_with_heatmaps_and_maps(server: Server) -> None:
    def sync() -> list[Result]:
        with Client(address(server)) as client:
            results = client.watch("belt", options=ResultOptions(feature_maps=["stage3"]))
            got = [next(results) for _ in range(5)]
            results.close()
            return got

    results = await asyncio.to_thread(sync)
    async with AsyncClient(address(server)) as client:
        results += await take(client.watch("belt"), 3)
    for r in results:
        assert r.ok and r.source == "belt" and r.frame is None and r.input_jpeg is None
        g = r.geometry
        assert g is not None and (g.frame_width, g.frame_height) == (640, 360)
        assert (g.input_height, g.input_width) == INPUT and g.pad_top == 12
        assert r.heatmap is not None and r.heatmap.dtype == np.float32
        assert r.heatmap.shape == HEATMAP
        assert r.heatmap.max() == pytest.approx(r.score, abs=2e-3)
        assert r.capture_time is not None and abs(time.time() - r.capture_time) < 5
        assert 0 <= r.frame_age_ms < 2000 and r.frames_dropped == 0
        assert r.timings is not None and r.timings.inference_ms > 0
    first, second = results[:5], results[5:]
    assert [r.sequence for r in first] == [1, 2, 3, 4, 5]
    assert [r.sequence for r in second] == [1, 2, 3]
    ids = [r.frame_id for r in first]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert all(r.feature_maps["stage3"].shape == (64, *HEATMAP) for r in first)
    assert all(not r.feature_maps for r in second)


async def test_closing_the_async_client_ends_its_calls_with_cancelled(server: Server) -> None:
    """A watch and a stream running in their own tasks end with Cancelled, as close() says,
    not asyncio.CancelledError, which reads as the task itself cancelled; a task that is
    cancelled stays cancelled."""
    client = AsyncClient(address(server))
    first = asyncio.Event()

    async def watching() -> None:
        async for _ in client.watch("belt"):
            first.set()

    async def streaming() -> None:
        image = np.full((240, 320, 3), 90, np.uint8)
        async for _ in client.stream(itertools.repeat(image)):
            pass

    tasks = [asyncio.create_task(watching()), asyncio.create_task(streaming())]
    await asyncio.wait_for(first.wait(), 10)
    await asyncio.sleep(0.2)
    await client.close()
    for task in tasks:
        with pytest.raises(Cancelled, match="client was closed"):
            await asyncio.wait_for(task, 10)
    async with AsyncClient(address(server)) as other:
        cancelled = asyncio.create_task(take(other.watch("belt"), 10**6))
        await asyncio.sleep(0.5)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled


async def test_closing_ends_a_call_waiting_on_a_silent_server_or_an_outage_with_cancelled() -> None:
    """A question to a server that never answers, and a watch resuming through an outage, in
    tasks of their own: close() ended them with asyncio.CancelledError, which reads as the task
    itself cancelled, and a closed-channel error of gRPC's."""
    silent, port = blackhole()
    try:
        client = AsyncClient(f"127.0.0.1:{port}", timeout=30.0)
        asking = asyncio.create_task(client.cameras())
        await asyncio.sleep(0.5)
        await client.close()
        with pytest.raises(Cancelled, match="client was closed"):
            await asyncio.wait_for(asking, 10)
    finally:
        silent.close()
    async with serving(belt()) as server:
        client = AsyncClient(address(server), retry=Retry(resume_timeout=math.inf))
        first = asyncio.Event()

        async def watching() -> None:
            async for _ in client.watch("belt"):
                first.set()

        task = asyncio.create_task(watching())
        await asyncio.wait_for(first.wait(), 10)
    await asyncio.sleep(1.0)  # the server is gone: the watch tries again, and again
    await client.close()
    with pytest.raises(Cancelled, match="client was closed"):
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.live
async def test_close_ends_a_watch_waiting_out_its_backoff_at_once(flavour: str) -> None:
    """A watch whose server went waits out its Retry backoff before it subscribes again, and
    close() waited with it, for the rest of the backoff: a WMS integrator's program took
    12.7 s to stop while its server was down. close() now ends the wait."""
    retry = Retry(backoff=30.0, max_backoff=30.0, resume_timeout=math.inf)
    first = threading.Event()
    client: Client | AsyncClient
    async with serving(belt()) as server:
        if flavour == "sync":
            client = Client(address(server), retry=retry)

            def watching_sync() -> None:
                for _ in client.watch("belt"):
                    first.set()

            task = asyncio.create_task(asyncio.to_thread(watching_sync))
        else:
            client = AsyncClient(address(server), retry=retry)

            async def watching() -> None:
                async for _ in client.watch("belt"):
                    first.set()

            task = asyncio.create_task(watching())
        await asyncio.to_thread(first.wait, 10)
    await asyncio.sleep(1.0)  # the server is gone: the watch waits 30 s to subscribe again
    started = time.monotonic()
    await (client.close() if isinstance(client, AsyncClient) else asyncio.to_thread(client.close))
    with pytest.raises(Cancelled, match="client was closed"):
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 5


@pytest.mark.alone
async def test_a_quiet_watch_says_whether_the_server_answers(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`convstream watch` told of a camera that was down, and said nothing when the link or
    the server went silent: 40 s of nothing, then a burst of old results."""
    monkeypatch.setattr(client_cli, "ASK_S", 0.5)  # how long it waits for the server's answer

    def lull_says(client: Client) -> str:
        """What the lull says within 3 s: its first line, and any other 0.5 s after it."""
        told = ""
        with CameraLull(client, "belt", quiet_s=0.5):
            deadline = time.monotonic() + 3.0
            while "\n" not in told and time.monotonic() < deadline:
                time.sleep(0.05)
                told += capsys.readouterr().err
            time.sleep(0.5)
        return told + capsys.readouterr().err

    silent, port = blackhole()  # takes the connection, never says a word
    try:
        with Client(f"127.0.0.1:{port}", timeout=1.0) as client:
            told = await asyncio.to_thread(lull_says, client)
    finally:
        silent.close()
    assert "and the server does not answer: call to 127.0.0.1:" in told, told
    assert "timed out" in told and "the network between here and there" in told, told
    assert told.count("\n") == 1  # said once while it lasts
    with Client(address(server)) as client:  # a running camera, and no result here
        told = await asyncio.to_thread(lull_says, client)
    assert "although camera 'belt' analyses frames: its results are not getting here" in told
    # a token revoked while it watched: refused, not "the network"
    tokens = (TokenConfig(name="dashboard", role="watch", sha256=token_hash("kept")),)
    guarded = Server(server.settings.model_copy(update={"port": 0, "tokens": tokens}))
    await guarded.start()
    try:
        with Client(address(guarded), token="revoked") as client:
            told = await asyncio.to_thread(lull_says, client)
    finally:
        await guarded.stop(grace=0)
    assert "and the server refuses this client: the token was not recognised" in told, told
    # its own bracket, then the hint: not two brackets side by side
    assert "config?); this server does not take that token: ask its operator" in told, told


@pytest.mark.alone
async def test_max_fps_is_honoured(server: Server) -> None:
    async with AsyncClient(address(server)) as client:
        capped: list[Result] = []
        everything: list[Result] = []

        async def collect(into: list[Result], max_fps: float | None) -> None:
            started = time.monotonic()
            async for result in client.watch("belt", max_fps=max_fps):
                into.append(result)
                if time.monotonic() - started > 2.5:
                    break

        await asyncio.gather(collect(capped, 4), collect(everything, None))
    assert 7 <= len(capped) <= 13, [r.frame_id for r in capped]  # 4 per second
    assert len(everything) >= 2 * len(capped)  # a 20 fps camera, whatever this machine manages
    gaps = np.diff([r.frame_id for r in capped])
    assert np.median(gaps) >= 3  # every 5th frame of 20 per second


async def test_input_jpeg_draws_overlays_on_the_frame(server: Server, tmp_path: Path) -> None:
    async with AsyncClient(address(server)) as client:
        results = await take(client.watch("belt", options=ResultOptions(input_jpeg=True)), 2)
    for r in results:
        assert r.input_jpeg is not None and r.geometry is not None
        model_input = cv2.imdecode(np.frombuffer(r.input_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert model_input is not None and model_input.shape == (*INPUT, 3)
        # Without colour or label the overlay is the frame cut out of the letterboxed input.
        plain = draw_overlay(r, alpha=0.0, label=False)
        assert np.array_equal(plain, model_input[12:372])
        path = save_overlay(tmp_path / f"{r.frame_id}.png", r)
        drawn = cv2.imread(str(path))
        assert drawn is not None and drawn.shape == (360, 640, 3)
        assert not np.array_equal(drawn, plain)
    with pytest.raises(ValueError, match="input_jpeg=True"):
        draw_overlay(Result(frame_id=1, source="belt"))


@pytest.mark.alone
async def test_unknown_camera_and_bad_options(server: Server) -> None:
    def sync() -> None:
        with Client(address(server)) as client:
            started = time.monotonic()
            with pytest.raises(NotFound, match=r"no camera 'dock-9'; cameras: belt"):
                next(client.watch("dock-9", resume=True))
            assert time.monotonic() - started < 1.0  # not retried
            for bad in (
                lambda: client.watch(""),
                lambda: client.watch("belt", max_fps=-1),
                lambda: client.watch("belt", queue_size=0),
            ):
                with pytest.raises(ValueError):
                    bad()
            # the server's bounds, told before a call: it answered INVALID_ARGUMENT
            with pytest.raises(ValueError, match=r"max_fps must be 0 \(every result\) to 1000"):
                client.watch("belt", max_fps=2000)
            with pytest.raises(ValueError, match=r"queue_size must be 1..1024 or None, got 1025"):
                client.watch("belt", queue_size=1025)
            for url in ("rtsp://admin:pw@10.0.0.1/live", "/dev/video0", "device:0"):
                with pytest.raises(ValueError, match="never a URL, a path or a device") as info:
                    client.watch(url)
                assert "pw" not in str(info.value)
            # the server's rule, told before a call: it answered INVALID_ARGUMENT
            for bad_id in ("dock 3", "admin:pw@cam", "-belt", "x" * 65):
                with pytest.raises(ValueError, match=r"1 to 64 letters, .* got one of") as info:
                    client.watch(bad_id)
                assert "pw" not in str(info.value)

    await asyncio.to_thread(sync)
    async with AsyncClient(address(server)) as client:
        with pytest.raises(NotFound, match="dock-9") as info:
            await anext(client.watch("dock-9"))
        assert info.value.code is not None and info.value.code.name == "NOT_FOUND"
        with pytest.raises(InvalidFrame, match="stage9"):
            await anext(client.watch("belt", options=ResultOptions(feature_maps=["stage9"])))


async def test_the_readme_python_example_runs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's "From Python" block, as a newcomer pastes it: on the samples `convstream
    samples` writes, against a server with the demo camera the README's command serves."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("\nFrom Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert await asyncio.to_thread(main, ["samples", str(tmp_path / "boxes"), "--count", "2"]) == 0
    capsys.readouterr()
    async with serving(CameraConfig(id="demo", source=f"demo:conveyor?fps={FPS}")) as server:
        # Client() with no address, as the README writes it, finds the server as a shell's
        # client commands do (the README's examples named 127.0.0.1:50051, to be edited)
        monkeypatch.setenv("CONVSTREAM_ADDRESS", address(server))
        assert "Client()" in block and '50051")' not in block
        code = block.replace("/tmp/boxes/", f"{tmp_path}/boxes/")
        code = code.replace("/tmp/box-001-overlay.png", f"{tmp_path}/box-001-overlay.png")
        assert str(tmp_path) in code
        await asyncio.to_thread(exec, compile(code, "README.md", "exec"), {})
    info, analysed, *lines = capsys.readouterr().out.splitlines()
    assert info.startswith("ModelInfo(name=")
    score, damaged, peak = analysed.split(" ", 2)
    assert float(score) > 0.9 and damaged == "True"  # the damaged sample
    assert re.fullmatch(r"\(\d+, \d+\)", peak), peak
    # its damaged areas, a line each: x, y, width, height in its 1280x720 pixels, value
    regions = list(itertools.takewhile(lambda line: not line.startswith("("), lines))
    heatmap, maps, camera, *watched = lines[len(regions) :]
    assert regions and float(regions[0].split()[-1]) == float(score)
    for line in regions:
        x, y, width, height = (int(v) for v in line.split()[:4])
        assert 0 <= x < x + width <= 1280 and 0 <= y < y + height <= 720, line
    assert heatmap == f"({HEATMAP[0]}, {HEATMAP[1]})"
    assert maps == f"(64, {HEATMAP[0]}, {HEATMAP[1]})"  # stage3, asked for by name
    assert camera.startswith("demo ")
    overlay = cv2.imread(str(tmp_path / "box-001-overlay.png"))
    assert overlay is not None and overlay.shape[2] == 3  # the picture a person looks at
    # not among the samples, where `convstream analyze /tmp/boxes` would count it as a frame
    assert sorted(p.name for p in (tmp_path / "boxes").iterdir()) == [
        "box-000-intact.jpg",
        "box-001-damaged.jpg",
    ]
    assert len(watched) == 10
    ids = [int(line.split()[0]) for line in watched]
    assert ids == sorted(ids) and len(set(ids)) == 10


async def test_removed_camera_ends_the_watch_with_not_found(server: Server) -> None:
    async with AsyncClient(address(server)) as client:
        results = client.watch("belt")
        await anext(results)
        other = CameraConfig(id="dock", source="demo:conveyor?fps=5")
        await server.reload(server.settings.model_copy(update={"cameras": (other,)}))
        with pytest.raises(NotFound, match="removed"):
            while True:
                await anext(results)
        assert [c.id for c in await client.cameras()] == ["dock"]


async def _across_a_restart(
    watch: AsyncIterator[Result], three: threading.Event | asyncio.Event, after: int
) -> list[Result]:
    """A watch's results until its second call has given ``after``; ``three`` is set at the
    third result, for the test to restart the server."""
    results: list[Result] = []
    async for result in watch:
        results.append(result)
        if len(results) == 3:
            three.set()
        if second_call_started(results, after):
            break
    return results


def second_call_started(results: list[Result], n: int) -> int | None:
    """Where the second WatchCamera call's results begin, once it has given n; else None."""
    starts = [i for i, r in enumerate(results) if r.sequence == 1]
    return starts[1] if len(starts) == 2 and len(results) - starts[1] >= n else None


async def test_a_watch_paused_past_the_servers_idle_timeout_subscribes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server ends a watch whose client reads no result for stream_idle_timeout_s (0.6 s
    here), DEADLINE_EXCEEDED: a program that paused (a slow alert, a sampling loop) lost
    its watch for good, where before it lost only its stale results. It subscribes again."""
    caplog.set_level(logging.WARNING, logger="convstream.client")
    settings = Settings(port=0, metrics_port=-1, cameras=(belt(),), stream_idle_timeout_s=0.6)
    server = Server(settings)
    await server.start()
    heavy = ResultOptions(feature_maps=["stage1"], encoding="float32")  # fills gRPC's window

    def pause_and_go_on() -> list[Result]:
        got: list[Result] = []
        with Client(address(server)) as client:
            for result in client.watch("belt", options=heavy):
                got.append(result)
                if len(got) == 2:
                    time.sleep(2.5)  # the server ends the watch meanwhile
                if second_call_started(got, 2):
                    return got
        raise AssertionError("the watch ended")

    try:
        results = await asyncio.wait_for(asyncio.to_thread(pause_and_go_on), 60)
    finally:
        await server.stop(grace=0)
    assert second_call_started(results, 2) is not None
    said = [r.getMessage() for r in caplog.records if "broke" in r.getMessage()]
    assert said and "results not read for 0.6 s" in said[0], said


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_watch_subscribes_again_after_a_server_restart(
    flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="convstream.client")
    first = Server(Settings(port=0, metrics_port=-1, cameras=(belt(),)))
    await first.start()
    second = Server(Settings(port=first.port, metrics_port=-1, cameras=(belt(),)))
    running = [first]
    three = threading.Event()

    async def restart() -> None:
        await asyncio.to_thread(three.wait, 10)
        await first.stop(grace=0)
        running.remove(first)
        await asyncio.sleep(0.6)  # down long enough for a few refused tries
        await second.start()
        running.append(second)

    def consume() -> list[Result]:
        got: list[Result] = []
        with Client(address(first)) as client:
            for result in client.watch("belt"):
                got.append(result)
                if len(got) == 3:
                    three.set()
                if second_call_started(got, 3):
                    return got
        raise AssertionError("the watch ended")

    try:
        restarted = asyncio.create_task(restart())
        if flavour == "sync":
            results = await asyncio.to_thread(consume)
        else:
            async with AsyncClient(address(first)) as client:
                results = await _across_a_restart(client.watch("belt"), three, 3)
                await restarted
                # Without resume a restart ends the watch.
                watching = client.watch("belt", resume=False)
                await anext(watching)
                await second.stop(grace=0)
                running.remove(second)
                with pytest.raises(ServerUnavailable, match="unavailable"):
                    while True:  # results already on their way come first
                        await anext(watching)
        await restarted
    finally:
        for server in running:
            await server.stop(grace=0)
    split = second_call_started(results, 3)
    assert split is not None
    # Results of frames already sent may come before the first call ends.
    before, after = results[:split], results[split:]
    assert len(before) >= 3 and [r.sequence for r in before] == list(range(1, len(before) + 1))
    assert [r.sequence for r in after] == [1, 2, 3]  # the second server's call
    assert all(r.ok and r.source == "belt" for r in results)
    warnings = [r.getMessage() for r in caplog.records if r.name == "convstream.client"]
    # once per break, not once per try; and that it is back, once (a log said it broke, and
    # then nothing: whether it came back was anyone's guess)
    assert len(warnings) == 2, warnings
    assert "watch of camera 'belt'" in warnings[0] and "subscribing again" in warnings[0]
    assert re.fullmatch(
        r"watch of camera 'belt' at \S+: the server took it again after \d+\.\d s "
        r"\(results follow once the camera sends them\)",
        warnings[1],
    )


async def test_a_watch_of_a_published_stream_waits_for_its_publisher_after_a_restart() -> None:
    """After a restart the watcher subscribed before the publisher had sent again, heard
    NotFound and ended for good, while the publisher came back (an integrator's review):
    within Retry.resume_timeout the watch now waits for it, as for the server itself."""
    first = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await first.start()
    second = Server(Settings(port=first.port, metrics_port=-1, cameras=()))
    running = [first]
    image = cv2.imencode(".jpg", np.full((240, 320, 3), 90, np.uint8))[1].tobytes()

    async def publish(seconds: float) -> None:
        """Publish "dock-p" until the time is up or the server goes."""
        async with AsyncClient(address(first)) as client:

            async def frames() -> AsyncIterator[Frame]:
                ends = time.monotonic() + seconds
                while time.monotonic() < ends:
                    yield Frame(image, source="dock-p")
                    await asyncio.sleep(0.05)

            with contextlib.suppress(ServerUnavailable):
                async for _ in client.stream(frames(), publish=True):
                    pass

    publishers = [asyncio.create_task(publish(30))]
    three = asyncio.Event()

    async def restart() -> None:
        await three.wait()
        await first.stop(grace=0)
        running.remove(first)
        await publishers[0]  # its stream broke with the server
        await second.start()
        running.append(second)
        await asyncio.sleep(2.0)  # the watcher tries again before the publisher is back
        publishers.append(asyncio.create_task(publish(30)))

    restarting = asyncio.create_task(restart())
    try:
        async with AsyncClient(address(first)) as client:

            async def listed() -> bool:
                return "dock-p" in [c.id for c in await client.cameras()]

            await until(listed, 10, "the stream published")
            results = await _across_a_restart(client.watch("dock-p"), three, 2)
        await restarting
    finally:
        for task in (restarting, *publishers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in running:
            await server.stop(grace=0)
    # it subscribed again, to the second server, and had the publisher's frames there
    split = second_call_started(results, 2)
    assert split is not None, [r.sequence for r in results]
    assert [r.sequence for r in results[split:]] == [1, 2]  # the second server's call
    assert all(r.ok and r.source == "dock-p" for r in results)


async def test_a_watch_of_a_camera_removed_while_its_server_was_down_ends_not_found() -> None:
    """NotFound after a restart is waited out for a published stream (its publisher sends
    again later), and was for a camera too: one removed from the config while the server was
    down kept a watch with resume_timeout=inf subscribing for ever, silent (a WMS
    integrator's review; a removal by SIGHUP ended it at once). The server now says what
    the id is, and a camera's NotFound ends the watch."""
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=5")
    first = Server(Settings(port=0, metrics_port=-1, cameras=(belt,)))
    await first.start()
    second = Server(Settings(port=first.port, metrics_port=-1, cameras=()))
    running = [first]
    try:
        retry = Retry(backoff=0.1, max_backoff=0.5, resume_timeout=math.inf)
        async with AsyncClient(address(first), retry=retry) as client:
            watch = client.watch("belt", max_fps=5)
            assert (await anext(watch)).source == "belt"
            await first.stop(grace=0)
            running.remove(first)
            await second.start()
            running.append(second)
            with pytest.raises(NotFound, match=r"no camera 'belt'; cameras: none"):
                await asyncio.wait_for(take(watch, 10**6), 30)  # it waited for good
    finally:
        for server in running:
            await server.stop(grace=0)


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.live
async def test_a_watch_of_a_camera_that_is_down_outlasts_a_server_restart(flavour: str) -> None:
    """A watch of a camera that has given no result yet (it reconnects) subscribes again after
    a restart, as a running camera's watch does: the server says it took the watch. Before,
    such a watch gave up after Retry.attempts tries, even with resume_timeout=math.inf."""
    down = CameraConfig(
        id="belt",
        source=f"rtsp://127.0.0.1:{free_port()}/x",  # nothing listens: it reconnects for good
        open_timeout_s=1.0,
        reconnect_min_s=0.3,
        reconnect_max_s=0.5,
    )
    first = Server(Settings(port=0, metrics_port=-1, cameras=(down,)))
    await first.start()
    # after the restart the camera is back, as when a fixed config is what restarted it
    second = Server(Settings(port=first.port, metrics_port=-1, cameras=(belt(),)))
    running = [first]
    retry = Retry(attempts=2, backoff=0.1, max_backoff=0.2, resume_timeout=30.0)

    # up to the first frame's result: the camera's notices (down) may come before it
    def first_sync() -> list[Result]:
        seen: list[Result] = []
        with Client(address(first), retry=retry) as client:
            results = client.watch("belt")
            try:
                while not seen or not seen[-1].ok:
                    seen.append(next(results))
            finally:
                results.close()
        return seen

    async def first_async() -> list[Result]:
        seen: list[Result] = []
        async with AsyncClient(address(first), retry=retry) as client:
            results = client.watch("belt")
            try:
                while not seen or not seen[-1].ok:
                    seen.append(await anext(results))
            finally:
                await results.aclose()
        return seen

    try:
        watching = asyncio.create_task(
            asyncio.to_thread(first_sync) if flavour == "sync" else first_async()
        )
        async with AsyncClient(address(first)) as other:
            deadline = time.monotonic() + 10
            while (camera := (await other.cameras())[0]).watchers != 1:
                assert time.monotonic() < deadline and not watching.done(), camera
                await asyncio.sleep(0.05)
        assert camera.state in ("connecting", "reconnecting") and camera.frames_read == 0
        await first.stop(grace=0)
        running.remove(first)
        await asyncio.sleep(1.5)  # long past two tries
        assert not watching.done()  # still trying: it was watching when the server went
        await second.start()
        running.append(second)
        seen = await asyncio.wait_for(watching, 20)
    finally:
        for server in running:
            await server.stop(grace=0)
    *told, result = seen
    assert all(r.camera_state in ("stalled", "reconnecting") for r in told), told
    assert result.ok and result.source == "belt" and result.sequence == 1


def test_drop_counts_carry_on_across_a_watch_s_calls() -> None:
    with Client("127.0.0.1:1") as client:
        bookkeeping = client._resumption(True, "belt")
    seen = []
    for call in ([0, 2, 5], [0, 1]):  # each call's server counts from 0
        bookkeeping.subscribed()
        for dropped in call:
            message = bookkeeping.watched(pb.FrameResult(frame_id=1, frames_dropped=dropped))
            seen.append(Result.from_proto(message).frames_dropped)
    assert seen == [0, 2, 5, 5, 6]


def test_a_server_that_takes_a_watch_and_drops_it_at_once_is_not_retried_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decision logic: a watch the server registers and drops straight away (a proxy
    cutting it, a server failing each one) backs off and gives up after resume_timeout, as
    any outage; it re-subscribed every 0.1 s for good. One that held a while breaks anew."""
    clock = [1000.0]
    monkeypatch.setattr("convstream.client._base.time", SimpleNamespace(monotonic=lambda: clock[0]))
    client = Client("127.0.0.1:1", retry=Retry(backoff=0.1, max_backoff=1.0, resume_timeout=2.0))
    bookkeeping = client._resumption(True, "belt")
    lost = ServerUnavailable("server is shutting down")
    delays = []
    for _ in range(20):  # bounded: it retried for good
        bookkeeping.subscribed()
        bookkeeping.registered((("convstream-watching", "belt"),))
        clock[0] += 0.05  # dropped at once
        delay = bookkeeping.delay(lost, 0)
        if delay is None:
            break
        delays.append(delay)
        clock[0] += delay
    assert delays == [0.1, 0.2, 0.4, 0.8], delays  # then 1.0 more would pass 2 s
    bookkeeping.subscribed()
    bookkeeping.registered((("convstream-watching", "belt"),))
    clock[0] += 11.0  # held: the next break is a new outage, retried from the start
    assert bookkeeping.delay(lost, 0) == 0.1
    client.close()


@pytest.mark.live
async def test_a_watch_that_must_outlast_any_outage_waits_for_a_server_not_up_yet() -> None:
    """Retry(resume_timeout=math.inf), as the README advises an alerter that must outlast any
    outage, raised ServerUnavailable within 1.6 s when the server was not up yet (a service
    started before it, at boot or in a deploy): the first connection got Retry.attempts
    tries. "For good" is for good, from the first try; a finite timeout still fails fast."""
    port = free_port()
    retry = Retry(backoff=0.1, max_backoff=0.3, resume_timeout=math.inf)
    async with AsyncClient(f"127.0.0.1:{port}", retry=retry) as client:
        results = client.watch("demo")
        first = asyncio.create_task(anext(results))
        await asyncio.sleep(2.0)  # past the 5 tries (0.1 + 0.2 + 0.3 + 0.3 s)
        assert not first.done(), first
        server = Server(Settings(port=port, metrics_port=-1))  # the demo camera
        await server.start()
        try:
            result = await asyncio.wait_for(first, 30)
            assert result.source == "demo" and result.ok
        finally:
            await results.aclose()
            await server.stop(grace=0)
    quick = Retry(backoff=0.1, max_backoff=0.3, resume_timeout=60.0)
    async with AsyncClient(f"127.0.0.1:{port}", retry=quick) as client:
        with pytest.raises(ServerUnavailable):
            await asyncio.wait_for(anext(client.watch("demo")), 10)


@pytest.mark.alone
async def test_slow_watcher_gets_fresh_results_on_its_own_channel(server: Server) -> None:
    """A reader slower than its results: the camera channel's small window keeps them fresh."""
    options = ResultOptions(input_jpeg=True, feature_maps=["stage3"])  # about 0.5 MB each

    async def read_slowly(limits: Limits) -> list[float]:
        ages = []
        async with AsyncClient(address(server), limits=limits) as client:
            started = time.monotonic()
            async for result in client.watch("belt", options=options):
                assert result.capture_time is not None
                ages.append((time.time() - result.capture_time) * 1000)
                await asyncio.sleep(0.3)
                if time.monotonic() - started > 3.0:
                    break
        return ages

    fresh, grown = await asyncio.gather(
        read_slowly(Limits()), read_slowly(Limits(fresh_watch=False))
    )
    assert max(fresh[-3:]) < 1000, np.round(fresh)  # one read interval plus a little
    # What BDP probing would do: results wait in the grown window, later and later.
    assert min(grown[-3:]) > max(fresh[-3:]) + 500, (np.round(fresh), np.round(grown))


def test_camera_channel_options() -> None:
    with Client("10.0.0.9") as client:
        main_args = dict(client._channel_args()[2])
        camera_args = dict(client._channel_args(cameras=True)[2])
    with Client("10.0.0.9", limits=Limits(fresh_watch=False)) as client:
        growing = dict(client._channel_args(cameras=True)[2])
    assert "grpc.http2.bdp_probe" not in main_args and "grpc.http2.bdp_probe" not in growing
    assert camera_args["grpc.http2.bdp_probe"] == 0
    (method,) = json.loads(camera_args["grpc.service_config"])["methodConfig"]
    assert [n["method"] for n in method["name"]] == ["ListCameras"]  # watch() resumes itself
    assert camera_args["grpc.max_receive_message_length"] == Limits().max_message_bytes


async def cli(*argv: str) -> int:
    """main() in a thread: the server runs on this test's event loop."""
    return await asyncio.to_thread(main, list(argv))


async def test_cli_cameras_table_and_json(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    async with AsyncClient(address(server)) as client:

        async def analysed() -> bool:  # two frames make a rate
            return (await camera(client, "belt")).frames_analysed >= 2

        await until(analysed, 10, "belt analysing")
    assert await cli("cameras", "--address", address(server)) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        *("ID", "STATE", "SOURCE", "FPS", "IN/OUT", "FPS", "CAP", "ANALYSED", "DROPPED"),
        *("RECONNECTS", "WATCHERS", "LATENCY", "MS", "SCORE", "LAST", "ERROR"),
    ]
    cells = row.split()
    assert cells[:2] == ["belt", "running"] and cells[2].endswith("s") and cells[3] == "demo"
    fps_in, fps_out = (float(v) for v in cells[4].split("/"))
    assert fps_in > 0 and fps_out > 0 and cells[5] == "-" and int(cells[6]) > 0  # no cap
    assert cells[8:10] == ["0", "0"]  # reconnects, watchers
    assert float(cells[10]) > 0 and 0 <= float(cells[11]) <= 1 and cells[12] == "-"

    assert await cli("cameras", "--json", "--address", address(server)) == 0
    (line,) = capsys.readouterr().out.splitlines()
    cam = json.loads(line)
    assert cam["id"] == "belt" and cam["state"] == "running" and cam["frame_width"] == 640
    assert datetime.fromisoformat(cam["since"]).tzinfo is not None


async def test_cli_cameras_json_of_a_failed_camera(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A camera with an error has a last_error_time: it is a string like the other times
    (it was a datetime that json.dumps refused, and the command died with a traceback)."""
    gone = CameraConfig(id="gone", source=str(tmp_path / "nope.mp4"))
    async with serving(belt(), gone) as server, AsyncClient(address(server)) as client:

        async def failed() -> bool:
            return (await camera(client, "gone")).state == "failed"

        await until(failed, 10, "the missing file's camera failed")
        assert await cli("cameras", "--json", "--address", address(server)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    cams = {cam["id"]: cam for cam in map(json.loads, out.splitlines())}
    failed_cam = cams["gone"]
    assert failed_cam["state"] == "failed" and "no such video file" in failed_cam["last_error"]
    error_time = datetime.fromisoformat(failed_cam["last_error_time"])
    assert error_time.tzinfo is not None and error_time <= datetime.now(UTC)
    assert failed_cam["last_frame_time"] is None and failed_cam["last_score"] is None
    assert failed_cam["latency_ms"] is None  # as the table's "-": its 0 was a false figure
    # every field, of every camera, is a plain JSON value with the name CameraInfo gives it
    fields = set(CameraInfo.__dataclass_fields__)
    for cam in cams.values():
        assert set(cam) == fields
        assert all(v is None or isinstance(v, str | int | float) for v in cam.values()), cam
        # numbers as the results write them, to 6 decimals (not 0.03039953112602234)
        floats = [v for v in cam.values() if isinstance(v, float)]
        assert all(v == round(v, 6) for v in floats), cam


async def test_cli_watch_json_table_and_overlays(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["watch", "belt", "--count", "3", "--address", address(server)]
    assert await cli(*argv, "--json", "--maps", "stage2") == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3 and err == ""
    assert [line["sequence"] for line in lines] == [1, 2, 3]
    ids = [line["frame_id"] for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == 3
    for line in lines:
        assert line["source"] == "belt" and line["ok"] and 0 <= line["score"] <= 1
        assert line["heatmap"]["shape"] == list(HEATMAP) and line["frame_age_ms"] >= 0
        assert line["feature_maps"]["stage2"]["shape"][1:] == [INPUT[0] // 4, INPUT[1] // 4]
        # when the frame was read, to order logged results (ids start again with a server)
        read = datetime.fromisoformat(line["capture_time"])
        assert read.tzinfo is not None and 0 <= (datetime.now(UTC) - read).total_seconds() < 30

    overlays, maps = tmp_path / "overlays", tmp_path / "maps"
    drawn = ["--save-overlays", str(overlays), "--maps", "stage4", "--save-maps", str(maps)]
    assert await cli(*argv, "--max-fps", "10", *drawn) == 0
    header, *rows, summary = capsys.readouterr().out.splitlines()
    assert " ".join(header.split()) == "FRAME SCORE DAMAGED PEAK (x, y) AGE MS DROPPED"
    assert len(rows) == 3 and all(row.split()[2] in ("yes", "no") for row in rows)
    assert summary.startswith("3 frames in ")
    files = sorted(overlays.iterdir())
    # named by when each frame was read: a camera's ids start again with its server, and
    # overlays named by id were overwritten by a watch after a restart; then by the id of
    # the table's row
    ids = [row.split()[0] for row in rows]
    assert len(files) == 3 and all(
        re.fullmatch(rf"\d{{8}}T\d{{6}}\.\d{{3}}Z-belt-{i}\.png", f.name)
        for f, i in zip(files, ids, strict=True)
    ), (files, ids)
    for f in files:
        image = cv2.imread(str(f))
        assert image is not None and image.shape == (360, 640, 3)
    # the feature maps beside the frame the server analysed (a watch has no frame of its own)
    pictures = sorted(maps.iterdir())
    assert [p.name for p in pictures] == [f.name.replace(".png", "-stage4.png") for f in files]
    for p in pictures:
        picture = cv2.imread(str(p))
        assert picture is not None and picture.shape[1] > 160 * 5


async def test_cli_watch_of_a_published_stream_ends_with_it(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream another client publishes ends its watches OK: the command says so, exit 0."""
    image = cv2.imencode(".jpg", np.full((360, 640, 3), 90, np.uint8))[1].tobytes()
    end = threading.Event()  # set once the command watches: a few frames more, then the end

    def publish() -> None:
        def frames() -> Iterator[Frame]:
            last = 600  # 30 s at most, should the test fail before it sets end
            for i in itertools.count():
                if end.is_set():
                    last = min(last, i + 5)
                if i >= last:
                    return
                time.sleep(0.05)  # 20 a second: no backlog to analyse before the end
                yield Frame(image, source="belt-x")

        with Client(address(server)) as client:
            assert all(r.ok for r in client.stream(frames(), publish=True))

    sender = asyncio.create_task(asyncio.to_thread(publish))
    try:
        async with AsyncClient(address(server)) as client:

            async def listed() -> bool:
                return "belt-x" in [c.id for c in await client.cameras()]

            await until(listed, 10, "the stream published")
            watching = asyncio.create_task(cli("watch", "belt-x", "--address", address(server)))

            async def watched() -> bool:
                return (await camera(client, "belt-x")).watchers == 1

            await until(watched, 10, "the command watching the stream")
    finally:
        end.set()
    assert await asyncio.wait_for(watching, 30) == 0
    await sender
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].split(" frames in ")[0].isdigit()  # the summary, after rows
    assert err.endswith("convstream watch: stream 'belt-x' ended\n"), err


async def test_cli_watch_unknown_camera_exits_2(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("watch", "dock-9", "--address", address(server)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "convstream watch: error: unknown camera 'dock-9' (the server has belt)\n"
    # one that reads as a camera's id, but for its case or separators, is named
    assert await cli("watch", "Belt_", "--address", address(server)) == 2
    err = capsys.readouterr().err
    assert err == (
        "convstream watch: error: unknown camera 'Belt_'; did you mean 'belt'? (the server has "
        "belt)\n"
    )
    assert await cli("watch", "rtsp://10.0.0.7/x", "--address", address(server)) == 2
    err = capsys.readouterr().err
    assert "never a URL, a path or a device" in err
    assert "10.0.0.7" not in err  # a URL may carry a password: not echoed
    assert await cli("watch", "belt", "--count", "0", "--address", address(server)) == 2
    assert "--count must be at least 1" in capsys.readouterr().err


@pytest.mark.live
async def test_a_programs_watch_of_a_camera_that_is_down_logs_why_no_result_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`for result in client.watch("dock")` of a camera that is down waited without a word:
    the command said the camera's state, a program heard nothing, for as long as it lasted
    (an integrator's first hour, against a camera with a mistyped address). The client logs
    it, and its first result says it."""
    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    dock = CameraConfig(
        id="dock", source=f"rtsp://127.0.0.1:{closed}/x", open_timeout_s=1.0, reconnect_min_s=0.5
    )
    caplog.set_level(logging.WARNING, logger="convstream.client")
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=5")
    async with serving(dock, belt) as server, AsyncClient(address(server)) as client:
        deadline = time.monotonic() + 10
        while {c.id: c.state for c in await client.cameras()}["dock"] != "reconnecting":
            assert time.monotonic() < deadline, "dock never reconnected"
            await asyncio.sleep(0.05)
        firsts = {}
        for camera in ("dock", "belt"):
            watch = client.watch(camera, max_fps=1)
            firsts[camera] = await asyncio.wait_for(anext(aiter(watch)), 10.0)
            await watch.aclose()
    # and the loop itself hears it: dock's first result is of no frame, saying why
    assert firsts["belt"].ok and firsts["belt"].camera_state is None
    told = firsts["dock"]
    assert (told.ok, told.camera_state, told.frame_id) == (False, "reconnecting", 0), told
    assert told.error is not None
    assert "camera 'dock' is reconnecting: could not open rtsp source" in told.error.message
    said = [r.getMessage() for r in caplog.records if r.name == "convstream.client"]
    assert said[0] == (
        f"watch of camera 'dock' at {address(server)}: the camera is reconnecting; results "
        "follow once it sends frames (last error: could not open rtsp source: connection "
        "refused: nothing listens at that address and port (camera down?))"
    ), said
    assert not any("belt" in line for line in said), said  # a running camera's watch: none
    assert len(said) == 1, said  # the first result, which says the same, not logged again


@pytest.mark.live
async def test_cli_watch_says_why_a_camera_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    dock = CameraConfig(
        id="dock",
        source=f"rtsp://127.0.0.1:{closed}/x",
        open_timeout_s=1.0,
        # each retry 0.5-1 s later: the watch starts well before the camera gives up (after
        # 2-4 s), however slow this machine is now
        reconnect_min_s=1.0,
        reconnect_max_s=1.0,
        max_reconnects=4,
    )
    gone = CameraConfig(id="gone", source=str(tmp_path / "nope.mp4"))
    async with serving(dock, gone) as server:
        # a camera retrying: the command says it waits, then why it stopped waiting
        async with AsyncClient(address(server)) as client:
            deadline = time.monotonic() + 10
            while (await client.cameras())[0].state != "reconnecting":
                assert time.monotonic() < deadline, "dock never reconnected"
                await asyncio.sleep(0.05)
        assert await cli("watch", "dock", "--count", "1", "--address", address(server)) == 5
        first, *rest = capsys.readouterr().err.splitlines()
        assert first.startswith(
            "convstream watch: camera 'dock' is reconnecting; waiting for its frames (Ctrl-C "
            "to stop). "
            "Last error: could not open rtsp source: connection refused"
        )
        assert "camera 'dock' has failed" in rest[-1] and "gave up after 4 reconnects" in rest[-1]
        assert not any("reconnecting" in line for line in rest), rest  # the client's, unsaid
        # a camera that has given up: the server says why at once, and the command exits 5
        assert await cli("watch", "gone", "--count", "1", "--address", address(server)) == 5
        out, err = capsys.readouterr()
        assert out == ""  # not even the table's header
        assert "camera 'gone' has failed: no such video file" in err and "Traceback" not in err
        assert "nope.mp4" not in err  # clients are never told a path


async def test_a_reader_that_goes_away_stops_watch_quietly(server: Server) -> None:
    """`convstream watch belt | head -n 3`: once head has its lines, watch ends, saying nothing."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "convstream.cli", "watch", "belt", "--address", address(server)]
    script = f"set -o pipefail; {shlex.join(argv)} | head -n 3 > /dev/null"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert process.stderr is not None
    err = await asyncio.wait_for(process.stderr.read(), 45)
    assert await process.wait() == 0, err.decode()  # pipefail: watch's own status
    assert err == b"", err.decode()


CAPPED = CameraInfo(
    id="aisle-8",
    state="running",
    since=None,
    source_kind="file",
    last_error="",
    last_error_time=None,
    fps_in=15.0,
    fps_out=3.0,
    fps_cap=3.0,
    frames_read=450,
    frames_analysed=90,
    frames_dropped=0,
    frames_skipped=360,
    reconnects=0,
    watchers=1,
    frame_width=1280,
    frame_height=720,
    last_score=0.42,
    last_frame_time=None,
    latency_ms=12.5,
)  # a healthy camera capped at 3 fps, for the table tests to change


def test_the_cameras_table_shows_the_cap_and_no_stale_figures_of_a_camera_that_is_down() -> None:
    """A capped camera's low fps out reads as its cap, not as starving; one that is down shows
    no latency or score (its last ones read as current)."""
    capped = CAPPED
    down = dataclasses.replace(capped, id="yard", state="reconnecting", fps_cap=0.0, fps_out=0.0)
    header, up_row, down_row = cameras_text([capped, down]).splitlines()
    assert "FPS CAP" in header
    assert up_row.split()[3:5] == ["15.0/3.0", "3"]
    assert up_row.split()[9:11] == ["12.5", "0.4200"]  # as watch shows scores
    assert down_row.split()[3:5] == ["15.0/0.0", "-"]
    assert down_row.split()[9:11] == ["-", "-"]
    # a camera whose latest frame showed next to nothing (a capped lens): no all-clear score
    blank = dataclasses.replace(capped, last_score=0.005, last_blank=True)
    assert cameras_text([blank]).splitlines()[1].split()[9:12] == ["12.5", "0.0050", "blank"]
    # and the score stays beside the mark: a small damaged package on black is both
    damaged = dataclasses.replace(blank, last_score=0.9587)
    assert cameras_text([damaged]).splitlines()[1].split()[9:12] == ["12.5", "0.9587", "blank"]


def test_the_cameras_table_fits_a_terminal_and_keeps_a_long_error_whole_when_piped() -> None:
    """A long last error ran a row to 230 characters, wrapping every row of a terminal."""
    error = (
        "could not open rtsp source: the camera at 10.0.0.7:554 refused the connection "
        "(is it on, and is this its RTSP port?); the last 12 retries failed the same way"
    )
    now = datetime.now(UTC)
    down = dataclasses.replace(
        CAPPED,
        id="dock-4",
        state="reconnecting",
        since=now - timedelta(minutes=5),
        source_kind="rtsp",
        last_error=error,
        last_error_time=now - timedelta(seconds=20),
        fps_in=0.0,
        fps_out=0.0,
        fps_cap=0.0,
        reconnects=12,
        last_score=None,
    )
    whole = cameras_text([down], now).splitlines()[1]
    assert whole.endswith("20s ago: " + error)  # piped: all of it, for grep
    figures = len(whole) - len("20s ago: " + error)
    for width in (figures + 60, figures + 100):
        header, row = cameras_text([down], now, width=width).splitlines()
        assert len(row) == width and row.endswith("...")
        assert row.startswith(whole[: width - 3])
        assert len(header) <= width
    # 80 columns: the lesser columns go (the table took 128, wrapping every row), the id,
    # state, source, rates and score stay, and 30 characters of the error at least
    header, row = cameras_text([down, CAPPED], now, width=80).splitlines()[:2]
    assert header.split() == ["ID", "STATE", "SOURCE", "FPS", "IN/OUT", "SCORE", "LAST", "ERROR"]
    assert row.split()[:4] == ["dock-4", "reconnecting", "5m", "rtsp"]
    assert "20s ago: could not open" in row and row.endswith("...") and len(row) <= 80 + 5
    # the error of a camera that runs again says it is from before, not its trouble now
    back = dataclasses.replace(down, state="running", since=now - timedelta(seconds=10))
    assert (
        cameras_text([back], now).splitlines()[1].endswith("20s ago, before it ran again: " + error)
    )
    newer = dataclasses.replace(back, since=now - timedelta(seconds=30))  # a frame's failure
    assert cameras_text([newer], now).splitlines()[1].endswith("20s ago: " + error)
    healthy = cameras_text([CAPPED], now, width=80).splitlines()
    assert all(len(line) <= 80 for line in healthy), healthy
    assert "LATENCY MS" in healthy[0]  # room for more with a short error: they stay


def test_a_paused_watch_subscribing_again_waits_out_a_server_with_no_room_for_it() -> None:
    """Ended for results it did not read (stream_idle_timeout_s, or 10 s while the results
    held for watches are over max_watcher_bytes), a watch subscribes again; a server with no
    room for it yet (Overloaded: other watches' results fill max_watcher_bytes) ended it for
    good (a diff review's). In a break, that is waited out as a server that is down is; a
    watch refused so before it ever ran is refused."""
    from convstream.v1 import RESULTS_NOT_READ

    client = Client("127.0.0.1:1", retry=Retry(backoff=0.1, max_backoff=1.0, resume_timeout=60))
    full = Overloaded("the results held for watches (300 MiB) are over max_watcher_bytes")
    first = client._resumption(True, "belt")
    first.subscribed()
    assert first.delay(full, 0) is None  # never ran: the refusal is the answer
    bookkeeping = client._resumption(True, "belt")
    bookkeeping.subscribed()
    bookkeeping.registered((("convstream-watching", "belt"),))
    paused = DeadlineExceeded(f"{RESULTS_NOT_READ} 12 s while the results held ...")
    assert bookkeeping.delay(paused, 0) == 0.1
    bookkeeping.subscribed()
    assert bookkeeping.delay(full, 0) == 0.2  # subscribing again: no room yet, waited out
    client.close()


@pytest.mark.live
async def test_a_watch_hears_its_camera_go_down_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A program's loop over watch() heard nothing while its camera was down (the CLI asked
    the server after a lull): the server's word comes as a result of no frame, and the same
    loop then gets the camera's frames again."""
    caplog.set_level(logging.WARNING, logger="convstream.client")
    source = FFmpegSource("mjpeg")
    with running(source):
        config = CameraConfig(id="a", source=source.url, read_timeout_s=2.0)
        async with serving(config) as srv, AsyncClient(address(srv)) as client:
            seen: list[Result] = []
            async with asyncio.timeout(40):
                async for result in client.watch("a", max_fps=5):
                    seen.append(result)
                    if len(seen) == 3:
                        source.stop()
                    elif result.camera_state == "reconnecting":
                        source.start()
                    # told, and then two frames: past one read before it went down
                    elif any(r.camera_state for r in seen) and result.ok and seen[-2].ok:
                        break
    notices = [r for r in seen if r.camera_state is not None]
    assert notices and notices[-1].camera_state == "reconnecting", seen
    for notice in notices:
        assert notice.camera_state in ("stalled", "reconnecting")
        assert not notice.ok and isinstance(notice.error, ServerUnavailable)
        assert (notice.frame_id, notice.source) == (0, "a")
        assert math.isnan(notice.score) and notice.capture_time is None
        assert f"camera 'a' is {notice.camera_state}" in notice.error.message
    assert all(r.ok for r in seen if r.camera_state is None)
    assert seen[-1].frame_id > max(r.frame_id for r in seen[:3])  # its frames again
    # and logged, as the state at a watch's start is, once a state: a program that only
    # logs has the outage in its log
    said = [r.getMessage() for r in caplog.records if r.name == "convstream.client"]
    assert 1 <= len(said) <= len(notices), (said, notices)
    assert said[-1].startswith(f"watch of camera 'a' at {address(srv)}: camera 'a' is "), said
