"""One server-pulled camera: a reader thread that keeps only the newest frame, and its state.

The reader reads as fast as the source gives frames, always, whatever the analysis rate: a
source that is read slowly buffers (in FFmpeg, in the kernel's socket buffer) and every frame
after that comes out late. Here nothing queues: a new frame replaces the one in the slot, and
the analysis takes whatever is newest when it is ready. An MJPEG source's frames stay the JPEGs
it sent until then, so a frame passed over is never decoded.

    connecting --open--> running --no frame for a while--> stalled --frame--> running
        |                   |                                 |
        +--open fails--> reconnecting <--read fails/times out-+
                            |   (exponential backoff with jitter, then open again)
                            +--max_reconnects passed--> failed

A ``read()`` that never returns (FFmpeg can wedge past its own timeout, opencv#22677) is
caught by ``check``, called by the watchdog: the wedged thread is abandoned (it exits on its
own if the read ever returns) and a fresh one reconnects.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from convstream.server.config import MAX_READ_TIMEOUT_S, CameraConfig
from convstream.server.decode import encoded_size
from convstream.server.sources import (
    Capture,
    SourceError,
    SourceSpec,
    file_identity,
    open_source,
    parse_source,
)
from convstream.v1 import convstream_pb2 as pb
from convstream.v1.redaction import redact

logger = logging.getLogger(__name__)

WEDGE_GRACE_S = 2.0  # a read this long past the read timeout is wedged
LOG_AGAIN_S = 600.0  # a camera that stays down logs its error at least this often
# A camera that refused the URL's user name or password is tried again this seldom: many lock
# the account (for every client using it) after a few wrong tries, and retrying every 30 s
# kept it locked. A reload that changes its source or settings (an operator's fix) tries at
# once; one that leaves them as they were does not (config tools that reload often would
# lock the account all the same).
CREDENTIALS_RETRY_S = 600.0
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")  # told apart from the error they are in
PACE_GAPS = 3  # frame intervals seen before a camera's pace is judged (one gap is no pace)
READER_PREFIX = "camera-"  # a camera reader thread's name: the cli's exit looks for them
# A camera whose state changes FLAP_CHANGES times within FLAP_WINDOW_S is flapping (a flaky
# link, a camera rebooting in a loop: running, lost, reconnecting, running, ... every few
# seconds, 60 lines a minute): said once, then its changes and retries are logged at debug
# until fewer than half as many come in FLAP_WINDOW_S. Its state and last_error stay current.
FLAP_CHANGES = 8
FLAP_WINDOW_S = 60.0
Opener = Callable[..., Capture]

# CAMERA_STATE_RUNNING -> "running", for logs and metric labels
STATE_NAMES = {
    code: pb.CameraState.Name(code).removeprefix("CAMERA_STATE_").lower()
    for code in pb.CameraState.values()
    if code
}

# states a camera is in trouble in: a change into one (and out of it, back to running) is
# logged as a warning
_TROUBLE = frozenset(
    {pb.CAMERA_STATE_STALLED, pb.CAMERA_STATE_RECONNECTING, pb.CAMERA_STATE_FAILED}
)

SLOW_INTERVAL_S = 60.0  # a rate is read from two events at most this far apart


class RateMeter:
    """Events per second over the last few seconds; safe to tick and read from any thread."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)
            while len(self._times) > 2 and now - self._times[0] > self.window_s:
                self._times.popleft()  # the last two stay: a slow source's interval

    def rate(self, now: float) -> float:
        """n events make n - 1 intervals over the span from the first to the last: a camera
        at 2 fps reads 2.0 (over the span to now it read 1.8, and 0.7 at 1 fps). Once the
        next event is overdue, the span runs on to now less one interval, so a source that
        stops reads falling rates rather than its last one.

        A source slower than the window (a frame every 4 s) reads its rate from its last
        interval until the next event is twice overdue (it read 0 for good, as a stopped
        camera does, and an alert on 0 fps fired for it), up to SLOW_INTERVAL_S apart."""
        with self._lock:
            times = [t for t in self._times if now - t <= self.window_s]
            if len(times) < 2 and len(self._times) >= 2:
                first, last = self._times[-2], self._times[-1]
                if last - first <= SLOW_INTERVAL_S and now - last < 2 * (last - first):
                    times = [first, last]
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        intervals = len(times) - 1
        return intervals / max(span, now - times[0] - span / intervals, 1e-6)


