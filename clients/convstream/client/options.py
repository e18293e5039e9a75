"""Client options as small immutable value objects, in the manner of httpx's ``Timeout``.

Client(
    "10.0.0.5:50051",
    timeout=Timeout(10.0, stream=None),
    tls=TLS(ca="ca.pem"),
    token="s3cret",
    limits=Limits(max_message_bytes=128 * 1024 * 1024),
    options=ResultOptions(feature_maps=["stage3"], encoding="uint8"),
    upload=Upload("jpeg", quality=85),
)
"""

from __future__ import annotations

import json
import math
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc

from convstream.v1 import MAX_QUEUE_SIZE
from convstream.v1 import convstream_pb2 as pb

__all__ = ["TLS", "Encoding", "Freshness", "Limits", "ResultOptions", "Retry", "Timeout", "Upload"]

Encoding = Literal["float32", "float16", "uint8"]
Freshness = Literal["lossless", "latest_only", "bounded_queue"]

ENCODINGS: dict[str, int] = {
    "float32": pb.TENSOR_ENCODING_FLOAT32,
    "float16": pb.TENSOR_ENCODING_FLOAT16,
    "uint8": pb.TENSOR_ENCODING_UINT8,
}
FRESHNESS: dict[str, int] = {
    "lossless": pb.FRESHNESS_LOSSLESS,
    "latest_only": pb.FRESHNESS_LATEST_ONLY,
    "bounded_queue": pb.FRESHNESS_BOUNDED_QUEUE,
}
SERVICE = "convstream.v1.Convstream"
MiB = 1024 * 1024


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")


@dataclass(frozen=True)
class Timeout:
    """How long calls may take, in seconds; None (or math.inf) means no limit.

    Args:
        call: deadline of each unary call (model_info, analyze), retries included.
        stream: deadline of each StreamFrames call a stream() makes (one, or one per
            resume), and of each WatchCamera call a watch() makes: a watch then ends with
            DeadlineExceeded after this long; None (the default) lets both run for as long
            as frames keep coming.

    Example:
        >>> Timeout(5.0)
        Timeout(call=5.0, stream=None)
    """

    call: float | None = 30.0
    stream: float | None = None

    def __post_init__(self) -> None:
        _check_positive("Timeout.call", self.call)
        _check_positive("Timeout.stream", self.stream)
        for name in ("call", "stream"):  # gRPC takes an infinite deadline as one long past
            if getattr(self, name) == math.inf:
                object.__setattr__(self, name, None)


@dataclass(frozen=True)
class TLS:
    """Transport security: the server's CA, and a client certificate for mutual TLS.

    Args:
        ca: PEM file of the CA that signed the server's certificate (its path, or its PEM as
            bytes or as text beginning "-----BEGIN"); None uses the system's roots.
        cert: PEM certificate chain of this client, for servers that require mutual TLS
            (a path, bytes or text, as ``ca``).
        key: PEM private key matching ``cert`` (a path, bytes or text, as ``ca``).
        server_name: the name to expect in the server's certificate when it differs from the
            address's host (e.g. connecting by IP).
    """

    ca: str | Path | bytes | None = None
    cert: str | Path | bytes | None = None
    key: str | Path | bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS needs both cert and key for a client certificate, or neither")

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel arguments TLS needs besides the credentials: the expected server name."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; reads the PEM files now (OSError if one is missing,
        ValueError if one holds something else than it should, e.g. cert and key swapped)."""
        ca = _pem(self.ca, "ca", _CERTIFICATE)
        cert = _pem(self.cert, "cert", _CERTIFICATE)
        key = _pem(self.key, "key", _PRIVATE_KEY)
        if cert is not None and key is not None:
            _check_pair(cert, key, self.cert, self.key)
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def _check_pair(cert: bytes, key: bytes, cert_from: object, key_from: object) -> None:
    """ValueError unless the private key belongs to the certificate (gRPC would only log
    "Invalid private key" and fail every call with a hint about the CA)."""
    key_name = _named(key_from)
    if b"ENCRYPTED" in key:
        raise ValueError(f"TLS key {key_name} is encrypted; gRPC takes an unencrypted key")
    with tempfile.TemporaryDirectory() as folder:  # the ssl module reads files only
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_cert_chain(cert_path, key_path, password=lambda: b"")  # never a prompt
        except ssl.SSLError as exc:
            why = "is not the key of" if "KEY_VALUES_MISMATCH" in str(exc) else "cannot go with"
            raise ValueError(
                f"TLS key {key_name} {why} the certificate {_named(cert_from)} "
                f"({exc.reason or exc})"
            ) from None


_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"  # PKCS#8, RSA, EC, ENCRYPTED ...


def _pem(value: str | Path | bytes | None, what: str, marker: bytes) -> bytes | None:
    """The PEM bytes of a TLS field; ValueError, saying what the file holds, if it lacks the
    marker (gRPC would only log "Invalid cert chain file" and fail every call)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        data = value.encode()  # PEM text (an environment variable, a secret store), no path
    else:
        data = Path(value).read_bytes()
    if marker not in data:
        found = (
            "a private key"
            if _PRIVATE_KEY in data
            else "a certificate"
            if _CERTIFICATE in data
            else "no PEM block"
        )
        expected = "a PEM certificate" if marker == _CERTIFICATE else "a PEM private key"
        swapped = what in ("cert", "key") and found.startswith("a ")
        hint = " (cert and key swapped?)" if swapped else ""
        raise ValueError(f"TLS {what} {_named(value)} holds {found}, expected {expected}{hint}")
    return data


