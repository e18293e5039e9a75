"""The live monitoring dashboard: a small web app on top of the convstream gRPC API.

    convstream dashboard --address 127.0.0.1:50051 --port 8080

One WatchCamera per camera feeds every browser (fan-out here, latest-wins per browser), a
ListCameras poll keeps states and rates fresh, and alerts keep a snapshot of what raised
them. All assets ship in this package; nothing on the page changes anything on the server.
"""

from convstream.client.episodes import AlertDetector
from convstream.dashboard.alerts import Alert
from convstream.dashboard.app import Dashboard, serve
from convstream.dashboard.cli import add_commands, run_dashboard
from convstream.dashboard.settings import DashboardSettings

__all__ = [
    "Alert",
    "AlertDetector",
    "Dashboard",
    "DashboardSettings",
    "add_commands",
    "run_dashboard",
    "serve",
]
