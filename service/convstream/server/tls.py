"""TLS: the PEM files checked before gRPC sees them, and credentials that a reload can rotate.

gRPC reports a bad certificate or key only as "Invalid private key" in its log and then fails
to bind, which reads as a port in use; the stdlib ``ssl`` module loads the same files and says
which one is wrong, so every file is checked here first, with the setting that names it.
"""

from __future__ import annotations

import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc


class TLSFileError(ValueError):
    """A TLS file is missing or unusable; the message names the setting and the path."""


@dataclass(frozen=True)
class PemFiles:
    """The PEM contents gRPC is given: certificate chain, private key, client CA (or None)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


def missing_files(files: dict[str, Path | None]) -> list[str]:
    """One line per setting whose file is missing, e.g. "tls_cert /etc/x.crt does not exist"."""
    problems = []
    for setting, path in files.items():
        if path is None:
            continue
        if not path.exists():
            problems.append(f"{setting} {path} does not exist")
        elif not path.is_file():
            problems.append(f"{setting} {path} is not a file")
    return problems


def read_pem(cert: Path, key: Path, client_ca: Path | None) -> PemFiles:
    """Read the files once and check them with ``ssl``, the way the server will use them.

    Raises:
        TLSFileError: a file cannot be read, is not the PEM it should be, or the key is not
            tls_cert's (or is encrypted, which gRPC cannot use).
    """
    pem = PemFiles(_read("tls_cert", cert), _read("tls_key", key), None)
    if client_ca is not None:
        pem = PemFiles(pem.cert, pem.key, _read("tls_client_ca", client_ca))
    check_pem(pem, cert, key, client_ca)
    return pem


def check_pem(pem: PemFiles, cert: Path, key: Path, client_ca: Path | None) -> None:
    """TLSFileError naming the setting when ``pem`` (read from those paths) is unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=pem.cert.decode("ascii", "replace"))
    except ssl.SSLError:
        swapped = b"PRIVATE KEY-----" in pem.cert
        raise TLSFileError(
            f"tls_cert {cert} is not a PEM certificate"
            + (" (it holds a private key: are tls_cert and tls_key swapped?)" if swapped else "")
        ) from None
    if pem.client_ca is not None:
        try:
            context.load_verify_locations(cadata=pem.client_ca.decode("ascii", "replace"))
        except ssl.SSLError:
            raise TLSFileError(
                f"tls_client_ca {client_ca} is not a PEM certificate (the CA that signs the "
                "clients' certificates)"
            ) from None
    encrypted = False

    def password() -> bytes:
        nonlocal encrypted
        encrypted = True
        return b""  # never prompt on a terminal: the server runs unattended

    # load_cert_chain reads only files: the bytes just read go to a private folder, so what
    # is checked is exactly what gRPC gets, even while the files are being replaced.
    with tempfile.TemporaryDirectory(prefix="convstream-tls-") as folder:
        (Path(folder) / "cert.pem").write_bytes(pem.cert)
        (Path(folder) / "key.pem").write_bytes(pem.key)
        try:
            context.load_cert_chain(Path(folder) / "cert.pem", Path(folder) / "key.pem", password)
        except ssl.SSLError as exc:
            if encrypted:
                message = f"tls_key {key} is encrypted; gRPC needs it unencrypted"
            elif exc.reason == "KEY_VALUES_MISMATCH":
                message = f"tls_key {key} does not match tls_cert {cert}"
            elif b"CERTIFICATE-----" in pem.key and b"PRIVATE KEY-----" not in pem.key:
                message = (
                    f"tls_key {key} is not a PEM private key (it holds a certificate: are "
                    "tls_cert and tls_key swapped?)"
                )
            else:
                message = f"tls_key {key} is not a PEM private key"
            raise TLSFileError(message) from None


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSFileError(f"{setting} {path} cannot be read: {exc.strerror or exc}") from None


class RotatingCredentials:
    """gRPC server credentials whose certificate a reload can replace.

    New connections get the newest files; connections already open keep the certificate they
    were made with. Whether clients must present a certificate (mutual TLS) is fixed when the
    port is bound.
    """

    def __init__(self, pem: PemFiles) -> None:
        self._lock = threading.Lock()  # gRPC asks from its own threads, at each handshake
        self._current = pem
        self._pending: PemFiles | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            _configuration(pem),
            self._fetch,
            require_client_authentication=pem.client_ca is not None,
        )

    @property
    def current(self) -> PemFiles:
        return self._current

    def replace(self, pem: PemFiles) -> bool:
        """Serve ``pem`` to new connections; False (nothing to do) when it is what they get."""
        with self._lock:
            if pem == self._current:
                return False
            self._current = self._pending = pem
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return None if pending is None else _configuration(pending)


def _configuration(pem: PemFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(pem.key, pem.cert)], root_certificates=pem.client_ca
    )
