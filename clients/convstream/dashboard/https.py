"""The page over HTTPS: its certificate, checked as the server's is, and its port, where an
operator who types http:// is sent to https:// rather than get an empty reply.

A TLS port cannot answer plain HTTP, so the page's port is listened on here: each connection
is routed by its first byte, a TLS handshake (0x16) to the page over TLS, anything else to a
redirect to the same address over https (for a host the page answers to).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from convstream.dashboard.settings import DashboardSettings
from convstream.server.tls import TLSFileError, certificate_dates, readable_by_all

logger = logging.getLogger(__name__)

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record that opens a handshake
FIRST_BYTE_S = 10.0  # a connection that sends nothing this long is closed
# A connection with no request in progress (a half-sent one included) is closed after this
# long: aiohttp's own default is an hour, so a sender could hold the page's file descriptors
# with a byte each. Answers and the live WebSocket go on; 75 s, as aiohttp's run_app, outlasts
# the idle keep-alive of the proxies one may put in front (60 s for nginx and AWS's ALB), so
# that a proxy never sends a request on a connection the page is closing.
IDLE_CONNECTION_S = 75.0
ACCEPT_WARN_EVERY_S = 60.0  # a failing accept (out of file descriptors) is logged this often


def https_context(settings: DashboardSettings) -> ssl.SSLContext | None:
    """The page's TLS context, from https_cert and https_key; None: plain HTTP.

    Raises:
        ValueError: a file is missing, or is no PEM certificate, or key of that certificate,
            or the certificate is out of its dates; the message names the flag and the file.
    """
    cert, key = settings.https_cert, settings.https_key
    if cert is None or key is None:
        return None
    for flag, path in (("--https-cert", cert), ("--https-key", key)):
        if not path.is_file():
            raise ValueError(f"{flag} {path}: {'not a file' if path.exists() else 'no such file'}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")  # never prompt
    except ssl.SSLError as exc:
        problem = (
            f"the key in --https-key {key} is not the key of the certificate in --https-cert {cert}"
            if exc.reason == "KEY_VALUES_MISMATCH"
            else f"--https-cert {cert} and --https-key {key} must be a PEM certificate (its "
            f"chain after it) and its unencrypted PEM key ({exc.reason or exc})"
        )
        raise ValueError(problem) from None
    except OSError as exc:
        raise ValueError(f"--https-cert {cert} / --https-key {key}: {exc.strerror}") from None
    return context


def https_warnings(settings: DashboardSettings) -> list[str]:
    """The page's certificate expiring soon or naming no host (ValueError when it has
    expired: browsers refuse it), and a key every user of the machine can read."""
    if settings.https_cert is None:
        return []
    try:
        warnings = certificate_dates(
            "--https-cert",
            settings.https_cert,
            settings.https_cert.read_bytes(),
            renew="put the new files in their place and send the dashboard SIGHUP",
        )
    except TLSFileError as exc:
        raise ValueError(str(exc)) from None
    key = settings.https_key
    if key is not None and (mode := readable_by_all(key)) is not None:
        warnings.append(
            f"--https-key {key} can be read by every user of this machine ({mode}): anyone "
            f"of them can pose as this page; chmod 600 {key} (or 640, for a group the "
            "dashboard runs in)"
        )
    return warnings


class HttpsPort:
    """The page's port when it serves HTTPS: TLS connections go to ``page`` (aiohttp's
    protocol factory, ``AppRunner.server``), plain HTTP ones are redirected to https."""

    def __init__(
        self,
        page: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        answers_to: Callable[[str], bool],
    ) -> None:
        self._page = page
        self._context = context
        self._answers_to = answers_to
        self._redirects = web.Server(self._redirect, keepalive_timeout=IDLE_CONNECTION_S)
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: a free one); the port listened on.

        Raises:
            OSError: the port could not be bound.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host.strip("[]"), port), family=family)
        self._listener.setblocking(False)
        self._spawn(self._accept())
        return int(self._listener.getsockname()[1])

    def use(self, context: ssl.SSLContext) -> None:
        """Serve new connections with ``context`` (a reloaded certificate); open ones keep
        theirs."""
        self._context = context

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        await self._redirects.shutdown(1.0)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        warned = -ACCEPT_WARN_EVERY_S
        while True:
            try:
                connection, _ = await loop.sock_accept(self._listener)
            except OSError as exc:  # out of file descriptors, say: not the end of the page
                if loop.time() - warned >= ACCEPT_WARN_EVERY_S:
                    warned = loop.time()
                    logger.warning(
                        "accepting a connection to the page failed: %s (said once a minute)", exc
                    )
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._route(connection))

    async def _route(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        connection.setblocking(False)
        try:
            async with asyncio.timeout(FIRST_BYTE_S):
                first = await _peek(loop, connection)
            if not first:
                connection.close()  # gone before saying anything
            elif first[0] == TLS_HANDSHAKE:
                await loop.connect_accepted_socket(
                    self._page, connection, ssl=self._context, ssl_handshake_timeout=FIRST_BYTE_S
                )
            else:
                await loop.connect_accepted_socket(self._redirects, connection)
        except (OSError, TimeoutError, ssl.SSLError):  # a failed handshake: the peer's
            connection.close()
        except asyncio.CancelledError:
            connection.close()
            raise

    async def _redirect(self, request: web.BaseRequest) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if not host or not self._answers_to(host):
            return web.Response(status=421, text="this dashboard answers over https only\n")
        return web.Response(
            status=308,
            headers={"Location": f"https://{host}{request.path_qs}"},
            text="this dashboard answers over https only\n",
        )


async def _peek(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> bytes:
    """The connection's first byte, left for whoever reads it next (b"" once it is closed)."""
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(connection.fileno(), _settle, readable)
        try:
            await readable
        finally:
            loop.remove_reader(connection.fileno())
        with contextlib.suppress(BlockingIOError, InterruptedError):  # woken for nothing
            return connection.recv(1, socket.MSG_PEEK)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
