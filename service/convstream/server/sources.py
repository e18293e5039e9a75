"""Where a server-pulled camera's frames come from: OpenCV VideoCapture, or the demo conveyor.

A source string from the server's config is parsed once into a SourceSpec; ``open_source``
opens it (blocking, bounded by the open timeout) and returns a Capture whose ``read`` blocks
for the next frame (bounded by the read timeout). Files and the demo conveyor are paced to
their own frame rate, so they behave like live cameras.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from convstream.server.config import (
    MAX_FPS,
    MAX_INPUT_SIDE,
    MAX_READ_TIMEOUT_S,
    MIN_INPUT_SIDE,
    parse_size,
)
from convstream.server.decode import Limits, check_encoded, decode_encoded, orientation, sniff
from convstream.server.errors import InvalidFrame
from convstream.v1 import file_holds_text, what_it_holds
from convstream.v1.diagnose import media_type, why_closed
from convstream.v1.redaction import redact, shown

logger = logging.getLogger(__name__)

NETWORK_KINDS = ("rtsp", "rtsps", "http", "https", "tcp", "udp")
_DEVICE = re.compile(r"^(?:device:(\d+)|/dev/video(\d+))$")
# RTSP over TCP: no lost UDP packets smearing frames, and it passes firewalls and NAT.
_FFMPEG_DEFAULTS = "rtsp_transport;tcp"
# OpenCV holds one process-wide lock around every FFmpeg open unless told FFmpeg is thread
# safe (it is, since FFmpeg 4; opencv#20114): with the lock, one camera that does not answer
# keeps every other camera, and every reconnect, waiting out its open timeout. OpenCV reads
# this when it first opens an FFmpeg capture, so it is set here, before any is opened.
os.environ.setdefault("OPENCV_FFMPEG_IS_THREAD_SAFE", "true")
# Frames a network stream has buffered while it opened (about a second's worth for RTSP,
# where FFmpeg probes the stream) are skipped, at most this many seconds of them.
_BACKLOG_MAX_S = 2.0
STALL_S = 1.0  # a network read that waits longer may have frames queued behind its own
# Video files whose container stores its frame count (not a guess from the duration)
COUNTED_CONTAINERS = frozenset({".mp4", ".m4v", ".mov", ".3gp", ".avi"})
# An MJPEG source's frames that are not whole JPEGs are passed over, this many in a row at most
# before the source counts as failed (and is reconnected).
_BAD_JPEGS_IN_A_ROW = 30
# The rate a video file is played at when it says none, or one over MAX_FPS (a raw H.264 or
# MJPEG stream has no container to say it: OpenCV reports 25 for those itself).
UNKNOWN_FILE_FPS = 25.0
_ANY_SIZE = Limits(1 << 62, 1 << 31)


class SourceError(Exception):
    """A source could not be opened or read; ``permanent`` when retrying cannot help.

    Messages reach clients (ListCameras' last_error), so they never name the URL or path:
    the server's log does, with any password hidden.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        ended: bool = False,
        credentials: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.ended = ended  # a file that reached its end: stopped, not failed
        self.credentials = credentials  # it answered 401: the user name or password


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: its kind (rtsp, http, file, device, demo, ...) and what to open."""

    kind: str
    target: str
    device: int = -1
    demo_fps: float = 15.0
    demo_seed: int = 0
    demo_size: tuple[int, int] = (360, 640)

    @property
    def live(self) -> bool:
        """Frames arrive at the source's pace (network, device), not ours."""
        return self.kind in NETWORK_KINDS or self.kind == "device"

    def describe(self) -> str:
        """The source for logs, with any password hidden; a file's path in full (a relative
        one is taken from the folder the server started in, a unit's WorkingDirectory, which
        its log did not say)."""
        if self.kind == "file" and not os.path.isabs(self.target):
            return f"{self.target} ({os.path.abspath(self.target)})"
        return redact(self.target)


SOURCE_FORMS = (
    "rtsp://, http(s)://, tcp:// or udp:// URL, a video file, device:N or "
    "demo:conveyor[?fps=15&seed=0&size=360x640]"
)


def file_identity(spec: SourceSpec) -> tuple[int, int, int, int] | None:
    """A file source's device, inode, modification time and size, which change when the file
    is replaced or rewritten; None for other sources, or a file that is not there."""
    if spec.kind != "file":
        return None
    try:
        seen = os.stat(spec.target)
    except OSError:
        return None
    if not stat.S_ISREG(seen.st_mode):  # a named pipe, a device: it changes as it plays
        return None
    return seen.st_dev, seen.st_ino, seen.st_mtime_ns, seen.st_size


def file_holds(path: Path) -> str:
    """A few words on a file a camera's source names that is no video (what_it_holds), none
    of them from the file: a path mistyped to a secrets file quoted its first line, and no
    rule hides every form a secret takes there (a token file holds the token alone)."""
    try:
        with path.open("rb") as file:
            return what_it_holds(file.read(48), path.stat().st_size, quoted=False)
    except OSError as exc:
        return exc.strerror or str(exc)


def unreadable_video(path: Path) -> str | None:
    """Why a camera's file would not play (``serve --check-config`` warns), or None: it opens
    and gives a frame, as a video, a clip or a still image does."""
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", _FFMPEG_DEFAULTS)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if capture.isOpened() and capture.read()[0] and not file_holds_text(path):
            return None
    finally:
        capture.release()
    return f"is not a video OpenCV can read ({file_holds(path)})"


def parse_source(source: str) -> SourceSpec:
    """Parse a configured source; ValueError says what forms are accepted."""
    source = source.strip()
    if not source:
        raise ValueError(f"a source is empty; expected an {SOURCE_FORMS}")
    if match := _DEVICE.match(source):
        index = int(match.group(1) or match.group(2))
        return SourceSpec("device", source, device=index)
    if source.startswith("device:"):
        raise ValueError(
            "a USB camera is device:N with N its number (device:0 is /dev/video0); got "
            f"{redact(source)!r}"
        )
    if source.isdigit():  # OpenCV's VideoCapture(0): here a file named "0", not there
        raise ValueError(
            f"a source of {source!r} is no file here; a USB camera is device:{int(source)} "
            f"(/dev/video{int(source)}); a file named so, ./{source}"
        )
    if source.startswith("demo:"):
        return _parse_demo(source)
    if match := re.match(r"(?i)(rtsps?|https?|tcp|udp)//", source):
        # a URL without its ':' is a relative path to no file, which only warned
        scheme = match.group(1).lower()
        raise ValueError(
            f"{redact(source)!r} is a {scheme} URL without the ':' after {scheme}; expected "
            f"{scheme}://HOST..."
        )
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in NETWORK_KINDS:
        try:
            parts.port  # noqa: B018 (it checks the port)
        except ValueError:
            hint = ""
            if parts.username is not None or "@" in source:
                hint = (
                    " (a password holding '/', '#', '?' or '@' must be percent-encoded: "
                    "%2F, %23, %3F, %40)"
                )
            raise ValueError(
                f"the port in {redact(source)!r} is not a number from 0 to 65535{hint}"
            ) from None
        if not parts.hostname and scheme != "udp":  # udp://:1234 listens on every address
            raise ValueError(f"no host in {redact(source)!r}")
        return SourceSpec({"rtsps": "rtsp", "https": "http"}.get(scheme, scheme), source)
    if scheme == "file":
        if not parts.path:
            raise ValueError(f"no path in {redact(source)!r}; expected file:///path/to/video")
        return SourceSpec("file", parts.path)
    if scheme and len(scheme) > 1:
        raise ValueError(
            f"unsupported source scheme {scheme!r} in {redact(source)!r}; expected one of "
            f"{', '.join(NETWORK_KINDS)}, file, a path, device:N or demo:conveyor"
        )
    return SourceSpec("file", source)


def _parse_demo(source: str) -> SourceSpec:
    parts = urlsplit(source)
    if parts.path != "conveyor":
        raise ValueError(f"unknown demo source {redact(source)!r}; expected demo:conveyor")
    # blank values kept: "fps=" is a mistake to point out, not the default
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"fps", "seed", "size"}
    if unknown:
        raise ValueError(f"demo:conveyor takes fps, seed and size, got {sorted(unknown)}")

    def bad(name: str, expected: str) -> ValueError:
        return ValueError(
            f"demo source parameter {name}: expected {expected}, got {shown(query[name])}"
        )

    fps = 15.0
    if "fps" in query:
        try:
            fps = float(query["fps"])
        except ValueError:
            fps = math.nan
        if not 0 < fps <= MAX_FPS:  # nan too
            raise bad("fps", f"a number of frames per second in (0, {MAX_FPS:g}]")
    seed = 0
    if "seed" in query:
        try:
            seed = int(query["seed"])
        except ValueError:
            raise bad("seed", "a whole number (each one draws another conveyor)") from None
    size = (360, 640)
    if "size" in query:
        try:
            size = parse_size(query["size"])
        except ValueError:
            raise bad(
                "size",
                f"HxW with both sides multiples of 8 from {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE}, "
                "e.g. 360x640",
            ) from None
        if size[0] > size[1]:  # "640x360" as video sizes are written: wide first
            raise bad(
                "size",
                f"HxW, height first, no taller than wide (the conveyor is filmed from the "
                f"side); for {size[0]} wide and {size[1]} high write {size[1]}x{size[0]}",
            )
    return SourceSpec("demo", source, demo_fps=fps, demo_seed=seed, demo_size=size)


