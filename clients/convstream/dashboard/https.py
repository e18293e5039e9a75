"""The page over HTTPS: its certificate, checked as the server's is (port.py routes each
connection to it, or to a redirect to https://)."""

from __future__ import annotations

import logging
import ssl

from convstream.dashboard.settings import DashboardSettings
from convstream.v1.pem import TLSFileError, certificate_dates, secret_file_warning

logger = logging.getLogger(__name__)

# A connection with no request in progress (a half-sent one included) is closed after this
# long: aiohttp's own default is an hour, so a sender could hold the page's file descriptors
# with a byte each. Answers and the live WebSocket go on; 75 s, as aiohttp's run_app, outlasts
# the idle keep-alive of the proxies one may put in front (60 s for nginx and AWS's ALB), so
# that a proxy never sends a request on a connection the page is closing.
IDLE_CONNECTION_S = 75.0


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
    """The page's certificate expiring soon or naming no host (ValueError when it has
    expired: browsers refuse it), and a key every user of the machine can read."""
    if settings.https_cert is None:
        return []
    try:
        warnings = certificate_dates(
            "--https-cert",
            settings.https_cert,
            settings.https_cert.read_bytes(),
            renew="put the new files in their place and send the dashboard SIGHUP",
        )
    except TLSFileError as exc:
        raise ValueError(str(exc)) from None
    key = settings.https_key
    if key is not None and (
        said := secret_file_warning(key, f"--https-key {key}", ": anyone may pose as this page")
    ):
        warnings.append(said)
    return warnings
