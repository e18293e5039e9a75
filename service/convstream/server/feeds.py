"""A camera's analysis loop and its watchers: one inference per frame, any number of watchers.

    Camera (reader thread) --newest frame--> CameraFeed --one result per distinct content-->
        Watcher 1 (own rate, own bounded queue) --> WatchCamera call 1
        Watcher 2 ...

The feed analyses the newest frame whenever it is free (and the camera's fps cap allows),
asking the engine for the union of the feature maps its watchers want, then builds one
result per distinct content and offers it to each watcher that is due. ``offer`` never
waits: a watcher that reads slowly loses its own oldest results, never anyone else's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from google.protobuf.timestamp_pb2 import Timestamp

from convstream.server.budget import ByteBudget
from convstream.server.camera import (
    CREDENTIALS_RETRY_S,
    LOG_AGAIN_S,
    STATE_NAMES,
    Camera,
    Frame,
    RateMeter,
)
from convstream.server.config import CameraConfig, parse_size
from convstream.server.engine import Inference
from convstream.server.errors import (
    CameraDown,
    CameraInTrouble,
    ConvstreamError,
    Draining,
    InvalidFrame,
    ModelFailed,
)
from convstream.server.metrics import Metrics
from convstream.server.pipeline import (
    CALLER,
    CameraCaller,
    DropLog,
    Options,
    Pipeline,
    Prepared,
    completed,
    error_result,
    hottest,
)
from convstream.v1 import convstream_pb2 as pb

logger = logging.getLogger(__name__)


def timestamp(seconds: float) -> Timestamp | None:
    """time.time() as a Timestamp; None for 0 (never happened), which leaves a message's
    field unset: an empty Timestamp would set it, to 1970, for other languages' has_ checks."""
    if seconds <= 0:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


@dataclass(eq=False)  # each one itself: remove() takes that one, not one equal to it
class _Queued:
    data: bytes  # the result, serialised once for every watcher that gets it
    frame_id: int
    captured: float  # time.time() the frame was read (a notice: when it was made)

    @property
    def size(self) -> int:  # as counted in the watchers' ByteBudget
        return len(self.data)


@dataclass(frozen=True)
class Encoded:
    """One distinct result of a frame, serialised, and the time its encoding took."""

    data: bytes
    encode_ms: float


class FeedFinished(Exception):
    """A published stream ended: its watches end OK, after the results they hold."""


# How early, at most, a camera's frame may come for its fps cap's schedule: the jitter of a
# camera at the cap's own rate, whose frames come a little either side of their time.
CAP_EARLY_S = 0.02


# How early, as a part of a watcher's interval, a result may come and be its next.
WATCH_EARLY = 0.25


def next_due(due: float, taken: float, interval: float) -> float:
    """When a camera capped at one frame each ``interval`` seconds may have its next frame
    analysed, the one ``due`` then having been taken at ``taken``.

    On schedule it keeps to the cap's grid, so a frame a little late does not slow the rate;
    a frame taken later than that starts the grid again from itself, rather than letting the
    next one follow at once to catch up: such pairs read as bursts, "2.9/2" fps on a busy
    server's dashboard."""
    return max(due + interval, taken + interval - min(interval / 2, CAP_EARLY_S))


