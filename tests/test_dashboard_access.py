"""Who may see the dashboard: its access token, its login form, its session cookie, HTTPS.
A real dashboard, a real server with a demo camera where frames matter, headless Chromium
for what an operator does (test_dashboard.py's fixtures); screenshots in
tests/dashboard_artifacts/."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import pytest
import test_dashboard
from test_client_transport import make_certificates
from test_dashboard import _tile, _wait_frames, serving

from convstream.dashboard import Dashboard, DashboardSettings
from convstream.dashboard.access import COOKIE, read_access_token
from convstream.dashboard.app import exposure_warnings
from convstream.server import CameraConfig

browser = test_dashboard.browser
artifacts = test_dashboard.artifacts

TOKEN = "a-wall-display-token-for-dock-3"
BELT = CameraConfig(id="belt", source="demo:conveyor?fps=4")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _dashboard(address: str, **settings: Any) -> AsyncIterator[Dashboard]:
    dash = Dashboard(DashboardSettings(address=address, port=0, poll_s=0.5, **settings))
    await dash.start()
    try:
        yield dash
    finally:
        await dash.stop()


async def test_without_the_token_nothing_but_the_login_form_is_shown() -> None:
    """With an access token, the page sends a stranger to its login form, and its live data,
    state and alert images answer 401; /healthz and the stylesheet stay open. The form lets
    the token's holder in with a session cookie (HttpOnly, SameSite=Lax, not the token);
    a script may send the token as a bearer instead."""
    async with (
        _dashboard(f"127.0.0.1:{_closed_port()}", access_token=TOKEN) as dash,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,  # an IP host
    ):
        url = dash.url
        async with http.get(url, allow_redirects=False) as page:
            assert page.status == 303 and page.headers["Location"] == "login"
        for path in ("api/state", "ws", "alerts/1.jpg"):
            async with http.get(url + path) as refused:
                assert refused.status == 401, path
                assert "needs its access token" in await refused.text()
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        for path in ("healthz", "static/style.css"):
            async with http.get(url + path) as open_:
                assert open_.status == 200, path
        for path in ("login/../api/state", "healthz/x", "loginx", "static"):  # no way around
            async with http.get(url + path) as refused:
                assert refused.status in (401, 404), path
        async with http.get(url + "login") as form:
            assert form.status == 200
            body = await form.text()
            assert 'type="password"' in body and "needs its access token" in body
            assert TOKEN not in body

        # a wrong token: back to the form, which says so, a second later
        started = time.monotonic()
        async with http.post(
            url + "login", data={"token": "guess"}, allow_redirects=False
        ) as wrong:
            assert wrong.status == 303 and wrong.headers["Location"] == "login?failed"
            assert not wrong.cookies
        assert time.monotonic() - started >= 0.9
        async with http.get(url + "login?failed") as again:
            assert again.status == 401
            assert "not this dashboard's access token" in await again.text()
        # a form posted by a page of another site is refused
        other = {"Origin": "http://evil.example"}
        async with http.post(url + "login", data={"token": TOKEN}, headers=other) as forged:
            assert forged.status == 403
        async with http.post(url + "logout", headers=other) as forged:  # nor logs one out
            assert forged.status == 403

        # the token: a session cookie, not the token itself
        async with http.post(url + "login", data={"token": TOKEN}, allow_redirects=False) as ok:
            assert ok.status == 303 and ok.headers["Location"] == "./"
            # named by the port: browsers keep cookies per host, and two dashboards of one
            # host must not take each other's
            cookie = ok.cookies[f"{COOKIE}_{dash.port}"]
            assert cookie.value and TOKEN not in cookie.value
            assert cookie["httponly"] and cookie["samesite"] == "Lax"
            assert not cookie["secure"]  # plain HTTP: a Secure cookie would never come back
        async with http.get(url + "api/state") as state:
            assert state.status == 200
            assert "cameras" in await state.json()
        async with http.ws_connect(url + "ws") as ws:
            hello = json.loads((await ws.receive(timeout=10)).data)
            assert hello["type"] == "hello"

    # restarted with the same token: a script sends it as a bearer, and a session goes on
    async with (
        _dashboard(f"127.0.0.1:{_closed_port()}", access_token=TOKEN) as dash,
        aiohttp.ClientSession() as http,
    ):
        for header, status in ((f"Bearer {TOKEN}", 200), ("Bearer guess", 401), (TOKEN, 401)):
            started = time.monotonic()
            async with http.get(dash.url + "api/state", headers={"Authorization": header}) as r:
                assert r.status == status, header
            if header == "Bearer guess":  # a wrong bearer token costs a second, as a login
                assert time.monotonic() - started >= 0.9
        jar = {f"{COOKIE}_{dash.port}": cookie.value}
        async with http.get(dash.url + "api/state", cookies=jar) as same:
            assert same.status == 200
    async with (
        _dashboard(f"127.0.0.1:{_closed_port()}", access_token=TOKEN + "-new") as dash,
        aiohttp.ClientSession() as http,
        http.get(dash.url + "api/state", cookies={f"{COOKIE}_{dash.port}": cookie.value}) as old,
    ):
        assert old.status == 401  # a new token ends every session


async def test_a_session_ends_after_30_days_unless_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session cookie carries when it was issued: a copied one stops working after
    SESSION_DAYS, whatever the browser does with its Max-Age; one in use is renewed."""
    from convstream.dashboard import access

    async with (
        _dashboard(f"127.0.0.1:{_closed_port()}", access_token=TOKEN) as dash,
        aiohttp.ClientSession() as http,
    ):
        name = f"{COOKIE}_{dash.port}"

        async def session_issued(days_ago: float) -> str:
            then = time.time() - days_ago * 86400
            monkeypatch.setattr(access, "time", SimpleNamespace(time=lambda: then))
            try:
                async with http.post(
                    dash.url + "login", data={"token": TOKEN}, allow_redirects=False
                ) as ok:
                    return ok.cookies[name].value
            finally:
                monkeypatch.undo()

        for days, status in ((29.9, 200), (30.1, 401)):
            value = await session_issued(days)
            async with http.get(dash.url + "api/state", cookies={name: value}) as answer:
                assert answer.status == status, days
        forged = value.split(".", 1)[0] + "." + "0" * 64  # a time without its HMAC
        async with http.get(dash.url + "api/state", cookies={name: forged}) as answer:
            assert answer.status == 401
        # what no session holds is refused, not a server error with its traceback logged:
        # a digit int() refuses, a time no clock reaches, a Host port no browser sends
        for cookie in ("\u00b2.x", "9" * 400 + ".x", "1." + "\u00e9" * 64):
            async with http.get(
                dash.url + "api/state", headers={"Cookie": f"{name}={cookie}"}
            ) as answer:
                assert answer.status == 401, cookie
        for host in ("127.0.0.1:99999", "127.0.0.1:abc"):
            async with http.get(dash.url + "api/state", headers={"Host": host}) as answer:
                assert answer.status == 401, host
        # a session in use is renewed once a day: a wall display stays logged in
        for days, renewed in ((0.5, False), (2, True)):
            value = await session_issued(days)
            async with http.head(dash.url + "api/state", cookies={name: value}) as answer:
                assert answer.status == 200
                assert (name in answer.cookies) is renewed, days
                if renewed:
                    fresh = answer.cookies[name].value
                    assert time.time() - int(fresh.split(".")[0]) < 60