class Capture(Protocol):
    @property
    def behind_s(self) -> float:
        """How long the frame read last waited for the reader, beyond the freshest frame of
        this connection (_Backlog); 0 where the source cannot tell."""
        ...

    def read(self) -> np.ndarray | bytes:
        """The next frame: BGR uint8 pixels, or a whole JPEG or PNG as an MJPEG or PNG source
        sent it (left to be decoded only if the frame is analysed). Raises SourceError when
        there is none."""
        ...

    def skip(self) -> None:
        """Pass over the next frame without making pixels of it: for a frame the analysis
        will not take (an fps cap's). Waits for it and raises SourceError as read() does."""
        ...

    def release(self) -> None: ...


FIRST_LOOKS = 3  # a live MJPEG camera's frames looked at, at most, for a whole one
_told: dict[tuple[str, str], str] = {}  # (message, camera): what it last said


def _tell(message: str, camera: str, *args: object, topic: str = "") -> None:
    """Log how a camera's source is read, at info the first time and whenever it changes,
    else at debug: it is found out at every (re)connect, and a camera that flaps said it
    once a reconnect (27 of 39 lines of its log) after its flapping had quietened the rest.
    Messages of one ``topic`` are one thing that changes (how its frames are decoded): a
    camera back to what it said two reconnects before is said again."""
    said = message % (camera, *args)
    key = (topic or message, camera)
    level = logging.DEBUG if _told.get(key) == said else logging.INFO
    _told[key] = said
    logger.log(level, said)


