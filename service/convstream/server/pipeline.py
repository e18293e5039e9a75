"""One frame's trip: decode, letterbox, infer, encode. Shared by every RPC that analyses.

Decoding and encoding run on a small thread pool (OpenCV and numpy release the GIL), the
network on the engine's workers, so the event loop only moves messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import cv2
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from convstream.model import FEATURE_NAMES
from convstream.server.config import Settings
from convstream.server.decode import Limits, check_encoded, check_raw, decode_oriented, decode_raw
from convstream.server.encode import bytes_per_element, fill_tensor
from convstream.server.engine import Engine, Inference
from convstream.server.errors import (
    ConvstreamError,
    InvalidFrame,
    InvalidOptions,
    ResultTooLarge,
)
from convstream.server.letterbox import Geometry, choose_input, letterbox, reduction
from convstream.server.light import Light, light
from convstream.v1 import convstream_pb2 as pb

T = TypeVar("T")
# Bytes kept free in a result for what is added after its maps and heatmap: the source (at
# most MAX_SOURCE_CHARS), up to MAX_LISTED_DROPS dropped frame ids (10 bytes each at most),
# the peak, geometry, timings, status and the tensors' headers: under 12 KB in all.
_RESULT_SLACK = 16 * 1024
# Frame ids a result lists as dropped since the call's previous result, at most (a stream's
# or a watcher's); frames_dropped counts them all.
MAX_LISTED_DROPS = 1000
# A frame's source is a name, echoed in every result (on a stream it sticks to the frames
# after it): unbounded, a long one made results pass the message limit, which ended the stream.
MAX_SOURCE_CHARS = 256

_PIXEL_FORMATS: dict[int, str] = {
    pb.PIXEL_FORMAT_BGR8: "BGR8",
    pb.PIXEL_FORMAT_RGB8: "RGB8",
    pb.PIXEL_FORMAT_GRAY8: "GRAY8",
}


@dataclass(frozen=True)
class Options:
    """A frame's validated ResultOptions."""

    feature_maps: tuple[str, ...] = ()
    encoding: int = pb.TENSOR_ENCODING_FLOAT16
    include_heatmap: bool = True
    include_frame: bool = False

    @classmethod
    def parse(cls, message: pb.ResultOptions) -> Options:
        """Validate a ResultOptions message; InvalidOptions names what is wrong."""
        unknown = [n for n in message.feature_maps if n not in FEATURE_NAMES]
        if unknown:
            raise InvalidOptions(
                f"unknown feature map {unknown[0][:64]!r}; expected any of "
                f"{', '.join(FEATURE_NAMES)}"
            )
        if message.encoding not in pb.TensorEncoding.values():
            raise InvalidOptions(
                f"unknown tensor encoding {message.encoding}; expected one of "
                + ", ".join(f"{v} ({n})" for n, v in pb.TensorEncoding.items() if v)
                + ", or 0 (unset: FLOAT16)"
            )
        return cls(
            feature_maps=tuple(dict.fromkeys(message.feature_maps)),
            encoding=message.encoding or pb.TENSOR_ENCODING_FLOAT16,
            include_heatmap=message.include_heatmap
            if message.HasField("include_heatmap")
            else True,
            include_frame=message.include_frame,
        )


def check_freshness(message: pb.ResultOptions) -> None:
    """InvalidOptions for a freshness policy that is none of the enum's."""
    if message.freshness not in pb.Freshness.values():
        raise InvalidOptions(
            f"unknown freshness policy {message.freshness}; expected one of "
            + ", ".join(f"{v} ({n})" for n, v in pb.Freshness.items() if v)
            + ", or 0 (unset: the stream's policy, or LOSSLESS on its first options)"
        )


