"""Every error the client raises, and the one place gRPC status codes become them.

    ConvstreamError            base; never raised itself. ``.code``: the grpc.StatusCode, or
    │                          None for an error found on this side of the wire
    ├── SourceError            an image file, folder, video or camera cannot be read (local)
    ├── ProtocolError          OK where an answer was due, or an answer for a frame never sent
    ├── ClientClosed           a call on a client after its close() (also a RuntimeError)
    ├── InvalidFrame           INVALID_ARGUMENT, OUT_OF_RANGE: the frame or the options sent
    │                          with it cannot be analysed; the message says what was
    │                          expected. Also RESOURCE_EXHAUSTED for a message over a limit:
    │                          a frame over the server's, or a result over this client's
    │                          (Limits.max_message_bytes; gRPC then ends the whole call).
    │                          Retrying the same request gets the same answer
    ├── Overloaded             RESOURCE_EXHAUSTED: over a stream, queue or byte limit for now:
    │                          back off and retry
    ├── ServerUnavailable      UNAVAILABLE: no server answers at the address, it is shutting
    │                          down, or the TLS handshake failed (a certificate either side
    │                          refused; ``.hint`` says what to check); unary calls are retried
    │                          first, streams resume if asked
    ├── DeadlineExceeded       DEADLINE_EXCEEDED: the call outlived its Timeout
    ├── Cancelled              CANCELLED: the call was cancelled before it finished
    ├── Unauthenticated        UNAUTHENTICATED: a missing or wrong token
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

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc

from convstream.v1 import RESULTS_NOT_READ, SHUTTING_DOWN

if TYPE_CHECKING:
    from convstream.client.options import TLS

__all__ = [
    "Cancelled",
    "ClientClosed",
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
    "unavailable_hint",
]


class ConvstreamError(Exception):
    """Base of every error the convstream client raises.

    Attributes:
        message: what went wrong, in the server's words where the server said it.
        code: the gRPC status code, or None for an error found by the client itself.
        hint: what to check, where the client can say: for ServerUnavailable (no server
            there, or a TLS handshake that failed, judged from gRPC's message and how the
            client connected), else ""; str() of the error ends with it in brackets.
    """

    def __init__(
        self, message: str, *, code: grpc.StatusCode | None = None, hint: str = ""
    ) -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.message = message
        self.code = code
        self.hint = hint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    @property
    def kind(self) -> str:
        """The error's class in words, for people ("invalid frame", "server unavailable"):
        a table row or an overlay read `InvalidFrame: ...`."""
        return re.sub(r"(?<!^)(?=[A-Z])", " ", type(self).__name__).lower()


class SourceError(ConvstreamError):
    """A local image file, folder, video or camera cannot be read."""


class ClientClosed(ConvstreamError, RuntimeError):
    """A call on a client after its close(): make a new client. A RuntimeError too, as it
    was, so that code catching that goes on working."""


class ProtocolError(ConvstreamError):
    """The server's answers do not follow the convstream.v1 contract."""


class InvalidFrame(ConvstreamError):
    """The frame, or the options sent with it, cannot be analysed (also when their result
    would pass the message limit): retrying the same gets the same answer."""


class Overloaded(ConvstreamError):
    """The server refused work over one of its limits for now: back off and retry. (What
    could never fit, a result over the message limit, is InvalidFrame.)"""


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


