"""Assemble and run the server: model, engine, gRPC services, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import onnxruntime as ort
from grpc_health.v1 import health_pb2

from convstream.model import DamageModel, ModelFileError, wants_cuda
from convstream.model.runtime import CPU, CUDA, ProviderChoice
from convstream.server import malloc, reflection
from convstream.server.cameras import CameraManager
from convstream.server.config import (
    CameraConfig,
    ConfigError,
    Scheduling,
    Settings,
    usable_cores,
)
from convstream.server.decode import MIN_SIDE
from convstream.server.engine import Engine
from convstream.server.errors import Draining
from convstream.server.health import Health
from convstream.server.metrics import Metrics
from convstream.server.pipeline import Pipeline, WorkPool
from convstream.server.probes import HttpPort
from convstream.server.processes import TLS_FILES, Peers, model_sha256, reload_keeps
from convstream.server.security import TokenInterceptor, token_changes
from convstream.server.servicer import (
    SERVICE_NAME,
    SMALL_REQUEST_BYTES,
    ConvstreamServicer,
    add_service,
    add_to_server,
)
from convstream.server.sources import parse_source
from convstream.server.streams import WINDOW, stream_share
from convstream.server.tls import RotatingCredentials
from convstream.v1 import MAX_QUEUE_SIZE, SHUTTING_DOWN, host_port, is_loopback
from convstream.v1 import convstream_pb2 as pb
from convstream.v1.pem import EXPIRY_WARNING, TLSFileError, describe, expiry_times, read_pem
from convstream.v1.rlimit import open_files

logger = logging.getLogger(__name__)


class _ClientLeft(logging.Filter):
    """grpcio logs an ERROR with a traceback ("ExecuteBatchError raised in core by servicer
    method") when a stream's client goes away while results are on their way to it: the
    client cancelling is no server error (the stream is counted as cancelled), so the line
    goes to this module's debug log instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("ExecuteBatchError raised in core by servicer method"):
            logger.debug("a client left with results on their way: %s", record.getMessage())
            return False
        return True


logging.getLogger("grpc._cython.cygrpc").addFilter(_ClientLeft())


BEAT_S = 1.0  # how often the event loop marks that it runs, for /healthz

# The admission limits /metrics exports (convstream_limit), beside the gauges they bound.
LIMITS = (
    "max_streams",
    "max_analyze_calls",
    "max_watchers",
    "max_queued_frames",
    "max_held_bytes",
    "max_watcher_bytes",
)


def server_version() -> str:
    try:
        return version("convstream")
    except PackageNotFoundError:
        return "0+unknown"


def model_info(settings: Settings, model: DamageModel) -> pb.ModelInfo:
    """What GetModelInfo answers; fixed for the server's life but for the threshold, which
    a reload may change."""
    return pb.ModelInfo(
        name=model.path.stem,
        sha256=model.sha256,
        execution_provider=model.provider,
        requested_provider=model.requested_provider,
        # those it may choose (provider = cpu or cuda), not all onnxruntime lists: a
        # newcomer's `info` named AzureExecutionProvider, which it never runs
        available_providers=[p for p in ort.get_available_providers() if p in (CPU, CUDA)],
        threshold=model.threshold,
        threshold_source=threshold_source(settings, model),
        heatmap_stride=model.heatmap_stride,
        stages=[pb.Stage(name=s.name, channels=s.channels, stride=s.stride) for s in model.stages],
        input_sizes=[pb.InputSize(width=w, height=h) for h, w in settings.input_shapes()],
        onnxruntime_version=ort.__version__,
        server_version=server_version(),
        max_message_bytes=settings.max_message_bytes,
        max_frame_pixels=settings.max_frame_pixels,
        max_frame_side=settings.max_frame_side,
        stream_queue_size=settings.stream_queue_size,
        max_stream_queue_size=min(
            MAX_QUEUE_SIZE, stream_share(settings.stream_queue_size, settings.max_queued_frames)
        ),
        stream_idle_timeout_s=settings.stream_idle_timeout_s,
        max_queued_frames=settings.max_queued_frames,
        max_streams=settings.max_streams,
        max_analyze_calls=settings.max_analyze_calls,
        max_watchers=settings.max_watchers,
        watcher_queue_size=settings.watcher_queue_size,
        max_held_bytes=settings.max_held_bytes,
        max_watcher_bytes=settings.max_watcher_bytes,
        min_frame_side=MIN_SIDE,
        max_small_request_bytes=SMALL_REQUEST_BYTES,
    )


def interface(model: DamageModel) -> str:
    """The outputs a model gives, as streams ask for them (stages) and read them (strides)."""
    stages = ", ".join(
        f"{s.name} of {s.channels} channels at stride {s.stride}" for s in model.stages
    )
    return f"a heatmap at stride {model.heatmap_stride}, {stages}"


def threshold_source(settings: Settings, model: DamageModel) -> str:
    """ModelInfo.threshold_source: where the threshold in force comes from."""
    if settings.threshold is not None:
        return "setting"
    return "model" if model.threshold_in_file else "default"


HANDSHAKE_TIMEOUT_S = 10.0  # for a new connection's handshake, TLS's or none


# Connections the gRPC port keeps at once, at most: past it gRPC closes a new one as it comes
# (its client reads UNAVAILABLE). 20,000 idle HTTP/2 connections from one host took every
# file the process could open, and /healthz, the metrics and the cameras' sources stopped
# with the port (a robustness review); a quarter of the files stay for those. Not a cap per
# host (grpcio has none): keep the port behind a firewall that limits one (docs/production.md).
MAX_GRPC_CONNECTIONS = 10_000


# Files kept for the process itself whatever the limit (its libraries, model, logs, the
# cameras' sources, the probes' port): under `ulimit -n 64` a cap of 64 connections took them
# all, and /healthz stopped answering (a reliability review).
OWN_FILES = 128


def connection_cap() -> int:
    """MAX_GRPC_CONNECTIONS, or three quarters of the files this process may open if less,
    and never more than those files less OWN_FILES (but 8 at least)."""
    files = open_files()
    if files is None:
        return MAX_GRPC_CONNECTIONS
    return min(MAX_GRPC_CONNECTIONS, max(8, min(files * 3 // 4, files - OWN_FILES)))


def grpc_options(settings: Settings, *, share_port: bool = False) -> list[tuple[str, int]]:
    """Channel arguments of the server; the client's keepalive must stay within these.

    The port is this process's alone (a second server on it fails to start, and says so)
    unless ``share_port``: the processes of one server (``processes``) share it.
    """
    return [
        # Twice the limit: a request between the two is refused alone by the servicer's
        # deserializer, in the server's words; past it gRPC ends the whole call. gRPC takes
        # a C int.
        ("grpc.max_receive_message_length", min(2 * settings.max_message_bytes, 2**31 - 1)),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", int(share_port)),
        # Clients may ping every 10 s or slower, also while idle (our client pings each 30 s,
        # 15 s on a watch's channel).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.max_connection_idle_ms", int(settings.connection_idle_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", connection_cap()),
        # A connection that has not finished its TLS handshake (or, in plaintext, sent
        # nothing) by then is closed: an idle one held its file for a minute or two.
        ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_TIMEOUT_S * 1000)),
    ]


TLS_CHECK_EVERY_S = 6 * 3600.0  # how often a certificate near or past its end is logged


class Server:
    """A convstream server in this process.

    ``await Server(settings).start()`` loads and warms the model, binds the port (``.port``
    tells which when the setting is 0) and reports SERVING; ``await stop()`` drains.
    ``peers``: this is one of several processes of one server (processes.py).
    """

    def __init__(self, settings: Settings, peers: Peers | None = None) -> None:
        self.settings = settings
        self.peers = peers
        self.metrics = Metrics()
        if peers is not None:  # one started after a reload the supervisor refused says so
            self.metrics.reloaded(peers.reload_ok, peers.restart_pending)
        self._applied = peers.generation if peers is not None else 0  # its settings
        self.port = settings.port
        self.metrics_port = settings.metrics_port
        self.health = Health()
        self._grpc: grpc.aio.Server | None = None
        self._tokens: TokenInterceptor | None = None
        self._tls: RotatingCredentials | None = None
        self._tls_dates: asyncio.Task[None] | None = None
        self._http: HttpPort | None = None
        self._beat: asyncio.Task[None] | None = None
        self._trimming: asyncio.Task[None] | None = None
        self._beat_at = time.monotonic()  # the event loop last ran its heartbeat
        # True from SERVING until draining, as the health service's overall status says
        self.serving = False
        self._served = False  # it reached SERVING: its stop is said
        self._engine: Engine | None = None
        self._warmed: set[tuple[int, int]] = set()  # the input sizes the model has run
        # A reload waits for the model to run new sizes: a second one meanwhile applied
        # first, and the first, older, config then over it.
        self._reloading = asyncio.Lock()
        self._executor: WorkPool | None = None
        # how models run here, chosen at the start: a reload's new model runs the same way
        self._plan: Scheduling | None = None
        self._provider: ProviderChoice = settings.provider
        self.servicer: ConvstreamServicer | None = None
        self.cameras: CameraManager | None = None

    async def start(self) -> None:
        settings = self.settings
        cores = usable_cores() if self.peers is None else self.peers.share(usable_cores())

        gpu = wants_cuda(settings.provider)
        plan = settings.scheduling(gpu=gpu, cores=cores)
        self._plan, self._provider = plan, settings.provider
        model = await asyncio.to_thread(self._load, settings)
        if gpu and model.provider != CUDA:
            # onnxruntime-gpu is installed but CUDA did not load (the model logged why): run
            # the CPU plan, whose onnxruntime threads are set when the session is made.
            plan = settings.scheduling(gpu=False, cores=cores)
            self._plan, self._provider = plan, "cpu"
            model = await asyncio.to_thread(self._load, settings)
        pinned = self.peers.model_sha256 if self.peers is not None else ""
        if pinned and model.sha256 != pinned:  # replaced since the supervisor started
            raise ModelFileError(
                f"{model.path}: the file changed since this server started (sha256 "
                f"{pinned[:12]}... then, {model.sha256[:12]}... now): this process would serve "
                "another model than the others on the same port; restart the server, all its "
                "processes, to serve the new file"
            )
        if settings.threshold is not None:  # results' `damaged` and GetModelInfo follow it
            model.threshold = settings.threshold
        # Front-load one-time allocation and kernel selection (and, on CUDA, a session) for
        # every input size, the cameras' own included.
        await asyncio.to_thread(model.warm_up, settings.model_shapes(), plan.max_batch)
        self._warmed.update(settings.model_shapes())
        wide = None
        if plan.wide_threads:
            wide = await asyncio.to_thread(self._load, settings, wide=True)
            await asyncio.to_thread(wide.warm_up, settings.model_shapes())
        pool = WorkPool(settings.decode_threads or cores)
        self._executor = pool
        self._engine = Engine(
            model,
            max_batch=plan.max_batch,
            workers=plan.workers,
            wide_model=wide,
            busy_elsewhere=lambda: pool.busy,
            # Admission happens at the edge (streams and their windows, Analyze calls, one
            # frame per camera); this bound is only a backstop for what was admitted, with
            # room for the cameras a reload may add.
            max_queued=settings.max_streams * WINDOW + settings.max_analyze_calls + 1024,
        )
        pipeline = Pipeline(settings, self._engine, self._executor)
        info = model_info(settings, model)
        self.cameras = CameraManager(
            pipeline,
            self.metrics,
            self.health,
            watcher_queue_size=settings.watcher_queue_size,
            max_watchers=settings.max_watchers,
            max_watcher_bytes=settings.max_watcher_bytes,
        )
        self.servicer = ConvstreamServicer(
            settings, pipeline, self.metrics, info, self.cameras, peers=self.peers
        )
        if self.peers is not None:
            self.health.forward_to(self.peers, self.servicer.peer_channel)
        self.metrics.provider.labels(model.provider, model.requested_provider).set(1)
        self.metrics.model.labels(model.path.name, model.sha256).set(1)
        self.metrics.threshold.set(model.threshold)
        self.metrics.build.labels(server_version()).set(1)
        self.metrics.set_limits({name: getattr(settings, name) for name in LIMITS})

        # Always installed, so a reload can add the first token or remove the last one.
        self._tokens = TokenInterceptor(
            settings.tokens,
            self.metrics.auth_refusals,
            forwarded=self.peers.forwarded if self.peers is not None else None,
            admitted=self.metrics.token_calls,
        )
        server = grpc.aio.server(
            options=grpc_options(settings, share_port=self.peers is not None),
            interceptors=[self._tokens],
        )
        add_to_server(self.servicer, server)
        add_service(server, health_pb2, "Health", self.health, settings.max_message_bytes)
        if settings.reflection:
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
            reflection.enable(names, server)
        pem = settings.read_tls()
        if pem is not None:
            for warning in pem.warnings:
                logger.warning("%s", warning)
            logger.info("TLS: the certificate served is %s", describe(pem))
            tls = self._tls = RotatingCredentials(pem)
            self.metrics.watch_tls(lambda: expiry_times(tls.current))
            self._tls_dates = asyncio.create_task(self._watch_tls_dates(), name="tls-dates")
        credentials = self._tls.credentials if self._tls is not None else None
        self._grpc = server  # from here on, stop() releases it whatever fails next
        self.port = _listen(server, settings, credentials, share_port=self.peers is not None)
        if self.peers is not None:  # where the other processes forward camera calls
            server.add_insecure_port(self.peers.address(self.peers.index))
        metrics_port = settings.metrics_port
        if self.peers is not None and metrics_port > 0:
            metrics_port += self.peers.index  # one port each, in a row
        if metrics_port >= 0:
            self._beat = asyncio.create_task(self._heartbeat(), name="heartbeat")
            self._http = HttpPort(
                self.metrics.registry,
                lambda: self.serving,
                lambda: time.monotonic() - self._beat_at,
            )
            address = host_port(settings.metrics_host, metrics_port)
            try:
                self.metrics_port = self._http.start(settings.metrics_host, metrics_port)
            except OSError as exc:
                which = ""
                if self.peers is not None and metrics_port > 0:
                    which = (
                        f" (metrics_port {settings.metrics_port} + {self.peers.index}: each of "
                        f"the {self.peers.count} processes takes the next port)"
                    )
                raise OSError(
                    f"cannot serve metrics on {address}{which}: {exc.strerror or exc}; choose "
                    "another port with --metrics-port (-1 turns metrics off)"
                ) from exc
        # the cameras' metric labels are theirs before any client frame can be counted
        self.metrics.set_cameras(c.id for c in settings.cameras)
        self.cameras.elsewhere = self._elsewhere(settings.cameras)
        await server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True  # what health now says, for the HTTP probes
        self._served = True
        self._trimming = asyncio.create_task(self._trim_memory(), name="trim-memory")
        await self.cameras.start(self._own(settings.cameras))
        security = "mutual TLS" if settings.tls_client_ca else "TLS" if credentials else "plaintext"
        if settings.tokens:
            count = len(settings.tokens)
            security += f", {count} token{'s' if count != 1 else ''}"
        _warn_if_exposed(settings, tls=credentials is not None)
        if model.provider == CUDA and self.peers is None:
            logger.info(
                "one server process feeds a GPU only as fast as its Python allows (on an H200 "
                "about a third of what the GPU takes): --processes 4 served 2-3 times as many "
                "frames there, over several connections (docs/server.md, 'Several processes')"
            )
        cameras = len(self._own(settings.cameras))
        logger.info(
            "convstream %s serving on %s (%s; %d camera%s; metrics %s; model %s, sha256 "
            "%s..., threshold %.6g%s, provider %s; "
            "inference workers %d, onnxruntime threads per run %d (%s), frames per run %d at "
            "most%s)",
            server_version(),
            host_port(settings.host, self.port),
            security,
            cameras,
            "" if cameras == 1 else "s",
            f"http://{host_port(settings.metrics_host, self.metrics_port)}/metrics"
            if self._http is not None
            else "off",
            model.path.name,
            model.sha256[:12],
            model.threshold,
            " from the config" if settings.threshold is not None else "",
            model.provider,
            plan.workers,
            plan.intra_op_threads,
            f"{plan.wide_threads} for a lone frame" if wide else "a lone frame too",
            plan.max_batch,
            f", each padded to {plan.fixed_batch} with a session per input size"
            if plan.fixed_batch
            else "",
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain, then stop.

        Health turns NOT_SERVING at once; after the settings' ``drain_delay_s`` (0: none),
        during which calls are still taken, new calls get UNAVAILABLE, and open streams stop
        reading, answer the frames they hold and end with UNAVAILABLE. After ``grace`` more
        seconds whatever is still open is cancelled.
        """
        grace = self.settings.grace_period_s if grace is None else grace
        self.serving = False
        await self.health.enter_graceful_shutdown()
        if self.settings.drain_delay_s and self._engine is not None:
            # Load balancers see NOT_SERVING and stop sending while calls are still taken.
            await asyncio.sleep(self.settings.drain_delay_s)
        deadline = time.monotonic() + grace
        self.health.end_watches()  # they have said NOT_SERVING
        if self.servicer is not None:
            self.servicer.draining.set()
        if self.cameras is not None:
            self.cameras.end_watchers(Draining(SHUTTING_DOWN))
        if self.servicer is not None:
            self.servicer.end_forwarded()
        if self.servicer is not None:
            while self.servicer.open_streams and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        if self._grpc is not None:
            await self._grpc.stop(max(0.0, deadline - time.monotonic()))
        if self.servicer is not None:
            await self.servicer.close()
        if self.cameras is not None:
            await self.cameras.stop()
        if self._engine is not None:
            self._engine.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)  # no thread left in OpenCV
        if self._http is not None:
            self._http.close()
        if self._tls_dates is not None:
            self._tls_dates.cancel()
        for task in (self._beat, self._trimming):
            if task is not None:
                task.cancel()
        if self._served:  # not after a start that failed (a model, a port)
            logger.info("convstream stopped")

    async def _heartbeat(self) -> None:
        """Mark, every BEAT_S, that the event loop runs: the probes' thread answered 200 from a
        flag while a loop stuck in one call answered no client."""
        while True:
            self._beat_at = time.monotonic()
            await asyncio.sleep(BEAT_S)

    async def _trim_memory(self) -> None:
        """Every TRIM_EVERY_S, give memory freed in a burst back to the system once RSS or
        malloc's free memory has grown (malloc.Trimmer): after a large request it stayed
        with malloc for good."""
        trimmer = malloc.Trimmer()
        while True:
            await asyncio.sleep(malloc.TRIM_EVERY_S)
            # off the loop: mallinfo2 walks malloc's free chunks under its locks (17 ms
            # for 150,000 of them)
            if await asyncio.to_thread(trimmer.due):
                took = await asyncio.to_thread(trimmer.trim)
                logger.debug("malloc_trim gave back %.0f MiB in %.1f ms", took[0] / 2**20, took[1])

    async def _watch_tls_dates(self) -> None:
        """Say in the log, every TLS_CHECK_EVERY_S, that a served certificate expires within
        EXPIRY_WARNING or has expired: said only at start and at reloads, a server that ran
        through the date logged nothing while every client began to fail."""
        while True:
            await asyncio.sleep(TLS_CHECK_EVERY_S)
            assert self._tls is not None
            for setting, expires in expiry_times(self._tls.current).items():
                left = expires - time.time()
                if left >= EXPIRY_WARNING.total_seconds():
                    continue
                path = getattr(self.settings, setting)
                when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
                if left <= 0:
                    logger.error(
                        "%s %s expired on %s: %s; renew it and send SIGHUP",
                        setting,
                        path,
                        when,
                        "clients refuse it"
                        if setting == "tls_cert"
                        else "every client certificate it signed is refused",
                    )
                else:
                    logger.warning(
                        "%s %s expires on %s, in %.1f days: renew it and send SIGHUP",
                        setting,
                        path,
                        when,
                        left / 86400,
                    )

    def _load(self, settings: Settings, *, wide: bool = False) -> DamageModel:
        """The model file of ``settings`` in a session as this server runs it (the plan made
        at its start): the wide model's on the CPU with its threads (Engine)."""
        plan = self._plan
        assert plan is not None, "loaded before the plan was made"
        model = DamageModel(
            settings.model_path,
            provider="cpu" if wide else self._provider,
            intra_op_threads=plan.wide_threads if wide else plan.intra_op_threads,
            spin=settings.spin_wait,
            fixed_batch=0 if wide else plan.fixed_batch,
        )
        if not wide:
            model.requested_provider = settings.provider  # GetModelInfo reports what was asked
        return model

    async def reload(self, settings: Settings) -> None:
        """Apply a changed config while running: tokens are added, removed and changed (new
        calls are checked against the new set, open watches and streams it refuses end with
        that refusal), the TLS files are read again (new
        connections get the new certificate), the threshold applies to the next result,
        cameras are added, removed and restarted; other settings need a restart and are
        reported, not applied."""
        async with self._reloading:  # one at a time, in the order they came
            peers = self.peers
            if peers is not None and peers.reload_refused and peers.generation == self._applied:
                # the supervisor refused the config: its metrics say so, nothing else changes
                # (a process that has not applied these settings yet, started meanwhile,
                # applies them: refused kept it on the ones it started with)
                self.metrics.reloaded(False, None)
                logger.info("reload refused by the supervisor; nothing changed")
                return
            generation = peers.generation if peers is not None else 0
            try:
                await self._reload(settings)
            except ConfigError:
                self.metrics.reloaded(False, None)
                raise
            self._applied = generation

    async def _reload(self, settings: Settings) -> None:
        # before anything changes: either may refuse the reload
        models = await self._new_model(settings)
        if models is None:  # a new model was run at every size, the new ones too
            await self._warm_up_new_sizes(settings)
        keeps = reload_keeps(self.settings, settings)
        applied: dict[str, Any] = {
            "cameras": settings.cameras,
            "tokens": settings.tokens,
            "threshold": settings.threshold,
        }
        if models is not None:
            self._use_model(settings, *models)
            applied["model_path"] = settings.model_path
        elif settings.threshold != self.settings.threshold and self._engine is not None:
            self._judge_by(settings, self._engine.model)
            logger.info("reload: threshold %.6g from now on", self._engine.model.threshold)
        tls = self._reload_tls(settings, keeps.get("tls"))
        if tls:
            applied.update({name: getattr(settings, name) for name in TLS_FILES})
        changed = [
            name
            for name in Settings.model_fields
            # TLS files that did not load, or TLS turned on or off: _reload_tls said so
            if name not in applied
            and name not in TLS_FILES
            and getattr(settings, name) != getattr(self.settings, name)
        ]
        if changed:
            logger.warning(
                "reload: %s: changes only on restart; kept as before", ", ".join(changed)
            )
        if "tokens" in keeps:
            logger.error("reload: %s", keeps["tokens"])
            applied["tokens"] = self.settings.tokens
        elif self._tokens is not None and settings.tokens != self.settings.tokens:
            self._reload_tokens(settings)
        if self.cameras is not None:
            self.cameras.elsewhere = self._elsewhere(settings.cameras)
            await self.cameras.apply(self._own(settings.cameras))
        if self.peers is not None:  # cameras may have come, gone or moved between processes
            self.health.owners_changed()
        self.settings = self.settings.model_copy(update=applied)
        if self.servicer is not None:  # the cameras it lists and forwards calls for
            self.servicer.settings = self.settings
        count = len(settings.cameras)
        logger.info("reload: %d camera%s configured", count, "" if count == 1 else "s")
        for warning in (shared_source_warning(settings), token_share_warning(settings)):
            if warning is not None:
                logger.warning("reload: %s", warning)
        if self.peers is not None:  # the supervisor read the config and kept what it did
            self.metrics.reloaded(self.peers.reload_ok, self.peers.restart_pending)
        else:
            self.metrics.reloaded(tls is not None and "tokens" not in keeps, [*changed, *keeps])

    async def _new_model(self, settings: Settings) -> tuple[DamageModel, DamageModel | None] | None:
        """The model a reload brings (and its wide session), loaded and run at every input
        size the server runs, or None when the config names the file the server runs,
        unchanged: a file rewritten in place, a new sha256, is a new model. A file the server
        cannot serve in place of its model refuses the reload (ConfigError): one onnxruntime
        cannot load, or whose outputs differ (open streams asked for its stages as they are).
        Several processes keep theirs: each would swap at its own moment, and a process
        restarted after a crash must serve what the others do."""
        engine = self._engine
        if engine is None:
            return None
        running = engine.model
        sha256 = await asyncio.to_thread(model_sha256, settings.model_path)
        if settings.model_path == self.settings.model_path and sha256 == running.sha256:
            return None
        if self.peers is not None:
            if settings.model_path == self.settings.model_path:  # else listed with the rest
                logger.warning(
                    "reload: %s changed (sha256 %s... now): with several processes a new "
                    "model takes a restart; each process serves the one it loaded",
                    running.path,
                    sha256[:12] or "unreadable",
                )
            return None
        sizes = sorted(self._warmed.union(settings.camera_shapes()))
        asked = ("the server runs {}", "restart the server with input_sizes it takes")
        # the file is the reload's; how it runs (provider, spin_wait) changes on restart only
        fresh = self.settings.model_copy(update={"model_path": settings.model_path})
        try:
            model = await asyncio.to_thread(self._load, fresh)
            ran, runs = interface(model), interface(running)
            if ran != runs:
                raise ModelFileError(
                    f"{model.path} gives {ran}, where the model it would replace gives "
                    f"{runs}: open streams asked for those; restart the server to serve it"
                )
            if model.provider != running.provider:
                raise ModelFileError(
                    f"{model.path} loaded on {model.provider}, the running model is on "
                    f"{running.provider} (the server's log says why)"
                )
            await asyncio.to_thread(model.warm_up, sizes, engine.max_batch, sizes_from=asked)
            wide = None
            if engine.wide_model is not None:
                wide = await asyncio.to_thread(self._load, fresh, wide=True)
                await asyncio.to_thread(wide.warm_up, sizes, sizes_from=asked)
        except ModelFileError as exc:
            raise ConfigError(f"model_path: {exc}") from exc
        self._warmed.update(sizes)
        return model, wide

    def _use_model(self, settings: Settings, model: DamageModel, wide: DamageModel | None) -> None:
        """Run every frame from now on on ``model`` (frames at the model finish on the one
        they started on) and say so: GetModelInfo, the metrics, the log."""
        assert self._engine is not None
        old = self._engine.model
        self._judge_by(settings, model)
        self._engine.use(model, wide)
        if self.servicer is not None:
            info = self.servicer.model_info
            info.name, info.sha256 = model.path.stem, model.sha256
        self.metrics.model.remove(old.path.name, old.sha256)
        self.metrics.model.labels(model.path.name, model.sha256).set(1)
        logger.info(
            "reload: model %s (sha256 %s...) from now on, threshold %.6g (%s), in place of %s "
            "(sha256 %s...)",
            model.path,
            model.sha256[:12],
            model.threshold,
            threshold_source(settings, model),
            old.path,
            old.sha256[:12],
        )

    def _judge_by(self, settings: Settings, model: DamageModel) -> None:
        """Decide results' ``damaged`` by the threshold ``settings`` give ``model`` (its own
        when they give none), as GetModelInfo and the metrics then say."""
        model.threshold = model.own_threshold if settings.threshold is None else settings.threshold
        if self.servicer is not None:
            self.servicer.model_info.threshold = model.threshold
            self.servicer.model_info.threshold_source = threshold_source(settings, model)
        self.metrics.threshold.set(model.threshold)

    async def _warm_up_new_sizes(self, settings: Settings) -> None:
        """Run the model once at each input size a reloaded config's cameras bring, as the
        start does for its own: a size the model cannot run refuses the reload (ConfigError),
        where it was taken and every frame of that camera then failed in the log alone."""
        engine = self._engine
        if engine is None:
            return
        sizes = settings.camera_shapes()
        new = [size for size in sizes if size not in self._warmed]
        if not new:
            return
        asked = ("the new config's cameras run {} (their input_size)", "set their input_size")
        try:
            await asyncio.to_thread(engine.model.warm_up, new, engine.max_batch, sizes_from=asked)
            if engine.wide_model is not None:
                await asyncio.to_thread(engine.wide_model.warm_up, new, sizes_from=asked)
        except ModelFileError as exc:
            raise ConfigError(str(exc)) from exc
        self._warmed.update(new)

    def _reload_tls(self, settings: Settings, kept: str | None) -> bool | None:
        """Serve the TLS files of ``settings`` to new connections; False if there are none,
        or they are ``kept`` (why: reload_keeps); None if they do not load."""
        if kept is not None:
            logger.warning("reload: %s", kept)
            return False
        if self._tls is None or settings.tls_cert is None or settings.tls_key is None:
            return False
        try:
            pem = read_pem(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca, host=settings.host
            )
        except TLSFileError as exc:
            logger.error("reload: TLS files kept as before: %s", exc)
            return None
        for warning in pem.warnings:
            logger.warning("reload: %s", warning)
        if self._tls.replace(pem):
            logger.info(
                "reload: TLS files read again (%s; the certificate %s): new connections get "
                "them, open ones keep theirs",
                ", ".join(
                    f"{name} {getattr(settings, name)}"
                    for name in TLS_FILES
                    if getattr(settings, name) is not None
                ),
                describe(pem),
            )
        return True

    def _reload_tokens(self, settings: Settings) -> None:
        assert self._tokens is not None
        old = self.settings.tokens
        ended = self._tokens.replace(settings.tokens)
        changes = token_changes(old, settings.tokens)
        if changes:  # none: only their order or a hash's letter case changed
            logger.info("reload: tokens: %s", "; ".join(changes))
        if ended:  # open watches and streams the new tokens would refuse
            logger.warning(
                "reload: ended %d open call%s that the new tokens refuse: %s",
                len(ended),
                "" if len(ended) == 1 else "s",
                ", ".join(ended),
            )
        if not old:
            logger.info("reload: calls need a token from now on")

    def _own(self, cameras: tuple[CameraConfig, ...]) -> tuple[CameraConfig, ...]:
        """The cameras this process pulls: all, or its share among several processes."""
        if self.peers is None:
            return cameras
        return tuple(c for c in cameras if self.peers.owner(c.id) == self.peers.index)

    def _elsewhere(self, cameras: tuple[CameraConfig, ...]) -> frozenset[str]:
        """The configured cameras another process of this server pulls."""
        own = {c.id for c in self._own(cameras)}
        return frozenset(c.id for c in cameras if c.id not in own)

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


def _warn_if_exposed(settings: Settings, *, tls: bool) -> None:
    """Warn when more than this machine can reach the port and nothing checks who calls."""
    for warning in (
        metrics_exposure_warning(settings),
        demo_warning(settings),
        shared_source_warning(settings),
        token_share_warning(settings),
    ):
        if warning:
            logger.warning("%s", warning)
    if is_loopback(settings.host):
        return
    if settings.tls_client_ca is not None and not settings.tokens:
        # client certificates authenticate: no warning, but say what they let a holder do
        logger.info(
            "listening on %s with mutual TLS and no tokens: any holder of a certificate "
            "signed by %s may call every method",
            settings.host,
            settings.tls_client_ca,
        )
        return
    warning = exposure_warning(settings, tls=tls)
    if warning:
        logger.warning("%s", warning)


def exposure_warning(settings: Settings, *, tls: bool) -> str | None:
    """What to tell an operator whose server others can reach with nothing checking who
    calls (no TLS, or neither tokens nor client certificates), or None."""
    if is_loopback(settings.host):
        return None
    client_certificates = settings.tls_client_ca is not None
    missing = [name for name, on in (("TLS", tls), ("tokens", settings.tokens)) if not on]
    if not missing or (client_certificates and missing == ["tokens"]):
        return None
    where = _where(settings.host)
    if missing == ["TLS"]:  # tokens are checked, but cross the network in the clear
        return (
            f"listening on {where} with tokens but without TLS: each call carries its "
            "token in the clear, and anyone who can see the traffic can read it and call as "
            "its holder; turn TLS on (tls_cert, tls_key); see docs/production.md"
        )
    return (
        f"listening on {where} without {' and '.join(missing)}: anyone who can reach "
        "this port can use it; see docs/production.md"
    )


def demo_warning(settings: Settings) -> str | None:
    """What to tell an operator whose server others can reach and that pulls the synthetic
    demo conveyor, or None: a config of no ``[[cameras]]`` runs it, which the production
    example of the docs did, fake packages on every dashboard."""
    demos = [c.id for c in settings.cameras if c.source.startswith("demo:")]
    if not demos or is_loopback(settings.host):
        return None
    return (
        f"camera {', '.join(demos)}: the synthetic demo conveyor, on a server others can "
        "reach (a config without [[cameras]] runs it): list the real cameras, or set "
        "cameras = [] for none"
    )


def shared_source_warning(settings: Settings) -> str | None:
    """Cameras that read the same source (the same URL whatever its password, the same
    file, the same device), or None: a [[cameras]] block copied and given only a new id
    showed two live tiles of one picture, and the dock the second was meant for went
    unwatched with nothing said."""
    readers: dict[str, list[str]] = {}
    for camera in settings.cameras:
        try:
            spec = parse_source(camera.source)
        except ValueError:
            continue  # refused elsewhere
        if spec.kind == "file":
            where = f"file:{Path(spec.target).resolve()}"
        elif spec.kind == "device":
            where = f"device:{spec.device}"
        else:  # the user name and password aside, the URL as given
            parts = urlsplit(spec.target)
            with contextlib.suppress(ValueError):  # a port that is no number: as given
                host = f"{parts.hostname}:{parts.port or ''}"
                parts = parts._replace(scheme=parts.scheme.lower(), netloc=host, fragment="")
            where = urlunsplit(parts)
        readers.setdefault(where, []).append(camera.id)
    shared = [ids for ids in readers.values() if len(ids) > 1]
    if not shared:
        return None
    said = "; ".join(f"{', '.join(ids[:-1])} and {ids[-1]} read the same source" for ids in shared)
    return (
        f"cameras {said}: their tiles show one picture (was a [[cameras]] block copied and "
        "only its id changed?); point each at its own camera"
    )


def token_share_warning(settings: Settings) -> str | None:
    """Tokens without a max_calls beside others, or None: one client holding such a token
    may take every place of the server's limits, and the other tokens' clients (a dashboard
    among them) are then refused until it lets go (a security review's: 248 slow watches of
    one watch token kept every other client out)."""
    unbounded = [t.name for t in settings.tokens if t.max_calls is None]
    if len(settings.tokens) < 2 or not unbounded:
        return None
    said = (
        f"tokens {', '.join(unbounded)} have" if len(unbounded) > 1 else f"token {unbounded[0]} has"
    )
    return (
        f"{said} no max_calls: one client holding one may take every place of max_streams "
        f"({settings.max_streams}), max_watchers ({settings.max_watchers}) and "
        f"max_analyze_calls ({settings.max_analyze_calls}), and the other tokens' calls are "
        "then refused (RESOURCE_EXHAUSTED); give each token a max_calls "
        "(`convstream token --max-calls N`)"
    )


def metrics_exposure_warning(settings: Settings) -> str | None:
    """What to tell an operator whose metrics port others can reach, or None: it has no TLS
    nor tokens, and names every camera and client stream."""
    if settings.metrics_port < 0 or is_loopback(settings.metrics_host):
        return None
    return (
        f"metrics listen on {_where(settings.metrics_host)}, port {settings.metrics_port}, "
        "over plain HTTP with no tokens: anyone who can reach it reads every camera's id and "
        "state and the names clients give their frames; keep it on a private network, or a "
        "firewall rule for Prometheus alone"
    )


def _where(host: str) -> str:
    """The host as a warning names it: gRPC takes 0.0.0.0 (and ::) as every address of the
    machine, IPv6 ones too, which a firewall written for IPv4 alone leaves open."""
    if host.strip("[]") in ("0.0.0.0", "::"):
        return f"{host} (every IPv4 and IPv6 address of this machine)"
    return host


def _listen(
    server: grpc.aio.Server,
    settings: Settings,
    credentials: grpc.ServerCredentials | None,
    *,
    share_port: bool = False,
) -> int:
    """Bind the gRPC port; an OSError that says what to do when it cannot."""
    address = host_port(settings.host, settings.port)
    # Asked first, unless the port is shared (processes): gRPC's failure came with a line of
    # its C core's log ("E1206 ... add_port.cc:83] Failed to add port") above ours.
    why = None if share_port else bind_failure(settings.host, settings.port)
    if why is not None:
        raise OSError(f"cannot listen on {address}: {why}; choose another with --port or --host")
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises where it used to return 0
        port = 0
    if port == 0:
        # gRPC says only that it failed; ask the OS the same thing to tell a busy port or a
        # foreign address from gRPC's own refusal (logged above it), and blame the right one.
        why = bind_failure(settings.host, settings.port)
        if why is None:
            raise OSError(
                f"cannot listen on {address}: gRPC refused it though the address is free "
                "(its log line above says why)"
            )
        raise OSError(f"cannot listen on {address}: {why}; choose another with --port or --host")
    return port


_BIND_ERRORS = {
    errno.EADDRINUSE: "the port is in use (another convstream serve?)",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def bind_failure(host: str, port: int) -> str | None:
    """Why this machine cannot bind ``host:port`` (TCP), in words; None when it can. A name
    of several addresses (localhost: 127.0.0.1 and ::1) binds as gRPC binds it, where any of
    them can: one that is not this machine's (::1 in a container without IPv6) is passed
    over; one in use is not (gRPC would serve the other alone, and clients of the busy one
    would reach another server)."""
    try:
        found = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"the host does not resolve ({exc.strerror})"
    failures: list[int] = []
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as probe:
            # as gRPC does: a port whose last connections are in TIME_WAIT is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                failures.append(exc.errno or 0)
    told = [code for code in failures if code != errno.EADDRNOTAVAIL]
    if failures and (told or len(failures) == len(found)):
        code = (told or failures)[0]
        return _BIND_ERRORS.get(code, os.strerror(code) if code else "it cannot be bound")
    return None


async def serve(
    settings: Settings,
    reload: Callable[[], Settings] | None = None,
    peers: Peers | None = None,
    reload_asked: threading.Event | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain for the grace period and return.

    On SIGHUP, ``reload()`` loads the settings again and the cameras follow them. ``peers``:
    run as one of several processes of one server (processes.py). ``reload_asked``: set if a
    SIGHUP came while the server started (the caller's interim handler); it reloads once serving.
    """
    server = Server(settings, peers)
    # Taken before the start, not after: a SIGTERM just after "serving on" (a quick
    # `systemctl restart`) found no handler yet and killed the process undrained. One
    # during the start ends the start: nothing served, nothing to drain (waiting for the
    # start, then drain_delay_s and the grace period, took 11 s where it took 1).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            # (a model loading or warming up in a thread finishes first: it cannot be cut)
            logger.info("signal received while starting: stopped before serving")
        await starting  # its failure, or CancelledError for a stop during it
    except BaseException as exc:
        try:
            await server.stop(grace=0)  # nothing half-started is left to complain at exit
        except Exception:  # never hide why the start failed
            logger.exception("stopping after a failed start")
        if stop.is_set() and isinstance(exc, asyncio.CancelledError):
            return  # the start, cancelled by the signal: a stop, not a failure
        raise
    finally:
        stopping.cancel()
    tasks: set[asyncio.Task[None]] = set()

    async def on_hup() -> None:
        assert reload is not None
        try:
            await server.reload(reload())
        except ConfigError as exc:
            logger.error("reload refused, nothing changed: %s", exc)
            server.metrics.reloaded(False, None)  # the config did not load (or Server's)

    if reload is not None:

        def hup() -> None:
            task = asyncio.create_task(on_hup())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, hup)
        if reload_asked is not None and reload_asked.is_set():
            logger.info("reloading, as asked (SIGHUP) while the server started")
            hup()
    await stop.wait()
    if settings.drain_delay_s:
        logger.info(
            "signal received: NOT_SERVING, still taking calls for %.1f s, then draining for up "
            "to %.1f s",
            settings.drain_delay_s,
            settings.grace_period_s,
        )
    else:
        logger.info("signal received: draining for up to %.1f s", settings.grace_period_s)
    await server.stop()
    if server.peers is not None and server.peers.supervisor_gone():
        # Its SIGTERM came from the kernel (PR_SET_PDEATHSIG), not an operator: said so, or
        # the log read as an ordinary stop. Asked after the drain: as the signal comes, the
        # dying supervisor may still be this process's parent.
        logger.warning(
            "the supervisor (pid %d) is gone, killed or crashed: this process stopped with "
            "it; start the server again",
            server.peers.supervisor,
        )