def spoken_duration(seconds: float) -> str:
    """A duration as a log line says it: 0.4 s, 2 min 31 s, 3 h 5 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def backoff_s(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1, 2, ...): doubling from low up to high, with
    half of it random so cameras that dropped together do not all come back at once. The
    doubling stops at 2**60: a camera down overnight reached try 1,025, and 2**1024 overflowed
    a float and ended its reader."""
    delay = min(high, low * 2.0 ** min(attempt - 1, 60))
    return delay / 2 + rng.uniform(0, delay / 2)


@dataclass(frozen=True)
class Frame:
    """A frame as read: its number on this camera, its picture and when it was read."""

    number: int
    image: np.ndarray | bytes  # BGR pixels, or a whole JPEG (an MJPEG source) not yet decoded
    size: tuple[int, int]  # width, height
    captured: float  # time.time()
    read_at: float  # time.perf_counter()


class Camera:
    """Keeps one source open on a reader thread; ``take`` gives the newest frame.

    Args:
        config: the camera's settings.
        opener: opens a SourceSpec (``open_source``; tests may pass another).
    """

    def __init__(self, config: CameraConfig, opener: Opener = open_source) -> None:
        self.config = config
        self.spec: SourceSpec = parse_source(config.source)
        self.on_frame: Callable[[], None] = lambda: None
        # called at each change of state, on whichever thread changed it (the caller holds
        # the lock): the camera's health follows at once, not at the watchdog's next tick
        self.on_change: Callable[[], None] = lambda: None
        self.state: pb.CameraState = pb.CAMERA_STATE_CONNECTING
        self.state_since = time.time()
        self.last_error = ""
        self.ended = False  # a video file played to its end (loop = false): STOPPED
        self._file = file_identity(self.spec)  # the file it plays, as it was when made
        self.last_error_at = 0.0  # time.time() of last_error; 0.0: none yet
        self.frames_read = 0
        self.frames_dropped = 0  # superseded before analysis while the analysis was behind
        self.frames_skipped = 0  # superseded by design: for the fps cap, or in a burst
        self.frames_invalid = 0  # could not be analysed: not a whole JPEG, or did not decode
        # time.monotonic() before which the analysis takes no frame: its fps cap's schedule,
        # kept by CameraFeed (without a cap, the time it took the latest)
        self.next_due = 0.0
        # set by CameraFeed while one of this camera's frames is in analysis: a frame
        # superseded then was dropped because the server was busy; one superseded while the
        # analysis was free (a burst of frames came before it woke) was skipped
        self.analysing = False
        self.reconnects = 0
        self.frame_size = (0, 0)  # width, height
        self.fps_in = RateMeter()
        # No frame for this long is a stall: a second, or three of the camera's own frame
        # intervals for one slower than a frame in a third of a second (a camera sending a
        # frame every 2 s, or one behind a link too slow for its stream, flipped between
        # running and stalled at every frame, logging each), short of the read timeout, when
        # the source is lost.
        self._least_stall_s = min(1.0, config.read_timeout_s / 2)
        # Until its first interval is measured its pace is unknown: a 0.5 fps RTSP camera went
        # "stalled (no frame for 1.0 s)" a second after connecting, and running at its next
        # frame. The declared frame rate is no help (OpenCV says 25 for any HTTP MJPEG
        # camera), so it stalls only when its second frame is as late as a stall can be.
        self.stall_after_s = self._most_stall_s = 0.9 * config.read_timeout_s
        self._interval_s = 0.0  # between its frames lately, smoothed
        self._gaps = 0  # frame intervals in _interval_s
        self._recent_gaps: deque[float] = deque(maxlen=30)  # the last intervals themselves
        self._told_pace = False  # warned that its frames come close to the read timeout
        self._changes: deque[float] = deque(maxlen=FLAP_CHANGES)  # monotonic, the latest
        self._flapping = False
        self._unlogged = 0  # state changes logged at debug while flapping
        self._opener = opener
        self._lock = threading.Lock()
        self._opening = False  # the reader is inside the opener
        self._stop = threading.Event()
        self._generation = 0
        self._latest: Frame | None = None
        self._taken = 0
        self._last_frame_at = 0.0
        self._checked_at = 0.0  # the watchdog's last check (its `now`); 0.0: none yet
        self._read_started: float | None = None
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._retry = threading.Event()  # ends a backoff's wait at once
        # time.monotonic() its user name or password was last refused, while it stays down
        # on that; None: its last try was not refused so
        self._refused_at: float | None = None

    def start(self) -> None:
        with self._lock:
            self._spawn()

    def stop(self, join_s: float = 3.0) -> None:
        """Stop reading, and wait up to ``join_s`` for the reader to leave its open or read.

        Waiting matters at exit: a daemon thread still inside OpenCV when the interpreter
        finalises aborts the process ("exception not rethrown").
        """
        with self._lock:
            self._stop.set()
            self._retry.set()
            self._generation += 1
            opening = self._opening
            self._set_state(pb.CAMERA_STATE_STOPPED, self.last_error)
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=join_s)
            if thread.is_alive() and opening:
                # a source that does not answer: OpenCV's open returns at open_timeout_s
                logger.info(
                    "camera %s: its reader is still opening the source after %.1f s; it is "
                    "let go when that open returns (open_timeout_s %g)",
                    self.config.id,
                    join_s,
                    self.config.open_timeout_s,
                )
            elif thread.is_alive():
                logger.warning(
                    "camera %s: reader still blocked after %.1f s", self.config.id, join_s
                )

    def file_changed(self) -> bool:
        """Whether the video file it plays was replaced or rewritten since it was made (a new
        clip put in the old one's place): it plays the old one, deleted or not, until it is
        opened again."""
        return self._file is not None and file_identity(self.spec) != self._file

    def retry_now(self) -> None:
        """A camera waiting out its backoff to reconnect tries again at once (a reload: an
        operator who fixed the camera waited up to reconnect_max_s for it to be tried)."""
        self._retry.set()

    def refused_wait_s(self, now: float) -> float:
        """Seconds (from ``now``, monotonic) before a camera down on a refused user name or
        password may be tried again without risking its account, CREDENTIALS_RETRY_S after
        the refusal; 0.0 when it is not down on that. A reload that leaves its source as it
        was leaves it to this wait: trying it at each reload, as one waiting out an ordinary
        backoff is, would lock the account of a camera whose config tool reloads often."""
        with self._lock:
            down = self.state in (pb.CAMERA_STATE_RECONNECTING, pb.CAMERA_STATE_FAILED)
            if not down or self._refused_at is None:
                return 0.0
            return max(0.0, self._refused_at + CREDENTIALS_RETRY_S - now)

    def waiting(self) -> bool:
        """Whether a frame read is waiting to be taken."""
        with self._lock:
            return self._latest is not None and self._latest.number > self._taken

    def take(self, after: int) -> Frame | None:
        """The newest frame if it is newer than frame number ``after``."""
        with self._lock:
            frame = self._latest
            if frame is None or frame.number <= after:
                return None
            self._taken = frame.number
            return frame

    def check(self, now: float) -> None:
        """Watchdog step (any thread, every fraction of a second): mark stalls, end wedges,
        and say when a flapping camera has settled."""
        with self._lock:
            if self._stop.is_set():
                return
            # A check that comes late (the server starved of CPU: a load of 20) found its
            # cameras "stalled" when their readers, starved as long, had frames waiting: a
            # file camera and an MJPEG camera went stalled in the same milliseconds and
            # running 4 ms later, 40 warnings in 40 minutes. The time the watchdog itself
            # slept past half the stall bound is not held against the camera: a camera that
            # really stopped is stalled at the next check that comes in time, a tick later.
            overslept = (
                max(0.0, now - self._checked_at - self.stall_after_s / 2)
                if self._checked_at
                else 0.0
            )
            self._checked_at = max(now, self._checked_at)
            if self._flapping:
                recent = sum(1 for t in self._changes if now - t < FLAP_WINDOW_S)
                if recent < FLAP_CHANGES // 2:  # calm: a state held, or changes rare
                    self._flapping = False
                    logger.warning(  # as its flapping was: a warning-level log says both
                        "camera %s: %s, %d state changes in the last %.0f s: no longer "
                        "flapping (%d changes were logged at debug level); its changes are "
                        "logged again",
                        self.config.id,
                        STATE_NAMES[self.state],
                        recent,
                        FLAP_WINDOW_S,
                        self._unlogged,
                    )
            started = self._read_started
            if started is not None and now - started > (self.config.read_timeout_s + WEDGE_GRACE_S):
                error = (
                    f"read() did not return in {now - started:.1f} s (read timeout "
                    f"{self.config.read_timeout_s:g} s); abandoned it and reconnecting"
                )
                logger.warning("camera %s: %s", self.config.id, error)
                self.reconnects += 1
                self._set_state(pb.CAMERA_STATE_RECONNECTING, error)
                self._spawn()
            elif (
                self.state == pb.CAMERA_STATE_RUNNING
                and now - self._last_frame_at - overslept > self.stall_after_s
            ):
                waited = now - self._last_frame_at
                self._set_state(pb.CAMERA_STATE_STALLED, f"no frame for {waited:.1f} s")

    # -- the reader thread ---------------------------------------------------------------

    def _spawn(self) -> None:
        """Start a reader for a new generation (the caller holds the lock)."""
        self._generation += 1
        self._read_started = None
        self._thread = threading.Thread(
            target=self._run,
            args=(self._generation,),
            name=f"{READER_PREFIX}{self.config.id}",
            daemon=True,
        )
        self._thread.start()

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _run(self, generation: int) -> None:
        failures = 0  # in a row: a session that delivered frames starts the count again
        last_said, logged_at = "", 0.0  # the last failure, redacted, and when it was logged
        while self._current(generation):
            frames_before = self.frames_read
            self._retry.clear()  # a "try again" asked during a session is this one
            error = self._session(generation)
            if error is None or not self._current(generation):
                return
            if self.frames_read > frames_before:
                failures = 0
            if error.permanent:
                with self._lock:
                    if self._current(generation):
                        ended = self.ended = error.ended
                        state = pb.CAMERA_STATE_STOPPED if ended else pb.CAMERA_STATE_FAILED
                        if not ended:
                            logger.warning(
                                "camera %s (%s): %s", self.config.id, self.spec.describe(), error
                            )
                        self._set_state(state, "" if ended else str(error), said=True)
                return
            failures += 1
            limit = self.config.max_reconnects
            with self._lock:
                if not self._current(generation):
                    return
                self._refused_at = time.monotonic() if error.credentials else None
                if limit and failures > limit:
                    times = "1 reconnect" if limit == 1 else f"{limit} reconnects"
                    self._set_state(pb.CAMERA_STATE_FAILED, f"{error}; gave up after {times}")
                    return
                self.reconnects += 1
                # said by the retry line right after, with the source
                self._set_state(pb.CAMERA_STATE_RECONNECTING, str(error), said=True)
            delay = backoff_s(
                failures, self.config.reconnect_min_s, self.config.reconnect_max_s, self._rng
            )
            if error.credentials:  # a camera that locks an account after a few wrong
                delay = max(delay, CREDENTIALS_RETRY_S)  # passwords: tried seldom
            said = redact(str(error))
            # A camera that stays down would say the same thing every 30 s for hours: the
            # same error is logged at the 1st, 2nd, 4th, 8th, ... retry in a row and at least
            # every LOG_AGAIN_S, the rest at debug level (the state, last_error and the
            # reconnect count stay current). The same error: its numbers aside, since some
            # say what they measured ("did not answer within 4.3 s"), which differs each time.
            now = time.monotonic()
            again = (
                _NUMBERS.sub("#", said) == _NUMBERS.sub("#", last_said)
                and failures & (failures - 1) != 0
                and now - logged_at < LOG_AGAIN_S
            )
            if not again:
                logged_at = now
            logger.log(
                # a warning: a log kept at --log-level warning says a camera is down
                logging.DEBUG if again or self._flapping else logging.WARNING,
                "camera %s (%s): %s; retry %d in %.1f s%s",
                self.config.id,
                self.spec.describe(),
                said,
                failures,
                delay,
                (
                    f" (the same error is logged again at retry 2, 4, 8, ... and every "
                    f"{LOG_AGAIN_S / 60:g} minutes)"
                    if failures == 1
                    else ""
                )
                + (
                    f"; refused credentials are tried every {CREDENTIALS_RETRY_S / 60:g} "
                    "minutes, not to lock the camera's account: fix the URL and reload "
                    "(SIGHUP) to try at once"
                    if error.credentials and failures == 1
                    else ""
                ),
            )
            last_said = said
            self._retry.wait(delay)  # set by a stop, or a reload's "try again" (retry_now)

    def _session(self, generation: int) -> SourceError | None:
        """Open the source and read until it fails; the failure, or None when stopped."""
        cfg = self.config
        self._opening = True  # a stop meanwhile waits for OpenCV's open (open_timeout_s)
        try:
            capture = self._opener(
                self.spec,
                open_timeout_s=cfg.open_timeout_s,
                read_timeout_s=cfg.read_timeout_s,
                loop=cfg.loop,
                name=cfg.id,
                on_invalid=self.frame_failed,
                streamed=self.frames_read > 2,
            )
        except SourceError as exc:
            return exc
        except Exception as exc:  # OpenCV raises cv2.error for some malformed sources
            return SourceError(f"could not open {self.spec.kind} source: {exc}")
        finally:
            self._opening = False
        try:
            while self._current(generation):
                self._read_started = time.monotonic()
                image: np.ndarray | bytes | None = None  # None: passed over unconverted
                try:
                    if self._will_be_superseded(self._read_started):
                        capture.skip()
                    else:
                        image = capture.read()
                finally:
                    if generation == self._generation:
                        self._read_started = None
                if not self._current(generation):
                    return None
                if image is None:
                    self._pass_over(generation)
                else:
                    self._publish(image, generation, behind_s=capture.behind_s)
            return None
        except SourceError as exc:
            return exc
        except Exception as exc:
            logger.exception("camera %s: reading failed", cfg.id)
            return SourceError(f"reading {self.spec.kind} source failed: {exc}")
        finally:
            capture.release()

    def _will_be_superseded(self, now: float) -> bool:
        """Whether the frame about to be read will surely be replaced before the analysis
        takes one: under an fps cap, the frame after it is due (at the camera's pace, with
        half an interval to spare) before the cap's next analysis. Such a frame is passed
        over unconverted: a 30 fps H.264 camera capped at 5 fps had 25 frames a second
        converted to BGR (1 ms of 2.9 for 720p) only to be thrown away."""
        interval = self._interval_s
        return bool(interval and self._last_frame_at) and (
            max(now, self._last_frame_at + interval) + 1.5 * interval <= self.next_due
        )

    def _pass_over(self, generation: int) -> None:
        """A frame read and passed over for the fps cap (see _will_be_superseded)."""
        with self._lock:
            if generation != self._generation:
                return
            self.frames_read += 1
            self.frames_skipped += 1
            self._arrived(time.monotonic(), self.frame_size)

    def _publish(
        self,
        image: np.ndarray | bytes,
        generation: int,
        now: float | None = None,
        behind_s: float = 0.0,
    ) -> None:
        """A frame read: the newest. Its capture time is when it was read, less the time it
        waited in the network buffers for a reader behind its camera (``behind_s``)."""
        now = time.monotonic() if now is None else now
        if isinstance(image, bytes):
            size = encoded_size(image)[1:]
        else:
            size = (image.shape[1], image.shape[0])
        with self._lock:
            if generation != self._generation:
                return
            if self._latest is not None and self._latest.number > self._taken:
                # Never analysed: a newer frame replaces it. Counted at once, so both counts
                # only ever grow (they are Prometheus counters).
                if now < self.next_due or not self.analysing:
                    self.frames_skipped += 1
                else:
                    self.frames_dropped += 1
            self.frames_read += 1
            captured = time.time() - behind_s
            self._latest = Frame(self.frames_read, image, size, captured, time.perf_counter())
            self._arrived(now, size)
        self.on_frame()

    def _arrived(self, now: float, size: tuple[int, int]) -> None:
        """A frame came at `now` (monotonic): the camera's pace, size, rate and state follow
        (the caller holds the lock)."""
        gap = now - self._last_frame_at
        if self._last_frame_at and gap < self.config.read_timeout_s:  # not a reconnect's
            self._interval_s += (gap - self._interval_s) * (0.2 if self._interval_s else 1)
            self._gaps += 1
            self._recent_gaps.append(gap)
            # half again its longest recent interval too: a camera sending its frames in
            # bursts (8 at once every 1.6 s) read as stalled between every two of them, and
            # its flapping was warned of after 18 s
            self.stall_after_s = min(
                max(self._least_stall_s, 3 * self._interval_s, 1.5 * max(self._recent_gaps)),
                self._most_stall_s,
            )
            slow = self._interval_s > self.config.read_timeout_s / 2
            if slow and self._gaps >= PACE_GAPS and not self._told_pace:
                # One frame late by half its interval and the read times out: the
                # camera goes stalled, lost and reconnecting, and the log alone says why.
                self._told_pace = True
                logger.warning(
                    "camera %s: a frame every %.1f s, close to its read_timeout_s of %g s: "
                    "a frame that comes later than that loses the source; set "
                    "read_timeout_s to %s for this camera",
                    self.config.id,
                    self._interval_s,
                    self.config.read_timeout_s,
                    f"at least {math.ceil(3 * self._interval_s)}"
                    if 3 * self._interval_s <= MAX_READ_TIMEOUT_S
                    else f"{MAX_READ_TIMEOUT_S:g} (the most it may be)",
                )
        # Back from trouble: how long it sent nothing, said on the line that tells of its
        # return (the operator read it off two timestamps lines apart, if both were kept).
        back = self.state in _TROUBLE and self._last_frame_at > 0
        self._last_frame_at = now
        self.frame_size = size
        self.fps_in.tick(now)
        if self.state != pb.CAMERA_STATE_RUNNING:
            note = f"back after {spoken_duration(gap)}" if back else ""
            self._set_state(pb.CAMERA_STATE_RUNNING, self.last_error, note=note)

    def frame_failed(self, error: str, *, invalid: bool = True) -> None:
        """A frame from this camera could not be analysed (an MJPEG camera's frame that is not
        a whole JPEG, passed over by the reader, or one libjpeg cannot decode): counted in
        frames_invalid, and the error is its last_error, beside a state that stays. Not
        ``invalid``: the frame was fine and the model failed on it; its last_error alone."""
        with self._lock:
            self.frames_invalid += invalid
            self.last_error = redact(error)
            self.last_error_at = time.time()

    def _set_state(
        self, state: pb.CameraState, error: str, *, said: bool = False, note: str = ""
    ) -> None:
        """Change state (the caller holds the lock); ``said``: the error is already logged;
        ``note``: said on the change's line, in brackets."""
        error = redact(error)
        retried = state in (pb.CAMERA_STATE_RECONNECTING, pb.CAMERA_STATE_FAILED)
        if error and (error != self.last_error or retried):
            self.last_error_at = time.time()  # a new error, or the same one again
        if state != self.state:
            now = time.monotonic()
            self._changes.append(now)
            flaps = len(self._changes) == FLAP_CHANGES and now - self._changes[0] < FLAP_WINDOW_S
            change = (
                f"camera {self.config.id}: {STATE_NAMES[self.state]} -> {STATE_NAMES[state]}"
                + (f" ({error})" if error and error != self.last_error and not said else "")
                + (f" ({note})" if note else "")
            )
            # Trouble, and its end, are warnings: a log kept at --log-level warning shows
            # each camera going down and coming back; a start or a stop is news. Giving up
            # is an error: the camera stays down until someone acts (it read as a warning,
            # the level of a camera coming back).
            level = logging.INFO
            if state in _TROUBLE or (self.state in _TROUBLE and state == pb.CAMERA_STATE_RUNNING):
                level = logging.WARNING
            if state == pb.CAMERA_STATE_FAILED:
                level = logging.ERROR
            if state in (pb.CAMERA_STATE_FAILED, pb.CAMERA_STATE_STOPPED):
                self._flapping = False  # given up or stopped: said, flapping or not
                logger.log(level, "%s", change)
            elif self._flapping:
                self._unlogged += 1
                logger.debug("%s", change)
            elif flaps:
                self._flapping, self._unlogged = True, 0
                why = error or self.last_error
                logger.warning(
                    "%s; it is flapping (%d state changes in %.1f s%s): its changes and "
                    "retries are logged at debug level until it calms down (fewer than %d in "
                    "%.0f s; its state and last_error stay current in `convstream cameras` "
                    "and /metrics)",
                    change,
                    FLAP_CHANGES,
                    now - self._changes[0],
                    f"; last error: {why}" if why else "",
                    FLAP_CHANGES // 2,
                    FLAP_WINDOW_S,
                )
            else:
                logger.log(level, "%s", change)
            self.state = state
            self.state_since = time.time()
            self.on_change()
        self.last_error = error
