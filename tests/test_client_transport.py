"""The client's transport: error mapping, retries, token, TLS and channel options.

Retries, tokens and TLS need a server that fails on purpose or demands credentials, which the
real server does not (yet) do, so a small fake servicer stands in at the gRPC seam here.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

import convstream.client._base as client_base
import convstream.server.app as server_app
from convstream.client import (
    TLS,
    AsyncClient,
    Client,
    ClientClosed,
    ConvstreamError,
    Limits,
    ResultOptions,
    Retry,
    ServerUnavailable,
    Timeout,
    Unauthenticated,
    Upload,
    errors,
)
from convstream.server import Server, Settings
from convstream.server.app import grpc_options
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

EXPECTED = [
    (grpc.StatusCode.OK, errors.ProtocolError),
    (grpc.StatusCode.CANCELLED, errors.Cancelled),
    (grpc.StatusCode.UNKNOWN, errors.ServerError),
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidFrame),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
    (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, errors.Rejected),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.Overloaded),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.Rejected),
    (grpc.StatusCode.ABORTED, errors.Rejected),
    (grpc.StatusCode.OUT_OF_RANGE, errors.InvalidFrame),
    (grpc.StatusCode.UNIMPLEMENTED, errors.Unsupported),
    (grpc.StatusCode.INTERNAL, errors.ServerError),
    (grpc.StatusCode.UNAVAILABLE, errors.ServerUnavailable),
    (grpc.StatusCode.DATA_LOSS, errors.ServerError),
    (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
]


def test_every_grpc_status_code_maps_to_the_tree() -> None:
    assert {code for code, _ in EXPECTED} == set(grpc.StatusCode)
    for code, cls in EXPECTED:
        assert errors.error_class(code) is cls
        by_enum = errors.from_status(code, "what happened")
        by_number = errors.from_status(code.value[0], "what happened")
        for error in (by_enum, by_number):
            assert type(error) is cls and isinstance(error, ConvstreamError)
            assert error.code == code and error.message == "what happened"
    odd = errors.from_status(99, "?")
    assert isinstance(odd, errors.ServerError) and "unknown status code 99" in odd.message


def test_the_asyncio_clients_own_internal_for_a_failed_write_is_the_connection_ending() -> None:
    """gRPC's asyncio client reports a stream whose server went while it wrote a frame as
    INTERNAL "Internal error from Core" (grpc/grpc#36066), which a resumable stream gave up
    on, 1 in about 25 times a server was stopped under it (the killed-server test shows it).
    That one is UNAVAILABLE; a server's INTERNAL, in its own words, stays INTERNAL."""
    debug = 'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object>,)'
    write = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, details="Internal error from Core", debug_error_string=debug
    )
    error = errors.from_rpc_error(write, address="127.0.0.1:50051")
    assert isinstance(error, ServerUnavailable) and error.code == grpc.StatusCode.UNAVAILABLE
    assert "the stream ended while a frame was being sent" in error.message
    for details, said in (("Internal error from Core", "other"), ("the model failed", debug)):
        server = grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL, details=details, debug_error_string=said
        )
        assert type(errors.from_rpc_error(server, address="x:1")) is errors.ServerError


class Fake(pb_grpc.ConvstreamServicer):
    """GetModelInfo that fails ``unavailable`` times first, and checks a token if given."""

    def __init__(self, unavailable: int = 0, token: str | None = None) -> None:
        self.unavailable = unavailable
        self.token = token
        self.calls = 0
        self.metadata: list[dict[str, str | bytes]] = []

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        self.calls += 1
        metadata = dict(context.invocation_metadata() or ())
        self.metadata.append(metadata)
        if self.token and metadata.get("authorization") != f"Bearer {self.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid token is required")
        if self.calls <= self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.ModelInfo(name="fake", stages=[pb.Stage(name="stage3", channels=64, stride=8)])


