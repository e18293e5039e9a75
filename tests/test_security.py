"""Access: TLS, mutual TLS and bearer tokens with roles, against a real server on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

import grpc
import pytest
from conftest import jpeg, scene
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from live import free_port
from prometheus_client.parser import text_string_to_metric_families

from convstream.cli import main as cli_main
from convstream.client import TLS, Client, Timeout
from convstream.client.connection_flags import token_from_flags
from convstream.client.errors import DeadlineExceeded, ServerUnavailable, Unauthenticated
from convstream.server import CameraConfig, ConfigError, Server, Settings, load_settings
from convstream.server.app import _listen
from convstream.server.config import TokenConfig
from convstream.server.security import (
    REFUSALS_KEPT,
    TokenInterceptor,
    new_token,
    token_changes,
    token_hash,
)
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc
from convstream.v1.pem import PemFiles, TLSFileError, certificate_validity, expiry_times

WATCH_TOKEN = "watch-only-token-for-the-dashboard"
ANALYZE_TOKEN = "analyze-token-for-the-dock-integration"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
    valid: tuple[dt.timedelta, dt.timedelta] = (dt.timedelta(minutes=-5), dt.timedelta(days=30)),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid[0])
        .not_valid_after(now + valid[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".key").chmod(0o600)  # as openssl writes one: readable by all is warned of


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("convstream test CA", ca_key, None, ca=True)
    _write(root / "ca", ca, ca_key)
    server_key = _key()
    _write(
        root / "server",
        _cert("127.0.0.1", server_key, ("convstream test CA", ca_key), server=True),
        server_key,
    )
    client_key = _key()
    _write(root / "client", _cert("dock-3", client_key, ("convstream test CA", ca_key)), client_key)
    other_key = _key()
    other = _cert("stranger", other_key, None, ca=True)  # self-signed: not from our CA
    _write(root / "stranger", other, other_key)
    return root


def _settings(**kw: object) -> Settings:
    return Settings(port=0, metrics_port=-1, cameras=(), **kw)  # type: ignore[arg-type]


async def _start(settings: Settings) -> Server:
    server = Server(settings)
    await server.start()
    return server


def _ssl(pki: Path, client: str | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.crt").read_bytes() if client else None,
    )


@pytest.fixture
async def tls_server(pki: Path) -> AsyncIterator[Server]:
    server = await _start(_settings(tls_cert=pki / "server.crt", tls_key=pki / "server.key"))
    yield server
    await server.stop(grace=0)


async def test_tls_serves_clients_that_trust_its_ca(tls_server: Server, pki: Path) -> None:
    address = f"127.0.0.1:{tls_server.port}"
    async with grpc.aio.secure_channel(address, _ssl(pki)) as channel:
        info = await pb_grpc.ConvstreamStub(channel).GetModelInfo(pb.GetModelInfoRequest())
        assert info.sha256
    with Client(address, tls=TLS(ca=pki / "ca.crt")) as client:  # the shipped client too
        result = await asyncio.to_thread(client.analyze, jpeg(scene(1, 240, 320)))
        assert result.heatmap.shape == (60, 80)  # the 480x640 input a 4:3 frame fills
    async with grpc.aio.insecure_channel(address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.ConvstreamStub(plain).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = Client(address, tls=TLS(ca=pki / "stranger.crt"), timeout=Timeout(call=3.0))
    with stranger, pytest.raises((ServerUnavailable, DeadlineExceeded)):
        await asyncio.to_thread(stranger.model_info)  # a server it cannot verify: never used


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki: Path) -> None:
    server = await _start(
        _settings(
            tls_cert=pki / "server.crt", tls_key=pki / "server.key", tls_client_ca=pki / "ca.crt"
        )
    )
    address = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.secure_channel(address, _ssl(pki, "client")) as channel:
            assert (
                await pb_grpc.ConvstreamStub(channel).ListCameras(pb.ListCamerasRequest())
            ) is not None
        for who in (None, "stranger"):
            async with grpc.aio.secure_channel(address, _ssl(pki, who)) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.ConvstreamStub(channel).GetModelInfo(
                        pb.GetModelInfoRequest(), timeout=5
                    )
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, who
        with Client(
            address, tls=TLS(ca=pki / "ca.crt", cert=pki / "client.crt", key=pki / "client.key")
        ) as client:
            assert (await asyncio.to_thread(client.model_info)).execution_provider
    finally:
        await server.stop(grace=0)


@pytest.fixture
async def token_server() -> AsyncIterator[Server]:
    tokens = (
        TokenConfig(name="dashboard", role="watch", sha256=token_hash(WATCH_TOKEN)),
        TokenConfig(name="dock-3", role="analyze", sha256=token_hash(ANALYZE_TOKEN)),
    )
    cameras = (CameraConfig(id="belt", source="demo:conveyor?fps=10"),)
    server = Server(Settings(port=0, metrics_port=0, tokens=tokens, cameras=cameras))
    await server.start()
    yield server
    await server.stop(grace=0)


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_tokens_and_roles(token_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="convstream.server.security")
    frame = pb.FrameRequest(encoded=jpeg(scene(2, 240, 320)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        stub = pb_grpc.ConvstreamStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        # health stays open for load balancers
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # each refusal says what was wrong: no token, a malformed header, an unknown token
        for metadata, says in (
            ((), "needs a token: send metadata 'authorization: Bearer <token>'"),
            ((("authorization", WATCH_TOKEN),), "must read 'Bearer <token>'"),
            (_bearer("not-a-token"), "the token was not recognised"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert says in str(info.value.details())
        # watch: model info and cameras, never frames
        watch = _bearer(WATCH_TOKEN)
        assert (await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=watch)).sha256
        cameras = await stub.ListCameras(pb.ListCamerasRequest(), metadata=watch)
        assert [c.id for c in cameras.cameras] == ["belt"]
        call = stub.WatchCamera(pb.WatchCameraRequest(camera_id="belt"), metadata=watch)
        assert (await call.read()).source == "belt"
        call.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Analyze(frame, metadata=watch)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "role 'watch'" in str(info.value.details()) and "'analyze'" in str(
            info.value.details()
        )
        stream = stub.StreamFrames(metadata=watch)
        await stream.write(frame)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for scheme in ("bearer", "BEARER", "Bearer "):  # RFC 7235: any case
            metadata = (("authorization", f"{scheme} {WATCH_TOKEN}"),)
            assert (await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata)).sha256
        # analyze: everything
        result = await stub.Analyze(frame, metadata=_bearer(ANALYZE_TOKEN))
        assert result.status.code == 0 and 0 <= result.score <= 1
    with Client(f"127.0.0.1:{token_server.port}", token=ANALYZE_TOKEN) as client:
        mine = await asyncio.to_thread(client.analyze, frame.encoded)
        assert mine.score == pytest.approx(result.score, abs=1e-6)
    # every refusal is counted, by method and reason
    refused = await asyncio.to_thread(_refusals, token_server.metrics_port)
    assert refused == {
        ("convstream.v1.Convstream/GetModelInfo", "unauthenticated"): 3.0,
        ("convstream.v1.Convstream/Analyze", "permission_denied"): 1.0,
        ("convstream.v1.Convstream/StreamFrames", "permission_denied"): 1.0,
    }
    # and logged with the caller's address, each refusal once from one host for a while (a
    # client with a wrong token may try every second); never a token
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):  # the first refusal again: not logged again
            await pb_grpc.ConvstreamStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 5, said
    assert re.match(
        r"refused GetModelInfo from ipv4:127\.0\.0\.1:\d+: UNAUTHENTICATED: this server needs "
        r"a token",
        said[0],
    ), said
    assert "UNAUTHENTICATED: the authorization metadata must read" in said[1], said
    assert "UNAUTHENTICATED: the token was not recognised" in said[2], said
    assert said[3].startswith("refused Analyze from ipv4:127.0.0.1:"), said
    assert "PERMISSION_DENIED: token 'dashboard' has role 'watch'" in said[3], said
    assert said[4].startswith("refused StreamFrames from ipv4:127.0.0.1:"), said
    assert "not logged again for 10 minutes" in said[0], said
    assert all(WATCH_TOKEN not in line and "not-a-token" not in line for line in said)
    # the Python client's error says how to give a token in Python, beside the server's words
    with (
        Client(f"127.0.0.1:{token_server.port}") as anonymous,
        pytest.raises(Unauthenticated) as refused_here,
    ):
        await asyncio.to_thread(anonymous.analyze, frame.encoded)
    assert str(refused_here.value) == (
        "this server needs a token: send metadata 'authorization: Bearer <token>' (give the "
        "server's token: Client(address, token=...))"
    )


def test_many_refused_callers_leave_the_recent_ones_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past REFUSALS_KEPT hosts the oldest are forgotten, not all: a host refused a moment
    ago is not logged again (forgetting them all logged every recent host again at once)."""
    interceptor = TokenInterceptor(
        [TokenConfig(name="dock", role="analyze", sha256=token_hash(ANALYZE_TOKEN))]
    )
    say = interceptor._logger(
        "/convstream.v1.Convstream/Analyze", grpc.StatusCode.UNAUTHENTICATED, "no token"
    )
    caplog.set_level(logging.WARNING, logger="convstream.server.security")
    hosts = [f"ipv4:10.0.{i // 256}.{i % 256}:5000" for i in range(REFUSALS_KEPT + 10)]
    for host in hosts:
        say(host)
    assert len(caplog.records) == len(hosts)
    caplog.clear()
    for host in hosts[-REFUSALS_KEPT + 1 :]:  # each still within REFUSALS_LOG_S
        say(host.replace(":5000", ":5001"))  # the same host from another port
    assert caplog.records == []
    say(hosts[0])  # the oldest, forgotten to make room: logged again
    assert len(caplog.records) == 1 and "from ipv4:10.0.0.0:5000" in caplog.records[0].message


def _refusals(metrics_port: int) -> dict[tuple[str, str], float]:
    """convstream_auth_refusals_total from /metrics, as {(method, reason): count}."""
    return _counted(metrics_port, "convstream_auth_refusals_total", "reason")


