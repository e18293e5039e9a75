"""The convstream.v1.Convstream gRPC service: where domain errors become status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from convstream.server.cameras import CameraManager
from convstream.server.config import Settings
from convstream.server.errors import ConvstreamError, Draining, IdleTimeout, Overloaded
from convstream.server.feeds import FeedFinished
from convstream.server.metrics import Metrics
from convstream.server.pipeline import Options, Pipeline
from convstream.server.streams import ByteBudget, FrameBudget, StreamSession
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


class ConvstreamServicer(pb_grpc.ConvstreamServicer):
    """Every RPC of convstream.v1.Convstream, over one Pipeline and the server's cameras."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        metrics: Metrics,
        model_info: pb.ModelInfo,
        cameras: CameraManager,
    ) -> None:
        self.settings = settings
        self.cameras = cameras
        self.pipeline = pipeline
        self.metrics = metrics
        self.model_info = model_info
        self.draining = asyncio.Event()
        self.open_streams = 0
        self.open_analyze_calls = 0
        self.budget = FrameBudget(settings.max_queued_frames)
        self.byte_budget = ByteBudget(settings.max_held_bytes)

    async def Analyze(
        self, request: pb.FrameRequest, context: grpc.aio.ServicerContext
    ) -> pb.FrameResult:
        arrived = time.perf_counter()
        admitted = False
        try:
            if self.draining.is_set():
                raise Draining("server is shutting down; retry on another instance")
            if self.open_analyze_calls >= self.settings.max_analyze_calls:
                raise Overloaded(
                    f"{self.open_analyze_calls} Analyze calls are in progress, the limit is "
                    f"{self.settings.max_analyze_calls}; retry later, or send many frames "
                    "over one StreamFrames call"
                )
            self.open_analyze_calls += 1
            admitted = True
            options = Options.parse(request.options)
            remaining = context.time_remaining()
            deadline = None if remaining is None else arrived + remaining
            result = await self.pipeline.analyze(request, options, arrived, deadline)
        except ConvstreamError as exc:
            outcome = "invalid" if exc.code == grpc.StatusCode.INVALID_ARGUMENT else "rejected"
            self.metrics.frames.labels(self.metrics.client_source(request.source), outcome).inc()
            await context.abort(exc.code, str(exc))
        finally:
            if admitted:
                self.open_analyze_calls -= 1
        self.metrics.observe_result(self.metrics.client_source(request.source), result.timings)
        return result

    async def StreamFrames(
        self, request_iterator: AsyncIterator[pb.FrameRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FrameResult]:
        if self.draining.is_set():
            self.metrics.streams.labels("rejected").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        if self.open_streams >= self.settings.max_streams:
            self.metrics.streams.labels("rejected").inc()
            exc = Overloaded(
                f"{self.open_streams} streams are open, the limit is {self.settings.max_streams}; "
                "retry later or raise max_streams"
            )
            await context.abort(exc.code, str(exc))
        try:
            self.budget.admit(self.settings.stream_queue_size)
        except Overloaded as exc:
            self.metrics.streams.labels("rejected").inc()
            await context.abort(exc.code, str(exc))
        self.open_streams += 1
        self.metrics.streams_in_flight.inc()
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
        )
        try:
            async for result in session.run(request_iterator):
                yield result
            outcome = "ok"
        except IdleTimeout as exc:
            outcome = "idle"
            idle = exc
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: grpc stopped taking results because the call ended under us (a
            # send to a client that went away fails, and the generator is closed, not
            # cancelled). Either way the client left; neither is the server's error.
            outcome = "cancelled"
            raise  # a cancelled handler must stay cancelled, or grpc keeps its resources
        finally:
            self.budget.release(session.capacity)
            self.open_streams -= 1
            self.metrics.streams_in_flight.dec()
            self.metrics.streams.labels(outcome).inc()
        if idle is not None:
            await context.abort(idle.code, str(idle))
        if self.draining.is_set():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"server is shutting down after {session.sequence} results; reconnect to "
                "another instance",
            )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return self.model_info

    async def ListCameras(
        self, request: pb.ListCamerasRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCamerasResponse:
        return pb.ListCamerasResponse(cameras=self.cameras.statuses())

    async def WatchCamera(
        self, request: pb.WatchCameraRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FrameResult]:
        try:
            if self.draining.is_set():
                raise Draining("server is shutting down; retry on another instance")
            watcher = self.cameras.watch(request.camera_id, request)
        except ConvstreamError as exc:
            await context.abort(exc.code, str(exc))
        try:
            while True:
                yield await watcher.next()
        except FeedFinished:
            return  # the published stream ended: OK
        except ConvstreamError as exc:
            await context.abort(exc.code, f"{exc} (after {watcher.sequence} results)")
        finally:
            self.cameras.unwatch(watcher)
