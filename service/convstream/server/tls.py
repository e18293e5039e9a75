"""TLS credentials that a reload can rotate; the PEM files they serve are read and checked by
convstream.v1.pem, which the dashboard shares."""

from __future__ import annotations

import threading

import grpc

from convstream.v1.pem import PemFiles


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
