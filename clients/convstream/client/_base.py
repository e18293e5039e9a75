"""What Client and AsyncClient share: validated options, channel arguments, call metadata."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import grpc

from convstream.client.errors import (
    Cancelled,
    ClientClosed,
    ConvstreamError,
    DeadlineExceeded,
    NotFound,
    Overloaded,
    ServerUnavailable,
    from_rpc_error,
)
from convstream.client.frames import Frame, FrameLike, VideoFrames, as_frame, as_sent, to_request
from convstream.client.options import (
    TLS,
    Freshness,
    Limits,
    ResultOptions,
    Retry,
    Timeout,
    Upload,
)
from convstream.client.results import camera_state_name
from convstream.v1 import (
    CAMERA_ID,
    CAMERA_ID_RULE,
    MAX_QUEUE_SIZE,
    MAX_WATCH_FPS,
    RESULTS_NOT_READ,
    WATCHING,
    WATCHING_ERROR,
    WATCHING_KIND,
    WATCHING_STATE,
)
from convstream.v1 import convstream_pb2 as pb

logger = logging.getLogger("convstream.client")

DEFAULT_PORT = 50051
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
# Where a client whose address is not given connects, when set: the commands' --address
# default too, so that one `export` points a shell's commands and programs alike.
ADDRESS_ENV = "CONVSTREAM_ADDRESS"
# The server accepts pings every 10 s or slower, also between calls; 30 s finds a dead
# connection (a pulled cable, a NAT that forgot us) well before TCP would. A ping waits
# behind the frames already sent, so on a slow uplink a shorter timeout cut a healthy stream
# (a reviewer's 480 kbit/s link, a 10 s timeout: cut after 13 s).
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 20_000
# A watch's channel sends next to nothing, so a ping never waits there: it pings more often,
# and no ping of its own or gRPC's waits past the timeout (gRPC's own waited a minute behind
# which keepalive's waited too): a watch of a frozen server is told within 25 s, where an
# integrator's waited 90 s.
WATCH_KEEPALIVE_MS = 15_000
WATCH_KEEPALIVE_TIMEOUT_MS = 10_000
CLOSED = "the client was closed while this call ran"  # the Cancelled that close() causes
# The attribute of the log record that says a watched camera's state as its watch is taken
# (its value): the `watch` command, which says that state in its own words, leaves it out.
CAMERA_STATE_RECORD = "convstream_camera_state"


def keepalive(*, watch: bool = False) -> list[tuple[str, int]]:
    """The keepalive options of a channel that sends frames, or of one that only watches
    (``watch``: a client's cameras channel, the dashboard's)."""
    time_ms, timeout_ms = KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS
    if watch:
        time_ms, timeout_ms = WATCH_KEEPALIVE_MS, WATCH_KEEPALIVE_TIMEOUT_MS
    options = [
        ("grpc.keepalive_time_ms", time_ms),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    return [*options, ("grpc.http2.ping_timeout_ms", timeout_ms)] if watch else options


STEADY_S = 10.0  # a watch registered this long has held: a break after it is a new outage


def is_local_address(address: str) -> bool:
    """Whether a gRPC target stays on this machine: a Unix socket, localhost or a loopback
    address (by its host part, not a prefix: 127.0.0.1.nip.io is a DNS name like any other)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    # gRPC's target forms: dns:///host:port, dns:host:port, ipv4:host:port, ipv6:[host]:port
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme) :]
            break
    try:
        host = urlsplit(f"//{address}").hostname or ""
    except ValueError:  # "[::1:50051" and the like: not an address that is known to be local
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_plaintext_token(
    address: str, *, tls: object | None, token: str | None, allow: bool
) -> None:
    """Refuse to send a token in the clear off this machine, as gRPC itself refuses call
    credentials on a plaintext channel: whoever sees the traffic could read it and call as
    its holder. ``allow`` is for a network that is private by itself (a VPN, a WireGuard link).

    Raises:
        ValueError: a token, no TLS, an address that leaves this machine, and not ``allow``.
    """
    if token and tls is None and not is_local_address(address) and not allow:
        raise ValueError(
            f"refusing to send the token to {address} in plaintext: anyone who can see the "
            "traffic could read it and call as its holder; connect with TLS (tls=TLS(...)), "
            "or pass allow_plaintext_token=True where the network itself is private (a VPN)"
        )


