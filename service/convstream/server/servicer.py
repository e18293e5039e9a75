"""The convstream.v1.Convstream gRPC service: where domain errors become status codes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from convstream.server.budget import ByteBudget, SilentCalls
from convstream.server.camera import STATE_NAMES
from convstream.server.cameras import CameraManager
from convstream.server.config import Settings
from convstream.server.errors import (
    ConvstreamError,
    Draining,
    IdleTimeout,
    InvalidFrame,
    NotFound,
    Overloaded,
    RefusedMessage,
    quietly,
)
from convstream.server.feeds import FeedFinished, Watcher
from convstream.server.metrics import Metrics
from convstream.server.pipeline import (
    CALLER,
    ClientCaller,
    Options,
    Pipeline,
    check_without_stream,
)
from convstream.server.processes import Peers
from convstream.server.security import caller, cameras_shown, peer_host, visible
from convstream.server.streams import FrameBudget, StreamSession
from convstream.server.wire import Received, id_and_source, raw_data_length
from convstream.v1 import (
    CAMERA_ID,
    RESULTS_NOT_READ,
    SHUTTING_DOWN,
    WATCHING,
    WATCHING_ERROR,
    WATCHING_KIND,
    WATCHING_STATE,
)
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

DRAINING = f"{SHUTTING_DOWN}; retry on another instance, or here once it is back"
logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Convstream"].full_name
# Every request but a frame: a camera id, a health service name, options. Far over any.
SMALL_REQUEST_BYTES = 64 * 1024
M = TypeVar("M", bound=Message)
R = TypeVar("R")

# How long a call that needs another process of this server waits for it to connect: one
# that is restarting is back in a few seconds, and the call says so instead of hanging.
PEER_CONNECT_S = 1.0
# How long an Analyze call, admitted, waits for its request (a 100 MiB frame at 100 Mbit/s
# takes 9 s; a camera's JPEG, milliseconds).
ANALYZE_REQUEST_S = 30.0
# An Analyze call still without its request after this long counts as silent, towards the
# quarter of max_analyze_calls one host may hold so.
ANALYZE_SILENT_S = 1.0
# ... and a stream that has sent no frame for this long counts among its host's silent ones:
# longer, as a client may open its stream as its camera opens (an RTSP camera takes seconds)
STREAM_SILENT_S = 5.0
# A watch whose client has read none of its results for this long is ended while the results
# held for watches are over max_watcher_bytes (else only after stream_idle_timeout_s)
UNREAD_PRESSED_S = 10.0


def _refused(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> pb.FrameResult:
    """An Analyze call's refusal, as a status set and an empty result that gRPC does not send,
    rather than context.abort(): its exception, raised from the handler's frames, stayed in
    the call's state, a reference cycle holding the refused frame until Python's full
    garbage collection (a soak: 3,000 refused 720p JPEGs took the server to 856 MiB)."""
    context.set_code(code)
    context.set_details(message)
    return pb.FrameResult()


class ConvstreamServicer(pb_grpc.ConvstreamServicer):
    """Every RPC of convstream.v1.Convstream, over one Pipeline and the server's cameras."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        metrics: Metrics,
        model_info: pb.ModelInfo,
        cameras: CameraManager,
        *,
        peers: Peers | None = None,
    ) -> None:
        self.settings = settings
        self.cameras = cameras
        self.peers = peers
        self._channels: dict[int, grpc.aio.Channel] = {}
        # WatchCamera calls forwarded to another process, open now; and those ended by a drain
        self._forwarded: set[grpc.aio.UnaryStreamCall] = set()
        self._ended: set[grpc.aio.UnaryStreamCall] = set()
        self.pipeline = pipeline
        self.metrics = metrics
        self.model_info = model_info
        self.draining = asyncio.Event()
        self.open_streams = 0
        # Streams ended for results left unread, whose calls wait for their client to read
        # again or leave (see StreamFrames): apart from open_streams, as many at most.
        # calls ended for results their clients stopped reading, each still holding one
        self._unread_streams = _UnreadCalls(settings.max_streams)
        self._unread_watches = _UnreadCalls(settings.max_watchers)
        self.open_analyze_calls = 0
        # When each Analyze call still waiting for its request began, by host
        self._silent_analyze = SilentCalls(ANALYZE_SILENT_S)
        self._silent_streams = SilentCalls(STREAM_SILENT_S)
        self.budget = FrameBudget(settings.max_queued_frames, settings.stream_queue_size)
        self.byte_budget = ByteBudget(settings.max_held_bytes)
        metrics.watch_budgets(
            lambda: self.budget.reserved,
            lambda: self.byte_budget.held,
            lambda: self.open_analyze_calls,
            cameras.watchers_open,
            lambda: cameras.result_bytes.held,
        )

    async def Analyze(
        self,
        requests: AsyncIterator[Received | RefusedMessage],
        context: grpc.aio.ServicerContext,
    ) -> pb.FrameResult:
        """One frame, one result. Served as a call whose one request is read as a stream
        (add_to_server): so a call past ``max_analyze_calls`` is refused before its request
        is read, as gRPC reads a unary request whole before its handler runs, and a burst of
        large calls past the cap made the server hold every one of them to say no."""
        # each call's decoding takes its own turn, within its caller's (token or host) share
        CALLER.set(ClientCaller(caller(context.peer())))
        refusal: ConvstreamError | None = None
        host = peer_host(context.peer())
        started = time.monotonic()
        most_waiting = max(1, self.settings.max_analyze_calls // 4)
        # calls that have waited a while: a burst's calls wait a few milliseconds each
        waiting = self._silent_analyze.crowded(host, started, self.open_analyze_calls, most_waiting)
        if self.draining.is_set():
            refusal = Draining(DRAINING)
        elif self.open_analyze_calls >= self.settings.max_analyze_calls:
            calls = self.open_analyze_calls
            refusal = Overloaded(
                f"{calls} Analyze call{'s' * (calls != 1)} in progress, the limit is "
                f"{self.settings.max_analyze_calls}; retry later, or send many frames "
                "over one StreamFrames call"
            )
        elif waiting is not None:
            # Calls that send no request hold their places for ANALYZE_REQUEST_S: once half
            # the places are taken, one host may hold a quarter of them so, and the others
            # stay for other callers (while places are plenty, slow uploads go on).
            refusal = Overloaded(self._crowded(waiting, most_waiting))
        if refusal is not None:
            return self._refused_analyze(context, refusal)
        self.open_analyze_calls += 1
        stop_waiting = self._silent_analyze.enter(host, started)
        placed = True  # its place, until given back

        def give_place_back() -> None:
            nonlocal placed
            if placed:
                placed = False
                self.open_analyze_calls -= 1

        def crowding() -> str | None:
            """At ANALYZE_SILENT_S: the refusal of a call that is one too many of its host's
            silent ones (those of a burst were each admitted while none had been silent:
            12 calls at once held all 8 places for their 20 s, a robustness review's). A call
            ended so gives its place back at once: the next call's check counts without it,
            whether or not this one's ending has yielded yet, so a burst loses as many calls
            however its checks fall across the event loop's turns (it had lost 6 or 5)."""
            silent = self._silent_analyze.too_many(
                host, started, self.open_analyze_calls, most_waiting
            )
            if silent is None:
                return None
            stop_waiting()
            give_place_back()
            return self._crowded(silent, most_waiting, ended=True)

        try:
            try:
                request = await self._one_request(requests, crowding)
            except Overloaded as exc:  # crowded out: counted as a refusal at the door
                return self._refused_analyze(context, exc)
            except ConvstreamError as exc:
                return _refused(context, exc.code, str(exc))
            finally:
                stop_waiting()  # the place is held until the answer
            return await self._analyze(request, context)
        finally:
            give_place_back()

    async def _first_frame(
        self,
        requests: AsyncIterator[R],
        forget: Callable[[], None],
        crowding: Callable[[], str | None],
    ) -> AsyncIterator[R]:
        """A stream's requests, its start counted among its host's silent streams until the
        first comes; one still without it after STREAM_SILENT_S ends, Overloaded, if
        ``crowding`` says why. 64 streams that sent nothing, from one host, held every place
        for stream_idle_timeout_s (300 s), every other client refused (a reliability
        review); Analyze calls had the rule already."""
        received = aiter(requests)
        waiting = asyncio.ensure_future(anext(received, None))
        try:
            done, _ = await asyncio.wait([waiting], timeout=STREAM_SILENT_S)
            if not done and (why := crowding()) is not None:
                raise Overloaded(why)
            first = await waiting  # the session's idle timeout covers the rest of the wait
        finally:
            forget()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await waiting
        if first is None:
            return
        yield first
        async for request in received:
            yield request

    def _silent_crowd(self, streams: int, most: int, *, ended: bool = False) -> str:
        """Why a host's stream is refused (or, ``ended``, ended at STREAM_SILENT_S):
        ``streams`` of the host's have sent no frame for that long, ``most`` may."""
        return (
            f"{streams} {'other ' * ended}streams from your host have sent no frame for over "
            f"{STREAM_SILENT_S:g} s, and half of the server's {self.settings.max_streams} "
            f"places are taken: one host may hold {most} (a quarter) so; "
            f"{'this one was ended: ' * ended}open a stream when its first frame is ready"
        )

    def _crowded(self, calls: int, most: int, *, ended: bool = False) -> str:
        """Why a host's Analyze call is refused (or, ``ended``, ended at ANALYZE_SILENT_S):
        ``calls`` of the host's have not sent their request that long, ``most`` may."""
        return (
            f"{calls} {'other ' * ended}Analyze calls from your host have been sending, or "
            f"not sent, their request for over {ANALYZE_SILENT_S:g} s, and half of the "
            f"server's {self.settings.max_analyze_calls} places are taken: one host may hold "
            f"{most} (a quarter) so; {'this one was ended: ' * ended}retry later, or send "
            "frames over one StreamFrames call"
        )

    def _refused_analyze(
        self, context: grpc.aio.ServicerContext, refusal: ConvstreamError
    ) -> pb.FrameResult:
        """An Analyze call refused before its request was read, counted: its source is in
        the request, so unnamed; as a refusal past a limit unless the server is draining."""
        self.metrics.frames.labels(self.metrics.client_source(""), "rejected").inc()
        if isinstance(refusal, Overloaded):
            self.metrics.calls_refused.labels("Analyze").inc()
        return _refused(context, refusal.code, str(refusal))

    async def _one_request(
        self,
        requests: AsyncIterator[Received | RefusedMessage],
        crowding: Callable[[], str | None],
    ) -> pb.FrameRequest:
        """The call's request, within ANALYZE_REQUEST_S: an admitted call holds its place while
        it waits, and calls that send nothing must not keep the places from others long; one
        still without it after ANALYZE_SILENT_S ends if ``crowding`` says why."""
        limit = min(ANALYZE_REQUEST_S, self.settings.stream_idle_timeout_s)
        received = aiter(requests)
        waiting = asyncio.ensure_future(anext(received, None))
        try:
            done, _ = await asyncio.wait([waiting], timeout=min(ANALYZE_SILENT_S, limit))
            if not done and (why := crowding()) is not None:
                raise Overloaded(why)
            async with asyncio.timeout(limit - min(ANALYZE_SILENT_S, limit)):
                request = await waiting
        except TimeoutError:
            raise IdleTimeout(
                f"the Analyze request did not arrive within {limit:g} s of the call's start "
                "(a frame that takes longer to send goes over StreamFrames, which waits "
                "stream_idle_timeout_s)"
            ) from None
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await waiting
            # grpc's receiving generator keeps the message it last gave until it is closed,
            # and it sits in a reference cycle with the call: every Analyze call's frame
            # stayed in memory until Python's full garbage collection, which counts objects,
            # not bytes (a soak: 200 raw 8 MiB frames took the server from 171 to 671 MiB).
            close = getattr(received, "aclose", None)
            if close is not None:
                await close()
        if request is None:
            raise InvalidFrame("expected one FrameRequest, the Analyze call ended without one")
        if isinstance(request, RefusedMessage):
            raise request
        return request.request

    async def _analyze(
        self, request: pb.FrameRequest, context: grpc.aio.ServicerContext
    ) -> pb.FrameResult:
        arrived = time.perf_counter()
        try:
            options = Options.parse(request.options)
            check_without_stream(request.options, "Analyze")
            remaining = context.time_remaining()
            deadline = None if remaining is None else arrived + remaining
            result = await self.pipeline.analyze(request, options, arrived, deadline)
        except ConvstreamError as exc:
            self.metrics.frames.labels(
                self.metrics.client_source(request.source), exc.outcome
            ).inc()
            return _refused(context, exc.code, str(exc))
        except Exception:
            # as a stream's frame does: INTERNAL, logged here; left to grpc it would be
            # UNKNOWN with the exception's class and text for the client
            logger.exception("Analyze of frame %d failed", request.frame_id)
            source = self.metrics.client_source(request.source)
            self.metrics.frames.labels(source, "error").inc()
            return _refused(context, grpc.StatusCode.INTERNAL, "internal error analysing frame")
        self.metrics.observe_result(
            self.metrics.client_source(request.source), result.timings, result.blank
        )
        return result

    async def StreamFrames(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[Received | RefusedMessage],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # A coroutine that writes its results itself (not an async generator that yields
        # them): only so can it see that a result waits, unread, for too long. grpc.aio takes
        # both; the generated stub's types know only the generator.
        if self.draining.is_set():
            self.metrics.streams.labels("rejected").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        if self.open_streams >= self.settings.max_streams:
            self.metrics.streams.labels("rejected").inc()
            exc = Overloaded(
                f"{self.open_streams} stream{'s' * (self.open_streams != 1)} open, the limit is "
                f"{self.settings.max_streams}; "
                "retry later or raise max_streams"
            )
            await context.abort(exc.code, str(exc))
        host = peer_host(context.peer())
        who = caller(context.peer())  # its token, or its host: whose share its queue takes
        started = time.monotonic()
        most_silent = max(1, self.settings.max_streams // 4)
        try:
            silent = self._silent_streams.crowded(host, started, self.open_streams, most_silent)
            if silent is not None:
                raise Overloaded(self._silent_crowd(silent, most_silent))
            self.budget.admit(self.settings.stream_queue_size, who)
        except Overloaded as exc:
            self.metrics.streams.labels("rejected").inc()
            await context.abort(exc.code, str(exc))
        self.open_streams += 1
        self.metrics.streams_in_flight.inc()
        placed = True

        def give_place_back() -> None:
            nonlocal placed
            if placed:
                placed = False
                self.open_streams -= 1
                self.metrics.streams_in_flight.dec()

        def crowding() -> str | None:
            """At STREAM_SILENT_S without a first frame: why this stream is one too many of
            its host's silent ones (a burst's are each let in while none is silent yet). It
            gives its place back at once, so the next one's check counts without it."""
            silent = self._silent_streams.too_many(host, started, self.open_streams, most_silent)
            if silent is None:
                return None
            give_place_back()
            return self._silent_crowd(silent, most_silent, ended=True)

        forget = self._silent_streams.enter(host, started)  # until its first frame, or end
        request_iterator = self._first_frame(request_iterator, forget, crowding)
        outcome = "error"
        idle: IdleTimeout | None = None
        session = StreamSession(
            self.pipeline,
            self.metrics,
            default_queue=self.settings.stream_queue_size,
            draining=self.draining,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
            registry=self.cameras,
            budget=self.budget,
            byte_budget=self.byte_budget,
            caller=who,
        )
        limit = self.settings.stream_idle_timeout_s
        unsent: asyncio.Future[None] | None = None  # a write the client has not taken
        crowded: Overloaded | None = None
        try:
            # aclosing: a stream ended here closes the session at once (its finally gives
            # back what it holds), not whenever the generator is collected
            async with contextlib.aclosing(session.run(request_iterator)) as results:
                async for result in results:
                    try:
                        await self._unread_streams.write(context, result, limit, "stream")
                    finally:  # nothing of it kept while the next is made, or the call waits
                        del result
            outcome = "ok"
        except UnreadResults as exc:
            outcome = "idle"
            idle, unsent = exc, exc.unsent
        except IdleTimeout as exc:
            outcome = "idle"
            idle = exc
        except Overloaded as exc:  # one of its host's silent streams too many: _first_frame
            outcome = "rejected"
            crowded = exc
        except grpc.aio.InternalError:
            # a write failed (ExecuteBatchError): the call ended under us, the client left
            outcome = "cancelled"
            return
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise  # a cancelled handler must stay cancelled, or grpc keeps its resources
        finally:
            self.budget.release(session.capacity, who)
            forget()  # a stream that ended before it read at all
            give_place_back()
            self.metrics.streams.labels(outcome).inc()
        if crowded is not None:
            await context.abort(crowded.code, str(crowded))
        if idle is not None:
            # The place and the frames are given back; the status goes once the client
            # takes the result gRPC holds (_UnreadCalls.end)
            await self._unread_streams.end(context, idle, unsent, "stream")
            return
        if self.draining.is_set():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{SHUTTING_DOWN} after {session.drops.sequence} results; reconnect to "
                "another instance, or here once it is back",
            )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return self.model_info

    async def ListCameras(
        self, request: pb.ListCamerasRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCamerasResponse:
        statuses = self.cameras.statuses()
        metadata = context.invocation_metadata()
        if self.peers is not None and not self.peers.forwarded(metadata):
            statuses += await self._list_elsewhere(request, self.peers.forward_metadata(metadata))
        order = {c.id: k for k, c in enumerate(self.settings.cameras)}
        statuses.sort(key=lambda s: (order.get(s.id, len(order)), s.id))
        return pb.ListCamerasResponse(cameras=[s for s in statuses if visible(s.id)])

    async def WatchCamera(  # type: ignore[override]
        self, request: pb.WatchCameraRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """A camera's results (``_watch``), each call counted by how it ended where its
        client called (not again in the process a call is forwarded to). It writes them
        itself, as StreamFrames does, to end a watch whose client reads none for
        stream_idle_timeout_s: 300 watches never read held all 16 places for good, and the
        dashboard's own watch was refused (a robustness review)."""
        watching: list[Watcher] = []  # the watch's watcher here, once it has one
        unsent = [0]  # bytes of a write left to gRPC by a watch ended unread, still counted
        try:
            await self._watch_call(request, context, watching, unsent)
        finally:  # once the status went, or the call ended any other way
            self.cameras.result_bytes.hold(-unsent[0])

    async def _watch_call(
        self,
        request: pb.WatchCameraRequest,
        context: grpc.aio.ServicerContext,
        watching: list[Watcher],
        unsent: list[int],
    ) -> None:
        outcome = "error"
        unread: UnreadResults | None = None
        try:
            # aclosing: closed with this one (a client that leaves while a write waits), the
            # watch gives its camera watcher back at once, not when it is collected
            async with contextlib.aclosing(self._watch(request, context, watching)) as results:
                async for result in results:
                    limit = self.settings.stream_idle_timeout_s
                    try:
                        await self._unread_watches.write(
                            context, result, limit, "watch", self.cameras.over_result_bytes
                        )
                    except UnreadResults:
                        # its watcher gives its bytes back as it closes, but gRPC holds the
                        # write until the client reads or leaves: counted until then, or
                        # watches ended for max_watcher_bytes let new ones in to fill it
                        # again (a diff review's)
                        unsent[0] = watching[0].sending if watching else 0
                        self.cameras.result_bytes.hold(unsent[0])
                        raise
                    finally:  # nothing of it kept while the next comes, or the call waits
                        del result
            outcome = "ok"
        except UnreadResults as exc:
            outcome, unread = "idle", exc
        except grpc.aio.AbortError:  # the status the call ends with is the one it set
            code = context.code()
            outcome = code.name.lower() if isinstance(code, grpc.StatusCode) else "error"
            raise
        except grpc.aio.InternalError:  # a write failed: the client left
            outcome = "cancelled"
            return
        except asyncio.CancelledError:
            outcome = "cancelled"  # the client left (a reload's refusal is counted as so)
            raise
        finally:
            if self.peers is None or not self.peers.forwarded(context.invocation_metadata()):
                self.metrics.watches.labels(outcome).inc()
        if unread is not None:  # its camera place given back: the status, once it can go
            await self._unread_watches.end(context, unread, unread.unsent, "watch")

    async def _watch(
        self,
        request: pb.WatchCameraRequest,
        context: grpc.aio.ServicerContext,
        watching: list[Watcher],
    ) -> AsyncGenerator[pb.FrameResult | bytes, None]:
        """A watch's results: of a camera here, as the bytes its watcher makes (one
        serialisation for all watchers); of one another process pulls, as messages."""
        metadata = context.invocation_metadata()
        try:
            self.cameras.check_watch(request)  # here too: before it is sent to another process
        except ConvstreamError as exc:
            await context.abort(exc.code, str(exc))
        if (
            self.peers is not None
            and not self.draining.is_set()
            and not self.peers.forwarded(metadata)
            and not self.cameras.holds(request.camera_id)
            and re.fullmatch(CAMERA_ID, request.camera_id)
        ):
            async for result in self._watch_elsewhere(request, context):
                yield result
            return
        try:
            if self.draining.is_set():
                raise Draining(DRAINING)
            watcher = self.cameras.watch(request.camera_id, request)
            watching.append(watcher)
        except ConvstreamError as exc:
            if isinstance(exc, Overloaded):
                self.metrics.calls_refused.labels("WatchCamera").inc()
            await context.abort(exc.code, str(exc))
        try:
            feed = self.cameras.feeds.get(request.camera_id)
            told: list[tuple[str, str | bytes]] = [
                (WATCHING, request.camera_id),
                (WATCHING_KIND, "stream" if feed is None else "camera"),
            ]
            state = None if feed is None else feed.camera.state  # read once: it may change
            if feed is not None and state is not None and state != pb.CAMERA_STATE_RUNNING:
                told.append((WATCHING_STATE, STATE_NAMES[state]))
                told.append((WATCHING_ERROR, feed.camera.last_error[:500].encode()))
            await context.send_initial_metadata(told)
            if feed is not None and feed.trouble() is not None:
                # and in the stream, as a camera that goes down later is: a client that
                # reads no metadata (most languages' stubs hide it) hears it too
                feed.tell_watchers(only=watcher)
            while True:
                yield await watcher.next()
        except FeedFinished:
            return  # the published stream ended: OK
        except ConvstreamError as exc:
            await context.abort(exc.code, f"{exc} (after {watcher.drops.sequence} results)")
        finally:
            self.cameras.unwatch(watcher)

    async def _peer(self, index: int, seconds: float) -> pb_grpc.ConvstreamStub | None:
        """The Convstream service of another process of this server (over its Unix socket),
        once connected; None if it does not answer within ``seconds`` (restarting)."""
        channel = await self.peer_channel(index, seconds)
        return None if channel is None else pb_grpc.ConvstreamStub(channel)

    async def peer_channel(self, index: int, seconds: float) -> grpc.aio.Channel | None:
        """The channel to another process of this server (over its Unix socket), once
        connected; None if it does not answer within ``seconds`` (restarting)."""
        assert self.peers is not None
        if index not in self._channels:
            self._channels[index] = grpc.aio.insecure_channel(
                self.peers.address(index),
                options=[
                    ("grpc.max_receive_message_length", -1),
                    # a process that restarts is back within seconds: look again soon
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    # and one that hangs (stopped, wedged) fails its forwarded watches within
                    # 30 s, instead of leaving them waiting; the server allows a ping each 10 s
                    ("grpc.keepalive_time_ms", 20_000),
                    ("grpc.keepalive_timeout_ms", 10_000),
                    ("grpc.keepalive_permit_without_calls", 0),
                ],
            )
        channel = self._channels[index]
        try:
            # not wait_for, which on Python 3.11 can keep a result and lose a cancel that
            # arrive in one step (the dashboard's watches went on so, hub.py)
            async with asyncio.timeout(seconds):
                await channel.channel_ready()
        except TimeoutError:
            return None
        return channel

    def _not_answering(self, index: int) -> str:
        assert self.peers is not None
        return (
            f"server process {index} of {self.peers.count}, which pulls this camera, is not "
            "answering (restarting?)"
        )

    async def _list_elsewhere(
        self, request: pb.ListCamerasRequest, metadata: tuple[tuple[str, str], ...]
    ) -> list[pb.CameraStatus]:
        """The cameras and published streams the other processes hold; a process that does
        not answer (restarting) has its configured cameras listed with the reason."""
        assert self.peers is not None

        async def ask(index: int) -> pb.ListCamerasResponse | None:
            stub = await self._peer(index, PEER_CONNECT_S)
            if stub is None:
                return None
            try:
                reply: pb.ListCamerasResponse = await stub.ListCameras(
                    request, metadata=metadata, timeout=5
                )
            except grpc.aio.AioRpcError as exc:
                logger.warning(
                    "process %d did not list its cameras (%s: %s)",
                    index,
                    exc.code().name,
                    exc.details(),
                )
                return None
            return reply

        others = self.peers.others()
        answers = await asyncio.gather(*(ask(i) for i in others))
        statuses: list[pb.CameraStatus] = []
        for index, answer in zip(others, answers, strict=True):
            if answer is not None:
                statuses += answer.cameras
                continue
            statuses += [
                pb.CameraStatus(id=c.id, last_error=self._not_answering(index))
                for c in self.settings.cameras
                if self.peers.owner(c.id) == index
            ]
        return statuses

    async def _watch_elsewhere(
        self, request: pb.WatchCameraRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FrameResult]:
        """WatchCamera through the process that holds the camera: its owner for a configured
        one, else each other process in turn (a client stream published there). The owner's
        own status, error or not, is the caller's."""
        assert self.peers is not None
        camera_id = request.camera_id
        configured = [c.id for c in self.settings.cameras]
        owner = self.peers.owner(camera_id)
        candidates = self.peers.others() if owner is None else [owner]
        metadata = self.peers.forward_metadata(context.invocation_metadata())
        for index in candidates:
            stub = await self._peer(index, PEER_CONNECT_S)
            if stub is None:
                if owner is not None:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"camera {camera_id!r}: {self._not_answering(index)}; retry in a few "
                        "seconds",
                    )
                continue  # a process restarting holds no published stream
            call = stub.WatchCamera(request, metadata=metadata)
            self._forwarded.add(call)
            try:
                # Registered there: say so now, not with the first result (a camera that is
                # down may give none for hours). Before, a refusal is the caller's to see.
                watching = [
                    (k, v)
                    for k, v in await call.initial_metadata()
                    if k in (WATCHING, WATCHING_KIND, WATCHING_STATE, WATCHING_ERROR)
                ]
                if watching:
                    await context.send_initial_metadata(watching)
                # read() throughout: grpc refuses read() and iteration mixed on one call
                while (result := await call.read()) is not grpc.aio.EOF:
                    yield result
                return
            except asyncio.CancelledError:
                if call not in self._ended:
                    raise  # the caller left
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{SHUTTING_DOWN}; watch it again")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and owner is None:
                    continue  # not published there: ask the next one
                if self.draining.is_set() or SHUTTING_DOWN in (exc.details() or ""):
                    # The whole server stopping: the other process may end this call (and
                    # close its socket) just before this one hears of its own drain.
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, f"{SHUTTING_DOWN}; watch it again"
                    )
                channel = self._channels.get(index)
                if (
                    exc.code() == grpc.StatusCode.UNAVAILABLE
                    and owner is not None
                    and channel is not None
                    and channel.get_state() != grpc.ChannelConnectivity.READY
                ):  # the process went away, not the camera
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"camera {camera_id!r}: {self._not_answering(index)}; watch it again "
                        "in a few seconds",
                    )
                await context.abort(exc.code(), exc.details() or "")
            finally:
                call.cancel()
                self._forwarded.discard(call)
                self._ended.discard(call)
        known = cameras_shown(configured)
        error = NotFound(f"no camera {camera_id!r}; cameras: {known} (and no published stream)")
        await context.abort(error.code, str(error))

    def end_forwarded(self) -> None:
        """Draining: end the WatchCamera calls forwarded to other processes, with UNAVAILABLE,
        as this process's own watchers end."""
        self._ended.update(self._forwarded)
        for call in list(self._forwarded):
            call.cancel()

    async def close(self) -> None:
        """Close the channels to the other processes."""
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels))


