"""The dashboard's side of gRPC: one watch per camera, shared by every browser.

The hub polls ListCameras (cameras added or removed, states, rates), keeps one WatchCamera
call open per camera at a dashboard's pace (a few results per second, each with the frame and
its heatmap), keeps each camera's score history and raises alerts. It hands every message to
its subscribers without waiting for them: each subscriber (a browser connection) keeps only
what it can send, so a slow browser never slows the hub, the server or another browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np

from convstream.client._base import clean_token, keepalive
from convstream.client.connection_flags import refused_hint, unavailable_hint
from convstream.client.episodes import AlertDetector, Decision
from convstream.client.errors import is_name_mismatch
from convstream.client.results import Geometry
from convstream.client.tensors import to_numpy
from convstream.dashboard.alerts import (
    Alert,
    AlertLog,
    render_snapshot,
    snapshot_label,
)
from convstream.dashboard.messages import (
    camera_json,
    frame_message,
    model_json,
    peak_in_box,
    placement,
    quantise,
    seconds,
    text,
)
from convstream.dashboard.settings import DashboardSettings
from convstream.v1 import WATCHING, shortest_float32
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

# Results must not pile up in the HTTP/2 window behind a slow event loop: without BDP probing
# the window stays at 64 KiB, about one result with its frame, so what arrives is fresh.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
CHANNEL_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # as the client library's watches: a server gone silent is found within 25 s
    *keepalive(watch=True),
    # gRPC's own reconnect backoff grows to 120 s, and calls fail at once while it waits:
    # after a long outage the page went on saying the server was unreachable for up to two
    # minutes after it was back. Reconnects back off as the hub's polls do.
    ("grpc.initial_reconnect_backoff_ms", round(RETRY_MIN_S * 1000)),
    ("grpc.max_reconnect_backoff_ms", round(RETRY_MAX_S * 1000)),
]
OUTAGE_LOG_S = 5.0  # an unreachable server is logged once it has been so this long
REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # the token: asked again less often
# A watch refused for one of these stays refused until someone acts (the token's max_calls,
# its role, the server's max_watchers): its tile says "unwatched", whatever the camera does.
LASTING = (
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
)
CALL_TIMEOUT_S = 5.0
HEARTBEAT_S = 2.0  # a tick to every page, so that a page can tell a silent dashboard


class Subscriber(Protocol):
    """What the hub needs of a browser connection; offers must never block."""

    def offer_frame(self, camera: str, data: bytes) -> None: ...

    def offer_text(self, message: str, key: str | None = None) -> None: ...


@dataclass
class CameraView:
    """What the dashboard knows about one camera."""

    id: str
    status: dict[str, Any]
    history: deque[tuple[float, float]]
    last_frame: bytes | None = None
    frames_received: int = 0
    watch_error: str = ""
    refused: tuple[str, float] | None = None  # a lasting refusal of its watch, and since when
    # When its trouble began: the start of the first state other than running since it last
    # ran, kept through the states between (reconnecting, then failed; a reload restarting a
    # failed camera; the server restarting), which each start the server's state_since again
    down_since: float | None = None
    # the capture time of the first of its latest blank frames in a row (FrameResult.blank)
    blank_since: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Seen:
    """A result as an alert's snapshot needs it."""

    frame_id: int
    jpeg: bytes
    heat: Any
    box: tuple[int, int, int, int]
    stride: int
    when: float