# Sources whose frames carry the camera's own timestamps (RTP's, MPEG-TS's): OpenCV numbers
# an HTTP MJPEG camera's frames at the 25 frames/s it assumes, whatever the camera sends.
TIMESTAMPED_KINDS = ("rtsp", "rtsps", "tcp", "udp")
BEHIND_WARN_S = 1.0  # a reader this far behind its camera is warned of ...
BEHIND_CLEAR_S = 0.25  # ... and said to have caught up under this


class _Backlog:
    """How far a live stream's reader is behind its camera, from the frames' own timestamps.

    A frame's offset is when it was read (this machine's monotonic clock) less its timestamp
    (the camera's clock); the freshest frame of the connection has the least. A reader that
    decodes fewer frames a second than the camera sends (an overloaded server, a 1080p H.264
    stream on a busy core) falls further behind at every frame while the frames wait in the
    network buffers, and its frames' offsets grow by as much: read times alone showed 0.2 s
    old frames that were 5 s old. The least offset may rise by DRIFT a second (camera clocks
    run fast or slow by up to about 1e-4, and a constant backlog is forgotten in minutes);
    a timestamp that jumps by more than JUMP_S (a camera's restarted clock, a spliced
    stream) starts afresh, and so does a step back in the timestamps: a real backlog grows
    no faster than the time between two reads, and a smaller jump back (a camera's clock set
    back 4 s) read as 4 s behind for minutes while the least offset rose to it.
    """

    DRIFT = 0.005
    JUMP_S = 10.0
    SLACK_S = 0.1  # how much later a frame may come than the time between two reads allows

    def __init__(self) -> None:
        self.behind_s = 0.0
        self._least: float | None = None  # the least offset, as it may have risen
        self._last = (0.0, 0.0)  # the last frame's read time and offset

    def frame(self, now: float, stamp_s: float) -> float:
        """A frame read at `now` (monotonic) with timestamp `stamp_s`: how far behind."""
        if not math.isfinite(stamp_s) or stamp_s <= 0:  # not said (OpenCV gives 0 or nan)
            self.behind_s = 0.0
            return 0.0
        offset = now - stamp_s
        last_now, last_offset = self._last
        jumped = abs(offset - last_offset) > self.JUMP_S
        stepped_back = offset - last_offset > (now - last_now) + self.SLACK_S
        if self._least is None or jumped or stepped_back:
            self._least = offset
        else:
            self._least = min(offset, self._least + self.DRIFT * (now - last_now))
        self._last = (now, offset)
        self.behind_s = offset - self._least
        return self.behind_s