@pytest.mark.asyncio(loop_scope="module")
async def test_an_operator_logs_in_once_and_is_sent_back_when_the_token_changes(
    browser: Any, artifacts: Path
) -> None:
    """In Chromium: the page asks for the token, a wrong one is said, the right one shows the
    cameras live; when the dashboard comes back with another token, the open page goes back
    to the form by itself instead of retrying for ever."""
    async with serving((BELT,)) as server:
        address = f"127.0.0.1:{server.port}"
        async with _dashboard(address, access_token=TOKEN) as dash:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(dash.url)
            assert page.url == dash.url + "login"
            await page.screenshot(path=artifacts / "login.png")
            await page.fill("#token", "not-the-token")
            await page.click("button[type=submit]")
            await page.wait_for_url(dash.url + "login?failed", timeout=10000)
            assert "not this dashboard's access token" in await page.inner_text(".login")
            await page.screenshot(path=artifacts / "login-failed.png")
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(dash.url, timeout=10000)
            await _wait_frames(page, "belt", 2, timeout=20.0)
            await page.screenshot(path=artifacts / "logged-in.png")
            port = dash.port
        # the dashboard restarted on the same port with a new token
        settings = DashboardSettings(address=address, port=port, access_token=TOKEN + "-new")
        again = Dashboard(settings)
        await again.start()
        try:
            await page.wait_for_url(again.url + "login?changed", timeout=20000)
            # why, for a kiosk that stood at the plain "needs its access token"
            assert "login has ended: the dashboard's access token changed" in (
                await page.inner_text(".login")
            )
            await page.fill("#token", TOKEN + "-new")
            await page.click("button[type=submit]")
            await page.wait_for_url(again.url, timeout=10000)
            await _wait_frames(page, "belt", 0, timeout=20.0)  # its tile comes with the hello
        finally:
            await again.stop()
        assert errors == []
        await context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_page_over_https(browser: Any, artifacts: Path, tmp_path: Path) -> None:
    """With its own certificate the page is served over HTTPS only: its frames come over
    wss, its session cookie is Secure, and a plain HTTP request gets no page."""
    pki = make_certificates(tmp_path)
    async with serving((BELT,)) as server:
        https = {"https_cert": pki["server.pem"], "https_key": pki["server.key"]}
        async with _dashboard(f"127.0.0.1:{server.port}", access_token=TOKEN, **https) as dash:
            assert dash.url.startswith("https://127.0.0.1:")
            trust = ssl.create_default_context(cafile=str(pki["ca.pem"]))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
                # a plain http:// page of the same host and port is not the page's own: a
                # network in between could have written it
                plain_origin = {"Origin": dash.url.replace("https://", "http://").rstrip("/")}
                async with http.post(
                    dash.url + "login", data={"token": TOKEN}, headers=plain_origin
                ) as forged:
                    assert forged.status == 403
                async with http.post(
                    dash.url + "login", data={"token": TOKEN}, allow_redirects=False
                ) as ok:
                    cookie = ok.cookies[f"__Host-{COOKIE}_{dash.port}"]  # the host's own
                    assert ok.status == 303 and cookie["secure"]
                async with http.get(dash.url + "healthz") as probe:
                    # HSTS would hold for every port of the host, the metrics' too
                    assert "Strict-Transport-Security" not in probe.headers
                # http:// to the same port: sent to https://, not an empty reply
                plain = dash.url.replace("https://", "http://")
                async with http.get(plain + "api/state?x=1", allow_redirects=False) as moved:
                    assert moved.status == 308
                    assert moved.headers["Location"] == dash.url + "api/state?x=1"
                async with http.get(
                    plain, headers={"Host": "evil.example"}, allow_redirects=False
                ) as elsewhere:
                    assert elsewhere.status == 421  # not a name the page answers to
            # a connection that says nothing, and one that breaks its handshake, are closed
            # and cost the page nothing
            silent = socket.create_connection(("127.0.0.1", dash.port))
            broken = socket.create_connection(("127.0.0.1", dash.port))
            broken.sendall(b"\x16\x03\x01\x00\x05hello")
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            await page.goto(plain)  # as an operator types it
            assert page.url == dash.url + "login"
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(dash.url, timeout=10000)
            await _wait_frames(page, "belt", 1, timeout=20.0)
            assert await page.evaluate("location.protocol") == "https:"
            # a laptop handed on: "log out" ends this browser's session, its __Host- cookie
            # gone (Chromium keeps one whose removal is not Secure), the page asks again
            assert [c["name"] for c in await context.cookies()] == [f"__Host-{COOKIE}_{dash.port}"]
            await page.click("#logout button")
            await page.wait_for_url(dash.url + "login?out", timeout=10000)
            assert "Logged out" in await page.inner_text(".login")
            assert await context.cookies() == []
            await page.goto(dash.url)
            assert page.url == dash.url + "login"
            await context.close()
            silent.close()
            broken.close()


