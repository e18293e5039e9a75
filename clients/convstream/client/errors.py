"""Every error the client raises, and the one place gRPC status codes become them.

    ConvstreamError            base; never raised itself. ``.code``: the grpc.StatusCode, or
    │                          None for an error found on this side of the wire
    ├── SourceError            an image file, folder, video or camera cannot be read (local)
    ├── ProtocolError          OK where an answer was due, or an answer for a frame never sent
    ├── InvalidFrame           INVALID_ARGUMENT, OUT_OF_RANGE: the frame or the options sent
    │                          with it cannot be analysed; the message says what was expected
    ├── Overloaded             RESOURCE_EXHAUSTED: over a stream, queue or message-size limit
    ├── ServerUnavailable      UNAVAILABLE: no server answers at the address, or it is shutting
    │                          down (unary calls are retried first; streams resume if asked)
    ├── DeadlineExceeded       DEADLINE_EXCEEDED: the call outlived its Timeout
    ├── Cancelled              CANCELLED: the call was cancelled before it finished
    ├── Unauthenticated        UNAUTHENTICATED: a missing or wrong token or client certificate
    ├── PermissionDenied       PERMISSION_DENIED: the credentials may not make this call
    ├── NotFound               NOT_FOUND: e.g. an unknown camera id
    ├── Unsupported            UNIMPLEMENTED: the server does not offer this call (older version)
    ├── Rejected               FAILED_PRECONDITION, ABORTED, ALREADY_EXISTS: refused in the
    │                          server's current state
    └── ServerError            INTERNAL, UNKNOWN, DATA_LOSS: the server failed, not the request

``from_rpc_error`` translates a failed call once, at the boundary; per-frame failures in a
stream arrive as ``Result.error`` (built by ``from_status``) instead of being raised, because a
bad frame never ends a stream.
"""

from __future__ import annotations

import grpc

__all__ = [
    "Cancelled",
    "ConvstreamError",
    "DeadlineExceeded",
    "InvalidFrame",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "ProtocolError",
    "Rejected",
    "ServerError",
    "ServerUnavailable",
    "SourceError",
    "Unauthenticated",
    "Unsupported",
    "error_class",
    "from_rpc_error",
    "from_status",
]


class ConvstreamError(Exception):
    """Base of every error the convstream client raises.

    Attributes:
        message: what went wrong, in the server's words where the server said it.
        code: the gRPC status code, or None for an error found by the client itself.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class SourceError(ConvstreamError):
    """A local image file, folder, video or camera cannot be read."""


class ProtocolError(ConvstreamError):
    """The server's answers do not follow the convstream.v1 contract."""


class InvalidFrame(ConvstreamError):
    """The frame, or the options sent with it, cannot be analysed."""


class Overloaded(ConvstreamError):
    """The server refused work over one of its limits; retry later or ask for less."""


class ServerUnavailable(ConvstreamError):
    """No server answers at the address, or it is shutting down."""


class DeadlineExceeded(ConvstreamError):
    """The call took longer than its timeout."""


class Cancelled(ConvstreamError):
    """The call was cancelled before it finished."""


class Unauthenticated(ConvstreamError):
    """The server wants a (different) token or client certificate."""


class PermissionDenied(ConvstreamError):
    """The credentials are valid but may not make this call."""


class NotFound(ConvstreamError):
    """The thing asked for does not exist on the server, e.g. a camera id."""


class Unsupported(ConvstreamError):
    """The server does not implement this call; it may be an older version."""


class Rejected(ConvstreamError):
    """The server refused the call in its current state."""


class ServerError(ConvstreamError):
    """The server failed while handling a valid request."""


_CLASSES: dict[grpc.StatusCode, type[ConvstreamError]] = {
    grpc.StatusCode.OK: ProtocolError,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidFrame,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Rejected,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.FAILED_PRECONDITION: Rejected,
    grpc.StatusCode.ABORTED: Rejected,
    grpc.StatusCode.OUT_OF_RANGE: InvalidFrame,
    grpc.StatusCode.UNIMPLEMENTED: Unsupported,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailable,
    grpc.StatusCode.DATA_LOSS: ServerError,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_class(code: grpc.StatusCode) -> type[ConvstreamError]:
    """The exception class a status code becomes."""
    return _CLASSES.get(code, ServerError)


def from_status(code: int | grpc.StatusCode, message: str) -> ConvstreamError:
    """An exception for a status, e.g. a FrameResult's per-frame ``status``.

    Args:
        code: a grpc.StatusCode or its number on the wire (3 for INVALID_ARGUMENT).
        message: the server's words.
    """
    if not isinstance(code, grpc.StatusCode):
        number = code
        code = _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
        if code == grpc.StatusCode.UNKNOWN and number != code.value[0]:
            message = f"unknown status code {number}: {message}"
    return error_class(code)(message or code.name, code=code)


def from_rpc_error(exc: grpc.RpcError, *, address: str = "") -> ConvstreamError:
    """Translate a failed gRPC call (sync or asyncio) into the tree above.

    Args:
        exc: the error gRPC raised; its code() and details() are read.
        address: the server's address, named in messages where the call never reached it.
    """
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    message = details or code.name
    if code == grpc.StatusCode.UNAVAILABLE and address:
        message = f"convstream server at {address} is unavailable: {message}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and address:
        message = f"call to {address} timed out: {message}"
    return from_status(code, message)
