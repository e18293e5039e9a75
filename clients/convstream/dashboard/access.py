"""Who may see the page: with an access token set, a browser logs in once (/login) and is
then known by a session cookie; a script sends ``Authorization: Bearer <token>``.

The cookie holds the time it was issued and an HMAC of that under the token, never the
token: another token (the dashboard restarted with a new file) ends every session, and a
session unused for SESSION_DAYS ends (one in use is renewed daily). Without an access token
the page is open to whoever reaches it, as on loopback by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import re
import secrets
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from aiohttp import web

from convstream.client.connection_flags import write_secret
from convstream.dashboard.settings import DashboardSettings

logger = logging.getLogger(__name__)

COOKIE = "convstream_session"
SESSION_DAYS = 30  # unused this long, a session ends; a new token ends every session sooner
RENEW_AFTER_S = 86400.0  # a session in use gets a new cookie once a day
FAILED_LOGIN_DELAY_S = 1.0  # each wrong token costs its sender a second
LOG_EVERY_S = 600.0  # a failed login from one address is logged once per 10 minutes
# and /static/: the login stylesheet
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login", "/logout"})
TOKEN_BYTES = 32


def new_access_token() -> str:
    """A random access token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_access_token(path: Path) -> tuple[str, bool]:
    """The token in ``path``, made there (mode 600) when the file does not exist yet.

    Returns:
        the token, and whether it was made now.

    Raises:
        OSError: the file cannot be read or made.
        ValueError: the file holds no token, or a short one.
    """
    token = new_access_token()
    try:
        write_secret(path, token)
    except FileExistsError:
        token = path.read_text(encoding="utf-8-sig").strip()  # a byte-order mark left out
        if len(token) < 16:
            found = "nothing" if not token else f"{len(token)} characters"
            raise ValueError(
                f"{path} holds {found}; an access token needs 16 characters or more (delete "
                "the file and a new token is made there)"
            ) from None
        return token, False
    return token, True


class Access:
    """The checks of one dashboard: its token, its sessions, the login page and form."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.token = settings.access_token
        self.https = settings.https_cert is not None
        self._key = (self.token or "").encode()
        self._digest = hashlib.sha256(self._key).digest()
        self._logged: dict[str, float] = {}

    @property
    def required(self) -> bool:
        return self.token is not None

    def is_open(self, path: str) -> bool:
        """The paths anyone may ask for: the login form, the probes' /healthz, the stylesheet
        and script (no data in them)."""
        return path in OPEN_PATHS or path.startswith("/static/")

    async def allows(self, request: web.Request) -> bool:
        """Whether the request comes from a logged-in browser or carries the token. A wrong
        bearer token costs its sender a second, as a wrong login does."""
        if self.signed_in(request):
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            await self._failed(request)
        return False

    def signed_in(self, request: web.Request) -> bool:
        """``allows`` without its cost for a wrong token: whether the request comes from a
        logged-in browser or carries the token (or no login is asked)."""
        if self.token is None or self._session_valid(request.cookies.get(cookie_name(request))):
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(given.strip()) and self._matches(given.strip())

    def _matches(self, given: str) -> bool:
        digest = hashlib.sha256(given.encode(errors="replace")).digest()
        return hmac.compare_digest(digest, self._digest)

    def _session(self, issued: int) -> str:
        """A session's cookie value: when it was issued, and an HMAC of that under the token."""
        mac = hmac.new(self._key, f"convstream dashboard session v2 {issued}".encode(), "sha256")
        return f"{issued}.{mac.hexdigest()}"

    def _session_valid(self, value: str | None) -> bool:
        issued = _issued(value)
        if issued is None:
            return False
        age = time.time() - issued
        fresh = -60 <= age <= SESSION_DAYS * 86400  # a clock a little behind is no matter
        return hmac.compare_digest(value or "", self._session(issued)) and fresh

    async def login_page(self, request: web.Request) -> web.Response:
        failed = "failed" in request.query
        if failed:
            message = "That is not this dashboard's access token."
        elif "out" in request.query:
            message = "Logged out: this browser needs the access token again."
        elif "changed" in request.query:
            message = (
                "This browser's login has ended: the dashboard's access token changed, or it "
                "logged out in another tab. Log in again (ask whoever runs it for the token)."
            )
        else:
            message = "This dashboard needs its access token (ask whoever runs it)."
        return web.Response(
            text=_LOGIN_PAGE.format(
                message=html.escape(message, quote=False),  # element text
                kind="error" if failed else "info",
            ),
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Referrer-Policy": "same-origin"},
            status=401 if failed else 200,
        )

    async def log_in(self, request: web.Request) -> NoReturn:
        if not same_origin(request):
            raise web.HTTPForbidden(text="a login form of another site is refused\n")
        form = await request.post()
        given = form.get("token")
        if isinstance(given, str) and self._matches(given.strip()):
            response = web.HTTPSeeOther("./")
            self._set_session(request, response)
            raise response
        await self._failed(request)
        raise web.HTTPSeeOther("login?failed")

    async def log_out(self, request: web.Request) -> NoReturn:
        """This browser's session cookie removed (a laptop handed on, a shared screen): it
        ends nothing else, and a copied cookie stays good until the token changes."""
        if not same_origin(request):  # another site's page logging operators out
            raise web.HTTPForbidden(text="a logout form of another site is refused\n")
        response = web.HTTPSeeOther("login?out")
        # set_cookie, not del_cookie, whose secure= came in aiohttp 3.11: a __Host- cookie is
        # removed only by one that is Secure too
        response.set_cookie(
            cookie_name(request),
            "",
            max_age=0,
            expires="Thu, 01 Jan 1970 00:00:00 GMT",
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.https or request.secure,
        )
        raise response

    def _set_session(self, request: web.Request, response: web.StreamResponse) -> None:
        response.set_cookie(
            cookie_name(request),
            self._session(int(time.time())),
            max_age=SESSION_DAYS * 86400,
            path="/",
            httponly=True,
            samesite="Lax",  # a link from a chat or mail opens the page; GETs change nothing
            secure=self.https or request.secure,
        )

    def renew(self, request: web.Request, response: web.StreamResponse) -> None:
        """A session in use is renewed once a day (the page asks every hour while it is
        open): a wall display stays logged in, and a copied cookie nobody uses ends."""
        value = request.cookies.get(cookie_name(request))
        issued = _issued(value)
        if (
            issued is not None
            and time.time() - issued > RENEW_AFTER_S
            and self._session_valid(value)
            and not response.prepared
        ):
            self._set_session(request, response)

    async def _failed(self, request: web.Request) -> None:
        """A wrong token: said once per address per LOG_EVERY_S, and answered a second late."""
        peer, now = request.remote or "?", time.monotonic()
        if now - self._logged.get(peer, -LOG_EVERY_S) >= LOG_EVERY_S:
            if len(self._logged) >= 10_000:  # bounded, whatever the number of senders
                self._logged.clear()
            self._logged[peer] = now
            logger.warning(
                "a wrong access token from %s (said once per 10 minutes per address)", peer
            )
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)

    def refuse(self, request: web.Request) -> NoReturn:
        """What a request without access gets: the page sends a browser to the login form,
        anything else is told how to get in."""
        if request.method == "GET" and request.path == "/":
            raise web.HTTPSeeOther("login")
        raise web.HTTPUnauthorized(
            text="this dashboard needs its access token: log in at /login, or send "
            "'Authorization: Bearer <token>'\n",
            headers={"WWW-Authenticate": 'Bearer realm="convstream dashboard"'},
        )