def check_without_stream(message: pb.ResultOptions, method: str) -> None:
    """The stream-level fields of options sent to Analyze or WatchCamera, which have no
    stream of frames: a valid freshness is ignored (a caller may send its stream's options),
    but one that is none of the enum's is refused as on a stream, and what would be silently
    lost is refused saying where it belongs: publish (their results are not published) and,
    on WatchCamera, a queue_size meant for its own queue (WatchCameraRequest.queue_size)."""
    check_freshness(message)
    if message.publish:
        raise InvalidOptions(
            f"publish is for StreamFrames: {method} results are not published; "
            "send the frames over StreamFrames with publish to show them to watchers"
        )
    if method == "WatchCamera" and message.queue_size:
        raise InvalidOptions(
            "options.queue_size is a stream's frame queue; a watcher's queue of results is "
            f"WatchCameraRequest.queue_size (options.queue_size was {message.queue_size})"
        )


CALLER: ContextVar[object] = ContextVar("convstream_caller", default=None)
"""Who submits work to the WorkPool from this asyncio task (and the tasks it starts): a
token of a stream, an Analyze call or a camera's feed, each served in turn. A ClientCaller
for a client's call, a CameraCaller for the server's own cameras (a plain object() is a
caller of its own); never the session itself: an asyncio context lives on in the loop's
cancelled timers."""


class CameraCaller:
    """The CALLER of a camera the server pulls: it may also take the WorkPool's thread that
    clients' frames never take."""


class ClientCaller:
    """The CALLER of a client's stream or Analyze call: its own turn in the WorkPool, and
    ``who`` it counts as (security.caller: its token, or its host without tokens), whose
    calls together run at most as many jobs as one call may."""

    __slots__ = ("who",)

    def __init__(self, who: str) -> None:
        self.who = who