def _counted(metrics_port: int, name: str, label: str) -> dict[tuple[str, str], float]:
    """A counter by method and one other label from /metrics, as {(method, label): count}."""
    text = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {
        (s.labels["method"], s.labels[label]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_a_camera_is_named_by_id_never_by_url_path_or_device(server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConvstreamStub(channel)
        for name in ("rtsp://10.0.0.7/stream", "/etc/passwd", "../belt", "device:0", ""):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.WatchCamera(pb.WatchCameraRequest(camera_id=name)).read()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "never a URL, a path or a device" in str(info.value.details())


def test_tls_and_token_settings_are_checked(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_settings(overrides={"tls_cert": str(pki / "server.crt")}, environ={})
    with pytest.raises(ConfigError, match="needs tls_cert and tls_key"):
        load_settings(overrides={"tls_client_ca": str(pki / "ca.crt")}, environ={})
    missing = {"tls_cert": str(tmp_path / "x.crt"), "tls_key": str(tmp_path / "x.key")}
    with pytest.raises(TLSFileError, match="does not exist") as info:
        load_settings(overrides=missing, environ={}).read_tls()
    # every missing file, each named by its setting
    assert f"tls_cert {tmp_path / 'x.crt'} does not exist" in str(info.value)
    assert f"tls_key {tmp_path / 'x.key'} does not exist" in str(info.value)
    with pytest.raises(ConfigError, match="configured in the TOML file"):
        load_settings(environ={"CONVSTREAM_TOKENS": "x"})
    with pytest.raises(ConfigError, match="sha256"):
        load_settings(
            overrides={"tokens": [{"name": "a", "role": "watch", "sha256": "plaintext"}]},
            environ={},
        )
    # one token in two tables: the last role won, quietly (upper and lower case alike)
    digest = token_hash(ANALYZE_TOKEN)
    twice = [
        {"name": "keeper", "role": "analyze", "sha256": digest},
        {"name": "keeper2", "role": "watch", "sha256": digest.upper()},
    ]
    with pytest.raises(ConfigError, match="tokens 'keeper' and 'keeper2' have the same sha256"):
        load_settings(overrides={"tokens": twice}, environ={})
    # two of one name: the log's refusals and revocations could not tell them apart
    named = [
        {"name": "dashboard", "role": "watch", "sha256": digest},
        {"name": "dashboard", "role": "analyze", "sha256": token_hash(WATCH_TOKEN)},
    ]
    with pytest.raises(ConfigError, match="two tokens are named 'dashboard'"):
        load_settings(overrides={"tokens": named}, environ={})


@pytest.mark.parametrize(
    ("sha256", "says"),
    [
        (ANALYZE_TOKEN, "looks like the token itself — never put the token in the config"),
        ("WcWnIEKR3f0b-Zr_Ly6EqPzQ8Vh2m1u4TnXsJd9aKcY", "looks like the token itself"),
        (token_hash(ANALYZE_TOKEN)[:63], "what is there has 63 hex digits"),
        ("...", "what is there is 3 characters that are not hex digits"),  # the README's
        (12345, "Input should be a valid string"),
    ],
)
def test_a_token_in_the_sha256_field_is_never_printed(
    tmp_path: Path, sha256: object, says: str
) -> None:
    config = tmp_path / "c.toml"
    value = f'"{sha256}"' if isinstance(sha256, str) else str(sha256)
    good = f'[[tokens]]\nname = "ok"\nrole = "watch"\nsha256 = "{token_hash(WATCH_TOKEN)}"\n'
    config.write_text(good + f'[[tokens]]\nname = "dock-3"\nrole = "analyze"\nsha256 = {value}\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    message = str(info.value)
    assert says in message
    assert str(sha256) not in message
    if isinstance(sha256, str):
        # at the sha256 line (line 8), not the table's header (an operator's review)
        expected = "line 8: tokens[1].sha256 (token 'dock-3'): must be the 64-hex SHA-256"
        assert f"{expected} of the token, as `convstream token` prints it; " in message


def test_token_command_prints_a_token_and_only_its_hash_for_the_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli_main(["token", "--name", "dock-3", "--role", "analyze"]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[0].rsplit(" ", 1)[1]
    table = out[out.index("[[tokens]]") :]
    assert token not in table
    config = tmp_path / "c.toml"
    config.write_text(table)
    settings = load_settings(config, environ={})
    assert settings.tokens[0].sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert settings.tokens[0].role == "analyze" and settings.tokens[0].max_calls is None
    # --max-calls: the table bounds the token's streams and watches
    assert cli_main(["token", "--name", "dash", "--role", "watch", "--max-calls", "8"]) == 0
    out = capsys.readouterr().out
    config.write_text(out[out.index("[[tokens]]") :])
    assert load_settings(config, environ={}).tokens[0].max_calls == 8
    with pytest.raises(SystemExit):
        cli_main(["token", "--name", "dash", "--role", "watch", "--max-calls", "0"])
    assert "--max-calls: must be at least 1, got 0" in capsys.readouterr().err
    # --camera: the cameras it may list and watch, and what a reload says of a change
    argv = ["token", "--name", "dash", "--role", "watch", "--camera", "dock-*", "--camera", "yard"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    config.write_text(out[out.index("[[tokens]]") :])
    scoped = load_settings(config, environ={}).tokens[0]
    assert scoped.cameras == ("dock-*", "yard") and settings.tokens[0].cameras is None
    assert scoped.may_see("dock-12") and scoped.may_see("yard") and not scoped.may_see("yard-2")
    every = scoped.model_copy(update={"cameras": None})
    assert token_changes([every], [scoped]) == ["'dash': cameras all -> 'dock-*', 'yard'"]
    with pytest.raises(ValueError, match="cameras: expected camera ids or patterns"):
        TokenConfig(name="x", role="watch", sha256="0" * 64, cameras=("dock-*", " "))
    # and the command refuses one before it makes a token whose table would not load
    assert cli_main(["token", "--name", "dash", "--role", "watch", "--camera", " "]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("convstream token: --camera: expected camera ids")


@pytest.mark.parametrize(
    "name",
    ['dock"3\\x', "tab\there, a\nnewline and \x7f", "Zoë's dock 😀", "d" * 64],
    ids=["quote-backslash", "controls", "non-ascii", "longest"],
)
def test_token_command_prints_a_table_that_loads_whatever_the_name(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--name 'dock"3\\x' went into the TOML as it was: the table did not load."""
    assert cli_main(["token", "--name", name, "--role", "watch"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("[[tokens]]") :]
    assert tomllib.loads(table)["tokens"][0]["name"] == name
    config = tmp_path / "c.toml"
    config.write_text(table)
    assert load_settings(config, environ={}).tokens[0].name == name


def test_token_command_escapes_what_an_ascii_terminal_cannot_show(tmp_path: Path) -> None:
    """Printed to an ASCII-only stdout, 'ë' became Python's \\xeb, which TOML refuses."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "convstream.cli", "token", "--name", "Zoë", "--role", "watch"]
    done = subprocess.run(command, capture_output=True, env=env, timeout=60, check=True)
    table = done.stdout.decode("ascii")
    table = table[table.index("[[tokens]]") :]
    assert 'name = "Zo\\u00EB"' in table and tomllib.loads(table)["tokens"][0]["name"] == "Zoë"


def test_token_command_refuses_a_name_the_servers_config_would(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A name the server refuses (TokenConfig: 1 to 64 characters) made a table its config
    refused at the next start or reload; now no token is made, nor its file written."""
    path = tmp_path / "t.token"
    for name, got in (("d" * 65, 65), ("", 0)):
        argv = ["token", "--name", name, "--role", "watch", "--token-file", str(path)]
        assert cli_main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and not path.exists()
        assert err == (
            "convstream token: --name must be 1 to 64 characters (the server's limit for a "
            f"token's name), got {got}\n"
        )
    # bytes that are not UTF-8, as a shell passes them in: no config file could hold them
    assert cli_main(["token", "--name", "dock\udcff", "--role", "watch"]) == 2
    assert capsys.readouterr().err == (
        "convstream token: --name must be text a UTF-8 config file can hold; it has bytes "
        "that are not UTF-8: b'dock\\xff'\n"
    )


def test_a_new_token_never_reads_as_an_option() -> None:
    """1 in 64 began with '-', and `--token -x...` was refused as a missing value (a CI run
    of a test with such a token failed so): 2,000 draws hold about 31 of those."""
    tokens = [new_token()[0] for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == 2000 and {len(t) for t in tokens} == {43}


def test_token_command_writes_the_token_to_a_new_private_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """For scripts: the token lands in a file the client commands read, never on the terminal."""
    path = tmp_path / "dock-3.token"
    umask = os.umask(0o277)  # a umask that would leave the file read-only: the mode is set
    try:
        code = cli_main(["token", "--name", "dock-3", "--role", "watch", "--token-file", str(path)])
    finally:
        os.umask(umask)
    assert code == 0
    out = capsys.readouterr().out
    token = path.read_text()
    assert len(token) >= 32 and token.strip() == token  # no newline to trip a reader
    assert path.stat().st_mode & 0o777 == 0o600
    assert token not in out and f"written to {path}" in out
    config = tmp_path / "c.toml"
    config.write_text(out[out.index("[[tokens]]") :])
    assert load_settings(config, environ={}).tokens[0].sha256 == token_hash(token)
    # The client commands read it as it is.
    assert token_from_flags(argparse.Namespace(token=None, token_file=path), {}) == token
    # set from a Kubernetes secret or an env file, the variable often ends with a newline
    no_flags = argparse.Namespace(token=None, token_file=None)
    assert token_from_flags(no_flags, {"CONVSTREAM_TOKEN": f"{token}\n"}) == token
    # A file that exists is someone's token: never overwritten.
    assert cli_main(["token", "--name", "x", "--role", "watch", "--token-file", str(path)]) == 2
    assert "File exists" in capsys.readouterr().err
    assert path.read_text() == token
    assert cli_main(["token", "--name", "x", "--role", "watch", "--token-file", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def _encrypted_key(pki: Path, folder: Path) -> Path:
    key = serialization.load_pem_private_key((pki / "server.key").read_bytes(), None)
    path = folder / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


@pytest.mark.parametrize(
    ("cert", "key", "client_ca", "message"),
    [
        ("server.crt", "client.key", None, "tls_key {key} does not match tls_cert {cert}"),
        (
            "server.key",
            "server.crt",
            None,
            "tls_cert {cert} is not a PEM certificate (it holds "
            "a private key: are tls_cert and tls_key swapped?)",
        ),
        ("junk", "server.key", None, "tls_cert {cert} is not a PEM certificate"),
        ("server.crt", "junk", None, "tls_key {key} is not a PEM private key"),
        (
            "server.crt",
            "ca.crt",
            None,
            "tls_key {key} is not a PEM private key (it holds a certificate",
        ),
        ("server.crt", "encrypted", None, "tls_key {key} is encrypted; gRPC needs it unencrypted"),
        ("server.crt", "server.key", "junk", "tls_client_ca {client_ca} is not a PEM certificate"),
        ("server.crt", "server.key", "ca.crt", None),
        # a rotation caught mid-copy, a DER certificate, a comment in UTF-8 above the PEM
        # (which OpenSSL reads): a traceback before, and a reload stopped half-way
        ("empty", "server.key", None, "tls_cert {cert} is empty"),
        ("server.crt", "server.key", "empty", "tls_client_ca {client_ca} is empty"),
        ("der", "server.key", None, "tls_cert {cert} is not a PEM certificate"),
        ("commented", "server.key", None, None),
    ],
)
def test_unusable_tls_files_are_named_by_their_setting(
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cert: str,
    key: str,
    client_ca: str | None,
    message: str | None,
) -> None:
    # checked without a temporary folder: a container's read-only root failed every TLS
    # start with a traceback, and each start left the private key's copy on disk meanwhile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-temporary-folder"))
    (tmp_path / "junk").write_text("not PEM at all\n")
    (tmp_path / "empty").write_bytes(b"")
    pem = (pki / "server.crt").read_bytes()
    (tmp_path / "der").write_bytes(ssl.PEM_cert_to_DER_cert(pem.decode()))
    (tmp_path / "commented").write_bytes("# für Halle 3\n".encode() + pem)
    files = {
        "encrypted": _encrypted_key(pki, tmp_path),
        **{name: tmp_path / name for name in ("junk", "empty", "der", "commented")},
    }
    paths = {
        "cert": files.get(cert, pki / cert),
        "key": files.get(key, pki / key),
        "client_ca": files.get(client_ca or "", pki / (client_ca or "")),
    }
    overrides = {"tls_cert": str(paths["cert"]), "tls_key": str(paths["key"])}
    if client_ca:
        overrides["tls_client_ca"] = str(paths["client_ca"])
    settings = load_settings(overrides=overrides, environ={})
    if message is None:
        assert settings.read_tls() is not None
        assert settings.tls_client_ca == (paths["client_ca"] if client_ca else None)
        return
    with pytest.raises(TLSFileError) as info:
        settings.read_tls()
    assert message.format(**paths) in str(info.value)


def test_tls_files_are_checked_where_memory_files_are_refused(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seccomp profile that refuses memfd_create (or no /proc) failed the check with a
    traceback, as a read-only /tmp had: a private temporary folder then serves."""
    from convstream.v1 import pem as tls

    def refused(*args: object) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tls.os, "memfd_create", refused)
    pem = tls.read_pem(pki / "server.crt", pki / "server.key", None)
    assert pem.key == (pki / "server.key").read_bytes()
    with pytest.raises(TLSFileError, match="does not match tls_cert"):
        tls.read_pem(pki / "server.crt", pki / "client.key", None)


def test_a_tls_key_that_every_user_can_read_is_warned_of(pki: Path, tmp_path: Path) -> None:
    """Any local user could read the key and pose as the server: said as ssh says it."""
    key = tmp_path / "server.key"
    key.write_bytes((pki / "server.key").read_bytes())
    overrides = {"tls_cert": str(pki / "server.crt"), "tls_key": str(key)}
    for mode, warned in ((0o644, True), (0o640, False), (0o600, False)):
        key.chmod(mode)
        pem = load_settings(overrides=overrides, environ={}).read_tls()
        assert pem is not None
        said = f"tls_key {key} can be read by every user of this machine (mode {mode:04o})"
        assert any(said in warning for warning in pem.warnings) == warned, pem.warnings


def test_expired_certificates_are_refused_and_one_that_expires_soon_is_warned_of(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    day = dt.timedelta(days=1)
    for name, valid in {
        "expired": (-60 * day, -day),
        "future": (day, 60 * day),
        "soon": (-day, 3 * day),
    }.items():
        key = _key()
        issuer = ("convstream test CA", ca_key)
        _write(tmp_path / name, _cert("127.0.0.1", key, issuer, server=True, valid=valid), key)

    def check(name: str, client_ca: Path | None = None) -> int:
        config = tmp_path / f"{name}.toml"
        text = f'tls_cert = "{tmp_path / name}.crt"\ntls_key = "{tmp_path / name}.key"\n'
        if client_ca is not None:
            text += f'tls_client_ca = "{client_ca}"\n'
        config.write_text(text)
        return cli_main(["serve", "--config", str(config), "--no-cameras", "--check-config"])

    # gRPC would serve these, and every client would refuse the handshake
    assert check("expired") == 2
    err = capsys.readouterr().err
    assert f"tls_cert {tmp_path / 'expired.crt'} expired on " in err and "renew it" in err
    assert check("future") == 2
    err = capsys.readouterr().err
    assert f"tls_cert {tmp_path / 'future.crt'} is not valid until " in err
    assert "is this machine's clock right?" in err
    (tmp_path / "server.crt").write_bytes((pki / "server.crt").read_bytes())
    (tmp_path / "server.key").write_bytes((pki / "server.key").read_bytes())
    (tmp_path / "server.key").chmod(0o600)
    assert check("server", client_ca=tmp_path / "expired.crt") == 2  # an expired client CA
    assert f"tls_client_ca {tmp_path / 'expired.crt'} expired on " in capsys.readouterr().err
    # one old CA in a bundle of several, or an old intermediate after the server's own
    # certificate, is warned of: clients still connect through the others
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((pki / "ca.crt").read_bytes() + (tmp_path / "expired.crt").read_bytes())
    assert check("server", client_ca=bundle) == 0
    assert f"warning: tls_client_ca {bundle} (certificate 2 in it) expired on " in (
        capsys.readouterr().out
    )
    chain = (tmp_path / "server.crt").read_bytes() + (tmp_path / "expired.crt").read_bytes()
    (tmp_path / "server.crt").write_bytes(chain)
    assert check("server") == 0
    assert "(certificate 2 in it) expired on " in capsys.readouterr().out
    (tmp_path / "server.crt").write_bytes((pki / "server.crt").read_bytes())
    assert check("soon") == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK, 1 warning(s) below")
    assert f"warning: tls_cert {tmp_path / 'soon.crt'} expires on " in out
    assert "in 3.0 days: renew it" in out or "in 2.9 days: renew it" in out
    assert check("server") == 0
    assert capsys.readouterr().out.startswith("config OK: ")


@pytest.mark.parametrize(("level", "shown"), [(None, True), ("warning", False)])
def test_grpcs_handshake_lines_follow_the_servers_log_level(
    pki: Path, tmp_path: Path, level: str | None, shown: bool
) -> None:
    # A client retrying without TLS logs one gRPC line per try: kept at the default level
    # (the only trace of it), gone at warning or error.
    config = tmp_path / "c.toml"
    config.write_text(f'tls_cert = "{pki / "server.crt"}"\ntls_key = "{pki / "server.key"}"\n')
    port = free_port()
    argv = ["serve", "--config", str(config), "--port", str(port), "--no-cameras"]
    argv += ["--metrics-port", "-1", *(["--log-level", level] if level else [])]
    quiet = ("GRPC_VERBOSITY", "CONVSTREAM_LOG_LEVEL")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    process = subprocess.Popen(
        [sys.executable, "-m", "convstream.cli", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as plain:
                    plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(50))
                    plain.recv(100)
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert ("Handshake failed" in err) is shown, err


def test_grpcs_own_lines_follow_the_log_level_the_settings_will_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC reads its verbosity once, as it loads, before the settings are read: a production
    config's `log_level = "warning"` left its handshake lines on. Read as the settings read
    it: the flag, else CONVSTREAM_LOG_LEVEL, else the config file's (as --config or
    CONVSTREAM_CONFIG name it)."""
    from convstream.cli.serve import quiet_log_level

    monkeypatch.delenv("CONVSTREAM_LOG_LEVEL", raising=False)
    monkeypatch.delenv("CONVSTREAM_CONFIG", raising=False)
    quiet, chatty = tmp_path / "quiet.toml", tmp_path / "chatty.toml"
    quiet.write_text('log_level = "warning"\n')
    chatty.write_text("port = 50051\n")
    assert quiet_log_level(["serve", "--config", str(quiet)])
    assert quiet_log_level(["serve", f"--config={quiet}"])
    assert not quiet_log_level(["serve", "--config", str(chatty)])
    assert not quiet_log_level(["serve", "--config", str(quiet), "--log-level", "info"])
    monkeypatch.setenv("CONVSTREAM_CONFIG", str(quiet))
    assert quiet_log_level(["serve"])
    monkeypatch.setenv("CONVSTREAM_LOG_LEVEL", "debug")  # the environment over the file
    assert not quiet_log_level(["serve"])
    (tmp_path / "broken.toml").write_text("log_level = \n")  # the settings will say it
    monkeypatch.delenv("CONVSTREAM_LOG_LEVEL")
    assert not quiet_log_level(["serve", "--config", str(tmp_path / "broken.toml")])


def _serve_process(folder: Path, config: str) -> tuple[subprocess.Popen[str], int]:
    """A server without cameras in a process of its own, on a free port, with ``config``."""
    path = folder / "server.toml"
    path.write_text(config)
    port = free_port()
    argv = ["serve", "--config", str(path), "--port", str(port), "--no-cameras"]
    process = subprocess.Popen(
        [sys.executable, "-m", "convstream.cli", *argv, "--metrics-port", "-1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, port


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_a_call_without_a_token_is_refused_before_its_request_is_read(tmp_path: Path) -> None:
    """gRPC reads a unary request whole before its handler runs, and the refusal of a call
    without a token had the method's own shape: anyone who could connect made the server
    hold 16 Analyze requests of 120 MiB at once (2 GB of it) before being told no. The
    refusal now reads no request. A server of its own, in a process of its own, whose peak
    memory tells."""
    process, port = _serve_process(
        tmp_path,
        f'[[tokens]]\nname = "dock"\nrole = "analyze"\nsha256 = "{token_hash(ANALYZE_TOKEN)}"\n',
    )
    request = pb.FrameRequest(encoded=b"\xff\xd8\xff" + bytes(100 << 20)).SerializeToString()
    options = [("grpc.max_send_message_length", 256 << 20)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=60)
            before = _peak_rss_kb(process.pid)
            analyze = channel.unary_unary(
                "/convstream.v1.Convstream/Analyze",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )
            calls = [analyze.future(request, timeout=60) for _ in range(8)]  # 800 MiB
            for call in calls:
                assert call.code() == grpc.StatusCode.UNAUTHENTICATED, call.details()
                assert "needs a token" in (call.details() or "")
            grown_mib = (_peak_rss_kb(process.pid) - before) / 1024
            assert grown_mib < 200, grown_mib  # the old refusal: about 130 MiB a call
            # and the server serves on, a call with the token included
            stub = pb_grpc.ConvstreamStub(channel)
            metadata = (("authorization", f"Bearer {ANALYZE_TOKEN}"),)
            answer = stub.Analyze(pb.FrameRequest(encoded=jpeg(scene(3))), metadata=metadata)
            assert 0.0 <= answer.score <= 1.0
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


async def test_a_tokens_max_calls_bounds_its_streams_and_watches(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One watch-only token could take every camera watch of the server, and one analyze
    token every stream or Analyze place. A token's max_calls bounds the calls open with it
    at once: past it RESOURCE_EXHAUSTED naming the token and its limit; other tokens are
    untouched, and a call that ends gives its place back."""
    caplog.set_level(logging.INFO, logger="convstream")
    from convstream.server import security

    monkeypatch.setattr(security, "LOG_CALLS_AFTER_S", 0.3)  # not 10 s, for the test's sake
    dock = TokenConfig(name="dock-3", role="analyze", sha256=token_hash(ANALYZE_TOKEN), max_calls=2)
    dashboard = TokenConfig(name="dashboard", role="watch", sha256=token_hash(WATCH_TOKEN))
    camera = CameraConfig(id="belt", source="demo:conveyor?fps=5")
    settings = Settings(port=0, metrics_port=0, cameras=(camera,), tokens=(dock, dashboard))
    server = await _start(settings)
    frame = pb.FrameRequest(encoded=jpeg(scene(5, 240, 320)))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            watch_request = pb.WatchCameraRequest(camera_id="belt")
            watch = stub.WatchCamera(watch_request, metadata=_bearer(ANALYZE_TOKEN))
            assert (await watch.read()).source == "belt"
            stream = stub.StreamFrames(metadata=_bearer(ANALYZE_TOKEN))
            await stream.write(frame)
            assert (await stream.read()).status.code == 0
            third = stub.StreamFrames(metadata=_bearer(ANALYZE_TOKEN))
            assert await third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = await third.details()
            assert "token 'dock-3' has 2 calls open (streams, camera watches, Analyze" in details
            assert "its limit (max_calls) is 2" in details
            with pytest.raises(grpc.aio.AioRpcError) as analyze:  # an Analyze call counts too
                await stub.Analyze(frame, metadata=_bearer(ANALYZE_TOKEN))
            assert analyze.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # the server's side: each refusal counted, the first logged
            refusals = await asyncio.to_thread(_refusals, server.metrics_port)
            assert refusals[("convstream.v1.Convstream/StreamFrames", "resource_exhausted")] == 1
            assert refusals[("convstream.v1.Convstream/Analyze", "resource_exhausted")] == 1
            said = [r.message for r in caplog.records if "at its max_calls (2)" in r.message]
            assert len(said) == 1 and "token 'dock-3'" in said[0]  # once per host, 10 minutes
            # and what each token was let do (a leaked token's use showed nowhere): counted
            # by method, the calls refused not among them; its watch logged as it begins
            admitted = await asyncio.to_thread(
                _counted, server.metrics_port, "convstream_token_calls_total", "token"
            )
            assert admitted[("convstream.v1.Convstream/WatchCamera", "dock-3")] == 1
            assert admitted[("convstream.v1.Convstream/StreamFrames", "dock-3")] == 1
            assert ("convstream.v1.Convstream/Analyze", "dock-3") not in admitted
            began = "WatchCamera of 'belt' by token 'dock-3' from ipv4:127.0.0.1:"
            deadline = time.monotonic() + 10  # once it has lasted LOG_CALLS_AFTER_S
            while not any(r.message.startswith(began) for r in caplog.records):
                assert time.monotonic() < deadline, "the open watch was never logged"
                await asyncio.sleep(0.05)
            opened = next(r.message for r in caplog.records if r.message.startswith(began))
            assert opened.endswith(": open for 0 s"), opened
            # the calls of a token without max_calls pass
            others = [
                stub.WatchCamera(watch_request, metadata=_bearer(WATCH_TOKEN)) for _ in range(3)
            ]
            for other in others:
                assert (await other.read()).source == "belt"
            watch.cancel()
            deadline = time.monotonic() + 10
            while True:  # the server sees the cancel a moment later
                again = stub.StreamFrames(metadata=_bearer(ANALYZE_TOKEN))
                await again.write(frame)
                try:
                    assert (await again.read()).status.code == 0
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                assert time.monotonic() < deadline, "the cancelled watch kept its place"
                await asyncio.sleep(0.05)
            for call in (stream, again, *others):
                call.cancel()
            # the cancelled watch's end, with how long it lasted
            ended = [r.message for r in caplog.records if r.message.startswith(began)]
            assert len(ended) == 2 and re.search(r": ended after \d+ s$", ended[1]), ended
    finally:
        await server.stop(grace=0)


async def test_a_tokens_cameras_bound_what_it_lists_and_watches(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A contractor's token for the docks saw and watched every camera of the site. A
    token's cameras (ids or patterns) bound what it lists and watches: another camera's
    watch is PERMISSION_DENIED naming what it may watch, its NOT_FOUND lists only those, and
    a reload that narrows it ends its open watch of a camera no longer its own."""
    docks = TokenConfig(
        name="contractor", role="watch", sha256=token_hash(WATCH_TOKEN), cameras=("dock-*",)
    )
    everything = TokenConfig(name="control", role="analyze", sha256=token_hash(ANALYZE_TOKEN))
    cameras = tuple(
        CameraConfig(id=name, source=f"demo:conveyor?fps=5&seed={k}")
        for k, name in enumerate(("dock-1", "dock-2", "yard"))
    )
    settings = Settings(port=0, metrics_port=0, cameras=cameras, tokens=(docks, everything))
    server = await _start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            listed = await stub.ListCameras(pb.ListCamerasRequest(), metadata=_bearer(WATCH_TOKEN))
            assert [c.id for c in listed.cameras] == ["dock-1", "dock-2"]
            listed = await stub.ListCameras(
                pb.ListCamerasRequest(), metadata=_bearer(ANALYZE_TOKEN)
            )
            assert [c.id for c in listed.cameras] == ["dock-1", "dock-2", "yard"]
            # health's List names cameras too: a token, and its scope (Check stays open)
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await health.List(health_pb2.HealthListRequest())
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            scoped = await health.List(
                health_pb2.HealthListRequest(), metadata=_bearer(WATCH_TOKEN)
            )
            assert sorted(scoped.statuses) == [
                "",
                "convstream.camera.dock-1",
                "convstream.camera.dock-2",
                "convstream.v1.Convstream",
            ]
            yard_health = health_pb2.HealthCheckRequest(service="convstream.camera.yard")
            assert (await health.Check(yard_health)).status  # open, for load balancers
            yard = stub.WatchCamera(
                pb.WatchCameraRequest(camera_id="yard"), metadata=_bearer(WATCH_TOKEN)
            )
            assert await yard.code() == grpc.StatusCode.PERMISSION_DENIED
            assert await yard.details() == (
                "token 'contractor' may watch the cameras 'dock-*' (its cameras in the server's "
                "config), not 'yard'"
            )
            unknown = stub.WatchCamera(
                pb.WatchCameraRequest(camera_id="dock-9"), metadata=_bearer(WATCH_TOKEN)
            )
            assert await unknown.code() == grpc.StatusCode.NOT_FOUND
            assert "cameras: dock-1, dock-2" in (await unknown.details()) and "yard" not in (
                await unknown.details()
            )
            dock = stub.WatchCamera(
                pb.WatchCameraRequest(camera_id="dock-2"), metadata=_bearer(WATCH_TOKEN)
            )
            assert (await dock.read()).source == "dock-2"
            other = stub.WatchCamera(
                pb.WatchCameraRequest(camera_id="gate-7"), metadata=_bearer(WATCH_TOKEN)
            )
            assert await other.code() == grpc.StatusCode.PERMISSION_DENIED
            refusals = await asyncio.to_thread(_refusals, server.metrics_port)
            assert refusals[("convstream.v1.Convstream/WatchCamera", "permission_denied")] == 2
            # the command said "unknown camera 'yard' (the server has dock-1, dock-2)": an
            # operator went looking for a camera that runs; the server's answer says why
            argv = ["watch", "yard", "--address", f"127.0.0.1:{server.port}"]
            capsys.readouterr()
            assert await asyncio.to_thread(cli_main, [*argv, "--token", WATCH_TOKEN]) == 4
            said = capsys.readouterr().err
            assert said.startswith(
                "convstream watch: token 'contractor' may watch the cameras 'dock-*'"
            )
            # its cameras are the matter, not its role (it said: "convstream token --role
            # analyze makes one", and an analyze token of these cameras is refused alike)
            assert "the token is for other cameras" in said and "--camera ID" in said
            assert "--role" not in said
            argv[1] = "dock-3"  # none by that name: the list this token is given
            assert await asyncio.to_thread(cli_main, [*argv, "--token", WATCH_TOKEN]) == 2
            assert capsys.readouterr().err == (
                "convstream watch: error: unknown camera 'dock-3'; did you mean 'dock-2'? (the "
                "server lists dock-1, dock-2 to this token)\n"
            )
            # logged once for the token, not once per camera it asks for (ids tried one by
            # one wrote a line each)
            said = [r.message for r in caplog.records if "may watch the cameras" in r.message]
            assert len(said) == 1 and "token 'contractor'" in said[0], said
            # narrowed to dock-1 by a reload: the open watch of dock-2 ends, and says why
            narrowed = docks.model_copy(update={"cameras": ("dock-1",)})
            await server.reload(
                server.settings.model_copy(update={"tokens": (narrowed, everything)})
            )
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while await dock.read() is not grpc.aio.EOF:
                    pass
            assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may watch the cameras 'dock-1'" in (ended.value.details() or "")
            # a token none of whose cameras exists is told so, not the site's cameras
            gates = docks.model_copy(update={"cameras": ("gate-*",)})
            await server.reload(server.settings.model_copy(update={"tokens": (gates, everything)}))
            gate = stub.WatchCamera(
                pb.WatchCameraRequest(camera_id="gate-1"), metadata=_bearer(WATCH_TOKEN)
            )
            assert await gate.code() == grpc.StatusCode.NOT_FOUND
            assert await gate.details() == "no camera 'gate-1'; cameras: none yours"
    finally:
        await server.stop(grace=0)


async def test_a_scoped_token_publishes_under_its_cameras_names_only() -> None:
    """A token scoped to the docks published a stream under any name ('yard-3'), onto the
    dashboards of tokens for other cameras, and a taken name's refusal named what it may not
    see ("already published by another stream"). Now a name outside its cameras is refused,
    taken or not, in the same words; one of its own publishes."""
    docks = TokenConfig(
        name="dock-crew", role="analyze", sha256=token_hash(WATCH_TOKEN), cameras=("dock-*",)
    )
    everything = TokenConfig(name="control", role="analyze", sha256=token_hash(ANALYZE_TOKEN))
    server = await _start(Settings(port=0, metrics_port=-1, cameras=(), tokens=(docks, everything)))
    image = jpeg(scene(21, 240, 320))
    publish = pb.ResultOptions(publish=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            control = stub.StreamFrames(metadata=_bearer(ANALYZE_TOKEN))
            await control.write(
                pb.FrameRequest(source="yard-secret", encoded=image, options=publish)
            )
            assert (await control.read()).published
            crew = stub.StreamFrames(metadata=_bearer(WATCH_TOKEN))
            said = []
            for name in ("yard-secret", "yard-3"):  # taken, and free: alike
                await crew.write(pb.FrameRequest(source=name, encoded=image, options=publish))
                refused = await crew.read()
                assert refused.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
                said.append(refused.status.message.replace(name, "NAME"))
            assert said[0] == said[1] and "another stream" not in said[0], said
            assert said[0].startswith(
                "token 'dock-crew' may publish under the names of its cameras 'dock-*' only"
            )
            # the stream goes on, unpublished, and publishes under a name of its own
            await crew.write(pb.FrameRequest(source="dock-push", encoded=image))
            assert not (await crew.read()).published
            await crew.write(pb.FrameRequest(encoded=image, options=publish))
            assert (await crew.read()).published
            listed = await stub.ListCameras(
                pb.ListCamerasRequest(), metadata=_bearer(ANALYZE_TOKEN)
            )
            assert sorted(c.id for c in listed.cameras) == ["dock-push", "yard-secret"]
            for call in (control, crew):
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
    finally:
        await server.stop(grace=0)


async def test_health_watch_calls_past_the_cap_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The health service is open to every caller, and each Watch call stays open: 20,000 of
    them held 210 MB. Past MAX_HEALTH_WATCHES (3 here) one more is refused, and past
    MAX_HEALTH_WATCHES_PER_HOST from one host (2, later); a Watch that ends gives its place
    back, and Check answers throughout."""
    monkeypatch.setattr("convstream.server.health.MAX_HEALTH_WATCHES", 3)
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING

            def watch() -> Any:
                return health.Watch(health_pb2.HealthCheckRequest(), timeout=30)

            watches = [watch() for _ in range(3)]
            for open_ in watches:  # each open, and told the status
                assert (await open_.read()).status == serving
            refused = watch()
            assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 health Watch calls open, the limit is 3" in await refused.details()
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving
            monkeypatch.setattr("convstream.server.health.MAX_HEALTH_WATCHES", 100)
            monkeypatch.setattr("convstream.server.health.MAX_HEALTH_WATCHES_PER_HOST", 2)
            refused = watch()
            assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = await refused.details()
            assert "3 health Watch calls open from your host, the limit is 2" in details
            for ended in watches[:2]:
                ended.cancel()
            deadline = time.monotonic() + 10
            while server.health.watches > 1:  # the server sees the cancels a moment later
                assert time.monotonic() < deadline, server.health.watches
                await asyncio.sleep(0.05)
            again = watch()
            assert (await again.read()).status == serving
            for open_ in (watches[2], again):
                open_.cancel()
    finally:
        await server.stop(grace=0)


@asynccontextmanager
async def _from_address(source: str, port: int) -> AsyncIterator[int]:
    """A port on 127.0.0.1 whose connections reach the server's ``port`` from ``source``,
    another loopback address: a caller on another host, as the server counts callers."""
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        for task in (pipe(reader, up[1]), pipe(up[0], writer)):
            pipes.add(asyncio.create_task(task))

    forwarder = await asyncio.start_server(accepted, "127.0.0.1", 0)
    try:
        yield int(forwarder.sockets[0].getsockname()[1])
    finally:
        forwarder.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


@asynccontextmanager
async def _hosts(port: int) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """A channel to the server's ``port`` from each of three other loopback addresses."""
    async with contextlib.AsyncExitStack() as stack:
        channels = {}
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            forwarded = await stack.enter_async_context(_from_address(host, port))
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{forwarded}")
            channels[host] = await stack.enter_async_context(channel)
        yield channels


async def test_hosts_that_fill_the_health_watches_make_room_for_one_that_holds_fewer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few hosts at their per-host cap filled every Watch place, and a load balancer's
    Watch was refused (and may read as the server being down). All places taken, a host
    holding fewer than the busiest gets in, and the busiest host's oldest Watch ends."""
    monkeypatch.setattr("convstream.server.health.MAX_HEALTH_WATCHES", 4)
    monkeypatch.setattr("convstream.server.health.MAX_HEALTH_WATCHES_PER_HOST", 3)
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        async with _hosts(server.port) as channels:
            stubs = {host: health_pb2_grpc.HealthStub(c) for host, c in channels.items()}

            async def watch(host: str) -> Any:
                call = stubs[host].Watch(health_pb2.HealthCheckRequest(), timeout=30)
                return call, await call.read()

            busy = [await watch("127.0.0.2") for _ in range(3)]
            other = await watch("127.0.0.3")
            assert all(told.status == serving for _, told in [*busy, other])
            assert server.health.watches == 4  # every place taken
            balancer, told = await watch("127.0.0.4")  # holds none: room is made
            assert told.status == serving
            ended = busy[0][0]  # the busiest host's oldest, told why
            assert await ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "its oldest Watch, this one, was ended to make room" in await ended.details()
            # 127.0.0.3 would hold 2, as many as the busiest then: refused
            refused = stubs["127.0.0.3"].Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call, _ in [*busy[1:], other, (balancer, None)]:
                call.cancel()
    finally:
        await server.stop(grace=0)


async def test_one_host_may_hold_a_quarter_of_the_analyze_places_with_calls_that_send_nothing() -> (
    None
):
    """An Analyze call holds its place from its start, for up to 30 s while it waits for its
    request: one caller opening max_analyze_calls calls that send nothing kept Analyze from
    everyone. Once half the places are taken, one host's calls silent for over a second may
    hold a quarter of them; the rest stay for other hosts. While places are plenty, a host's
    slow calls go on, and a burst of calls that send their request at once is never refused."""
    settings = Settings(port=0, metrics_port=-1, cameras=(), max_analyze_calls=8)
    server = Server(settings)
    await server.start()
    frame = pb.FrameRequest(encoded=jpeg(scene(5, 240, 320)))
    try:
        async with _hosts(server.port) as channels:

            def analyze(host: str) -> Any:
                return channels[host].stream_unary(
                    "/convstream.v1.Convstream/Analyze",
                    request_serializer=pb.FrameRequest.SerializeToString,
                    response_deserializer=pb.FrameResult.FromString,
                )

            async def silent_for_a_while(host: str, count: int) -> list[Any]:
                calls = [analyze(host)(timeout=30) for _ in range(count)]  # send nothing yet
                before = server.servicer.open_analyze_calls
                deadline = time.monotonic() + 10
                while server.servicer.open_analyze_calls < before + count:
                    assert time.monotonic() < deadline, "the silent calls were not admitted"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(1.2)  # silent for over a second
                return calls

            mine = pb_grpc.ConvstreamStub(channels["127.0.0.2"])
            burst = await asyncio.gather(*(mine.Analyze(frame, timeout=30) for _ in range(6)))
            assert len(burst) == 6  # calls that send their request at once: never refused
            silent = await silent_for_a_while("127.0.0.2", 2)
            # 2 of 8 places taken: a third slow call of that host goes on
            assert 0.0 <= (await mine.Analyze(frame, timeout=30)).score <= 1.0
            silent += await silent_for_a_while("127.0.0.3", 2)  # half the places taken
            refused = analyze("127.0.0.2")(timeout=30)
            with contextlib.suppress(asyncio.InvalidStateError):  # refused before the write
                await refused.write(frame)
            assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = await refused.details()
            assert "2 Analyze calls from your host have been sending, or not sent" in details
            assert "one host may hold 2 (a quarter) so" in details
            other = pb_grpc.ConvstreamStub(channels["127.0.0.4"])  # another host: room
            assert 0.0 <= (await other.Analyze(frame, timeout=30)).score <= 1.0
            for call in silent:  # the silent calls' requests come after all
                await call.write(frame)
                await call.done_writing()
                assert 0.0 <= (await call).score <= 1.0
            answer = await mine.Analyze(frame, timeout=30)
            assert 0.0 <= answer.score <= 1.0  # their places were given back
            # A burst of silent calls, each admitted while none had been silent yet, held
            # every place: a second on, its calls past a quarter end, the oldest kept, until
            # fewer than half the places are taken: 5 end, always (whether the checks fell in
            # one turn of the event loop or in several, which had ended 6 or 5).
            burst_calls = [analyze("127.0.0.3")(timeout=30) for _ in range(8)]
            deadline = time.monotonic() + 10
            while sum(c.done() for c in burst_calls) < 5:
                assert time.monotonic() < deadline, "the burst's silent calls went on"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # and no more than those end
            ended = [c for c in burst_calls if c.done()]
            assert len(ended) == 5
            assert server.servicer.open_analyze_calls == 3
            assert {await c.code() for c in ended} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            why = await ended[0].details()
            assert "other Analyze calls from your host have been sending, or not sent" in why
            assert "one host may hold 2 (a quarter) so; this one was ended" in why
            assert 0.0 <= (await other.Analyze(frame, timeout=30)).score <= 1.0  # room again
            for call in [c for c in burst_calls if not c.done()]:  # answered once they send
                await call.write(frame)
                await call.done_writing()
                assert 0.0 <= (await call).score <= 1.0
            assert server.servicer._silent_analyze._by_host == {}  # none kept for good
    finally:
        await server.stop(grace=0)


async def test_one_host_may_hold_a_quarter_of_the_stream_places_with_silent_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """64 StreamFrames calls that sent nothing, from one host, held every place for
    stream_idle_timeout_s (300 s): every other client's stream was refused (a reliability
    review). As for Analyze: once half the places are taken, one host's streams silent for
    over STREAM_SILENT_S (5 s; 1 s here) may hold a quarter of them; a burst of silent
    streams loses those past the quarter then, until fewer than half the places are taken;
    a stream that sends its frames goes on, and another host gets a place."""
    from convstream.server import servicer

    monkeypatch.setattr(servicer, "STREAM_SILENT_S", 1.0)
    settings = Settings(port=0, metrics_port=-1, cameras=(), max_streams=8)
    server = Server(settings)
    await server.start()
    frame = pb.FrameRequest(frame_id=1, encoded=jpeg(scene(5, 240, 320)))
    try:
        async with _hosts(server.port) as channels:
            stubs = {host: pb_grpc.ConvstreamStub(channel) for host, channel in channels.items()}
            busy = stubs["127.0.0.2"].StreamFrames(timeout=30)
            await busy.write(frame)  # a stream that sends: never counted silent
            assert (await busy.read()).status.code == 0
            burst = [stubs["127.0.0.3"].StreamFrames(timeout=30) for _ in range(7)]
            deadline = time.monotonic() + 10
            while server.servicer.open_streams < 8:
                assert time.monotonic() < deadline, "the silent streams were not let in"
                await asyncio.sleep(0.02)
            while sum(c.done() for c in burst) < 5:  # a second on: 8 places, 2 may be silent
                assert time.monotonic() < deadline, "the burst's silent streams went on"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # and no more than those end: 3 of 8 places are taken
            ended = [c for c in burst if c.done()]
            assert len(ended) == 5 and server.servicer.open_streams == 3
            assert {await c.code() for c in ended} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            why = await ended[0].details()
            assert "other streams from your host have sent no frame for over 1 s" in why
            assert "one host may hold 2 (a quarter) so; this one was ended" in why
            other = stubs["127.0.0.4"].StreamFrames(timeout=30)  # another host: room
            await other.write(frame)
            assert (await other.read()).status.code == 0
            # half the places taken, 2 of them silent: that host's next stream is refused
            refused = stubs["127.0.0.3"].StreamFrames(timeout=30)
            assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 streams from your host have sent no frame" in await refused.details()
            await busy.write(pb.FrameRequest(frame_id=2, encoded=frame.encoded))
            assert (await busy.read()).frame_id == 2  # the sending stream went on
            for call in [c for c in burst if not c.done()]:  # answered once they send
                await call.write(frame)
                assert (await call.read()).status.code == 0
                await call.done_writing()
            for call in (busy, other):
                await call.done_writing()
            assert server.servicer._silent_streams._by_host == {}  # none kept for good
    finally:
        await server.stop(grace=0)


def test_a_caller_is_counted_by_its_address_whatever_its_port() -> None:
    from convstream.server.security import peer_host

    assert peer_host("ipv4:10.0.0.7:51234") == peer_host("ipv4:10.0.0.7:1") == "ipv4:10.0.0.7"
    a, b = "ipv6:%5B2001:db8:1:2::a%5D:5000", "ipv6:[2001:db8:1:2:0::a]:6000"  # gRPC quotes it
    assert peer_host(a) == peer_host(b) == "ipv6:2001:db8:1:2::a"
    assert peer_host("ipv6:[2001:db8:1:2::b]:5000") != peer_host(a)  # a pod beside it
    assert peer_host("ipv6:[::ffff:10.0.0.7]:5000") == "ipv4:10.0.0.7"  # on a [::] server
    assert peer_host("unix:/run/convstream.sock") == "unix:/run/convstream.sock"


def test_analyze_calls_past_the_cap_are_refused_before_their_request_is_read(
    tmp_path: Path,
) -> None:
    """max_analyze_calls was checked once gRPC had read a request whole: a burst of large
    Analyze calls past the cap made the server hold every one of them to say no. The cap is
    now checked as a call starts, and a call waiting for its request holds its place. A server
    of its own, in a process of its own, whose peak memory tells."""
    process, port = _serve_process(tmp_path, "max_analyze_calls = 1\n")
    small = pb.FrameRequest(encoded=jpeg(scene(3)))
    large = pb.FrameRequest(encoded=b"\xff\xd8\xff" + bytes(100 << 20)).SerializeToString()
    options = [("grpc.max_send_message_length", 256 << 20)]
    method = "/convstream.v1.Convstream/Analyze"
    released = threading.Event()

    def nothing_yet() -> Iterator[bytes]:
        released.wait(60)
        yield from ()

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=60)
            stub = pb_grpc.ConvstreamStub(channel)
            raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
            waiting = channel.stream_unary(method, **raw).future(nothing_yet(), timeout=60)
            deadline = time.monotonic() + 20
            while True:  # until the waiting call holds the one place
                try:
                    stub.Analyze(small, timeout=30)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                    assert "1 Analyze call in progress, the limit is 1" in error.details()
                    break
                assert time.monotonic() < deadline, "a call waiting for its request took no place"
                time.sleep(0.1)
            before = _peak_rss_kb(process.pid)
            analyze = channel.unary_unary(method, **raw)
            calls = [analyze.future(large, timeout=60) for _ in range(8)]  # 800 MiB
            for call in calls:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, call.details()
            grown_mib = (_peak_rss_kb(process.pid) - before) / 1024
            assert grown_mib < 200, grown_mib  # read first: about 130 MiB a call
            released.set()  # the waiting call ends without a request, and gives its place back
            with pytest.raises(grpc.RpcError) as ended:
                waiting.result()
            assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "ended without one" in (ended.value.details() or "")
            assert 0.0 <= stub.Analyze(small, timeout=30).score <= 1.0
    finally:
        released.set()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_certificate_dates_are_read_from_the_der(pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certificate_validity(der) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
    # two-digit years (UTCTime, before 2050) from 50 are 19xx, as X.509 reads them
    key = _key()
    old_cert = _cert("old", key, None, valid=(dt.timedelta(0), dt.timedelta(days=1)))
    builder = (
        x509.CertificateBuilder()
        .subject_name(old_cert.subject)
        .issuer_name(old_cert.issuer)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(1955, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2049, 12, 31, tzinfo=dt.UTC))
    )
    fifties = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    assert certificate_validity(fifties)[0].year == 1955
    assert certificate_validity(fifties)[1].year == 2049
    for broken in (b"", der[:40], b"\x02\x01\x00"):
        with pytest.raises(ValueError):
            certificate_validity(broken)


def test_expiry_times_are_when_clients_stop_trusting_the_files() -> None:
    """The server's certificate: the chain's first, however long its CA lasts; a client CA
    bundle: the last of its CAs (an old one beside a renewed one is not the end)."""

    def pem(*days: int) -> bytes:
        certs = [
            _cert(f"c{n}", _key(), None, valid=(dt.timedelta(0), dt.timedelta(days=d)))
            for n, d in enumerate(days)
        ]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def in_days(seconds: float) -> int:
        return round((seconds - time.time()) / 86400)

    times = expiry_times(PemFiles(pem(10, 400), b"key", pem(3, 700, 200)))
    assert {k: in_days(v) for k, v in times.items()} == {"tls_cert": 10, "tls_client_ca": 700}
    assert expiry_times(PemFiles(b"not a certificate", b"key", None)) == {}
    # a first certificate this reader cannot date leaves the gauge out, never the date of
    # the intermediate after it (which expires later: the alert would come too late)
    undated = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert expiry_times(PemFiles(undated + pem(400), b"key", None)) == {}


def test_serve_names_a_mismatched_key_not_the_port(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'tls_cert = "{pki / "server.crt"}"\ntls_key = "{pki / "client.key"}"\n')
    assert cli_main(["serve", "--config", str(config), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"convstream serve: tls_key {pki / 'client.key'} does not match tls_cert " + (
        f"{pki / 'server.crt'}\n"
    )


def test_a_host_name_binds_where_any_of_its_addresses_is_this_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port asked of the OS before gRPC binds it refused `localhost` in a container
    without IPv6 (its ::1 is no address there), which gRPC serves on 127.0.0.1 (the diff
    review's reading). An address not this machine's is passed over while another binds;
    one in use is not (gRPC would serve the other alone, and clients of the busy one would
    reach another server)."""
    from convstream.server.app import bind_failure

    def localhost(host: str, port: int, *_: object, **__: object) -> list[tuple[Any, ...]]:
        stream = socket.SOCK_STREAM
        return [
            (socket.AF_INET, stream, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET6, stream, 6, "", ("fd00::7", port, 0, 0)),  # none of ours
        ]

    monkeypatch.setattr(socket, "getaddrinfo", localhost)
    assert bind_failure("localhost", 0) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert bind_failure("localhost", busy) == "the port is in use (another convstream serve?)"


async def test_only_a_bind_failure_blames_the_port(
    pki: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(Settings(port=port, metrics_port=-1, cameras=()))
        with (
            caplog.at_level(logging.INFO),
            pytest.raises(OSError, match=f"127.0.0.1:{port}: the port is in use"),
        ):
            await server.start()
        await server.stop(grace=0)
    # said alone: no line of gRPC's C core above it, and no "stopped" for a server that
    # never started
    assert "Failed to add port" not in capfd.readouterr().err
    assert "convstream stopped" not in caplog.text
    # gRPC's own refusal (here of a key that is not the certificate's) is not a busy port
    pair = ((pki / "ca.key").read_bytes(), (pki / "server.crt").read_bytes())
    refused = grpc.aio.server()
    with pytest.raises(OSError, match="gRPC refused it though the address is free") as info:
        _listen(refused, _settings(), grpc.ssl_server_credentials([pair]))
    assert "in use" not in str(info.value)
    await refused.stop(0)


async def test_reload_adds_revokes_and_changes_tokens(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="convstream.server.app")
    ci_token = "token-of-the-ci-job"
    dashboard = TokenConfig(name="dashboard", role="watch", sha256=token_hash(WATCH_TOKEN))
    dock = TokenConfig(name="dock-3", role="analyze", sha256=token_hash(ANALYZE_TOKEN))
    ci = TokenConfig(name="ci", role="watch", sha256=token_hash(ci_token))
    server = await _start(_settings())  # no tokens at first: a reload turns them on
    frame = pb.FrameRequest(encoded=jpeg(scene(5, 240, 320)))
    info = pb.GetModelInfoRequest()

    async def reload(*tokens: TokenConfig) -> None:
        await server.reload(server.settings.model_copy(update={"tokens": tokens}))

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)

            async def answer(method: str, request: object, token: str | None) -> grpc.StatusCode:
                try:
                    await getattr(stub, method)(request, metadata=_bearer(token) if token else ())
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            assert await answer("GetModelInfo", info, None) == grpc.StatusCode.OK
            await reload(dashboard, dock)
            assert await answer("GetModelInfo", info, None) == grpc.StatusCode.UNAUTHENTICATED
            assert await answer("Analyze", frame, ANALYZE_TOKEN) == grpc.StatusCode.OK
            assert await answer("Analyze", frame, WATCH_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
            assert "calls need a token from now on" in caplog.text
            # dock-3 revoked, the dashboard may analyze now, ci added
            await reload(dashboard.model_copy(update={"role": "analyze"}), ci)
            assert await answer("Analyze", frame, ANALYZE_TOKEN) == grpc.StatusCode.UNAUTHENTICATED
            assert await answer("Analyze", frame, WATCH_TOKEN) == grpc.StatusCode.OK
            assert await answer("GetModelInfo", info, ci_token) == grpc.StatusCode.OK
            assert await answer("Analyze", frame, ci_token) == grpc.StatusCode.PERMISSION_DENIED
            # a changed secret under the same name: the old token stops working
            await reload(ci.model_copy(update={"sha256": token_hash("a-new-ci-token")}))
            assert await answer("GetModelInfo", info, ci_token) == grpc.StatusCode.UNAUTHENTICATED
            assert await answer("GetModelInfo", info, "a-new-ci-token") == grpc.StatusCode.OK
            # A config with no tokens left is refused, not obeyed: a templating mistake
            # opened the server to every caller with a warning as the only sign (a security
            # review). Turning tokens off takes a restart.
            await reload()
            assert await answer("GetModelInfo", info, None) == grpc.StatusCode.UNAUTHENTICATED
            assert await answer("GetModelInfo", info, "a-new-ci-token") == grpc.StatusCode.OK
            assert server.settings.tokens == (
                ci.model_copy(update={"sha256": token_hash("a-new-ci-token")}),
            )
    finally:
        await server.stop(grace=0)
    log = caplog.text
    assert "tokens: added 'dashboard', 'dock-3'" in log
    assert "tokens: added 'ci'; removed 'dock-3'; 'dashboard': role watch -> analyze" in log
    assert "tokens: removed 'dashboard'; 'ci': a new token (the old one no longer works)" in log
    assert "the config has no tokens; kept the 1 there were" in log
    assert "tokens: removed 'ci'" not in log
    assert "changes only on restart" not in log
    for secret in (WATCH_TOKEN, ANALYZE_TOKEN, ci_token, "a-new-ci-token"):
        assert secret not in log and token_hash(secret) not in log


async def test_a_reload_ends_the_open_calls_its_tokens_refuse(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoked token's open watch and stream carried on: a dashboard whose token was
    removed kept its results (and alerts) until it reconnected. A reload now ends each open
    streaming call that its new tokens would refuse, with that refusal; the others carry on.
    One that is not reading gets its status after the result gRPC already holds for it."""
    caplog.set_level(logging.INFO, logger="convstream.server.app")
    keeper_token = "token-of-the-control-room"
    dashboard = TokenConfig(name="dashboard", role="watch", sha256=token_hash(WATCH_TOKEN))
    dock = TokenConfig(name="dock-3", role="analyze", sha256=token_hash(ANALYZE_TOKEN))
    keeper = TokenConfig(name="control", role="watch", sha256=token_hash(keeper_token))
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=20")
    server = await _start(Settings(port=0, metrics_port=-1, cameras=(belt,)))  # no tokens yet
    watch = pb.WatchCameraRequest(
        camera_id="belt",
        options=pb.ResultOptions(include_heatmap=True, include_frame=True),
        queue_size=1,
    )

    async def reload(*tokens: TokenConfig) -> None:
        await server.reload(server.settings.model_copy(update={"tokens": tokens}))

    async def status(call: grpc.aio.Call) -> tuple[grpc.StatusCode, str, int]:
        """How the call ends, and how many results came before."""
        results = 0
        try:
            while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                results += 1
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", results
        return grpc.StatusCode.OK, "", results

    sent = asyncio.Event()  # set at the end: the stream then stops sending

    async def frames() -> AsyncIterator[pb.FrameRequest]:
        yield pb.FrameRequest(frame_id=1, encoded=jpeg(scene(1, 240, 320)))
        # then nothing: a grpc.aio client refused while a write is under way may read
        # INTERNAL "Internal error from Core" in place of the status (grpc/grpc#36066, in
        # README), as CI's run of this test once did
        await sent.wait()

    address = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            # a watch without a token, when none was needed: the first tokens end it
            anonymous = stub.WatchCamera(watch)
            await anonymous.read()
            await reload(dashboard, dock, keeper)
            code, details, _ = await asyncio.wait_for(status(anonymous), 30)
            assert code == grpc.StatusCode.UNAUTHENTICATED, details
            assert "reload of the server's config: this server needs a token" in details

            revoked = stub.WatchCamera(watch, metadata=_bearer(WATCH_TOKEN))
            # gRPC's smallest window (no BDP probing, 64 KiB): a result or two fill it
            small = grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
            unread = pb_grpc.ConvstreamStub(small).WatchCamera(watch, metadata=_bearer(WATCH_TOKEN))
            lowered = stub.StreamFrames(frames(), metadata=_bearer(ANALYZE_TOKEN))
            kept = stub.WatchCamera(watch, metadata=_bearer(keeper_token))
            for call in (revoked, unread, lowered, kept):
                await call.read()
            await asyncio.sleep(3)  # unread: the server's write of a result waits for it
            # the dashboard's token removed, dock-3's role lowered to watch
            await reload(dock.model_copy(update={"role": "watch"}), keeper)
            code, details, _ = await asyncio.wait_for(status(revoked), 30)
            assert code == grpc.StatusCode.UNAUTHENTICATED, details
            assert "token 'dashboard' was revoked" in details
            code, details, _ = await asyncio.wait_for(status(lowered), 30)
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
            assert "token 'dock-3' has role 'watch'; StreamFrames needs role 'analyze'" in details
            code, details, waited = await asyncio.wait_for(status(unread), 30)
            assert code == grpc.StatusCode.UNAUTHENTICATED and waited > 0, (details, waited)
            await small.close()
            for _ in range(5):  # the keeper's watch goes on
                assert isinstance(await asyncio.wait_for(kept.read(), 10), pb.FrameResult)
            kept.cancel()
            # and so does the server: new calls with a valid token are served
            listed = await stub.ListCameras(pb.ListCamerasRequest(), metadata=_bearer(keeper_token))
            assert [camera.id for camera in listed.cameras] == ["belt"]
    finally:
        sent.set()
        await server.stop(grace=0)
    log = caplog.text
    assert (
        "ended 1 open call that the new tokens refuse: WatchCamera of a call without a token" in log
    )
    assert "ended 3 open calls that the new tokens refuse" in log
    for secret in (WATCH_TOKEN, ANALYZE_TOKEN, keeper_token):
        assert secret not in log and token_hash(secret) not in log


async def test_a_reload_whose_tls_files_fail_still_revokes_a_token(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator revokes a leaked token in the same edit that half-rotates the certificate:
    # the revocation must not wait for the certificate.
    config = tmp_path / "convstream.toml"
    table = '[[tokens]]\nname = "{}"\nrole = "{}"\nsha256 = "{}"\n'
    dock = table.format("dock-3", "analyze", token_hash(ANALYZE_TOKEN))
    dash = table.format("dashboard", "watch", token_hash(WATCH_TOKEN))
    tls = f'tls_cert = "{pki / "server.crt"}"\ntls_key = "{pki / "server.key"}"\n'
    config.write_text(tls + dock + dash)
    flags = {"port": 0, "metrics_port": -1, "cameras": []}
    server = await _start(load_settings(config, environ={}, overrides=flags))
    try:
        config.write_text(tls.replace("server.key", "client.key") + dash)
        changed = load_settings(config, environ={}, overrides=flags)  # no longer refused whole
        await server.reload(changed)
        assert "TLS files kept as before: tls_key" in caplog.text
        # applied in part: an alert sees it (the next restart would fail on those files)
        sample = server.metrics.registry.get_sample_value
        assert sample("convstream_config_last_reload_successful") == 0
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", _ssl(pki)) as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=_bearer(ANALYZE_TOKEN))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=_bearer(WATCH_TOKEN))
            assert reply.sha256  # over the certificate it had
        assert server.settings.tls_key == pki / "server.key"
        # a certificate caught empty, mid-copy, in the edit that revokes the last token left:
        # a traceback before, the reload stopped half-way and the token stayed valid
        empty = tmp_path / "empty.crt"
        empty.write_bytes(b"")
        config.write_text(tls.replace(str(pki / "server.crt"), str(empty)) + dock)
        await server.reload(load_settings(config, environ={}, overrides=flags))
        assert f"tls_cert {empty} is empty" in caplog.text
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", _ssl(pki)) as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=_bearer(WATCH_TOKEN))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(grace=0)


def _peer_name(port: int, ca: Path) -> str:
    """The common name of the certificate a new TLS connection to ``port`` is shown."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        subject = dict(item[0] for item in conn.getpeercert()["subject"])
    return str(subject["commonName"])


async def test_a_certificate_running_out_is_logged_while_the_server_runs(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its end was said at start and at reloads only: a server that ran through the date
    logged nothing while every client began to fail. It now says so every 6 hours (here
    every 0.3 s, for a certificate that ends 3 s after it is made)."""
    from convstream.server import app

    monkeypatch.setattr(app, "TLS_CHECK_EVERY_S", 0.3)
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    valid = (dt.timedelta(minutes=-5), dt.timedelta(seconds=3))
    cert = _cert("short", key, ("convstream test CA", ca_key), server=True, valid=valid)
    _write(tmp_path / "short", cert, key)
    files = {"tls_cert": tmp_path / "short.crt", "tls_key": tmp_path / "short.key"}
    server = await _start(_settings(**files))
    caplog.clear()  # what the start said: the log while it runs is what counts here

    async def logged(level: str, words: str) -> None:
        deadline = time.monotonic() + 15
        while not any(r.levelname == level and words in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, (level, words)
            await asyncio.sleep(0.1)

    try:
        await logged("WARNING", f"tls_cert {files['tls_cert']} expires on ")
        await logged("ERROR", f"tls_cert {files['tls_cert']} expired on ")
        assert "clients refuse it; renew it and send SIGHUP" in caplog.text
    finally:
        await server.stop(grace=0)


async def test_reload_rotates_the_tls_certificate(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)

    def issue(path: Path, name: str, days: int = 30) -> x509.Certificate:
        key = _key()
        valid = (dt.timedelta(minutes=-5), dt.timedelta(days=days))
        cert = _cert(name, key, ("convstream test CA", ca_key), server=True, valid=valid)
        _write(path, cert, key)
        return cert

    def expiry() -> float:
        """The served certificate's expiry, as /metrics has it."""
        text = urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read()
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == "convstream_tls_expiry_timestamp_seconds":
                    assert sample.labels == {"setting": "tls_cert"}  # no client CA here
                    return float(sample.value)
        raise AssertionError("no convstream_tls_expiry_timestamp_seconds in /metrics")

    first = issue(tmp_path / "live", "first")
    live = {"tls_cert": tmp_path / "live.crt", "tls_key": tmp_path / "live.key"}
    settings = _settings(**live).model_copy(update={"metrics_port": 0})
    server = await _start(settings)
    address = f"127.0.0.1:{server.port}"
    info = pb.GetModelInfoRequest()
    try:
        assert await asyncio.to_thread(_peer_name, server.port, pki / "ca.crt") == "first"
        assert await asyncio.to_thread(expiry) == first.not_valid_after_utc.timestamp()
        async with grpc.aio.secure_channel(address, _ssl(pki)) as before:
            assert (await pb_grpc.ConvstreamStub(before).GetModelInfo(info)).sha256
            # in place, as certbot or cert-manager do
            second = issue(tmp_path / "live", "second", days=90)
            await server.reload(settings)
            assert await asyncio.to_thread(_peer_name, server.port, pki / "ca.crt") == "second"
            # the gauge an expiry alert reads follows the rotation
            assert await asyncio.to_thread(expiry) == second.not_valid_after_utc.timestamp()
            # the connection made before keeps working on its own certificate
            assert (await pb_grpc.ConvstreamStub(before).GetModelInfo(info)).sha256
        async with grpc.aio.secure_channel(address, _ssl(pki)) as after:
            assert (await pb_grpc.ConvstreamStub(after).GetModelInfo(info)).sha256
        # files at other paths
        issue(tmp_path / "next", "third")
        moved = {"tls_cert": tmp_path / "next.crt", "tls_key": tmp_path / "next.key"}
        await server.reload(settings.model_copy(update=moved))
        assert await asyncio.to_thread(_peer_name, server.port, pki / "ca.crt") == "third"
        assert server.settings.tls_cert == tmp_path / "next.crt"
        # a key that does not match (a rotation half done) is refused; the certificate stays
        (tmp_path / "next.key").write_bytes((pki / "client.key").read_bytes())
        await server.reload(server.settings)
        assert await asyncio.to_thread(_peer_name, server.port, pki / "ca.crt") == "third"
        assert f"TLS files kept as before: tls_key {tmp_path / 'next.key'} does not" in (
            caplog.text
        )
        # the same at another path: said once, as that, not also as a restart-only change
        await server.reload(server.settings.model_copy(update={"tls_key": pki / "client.key"}))
        assert f"kept as before: tls_key {pki / 'client.key'} does not match" in caplog.text
        assert "changes only on restart" not in caplog.text
        assert server.settings.tls_key == tmp_path / "next.key"
        # clients must present a certificate or not: fixed when the port was bound
        issue(tmp_path / "next", "fourth")
        await server.reload(server.settings.model_copy(update={"tls_client_ca": pki / "ca.crt"}))
        assert "turning mutual TLS on or off needs a restart" in caplog.text
        assert server.settings.tls_client_ca is None
        assert await asyncio.to_thread(_peer_name, server.port, pki / "ca.crt") == "third"
        async with grpc.aio.secure_channel(address, _ssl(pki)) as no_client_cert:
            assert (await pb_grpc.ConvstreamStub(no_client_cert).GetModelInfo(info)).sha256
    finally:
        await server.stop(grace=0)


@pytest.mark.parametrize(
    ("client_ca", "tokens", "warning", "note"),
    [
        (True, False, None, "any holder of a certificate signed by {ca} may call every method"),
        # gRPC listens on IPv6 too for 0.0.0.0: said, for firewalls written for IPv4 (a
        # security review)
        (
            False,
            False,
            "listening on 0.0.0.0 (every IPv4 and IPv6 address of this machine) without "
            "tokens: anyone who can reach",
            None,
        ),
        (False, True, None, None),
    ],
)
async def test_exposure_warning_counts_client_certificates_as_authentication(
    pki: Path,
    caplog: pytest.LogCaptureFixture,
    client_ca: bool,
    tokens: bool,
    warning: str | None,
    note: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="convstream.server.app")
    dock = TokenConfig(name="dock-3", role="analyze", sha256=token_hash(ANALYZE_TOKEN))
    settings = _settings(
        host="0.0.0.0",
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.crt" if client_ca else None,
        tokens=(dock,) if tokens else (),
    )
    server = await _start(settings)
    await server.stop(grace=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    if note is not None:
        assert any(note.format(ca=pki / "ca.crt") in line for line in infos)


async def test_reflection_needs_a_token_in_either_version(token_server: Server) -> None:
    """Any token may use reflection, in v1 or v1alpha; neither answers without one."""
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:

        async def list_services(version: str, metadata: tuple[tuple[str, str], ...]) -> set[str]:
            call = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )(metadata=metadata)
            await call.write(ask)
            await call.done_writing()
            reply = await call.read()
            return {s.name for s in reply.list_services_response.service}

        for version in ("v1", "v1alpha"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await list_services(version, ())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, version
            names = await list_services(version, _bearer(WATCH_TOKEN))
            assert "convstream.v1.Convstream" in names, version


async def test_the_dashboard_says_whether_its_token_is_missing_or_wrong(
    token_server: Server,
) -> None:
    from convstream.dashboard import Dashboard, DashboardSettings

    address = f"127.0.0.1:{token_server.port}"
    for token, says, error in [
        (None, "give this server's token with --token-file FILE or the CONVSTREAM_TOKEN", ""),
        (
            "not-a-token",
            "this server does not take that token: ask its operator for one it does",
            "the token was not recognised: it is none of this server's tokens",
        ),
    ]:
        dash = Dashboard(DashboardSettings(address=address, port=0, poll_s=0.2, token=token))
        await dash.start()
        try:
            for _ in range(100):
                if dash.hub.server.get("refused"):
                    break
                await asyncio.sleep(0.05)
            assert dash.hub.server["refused"], dash.hub.server
            assert says in dash.hub.server["hint"], dash.hub.server
            assert error in dash.hub.server["error"], dash.hub.server
        finally:
            await dash.stop()


async def test_a_revoked_watch_that_reads_nothing_gives_back_its_watcher_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoked call whose client reads nothing: its handler ends at the reload, and the
    camera watcher it held is given back then (not when the garbage collector comes by, nor
    when the client reads); the status follows the result gRPC holds, once it is read."""
    caplog.set_level(logging.WARNING, logger="convstream.server.app")
    dashboard = TokenConfig(name="dashboard", role="watch", sha256=token_hash(WATCH_TOKEN))
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=10")
    server = await _start(Settings(port=0, metrics_port=-1, cameras=(belt,), tokens=(dashboard,)))
    feed = server.cameras.feeds["belt"]  # type: ignore[union-attr]
    request = pb.WatchCameraRequest(
        camera_id="belt",
        options=pb.ResultOptions(include_frame=True, include_heatmap=True, feature_maps=["stage1"]),
    )
    # gRPC's smallest window (no BDP probing, 64 KiB): one result fills it
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", -1)]
    gc.disable()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as ch:
            stub = pb_grpc.ConvstreamStub(ch)
            calls = [stub.WatchCamera(request, metadata=_bearer(WATCH_TOKEN)) for _ in range(4)]
            for call in calls:
                await call.read()
            await asyncio.sleep(1)  # they read no more: the server's next writes wait
            assert len(feed.watchers) == 4
            other = dashboard.model_copy(update={"name": "other", "sha256": token_hash("x")})
            await server.reload(server.settings.model_copy(update={"tokens": (other,)}))
            assert "ended 4 open calls" in caplog.text
            for _ in range(20):
                if not feed.watchers:
                    break
                await asyncio.sleep(0.05)
            assert not feed.watchers, "a revoked call that reads nothing kept its watcher"
            for call in calls:  # read at last: the results held, then the status
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    while await asyncio.wait_for(call.read(), 10) is not grpc.aio.EOF:
                        pass
                assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        gc.enable()
        await server.stop(grace=0)


async def test_a_dashboard_whose_token_is_revoked_stops_getting_frames(
    token_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It went offline (its ListCameras refused) but its watch went on bringing frames, and
    alerts. Revoked, its watch now ends, saying why, and no frame comes after."""
    from convstream.dashboard import Dashboard, DashboardSettings, hub

    # its next try (refused: "not recognised") would overwrite why the watch ended
    monkeypatch.setattr(hub, "RETRY_MIN_S", 30.0)
    monkeypatch.setattr(hub, "RETRY_MAX_S", 60.0)

    address = f"127.0.0.1:{token_server.port}"
    dash = Dashboard(
        DashboardSettings(address=address, port=0, poll_s=0.2, max_fps=10, token=WATCH_TOKEN)
    )
    await dash.start()
    try:
        for _ in range(200):
            belt = dash.hub.cameras.get("belt")
            if belt is not None and belt.frames_received >= 3:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"no frames on the dashboard: {dash.hub.server}")
        kept = tuple(t for t in token_server.settings.tokens if t.name != "dashboard")
        await token_server.reload(token_server.settings.model_copy(update={"tokens": kept}))
        for _ in range(100):
            if dash.hub.server.get("refused") and "UNAUTHENTICATED" in belt.watch_error:
                break
            await asyncio.sleep(0.05)
        assert "token 'dashboard' was revoked" in belt.watch_error, belt.watch_error
        assert dash.hub.server["refused"], dash.hub.server
        assert belt.status["last_error"] == "the convstream server refuses this dashboard's token"
        # a probe is told which (it said the server was not reachable, while it answered)
        with pytest.raises(HTTPError) as ready:
            await asyncio.to_thread(urlopen, f"{dash.url}readyz", timeout=5)
        said = (ready.value.code, ready.value.read().decode())
        assert said == (503, "the convstream server refuses this dashboard\n"), said
        received = belt.frames_received
        await asyncio.sleep(1)  # 10 frames at its pace, had the watch gone on
        assert belt.frames_received == received
    finally:
        await dash.stop()


async def test_a_dashboard_without_a_token_is_told_one_is_needed_once_tokens_are_added() -> None:
    """Tokens added by a reload under a dashboard that has none: its tiles said the server
    refused its token."""
    from convstream.dashboard import Dashboard, DashboardSettings

    belt = CameraConfig(id="belt", source="demo:conveyor?fps=10")
    server = await _start(Settings(port=0, metrics_port=-1, cameras=(belt,)))
    dash = Dashboard(DashboardSettings(address=f"127.0.0.1:{server.port}", port=0, poll_s=0.2))
    await dash.start()
    try:
        for _ in range(200):
            if "belt" in dash.hub.cameras:
                break
            await asyncio.sleep(0.05)
        view = dash.hub.cameras["belt"]
        dock = TokenConfig(name="dock-3", role="analyze", sha256=token_hash(ANALYZE_TOKEN))
        await server.reload(server.settings.model_copy(update={"tokens": (dock,)}))
        for _ in range(100):
            if dash.hub.server.get("refused"):
                break
            await asyncio.sleep(0.05)
        assert dash.hub.server["refused"], dash.hub.server
        said = view.status["last_error"]
        assert said == "the convstream server needs a token; this dashboard has none", said
    finally:
        await dash.stop()
        await server.stop(grace=0)


async def test_mutual_tls_with_several_processes(pki: Path, tmp_path: Path) -> None:
    """`processes = 2` behind mutual TLS: every connection is checked where it lands, and a
    camera in the other process is watched through it (forwarded inside the server)."""
    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(
        f'processes = 2\nport = {port}\nmetrics_port = -1\ntls_cert = "{pki / "server.crt"}"\n'
        f'tls_key = "{pki / "server.key"}"\ntls_client_ca = "{pki / "ca.crt"}"\n'
        '[[cameras]]\nid = "dock-a"\nsource = "demo:conveyor?fps=5"\n'
        '[[cameras]]\nid = "dock-b"\nsource = "demo:conveyor?fps=5"\n'
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "convstream.cli", "serve", f"--config={config}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "with 2 processes" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        options = [("grpc.use_local_subchannel_pool", 1)]
        for _ in range(4):  # separate connections, landing in either process
            address = f"127.0.0.1:{port}"
            async with grpc.aio.secure_channel(address, _ssl(pki, "client"), options) as channel:
                stub = pb_grpc.ConvstreamStub(channel)
                for camera_id in ("dock-a", "dock-b"):
                    call = stub.WatchCamera(pb.WatchCameraRequest(camera_id=camera_id), timeout=20)
                    result = await call.read()
                    call.cancel()
                    assert result is not grpc.aio.EOF and result.source == camera_id
            async with grpc.aio.secure_channel(address, _ssl(pki), options) as no_cert:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await pb_grpc.ConvstreamStub(no_cert).ListCameras(
                        pb.ListCamerasRequest(), timeout=5
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.terminate()  # its processes stop with it, and its folder goes
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()  # its processes get SIGTERM from the kernel (PDEATHSIG)
                process.wait()


async def test_a_connection_that_never_handshakes_is_closed_and_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle TCP connections (no TLS handshake, no HTTP/2 preface) were held a minute or two
    each: 1,100 of them took every file of a server started with 1024 open files, and every
    other client timed out. The handshake now has HANDSHAKE_TIMEOUT_S (10 s; 1 s here)."""
    from convstream.server import app

    monkeypatch.setattr(app, "HANDSHAKE_TIMEOUT_S", 1.0)
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    try:
        idle = socket.create_connection(("127.0.0.1", server.port))
        idle.settimeout(10)
        started = time.monotonic()

        def until_closed() -> None:  # the server's HTTP/2 settings, then its close
            while idle.recv(1024):
                pass

        await asyncio.to_thread(until_closed)
        assert time.monotonic() - started < 5
        idle.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = await pb_grpc.ConvstreamStub(channel).GetModelInfo(pb.GetModelInfoRequest())
            assert info.sha256
    finally:
        await server.stop(grace=0)


async def test_idle_connections_past_the_cap_are_closed_and_the_probes_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20,000 idle HTTP/2 connections (each sent its preface: the handshake timeout does not
    close those) took every file the server could open, and /healthz and the metrics
    stopped with the gRPC port. Past MAX_GRPC_CONNECTIONS (20 here) gRPC closes a new one as
    it comes; the probes answer, and once the idle ones go a client gets in again."""
    from convstream.server import app

    monkeypatch.setattr(app, "MAX_GRPC_CONNECTIONS", 20)
    server = Server(Settings(port=0, metrics_port=0, cameras=()))
    await server.start()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    idle = []
    try:
        for _ in range(40):
            connection = socket.create_connection(("127.0.0.1", server.port))
            connection.sendall(preface)
            idle.append(connection)
        await asyncio.sleep(0.5)

        def closed(connection: socket.socket) -> bool:
            connection.setblocking(False)
            try:
                while connection.recv(65536):
                    pass
                return True
            except BlockingIOError:
                return False
            except OSError:
                return True

        assert sum(map(closed, idle)) >= 20  # the ones past the cap
        health = f"http://127.0.0.1:{server.metrics_port}/healthz"
        answer = await asyncio.to_thread(urllib.request.urlopen, health, timeout=10)
        assert answer.status == 200
        for connection in idle:
            connection.close()
        await asyncio.sleep(0.2)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = await pb_grpc.ConvstreamStub(channel).GetModelInfo(pb.GetModelInfoRequest())
            assert info.sha256
    finally:
        for connection in idle:
            connection.close()
        await server.stop(grace=0)


def test_the_open_files_limit_is_raised_to_the_hard_one_and_a_low_one_is_said() -> None:
    """systemd starts services with 1024 open files (soft), the hard limit far higher: the
    server and the dashboard raise theirs as they start, and say so when even the hard one
    is low."""
    script = (
        "import logging, resource\n"
        "logging.basicConfig(format='%(levelname)s %(message)s')\n"
        "from convstream.v1.rlimit import raise_open_files\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_open_files('the server'), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))\n"
        "print(raise_open_files('the server'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    raised, low = done.stdout.split("\n")[:2]
    assert raised == f"{wanted} {wanted}" and low == "300", done.stdout
    assert (
        "WARNING the server may open 300 files at most (its hard limit: 300), and each "
        "connection takes one" in done.stderr
    )
    assert "LimitNOFILE=65536" in done.stderr


@pytest.mark.parametrize(
    ("files", "cap"),
    [(None, 10_000), (1 << 20, 10_000), (1024, 768), (256, 128), (64, 8)],
)
def test_the_connection_cap_leaves_the_process_files_of_its_own(
    files: int | None, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `ulimit -n 64` the cap was 64 connections, every file the process could open:
    /healthz timed out and gRPC logged "File descriptor limit reached" each second (a
    reliability review). The process keeps OWN_FILES (128) of them whatever the limit."""
    from convstream.server import app

    monkeypatch.setattr(app, "open_files", lambda: files)
    assert app.connection_cap() == cap