def _issued(value: str | None) -> int | None:
    """When a session cookie says it was issued (seconds since the epoch), or None for a value
    that is no session's: anything a sender puts there is refused, never a server error."""
    found = _SESSION.fullmatch(value or "")
    return int(found.group(1)) if found else None


_SESSION = re.compile(r"([0-9]{1,12})\.[0-9a-f]{64}", re.ASCII)  # issued, then the HMAC


def cookie_name(request: web.Request) -> str:
    """The session cookie's name, with the port the browser used: browsers keep cookies per
    host, not per port, and two dashboards of one host must not take each other's. Over HTTPS
    with the __Host- prefix, which a browser keeps to that host and a Secure cookie."""
    try:
        port = request.url.port or (443 if request.secure else 80)
    except ValueError:  # a Host header with no port a browser would send ("x:99999")
        port = 0
    return f"{'__Host-' if request.secure else ''}{COOKIE}_{port}"


def same_origin(request: web.Request) -> bool:
    """Refuse what pages of other sites send: a browser sends the Origin of the page that
    opens a WebSocket or posts a form (the login page's Referrer-Policy lets it say its own,
    where no-referrer would make it "null"). Served over HTTPS, the page's own is https: an
    http:// page of the same name is one a network in between could have written (plain
    HTTP, a TLS proxy in front may have made the request, so either scheme is its own)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc == request.host and (parts.scheme == "https" or not request.secure)


_LOGIN_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="dark">
<title>convstream · log in</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/style.css">
</head>
<body class="login-page">
<main class="login">
  <h1><span class="logo">convstream</span> <span class="sub">damage monitor</span></h1>
  <p class="login-{kind}" role="status">{message}</p>
  <form method="post" action="login">
    <label for="token">Access token</label>
    <input id="token" name="token" type="password" autocomplete="current-password"
      required autofocus spellcheck="false">
    <button type="submit">Log in</button>
  </form>
  <p class="muted">This browser then stays logged in while the page is used (a session unused
  for {days} days ends), until it logs out or the dashboard gets a new token.</p>
</main>
</body>
</html>
""".replace("{days}", str(SESSION_DAYS))
