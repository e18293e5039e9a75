"""Dashboard: the hub and the web app together, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from convstream.client.connection_flags import read_token_file
from convstream.dashboard import https
from convstream.dashboard.https import https_context, https_warnings
from convstream.dashboard.hub import Hub
from convstream.dashboard.port import PagePort
from convstream.dashboard.settings import DashboardSettings
from convstream.dashboard.web import REQUESTS, make_app
from convstream.v1 import dial_host, host_port, own_names

logger = logging.getLogger(__name__)


class Dashboard:
    """A live monitoring page for a convstream server's cameras.

    A client of the server's public gRPC API (ListCameras, WatchCamera, GetModelInfo) and
    nothing else: it changes nothing on the server. What its pages change is its own: the
    alerts' handled marks, which every page shares.

        dashboard = Dashboard(DashboardSettings(address="127.0.0.1:50051", port=0))
        await dashboard.start()
        print(dashboard.url)
        ...
        await dashboard.stop()
    """

    def __init__(self, settings: DashboardSettings | None = None) -> None:
        self.settings = settings or DashboardSettings()
        self.hub = Hub(self.settings)
        self.app = make_app(self.hub)
        self._runner: web.AppRunner | None = None
        self._port: PagePort | None = None
        self.port = self.settings.port

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.https_cert is not None else "http"
        return f"{scheme}://{host_port(dial_host(self.settings.host), self.port)}/"

    async def start(self) -> None:
        _quiet_bad_requests()
        """Listen, and start subscribing to the server (which need not be up yet).

        Raises:
            OSError: the port could not be bound.
        """
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=https.IDLE_CONNECTION_S,
        )
        await self._runner.setup()
        settings = self.settings
        if not settings.listens_on_loopback:  # looked up here, not at a page's first request
            await asyncio.to_thread(own_names)
        assert self._runner.server is not None  # set up above
        self._port = PagePort(
            self._runner.server, https_context(settings), settings.answers_to, self.app[REQUESTS]
        )
        self.port = await self._port.start(settings.host, settings.port)
        await self.hub.start()

    def reload(self) -> None:
        """SIGHUP: read the token for the server again from its --token-file (the server's
        operator replaced it), and the page's certificate and key (a renewed certificate,
        without dropping the open pages; new connections get them). A token file that does
        not read, files that do not load, or a certificate out of its dates, are refused with
        the ones in use kept."""
        settings = self.settings
        if settings.token_file is not None:
            self._reload_token(settings.token_file)
        if self._port is None or settings.https_cert is None:
            read = settings.token_file is not None
            logger.warning(
                "SIGHUP: %s: this page has no certificate (--https-cert)%s; a new access token "
                "for the page, or any other flag, takes a restart",
                "nothing else to reload" if read else "nothing to reload",
                "" if read else " and no --token-file for the server",
            )
            return
        try:
            context = https_context(settings)
            warnings = https_warnings(settings)
        except ValueError as exc:
            logger.error(
                "SIGHUP: the page's certificate was not reloaded; it keeps the one in use: %s", exc
            )
            return
        assert context is not None  # https_cert is set
        self._port.use(context)
        for warning in warnings:
            logger.warning("%s", warning)
        logger.warning(
            "SIGHUP: the page's certificate reloaded from %s; new connections get it",
            settings.https_cert,
        )

    def _reload_token(self, path: Path) -> None:
        try:
            token = read_token_file(path)
        except ValueError as exc:
            logger.error("SIGHUP: the token for the server kept as it was: %s", exc)
            return
        if token == self.settings.token:
            logger.warning("SIGHUP: the token for the server in %s is the one in use", path)
            return
        self.settings = replace(self.settings, token=token)
        self.hub.use_token(token)
        logger.warning(
            "SIGHUP: a new token for the server read from %s; the calls from now on use it",
            path,
        )

    async def stop(self) -> None:
        """Close every browser connection and the server subscription."""
        await self.hub.stop()
        if self._port is not None:
            await self._port.close()
            self._port = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _BadRequests(logging.Filter):
    """aiohttp logs each request it cannot parse at ERROR with its traceback: one gRPC
    client pointed at the page's port by mistake printed six into the operator's terminal.
    The sender gets its 400; the log gets one line a minute."""

    def __init__(self) -> None:
        super().__init__()
        self._said = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self._said >= 60.0:
            self._said = now
            logger.warning(
                "answered 400 to a request that is not HTTP/1.1 (%s; a gRPC client pointed at "
                "the page's port?); said once a minute",
                str(error.message).split(":")[0].strip()[:80],  # not the bytes after it
            )
        return False


_BAD_REQUESTS = _BadRequests()


def _quiet_bad_requests() -> None:
    log = logging.getLogger("aiohttp.server")
    if _BAD_REQUESTS not in log.filters:
        log.addFilter(_BAD_REQUESTS)


def exposure_warnings(settings: DashboardSettings, port: int) -> list[str]:
    """What a page listening beyond loopback lacks: a login, or TLS for its token."""
    if settings.listens_on_loopback:
        return []
    if settings.access_token is None:
        return [
            f"the page listens on {settings.host} and has no login: anyone who can reach "
            f"port {port} sees every camera and alert, and can mark alerts handled on every "
            "screen; give it --access-token-file (and "
            "--https-cert/--https-key), or put it behind a reverse proxy that authenticates "
            "(docs/dashboard.md, 'Setting up the dashboard')"
        ]
    if settings.https_cert is None:
        return [
            f"the page listens on {settings.host} over plain HTTP: its access token and "
            "session cookie cross the network in the clear, for anyone on the way to copy; "
            "give it --https-cert and --https-key, or put a TLS proxy in front"
        ]
    return []


async def serve(settings: DashboardSettings) -> None:
    """Run a dashboard until SIGINT or SIGTERM; SIGHUP reloads the page's certificate."""
    # Before the line that says it runs: a supervisor may stop it as soon as it reads that
    # line, and a SIGTERM before the handler killed it outright (exit -15, nothing closed).
    # SIGHUP too (a unit's ExecReload, as the server's): it ended the dashboard in silence.
    stop, hup = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = [(signal.SIGINT, stop), (signal.SIGTERM, stop)]
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signals.append((signal.SIGHUP, hup))
    for sig, event in signals:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, event.set)
    dashboard = Dashboard(settings)
    await dashboard.start()

    async def reloads() -> None:
        while True:
            await hup.wait()
            hup.clear()
            dashboard.reload()

    reloading = asyncio.create_task(reloads())
    logger.info("dashboard on %s, watching %s", dashboard.url, settings.address)
    for warning in [*exposure_warnings(settings, dashboard.port), *https_warnings(settings)]:
        logger.warning("%s", warning)
    print(f"convstream dashboard on {dashboard.url} (server {settings.address})", flush=True)
    try:
        await stop.wait()
    finally:
        reloading.cancel()
        await dashboard.stop()
