"""The plain-HTTP port beside gRPC: /metrics for Prometheus, /healthz and /readyz for probes.

Kubernetes ``httpGet`` probes and most load balancers speak HTTP only, and cannot ask gRPC's
health service once it is behind TLS; these paths answer what it answers. Anything else is
404, so a typo in a scrape or probe path shows up instead of silently getting metrics.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from convstream.v1 import host_header_name, host_port, is_loopback, own_names
from convstream.v1.redaction import shown

# How often the HTTP thread looks for a shutdown: stop() waits up to this long for it, on the
# event loop (socketserver's default, 0.5 s, added up to half a second to every stop: a
# restart, each test). An idle server used 50 ms of CPU in 20 s with it, against 20 ms at 0.5.
SHUTDOWN_POLL_S = 0.1

logger = logging.getLogger(__name__)

PATHS = ("/metrics", "/healthz", "/readyz")


class _Quiet(WSGIRequestHandler):
    timeout = 10  # seconds a connection may sit idle; each holds a thread until it closes

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: a probe every few seconds would fill the log."""


# Connections at once, each on a thread of its own: a review's 3,000 slow ones (a byte every
# 4 s keeps one open past the idle timeout) took the server from 21 threads to about 890.
# One address may hold MAX_PER_HOST of them, so that one sender cannot lock Prometheus out;
# past MAX_CONNECTIONS, a new one takes the place of the oldest of the address holding the
# most, so that slow senders on a few addresses cannot either.
MAX_CONNECTIONS = 128
MAX_PER_HOST = 16
# From a connection's accept to its answer sent, at most: a probe or a scrape takes
# milliseconds, and a byte every few seconds kept one open for good (the idle timeout counts
# from the last byte).
REQUEST_DEADLINE_S = 15.0
REAP_EVERY_S = 1.0


def _cut(request: socket.socket) -> None:
    """End a connection its thread is reading or writing: the thread then finishes it."""
    with contextlib.suppress(OSError):  # closed meanwhile
        request.shutdown(socket.SHUT_RDWR)


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process at exit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # set before the port is bound: a bind that fails calls server_close
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}  # connections by address
        self._since: dict[socket.socket, tuple[float, str]] = {}  # accepted when, from where
        self._closed = threading.Event()
        super().__init__(*args, **kwargs)
        threading.Thread(target=self._reap, name="convstream-http-reaper", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """On a thread of its own, unless its address holds its most already (then closed
        at once, unanswered); the port full, in the place of another address's oldest."""
        host = str(client_address[0]) if client_address else ""
        with self._lock:
            admitted = self._open.get(host, 0) < MAX_PER_HOST and (
                len(self._since) < MAX_CONNECTIONS or self._make_room(host)
            )
            if admitted:
                self._open[host] = self._open.get(host, 0) + 1
                self._since[request] = (time.monotonic(), host)
        if not admitted:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (out of threads): its place given back
            self._left(request, host)
            raise

    def _make_room(self, host: str) -> bool:
        """Cut the oldest connection of the addresses that hold the most, not ``host``'s;
        False if only ``host`` holds any. Called with the lock held."""
        most = max((n for address, n in self._open.items() if address != host), default=0)
        oldest = min(
            (
                request
                for request, (_, address) in self._since.items()
                if address != host and self._open.get(address) == most
            ),
            key=lambda request: self._since[request][0],
            default=None,
        )
        if oldest is None:  # all of them already cut, their threads finishing
            return False
        _cut(oldest)
        del self._since[oldest]  # its thread gives its address's count back as it ends
        return True

    def _reap(self) -> None:
        """Cut the connections open past REQUEST_DEADLINE_S, once a REAP_EVERY_S."""
        while not self._closed.wait(REAP_EVERY_S):
            now = time.monotonic()
            with self._lock:
                late = [r for r, (at, _) in self._since.items() if now - at > REQUEST_DEADLINE_S]
                for request in late:
                    _cut(request)
                    del self._since[request]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._left(request, str(client_address[0]) if client_address else "")

    def _left(self, request: socket.socket, host: str) -> None:
        with self._lock:
            self._since.pop(request, None)
            left = self._open.get(host, 1) - 1
            if left > 0:
                self._open[host] = left
            else:
                self._open.pop(host, None)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (one left idle past the timeout, a port scan, a client
        gone mid-reply): one debug line. socketserver printed a 15-line traceback to stderr,
        outside the log, for each; 300 idle sockets made 4,100 lines."""
        logger.debug("metrics port: a connection from %s failed", client_address, exc_info=True)


# Seconds the event loop may go without running before the probes say 503: ten of its
# one-second beats missed is no slow moment but a loop stuck.
STALLED_S = 10.0


class HttpPort:
    """Serves the paths above from a thread of its own, so a busy event loop never delays a
    scrape.

    Args:
        registry: the metrics /metrics shows.
        serving: whether the server is SERVING, as its gRPC health service says (False while
            starting and while draining); /healthz and /readyz answer 200 when it is, 503
            when not.
        stalled: seconds since the server's event loop last ran: past STALLED_S (a loop
            stuck in one call answers no client), 503 too.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        serving: Callable[[], bool],
        stalled: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._serving = serving
        self._stalled = stalled
        self._http: WSGIServer | None = None
        self._loopback = False

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port. On a loopback address
        its /metrics answers requests whose Host names this machine only (see _app)."""
        self._loopback = is_loopback(host)
        family = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
        server_class = type("HttpServer", (_Threading,), {"address_family": family})
        self._http = make_server(
            host.strip("[]"), port, self._app, server_class, handler_class=_Quiet
        )
        threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="convstream-http",
            daemon=True,
        ).start()
        bound = int(self._http.server_address[1])
        logger.info(
            "metrics and probes on http://%s (%s)", host_port(host, bound), ", ".join(PATHS)
        )
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        given = environ.get("HTTP_HOST")
        if path == "/metrics" and self._loopback and given is not None and not _ours(given):
            # A web page open in a browser on this machine, its own name pointed at 127.0.0.1
            # (DNS rebinding), read the metrics: camera ids, token and stream names (a
            # security review's). The probes tell nothing, and a check that names the host
            # some other way must not fail them. Beyond loopback the port is reached by names
            # it cannot know.
            line = (
                f"/metrics on loopback answers to localhost, loopback addresses and this "
                f"machine's names, not to {shown(given, 80)}: a proxy in front of it should "
                "pass Host: localhost"
            )
            return _text(start_response, "421 Misdirected Request", line)
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        if path in ("/healthz", "/readyz"):
            # The same answer for both: the model is loaded and warmed before the server
            # reports SERVING, so ready and healthy begin, and end at draining, together.
            if not self._serving():
                return _text(start_response, "503 Service Unavailable", "not serving")
            if (stalled := self._stalled()) > STALLED_S:
                line = f"the server's event loop has not run for {stalled:.0f} s"
                return _text(start_response, "503 Service Unavailable", line)
            return _text(start_response, "200 OK", "ok")
        return _text(
            start_response, "404 Not Found", f"no such path; this port serves {', '.join(PATHS)}"
        )


def _ours(host_header: str) -> bool:
    """Whether a Host header names this machine: localhost, a loopback address or one of its
    own names (Debian maps the host name to 127.0.1.1; looked up once, on this thread)."""
    name = host_header_name(host_header)
    return name is not None and (is_loopback(name) or name in own_names())


def _text(start_response: Callable[..., Any], status: str, line: str) -> list[bytes]:
    # a new header list each time: wsgiref adds Content-Length to the one it is given
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [f"{line}\n".encode()]