class UnreadResults(IdleTimeout):
    """A call's client read no result for stream_idle_timeout_s; ``unsent`` is the write
    gRPC still holds for it."""

    def __init__(self, message: str, unsent: asyncio.Future[None]) -> None:
        super().__init__(message)
        self.unsent = unsent


class _UnreadCalls:
    """Streams or watches ended because their clients read no result for the idle timeout.
    gRPC flow control holds a write the client does not take, and the call's status can go
    only after it (a write cannot be taken back, and a status beside it is refused:
    GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, the call left without one): so each such call
    waits, holding that one result, until its client reads again or leaves, and at most
    ``most`` of them do at once (past that a call keeps its place until one is gone)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.count = 0

    async def write(
        self,
        context: grpc.aio.ServicerContext,
        message: Any,
        limit: float,
        what: str,
        pressed: Callable[[], bool] | None = None,
    ) -> None:
        """Write ``message``; UnreadResults once it waits past ``limit`` seconds unread, or
        past UNREAD_PRESSED_S while ``pressed()`` says the memory such calls hold is over
        its limit (max_watcher_bytes: each unread watch holds its last result twice, its
        copy and the bytes serialised from it, and 200 of them held 5 GB)."""
        write = asyncio.ensure_future(context.write(message))
        started = time.monotonic()
        try:
            while True:
                check = limit if pressed is None else min(limit, UNREAD_PRESSED_S / 4)
                if (await asyncio.wait({write}, timeout=check))[0]:
                    break
                waited = time.monotonic() - started
                over = pressed is not None and waited >= UNREAD_PRESSED_S and pressed()
                if (waited < limit and not over) or self.count >= self.most:
                    continue
                self.count += 1
                del message  # gRPC holds its bytes; not kept by this frame while it waits
                why = f"{limit:g} s (stream_idle_timeout_s)"
                if waited < limit:
                    why = (
                        f"{waited:.0f} s while the results held for watches are over "
                        "max_watcher_bytes"
                    )
                raise UnreadResults(
                    f"{RESULTS_NOT_READ} {why}; the {what} is ended to free its place: read "
                    "results as they come",
                    write,
                )
        except asyncio.CancelledError:
            write.add_done_callback(quietly)  # its failure, once the call is gone, is no one's
            raise
        write.result()

    async def end(
        self,
        context: grpc.aio.ServicerContext,
        idle: IdleTimeout,
        unsent: asyncio.Future[None] | None,
        what: str,
    ) -> None:
        """Give the ended call its status: at once with no write held, else once it goes."""
        if unsent is None:
            with contextlib.suppress(grpc.aio.InternalError):  # it left: no one to tell
                await context.abort(idle.code, str(idle))
            return
        logger.warning("ended a %s from %s: %s", what, context.peer(), idle)
        try:
            with contextlib.suppress(grpc.aio.InternalError):
                await unsent
                await context.abort(idle.code, str(idle))
        finally:
            self.count -= 1
            if not unsent.done():  # cancelled meanwhile (the server stopping)
                unsent.add_done_callback(quietly)


def _parse(message: type[M], max_bytes: int) -> Callable[[bytes], M | Received | RefusedMessage]:
    """A request deserializer that returns, rather than raises, what does not parse, and what
    is over max_bytes (gRPC reads up to twice max_message_bytes: see grpc_options). A frame
    comes as Received: with its size and its raw pixels' length, read off its bytes."""
    name = message.DESCRIPTOR.full_name
    frames = name == pb.FrameRequest.DESCRIPTOR.full_name

    def parse(data: bytes) -> M | Received | RefusedMessage:
        if len(data) > max_bytes and frames:  # never parsed: its id and source read off it
            frame_id, source = id_and_source(data)
            return RefusedMessage(
                f"the {name} message is {len(data):,} bytes, over this server's limit of "
                f"{max_bytes:,} (max_message_bytes, in GetModelInfo): send raw pixels as JPEG, "
                "and a JPEG or PNG re-encoded smaller (a lower JPEG quality, or fewer pixels)",
                frame_id=frame_id,
                source=source,
            )
        if len(data) > max_bytes:
            return RefusedMessage(
                f"the {name} message is {len(data):,} bytes; this server takes one of at most "
                f"{max_bytes:,} (ids, names and options are far shorter)"
            )
        try:
            parsed = message.FromString(data)
        except DecodeError:
            return RefusedMessage(
                f"expected a {name} protobuf message, got {len(data)} bytes that do not parse "
                "as one: build the client from this server's .proto (reflection serves it)"
            )
        if frames:
            assert isinstance(parsed, pb.FrameRequest)
            return Received(parsed, len(data), raw_data_length(data))
        return parsed

    return parse


