"""One StreamFrames call: read frames, apply the freshness policy, analyse, answer in order.

    reader  --pending (policy applies here)-->  dispatcher  --window of frames-->  caller

Frames wait in ``pending`` until the window has room; that is where the freshness policy
acts. A frame enters the window when its analysis starts and leaves it when its result has
been handed to gRPC, so a caller that reads slowly fills the window, frames pile up in
pending, and the policy drops the stale ones (or, when lossless, the reader stops reading and
gRPC flow control slows the sender). Nothing here grows without bound: frames held are
bounded in number (FrameBudget) and in bytes (ByteBudget) over all streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from convstream.server.budget import ByteBudget
from convstream.server.engine import Inference
from convstream.server.errors import (
    ConvstreamError,
    IdleTimeout,
    InvalidOptions,
    Overloaded,
    RefusedMessage,
)
from convstream.server.feeds import StreamPublication
from convstream.server.metrics import Metrics
from convstream.server.pipeline import (
    CALLER,
    MAX_SOURCE_CHARS,
    ClientCaller,
    DropLog,
    Options,
    Pipeline,
    Prepared,
    check_freshness,
    error_result,
)
from convstream.server.security import REFUSALS_KEPT, REFUSALS_LOG_S
from convstream.server.wire import Received
from convstream.v1 import MAX_QUEUE_SIZE
from convstream.v1 import convstream_pb2 as pb

logger = logging.getLogger(__name__)

# Frames in analysis at once per stream. Four keep both inference workers of a 2-core host
# busy while another frame decodes and a finished one waits for a slow one ahead of it
# (results leave in order): one lossless stream with 4 frames in flight served 0.82-0.84 of
# the in-process limit with 4, 0.78-0.80 with 3 (three A/B rounds). A latest-only stream takes
# one at a time, so the frame it analyses next is always the newest when its analysis starts,
# rather than one picked while others still had to run before it (with three, that tripled
# the age of results under overload).
WINDOW = 4
LATEST_ONLY_WINDOW = 1
# Refusals waiting for their turn among a stream's results, at most; past it the reader waits.
# A refusal takes no room of the stream's queue (it must not drop a good frame waiting), and
# holds only its frame's id and source.
MAX_REFUSALS_WAITING = 64


@dataclass
class _Item:
    request: pb.FrameRequest
    arrived: float
    options: Options | None  # None: the frame already failed
    failure: pb.FrameResult | None = None
    size: int = 0  # bytes taken from the ByteBudget, given back when the item leaves
    wire_size: int = 0  # the request's size on the wire, read as it came (wire.Received)
    # Sent under LOSSLESS: never dropped, also once the stream's first options choose a
    # policy that drops (the frames sent before them were sent to be answered).
    kept: bool = False
    # Sent once the stream was published (by this frame or one before it): a frame sent
    # before the one that asked, still waiting then, went to the watchers too.
    public: bool = False

    @property
    def droppable(self) -> bool:
        """Whether the policy may drop it: not a refusal (answered), not sent lossless."""
        return self.options is not None and not self.kept


@dataclass
class _Done:
    """A frame's result, and for a published stream what it was made from."""

    item: _Item
    result: pb.FrameResult
    prepared: Prepared | None = None
    inference: Inference | None = None
    began: float = 0.0  # time.perf_counter() its analysis began (it arrived before)