def clean_token(token: str | None) -> str | None:
    """A bearer token as sent: without the whitespace around it (read from a file or a
    Kubernetes secret, it often ends with a newline, which gRPC refused in the client as an
    INTERNAL "Invalid metadata", reported as the server's failure); None for none.

    Raises:
        ValueError: a token that cannot travel as an HTTP/2 header value.
    """
    if token is None:
        return None
    token = token.strip()
    if token[:7].lower() == "bearer ":
        raise ValueError(
            "token is the secret alone: leave out the 'Bearer ' prefix, which the client adds"
        )
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(
            "token must be printable ASCII without spaces (it travels as an HTTP/2 header), "
            f"got {len(token)} characters"
        )
    return token or None


def client_version() -> str:
    try:
        return version("convstream")
    except PackageNotFoundError:
        return "0+unknown"


def check_published_name(name: object) -> None:
    """Raise ValueError unless the server would publish a stream under name (the ``source`` of
    its frames, with ``stream(..., publish=True)``): the server refuses any other name, and
    the stream then goes on unpublished."""
    if not isinstance(name, str) or not re.fullmatch(CAMERA_ID, name):
        raise ValueError(
            f"a published stream's name must be {CAMERA_ID_RULE}, e.g. 'belt-test'; got {name!r}"
        )


def check_camera_id(camera_id: object) -> None:
    """Raise ValueError unless camera_id could name a camera (CAMERA_ID, the server's rule):
    cameras are named in the server's config, and clients never pass a URL, a path or a
    device. The value is not echoed: a URL may carry a password."""
    if not isinstance(camera_id, str) or not camera_id:
        raise ValueError(f"camera_id must be a camera's id, e.g. 'dock-3', got {camera_id!r}")
    if "://" in camera_id or camera_id.startswith(("/", "\\", "device:")):
        raise ValueError(
            "camera_id is the id of a camera in the server's config (client.cameras() or "
            "`convstream cameras` lists them), never a URL, a path or a device"
        )
    if not re.fullmatch(CAMERA_ID, camera_id):
        raise ValueError(
            f"camera_id is {CAMERA_ID_RULE} (client.cameras() or `convstream cameras` lists "
            f"the ids); got one of {len(camera_id)} characters that is not"
        )