def _unary(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[R]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> R:
        if isinstance(request, RefusedMessage):
            await context.abort(request.code, str(request))
        return await method(request, context)

    return handle


def _unary_stream(
    method: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[R]],
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[R]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[R]:
        if isinstance(request, RefusedMessage):
            await context.abort(request.code, str(request))
        async for response in method(request, context):
            yield response

    return handle


def add_to_server(servicer: ConvstreamServicer, server: grpc.aio.Server) -> None:
    """Register the Convstream service: see add_service."""
    add_service(server, pb, "Convstream", servicer, servicer.settings.max_message_bytes)


def _serialize(message: type[Message]) -> Callable[[Message | bytes], bytes]:
    """A response serializer that sends bytes as they are: a watch's results, serialised
    once for all its camera's watchers (feeds.Watcher.next)."""
    serialize = message.SerializeToString

    def write(response: Message | bytes) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return write


def add_service(
    server: grpc.aio.Server, module: Any, name: str, servicer: object, max_message_bytes: int
) -> None:
    """Register the service ``name`` of the generated ``module`` as its add_..._to_server
    does, but with request deserializers that let each RPC refuse a message that does not
    parse, with INVALID_ARGUMENT (gRPC itself would answer UNKNOWN and end a stream, logging
    a traceback), and refuse one over its size unparsed: a frame over max_message_bytes, any
    other request (a camera id, a health service name, options) over SMALL_REQUEST_BYTES.

    gRPC reads a request whole, up to its one limit for every method (twice
    max_message_bytes: see grpc_options), before the handler runs: a health Check, which
    needs no token, naming a 100 MiB service was parsed (four times its size in memory) and,
    a Watch, held open with it."""
    service = module.DESCRIPTOR.services_by_name[name]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:  # StreamFrames: StreamSession refuses each such message
            assert method.server_streaming
            make = grpc.stream_stream_rpc_method_handler
        elif method.name == "Analyze":  # its one request read as a stream: see Analyze
            make = grpc.stream_unary_rpc_method_handler
        elif method.server_streaming and inspect.isasyncgenfunction(behaviour):
            make, behaviour = grpc.unary_stream_rpc_method_handler, _unary_stream(behaviour)
        else:  # a response, or (health's Watch) responses written with context.write
            make = (
                grpc.unary_stream_rpc_method_handler
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            behaviour = _unary(behaviour)
        frames = method.input_type.full_name == pb.FrameRequest.DESCRIPTOR.full_name
        handlers[method.name] = make(
            behaviour,
            request_deserializer=_parse(
                getattr(module, method.input_type.name),
                max_message_bytes if frames else SMALL_REQUEST_BYTES,
            ),
            response_serializer=_serialize(getattr(module, method.output_type.name)),
        )
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)
