"""The page's port: its own accept loop, over HTTP or HTTPS, so that one host cannot hold
every file descriptor of the dashboard.

Each connection is routed by its first byte. Over HTTPS, a TLS handshake (0x16) goes to the
page over TLS and anything else to a redirect to the same address over https (for a host the
page answers to): a TLS port cannot answer plain HTTP, and an operator who types http:// is
sent on rather than get an empty reply. Over HTTP, every connection goes to the page.

Before that, a host holding MAX_CONNECTIONS_PER_HOST connections to the page gets no more,
past MAX_CONNECTIONS in all a new one is closed (the open pages keep theirs), and a
connection that sends nothing in FIRST_BYTE_S is closed: a security review's 5,000
connections, each sending a header line every 4 s, were all held (aiohttp reads headers
with no deadline), and with the 1024 files a systemd service starts with asyncio logged
each failed accept with its traceback, 158 MB of log in 50 s.
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

from convstream.dashboard import https

logger = logging.getLogger(__name__)

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record that opens a handshake
FIRST_BYTE_S = 10.0  # a connection that sends nothing this long is closed
ACCEPT_WARN_EVERY_S = 60.0  # a failing accept, or a host at its cap, is logged this often
# Connections one address may hold to the page: a browser opens up to 6 a page, and a
# whole office behind one NAT address watching it stays well under this.
MAX_CONNECTIONS_PER_HOST = 128
MAX_HOSTS_KEPT = 1000  # past this many addresses, those with no connection left are forgotten
# Connections to the page from all addresses, at most: past it a new one is closed as it
# comes, and the pages open keep theirs. A security review's 1,280 half-sent requests from 10
# addresses were all held (0.27 MB each over TLS); a wall of 50 browsers holds about 300.
# (Ending the busiest address's oldest, as the metrics port does, let many addresses of a
# few connections each end a NAT'd wall's open pages one by one: a diff review's.)
MAX_CONNECTIONS = 1024


class PagePort:
    """The page's port: ``page`` is aiohttp's protocol factory (``AppRunner.server``);
    ``context`` its TLS, or None for plain HTTP."""

    def __init__(
        self,
        page: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None,
        answers_to: Callable[[str], bool],
    ) -> None:
        self._page = page
        self._context = context
        self._answers_to = answers_to
        self._redirects = web.Server(self._redirect, keepalive_timeout=https.IDLE_CONNECTION_S)
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # each address's connections: a socket's fileno() is -1 once its transport closed it
        self._open: dict[str, list[socket.socket]] = {}
        self._said_at: dict[str, float] = {}

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: a free one), on every address the host name has
        (localhost: 127.0.0.1 and ::1, as aiohttp's own site listened); the port listened on.

        Raises:
            OSError: the port could not be bound.
        """
        loop = asyncio.get_running_loop()
        found = await loop.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((family, address[0]) for family, *_, address in found))
        try:
            for family, address in addresses:
                listener = socket.create_server((address, port), family=family)
                self._listeners.append(listener)
                port = int(listener.getsockname()[1])  # 0 chose one: the same for the rest
        except OSError:
            for listener in self._listeners:
                listener.close()
            self._listeners.clear()
            raise
        for listener in self._listeners:
            listener.setblocking(False)
            self._spawn(self._accept(listener))
        return port

    def use(self, context: ssl.SSLContext) -> None:
        """Serve new connections with ``context`` (a reloaded certificate); open ones keep
        theirs."""
        self._context = context

    def held(self, host: str) -> int:
        """Connections ``host`` holds to the page now."""
        kept = [c for c in self._open.get(host, []) if c.fileno() >= 0]
        if kept:
            self._open[host] = kept
        else:
            self._open.pop(host, None)
        return len(kept)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for listener in self._listeners:
            listener.close()
        await self._redirects.shutdown(1.0)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _say(self, topic: str, message: str, *args: object) -> None:
        """A warning, at most once every ACCEPT_WARN_EVERY_S for its topic."""
        now = asyncio.get_running_loop().time()
        if now - self._said_at.get(topic, -ACCEPT_WARN_EVERY_S) >= ACCEPT_WARN_EVERY_S:
            self._said_at[topic] = now
            logger.warning(message + " (said once a minute)", *args)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: not the end of the page
                self._say("accept", "accepting a connection to the page failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            host = str(peer[0])
            if len(self._open) > MAX_HOSTS_KEPT:  # hosts gone since: forgotten
                for gone in list(self._open):
                    self.held(gone)
                now = loop.time()
                for topic, said in list(self._said_at.items()):
                    if now - said >= ACCEPT_WARN_EVERY_S:
                        del self._said_at[topic]
            if self.held(host) >= MAX_CONNECTIONS_PER_HOST:
                connection.close()
                self._say(
                    f"cap {host}",
                    "%s holds %d connections to the page, the most one address may: its "
                    "next ones are closed as they come",
                    host,
                    MAX_CONNECTIONS_PER_HOST,
                )
                continue
            if sum(map(self.held, list(self._open))) >= MAX_CONNECTIONS:
                connection.close()
                busiest = max(self._open, key=lambda h: len(self._open[h]))
                self._say(
                    "full",
                    "%d connections to the page, the most it keeps (%s holds %d): new ones are "
                    "closed as they come until some end",
                    MAX_CONNECTIONS,
                    busiest,
                    len(self._open[busiest]),
                )
                continue
            self._open.setdefault(host, []).append(connection)
            self._spawn(self._route(connection))

    async def _route(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        connection.setblocking(False)
        try:
            async with asyncio.timeout(FIRST_BYTE_S):
                first = await _peek(loop, connection)
            if not first:
                connection.close()  # gone before saying anything
                return
            if self._context is None:
                await loop.connect_accepted_socket(self._page, connection)
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