# gRPC's own target schemes (dns:host:port, unix:path, ...): what follows is theirs to read
GRPC_SCHEMES = frozenset(
    ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p")
)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def check_address(address: str) -> str:
    """The gRPC target a client dials for address: host:port, host (port 50051) or one of
    gRPC's own target forms. ValueError, saying what was expected, for what gRPC would dial
    somewhere else than meant or fail on as a name that does not resolve."""
    address = address.strip()
    if not address:
        raise ValueError(f"address must be host:port, e.g. 127.0.0.1:50051, got {address!r}")
    scheme = address.split("://", 1)[0].lower() if "://" in address else ""
    if scheme in ("http", "https", "grpc", "grpcs", "tcp"):
        # http://host:port reached gRPC as a name to resolve, and failed as "is the
        # server running there?" (gRPC's own schemes, dns:/// or xds:///, pass)
        raise ValueError(
            f"address must be host:port, without a scheme, got {address!r}: gRPC is not "
            f"{scheme}:// (for TLS: tls=TLS(...) in Python, --tls or --ca FILE for the "
            "commands)"
        )
    if any(c.isspace() for c in address):  # "not an address" was dialled as a host name
        raise ValueError(
            f"address must be host:port, e.g. 127.0.0.1:50051, got {address!r}: a host name "
            "has no spaces"
        )
    if address.isdigit():  # a port alone was dialled as a host name, then failed in DNS
        raise ValueError(
            f"address must be host:port, got a port alone ({address}): "
            f"127.0.0.1:{address} for a server on this machine"
        )
    if ":" not in address or re.fullmatch(r"\[[^\]]*\]", address):
        address = f"{address}:{DEFAULT_PORT}"  # [::1] too: gRPC dialled it on port 443
    elif _is_ipv6(address):  # ::1 alone: no port, as a bare host name (gRPC: 443)
        address = f"[{address}]:{DEFAULT_PORT}"
    host_port = re.fullmatch(r"(\[[^\]]*\]|[^:/\[\]]*):([^:/\[\]]*)", address)
    if host_port and host_port.group(1).lower() not in GRPC_SCHEMES:
        if host_port.group(1) in ("", "[]"):  # ":50051" was dialled as a name, "not resolved"
            raise ValueError(
                f"address has no host before its port, got {address!r}: "
                f"127.0.0.1{address.lstrip('[]')} for a server on this machine"
            )
        port = host_port.group(2)
        # gRPC dialled 99999 as 34463, an empty port as 443, and a name ("foo:bar") failed
        # as a host name that does not resolve
        if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
            raise ValueError(
                "address's port must be 1 to 65535 (host:port, e.g. 127.0.0.1:50051), got "
                f"{address!r}"
            )
    return address