async def serve(
    fake: Fake, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_ConvstreamServicer_to_server(fake, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


@pytest.fixture
async def fake_server() -> AsyncIterator[tuple[Fake, int]]:
    fake = Fake(unavailable=2, token="s3cret")
    server, port = await serve(fake)
    yield fake, port
    await server.stop(0)


async def test_unary_calls_retry_unavailable_through_the_service_config(
    fake_server: tuple[Fake, int],
) -> None:
    fake, port = fake_server

    def sync() -> str:
        with Client(f"127.0.0.1:{port}", token="s3cret") as client:
            return client.model_info().name

    assert await asyncio.to_thread(sync) == "fake"
    assert fake.calls == 3  # two UNAVAILABLE, then the answer
    fake.calls = 0
    async with AsyncClient(f"127.0.0.1:{port}", token="s3cret", retry=Retry(attempts=2)) as c:
        with pytest.raises(ServerUnavailable, match="warming up"):
            await c.model_info()
    assert fake.calls == 2


async def test_token_is_sent_as_bearer_metadata(fake_server: tuple[Fake, int]) -> None:
    fake, port = fake_server
    fake.unavailable = 0
    async with AsyncClient(f"127.0.0.1:{port}", token="s3cret") as client:
        assert (await client.model_info()).name == "fake"
    assert fake.metadata[-1]["authorization"] == "Bearer s3cret"
    assert str(fake.metadata[-1]["user-agent"]).startswith("convstream-python/")
    async with AsyncClient(f"127.0.0.1:{port}", token="wrong") as client:
        with pytest.raises(Unauthenticated, match="valid token"):
            await client.model_info()
    # a token read from a file ends with a newline: gRPC refused it in the client, as the
    # server's INTERNAL error
    async with AsyncClient(f"127.0.0.1:{port}", token="s3cret\n") as client:
        assert (await client.model_info()).name == "fake"
    assert fake.metadata[-1]["authorization"] == "Bearer s3cret"
    with pytest.raises(ValueError, match="printable ASCII without spaces"):
        AsyncClient(f"127.0.0.1:{port}", token="two\nlines")
    with pytest.raises(ValueError, match="without a scheme, got 'http://"):
        AsyncClient("http://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"a port alone \(51101\): 127\.0\.0\.1:51101 for"):
        AsyncClient("51101")  # dialled as a host name, it failed in DNS
    with pytest.raises(
        ValueError, match=r"no host before its port, got ':51101': 127\.0\.0\.1:51101"
    ):
        AsyncClient(":51101")  # gRPC dialled it as a name, and said "DNS resolution failed"
    with pytest.raises(ValueError, match="got 'not an address': a host name has no spaces"):
        AsyncClient("not an address")  # dialled as "not an address:50051"
    AsyncClient("dns:///localhost:1")  # gRPC's own target schemes pass
    AsyncClient("xds:///convstream.example:50051")


def test_an_address_whose_port_is_no_number_is_refused_before_dialling() -> None:
    """Client("foo:bar") failed its first call as a host name that does not resolve, and
    "127.0.0.1:" dialled port 443; gRPC's own target forms still pass as they are."""
    for address in ("foo:bar", "127.0.0.1:", "[::1]:x", "127.0.0.1:\u0665\u0660"):  # Arabic-Indic
        with pytest.raises(ValueError, match=r"address's port must be 1 to 65535 \(host:port"):
            AsyncClient(address)
    for target in ("unix:convstream.sock", "dns:localhost", "ipv4:127.0.0.1:1", "vsock:3:50051"):
        assert AsyncClient(target).address == target
    # an IPv6 address without a port gets the default port, as a host name does (not 443)
    for bare, dialled in (
        ("[::1]", "[::1]:50051"),
        ("::1", "[::1]:50051"),
        ("fe80::2", "[fe80::2]:50051"),
    ):
        assert AsyncClient(bare).address == dialled
    assert AsyncClient("[::1]:6000").address == "[::1]:6000"


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", *key, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", "r.csr")
        openssl(
            "x509", "-req", "-in", "r.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem",
        )  # fmt: skip
    return {p.stem + p.suffix: p for p in folder.iterdir()}


async def test_mutual_tls(tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(files["server.key"].read_bytes(), files["server.pem"].read_bytes())],
        root_certificates=files["ca.pem"].read_bytes(),
        require_client_auth=True,
    )
    server, port = await serve(Fake(), credentials)
    try:
        tls = TLS(ca=files["ca.pem"], cert=files["client.pem"], key=files["client.key"])

        def sync() -> str:
            with Client(f"127.0.0.1:{port}", tls=tls) as client:
                return client.model_info().name

        assert await asyncio.to_thread(sync) == "fake"
        async with AsyncClient(f"127.0.0.1:{port}", tls=tls) as client:
            assert (await client.model_info()).name == "fake"
        # without a client certificate the handshake fails
        no_cert = TLS(ca=files["ca.pem"].read_bytes())
        async with AsyncClient(f"127.0.0.1:{port}", tls=no_cert, retry=Retry(1)) as client:
            with pytest.raises(ServerUnavailable):
                await client.model_info()
    finally:
        await server.stop(0)


def test_channel_options_keepalive_limits_and_retry_policy() -> None:
    with Client("10.0.0.9", limits=Limits(max_message_bytes=8 << 20)) as client:
        target, credentials, args = client._channel_args()
    options = dict(args)
    assert target == "10.0.0.9:50051" and credentials is None
    # the server accepts pings no more often than every 10 s: the client keeps well over it.
    # A watch's channel finds a silent link within 25 s: no ping, its own or gRPC's, waits
    # longer than the keepalive's timeout (a ping in flight as the server froze waited gRPC's
    # minute: 90 s). The frames' channel keeps gRPC's: a ping waits behind the frames sent,
    # and 10 s cut a healthy stream on a slow uplink.
    from convstream.server.app import grpc_options
    from convstream.server.config import Settings

    floor = dict(grpc_options(Settings()))["grpc.http2.min_ping_interval_without_data_ms"]
    with Client("10.0.0.9") as client:
        watching = dict(client._channel_args(cameras=True)[2])
    for channel in (options, watching):
        assert channel["grpc.keepalive_time_ms"] >= 1.5 * floor
    assert watching["grpc.http2.ping_timeout_ms"] == watching["grpc.keepalive_timeout_ms"]
    assert watching["grpc.keepalive_time_ms"] + watching["grpc.keepalive_timeout_ms"] <= 25_000
    assert "grpc.http2.ping_timeout_ms" not in options
    assert options["grpc.keepalive_timeout_ms"] >= 20_000
    assert options["grpc.max_receive_message_length"] == 8 << 20
    assert options["grpc.max_send_message_length"] == 8 << 20
    config = json.loads(options["grpc.service_config"])
    (method,) = config["methodConfig"]
    assert {n["method"] for n in method["name"]} == {"Analyze", "GetModelInfo"}
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert Limits().max_message_bytes == 64 * 1024 * 1024


def test_options_are_validated_and_readable() -> None:
    assert repr(Timeout(5.0)) == "Timeout(call=5.0, stream=None)"
    assert ResultOptions(feature_maps=["stage3"]).feature_maps == ("stage3",)
    bad = [
        lambda: Timeout(-1),
        lambda: TLS(cert="client.pem"),
        lambda: Retry(attempts=0),
        lambda: Retry(max_backoff=math.inf),  # Client() overflowed on it
        lambda: Retry(backoff=math.nan),
        lambda: Retry(resume_timeout=math.nan),  # never ran out
        lambda: Limits(max_in_flight=0),
        lambda: ResultOptions(encoding="float64"),  # type: ignore[arg-type]
        lambda: Upload("gif"),  # type: ignore[arg-type]
        lambda: Upload(quality=101),
        lambda: ResultOptions().to_proto("newest"),  # type: ignore[arg-type]
        lambda: ResultOptions().to_proto("bounded_queue", 5000),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()
    # each bound at both ends, as its message says it: just past either is refused
    edges = [
        (lambda: Retry(attempts=6), r"Retry\.attempts must be 1\.\.5, got 6"),
        (lambda: Upload(quality=0), r"Upload\.quality must be 1\.\.100, got 0"),
        (
            lambda: ResultOptions().to_proto("bounded_queue", 0),
            r"queue_size must be 1\.\.1024, got 0",
        ),
    ]
    for make, said in edges:
        with pytest.raises(ValueError, match=said):
            make()
    assert Retry(attempts=5).attempts == 5 and Upload(quality=1).quality == 1
    assert ResultOptions().to_proto("bounded_queue", 1024).queue_size == 1024
    # a watch that outlasts any outage reaches try 1,025, where 2**1024 overflowed a float
    assert Retry(resume_timeout=math.inf).delay(1025) == Retry().max_backoff
    with pytest.raises(TypeError):
        ResultOptions(feature_maps="stage3")
    assert "key" not in repr(TLS(cert="c.pem", key="k.pem"))
    client = Client("127.0.0.1:1", token="s3cret")
    assert repr(client) == "<Client 127.0.0.1:1 tls=off, token=***>"
    client.close()
    assert "closed" in repr(client)
    # a ConvstreamError, as every other failure of a call (a loop catching those got a bare
    # RuntimeError), and still the RuntimeError it was
    with pytest.raises(ClientClosed, match="closed") as closed:
        client.model_info()
    assert isinstance(closed.value, ConvstreamError) and isinstance(closed.value, RuntimeError)


def test_a_client_without_an_address_takes_the_commands_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`export CONVSTREAM_ADDRESS=...` pointed every command at a server on another port,
    and Client() still at 127.0.0.1:50051: a program beside the commands read another
    server, or none. A client given no address now takes the variable too; one given wins."""
    monkeypatch.delenv("CONVSTREAM_ADDRESS", raising=False)
    assert AsyncClient().address == Client().address == "127.0.0.1:50051"
    monkeypatch.setenv("CONVSTREAM_ADDRESS", "127.0.0.1:50997")
    assert AsyncClient().address == Client().address == "127.0.0.1:50997"
    assert Client("127.0.0.1:6000").address == "127.0.0.1:6000"
    monkeypatch.setenv("CONVSTREAM_ADDRESS", "50997")
    with pytest.raises(ValueError, match=r"^\$CONVSTREAM_ADDRESS: address must be host:port"):
        Client()


def test_a_connection_lost_mid_call_is_not_blamed_on_tls() -> None:
    """A server killed while a stream had been answering for minutes: the error said "is
    `convstream serve` running there? If it uses TLS, add TLS(ca=FILE)", on a plaintext
    connection that had worked (an integrator's). It says the connection was lost."""
    from convstream.client.errors import unavailable_hint

    for said in ("Stream removed (Socket closed)", "Connection reset by peer"):
        hint = unavailable_hint(said, None)
        assert hint.startswith("the connection was lost"), hint
        assert "TLS" not in hint
    # a socket closed while connecting is the server refusing the handshake (mutual TLS
    # without a client certificate): not a lost connection
    refused = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:1.2.3.4:5: Socket closed"
    )
    assert "If it uses TLS" in unavailable_hint(refused, None)
    # one that went silent says so (its message also says the stream was removed)
    for said in ("Stream removed (ping timeout)", "Stream removed (keepalive timeout)"):
        assert unavailable_hint(said, None).startswith("it stopped answering"), said
    # a connection that never was still gets the TLS question
    assert "If it uses TLS" in unavailable_hint("failed to connect to all addresses", None)


def test_localhost_refused_on_ipv6_points_at_its_ipv4_address() -> None:
    """localhost is [::1] and 127.0.0.1; gRPC tries both and says only the last error. A
    server on 127.0.0.1 that refused the TLS handshake read as "nothing listens on that
    port" whenever [::1] came last (an operator's review), so the hint says where to look."""
    from convstream.client.errors import unavailable_hint

    said = (
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv6:[::1]:50940: "
        "Failed to connect to remote host: Connection refused"
    )
    for written in (said, said.replace("[::1]", "%5B::1%5D")):  # as gRPC writes it
        hint = unavailable_hint(written, None)
        assert "dial 127.0.0.1:50940 to see what went wrong there" in hint, hint
    # refused on an address of its own, nothing to say but that nothing listens
    ipv4 = said.replace("ipv6:[::1]", "ipv4:127.0.0.1")
    assert unavailable_hint(ipv4, None).startswith("nothing listens on that port")


def scaled_grpc_options(settings: Settings, *, share_port: bool = False) -> list[tuple[str, int]]:
    """The server's options with its ping timings 5 times shorter (min ping interval 2 s)."""
    fast = {
        "grpc.http2.min_ping_interval_without_data_ms",
        "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms",
    }
    options = grpc_options(settings, share_port=share_port)
    return [(k, v // 5 if k in fast else v) for k, v in options]


async def test_an_idle_client_with_keepalive_keeps_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped client, pinging 10 times faster (3 s), idle 9 s on a server that takes pings
    every 2 s or slower: its connection stays READY, no GOAWAY. (Here, not among the tests
    that run alone: it waits, and its timings are seconds apart.)

    A control client pinging every 1 s (gRPC's own floor) must be sent away (GOAWAY
    too_many_pings after three early pings), which shows the check sees a GOAWAY when there
    is one.
    """
    monkeypatch.setattr(server_app, "grpc_options", scaled_grpc_options)
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    clients: list[Client] = []
    states: dict[str, list[grpc.ChannelConnectivity]] = {"shipped": [], "control": []}
    shipped_ms = client_base.KEEPALIVE_MS // 10
    minimum = dict(scaled_grpc_options(server.settings))
    assert shipped_ms >= minimum["grpc.http2.min_ping_interval_without_data_ms"]
    try:
        for name, keepalive_ms in (("shipped", shipped_ms), ("control", 1000)):
            monkeypatch.setattr(client_base, "KEEPALIVE_MS", keepalive_ms)
            # an ack late by a second on a loaded machine is no break (the pings' spacing is
            # what this checks)
            monkeypatch.setattr(client_base, "KEEPALIVE_TIMEOUT_MS", 5000)
            client = Client(f"127.0.0.1:{server.port}")
            clients.append(client)
            await asyncio.to_thread(client.model_info)
            client._channel.subscribe(states[name].append)
        await asyncio.sleep(9)
        shipped, control = states["shipped"], states["control"]
        assert shipped and all(s == grpc.ChannelConnectivity.READY for s in shipped), shipped
        assert any(s != grpc.ChannelConnectivity.READY for s in control), (
            f"the control client was never sent away: {control}"
        )
        info = await asyncio.to_thread(clients[0].model_info)
        assert info.sha256
    finally:
        for client in clients:
            client.close()
        await server.stop(grace=0)
