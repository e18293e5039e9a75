"""Dashboard: the hub and the web app together, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from convstream.dashboard.hub import Hub
from convstream.dashboard.settings import DashboardSettings
from convstream.dashboard.web import make_app

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
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Listen, and start subscribing to the server (which need not be up yet).

        Raises:
            OSError: the port could not be bound.
        """
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
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


async def serve(settings: DashboardSettings) -> None:
    """Run a dashboard until SIGINT or SIGTERM."""
    dashboard = Dashboard(settings)
    await dashboard.start()
    logger.info("dashboard on %s, watching %s", dashboard.url, settings.address)
    if not settings.listens_on_loopback:
        logger.warning(
            "the page listens on %s and has no login or TLS: anyone who can reach port %d "
            "sees every camera and alert; put it behind a reverse proxy that authenticates "
            "(README, 'Setting up the dashboard')",
            settings.host,
            dashboard.port,
        )
    print(f"convstream dashboard on {dashboard.url} (server {settings.address})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await dashboard.stop()
