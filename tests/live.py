"""Real live camera streams on 127.0.0.1 for the camera tests.

- ffmpeg (the imageio-ffmpeg wheel's binary) serves HTTP MJPEG (``-f mpjpeg -listen 1``) and
  MPEG-TS over TCP (H.264, ``tcp://...?listen=1``); each serves one client, like a camera that
  takes one connection.
- GStreamer's RTSP server (tests/rtsp_server.py, run by the system Python that has PyGObject)
  serves H.264 over RTP.

Frames come from ffmpeg's test pattern, or from this process (``TimestampFrames``) with the
wall-clock time they were made painted into their pixels, so a test can measure a result's
true age from the source rather than from when the server read it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from convstream.server.decode import jpeg_size

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"

BITS = 44  # milliseconds since the epoch fit in 44 bits until the year 2527
BLOCK = 16  # pixels per bit: survives JPEG and letterbox scaling


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(
    port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait until something serves on the port, without connecting: a one-client ffmpeg
    server would take a probe connection for its client and exit after it. False when
    ``process`` (the server) ended first: a camera reconnecting took it as its client and
    left at once (one did, between two polls, and the source never came back)."""
    needle = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    # LISTEN, or ESTABLISHED: a one-client server that already took its client
                    # (a reconnecting camera can beat this poll) has closed its listener.
                    if (fields[1] + " ").endswith(needle) and fields[3] in ("0A", "01"):
                        return True
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def paint_time(image: np.ndarray, when: float) -> None:
    """Write ``when`` (seconds) as BITS black/white blocks along the top rows."""
    ms = int(when * 1000)
    per_row = image.shape[1] // BLOCK
    for bit in range(BITS):
        row, col = divmod(bit, per_row)
        value = 255 if (ms >> bit) & 1 else 0
        image[row * BLOCK : (row + 1) * BLOCK, col * BLOCK : (col + 1) * BLOCK] = value


def read_time(frame: np.ndarray, scale: float, pad_left: int, pad_top: int) -> float:
    """Inverse of paint_time on a letterboxed frame: seconds since the epoch."""
    width_blocks = round((frame.shape[1] - 2 * pad_left) / scale) // BLOCK
    ms = 0
    gray = frame.mean(axis=2) if frame.ndim == 3 else frame
    for bit in range(BITS):
        row, col = divmod(bit, width_blocks)
        y = int(pad_top + (row + 0.5) * BLOCK * scale)
        x = int(pad_left + (col + 0.5) * BLOCK * scale)
        if gray[y, x] > 127:
            ms |= 1 << bit
    return ms / 1000