def _named(value: object) -> str:
    """How an error names a TLS field's value: its path, or "PEM bytes" given in memory."""
    if isinstance(value, bytes):
        return "PEM bytes"
    return "PEM text" if str(value).lstrip().startswith("-----BEGIN") else str(value)


@dataclass(frozen=True)
class Retry:
    """What to do when the server is unavailable (restarting, draining, not yet up).

    Unary calls retry inside gRPC (its service config ``retryPolicy``); a stream started with
    ``resume=True`` reconnects with the same backoff for up to ``resume_timeout`` seconds and
    re-sends the frames not yet answered, and a ``watch()`` subscribes again the same way.

    Args:
        attempts: tries of a unary call in all, the first included (gRPC allows at most 5).
        backoff: seconds before the second try; doubled for each later one.
        max_backoff: the longest wait between two tries.
        resume_timeout: how long a broken stream or watch keeps trying to reconnect; a
            restarting server has to load and warm up its model first. A stream or watch
            that never connected gets ``attempts`` tries (a wrong address fails within
            seconds), unless this is ``math.inf``: for good, from the first try (an alerter
            that must outlast any outage, started before its server too); then it raises
            only when closed.

    Example:
        >>> Retry(attempts=3).delay(2)
        0.2
    """

    attempts: int = 5
    backoff: float = 0.1
    max_backoff: float = 1.0
    resume_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 5:
            raise ValueError(f"Retry.attempts must be 1..5, got {self.attempts}")
        for name, value in (("backoff", self.backoff), ("max_backoff", self.max_backoff)):
            if not 0 < value < math.inf:  # a channel's backoff is a finite time; NaN too
                raise ValueError(
                    f"Retry.{name} must be a positive, finite number of seconds, got {value!r}"
                )
        if not self.resume_timeout >= 0:  # NaN too, which never ran out
            raise ValueError(
                f"Retry.resume_timeout must be >= 0 (math.inf: for good), got "
                f"{self.resume_timeout!r}"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (counting from 1); the doubling
        stops at 2**60, as a watch that outlasts any outage reaches try 1,025 (2**1024
        overflowed a float)."""
        return min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 60))

    def service_config(self, methods: Sequence[str] = ("Analyze", "GetModelInfo")) -> str:
        """A channel's ``grpc.service_config``: these unary methods retry on UNAVAILABLE."""
        if self.attempts < 2:
            return json.dumps({"methodConfig": []})
        policy = {
            "maxAttempts": self.attempts,
            "initialBackoff": f"{self.backoff}s",
            "maxBackoff": f"{self.max_backoff}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        names = [{"service": SERVICE, "method": m} for m in methods]
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


@dataclass(frozen=True)
class Limits:
    """Sizes the client accepts and holds.

    Args:
        max_message_bytes: the largest message sent or received; the default fits every
            feature map of a 640x480 input in float32.
        max_in_flight: frames of a stream read from the source but not yet answered; past it
            the client stops reading the source until answers arrive.
        fresh_in_flight: the same for a stream whose results should be fresh (freshness
            "latest_only", or a latest-only Video's ``frames()``, a camera's by default): a
            loop slower than the camera then gets results of frames at most about this many
            of its turns old, not a backlog of max_in_flight. 2 keeps a lone stream's server
            busy on a LAN; over a link whose round trip is longer than an analysis (a remote
            server) raise it, or the stream gets about 2 results a round trip.
        fresh_watch: camera calls (``cameras()``, ``watch()``) get a connection of their own
            whose HTTP/2 window stays at gRPC's initial 64 KiB. Results in flight are bounded
            by that window, so a watcher that reads slower than its results come finds at most
            about 64 KiB of them waiting (one result with feature maps, about eight with a
            heatmap only) and the server drops the rest, listed in ``dropped_frame_ids``.
            False lets gRPC grow the window (BDP probing) to megabytes, i.e. seconds of stale
            results for a slow reader, in exchange for throughput on a long fast link.
    """

    max_message_bytes: int = 64 * MiB
    max_in_flight: int = 32
    fresh_in_flight: int = 2
    fresh_watch: bool = True

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.fresh_in_flight < 1:
            raise ValueError(f"fresh_in_flight must be at least 1, got {self.fresh_in_flight}")


@dataclass(frozen=True)
class ResultOptions:
    """What each result carries.

    Args:
        feature_maps: stage names to return, e.g. ("stage3",); see ``ModelInfo.stages``.
        encoding: how tensors travel: "float16" (the default), "float32", or "uint8" (a
            quarter of float32, dequantised on arrival). Results always hold float32 arrays.
        heatmap: include the damage heatmap.
        input_jpeg: include the analysed (letterboxed) model input as JPEG, for viewers.

    Example:
        >>> ResultOptions(feature_maps=["stage3"], encoding="uint8").feature_maps
        ('stage3',)
    """

    feature_maps: Sequence[str] = ()
    encoding: Encoding = "float16"
    heatmap: bool = True
    input_jpeg: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.feature_maps, str):
            raise TypeError(f"feature_maps must be a sequence of names, not {self.feature_maps!r}")
        object.__setattr__(self, "feature_maps", tuple(self.feature_maps))
        if self.encoding not in ENCODINGS:
            known = ", ".join(ENCODINGS)
            raise ValueError(f"encoding must be one of {known}, got {self.encoding!r}")

    def to_proto(
        self, freshness: Freshness | None = None, queue_size: int | None = None
    ) -> pb.ResultOptions:
        """The wire message; ``freshness`` and ``queue_size`` only matter on a stream."""
        message = pb.ResultOptions(
            feature_maps=self.feature_maps,
            encoding=ENCODINGS[self.encoding],  # type: ignore[arg-type]
            include_heatmap=self.heatmap,
            include_frame=self.input_jpeg,
        )
        if freshness is not None:
            if freshness not in FRESHNESS:
                raise ValueError(
                    f"freshness must be one of {', '.join(FRESHNESS)}, got {freshness!r}"
                )
            message.freshness = FRESHNESS[freshness]  # type: ignore[assignment]
        if queue_size is not None:
            if not 1 <= queue_size <= MAX_QUEUE_SIZE:
                raise ValueError(f"queue_size must be 1..{MAX_QUEUE_SIZE}, got {queue_size}")
            message.queue_size = queue_size
        return message


@dataclass(frozen=True)
class Upload:
    """How frames the client holds as pixels (arrays, video, other image formats) are sent.

    JPEG and PNG bytes and files go as they are, never re-encoded.

    Args:
        format: "jpeg" (small, lossy), "png" (lossless, slower) or "raw" (no encoding cost,
            about 20x the bytes of JPEG; best on a fast link).
        quality: JPEG quality, 1..100.
    """

    format: Literal["jpeg", "png", "raw"] = "jpeg"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.format not in ("jpeg", "png", "raw"):
            raise ValueError(f"Upload.format must be jpeg, png or raw, got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"Upload.quality must be 1..100, got {self.quality}")
