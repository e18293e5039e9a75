"""The web side: the page, its static files, and one WebSocket per browser.

Each browser connection is a Viewer with its own latest-wins slot per camera: a newer frame
replaces the one still waiting, and a camera's frame is only sent while the browser has fewer
than WINDOW of that camera's frames not yet drawn (it acks each one after drawing it). So a
browser that draws slowly (a throttled laptop, a hidden tab) gets fewer, fresh frames, and a
browser that stops reading entirely holds a few frames and nothing else: neither ever slows
the hub, the server or another browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from convstream.client.results import json_text
from convstream.dashboard import hub as hub_module
from convstream.dashboard.access import Access, same_origin
from convstream.dashboard.hub import Hub
from convstream.dashboard.messages import text
from convstream.dashboard.port import Requests
from convstream.v1 import own_names

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
WINDOW = 2  # a camera's frames sent to one browser and not yet drawn there
MAX_TEXTS = 200  # alerts waiting for one browser; older ones are dropped past this
SEND_TIMEOUT_S = 30.0  # one message stuck this long: the browser is gone, close it
# A WebSocket ping to each browser this often; one that answers none within half of it is
# gone (a connection that stopped reading, a machine asleep) and is closed.
PING_S = 20.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
VIEWERS: web.AppKey[set[Viewer]] = web.AppKey("viewers", set)
ACCESS: web.AppKey[Access] = web.AppKey("access", Access)
REQUESTS: web.AppKey[Requests] = web.AppKey("requests", Requests)
ASSETS: web.AppKey[str] = web.AppKey("assets", str)
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


MAX_MARKS = 100  # alert ids one "handled" message may name (the page's list holds 100)
# "handled" messages a page may send: MARKS_BURST at once, then MARKS_PER_S a second; the
# rest are passed over (a page toggling a mark 3,000 times in 2 s had every page told each)
MARKS_BURST = 20
MARKS_PER_S = 5.0
# What a page's "handled" message does: (ids or None, handled, up_to or None, the browser)
Marker = Callable[[list[int] | None, bool, float | None, str], None]


class Viewer:
    """One browser connection's outbox: never blocks the hub, never grows past its bounds.
    ``mark``: what the page's "handled" messages are handed to."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        peer: str,
        mark: Marker | None = None,
        started: float | None = None,
    ) -> None:
        self.ws = ws
        self.peer = peer
        self._mark = mark
        # the dashboard run this page's alert ids are of: one started again without
        # --alerts-dir numbers its alerts from 1 again, and a mark of an alert from before
        # landed on the new alert of that id
        self._started = started
        self._marks_left = float(MARKS_BURST)
        self._marks_at = time.monotonic()
        self._told_flood = False
        self.frames_sent = 0
        self.frames_skipped = 0  # replaced by a newer frame of the same camera before sending
        self._frames: dict[str, bytes] = {}
        self._texts: deque[str] = deque()
        self._keyed: dict[str, str] = {}
        self._inflight: dict[str, int] = {}
        self._wake = asyncio.Event()

    def offer_frame(self, camera: str, data: bytes) -> None:
        if camera in self._frames:
            self.frames_skipped += 1
        self._frames[camera] = data
        self._wake.set()

    def offer_text(self, message: str, key: str | None = None) -> None:
        if key is None:
            if len(self._texts) >= MAX_TEXTS:
                self._texts.popleft()
            self._texts.append(message)
        else:
            self._keyed[key] = message  # only the newest state of each kind matters
        self._wake.set()

    def on_message(self, data: str) -> None:
        """The browser's messages: ``{"ack": camera}`` once it has drawn a frame, and an
        operator's ``{"handled": [ids], "on": bool}`` or ``{"handled": "all", "up_to": t}``
        (every alert raised until t); anything else is passed over."""
        try:
            message = json.loads(data)
            camera = message.get("ack")
        except (ValueError, AttributeError):
            return
        if "handled" in message:
            self._on_handled(message)
            return
        if isinstance(camera, str) and self._inflight.get(camera, 0) > 0:
            self._inflight[camera] -= 1
            self._wake.set()

    def _on_handled(self, message: dict[str, Any]) -> None:
        if self._mark is None or message.get("started") != self._started:
            return
        now = time.monotonic()
        self._marks_left = min(MARKS_BURST, self._marks_left + (now - self._marks_at) * MARKS_PER_S)
        self._marks_at = now
        if self._marks_left < 1:
            if not self._told_flood:
                logger.info("browser %s marks alerts faster than it may; passed over", self.peer)
                self._told_flood = True
            return
        self._marks_left -= 1
        ids, on, up_to = message.get("handled"), message.get("on"), message.get("up_to")
        if ids == "all" and isinstance(up_to, int | float) and not isinstance(up_to, bool):
            if math.isfinite(up_to):
                self._mark(None, True, float(up_to), self.peer)
        elif (
            isinstance(ids, list)
            and len(ids) <= MAX_MARKS
            and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            and isinstance(on, bool)
        ):
            self._mark(ids, on, None, self.peer)

    def stats(self) -> dict[str, Any]:
        """What /api/state says of this viewer: counts, not who it is (the page is open to
        every viewer, and it listed each one's address)."""
        return {
            "frames_sent": self.frames_sent,
            "frames_skipped": self.frames_skipped,
            "inflight": dict(self._inflight),
        }

    async def run(self) -> None:
        """Send what is waiting, oldest kind first, until the connection closes."""
        while not self.ws.closed:
            await self._wake.wait()
            self._wake.clear()
            while not self.ws.closed:
                if self._texts:
                    await self._send(self._texts.popleft())
                elif self._keyed:
                    key = next(iter(self._keyed))
                    await self._send(self._keyed.pop(key))
                else:
                    camera = next(
                        (c for c in self._frames if self._inflight.get(c, 0) < WINDOW), None
                    )
                    if camera is None:
                        break
                    self._inflight[camera] = self._inflight.get(camera, 0) + 1
                    await self._send(self._frames.pop(camera))
                    self.frames_sent += 1

    async def _send(self, message: str | bytes) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):  # not wait_for: see Hub._watch
                if isinstance(message, str):
                    await self.ws.send_str(message)
                else:
                    await self.ws.send_bytes(message)
        except TimeoutError:
            logger.info(
                "browser %s took over %.0f s for one message; closing", self.peer, SEND_TIMEOUT_S
            )
            await self.ws.close()
        except ConnectionError:
            await self.ws.close()


