"""The server's exception tree, translated to gRPC status codes once, in the servicer.

    ConvstreamError                 base; never raised itself
    ├── InvalidFrame                INVALID_ARGUMENT: a frame that cannot be analysed
    │   ├── FrameTooLarge           INVALID_ARGUMENT: over the pixel or size limits
    │   └── RefusedMessage          INVALID_ARGUMENT: not the method's message, or too large
    ├── InvalidOptions              INVALID_ARGUMENT: unknown feature map, bad queue size, ...
    │   └── ResultTooLarge          INVALID_ARGUMENT: the result asked for passes the limit
    ├── NameTaken                   ALREADY_EXISTS: a publish name a camera or stream has
    ├── NotFound                    NOT_FOUND: no camera by that id
    ├── IdleTimeout                 DEADLINE_EXCEEDED: a stream sent nothing for too long
    ├── Overloaded                  RESOURCE_EXHAUSTED: over the stream or queue limits now
    ├── CameraDown                  FAILED_PRECONDITION: a camera that gave up or ended
    ├── CameraInTrouble             UNAVAILABLE: a camera stalled or reconnecting (a status
    │                               its watchers' results carry; the watch goes on)
    ├── ModelFailed                 INTERNAL: the model failed on the frame, or gave no
    │                               probabilities (NaN, logits) for it
    └── Draining                    UNAVAILABLE: the server is shutting down

Messages say what was expected and what arrived.
"""

from __future__ import annotations

import asyncio

import grpc

from convstream.v1 import convstream_pb2 as pb


def quietly(future: asyncio.Future[None]) -> None:
    """A done callback that retrieves a write's outcome, so a failure no one waits for (the
    client left) is not logged as "Task exception was never retrieved"."""
    if not future.cancelled():
        future.exception()


class ConvstreamError(Exception):
    """Base of every error the server reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # the convstream_frames_total outcome of a frame refused with it
    outcome: str = "rejected"


class InvalidFrame(ConvstreamError):
    """The frame's bytes or pixels cannot be analysed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    outcome = "invalid"


class FrameTooLarge(InvalidFrame):
    """The frame is bigger than the configured limits (checked before decoding)."""


class RefusedMessage(InvalidFrame):
    """A request message refused before its method sees it: bytes that do not parse as the
    protobuf message the method takes, or a message over max_message_bytes (gRPC takes up
    to twice that, so that such a frame is refused alone, not its whole stream).

    The server's request deserializers return one (rather than raise, which gRPC would turn
    into UNKNOWN and the end of a stream), so that a unary call answers INVALID_ARGUMENT and
    a stream refuses that one message and goes on: gRPC's framing still marks where the next
    message starts. ``frame_id`` and ``source`` are the frame's where it parsed (0 and "" if
    not), for its refusal to name it.
    """

    def __init__(self, message: str, frame_id: int = 0, source: str = "") -> None:
        super().__init__(message)
        self.frame_id, self.source = frame_id, source


class InvalidOptions(ConvstreamError):
    """The request asks for something the server does not have."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    outcome = "invalid"


class ResultTooLarge(InvalidOptions):
    """The result the options ask for would pass the message limit: INVALID_ARGUMENT, as a
    request over it is, for it would on this server whatever its load. RESOURCE_EXHAUSTED is
    kept for what passes (retry later)."""


class NameTaken(ConvstreamError):
    """A stream asks to publish under a name a camera or another published stream has: it
    may be free later (when that stream ends), unlike an option that can never be right."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ConvstreamError):
    """The call's token may not do this with what it names (a camera it may not see)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ConvstreamError):
    """The request names a camera the server does not have (or no longer has)."""

    code = grpc.StatusCode.NOT_FOUND


class IdleTimeout(ConvstreamError):
    """A stream sent no frame, or read no result waiting for it, for longer than the server's
    stream_idle_timeout_s."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DeadlineExpired(ConvstreamError):
    """The call's deadline passed before its frame reached the model; it was not analysed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Overloaded(ConvstreamError):
    """Admitting this stream or frame would pass a configured limit now: retry later.
    What could never fit is INVALID_ARGUMENT instead (ResultTooLarge, FrameTooLarge)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class CameraDown(ConvstreamError):
    """The camera has given up (FAILED) or its file ended (STOPPED): no frames will come
    until the server's config changes it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class CameraInTrouble(ConvstreamError):
    """The camera stalled, or lost its source and is retrying: said to each of its watchers
    as a result's status (no frame: frame_id 0), while the watch goes on. ``state``: the
    camera's, as the message says it."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, state: pb.CameraState) -> None:
        super().__init__(message)
        self.state = state


class ModelFailed(ConvstreamError):
    """The model could not run the frame, or gave a score or heatmap that is no probability
    (NaN, logits): the frame has no score, which is never shown as "intact"."""

    code = grpc.StatusCode.INTERNAL
    outcome = "error"


class Draining(ConvstreamError):
    """The server is shutting down and takes no new work."""

    code = grpc.StatusCode.UNAVAILABLE
