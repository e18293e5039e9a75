"""Client (blocking) and AsyncClient (asyncio): the same calls, the same options.

Server-pulled cameras slot in beside stream() when their RPCs exist: ``cameras()`` a unary
call like model_info(), ``watch(camera_id)`` a server stream yielding ``Result.from_proto``
per message, re-subscribing on UNAVAILABLE when asked to resume (nothing to re-send), with
NotFound for an unknown camera id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from types import TracebackType

import grpc

from convstream.client._base import BaseClient
from convstream.client._feed import AsyncFeed, Ledger, SyncFeed
from convstream.client.errors import from_rpc_error
from convstream.client.frames import FrameLike
from convstream.client.options import Freshness, ResultOptions
from convstream.client.results import ModelInfo, Result
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
        ('stage1', 'stage2', 'stage3', 'stage4')
        0.93 (48, 80) (64, 48, 80)

    Args:
        address: host:port of the server (port 50051 when left out).
        timeout: a Timeout, or seconds for each unary call; None for no deadlines.
        tls: connect over TLS (None: plaintext).
        token: sent as ``authorization: Bearer <token>`` with every call.
        limits: message size and in-flight frame limits.
        retry: retries of unary calls, and how streams started with ``resume=True``
            reconnect.
        options: the default ResultOptions of every call; a call's ``options`` replace them.
        upload: how frames held as pixels are sent (JPEG of some quality, PNG or raw).
    """

    def _open(self) -> None:
        target, credentials, args = self._channel_args()
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=args)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=args)
        self._stub = pb_grpc.ConvstreamStub(self._channel)

    def model_info(self) -> ModelInfo:
        """The model the server runs: stages, input sizes, threshold, execution provider."""
        self._check_open()
        try:
            reply = self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=self.timeout.call, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from exc
        return ModelInfo.from_proto(reply)

    def analyze(self, image: FrameLike, *, options: ResultOptions | None = None) -> Result:
        """Analyse one frame.

        Args:
            image: a Frame, BGR uint8 array (H, W, 3), JPEG/PNG bytes, or an image path.
            options: what the result carries; the client's ``options`` when None.

        Raises:
            InvalidFrame: the server cannot analyse the frame (the message says why).
            ConvstreamError: any other failure, e.g. ServerUnavailable after retries.
        """
        self._check_open()
        request, frame = self._analyze_request(image, options)
        try:
            reply = self._stub.Analyze(
                request, timeout=self.timeout.call, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from exc
        return Result.from_proto(reply, frame)

    def stream(
        self,
        frames: Iterable[FrameLike],
        *,
        options: ResultOptions | None = None,
        freshness: Freshness = "lossless",
        queue_size: int | None = None,
        resume: bool = False,
    ) -> Iterator[Result]:
        """Send frames over one stream; yield each result as it comes, in frame order.

        Frames are read from ``frames`` on a background thread as the stream has room, so a
        camera or a folder is read while earlier frames are analysed. A frame the server
        cannot analyse gives a Result whose ``error`` says why; the stream goes on.

        Args:
            frames: Frames, arrays, bytes or paths; e.g. ``Video(0).frames()``.
            options: what each result carries; the client's ``options`` when None.
            freshness: what the server does when frames come faster than it analyses them:
                "lossless" (slow the sender down), "latest_only" (analyse the newest, drop the
                rest) or "bounded_queue" (keep ``queue_size``, drop the oldest). Dropped ids
                arrive in the next result's ``dropped_frame_ids``.
            queue_size: waiting frames for "bounded_queue" (1..1024; the server's default
                when None).
            resume: when the stream breaks with UNAVAILABLE (a server restart), reconnect
                (for up to ``Retry.resume_timeout`` once results have come) and re-send the
                frames not yet answered, so every frame is answered once, in order.
                ``frames_dropped`` keeps counting across the streams; ``sequence`` restarts.

        Raises:
            ConvstreamError: the stream failed (after resume attempts, if asked for); also
                whatever ``frames`` raised, after the results of the frames before it.
        """
        self._check_open()
        ledger = Ledger(self._stream_options(options, freshness, queue_size), self.upload)
        return self._stream(frames, ledger, resume)

    def _stream(
        self, frames: Iterable[FrameLike], ledger: Ledger, resume: bool
    ) -> Iterator[Result]:
        feed = SyncFeed(frames, ledger, self.limits.max_in_flight)
        resumption = self._resumption(resume)
        try:
            while True:
                call = self._stub.StreamFrames(
                    feed.requests(), timeout=self.timeout.stream, metadata=self._metadata()
                )
                try:
                    for message in call:
                        resumption.answered()
                        yield feed.answer(message)
                except grpc.RpcError as exc:
                    error = from_rpc_error(exc, address=self.address)
                    delay = resumption.delay(error, len(feed.ledger))
                    if delay is None:
                        raise error from exc
                    time.sleep(delay)
                    continue
                finally:
                    call.cancel()
                feed.finish()
                return
        finally:
            feed.close()

    def close(self) -> None:
        """Close the channel; calls in progress fail with Cancelled."""
        if not self._closed:
            self._closed = True
            self._channel.close()

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
        ...     async for result in client.stream(Video("conveyor.avi").frames()):
        ...         print(result.frame_id, result.score)

    The channel opens on first use, inside the running event loop; see Client for the
    arguments.
    """

    _channel: grpc.aio.Channel | None = None
    _stub_: pb_grpc.ConvstreamStub | None = None

    @property
    def _stub(self) -> pb_grpc.ConvstreamStub:
        self._check_open()
        if self._stub_ is None:
            target, credentials, args = self._channel_args()
            if credentials is None:
                self._channel = grpc.aio.insecure_channel(target, options=args)
            else:
                self._channel = grpc.aio.secure_channel(target, credentials, options=args)
            self._stub_ = pb_grpc.ConvstreamStub(self._channel)
        return self._stub_

    async def model_info(self) -> ModelInfo:
        """The model the server runs: stages, input sizes, threshold, execution provider."""
        try:
            reply = await self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=self.timeout.call, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from exc
        return ModelInfo.from_proto(reply)

    async def analyze(self, image: FrameLike, *, options: ResultOptions | None = None) -> Result:
        """Analyse one frame; see Client.analyze. Files are read and pixels encoded in a thread."""
        stub = self._stub
        request, frame = await asyncio.to_thread(self._analyze_request, image, options)
        try:
            reply = await stub.Analyze(
                request, timeout=self.timeout.call, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from exc
        return Result.from_proto(reply, frame)

    async def stream(
        self,
        frames: Iterable[FrameLike] | AsyncIterable[FrameLike],
        *,
        options: ResultOptions | None = None,
        freshness: Freshness = "lossless",
        queue_size: int | None = None,
        resume: bool = False,
    ) -> AsyncIterator[Result]:
        """Send frames over one stream; yield each result as it comes; see Client.stream.

        ``frames`` may be an async iterable, or a plain one, which is read in a worker thread
        so that a blocking source never stalls the event loop.
        """
        stub = self._stub
        ledger = Ledger(self._stream_options(options, freshness, queue_size), self.upload)
        feed = AsyncFeed(frames, ledger, self.limits.max_in_flight)
        resumption = self._resumption(resume)
        try:
            while True:
                call = stub.StreamFrames(
                    feed.requests(), timeout=self.timeout.stream, metadata=self._metadata()
                )
                try:
                    async for message in call:
                        resumption.answered()
                        yield await feed.answer(message)
                except grpc.RpcError as exc:
                    error = from_rpc_error(exc, address=self.address)
                    delay = resumption.delay(error, len(feed.ledger))
                    if delay is None:
                        raise error from exc
                    await asyncio.sleep(delay)
                    continue
                finally:
                    call.cancel()
                await feed.finish()
                return
        finally:
            await feed.close()

    async def close(self) -> None:
        """Close the channel; calls in progress fail with Cancelled."""
        if not self._closed:
            self._closed = True
            if self._channel is not None:
                await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