@web.middleware
async def _note_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the page's port while a request is handled (a WebSocket's whole life): its
    headers are in (port.Requests)."""
    with request.app[REQUESTS].serving(request.transport):
        return await handler(request)


@web.middleware
async def _check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer only to the names the page is reachable by (settings.host_names): a page on
    another site whose name was pointed at 127.0.0.1 (DNS rebinding) gets 421, not frames."""
    settings = request.app[HUB].settings
    given = request.headers.get("Host")
    if given is not None and not settings.answers_to(given):
        names = [*settings.allowed_hosts]
        if settings.listens_on_loopback:
            names.append("localhost and loopback addresses")
        elif not names:
            own = ", ".join(sorted(own_names()))
            names.append(f"IP addresses and this machine's names ({own})")
        raise web.HTTPMisdirectedRequest(
            text=f"this dashboard answers to {', '.join(names)}, not to {given!r}: a reverse "
            "proxy in front of it should pass one of those as Host, or start it with "
            "--allow-host NAME\n"
        )
    return await handler(request)


@web.middleware
async def _check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With an access token, only a logged-in browser or a bearer of the token gets past the
    login page, the stylesheet and /healthz."""
    access = request.app[ACCESS]
    if not (access.is_open(request.path) or await access.allows(request)):
        access.refuse(request)
    if access.signed_in(request):  # its Host checked before: a page's connection
        request.app[REQUESTS].admitted(request.transport)
    response = await handler(request)
    if access.required:
        access.renew(request, response)
    return response


async def index(request: web.Request) -> web.FileResponse:
    # same-origin, not no-referrer: its logout form's POST would say Origin "null", which
    # same_origin() refuses (as the login page)
    headers = {"Cache-Control": "no-cache", "Referrer-Policy": "same-origin"}
    return web.FileResponse(STATIC_DIR / "index.html", headers=headers)


async def websocket(request: web.Request) -> web.StreamResponse:
    if not same_origin(request):
        raise web.HTTPForbidden(text="cross-origin WebSocket refused")
    ws = web.WebSocketResponse(heartbeat=PING_S, max_msg_size=4096, compress=False)
    try:
        await ws.prepare(request)
    except ConnectionError:
        # The browser left before the answer (a dashboard stopped for a while then answers
        # its backlog): aiohttp logged each as an ERROR with its traceback. A response
        # aiohttp then fails to send too, quietly.
        return web.Response(status=400)
    hub = request.app[HUB]
    viewer = Viewer(ws, request.remote or "?", hub.mark_handled, hub.started)
    viewers = request.app[VIEWERS]
    viewers.add(viewer)
    hello = hub.subscribe(viewer)
    sender: asyncio.Task[None] | None = None
    try:
        # silent_s: the longest a live link goes without a message, a tick every HEARTBEAT_S
        # or one message that takes up to SEND_TIMEOUT_S to cross a slow link; a page that
        # hears nothing for longer has lost the dashboard (stopped or hung, its connection
        # open). Read at each connection (the tests make them short).
        silent_s = SEND_TIMEOUT_S + 3 * hub_module.HEARTBEAT_S
        async with asyncio.timeout(SEND_TIMEOUT_S):  # bounded as every later message is
            await ws.send_str(
                text(
                    "hello",
                    **hello,
                    login=request.app[ACCESS].required,
                    silent_s=silent_s,
                    tick_s=hub_module.HEARTBEAT_S,
                    assets=request.app[ASSETS],
                )
            )
        sender = asyncio.create_task(viewer.run(), name=f"viewer-{viewer.peer}")
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                viewer.on_message(message.data)
    except ConnectionError:
        pass
    except TimeoutError:  # the hello, stuck: the browser is gone (its page connects again)
        logger.warning(
            "browser %s took over %.0f s for the page's first message; closing",
            viewer.peer,
            SEND_TIMEOUT_S,
        )
    finally:
        hub.unsubscribe(viewer)
        viewers.discard(viewer)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    return ws


async def state(request: web.Request) -> web.Response:
    """Everything the page starts from, as JSON, plus each browser's counters."""
    hub = request.app[HUB]
    snapshot = hub.snapshot()
    snapshot["viewers"] = [viewer.stats() for viewer in request.app[VIEWERS]]
    # strict JSON, as the WebSocket's: a model's NaN score is null, not the bare word NaN
    return web.json_response(snapshot, headers={"Cache-Control": "no-store"}, dumps=json_text)