class Hub:
    """Subscribes to the server once and fans its results out to subscribers.

    Args:
        settings: the dashboard's settings (address, pace, threshold, history, alerts).
    """

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.started = time.time()
        token = clean_token(settings.token)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.cameras: dict[str, CameraView] = {}
        self.alerts = AlertLog(
            settings.max_alerts, settings.alerts_dir, round(settings.alerts_max_mb * 1e6)
        )
        self.model: dict[str, Any] | None = None
        self.server: dict[str, Any] = {"ok": False, "error": "not connected yet"}
        self._down_since: float | None = None  # time.monotonic() the server was first missed
        self._logged_error = ""
        self._detector: AlertDetector[_Seen] = AlertDetector(
            settings.alert_cooldown_s, frames_over=settings.alert_frames
        )
        self._latest_alert: dict[str, int] = {}  # camera -> its latest alert's id
        # handled marks to write, by one task at a time (a page toggling a mark 3,000 times
        # in 2 s queued 387 writes)
        self._unsaved_marks: set[int] = set()
        self._mark_writer: asyncio.Task[None] | None = None
        self._subscribers: set[Subscriber] = set()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ConvstreamStub | None = None
        self._poller: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None
        self._model_threshold: float | None = None
        # the setting as a float32, as the server compares a score with its own (and the
        # page with this), once rather than at every result
        self._set_threshold = (
            None if settings.threshold is None else float(np.float32(settings.threshold))
        )
        # Frames sent to pages, numbered across cameras: a page draws a camera's frame only if
        # it is newer than the last it drew, and a camera removed and added again, whose own
        # count would start again, numbers on. (A page starts again at a new connection.)
        self._frames_sent = 0
        # Set when the server answers again after an outage: the watches waiting out their
        # backoff try again at once, rather than show RUNNING with no frame for seconds more.
        self._server_back = asyncio.Event()
        history_points = int(settings.history_s * settings.max_fps) + 16
        self._history_points = history_points

    @property
    def threshold(self) -> float | None:
        """The alert threshold in use: the setting, else the model's; None before it is known.
        As a float32, as the server compares a score with its own (and the page with this)."""
        if self._set_threshold is not None:
            return self._set_threshold
        return self._model_threshold

    async def start(self) -> None:
        tls = self.settings.tls
        if tls is not None:
            self._channel = grpc.aio.secure_channel(
                self.settings.address,
                tls.credentials(),
                options=[*CHANNEL_OPTIONS, *tls.channel_options()],
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                self.settings.address, options=CHANNEL_OPTIONS
            )
        self._stub = pb_grpc.ConvstreamStub(self._channel)
        self._poller = asyncio.create_task(self._poll(), name="dashboard-poll")
        self._beater = asyncio.create_task(self._beat(), name="dashboard-heartbeat")

    async def _beat(self) -> None:
        """A tick to every page each HEARTBEAT_S (coalesced, as the cameras' states are, for a
        page that reads slowly): its link's sign of life, apart from the news."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self._broadcast_text(text("tick"), key="tick")

    async def stop(self) -> None:
        if self._mark_writer is not None:  # a mark made just before SIGTERM is kept
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._mark_writer), 5.0)
        tasks = [view.task for view in self.cameras.values() if view.task is not None]
        tasks += [task for task in (self._poller, self._beater) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._channel is not None:
            await self._channel.close(grace=None)

    def subscribe(self, subscriber: Subscriber) -> dict[str, Any]:
        """Add a subscriber; returns the hello message's fields (no await in between, so the
        subscriber misses nothing between this snapshot and the messages that follow)."""
        self._subscribers.add(subscriber)
        for view in self.cameras.values():
            if view.last_frame is not None:
                subscriber.offer_frame(view.id, view.last_frame)
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The state a new page starts from: model, cameras, score histories, alerts."""
        return {
            "model": self.model,
            "server": self.server,
            "cameras": [view.status for view in self.cameras.values()],
            "history": {view.id: list(view.history) for view in self.cameras.values()},
            "history_s": self.settings.history_s,
            "alerts": [alert.to_json() for alert in self.alerts.recent()],
            "open_alerts": self.alerts.open_count,
            "contact": self.settings.contact,
            "time": time.time(),
            # a page that sees another start knows its list came from another dashboard run;
            # kept: whether this one's alerts outlive a restart (--alerts-dir)
            "started": self.started,
            "alerts_kept": self.settings.alerts_dir is not None,
        }

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def mark_handled(
        self, ids: list[int] | None, handled: bool, up_to: float | None, by: str
    ) -> None:
        """An operator marked alerts handled (or not): ``ids``, or every alert raised until
        ``up_to``. Every page is told (one list for every browser), and the marks are
        written with the alerts."""
        now = time.time()
        older = self.alerts.older_open
        if up_to is not None:
            changed = self.alerts.mark_all_handled(up_to, now)
        else:
            changed = self.alerts.mark_handled(ids or (), handled, now)
        if not changed and older == self.alerts.older_open:
            return  # nothing to tell, nor to write
        if changed:
            logger.info(
                "alert%s %s marked %s by the browser at %s",
                "s" if len(changed) > 1 else "",
                ", ".join(str(alert.id) for alert in changed),
                "handled" if handled or up_to is not None else "not handled",
                by,
            )
        marks = [{"id": alert.id, "handled": alert.handled} for alert in changed]
        self._broadcast_text(text("handled", alerts=marks, open=self.alerts.open_count))
        if self.alerts.directory is not None:
            self._unsaved_marks.update(alert.id for alert in changed)
            if self._mark_writer is None or self._mark_writer.done():
                self._mark_writer = asyncio.create_task(self._write_marks())

    async def _write_marks(self) -> None:
        """Write the marks made, and those made meanwhile, until none waits."""
        while True:
            ids, self._unsaved_marks = self._unsaved_marks, set()
            try:
                await asyncio.to_thread(self.alerts.save_marks, ids)
            except OSError as exc:  # a full disk: the pages have them; a restart forgets
                logger.warning("handled marks not written to %s: %s", self.alerts.directory, exc)
            if not self._unsaved_marks:
                return

    def _broadcast_text(self, message: str, key: str | None = None) -> None:
        for subscriber in list(self._subscribers):
            subscriber.offer_text(message, key)

    # -- ListCameras / GetModelInfo -------------------------------------------------------

    async def _poll(self) -> None:
        assert self._stub is not None
        while True:
            try:
                # Asked at every poll: a threshold a reload changes takes over the alerts within
                # one (asked every 10th, an alert 5 s after a reload still used the old one).
                info = await self._stub.GetModelInfo(
                    pb.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S, metadata=self._metadata
                )
                self._model_threshold = float(info.threshold)
                assert self.threshold is not None
                model = model_json(info, self.threshold)
                if model != self.model:
                    self.model = model
                    self._broadcast_text(text("model", model=self.model), key="model")
                response = await self._stub.ListCameras(
                    pb.ListCamerasRequest(), timeout=CALL_TIMEOUT_S, metadata=self._metadata
                )
                if not self.server["ok"]:
                    # at the level the outage was logged at, if it was: a log read at
                    # warning level ended on "unreachable" long after the server was back
                    if self._logged_error:
                        logger.warning("server %s: connected again", self.settings.address)
                    else:
                        logger.info("server %s: connected", self.settings.address)
                    self._server_back.set()
                    self._server_back = asyncio.Event()
                self.server = {"ok": True, "error": ""}
                self._down_since, self._logged_error = None, ""
                self._reconcile(response.cameras)
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                # Once an outage has lasted a few seconds (not while a server started beside
                # the dashboard comes up), and again when its cause changes.
                # gRPC's client-side check of the certificate's names is UNAUTHENTICATED too:
                # a TLS set-up to fix, not a token
                refused = exc.code().name in REFUSED and not is_name_mismatch(error)
                if refused:  # the server's own words are in error
                    hint = refused_hint(exc.code().name, token=bool(self._metadata), message=error)
                elif exc.code() == grpc.StatusCode.UNAVAILABLE or is_name_mismatch(error):
                    hint = unavailable_hint(error, self.settings.tls)
                elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # the likeliest sign of a network fault, which had no advice at all
                    hint = (
                        "the server did not answer in time: the network between the dashboard "
                        "and the server is down or slow, or the server is hung"
                    )
                else:
                    hint = ""
                if error != self._logged_error and (
                    refused or now - self._down_since >= OUTAGE_LOG_S
                ):
                    self._logged_error = error
                    logger.warning(
                        "server %s %s: %s%s",
                        self.settings.address,
                        "refuses the dashboard" if refused else "unreachable",
                        error,
                        f" ({hint})" if hint else "",
                    )
                # The server may come back with another model: ask again then.
                self.model = None
                self.server = {
                    "ok": False,
                    "error": error,
                    "refused": refused,
                    "hint": hint,
                    "address": self.settings.address,
                }
                # What the cameras were doing is no longer known: say so on every tile, and
                # show no rates or latency that are no longer true.
                for view in self.cameras.values():
                    view.status = {
                        **view.status,
                        "state": "offline",
                        "last_error": (
                            "the convstream server refuses this dashboard's token"
                            if self._metadata
                            else "the convstream server needs a token; this dashboard has none"
                        )
                        if refused
                        else "convstream server unreachable",
                        "fps_in": 0.0,
                        "fps_out": 0.0,
                        "latency_ms": 0.0,
                    }
            except Exception:  # a bug here must not freeze every tile: log it, poll again
                logger.exception("polling %s failed", self.settings.address)
            self._broadcast_text(
                text(
                    "cameras",
                    time=time.time(),
                    server=self.server,
                    cameras=[view.status for view in self.cameras.values()],
                ),
                key="cameras",
            )
            # A refused token stays refused until the server's config changes: ask less often.
            refused = bool(self.server.get("refused"))
            await asyncio.sleep(
                max(self.settings.poll_s, RETRY_MAX_S) if refused else self.settings.poll_s
            )

    def _reconcile(self, cameras: Any) -> None:
        seen = set()
        for camera in cameras:
            seen.add(camera.id)
            status = camera_json(camera)
            view = self.cameras.get(camera.id)
            if view is None:
                view = CameraView(
                    id=camera.id, status=status, history=deque(maxlen=self._history_points)
                )
                self.cameras[camera.id] = view
                view.task = asyncio.create_task(self._watch(view), name=f"watch-{camera.id}")
                logger.info("watching camera %s", camera.id)
            status["received"] = view.frames_received
            status["watch_error"] = view.watch_error
            if view.refused is not None:  # the camera may run: this dashboard cannot see it
                status["state"] = "unwatched"
                status["last_error"] = f"this dashboard cannot watch it: {view.refused[0]}"
                status["state_since"] = view.refused[1]
            if status["state"] == "running":
                view.down_since = None
            elif view.down_since is None:
                view.down_since = status["state_since"] or time.time()
            status["down_since"] = view.down_since
            status["blank_since"] = view.blank_since if status["last_blank"] else None
            view.status = status
        for camera_id in set(self.cameras) - seen:
            view = self.cameras.pop(camera_id)
            if view.task is not None:
                view.task.cancel()
            self._detector.forget(camera_id)
            self._latest_alert.pop(camera_id, None)
            logger.info("camera %s is gone", camera_id)

    def use_token(self, token: str) -> None:
        """Call the server with ``token`` from now on (the calls under way keep theirs, until
        the server ends those a revoked token no longer allows, and the tries after that
        use this one, within RETRY_MAX_S)."""
        self._metadata = (("authorization", f"Bearer {token}"),)

    # -- WatchCamera ----------------------------------------------------------------------

    async def _watch(self, view: CameraView) -> None:
        """Keep one watch open on the camera, again and again, with backoff between tries."""
        assert self._stub is not None
        request = pb.WatchCameraRequest(
            camera_id=view.id,
            options=pb.ResultOptions(
                include_heatmap=True,
                include_frame=True,
                encoding=pb.TENSOR_ENCODING_FLOAT16,
            ),
            max_fps=self.settings.max_fps,
            queue_size=self.settings.queue_size,
        )
        delay = RETRY_MIN_S
        while True:
            call = self._stub.WatchCamera(request, metadata=self._metadata)
            try:
                # Registered: said now, not with the first result. A camera that is down may
                # send none for hours, and its tile kept a refusal the server had since lifted.
                if any(key == WATCHING for key, _ in await call.initial_metadata() or ()):
                    self._watched(view)
                async for result in call:
                    delay = RETRY_MIN_S
                    self._watched(view)
                    await self._on_result(view, result)
                view.watch_error = "watch ended"
            except grpc.aio.AioRpcError as exc:
                # NOT_FOUND: removed (the next poll drops it) or not yet there after a reload;
                # UNAVAILABLE: the server is down or draining. Either way: try again later.
                view.watch_error = f"{exc.code().name}: {exc.details()}"
                if exc.code() in LASTING and not self.server.get("refused"):
                    self._refused(view, view.watch_error)
                else:
                    logger.debug("watch %s ended: %s", view.id, view.watch_error)
            except Exception as exc:  # a bad result must not end this camera's tile for good
                view.watch_error = f"{type(exc).__name__}: {exc}"
                logger.exception("watch %s failed", view.id)
            finally:
                call.cancel()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returned when the server's
            # return woke it in the step that cancelled this watch (its camera gone), and the
            # watch went on retrying for ever beside the new one.
            try:
                async with asyncio.timeout(delay * random.uniform(0.8, 1.2)):
                    await self._server_back.wait()
                delay = RETRY_MIN_S  # the server is back: a fresh start
            except TimeoutError:
                delay = min(delay * 2, RETRY_MAX_S)

    def _watched(self, view: CameraView) -> None:
        """The server took this camera's watch: whatever refused it before is over."""
        view.watch_error = ""
        if view.refused is not None:
            logger.warning("camera %s: watched again", view.id)
            view.refused = None

    def _refused(self, view: CameraView, error: str) -> None:
        """A lasting refusal of a camera's watch: logged once (until it is watched again)
        and shown on its tile, where the camera's own state would read "running"."""
        if view.refused is None:
            logger.warning(
                "camera %s: the server refuses this dashboard's watch, so its tile shows no "
                "frames and raises no alerts: %s",
                view.id,
                error,
            )
        view.refused = (error, view.refused[1] if view.refused else time.time())

    async def _on_result(self, view: CameraView, result: pb.FrameResult) -> None:
        if result.status.code != 0 or not result.frame_jpeg:
            return
        when = seconds(result.capture_time) or time.time()
        score = float(result.score)
        heat = None
        if result.heatmap.data:
            heat = quantise(to_numpy(result.heatmap).reshape(result.heatmap.shape[-2:]))
        box = Geometry.from_proto(result.geometry).content_box()
        stride = result.heatmap.stride or 8
        view.frames_received += 1
        view.blank_since = (view.blank_since or when) if result.blank else None
        # the score as the float32 it is, in its shortest decimal: 4 decimals made 0.89996 a
        # 0.9, over a threshold of 0.9 on a page opened later and not on the live one's
        view.history.append((round(when, 3), shortest_float32(score)))
        # history_s by time, not only by points: a camera analysed slower than max_fps would
        # otherwise keep minutes more, sent to every page that opens
        while view.history[0][0] < when - self.settings.history_s:
            view.history.popleft()
        self._frames_sent += 1
        header = {
            "camera": view.id,
            "frame_id": result.frame_id,
            # unrounded: the page compares it with the threshold, as the server does (4
            # decimals made 0.89996 a 0.9, damaged against a threshold of 0.9)
            "score": score,
            "time": when,
            "age_ms": round(result.frame_age_ms, 1),
            # The dashboard's clock when it came: a page shown this frame later (opened while
            # the server is down) tells its age by the same clock, whatever the server's is.
            "received": round(time.time(), 3),
            "box": list(box),
            "input": [result.geometry.input_width, result.geometry.input_height],
            "stride": stride,
            "peak": peak_in_box(result),
            # next to nothing to see (a covered lens, a black frame): the low score says
            # nothing; since when, for every page alike
            "blank": result.blank,
            "blank_since": view.blank_since,
            "n": self._frames_sent,
        }
        message = frame_message(header, heat, result.frame_jpeg)
        view.last_frame = message
        for subscriber in list(self._subscribers):
            subscriber.offer_frame(view.id, message)
        threshold = self.threshold
        if threshold is None:
            return
        seen = _Seen(result.frame_id, result.frame_jpeg, heat, box, stride, when)
        decision = self._detector.update(
            view.id, score, threshold, time.monotonic(), seen, placement=placement(result)
        )
        if decision is not None:
            await self._alert(view.id, decision, threshold)

    async def _alert(self, camera: str, decision: Decision[_Seen], threshold: float) -> None:
        """Raise a new alert, or give the camera's latest alert a better frame."""
        seen = decision.frame
        label = snapshot_label(camera, decision.score)
        try:
            snapshot = await asyncio.to_thread(
                render_snapshot, seen.jpeg, seen.heat, seen.box, seen.stride, label, threshold
            )
        except ValueError as exc:
            logger.warning("alert on %s without snapshot: %s", camera, exc)
            return
        alert: Alert | None
        if decision.kind == "raise":
            alert = self.alerts.add(
                camera,
                seen.when,
                decision.score,
                threshold,
                seen.frame_id,
                snapshot,
                decision.episodes,
            )
            self._latest_alert[camera] = alert.id
            more = (
                f" ({decision.episodes} episodes in the cooldown)" if decision.episodes > 1 else ""
            )
            logger.info(
                "alert %d: %s scored %.4f (threshold %.4g)%s",
                alert.id,
                camera,
                decision.score,
                threshold,
                more,
            )
        else:
            alert_id = self._latest_alert.get(camera)
            if alert_id is None:
                return
            alert = self.alerts.improve(
                alert_id, seen.when, decision.score, seen.frame_id, snapshot
            )
            if alert is None:
                return
        self._broadcast_text(text("alert", alert=alert.to_json(), open=self.alerts.open_count))
        try:
            await asyncio.to_thread(self.alerts.save, alert.id)
        except OSError as exc:  # a full disk must not stop the page's alerts
            logger.warning("alert %d not written to %s: %s", alert.id, self.alerts.directory, exc)