_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class WorkPool(Executor):
    """The decoding and encoding threads, shared fairly by the streams, calls and cameras
    that use them.

    Jobs wait in one queue per caller (``CALLER`` where the job was submitted) and a free
    thread takes the next caller's in turn. One caller runs at most `threads` jobs at once
    and the pool has one thread more, so another caller's frame starts at once even while
    one stream keeps every core decoding frames that take a second each (the cores are then
    shared between them), instead of waiting behind that stream's queue. The calls of one
    client (ClientCaller.who: its token, or its host) each take their turn, but run at most
    `threads` jobs at once together: as callers of their own, three Analyze calls of one
    token, each a PNG that took most of a second to decode, took every thread clients may,
    and another client's stream went from 26 ms a frame to 290-380 ms (a review). Counts the
    jobs submitted and not yet finished: the engine runs a lone frame over every core only
    while there are none.

    And one more thread, which only the server's own cameras take (CameraCaller): clients'
    frames never take it, so however many calls keep every other thread decoding (24
    Analyze calls of 300 KB PNGs that take 5 s each to decode), a camera's frame starts at
    once, sharing the cores, and the cameras stay watched. Before, it waited its turn among
    those calls, and a camera went 35 s without a result while it still read "running".

    An idle thread is woken last parked, first woken: one stream's frames one at a time keep
    landing on the same, cache-warm thread. Woken in turn instead (threading.Condition's
    order), a latest-only 1080p stream's decoding and inference each took about 1 ms more a
    frame, and it got 9.9 results/s against 10.7-10.9 (bench_freshness.py, two rounds each).
    """

    def __init__(self, threads: int) -> None:
        self.per_caller = threads
        self._pending = 0
        self._queues: dict[object, deque[_Job]] = {}  # in turn order; only callers with jobs
        self._running: dict[object, int] = {}
        self._running_by_client: dict[str, int] = {}  # by ClientCaller.who; only those running
        self._shutdown = False
        self._lock = threading.Lock()
        self._parked: list[threading.Lock] = []  # idle threads' locks, held until woken
        self._clients_running = 0  # jobs of callers other than cameras
        self._threads = [
            threading.Thread(target=self._work, name=f"convstream-decode-{i}", daemon=True)
            for i in range(threads + 2)  # one more than clients may take: the cameras'
        ]
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        caller = CALLER.get()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._queues.setdefault(caller, deque()).append((future, fn, args, kwargs))
            self._pending += 1
            self._wake(1)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for jobs in self._queues.values():
                    for future, *_ in jobs:
                        future.cancel()
                        self._pending -= 1
                self._queues.clear()
            self._wake(len(self._parked))
        if wait:
            for thread in self._threads:
                thread.join()

    def _wake(self, count: int) -> None:
        """Wake up to `count` idle threads, the last parked first (lock held)."""
        for _ in range(min(count, len(self._parked))):
            self._parked.pop().release()

    def _takeable(self, caller: object) -> bool:
        if self._running.get(caller, 0) >= self.per_caller:
            return False
        if (
            isinstance(caller, ClientCaller)
            and self._running_by_client.get(caller.who, 0) >= self.per_caller
        ):
            return False
        return isinstance(caller, CameraCaller) or self._clients_running <= self.per_caller

    def _count(self, caller: object, jobs: int) -> None:
        """Count ``jobs`` more (or fewer) of ``caller``'s running (lock held)."""
        running = self._running.get(caller, 0) + jobs
        if running:
            self._running[caller] = running
        else:
            del self._running[caller]
        if isinstance(caller, ClientCaller):
            mine = self._running_by_client.get(caller.who, 0) + jobs
            if mine:
                self._running_by_client[caller.who] = mine
            else:
                del self._running_by_client[caller.who]
        if not isinstance(caller, CameraCaller):
            self._clients_running += jobs

    def _take(self) -> tuple[object, _Job] | None:
        """The next job in turn whose caller is under its share of threads (lock held)."""
        for caller, jobs in self._queues.items():
            if self._takeable(caller):
                job = jobs.popleft()
                del self._queues[caller]
                if jobs:
                    self._queues[caller] = jobs  # to the back of the turn
                self._count(caller, 1)
                return caller, job
        return None

    def _work(self) -> None:
        park = threading.Lock()
        park.acquire()
        while True:
            with self._lock:
                taken = self._take()
                if taken is None:
                    if self._shutdown and not self._queues:
                        return
                    self._parked.append(park)
                elif any(self._takeable(c) for c in self._queues):
                    # Wake one more thread only if work it could take is left: waking every
                    # idle thread after each job cost as much as decoding did (py-spy).
                    self._wake(1)
            if taken is None:
                park.acquire()  # until _wake releases it (at once if it already has)
                continue
            caller, (future, fn, args, kwargs) = taken
            result: Any = None
            error: BaseException | None = None
            run = future.set_running_or_notify_cancel()
            if run:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    error = exc
            # Counted finished before the caller hears of it, so that a frame whose decoding
            # was the last work here finds the pool idle when it reaches the engine. No wake
            # up: this thread takes the next job itself, and wakes another if more are left.
            with self._lock:
                self._pending -= 1
                self._count(caller, -1)
                if self._shutdown:  # threads waiting for that caller's turn may exit now
                    self._wake(len(self._parked))
            if run and error is not None:
                future.set_exception(error)
            elif run:
                future.set_result(result)
            del taken, caller, future, fn, args, kwargs, result, error  # nothing kept while idle


@dataclass(frozen=True)
class Prepared:
    """A frame fitted to a model input."""

    pixels: np.ndarray
    geometry: Geometry
    decode_ms: float
    light: Light  # what the frame shows
    turned: int = 1  # the EXIF orientation the frame was turned by (1: none)

    @classmethod
    def fit(
        cls,
        image: np.ndarray,
        target: tuple[int, int],
        frame_size: tuple[int, int],
        started: float,
        turned: int = 1,
    ) -> Prepared:
        """A decoded frame letterboxed into target (height, width) and measured (light), its
        decode_ms counted from ``started`` (time.perf_counter); ``turned``: the EXIF
        orientation its decoding applied."""
        pixels, geometry = letterbox(image, target, frame_size)
        shows = light(pixels, geometry)
        return cls(pixels, geometry, (time.perf_counter() - started) * 1000, shows, turned)


