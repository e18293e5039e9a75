"""The flags that reach a server with mutual TLS and a token, in the CLI and the dashboard,
against a real server with real certificates."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_client_transport import make_certificates

from convstream.cli import main
from convstream.client import TLS, Client, Retry
from convstream.client._base import is_local_address
from convstream.client.connection_flags import TOKEN_ENV
from convstream.client.errors import ServerUnavailable
from convstream.dashboard import Dashboard, DashboardSettings
from convstream.server import Server, Settings
from convstream.server.config import TokenConfig
from convstream.server.security import new_token

TOKEN, DIGEST = new_token()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: dict[str, Path]) -> AsyncIterator[Server]:
    settings = Settings(
        port=0,
        metrics_port=-1,
        cameras=(),
        tls_cert=pki["server.pem"],
        tls_key=pki["server.key"],
        tls_client_ca=pki["ca.pem"],
        tokens=(TokenConfig(name="dash", role="watch", sha256=DIGEST),),
    )
    server = Server(settings)
    await server.start()
    yield server
    await server.stop(grace=0)


async def info(server: Server, *flags: str) -> int:
    argv = ["info", "--address", f"127.0.0.1:{server.port}", "--timeout", "5", *flags]
    return await asyncio.to_thread(main, argv)


async def test_cli_reaches_a_mutual_tls_server_with_a_token_kept_out_of_ps(
    server: Server,
    pki: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls = ["--ca", str(pki["ca.pem"]), "--cert", str(pki["client.pem"])]
    tls += ["--key", str(pki["client.key"])]
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    assert await info(server, *tls, "--token-file", str(token_file)) == 0
    assert "CPUExecutionProvider" in capsys.readouterr().out
    # saved by Notepad: a byte-order mark first, a Windows line end (the mark was part of
    # the token: "token must be printable ASCII ... got 44 characters")
    token_file.write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n")
    assert await info(server, *tls, "--token-file", str(token_file)) == 0
    assert "CPUExecutionProvider" in capsys.readouterr().out
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert await info(server, *tls) == 0
    assert "CPUExecutionProvider" in capsys.readouterr().out
    # the name the certificate carries, when the address does not use it
    assert await info(server, *tls, "--server-name", "localhost") == 0
    capsys.readouterr()
    monkeypatch.delenv(TOKEN_ENV)
    assert await info(server, *tls) == 4  # refused
    assert f"give this server's token with --token-file FILE or the {TOKEN_ENV}" in (
        capsys.readouterr().err
    )
    # a name the certificate does not carry: the hint is about the name, not the client's
    assert await info(server, *tls, "--token", TOKEN, "--server-name", "other.example") == 3
    err = capsys.readouterr().err
    assert "does not carry the name 'other.example' given with --server-name NAME" in err
    assert "--cert" not in err
    # no client certificate: the server closes the socket; the hint says what is missing
    assert await info(server, "--ca", str(pki["ca.pem"]), "--token", TOKEN) == 3
    assert "add --cert FILE and --key FILE" in capsys.readouterr().err
    # the Python client says the same in its own terms, and so for a plaintext try
    address = f"127.0.0.1:{server.port}"
    for tls_given, hint in [
        (TLS(ca=pki["ca.pem"]), "If it requires client certificates, add TLS(cert=FILE, key="),
        (None, "If it uses TLS, add TLS(ca=FILE) or TLS() for the system's CAs"),
    ]:
        client = Client(address, tls=tls_given, token=TOKEN, retry=Retry(attempts=1))
        with client, pytest.raises(ServerUnavailable) as failed:
            await asyncio.to_thread(client.model_info)
        assert hint in failed.value.hint and failed.value.hint in str(failed.value)
        assert failed.value.hint not in failed.value.message
    assert await info(server, *tls, "--token", TOKEN, "--token-file", str(token_file)) == 2
    assert "not both" in capsys.readouterr().err
    token_file.write_text("\n")
    assert await info(server, *tls, "--token-file", str(token_file)) == 2
    assert "the first line is empty" in capsys.readouterr().err
    assert await info(server, *tls, "--token-file", str(tmp_path / "none")) == 2
    assert f"--token-file {tmp_path / 'none'}: No such file" in capsys.readouterr().err
    # the CA given as the token file, and a token with a space: where it came from is said
    assert await info(server, *tls, "--token-file", str(pki["ca.pem"])) == 2
    err = capsys.readouterr().err
    assert f"--token-file {pki['ca.pem']}: this is a PEM file's text" in err, err
    monkeypatch.setenv(TOKEN_ENV, "two words")
    assert await info(server, *tls) == 2
    err = capsys.readouterr().err
    assert f"{TOKEN_ENV}: token must be printable ASCII without spaces" in err, err


async def test_cli_says_which_side_of_tls_is_wrong(
    server: Server, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # a CA that did not sign the server's certificate, from the console command, whose
    # output has no gRPC log line per retry ("Handshake failed with error ...") around ours
    command = [sys.executable, "-m", "convstream.cli", "info", "--timeout", "5"]
    command += ["--address", f"127.0.0.1:{server.port}", "--ca", str(pki["client.pem"])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("GRPC_VERBOSITY", None)
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 3 and done.stdout == ""  # no TLS handshake with the server
    assert done.stderr.count("\n") == 1, done.stderr
    assert "not signed by the CA given with --ca" in done.stderr
    # a client certificate and key given the wrong way round: said before any call
    swapped = ("--ca", str(pki["ca.pem"]), "--cert", str(pki["client.key"]))
    assert await info(server, *swapped, "--key", str(pki["client.pem"])) == 2
    told = capsys.readouterr().err
    assert f"--cert {pki['client.key']} holds a private key, expected a PEM certificate" in told
    assert "(--cert and --key swapped?)" in told  # said of the flags, not TLS's fields
    # a key that is not the certificate's: one line, before any call
    mismatched = ("--ca", str(pki["ca.pem"]), "--cert", str(pki["client.pem"]))
    assert await info(server, *mismatched, "--key", str(pki["server.key"])) == 2
    told = capsys.readouterr().err
    assert f"--key {pki['server.key']} is not the key of the certificate" in told, told
    assert told.count("\n") == 1
    # TLS to a plaintext server
    plain = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await plain.start()
    try:
        assert await info(plain, "--ca", str(pki["ca.pem"])) == 3
        assert "the server does not use TLS" in capsys.readouterr().err
    finally:
        await plain.stop(grace=0)


async def test_pem_given_as_text_and_a_bearer_prefixed_token_are_what_they_look_like(
    server: Server, pki: dict[str, Path]
) -> None:
    """Two first-hour mistakes (an integrator's review): a certificate from an environment
    variable, PEM as a str, was read as a file name ("File name too long", the whole
    certificate in the error); a token given with its "Bearer " prefix got "must be
    printable ASCII without spaces". PEM text is taken as PEM; the prefix is named."""
    text = {name: pki[name].read_text() for name in ("ca.pem", "client.pem", "client.key")}
    tls = TLS(ca=text["ca.pem"], cert=text["client.pem"], key=text["client.key"])
    with Client(f"127.0.0.1:{server.port}", tls=tls, token=TOKEN) as client:
        assert await asyncio.to_thread(client.cameras) == []
    with pytest.raises(ValueError, match="TLS ca PEM text holds a private key"):
        TLS(ca=text["client.key"]).credentials()
    with pytest.raises(ValueError, match="leave out the 'Bearer ' prefix"):
        Client(f"127.0.0.1:{server.port}", tls=tls, token=f"Bearer {TOKEN}")


async def test_the_dashboard_reaches_a_mutual_tls_server(
    server: Server, pki: dict[str, Path]
) -> None:
    tls = TLS(ca=pki["ca.pem"], cert=pki["client.pem"], key=pki["client.key"])
    address = f"127.0.0.1:{server.port}"
    dash = Dashboard(DashboardSettings(address=address, port=0, poll_s=0.2, tls=tls, token=TOKEN))
    await dash.start()
    try:
        deadline = time.monotonic() + 10
        # the model is asked first, the cameras next: "ok" once both answered
        while dash.hub.model is None or not dash.hub.server["ok"]:
            assert time.monotonic() < deadline, dash.hub.server
            await asyncio.sleep(0.05)
        assert dash.hub.server == {"ok": True, "error": ""}
    finally:
        await dash.stop()


def test_dashboard_flags_are_checked_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboard", "--ca", str(tmp_path / "missing.pem")]) == 2
    assert "missing.pem" in capsys.readouterr().err
    assert main(["dashboard", "--cert", str(tmp_path / "c.pem")]) == 2
    assert "both cert and key" in capsys.readouterr().err


def test_a_token_in_plaintext_is_refused_unless_the_host_is_this_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    local = ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.2:1", "unix:/tmp/x")
    for address in (*local, "ipv4:127.0.0.1:1", "dns:localhost:1", "dns:///localhost:1"):
        assert is_local_address(address), address
        Client(address, token=TOKEN).close()
    assert not is_local_address("[::1:1")  # no address: not known to be local, no traceback
    for address in ("localhost.evil.example:1", "127.0.0.1.nip.io:1", "convstream.example:1"):
        assert not is_local_address(address), address
        with pytest.raises(ValueError, match=f"refusing to send the token to {address} in "):
            Client(address, token=TOKEN)
        with pytest.raises(ValueError, match="allow_plaintext_token=True"):
            DashboardSettings(address=address, token=TOKEN)
        Client(address, token=TOKEN, tls=TLS()).close()  # over TLS, or said to be private
        Client(address, token=TOKEN, allow_plaintext_token=True).close()
        Client(address).close()  # no token: nothing to leak
        DashboardSettings(address=address, token=TOKEN, allow_plaintext_token=True)
    # the commands say it in their flags, naming where the token came from
    far = "convstream.example:1"
    assert main(["cameras", "--address", far, "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert f"refusing to send the token of --token to {far} in plaintext" in err
    assert "connect with TLS (--ca FILE, or --tls), or pass --allow-plaintext-token" in err
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert main(["dashboard", "--address", far, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"convstream dashboard: refusing to send the token of ${TOKEN_ENV} to {far}" in err


async def test_a_certificate_that_names_its_host_in_cn_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate with CN=127.0.0.1 and no subjectAltName loaded, `--check-config` said
    "config OK", and every client failed with gRPC's "call host does not match SSL server
    name", which the commands read as a refused token (exit 4, "give this server's token"),
    on a server with no tokens. The server now warns of it, and the client says it is TLS."""
    from convstream.v1.pem import check_pem, read_pem

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    files = ["-keyout", "k.pem", "-out", "c.pem"]
    subprocess.run(
        ["openssl", "req", "-x509", *key, "-subj", "/CN=127.0.0.1", "-days", "1", *files],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    cert, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    warnings = check_pem(read_pem(cert, key_file, None), cert, key_file, None)
    assert any(f"tls_cert {cert} has no subjectAltName" in w for w in warnings), warnings
    settings = Settings(port=0, metrics_port=-1, cameras=(), tls_cert=cert, tls_key=key_file)
    server = Server(settings)
    await server.start()
    try:
        assert await info(server, "--ca", str(cert)) == 3  # the server's side: not a token
        err = capsys.readouterr().err
        assert "cannot be reached over TLS: call host does not match SSL server name" in err
        assert "does not name the address given among its subjectAltNames" in err
        assert "token" not in err
        assert await info(server, "--ca", str(cert), "--server-name", "127.0.0.1") == 0
        # the dashboard too: its server line says TLS, and it does not wait as for a token
        dashboard = Dashboard(
            DashboardSettings(address=f"127.0.0.1:{server.port}", port=0, tls=TLS(ca=cert))
        )
        await dashboard.start()
        try:
            deadline = time.monotonic() + 20
            while "hint" not in dashboard.hub.server:
                assert time.monotonic() < deadline, "the dashboard never tried"
                await asyncio.sleep(0.1)
            said = dashboard.hub.server
            assert said["refused"] is False and "subjectAltNames" in said["hint"], said
        finally:
            await dashboard.stop()
    finally:
        await server.stop(grace=0)


def test_a_certificate_of_another_host_is_warned_of_on_a_loopback_server(tmp_path: Path) -> None:
    """A certificate for another host (SAN DNS:wrong.example) copied into place passed
    `--check-config` and the reload, and every new client on this machine then failed its
    hostname check. A server on loopback alone warns of a certificate naming no loopback
    address nor localhost; one listening wider cannot know the names its clients dial. The
    log says which names the served certificate has, and until when."""
    from convstream.v1.pem import describe, read_pem

    def certificate(name: str, san: str) -> tuple[Path, Path]:
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        files = ["-keyout", f"{name}.key", "-out", f"{name}.pem", "-addext", san]
        subprocess.run(
            ["openssl", "req", "-x509", *key, "-subj", f"/CN={name}", "-days", "2", *files],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )
        return tmp_path / f"{name}.pem", tmp_path / f"{name}.key"

    wrong = certificate("wrong", "subjectAltName=DNS:wrong.example,IP:10.1.2.3")
    warned = read_pem(*wrong, None, host="127.0.0.1").warnings
    assert any(
        "names DNS:wrong.example, IP:10.1.2.3, and the server listens on 127.0.0.1" in w
        and "--server-name" in w
        for w in warned
    ), warned
    assert not any("listens on" in w for w in read_pem(*wrong, None, host="0.0.0.0").warnings)
    local = certificate("local", "subjectAltName=IP:127.0.0.1,DNS:LocalHost.example")
    assert not any("listens on" in w for w in read_pem(*local, None, host="127.0.0.1").warnings)
    # a server on ::1 is dialled at ::1 or localhost, which this one does not name
    assert any("listens on ::1" in w for w in read_pem(*local, None, host="::1").warnings)
    upper = certificate("upper", "subjectAltName=DNS:LOCALHOST")  # names are without case
    assert not any("listens on" in w for w in read_pem(*upper, None, host="::1").warnings)
    assert not any("listens on" in w for w in read_pem(*local, None, host="LOCALHOST").warnings)
    # localhost reaches 127.0.0.1 or ::1: a server on 127.0.0.2 is dialled by its address
    assert any(
        "listens on 127.0.0.2" in w for w in read_pem(*upper, None, host="127.0.0.2").warnings
    )
    said = describe(read_pem(*wrong, None))
    assert re.fullmatch(
        r"for DNS:wrong\.example, IP:10\.1\.2\.3, until \d{4}-\d\d-\d\d \d\d:\d\d UTC", said
    ), said


def test_a_token_file_every_user_can_read_is_warned_of_as_a_key_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One rule for files of secrets, the server's for its key: every user may read it
    (0644) is said; a group's (0640, as docs/production.md sets /etc/convstream up) is not.
    The dashboard called a 0640 page token "readable by other users" and asked for 600,
    which the service user then could not read (an operator's review)."""
    import argparse

    from convstream.client.connection_flags import token_from_flags

    token_file = tmp_path / "client.token"
    token_file.write_text(new_token()[0] + "\n")
    args = argparse.Namespace(token=None, token_file=token_file)
    for mode, warned in ((0o644, True), (0o640, False), (0o600, False)):
        token_file.chmod(mode)
        assert token_from_flags(args, environ={}) == token_file.read_text().strip()
        err = capsys.readouterr().err
        said = f"--token-file {token_file} can be read by every user of this machine"
        assert (f"warning: {said} (mode {mode:04o})" in err) == warned, err
