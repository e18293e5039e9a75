"""The server's cameras: start, stop and replace them from config, list them, watch them.

A watchdog task runs every quarter second: it lets each camera notice a stall or a wedged
read, and mirrors each camera's state into health (``convstream.camera.<id>``: SERVING while
frames flow, NOT_SERVING otherwise; the server's own health is not affected) and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator
from functools import partial

import numpy as np
from grpc_health.v1 import health, health_pb2
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from convstream.server.budget import ByteBudget
from convstream.server.camera import STATE_NAMES, Camera, Opener
from convstream.server.config import CameraConfig
from convstream.server.errors import (
    ConvstreamError,
    Draining,
    InvalidOptions,
    NameTaken,
    NotFound,
    Overloaded,
    PermissionDenied,
)
from convstream.server.feeds import (
    CameraFeed,
    Publisher,
    StreamPublication,
    Watcher,
)
from convstream.server.metrics import Metrics
from convstream.server.pipeline import Options, Pipeline, check_without_stream
from convstream.server.security import SCOPE, cameras_shown, scope_text, visible
from convstream.server.sources import open_source
from convstream.v1 import (
    CAMERA_ID,
    CAMERA_ID_RULE,
    MAX_QUEUE_SIZE,
    MAX_WATCH_FPS,
    SHUTTING_DOWN,
    folded_id,
)
from convstream.v1 import convstream_pb2 as pb
from convstream.v1.redaction import redact

logger = logging.getLogger(__name__)

WATCHDOG_S = 0.25
HEALTH_PREFIX = "convstream.camera."


class CameraManager:
    """Owns one Camera and one CameraFeed per configured camera."""

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: Metrics,
        health_servicer: health.aio.HealthServicer,
        *,
        watcher_queue_size: int = 2,
        max_watchers: int = 256,
        max_watcher_bytes: int = 256 << 20,
        opener: Opener = open_source,
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.health = health_servicer
        self.watcher_queue_size = watcher_queue_size
        self.max_watchers = max_watchers
        # results waiting for watches: a watch that stopped reading kept up to its queue_size
        # (1024) of them, 8.8 MB each with every stage in float32 and the frame, and took the
        # server's memory at 44 MB a second. One watch keeps at most a quarter, and none past
        # the limit, but always its newest result; a result shared by several watches counts
        # once for each.
        self.result_bytes = ByteBudget(max_watcher_bytes)
        self.feeds: dict[str, CameraFeed] = {}
        self.published: dict[str, StreamPublication] = {}
        self._opener = opener
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state_changed = asyncio.Event()  # a camera changed state: publish its health
        self._health_state: dict[str, int] = {}
        # configured cameras that another process of this server pulls (processes.py): their
        # ids are not free for a client stream to publish under
        self.elsewhere: frozenset[str] = frozenset()
        # One change of the cameras at a time: two reloads close together (SIGHUP starts each
        # its own task) would otherwise interleave at their awaits, and the server stopping
        # waits for a reload in progress.
        self._changing = asyncio.Lock()
        metrics.registry.register(self)  # a collector: camera figures are read at scrape time

    async def start(self, configs: tuple[CameraConfig, ...]) -> None:
        self._loop = asyncio.get_running_loop()
        await self.apply(configs)
        self._watchdog = asyncio.create_task(self._watch_loop(), name="camera-watchdog")

    async def apply(self, configs: tuple[CameraConfig, ...]) -> None:
        """Make the running cameras match ``configs``: add, remove, restart the changed ones
        and the ones that failed or stopped (a reload is how an operator says "try again":
        the file is back, the device plugged in), and have the ones waiting to reconnect try
        at once; but not an unchanged camera whose user name or password was refused, until
        its CREDENTIALS_RETRY_S have passed (Camera.refused_wait_s).

        Watchers of a changed camera stay attached to it; watchers of a removed one end
        with NOT_FOUND.
        """
        async with self._changing:
            await self._apply(configs)

    async def _apply(self, configs: tuple[CameraConfig, ...]) -> None:
        wanted = {c.id: c for c in configs}
        self.metrics.set_cameras([*wanted, *self.elsewhere])  # every process's cameras
        for camera_id in self.elsewhere:
            self._take_over(camera_id)
        # The new feeds made first, before anything changes: one that cannot be made (a
        # thread, a source) leaves the cameras as they were.
        changes: list[tuple[str, CameraFeed | None, CameraFeed]] = []
        for camera_id, config in wanted.items():
            old = self.feeds.get(camera_id)
            down = old.down() if old is not None else None
            replaced = old is not None and old.camera.file_changed()
            if old is not None and old.camera.config == config and not replaced:
                if wait := old.camera.refused_wait_s(time.monotonic()):
                    # a reload does not mend a refused password; a try at each one would
                    # lock the camera's account
                    failed = old.camera.state == pb.CAMERA_STATE_FAILED
                    logger.info(
                        "camera %s: its user name or password was refused and its config is "
                        "unchanged, so this reload does not try it again (wrong passwords "
                        "tried often lock many cameras' accounts); %s in %.0f s, or at once "
                        "when a reload changes its URL",
                        camera_id,
                        "a reload may restart it" if failed else "it is tried again",
                        wait,
                    )
                    continue
                if down is None:
                    if old.camera.state == pb.CAMERA_STATE_RECONNECTING:
                        old.camera.retry_now()  # "try again", as for one that failed
                    continue
                if old.camera.ended:  # a clip played to its end is no trouble to retry:
                    continue  # replayed at every reload, it raised its alerts again
            if (
                old is not None
                and down is None
                and not replaced
                and _analysis_only(old.camera.config, config)
            ):
                old.retune(config)
                logger.info(
                    "camera %s: now analysed at %s, %s (its source kept open)",
                    camera_id,
                    f"{config.fps:g} frames/s at most" if config.fps else "every frame",
                    f"input {config.input_size}"
                    if config.input_size
                    else "the input its frames' shape picks",
                )
                continue
            feed = CameraFeed(Camera(config, self._opener), self.pipeline, self.metrics)
            feed.camera.on_change = self._wake_watchdog
            changes.append((camera_id, old, feed))
        removed = [(i, self.feeds.pop(i)) for i in list(self.feeds) if i not in wanted]
        for camera_id, old, feed in changes:
            if old is not None:
                # The watchers move, and the new feed takes the id, before the old one stops:
                # a watch that ends while it stops leaves the feed it is in (one that left the
                # old feed's copy stayed on the new one for good), and one that starts then
                # joins the new feed rather than ending with the old.
                feed.watchers.update(old.hand_over())
            else:
                self._take_over(camera_id)  # no await before the feed takes the name
            self.feeds[camera_id] = feed
        # Every old reader stopped, side by side, before any new one starts: a stop waits up
        # to 3 s for a reader blocked in its open (a dead switch), one after another 3 s a
        # camera; and a USB camera, or an RTSP camera that takes one client, opens once at a
        # time, which a reload may move from one camera to another.
        await asyncio.gather(
            *(self._remove(camera_id, feed) for camera_id, feed in removed),
            *(self._stop_old(camera_id, old) for camera_id, old, _ in changes if old),
        )
        for camera_id, old, feed in changes:
            if old is not None:
                feed.carry_totals(old)
                if old.camera.config != feed.camera.config:
                    why = "changed"
                elif old.camera.file_changed():
                    why = "has a new video file"
                else:
                    why = "was down"
                logger.info("camera %s %s; restarting it", camera_id, why)
            else:
                logger.info("camera %s added (%s source)", camera_id, feed.camera.spec.kind)
            try:
                feed.start()
            except Exception:  # the others start all the same; a reload tries it again
                logger.exception("camera %s: its reader did not start", camera_id)

    async def _remove(self, camera_id: str, feed: CameraFeed) -> None:
        moved = camera_id in self.elsewhere
        try:
            if moved:
                await feed.stop(
                    Draining(
                        f"camera {camera_id!r} moved to another process of this server; "
                        "watch it again"
                    )
                )
            else:
                await feed.stop(NotFound(f"camera {camera_id!r} was removed from the config"))
        except Exception:  # the reload goes on: the others change all the same
            logger.exception("camera %s: stopping its reader failed", camera_id)
        self.metrics.forget_camera(camera_id)  # removed, or counted by the other process
        if moved:
            logger.info("camera %s moved to another process of this server", camera_id)
        else:
            logger.info("camera %s removed", camera_id)
        await self._forget(camera_id)

    async def _stop_old(self, camera_id: str, old: CameraFeed) -> None:
        """Stop a changed or failed camera's old feed; its new one starts after."""
        try:
            await old.stop(Draining("camera restarting"))
        except Exception:  # the new reader starts all the same
            logger.exception("camera %s: stopping its old reader failed", camera_id)

    def _take_over(self, camera_id: str) -> None:
        """A configured camera's id, or a name that reads as it, is not free for a client
        stream (publish refuses it), also when the config names the camera after a stream
        took it: the stream goes on unpublished, and its watchers, told to watch again, find
        the camera (two cameras of one id were listed, and the dashboard showed one's state
        beside the other's frames)."""
        for name in [n for n in self.published if folded_id(n) == folded_id(camera_id)]:
            publication = self.published.pop(name)
            publication.taken_over = True
            was = "is now" if name == camera_id else f"reads as the camera {camera_id!r}, now"
            publication.end_watchers(
                Draining(f"{name!r} {was} a configured camera, not a client stream: watch it again")
            )
            logger.warning(
                "camera %s configured: the client stream published as %s is no longer "
                "published (its frames are still analysed)",
                camera_id,
                name,
            )

    async def stop(self) -> None:
        """Stop every camera; open WatchCamera calls end with UNAVAILABLE."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        async with self._changing:
            feeds, self.feeds = list(self.feeds.values()), {}
            await asyncio.gather(*(f.stop(Draining(SHUTTING_DOWN)) for f in feeds))

    def end_watchers(self, error: ConvstreamError) -> None:
        """End every WatchCamera call with ``error``; the cameras keep running."""
        for publisher in [*self.feeds.values(), *self.published.values()]:
            publisher.end_watchers(error)

    def publish(self, name: str) -> StreamPublication:
        """Register a client stream under ``name``; InvalidOptions if it is no name,
        PermissionDenied if the call's token may not see it, NameTaken if it is not free."""
        if not re.fullmatch(CAMERA_ID, name):
            raise InvalidOptions(
                f"a published stream needs a source name of {CAMERA_ID_RULE}, got "
                f"{redact(name[:80])!r}"
            )
        # A token scoped to some cameras put frames, tiles and alerts on other tokens'
        # dashboards under any name, and a taken name's refusal told it what it may not see.
        # Refused before anything is looked up, so alike whether the name is taken or not.
        token = SCOPE.get()
        if token is not None and not token.may_see(name):
            raise PermissionDenied(
                f"token {token.name!r} may publish under the names of its cameras "
                f"{scope_text(token)} only (its cameras in the server's config), not {name!r}: "
                "this frame was not analysed, and the stream goes on unpublished"
            )
        if name in self.feeds or name in self.published or name in self.elsewhere:
            what = "another stream" if name in self.published else "a configured camera"
            raise NameTaken(
                f"source {name!r} is already published by {what}: this frame was not analysed, "
                "and the stream goes on unpublished; give its frames another source name to "
                "publish it"
            )
        # A name that reads as a camera's ("Dock_RTSP" beside the camera "dock-rtsp") would
        # put a client's frames on the dashboard as that camera's, to an operator's eye; as
        # another stream's ("Belt.Y" beside "belt-y"), two tiles no one could tell apart.
        names = [*((c, "configured camera") for c in (*self.feeds, *self.elsewhere))]
        names += [(n, "published stream") for n in self.published]
        like = next(((n, what) for n, what in names if folded_id(n) == folded_id(name)), None)
        if like is not None:
            # not named to a token that may not see it
            shown = f"the {like[1]} {like[0]!r}" if visible(like[0]) else f"a {like[1]}'s name"
            raise NameTaken(
                f"source {name!r} reads as {shown} (names are compared "
                "without case, '-', '_' or '.', and with 0 as o and 1 and i as l): this frame "
                "was not analysed, and the stream goes on unpublished; give its frames a name "
                "of their own to publish"
            )
        publication = StreamPublication(name, self.pipeline, self.metrics)
        self.published[name] = publication
        logger.info("stream %s published", name)
        return publication

    def unpublish(self, publication: StreamPublication) -> None:
        if self.published.get(publication.name) is publication:
            del self.published[publication.name]
            publication.end_watchers(None)  # the watches end OK: nothing failed
            logger.info("stream %s no longer published", publication.name)

    def holds(self, camera_id: str) -> bool:
        """Whether this process pulls the camera or has a client stream published under it."""
        return camera_id in self.feeds or camera_id in self.published

    def check_watch(self, request: pb.WatchCameraRequest) -> Options:
        """A WatchCamera request's options, or InvalidOptions: checked before its camera is
        looked for, so a bad request is INVALID_ARGUMENT whatever camera it names (it was
        NOT_FOUND for an unknown one, INVALID_ARGUMENT once the camera existed)."""
        options = Options.parse(request.options)
        check_without_stream(request.options, "WatchCamera")
        if request.queue_size > MAX_QUEUE_SIZE:
            raise InvalidOptions(
                f"queue_size must be 0 (the server's default, {self.watcher_queue_size}) to "
                f"{MAX_QUEUE_SIZE}, got {request.queue_size}"
            )
        if not 0 <= request.max_fps <= MAX_WATCH_FPS:  # NaN fails this too
            raise InvalidOptions(
                f"max_fps must be 0 (every analysed frame) to {MAX_WATCH_FPS:g} results per "
                f"second, got {np.float32(request.max_fps)}"
            )
        return options

    def watch(self, camera_id: str, request: pb.WatchCameraRequest) -> Watcher:
        """A new watcher of a camera; InvalidOptions, NotFound, CameraDown (it FAILED or
        STOPPED) or Overloaded when it can't be."""
        options = self.check_watch(request)
        feed: Publisher | None = self.feeds.get(camera_id) or self.published.get(camera_id)
        if feed is None and not re.fullmatch(CAMERA_ID, camera_id):
            raise InvalidOptions(
                f"camera_id must be the id of a camera in the server's config ({CAMERA_ID_RULE}"
                f"), never a URL, a path or a device; got {redact(camera_id[:80])!r}"
            )
        if feed is None:
            known = cameras_shown(sorted([*self.feeds, *self.published]))
            raise NotFound(f"no camera {camera_id!r}; cameras: {known}")
        if isinstance(feed, CameraFeed) and (down := feed.down()) is not None:
            raise down
        open_now = self.watchers_open()
        if open_now >= self.max_watchers:
            raise Overloaded(
                f"{open_now} WatchCamera call{'s' * (open_now != 1)} open, the limit is "
                f"{self.max_watchers}; "
                "retry later or raise max_watchers"
            )
        if self.over_result_bytes():
            held, limit = self.result_bytes.held, self.result_bytes.limit
            raise Overloaded(
                f"the results held for watches ({held / 2**20:.0f} MiB) are over "
                f"max_watcher_bytes ({limit / 2**20:.0f} MiB): watches that do not read their "
                "results hold them (while so, those are ended after seconds unread); retry later, "
                "ask for fewer or smaller maps, or raise max_watcher_bytes"
            )
        capacity = request.queue_size or self.watcher_queue_size
        watcher = Watcher(
            camera_id,
            options,
            request.max_fps,
            capacity,
            self.result_bytes,
            on_drop=partial(self._count_watcher_drop, camera_id),
        )
        feed.watchers.add(watcher)
        return watcher

    def over_result_bytes(self) -> bool:
        """Whether the results held for watches are over max_watcher_bytes: then no new
        watch is let in, and watches that read none of theirs are ended sooner."""
        return self.result_bytes.held > self.result_bytes.limit

    def _count_watcher_drop(self, camera_id: str) -> None:
        """A watcher of ``camera_id`` let a result go: counted on its feed now (a reload that
        restarts the camera moves its watchers to a new feed)."""
        feed: Publisher | None = self.feeds.get(camera_id) or self.published.get(camera_id)
        if feed is not None:
            feed.watcher_drops += 1

    def watchers_open(self) -> int:
        """Open WatchCamera calls, of cameras and published streams alike."""
        return sum(len(f.watchers) for f in [*self.feeds.values(), *self.published.values()])

    def unwatch(self, watcher: Watcher) -> None:
        feed = self.feeds.get(watcher.camera_id) or self.published.get(watcher.camera_id)
        if feed is not None:
            feed.watchers.discard(watcher)
        watcher.release()

    def statuses(self) -> list[pb.CameraStatus]:
        now = time.monotonic()
        return [p.status(now) for p in [*self.feeds.values(), *self.published.values()]]

    async def _watch_loop(self) -> None:
        """Each camera's stall and wedge checks and its health, every WATCHDOG_S and at each
        change of a camera's state. A check that raises is logged and the loop goes on: it
        ended without a word, and with it every camera's checks, and stop() re-raised it at
        shutdown. Logged once, with its traceback, until that camera's checks pass again
        (then at debug level: a check that fails every time would log four tracebacks a
        second)."""
        failing: set[str] = set()
        while True:
            now = time.monotonic()
            for feed in list(self.feeds.values()):
                camera_id = feed.camera.config.id
                try:
                    feed.camera.check(now)
                    await self._publish_health(feed)
                except Exception:
                    level = logging.DEBUG if camera_id in failing else logging.ERROR
                    logger.log(
                        level, "camera %s: its watchdog check failed", camera_id, exc_info=True
                    )
                    failing.add(camera_id)
                else:
                    if camera_id in failing:
                        failing.discard(camera_id)
                        logger.warning("camera %s: its watchdog checks pass again", camera_id)
            # A camera's health changes with its state, at once: a client that had a
            # camera's first result and then asked its health heard NOT_SERVING for up to
            # WATCHDOG_S (a supervisor's test met it on CI).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCHDOG_S):
                    await self._state_changed.wait()
            self._state_changed.clear()

    def _wake_watchdog(self) -> None:
        """A camera changed state (on its reader thread, or this loop's)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
                self._loop.call_soon_threadsafe(self._state_changed.set)

    async def _publish_health(self, feed: CameraFeed) -> None:
        """A camera's state as its health, once changed; its watchers ended if it is down."""
        cam = feed.camera
        camera_id = cam.config.id
        if self._health_state.get(camera_id) != cam.state:
            self._health_state[camera_id] = cam.state
            flowing = cam.state in (pb.CAMERA_STATE_RUNNING, pb.CAMERA_STATE_STALLED)
            status = health_pb2.HealthCheckResponse
            await self.health.set(
                HEALTH_PREFIX + camera_id, status.SERVING if flowing else status.NOT_SERVING
            )
            # Its watchers would wait for frames that will not come: tell them why instead.
            if (down := feed.down()) is not None:
                feed.end_watchers(down)
            elif feed.trouble() is not None:
                # it may come back: each watch goes on, told (a program's loop over its
                # results just waited, with no word, for a camera that went down)
                feed.tell_watchers()

    async def _forget(self, camera_id: str) -> None:
        self._health_state.pop(camera_id, None)
        await self.health.set(
            HEALTH_PREFIX + camera_id, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        )

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector: each camera's state, rates and totals, read at scrape time."""
        now = time.monotonic()
        state = GaugeMetricFamily(
            "convstream_camera_state",
            "1 for each camera's current state",
            labels=["camera", "state"],
        )
        fps = GaugeMetricFamily(
            "convstream_camera_fps",
            "Frames per second lately: read from the source (in) and analysed (out)",
            labels=["camera", "direction"],
        )
        frames = CounterMetricFamily(
            "convstream_camera_frames",
            "Camera frames read, analysed, dropped (superseded before analysis while it was "
            "busy), skipped (passed over by design: superseded before the fps cap let it be "
            "analysed, or in a burst before the free analysis took it) and invalid (could not "
            "be analysed: not a whole JPEG, or one that did not decode)",
            labels=["camera", "outcome"],
        )
        reconnects = CounterMetricFamily(
            "convstream_camera_reconnects", "Reconnect attempts per camera", labels=["camera"]
        )
        watchers = GaugeMetricFamily(
            "convstream_camera_watchers", "Open WatchCamera calls per camera", labels=["camera"]
        )
        last_result = GaugeMetricFamily(
            "convstream_camera_last_result_timestamp_seconds",
            "Unix time of the camera's latest result (a frame read and analysed), or, before "
            "its first, of when the server began pulling it. time() minus it is how long its "
            "watchers have had nothing new, down, frozen, stopped or sending frames that "
            "cannot be analysed alike",
            labels=["camera"],
        )
        watcher_drops = CounterMetricFamily(
            "convstream_camera_watcher_drops",
            "Results of a camera its watchers let go unread: a watch's queue (queue_size) or "
            "max_watcher_bytes dropped its oldest, its client reading slower than they came",
            labels=["camera"],
        )
        for feed in list(self.feeds.values()):
            cam = feed.camera
            cid = cam.config.id
            for code, name in STATE_NAMES.items():
                state.add_metric([cid, name], 1 if cam.state == code else 0)
            fps_in, fps_out = feed.rates(now)
            fps.add_metric([cid, "in"], fps_in)
            fps.add_metric([cid, "out"], fps_out)
            frames.add_metric([cid, "read"], cam.frames_read)
            frames.add_metric([cid, "analysed"], feed.frames_analysed)
            frames.add_metric([cid, "dropped"], cam.frames_dropped)
            frames.add_metric([cid, "skipped"], cam.frames_skipped)
            frames.add_metric([cid, "invalid"], cam.frames_invalid)
            reconnects.add_metric([cid], cam.reconnects)
            watchers.add_metric([cid], len(feed.watchers))
            watcher_drops.add_metric([cid], feed.watcher_drops)
            last_result.add_metric([cid], feed.last_result_time or feed.pulled_since)
        yield from (state, fps, frames, reconnects, watchers, watcher_drops, last_result)


ANALYSIS_ONLY = ("fps", "input_size")  # camera settings that do not touch its source


def _analysis_only(old: CameraConfig, new: CameraConfig) -> bool:
    """Whether two configs of a camera differ only in what its analysis does."""
    keep = {name: getattr(old, name) for name in ANALYSIS_ONLY}
    return new.model_copy(update=keep) == old
