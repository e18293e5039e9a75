"""The plain-HTTP port of a real server: /metrics, /healthz, /readyz, 404 elsewhere, and
loopback unless told otherwise."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import grpc
import pytest
from conftest import jpeg, scene

from convstream.server import Server, Settings
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc


def get(
    port: int, path: str, host: str = "127.0.0.1", host_header: str | None = None
) -> tuple[int, str]:
    """The status and body of GET http://host:port/path (with that Host header if given)."""
    request = Request(f"http://{host}:{port}{path}")
    if host_header is not None:
        request.add_unredirected_header("Host", host_header)
    try:
        with urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_probes_answer_200_while_serving_and_unknown_paths_404(server: Server) -> None:
    for path in ("/healthz", "/readyz"):
        assert await asyncio.to_thread(get, server.metrics_port, path) == (200, "ok\n")
    status, text = await asyncio.to_thread(get, server.metrics_port, "/metrics")
    assert status == 200 and "convstream_streams_in_flight" in text
    for path in ("/", "/metrics/x", "/health", "/favicon.ico"):
        status, text = await asyncio.to_thread(get, server.metrics_port, path)
        assert status == 404, path
        assert "/metrics, /healthz, /readyz" in text and "convstream_" not in text


async def test_a_loopback_metrics_port_answers_to_this_machines_names_only(
    server: Server,
) -> None:
    """A web page open in a browser on the server's machine, its own name pointed at
    127.0.0.1 (DNS rebinding), read /metrics: camera ids, token and stream names (a security
    review's). On loopback /metrics answers to this machine's names only, as the dashboard
    does; the probes, which tell nothing, to any (a check naming the host otherwise)."""
    port = server.metrics_port
    hostname = socket.gethostname()  # Debian maps it to 127.0.1.1: a scrape by that name
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LocalHost.", f"[::1]:{port}"):
        status, text = await asyncio.to_thread(get, port, "/metrics", host_header=host)
        assert status == 200 and "convstream_streams_in_flight" in text, host
    status, _ = await asyncio.to_thread(get, port, "/metrics", host_header=f"{hostname}:{port}")
    assert status == 200
    for host in (f"attacker.example:{port}", "10.0.0.7", "127.0.0.1.example", "[::1"):
        status, text = await asyncio.to_thread(get, port, "/metrics", host_header=host)
        assert status == 421 and "convstream_" not in text, host
        assert f"names, not to {host!r}: a proxy in front of it should pass Host" in text
        for path in ("/healthz", "/readyz"):
            assert await asyncio.to_thread(get, port, path, host_header=host) == (200, "ok\n")


async def test_probes_answer_503_while_draining() -> None:
    server = Server(Settings(port=0, metrics_port=0, cameras=()))
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = pb_grpc.ConvstreamStub(channel).StreamFrames()
            await stream.write(pb.FrameRequest(frame_id=1, encoded=jpeg(scene(3, 240, 320))))
            assert (await stream.read()).frame_id == 1
            stopping = asyncio.create_task(server.stop(grace=5))
            await asyncio.sleep(0)  # stop() has begun: it turned health NOT_SERVING first
            # Asked from this coroutine, not a thread: the event loop waits, so the drain
            # cannot finish (and close the port) before the probes answer.
            assert get(server.metrics_port, "/healthz") == (503, "not serving\n")
            assert get(server.metrics_port, "/readyz") == (503, "not serving\n")
            stream.cancel()
    finally:
        await (stopping if stopping is not None else server.stop(grace=0))
    with pytest.raises(URLError):  # and once stopped, nothing listens
        await asyncio.to_thread(get, server.metrics_port, "/healthz")


