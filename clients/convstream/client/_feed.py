"""Feeding a stream: read the caller's frames once, keep them until answered, replay on resume.

    caller's frames --pump (one thread or task)--> ledger --requests(), one per attempt--> gRPC
                                                     ^
                      results pop answered (and dropped) frames off its front

Only the pump touches the caller's iterator, so a stream attempt that dies while the source
blocks (a camera read) loses nothing: the frame lands in the ledger and the next attempt's
requests() sends it. Each attempt first re-sends what the ledger holds, oldest first, with the
stream's options on its first frame (options stick per stream, not per client).

A frame that fails on this side (an image file that cannot be read, raw pixels over the
message limit) is never sent: it waits in the ledger, in its place and without its pixels,
and becomes an error result with the next answer after it (or the stream's end), as a frame
the server refuses does. It takes no room of max_in_flight; a run of more than FAILED_RUN of
them with nothing sent meanwhile ends the stream (a source whose every frame fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import queue
import threading
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc
import numpy as np

from convstream.client._base import check_published_name
from convstream.client.errors import ConvstreamError, InvalidFrame, ProtocolError, SourceError
from convstream.client.frames import (
    Frame,
    FrameLike,
    Video,
    VideoFrames,
    as_frame,
    as_sent,
    to_request,
)
from convstream.client.options import Upload
from convstream.client.results import Result
from convstream.v1 import convstream_pb2 as pb

_END = object()
T = TypeVar("T")


def check_frames(frames: object) -> None:
    """TypeError, saying what to pass, for what is one frame or a Video rather than the frames
    themselves: a path or bytes would be read a character or a byte at a time, and an array
    a row at a time."""
    if isinstance(frames, Video):
        raise TypeError("stream() takes frames: pass video.frames(), not the Video")
    if isinstance(frames, str | os.PathLike):
        raise TypeError(
            f"stream() takes an iterable of frames, got one path ({frames}): for a video, pass "
            "Video(path).frames(); for one image, call analyze(path); for a folder, "
            "image_files([folder]) (a file in it that is no image is that frame's error "
            "result, and the rest go on)"
        )
    one = isinstance(frames, bytes | bytearray | memoryview | Frame)
    if one or (isinstance(frames, np.ndarray) and frames.ndim in (2, 3)):  # (N, H, W, 3): N
        raise TypeError(
            f"stream() takes an iterable of frames, got one {type(frames).__name__}: for one "
            "frame call analyze(), or pass [frame]"
        )
    if _used_up(frames):  # it streamed nothing, and ended OK
        raise ValueError(
            "stream() was given frames already used up: a generator that ended, or that an "
            "earlier stream closed (a stream closes its frames' generator when it ends); "
            "pass a new one (video.frames() again, or call the generator function again)"
        )


def _used_up(frames: object) -> bool:
    """Whether ``frames`` is a generator (or ``Video.frames()``) that has ended or was closed."""
    if isinstance(frames, VideoFrames):
        return frames.closed
    if isinstance(frames, Generator):
        return inspect.getgeneratorstate(frames) == inspect.GEN_CLOSED  # type: ignore[arg-type]
    if isinstance(frames, AsyncGenerator):
        return getattr(frames, "ag_frame", True) is None  # ended or closed
    return False


@dataclass
class _Entry:
    seq: int
    frame: Frame  # of a failed one: its id, source and name, without pixels
    request: pb.FrameRequest  # of a failed one: its frame_id and source only
    error: ConvstreamError | None = None  # why it failed here, never sent


# What a frame that fails here raises: that frame alone is lost. Anything else (a TypeError,
# a ValueError for an impossible frame_id) is the calling program's mistake and ends the call.
_FRAME_ERRORS = (SourceError, InvalidFrame)
Prepared = tuple[Frame, pb.FrameRequest, ConvstreamError | None]
# More frames than this in a row that fail here, with none sent meanwhile, end a stream: a
# source whose every frame fails (each over the message limit) says so, rather than hold
# its results until an answer that no frame will bring.
FAILED_RUN = 256
MAX_LISTED = 1000  # dropped frame ids a result lists at most (FrameResult.dropped_frame_ids)


class Ledger:
    """Frames read from the source and not yet answered, oldest first (not thread-safe)."""

    def __init__(self, options: pb.ResultOptions, upload: Upload, max_bytes: int) -> None:
        self.options = options
        self.upload = upload
        self.max_bytes = max_bytes  # a message's at most
        self.entries: deque[_Entry] = deque()
        self._seq = 0
        self._next_id = 1
        self._dropped_before = 0  # by earlier attempts' streams, so counts never go back
        self._dropped = 0
        # This attempt's stream has taken the options: a frame came back analysed. Until
        # then every frame carries them, so options the server refuses are refused again
        # with each frame (their results say why) rather than left behind with the first:
        # the rest of the stream then ran on the server's defaults (no maps asked for, a
        # LOSSLESS stream asked to be a bounded queue) and said nothing.
        self.accepted = False
        self._named = False  # the first frame sent has been checked for a publish name
        self._run = 0  # frames in a row that failed here
        self._attempts = 0
        self._dropped_here: list[int] = []  # ids dropped on resuming, for the next result
        self._superseded: _Entry | None = None  # the newest of them, until another is read

    def __len__(self) -> int:
        return len(self.entries)

    def prepare(self, item: FrameLike) -> Prepared:
        """Number and encode one item (only the pump calls it; may run off the event loop):
        (frame, request, None), or (the frame without pixels, a request of its id and
        source, the error) for a frame that fails here.

        Frames without an id are numbered after the largest id seen so far, so they never
        take an id the caller gave another frame.
        """
        frame = None
        frame_id = self._next_id
        try:
            frame = as_frame(item)
            frame_id = frame_id if frame.frame_id is None else frame.frame_id
            request = to_request(frame, frame_id, self.upload, self.max_bytes)
            frame = as_sent(frame, request)
            error = None
        except _FRAME_ERRORS as exc:
            # kept without its pixels (a run of large frames over the limit would be held)
            frame = Frame(
                b"",
                frame_id=frame_id,
                source=frame.source if frame is not None else "",
                capture_time=frame.capture_time if frame is not None else None,
                name=frame.name if frame is not None else str(item),
            )
            request = pb.FrameRequest(frame_id=frame_id, source=frame.source)
            error = exc
        self._next_id = max(self._next_id, frame_id + 1)
        return frame, request, error

    def add(
        self, frame: Frame, request: pb.FrameRequest, error: ConvstreamError | None = None
    ) -> None:
        """Keep a prepared frame until answered. ValueError for an id still unanswered:
        its result could not be told from the other's; for a failed frame, the error that
        ends a stream when it is the FAILED_RUN + 1st in a row with none sent meanwhile."""
        self._run = 0 if error is None else self._run + 1
        if error is None:
            self._superseded = None
        if error is not None and self._run > FAILED_RUN and self.in_flight() == 0:
            raise type(error)(
                f"{self._run} frames in a row failed on this side, none sent, so the stream "
                f"ends; the last: {error.message}",
                code=error.code,
            )
        if error is None and not self._named and self.options.publish:
            self._named = True
            if not request.source:
                # the server would refuse the first frame and go on unpublished
                raise ValueError(
                    "publish=True publishes the stream under its frames' source name, and the "
                    f"first frame ({frame!r}) has none: give one, e.g. Frame(image, "
                    "source='belt-test') or Video(path, name='belt-test')"
                )
            check_published_name(request.source)
        for entry in self.entries:
            if entry.request.frame_id == request.frame_id:
                raise ValueError(
                    f"frame_id {request.frame_id} is already in flight on this stream "
                    f"({entry.frame!r}); the frames of one stream need ids that differ"
                )
        self._seq += 1
        self.entries.append(_Entry(self._seq, frame, request, error))

    def after(self, seq: int) -> _Entry | None:
        """The oldest entry newer than seq to send, i.e. the next to send after it."""
        found = None
        for entry in reversed(self.entries):
            if entry.seq <= seq:
                break
            if entry.error is None:
                found = entry
        return found

    def new_attempt(self, exhausted: bool) -> None:
        """A new stream starts: its server counts drops from 0 again, and has no options.

        A LATEST_ONLY stream resumed after a break sends none of the frames it holds
        unanswered, up to max_in_flight of them read before the break: they are dropped here
        and reported with the next result, as the server would drop them, and the source's
        next frame goes first. Sent again, the newest was seconds old (the outage's length)
        and analysed as though fresh. Only when the source has ended (exhausted) does the
        newest go again, as it does if the source ends before giving another (source_ended).
        """
        self._attempts += 1
        self.accepted = False
        sent = [entry for entry in self.entries if entry.error is None]
        if self._attempts > 1 and self.options.freshness == pb.FRESHNESS_LATEST_ONLY and sent:
            stale = sent[:-1] if exhausted else sent
            self._superseded = None if exhausted else sent[-1]
            self._dropped_here += [e.request.frame_id for e in stale]
            gone = {id(entry) for entry in stale}
            self.entries = deque(e for e in self.entries if id(e) not in gone)
            self._dropped += len(stale)
        self._dropped_before = self._dropped

    def source_ended(self) -> None:
        """The source gave no frame after the one a resumed LATEST_ONLY stream dropped as
        stale: that one is the newest after all, so it is sent and answered, not dropped."""
        entry, self._superseded = self._superseded, None
        if entry is None:
            return
        self._dropped_here.remove(entry.request.frame_id)
        self._dropped -= 1
        self._dropped_before -= 1
        self.entries = deque(sorted([*self.entries, entry], key=lambda e: e.seq))

    def outgoing(self, request: pb.FrameRequest) -> pb.FrameRequest:
        """The request as sent: until the stream has taken the options, a copy carrying them."""
        if self.accepted:
            return request
        copy = pb.FrameRequest()
        copy.CopyFrom(request)
        copy.options.CopyFrom(self.options)
        return copy

    def match(self, message: pb.FrameResult) -> list[Result]:
        """The results a server's result gives, in order: those of the frames before it that
        failed here, its own, and those of the failed frames right after it (frames before
        it that were sent were dropped by the server).

        Frames the server lists as dropped leave the ledger now, also those after it: a
        frame superseded while this one ran is listed with it, and kept, it was listed again
        (or, sent again by a resumed stream, answered) after a break.
        """
        dropped = set(message.dropped_frame_ids)  # the server's, before any listed here
        message.frames_dropped += self._dropped_before
        self._dropped = message.frames_dropped
        if self._dropped_here:  # oldest first, at most MAX_LISTED as the proto promises
            ids = [*self._dropped_here, *message.dropped_frame_ids][:MAX_LISTED]
            del message.dropped_frame_ids[:]
            message.dropped_frame_ids.extend(ids)
            self._dropped_here = []
        if not message.status.code:
            self.accepted = True
        elif (
            message.status.code == grpc.StatusCode.ALREADY_EXISTS.value[0] and self.options.publish
        ):
            # the name is taken: that frame was refused, and the stream goes on unpublished.
            # Sent on with publish, every frame after it was refused the same way.
            options = pb.ResultOptions()
            options.CopyFrom(self.options)
            options.publish = False
            self.options = options
        results = []
        while self.entries:
            entry = self.entries.popleft()
            if entry.error is not None:
                results.append(self._failed(entry))
            elif entry.request.frame_id == message.frame_id:
                results.append(Result.from_proto(message, entry.frame))
                if dropped:
                    self.entries = deque(
                        e
                        for e in self.entries
                        if e.error is not None or e.request.frame_id not in dropped
                    )
                return results + self.failed()
        raise ProtocolError(f"the server answered frame {message.frame_id}, which was not sent")

    def in_flight(self) -> int:
        """Frames sent and not yet answered (those that failed here take no room)."""
        return sum(1 for entry in self.entries if entry.error is None)

    def failed(self) -> list[Result]:
        """The results of the frames that failed here and wait for no answer before them."""
        results = []
        while self.entries and self.entries[0].error is not None:
            results.append(self._failed(self.entries.popleft()))
        return results

    def _failed(self, entry: _Entry) -> Result:
        return Result(
            frame_id=entry.request.frame_id,
            source=entry.request.source,
            frames_dropped=self._dropped,
            error=entry.error,
            frame=entry.frame,
        )

    def unanswered(self, exhausted: bool) -> ProtocolError | None:
        """The error for a stream the server ended OK before answering every frame."""
        if self.entries:
            ids = [e.request.frame_id for e in self.entries]
            return ProtocolError(f"the server ended the stream with frames {ids[:10]} unanswered")
        if not exhausted:
            return ProtocolError("the server ended the stream before all frames were sent")
        return None


def close_source(source: object) -> None:
    """The frames a stream read, once it is over (ended, failed, closed, or its loop left): a
    generator's, or ``Video.frames()``'s, ``finally`` runs then (a camera's handle released),
    not at some later garbage collection. Other iterators (a file's lines) are the caller's:
    left open. Called on the thread that read it, never during a read."""
    if isinstance(source, Generator | VideoFrames):
        source.close()


class SyncFeed:
    """The sync client's feed: a pump thread and thread-safe requests() iterators."""

    def __init__(self, frames: Iterable[FrameLike], ledger: Ledger, max_in_flight: int) -> None:
        self.ledger = ledger
        self.error: BaseException | None = None
        self._source = iter(frames)
        self._max = max_in_flight
        self._cond = threading.Condition()
        self._attempt = 0
        self._exhausted = False
        self._closed = False
        self._pump = threading.Thread(target=self._run, name="convstream-feed", daemon=True)
        self._pump.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self.ledger.in_flight() < self._max)
                    if self._closed:
                        return
                item = next(self._source, _END)
                if item is _END:
                    return
                prepared = self.ledger.prepare(item)  # type: ignore[arg-type]
                with self._cond:
                    self.ledger.add(*prepared)
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the caller's thread by finish()
            self.error = exc
        finally:
            try:
                close_source(self._source)
            except BaseException as exc:  # its finally raised: as if the source had
                self.error = self.error or exc
            with self._cond:
                self._exhausted = True
                self.ledger.source_ended()
                self._cond.notify_all()

    def _ready(self, attempt: int, cursor: int) -> bool:
        """Whether requests() of this attempt, having sent up to cursor, can go on."""
        return (
            attempt != self._attempt
            or self._closed
            or self._exhausted
            or self.ledger.after(cursor) is not None
        )

    def requests(self) -> Iterator[pb.FrameRequest]:
        """The request iterator of one stream attempt; a newer attempt ends this one."""
        with self._cond:
            self._attempt += 1
            attempt = self._attempt
            self.ledger.new_attempt(self._exhausted)
            self._cond.notify_all()
        cursor = 0
        while True:
            with self._cond:
                self._cond.wait_for(partial(self._ready, attempt, cursor))
                if attempt != self._attempt or self._closed:
                    return
                entry = self.ledger.after(cursor)
                if entry is None:
                    return  # the source is done and everything was sent
                request = self.ledger.outgoing(entry.request)
            cursor = entry.seq
            yield request

    def answer(self, message: pb.FrameResult) -> list[Result]:
        with self._cond:
            results = self.ledger.match(message)
            self._cond.notify_all()
        return results

    def finish(self) -> Iterator[Result]:
        """After a stream ended OK: the results of the last frames that failed here, then
        raise what the source raised, or a missing answer."""
        self._pump.join(timeout=1.0)
        with self._cond:
            failed = self.ledger.failed()
        yield from failed
        if self.error is not None:
            raise self.error
        with self._cond:
            missing = self.ledger.unanswered(self._exhausted)
        if missing is not None:
            raise missing

    def close(self) -> None:
        """Stop the pump and wait (a second at most) for it to leave the caller's iterator,
        and close it (close_source), so that nothing reads the source after the stream is
        gone: the caller may release it (``Video.close``) as soon as this returns. A source
        blocked longer (a stalled camera) is left to the pump, which reads nothing more once
        that read returns, and closes it then."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._pump is not threading.current_thread():
            self._pump.join(timeout=1.0)


class _Reader:
    """A daemon thread of one feed's own that runs its blocking calls (reading a plain
    iterator, encoding a frame) for the event loop, one at a time.

    Not the loop's default executor (asyncio.to_thread): its few threads (cores + 4) are
    shared by the whole program, and six streams whose cameras had nothing to send held them
    all, so every other stream of the client stopped for as long. A daemon, as SyncFeed's
    pump is: a source blocked for good does not hold up the interpreter's exit.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """fn() on the thread; its result or exception in the returned future."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="convstream-feed", daemon=True)
            self._thread.start()
        self._jobs.put((future, fn))
        return future

    def stop(self) -> None:
        """End the thread after the call in progress, if any."""
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            try:
                outcome: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as exc:
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)
            del job, future, fn, outcome  # nothing of a frame kept while waiting