class BaseClient:
    """Options and channel set-up common to the sync and the asyncio client."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: Timeout | float | None = Timeout(),  # noqa: B008 (immutable)
        tls: TLS | None = None,
        token: str | None = None,
        limits: Limits = Limits(),  # noqa: B008
        retry: Retry = Retry(),  # noqa: B008
        options: ResultOptions = ResultOptions(),  # noqa: B008
        upload: Upload = Upload(),  # noqa: B008
        allow_plaintext_token: bool = False,
    ) -> None:
        if address is None and (given := os.environ.get(ADDRESS_ENV)):
            try:
                address = check_address(given)
            except ValueError as exc:
                raise ValueError(f"${ADDRESS_ENV}: {exc}") from exc
        address = check_address(address or DEFAULT_ADDRESS)
        if timeout is None:
            timeout = Timeout(call=None, stream=None)
        elif not isinstance(timeout, Timeout):
            timeout = Timeout(call=float(timeout))
        self.address = address
        self.timeout = timeout
        self.tls = tls
        self.limits = limits
        self.retry = retry
        self.options = options
        self.upload = upload
        token = clean_token(token)
        check_plaintext_token(address, tls=tls, token=token, allow=allow_plaintext_token)
        self._token = token
        self._closed = False
        self._open()

    def _open(self) -> None:
        """Set up the channel (the sync client) or nothing yet (asyncio: on first use)."""

    def _channel_args(
        self, *, cameras: bool = False
    ) -> tuple[str, grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
        """(target, credentials or None for plaintext, channel options).

        Args:
            cameras: the options of the channel for ListCameras and WatchCamera, which retries
                ListCameras and, with ``Limits.fresh_watch``, keeps its flow-control window
                small (no BDP probing) so that a slow watcher is not handed stale results.
        """
        limit = self.limits.max_message_bytes
        methods = ("ListCameras",) if cameras else ("Analyze", "GetModelInfo")
        args: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            *keepalive(watch=cameras),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self.retry.service_config(methods)),
            # gRPC stops retrying a call whose request passes this buffer (256 KiB by
            # default): a raw 720p frame would never be retried.
            ("grpc.per_rpc_retry_buffer_size", limit),
            ("grpc.primary_user_agent", f"convstream-python/{client_version()}"),
            # gRPC's own reconnect backoff grows to 120 s: after a 40 s outage the channel
            # waited out its backoff, up to 10 s more, while the server was already back.
            # Reconnects back off as the calls' tries do.
            ("grpc.initial_reconnect_backoff_ms", max(100, round(self.retry.backoff * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, round(self.retry.max_backoff * 1000))),
            # A connection of its own, not one shared with every channel to the same address
            # in this process: a server of several processes (`processes`) gets each
            # connection in one of them, so one client per camera spreads over them all.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if cameras and self.limits.fresh_watch:
            # The window then stays at its initial 64 KiB instead of growing to megabytes,
            # which a slow reader would find full of results seconds old.
            args.append(("grpc.http2.bdp_probe", 0))
        credentials = None
        if self.tls is not None:
            credentials = self.tls.credentials()
            args.extend(self.tls.channel_options())
        return self.address, credentials, args

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def _analyze_request(
        self, image: FrameLike, options: ResultOptions | None
    ) -> tuple[pb.FrameRequest, Frame]:
        frame = as_frame(image)
        frame_id = 1 if frame.frame_id is None else frame.frame_id
        request = to_request(frame, frame_id, self.upload, self.limits.max_message_bytes)
        request.options.CopyFrom((options if options is not None else self.options).to_proto())
        return request, as_sent(frame, request)

    def _in_flight(self, frames: object, options: pb.ResultOptions) -> int:
        """How many frames a stream reads ahead of the results its caller has taken:
        ``Limits.fresh_in_flight`` where results should be fresh (a latest-only stream, or a
        latest-only Video's frames). A loop taking 0.5 s a result read max_in_flight frames
        ahead, each result waiting its turn: 16 s behind the camera, while its frame_age_ms
        (the age as it left the server) said 60 ms."""
        limits = self.limits
        fresh = options.freshness == pb.FRESHNESS_LATEST_ONLY or (
            isinstance(frames, VideoFrames) and frames.latest
        )
        return min(limits.max_in_flight, limits.fresh_in_flight) if fresh else limits.max_in_flight

    def _stream_options(
        self,
        options: ResultOptions | None,
        freshness: Freshness,
        queue_size: int | None,
        publish: bool,
    ) -> pb.ResultOptions:
        if queue_size is not None and freshness != "bounded_queue":
            # the server would ignore it: LOSSLESS queues every frame, LATEST_ONLY the newest
            raise ValueError(
                f"queue_size is for freshness='bounded_queue', got freshness={freshness!r} "
                f"with queue_size={queue_size}"
            )
        chosen = options if options is not None else self.options
        message = chosen.to_proto(freshness, queue_size)
        message.publish = publish
        return message

    def _watch_request(
        self,
        camera_id: str,
        options: ResultOptions | None,
        max_fps: float | None,
        queue_size: int | None,
    ) -> pb.WatchCameraRequest:
        check_camera_id(camera_id)
        if max_fps is not None and not 0 <= max_fps <= MAX_WATCH_FPS:
            raise ValueError(
                f"max_fps must be 0 (every result) to {MAX_WATCH_FPS:g} results per second or "
                f"None, got {max_fps}"
            )
        if queue_size is not None and not 1 <= queue_size <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue_size must be 1..{MAX_QUEUE_SIZE} or None, got {queue_size}")
        chosen = options if options is not None else self.options
        return pb.WatchCameraRequest(
            camera_id=camera_id,
            options=chosen.to_proto(),
            max_fps=max_fps or 0.0,
            queue_size=queue_size or 0,
        )

    def _resumption(self, resume: bool, camera_id: str | None = None) -> _Resumption:
        """The reconnect bookkeeping of one stream() call, or of one watch() of camera_id."""
        return _Resumption(self, resume, camera_id)

    @property
    def has_token(self) -> bool:
        """Whether its calls carry a token (``authorization: Bearer ...``)."""
        return self._token is not None

    @property
    def closed(self) -> bool:
        """True once close() was called: its calls raise ClientClosed, those in progress
        Cancelled."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"this {type(self).__name__} is closed; make a new one")

    def __repr__(self) -> str:
        tls = "on" if self.tls is not None else "off"
        token = ", token=***" if self._token else ""
        state = ", closed" if self._closed else ""
        return f"<{type(self).__name__} {self.address} tls={tls}{token}{state}>"


class _Resumption:
    """When a broken stream is re-opened, shared by Client and AsyncClient.

    Asked to resume (a watch by default, a stream with ``resume=True``), before its first
    result a call gets the tries of a unary call (so a missing server is reported quickly);
    once it has run, it keeps trying for ``retry.resume_timeout``. A watch has run once its
    server said it registered it, result or not. Not asked to, its first failure ends it: a
    stream to a missing server raises at once, where a unary call tries again first.

    A watch also keeps ``frames_dropped`` counting across its calls: each new WatchCamera
    call's server counts its drops from 0 again.
    """

    def __init__(self, client: BaseClient, resume: bool, camera_id: str | None = None) -> None:
        self._client = client
        self._resume = resume
        self._camera_id = camera_id
        self._failures = 0
        self._ran = False
        self._broke = 0.0
        self._dropped_before = 0  # by the watch's earlier calls
        self._dropped = 0
        self._registered_at: float | None = None  # when this call's watch was registered
        self._said_back = False  # that the watch is back, once a break
        self._said_down = ""  # the camera's state last logged, until its next frame's result
        self._kind: str | None = None  # "camera" or "stream", as its server said (WATCHING_KIND)

    def subscribed(self) -> None:
        """A new WatchCamera call starts: its server counts drops from 0 again."""
        self._dropped_before = self._dropped

    def registered(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """A WatchCamera call's initial metadata arrived: when the server says it registered
        the watch, the watch has run (a camera that is down sends no result, and its watch
        must outlast server restarts as a running camera's does). Breaks count afresh only
        once such a call has held for STEADY_S: a server that takes the watch and drops it
        at once, again and again, backs off and runs out of resume_timeout."""
        told = dict(metadata or ())
        if WATCHING in told:
            kind = told.get(WATCHING_KIND)
            self._kind = kind if isinstance(kind, str) else None
            if self._ran and self._failures and not self._said_back:
                # the break's warning said it went: say once that it is back
                self._said_back = True
                # the server's watch, not the camera: one still down says so on its own
                logger.warning(
                    "watch of camera %r at %s: the server took it again after %.1f s "
                    "(results follow once the camera sends them)",
                    self._camera_id,
                    self._client.address,
                    time.monotonic() - self._broke,
                )
            self._ran = True
            self._registered_at = time.monotonic()
            state = told.get(WATCHING_STATE)
            if state in ("stalled", "reconnecting"):  # connecting: a moment, as a rule
                error = told.get(WATCHING_ERROR, b"")
                why = error.decode(errors="replace") if isinstance(error, bytes) else error
                # without a word, a program's loop over watch() just waits: for a camera
                # down for good, for ever
                logger.warning(
                    "watch of camera %r at %s: the camera is %s; results follow once it "
                    "sends frames%s",
                    self._camera_id,
                    self._client.address,
                    state,
                    f" (last error: {why})" if why else "",
                    extra={CAMERA_STATE_RECORD: state},
                )
                self._said_down = state  # its notice, right after, is not said again

    def watched(self, message: pb.FrameResult) -> pb.FrameResult:
        """A watch result arrived: it counts as answered(), and its drops carry on. The
        server's word that the camera went down (``camera_state``) is logged, as the state
        at the watch's start is: once an outage, for a program that logs and nothing else."""
        self.answered()
        message.frames_dropped += self._dropped_before
        self._dropped = message.frames_dropped
        if not message.camera_state:
            self._said_down = ""
        elif (state := camera_state_name(message.camera_state)) != self._said_down:
            self._said_down = state
            logger.warning(
                "watch of camera %r at %s: %s",
                self._camera_id,
                self._client.address,
                message.status.message,
                extra={CAMERA_STATE_RECORD: state},
            )
        return message

    def answered(self) -> None:
        """A result arrived: the stream works, later breaks start counting afresh."""
        self._failures, self._ran = 0, True

    def pause(self, exc: grpc.RpcError, waiting: int) -> float:
        """Seconds to wait before re-opening a call that broke with ``exc``; raises its
        ConvstreamError when it is not re-opened (``delay`` says which)."""
        client = self._client
        error = from_rpc_error(exc, address=client.address, tls=client.tls)
        delay = self.delay(error, waiting)
        if delay is None:
            raise error from exc
        return delay

    def again(self, exc: grpc.RpcError) -> None:
        """After the pause: Cancelled if close() closed the client meanwhile."""
        if self._client._closed:
            raise Cancelled(CLOSED) from exc

    def delay(self, error: ConvstreamError, waiting: int) -> float | None:
        """Seconds to wait before re-opening after error, or None to give up.

        Args:
            error: why the stream ended.
            waiting: frames sent but not yet answered, for the log line.
        """
        if self._client._closed:  # broken by close(): no trying again
            raise Cancelled(CLOSED) from error
        registered = self._registered_at
        if registered is not None and time.monotonic() - registered >= STEADY_S:
            self._failures = 0  # a watch that ran a while: this break is a new one
        self._registered_at = None
        if self._failures == 0:
            self._broke = time.monotonic()
            self._said_back = False
        self._failures += 1
        # After a restart a published stream is back only once its publisher has sent again:
        # a watch subscribing before that heard NotFound and ended for good, while the
        # publisher came back. In a break that began with UNAVAILABLE (not a camera removed
        # while it ran: that ends at once), NotFound is waited out as UNAVAILABLE is; but not
        # of a camera, as its server said (WATCHING_KIND): one removed from the config while
        # the server was down is gone, and a watch with resume_timeout=inf waited for ever,
        # silent (a WMS integrator's review).
        returning = (
            isinstance(error, NotFound)
            and self._camera_id is not None
            and self._ran
            and self._failures > 1
            and self._kind != "camera"
        )
        # A watch whose program paused past the server's stream_idle_timeout_s (a slow
        # alert, a sampling loop) was ended by the server: it subscribes again, as before
        # that end it lost only its stale results.
        paused = (
            isinstance(error, DeadlineExceeded)
            and self._camera_id is not None
            and RESULTS_NOT_READ in error.message
        )
        # Subscribing again in a break (a pause's, a restart's), a server with no room for
        # the watch now (max_watchers, or max_watcher_bytes, which other watches' unread
        # results fill) is tried again as a server that is down is: the watch had its place
        # (a diff review's: a paused watch ended under max_watcher_bytes failed for good).
        crowded = (
            isinstance(error, Overloaded)
            and self._camera_id is not None
            and self._ran
            and self._failures > 1
        )
        if not (
            self._resume
            and (isinstance(error, ServerUnavailable) or returning or paused or crowded)
        ):
            return None
        client = self._client
        delay = client.retry.delay(self._failures)
        if not self._ran:
            # a wrong address fails within seconds; but "for good" (math.inf) is for good: an
            # alerter started before its server (boot order, a deploy) waits for it to come up
            forever = client.retry.resume_timeout == math.inf
            if self._failures >= client.retry.attempts and not forever:
                return None
            # said once, where a finite resume_timeout would have given up
            log = logger.warning if self._failures == client.retry.attempts else logger.debug
            log("%s failed (%s); retrying in %.1f s", client.address, error, delay)
            return delay
        if time.monotonic() + delay - self._broke > client.retry.resume_timeout:
            return None
        # Once per break: a server that takes a while to come back is one event.
        log = logger.warning if self._failures == 1 else logger.debug
        if self._camera_id is not None:
            log(
                "watch of camera %r at %s broke: %s; subscribing again in %.1f s",
                self._camera_id,
                client.address,
                error.message,
                delay,
            )
        else:
            log(
                "stream to %s broke (%s); resuming in %.1f s with %d frame%s not yet answered",
                client.address,
                error.message,
                delay,
                waiting,
                "" if waiting == 1 else "s",
            )
        return delay
