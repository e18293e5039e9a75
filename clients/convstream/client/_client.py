"""Client (blocking) and AsyncClient (asyncio): the same calls, the same options.

Frames the caller sends: ``analyze()`` one, ``stream()`` many. Cameras the server pulls:
``cameras()`` lists them, ``watch(camera_id)`` yields a camera's results, subscribing again
after UNAVAILABLE (a server restart) since there is nothing to re-send. Camera calls travel on
a second channel of their own (see ``Limits.fresh_watch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Generator,
    Iterable,
)
from types import TracebackType

import grpc

from convstream.client._base import CLOSED, BaseClient
from convstream.client._feed import AsyncFeed, Ledger, SyncFeed, check_frames
from convstream.client.errors import Cancelled, from_rpc_error
from convstream.client.frames import FrameLike
from convstream.client.options import Freshness, ResultOptions, Timeout
from convstream.client.results import CameraInfo, ModelInfo, Result
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

__all__ = ["AsyncClient", "Client"]


class Client(BaseClient):
    """A blocking client for a convstream server; safe to share between threads.

    Example:
        >>> from convstream.client import Client, ResultOptions
        >>> with Client("127.0.0.1:50051") as client:
        ...     print(client.model_info().stage_names)
        ...     result = client.analyze("box.jpg", options=ResultOptions(feature_maps=["stage3"]))
        ...     print(result.score, result.heatmap.shape, result.feature_maps["stage3"].shape)
        ...     for result in client.watch("dock-3", max_fps=2):  # a camera the server pulls
        ...         print(result.frame_id, result.score)
        ('stage1', 'stage2', 'stage3', 'stage4')
        0.93 (48, 80) (64, 48, 80)
        1201 0.04

    Args:
        address: host:port of the server (port 50051 when only a host is given); None:
            ``$CONVSTREAM_ADDRESS`` when set (as the commands take it), else 127.0.0.1:50051.
        timeout: a Timeout, or seconds for each unary call; None for no deadlines.
        tls: connect over TLS (None: plaintext).
        token: sent as ``authorization: Bearer <token>`` with every call.
        limits: message size and in-flight frame limits.
        retry: retries of unary calls, and how streams started with ``resume=True`` and
            watches reconnect.
        options: the default ResultOptions of every call; a call's ``options`` replace them.
        upload: how frames held as pixels are sent (JPEG of some quality, PNG or raw).
        allow_plaintext_token: send ``token`` without TLS to another machine, where the
            network itself is private (a VPN); refused otherwise, as anyone who sees the
            traffic could read the token.

    Raises:
        ValueError: an address that is not host:port, a token that cannot be sent, or a
            token to send in plaintext to another machine without ``allow_plaintext_token``.
        OSError: a file of ``tls`` (a CA, a certificate, a key) that cannot be read. The
            calls raise ConvstreamError for everything the server, the connection or a
            source does.
    """

    def _open(self) -> None:
        # set by close(): a watch or stream waiting out its Retry backoff ends at once, where
        # a sleep held a program's exit for the backoff, up to 8 s (a WMS integrator's review)
        self._closing = threading.Event()
        self._channel = self._new_channel(cameras=False)
        self._stub = pb_grpc.ConvstreamStub(self._channel)
        self._camera_channel = self._new_channel(cameras=True)
        self._camera_stub = pb_grpc.ConvstreamStub(self._camera_channel)

    def _new_channel(self, *, cameras: bool) -> grpc.Channel:
        target, credentials, args = self._channel_args(cameras=cameras)
        if credentials is None:
            return grpc.insecure_channel(target, options=args)
        return grpc.secure_channel(target, credentials, options=args)

    def model_info(self) -> ModelInfo:
        """The model the server runs: stages, input sizes, threshold, execution provider."""
        self._check_open()
        try:
            reply = self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=self.timeout.call, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address, tls=self.tls) from exc
        return ModelInfo.from_proto(reply)

    def analyze(self, image: FrameLike, *, options: ResultOptions | None = None) -> Result:
        """Analyse one frame.

        Args:
            image: a Frame, BGR uint8 array (H, W, 3), JPEG/PNG bytes, or an image path.
                Each call numbers its frame 1 unless a Frame gives ``frame_id``: key stored
                results by your own id (or the path), not by ``result.frame_id``.
            options: what the result carries; the client's ``options`` when None.

        Raises:
            SourceError: ``image`` is a path that cannot be read (no such file, not an
                image, a video), before anything is sent.
            InvalidFrame: the server cannot analyse the frame (the message says why).
            Overloaded: the server's ``max_analyze_calls`` (64 unless set; in
                ``model_info()``) are all in progress, e.g. more threads than that sharing
                one client: not retried; send many frames over ``stream()`` instead.
            ConvstreamError: any other failure, e.g. ServerUnavailable after retries (the
                default Retry gives up within about 1.5 s: a server restarting takes
                longer, ``Retry(backoff=1.0, max_backoff=8.0)`` outlasts one).
        """
        self._check_open()
        request, frame = self._analyze_request(image, options)
        try:
            reply = self._stub.Analyze(
                request, timeout=self.timeout.call, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address, tls=self.tls) from exc
        return Result.from_proto(reply, frame)

    def stream(
        self,
        frames: Iterable[FrameLike],
        *,
        options: ResultOptions | None = None,
        freshness: Freshness = "lossless",
        queue_size: int | None = None,
        resume: bool = False,
        publish: bool = False,
    ) -> Generator[Result, None, None]:
        """Send frames over one stream; yield each result as it comes, in frame order.

        Frames are read from ``frames`` on a background thread as the stream has room, so a
        camera or a folder is read while earlier frames are analysed. A frame the server
        cannot analyse gives a Result whose ``error`` says why; the stream goes on. So does a
        frame that fails on this side, never sent: an image path that cannot be read
        (SourceError), or one over the message limit (InvalidFrame, e.g. raw pixels of a
        large frame), in its place among the results (with the next answer after it, or at
        the end), its ``frame`` without pixels.

        Leave the loop (and close() the iterator, if you keep it in a variable) to end the
        stream early. Once it ends, a generator of frames (or ``Video.frames()``) is closed:
        its ``finally`` runs, a camera's handle released there. To stream again, pass a new
        one (``video.frames()`` again): a used one is a ValueError.

        Args:
            frames: Frames, arrays, bytes or paths; e.g. ``Video(0).frames()``.
            options: what each result carries; the client's ``options`` when None. Options
                the server refuses (an unknown feature map, a queue too large) give every
                frame's result that ``error``, until a frame comes back analysed.
            freshness: what the server does when frames come faster than it analyses them:
                "lossless" (slow the sender down), "latest_only" (analyse the newest, drop the
                rest) or "bounded_queue" (keep ``queue_size``, drop the oldest). Dropped ids
                arrive in the next result's ``dropped_frame_ids``. The client reads ahead
                of the results, up to 32 frames, but 2 for "latest_only" or a latest-only
                ``Video``: frames of your own live camera (a generator of an SDK's frames)
                want "latest_only", else their results come seconds old, though each
                ``frame_age_ms`` (the server's figure) stays small; and "bounded_queue"
                drops from those 32, not only from its queue.
            queue_size: waiting frames for "bounded_queue" (the server's default when
                None; at most its ``model_info().max_stream_queue_size``, 256 unless set
                otherwise: a larger one gives every result an ``error``, as ``options``
                above); ValueError with another policy, which would ignore it, or outside
                1..1024.
            resume: when the stream breaks with UNAVAILABLE (a server restart), reconnect
                (for up to ``Retry.resume_timeout`` once results have come) and re-send the
                frames not yet answered, so every frame is answered once, in order
                ("latest_only" re-sends none, as old as the outage: the next result lists
                them as dropped, and the next frame read goes first). ``frames_dropped``
                keeps counting across the streams; ``sequence`` restarts.
            publish: also show this stream's results to ``watch()`` and ``cameras()`` (and so
                on the dashboard) under its frames' ``source`` name, e.g. ``Frame(...,
                source="dock-3")`` or ``Video(..., name="dock-3")``; the name must not be a
                configured camera's or another stream's (else the first result's ``error``
                says so, and those of any frames sent before it came back, and the stream
                goes on unpublished).

        Raises:
            ConvstreamError: the stream failed (after resume attempts, if asked for); also
                whatever ``frames`` raised, after the results of the frames before it; and
                when 257 frames in a row failed on this side with none sent meanwhile
                (every frame over the message limit), after their results.
            TypeError: ``frames`` is one frame, a path or a Video, not the frames themselves
                (a Video's are ``video.frames()``).
            ValueError, TypeError: from the iteration, for a frame the client cannot send
                (pixels that are not uint8 BGR or gray, a frame_id that is not an unsigned
                64-bit integer or that repeats one still unanswered), after the results of
                the frames before it: a bug in the caller's frames, not something the server
                can answer. A frame the server refuses gives a Result with ``error`` instead.
        """
        self._check_open()
        check_frames(frames)
        ledger = Ledger(
            self._stream_options(options, freshness, queue_size, publish),
            self.upload,
            self.limits.max_message_bytes,
        )
        return self._stream(frames, ledger, resume)

    def _stream(
        self, frames: Iterable[FrameLike], ledger: Ledger, resume: bool
    ) -> Generator[Result, None, None]:
        feed = SyncFeed(frames, ledger, self._in_flight(frames, ledger.options))
        resumption = self._resumption(resume)
        try:
            while True:
                call = self._stub.StreamFrames(
                    feed.requests(), timeout=self.timeout.stream, metadata=self._metadata()
                )
                try:
                    for message in call:
                        resumption.answered()
                        yield from feed.answer(message)
                except grpc.RpcError as exc:
                    self._closing.wait(resumption.pause(exc, len(feed.ledger)))
                    resumption.again(exc)  # unless close() came while it waited
                    continue
                finally:
                    call.cancel()
                yield from feed.finish()
                return
        finally:
            feed.close()

    def cameras(self, *, timeout: float | None = None) -> list[CameraInfo]:
        """The cameras the server pulls, in its config's order, with their health.

        Args:
            timeout: seconds for this call, in place of ``Timeout.call`` (math.inf: no
                limit).

        Raises:
            ConvstreamError: e.g. ServerUnavailable after retries.
        """
        self._check_open()
        try:
            reply = self._camera_stub.ListCameras(
                pb.ListCamerasRequest(),
                timeout=self.timeout.call if timeout is None else Timeout(call=timeout).call,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address, tls=self.tls) from exc
        return [CameraInfo.from_proto(camera) for camera in reply.cameras]

    def watch(
        self,
        camera_id: str,
        *,
        options: ResultOptions | None = None,
        max_fps: float | None = None,
        queue_size: int | None = None,
        resume: bool = True,
    ) -> Generator[Result, None, None]:
        """Yield the results of a camera the server pulls, as they come, until you stop (or
        the server has been gone for longer than ``Retry.resume_timeout``, 30 s by default:
        an alerter passes ``Retry(resume_timeout=math.inf)``).

        The server analyses each camera frame once, however many watch it, and keeps at most
        ``queue_size`` results waiting for each watcher: one that reads slower than its results
        come loses the oldest (listed in the next result's ``dropped_frame_ids``) once the
        connection's flow-control window is full, about 8 results of a heatmap each
        (``Limits.fresh_watch`` keeps it at gRPC's smallest). Until then results wait in
        the connection and the server's queue: a reader taking 1 s a result of a 10 fps
        camera read 14 in a row before its first drop, the last 12 s old, and then results
        5-9 s old, their ``frame_age_ms`` (the age as they left the server) under 0.25 s
        (7.9 KB results, a float16 heatmap each); ``time.time() - result.capture_time`` is
        a result's age as you read it. Set ``max_fps`` to the rate you use them at, e.g. a
        dashboard's refresh rate, and none wait.

        Each Result's ``source`` is the camera id, ``frame_id`` the camera's frame number (it
        restarts with the server), ``capture_time`` when the server read the frame,
        ``frame_age_ms`` its age as the result left, and ``frames_dropped`` this watcher's
        drops. ``frame`` is None: with ``ResultOptions(input_jpeg=True)`` the analysed picture
        comes along and ``draw_overlay(result)`` draws on it.

        Break out of a loop over the call itself (``for r in client.watch(...)``), or
        close() the iterator you keep in a variable, to end the call on the server: one
        kept, not closed, holds the call and its place among the camera's watchers until it
        is garbage collected. A camera never ends a watch by itself; a stream another
        client publishes (``stream(..., publish=True)``) does: when that stream ends, the
        iterator stops.

        A camera stalled or reconnecting to its source, as the watch is taken or later, is
        said by a result of no frame: ``camera_state`` "stalled" or "reconnecting",
        ``frame_id`` 0, no score, ``error`` a ServerUnavailable (the status UNAVAILABLE)
        whose message gives the camera's last error. The watch goes on, and results come
        again once the camera sends frames; one that has given up (FAILED) ends it with
        FailedPrecondition. Check ``result.ok`` (or ``camera_state``) before reading a
        score. Each outage is also logged at WARNING on the ``convstream.client`` logger,
        once, as a watch taken of a camera that is down is.

        Args:
            camera_id: a camera's id, or a published stream's name; see ``cameras()``.
            options: what each result carries; the client's ``options`` when None.
            max_fps: results per second at most; None (or 0) for every analysed frame.
            queue_size: results waiting for this watcher on the server at most, 1..1024;
                the server's default (2) when None.
            resume: when the call ends with UNAVAILABLE (the server restarting or draining),
                subscribe again with the Retry backoff: for up to ``Retry.resume_timeout``
                once the server has taken the watch (a camera that is down included),
                ``Retry.attempts`` tries before that (with ``resume_timeout`` math.inf: for
                good, also before, for a server not up yet). Frames of the gap are missed, not
                replayed; ``sequence`` restarts, ``frames_dropped`` carries on. A published
                stream is back only once its publisher sends again: until then the server
                says NotFound, which after a restart is waited out the same way. A program
                that reads no result for the server's stream_idle_timeout_s (300 s by
                default), or for 10 s while the results held for watches are over the
                server's max_watcher_bytes, has its watch ended by the server,
                DEADLINE_EXCEEDED; it subscribes again the same way (a server with no room
                for it yet, Overloaded, is tried again too), having missed what came
                meanwhile.

        Raises:
            ValueError: a bad argument, at once; the errors below come from the iteration.
            NotFound: no camera of that id (the message names the server's cameras), or it
                was removed from the server's config while watched; after a restart, once
                ``Retry.resume_timeout`` has passed with it not back.
            InvalidFrame: options the server cannot honour, e.g. an unknown feature map.
            Rejected: the camera has failed or stopped (its ``state`` in ``cameras()``), at
                once or while watched; the message says why. Never retried: no frame comes
                until the server's config restarts it. While it reconnects the watch waits.
            ServerUnavailable: no server, or it stayed away past the resume attempts.
            ConvstreamError: any other failure, e.g. DeadlineExceeded past ``Timeout.stream``.
        """
        self._check_open()
        request = self._watch_request(camera_id, options, max_fps, queue_size)
        return self._watch(request, resume)

    def _watch(self, request: pb.WatchCameraRequest, resume: bool) -> Generator[Result, None, None]:
        resumption = self._resumption(resume, request.camera_id)
        while True:
            resumption.subscribed()
            call = self._camera_stub.WatchCamera(
                request, timeout=self.timeout.stream, metadata=self._metadata()
            )
            try:
                resumption.registered(call.initial_metadata())
                for message in call:
                    yield Result.from_proto(resumption.watched(message))
            except grpc.RpcError as exc:
                self._closing.wait(resumption.pause(exc, 0))
                resumption.again(exc)  # unless close() came while it waited
                continue
            finally:
                call.cancel()
            return  # ended OK: the stream publishing what was watched ended

    def close(self) -> None:
        """Close the channels; calls in progress fail with Cancelled."""
        if not self._closed:
            self._closed = True
            self._closing.set()
            self._channel.close()
            self._camera_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(BaseClient):
    """An asyncio client for a convstream server, with Client's calls and options.

    Example:
        >>> async with AsyncClient("127.0.0.1:50051") as client:
        ...     result = await client.analyze(frame)
        ...     with Video("conveyor.avi") as video:
        ...         async for result in client.stream(video.frames()):
        ...             print(result.frame_id, result.score)

    The channel opens on first use, inside the running event loop, and belongs to it: use
    one AsyncClient in one loop (RuntimeError otherwise); see Client for the arguments.
    """

    _channel: grpc.aio.Channel | None = None
    _stub_: pb_grpc.ConvstreamStub | None = None
    _camera_channel: grpc.aio.Channel | None = None
    _camera_stub_: pb_grpc.ConvstreamStub | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _closing: asyncio.Event | None = None  # set by close(), as Client's

    async def _backoff(self, seconds: float) -> None:
        """Wait out a Retry backoff; close() ends the wait at once."""
        if self._closing is None:
            self._closing = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _check_loop(self) -> None:
        """gRPC's asyncio channels belong to the loop they opened in: used from a second
        asyncio.run() a call failed with "Event loop is closed" and a warning of a coroutine
        never awaited, and left a poller thread behind."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                "this AsyncClient opened its channels in another event loop (each "
                "asyncio.run() makes a new one): create an AsyncClient in each loop"
            )

    @property
    def _stub(self) -> pb_grpc.ConvstreamStub:
        self._check_open()
        self._check_loop()
        if self._stub_ is None:
            self._channel = self._new_channel(cameras=False)
            self._stub_ = pb_grpc.ConvstreamStub(self._channel)
        return self._stub_

    @property
    def _camera_stub(self) -> pb_grpc.ConvstreamStub:
        self._check_open()
        self._check_loop()
        if self._camera_stub_ is None:
            self._camera_channel = self._new_channel(cameras=True)
            self._camera_stub_ = pb_grpc.ConvstreamStub(self._camera_channel)
        return self._camera_stub_

    def _new_channel(self, *, cameras: bool) -> grpc.aio.Channel:
        target, credentials, args = self._channel_args(cameras=cameras)
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=args)
        return grpc.aio.secure_channel(target, credentials, options=args)

    async def model_info(self) -> ModelInfo:
        """The model the server runs: stages, input sizes, threshold, execution provider."""
        try:
            reply = await self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=self.timeout.call, metadata=self._metadata()
            )
        except asyncio.CancelledError:
            self._raise_if_closed()
            raise
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address, tls=self.tls) from exc
        return ModelInfo.from_proto(reply)

    async def analyze(self, image: FrameLike, *, options: ResultOptions | None = None) -> Result:
        """Analyse one frame; see Client.analyze. Files are read and pixels encoded in a thread."""
        stub = self._stub
        request, frame = await asyncio.to_thread(self._analyze_request, image, options)
        try:
            reply = await stub.Analyze(
                request, timeout=self.timeout.call, metadata=self._metadata()
            )
        except asyncio.CancelledError:
            self._raise_if_closed()
            raise
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address, tls=self.tls) from exc
        return Result.from_proto(reply, frame)

    async def stream(
        self,
        frames: Iterable[FrameLike] | AsyncIterable[FrameLike],
        *,
        options: ResultOptions | None = None,
        freshness: Freshness = "lossless",
        queue_size: int | None = None,
        resume: bool = False,
        publish: bool = False,
    ) -> AsyncGenerator[Result, None]:
        """Send frames over one stream; yield each result as it comes; see Client.stream.

        ``frames`` may be an async iterable, or a plain one, which is read in a worker thread
        so that a blocking source never stalls the event loop.
        """
        stub = self._stub
        check_frames(frames)
        ledger = Ledger(
            self._stream_options(options, freshness, queue_size, publish),
            self.upload,
            self.limits.max_message_bytes,
        )
        feed = AsyncFeed(frames, ledger, self._in_flight(frames, ledger.options))
        resumption = self._resumption(resume)
        try:
            while True:
                call = stub.StreamFrames(
                    feed.requests(), timeout=self.timeout.stream, metadata=self._metadata()
                )
                try:
                    async for message in call:
                        resumption.answered()
                        for result in await feed.answer(message):
                            yield result
                except asyncio.CancelledError:
                    self._raise_if_closed()
                    raise
                except grpc.RpcError as exc:
                    await self._backoff(resumption.pause(exc, len(feed.ledger)))
                    resumption.again(exc)  # unless close() came while it waited
                    continue
                finally:
                    call.cancel()
                async for result in feed.finish():
                    yield result
                return
        finally:
            await feed.close()

    async def cameras(self, *, timeout: float | None = None) -> list[CameraInfo]:
        """The cameras the server pulls, with their health; see Client.cameras."""
        try:
            reply = await self._camera_stub.ListCameras(
                pb.ListCamerasRequest(),
                timeout=self.timeout.call if timeout is None else Timeout(call=timeout).call,
                metadata=self._metadata(),
            )
        except asyncio.CancelledError:
            self._raise_if_closed()
            raise
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address, tls=self.tls) from exc
        return [CameraInfo.from_proto(camera) for camera in reply.cameras]

    async def watch(
        self,
        camera_id: str,
        *,
        options: ResultOptions | None = None,
        max_fps: float | None = None,
        queue_size: int | None = None,
        resume: bool = True,
    ) -> AsyncGenerator[Result, None]:
        """Yield a camera's results as they come; see Client.watch.

        Arguments are checked, and errors raised, when iteration starts. Leave the loop, and
        ``await results.aclose()`` on an iterator you keep, to end the call on the server.
        """
        stub = self._camera_stub
        request = self._watch_request(camera_id, options, max_fps, queue_size)
        resumption = self._resumption(resume, camera_id)
        while True:
            resumption.subscribed()
            call = stub.WatchCamera(request, timeout=self.timeout.stream, metadata=self._metadata())
            try:
                resumption.registered(await call.initial_metadata())
                async for message in call:
                    yield Result.from_proto(resumption.watched(message))
            except asyncio.CancelledError:
                self._raise_if_closed()
                raise
            except grpc.RpcError as exc:
                await self._backoff(resumption.pause(exc, 0))
                resumption.again(exc)  # unless close() came while it waited
                continue
            finally:
                call.cancel()
            return  # ended OK: the stream publishing what was watched ended

    def _raise_if_closed(self) -> None:
        """Cancelled, for a call that gRPC cancelled because close() closed its channel
        (it raises asyncio.CancelledError, which reads as the task itself cancelled)."""
        task = asyncio.current_task()
        if self._closed and (task is None or task.cancelling() == 0):
            raise Cancelled(CLOSED) from None

    async def close(self) -> None:
        """Close the channels; calls in progress fail with Cancelled."""
        if not self._closed:
            self._closed = True
            if self._closing is not None:
                self._closing.set()
            for channel in (self._channel, self._camera_channel):
                if channel is not None:
                    await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