def _quietly(fn: Callable[..., object], *args: object) -> None:
    """fn(*args), its exception dropped: a job whose outcome nobody awaits."""
    with contextlib.suppress(Exception):
        fn(*args)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class AsyncFeed:
    """The asyncio client's feed: a pump task and async requests() iterators."""

    def __init__(
        self,
        frames: Iterable[FrameLike] | AsyncIterable[FrameLike],
        ledger: Ledger,
        max_in_flight: int,
    ) -> None:
        self.ledger = ledger
        self.error: BaseException | None = None
        self._frames = frames
        self._source: Iterator[FrameLike] | AsyncIterator[FrameLike] | None = None
        self._max = max_in_flight
        self._cond = asyncio.Condition()
        self._attempt = 0
        self._exhausted = False
        self._reading: asyncio.Future[Prepared | None] | None = None
        self._reader = _Reader()
        self._pump = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Read a frame once there is room for it, as SyncFeed does: read first, a frame
        waited through an outage and went first when the stream resumed, as old as the
        outage."""
        try:
            if isinstance(self._frames, AsyncIterable):
                frames = self._source = aiter(self._frames)
                while True:
                    await self._room()
                    item = await anext(frames, _END)
                    if item is _END:
                        break
                    await self._add(await self._prepare(item))  # type: ignore[arg-type]
            else:
                # Sync iterables may block (a camera, a disk): read them off the event loop.
                source = self._source = iter(self._frames)
                while True:
                    await self._room()
                    self._reading = self._reader.run(partial(self._next_prepared, source))
                    prepared = await asyncio.shield(self._reading)  # close() waits for it
                    if prepared is None:
                        break
                    await self._add(prepared)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc
        finally:
            async with self._cond:
                self._exhausted = True
                self.ledger.source_ended()
                self._cond.notify_all()

    def _next_prepared(self, source: Iterator[FrameLike]) -> Prepared | None:
        item = next(source, _END)
        return None if item is _END else self.ledger.prepare(item)  # type: ignore[arg-type]

    async def _prepare(self, item: FrameLike) -> Prepared:
        if isinstance(item, bytes) or (isinstance(item, Frame) and isinstance(item.image, bytes)):
            return self.ledger.prepare(item)
        return await self._reader.run(partial(self.ledger.prepare, item))  # encoding, reads

    async def _room(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.ledger.in_flight() < self._max)

    async def _add(self, prepared: Prepared) -> None:
        async with self._cond:  # room was made before the frame was read (_room)
            self.ledger.add(*prepared)
            self._cond.notify_all()

    def _ready(self, attempt: int, cursor: int) -> bool:
        """Whether requests() of this attempt, having sent up to cursor, can go on."""
        return attempt != self._attempt or self._exhausted or self.ledger.after(cursor) is not None

    async def requests(self) -> AsyncIterator[pb.FrameRequest]:
        """The request iterator of one stream attempt; a newer attempt ends this one."""
        async with self._cond:
            self._attempt += 1
            attempt = self._attempt
            self.ledger.new_attempt(self._exhausted)
            self._cond.notify_all()
        cursor = 0
        while True:
            async with self._cond:
                await self._cond.wait_for(partial(self._ready, attempt, cursor))
                if attempt != self._attempt:
                    return
                entry = self.ledger.after(cursor)
                if entry is None:
                    return
                request = self.ledger.outgoing(entry.request)
            cursor = entry.seq
            yield request

    async def answer(self, message: pb.FrameResult) -> list[Result]:
        async with self._cond:
            results = self.ledger.match(message)
            self._cond.notify_all()
        return results

    async def finish(self) -> AsyncIterator[Result]:
        """After a stream ended OK: the results of the last frames that failed here, then
        raise what the source raised, or a missing answer."""
        await asyncio.wait({self._pump}, timeout=1.0)
        for result in self.ledger.failed():
            yield result
        if self.error is not None:
            raise self.error
        missing = self.ledger.unanswered(self._exhausted)
        if missing is not None:
            raise missing

    async def close(self) -> None:
        """Stop the pump; a plain iterator's read in progress (in a worker thread, which
        cancelling cannot stop) is waited for, a second at most, as SyncFeed.close does. Then
        the source is closed (close_source; an async generator's aclose()): a plain one on
        the worker thread, after the read in progress, if any."""
        try:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            if isinstance(self._source, AsyncGenerator):
                with contextlib.suppress(Exception):  # the stream's own outcome stands
                    await self._source.aclose()
            if self._reading is not None and not self._reading.done():
                await asyncio.wait({self._reading}, timeout=1.0)
            if self._source is not None and not isinstance(self._source, AsyncIterator):
                # after a read still blocked, if any: not waited for again
                closing = self._reader.run(partial(_quietly, close_source, self._source))
                if self._reading is None or self._reading.done():
                    await asyncio.wait({closing}, timeout=1.0)
        finally:  # also when this is cancelled: its thread would wait for work for ever
            self._reader.stop()