class _Pacer:
    """Frames at a steady rate: ``wait`` returns at the next slot (catching up by one at most)."""

    def __init__(self, fps: float) -> None:
        self._interval = 1 / fps
        self._next = time.monotonic()

    def wait(self) -> None:
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + self._interval, time.monotonic() - self._interval)


class OpenCVCapture:
    """cv2.VideoCapture with timeouts; files are paced to their frame rate and may loop."""

    def __init__(
        self,
        spec: SourceSpec,
        open_timeout_s: float,
        read_timeout_s: float,
        loop: bool,
        name: str = "",
        on_invalid: Callable[[str], None] | None = None,
        streamed: bool = False,
    ) -> None:
        self.spec = spec
        self._loop = loop
        self._streamed = streamed  # its camera streamed before (this connection may not)
        self._on_invalid = on_invalid
        self._open_timeout_s = open_timeout_s
        self._read_timeout_s = read_timeout_s
        self._cap = self._open()
        try:
            self._configure(name)
        except BaseException:  # what looked at its first frames failed: the source is let go
            self._cap.release()
            raise

    def _configure(self, name: str) -> None:
        """Pace a file, and keep an MJPEG or PNG source's frames as sent where the server's
        decoder takes them; then skip what queued while opening."""
        spec = self.spec
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        if not 0 < fps <= MAX_FPS:  # not known, or not believed (nan too)
            if spec.kind == "file":
                # A file is paced all the same: unpaced, a clip saying 1000 fps was read as
                # fast as it decoded (2,400 frames/s, every core busy).
                _tell(
                    "camera %s: its frame rate says %g; played at %g frames/s",
                    name or spec.kind,
                    fps,
                    UNKNOWN_FILE_FPS,
                )
            fps = UNKNOWN_FILE_FPS if spec.kind == "file" else 0.0
        self._pacer = _Pacer(fps) if spec.kind == "file" else None
        self._name = name or spec.kind
        # Believed where the container stores it: elsewhere (MPEG-TS, Matroska) it is a
        # guess from the duration, an audio track's included, and whole files read "cut".
        stored = spec.kind == "file" and Path(spec.target).suffix.lower() in COUNTED_CONTAINERS
        declared = self._cap.get(cv2.CAP_PROP_FRAME_COUNT) if stored else 0.0
        self._declared = int(declared) if 0 < declared < 1e9 else 0  # nan, -1: not said
        self._interval_s = 1 / fps if fps else 0.02
        self._grabbed = False  # a frame is grabbed and waits for retrieve()
        self._frames_got = 0  # frames that came on this connection (_no_frame's hint)
        self._frame_at = (0.0, 0.0)  # monotonic: the first of them, and the last
        self._waits: deque[float] = deque(maxlen=30)  # seconds the last reads waited
        self._backlog = _Backlog() if spec.kind in TIMESTAMPED_KINDS else None
        self._told_behind = False  # warned that the reader is behind (until it catches up)
        # A looping file: frames read since it last started, the last of them, and, for a
        # file of one frame (a still), that frame for good.
        self._since_start = 0
        self._last: np.ndarray | None = None
        self._still: np.ndarray | None = None
        # An MJPEG source's frames are whole JPEGs: taken as FFmpeg reads them (its raw
        # mode), and decoded only if the frame is analysed, by libjpeg at the size the model
        # needs, as a client's JPEG is. Decoded here, every frame paid a full-size decode and
        # colour conversion: 4.7 ms of CPU a 720p frame against 0.1 ms to read it raw and
        # 1.1 to decode it at half size, and a camera capped at 1 fps paid it 30 times a second.
        # A PNG (a still, or a clip of PNG frames) likewise: decoded as a client's PNG is, its
        # EXIF orientation and transparency applied, which FFmpeg ignores.
        self._encoded = ""  # "JPEG" or "PNG" when frames are kept as sent
        self._first: bytes | None = None  # the first frame as sent, looked at when opening
        codec = int(self._cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
        # OpenCV says MJPG for every JPEG tag, and MPNG for PNG
        kept = {b"MJPG": "JPEG", b"MPNG": "PNG"}.get(codec, "")
        if spec.kind != "device" and kept:
            # a file of one JPEG frame is a still, not a motion JPEG
            one = spec.kind == "file" and self._cap.get(cv2.CAP_PROP_FRAME_COUNT) == 1
            stream = "MJPEG" if kept == "JPEG" and not one else kept
            size = (
                int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            )
            if self._cap.set(cv2.CAP_PROP_FORMAT, -1):
                self._skip_backlog()
                why = self._first_encoded(kept, size)
                if why is None:
                    self._encoded = kept
                    _tell(
                        "camera %s: its %s frames are kept as sent, and decoded only if analysed",
                        name or spec.kind,
                        stream,
                        topic="decoding",
                    )
                    return
                # Not frames the server's decoder takes as they are: FFmpeg decodes them.
                _tell(
                    "camera %s: its %s frames are decoded as read: %s",
                    name or spec.kind,
                    stream,
                    why,
                    topic="decoding",
                )
                self._cap.release()
                self._grabbed, self._since_start, self._last = False, 0, None
                self._cap = self._open()
        self._skip_backlog()

    def _open(self) -> cv2.VideoCapture:
        spec = self.spec
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self._open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self._read_timeout_s * 1000),
        ]
        started = time.monotonic()
        if spec.kind == "device":
            cap = cv2.VideoCapture(spec.device, cv2.CAP_ANY, params)
        else:
            if spec.kind == "file" and not Path(spec.target).is_file():
                raise SourceError("no such video file", permanent=True)
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", _FFMPEG_DEFAULTS)
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)
        # a text file FFmpeg opens as console text (.txt, .nfo) is no video all the same
        if cap.isOpened() and not (spec.kind == "file" and file_holds_text(spec.target)):
            return cap
        cap.release()
        if spec.kind == "device":
            raise SourceError(
                f"could not open USB camera {spec.device} (/dev/video{spec.device}): is it "
                "plugged in, and may this user read it?"
            )
        if spec.kind == "file":  # for good, as a missing file: retrying reads it again
            # The file's path is in the log alone: the error reaches every client that may
            # list the camera, and clients name cameras by id, never by path.
            holds = file_holds(Path(spec.target))
            logger.warning("file source %s is not a video OpenCV can read (%s)", spec.target, holds)
            raise SourceError(
                f"could not open file source: not a video OpenCV can read ({holds}; the "
                "server's log names the file)",
                permanent=True,
            )
        # The probe gets what is left of the open timeout (a short look when OpenCV used
        # it all), so a failed open still fails within about its timeout.
        spent = time.monotonic() - started
        look = min(3.0, max(0.2, self._open_timeout_s - spent))
        why = why_closed(spec.target, look, spent)
        refused = re.search(r"\b401\b", why) is not None  # as diagnose says it: RTSP or HTTP
        raise SourceError(f"could not open {spec.kind} source: {why}", credentials=refused)

    def _first_encoded(self, kind: str, size: tuple[int, int]) -> str | None:
        """Read the first frame in raw mode and keep it if it is a whole JPEG (or PNG) that
        the server's decoder takes, of the stream's size; else say why not. Not so: lossless
        JPEG (libjpeg cannot decode it), interlaced MJPEG (two half-height fields a frame,
        which FFmpeg weaves together), bytes before the JPEG or none after it (some DVRs).
        A live camera's frame cut short (often the first after a connect) is passed over for
        the next, up to FIRST_LOOKS: judged on one frame, a camera whose first part came cut
        was decoded by FFmpeg for the whole connection, its later broken frames analysed as
        torn pictures rather than passed over and counted."""
        for _ in range(FIRST_LOOKS if self.spec.live else 1):
            ok, frame = self._next()
            if not ok or frame is None:
                return "no first frame in raw mode"
            data = frame.tobytes()
            try:
                image = decode_encoded(data, _ANY_SIZE)  # as the analysis will decode it
                sent = sniff(data)
                break
            except InvalidFrame as exc:
                why = f"its first frame is not a plain {kind} that the server decodes ({exc})"
        else:
            return why
        if sent != kind.lower():
            return f"its first frame is a {sent.upper()}, in a {kind} stream"
        got = (image.shape[1], image.shape[0])
        if orientation(sent, data) >= 5:  # turned a quarter by its EXIF, as FFmpeg is not
            got = got[::-1]
        if 0 not in size and got != size:
            return f"its {kind}s are {got[0]}x{got[1]} in a {size[0]}x{size[1]} stream (fields?)"
        self._first = data
        return None

    def _skip_backlog(self) -> None:
        """Grab past the frames that came in while a network stream opened, up to the live one.

        Those come out of ``grab`` at once, one after another; the live frame takes about a
        frame interval to arrive. Without this, the first result after every (re)connect
        shows the scene as it was a second or two before, and the burst counts as drops.
        Live once two of the last three grabs were waited for: one alone may be a buffered
        frame whose grab a busy CPU held up (the rest of the backlog then came as live
        frames), and two in a row are not what a camera sending its frames in pairs (Wi-Fi,
        TCP batching) ever gives: it lost two seconds of live frames at every connect.
        """
        if self.spec.kind not in NETWORK_KINDS:
            return
        interval_s = self._interval_s
        deadline = time.monotonic() + _BACKLOG_MAX_S
        waited: deque[bool] = deque(maxlen=3)
        while time.monotonic() < deadline:
            started = time.monotonic()
            if not self._cap.grab():
                # the read that follows says what went wrong; a frame grabbed before is gone
                # (retrieved, OpenCV logged "Picture does not contain data" at each retry)
                self._grabbed = False
                return
            self._grabbed = True
            self._got_frame()
            waited.append(time.monotonic() - started > interval_s / 2)
            if sum(waited) == 2:
                return  # the stream is live from here

    def read(self) -> np.ndarray | bytes:
        if not self._encoded:
            return self._read()
        if self._first is not None:
            data, self._first = self._first, None
            if self._pacer is not None:
                self._pacer.wait()
            return data
        # Frames that are not whole JPEGs (PNGs) are passed over, as long as one read may take;
        # then the source has failed (its reconnect looks at the first frame again).
        why, passed, deadline = "", 0, time.monotonic() + self._read_timeout_s
        while passed < _BAD_JPEGS_IN_A_ROW and time.monotonic() < deadline:
            data = self._read().tobytes()
            try:
                check_encoded(data, _ANY_SIZE)  # the server's limits apply when it decodes
            except InvalidFrame as exc:
                why, passed = str(exc), passed + 1
                if self._on_invalid is not None:
                    self._on_invalid(
                        f"a frame was not a whole {self._encoded} and was passed over: {why}"
                    )
                continue
            return data
        raise SourceError(
            f"{passed} frames in a row were not whole {self._encoded}s; the last: {why}"
        )

    def skip(self) -> None:
        """A live source's next frame is grabbed and not retrieved: FFmpeg decodes an H.264
        frame in grab() but converts it to BGR in retrieve() (a third of a 720p frame's 2.9
        ms), and a USB camera's MJPEG frame is decoded in retrieve(). A file is read as
        read() reads it (its looping and pacing), and the first frame, already read when an
        MJPEG source opened, is let go."""
        if not self.spec.live:
            self.read()
            return
        if self._first is not None:
            self._first = None
            return
        started = time.monotonic()
        if self._grabbed:  # the last of the backlog, grabbed while opening
            self._grabbed = False
        elif not self._cap.grab():
            raise self._no_frame(started)
        else:
            self._got_frame()
        self._check_live(started)
        if self._stalled(started):  # the next read is then the live frame, not the backlog
            self._skip_backlog()

    def _next(self) -> tuple[bool, np.ndarray | None]:
        """The next frame from OpenCV (the grabbed one first); a looping file starts again
        at its end."""
        if self._still is not None:
            return True, self._still.copy()
        if self._grabbed:
            self._grabbed = False
            ok, frame = self._cap.retrieve()  # counted as grabbed
        else:
            ok, frame = self._cap.read()
            if ok:
                self._got_frame()
        if not ok and self.spec.kind == "file" and self._loop:
            if short := self._cut_short(self._since_start):
                self._declared = 0  # said once
                logger.warning("camera %s: its video file ended%s", self._name, short)
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
            if not ok and self._since_start > 1:
                # A raw H.264 or MJPEG stream (no container: a DVR's export) that OpenCV
                # cannot seek back in: opened again from its start. Called ended, it made the
                # camera reconnect at every pass, and flap.
                self._cap.release()
                self._cap = self._open()
                if self._encoded:
                    self._cap.set(cv2.CAP_PROP_FORMAT, -1)
                ok, frame = self._cap.read()
            if not ok and self._since_start == 1 and self._last is not None:
                # A file of one frame, which OpenCV cannot seek back to (a JPEG or a
                # one-frame clip named as a camera): the frame again, for good. Reopening it
                # each frame, or calling the file ended, made the camera flap between
                # running and reconnecting, three times a second, logging each.
                self._still, self._last = self._last, None
                return True, self._still.copy()
            self._since_start = 0
        if ok and frame is not None and self.spec.kind == "file" and self._loop:
            self._since_start += 1
            self._last = frame.copy() if self._since_start == 1 else None
        return ok, frame

    def _read(self) -> np.ndarray:
        started = time.monotonic()
        ok, frame = self._next()
        if not ok or frame is None:
            raise self._no_frame(started)
        self._check_live(started)
        if self._stalled(started):
            # The frame that ends a stall left the camera before it, as old as the stall, and
            # the frames queued behind it come at once: passed for the live one, as after a
            # connect. Taken, it was analysed as new: a 2 s stall gave a result 2.1 s old
            # that said 18 ms.
            self._skip_backlog()
            if self._grabbed:
                ok, live = self._next()
                if ok and live is not None:
                    frame = live
        if self._pacer is not None:
            self._pacer.wait()
        if frame.ndim == 2 and not self._encoded:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    @property
    def behind_s(self) -> float:
        return self._backlog.behind_s if self._backlog is not None else 0.0

    def _got_frame(self) -> None:
        """A frame came on this connection: counted, and its time kept (the first and the
        last: their pace, _no_frame's hint); a timestamped stream's backlog follows."""
        self._frames_got += 1
        now = time.monotonic()
        self._frame_at = (self._frame_at[0] or now, now)
        backlog = self._backlog
        if backlog is None:
            return
        behind = backlog.frame(now, self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
        if not self._told_behind and behind > BEHIND_WARN_S:
            self._told_behind = True
            logger.warning(
                "camera %s: reading %.1f s behind the camera (its stream's timestamps "
                "against this server's clock): this server decodes fewer of its frames a "
                "second than the camera sends, and the rest wait in the network buffers; "
                "results' frame_age_ms count that wait. Lower the camera's frame rate, "
                "resolution or bitrate, or give the server more CPU",
                self._name,
                behind,
            )
        elif self._told_behind and behind < BEHIND_CLEAR_S:
            self._told_behind = False
            logger.info("camera %s: its reader has caught up with the camera", self._name)

    def _cut_short(self, read: int) -> str:
        """Words for a file that ended well before the frames its header declares (the first
        half of a copy plays its frames and ends, as a whole file does), else ''."""
        if self._declared <= 1 or read >= 0.9 * self._declared:
            return ""
        return (
            f" after {read} of the {self._declared} frames its header declares: cut short "
            "(a copy not finished?) or damaged"
        )

    def _no_frame(self, started: float) -> SourceError:
        """Why a read begun at `started` (monotonic) got no frame."""
        if self.spec.kind == "file":
            short = self._cut_short(self._frames_got)
            return SourceError(f"end of video file{short}", permanent=not self._loop, ended=True)
        if time.monotonic() - started >= 0.95 * self._read_timeout_s:
            return self._timed_out()
        kind = media_type(self.spec.target, 2.0) if self.spec.kind == "http" else ""
        if kind.startswith("image/") and self._frames_got < 3 and not self._streamed:
            # a camera's snapshot URL: FFmpeg reads its one picture, then the "stream" ends;
            # for good, as a file that is no video (it reconnected for ever, one frame each).
            # Not after a stream: an NVR answers with a "no signal" picture while its camera
            # is down, and the camera comes back.
            return SourceError(
                f"no frame from http source: it serves one picture ({kind}), not a video "
                "stream: give the camera's MJPEG stream URL (multipart/x-mixed-replace) or its "
                "RTSP URL",
                permanent=True,
            )
        first, last = self._frame_at
        apart = (last - first) / (self._frames_got - 1) if self._frames_got > 1 else 0.0
        if kind.startswith("multipart/") and apart > self._read_timeout_s / 2:
            # Slower than its read timeout allows: FFmpeg gives up on the stream between two
            # frames; blamed on the parts' headers, it sent an operator to a camera that works
            # (a frame every 6.7 s against 5 s; the pace warning comes once frames flow).
            # A gap near the timeout is where the read gave up, not the camera's pace: a
            # frame every 10 s read 5.1 s apart, and the 16 s said here then drew a warning
            # asking for 31 (the pace warning wants 3 times the interval, as this does).
            cut = apart >= 0.8 * self._read_timeout_s
            return SourceError(
                f"no frame from http source: it answers with a stream ({kind}) whose "
                f"{self._frames_got} frame{'s' * (self._frames_got > 1)} came "
                f"{'at least' if cut else 'about'} {apart:.1f} s apart, too slow for its "
                f"read_timeout_s of {self._read_timeout_s:g} s: set read_timeout_s to 3 "
                "times the camera's frame interval for this camera (at least "
                f"{min(math.ceil(3 * apart), MAX_READ_TIMEOUT_S):g}"
                f"{', more if its frames come further apart' if cut else ''})"
            )
        if kind.startswith("multipart/") and self._frames_got < 3:
            # FFmpeg's MJPEG reader gave up on the parts after one at most (its own words
            # stay in its log): "its stream ended" sent an engineer to a camera that curl
            # showed sending
            return SourceError(
                f"no frame from http source: it answers with a stream ({kind}), but FFmpeg "
                f"read {self._frames_got} of its frames and no more: parts whose headers it "
                "does not take (a Content-Type with parameters, a Content-Length that is "
                "wrong); `ffmpeg -i URL -f null -` on this machine says which"
            )
        return SourceError(f"no frame from {self.spec.kind} source: its stream ended (closed)")

    def _timed_out(self) -> SourceError:
        # A camera that sends a frame every 10 s against a 5 s timeout reconnected for ever,
        # and nothing said why.
        return SourceError(
            f"no frame from {self.spec.kind} source within the read timeout "
            f"({self._read_timeout_s:g} s): it stopped sending, or sends less often than that "
            "(then raise read_timeout_s for this camera)"
        )

    def _check_live(self, started: float) -> None:
        """Raise SourceError if a live source's read, begun at `started` (monotonic), took
        the whole read timeout: FFmpeg's read timeout fired, and the decoder gave back a
        frame it still held, from before the source went quiet. Taking it would pass the
        frozen camera off as running, one stale frame per timeout."""
        if self.spec.live and time.monotonic() - started >= 0.95 * self._read_timeout_s:
            raise self._timed_out()

    def _stalled(self, started: float) -> bool:
        """Whether a network source's read, begun at `started` (monotonic), waited long
        enough that frames may have queued up behind the one it got: over STALL_S, and over
        three times the usual wait of its last reads. The usual wait is measured, not taken
        from the frame rate the stream states: OpenCV says 25 for any MJPEG camera, and one
        sending a frame every 2 s then read as stalled at every read, each one's frame
        passed over for the next, half its frames lost."""
        waited = time.monotonic() - started
        if self.spec.kind not in NETWORK_KINDS:
            return False
        waits = self._waits
        # and over half again its longest recent wait: a camera sending 8 frames at once every
        # 1.6 s (a usual wait of none) was stalled after every burst, and the backlog skip
        # that follows a stall ate most of the next burst (13 of 88 frames analysed)
        usual = max(3 * statistics.median(waits), 1.5 * max(waits)) if len(waits) >= 3 else 0.0
        stalled = len(waits) >= 3 and waited > max(STALL_S, usual)
        waits.append(waited)
        return stalled

    def release(self) -> None:
        self._cap.release()


class DemoCapture:
    """The synthetic conveyor (packages passing, some damaged), paced like a live camera."""

    behind_s = 0.0  # its frames are made when read

    def __init__(self, spec: SourceSpec) -> None:
        from convstream.model.scenes import Conveyor

        height, width = spec.demo_size
        self._conveyor = Conveyor(spec.demo_seed, height, width, spec.demo_fps)
        self._pacer = _Pacer(spec.demo_fps)
        self._index = 0

    def read(self) -> np.ndarray:
        self._pacer.wait()
        frame = self._conveyor.frame(self._index).image
        self._index += 1
        return frame

    def skip(self) -> None:
        """The next frame's time passes and the conveyor moves on; nothing is rendered."""
        self._pacer.wait()
        self._index += 1

    def release(self) -> None:
        pass


def open_source(
    spec: SourceSpec,
    *,
    open_timeout_s: float,
    read_timeout_s: float,
    loop: bool,
    name: str = "",
    on_invalid: Callable[[str], None] | None = None,
    streamed: bool = False,
) -> Capture:
    """Open a source (blocking, up to the open timeout); raises SourceError. name: the
    camera's id, for what it logs; on_invalid: told of each MJPEG frame passed over for not
    being a whole JPEG, with why; streamed: the camera gave a stream before (a picture at its
    URL is then not its snapshot URL, but an NVR's "no signal")."""
    if spec.kind == "demo":
        return DemoCapture(spec)
    return OpenCVCapture(spec, open_timeout_s, read_timeout_s, loop, name, on_invalid, streamed)