class _Trip:
    """One frame's steps for Pipeline.through_model, each started by the thread that
    finished the one before.

    Its references are dropped (release) once the caller has its answer: a step's callback,
    kept by its finished future, and an error's traceback both lead back here, and the
    frame's pixels and outputs would otherwise wait for the cycle collector.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        caller: object,
        maps: Sequence[str],
        deadline: float | None,
        encode: Callable[[Prepared, Inference], pb.FrameResult] | None,
    ) -> None:
        self.done: Future[tuple[Prepared, Inference, pb.FrameResult | None]] = Future()
        self._pipeline: Pipeline | None = pipeline
        self._caller = caller
        self._maps = maps
        self._deadline = deadline
        self._encode = encode
        self._prepared: Prepared | None = None
        self._current: Future[Any] | None = None  # the step in progress
        # A step is started, or the trip cancelled, under this lock: a frame cancelled while
        # it was being decoded never reaches the model.
        self._lock = threading.RLock()

    def start(self, prepare: Callable[[], Prepared]) -> None:
        self._step(lambda pipeline: self._submit(pipeline, prepare), self._prepared_then)

    def cancel(self) -> None:
        with self._lock:
            self.done.cancel()
            current = self._current
        if current is not None:
            current.cancel()

    def release(self) -> None:
        with self._lock:
            self._pipeline = self._encode = self._current = None
            self._prepared = None
            self.done = Future()  # the answer, or its error and traceback, is the caller's

    def _submit(self, pipeline: Pipeline, fn: Callable[..., T], *args: Any) -> Future[T]:
        token = CALLER.set(self._caller)  # the pool's turns are per caller
        try:
            return pipeline.executor.submit(fn, *args)
        finally:
            CALLER.reset(token)

    def _step(self, start: Callable[[Pipeline], Future[Any]], then: Callable[[Any], None]) -> None:
        with self._lock:
            pipeline = self._pipeline
            if pipeline is None or self.done.done():  # cancelled, answered or released
                return
            try:
                future = start(pipeline)
            except BaseException as exc:  # a full queue, an engine or pool shut down
                self._settle(error=exc)
                return
            self._current = future
        future.add_done_callback(lambda finished: self._finished(finished, then))

    def _finished(self, future: Future[Any], then: Callable[[Any], None]) -> None:
        if self.done.done():
            return
        if future.cancelled():  # the engine stopping drops waiting frames
            self.done.cancel()
            return
        error = future.exception()
        if error is not None:  # passed on, not raised here: no frame of ours in it
            self._settle(error=error)
            return
        try:
            then(future.result())
        except BaseException as exc:  # a frame too large for its options: the caller's
            self._settle(error=exc)

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
            if error is None:
                self.done.set_result(value)
            else:
                self.done.set_exception(error)

    def _prepared_then(self, prepared: Prepared) -> None:
        self._prepared = prepared
        self._step(
            lambda pipeline: pipeline.engine.submit(prepared.pixels, self._maps, self._deadline),
            self._inferred_then,
        )

    def _inferred_then(self, inference: Inference) -> None:
        prepared, encode = self._prepared, self._encode
        if prepared is None:  # released: the caller has gone
            return
        if encode is None:
            self._settle((prepared, inference, None))
            return
        self._step(
            lambda pipeline: self._submit(pipeline, encode, prepared, inference),
            lambda result: self._settle((prepared, inference, result)),
        )


class Pipeline:
    """Analyses FrameRequests with the settings' limits and input sizes."""

    def __init__(self, settings: Settings, engine: Engine, executor: Executor) -> None:
        self.settings = settings
        self.engine = engine
        self.executor = executor
        self.sizes = settings.input_shapes()
        self.limits = Limits(settings.max_frame_pixels, settings.max_frame_side)
        self.stages = {stage.name: stage for stage in engine.model.stages}

    def check(self, request: pb.FrameRequest, raw_length: int | None = None) -> tuple[int, int]:
        """Every check of a frame short of decoding it: its capture time, that it has an image,
        the image's format, its size against the limits, and (JPEG, PNG) that it is complete.
        Microseconds: a stream runs it as each frame arrives, so a bad frame is answered even
        under a policy that would drop it unseen. ``raw_length``: the length of its raw
        pixels where known (read off the wire: reading ``raw.data`` copies it, 35 ms for 64
        MB, on the event loop every other client waits on). Returns (width, height); raises
        InvalidFrame or FrameTooLarge."""
        if len(request.source) > MAX_SOURCE_CHARS:
            raise InvalidFrame(
                f"source must be a name of at most {MAX_SOURCE_CHARS} characters, e.g. "
                f'"dock-3"; got {len(request.source)} characters starting {request.source[:32]!r}'
            )
        if has_capture_time(request):
            check_capture_time(request.capture_time)
        which = request.WhichOneof("image")
        if which == "encoded":
            _, width, height = check_encoded(request.encoded, self.limits)
        elif which == "raw":
            raw = request.raw
            width, height = raw.width, raw.height
            size = len(raw.data) if raw_length is None else raw_length
            check_raw(size, width, height, _pixel_format(raw.format), self.limits)
        else:
            raise InvalidFrame("frame has no image: set either encoded (JPEG/PNG) or raw pixels")
        return width, height

    def prepare(self, request: pb.FrameRequest) -> Prepared:
        """Check, decode and letterbox (runs on the executor). Raises InvalidFrame."""
        started = time.perf_counter()
        if request.WhichOneof("image") != "raw":
            width, height = self.check(request)
            return self.fit(request.encoded, (width, height), started)
        raw = request.raw
        data = raw.data  # a copy: taken once
        width, height = self.check(request, raw_length=len(data))
        image = decode_raw(data, width, height, _pixel_format(raw.format), self.limits)
        return self.fit(image, (width, height), started)

    def fit(
        self,
        image: np.ndarray | bytes,
        size: tuple[int, int],
        started: float,
        target: tuple[int, int] | None = None,
    ) -> Prepared:
        """A frame of ``size`` (width, height), decoded first if it is JPEG or PNG bytes,
        letterboxed into ``target`` (height, width; unset: the input size closest in
        aspect); ``started``: time.perf_counter() its preparation began (a client's frame
        and a camera's alike)."""
        target = target or choose_input(*size, self.sizes)
        turned = 1
        if isinstance(image, bytes):
            image, turned = self.decode(image, size, target)
        else:  # pixels: a camera's frame FFmpeg decoded meets the limits a client's does
            self.limits.check(*size, "frame")
        return Prepared.fit(image, target, size, started, turned)

    def decode(
        self, data: bytes, size: tuple[int, int], target: tuple[int, int]
    ) -> tuple[np.ndarray, int]:
        """Decode a JPEG or PNG of size (width, height) for the model input target (height,
        width): a large JPEG at the fraction of its size that still covers the input, unless
        reduced_jpeg_decode is off; with the EXIF orientation it was turned by. Raises
        InvalidFrame or FrameTooLarge."""
        reduce = reduction(*size, target) if self.settings.reduced_jpeg_decode else 1
        return decode_oriented(data, self.limits, reduce)

    def check_fits(
        self, options: Options, request: pb.FrameRequest, raw_length: int | None = None
    ) -> None:
        """Refuse a stream's new options whose result for this frame would not fit in one
        message before they stick to the stream (then only this frame is refused, and the
        frames after it keep the stream's earlier options), as check_size does: raises
        ResultTooLarge. A frame that is no image is refused when it is checked, its options
        taken (a client that sets them on its first frame alone keeps them) if they fit the
        largest input size, as its size is not known."""
        try:
            width, height = self.check(request, raw_length)
        except ConvstreamError:
            self.check_size(options, max(self.sizes, key=lambda size: size[0] * size[1]))
            return
        self.check_size(options, choose_input(width, height, self.sizes))

    def check_size(self, options: Options, input_size: tuple[int, int]) -> None:
        """Refuse up front a result that would not fit in one message, for a model input
        of input_size (height, width)."""
        input_height, input_width = input_size

        def cells(stride: int) -> int:
            return -(-input_height // stride) * -(-input_width // stride)

        per = bytes_per_element(options.encoding)
        total = sum(
            self.stages[n].channels * cells(self.stages[n].stride) * per
            for n in options.feature_maps
        )
        if options.include_heatmap:  # a large input's heatmap counts too (1 MiB at 4096x4096)
            heatmap = bytes_per_element(heatmap_encoding(options.encoding))
            total += cells(self.engine.model.heatmap_stride) * heatmap
        limit = self.settings.max_message_bytes - _RESULT_SLACK  # room for the rest
        if total > limit:
            encoding = pb.TensorEncoding.Name(options.encoding)
            asked = [f"feature maps {', '.join(options.feature_maps)}"] * bool(options.feature_maps)
            asked += ["the heatmap"] * options.include_heatmap
            instead = ["fewer maps"] * bool(options.feature_maps)
            if options.encoding == pb.TENSOR_ENCODING_FLOAT32:
                instead.append("a smaller encoding (FLOAT16, UINT8)")
            elif options.encoding == pb.TENSOR_ENCODING_FLOAT16 and options.feature_maps:
                instead.append("UINT8 maps")
            instead += ["no heatmap"] * options.include_heatmap
            raise ResultTooLarge(
                f"{' and '.join(asked)} in {encoding} "
                # height x width, as input_sizes and `convstream info` write model inputs
                f"for a {input_height}x{input_width} (height x width) input "
                f"need {total} bytes, "
                f"over the {limit} a result may hold for them (the "
                f"{self.settings.max_message_bytes}-byte message limit, less "
                f"{_RESULT_SLACK} for the rest); ask for {' or '.join(instead)}, or a smaller "
                "input size"
            )

    def encode(
        self,
        request: pb.FrameRequest,
        options: Options,
        prepared: Prepared,
        inference: Inference,
    ) -> pb.FrameResult:
        """Build the result message (runs on the executor)."""
        started = time.perf_counter()
        model = inference.model  # as it ran: a reload's new model judges the next frames
        row, col, x, y, score = hottest(prepared, inference, model.heatmap_stride)
        result = pb.FrameResult(
            frame_id=request.frame_id,
            source=request.source,
            score=score,
            damaged=score >= model.threshold,
            threshold=model.threshold,
            brightness=prepared.light.brightness,
            contrast=prepared.light.contrast,
            blank=prepared.light.blank,
        )
        if has_capture_time(request):
            result.capture_time.CopyFrom(request.capture_time)
        result.peak.CopyFrom(pb.Peak(row=row, col=col, x=x, y=y, value=score))
        heat = inference.arrays["heatmap"]
        for region in prepared.geometry.regions(heat, model.heatmap_stride, model.threshold):
            result.regions.add(**asdict(region))
        if options.include_heatmap:
            fill_tensor(
                result.heatmap,
                "heatmap",
                inference.arrays["heatmap"],
                heatmap_encoding(options.encoding),
                model.heatmap_stride,
            )
        for name in options.feature_maps:
            fill_tensor(
                result.feature_maps.add(),
                name,
                inference.arrays[name],
                options.encoding,
                self.stages[name].stride,
            )
        if options.include_frame:
            ok, jpeg = cv2.imencode(
                ".jpg",
                prepared.pixels,
                [cv2.IMWRITE_JPEG_QUALITY, self.settings.frame_jpeg_quality],
            )
            if ok:
                result.frame_jpeg = jpeg.tobytes()
        g = prepared.geometry
        result.geometry.CopyFrom(
            pb.Geometry(
                frame_width=g.frame_width,
                frame_height=g.frame_height,
                input_width=g.input_width,
                input_height=g.input_height,
                scale=g.scale,
                pad_left=g.pad_left,
                pad_top=g.pad_top,
                exif_orientation=prepared.turned if prepared.turned > 1 else 0,
            )
        )
        result.timings.decode_ms = prepared.decode_ms
        result.timings.inference_ms = inference.inference_ms
        result.timings.batch_size = inference.batch_size
        result.timings.inference_threads = inference.threads
        result.timings.encode_ms = (time.perf_counter() - started) * 1000
        # check_size counted the maps before inference; the input JPEG can still tip the
        # result over, and gRPC would end the whole stream on a message over the limit
        if (
            options.include_frame
            and (size := result.ByteSize()) > self.settings.max_message_bytes - _RESULT_SLACK
        ):
            raise ResultTooLarge(
                f"the result is {size} bytes with the input JPEG, over the "
                f"{self.settings.max_message_bytes}-byte message limit; ask for fewer maps, a "
                "smaller encoding, or no include_frame"
            )
        return result

    async def through_model(
        self,
        prepare: Callable[[], Prepared],
        maps: Sequence[str],
        deadline: float | None = None,
        encode: Callable[[Prepared, Inference], pb.FrameResult] | None = None,
    ) -> tuple[Prepared, Inference, pb.FrameResult | None]:
        """A frame's trip through the pool and the engine: ``prepare()`` on a pool thread,
        its pixels through the model (with ``maps``), then ``encode`` on a pool thread, if
        given. Each step follows the last on the thread that finished it, with no trip back
        to the event loop in between: two wake-ups of the loop (a syscall, a switch, a
        coroutine step) saved a frame, CPU the frames need. Cancelling the await drops a
        frame not yet prepared or run; an error of any step is raised here.
        """
        trip = _Trip(self, CALLER.get(), maps, deadline, encode)
        try:
            trip.start(prepare)
            return await asyncio.wrap_future(trip.done)
        except asyncio.CancelledError:
            trip.cancel()  # a frame not yet prepared or at the model is never run
            raise
        finally:
            trip.release()

    async def analyze(
        self,
        request: pb.FrameRequest,
        options: Options,
        arrived: float,
        deadline: float | None = None,
    ) -> pb.FrameResult:
        """The whole trip for one frame; raises a ConvstreamError for a bad frame.

        Args:
            request: the frame.
            options: validated options for it.
            arrived: time.perf_counter() when the server received it.
            deadline: time.perf_counter() past which the caller no longer waits: a frame not
                yet at the model by then is not run (DeadlineExpired).
        """
        return (await self.analyze_parts(request, options, arrived, deadline))[0]

    async def analyze_parts(
        self,
        request: pb.FrameRequest,
        options: Options,
        arrived: float,
        deadline: float | None = None,
        also: Sequence[str] = (),
    ) -> tuple[pb.FrameResult, Prepared, Inference]:
        """``analyze``, also returning the prepared frame and the raw outputs (to publish);
        `also`: more feature maps to compute, not put in the result (a publication's
        watchers want them)."""
        maps = list(dict.fromkeys((*options.feature_maps, *also)))

        def prepare() -> Prepared:
            prepared = self.prepare(request)
            self.check_size(options, prepared.geometry.input_size)
            return prepared

        def encode(prepared: Prepared, inference: Inference) -> pb.FrameResult:
            return self.encode(request, options, prepared, inference)

        prepared, inference, result = await self.through_model(prepare, maps, deadline, encode)
        assert result is not None
        total_ms = (time.perf_counter() - arrived) * 1000
        completed(result.timings, total_ms)
        result.frame_age_ms = frame_age_ms(request, total_ms)
        return result, prepared, inference


class DropLog:
    """A call's results in order and the frames it let go: numbered (``sequence``), counted
    (``dropped``), and their ids listed in the next result, MAX_LISTED_DROPS at most; a
    stream's frames and a watch's results alike."""

    def __init__(self) -> None:
        self.dropped = 0
        self.sequence = 0
        self._ids: list[int] = []

    def drop(self, frame_id: int) -> None:
        self.dropped += 1
        if len(self._ids) < MAX_LISTED_DROPS:
            self._ids.append(frame_id)

    def stamp(self, result: pb.FrameResult) -> None:
        """Number the next result, and tell it the drops so far and those since the last."""
        self.sequence += 1
        result.sequence = self.sequence
        result.frames_dropped = self.dropped
        result.dropped_frame_ids.extend(self._ids)
        self._ids.clear()


def completed(timings: pb.Timings, total_ms: float) -> pb.Timings:
    """``timings`` (their decode, inference and encode set) given the whole trip's time,
    ``total_ms``, and what of it the steps do not account for: the waits, ``queue_ms``."""
    timings.total_ms = total_ms
    busy = timings.decode_ms + timings.inference_ms + timings.encode_ms
    timings.queue_ms = max(0.0, total_ms - busy)
    return timings


def hottest(
    prepared: Prepared, inference: Inference, stride: int
) -> tuple[int, int, float, float, float]:
    """The hottest heatmap cell over the frame (cells of only letterbox bars left out): (row,
    col, x, y, value), its value the frame's score. The model's own score output is its whole
    input's hottest cell, and a cell of only bars could outscore the frame."""
    return prepared.geometry.hottest_cell(inference.arrays["heatmap"], stride)


def _pixel_format(value: int) -> str:
    """A raw frame's PixelFormat as decode's name for it; InvalidFrame for any other."""
    name = _PIXEL_FORMATS.get(value)
    if name is None:
        got = pb.PixelFormat.Name(value) if value in pb.PixelFormat.values() else str(value)
        raise InvalidFrame(f"raw frame pixel format must be BGR8, RGB8 or GRAY8, got {got}")
    return name


def heatmap_encoding(encoding: int) -> int:
    """How the heatmap travels when feature maps travel in `encoding`: as asked, but FLOAT16
    for UINT8. Quantised to 256 levels, the cells near the top of a confident heatmap tie, and
    the peak a client finds moved by several cells on two of the six sample boxes; the
    heatmap is 1/64 of stage3's values (7.5 KiB in float16 at 384x640), so it costs little."""
    return pb.TENSOR_ENCODING_FLOAT16 if encoding == pb.TENSOR_ENCODING_UINT8 else encoding


# google.protobuf.Timestamp's range ends at 9999-12-31T23:59:59Z
_SECONDS_MAX = 253_402_300_799
_SECONDS_MIN = 946_684_800  # 2000-01-01T00:00:00Z: before it, no wall clock of a camera


def has_capture_time(request: pb.FrameRequest) -> bool:
    """A capture time was given: set, and not the Unix epoch itself, which is what a client
    that always fills the field sends when it has no time (proto3's zero)."""
    stamp = request.capture_time
    return request.HasField("capture_time") and (stamp.seconds != 0 or stamp.nanos != 0)


def check_capture_time(stamp: Timestamp) -> None:
    """Refuse a capture time that is no Timestamp, or before 2000 (before any work is done on
    its frame): a camera's uptime sent as the time (seconds=12345) made every result's
    frame_age_ms 56 years. Footage replayed with its own times, years old, is taken."""
    if _SECONDS_MIN <= stamp.seconds <= _SECONDS_MAX and 0 <= stamp.nanos <= 999_999_999:
        return
    hint = ""
    if stamp.nanos < 0 or stamp.nanos > 999_999_999:
        hint = " (nanos is the fraction of a second, from 0 to 999999999)"
    elif stamp.seconds < 0:
        hint = " (before 1970: no camera's clock; leave capture_time unset when it is unknown)"
    elif stamp.seconds < _SECONDS_MIN:
        hint = (
            " (before 2000: a camera's uptime or a stream's own clock, not the wall clock? "
            "send the time since the Unix epoch, or leave capture_time unset)"
        )
    elif stamp.seconds > _SECONDS_MAX:
        hint = " (milliseconds or nanoseconds in the seconds field?)"
    raise InvalidFrame(
        "capture_time must be seconds and nanoseconds since the Unix epoch, seconds from "
        f"{_SECONDS_MIN} (2000-01-01) to {_SECONDS_MAX} and nanos from 0 to 999999999; got "
        f"seconds {stamp.seconds}, nanos {stamp.nanos}{hint}"
    )


def frame_age_ms(request: pb.FrameRequest, since_arrival_ms: float) -> float:
    """Now minus the frame's capture time, or the time since it arrived when none was given.
    A capture time ahead of the server's clock gives 0: the clocks differ, the frame is new."""
    if has_capture_time(request):
        return max(0.0, (time.time() - request.capture_time.ToNanoseconds() / 1e9) * 1000)
    return since_arrival_ms


def error_result(request: pb.FrameRequest, code: int, message: str) -> pb.FrameResult:
    """A result that says this frame was not analysed, and why."""
    return pb.FrameResult(
        frame_id=request.frame_id,
        source=request.source,
        status=pb.FrameStatus(code=code, message=message),
    )