def from_rpc_error(
    exc: grpc.RpcError, *, address: str = "", tls: TLS | None = None
) -> ConvstreamError:
    """Translate a failed gRPC call (sync or asyncio) into the tree above.

    Args:
        exc: the error gRPC raised; its code() and details() are read.
        address: the server's address, named in messages where the call never reached it.
        tls: how the client connected (None: plaintext), for the hint of an UNAVAILABLE.
    """
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    message = details or code.name
    if code == grpc.StatusCode.INTERNAL and _write_failed_in_core(exc, details):
        # gRPC's asyncio client reports a stream whose connection went while it wrote a
        # frame as its own INTERNAL, hiding the status Core had (grpc/grpc#36066): a server
        # stopped under a stream, now and then. It is the connection's end.
        code = grpc.StatusCode.UNAVAILABLE
        message = "the stream ended while a frame was being sent (gRPC: Internal error from Core)"
    if code == grpc.StatusCode.UNAUTHENTICATED and is_name_mismatch(message) and address:
        # gRPC's own check of the certificate's names against the address, in the client: a
        # TLS set-up that cannot work, not a token (the hint sent the user after a token on a
        # server that had none). A certificate that names its host in CN alone meets it.
        hint = unavailable_hint(message, tls)
        message = f"convstream server at {address} cannot be reached over TLS: {message}"
        return ServerUnavailable(message, code=code, hint=hint)
    if code == grpc.StatusCode.UNAVAILABLE and address:
        hint = unavailable_hint(message, tls)
        message = f"convstream server at {address} is unavailable: {message}"
        return ServerUnavailable(message, code=code, hint=hint)
    if code == grpc.StatusCode.UNAUTHENTICATED and address:
        # the server's words are for any gRPC client ("send metadata 'authorization: ...'")
        hint = "give the server's token: Client(address, token=...)"
        return Unauthenticated(message, code=code, hint=hint)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and address:
        # the server's end of a call whose results went unread is no timeout of the call's
        said = "ended the call" if message.startswith(RESULTS_NOT_READ) else "timed out"
        message = f"call to {address} {said}: {message}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (too_large := _TOO_LARGE.search(message)):
        # gRPC's own words for a message over its receiver's limit: the same message is
        # refused again, so no back-off helps (it read as Overloaded)
        side, size, limit = too_large.group(1), int(too_large.group(2)), int(too_large.group(3))
        if side == "CLIENT":  # an answer, over this client's limit
            return InvalidFrame(
                f"the server's answer ({size:,} bytes) is larger than this client takes "
                f"({limit:,}, Limits.max_message_bytes): raise that limit, or ask for fewer "
                f"feature maps or a smaller encoding (gRPC: {message})",
                code=code,
            )
        where = f"the server at {address}" if address else "the server"
        return InvalidFrame(  # a frame, over twice the server's max_message_bytes
            f"a frame of {size:,} bytes is more than {where} takes ({limit:,}, twice its "
            "max_message_bytes: past that gRPC refuses the message before the server sees it, "
            "ending the stream): send it as JPEG or smaller; with this client's "
            "Limits(max_message_bytes=...) at the server's model_info().max_message_bytes "
            f"such a frame is refused before it is sent, as its own result (gRPC: {message})",
            code=code,
        )
    return from_status(code, message)


# gRPC's message for a message over the receiving side's max_receive_message_length: this
# client's (an answer), or the server's (a frame)
_TOO_LARGE = re.compile(r"(CLIENT|SERVER): Received message larger than max \((\d+) vs\. (\d+)\)")


def _write_failed_in_core(exc: grpc.RpcError, details: str) -> bool:
    """gRPC's asyncio client's own INTERNAL for a write that Core refused (its words and its
    debug string), never a status a server sent."""
    debug = getattr(exc, "debug_error_string", None)
    said = debug() if callable(debug) else ""
    return details == "Internal error from Core" and "SendMessageOperation" in (said or "")


# How unavailable_hint names what to change: in the Python API, or as the commands' flags.
PYTHON_TERMS: Mapping[str, str] = {
    "ca": "TLS(ca=FILE)",
    "cert": "TLS(cert=FILE, key=FILE)",
    "server_name": "TLS(server_name=NAME)",
    "plaintext": "connect without TLS (tls=None)",
    "tls": "TLS() for the system's CAs",
}


_NAME_MISMATCH = "does not match SSL server name"  # gRPC's words, in the client


