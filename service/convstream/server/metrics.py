"""Prometheus metrics, one registry per server so several servers can live in one process."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable
from functools import lru_cache, partial

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from convstream.v1 import convstream_pb2 as pb
from convstream.v1.redaction import redact

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
MAX_SOURCES = 100  # distinct source labels; clients choose them, so cap the cardinality
_LABEL_OK = re.compile(r"[^A-Za-z0-9_.:-]")


@lru_cache(maxsize=1024)
def _label(name: str) -> str:
    """A source name as a metric label: a password in it hidden (a client may name its frames
    by a camera's URL: rtsp://admin:pw@cam/x became the label rtsp___admin_pw_cam_x on
    /metrics), unsafe characters as '_', at most 64 of them."""
    return _LABEL_OK.sub("_", redact(name))[:64] or "unnamed"


def _expiry(expiry_times: Callable[[], dict[str, float]], setting: str) -> float:
    return expiry_times().get(setting, math.nan)


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        # No `_created` gauge beside every counter and histogram: a series per series that
        # says when the process made it (process_start_time_seconds says that once), which
        # doubled what an operator sees and stores. Process-wide, as the library has it.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        # process_start_time_seconds, ... (Linux), and python_info: what an operator's
        # dashboards and alerts expect of every exporter, per process of the server.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.frames = Counter(
            "convstream_frames",
            "Frames handled, by source and outcome (ok, invalid, dropped, rejected, error)",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.blank_frames = Counter(
            "convstream_blank_frames",
            "Frames analysed that showed next to nothing (FrameResult.blank: a covered lens, a "
            "black or single-colour frame), by source; also counted as ok in convstream_frames",
            ["source"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "convstream_step_seconds",
            "Time per frame in each step (queue, decode, inference, encode, total)",
            ["step"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        # Per camera, what ListCameras' latency_ms (LATENCY in `convstream cameras`) says of
        # its latest frame, as a distribution: an alert on one camera's p95 needs it.
        self.camera_latency = Histogram(
            "convstream_camera_latency_seconds",
            "Per configured camera, a frame's time from read to result ready",
            ["camera"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "convstream_batch_size",
            "Frames per inference run",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=self.registry,
        )
        self.inference_threads = Histogram(
            "convstream_inference_threads",
            "onnxruntime threads per frame's run (1: side by side; more: a lone frame, wide)",
            buckets=(1, 2, 4, 8),
            registry=self.registry,
        )
        self.streams_in_flight = Gauge(
            "convstream_streams_in_flight", "Open StreamFrames calls", registry=self.registry
        )
        self.streams = Counter(
            "convstream_streams",
            "StreamFrames calls by how they ended (ok, cancelled, idle: no frame sent or no "
            "result read for stream_idle_timeout_s, rejected, error; a "
            "stream its client cancels may count as ok: gRPC does not always say)",
            ["outcome"],
            registry=self.registry,
        )
        self.watches = Counter(
            "convstream_watches",
            "WatchCamera calls by how they ended: ok (a published stream ended), cancelled "
            "(the client left, or a reload's token change ended it), or the status they ended "
            "with (not_found, failed_precondition, unavailable, invalid_argument, "
            "resource_exhausted, ...); counted by the process the client called; the token "
            "check's refusals are convstream_auth_refusals_total",
            ["outcome"],
            registry=self.registry,
        )
        self.calls_refused = Counter(
            "convstream_calls_refused",
            "Analyze and WatchCamera calls refused with RESOURCE_EXHAUSTED at a limit "
            "(max_analyze_calls or a host's share of it, max_watchers), by method; StreamFrames "
            'calls refused so are convstream_streams_total{outcome="rejected"}',
            ["method"],
            registry=self.registry,
        )
        self.auth_refusals = Counter(
            "convstream_auth_refusals",
            "Calls refused by the token check, by method and reason (unauthenticated: no "
            "valid token; permission_denied: a token whose role does not allow the method; "
            "resource_exhausted: a token with its max_calls open already)",
            ["method", "reason"],
            registry=self.registry,
        )
        self.token_calls = Counter(
            "convstream_token_calls",
            "Calls each token let in, by method and token name (a server with tokens); its "
            "streams and camera watches are also logged once open 10 s, and as they end",
            ["method", "token"],
            registry=self.registry,
        )
        self.provider = Gauge(
            "convstream_execution_provider",
            "1 for the onnxruntime execution provider in use",
            ["provider", "requested"],
            registry=self.registry,
        )
        self.model = Gauge(
            "convstream_model_info",
            "1 for the model file served: its name and sha256 (several processes serving "
            "different files show as two series)",
            ["name", "sha256"],
            registry=self.registry,
        )
        self.threshold = Gauge(
            "convstream_threshold",
            "the score from which a frame is damaged (the model's own, or the threshold "
            "setting; a reload may change it)",
            registry=self.registry,
        )
        # As Prometheus's own prometheus_config_last_reload_successful: a reload refused (or
        # partly kept) was an ERROR line in the log and nothing an alert could read.
        self.reload_successful = Gauge(
            "convstream_config_last_reload_successful",
            "1 if the last reload (SIGHUP) applied its config, 0 if it refused it or kept part "
            "of it as before because it could not apply it (a config that does not parse, TLS "
            "files or a model that do not load, a config without the tokens there were): the "
            "log says why. Settings only a restart applies (the port) are in "
            "restart_pending instead. 1 from the start",
            registry=self.registry,
        )
        self.reload_success_time = Gauge(
            "convstream_config_last_reload_success_timestamp_seconds",
            "Unix time the config was last applied: the start, or the last reload that applied it",
            registry=self.registry,
        )
        self.restart_pending = Gauge(
            "convstream_config_restart_pending",
            "1 while the config last read changes settings a reload does not apply (port, "
            "processes, TLS on or off, ...: the log names them): the next restart applies them",
            registry=self.registry,
        )
        # What the in-flight gauges fill up against, so an alert on saturation needs no
        # number copied from the config (per process: each has the whole of its own)
        self.limits = Gauge(
            "convstream_limit",
            "The admission limits in force, by setting: max_streams, max_analyze_calls, "
            "max_watchers, max_queued_frames, max_held_bytes, max_watcher_bytes",
            ["setting"],
            registry=self.registry,
        )
        self.build = Gauge(
            "convstream_build_info",
            "1, labelled with the server's version",
            ["version"],
            registry=self.registry,
        )
        self.reload_successful.set(1)
        self.reload_success_time.set_to_current_time()
        self._sources: set[str] = set()
        self._cameras: frozenset[str] = frozenset()  # the configured cameras' labels
        self._lock = threading.Lock()
        # The refusals and endings an alert watches for are 0 from the start: a series that
        # first appears at 11 (a burst of refusals) reads to rate() and increase() as none.
        for outcome in ("ok", "cancelled", "idle", "rejected", "error"):
            self.streams.labels(outcome)
        for outcome in (
            "ok",
            "cancelled",
            "idle",
            "error",
            "not_found",
            "unavailable",
            "resource_exhausted",
        ):
            self.watches.labels(outcome)
        for method in ("Analyze", "WatchCamera"):
            self.calls_refused.labels(method)
        for outcome in ("ok", "rejected", "invalid", "dropped", "error"):
            self.frames.labels(self.client_source(""), outcome)

    def watch_budgets(
        self,
        frames: Callable[[], float],
        held: Callable[[], float],
        analyze_calls: Callable[[], float],
        watchers: Callable[[], float],
        watcher_bytes: Callable[[], float],
    ) -> None:
        """Gauges of what the open calls take of the admission limits, read at scrape time:
        an operator could not see max_queued_frames, max_held_bytes, max_analyze_calls or
        max_watchers fill up."""
        Gauge(
            "convstream_analyze_in_flight",
            "Open Analyze calls (max_analyze_calls at most)",
            registry=self.registry,
        ).set_function(analyze_calls)
        Gauge(
            "convstream_watchers",
            "Open WatchCamera calls, of cameras and published streams alike (max_watchers at "
            "most; convstream_camera_watchers has each configured camera's)",
            registry=self.registry,
        ).set_function(watchers)
        Gauge(
            "convstream_watcher_bytes_held",
            "Bytes of results waiting for the open WatchCamera calls (max_watcher_bytes at "
            "most, and each call's newest result)",
            registry=self.registry,
        ).set_function(watcher_bytes)
        Gauge(
            "convstream_stream_frames_reserved",
            "Frames the open streams reserve for their queues (max_queued_frames at most)",
            registry=self.registry,
        ).set_function(frames)
        Gauge(
            "convstream_stream_bytes_held",
            "Bytes of frames the open streams hold, waiting or in analysis (max_held_bytes "
            "at most)",
            registry=self.registry,
        ).set_function(held)

    def watch_tls(self, expiry_times: Callable[[], dict[str, float]]) -> None:
        """A gauge of when the TLS files served now expire, read at scrape time (a reload
        that rotates them moves it): ``expiry_times()`` by setting, tls_cert and
        tls_client_ca."""
        gauge = Gauge(
            "convstream_tls_expiry_timestamp_seconds",
            "Unix time the TLS files served now stop working, by setting: tls_cert, when the "
            "server's certificate expires; tls_client_ca, when the last of its CAs does. "
            "Alert when it is less than 14 days away",
            ["setting"],
            registry=self.registry,
        )
        for setting in expiry_times():
            gauge.labels(setting).set_function(partial(_expiry, expiry_times, setting))

    def set_limits(self, limits: dict[str, int]) -> None:
        """The admission limits in force (at start; a reload does not change them)."""
        for setting, value in limits.items():
            self.limits.labels(setting).set(value)

    def reloaded(self, ok: bool, pending: Iterable[str] | None) -> None:
        """A reload's outcome: ``ok``, it applied the config read; ``pending``, the settings
        it read that only a restart applies (None: not known, the config was refused)."""
        self.reload_successful.set(ok)
        if ok:
            self.reload_success_time.set_to_current_time()
        if pending is not None:
            self.restart_pending.set(bool(list(pending)))

    def set_cameras(self, camera_ids: Iterable[str]) -> None:
        """The configured cameras (at start and on each reload): their labels are theirs
        alone, and never fall under the cap on client-chosen names."""
        self._cameras = frozenset(_label(i) for i in camera_ids)

    def forget_camera(self, camera_id: str) -> None:
        """A camera removed from the config, or moved to another process of this server: its
        ``convstream_frames_total``, ``convstream_blank_frames_total`` and
        ``convstream_camera_latency_seconds`` series go from here,
        as its ``convstream_camera_*`` series do (a series that stays reads as a camera still
        there, frozen). A camera id that comes back starts from 0, a counter reset to
        Prometheus."""
        self.frames.remove_by_labels({"source": _label(camera_id)})
        self.blank_frames.remove_by_labels({"source": _label(camera_id)})
        self.camera_latency.remove_by_labels({"camera": _label(camera_id)})

    def source(self, name: str) -> str:
        """A bounded, sanitised label for a source name."""
        label = _label(name)
        if label in self._cameras:
            return label
        with self._lock:
            if label in self._sources:
                return label
            if len(self._sources) >= MAX_SOURCES:
                return "other"
            self._sources.add(label)
        return label

    def client_source(self, name: str) -> str:
        """The source label of frames a client sends (Analyze, StreamFrames): ``source(name)``,
        but a name whose label is a configured camera's is counted as "client:<name>" (a
        camera id never holds ':'), so that a camera's figures count only its own frames."""
        if _label(name) in self._cameras:
            name = f"client:{name}"
        return self.source(name)

    def observe_result(self, source: str, timings: pb.Timings, blank: bool) -> None:
        """Record an analysed frame: its timings, and whether it was blank."""
        self.frames.labels(self.source(source), "ok").inc()
        if blank:
            self.blank_frames.labels(self.source(source)).inc()
        for step in ("queue", "decode", "inference", "encode", "total"):
            self.step_seconds.labels(step).observe(getattr(timings, f"{step}_ms") / 1000)
        self.batch_size.observe(timings.batch_size)
        self.inference_threads.observe(timings.inference_threads)
