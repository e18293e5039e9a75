"""What `convstream dashboard` can be told, checked once at start."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from convstream.client._base import DEFAULT_ADDRESS, check_plaintext_token
from convstream.client.options import TLS
from convstream.v1 import host_header_name, is_loopback, own_names

MAX_CONTACT = 80  # characters of the contact a tile shows


@dataclass(frozen=True)
class DashboardSettings:
    """Settings of one dashboard process.

    Attributes:
        address: the convstream server, host:port.
        host: where the web page listens; 127.0.0.1 keeps it on this machine.
        port: the web page's port; 0 picks a free one.
        threshold: the score that raises an alert; None: the model's own threshold.
        max_fps: results per second the dashboard asks of each camera (frames with heatmap).
        queue_size: results the server keeps waiting for the dashboard per camera.
        poll_s: seconds between ListCameras calls (states, rates, cameras added or removed).
        history_s: seconds of score history kept per camera and drawn in its sparkline.
        alert_cooldown_s: the shortest time between two alerts of one camera; an episode that
            starts inside it is held and raised once it has passed.
        alert_frames: results in a row at or over the threshold that raise an alert (1: the
            first one does; 2, the default, passes over one result's spike, which most
            false alarms are, as the client's alerts() does).
        max_alerts: alerts (with their snapshots) kept in memory, newest first.
        alerts_dir: where alerts and their snapshots are also written, and read back from
            at start; None: in memory only.
        alerts_max_mb: the most megabytes (10**6 bytes) of alerts kept in alerts_dir; the
            oldest are deleted past it.
        token: a bearer token for servers that require one (role watch is enough).
        token_file: the file ``token`` was read from, read again on SIGHUP (a token the
            server's operator replaced); None: the token, if any, came otherwise.
        tls: how to reach a server that uses TLS (its CA, a client certificate for mutual
            TLS, the name its certificate carries); None: plaintext.
        allow_plaintext_token: send ``token`` without TLS to a server on another machine,
            where the network itself is private (a VPN); refused otherwise.
        allowed_hosts: host names the page also answers to (in a request's Host header),
            such as a reverse proxy's public name. Listening on loopback, it answers only to
            localhost and loopback addresses besides these: a web page elsewhere cannot read
            it by pointing a name of its own at 127.0.0.1 (DNS rebinding). Listening on
            another address, it answers to these names alone, or, with none given, to IP
            addresses, localhost and this machine's own names (``own_names``), for the same
            reason: a page pointing its name at the machine's LAN address.
        access_token: the secret a browser is given once, at the page's login form, to see
            the page, its live data and the alert images (a script sends it as
            ``Authorization: Bearer``); None: whoever reaches the page sees it.
        https_cert, https_key: PEM files of the page's own certificate (its chain first)
            and key: the page is then served over HTTPS only; None: plain HTTP.
        contact: whom operators call about a camera that is down, as a tile says it (e.g.
            "maintenance, ext. 4411"), in place of the advice for whoever runs the server,
            which goes to the tile's tooltip; None: that advice.
    """

    address: str = DEFAULT_ADDRESS
    host: str = "127.0.0.1"
    port: int = 8080
    threshold: float | None = None
    max_fps: float = 5.0
    queue_size: int = 1
    poll_s: float = 1.0
    history_s: float = 300.0
    alert_cooldown_s: float = 10.0
    alert_frames: int = 2
    max_alerts: int = 100
    alerts_dir: Path | None = None
    alerts_max_mb: float = 1000.0
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    tls: TLS | None = None
    allow_plaintext_token: bool = False
    allowed_hosts: tuple[str, ...] = ()
    access_token: str | None = field(default=None, repr=False)
    https_cert: Path | None = None
    https_key: Path | None = None
    contact: str | None = None

    @property
    def listens_on_loopback(self) -> bool:
        return is_loopback(self.host)

    def answers_to(self, host_header: str) -> bool:
        """Whether the page answers a request with this Host header (see allowed_hosts)."""
        name = host_header_name(host_header)
        if name is None:
            return False
        allowed = {n.strip().lower().strip("[]") for n in self.allowed_hosts}
        if self.listens_on_loopback:
            return name in allowed or is_loopback(name)
        if allowed:
            return name in allowed
        return _is_address(name) or name in own_names()

    def __post_init__(self) -> None:
        checks = [
            (bool(self.address.strip()), f"address must be host:port, got {self.address!r}"),
            (0 <= self.port <= 65535, f"port must be 0..65535, got {self.port}"),
            (
                self.threshold is None or 0.0 <= self.threshold <= 1.0,
                f"threshold must be in [0, 1], got {self.threshold}",
            ),
            (0.1 <= self.max_fps <= 30, f"max_fps must be in [0.1, 30], got {self.max_fps}"),
            (1 <= self.queue_size <= 16, f"queue_size must be 1..16, got {self.queue_size}"),
            (0.1 <= self.poll_s <= 60, f"poll_s must be in [0.1, 60], got {self.poll_s}"),
            (10 <= self.history_s <= 3600, f"history_s must be 10..3600, got {self.history_s}"),
            (
                0 <= self.alert_cooldown_s <= 3600,
                f"alert_cooldown_s must be 0..3600, got {self.alert_cooldown_s}",
            ),
            (1 <= self.max_alerts <= 10_000, f"max_alerts must be 1..10000, got {self.max_alerts}"),
            (1 <= self.alert_frames <= 30, f"alert_frames must be 1..30, got {self.alert_frames}"),
            (
                1 <= self.alerts_max_mb <= 10_000_000,
                f"alerts_max_mb must be 1..10000000 (10 TB), got {self.alerts_max_mb:g}",
            ),
            (
                (self.https_cert is None) == (self.https_key is None),
                "https_cert and https_key go together: the certificate and its key",
            ),
            (
                self.access_token is None or len(self.access_token) >= 16,
                "access_token must be 16 characters or more",
            ),
            (
                self.contact is None
                or (0 < len(self.contact) <= MAX_CONTACT and self.contact.isprintable()),
                f"contact must be 1 to {MAX_CONTACT} printable characters, such as "
                f"'maintenance, ext. 4411'; got {self.contact!r:.60}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_plaintext_token(
            self.address, tls=self.tls, token=self.token, allow=self.allow_plaintext_token
        )


def _is_address(name: str) -> bool:
    """An IP address (a browser that reached the page by its address sends that as Host)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