def is_name_mismatch(message: str) -> bool:
    """Whether gRPC's message is its client-side check of the server certificate's names
    against the address (UNAUTHENTICATED, though no token is involved)."""
    return _NAME_MISMATCH in message


# gRPC writes the address as ipv6:%5B::1%5D:50051 (or with the brackets themselves)
_IPV6_LOOPBACK = re.compile(r"ipv6:(?:\[|%5B)::1(?:\]|%5D):(\d+)")


def unavailable_hint(message: str, tls: TLS | None, terms: Mapping[str, str] = PYTHON_TERMS) -> str:
    """What to check when a call found no server, judged from gRPC's message and how the
    client connected; "" when there is nothing to add (the server is shutting down)."""
    if "certificate has expired" in message:
        return "the server's certificate has expired: its operator must renew it"
    if "Hostname Verification" in message or is_name_mismatch(message):
        if tls is not None and tls.server_name:
            return (
                f"the server's certificate does not carry the name {tls.server_name!r} given "
                f"with {terms['server_name']}"
            )
        return (
            "the server's certificate does not name the address given among its "
            "subjectAltNames, the names clients check (not its CN): give the name it carries "
            f"with {terms['server_name']}, or have its operator add the address"
        )
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return (
            f"the server's certificate is not signed by the CA given with {terms['ca']} (or, "
            "without it, by one this system trusts), or does not name this address (see "
            f"{terms['server_name']})"
        )
    if "WRONG_VERSION_NUMBER" in message or "wrong version number" in message:
        return f"the server does not use TLS: {terms['plaintext']}"
    if SHUTTING_DOWN in message:
        return ""
    if "DNS resolution failed" in message or "errors resolving" in message:
        return "the host name does not resolve: check the address, and this machine's DNS"
    if "http1.x server" in message or "Failed parsing HTTP/2" in message:
        # a browser's port: the dashboard's, or the metrics one
        return (
            "an HTTP/1 server answered there, not gRPC: the dashboard's or the metrics port? "
            "The server's gRPC port is its --port, 50051 by default"
        )
    ipv6_loopback = _IPV6_LOOPBACK.search(message)
    if "Connection refused" in message and ipv6_loopback:
        # localhost is ::1 and 127.0.0.1; gRPC tries both and says only the last error, so
        # a server on 127.0.0.1 alone (the default) that refused the TLS handshake read as
        # no server at all, depending on which address was tried last (an operator's review)
        port = ipv6_loopback.group(1)
        return (
            "nothing listens on [::1] (localhost's IPv6 address), and gRPC says only the last "
            "error of the addresses it tried: is `convstream serve` running? If it runs on "
            f"127.0.0.1 (its default), dial 127.0.0.1:{port} to see what went wrong there"
        )
    if "Connection refused" in message:
        return "nothing listens on that port: is `convstream serve` running there?"
    if "ping timeout" in message or "keepalive" in message or "timed out" in message:
        # a link that went silent (a cable, a switch, a firewall) rather than no server
        return (
            "it stopped answering: the network between here and there, or the server, is "
            "down or overloaded"
        )
    if ("Stream removed" in message or "reset by peer" in message) and not message.startswith(
        "failed to connect"
    ):
        # it was connected, a call under way: a server that stopped or restarted, or a network
        # that cut it (a socket closed while connecting is a refused handshake: below)
        return "the connection was lost: the server stopped or restarted, or the network cut it"
    if tls is None:
        return (
            f"is `convstream serve` running there? If it uses TLS, add {terms['ca']} or "
            f"{terms['tls']}"
        )
    if tls.cert is None:
        return (
            "is `convstream serve` running there? If it requires client certificates, "
            f"add {terms['cert']}"
        )
    return (
        "is `convstream serve` running there? If so, it refused the TLS handshake: is the "
        f"client certificate ({terms['cert']}) signed by the CA the server trusts, and "
        "still valid?"
    )
