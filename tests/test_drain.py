"""`convstream serve` as a real process: SIGTERM drains open streams and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from conftest import jpeg, scene
from grpc_health.v1 import health_pb2, health_pb2_grpc

from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

# alone (see scripts/test.sh): the two tests that time a server's stop to the second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving_process(
    *argv: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``python ARGV`` (a server's command), its stderr read as text, killed if it outlives
    the test."""
    process = subprocess.Popen([sys.executable, *argv], stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


async def wait_serving(health: health_pb2_grpc.HealthStub, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("server did not become SERVING in 60 s")


@pytest.mark.alone
async def test_sigterm_drains_streams_and_exits_zero() -> None:
    """An open stream is answered and ended with UNAVAILABLE; so is a health Watch, which
    never ended by itself: with one open (gRPC's client-side health checking keeps one), every
    stop waited out the whole grace period, here 30 s."""
    port = free_port()
    env = {**os.environ, "CONVSTREAM_GRACE_PERIOD_S": "30"}
    serve = ["serve", "--port", str(port), "--metrics-port", "-1", "--log-level", "warning"]
    with serving_process("-m", "convstream.cli", *serve, env=env) as process:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await wait_serving(health, process)
            stub = pb_grpc.ConvstreamStub(channel)
            stream = stub.StreamFrames()
            data = jpeg(scene(20, 480, 640))
            await stream.write(pb.FrameRequest(frame_id=1, encoded=data))
            assert (await stream.read()).frame_id == 1
            watch = health.Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            reply = None
            while time.monotonic() - started < 3:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            assert reply is not None and reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert time.monotonic() - started < 1.0
            # the open stream ends with a status that tells the client to go elsewhere
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while (result := await stream.read()) != grpc.aio.EOF:
                    assert result.status.code == 0
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (ended.value.details() or "")
            # and a new call is refused while the server drains or once it is gone
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Analyze(pb.FrameRequest(encoded=data), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # the health Watch said NOT_SERVING, then ended, rather than hold the stop
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as watched:
                await asyncio.wait_for(watch.read(), 10)
            assert watched.value.code() == grpc.StatusCode.UNAVAILABLE
        code = await asyncio.to_thread(process.wait, 40)
        assert code == 0, (code, process.stderr.read()[-3000:] if process.stderr else "")
        assert time.monotonic() - started < 10.0  # not the 30 s grace period


def test_a_camera_open_that_returns_as_the_server_exits_does_not_abort_it(
    tmp_path: pathlib.Path,
) -> None:
    """A camera whose source answers its open only as the server stops (a slow MJPEG camera,
    a stop during its open): the open, let go by the stop, returned while the interpreter
    finalised, its thread was ended inside OpenCV's C++, and the process aborted ("terminate
    called without an active exception", SIGABRT: exit 134 and a core dump under systemd)."""
    with socket.socket() as source:
        source.bind(("127.0.0.1", 0))
        source.listen()
        config = tmp_path / "serve.toml"
        config.write_text(
            f'metrics_port = -1\nlog_level = "info"\n[[cameras]]\nid = "slow"\n'
            f'source = "http://127.0.0.1:{source.getsockname()[1]}/v.mjpg"\nopen_timeout_s = 30\n'
        )
        serve = ["serve", "--config", str(config), "--port", str(free_port())]
        with serving_process("-m", "convstream.cli", *serve) as process:
            assert process.stderr is not None
            source.settimeout(60)
            camera, _ = source.accept()  # the reader is in its open, which waits for an answer
            with camera:
                said = []
                for line in process.stderr:
                    said.append(line)
                    if "serving on" in line:
                        break
                process.send_signal(signal.SIGTERM)
                for line in process.stderr:
                    said.append(line)
                    if "convstream stopped" in line:
                        break
                # the answer, now: the open returns as the interpreter finalises
                part = b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                data = jpeg(scene(1, 48, 64))
                with contextlib.suppress(OSError):
                    camera.sendall(
                        b"HTTP/1.0 200 OK\r\n"
                        b"Content-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n"
                        + part
                        % (len(data), data)
                        * 20
                    )
                said.append(process.stderr.read())
                code = process.wait(30)
            assert code == 0, "".join(said)[-3000:]
            assert "terminate called" not in "".join(said)
            assert "its reader is still opening the source" in "".join(said)


def test_the_log_is_one_json_object_a_line_when_asked_and_utc_text_otherwise() -> None:
    """A log shipper parses lines: the log was text only, its times local without a zone (a
    server under TZ=America/New_York wrote an instant five hours off another's), and a
    refusal's details ran on over lines with no time or level."""
    serve = [sys.executable, "-m", "convstream.cli", "serve", "--port", str(free_port())]
    serve += ["--metrics-port", "-1", "--log-format", "json"]
    lines = []
    with serving_process(*serve[1:], env={**os.environ, "TZ": "America/New_York"}) as process:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving on" in line:
                break
        process.send_signal(signal.SIGTERM)
        lines += process.stderr.readlines()
        assert process.wait(30) == 0, "".join(lines)
    entries = [json.loads(line) for line in lines]  # every line an object
    assert entries and all(set(e) >= {"time", "level", "logger", "message"} for e in entries)
    assert any(e["message"].startswith("convstream stopped") for e in entries)
    # the start says what it serves: its cameras and where its metrics are, beside the rest
    serving = next(e["message"] for e in entries if " serving on " in e["message"])
    assert "(plaintext; 1 camera; metrics off; model damage.onnx" in serving, serving
    now = datetime.datetime.now(datetime.UTC)
    first = datetime.datetime.fromisoformat(entries[0]["time"])  # ...Z: UTC, not New York's
    assert abs((now - first).total_seconds()) < 300, entries[0]
    # why a start failed is a JSON line too (it was the one line a shipper could not parse)
    failed = subprocess.run(
        [*serve, "--model", "/nowhere/model.onnx"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 2
    said = json.loads(failed.stderr.splitlines()[-1])
    assert said["level"] == "CRITICAL" and said["message"].startswith("model_path: /nowhere")
    # the text form: the same time, and a record's later lines under its first
    from convstream.v1.logs import TextFormatter

    record = logging.LogRecord("convstream.x", logging.ERROR, "", 0, "refused:\n- a\n- b", (), None)
    text = TextFormatter("1/2").format(record)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR \[process 1/2\] convstream\.x: "
        r"refused:\n    - a\n    - b",
        text,
    ), text


@pytest.mark.alone
def test_a_signal_during_the_start_stops_it_there() -> None:
    """SIGTERM or Ctrl-C while the server starts (a model warming up large sizes): the start
    went on to serve, then waited drain_delay_s and the grace period for clients that never
    came (11 s, a reviewer's run, where it took 1)."""
    slow_start = (
        "import asyncio, sys\n"
        "from convstream.server import app\n"
        "started = app.Server.start\n"
        "async def slow(self):\n"
        "    print('starting', file=sys.stderr, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "    await started(self)\n"
        "app.Server.start = slow\n"
        "from convstream.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    serve = ["serve", "--port", str(free_port()), "--metrics-port", "-1", "--no-cameras"]
    with serving_process(
        "-c", slow_start, *serve, env={**os.environ, "CONVSTREAM_DRAIN_DELAY_S": "20"}
    ) as process:
        assert process.stderr is not None
        said = [next(line for line in process.stderr if "starting" in line)]
        time.sleep(0.3)  # the handlers are taken before the start
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        said += process.stderr.readlines()
        assert process.wait(30) == 0, "".join(said)
        assert time.monotonic() - signalled < 10, "".join(said)  # not the 20 s drain delay
        assert "signal received while starting: stopped before serving" in "".join(said)
        assert "serving on" not in "".join(said)
