"""Server-pulled cameras against real live streams on 127.0.0.1 (ffmpeg, GStreamer RTSP)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import math
import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import cv2
import grpc
import numpy as np
import pytest
from conftest import exif, jpeg, png, png_with, scene, with_exif_orientation
from grpc_health.v1 import health_pb2, health_pb2_grpc
from live import (
    FFMPEG,
    FFmpegSource,
    RtspSource,
    blackhole,
    free_port,
    read_time,
    running,
    write_mjpeg,
    write_video,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import convstream.client.cli as client_cli
from convstream.cli import main
from convstream.client import Client
from convstream.client.cli import CameraLull
from convstream.client.results import CameraInfo, Geometry
from convstream.server import CameraConfig, Server, Settings
from convstream.server.budget import ByteBudget
from convstream.server.camera import Camera, RateMeter
from convstream.server.feeds import CameraFeed, Watcher, next_due
from convstream.server.pipeline import Options
from convstream.server.sources import (
    Capture,
    OpenCVCapture,
    SourceSpec,
    open_source,
    parse_source,
)
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)
# alone or live (see scripts/test.sh): live sources read in real time, and rates, ages and deadlines


def camera(camera_id: str, source: str, **kw: object) -> CameraConfig:
    kw.setdefault("open_timeout_s", 5.0)
    kw.setdefault("read_timeout_s", 2.0)
    kw.setdefault("reconnect_min_s", 0.2)
    kw.setdefault("reconnect_max_s", 1.0)
    return CameraConfig(id=camera_id, source=source, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(*cameras: CameraConfig, **kw: object) -> AsyncIterator[Server]:
    server = Server(Settings(port=0, metrics_port=0, cameras=cameras, **kw))  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


@contextlib.asynccontextmanager
async def connect(server: Server) -> AsyncIterator[pb_grpc.ConvstreamStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.ConvstreamStub(channel)


async def status(stub: pb_grpc.ConvstreamStub, camera_id: str) -> pb.CameraStatus:
    reply = await stub.ListCameras(pb.ListCamerasRequest())
    return next(c for c in reply.cameras if c.id == camera_id)


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 0.05
) -> float:
    """Poll ``check`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - started


def state_is(
    stub: pb_grpc.ConvstreamStub, camera_id: str, *states: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await status(stub, camera_id)).state in states

    return check


def health_is(
    health: health_pb2_grpc.HealthStub, service: str, want: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        return bool(reply.status == want)

    return check


class Collector:
    """Reads a WatchCamera call in the background, keeping every result."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, delay: float = 0.0) -> None:
        self.call = call
        self.delay = delay
        self.results: list[pb.FrameResult] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for result in self.call:
                self.results.append(result)
                if self.delay:
                    await asyncio.sleep(self.delay)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def watch(stub: pb_grpc.ConvstreamStub, camera_id: str, **kw: object) -> grpc.aio.UnaryStreamCall:
    return stub.WatchCamera(pb.WatchCameraRequest(camera_id=camera_id, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["mjpeg", "mpegts", "rtsp"])
@pytest.mark.alone
async def test_live_source_is_analysed_and_watched(kind: str) -> None:
    source = RtspSource() if kind == "rtsp" else FFmpegSource(kind)
    with running(source):
        async with serving(camera("dock", source.url)) as server, connect(server) as stub:
            await until(state_is(stub, "dock", pb.CAMERA_STATE_RUNNING), 10, "running")
            options = pb.ResultOptions(include_frame=True, feature_maps=["stage2"])
            call = watch(stub, "dock", options=options)
            results = []
            async for result in call:
                results.append(result)
                if len(results) == 5:
                    break
            call.cancel()
            cam = await status(stub, "dock")
    assert cam.source_kind == {"mjpeg": "http", "mpegts": "tcp", "rtsp": "rtsp"}[kind]
    assert (cam.frame_width, cam.frame_height) == (320, 240)
    assert cam.frames_read >= 5 and cam.frames_analysed >= 5
    assert "127.0.0.1" not in str(cam)  # clients see the id and kind, never the URL
    ids = [r.frame_id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [r.sequence for r in results] == [1, 2, 3, 4, 5]
    for r in results:
        assert r.status.code == 0 and r.source == "dock"
        assert r.geometry.frame_width == 320 and r.geometry.input_width == 640
        assert list(r.heatmap.shape) == [1, 60, 80]  # the 480x640 input, 4:3 like the frames
        assert [t.name for t in r.feature_maps] == ["stage2"]
        frame = cv2.imdecode(np.frombuffer(r.frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (480, 640, 3)
        assert r.capture_time.seconds > 0 and 0 <= r.frame_age_ms < 2000


@pytest.mark.alone
async def test_killed_source_reconnects_while_others_flow() -> None:
    a, b = FFmpegSource("mjpeg"), FFmpegSource("mpegts")
    read_timeout = 2.0
    with running(a, b):
        cams = (camera("a", a.url, read_timeout_s=read_timeout), camera("b", b.url))
        async with serving(*cams) as server, connect(server) as stub:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            channel_health = health_pb2_grpc.HealthStub(channel)
            for cid in ("a", "b"):
                await until(state_is(stub, cid, pb.CAMERA_STATE_RUNNING), 10, f"{cid} running")
            watch_a, watch_b = Collector(watch(stub, "a")), Collector(watch(stub, "b"))
            await until(lambda: _true(len(watch_a.results) >= 3), 10, "results from a")

            a.stop()
            took = await until(
                state_is(stub, "a", pb.CAMERA_STATE_RECONNECTING), read_timeout + 3, "a lost"
            )
            assert took <= read_timeout + 2.5  # read timeout, plus the watchdog's quarter second
            down = await status(stub, "a")
            assert down.last_error and down.reconnects >= 1
            # no frame comes while it reconnects: its rates faded over seconds, "4.6/2.0"
            assert (down.fps_in, down.fps_out) == (0.0, 0.0), down
            rates = {
                s.labels["direction"]: s.value
                for s in _samples(server, "convstream_camera_fps")
                if s.labels["camera"] == "a"
            }
            assert rates == {"in": 0.0, "out": 0.0}, rates
            serving_states = health_pb2.HealthCheckResponse
            await until(
                health_is(channel_health, "convstream.camera.a", serving_states.NOT_SERVING),
                1.0,
                "camera health mirrors its state within the watchdog's period",
            )
            server_health = await channel_health.Check(health_pb2.HealthCheckRequest())
            assert server_health.status == health_pb2.HealthCheckResponse.SERVING
            b_before, a_before = len(watch_b.results), len(watch_a.results)
            await until(  # b keeps flowing while a is down
                lambda: _true(len(watch_b.results) >= b_before + 10), 10, "results from b"
            )
            assert (await status(stub, "a")).state == pb.CAMERA_STATE_RECONNECTING

            # a's watchers were told, each by a result of no frame (a program's loop over
            # the watch heard nothing while the camera was down); b's were not
            notices = [r for r in watch_a.results if r.camera_state]
            assert notices, watch_a.results[-3:]
            # nothing after it while the camera is down: the results of frames read before
            # (one in analysis, one waiting) came after the notice every time a review
            # killed a camera, and read as the camera back
            assert notices[-1] is watch_a.results[-1], watch_a.results[-3:]
            assert notices[-1].camera_state == pb.CAMERA_STATE_RECONNECTING, notices
            for notice in notices:
                assert notice.camera_state in (
                    pb.CAMERA_STATE_STALLED,
                    pb.CAMERA_STATE_RECONNECTING,
                ), notice
                assert notice.status.code == grpc.StatusCode.UNAVAILABLE.value[0], notice
                assert (notice.frame_id, notice.source) == (0, "a")
                assert not notice.HasField("score") and not notice.HasField("capture_time")
            said = notices[-1].status.message
            assert said.startswith("camera 'a' is reconnecting: "), said
            # with its last error as the notice went: the loss's, or a retry's since
            assert "http source: " in said and "The watch goes on" in said, said
            assert not any(r.camera_state for r in watch_b.results)

            a.start()  # the camera comes back on the same address
            await until(state_is(stub, "a", pb.CAMERA_STATE_RUNNING), 10, "a back")
            await until(lambda: _true(len(watch_a.results) >= a_before + 5), 10, "a results")
            assert watch_a.error is None and watch_b.error is None  # the same calls carry on
            frames = [r for r in watch_a.results if not r.camera_state]
            ids = [r.frame_id for r in frames]
            assert ids == sorted(ids) and all(r.status.code == 0 for r in frames)
            sequences = [r.sequence for r in watch_a.results]  # the notices numbered too
            assert sequences == list(range(1, len(sequences) + 1))
            assert watch_a.results[-1].frames_dropped == 0  # a notice is no dropped frame
            await until(
                health_is(channel_health, "convstream.camera.a", serving_states.SERVING), 1.0, "up"
            )
            # the error stays, dated before the camera came back: history, not its state
            back = await status(stub, "a")
            assert back.last_error and back.HasField("last_error_time")
            assert back.last_error_time.ToNanoseconds() <= back.state_since.ToNanoseconds()
            await watch_a.close()
            await watch_b.close()
            await channel.close()


@pytest.mark.alone
async def test_a_cameras_health_changes_with_its_state_not_at_the_next_tick() -> None:
    """A client that has a camera's first result and asks its health at once hears SERVING:
    the health followed the state at the watchdog's next quarter-second tick, and asked in
    between it said NOT_SERVING of a camera whose frames it had just answered."""
    async with serving(camera("belt", "demo:conveyor?fps=30")) as server, connect(server) as stub:
        call = watch(stub, "belt")
        first = await asyncio.wait_for(call.read(), 20)
        assert first.source == "belt" and first.status.code == 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            asked = health_pb2.HealthCheckRequest(service="convstream.camera.belt")
            reply = await health_pb2_grpc.HealthStub(channel).Check(asked, timeout=5)
            # every service at once (grpcio left List unimplemented, a traceback a call)
            every = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest())
            listed = {name: r.status for name, r in (await every).statuses.items()}
        call.cancel()
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        up = health_pb2.HealthCheckResponse.SERVING
        assert listed == dict.fromkeys(("", "convstream.v1.Convstream", asked.service), up)


@pytest.mark.live
async def test_a_frozen_camera_is_lost_not_passed_off_as_running() -> None:
    """An RTSP camera that freezes (its server stopped, the TCP connection open) is lost
    after the read timeout, and the frames FFmpeg still held are not taken for live ones."""
    source = RtspSource()
    read_timeout = 2.0
    with running(source):
        assert source.process is not None
        config = camera("frozen", source.url, read_timeout_s=read_timeout)
        async with (
            serving(config) as server,
            connect(server) as stub,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            await until(state_is(stub, "frozen", pb.CAMERA_STATE_RUNNING), 10, "running")

            async def paced() -> bool:  # a camera whose pace is not known yet stalls later
                return (await status(stub, "frozen")).frames_read >= 10

            await until(paced, 10, "ten frames read")
            source.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(0.5)  # frames in flight when it froze may still land
                read_before = (await status(stub, "frozen")).frames_read
                seen = []
                said_while_stalled = []  # its health, as the docs say: serving while stalled
                health = health_pb2_grpc.HealthStub(channel)
                service = health_pb2.HealthCheckRequest(service="convstream.camera.frozen")
                started = time.monotonic()
                while time.monotonic() - started < read_timeout + 2.5:
                    cam = await status(stub, "frozen")
                    seen.append(cam.state)
                    if cam.state == pb.CAMERA_STATE_RECONNECTING:
                        break
                    if cam.state == pb.CAMERA_STATE_STALLED:
                        said_while_stalled.append((await health.Check(service)).status)
                    await asyncio.sleep(0.05)
                assert seen[-1] == pb.CAMERA_STATE_RECONNECTING, seen
                assert "within the read timeout (2 s)" in cam.last_error
                # and what to do if the camera is only slow, not frozen
                assert "sends less often than that (then raise read_timeout_s" in cam.last_error
                assert cam.frames_read == read_before  # no stale frame counted as read
                assert pb.CAMERA_STATE_STALLED in seen, seen  # a second without frames
                stalled = seen.index(pb.CAMERA_STATE_STALLED)
                assert pb.CAMERA_STATE_RUNNING not in seen[stalled:], seen  # no flapping
                # all but the last: the state may turn reconnecting between the two calls
                up = health_pb2.HealthCheckResponse.SERVING
                assert said_while_stalled[:1] == [up], said_while_stalled
                assert set(said_while_stalled[:-1]) <= {up}, said_while_stalled
            finally:
                source.process.send_signal(signal.SIGCONT)
            await until(state_is(stub, "frozen", pb.CAMERA_STATE_RUNNING), 15, "thawed")


class _Passing:
    """A real capture passed through, for a test to change how it is read."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture

    def read(self) -> np.ndarray | bytes:
        return self.capture.read()

    def skip(self) -> None:
        self.capture.skip()

    @property
    def behind_s(self) -> float:
        return self.capture.behind_s

    def release(self) -> None:
        self.capture.release()


class _HeldUpGrab:
    """A real capture whose third grab a busy CPU holds up for 30 ms (a frame interval at
    30 frames/s), as a buffered frame's grab is when the reader thread is preempted."""

    def __init__(self, capture: cv2.VideoCapture) -> None:
        self._capture = capture
        self._grabs = 0

    def grab(self) -> bool:
        self._grabs += 1
        if self._grabs == 3:
            time.sleep(0.03)
        return bool(self._capture.grab())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._capture, name)


@pytest.mark.live
def test_an_rtsp_connect_skips_the_frames_buffered_while_it_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FFmpeg reads about a second of an RTSP stream while it opens; those frames are old by
    the time they would be analysed. The reader starts at the live frame instead, also when
    a busy CPU held up the grab of one buffered frame: taken for the live one, it let the
    rest of the backlog through as live frames (CI met it)."""
    source = RtspSource(fps=30)
    really_open = OpenCVCapture._open
    with running(source):
        time.sleep(1.0)  # the stream is well under way, as a camera's always is
        spec = parse_source(source.url)
        for held_up in (False, True):
            if held_up:
                monkeypatch.setattr(OpenCVCapture, "_open", lambda c: _HeldUpGrab(really_open(c)))
            capture = open_source(spec, open_timeout_s=10, read_timeout_s=5, loop=False)
            try:
                waits = read_waits(capture, 10)
            finally:
                capture.release()
            # a buffered frame comes back in microseconds, a live one after up to a frame
            # interval
            at_once = sum(wait < 0.004 for wait in waits)
            assert at_once <= 4, (held_up, [round(w * 1000, 1) for w in waits])


@pytest.mark.live
def test_the_frame_that_ends_a_stall_is_passed_for_the_live_one() -> None:
    """A camera that stalls (here its encoder stopped for 2 s, as a network hiccup does)
    then sends the frame it held, as old as the stall, and the ones queued behind it at
    once. That frame was analysed and its age told as a few milliseconds; the reader now
    passes the backlog for the live frame, as after a connect."""
    source = FFmpegSource("mjpeg", fps=15, stamped=True)
    with running(source):
        spec = parse_source(source.url)
        capture = open_source(spec, open_timeout_s=10, read_timeout_s=5, loop=False)
        try:
            for _ in range(5):
                capture.read()
            assert source.process is not None
            source.process.send_signal(signal.SIGSTOP)
            threading.Timer(2.0, source.process.send_signal, (signal.SIGCONT,)).start()
            ages = []
            for _ in range(3):  # the first waits out the stall
                data = capture.read()
                read_at = time.time()
                pixels = data if isinstance(data, np.ndarray) else decoded(data)
                ages.append(read_at - read_time(pixels, 1.0, 0, 0))
        finally:
            capture.release()
    assert max(ages) < 0.5, [round(age, 2) for age in ages]


@pytest.mark.live
def test_a_slow_camera_is_not_taken_for_a_stalled_one() -> None:
    """OpenCV says 25 frames/s for any MJPEG camera: judged by that, one sending a frame
    every 1.5 s stalled at every read, and each read's frame was passed over for the next,
    every other frame lost. The usual wait is measured from the reads themselves."""
    source = FFmpegSource("mjpeg", fps="1")
    with running(source):
        spec = parse_source(source.url)
        capture = open_source(spec, open_timeout_s=10, read_timeout_s=5, loop=False)
        try:
            capture.read()
            waits = read_waits(capture, 3)
        finally:
            capture.release()
    assert max(waits) < 1.75, [round(w, 2) for w in waits]  # 1 s each, not 2


async def test_a_camera_slower_than_a_frame_a_second_is_not_stalled_once_connected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 0.5 fps camera logged "running -> stalled (no frame for 1.0 s)" a second after
    connecting, and running at its next frame: before its pace was measured the one-second
    bound of a fast camera applied. Here an HTTP MJPEG one, whose stream says 25 frames/s
    (OpenCV's word for any MJPEG camera), read until its pace is known. Not alone: a busy
    core delays its frames, not the bound they are held to (4.5 s, against 2 s gaps)."""
    source = FFmpegSource("mjpeg", fps="1/2")
    config = camera("fps05", source.url, read_timeout_s=5.0, open_timeout_s=10.0)
    with running(source):
        async with serving(config) as server, connect(server) as stub:
            await until(state_is(stub, "fps05", pb.CAMERA_STATE_RUNNING), 20, "running")
            await until(lambda: _frames_read_over(stub, "fps05", 2), 20, "two intervals")
            said = [r.getMessage() for r in caplog.records if "fps05: " in r.getMessage()]
            assert not [m for m in said if "stalled" in m], said
            assert (await status(stub, "fps05")).reconnects == 0


def test_a_camera_sending_its_frames_in_bursts_is_not_stalled_between_them() -> None:
    """8 frames at once every 1.6 s: stalled 1 s after every burst, 3.8 s of every 4.8, and
    warned of as flapping after 18 s (a reviewer's camera). Its longest recent interval is
    usual for it: stalled past half again that."""
    camera = Camera(CameraConfig(id="bursts", source="demo:conveyor"))
    with camera._lock:
        for burst in range(4):
            for k in range(8):
                camera._arrived(1000.0 + 1.6 * burst + 0.002 * k, (640, 360))
    assert 1.5 * (1.6 - 0.014) <= camera.stall_after_s <= 0.9 * camera.config.read_timeout_s
    camera.check(1000.0 + 1.6 * 3 + 0.014 + 1.8)  # a gap as long as its gaps, and then some
    assert camera.state == pb.CAMERA_STATE_RUNNING


def test_a_watchdog_starved_of_cpu_calls_no_stall_and_a_real_stall_is_still_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under a load of 20 the watchdog woke 1.1 s late, found two cameras "stalled" whose
    readers, starved as long, had their frames waiting, and each was running again 4 ms
    later: 40 warnings in 40 minutes, nothing wrong with the cameras (a reviewer's server).
    A check that comes late does not hold its own lateness against the camera; one that
    stopped is stalled all the same, by the next check that comes in time."""
    cam = Camera(CameraConfig(id="busy", source="rtsp://127.0.0.1:1/x"))
    image = np.zeros((32, 32, 3), np.uint8)
    clock = [1000.0]

    def frames_and_ticks(seconds: float) -> None:
        """A 15 fps camera and the watchdog every quarter second, both in time."""
        for i in range(round(seconds * 60)):
            clock[0] += 1 / 60
            if i % 4 == 0:
                cam._publish(image, 0, clock[0])
            if i % 15 == 0:
                cam.check(clock[0])

    frames_and_ticks(2.0)
    assert cam.state == pb.CAMERA_STATE_RUNNING and cam.stall_after_s == 1.0
    clock[0] += 1.1  # the whole server starved: no tick, no frame read
    cam.check(clock[0])
    assert cam.state == pb.CAMERA_STATE_RUNNING, cam.last_error
    cam._publish(image, 0, clock[0] + 0.004)  # the reader's frame, waiting all along
    frames_and_ticks(2.0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # It stops sending: stalled at the first tick past the second, as before.
    clock[0] = cam._last_frame_at
    for _ in range(4):
        clock[0] += 0.25
        cam.check(clock[0])
    assert cam.state == pb.CAMERA_STATE_RUNNING
    clock[0] += 0.25
    cam.check(clock[0])
    assert cam.state == pb.CAMERA_STATE_STALLED
    # A stall that a late tick met is called at the next tick in time.
    cam._publish(image, 0, clock[0])
    frames_and_ticks(1.0)
    cam.check(clock[0] + 1.6)  # late, and no frame for 1.6 s
    assert cam.state == pb.CAMERA_STATE_RUNNING
    cam.check(clock[0] + 1.85)
    assert cam.state == pb.CAMERA_STATE_STALLED, cam.last_error


def test_a_camera_that_comes_back_says_how_long_it_was_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line "reconnecting -> running" said the camera was back, not how long it had been gone:
    the operator worked it out from timestamps lines apart, if both lines were kept."""
    caplog.set_level(logging.INFO, logger="convstream.server.camera")
    cam = Camera(CameraConfig(id="gate", source="rtsp://127.0.0.1:1/x"))
    image = np.zeros((32, 32, 3), np.uint8)
    cam._publish(image, 0, 1000.0)  # its first frame: news, not a return
    with cam._lock:  # lost
        cam._set_state(pb.CAMERA_STATE_RECONNECTING, "read timed out")
    cam._publish(image, 0, 1000.0 + 151.0)
    cam._publish(image, 0, 1151.1)
    cam.check(1152.0)
    cam.check(1152.4)  # no frame for 1.3 s: stalled
    cam._publish(image, 0, 1152.5)
    said = [r.getMessage() for r in caplog.records if "-> running" in r.getMessage()]
    assert said == [
        "camera gate: connecting -> running",
        "camera gate: reconnecting -> running (back after 2 min 31 s)",
        "camera gate: stalled -> running (back after 1.4 s)",
    ]


def read_waits(capture: Capture, reads: int) -> list[float]:
    """The seconds each of ``reads`` reads of the capture waited."""
    waits = []
    for _ in range(reads):
        started = time.monotonic()
        capture.read()
        waits.append(time.monotonic() - started)
    return waits


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_an_mjpeg_source_gives_its_jpegs_and_other_codecs_give_pixels() -> None:
    """An MJPEG stream's frames are already JPEGs: the reader keeps them as sent, for the
    analysis to decode only the frames it takes; H.264 has to be decoded as it is read."""
    for kind in ("mjpeg", "mpegts"):
        source = FFmpegSource(kind, size=(320, 240))
        with running(source):
            capture = open_source(
                parse_source(source.url), open_timeout_s=10, read_timeout_s=5, loop=False
            )
            try:
                frames = [capture.read() for _ in range(3)]
            finally:
                capture.release()
        for frame in frames:
            if kind == "mjpeg":
                assert isinstance(frame, bytes) and frame[:2] == b"\xff\xd8", kind
                assert frame.endswith(b"\xff\xd9"), kind  # whole: the reader checked
                image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
            else:
                assert isinstance(frame, np.ndarray), kind
                image = frame
            assert image.shape == (240, 320, 3), kind


def _lossless_jpeg(image: np.ndarray, folder: Path) -> bytes:
    """The image as a lossless JPEG (SOF3), which FFmpeg decodes and libjpeg does not."""
    png, out = str(folder / "frame.png"), str(folder / "frame.jpg")
    cv2.imwrite(png, image)
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-y", "-i", png, "-c:v", "ljpeg", "-pix_fmt", "bgr24", out],
        check=True,
        timeout=60,
    )
    data = (folder / "frame.jpg").read_bytes()
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None
    return data


@pytest.mark.parametrize("kind", ["baseline", "interlaced", "padded", "lossless"])
def test_mjpeg_frames_stay_jpegs_only_where_libjpeg_takes_them_as_they_are(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenCV calls every JPEG-in-a-container codec MJPG. The reader looks at the first
    frame: a whole JPEG of the stream's size is kept as it is; two interlaced fields a
    frame, bytes before the JPEG (some DVRs) or a lossless JPEG go to FFmpeg to decode, as
    before, instead of a half-height picture, a reconnect loop or frames that never decode."""
    image = scene(2_000_000_200, 240, 320)

    def encoded(pixels: np.ndarray) -> bytes:
        return jpeg(np.ascontiguousarray(pixels), quality=90)

    packet = {
        "baseline": lambda: encoded(image),
        "interlaced": lambda: encoded(image[0::2]) + encoded(image[1::2]),
        "padded": lambda: b"\0\0\0\0" + encoded(image),
        "lossless": lambda: _lossless_jpeg(image, tmp_path),
    }[kind]()
    video = write_mjpeg(tmp_path / f"{kind}.avi", [packet] * 5, size=(320, 240))
    caplog.set_level(logging.INFO, "convstream.server.sources")
    spec = parse_source(str(video))
    capture = open_source(spec, open_timeout_s=5, read_timeout_s=5, loop=True, name="belt")
    try:
        frames = [capture.read() for _ in range(7)]  # past the end: the file loops
    finally:
        capture.release()
    told = [r.getMessage() for r in caplog.records if "decoded as read" in r.getMessage()]
    if kind == "baseline":
        assert not told
    else:  # the operator hears which camera, and why, once a connection
        assert len(told) == 1 and told[0].startswith("camera belt: its MJPEG frames"), told
    for frame in frames:
        if kind == "baseline":
            assert frame == packet  # as the file holds it, byte for byte
        else:
            assert isinstance(frame, np.ndarray) and frame.shape == image.shape, kind
            assert np.abs(frame.astype(np.int16) - image).mean() < 4, kind


async def test_mjpeg_frames_that_cannot_be_analysed_are_counted_and_told(
    tmp_path: Path,
) -> None:
    """A camera whose first frame was a good JPEG, and later ones are not: a frame cut short
    (passed over by the reader) and a lossless JPEG (which libjpeg does not decode). Each is
    counted invalid and told as the camera's last error; the good frames are analysed, and
    the camera stays running. A frame cut short used to vanish without a trace."""
    good = jpeg(scene(2_000_000_201, 240, 320))
    lossless = _lossless_jpeg(scene(2_000_000_202, 240, 320), tmp_path)
    cut = good[: len(good) // 3]
    video = write_mjpeg(tmp_path / "belt.avi", [good, lossless, good, cut], fps=20)
    async with serving(camera("belt", str(video))) as server, connect(server) as stub:
        twin = await stub.Analyze(pb.FrameRequest(encoded=good))
        call = watch(stub, "belt")
        results = [await call.read() for _ in range(6)]
        call.cancel()
        counted: tuple[float, float] = (0.0, 0.0)

        async def both_counted() -> bool:
            """Every frame that could not be analysed (the lossless ones and the ones cut
            short), and those that failed at decoding only (the lossless ones): a lossless
            frame is analysed only when it is the newest as the analysis is free, which a
            busy machine may delay past six results (a flake hunter's reading)."""
            nonlocal counted
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            text = (await asyncio.to_thread(urlopen, url, timeout=5)).read().decode()
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            invalid = (("camera", "belt"), ("outcome", "invalid"))
            undecoded = (("outcome", "invalid"), ("source", "belt"))
            counted = (
                samples.get(("convstream_camera_frames_total", invalid), 0.0),
                samples.get(("convstream_frames_total", undecoded), 0.0),
            )
            return counted[1] >= 1 and counted[0] >= counted[1] + 1

        try:
            await until(both_counted, 20, "invalid and undecoded frames counted", 0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: (invalid, undecoded) {counted}") from None
        cam = await status(stub, "belt")
    for result in results:  # only the good frames, each scored as the same JPEG pushed
        assert result.status.code == 0
        assert result.score == pytest.approx(twin.score, abs=1e-5)
    assert cam.state == pb.CAMERA_STATE_RUNNING
    assert cam.last_error.startswith(
        ("a frame could not be analysed: corrupt JPEG", "a frame was not a whole JPEG")
    ), cam.last_error
    assert cam.frames_invalid >= 2  # ListCameras counts them too
    assert CameraInfo.from_proto(cam).frames_invalid == cam.frames_invalid


async def test_a_cameras_frame_meets_the_size_limits_a_pushed_frame_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 24x16 camera: its JPEGs, which the server would refuse as sent, went to FFmpeg to be
    decoded, and its pixels were analysed, scaled 24 times (a blur scored 0.98, damaged, and
    an alert), where Analyze refuses the same frame."""
    tiny = jpeg(cv2.resize(scene(2_000_000_210, 240, 320), (24, 16)))
    video = write_mjpeg(tmp_path / "tiny.avi", [tiny] * 4, fps=20)
    began = time.time()
    async with serving(camera("tiny", str(video))) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError, match="at least 32x32"):
            await stub.Analyze(pb.FrameRequest(encoded=tiny))

        async def refused() -> bool:
            return (await status(stub, "tiny")).frames_invalid >= 3

        await until(refused, 20, "the tiny camera's frames refused", 0.1)
        cam = await status(stub, "tiny")
        # a watch of it said nothing for as long as it ran (the camera "running")
        with Client(f"127.0.0.1:{server.port}") as client, CameraLull(client, "tiny", 0.5):
            await asyncio.sleep(3.5)
        # "running", and no result ever: the time it was first pulled, which an alert on
        # silence reads as old (none, and the alert never fired for it)
        silent = _samples(server, "convstream_camera_last_result_timestamp_seconds")
        assert [s.labels for s in silent] == [{"camera": "tiny"}]
        assert began - 1 < silent[0].value < began + 5, (began, silent)
    assert cam.frames_analysed == 0
    assert "frame is 24x16; frames must be at least 32x32" in cam.last_error, cam.last_error
    told = capsys.readouterr().err
    assert "camera 'tiny' runs, but its frames cannot be analysed (" in told, told
    assert "Last error: a frame could not be analysed: frame is 24x16" in told, told


async def test_a_cameras_last_result_time_is_exported_for_an_alert_on_silence() -> None:
    """A camera's reconnects count each failed retry, and its state says "running" of one
    whose frames cannot be analysed: neither tells how long its watchers have had nothing
    new. The time of its latest result does, as ListCameras says it."""
    began = time.time()
    async with serving(camera("belt", "demo:conveyor?fps=5")) as server, connect(server) as stub:

        def analysed(count: int) -> Callable[[], Awaitable[bool]]:
            async def enough() -> bool:
                return (await status(stub, "belt")).frames_analysed >= count

            return enough

        await until(analysed(2), 20, "two frames analysed", 0.1)
        name = "convstream_camera_last_result_timestamp_seconds"
        first = _samples(server, name)
        assert [s.labels for s in first] == [{"camera": "belt"}]
        assert began < first[0].value <= time.time()
        analysed_then = (await status(stub, "belt")).frames_analysed
        await until(analysed(analysed_then + 2), 20, "two frames more", 0.1)
        later = _samples(server, name)[0].value
        cam = await status(stub, "belt")
        assert later > first[0].value
        seen = cam.last_frame_time.ToNanoseconds() / 1e9
        assert abs(_samples(server, name)[0].value - seen) < 0.5, (later, seen)


async def test_a_camera_scores_an_mjpeg_frame_as_analyze_scores_the_same_jpeg(
    tmp_path: Path,
) -> None:
    """A pulled MJPEG frame takes the path of a pushed JPEG (reduced decode at 720p, the same
    letterbox), so a camera and a client sending the camera's own JPEGs get the same score.
    Decoded by FFmpeg in full and then resized, scores differed by 0.008 on average."""
    jpegs = [jpeg(scene(2_000_000_100 + i), quality=85) for i in range(3)]
    video = write_mjpeg(tmp_path / "belt.avi", jpegs)
    async with serving(camera("belt", str(video))) as server, connect(server) as stub:
        pushed = [
            await stub.Analyze(pb.FrameRequest(encoded=data, frame_id=i))
            for i, data in enumerate(jpegs)
        ]
        call = watch(stub, "belt")
        results = [await call.read() for _ in range(6)]
        call.cancel()
        cam = await status(stub, "belt")
    assert (cam.frame_width, cam.frame_height) == (1280, 720)
    for result in results:
        assert result.status.code == 0, result.status.message
        twin = pushed[(result.frame_id - 1) % 3]  # frame 1 is the file's first, then it loops
        assert result.geometry == twin.geometry
        assert result.score == pytest.approx(twin.score, abs=1e-5), result.frame_id
        assert (result.peak.row, result.peak.col) == (twin.peak.row, twin.peak.col)
    assert len({round(r.score, 4) for r in pushed}) == 3  # three different frames, told apart


@pytest.mark.live
async def test_a_camera_that_keeps_coming_back_is_never_given_up() -> None:
    """max_reconnects counts failed retries in a row: each outage starts the count again."""
    source = FFmpegSource("mjpeg")
    cam = camera("flaky", source.url, max_reconnects=2, reconnect_min_s=1.0, reconnect_max_s=1.0)
    with running(source):
        async with serving(cam) as server, connect(server) as stub:
            await until(state_is(stub, "flaky", pb.CAMERA_STATE_RUNNING), 10, "running")
            for outage in range(3):
                before = (await status(stub, "flaky")).reconnects
                source.stop()

                async def retried(before: int = before) -> bool:
                    return (await status(stub, "flaky")).reconnects >= before + 2

                await until(retried, 10, f"outage {outage}: a failed retry")
                source.start()  # back before the next retry, which is the last one allowed
                await until(state_is(stub, "flaky", pb.CAMERA_STATE_RUNNING), 10, "back")
            assert (await status(stub, "flaky")).reconnects >= 6


@pytest.mark.live
async def test_a_camera_that_does_not_answer_keeps_no_other_waiting(tmp_path: Path) -> None:
    """OpenCV serialises FFmpeg opens unless told FFmpeg is thread safe: then two cameras
    that accept the connection and never answer would hold a video file's open for their
    whole open timeouts."""
    # the loop's default executor as small as a 2-core machine's (6) or smaller: the stops
    # must not wait their turn for it
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    video = write_video(tmp_path / "belt.mp4", frames=20, fps=10)
    holes = [blackhole() for _ in range(8)]
    with contextlib.ExitStack() as stack:
        for sock, _ in holes:
            stack.enter_context(sock)
        hung = tuple(
            camera(f"hung-{i}", f"rtsp://127.0.0.1:{port}/x", open_timeout_s=8.0)
            for i, (_, port) in enumerate(holes)
        )
        cams = (*hung, camera("file", str(video)))
        async with serving(*cams) as server, connect(server) as stub:
            await until(state_is(stub, "file", pb.CAMERA_STATE_RUNNING), 4, "the file opens")
            for each in hung:  # still inside their opens
                assert (await status(stub, each.id)).state == pb.CAMERA_STATE_CONNECTING
            # Nor a reload: stopping each waits up to 3 s for its reader, all side by side
            # (one after another, a reload of many such cameras waited 3 s each; on the
            # loop's default executor, six at a time on 2 cores, 8 waited 6 s, and 12 s on
            # this one's two threads).
            changed = tuple(c.model_copy(update={"open_timeout_s": 7.0}) for c in hung)
            started = time.monotonic()
            await server.reload(server.settings.model_copy(update={"cameras": changed}))
            assert time.monotonic() - started < 5.0
            listed = await stub.ListCameras(pb.ListCamerasRequest())
            assert [c.id for c in listed.cameras] == [c.id for c in hung]


async def test_a_reload_that_changes_only_a_cameras_cap_keeps_its_source_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Changing a camera's fps cap (or its input_size) restarted it: its connection dropped,
    an RTSP camera gave no frames for 2 s, and a camera that takes one client could be lost.
    Such a change now applies to the running camera."""
    caplog.set_level(logging.INFO, logger="convstream.server.cameras")
    belt = camera("belt", "demo:conveyor?fps=20")
    async with serving(belt) as server, connect(server) as stub:
        await until(state_is(stub, "belt", pb.CAMERA_STATE_RUNNING), 10, "running")
        assert server.cameras is not None
        feed = server.cameras.feeds["belt"]
        capped = belt.model_copy(update={"fps": 4.0, "input_size": "256x448"})
        await server.reload(server.settings.model_copy(update={"cameras": (capped,)}))
        assert server.cameras.feeds["belt"] is feed  # the same reader, never stopped
        assert "restarting" not in caplog.text
        assert "camera belt: now analysed at 4 frames/s at most, input 256x448" in caplog.text
        status_now = await status(stub, "belt")
        assert status_now.fps_cap == 4.0 and status_now.reconnects == 0
        watching = watch(stub, "belt")
        sizes = []  # a frame already in analysis as the reload came keeps the old size
        while (256, 448) not in sizes:
            result = await asyncio.wait_for(watching.read(), 10)
            sizes.append((result.geometry.input_height, result.geometry.input_width))
            assert len(sizes) <= 3, sizes
        watching.cancel()
        # a source's own setting still restarts it
        other = capped.model_copy(update={"source": "demo:conveyor?fps=20&seed=3"})
        await server.reload(server.settings.model_copy(update={"cameras": (other,)}))
        assert server.cameras.feeds["belt"] is not feed
        assert "camera belt changed; restarting it" in caplog.text


async def test_a_cancelled_camera_stop_lets_its_thread_finish() -> None:
    """A reload or shutdown cancelled while a camera stops: the stop's thread finishes its
    join, and no exception escapes it (cancelling the pending future made its set_result
    raise InvalidStateError on the thread)."""
    from convstream.server.feeds import _on_a_thread_of_its_own

    escaped: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda a: escaped.append(a.exc_value)
    finished = threading.Event()

    def stop() -> None:
        time.sleep(0.3)
        finished.set()

    try:
        stopping = asyncio.create_task(_on_a_thread_of_its_own(stop, "convstream-stop-test"))
        await asyncio.sleep(0.05)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert await asyncio.to_thread(finished.wait, 2.0)
        await asyncio.sleep(0.1)  # the thread's last step, after the stop
    finally:
        threading.excepthook = hook
    assert escaped == []


@pytest.mark.live
async def test_a_watchdog_check_that_raises_is_logged_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One camera's check raising (Thread.start's "can't start new thread" on a wedge) ended
    the watchdog without a word, every camera's stall checks with it, and stop() re-raised it
    at shutdown, before the engine closed."""
    video = write_video(tmp_path / "belt.mp4", frames=20, fps=10)
    async with serving(camera("a", str(video), fps=2.0), camera("b", str(video), fps=2.0)) as s:
        feeds = s.cameras.feeds

        def broken(now: float) -> None:
            raise RuntimeError("can't start new thread")

        checked: list[float] = []
        real = feeds["b"].camera.check

        def counted(now: float) -> None:
            checked.append(now)
            real(now)

        feeds["a"].camera.check = broken  # type: ignore[method-assign]
        feeds["b"].camera.check = counted  # type: ignore[method-assign]
        await asyncio.sleep(1.0)
        assert len(checked) >= 3  # every 0.25 s, camera a's failures notwithstanding
        del feeds["a"].camera.check  # its own again
        await asyncio.sleep(0.5)
    # once with its traceback, not four times a second; and said when it passes again
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["camera a: its watchdog check failed"]
    assert "can't start new thread" in caplog.text
    assert "camera a: its watchdog checks pass again" in caplog.text


@pytest.mark.live
async def test_the_watch_command_says_when_its_camera_goes_down_and_comes_back(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Longer than the test: what it says of the camera going down, it says on the server's
    # word (a result of no frame), not after a lull in the results (it was 3 s late so).
    monkeypatch.setattr(client_cli, "QUIET_S", 60.0)
    source = FFmpegSource("mjpeg")
    with running(source):
        async with serving(camera("a", source.url)) as server, connect(server) as stub:
            await until(state_is(stub, "a", pb.CAMERA_STATE_RUNNING), 10, "running")
            argv = ["watch", "a", "--address", f"127.0.0.1:{server.port}", "--max-fps", "5"]
            watching = asyncio.create_task(asyncio.to_thread(main, [*argv, "--count", "15"]))
            await asyncio.sleep(1.5)  # some results first
            source.stop()
            await until(state_is(stub, "a", pb.CAMERA_STATE_RECONNECTING), 10, "a lost")
            await asyncio.sleep(2.5)  # the lull's thread asks at its next second, and tells
            source.start()
            assert await asyncio.wait_for(watching, 30) == 0
    out, err = capsys.readouterr()
    # the server's word is no frame of the table, nor one of the 15 counted
    assert " error " not in out and "unavailable" not in out, out
    assert "15 frames" in out and "0 failed" in out, out
    assert "camera 'a' is reconnecting; waiting for its frames. Last error: " in err, err
    assert err.index("is reconnecting") < err.index("camera 'a': results again"), err
    # each notice says when: an outage read later in the scrollback said nothing of it
    assert re.search(r"convstream watch: \[\d\d:\d\d:\d\d\] camera 'a' is reconnecting", err)
    assert re.search(r"convstream watch: \[\d\d:\d\d:\d\d\] camera 'a': results again", err)


@pytest.mark.live
async def test_watching_a_camera_that_is_down_says_so_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_cli, "QUIET_S", 1.0)  # the command's 3 s, shorter for the test
    source = FFmpegSource("mjpeg")  # not started yet: the camera is down from the start
    async with serving(camera("late", source.url)) as server, connect(server) as stub:
        await until(state_is(stub, "late", pb.CAMERA_STATE_RECONNECTING), 10, "down")
        argv = ["watch", "late", "--address", f"127.0.0.1:{server.port}", "--count", "3"]
        watching = asyncio.create_task(asyncio.to_thread(main, [*argv, "--json"]))
        await asyncio.sleep(client_cli.QUIET_S + 2.5)  # long enough to ask again, twice
        with running(source):
            assert await asyncio.wait_for(watching, 30) == 0
    out, err = capsys.readouterr()
    # said once on stderr, though the server said it too (its first result, of no frame)
    assert err.count("camera 'late' is reconnecting; waiting for its frames") == 1, err
    # then its first results, not "results again": it had sent none before
    assert "camera 'late': its first results" in err and "results again" not in err, err
    # and in the JSON lines, where a program reading them hears it: a line of its own,
    # not one of the 3 frames counted
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["camera_state"] for line in lines] == ["reconnecting", None, None, None], out
    said = lines[0]
    assert (said["frame_id"], said["ok"], said["score"], said["late_ms"]) == (0, False, None, None)
    assert said["error"]["code"] == "UNAVAILABLE", said
    assert "camera 'late' is reconnecting: " in said["error"]["message"], said
    assert all(line["ok"] and line["frame_id"] > 0 for line in lines[1:]), out


@pytest.mark.live
async def test_a_camera_that_drops_after_each_frame_has_each_result_followed_by_a_notice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A camera whose every connection gives one frame and drops (a flaky link): between two
    of the watchdog's looks it was back and down again, the watchdog saw "reconnecting"
    twice and said nothing, and the frame's result was the last word, read as the camera
    back (a review's: ten frames' results and one notice). Each result of such a frame is
    now followed by a notice."""
    from convstream.server import sources

    class OneFrameThenDrop(sources.DemoCapture):
        """The demo conveyor, each connection of which drops after its first frame."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._reads = 0

        def read(self) -> Any:
            self._reads += 1
            if self._reads > 1:
                raise sources.SourceError("connection reset by peer")
            return super().read()

    monkeypatch.setattr(sources, "DemoCapture", OneFrameThenDrop)
    flaky = camera("flaky", "demo:conveyor?fps=30", reconnect_min_s=0.5, reconnect_max_s=0.5)
    async with serving(flaky) as server, connect(server) as stub:
        watching = Collector(watch(stub, "flaky"))
        await until(
            lambda: _true(sum(not r.camera_state for r in watching.results) >= 4), 20, "frames"
        )
        await until(state_is(stub, "flaky", pb.CAMERA_STATE_RECONNECTING), 5, "down")
        await asyncio.sleep(0.5)  # the notice after the last frame's result
        await watching.close()
    said = ["notice" if r.camera_state else "frame" for r in watching.results]
    assert said[-1] == "notice", said
    # no two frames' results without a notice between them: each frame came on a
    # connection of its own, which dropped after it
    assert "frame, frame" not in ", ".join(said), said
    assert said.count("notice") >= 4, said


async def _true(value: bool) -> bool:
    return value


@pytest.mark.live
async def test_unreachable_source_fails_within_open_timeout() -> None:
    sock, port = blackhole()  # accepts the connection, never answers
    with sock:
        cams = (
            camera("silent", f"http://127.0.0.1:{port}/x", open_timeout_s=1.0, max_reconnects=1),
            camera("refused", f"rtsp://127.0.0.1:{_closed_port()}/x", open_timeout_s=1.0),
        )
        async with serving(*cams) as server, connect(server) as stub:
            opening = await status(stub, "silent")  # its open under way (1 s)
            await until(state_is(stub, "silent", pb.CAMERA_STATE_RECONNECTING), 5, "first failure")
            failed = await status(stub, "silent")
            # its open lasted the open timeout, by the server's own clock (from the first
            # poll, a slow start passed part of it: a flake hunter's reading)
            assert opening.state == pb.CAMERA_STATE_CONNECTING
            opened_for = (
                failed.state_since.ToNanoseconds() - opening.state_since.ToNanoseconds()
            ) / 1e9
            assert 0.8 <= opened_for <= 2.5, opened_for
            silent = await status(stub, "silent")
            assert "could not open http source" in silent.last_error
            assert str(port) not in silent.last_error  # clients never see the address
            # the blackhole accepts connections but never answers the request
            assert "accepts connections, but did not answer an HTTP request" in silent.last_error
            # a watcher waits while the camera reconnects...
            waiting = Collector(watch(stub, "silent"))
            await until(state_is(stub, "silent", pb.CAMERA_STATE_FAILED), 8, "gave up")
            silent = await status(stub, "silent")
            assert "gave up after 1 reconnect" in silent.last_error
            assert "1 reconnects" not in silent.last_error
            # ...and is told at once when it gives up, rather than waiting for ever
            await asyncio.wait_for(waiting.task, 2)
            assert waiting.error is not None
            # its only result: the notice of the camera's state as the watch was taken, in
            # the stream as well as the metadata (most languages' stubs hide the latter)
            assert [(r.frame_id, r.camera_state) for r in waiting.results] == [
                (0, pb.CAMERA_STATE_RECONNECTING)
            ], waiting.results
            assert "camera 'silent' is reconnecting: could not open" in (
                waiting.results[0].status.message
            )
            assert waiting.error.code() == grpc.StatusCode.FAILED_PRECONDITION
            told = str(waiting.error.details())
            assert "camera 'silent' has failed" in told and "gave up after 1" in told
            with pytest.raises(grpc.aio.AioRpcError) as info:  # so is a new watcher
                await watch(stub, "silent").read()
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            refused = await status(stub, "refused")
            assert refused.state == pb.CAMERA_STATE_RECONNECTING
            assert refused.reconnects >= 1
            # a refusal is told apart from a timeout, so nobody goes hunting a slow network
            assert "could not open rtsp source: connection refused" in refused.last_error


@pytest.mark.live
async def test_a_wrong_rtsp_path_or_password_is_told_apart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The usual first-hour mistakes, each named: a wrong path, no password, a wrong one. A
    refused password is tried again every CREDENTIALS_RETRY_S, not every few seconds: many
    cameras lock the account after a few wrong tries (an operator review's)."""
    plain, locked = RtspSource(fps=10), RtspSource(fps=10, credentials=("ops", "p@ss/w:rd"))
    with running(plain, locked):
        at = f"127.0.0.1:{locked.port}/camera"
        cams = (
            camera("wrong-path", plain.url.replace("/camera", "/camra")),
            camera("no-password", f"rtsp://{at}"),
            camera("bad-password", f"rtsp://ops:guess@{at}"),
            camera("good", f"rtsp://ops:p%40ss%2Fw%3Ard@{at}"),  # percent-encoded, as URLs want
        )
        async with serving(*cams) as server, connect(server) as stub:
            await until(state_is(stub, "good", pb.CAMERA_STATE_RUNNING), 15, "good runs")
            told = {
                "wrong-path": "no stream at that path (RTSP 404 Not Found)",
                "no-password": "it asks for a user name and password (RTSP 401 Unauthorized)",
                "bad-password": "it refused the user name or password in the URL (401",
            }
            for camera_id, words in told.items():
                await until(state_is(stub, camera_id, pb.CAMERA_STATE_RECONNECTING), 15, camera_id)
                error = (await status(stub, camera_id)).last_error
                assert f"could not open rtsp source: {words}" in error, error
                assert "guess" not in error and str(locked.port) not in error
            await asyncio.sleep(1.5)  # the wrong path tried again meanwhile, the password not
            tries = {c: (await status(stub, c)).reconnects for c in ("wrong-path", "bad-password")}
            assert tries["wrong-path"] >= 2 and tries["bad-password"] == 1, tries
            retry = re.search(
                r"camera bad-password \(.*\): .*; retry 1 in (\d+\.\d) s", caplog.text
            )
            assert retry is not None and float(retry.group(1)) >= 600, caplog.text[-2000:]
            assert "refused credentials are tried every 10 minutes" in caplog.text


async def test_a_reload_leaves_an_unchanged_camera_with_a_refused_password_to_its_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload tried a camera whose password had been refused at once, its URL unchanged:
    "retry 2 in 600.0 s" at the moment of the reload. A config tool that reloads often
    would lock the camera's account, which the 10-minute wait is there to spare. A reload
    that changes its URL (the fix) tries it at once. Not alone: what it counts does not
    depend on how fast anything runs."""
    caplog.set_level(logging.INFO, logger="convstream.server")
    locked = RtspSource(fps=10, credentials=("ops", "right"))
    with running(locked):
        at = f"127.0.0.1:{locked.port}/camera"
        refused = camera("door", f"rtsp://ops:guess@{at}")
        async with serving(refused) as server, connect(server) as stub:
            await until(state_is(stub, "door", pb.CAMERA_STATE_RECONNECTING), 15, "refused")
            assert (await status(stub, "door")).reconnects == 1
            for _ in range(3):  # a config tool reloading, the camera's entry as it was
                await server.reload(server.settings)
            await asyncio.sleep(1.5)  # time to open it again and be refused, had it tried
            door = await status(stub, "door")
            assert door.state == pb.CAMERA_STATE_RECONNECTING and door.reconnects == 1, door
            assert "; retry 2 in" not in caplog.text
            assert (
                "camera door: its user name or password was refused and its config is "
                "unchanged, so this reload does not try it again" in caplog.text
            )
            fixed = refused.model_copy(update={"source": f"rtsp://ops:right@{at}"})
            await server.reload(server.settings.model_copy(update={"cameras": (fixed,)}))
            await until(state_is(stub, "door", pb.CAMERA_STATE_RUNNING), 15, "fixed runs")


def _closed_port() -> int:
    return free_port()  # free a moment ago: nothing listens there


@pytest.mark.alone
async def test_video_file_loops_or_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = write_video(tmp_path / "belt.mp4", frames=10, fps=20)
    cams = (
        camera("looped", str(video)),
        camera("once", str(video), loop=False),
        camera("missing", str(tmp_path / "nope.mp4")),
        camera("notes", str(tmp_path / "notes.txt")),
    )
    (tmp_path / "notes.txt").write_text("hello&db_clave=Zq1\n")
    async with serving(*cams) as server, connect(server) as stub:
        await until(state_is(stub, "once", pb.CAMERA_STATE_STOPPED), 10, "once ends")
        await until(lambda: _frames_read_over(stub, "looped", 25), 10, "looped goes on")
        once = await status(stub, "once")
        assert once.frames_read == 10 and once.last_error == ""
        looped = await status(stub, "looped")
        assert looped.state == pb.CAMERA_STATE_RUNNING
        assert 10 <= looped.fps_in <= 30  # paced at the file's 20 fps, not as fast as it decodes
        missing = await status(stub, "missing")
        assert missing.state == pb.CAMERA_STATE_FAILED
        assert "no such video file" in missing.last_error and missing.reconnects == 0
        # a file that is there but no video fails as well, saying what it holds: it was
        # retried for ever, backing off to every 30 s, as a camera that is down; its words
        # are the log's alone (clients read a mistyped path's first line: a secrets file's)
        notes = await status(stub, "notes")
        assert notes.state == pb.CAMERA_STATE_FAILED and notes.reconnects == 0
        assert notes.last_error == (
            "could not open file source: not a video OpenCV can read (it holds text (19 "
            "bytes); the server's log names the file)"
        )
        # and the log names the file but quotes none of it: a secrets file's first line
        # ("password = hunter2", or a token file's token alone) has no form a rule could hide
        assert f"file source {tmp_path / 'notes.txt'} is not a video" in caplog.text
        assert "(it holds text (19 bytes))" in caplog.text and "Zq1" not in caplog.text
        # never analysed a frame: no time at all, not the epoch (other languages' has_ checks)
        assert missing.frames_analysed == 0 and not missing.HasField("last_frame_time")
        assert missing.HasField("last_error_time") and missing.HasField("state_since")
        # watching a camera that will send nothing says why, instead of waiting for ever
        for camera_id, why in [
            ("missing", "has failed: no such video file"),
            ("once", "has stopped: its video file ended (loop = false)."),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(watch(stub, camera_id).read(), 2)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            told = str(info.value.details())
            assert f"camera {camera_id!r} {why}" in told and "config" in told
        # the file is back: a reload with the config unchanged restarts the failed camera
        write_video(tmp_path / "nope.mp4", frames=10, fps=20)
        await server.reload(server.settings)
        await until(lambda: _frames_read_over(stub, "missing", 5), 10, "missing comes back")
        # but not the clip played to its end: replayed at every reload, it raised its
        # dashboard alerts again (an operator review's)
        await asyncio.sleep(0.5)
        once = await status(stub, "once")
        assert once.state == pb.CAMERA_STATE_STOPPED and once.frames_read == 10
        assert "camera once was down" not in caplog.text
        # a new clip put in the file's place: a reload plays it, on both cameras (the one
        # looping played the old one, deleted, for good)
        write_video(tmp_path / "new.mp4", frames=10, fps=20, size=(160, 128)).replace(video)
        await server.reload(server.settings)
        await until(lambda: _frames_read_over(stub, "once", 10), 10, "once plays the new clip")

        async def looped_new() -> bool:
            return (await status(stub, "looped")).frame_width == 160

        await until(looped_new, 10, "looped plays it too")


async def test_a_camera_that_shows_next_to_nothing_is_said_blank(tmp_path: Path) -> None:
    """A capped lens gave results of score 0.005, "intact", and a camera list of a running
    camera with a low score: all clear, for a camera that sees nothing."""
    capped = write_video(tmp_path / "capped.mp4", frames=10, fps=20, pattern="color=c=black")
    cams = (camera("capped", str(capped)), camera("belt", str(write_video(tmp_path / "b.mp4"))))
    async with serving(*cams) as server, connect(server) as stub:
        results = {}
        for camera_id in ("capped", "belt"):
            result = await asyncio.wait_for(watch(stub, camera_id).read(), 10)
            assert isinstance(result, pb.FrameResult) and result.status.code == 0
            results[camera_id] = result
            told = await status(stub, camera_id)
            assert told.last_blank == (camera_id == "capped"), told
        assert results["capped"].blank and results["capped"].contrast < 2
        assert not results["belt"].blank and results["belt"].contrast > 20  # ffmpeg's bars
        blank = {
            s.labels["source"]: s.value for s in _samples(server, "convstream_blank_frames_total")
        }
        assert blank.get("capped", 0) >= 1 and "belt" not in blank, blank


async def test_watchers_past_the_limit_are_refused_and_counted() -> None:
    """max_watchers could fill up unseen: no metric counted the open watches of published
    streams, nor the refusals."""
    belt = camera("belt", "demo:conveyor?fps=10")
    async with serving(belt, max_watchers=1) as server, connect(server) as stub:
        first = watch(stub, "belt")
        assert isinstance(await asyncio.wait_for(first.read(), 10), pb.FrameResult)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(watch(stub, "belt").read(), 10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the limit is 1" in str(info.value.details())
        value = server.metrics.registry.get_sample_value
        assert value("convstream_watchers") == 1
        assert value("convstream_calls_refused_total", {"method": "WatchCamera"}) == 1
        # every watch is counted by how it ended: an SRE's error ratio
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await asyncio.wait_for(watch(stub, "nowhere").read(), 10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        first.cancel()

        def ended(outcome: str) -> float:
            return value("convstream_watches_total", {"outcome": outcome}) or 0.0

        await until(lambda: _true(ended("cancelled") == 1), 10, "the cancelled watch counted")
        assert (ended("resource_exhausted"), ended("not_found"), ended("ok")) == (1, 1, 0)


async def test_watches_that_read_nothing_are_ended_and_give_their_places_back() -> None:
    """300 watches that read nothing held all 16 places for good, and every other watcher
    (the dashboard's too) was refused. A watch whose client takes no result for
    stream_idle_timeout_s (0.6 s here) ends, DEADLINE_EXCEEDED, as a stream does, and its
    place goes to the next."""
    belt = camera("belt", "demo:conveyor?fps=15")
    heavy = pb.ResultOptions(feature_maps=["stage1"], encoding=pb.TENSOR_ENCODING_FLOAT32)
    settings = {"max_watchers": 2, "stream_idle_timeout_s": 0.6}
    async with serving(belt, **settings) as server, connect(server) as stub:
        idle = [watch(stub, "belt", options=heavy) for _ in range(2)]  # 3 MB a result, unread
        assert (await asyncio.wait_for(idle[0].initial_metadata(), 10)) is not None
        with pytest.raises(grpc.aio.AioRpcError) as full:  # both places taken
            await asyncio.wait_for(watch(stub, "belt").read(), 10)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        value = server.metrics.registry.get_sample_value

        def ended_idle() -> float:
            return value("convstream_watches_total", {"outcome": "idle"}) or 0.0

        await until(lambda: _true(ended_idle() == 2), 30, "the unread watches ended")
        reader = watch(stub, "belt")  # their places were given back
        assert isinstance(await asyncio.wait_for(reader.read(), 10), pb.FrameResult)
        for call in idle:  # what gRPC had sent before they stalled, then why they ended
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for _ in call:
                    pass
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "results not read for 0.6 s (stream_idle_timeout_s); the watch is ended" in (
                str(ended.value.details())
            )
        reader.cancel()


async def test_a_watch_that_stops_reading_holds_a_bounded_share_of_bytes() -> None:
    """A watch asking for large results and reading none kept up to its queue_size (1024)
    of them: 8.8 MB each with every stage in float32 and the frame, 44 MB more of the
    server's memory a second. Now one watch keeps at most a quarter of max_watcher_bytes,
    drops its oldest past it (as its queue_size would, counted), and gives all back when it
    ends."""
    belt = camera("belt", "demo:conveyor?fps=15")
    limit = 16 << 20
    async with serving(belt, max_watcher_bytes=limit) as server, connect(server) as stub:
        assert server.cameras is not None
        budget = server.cameras.result_bytes
        options = pb.ResultOptions(feature_maps=["stage3"], encoding=pb.TENSOR_ENCODING_FLOAT32)
        call = watch(stub, "belt", options=options, queue_size=1024)
        first = await asyncio.wait_for(call.read(), 10)
        size = first.ByteSize()
        assert size > 800_000  # 64 x 45 x 80 float32 values
        await until(lambda: _true(budget.held >= limit // 4 - size), 20, "filled")  # unread
        await asyncio.sleep(1.0)  # 15 more results a second come, and the oldest go
        assert limit // 4 - size <= budget.held <= limit // 4
        value = server.metrics.registry.get_sample_value
        assert value("convstream_watcher_bytes_held") == budget.held
        later = [first]  # read again: past what gRPC had sent already, the drops are said
        while later[-1].frames_dropped == 0:
            later.append(await asyncio.wait_for(call.read(), 10))
            assert len(later) < 40
        assert later[-1].frames_dropped >= 5 and later[-1].frame_id - later[-2].frame_id > 5

        # counted for the camera, for an alert on watchers too slow: through a reload that
        # restarts the camera (the watch goes on, on the new feed), and once it is gone
        def drops() -> float:
            return value("convstream_camera_watcher_drops_total", {"camera": "belt"}) or 0.0

        before = drops()
        assert before >= later[-1].frames_dropped
        slower = belt.model_copy(update={"source": "demo:conveyor?fps=14"})
        await server.reload(server.settings.model_copy(update={"cameras": (slower,)}))
        assert drops() >= before  # carried to the new feed
        await until(lambda: _true(drops() > before + 3), 10, "drops counted after the restart")
        call.cancel()
        await until(lambda: _true(budget.held == 0), 10, "given back")
        assert drops() > before + 3  # and kept once the watch is gone


async def test_watches_over_max_watcher_bytes_are_refused_and_unread_ones_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 watches of every stage in float32 that read nothing held 5 GB against a
    max_watcher_bytes of 256 MiB (a reliability review): the result each was being sent
    was not counted (its copy and gRPC's serialised bytes), and each always kept its newest.
    Now that one counts twice; while the total is over the limit a new watch is refused,
    RESOURCE_EXHAUSTED, and one that has read nothing for UNREAD_PRESSED_S is ended (1 s
    here), its place and bytes given back."""
    from convstream.server import servicer

    monkeypatch.setattr(servicer, "UNREAD_PRESSED_S", 1.0)
    belt = camera("belt", "demo:conveyor?fps=10")
    async with serving(belt, max_watcher_bytes=1 << 20) as server, connect(server) as stub:
        assert server.cameras is not None
        budget = server.cameras.result_bytes
        big = pb.ResultOptions(feature_maps=["stage2"], encoding=pb.TENSOR_ENCODING_FLOAT32)
        unread = watch(stub, "belt", options=big)  # about 1.8 MB a result, never read
        # over the limit for good once gRPC's flow-control windows are full (a few results
        # in): a write it holds (counted twice) and the newest result waiting behind it
        stalled = 0
        for _ in range(200):
            stalled = stalled + 1 if budget.held > 4 << 20 else 0
            if stalled == 5:
                break
            await asyncio.sleep(0.1)
        assert stalled == 5, budget.held
        small = watch(stub, "belt", options=pb.ResultOptions(include_heatmap=False))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(small.read(), 10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over max_watcher_bytes (1 MiB)" in str(refused.value.details())
        # ended unread after a second of it: its place given back, but the write gRPC holds
        # for it still counted (a diff review's), so no new watch yet
        unread_calls = server.servicer._unread_watches
        await until(lambda: _true(unread_calls.count == 1), 10, "the unread watch ended")
        assert budget.held > 1 << 20
        refused_again = watch(stub, "belt", options=pb.ResultOptions(include_heatmap=False))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(refused_again.read(), 10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        read = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:  # what gRPC held for it, then its status
                read.append(await asyncio.wait_for(unread.read(), 10))
        # (how many came first is gRPC's: what its flow-control windows let through)
        assert "results not read for" in str(ended.value.details())
        assert "over max_watcher_bytes" in str(ended.value.details())
        # read, its bytes are all given back, and there is room again
        await until(lambda: _true(budget.held < 1 << 20), 10, "its bytes given back")
        again = watch(stub, "belt", options=pb.ResultOptions(include_heatmap=False))
        assert (await asyncio.wait_for(again.read(), 10)).source == "belt"
        again.cancel()


@pytest.mark.alone
async def test_a_raw_stream_file_loops_and_an_unbelievable_rate_is_paced(tmp_path: Path) -> None:
    """A raw H.264 or MJPEG file (no container: a DVR's export), which OpenCV cannot seek
    back in, is opened again at its end rather than called ended: it reconnected at every
    pass and flapped. A file whose rate says more than MAX_FPS (here 1000) is played at 25
    frames/s rather than as fast as it decodes (2,400 frames/s, every core busy)."""
    cams = (
        camera("h264", str(write_video(tmp_path / "dvr.h264", frames=10, raw=True))),
        camera("mjpeg", str(write_video(tmp_path / "dvr.mjpeg", frames=10, raw=True))),
        camera("fast", str(write_video(tmp_path / "fast.mp4", frames=400, fps=1000))),
    )
    async with serving(*cams) as server, connect(server) as stub:
        for camera_id in ("h264", "mjpeg"):
            await until(lambda c=camera_id: _frames_read_over(stub, c, 35), 10, camera_id)
            told = await status(stub, camera_id)  # three passes and more over 10 frames
            assert told.state == pb.CAMERA_STATE_RUNNING, told
            assert told.reconnects == 0 and told.last_error == "", told
        fast = await status(stub, "fast")
        assert fast.state == pb.CAMERA_STATE_RUNNING and 10 <= fast.fps_in <= 30, fast
        assert fast.frames_read < 400  # not through its 400 frames in a second or two


async def test_a_looping_file_of_one_frame_is_a_still(tmp_path: Path) -> None:
    """A one-frame clip, or a JPEG named as a camera: OpenCV cannot seek back to its frame,
    which made the camera flap between running and reconnecting three times a second, with
    a reconnect counted and two log lines each time. It is a still: the frame, paced."""
    clip = write_video(tmp_path / "one.mp4", frames=1, fps=10)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(scene(3, 240, 320)))
    portrait = tmp_path / "portrait.jpg"  # a phone's: stored on its side, turned by its EXIF
    portrait.write_bytes(with_exif_orientation(jpeg(scene(3, 240, 320)), 6))
    cams = (camera("clip", str(clip)), camera("photo", str(photo)), camera("phone", str(portrait)))
    async with serving(*cams) as server, connect(server) as stub:
        for camera_id in ("clip", "photo", "phone"):
            await until(lambda c=camera_id: _frames_read_over(stub, c, 12), 10, camera_id)
            told = await status(stub, camera_id)
            assert told.state == pb.CAMERA_STATE_RUNNING, told
            assert told.reconnects == 0 and told.last_error == "", told
            assert told.frames_analysed >= 2, told
        first = await watch(stub, "photo").read()
        assert first.geometry.frame_width == 320 and first.geometry.frame_height == 240
        turned = await watch(stub, "phone").read()  # as Analyze turns the same bytes
        assert turned.geometry.frame_width == 240 and turned.geometry.frame_height == 320
        # and each says whether it was turned, and how (nothing said it: a client decoding
        # the bytes without their EXIF drew on a picture lying on its side)
        assert (first.geometry.exif_orientation, turned.geometry.exif_orientation) == (0, 6)
        pushed = await stub.Analyze(pb.FrameRequest(encoded=portrait.read_bytes()))
        assert pushed.geometry.exif_orientation == 6
        geometry = Geometry.from_proto(pushed.geometry)  # the Python client's
        assert geometry.exif_orientation == 6 and geometry.content_box()[2] > 0


async def test_a_png_named_as_a_camera_is_analysed_as_the_same_png_pushed(
    tmp_path: Path,
) -> None:
    """FFmpeg decodes a PNG ignoring its eXIf orientation and its transparency: a phone's
    portrait screenshot was analysed lying on its side, and a transparent half as the
    colour it hides. Its frames are now kept as sent and decoded as a client's PNG is."""
    rgba = np.dstack([scene(2_000_000_203, 240, 320), np.full((240, 320), 255, np.uint8)])
    rgba[:, 160:, 3] = 0  # the right half transparent, its colour still there
    data = png_with(png(rgba), b"eXIf", exif(6), b"IDAT")  # stored on its side
    photo = tmp_path / "photo.png"
    photo.write_bytes(data)
    capture = open_source(parse_source(str(photo)), open_timeout_s=5, read_timeout_s=5, loop=True)
    try:
        frames = [capture.read() for _ in range(3)]
        assert all(isinstance(f, bytes) and f == data for f in frames)  # byte for byte
    finally:
        capture.release()
    async with serving(camera("photo", str(photo))) as server, connect(server) as stub:
        twin = await stub.Analyze(pb.FrameRequest(encoded=data))
        result = await watch(stub, "photo").read()
        told = await status(stub, "photo")
    assert told.state == pb.CAMERA_STATE_RUNNING and told.last_error == "", told
    assert (result.geometry.frame_width, result.geometry.frame_height) == (240, 320)
    assert result.geometry == twin.geometry
    assert result.score == pytest.approx(twin.score, abs=1e-6)
    assert result.heatmap.data == twin.heatmap.data


def _mjpeg_clip(path: Path) -> Path:
    """Three frames in an MJPEG AVI, as OpenCV writes one."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(3):
        writer.write(scene(i, 240, 320))
    writer.release()
    return path


def test_the_log_names_a_still_jpeg_a_jpeg_and_a_clip_of_them_mjpeg(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(scene(3, 240, 320)))
    clip = _mjpeg_clip(tmp_path / "clip.avi")
    with caplog.at_level(logging.INFO, logger="convstream.server.sources"):
        for path in (photo, clip):
            spec = parse_source(str(path))
            capture = open_source(
                spec, open_timeout_s=5, read_timeout_s=5, loop=True, name=f"log-{path.stem}"
            )
            capture.release()
    told = [r.getMessage() for r in caplog.records if "kept as sent" in r.getMessage()]
    assert told == [
        f"camera {name}: its {kind} frames are kept as sent, and decoded only if analysed"
        for name, kind in (("log-photo", "JPEG"), ("log-clip", "MJPEG"))
    ]


def test_an_mjpeg_camera_whose_first_part_comes_cut_keeps_its_frames_as_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A camera whose first part after a connect came cut short was decoded by FFmpeg for the
    whole connection, its later broken frames analysed as torn pictures rather than passed
    over and counted (a reviewer's camera cutting every other part). Its next whole frame
    now decides. And a camera going back to how it was read two connects before says so:
    the change back was logged at debug."""
    whole = jpeg(scene(2_000_000_300, 240, 320))
    cut = {"first": 0}  # how many parts come cut at the start of a connection

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            with contextlib.suppress(OSError):
                for k in range(40):
                    part = whole[: len(whole) // 4] if k < cut["first"] else whole
                    self.wfile.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\n"
                        + f"Content-Length: {len(part)}\r\n\r\n".encode()
                        + part
                        + b"\r\n"
                    )
                    self.wfile.flush()
                    time.sleep(0.1)

        def log_message(self, *_: object) -> None:
            pass

    kept = "camera cut-first: its MJPEG frames are kept as sent, and decoded only if analysed"
    decoded = "camera cut-first: its MJPEG frames are decoded as read: its first frame is not"
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera) as camera:
        threading.Thread(target=camera.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{camera.server_address[1]}/video.mjpg"
        try:
            with caplog.at_level(logging.INFO, logger="convstream.server.sources"):
                for first in (30, 0, 30, 2):  # cut through the first looks, none, again, two
                    cut["first"] = first
                    spec = parse_source(url)
                    capture = open_source(
                        spec, open_timeout_s=5, read_timeout_s=5, loop=True, name="cut-first"
                    )
                    try:  # a JPEG as sent, or pixels that FFmpeg decoded
                        assert isinstance(capture.read(), bytes if first < 3 else np.ndarray)
                    finally:
                        capture.release()
        finally:
            camera.shutdown()
    told = [r.getMessage() for r in caplog.records if "cut-first" in r.getMessage()]
    assert [t[: len(decoded)] if t.startswith(decoded) else t for t in told] == [
        decoded,
        kept,
        decoded,
        kept,
    ], told


def test_how_a_camera_is_read_is_said_once_not_at_every_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A camera that hangs up every few seconds logged how its frames are read at every
    reconnect (27 of its 39 lines), after its flapping had quietened the rest: said again
    only when it changes."""
    clip = _mjpeg_clip(tmp_path / "clip.avi")
    with caplog.at_level(logging.INFO, logger="convstream.server.sources"):
        for _ in range(3):  # three connects of one camera
            spec = parse_source(str(clip))
            open_source(spec, open_timeout_s=5, read_timeout_s=5, loop=True, name="flaps").release()
    told = [r.getMessage() for r in caplog.records if "kept as sent" in r.getMessage()]
    assert told == ["camera flaps: its MJPEG frames are kept as sent, and decoded only if analysed"]
    # (said once a process: each test here names its cameras apart, or one would not hear it)


async def _frames_read_over(stub: pb_grpc.ConvstreamStub, camera_id: str, n: int) -> bool:
    return (await status(stub, camera_id)).frames_read > n


def test_a_frame_superseded_while_the_analysis_is_free_is_skipped_not_dropped() -> None:
    """Dropped says the server was busy. Frames that come in a burst (an RTSP camera's often
    do) and supersede each other before the free analysis wakes are passed over by design:
    counted as drops, they made a server using a fifth of a core look short of CPU."""
    cam = Camera(camera("burst", "demo:conveyor"))
    image = np.zeros((8, 8, 3), np.uint8)

    def burst(n: int) -> tuple[int, int]:
        before = cam.frames_dropped, cam.frames_skipped
        for _ in range(n):
            cam._publish(image, 0)
        assert cam.take(after=0) is not None  # the analysis takes the newest
        return cam.frames_dropped - before[0], cam.frames_skipped - before[1]

    assert burst(3) == (0, 2)  # the analysis was free: two passed over, none dropped
    cam.analysing = True
    assert burst(3) == (2, 0)  # it was busy: the two it could not take were dropped
    cam.next_due = time.monotonic() + 60
    assert burst(3) == (0, 2)  # the fps cap passed them over, busy or not
    assert cam.frames_read == 9


def test_an_fps_cap_reads_no_more_than_itself_after_a_busy_moment() -> None:
    """A 30 fps camera capped at 2: after an analysis that took 1.5 s the next frame followed
    at once, to catch up, and the pair read as a burst: "2.9/2" on a busy server's dashboard.
    The cap's schedule as CameraFeed keeps it, each frame taken as the camera gives it (the
    first at or after its time), the analyses 50 ms but one in ten 1.5 s."""
    interval, meter = 0.5, RateMeter()
    due = now = 0.0
    rates, taken = [], []
    for k in range(80):
        now = math.ceil(max(now, due) * 30) / 30  # the camera's next frame
        taken.append(now)
        meter.tick(now)
        rates.append(meter.rate(now))
        due = next_due(due, now, interval)
        now += 1.5 if k % 10 == 5 else 0.05
    assert max(rates[2:]) < 2.05, max(rates[2:])
    # and on schedule it keeps to the cap, though each frame comes up to 1/30 s after its time
    calm = np.diff(taken[20:25])
    assert abs(calm.mean() - interval) < 0.01, calm


@pytest.mark.live
def test_frames_an_fps_cap_will_not_take_are_passed_over_unconverted() -> None:
    """A 30 fps H.264 camera capped at 5 fps: the frames the cap's next analysis cannot take
    (another frame comes before it is due) are grabbed and never converted to pixels, and
    the frame each analysis takes is still the newest one read."""
    calls = {"read": 0, "skip": 0}

    class Counted(_Passing):
        def read(self) -> np.ndarray | bytes:
            calls["read"] += 1
            return self.capture.read()

        def skip(self) -> None:
            calls["skip"] += 1
            self.capture.skip()

    def opener(spec: SourceSpec, **kw: Any) -> Counted:
        return Counted(open_source(spec, **kw))

    interval = 0.2  # the cap: 5 analyses a second, scheduled as CameraFeed schedules them
    source = FFmpegSource("mpegts", fps=30, size=(320, 240))
    with running(source):
        cam = Camera(camera("capped", source.url, fps=5.0), opener)
        cam.start()
        try:
            deadline = time.monotonic() + 10
            while cam.frames_read < 10 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert cam.frames_read >= 10, cam.last_error
            taken, last, behind = 0, 0, []
            started = time.monotonic()
            while time.monotonic() - started < 4:
                time.sleep(max(0.0, cam.next_due - time.monotonic()))
                frame = cam.take(after=last)
                if frame is None:
                    time.sleep(0.005)
                    continue
                behind.append(cam.frames_read - frame.number)  # frames read after it
                last, taken = frame.number, taken + 1
                now = time.monotonic()
                cam.next_due = next_due(cam.next_due, now, interval)
        finally:
            cam.stop()
    assert 15 <= taken <= 25  # about 5 a second
    # each frame read once, one way (the last read may have been cut short by the stop)
    assert 0 <= calls["read"] + calls["skip"] - cam.frames_read <= 1, (calls, cam.frames_read)
    # Of the 6 frames between two analyses, 3 or 4 come while another frame is due before
    # the next analysis (decided as each read begins, before the analysis under way has set
    # the next one): those are grabbed and left unconverted.
    assert calls["skip"] > 0.35 * cam.frames_read, (calls, cam.frames_read)
    assert cam.frames_skipped >= calls["skip"]
    # Each analysis got the newest frame (at most one came in while it was being taken).
    assert np.mean(np.array(behind) <= 1) >= 0.8, behind


@pytest.mark.parametrize("kind", ["mjpeg", "mpegts"])
@pytest.mark.alone
async def test_frames_stay_fresh_when_the_server_analyses_fewer(kind: str) -> None:
    """30 fps in, 5 analysed per second: results are of the newest frame, and lag stays flat
    (an MJPEG camera's frames kept as sent, an H.264 camera's decoded by FFmpeg)."""
    source = FFmpegSource(kind, fps=30, size=(320, 240), stamped=True)
    with running(source):
        async with serving(camera("fast", source.url, fps=5.0)) as server, connect(server) as stub:
            await until(state_is(stub, "fast", pb.CAMERA_STATE_RUNNING), 10, "running")
            call = watch(stub, "fast", options=pb.ResultOptions(include_frame=True))
            ages = []
            sides: list[tuple[int, int]] = []  # (before the server read it, after), ms
            started = time.monotonic()
            async for result in call:
                received = time.time()
                frame = cv2.imdecode(np.frombuffer(result.frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
                g = result.geometry
                made = read_time(frame, g.scale, g.pad_left, g.pad_top)
                ages.append((received - made) * 1000)
                # where a lag grows, if one does: before the server read the frame (the
                # source, FFmpeg's encode and decode on these cores) or after
                read_at = result.capture_time.ToNanoseconds() / 1e9
                sides.append((round((read_at - made) * 1000), round((received - read_at) * 1000)))
                if time.monotonic() - started > 6:
                    break
            call.cancel()
            counts = []  # Prometheus counters: they may only grow
            for _ in range(15):
                polled = await status(stub, "fast")
                counts.append((polled.frames_dropped, polled.frames_skipped))
                await asyncio.sleep(0.07)
            dropped, skipped = [c[0] for c in counts], [c[1] for c in counts]
            assert dropped == sorted(dropped) and skipped == sorted(skipped), counts
            cam = await status(stub, "fast")
            counted = {
                sample.labels["outcome"]: sample.value
                for family in server.cameras.collect()
                for sample in family.samples
                if sample.name == "convstream_camera_frames_total"
            }
    assert 20 <= len(ages) <= 40  # about 5 per second
    # the metrics tell skipped from dropped too, so a cap does not trip an overload alert
    assert counted["skipped"] >= cam.frames_skipped > counted["dropped"] * 2
    # most frames were passed over for the 5 fps cap (not queued, and not counted as drops:
    # the server had time to spare); every frame read is accounted for once
    assert cam.frames_skipped > cam.frames_analysed > cam.frames_dropped
    accounted = cam.frames_analysed + cam.frames_dropped + cam.frames_skipped
    assert 0 <= cam.frames_read - accounted <= 2  # the newest, not yet taken or analysed
    ages_ms = np.array(ages)
    assert ages_ms.min() > 0, "the painted clock was misread"
    third = len(ages_ms) // 3
    # No growing lag: the last results are as fresh as the first ones (medians, so that one
    # burst of CPU contention on a shared machine does not read as a trend).
    assert np.median(ages_ms[-third:]) < np.median(ages_ms[:third]) + 100, sides
    assert ages_ms.max() < 1000, sides
    # A reader that keeps up is not taken for one behind its camera: no frame's capture_time
    # is set back before the frame was made (an MJPEG camera's is not measured at all)
    assert min(before for before, _ in sides) > -50, sides


@pytest.mark.alone
async def test_one_inference_per_frame_and_a_slow_watcher_slows_nobody() -> None:
    demo = camera("belt", "demo:conveyor?fps=20")
    async with serving(demo) as server, connect(server) as stub:
        await until(state_is(stub, "belt", pb.CAMERA_STATE_RUNNING), 10, "running")
        fast = [Collector(watch(stub, "belt")) for _ in range(3)]
        maps = Collector(watch(stub, "belt", options=pb.ResultOptions(feature_maps=["stage3"])))
        # Results in flight are bounded by the client's HTTP/2 window; BDP probing would grow
        # it to megabytes, so a slow viewer turns it off and the server's queue does the rest.
        slow_channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]
        )
        slow_stub = pb_grpc.ConvstreamStub(slow_channel)
        slow = Collector(watch(slow_stub, "belt", queue_size=2), delay=0.2)
        dashboard = Collector(
            watch(stub, "belt", max_fps=2, options=pb.ResultOptions(include_frame=True))
        )
        await asyncio.sleep(4.0)
        everyone = [*fast, maps, slow, dashboard]
        for c in everyone:
            await c.close()
        await slow_channel.close()
        cam = await status(stub, "belt")
        assert server.cameras is not None
        feed = server.cameras.feeds["belt"]
        engine = feed.pipeline.engine
        # One inference per frame taken, not per watcher (one frame may be mid-way).
        assert feed.frames_analysed <= engine.frames <= feed.frames_taken
        assert feed.frames_taken - feed.frames_analysed <= 1

    assert cam.frames_analysed >= 60  # 20 fps for 4 s, less start-up
    first = max(c.results[0].frame_id for c in [*fast, maps])
    last = min(c.results[-1].frame_id for c in [*fast, maps])
    expected = {r.frame_id for r in fast[0].results if first <= r.frame_id <= last}
    for c in [*fast, maps]:
        got = {r.frame_id for r in c.results if first <= r.frame_id <= last}
        assert got == expected  # every analysed frame, whatever the slow one does
        assert c.results[-1].frames_dropped == 0
    assert all(len(r.feature_maps) == 1 for r in maps.results)
    assert not any(r.feature_maps for r in fast[0].results)
    assert 15 <= len(slow.results) <= 21  # one read each 0.2 s
    slow_ids = [r.frame_id for r in slow.results]
    assert slow_ids == sorted(slow_ids)
    dropped = [i for r in slow.results for i in r.dropped_frame_ids]
    assert len(dropped) > 10 and slow.results[-1].frames_dropped == len(dropped)
    assert not set(dropped) & set(slow_ids)  # what it lost is listed, what it got is not
    assert 6 <= len(dashboard.results) <= 10  # 2 per second
    assert all(r.frame_jpeg for r in dashboard.results)


async def test_unknown_camera_is_not_found() -> None:
    async with serving(camera("belt", "demo:conveyor")) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await watch(stub, "dock-9").read()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no camera 'dock-9'" in str(info.value.details())
        assert "belt" in str(info.value.details())
        bad = watch(stub, "belt", options=pb.ResultOptions(feature_maps=["stage9"]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await bad.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:  # a URL is refused, not echoed
            await watch(stub, "rtsp://admin:hunter2@10.0.0.7/live").read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        told = str(info.value.details())
        assert "never a URL" in told and "hunter2" not in told and "admin:***@" in told
        with pytest.raises(grpc.aio.AioRpcError) as info:  # of allowed characters, but not an id
            await watch(stub, "-belt").read()
        assert "starting with a letter or digit" in str(info.value.details())
        # a rate or a queue the server cannot give is refused, not quietly changed
        for asked, told in [
            ({"max_fps": -1.0}, "max_fps must be 0 (every analysed frame) to 1000"),
            ({"max_fps": float("nan")}, "got nan"),
            ({"max_fps": 1000.0001}, "got 1000.0001"),  # as sent, not rounded to the limit
            ({"queue_size": 5000}, "queue_size must be 0 (the server's default, 2) to 1024"),
            # a stream's fields that would do nothing here, or are none of the enum's
            (
                {"options": pb.ResultOptions(queue_size=5)},
                "a watcher's queue of results is WatchCameraRequest.queue_size",
            ),
            ({"options": pb.ResultOptions(publish=True)}, "publish is for StreamFrames"),
            ({"options": pb.ResultOptions(freshness=99)}, "unknown freshness policy 99"),  # type: ignore[arg-type]
        ]:
            # the same whatever camera it names: an unknown one's was NOT_FOUND
            for camera_id in ("belt", "dock-9"):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await watch(stub, camera_id, **asked).read()
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (camera_id, asked)
                assert told in str(info.value.details()), info.value.details()
        first = await watch(stub, "belt", max_fps=1000.0, queue_size=1024).read()
        assert isinstance(first, pb.FrameResult) and first.frame_id > 0  # the limits themselves


def _samples(server: Server, name: str) -> list[Sample]:
    return [s for f in server.metrics.registry.collect() for s in f.samples if s.name == name]


@pytest.mark.live
async def test_a_reload_has_a_reconnecting_camera_try_again_at_once() -> None:
    """A camera fixed while it waited out its backoff was tried again only when the wait
    ended (up to reconnect_max_s: 30 s by default): a reload, an operator's "try again",
    restarted failed and stopped cameras only."""
    source = FFmpegSource("mpegts", fps=10)
    config = camera("dock", source.url, reconnect_min_s=40.0, reconnect_max_s=60.0)
    async with serving(config) as server, connect(server) as stub:
        await until(state_is(stub, "dock", pb.CAMERA_STATE_RECONNECTING), 10, "reconnecting")
        with running(source):  # the camera is back; its next try is 20 s or more away
            await asyncio.sleep(1.0)
            assert (await status(stub, "dock")).state == pb.CAMERA_STATE_RECONNECTING
            await server.reload(server.settings)
            await until(state_is(stub, "dock", pb.CAMERA_STATE_RUNNING), 10, "tried again")


async def test_reload_adds_removes_and_restarts_cameras() -> None:
    keep = camera("keep", "demo:conveyor?fps=10")
    gone = camera("gone", "demo:conveyor?fps=10&seed=1")
    async with serving(keep, gone) as server, connect(server) as stub:
        await until(state_is(stub, "gone", pb.CAMERA_STATE_RUNNING), 10, "running")
        watch_keep, watch_gone = Collector(watch(stub, "keep")), Collector(watch(stub, "gone"))
        await until(lambda: _true(len(watch_keep.results) >= 2), 10, "results")
        await until(lambda: _true(len(watch_gone.results) >= 1), 10, "gone's results")
        # each camera's latency, as a distribution an alert can take a p95 of
        latency = {
            s.labels["camera"]: s.value
            for s in _samples(server, "convstream_camera_latency_seconds_count")
        }
        assert latency.get("keep", 0) >= 2 and latency.get("gone", 0) >= 1, latency
        changed = keep.model_copy(update={"source": "demo:conveyor?fps=10&seed=2"})
        added = camera("new", "demo:conveyor?fps=10&seed=3")
        counted = await status(stub, "keep")
        assert counted.frames_read >= 2 and counted.frames_analysed >= 2
        await server.reload(server.settings.model_copy(update={"cameras": (changed, added)}))
        reply = await stub.ListCameras(pb.ListCamerasRequest())
        assert [c.id for c in reply.cameras] == ["keep", "new"]
        # the restarted camera counts on from its totals, as its counters must
        restarted = reply.cameras[0]
        assert restarted.frames_read >= counted.frames_read, (restarted, counted)
        assert restarted.frames_analysed >= counted.frames_analysed, (restarted, counted)
        await until(lambda: _true(watch_gone.error is not None), 5, "removed camera's watcher")
        assert watch_gone.error is not None
        # the removed camera's series are gone with it; the kept camera's stay
        sources = {s.labels.get("source") for s in _samples(server, "convstream_frames_total")}
        assert "gone" not in sources and "keep" in sources, sources
        cameras = {
            s.labels["camera"] for s in _samples(server, "convstream_camera_latency_seconds_count")
        }
        assert "gone" not in cameras and "keep" in cameras, cameras
        assert watch_gone.error.code() == grpc.StatusCode.NOT_FOUND
        assert "removed" in str(watch_gone.error.details())
        # its health is gone too: as a camera never configured, not a status of its own
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("gone", "never-was"):
                asked = health_pb2.HealthCheckRequest(service=f"convstream.camera.{name}")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await health.Check(asked)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND, name
                # said in words, not grpcio's empty message
                assert f"no service 'convstream.camera.{name}' here" in str(info.value.details())
        before = len(watch_keep.results)
        await until(lambda: _true(len(watch_keep.results) >= before + 3), 10, "keep carries on")
        assert watch_keep.error is None
        ids = [r.frame_id for r in watch_keep.results]  # counted on: they only grow
        assert ids == sorted(set(ids)) and ids[before] > counted.frames_read, (ids, before)
        await until(state_is(stub, "new", pb.CAMERA_STATE_RUNNING), 10, "new runs")
        await watch_keep.close()


async def test_watches_that_end_or_start_while_a_reload_restarts_their_camera(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old camera's stop is held open while one watch ends and another starts: the one
    that ended is gone from the restarted camera (it used to stay there for good, counted
    against max_watchers and fed results nobody read), and the new one joins it."""
    belt = camera("belt", "demo:conveyor?fps=10")
    async with serving(belt) as server, connect(server) as stub:
        leaving = Collector(watch(stub, "belt"))
        await until(lambda: _true(len(leaving.results) >= 1), 10, "first result")
        stopping, release = _hold_the_first_stop(monkeypatch)
        reload = _reload(server, belt, "seed=1")
        await asyncio.wait_for(stopping.wait(), 10)
        await leaving.close()
        await until(lambda: _true(tuple(_watchers(server)) == (0,)), 5, "the leaver gone")
        joining = Collector(watch(stub, "belt"))
        await until(lambda: _true(tuple(_watchers(server)) == (1,)), 5, "the joiner in")
        release.set()
        await reload
        await until(lambda: _true(len(joining.results) >= 2), 10, "the joiner's results")
        assert joining.error is None and tuple(_watchers(server)) == (1,)
        await joining.close()
        await until(lambda: _true(tuple(_watchers(server)) == (0,)), 5, "no watcher left")
        assert (await status(stub, "belt")).watchers == 0


async def test_two_reloads_close_together_leave_one_running_camera(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second reload while the first is still stopping the old camera waits its turn: the
    camera ends up on the second config, running, with its watcher; no reader is orphaned."""
    belt = camera("belt", "demo:conveyor?fps=10")
    async with serving(belt) as server, connect(server) as stub:
        watcher = Collector(watch(stub, "belt"))
        await until(lambda: _true(len(watcher.results) >= 1), 10, "first result")
        stopping, release = _hold_the_first_stop(monkeypatch)
        started: list[CameraFeed] = []
        real_start = CameraFeed.start

        def tracked_start(self: CameraFeed) -> None:
            started.append(self)
            real_start(self)

        monkeypatch.setattr(CameraFeed, "start", tracked_start)
        reloads = [_reload(server, belt, "seed=1"), _reload(server, belt, "seed=2")]
        await asyncio.wait_for(stopping.wait(), 10)
        await asyncio.sleep(0.3)  # the second reload is under way too
        release.set()
        await asyncio.gather(*reloads)
        assert server.cameras is not None
        feed = server.cameras.feeds["belt"]
        assert feed.camera.config.source.endswith("seed=2")
        await until(state_is(stub, "belt", pb.CAMERA_STATE_RUNNING), 10, "running")
        before = len(watcher.results)
        await until(lambda: _true(len(watcher.results) >= before + 3), 10, "the watch goes on")
        assert watcher.error is None and tuple(_watchers(server)) == (1,)
        assert (await status(stub, "belt")).watchers == 1
        await watcher.close()
        assert len(started) == 2  # each reload started a reader; the first one was stopped
        assert [f for f in started if not f._stopping] == [feed]


def _hold_the_first_stop(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the next camera feed to stop (a reload's old camera) inside its stop, until
    `release` is set; `stopping` is set once it is held. Later stops run at once."""
    stopping, release = asyncio.Event(), asyncio.Event()
    real_stop = CameraFeed.stop

    async def held_stop(self: CameraFeed, error: Exception) -> None:
        if not stopping.is_set():
            stopping.set()
            await release.wait()
        await real_stop(self, error)  # type: ignore[arg-type]

    monkeypatch.setattr(CameraFeed, "stop", held_stop)
    return stopping, release


def _reload(server: Server, config: CameraConfig, query: str) -> asyncio.Task[None]:
    """A reload, as its own task (as SIGHUP runs one), with the camera's demo source changed."""
    changed = config.model_copy(update={"source": f"{config.source}&{query}"})
    return asyncio.create_task(
        server.reload(server.settings.model_copy(update={"cameras": (changed,)}))
    )


def _watchers(server: Server) -> list[int]:
    """Watchers of each camera feed, from the server's own registry."""
    assert server.cameras is not None
    return [len(feed.watchers) for feed in server.cameras.feeds.values()]


@pytest.mark.live
async def test_max_fps_is_a_rate_not_a_minimum_gap() -> None:
    """5 results/s of a 6 fps camera, not 3 (every other frame)."""
    async with serving(camera("six", "demo:conveyor?fps=6")) as server, connect(server) as stub:
        await until(state_is(stub, "six", pb.CAMERA_STATE_RUNNING), 10, "running")
        watcher = Collector(watch(stub, "six", max_fps=5))
        await asyncio.sleep(4.0)
        await watcher.close()
    times = [r.capture_time.ToNanoseconds() / 1e9 for r in watcher.results]
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 4.2 <= rate <= 5.3, rate


def test_a_new_watcher_gets_no_opening_burst() -> None:
    """max_fps holds from the first result: a 3 fps watcher of a 15 fps camera gets results
    a third of a second apart from the start (it used to get the first 2-3 at camera rate)."""
    watcher = Watcher("belt", Options(), max_fps=3.0, capacity=64)
    delivered = []
    for i in range(30):  # 2 s of a 15 fps camera, on a made-up clock
        now = 1000.0 + i / 15
        if watcher.due(now, pace=1 / 15):
            watcher.offer(b"..", i, captured=now, now=now)
            delivered.append(now)
    gaps = np.diff(delivered)
    assert len(delivered) == 6, delivered  # 3 a second for 2 s
    assert gaps.min() >= 1 / 3 - 1e-9, gaps


def test_a_watcher_at_its_cameras_own_rate_gets_every_frame() -> None:
    """A 5 fps watcher of a 5 fps camera got 4.6 results a second (an integrator's reading):
    a result a few milliseconds early was passed over, and the next came a frame later."""
    watcher = Watcher("demo", Options(), max_fps=5.0, capacity=64)
    rng = np.random.default_rng(0)
    sent = 0
    for i in range(50):  # 10 s of a 5 fps camera whose results come +-15 ms of their time
        now = 1000.0 + i / 5 + rng.uniform(-0.015, 0.015)
        if watcher.due(now, pace=0.2):
            watcher.offer(b"..", i, captured=now, now=now)
            sent += 1
    assert sent == 50


def test_a_watch_that_ended_holds_no_bytes_of_a_last_result_offered_to_it() -> None:
    """A reload took a camera out of the list while its feed stopped; a watch that ended
    then looked its camera up by id, found none, and stayed on the old feed, which offered
    it one last frame: its bytes stayed counted against max_watcher_bytes for good (a soak
    test's gauge stuck at 39,587). A released watcher takes nothing more."""
    budget = ByteBudget(1 << 20)
    watcher = Watcher("demo-c", Options(), max_fps=0.0, capacity=2, budget=budget)
    result = pb.FrameResult(frame_id=1, heatmap=pb.Tensor(data=bytes(40_000)))
    watcher.offer(result.SerializeToString(), 1, captured=1000.0, now=1000.0)
    assert budget.held == watcher.held == result.ByteSize()
    watcher.release()
    assert budget.held == 0
    watcher.offer(result.SerializeToString(), 1, captured=1000.1, now=1000.1)  # the old feed's
    assert budget.held == watcher.held == 0


async def test_a_cameras_notice_takes_no_frames_place_and_is_not_lost_for_one() -> None:
    """A queue of one, read slowly: the notice that the camera went down dropped the frame
    waiting (counted as a drop), and the frame still being analysed then dropped the notice,
    so the client never heard (a review's). The notice now waits beside the frames, is never
    dropped for one, nor past the watcher's byte share; a newer one replaces it."""
    budget = ByteBudget(400_000)  # a watcher's share: 100,000 bytes
    watcher = Watcher("dock", Options(), max_fps=0.0, capacity=1, budget=budget)

    def frame(i: int) -> bytes:
        return pb.FrameResult(frame_id=i, heatmap=pb.Tensor(data=bytes(60_000))).SerializeToString()

    def notice(state: int) -> bytes:
        return pb.FrameResult(
            camera_state=state, status=pb.FrameStatus(code=14)
        ).SerializeToString()  # type: ignore[arg-type]

    watcher.offer(frame(1), 1, captured=time.time(), now=1.0)
    watcher.notify(notice(pb.CAMERA_STATE_STALLED))
    watcher.offer(frame(2), 2, captured=time.time(), now=2.0)  # analysed as it went down
    watcher.notify(notice(pb.CAMERA_STATE_RECONNECTING))  # replaces the stalled one
    async with asyncio.timeout(5):  # a lost one is waited for in vain
        got = [pb.FrameResult.FromString(await watcher.next()) for _ in range(2)]
    assert [(r.frame_id, r.camera_state, r.sequence) for r in got] == [
        (2, 0, 1),
        (0, pb.CAMERA_STATE_RECONNECTING, 2),
    ]
    assert got[0].frames_dropped == 1 and list(got[0].dropped_frame_ids) == [1]  # frame 1
    assert got[1].frame_age_ms == 0  # of no frame: no age
    # past its byte share, frames go and the notice stays
    watcher.notify(notice(pb.CAMERA_STATE_STALLED))
    watcher.capacity = 4
    for i in (3, 4, 5):
        watcher.offer(frame(i), i, captured=time.time(), now=float(i))
    left = []
    while watcher.held > watcher.sending and len(left) < 5:
        left.append(pb.FrameResult.FromString(await watcher.next()))
    assert [(r.frame_id, r.camera_state) for r in left] == [(0, pb.CAMERA_STATE_STALLED), (5, 0)]
    watcher.release()
    assert budget.held == 0


async def test_a_watchers_result_is_the_shared_bytes_with_its_own_fields_after_them() -> None:
    """A camera's result is serialised once for all its watchers (each one's copy and
    serialisation took 18-80 ms of the event loop for 8 MB results, a reliability review);
    each watcher's own fields (sequence, drops, age) follow the shared bytes, and protobuf
    reads the two as one message."""
    watcher = Watcher("belt", Options(), max_fps=0.0, capacity=2)
    for i in (1, 2, 3):  # a queue of 2: the first is dropped
        shared = pb.FrameResult(frame_id=i, source="belt", score=0.5 + i / 10)
        watcher.offer(shared.SerializeToString(), i, captured=time.time() - 0.25, now=i)
    got = [pb.FrameResult.FromString(await watcher.next()) for _ in range(2)]
    assert [(r.frame_id, r.sequence, r.frames_dropped) for r in got] == [(2, 1, 1), (3, 2, 1)]
    assert list(got[0].dropped_frame_ids) == [1] and not got[1].dropped_frame_ids
    assert got[0].source == "belt" and got[0].score == pytest.approx(0.7)
    assert all(250 <= r.frame_age_ms < 5_000 for r in got)


def test_a_watcher_keeps_its_rate_and_sends_no_burst_after_a_pause() -> None:
    """A 5 fps watcher of a 6 fps camera gets 5 results a second; a 1 fps watcher of a 30 fps
    camera that pauses for 2 s (reconnecting) gets its next results a second apart, where it
    used to get two a frame apart."""
    steady = Watcher("six", Options(), max_fps=5.0, capacity=64)
    sent = 0
    for i in range(60):  # 10 s of a 6 fps camera, on a made-up clock
        now = 1000.0 + i / 6
        if steady.due(now, pace=1 / 6):
            steady.offer(b"..", i, captured=now, now=now)
            sent += 1
    assert 49 <= sent <= 51, sent
    paused = Watcher("belt", Options(), max_fps=1.0, capacity=64)
    delivered = []
    clock = [1000.0 + i / 30 for i in range(90)] + [1005.0 + i / 30 for i in range(90)]
    for i, now in enumerate(clock):  # 3 s of frames, 2 s of none, 3 s of frames
        if paused.due(now, pace=1 / 30):
            paused.offer(b"..", i, captured=now, now=now)
            delivered.append(now)
    assert np.diff(delivered).min() >= 1.0 - 1e-9, delivered
    assert len(delivered) == 6, delivered


async def test_watchers_get_the_maps_they_ask_for_and_a_too_large_result_is_theirs_alone() -> None:
    """A published stream computes the maps its watchers want beside its own; a watcher whose
    result would pass the message limit gets INVALID_ARGUMENT for each frame (it never fits),
    and neither the publisher nor the other watchers notice. The same for a camera's
    watchers."""
    too_large = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # stage1 of a 384x640 input in float32 is 3.9 MB: over a 3 MiB limit
    too_much = pb.ResultOptions(
        feature_maps=["stage1"], encoding=pb.TENSOR_ENCODING_FLOAT32, include_frame=True
    )
    limit = 3 << 20
    frames = [jpeg(scene(40 + i, 720, 1280)) for i in range(4)]
    async with (
        serving(camera("belt", "demo:conveyor?fps=10"), max_message_bytes=limit) as server,
        connect(server) as stub,
    ):
        stream = stub.StreamFrames()
        options = pb.ResultOptions(publish=True)  # heatmap only
        await stream.write(
            pb.FrameRequest(frame_id=0, source="dock-pub", encoded=frames[0], options=options)
        )
        assert (await stream.read()).status.code == 0
        wants_stage3 = Collector(
            watch(stub, "dock-pub", options=pb.ResultOptions(feature_maps=["stage3"]))
        )
        greedy = Collector(watch(stub, "dock-pub", options=too_much))

        async def both_subscribed() -> bool:
            return (await status(stub, "dock-pub")).watchers == 2

        await until(both_subscribed, 5, "both watchers subscribed")
        for i, data in enumerate(frames[1:], start=1):
            await stream.write(pb.FrameRequest(frame_id=i, source="dock-pub", encoded=data))
            own = await stream.read()
            assert own.frame_id == i and own.status.code == 0 and not own.feature_maps
        await until(lambda: _true(len(wants_stage3.results) == 3), 5, "stage3 results")
        await until(lambda: _true(len(greedy.results) == 3), 5, "refusals")
        for result in wants_stage3.results:
            assert result.status.code == 0 and [t.name for t in result.feature_maps] == ["stage3"]
        for result in greedy.results:
            assert result.status.code == too_large, result.status.message
            assert f"the {limit}-byte message limit" in result.status.message
        await stream.done_writing()
        assert await stream.read() == grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK

        # a camera: one watcher asking too much costs the other nothing
        modest = Collector(watch(stub, "belt"))
        greedy = Collector(watch(stub, "belt", options=too_much))
        await until(lambda: _true(len(greedy.results) >= 5), 10, "refusals")
        await until(lambda: _true(len(modest.results) >= 5), 10, "results")
        assert all(r.status.code == too_large for r in greedy.results)
        assert all(r.status.code == 0 and r.heatmap.data for r in modest.results)
        for collector in (wants_stage3, modest, greedy):
            collector.call.cancel()


async def test_a_camera_configured_under_a_published_streams_name_takes_it() -> None:
    """A reload that names a camera like a client stream already published: the config wins,
    as publish refuses a camera's name. The stream goes on unpublished, its watchers are told
    to watch again and find the camera (there were two cameras of one id, and the dashboard
    showed one's state beside the other's frames)."""
    frames = [jpeg(scene(60 + i, 360, 640)) for i in range(3)]
    async with serving() as server, connect(server) as stub:
        stream = stub.StreamFrames()
        options = pb.ResultOptions(publish=True)
        await stream.write(
            pb.FrameRequest(frame_id=1, source="dock-9", encoded=frames[0], options=options)
        )
        assert (await stream.read()).status.code == 0
        alike = stub.StreamFrames()  # one that reads as it goes on unpublished (two tiles
        await alike.write(  # no one could tell apart)
            pb.FrameRequest(frame_id=1, source="D0CK_9", encoded=frames[0], options=options)
        )
        refused = await alike.read()
        assert refused.status.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        assert "reads as the published stream 'dock-9'" in refused.status.message
        watcher = Collector(watch(stub, "dock-9"))
        await until(
            lambda: _true(server.cameras is not None and _watchers_of(server, "dock-9") == 1),
            5,
            "the watcher subscribed",
        )
        dock = camera("dock-9", "demo:conveyor?fps=10")
        await server.reload(server.settings.model_copy(update={"cameras": (dock,)}))
        await asyncio.wait_for(watcher.task, 5)
        assert watcher.error is not None and watcher.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "now a configured camera" in str(watcher.error.details())
        reply = await stub.ListCameras(pb.ListCamerasRequest())
        assert [(c.id, c.source_kind) for c in reply.cameras] == [("dock-9", "demo")]
        again = await watch(stub, "dock-9").read()  # the camera's frames
        assert isinstance(again, pb.FrameResult) and again.source == "dock-9"
        for i, data in enumerate(frames[1:], start=2):  # the stream itself goes on
            await stream.write(pb.FrameRequest(frame_id=i, source="dock-9", encoded=data))
            own = await stream.read()
            assert own.frame_id == i and own.status.code == 0
        await stream.done_writing()
        assert await stream.read() == grpc.aio.EOF
        await alike.done_writing()
        assert await alike.read() == grpc.aio.EOF
        reply = await stub.ListCameras(pb.ListCamerasRequest())  # its end unlisted nothing
        assert [c.id for c in reply.cameras] == ["dock-9"]


def _watchers_of(server: Server, name: str) -> int:
    assert server.cameras is not None
    publisher = server.cameras.published.get(name) or server.cameras.feeds.get(name)
    return len(publisher.watchers) if publisher is not None else 0


def test_names_that_read_alike_fold_alike() -> None:
    from convstream.v1 import folded_id

    alike = ("Dock_RTSP", "dock.rtsp", "dockrtsp", "d0ck-rtsp", "dock--rtsp", "DOCK-RTSP.")
    assert {folded_id(name) for name in alike} == {folded_id("dock-rtsp")}
    assert folded_id("belt-1") == folded_id("belt-l") == folded_id("BELT-I")
    assert folded_id("dock-rtsp-2") != folded_id("dock-rtsp")
    assert folded_id("belt-11") != folded_id("belt-1")
    # a separator between two digits is read: these are two numbering schemes' ids
    assert folded_id("line-1-2") != folded_id("line-12") != folded_id("line-1.2")
    assert folded_id("dock-1.1") != folded_id("dock-11")


async def test_a_stream_is_published_from_the_frame_that_asks_on() -> None:
    """Frames sent before the one that asked to publish, still waiting when it came, went to
    the watchers too, though each had said publish false (an integrator's privacy surprise);
    from that frame on the stream stays published, as documented."""
    data = jpeg(scene(40, 360, 640))
    async with serving() as server, connect(server) as stub:
        frames = [
            pb.FrameRequest(
                frame_id=i, source="retro", encoded=data, options=pb.ResultOptions(publish=i == 6)
            )
            for i in range(1, 9)
        ]
        results = [r async for r in stub.StreamFrames(iter(frames))]
    assert [r.status.code for r in results] == [0] * 8
    assert [r.published for r in results] == [False] * 5 + [True] * 3


async def test_a_client_stream_can_publish_under_its_source_name() -> None:
    frames = [jpeg(scene(30 + i, 360, 640)) for i in range(3)]
    async with serving(camera("belt", "demo:conveyor?fps=5")) as server, connect(server) as stub:
        taken = stub.StreamFrames()
        asked = pb.ResultOptions(
            publish=True, feature_maps=["stage3"], freshness=pb.FRESHNESS_LATEST_ONLY
        )
        await taken.write(
            pb.FrameRequest(frame_id=1, source="belt", encoded=frames[0], options=asked)
        )
        refused = await taken.read()
        assert refused.status.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        assert "already published by a configured camera" in refused.status.message
        # the stream goes on unpublished, and each result says so: nothing did; the rest of
        # its options hold (they were dropped with the name, the stream left LOSSLESS)
        await taken.write(pb.FrameRequest(frame_id=2, source="belt", encoded=frames[0]))
        unpublished = await taken.read()
        assert unpublished.status.code == 0 and not unpublished.published
        assert [m.name for m in unpublished.feature_maps] == ["stage3"]
        lossless = pb.ResultOptions(freshness=pb.FRESHNESS_LOSSLESS)
        await taken.write(pb.FrameRequest(frame_id=3, encoded=frames[0], options=lossless))
        other = await taken.read()
        assert "this stream is FRESHNESS_LATEST_ONLY" in other.status.message, other.status
        await taken.done_writing()
        # nor under a name an operator would read as the camera's
        for i, lookalike in enumerate(("BELT", "Belt")):
            like = stub.StreamFrames()
            options = pb.ResultOptions(publish=True)
            await like.write(
                pb.FrameRequest(frame_id=i, source=lookalike, encoded=frames[0], options=options)
            )
            refused = await like.read()
            assert refused.status.code == grpc.StatusCode.ALREADY_EXISTS.value[0], lookalike
            assert "reads as the configured camera 'belt'" in refused.status.message
            await like.done_writing()
        # a client's frames named like a camera are not counted as the camera's
        await stub.Analyze(pb.FrameRequest(source="belt", encoded=frames[0]))
        text = await asyncio.to_thread(
            lambda: urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read()
        )
        counted = {
            (s.labels["source"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(text.decode())
            if family.name == "convstream_frames"
            for s in family.samples
            if s.name == "convstream_frames_total"
        }
        assert counted.get(("client:belt", "rejected")) == 1.0, counted
        assert counted.get(("client:belt", "ok")) == 2.0, counted  # the stream's, Analyze's
        # the camera's own series count only its frames, analysed: never a refused one
        assert [key for key in counted if key[0] == "belt"] in ([], [("belt", "ok")]), counted

        stream = stub.StreamFrames()
        options = pb.ResultOptions(publish=True, include_heatmap=False)
        await stream.write(
            pb.FrameRequest(frame_id=1, source="dock-push", encoded=frames[0], options=options)
        )
        assert (await stream.read()).status.code == 0
        # nor under a name that reads as another stream's: two tiles no one tells apart
        like = stub.StreamFrames()
        await like.write(
            pb.FrameRequest(frame_id=1, source="Dock_Push", encoded=frames[0], options=options)
        )
        refused = await like.read()
        assert refused.status.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        assert "reads as the published stream 'dock-push'" in refused.status.message
        await like.done_writing()
        listed = await status(stub, "dock-push")
        assert listed.source_kind == "stream" and listed.state == pb.CAMERA_STATE_RUNNING
        watcher = Collector(watch(stub, "dock-push", options=pb.ResultOptions(include_frame=True)))

        async def subscribed() -> bool:  # before the next frames
            return (await status(stub, "dock-push")).watchers == 1

        await until(subscribed, 5, "the watcher subscribed")
        for i, data in enumerate(frames[1:], start=2):
            await stream.write(pb.FrameRequest(frame_id=i, source="dock-push", encoded=data))
            own = await stream.read()
            assert own.frame_id == i and not own.frame_jpeg and not own.heatmap.data
            assert own.published
        await until(lambda: _true(len(watcher.results) == 2), 5, "published results")
        assert [r.frame_id for r in watcher.results] == [2, 3]
        for r in watcher.results:  # the watcher's own content: frame and heatmap
            assert r.source == "dock-push" and r.frame_jpeg and r.heatmap.data
        listed = await status(stub, "dock-push")
        assert listed.frames_analysed == 3 and listed.watchers == 1
        await stream.done_writing()
        assert await stream.read() == grpc.aio.EOF
        await asyncio.wait_for(watcher.task, 5)  # the watch ends with the stream: OK
        assert watcher.error is None and await watcher.call.code() == grpc.StatusCode.OK
        reply = await stub.ListCameras(pb.ListCamerasRequest())
        assert [c.id for c in reply.cameras] == ["belt"]


async def test_published_and_camera_frames_time_their_steps_from_their_analysis() -> None:
    """A camera's frames put 0 in the queue and encode steps' histograms (their timings were
    made without them), and a published stream's watchers timed its frames, and counted its
    fps out, from their arrival, not their analysis: frames that waited in a LOSSLESS queue
    read as slow to analyse (and, waiting over 3 s, as 0 fps out). Both now time the trip
    from the analysis as a camera's watchers always did."""
    async with serving(camera("belt", "demo:conveyor?fps=10")) as server, connect(server) as stub:
        watcher = Collector(watch(stub, "belt"))
        await until(lambda: _true(len(watcher.results) >= 4), 10, "the camera's results")
        watcher.call.cancel()
        sums = {
            step: server.metrics.registry.get_sample_value(
                "convstream_step_seconds_sum", {"step": step}
            )
            or 0.0
            for step in ("queue", "decode", "inference", "encode", "total")
        }
        assert sums["encode"] > 0 and sums["queue"] > 0, sums
        parts = sums["queue"] + sums["decode"] + sums["inference"] + sums["encode"]
        assert parts == pytest.approx(sums["total"], rel=1e-3), sums

        stream = stub.StreamFrames()
        image = jpeg(scene(40, 360, 640))
        options = pb.ResultOptions(publish=True)
        await stream.write(
            pb.FrameRequest(frame_id=1, source="push", encoded=image, options=options)
        )
        assert (await stream.read()).published
        published = Collector(watch(stub, "push"))

        async def subscribed() -> bool:
            return (await status(stub, "push")).watchers == 1

        await until(subscribed, 5, "the watcher subscribed")
        for frame_id in range(2, 14):  # at once: the later ones wait for the earlier
            await stream.write(pb.FrameRequest(frame_id=frame_id, encoded=image))
        own = {}
        for _ in range(2, 14):
            result = await stream.read()
            assert result.status.code == 0 and result.published, result.status
            own[result.frame_id] = result.timings
        await stream.done_writing()
        await asyncio.wait_for(published.task, 5)  # the watch ends with the stream
        watched = {r.frame_id: r.timings for r in published.results}
        assert len(watched) >= 4, watched.keys()
        # each watcher's result is made after the stream's own, so timed from the same start
        # it took longer; timed from its analysis, a frame that waited took less
        shorter = [i for i in watched if watched[i].total_ms < own[i].total_ms]
        assert shorter, [(i, watched[i].total_ms, own[i].total_ms) for i in watched]
        for t in watched.values():
            assert t.queue_ms == pytest.approx(
                max(0.0, t.total_ms - t.decode_ms - t.inference_ms - t.encode_ms), abs=1e-3
            )


@pytest.mark.live
def test_a_reader_behind_its_camera_counts_the_wait_in_the_frames_age(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reader that takes fewer frames a second than an H.264 camera sends leaves the rest
    waiting in the network buffers: its frames' capture time counts that wait (from the
    stream's own timestamps), and the log says so once. Read from the time painted into each
    frame: a reader at about 12 frames/s of the camera's 30 read 2-4 s old frames whose
    capture time said 0.1 s. (A reader that keeps up is not called behind:
    test_frames_stay_fresh_when_the_server_analyses_fewer.)"""

    class Slowed(_Passing):
        def read(self) -> np.ndarray | bytes:
            time.sleep(0.06)  # about 12 frames a second, with the decoding
            return self.capture.read()

    def opener(spec: SourceSpec, **kw: Any) -> Slowed:
        return Slowed(open_source(spec, **kw))

    caplog.set_level(logging.INFO, logger="convstream.server.sources")
    source = FFmpegSource("mpegts", fps=30, size=(320, 240), stamped=True)
    with running(source):
        cam = Camera(camera("dock", source.url), opener)
        cam.start()
        try:
            time.sleep(6)
            frame = cam.take(after=0)
            now = time.time()
        finally:
            cam.stop()
    assert frame is not None and isinstance(frame.image, np.ndarray), cam.last_error
    true_age = now - read_time(frame.image, 1.0, 0, 0)  # since the frame was made
    told_age = now - frame.captured
    warned = [r.getMessage() for r in caplog.records if "behind the camera" in r.getMessage()]
    assert true_age > 1.0, true_age  # the backlog is real
    assert warned and warned[0].startswith("camera dock: reading"), warned
    # the frame's age as the server tells it is its true age, less the camera's encoding
    # and the network's few tens of milliseconds
    assert -0.1 < true_age - told_age < 0.4, (true_age, told_age)