def stream_share(default: int, limit: int) -> int:
    """FrameBudget.share for a server with this default queue and max_queued_frames."""
    return max(default, limit // 4)


class FrameBudget:
    """Frames the server holds for streams at most, over all of them, and for one caller.

    A stream reserves its queue when it opens (the server's default queue_size) and again when
    its options ask for another size; what would pass the limit is refused at once with
    RESOURCE_EXHAUSTED, before a single frame is held, so streams already open never notice.
    One caller (its token, or its host without tokens: security.caller) holds at most half of
    them, whatever its streams: one token's 5 streams of 256, 256, 256, 200 and 50 frames,
    within its max_calls, held 1018 of 1024, and every other client's stream was refused for
    as long as they lived (a review). Used from the event loop only.
    """

    def __init__(self, limit: int, default_queue: int) -> None:
        self.limit = limit
        self.reserved = 0
        # half, or one stream's largest queue where that is more (a server configured with
        # few queued frames), so that a caller may always open one stream of any size
        self.caller_share = max(limit // 2, stream_share(default_queue, limit))
        self._by_caller: dict[str, int] = {}  # only callers that hold some
        self._said: dict[tuple[str, str], float] = {}  # refusals logged, by caller and limit

    def held(self, caller: str) -> int:
        return self._by_caller.get(caller, 0)

    def admit(self, frames: int, caller: str) -> None:
        """Reserve a new stream's default queue for ``caller``; Overloaded, saying why, past
        the caller's share or the limit."""
        held = self.held(caller)
        if held + frames > self.caller_share:
            raise self._refusal(
                caller,
                "its share",
                f"{caller} holds {held} of the {self.limit} frames the server keeps for streams "
                f"(max_queued_frames) in the queues of its open streams, and one caller may "
                f"hold {self.caller_share} ({self._share_is()}); a new stream needs {frames}: "
                "end one of your streams, or give them smaller queue_size",
            )
        if self.reserved + frames > self.limit:
            raise self._refusal(
                caller,
                "max_queued_frames",
                f"the open streams hold {self.reserved} of the {self.limit} frames the server "
                f"keeps for streams (max_queued_frames), and a new stream needs {frames}; "
                "retry later, or raise max_queued_frames",
            )
        self._take(caller, frames)

    def _share_is(self) -> str:
        """What a caller's share is, as a refusal says it."""
        return "half" if self.caller_share == self.limit // 2 else "one stream's largest queue"

    def share(self, default: int) -> int:
        """The largest queue one stream may ask for: a quarter of the limit (or the default
        queue, if larger), so that one stream can never take every other stream's room."""
        return stream_share(default, self.limit)

    def reserve(self, frames: int, held: int, caller: str) -> None:
        """Trade ``caller``'s reservation of `held` frames for one of `frames`; Overloaded
        past the caller's share or the limit."""
        mine = self.held(caller) - held + frames
        if mine > self.caller_share:
            raise self._refusal(
                caller,
                "its share",
                f"a queue of {frames} frames would bring the frames {caller} holds for its "
                f"streams to {mine}, over the {self.caller_share} one caller may hold "
                f"({self._share_is()} of max_queued_frames {self.limit}); ask for a smaller "
                "queue_size or "
                "FRESHNESS_LATEST_ONLY, or end another of your streams",
            )
        if self.reserved - held + frames > self.limit:
            raise self._refusal(
                caller,
                "max_queued_frames",
                f"a queue of {frames} frames would bring the frames held for streams to "
                f"{self.reserved - held + frames}, over max_queued_frames {self.limit}; ask "
                "for a smaller queue_size or FRESHNESS_LATEST_ONLY, or retry later",
            )
        self._take(caller, frames - held)

    def release(self, frames: int, caller: str) -> None:
        self._take(caller, -frames)

    def _take(self, caller: str, frames: int) -> None:
        self.reserved += frames
        mine = self.held(caller) + frames
        if mine:
            self._by_caller[caller] = mine
        else:
            self._by_caller.pop(caller, None)

    def _refusal(self, caller: str, limit: str, message: str) -> Overloaded:
        """The refusal, logged as a warning once per caller and limit every REFUSALS_LOG_S
        (a client retrying every second would write a line a second): one caller holding
        the queues had every other client refused, and nothing in the log said who."""
        key = (caller, limit)
        now = time.monotonic()
        if now - self._said.get(key, -math.inf) >= REFUSALS_LOG_S:
            self._said.pop(key, None)  # re-inserted last: the dict stays in time order
            while len(self._said) >= REFUSALS_KEPT:  # many callers: forget the oldest
                del self._said[next(iter(self._said))]
            self._said[key] = now
            logger.warning(
                "refused a stream's queue for %s: %s (the same refusal of that caller is not "
                "logged again for %.0f minutes)",
                caller,
                message,
                REFUSALS_LOG_S / 60,
            )
        return Overloaded(message)


class PublicationRegistry(Protocol):
    def publish(self, name: str) -> StreamPublication: ...

    def unpublish(self, publication: StreamPublication) -> None: ...


class StreamSession:
    """State of one stream; ``run`` is the response iterator."""

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        default_queue: int,
        draining: asyncio.Event,
        idle_timeout_s: float | None = None,
        registry: PublicationRegistry | None = None,
        budget: FrameBudget | None = None,
        byte_budget: ByteBudget | None = None,
        caller: str = "",
    ) -> None:
        """The caller reserves `default_queue` frames of `budget` for ``caller`` (whom the
        call counts as: security.caller), and gives back `capacity`."""
        self.budget = budget
        self.caller = caller
        self.byte_budget = byte_budget
        self._held_bytes = 0
        self.idle_timeout_s = idle_timeout_s
        self.registry = registry
        self.publication: StreamPublication | None = None
        self.pipeline = pipeline
        self.metrics = metrics
        self.draining = draining
        self.freshness = pb.FRESHNESS_LOSSLESS
        self.capacity = default_queue
        self.options = Options()
        self.source = ""  # the last source a frame named: frames that name none take it
        self.drops = DropLog()
        self._default_queue = default_queue
        self._configured = False
        self._pending: deque[_Item] = deque()
        self._refusals_waiting = 0  # of _pending: they take no room of the queue
        self._changed = asyncio.Condition()
        self._reader_done = False
        self.window = WINDOW
        self._in_analysis = 0
        self._out: asyncio.Queue[asyncio.Task[_Done] | None] = asyncio.Queue()

    @property
    def _publishing(self) -> StreamPublication | None:
        """The stream's publication while it lasts (a camera configured under its name by a
        reload takes it: then the stream goes on unpublished, its frames costing no more)."""
        publication = self.publication
        return publication if publication is not None and not publication.taken_over else None

    def _check(self, message: pb.ResultOptions, freshness: int) -> None:
        """Refuse stream-level values no stream could have (whichever frame carries them);
        `freshness` is the policy they would apply to (LATEST_ONLY keeps one frame whatever
        queue_size says)."""
        check_freshness(message)
        if message.publish and self.registry is None:
            raise InvalidOptions("this server does not publish streams")
        if message.queue_size > MAX_QUEUE_SIZE and freshness != pb.FRESHNESS_LATEST_ONLY:
            here = ""
            if self.budget is not None:
                share = self.budget.share(self._default_queue)
                if share < MAX_QUEUE_SIZE:
                    here = (
                        f", and one stream may hold at most {share} on this server (a "
                        f"quarter of max_queued_frames {self.budget.limit})"
                    )
            raise InvalidOptions(
                f"queue_size must be 0 (the server's default, {self._default_queue}) to "
                f"{MAX_QUEUE_SIZE}{here}; got {message.queue_size}"
            )

    def _check_unchanged(self, message: pb.ResultOptions) -> None:
        """A later frame's options: the policy and queue are the stream's, set by its first
        accepted options, so a frame asking for others is refused rather than ignored (unset
        fields ask for nothing); publish takes effect on any frame while not yet published."""
        self._check(message, message.freshness or self.freshness)
        if message.freshness and message.freshness != self.freshness:
            raise InvalidOptions(
                "freshness is set once per stream, by its first accepted options: this stream "
                f"is {pb.Freshness.Name(self.freshness)} and this frame asks for "
                f"{pb.Freshness.Name(message.freshness)}; open a new stream for another policy"
            )
        if (
            message.queue_size
            and message.queue_size != self.capacity
            and self.freshness != pb.FRESHNESS_LATEST_ONLY
        ):
            raise InvalidOptions(
                "queue_size is set once per stream, by its first accepted options: this "
                f"{pb.Freshness.Name(self.freshness)} stream lets {self.capacity} frames wait "
                f"and this frame asks for {message.queue_size}; open a new stream for another "
                "queue"
            )

    def _configure(self, message: pb.ResultOptions) -> None:
        freshness = message.freshness or pb.FRESHNESS_LOSSLESS
        self._check(message, freshness)
        if freshness == pb.FRESHNESS_LATEST_ONLY:
            capacity = 1
        elif message.queue_size:
            capacity = message.queue_size
        else:
            capacity = self._default_queue
        if self.budget is not None:
            share = self.budget.share(self._default_queue)
            if capacity > share:
                # never on this server, unlike a queue that is not free now (reserve below)
                raise InvalidOptions(
                    f"a queue of {capacity} frames is more than one stream may hold on this "
                    f"server, {share} (a quarter of max_queued_frames {self.budget.limit}; "
                    "ModelInfo.max_stream_queue_size): ask for a smaller queue_size"
                )
            self.budget.reserve(capacity, self.capacity, self.caller)
        self.freshness, self.capacity = freshness, capacity
        self.window = LATEST_ONLY_WINDOW if freshness == pb.FRESHNESS_LATEST_ONLY else WINDOW

    def _kept(self) -> str:
        """What a frame's refused options leave in force, for its refusal: a typo'd stage in
        a stream's first options left it LOSSLESS, unsaid, where it asked for LATEST_ONLY."""
        maps = ", ".join(self.options.feature_maps) or "no feature maps"
        kept = f"{pb.Freshness.Name(self.freshness)}, {maps}"
        if self._configured:
            kept = f"keeps {kept}"
        else:
            kept = f"goes on {kept} until a frame's options are accepted"
        return f"this frame was not analysed and its options not taken: the stream {kept}"

    def _accept(self, received: Received | RefusedMessage, arrived: float) -> _Item:
        """Options for this frame: its own (which then stick) or the stream's last ones; and
        its source: its own (which then sticks) or the stream's last one. A message refused
        as it came (one that did not parse, its id unknown: 0; one over the message limit) is
        refused alone, in its place among the results."""
        if isinstance(received, RefusedMessage):
            source = received.source or self.source
            shell = pb.FrameRequest(frame_id=received.frame_id, source=source)
            return self._refused(shell, arrived, received.code, str(received))
        request = received.request
        if request.source:
            if len(request.source) <= MAX_SOURCE_CHARS:  # a longer one is refused below
                self.source = request.source
        elif self.source:
            request.source = self.source
        try:
            if request.HasField("options"):
                try:
                    options = Options.parse(request.options)  # refused options change nothing
                    # nor options whose result would not fit: they stuck, and every later
                    # frame was refused with this one's reason
                    self.pipeline.check_fits(options, request, received.raw_length)
                    if not self._configured:  # the policy comes from the stream's first options
                        self._configure(request.options)
                        self._configured = True
                    else:
                        self._check_unchanged(request.options)
                except InvalidOptions as exc:
                    raise type(exc)(f"{exc}; {self._kept()}") from None
                self.options = options
                # publish takes effect on any frame while not yet published; refused (a name
                # taken), the frame is, and the stream goes on unpublished, its options held
                publish = request.options.publish and self.publication is None
                if publish and self.registry is not None:  # else _check refused it
                    self.publication = self.registry.publish(request.source)
                    self.publication.drops = self.drops  # ListCameras counts them live
            # Checked here, not only when its turn comes: a policy that drops waiting frames
            # would otherwise drop a bad one unseen, and its sender never learn why.
            self.pipeline.check(request, received.raw_length)
            return _Item(
                request,
                arrived,
                self.options,
                wire_size=received.size,
                kept=self.freshness == pb.FRESHNESS_LOSSLESS,
                public=self.publication is not None,
            )
        except ConvstreamError as exc:
            return self._refused(request, arrived, exc.code, str(exc))
        except Exception:  # a bug of ours fails the frame, as in analysis, not the stream
            logger.exception("checking frame %d of %r failed", request.frame_id, request.source)
            return self._refused(
                request, arrived, grpc.StatusCode.INTERNAL, "internal error checking frame"
            )

    def _refused(
        self, request: pb.FrameRequest, arrived: float, code: grpc.StatusCode, message: str
    ) -> _Item:
        """A frame's refusal, keeping only its id and source (the stream's, if its own was
        refused for its length): a refused frame holds no pixels while it waits for its turn."""
        source = request.source if len(request.source) <= MAX_SOURCE_CHARS else self.source
        shell = pb.FrameRequest(frame_id=request.frame_id, source=source)
        return _Item(shell, arrived, None, error_result(shell, code.value[0], message))

    async def _read(self, requests: AsyncIterator[Received | RefusedMessage]) -> None:
        frames = aiter(requests)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        request = await anext(frames)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise IdleTimeout(
                        f"no frame for {self.idle_timeout_s:g} s (stream_idle_timeout_s); "
                        "open a new stream when frames come again"
                    ) from None
                item = await self._hold(self._accept(request, time.perf_counter()))
                if self._publishing is not None:
                    self._publishing.received()
                async with self._changed:
                    if item.options is None:
                        # A refusal waits for its turn beside the queue, not in it: taking a
                        # place there, it dropped the good frame waiting under LATEST_ONLY.
                        await self._changed.wait_for(
                            lambda: self._refusals_waiting < MAX_REFUSALS_WAITING
                        )
                        self._refusals_waiting += 1
                    # A full queue drops its oldest frame, unless it is lossless or holds only
                    # frames sent lossless, which are answered, never dropped: then the reader
                    # waits.
                    elif self.freshness == pb.FRESHNESS_LOSSLESS or (
                        self._frames_waiting >= self.capacity and not self._drop_oldest()
                    ):
                        await self._changed.wait_for(lambda: self._frames_waiting < self.capacity)
                    self._pending.append(item)
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._reader_done = True
                self._changed.notify_all()

    async def _hold(self, item: _Item) -> _Item:
        """Take the frame's bytes from the byte budget (a lossless stream waits for room), or
        turn it into its refusal (keeping only its id and source, so that a refused frame
        holds no memory)."""
        if item.options is None or self.byte_budget is None:
            return item
        budget = self.byte_budget
        size = item.wire_size  # not request.ByteSize(): 71 ms for a 64 MB raw frame
        if size <= budget.limit and self.freshness == pb.FRESHNESS_LOSSLESS:
            await budget.room(size, lambda: self._held_bytes)
        elif not budget.fits(size, self._held_bytes):
            # The policy drops this stream's oldest waiting frames anyway: make room from
            # them, if dropping all of them would make it fit (else drop none).
            waiting = sum(old.size for old in self._pending if old.droppable)
            if budget.fits(size, self._held_bytes, freed=waiting):
                while not budget.fits(size, self._held_bytes) and self._drop_oldest():
                    pass
        if budget.take(size, self._held_bytes):
            item.size = size
            self._held_bytes += size
            return item
        code = grpc.StatusCode.RESOURCE_EXHAUSTED  # for now: it may fit later
        if size > budget.limit:
            code = grpc.StatusCode.INVALID_ARGUMENT  # never, whatever the load
            message = (
                f"this {size}-byte frame is larger than max_held_bytes {budget.limit}, all "
                "the server holds for streams: it can never be analysed here; send it as JPEG "
                "or smaller"
            )
        elif self._held_bytes and self._held_bytes + size > budget.share:
            message = (
                f"this stream holds {self._held_bytes} bytes of frames waiting or in "
                f"analysis, and this {size}-byte frame would pass the {budget.share} one "
                f"stream may hold (a quarter of max_held_bytes {budget.limit}); it was not "
                "analysed: read results as they come, send JPEG rather than raw pixels, or "
                "use a lossless stream, which waits for room"
            )
        else:
            message = (
                f"the server holds {budget.held} bytes of frames for streams, and this "
                f"{size}-byte frame would pass max_held_bytes {budget.limit}; it was not "
                "analysed: send JPEG rather than raw pixels, fewer frames at once, or a "
                "lossless stream, which waits for room"
            )
        return self._refused(item.request, item.arrived, code, message)

    @property
    def _frames_waiting(self) -> int:
        """Frames in the queue: those waiting, refusals aside."""
        return len(self._pending) - self._refusals_waiting

    def _release(self, item: _Item) -> None:
        if item.size and self.byte_budget is not None:
            self.byte_budget.give(item.size)
            self._held_bytes -= item.size
            item.size = 0

    def _drop_oldest(self) -> bool:
        """Drop the oldest waiting frame the policy may drop; False if none."""
        for i, old in enumerate(self._pending):
            if old.droppable:
                del self._pending[i]
                self._release(old)
                self.drops.drop(old.request.frame_id)
                label = self.metrics.client_source(old.request.source)
                self.metrics.frames.labels(label, "dropped").inc()
                return True
        return False

    async def _dispatch(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (
                        self._in_analysis < self.window
                        and (bool(self._pending) or self._reader_done)
                    )
                )
                if not self._pending:
                    await self._out.put(None)
                    return
                item = self._pending.popleft()
                if item.options is None:
                    self._refusals_waiting -= 1
                self._in_analysis += 1
                self._changed.notify_all()
            await self._out.put(asyncio.create_task(self._process(item)))

    async def _process(self, item: _Item) -> _Done:
        source = self.metrics.client_source(item.request.source)
        if item.failure is not None:
            invalid = item.failure.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            self.metrics.frames.labels(source, "invalid" if invalid else "rejected").inc()
            return _Done(item, item.failure)
        assert item.options is not None
        began = time.perf_counter()
        try:
            publishing = self._publishing if item.public else None
            watched = publishing.wanted_maps() if publishing is not None else []
            result, prepared, inference = await self.pipeline.analyze_parts(
                item.request, item.options, item.arrived, also=watched
            )
        except ConvstreamError as exc:
            self.metrics.frames.labels(source, exc.outcome).inc()
            return _Done(item, error_result(item.request, exc.code.value[0], str(exc)))
        except Exception:
            logger.exception("frame %d of %r failed", item.request.frame_id, source)
            self.metrics.frames.labels(source, "error").inc()
            message = "internal error analysing frame"
            return _Done(
                item, error_result(item.request, grpc.StatusCode.INTERNAL.value[0], message)
            )
        self.metrics.observe_result(source, result.timings, result.blank)
        return _Done(item, result, prepared, inference, began)

    async def _publish(self, done: _Done) -> None:
        assert self.publication is not None and done.prepared and done.inference
        # its watchers' fps and timings count from when its analysis began, as a camera's
        # do: from its arrival, frames that waited in a LOSSLESS queue read as 0 fps out
        await self.publication.publish(
            done.item.request.frame_id,
            done.prepared,
            done.inference,
            captured=time.time() - done.result.frame_age_ms / 1000,
            read_at=done.item.arrived,
            began=done.began,
        )

    async def _stop_on_drain(self, reader: asyncio.Task[None]) -> None:
        await self.draining.wait()
        reader.cancel()

    async def run(
        self, requests: AsyncIterator[Received | RefusedMessage]
    ) -> AsyncGenerator[pb.FrameResult, None]:
        """Yield one result per frame read, in the order frames arrived."""
        # this stream's decoding takes its turn beside the others', within its caller's share
        # (a token, not the session: the context outlives the call in the loop's cancelled
        # timers)
        CALLER.set(ClientCaller(self.caller) if self.caller else object())
        reader = asyncio.create_task(self._read(requests))
        tasks = [reader, asyncio.create_task(self._dispatch())]
        tasks.append(asyncio.create_task(self._stop_on_drain(reader)))
        try:
            while (task := await self._out.get()) is not None:
                done = await task
                self._release(done.item)
                result = done.result
                public = self._publishing is not None and done.item.public
                if public and done.prepared and done.inference:
                    try:
                        await self._publish(done)
                    except Exception:  # the watchers' loss; the stream's own result goes on
                        logger.exception("publishing frame %d failed", done.item.request.frame_id)
                    else:
                        result.published = True
                self.drops.stamp(result)
                result.freshness, result.queue_size = self.freshness, self.capacity
                yield result
                async with self._changed:
                    self._in_analysis -= 1
                    self._changed.notify_all()
            if reader.done() and not reader.cancelled() and (failed := reader.exception()):
                raise failed
        finally:
            if self.byte_budget is not None:  # frames still waiting or in analysis
                self.byte_budget.give(self._held_bytes)
                self._held_bytes = 0
            if self.publication is not None and self.registry is not None:
                self.registry.unpublish(self.publication)
            for helper in tasks:
                helper.cancel()
            while not self._out.empty():
                leftover = self._out.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