async def test_a_half_sent_request_does_not_hold_a_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A byte, or a request line without its end, held aiohttp's connection for its default
    hour (its keep-alive timeout), so a sender could use up the page's file descriptors; over
    HTTP, over HTTPS and on the HTTPS port's redirect to https. The live WebSocket stays."""
    from convstream.dashboard import https

    monkeypatch.setattr(https, "IDLE_CONNECTION_S", 1.0)
    pki = make_certificates(tmp_path)
    trust = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    for tls in (False, True):
        files = {"https_cert": pki["server.pem"], "https_key": pki["server.key"]} if tls else {}
        async with (
            _dashboard(f"127.0.0.1:{_closed_port()}", **files) as dash,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http,
            http.ws_connect(dash.url + "ws") as ws,
        ):
            half = b"GET / HTTP/1.1\r\nHo"
            held = [socket.create_connection(("127.0.0.1", dash.port)) for _ in range(2)]
            held[0].sendall(half)  # plain HTTP: the page's, or the redirect's on the TLS port
            if tls:  # the handshake needs the page to answer: beside the loop too
                wrap = trust.wrap_socket
                held[1] = await asyncio.to_thread(wrap, held[1], server_hostname="localhost")
            held[1].sendall(half)
            deadline = time.monotonic() + 10
            for connection in held:
                connection.settimeout(max(0.1, deadline - time.monotonic()))
                # closed by the page (read beside the loop, which the page runs on)
                assert await asyncio.to_thread(connection.recv, 1024) == b"", tls
                connection.close()
            assert time.monotonic() < deadline
            # the WebSocket, quiet for longer than that, was left open
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "hello"
            await asyncio.sleep(1.5)
            await ws.send_str("{}")
            assert not ws.closed, tls