async def alert_snapshot(request: web.Request) -> web.Response:
    """An alert's snapshot (``N.jpg``) or its frame without the heatmap (``N-frame.jpg``).

    A better frame replaces an alert's snapshot while its episode lasts; the alert's urls
    then carry a new ``?v=``, so a browser may keep each version it has (``&at=``, the time
    it was raised, tells apart alerts of one id from dashboards run one after another).
    """
    try:
        alert_id = int(request.match_info["alert_id"])
    except ValueError:  # more digits than Python turns into an int
        raise web.HTTPNotFound() from None
    snapshot = request.app[HUB].alerts.snapshot(alert_id)
    if snapshot is None:
        raise web.HTTPNotFound(text=f"no alert {alert_id} (only the newest are kept)")
    part = request.match_info["part"]
    jpeg = {"": snapshot.overlay, "-frame": snapshot.frame, "-thumb": snapshot.thumbnail}[part]
    return web.Response(
        body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def ready(request: web.Request) -> web.Response:
    """503 while the dashboard cannot reach its server: /healthz said 200 while every tile
    read offline, so a probe saw nothing wrong with a wall that showed nothing."""
    server = request.app[HUB].server
    if server["ok"]:
        return web.Response(text="ok\n")
    # why is in the log and on the page: a probe needs no login, nor the server's address;
    # a server that answers but refuses the token was said to be "not reachable"
    if server.get("refused"):
        return web.Response(status=503, text="the convstream server refuses this dashboard\n")
    return web.Response(status=503, text="the convstream server is not reachable\n")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/static/"):
        # Asked again at each load (a 304 when unchanged), like the page: a browser caching
        # them by guess paired an upgraded page with the old script.
        response.headers.setdefault("Cache-Control", "no-cache")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    # No Strict-Transport-Security: a browser applies it to every port of the host, and would
    # then refuse the metrics page and whatever else the host serves over plain HTTP.


def assets_version() -> str:
    """A hash of the page's files as served: a page whose dashboard says another one (an
    upgrade while a wall screen stayed open) loads them again, or it kept its old script."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def make_app(hub: Hub) -> web.Application:
    """The aiohttp application: GET only (and, with an access token, the login and logout
    forms' POSTs); the one thing a page changes, alerts' handled marks, it sends over its
    WebSocket (same-origin and logged in, as everything of the page)."""
    app = web.Application(middlewares=[_note_request, _check_host, _check_access])
    app[HUB] = hub
    app[REQUESTS] = Requests()
    access = app[ACCESS] = Access(hub.settings)
    app[VIEWERS] = set()
    app[ASSETS] = assets_version()
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/api/state", state)
    app.router.add_get(r"/alerts/{alert_id:\d+}{part:(?:-frame|-thumb)?}.jpg", alert_snapshot)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    if access.required:
        app.router.add_get("/login", access.login_page)
        app.router.add_post("/login", access.log_in)
        app.router.add_post("/logout", access.log_out)
    app.router.add_static("/static", STATIC_DIR)
    app.on_response_prepare.append(_security_headers)
    return app
