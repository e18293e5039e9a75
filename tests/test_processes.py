"""`convstream serve --processes N`: one port served by N real server processes, the cameras
shared out between them, calls about a camera forwarded to the process that pulls it, a
process that dies started again, and SIGTERM stopping them all."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import grpc
import onnx
import pytest
from conftest import jpeg, scene
from grpc_health.v1 import health_pb2, health_pb2_grpc
from live import free_port
from prometheus_client.parser import text_string_to_metric_families
from test_client_transport import make_certificates

from convstream.client import Client, Frame
from convstream.model import MODEL_PATH
from convstream.server import CameraConfig, ConfigError, load_settings, processes
from convstream.server.processes import Peers, assign
from convstream.server.security import new_token
from convstream.v1 import WATCHING
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
CAMERAS = ("dock-a", "dock-b")  # in the config's order: dock-a in process 0, dock-b in 1


def child_pids(parent: int) -> list[int]:
    """The processes the supervisor started (Linux: read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                    found.append(int(entry))
    return sorted(found)


@contextlib.contextmanager
def supervisor(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`convstream serve` with the given flags, its log in a file; killed if still running."""
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "convstream.cli", "serve", "--log-level", "info", *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, log
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """A supervisor still running after its test: SIGTERM first, so that it stops its
    processes and removes its folder; killed, with them, only if that does not do."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            for pid in child_pids(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()


async def until(check: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {seconds} s; log:\n{log.read_text()[-4000:]}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[pb_grpc.ConvstreamStub]:
    """A stub over a TCP connection of its own (channels otherwise share one), which the
    kernel hands to either process."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        yield pb_grpc.ConvstreamStub(channel)


def child_spec(pid: int) -> tuple[int, Path]:
    """A server process's index and the folder of its sockets, from its ``--child`` argument."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    index, _, _, folder = args[args.index(b"--child") + 1].decode().split(":", 3)
    return int(index), Path(folder)


async def camera_health(port: int) -> dict[str, tuple[int, int, int]]:
    """Each camera's health over one connection (landing in either process): by Check, by
    the first reply of a Watch, and in List's answer."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    said = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        listed = (await health.List(health_pb2.HealthListRequest(), timeout=10)).statuses
        for camera_id in CAMERAS:
            request = health_pb2.HealthCheckRequest(service=f"convstream.camera.{camera_id}")
            checked = await health.Check(request, timeout=10)
            watch = health.Watch(request, timeout=10)
            watched = await watch.read()
            watch.cancel()
            assert watched is not grpc.aio.EOF
            said[camera_id] = (
                checked.status,
                watched.status,
                listed[f"convstream.camera.{camera_id}"].status,
            )
    return said


async def listed(port: int) -> dict[str, pb.CameraStatus]:
    async with connection(port) as stub:
        reply = await stub.ListCameras(pb.ListCamerasRequest(), timeout=5)
    return {c.id: c for c in reply.cameras}


async def watch_one(port: int, camera_id: str) -> pb.FrameResult:
    async with connection(port) as stub:
        call = stub.WatchCamera(pb.WatchCameraRequest(camera_id=camera_id), timeout=20)
        # The watch is registered, and says so before its first result, also when another
        # process holds the camera (which gRPC would otherwise send empty with that result).
        assert (WATCHING, camera_id) in tuple(await call.initial_metadata())
        result = await call.read()
        call.cancel()
    assert result is not grpc.aio.EOF
    return result


async def watch_error(port: int, camera_id: str) -> grpc.aio.AioRpcError:
    async with connection(port) as stub:
        call = stub.WatchCamera(pb.WatchCameraRequest(camera_id=camera_id))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
        # a refused watch is not registered anywhere
        assert WATCHING not in dict(await call.initial_metadata())
    return failed.value


def analysed(metrics_port: int, source: str = "probe") -> float:
    """Frames sent as ``source`` that the process behind metrics_port answered."""
    text = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "convstream_frames"
        for s in family.samples
        if s.name == "convstream_frames_total" and s.labels["source"] == source
    )


async def ended(call: Any) -> grpc.aio.AioRpcError:
    """How a streaming call ends, after what it still had to give."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        while await call.read() is not grpc.aio.EOF:
            pass
    return raised.value


def test_cameras_are_shared_out_evenly_and_keep_their_process_on_reload() -> None:
    assert assign({}, ["a", "b", "c", "d", "e"], 3) == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 1}
    # a reload: "a" removed, "f" added; no running camera moves, the new one fills the gap
    assert assign({"a": 0, "b": 1, "c": 2, "d": 0, "e": 1}, ["b", "c", "d", "e", "f"], 3) == {
        "b": 1,
        "c": 2,
        "d": 0,
        "e": 1,
        "f": 0,
    }
    # reordered: same processes
    assert assign({"a": 0, "b": 1}, ["b", "a"], 2) == {"b": 1, "a": 0}
    peers = Peers.parse("1:3:4242:/run/x")
    assert (peers.index, peers.count, peers.supervisor, peers.others()) == (1, 3, 4242, [0, 2])
    assert peers.share(16) == 5 and peers.share(2) == 1
    assert peers.address(2) == "unix:/run/x/process-2.sock"
    peers.secret = "s3"
    assert peers.forwarded(peers.forward_metadata([("authorization", "Bearer t"), ("x", "y")]))
    assert peers.forward_metadata([("authorization", "Bearer t"), ("x", "y")]) == (
        ("authorization", "Bearer t"),
        ("convstream-forwarded", "s3"),
    )
    assert not peers.forwarded([("convstream-forwarded", "1")])  # a client cannot say so
    with pytest.raises(ValueError, match="not below"):
        Peers.parse("3:3:4242:/run/x")
    with pytest.raises(ConfigError, match="processes"):
        load_settings(overrides={"processes": 0})
    with pytest.raises(ConfigError, match="needs ports up to 65537, past 65535"):
        load_settings(overrides={"processes": 4, "metrics_port": 65534})


async def test_processes_share_the_port_forward_camera_calls_restart_and_stop(
    tmp_path: Path,
) -> None:
    port, metrics = free_port(), free_port()
    while metrics + 1 == port or not _free(metrics + 1):
        metrics = free_port()
    cameras = [f"--camera={c}=demo:conveyor?fps=5" for c in CAMERAS]
    with supervisor(
        tmp_path,
        "--processes=2",
        f"--port={port}",
        f"--metrics-port={metrics}",
        *cameras,
    ) as (process, log):
        await until(lambda: "with 2 processes" in log.read_text(), 120, "serving", log)
        text = log.read_text()
        assert "cameras: dock-a in 0, dock-b in 1" in text
        assert "[process 0/2]" in text and "[process 1/2]" in text
        first = child_pids(process.pid)
        assert len(first) == 2

        # Each connection lands in one process or the other; from every one, both cameras
        # are listed and watched, one of them always through the other process.
        for _ in range(4):
            cameras_now = await listed(port)
            assert list(cameras_now) == list(CAMERAS)
            for camera_id in CAMERAS:
                result = await watch_one(port, camera_id)
                assert result.source == camera_id and result.status.code == 0
            # and each camera's health is there, by Check and Watch: it was NOT_FOUND from
            # every process but the one that pulls it
            serving = health_pb2.HealthCheckResponse.SERVING
            assert await camera_health(port) == dict.fromkeys(CAMERAS, (serving,) * 3)

        # Client frames over 12 connections: every one answered, and both processes took some
        # (all 12 in one process: 1 chance in 2048).
        data = jpeg(scene(5, 480, 640))
        for k in range(12):
            async with connection(port) as stub:
                reply = await stub.Analyze(
                    pb.FrameRequest(frame_id=k, source="probe", encoded=data), timeout=20
                )
                assert reply.status.code == 0 and reply.frame_id == k
        counts = [analysed(metrics), analysed(metrics + 1)]
        assert sum(counts) == 12 and min(counts) > 0, counts
        # and so do our own clients, one per camera, all in this one program: each has a
        # connection of its own
        clients = [Client(f"127.0.0.1:{port}") for _ in range(12)]
        try:
            for client in clients:
                result = await asyncio.to_thread(client.analyze, Frame(data, source="cam"))
                assert result.score >= 0.0
        finally:
            for client in clients:
                client.close()
        counts = [analysed(metrics, "cam"), analysed(metrics + 1, "cam")]
        assert sum(counts) == 12 and min(counts) > 0, counts

        # A configured camera's id is not free to publish under, whichever process the
        # stream is in; a published stream is watched from any connection.
        async with connection(port) as stub:
            stream = stub.StreamFrames()
            for k, name in enumerate(CAMERAS):
                options = pb.ResultOptions(publish=True)
                await stream.write(
                    pb.FrameRequest(frame_id=k, source=name, encoded=data, options=options)
                )
                refused = await stream.read()
                assert refused.status.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
                assert "a configured camera" in refused.status.message
            options = pb.ResultOptions(publish=True)
            await stream.write(
                pb.FrameRequest(frame_id=9, source="forklift", encoded=data, options=options)
            )
            assert (await stream.read()).status.code == 0

            async def watch_forklift() -> pb.FrameResult:
                async with connection(port) as other:
                    call = other.WatchCamera(pb.WatchCameraRequest(camera_id="forklift"))
                    await asyncio.sleep(0.3)  # subscribed before the next frame
                    result = await asyncio.wait_for(call.read(), 20)
                    call.cancel()
                    assert result is not grpc.aio.EOF
                    return result

            watches = [asyncio.create_task(watch_forklift()) for _ in range(6)]
            # a frame every 0.2 s until every watch has one: a watch that subscribes late
            # (a new connection, forwarded to the other process) gets a later one
            frame_id = 10
            deadline = time.monotonic() + 30
            while not all(watch.done() for watch in watches):
                assert time.monotonic() < deadline, "a watch of the published stream got nothing"
                request = pb.FrameRequest(frame_id=frame_id, source="forklift", encoded=data)
                await stream.write(request)
                assert (await stream.read()).frame_id == frame_id
                frame_id += 1
                await asyncio.sleep(0.2)
            for result in await asyncio.gather(*watches):
                assert result.source == "forklift" and 10 <= result.frame_id < frame_id
            await stream.done_writing()
        async with connection(port) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.WatchCamera(pb.WatchCameraRequest(camera_id="nowhere")).read()
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert "dock-a, dock-b" in (missing.value.details() or "")

        # A health Watch of dock-b made in process 0 (its own socket, as a client's call),
        # which relays process 1's: it must say NOT_SERVING while process 1 is gone, then
        # SERVING again, rather than end or go quiet.
        index, folder = child_spec(first[0])
        assert index == 0
        relayed_channel = grpc.aio.insecure_channel(f"unix:{folder / 'process-0.sock'}")
        relayed = health_pb2_grpc.HealthStub(relayed_channel).Watch(
            health_pb2.HealthCheckRequest(service="convstream.camera.dock-b")
        )
        assert (await asyncio.wait_for(relayed.read(), 10)).status == SERVING

        # A process that dies is started again, after a second; meanwhile its camera is
        # listed with why (the other process answers every new connection).
        os.kill(first[1], signal.SIGKILL)
        await until(lambda: "was killed by SIGKILL" in log.read_text(), 10, "noticed", log)
        # both asked at once, within the second before the restart begins
        gone, cameras_now = await asyncio.gather(watch_error(port, "dock-b"), listed(port))
        assert gone.code() == grpc.StatusCode.UNAVAILABLE
        assert "server process 1 of 2, which pulls this camera, is not answering" in (
            gone.details() or ""
        )
        down = cameras_now["dock-b"]
        assert "server process 1 of 2, which pulls this camera, is not answering" in (
            down.last_error
        ), down
        # the other process's camera goes on (stalled a moment at most, while the new
        # process loads its model on the same cores)
        flowing = (pb.CAMERA_STATE_RUNNING, pb.CAMERA_STATE_STALLED)
        assert (await listed(port))["dock-a"].state in flowing
        await until(lambda: log.read_text().count("with 2 processes") == 1, 1, "once", log)
        deadline = time.monotonic() + 60
        while (status := (await listed(port))["dock-b"]).state != pb.CAMERA_STATE_RUNNING:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        assert not status.last_error
        assert (await watch_one(port, "dock-b")).source == "dock-b"
        said = []
        while not said or said[-1] != SERVING:
            said.append((await asyncio.wait_for(relayed.read(), 30)).status)
        assert said[0] == NOT_SERVING, said  # while process 1 was gone
        relayed.cancel()
        await relayed_channel.close()
        now = child_pids(process.pid)
        assert len(now) == 2 and first[0] in now and first[1] not in now

        # A client that claims its call was forwarded still gets every process's cameras.
        async with connection(port) as stub:
            forged = (("convstream-forwarded", "1"),)
            reply = await stub.ListCameras(pb.ListCamerasRequest(), metadata=forged, timeout=5)
            assert [c.id for c in reply.cameras] == list(CAMERAS)

        # SIGTERM: every process drains and stops, then the supervisor exits 0; watches end
        # with UNAVAILABLE, a forwarded one too (one of the two always is).
        async with connection(port) as stub:
            watches = [stub.WatchCamera(pb.WatchCameraRequest(camera_id=c)) for c in CAMERAS]
            for call in watches:
                assert (await call.read()) is not grpc.aio.EOF
            process.send_signal(signal.SIGTERM)
            for call in watches:
                error = await ended(call)
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in (error.details() or "")
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0, log.read_text()[-3000:]
        assert log.read_text().count("convstream stopped") == 2
        for pid in now:
            assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[0]
    return ""


async def test_a_port_held_by_another_program_is_said_at_once(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with supervisor(tmp_path, "--processes=2", f"--port={port}", "--metrics-port=-1") as (
            process,
            log,
        ):
            code = await asyncio.to_thread(process.wait, 30)
            assert code == 1
            text = log.read_text()
            assert f"cannot listen on 127.0.0.1:{port}" in text and "in use" in text, text
            assert "[process" not in text  # no process was started


async def test_a_process_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with supervisor(
        tmp_path,
        "--processes=2",
        "--port=0",
        "--metrics-port=-1",
        "--no-cameras",
        f"--model={broken}",
    ) as (process, log):
        code = await asyncio.to_thread(process.wait, 60)
        text = log.read_text()
        assert code == 2, text
        assert "while starting (its lines above say why); stopping the others" in text
        assert "model_path" in text
        assert child_pids(process.pid) == []


async def test_a_process_restarted_after_its_model_file_was_replaced_refuses_it(
    tmp_path: Path,
) -> None:
    """A process restarted after the model file was replaced loaded the new file while the
    other served the old: one port, two models, said nowhere. It now refuses, saying so and
    what to do, and every connection keeps getting the model the server started with."""
    model = tmp_path / "damage.onnx"
    shutil.copyfile(MODEL_PATH, model)
    port = free_port()
    flags = ("--processes=2", f"--port={port}", "--metrics-port=-1", "--no-cameras")
    with supervisor(tmp_path, *flags, f"--model={model}") as (process, log):
        await until(lambda: "with 2 processes" in log.read_text(), 120, "serving", log)
        replaced = onnx.load(str(MODEL_PATH))
        replaced.metadata_props.add(key="trained_by", value="someone else")
        onnx.save(replaced, str(tmp_path / "new.onnx"))
        (tmp_path / "new.onnx").replace(model)  # as a deployment swaps a file in
        os.kill(child_pids(process.pid)[1], signal.SIGKILL)
        said = "the file changed since this server started (sha256 "
        await until(lambda: said in log.read_text(), 30, "refused", log)
        assert "restart the server, all its processes, to serve the new file" in log.read_text()
        started = hashlib.sha256(MODEL_PATH.read_bytes()).hexdigest()
        for _ in range(4):  # each connection lands in either process, or the one left
            async with connection(port) as stub:
                info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
                assert info.sha256 == started


def test_health_of_every_process_is_served(tmp_path: Path) -> None:
    """Load balancers probe the shared port; whichever process answers says SERVING."""
    port = free_port()
    with supervisor(
        tmp_path, "--processes=2", f"--port={port}", "--metrics-port=-1", "--no-cameras"
    ) as (process, log):
        deadline = time.monotonic() + 120
        while "with 2 processes" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for _ in range(6):
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # a second server of several processes cannot join this one's port
        second = subprocess.run(
            [sys.executable, "-m", "convstream.cli", "serve", "--processes=2", f"--port={port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in second.stderr
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0


async def test_tokens_are_checked_across_processes_and_sighup_reloads_them_all(
    tmp_path: Path,
) -> None:
    token, digest = new_token()
    config = tmp_path / "serve.toml"
    head = f"""processes = 2
metrics_port = -1
[[tokens]]
name = "dashboard"
role = "watch"
sha256 = "{digest}"
[[cameras]]
id = "dock-a"
source = "demo:conveyor?fps=5"
"""
    config.write_text(head)
    port = free_port()
    bearer = (("authorization", f"Bearer {token}"),)
    with supervisor(tmp_path, f"--config={config}", f"--port={port}") as (process, log):
        await until(lambda: "with 2 processes" in log.read_text(), 120, "serving", log)
        # health Watches of a camera not there yet, over connections landing in either process
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in "1234"]
        service = health_pb2.HealthCheckRequest(service="convstream.camera.dock-b")
        health_watches = [health_pb2_grpc.HealthStub(c).Watch(service) for c in channels]
        for call in health_watches:
            assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        # a reload adds dock-b, which goes to process 1 (it has none); max_streams changes
        # only on restart, which the supervisor says once, and no process takes it up
        camera_b = '[[cameras]]\nid = "dock-b"\nsource = "demo:conveyor?fps=5"\n'
        config.write_text("max_streams = 1\n" + head + camera_b)
        process.send_signal(signal.SIGHUP)
        await until(lambda: "camera dock-b added" in log.read_text(), 20, "reloaded", log)
        # each Watch says so, from whichever process it is in (one in process 0 stayed
        # SERVICE_UNKNOWN for good: it never asked process 1)
        for call in health_watches:
            while (reply := await asyncio.wait_for(call.read(), 20)).status != SERVING:
                assert reply.status in (SERVICE_UNKNOWN, NOT_SERVING), reply
            call.cancel()
        for channel in channels:
            await channel.close()
        text = log.read_text()
        assert "[process 1/2] convstream.server.cameras: camera dock-b added" in text
        assert text.count("changes only on restart") == 1
        assert "convstream.server.processes: reload: max_streams: changes only on restart" in text
        for _ in range(4):
            async with connection(port) as stub:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ListCameras(pb.ListCamerasRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                reply = await stub.ListCameras(pb.ListCamerasRequest(), metadata=bearer)
                assert [c.id for c in reply.cameras] == ["dock-a", "dock-b"]
                for camera_id in ("dock-a", "dock-b"):
                    call = stub.WatchCamera(
                        pb.WatchCameraRequest(camera_id=camera_id), metadata=bearer, timeout=20
                    )
                    result = await call.read()
                    call.cancel()
                    assert result is not grpc.aio.EOF and result.source == camera_id
                    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                        await stub.WatchCamera(pb.WatchCameraRequest(camera_id=camera_id)).read()
                    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the token revoked: the open watches end, each counted once, though one of the two
        # cameras is in the other process (its watch forwarded there, and ended there too)
        async with connection(port) as stub:
            calls = [
                stub.WatchCamera(pb.WatchCameraRequest(camera_id=c), metadata=bearer, timeout=30)
                for c in ("dock-a", "dock-b")
            ]
            for call in calls:
                assert (await call.read()) is not grpc.aio.EOF
            config.write_text(head.replace(digest, "0" * 64) + camera_b)
            process.send_signal(signal.SIGHUP)
            for call in calls:
                error = await ended(call)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "token 'dashboard' was revoked" in str(error.details())
        counted = re.findall(r"reload: ended (\d+) open call", log.read_text())
        assert sum(map(int, counted)) == 2, log.read_text()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0


def test_several_processes_need_linux(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(processes.sys, "platform", "darwin")
    settings = load_settings(overrides={"processes": 2, "cameras": []})
    assert processes.Supervisor(settings, lambda: settings).run() == 2
    assert "processes = 2 needs Linux" in capsys.readouterr().err


def test_check_config_says_which_process_pulls_each_camera() -> None:
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "convstream.cli",
            "serve",
            "--processes=2",
            "--metrics-port=9500",
            "--check-config",
            "--camera=dock-a=demo:conveyor",
            "--camera=dock-b=demo:conveyor",
            "--camera=dock-c=demo:conveyor",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout
    assert "processes    2, sharing the port and the cores" in out
    assert "metrics      127.0.0.1:9500 to 9501, one per process" in out
    for camera_id, index in (("dock-a", 0), ("dock-b", 1), ("dock-c", 0)):
        assert f"camera       {camera_id} (demo, process {index}):" in out, out


def test_a_reload_whose_tls_files_fail_keeps_them_out_of_the_processes_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The supervisor writes what every process runs, and what a process that restarts
    # starts with: TLS files that do not load would stop it for good. Kept out, as one
    # process's own reload keeps its files, while the rest (a token) still applies.
    files = make_certificates(tmp_path)
    good = {"tls_cert": str(files["server.pem"]), "tls_key": str(files["server.key"])}
    token = {"name": "dock", "role": "analyze", "sha256": new_token()[1]}
    common = {"processes": 2, "cameras": []}
    settings = load_settings(environ={}, overrides={**good, **common})
    bad = {**good, "tls_key": str(files["client.key"])}  # a rotation half done

    def reloaded() -> processes.Settings:
        return load_settings(environ={}, overrides={**bad, **common, "tokens": [token]})

    supervisor = processes.Supervisor(settings, reloaded)
    supervisor.folder = tmp_path
    supervisor._reload()
    written = Peers(0, 2, tmp_path, 0).read()
    assert written.tls_key == files["server.key"] and written.tls_cert == files["server.pem"]
    assert [t.name for t in written.tokens] == ["dock"]
    assert f"TLS files kept as before: tls_key {files['client.key']} does not match" in (
        caplog.text
    )
    # each process's metrics say it (the supervisor has none): applied in part
    peers = Peers(0, 2, tmp_path, 0)
    peers.read()
    assert (peers.reload_ok, peers.restart_pending) == (False, [])

    def broken() -> processes.Settings:
        raise processes.ConfigError("line 3: expected '=' after a key")

    # a config that does not load: nothing changes, and the processes are told so
    supervisor.load = broken
    supervisor._reload()
    assert [t.name for t in peers.read().tokens] == ["dock"] and peers.reload_ok is False
    # and they are told it was refused whole: reloading the same settings restarted failed
    # cameras and read the TLS files again (a reviewer's two-process run)
    assert peers.reload_refused is True
    # the settings as before, of the generation before: a process that applied those skips
    # it, one that started before them (it was starting as they came) applies them
    assert peers.generation == 1
    # one that loads, with a port to change on the next restart
    moved = {**good, **common, "tokens": [token], "port": 50999}
    supervisor.load = lambda: load_settings(environ={}, overrides=moved)
    supervisor._reload()
    peers.read()
    assert (peers.reload_ok, peers.restart_pending, peers.reload_refused) == (True, ["port"], False)
    assert peers.generation == 2


def test_a_restarted_process_keeps_what_the_serving_ones_refused_to_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload the processes refuse in part (no tokens at all, TLS or mutual TLS turned on or
    off: kept, each logs) was written to the snapshot as loaded, so a process restarted
    after a crash served without tokens, in plaintext or without client certificates, beside
    processes that kept them. The snapshot now holds what they hold. And a changed port was
    left out of what the supervisor says needs a restart."""
    pem = make_certificates(tmp_path)
    _, digest = new_token()
    tls = {"tls_cert": pem["server.pem"], "tls_key": pem["server.key"]}
    mutual = {**tls, "tls_client_ca": pem["ca.pem"]}
    token = {"name": "ingest", "role": "analyze", "sha256": digest}
    current = processes.Settings.model_validate({**mutual, "tokens": [token], "port": 50051})
    for loaded, kept in (
        ({"port": 50051}, {"tokens", *processes.TLS_FILES}),  # no tokens, no TLS
        ({**tls, "port": 50051}, {"tokens", *processes.TLS_FILES}),  # no client certificates
        ({**mutual, "threshold": 0.9, "port": 50051}, {"tokens"}),
    ):
        new = processes.Settings.model_validate(loaded)
        written = processes.refusals_kept(current, new)
        for name in ("tokens", *processes.TLS_FILES):
            expected = getattr(current if name in kept else new, name)
            assert getattr(written, name) == expected, (loaded, name)
        assert written.threshold == new.threshold  # what a reload does change, changed
    # the supervisor: a reload moving the port says it needs a restart, and writes the rest
    moved = current.model_copy(update={"port": 50052, "tokens": ()})
    supervisor = processes.Supervisor(current, lambda: moved)
    supervisor.folder = tmp_path
    with caplog.at_level("WARNING", logger="convstream.server.processes"):
        supervisor._reload()
    assert "reload: port: changes only on restart; kept as before" in caplog.text
    # said by the supervisor: kept in the snapshot, it reaches no process as a change
    assert "reload: the config has no tokens; kept the 1 there were" in caplog.text
    snapshot = processes.Peers(0, 1, tmp_path, 0).read()
    assert snapshot.tokens == current.tokens and snapshot.port == 50051


async def test_processes_stop_and_say_why_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """A supervisor killed (SIGKILL, the OOM killer): its processes get SIGTERM from the
    kernel and drain, and their socket folder goes. Each logged "signal received: draining",
    as for an operator's stop; it now says the supervisor is gone."""
    config = tmp_path / "serve.toml"
    config.write_text("processes = 2\nmetrics_port = -1\ncameras = []\n")
    with supervisor(tmp_path, f"--config={config}", f"--port={free_port()}") as (process, log):
        await until(lambda: "with 2 processes" in log.read_text(), 120, "serving", log)
        children = child_pids(process.pid)
        assert len(children) == 2
        folder = child_spec(children[0])[1]
        process.kill()
        process.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in children):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        text = log.read_text()
        gone = f"the supervisor (pid {process.pid}) is gone, killed or crashed: this process"
        assert text.count(gone) == 2, text[-3000:]
        # both remove the folder as they exit; polled, and what is left said if it stays (CI
        # found it there, empty, twice after both had exited: each now tries again while it
        # stays, Peers.detach; the cause not explained yet)
        deadline = time.monotonic() + 5
        while folder.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
        assert left is None, (left, [_state(pid) for pid in children], text[-2000:])


def test_a_reload_whose_cameras_the_model_cannot_run_is_not_written_for_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The processes refuse a reload bringing a camera input_size the model cannot run; the
    supervisor wrote it to the snapshot all the same, and a process restarted later warmed
    that size up, failed, and started again, its cameras never back. The supervisor now
    refuses it too, and tells the processes nothing."""
    model = onnx.load(str(MODEL_PATH))
    shape = model.graph.input[0].type.tensor_type.shape
    shape.dim[1].dim_value, shape.dim[2].dim_value = 384, 640  # fixed height and width
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    current = processes.Settings(model_path=fixed, input_sizes=("384x640",), cameras=())
    belt = {"id": "belt", "source": "demo:conveyor", "input_size": "480x640"}
    loaded = current.model_copy(update={"cameras": (CameraConfig(**belt),)})
    supervisor = processes.Supervisor(current, lambda: loaded)
    supervisor.folder = tmp_path
    supervisor._write(current)
    with caplog.at_level("ERROR", logger="convstream.server.processes"):
        supervisor._reload()
    assert "reload refused, nothing changed" in caplog.text and "480x640" in caplog.text
    assert processes.Peers(0, 1, tmp_path, 0).read().cameras == ()  # the snapshot as it was
