"""Dashboard: the hub and the web app together, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from aiohttp import web

from convstream.dashboard.hub import Hub
from convstream.dashboard.settings import DashboardSettings
from convstream.dashboard.web import make_app
from convstream.server.tls import TLSFileError, certificate_dates

logger = logging.getLogger(__name__)


class Dashboard:
    """A live monitoring page for a convstream server's cameras.

    A client of the server's public gRPC API (ListCameras, WatchCamera, GetModelInfo) and
    nothing else; read-only.

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
        self.port = self.settings.port

    @property
    def url(self) -> str:
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        scheme = "https" if self.settings.https_cert is not None else "http"
        return f"{scheme}://{host}:{self.port}/"

    async def start(self) -> None:
        """Listen, and start subscribing to the server (which need not be up yet).

        Raises:
            OSError: the port could not be bound.
        """
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        settings = self.settings
        site = web.TCPSite(
            self._runner, settings.host, settings.port, ssl_context=https_context(settings)
        )
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        await self.hub.start()

    async def stop(self) -> None:
        """Close every browser connection and the server subscription."""
        await self.hub.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


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
    """The page's certificate expiring soon (ValueError when it has expired: browsers refuse
    it)."""
    if settings.https_cert is None:
        return []
    try:
        return certificate_dates(
            "--https-cert",
            settings.https_cert,
            settings.https_cert.read_bytes(),
            renew="restart the dashboard with the new files",
        )
    except TLSFileError as exc:
        raise ValueError(str(exc)) from None


def exposure_warnings(settings: DashboardSettings, port: int) -> list[str]:
    """What a page listening beyond loopback lacks: a login, or TLS for its token."""
    if settings.listens_on_loopback:
        return []
    if settings.access_token is None:
        return [
            f"the page listens on {settings.host} and has no login: anyone who can reach "
            f"port {port} sees every camera and alert; give it --access-token-file (and "
            "--https-cert/--https-key), or put it behind a reverse proxy that authenticates "
            "(README, 'Setting up the dashboard')"
        ]
    if settings.https_cert is None:
        return [
            f"the page listens on {settings.host} over plain HTTP: its access token and "
            "session cookie cross the network in the clear, for anyone on the way to copy; "
            "give it --https-cert and --https-key, or put a TLS proxy in front"
        ]
    return []


async def serve(settings: DashboardSettings) -> None:
    """Run a dashboard until SIGINT or SIGTERM."""
    # Before the line that says it runs: a supervisor may stop it as soon as it reads that
    # line, and a SIGTERM before the handler killed it outright (exit -15, nothing closed).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    dashboard = Dashboard(settings)
    await dashboard.start()
    logger.info("dashboard on %s, watching %s", dashboard.url, settings.address)
    for warning in [*exposure_warnings(settings, dashboard.port), *https_warnings(settings)]:
        logger.warning("%s", warning)
    print(f"convstream dashboard on {dashboard.url} (server {settings.address})", flush=True)
    try:
        await stop.wait()
    finally:
        await dashboard.stop()