class Watcher:
    """One WatchCamera call: what it wants, how often, and the results waiting for it."""

    def __init__(
        self,
        camera_id: str,
        options: Options,
        max_fps: float,
        capacity: int,
        budget: ByteBudget | None = None,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self.camera_id = camera_id
        self._on_drop = on_drop  # told of each result dropped
        self.options = options
        self.interval = 1 / max_fps if max_fps > 0 else 0.0
        self.capacity = capacity
        self.budget = budget if budget is not None else ByteBudget(1 << 62)
        self.held = 0  # bytes of the results waiting for it, and of the one being sent
        self._sending = 0  # of those, the result given to the call, until it asks again
        self.drops = DropLog()
        self._next = 0.0
        self._queue: deque[_Queued] = deque()
        self._notice: _Queued | None = None  # the camera's notice in the queue, if one is
        self._ready = asyncio.Event()
        self._ended: ConvstreamError | FeedFinished | None = None
        self._released = False

    def due(self, now: float, pace: float = 0.0) -> bool:
        """Whether a result at ``now`` is this watcher's next, its source's results coming
        ``pace`` seconds apart lately: one closer to its time than the next will be counts
        (half a pace early, up to WATCH_EARLY of its own interval). A 5 fps watcher of a 5
        fps camera got 4.6 results a second: each that came a few milliseconds early was
        passed over, and the next came a whole frame later. The schedule keeps its grid."""
        return now >= self._next - min(pace / 2, self.interval * WATCH_EARLY)

    def offer(self, data: bytes, frame_id: int, captured: float, now: float) -> None:
        """Queue a result, serialised (event loop only; never waits); the oldest goes when
        full. Serialised once per distinct result, off the event loop, for every watcher:
        each watcher's ByteSize() of an 8 MB result (every stage in float32) took 45 ms of
        the loop, and 20 watchers of such results slowed every camera and call on the server
        to a third; each one that read also copied and serialised it there, 18-80 ms (a
        reliability review). None once released: a feed a reload took out of the list, still
        stopping, offered its last frame to a watch that had ended and left it (the watch
        looked its camera up by id, and found the new one), and its bytes stayed counted in
        max_watcher_bytes for good."""
        if self._released:
            return
        # A schedule, not a minimum gap: a 5 fps watcher of a 6 fps camera gets 5 results a
        # second, not 3 (every other frame). The first result starts the schedule, so a new
        # watcher gets no opening burst; so does the first after a pause of more than a step
        # (a camera reconnecting): catching up there sent two results a frame apart.
        if now - self._next > self.interval:
            self._next = now + self.interval
        else:
            self._next += self.interval
        if self._frames() >= self.capacity:
            self._drop_oldest()
        item = _Queued(data, frame_id, captured)
        self._queue.append(item)
        self._take(item.size)
        budget = self.budget
        while self._frames() > 1 and (self.held > budget.share or budget.held > budget.limit):
            self._drop_oldest()
        self._ready.set()

    def _frames(self) -> int:
        """Frames' results waiting: a notice waits beside them, not in their place."""
        return len(self._queue) - (self._notice is not None)

    def notify(self, data: bytes) -> None:
        """Queue a notice of the camera (event loop only; never waits), after the results
        waiting, outside the watcher's rate (it says no frame is coming) and its queue's
        bounds: it takes no result's place and is never dropped for one (a queue of one,
        read slowly, lost both a frame and the notice), and a newer notice replaces it, so
        one waits at most. Some hundred bytes."""
        if self._released:
            return
        if self._notice is not None:
            self._queue.remove(self._notice)
            self._take(-self._notice.size)
        self._notice = _Queued(data, 0, time.time())
        self._queue.append(self._notice)
        self._take(self._notice.size)
        self._ready.set()

    def _drop_oldest(self) -> None:
        """The oldest frame's result goes (a notice stays), counted as dropped."""
        at = 1 if self._queue[0] is self._notice else 0
        old = self._queue[at]
        del self._queue[at]
        self._take(-old.size)
        self.drops.drop(old.frame_id)
        self._on_drop()

    def _take(self, size: int) -> None:
        self.held += size
        self.budget.hold(size)

    @property
    def sending(self) -> int:
        """The bytes counted for the result last given to the call, until it asks again."""
        return self._sending

    def release(self) -> None:
        """The watch is over: what waits for it is given back, and nothing more is taken."""
        self._released = True
        self._queue.clear()
        self._notice = None
        self._sending = 0
        self._take(-self.held)

    def end(self, error: ConvstreamError | None) -> None:
        """No more results: the camera was removed or the server is stopping (``error``), or
        the stream publishing the results ended (None: the watch ends OK)."""
        self._ended = error if error is not None else FeedFinished()
        self._ready.set()

    async def next(self) -> bytes:
        """The oldest waiting result, stamped for this watcher, as the bytes the call sends
        (the service's serializer passes bytes as they are); raises what ended it.

        The shared result's bytes and this watcher's fields after them (sequence, drops,
        age), which protobuf reads as one message whose later fields win: the shared result
        leaves those fields unset. It stays counted until the call asks for the next one
        (its write is done): the bytes given to gRPC, and the shared result they were made
        from, wait in the call until its client reads, twice its size. Uncounted, 200
        watches that read nothing held 5 GB against a max_watcher_bytes of 256 MiB (a
        reliability review).
        """
        self._take(-self._sending)
        self._sending = 0
        while not self._queue:
            if self._ended is not None:
                raise self._ended
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        notice = item is self._notice
        if notice:
            self._notice = None
        self._take(item.size)  # counted twice now: the shared bytes and those sent
        self._sending = 2 * item.size
        own = pb.FrameResult()  # this watcher's fields
        self.drops.stamp(own)
        if not notice:  # of no frame: no age
            own.frame_age_ms = max(0.0, (time.time() - item.captured) * 1000)
        return item.data + own.SerializeToString()


class Publisher:
    """The watchers of one named source, and what was last published to them."""

    def __init__(self, name: str, pipeline: Pipeline, metrics: Metrics) -> None:
        self.name = name
        self.pipeline = pipeline
        self.metrics = metrics
        self.watchers: set[Watcher] = set()
        # results its watchers let go unread, counted as each is dropped (a counter: a watch
        # that ends, or all of them ended by a camera going down, takes none of it back)
        self.watcher_drops = 0
        self.frames_analysed = 0
        self.last_score = 0.0
        self.last_blank = False
        self.last_result_time = 0.0
        self.latency_ms = 0.0
        self.fps_out = RateMeter()
        self.frame_size = (0, 0)  # width, height of the latest frame
        self._pace = 0.0  # seconds between its results, lately (for the watchers' schedules)
        self._last_at = 0.0

    def status(self, now: float) -> pb.CameraStatus:
        """What ListCameras says of this source: the publishing side; subclasses add theirs."""
        return pb.CameraStatus(
            id=self.name,
            fps_out=self.fps_out.rate(now),
            frames_analysed=self.frames_analysed,
            watchers=len(self.watchers),
            frame_width=self.frame_size[0],
            frame_height=self.frame_size[1],
            last_score=self.last_score,
            last_blank=self.last_blank,
            last_frame_time=timestamp(self.last_result_time),
            latency_ms=self.latency_ms,
        )

    def wanted_maps(self) -> list[str]:
        """The feature maps some watcher wants: what the next inference must make."""
        return sorted({name for w in self.watchers for name in w.options.feature_maps})

    def end_watchers(self, error: ConvstreamError | None) -> None:
        for watcher in self.watchers:
            watcher.end(error)
        self.watchers.clear()

    def _encode_all(
        self,
        request: pb.FrameRequest,
        prepared: Prepared,
        inference: Inference,
        wanted: set[Options],
        began: float,
    ) -> dict[Options, Encoded]:
        """Each distinct result, its timings complete, serialised here, off the event loop
        (``began``: time.perf_counter() the frame's analysis began)."""
        results = {o: self._encode(request, o, prepared, inference) for o in wanted}
        total_ms = (time.perf_counter() - began) * 1000
        encoded = {}
        for options, result in results.items():
            if not result.status.code:
                completed(result.timings, total_ms)
            encoded[options] = Encoded(result.SerializeToString(), result.timings.encode_ms)
        return encoded

    def _encode(
        self, request: pb.FrameRequest, options: Options, prepared: Prepared, inference: Inference
    ) -> pb.FrameResult:
        """One watcher's result, or, if it would not fit in a message, its refusal: the
        watchers that asked for that much get INVALID_ARGUMENT for this frame, and the
        others, and the stream publishing, never notice."""
        try:
            self.pipeline.check_size(options, prepared.geometry.input_size)
            return self.pipeline.encode(request, options, prepared, inference)
        except ConvstreamError as exc:
            return error_result(request, exc.code.value[0], str(exc))

    async def publish(
        self,
        frame_id: int,
        prepared: Prepared,
        inference: Inference,
        *,
        captured: float,
        read_at: float,
        began: float,
    ) -> pb.Timings:
        """Build one result per distinct content the due watchers want, offer each its own.

        Args:
            frame_id: the frame's number, as its results say it.
            prepared, inference: the frame as analysed.
            captured: time.time() the frame was captured or read.
            read_at: time.perf_counter() it was read or received (for latency).
            began: time.perf_counter() its analysis began.

        Returns:
            The frame's timings, from its analysis to its watchers' results encoded.
        """
        request = pb.FrameRequest(
            frame_id=frame_id, source=self.name, capture_time=timestamp(captured)
        )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        began_now = now - (time.perf_counter() - began)  # on this clock
        have = inference.arrays.keys()
        # A watcher that arrived during inference may want maps this run did not make; it
        # starts with the next frame.
        gap, self._last_at = now - self._last_at, now
        if gap < 5.0:  # not the first result, nor the first after a pause
            self._pace += (gap - self._pace) * (0.2 if self._pace else 1.0)
        due = [
            w
            for w in self.watchers
            if w.due(now, self._pace) and have >= set(w.options.feature_maps)
        ]
        results: dict[Options, Encoded] = {}
        if due:
            results = await loop.run_in_executor(
                self.pipeline.executor,
                self._encode_all,
                request,
                prepared,
                inference,
                {w.options for w in due},
                began,
            )
        total_ms = (time.perf_counter() - began) * 1000
        timings = pb.Timings(
            decode_ms=prepared.decode_ms,
            inference_ms=inference.inference_ms,
            # the encoding itself, as each result timed its own (not the wait for a thread)
            encode_ms=sum(r.encode_ms for r in results.values()),
            batch_size=inference.batch_size,
            inference_threads=inference.threads,
        )
        geometry = prepared.geometry
        score = hottest(prepared, inference, inference.model.heatmap_stride)[4]
        self.frame_size = (geometry.frame_width, geometry.frame_height)
        self.frames_analysed += 1
        self.last_score = score
        self.last_blank = prepared.light.blank
        self.latency_ms = (time.perf_counter() - read_at) * 1000
        self.last_result_time = time.time()
        # timed by when its analysis began, as the fps cap schedules frames: by when it ended,
        # a slow analysis and the quick one after it made a pair that read as a burst
        self.fps_out.tick(began_now)
        for watcher in due:
            if watcher in self.watchers:  # it may have gone while this frame was analysed
                # the clock due() read: the schedule follows the frames, not the encoding
                watcher.offer(results[watcher.options].data, frame_id, captured, now)
        return completed(timings, total_ms)


async def _on_a_thread_of_its_own(fn: Callable[[], None], name: str) -> None:
    """fn() on a new thread, awaited. A camera's stop waits up to 3 s for a reader blocked in
    its open; on the loop's default executor (cores + 4 threads, 6 on 2 cores) twelve such
    stops took 6 s, sixty would take 30, past the supervisor's patience at shutdown."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    # running: a cancelled await (a reload or a shutdown cancelled) leaves it to finish, as
    # asyncio.to_thread does, rather than cancel it under the thread's set_result
    done.set_running_or_notify_cancel()

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    threading.Thread(target=run, name=name, daemon=True).start()
    await asyncio.wrap_future(done)


class CameraFeed(Publisher):
    """Analyses a camera's newest frames and publishes the results to its watchers."""

    def __init__(self, camera: Camera, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__(camera.config.id, pipeline, metrics)
        self.camera = camera
        self.pulled_since = time.time()  # when the server began pulling it (kept by a reload)
        self.frames_taken = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        config = camera.config
        self._fixed_input = parse_size(config.input_size) if config.input_size else None
        self._interval = 1 / config.fps if config.fps > 0 else 0.0
        self._stopping = False
        self._invalid_logged_at = -LOG_AGAIN_S  # when a frame that did not decode was logged
        self._trouble = False  # a notice of trouble to send to every watcher (tell_watchers)
        self._newcomers: set[Watcher] = set()  # and to these watches just taken

    def retune(self, config: CameraConfig) -> None:
        """Take a config that differs from the camera's only in what the analysis does with
        its frames (fps, input_size), without reopening its source: a reload that changed a
        cap dropped the connection, and an RTSP camera took 2 s to give frames again."""
        self.camera.config = config
        self._fixed_input = parse_size(config.input_size) if config.input_size else None
        self._interval = 1 / config.fps if config.fps > 0 else 0.0

    def status(self, now: float) -> pb.CameraStatus:
        cam = self.camera
        status = super().status(now)
        status.MergeFrom(
            pb.CameraStatus(
                state=cam.state,
                state_since=timestamp(cam.state_since),
                source_kind=cam.spec.kind,
                last_error=cam.last_error,
                fps_cap=cam.config.fps,
                frames_read=cam.frames_read,
                frames_dropped=cam.frames_dropped,
                frames_skipped=cam.frames_skipped,
                frames_invalid=cam.frames_invalid,
                reconnects=cam.reconnects,
                frame_width=cam.frame_size[0],  # known before the first frame is analysed
                frame_height=cam.frame_size[1],
            )
        )
        if cam.last_error and (when := timestamp(cam.last_error_at)) is not None:
            status.last_error_time.CopyFrom(when)
        status.fps_in, status.fps_out = self.rates(now)
        return status

    def rates(self, now: float) -> tuple[float, float]:
        """Frames read and analysed per second, lately; none while no frame can come (it
        reconnects, failed, stopped): its rates faded over seconds ("reconnecting 4.6/2.0",
        then "1.5/1.0"), read as a camera still sending."""
        if self.camera.state not in (pb.CAMERA_STATE_RUNNING, pb.CAMERA_STATE_STALLED):
            return 0.0, 0.0
        return self.camera.fps_in.rate(now), self.fps_out.rate(now)

    def down(self) -> CameraDown | None:
        """Why no frame will come (the camera FAILED or STOPPED), or None while one may, or
        while stop() ends its watchers with its own error."""
        cam = self.camera
        if self._stopping:
            return None
        if cam.state == pb.CAMERA_STATE_FAILED:
            why = f"has failed: {cam.last_error}"
        elif cam.state == pb.CAMERA_STATE_STOPPED and cam.ended:
            return CameraDown(
                f"camera {self.name!r} has stopped: its video file ended (loop = false). No "
                "frames will come until the file is replaced or touched and the server "
                "reloads (SIGHUP), or its config changes"
            )
        elif cam.state == pb.CAMERA_STATE_STOPPED:
            why = f"has stopped: {cam.last_error}"
        else:
            return None
        restarts = "a reload (SIGHUP) restarts it"
        if wait := cam.refused_wait_s(time.monotonic()):
            # a reload leaves an unchanged camera whose password was refused to its wait
            restarts = (
                "a reload (SIGHUP) that changes its URL restarts it, and any reload from "
                f"{math.ceil(wait)} s on, once {CREDENTIALS_RETRY_S / 60:g} minutes have "
                "passed since its password was refused"
            )
        return CameraDown(
            f"camera {self.name!r} {why}. No frames will come until the server's config "
            f"changes it; {restarts}"
        )

    def trouble(self) -> CameraInTrouble | None:
        """What its watchers are told while the camera is stalled or reconnecting (it may
        come back: their watches go on), or None."""
        cam = self.camera
        state, error = cam.state, cam.last_error  # each read once: the reader may change it
        if self._stopping or state not in (
            pb.CAMERA_STATE_STALLED,
            pb.CAMERA_STATE_RECONNECTING,
        ):
            return None
        why = f": {error}" if error else ""
        return CameraInTrouble(
            f"camera {self.name!r} is {STATE_NAMES[state]}{why}. The watch goes on: "
            "results come again once the camera sends frames",
            state,
        )

    def notice(self, trouble: CameraInTrouble) -> bytes:
        """The result that tells a watcher ``trouble``: a status, of no frame (frame_id 0),
        with the camera's state."""
        request = pb.FrameRequest(source=self.name)
        result = error_result(request, trouble.code.value[0], str(trouble))
        result.camera_state = trouble.state
        return result.SerializeToString()

    def tell_watchers(self, only: Watcher | None = None) -> None:
        """Tell each watcher (or ``only`` that one, a watch just taken) the camera is in
        trouble, once the frames read before it have been analysed and offered: the result
        of one in analysis, or waiting, came after the notice every time a review killed a
        camera, and read as the camera back."""
        if only is None:
            self._trouble = True
        else:
            self._newcomers.add(only)
        self._tell_when_done()

    def _tell_when_done(self, *, now: bool = False) -> None:
        """Send the notices waiting, if no frame read before them is in analysis or waiting
        (``now``: whether or not: the watchers are leaving this feed)."""
        if not (self._trouble or self._newcomers):
            return
        if not now and (self.camera.analysing or self.camera.waiting()):
            return
        told = self.watchers if self._trouble else self._newcomers & self.watchers
        self._trouble = False
        self._newcomers = set()
        trouble = self.trouble()  # as it is now: back already, there is nothing to say
        if trouble is not None:
            data = self.notice(trouble)
            for watcher in told:
                watcher.notify(data)

    def hand_over(self) -> set[Watcher]:
        """Its watchers, for the feed that replaces it (a reload), told first of the trouble
        they were to hear: this feed's frame in analysis no longer reaches them."""
        self._tell_when_done(now=True)
        watchers = set(self.watchers)
        self.watchers.clear()
        return watchers

    def carry_totals(self, old: CameraFeed) -> None:
        """Go on counting from ``old``'s totals: the same camera, restarted by a reload, so
        that ListCameras and the camera counters count since the server started (a reload
        is how an operator says "try again", and took the count of failed retries with it)."""
        cam, was = self.camera, old.camera
        cam.frames_read += was.frames_read
        cam.frames_dropped += was.frames_dropped
        cam.frames_skipped += was.frames_skipped
        cam.frames_invalid += was.frames_invalid
        cam.reconnects += was.reconnects
        self.frames_analysed += old.frames_analysed
        self.watcher_drops += old.watcher_drops
        self.last_result_time = self.last_result_time or old.last_result_time
        self.pulled_since = old.pulled_since

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def wake() -> None:  # on the camera's reader thread
            loop.call_soon_threadsafe(self._wake.set)

        self.camera.on_frame = wake
        self.camera.start()
        self._task = asyncio.create_task(self._run(), name=f"feed-{self.camera.config.id}")

    async def stop(self, error: ConvstreamError) -> None:
        """Stop the camera and the loop; each watcher's call ends with ``error``."""
        self._stopping = True
        self.camera.on_frame = lambda: None
        await _on_a_thread_of_its_own(self.camera.stop, f"convstream-stop-{self.camera.config.id}")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.end_watchers(error)

    async def _run(self) -> None:
        CALLER.set(CameraCaller())  # its turn beside the streams', and the cameras' thread
        last = 0
        camera = self.camera
        source = camera.config.id
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._interval:
                delay = camera.next_due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the newest frame after the wait is taken
            frame = camera.take(after=last)
            if frame is None:
                continue
            last = frame.number
            self.frames_taken += 1
            started = time.monotonic()
            # The cap's schedule, kept on the camera: frames it replaces before then are
            # skipped for the cap, not dropped.
            camera.next_due = next_due(camera.next_due, started, self._interval)
            camera.analysing = True
            try:
                await self._analyse(frame)
            except Draining:
                return
            except (InvalidFrame, ModelFailed) as exc:  # a JPEG that does not decode, a NaN
                self.metrics.frames.labels(self.metrics.source(source), exc.outcome).inc()
                invalid = isinstance(exc, InvalidFrame)  # not a model's failure on it
                camera.frame_failed(f"a frame could not be analysed: {exc}", invalid=invalid)
                # logged once in a while, not at every frame
                level = logging.DEBUG
                if started - self._invalid_logged_at >= LOG_AGAIN_S:
                    level, self._invalid_logged_at = logging.WARNING, started
                logger.log(level, "camera %s: frame %d not analysed: %s", source, frame.number, exc)
            except ConvstreamError as exc:  # the engine is full: this frame is skipped
                self.metrics.frames.labels(self.metrics.source(source), exc.outcome).inc()
                logger.debug("camera %s: frame %d skipped: %s", source, frame.number, exc)
            except Exception:
                self.metrics.frames.labels(self.metrics.source(source), "error").inc()
                logger.exception("camera %s: frame %d failed", source, frame.number)
            finally:
                camera.analysing = False
                if self.watchers and self.trouble() is not None:
                    # down again since its last notice, between two of the watchdog's
                    # looks (back and down at once): this frame's result went out, and
                    # the watchdog, which saw the same state twice, said nothing after it
                    self._trouble = True
                self._tell_when_done()

    def _prepare(self, frame: Frame) -> Prepared:
        started = time.perf_counter()
        return self.pipeline.fit(frame.image, frame.size, started, self._fixed_input)

    async def _analyse(self, frame: Frame) -> None:
        began = time.perf_counter()
        prepared, inference, _ = await self.pipeline.through_model(
            partial(self._prepare, frame), self.wanted_maps()
        )
        timings = await self.publish(
            frame.number,
            prepared,
            inference,
            captured=frame.captured,
            read_at=frame.read_at,
            began=began,
        )
        self.metrics.observe_result(self.name, timings, prepared.light.blank)
        self.metrics.camera_latency.labels(self.metrics.source(self.name)).observe(
            self.latency_ms / 1000
        )


class StreamPublication(Publisher):
    """A client's StreamFrames call published under its source name (ResultOptions.publish)."""

    def __init__(self, name: str, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__(name, pipeline, metrics)
        self.since = time.time()
        self.frames_received = 0
        self.drops = DropLog()  # the stream's own, once it publishes
        self.fps_in = RateMeter()
        self.taken_over = False  # by a camera configured under its name: no longer published

    def status(self, now: float) -> pb.CameraStatus:
        status = super().status(now)
        status.MergeFrom(
            pb.CameraStatus(
                state=pb.CAMERA_STATE_RUNNING,
                state_since=timestamp(self.since),
                source_kind="stream",
                fps_in=self.fps_in.rate(now),
                frames_read=self.frames_received,
                frames_dropped=self.drops.dropped,
            )
        )
        return status

    def received(self) -> None:
        """Count a frame read from the stream (before the freshness policy)."""
        self.frames_received += 1
        self.fps_in.tick(time.monotonic())
