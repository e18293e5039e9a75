"""The page's port: its own accept loop, over HTTP or HTTPS, so that one host cannot hold
every file descriptor of the dashboard.

Each connection is routed by its first byte. Over HTTPS, a TLS handshake (0x16) goes to the
page over TLS and anything else to a redirect to the same address over https (for a host the
page answers to): a TLS port cannot answer plain HTTP, and an operator who types http:// is
sent on rather than get an empty reply. Over HTTP, every connection goes to the page.

Before that, a host holding MAX_CONNECTIONS_PER_HOST connections to the page gets no more,
a connection that sends nothing in FIRST_BYTE_S is closed, and one whose request's headers
take longer than HEADERS_S: a security review's 5,000 connections, each sending a header
line every 4 s, were all held (aiohttp reads headers with no deadline), and with the 1024
files a systemd service starts with asyncio logged each failed accept with its traceback,
158 MB of log in 50 s. Past MAX_CONNECTIONS in all, a new connection ends the oldest one not
yet let in (no request of it has passed the page's Host and login checks), or is closed if
every one has been: the open pages keep theirs (see ``Requests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from convstream.dashboard import https

logger = logging.getLogger(__name__)

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record that opens a handshake
FIRST_BYTE_S = 10.0  # a connection that sends nothing this long is closed
# A request's headers must have arrived this long after its first byte (the connection's
# first, or the first after the request before it), or the connection is closed (as Go's
# ReadHeaderTimeout): a browser sends them in one packet; aiohttp alone waits for its
# keep-alive timeout (75 s) while a sender drips a header line every few seconds.
HEADERS_S = 10.0
ACCEPT_WARN_EVERY_S = 60.0  # a failing accept, or a host at its cap, is logged this often
# Connections one address may hold to the page: a browser opens up to 6 a page, and a
# whole office behind one NAT address watching it stays well under this.
MAX_CONNECTIONS_PER_HOST = 128
MAX_HOSTS_KEPT = 1000  # past this many addresses, those with no connection left are forgotten
# Connections to the page from all addresses, at most. A security review's 1,280 half-sent
# requests from 10 addresses were all held (0.27 MB each over TLS); a wall of 50 browsers
# holds about 300. Past it a new connection ends the oldest one not yet let in, so that
# half-sent (or refused) ones from many addresses cannot keep every newcomer out (a code
# review's, on the rule before, which closed every new one while the port was full);
# connections let in, the open pages', are never ended for a newcomer.
# (Ending the busiest address's oldest, as the metrics port does, let many addresses of a
# few connections each end a NAT'd wall's open pages one by one: a diff review's.)
MAX_CONNECTIONS = 1024


class Requests:
    """Which of the page's connections have sent a request the page let in, and the HEADERS_S
    deadline on each request's headers: the app's first middleware (and the redirect) tells
    it when a request's handling starts and ends (``serving``), the one after the page's
    checks that it passed them (``admitted``); the port makes each connection's protocol
    through ``protocol``."""

    def __init__(self) -> None:
        self._by_transport: dict[asyncio.BaseTransport, _Tracked] = {}

    def protocol(self, inner: asyncio.Protocol, accepted: _Accepted) -> _Tracked:
        return _Tracked(inner, accepted, self._by_transport)

    def admitted(self, transport: asyncio.BaseTransport | None) -> None:
        """Its connection sent a request that passed the page's checks (its Host, its
        login): a page's, never ended for a newcomer. Not any whole request: one answered
        421 or 401, kept alive, was exempt too, and such connections held every place."""
        tracked = self._by_transport.get(transport) if transport is not None else None
        if tracked is not None:
            tracked.admitted()

    @contextlib.contextmanager
    def serving(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """Around a request's handling, from its headers read to its answer (a WebSocket's
        whole life): no header deadline runs meanwhile."""
        tracked = self._by_transport.get(transport) if transport is not None else None
        if tracked is None:  # not a connection of the port's (a test's own server)
            yield
            return
        tracked.started()
        try:
            yield
        finally:
            tracked.ended()


class _Accepted:
    """One accepted connection: its socket (closed by whoever holds it: fileno() -1), its
    address, and whether a request of it was let in (``Requests.admitted``)."""

    def __init__(self, sock: socket.socket, host: str, at: float) -> None:
        self.sock, self.host, self.at = sock, host, at
        self.admitted = False
        self.ended = False  # end() called: no longer counted, though its close may be pending
        self.transport: asyncio.Transport | None = None  # once routed to the page
        self.routing: asyncio.Task[None] | None = None  # until then

    @property
    def open(self) -> bool:
        return not self.ended and self.sock.fileno() >= 0

    def end(self) -> None:
        """Close it, whichever stage it is at: at once as the port counts (the close itself
        may wait for the loop: counted open meanwhile, a burst of newcomers each ended the
        same one and all came in, 13 held against a cap of 4, a diff review's)."""
        self.ended = True
        if self.transport is not None:
            self.transport.abort()
        elif self.routing is not None and not self.routing.done():
            # _route closes the socket, if it has started: cancelled before its first step
            # (a burst accepted in one go), it never runs, and the socket stayed open
            self.routing.cancel()
            self.routing.add_done_callback(lambda _: self.sock.close())
        else:
            self.sock.close()


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection (``inner``), with the HEADERS_S deadline."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        accepted: _Accepted,
        by_transport: dict[asyncio.BaseTransport, _Tracked],
    ) -> None:
        self._inner, self._accepted, self._by_transport = inner, accepted, by_transport
        self._handling = 0  # requests being handled (pipelined ones wait their turn)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._accepted.transport = transport
        self._by_transport[transport] = self
        self._arm()  # its first byte has come: the peek saw it
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._handling and self._deadline is None:
            self._arm()  # a next request starts
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._accepted.transport is not None:
            self._by_transport.pop(self._accepted.transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def started(self) -> None:
        self._handling += 1
        self._disarm()

    def admitted(self) -> None:
        self._accepted.admitted = True

    def ended(self) -> None:
        self._handling -= 1

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(HEADERS_S, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self._accepted.transport is not None and not self._handling:
            self._accepted.transport.abort()


class PagePort:
    """The page's port: ``page`` is aiohttp's protocol factory (``AppRunner.server``);
    ``context`` its TLS, or None for plain HTTP; ``requests`` the app's (its middleware
    tells it when each request is handled)."""

    def __init__(
        self,
        page: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None,
        answers_to: Callable[[str], bool],
        requests: Requests,
    ) -> None:
        self._page = page
        self._context = context
        self._answers_to = answers_to
        self._requests = requests
        self._redirects = web.Server(self._redirect, keepalive_timeout=https.IDLE_CONNECTION_S)
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: dict[str, list[_Accepted]] = {}  # each address's connections
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
        kept = [c for c in self._open.get(host, []) if c.open]
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

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
            if sum(map(self.held, list(self._open))) >= MAX_CONNECTIONS and not self._make_room():
                connection.close()
                busiest = max(self._open, key=lambda h: len(self._open[h]))
                self._say(
                    "full",
                    "%d connections to the page, the most it keeps, every one let in (%s "
                    "holds %d): new ones are closed as they come until some end",
                    MAX_CONNECTIONS,
                    busiest,
                    len(self._open[busiest]),
                )
                continue
            accepted = _Accepted(connection, host, loop.time())
            self._open.setdefault(host, []).append(accepted)
            accepted.routing = self._spawn(self._route(accepted))

    def _make_room(self) -> bool:
        """End the oldest connection not yet let in, if there is one."""
        waiting = [c for kept in self._open.values() for c in kept if c.open and not c.admitted]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.at)
        oldest.end()
        self._say(
            "room",
            "%d connections to the page, the most it keeps: each new one ends the oldest "
            "not yet let in (%s's, now)",
            MAX_CONNECTIONS,
            oldest.host,
        )
        return True

    async def _route(self, accepted: _Accepted) -> None:
        loop = asyncio.get_running_loop()
        connection = accepted.sock
        connection.setblocking(False)

        def tracked(factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
            return lambda: self._requests.protocol(factory(), accepted)

        try:
            async with asyncio.timeout(FIRST_BYTE_S):
                first = await _peek(loop, connection)
            if not first:
                connection.close()  # gone before saying anything
                return
            if self._context is None:
                await loop.connect_accepted_socket(tracked(self._page), connection)
            elif first[0] == TLS_HANDSHAKE:
                await loop.connect_accepted_socket(
                    tracked(self._page),
                    connection,
                    ssl=self._context,
                    ssl_handshake_timeout=FIRST_BYTE_S,
                )
            else:
                await loop.connect_accepted_socket(tracked(self._redirects), connection)
        except (OSError, TimeoutError, ssl.SSLError):  # a failed handshake: the peer's
            connection.close()
        except asyncio.CancelledError:
            connection.close()
            raise

    async def _redirect(self, request: web.BaseRequest) -> web.StreamResponse:
        with self._requests.serving(request.transport):
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