async def test_probes_answer_503_while_the_event_loop_is_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probes' thread answered 200 from a flag while a loop stuck in one call answered no
    client (an SRE review's). The loop marks each second that it runs; ten missed, 503."""
    from convstream.server import app, probes

    monkeypatch.setattr(app, "BEAT_S", 0.05)
    monkeypatch.setattr(probes, "STALLED_S", 0.5)
    server = Server(Settings(port=0, metrics_port=0, cameras=()))
    await server.start()
    try:
        assert await asyncio.to_thread(get, server.metrics_port, "/healthz") == (200, "ok\n")
        answers: list[tuple[int, str]] = []

        def ask_later() -> None:
            time.sleep(0.8)
            answers.append(get(server.metrics_port, "/healthz"))

        asker = threading.Thread(target=ask_later)
        asker.start()
        time.sleep(1.2)  # the loop stuck in one call, as a blocking bug would hold it
        asker.join()
        status, text = answers[0]
        assert status == 503 and text.startswith("the server's event loop has not run for"), text
        await asyncio.sleep(0.2)  # running again: healthy again
        assert await asyncio.to_thread(get, server.metrics_port, "/readyz") == (200, "ok\n")
    finally:
        await server.stop(grace=0)


@pytest.mark.parametrize(("metrics_host", "reachable"), [(None, False), ("0.0.0.0", True)])
async def test_metrics_stay_on_loopback_when_grpc_is_exposed(
    metrics_host: str | None, reachable: bool
) -> None:
    extra = {} if metrics_host is None else {"metrics_host": metrics_host}
    settings = Settings(host="0.0.0.0", port=0, metrics_port=0, cameras=(), **extra)
    server = Server(settings)
    await server.start()
    try:
        # 127.0.0.2 is this machine too, but only a socket on 0.0.0.0 answers there
        assert await asyncio.to_thread(get, server.metrics_port, "/healthz") == (200, "ok\n")
        if reachable:
            other = await asyncio.to_thread(get, server.metrics_port, "/healthz", "127.0.0.2")
            assert other == (200, "ok\n")
        else:
            with pytest.raises(URLError):
                await asyncio.to_thread(get, server.metrics_port, "/healthz", "127.0.0.2")
    finally:
        await server.stop(grace=0)


async def test_a_drain_delay_keeps_serving_while_health_says_not_serving() -> None:
    server = Server(Settings(port=0, metrics_port=0, cameras=(), drain_delay_s=2.0))
    await server.start()
    frame = pb.FrameRequest(encoded=jpeg(scene(4, 240, 320)))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            stopping = asyncio.create_task(server.stop(grace=1))
            await asyncio.sleep(0.2)
            # the load balancer is told to stop sending, and what it still sends is served
            assert await asyncio.to_thread(get, server.metrics_port, "/healthz") == (
                503,
                "not serving\n",
            )
            assert (await stub.Analyze(frame, timeout=5)).status.code == 0
            await asyncio.sleep(2.0)  # past the delay: the drain refuses new calls
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Analyze(frame, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await stopping
    finally:
        await server.stop(grace=0)


async def test_an_idle_connection_to_the_metrics_port_prints_no_traceback(
    server: Server, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection left idle past the port's timeout (a port scan, a stuck scraper) was
    printed by socketserver as a 15-line traceback on stderr, outside the log, each time."""
    from convstream.server import probes

    monkeypatch.setattr(probes._Quiet, "timeout", 0.3)  # the shipped 10 s, shortened

    def idle() -> None:
        with socket.create_connection(("127.0.0.1", server.metrics_port)) as s:
            time.sleep(1.0)  # past the timeout: the server gives up on it
            s.settimeout(2)
            assert s.recv(100) == b""  # and closed it

    await asyncio.gather(*(asyncio.to_thread(idle) for _ in range(3)))
    assert await asyncio.to_thread(get, server.metrics_port, "/healthz") == (200, "ok\n")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


async def test_one_address_holds_a_bounded_number_of_metrics_connections(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection to the metrics port holds a thread: 3,000 slow ones from one sender
    took the server from 21 threads to about 890. One address now holds MAX_PER_HOST (2
    here); its next ones are closed at once, and room comes back as they close."""
    from convstream.server import probes

    monkeypatch.setattr(probes, "MAX_PER_HOST", 2)
    port = server.metrics_port
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    time.sleep(0.3)  # taken in by the port's thread
    with socket.create_connection(("127.0.0.1", port)) as extra:
        extra.settimeout(5)
        assert extra.recv(100) == b""  # closed, unanswered
    for connection in held:
        connection.close()
    deadline = time.monotonic() + 5
    while (status := await asyncio.to_thread(_status, port)) != 200:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)


def _status(port: int) -> int | str:
    try:
        return get(port, "/healthz")[0]
    except (URLError, OSError) as exc:  # closed unanswered while the held ones wind down
        return str(exc)


async def test_slow_senders_on_several_addresses_cannot_lock_probes_out(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A security review filled the port's 128 places from 8 addresses (16 each, the most
    one may hold), a byte every 2 s on each: /healthz failed for as long as they kept
    sending, and a liveness probe would have restarted the pod. Full, the port now cuts the
    oldest connection of the address holding the most for a new one, and cuts any connection
    open past REQUEST_DEADLINE_S, however slowly it keeps sending."""
    from convstream.server import probes

    monkeypatch.setattr(probes, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(probes, "MAX_PER_HOST", 2)
    port = server.metrics_port

    def slow(source: str) -> socket.socket:
        sender = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        sender.sendall(b"G")
        return sender

    held = [slow(source) for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3")]
    try:
        await asyncio.sleep(0.3)  # taken in by the port's thread: every place taken
        assert await asyncio.to_thread(get, port, "/healthz") == (200, "ok\n")
        held[0].settimeout(5)  # the oldest of an address holding the most: cut for it
        assert held[0].recv(100) == b""

        monkeypatch.setattr(probes, "REQUEST_DEADLINE_S", 1.0)
        started = time.monotonic()
        for sender in held[1:]:  # a byte every 0.3 s, within the 10 s idle timeout
            while True:
                try:
                    sender.sendall(b"E")
                except OSError:  # cut while we sent
                    break
                sender.settimeout(0.3)
                try:
                    if sender.recv(100) == b"":
                        break
                except TimeoutError:
                    pass
                assert time.monotonic() - started < 8, "a slow sender kept its connection"
    finally:
        for sender in held:
            sender.close()