async def test_one_address_holds_a_bounded_number_of_connections_and_silent_ones_go(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """5,000 connections from one address, each sending a header line every 4 s, were all
    held (aiohttp reads a request's headers with no deadline), and past the process's open
    files asyncio logged each failed accept with its traceback: 158 MB of log in 50 s. One
    address now holds at most MAX_CONNECTIONS_PER_HOST (4 here), its next ones closed as
    they come and said once; one that sends nothing for FIRST_BYTE_S (1 s here) is closed."""
    from convstream.dashboard import port

    monkeypatch.setattr(port, "MAX_CONNECTIONS_PER_HOST", 4)
    monkeypatch.setattr(port, "FIRST_BYTE_S", 1.0)
    async with (
        _dashboard(f"127.0.0.1:{_closed_port()}") as dash,
        aiohttp.ClientSession() as http,
    ):
        slow = [socket.create_connection(("127.0.0.1", dash.port)) for _ in range(4)]
        for connection in slow[:2]:
            connection.sendall(b"GET / HTTP/1.1\r\n")  # headers, slowly
        extra = [socket.create_connection(("127.0.0.1", dash.port)) for _ in range(3)]
        for connection in extra:  # past the cap: closed at once
            connection.settimeout(5)
            assert await asyncio.to_thread(connection.recv, 1024) == b""
            connection.close()
        said = [r for r in caplog.records if "connections to the page, the most" in r.message]
        assert len(said) == 1 and "127.0.0.1 holds 4" in said[0].message
        for connection in slow[2:]:  # silent: closed after FIRST_BYTE_S
            connection.settimeout(5)
            assert await asyncio.to_thread(connection.recv, 1024) == b""
            connection.close()
        async with http.get(dash.url + "healthz") as reply:  # room again
            assert reply.status == 200
        for connection in slow[:2]:
            connection.close()


async def test_a_full_page_port_ends_a_half_sent_connection_for_a_new_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A security review's 1,280 half-sent requests from 10 addresses were all held, each
    address under its own cap: nothing bounded them all. Past MAX_CONNECTIONS (6 here) a new
    connection ends the oldest one not yet let in: closing every new one
    instead (the rule before) let half-sent requests from a few addresses keep every page
    out. Connections that have sent a request (the open pages') are never ended for it, and
    when every one has, a new connection is closed as it comes."""
    from convstream.dashboard import port

    monkeypatch.setattr(port, "MAX_CONNECTIONS", 6)
    # the half-sent requests are ended by the cap alone, not by their headers' deadline
    # (10 s, which a slow machine's run of this test came near)
    monkeypatch.setattr(port, "HEADERS_S", 600.0)
    probe = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # kept alive after

    def connect(host: str) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", dash.port), source_address=(host, 0))
        connection.settimeout(5)
        return connection

    async def answered(connection: socket.socket) -> bool:
        connection.sendall(probe)
        return (await asyncio.to_thread(connection.recv, 1024)).startswith(b"HTTP/1.1 200")

    def still_open(connection: socket.socket) -> bool:
        connection.settimeout(0.2)
        try:
            return connection.recv(1024) != b""
        except TimeoutError:
            return True

    async with _dashboard(f"127.0.0.1:{_closed_port()}") as dash:
        pages = [connect("127.0.0.5") for _ in range(2)]
        for page in pages:
            assert await answered(page)
        slow = [connect("127.0.0.2") for _ in range(3)] + [connect("127.0.0.3")]
        for connection in slow:
            connection.sendall(b"GET / HTTP/1.1\r\n")  # headers, slowly
            await asyncio.sleep(0.05)  # accepted in this order
        await asyncio.sleep(0.3)  # all six accepted
        newcomer = connect("127.0.0.4")
        assert await answered(newcomer)  # served: the oldest half-sent one made room
        assert await asyncio.to_thread(slow[0].recv, 1024) == b""
        assert all(still_open(c) for c in [*slow[1:], *pages])
        said = [r.message for r in caplog.records if "the most it keeps" in r.message]
        assert len(said) == 1 and "the oldest not yet let in" in said[0], said
        assert "127.0.0.2's" in said[0]
        # every one has sent a request: a new connection is closed, the pages keep theirs
        for connection in slow[1:]:
            connection.close()
        await asyncio.sleep(0.3)
        full = [connect("127.0.0.3") for _ in range(3)]
        for connection in full:
            assert await answered(connection)
        late = connect("127.0.0.6")
        late.settimeout(5)
        assert await asyncio.to_thread(late.recv, 1024) == b""  # closed, unanswered
        assert all(still_open(c) for c in [*pages, newcomer, *full])
        said = [r.message for r in caplog.records if "every one let in" in r.message]
        assert len(said) == 1 and "127.0.0.3 holds 3" in said[0], said
        for connection in [*slow, *pages, newcomer, *full, late]:
            connection.close()


async def test_a_full_page_port_holds_its_cap_through_a_burst_and_refused_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ways past the rule above (a diff review's): a burst of newcomers each ended the same
    half-sent connection, counted open until the loop closed it, and all came in (13 held
    against a cap of 4); and a whole request answered 421 (or 401), kept alive, made its
    connection a page's, never ended, so such connections held every place."""
    from convstream.dashboard import port

    monkeypatch.setattr(port, "MAX_CONNECTIONS", 4)

    def still_open(connection: socket.socket) -> bool:
        connection.settimeout(0.1)
        try:
            return connection.recv(1024) != b""
        except TimeoutError:
            return True
        except ConnectionResetError:
            return False

    token = "s3cret-token-for-the-page"
    async with _dashboard(f"127.0.0.1:{_closed_port()}", access_token=token) as dash:
        address = ("127.0.0.1", dash.port)
        held = [socket.create_connection(address) for _ in range(4)]
        for connection in held:
            connection.sendall(b"GET / HTTP/1.1\r\n")  # headers, slowly
        await asyncio.sleep(0.3)
        burst = [socket.create_connection(address) for _ in range(10)]
        # each newcomer ends a held one as the loop accepts it: a slow machine's loop had
        # not reached them all in a fixed 0.3 s
        deadline = time.monotonic() + 10
        while (still := sum(still_open(c) for c in [*held, *burst])) > 4:
            assert time.monotonic() < deadline, f"{still} of 14 connections held, cap 4"
            await asyncio.sleep(0.2)
        for connection in [*held, *burst]:
            connection.close()
        await asyncio.sleep(0.3)
        refused = []
        for host in ("elsewhere.example", "127.0.0.1"):  # 421, then 401 (no login)
            for _ in range(2):
                connection = socket.create_connection(address)
                connection.sendall(f"GET /api/state HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                answer = await asyncio.to_thread(connection.recv, 1024)
                assert answer.split(b" ")[1] in (b"421", b"401"), answer
                refused.append(connection)  # kept alive
        newcomer = socket.create_connection(address)
        newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        newcomer.settimeout(5)
        assert (await asyncio.to_thread(newcomer.recv, 1024)).startswith(b"HTTP/1.1 200")
        assert sum(still_open(c) for c in refused) == 3  # the oldest made room
        for connection in [*refused, newcomer]:
            connection.close()


async def test_a_requests_headers_have_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header line every few seconds held a connection until aiohttp's keep-alive timeout
    (75 s), and the next such connection took its place. A request's headers must arrive
    within HEADERS_S (0.5 s here) of its first byte: on a new connection, on one kept alive
    after a request, and on the HTTPS port's redirect; a request sent in pieces inside it,
    and a WebSocket open for longer, are kept."""
    from convstream.dashboard import port

    # 2 s: a request whose lines come 0.1 s apart is well inside it on a slow machine too
    # (at 0.5 s a stall of 0.3 s closed it)
    monkeypatch.setattr(port, "HEADERS_S", 2.0)
    request = [b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"]

    async def drip(connection: socket.socket, lines: list[bytes], every: float) -> bytes:
        """Send each line ``every`` s apart; what came back (b"" once closed)."""
        for line in lines:
            try:
                connection.sendall(line)
            except OSError:
                return b""
            await asyncio.sleep(every)
        connection.settimeout(5)
        try:
            return await asyncio.to_thread(connection.recv, 1024)
        except ConnectionResetError:
            return b""

    async with (
        _dashboard(f"127.0.0.1:{_closed_port()}") as dash,
        aiohttp.ClientSession() as http,
        http.ws_connect(dash.url + "ws") as ws,
    ):
        address = ("127.0.0.1", dash.port)
        with socket.create_connection(address) as dripping:
            began = time.monotonic()
            lines = [b"GET / HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 8
            assert await drip(dripping, lines, 0.5) == b""
            assert time.monotonic() - began < 10  # not the keep-alive's 75 s
        with socket.create_connection(address) as pieces:  # slow, but inside the deadline
            assert (await drip(pieces, request, 0.1)).startswith(b"HTTP/1.1 200")
            # kept alive after it: the next request's headers have the same deadline
            assert await drip(pieces, [b"GET / HTTP/1.1\r\n"] + [b"X: 1\r\n"] * 8, 0.5) == b""
        await asyncio.sleep(2.5)  # the WebSocket, open past HEADERS_S, is kept
        await ws.send_str("{}")
        assert json.loads((await ws.receive(timeout=10)).data)["type"] == "hello"
        assert not ws.closed


async def test_sighup_reloads_the_pages_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewed certificate, put in the files' place, is served to new connections after a
    SIGHUP (Dashboard.reload), without a restart that drops every open page; files that do
    not load leave the one in use."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = make_certificates(tmp_path / "old"), make_certificates(tmp_path / "new")
    cert, key = tmp_path / "page.pem", tmp_path / "page.key"
    cert.write_bytes(old["server.pem"].read_bytes())
    key.write_bytes(old["server.key"].read_bytes())

    async def served(dash: Dashboard, ca: Path) -> bool:
        """Whether a new connection's certificate is one that ``ca`` signed."""
        trust = ssl.create_default_context(cafile=str(ca))
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http,
                http.get(dash.url + "healthz") as probe,
            ):
                return probe.status == 200
        except aiohttp.ClientConnectorCertificateError:
            return False

    async with _dashboard(f"127.0.0.1:{_closed_port()}", https_cert=cert, https_key=key) as dash:
        assert await served(dash, old["ca.pem"]) and not await served(dash, new["ca.pem"])
        cert.write_text("not a certificate\n")  # half-way through a renewal
        dash.reload()
        assert "certificate was not reloaded; it keeps the one in use" in caplog.text
        assert await served(dash, old["ca.pem"])
        cert.write_bytes(new["server.pem"].read_bytes())
        key.write_bytes(new["server.key"].read_bytes())
        dash.reload()
        assert await served(dash, new["ca.pem"]) and not await served(dash, old["ca.pem"])
        assert f"certificate reloaded from {cert}" in caplog.text


def test_the_token_file_is_made_private_when_missing_and_read_when_there(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dashboard.token"
    token, made = read_access_token(path)
    assert made and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_access_token(path) == (token, False)
    path.write_text("short\n")
    with pytest.raises(ValueError, match="holds 5 characters; an access token needs 16"):
        read_access_token(path)


def test_the_dashboard_command_makes_its_token_and_checks_its_https_files(
    tmp_path: Path,
) -> None:
    """`convstream dashboard --access-token-file F` makes F when it is not there and says so;
    half of the HTTPS pair, or files that are no certificate, stop it before it starts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    token_file = tmp_path / "wall.token"
    command = [sys.executable, "-m", "convstream.cli", "dashboard", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--access-token-file", str(token_file), "--address", "127.0.0.1:1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(f"made a new access token in {token_file} (mode 600)")
        assert process.stdout.readline().startswith("convstream dashboard on http://127.0.0.1:")
        # SIGHUP, as a unit's ExecReload sends (it ended the dashboard without a word)
        process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert process.poll() is None
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0  # SIGTERM: a clean stop
    assert "SIGHUP: nothing to reload: this page has no certificate" in err
    assert len(token_file.read_text().strip()) >= 40
    half = subprocess.run(
        [*command, "--https-cert", str(token_file)], capture_output=True, text=True, env=env
    )
    assert half.returncode == 2
    assert "--https-cert and --https-key go together" in half.stderr
    assert "\n" not in token_file.read_text()  # as `convstream token --token-file` writes
    token_file.chmod(0o644)  # as a copy with cp may leave it
    https = ["--https-cert", str(token_file), "--https-key", str(token_file)]  # no PEM at all
    wrong = subprocess.run(
        [*command, "--access-token-file", str(token_file), *https],
        capture_output=True,
        text=True,
        env=env,
    )
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
    said = f"--access-token-file {token_file} can be read by every user of this machine"
    assert f"{said} (mode 0644)" in wrong.stderr
    assert "must be a PEM certificate (its chain after it) and its unencrypted PEM key" in (
        wrong.stderr
    )

    def refused(*flags: str) -> str:
        run = subprocess.run([*command, *flags], capture_output=True, text=True, env=env)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        return run.stderr

    (tmp_path / "pki").mkdir()
    pki = make_certificates(tmp_path / "pki")
    missing = tmp_path / "page.crt"
    assert f"--https-cert {missing}: no such file" in refused(
        "--https-cert", str(missing), "--https-key", str(pki["server.key"])
    )
    # as its log's lines are, for a shipper that parses them: one JSON object
    said = json.loads(
        refused(
            "--https-cert",
            str(missing),
            "--https-key",
            str(pki["server.key"]),
            "--log-format",
            "json",
        )
    )
    assert (
        said["level"] == "CRITICAL" and f"--https-cert {missing}: no such file" in (said["message"])
    )
    assert "is not the key of the certificate in --https-cert" in refused(
        "--https-cert", str(pki["server.pem"]), "--https-key", str(pki["client.key"])
    )
    assert f"--access-token-file {tmp_path}: is a directory" in refused(
        "--access-token-file", str(tmp_path)
    )
    with socket.socket() as taken:  # a port another program holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        run = subprocess.run(
            [*command[:-2], "--port", port, "--address", "127.0.0.1:1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert run.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in run.stderr and "--port" in run.stderr


def test_the_pages_certificate_is_checked_as_the_servers_is(tmp_path: Path) -> None:
    """A certificate that expires within 14 days is warned of (make_certificates' last one
    day), naming the flag and what to do, and so is a key others can read."""
    from convstream.dashboard.https import https_warnings

    pki = make_certificates(tmp_path)
    settings = DashboardSettings(https_cert=pki["server.pem"], https_key=pki["server.key"])
    pki["server.key"].chmod(0o600)
    (warning,) = https_warnings(settings)
    assert warning.startswith(f"--https-cert {pki['server.pem']} expires on ")
    assert "put the new files in their place and send the dashboard SIGHUP" in warning
    pki["server.key"].chmod(0o644)  # as a copy may leave it: anyone could pose as the page
    (_, readable) = https_warnings(settings)
    assert readable.startswith(f"--https-key {pki['server.key']} can be read by every user")


def test_a_page_beyond_loopback_is_warned_of_what_it_lacks() -> None:
    lone = DashboardSettings(host="0.0.0.0")
    assert "has no login" in exposure_warnings(lone, 8080)[0]
    clear = DashboardSettings(host="0.0.0.0", access_token=TOKEN)
    assert "cross the network in the clear" in exposure_warnings(clear, 8080)[0]
    cert = {"https_cert": Path("c.pem"), "https_key": Path("k.pem")}
    assert exposure_warnings(DashboardSettings(host="0.0.0.0", access_token=TOKEN, **cert), 1) == []
    assert exposure_warnings(DashboardSettings(access_token=None), 8080) == []  # loopback


@pytest.mark.asyncio(loop_scope="module")
async def test_a_camera_the_dashboard_may_not_watch_says_so(
    browser: Any, artifacts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dashboard whose server token has max_calls 1 and two cameras: the second camera's
    watch is refused, and its tile read RUNNING, "waiting for frames…" for ever, while that
    dock's damage went unseen. It now reads "unwatched" with the server's reason, the header
    counts it, and the log says it once; a reload that raises max_calls brings it back."""
    from convstream.server import Server, Settings
    from convstream.server.config import TokenConfig
    from convstream.server.security import token_hash

    server_token = "the-dashboards-own-server-token"
    table = {"name": "dash", "role": "watch", "sha256": token_hash(server_token)}
    cameras = (
        CameraConfig(id="dock-1", source="demo:conveyor?fps=4"),
        CameraConfig(id="dock-2", source="demo:conveyor?fps=4&seed=2"),
    )
    settings = Settings(
        port=0, metrics_port=-1, cameras=cameras, tokens=(TokenConfig(**table, max_calls=1),)
    )
    server = Server(settings)
    await server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        async with _dashboard(address, token=server_token) as dash:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.goto(dash.url)
            from playwright.async_api import expect

            states = {}
            for camera in ("dock-1", "dock-2"):
                states[camera] = _tile(page, camera).locator(".state")
            await expect(states["dock-2"]).to_have_text("unwatched", timeout=20000)
            await _wait_frames(page, "dock-1", 1, timeout=20.0)
            await expect(states["dock-1"]).to_have_text("running")
            notice = _tile(page, "dock-2").locator(".notice")
            await expect(notice).to_contain_text("this dashboard cannot watch it")
            await expect(notice).to_contain_text("max_calls")
            await expect(page.locator("#summary")).to_contain_text("dock-2 unwatched")
            await page.screenshot(path=artifacts / "unwatched-camera.png")
            warnings = [r for r in caplog.records if "refuses this dashboard's watch" in r.message]
            assert len(warnings) == 1 and "dock-2" in warnings[0].message
            # the operator raises the token's max_calls: the tile comes back by itself
            raised = (TokenConfig(**table, max_calls=2),)
            await server.reload(server.settings.model_copy(update={"tokens": raised}))
            await expect(states["dock-2"]).to_have_text("running", timeout=30000)
            await _wait_frames(page, "dock-2", 0, timeout=20.0)
            await context.close()
    finally:
        await server.stop(grace=0)


async def test_sighup_reads_the_token_for_the_server_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's operator replaced the dashboard's token (the old one revoked): the
    dashboard showed every camera offline until it was restarted, and its SIGHUP said there
    was nothing to reload. It now reads --token-file again, and calls with the new token; a
    file that does not read keeps the token in use."""
    from convstream.dashboard import hub
    from convstream.server import Server, Settings
    from convstream.server.config import TokenConfig
    from convstream.server.security import token_hash

    monkeypatch.setattr(hub, "RETRY_MAX_S", 0.5)  # a refused token is asked again this soon
    new = "the-dashboards-new-server-token"
    table = TokenConfig(name="dash", role="watch", sha256=token_hash(new))
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=4")
    server = Server(Settings(port=0, metrics_port=-1, cameras=(belt,), tokens=(table,)))
    await server.start()
    token_file = tmp_path / "server.token"
    token_file.write_text("the-dashboards-old-server-token\n")
    try:
        async with _dashboard(
            f"127.0.0.1:{server.port}",
            token="the-dashboards-old-server-token",
            token_file=token_file,
        ) as dash:
            deadline = time.monotonic() + 20
            while not dash.hub.server.get("refused"):
                assert time.monotonic() < deadline, dash.hub.server
                await asyncio.sleep(0.1)
            token_file.write_text("\n")  # emptied: kept as it was
            with caplog.at_level(logging.WARNING, logger="convstream.dashboard"):
                dash.reload()
            kept = f"the token for the server kept as it was: --token-file {token_file}: the "
            assert kept + "first line is empty" in caplog.text
            token_file.write_text(new + "\n")
            dash.reload()
            assert f"SIGHUP: a new token for the server read from {token_file}" in caplog.text
            while not (dash.hub.server.get("ok") and dash.hub.cameras["belt"].frames_received):
                assert time.monotonic() < deadline + 20, dash.hub.server
                await asyncio.sleep(0.1)
    finally:
        await server.stop(grace=0)


async def test_a_lifted_refusal_shows_on_a_camera_that_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a frame cleared a refusal: a camera that was down kept its tile "unwatched", with
    the old cause, after a reload raised the token's max_calls and the server was watching
    it for the dashboard. The server's word that it took the watch now clears it. And a log
    read at warning level, which said the server was unreachable, says when it is back."""
    from convstream.dashboard import hub
    from convstream.server import Server, Settings
    from convstream.server.config import TokenConfig
    from convstream.server.security import token_hash

    monkeypatch.setattr(hub, "OUTAGE_LOG_S", 0.2)
    server_token = "the-dashboards-own-server-token"
    table = {"name": "dash", "role": "watch", "sha256": token_hash(server_token)}
    down = tuple(  # cameras whose source does not answer: they send no frame
        CameraConfig(id=f"dock-{i}", source=f"http://127.0.0.1:{_closed_port()}/video.mjpg")
        for i in (1, 2)
    )
    port = _closed_port()
    tokens = (TokenConfig(**table, max_calls=1),)
    server = Server(Settings(port=port, metrics_port=-1, cameras=down, tokens=tokens))

    async def until(check: Any, what: str) -> None:
        deadline = time.monotonic() + 20
        while not check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)

    def states() -> list[str]:
        return [view.status.get("state", "") for view in dash.hub.cameras.values()]

    async with _dashboard(f"127.0.0.1:{port}", token=server_token) as dash:
        await until(lambda: "unreachable" in caplog.text, "the outage logged")
        await server.start()  # the server comes up after the dashboard
        try:
            await until(lambda: states().count("unwatched") == 1, "one camera refused")
            back = [r for r in caplog.records if "connected again" in r.message]
            assert back and back[0].levelname == "WARNING"
            raised = (TokenConfig(**table, max_calls=2),)
            await server.reload(server.settings.model_copy(update={"tokens": raised}))
            await until(lambda: len(states()) == 2 and "unwatched" not in states(), "lifted")
            assert all(view.frames_received == 0 for view in dash.hub.cameras.values())
        finally:
            await server.stop(grace=0)


async def test_a_grpc_client_at_the_pages_port_is_one_line_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`convstream info --address` given the dashboard's port by mistake put six ERROR
    tracebacks from aiohttp ("BadHttpMessage ... Pause on PRI/Upgrade") into the operator's
    terminal. The client is told (an HTTP/1 server answered); the page's log says it once."""
    from convstream.v1 import convstream_pb2 as pb
    from convstream.v1 import convstream_pb2_grpc as pb_grpc

    async with _dashboard(f"127.0.0.1:{_closed_port()}") as dash:
        for _ in range(2):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{dash.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError):
                    await pb_grpc.ConvstreamStub(channel).GetModelInfo(
                        pb.GetModelInfoRequest(), timeout=5
                    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    said = [r.getMessage() for r in caplog.records if "answered 400" in r.getMessage()]
    assert len(said) == 1 and "Pause on PRI/Upgrade; a gRPC client" in said[0], said