class FFmpegSource:
    """ffmpeg serving a live stream on 127.0.0.1 until stopped; ``start`` again to restart.

    Args:
        kind: "mjpeg" (HTTP multipart JPEG) or "mpegts" (H.264 in MPEG-TS over TCP).
        fps: frames per second served.
        size: (width, height).
        stamped: frames made here with their creation time painted in (else a test pattern).
        video: a video served as it is, looped at its own rate: an MJPEG video's JPEGs
            ("mjpeg"), or an H.264 video's stream ("mpegts"); fps and size are the video's.
    """

    def __init__(
        self,
        kind: str,
        *,
        fps: int | str = 30,
        size: tuple[int, int] = (320, 240),
        stamped: bool = False,
        video: Path | None = None,
    ) -> None:
        self.kind = kind
        self.fps = fps
        self.size = size
        self.stamped = stamped
        self.video = video
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._feeder: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.kind == "mjpeg":
            return f"http://127.0.0.1:{self.port}/camera.mjpg"
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> FFmpegSource:
        """Serve, as a camera that comes on; a one-client server whose first client left at
        once (a reconnecting camera's try) is started again, as a camera would still be on."""
        for _ in range(5):
            if self._serve():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"ffmpeg on 127.0.0.1:{self.port} kept ending before it served")

    def _serve(self) -> bool:
        width, height = self.size
        if self.video is not None:
            source = ["-re", "-stream_loop", "-1", "-i", str(self.video), "-c:v", "copy"]
        elif self.stamped:
            source = ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}"]
            source += ["-framerate", str(self.fps), "-i", "-"]
        else:
            source = ["-re", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={self.fps}"]
        if self.kind == "mjpeg":
            quality = [] if self.video is not None else ["-q:v", "5"]
            sink = ["-f", "mpjpeg", *quality, "-listen", "1", self.url]
        elif self.video is not None:  # its H.264 stream as it is
            sink = ["-f", "mpegts", f"{self.url}?listen=1"]
        else:
            sink = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]
            sink += ["-g", str(self.fps), "-f", "mpegts", f"{self.url}?listen=1"]
        quiet = [FFMPEG, "-hide_banner", "-loglevel", "error"]
        if not self.stamped:
            quiet.append("-nostdin")
        self.process = subprocess.Popen(
            [*quiet, *source, *sink],
            stdin=subprocess.PIPE if self.stamped else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self.stamped:
            self._feeder = threading.Thread(target=self._feed, args=(self.process,), daemon=True)
            self._feeder.start()
        return wait_listening(self.port, process=self.process)

    def _feed(self, process: subprocess.Popen[bytes]) -> None:
        width, height = self.size
        base = np.full((height, width, 3), 90, np.uint8)
        base[height // 3 :, width // 4 : 3 * width // 4] = (60, 120, 170)  # a box-ish block
        interval = float(1 / Fraction(self.fps))
        next_at = time.monotonic()
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            while process.poll() is None:
                frame = base.copy()
                paint_time(frame, time.time())
                process.stdin.write(frame.tobytes())
                process.stdin.flush()
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        """Kill it, as a camera that loses power would go."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            if self.process.stdin is not None:
                with contextlib.suppress(OSError):
                    self.process.stdin.close()
            self.process = None
        if self._feeder is not None:
            self._feeder.join(timeout=5)
            self._feeder = None


class RtspSource:
    """GStreamer's RTSP server with a live H.264 test pattern on 127.0.0.1."""

    def __init__(
        self,
        *,
        fps: int = 30,
        size: tuple[int, int] = (320, 240),
        credentials: tuple[str, str] | None = None,
        udp_only: bool = False,
    ) -> None:
        self.fps = fps
        self.size = size
        self.credentials = credentials  # (user, password) it asks for, Basic; None: none
        self.udp_only = udp_only  # refuses RTP over TCP (461 Unsupported transport)
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/camera"

    def start(self) -> RtspSource:
        python = SYSTEM_PYTHON if Path(SYSTEM_PYTHON).exists() else shutil.which("python3")
        assert python, "no system python3 with PyGObject for the RTSP server"
        width, height = self.size
        self.process = subprocess.Popen(
            [
                python,
                str(RTSP_SCRIPT),
                "--port",
                str(self.port),
                "--path",
                "/camera",
                "--size",
                f"{width}x{height}",
                "--fps",
                str(self.fps),
                *(
                    ("--user", self.credentials[0], "--password", self.credentials[1])
                    if self.credentials
                    else ()
                ),
                *(("--udp-only",) if self.udp_only else ()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"RTSP server did not start: {line} {err}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.communicate(timeout=10)
            self.process = None


@contextlib.contextmanager
def running(*sources: FFmpegSource | RtspSource) -> Iterator[None]:
    try:
        for source in sources:
            source.start()
        yield
    finally:
        for source in sources:
            source.stop()


def blackhole() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, int(sock.getsockname()[1])


def write_video(
    path: Path,
    frames: int = 20,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    raw: bool = False,
    pattern: str = "testsrc",
) -> Path:
    """A short H.264 MP4 made by ffmpeg from its test pattern (or another of its lavfi
    sources, e.g. "color=c=black" for a covered lens); raw: an elementary stream of no
    container, as a DVR exports, H.264 or, for a path ending .mjpeg, MJPEG."""
    width, height = size
    codec = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    if raw:
        codec = (
            ["-c:v", "mjpeg", "-f", "mjpeg"] if path.suffix == ".mjpeg" else [*codec, "-f", "h264"]
        )
    subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"{pattern}{':' if '=' in pattern else '='}size={width}x{height}:rate={fps}",
            "-frames:v",
            str(frames),
            *codec,
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


def write_mjpeg(
    path: Path,
    packets: list[bytes],
    fps: int = 10,
    size: tuple[int, int] | None = None,
    fourcc: bytes = b"MJPG",
) -> Path:
    """An MJPEG AVI whose frames are these packets byte for byte (whole JPEGs, as an MJPEG
    camera sends them, or anything else a test needs). size (width, height) is what the
    container says, by default the first JPEG's own."""
    if size is None:
        size = jpeg_size(packets[0])
    width, height = size
    largest = max(len(p) for p in packets)
    avih = struct.pack("<10I4I", 1_000_000 // fps, 0, 0, 0x10, len(packets), 0, 1, largest,
                       width, height, 0, 0, 0, 0)  # fmt: skip
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", fourcc, 0, 0, 0, 0, 1, fps, 0,
                       len(packets), largest, 0xFFFFFFFF, 0, 0, 0, width, height)  # fmt: skip
    strf = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, fourcc, width * height * 3,
                       0, 0, 0, 0)  # fmt: skip
    header = _riff_list(
        b"hdrl",
        _riff(b"avih", avih) + _riff_list(b"strl", _riff(b"strh", strh) + _riff(b"strf", strf)),
    )
    movie, index, offset = b"", b"", 4
    for packet in packets:
        chunk = _riff(b"00dc", packet)
        index += struct.pack("<4sIII", b"00dc", 0x10, offset, len(packet))
        movie += chunk
        offset += len(chunk)
    body = b"AVI " + header + _riff_list(b"movi", movie) + _riff(b"idx1", index)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _riff(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _riff_list(kind: bytes, data: bytes) -> bytes:
    return _riff(b"LIST", kind + data)


__all__ = [
    "FFMPEG",
    "FFmpegSource",
    "RtspSource",
    "blackhole",
    "free_port",
    "paint_time",
    "read_time",
    "running",
    "write_mjpeg",
    "write_video",
]
