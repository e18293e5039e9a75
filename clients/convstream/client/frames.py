"""Frames to send: numpy arrays, JPEG/PNG bytes, image files and folders, video and cameras.

    for frame in read_images(["shelf.jpg", "photos/"]): ...      # files, folders (sorted)
    with Video("conveyor.avi") as video:                           # or Video(0) for a camera
        for result in client.stream(video.frames()): ...

Anything ``Client.analyze`` and ``Client.stream`` accept is a ``FrameLike``: a ``Frame``, a
BGR array, encoded bytes or a path to an image file.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import numbers
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Union, cast
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp

from convstream.client.errors import InvalidFrame, SourceError
from convstream.client.options import Upload
from convstream.v1 import MAX_ASPECT, file_holds_text, what_it_holds
from convstream.v1 import convstream_pb2 as pb
from convstream.v1.diagnose import why_closed
from convstream.v1.redaction import redact

__all__ = [
    "Frame",
    "FrameLike",
    "Video",
    "VideoFrames",
    "as_frame",
    "image_files",
    "read_image",
    "read_images",
]

logger = logging.getLogger("convstream.client")

# A 1x1 GIF: OpenCV decodes GIF (its first frame) from 4.11 on; the wheels allowed from
# 4.10 do not, and a folder's GIF was then a failed frame, said to be a format it decodes.
_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
DECODES_GIF = cv2.imdecode(np.frombuffer(_GIF, np.uint8), cv2.IMREAD_COLOR) is not None
# what OpenCV decodes; a folder's other files are left out, said so
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", *([".gif"] * DECODES_GIF)}
)
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # what the server decodes as it is
MIN_SIDE = 32  # pixels a side a frame needs at least (the convstream.v1 API's rule)
PADDING_GREY = 114  # the server's letterbox padding, and what it sees through transparency
VIDEO_SUFFIXES = {
    ".avi": "AVI",
    ".mp4": "MP4",
    ".m4v": "MP4",
    ".mov": "QuickTime",
    ".mkv": "Matroska",
    ".webm": "WebM",
    ".mpg": "MPEG",
    ".mpeg": "MPEG",
    ".ts": "MPEG-TS",
    ".m2ts": "MPEG-TS",
    ".flv": "FLV",
    ".wmv": "Windows Media",
    ".asf": "Windows Media",
    ".3gp": "3GPP",
}
# ISO base media files (MP4, QuickTime) that hold a still image, not a video
_STILL_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def video_container(path: str | os.PathLike[str]) -> str | None:
    """The video container a file holds, e.g. "AVI" or "MP4", judged by its leading bytes
    or, when they say nothing, its suffix: so that a video given where images go is named
    before megabytes of it are uploaded to be refused. None for an image or anything else.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(_MAGIC):
        return None  # an image, whatever its name says
    return _video_magic(head) or VIDEO_SUFFIXES.get(Path(path).suffix.lower())


def _video_magic(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[4:8] == b"ftyp":
        if head[8:12] in _STILL_BRANDS:
            return None
        return "QuickTime" if head[8:12] == b"qt  " else "MP4"
    if head[4:8] in (b"moov", b"mdat", b"wide"):
        return "QuickTime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM" if b"webm" in head[:64] else "Matroska"
    if head.startswith(b"FLV\x01"):
        return "FLV"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "Windows Media"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "MPEG"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "MPEG-TS"  # a sync byte every 188-byte packet
    return None


@dataclass(frozen=True, eq=False, repr=False)
class Frame:
    """One frame to analyse.

    Args:
        image: BGR uint8 pixels, shape (H, W, 3), gray uint8 (H, W), or JPEG/PNG bytes. An
            RGB array (PIL, imageio, torchvision) is read as BGR and scores a little
            differently, without an error: convert it first, ``cv2.cvtColor(array,
            cv2.COLOR_RGB2BGR)``.
        frame_id: echoed in the result, 0 to 2**64 - 1; None lets the client number the
            frames of each call 1, 2, 3, ..., after the largest id given so far. Within one
            stream, a frame's id must differ from those of the frames not yet answered.
        source: where frames come from, e.g. "dock-3" (at most 256 characters); the server's
            metrics are labelled by it.
        capture_time: seconds since the epoch when the frame was captured; the result's
            frame_age_ms counts from it (from arrival at the server when None).
        name: for people and overlay file names, e.g. a path or "clip.avi#12"; never sent.
    """

    image: np.ndarray | bytes
    frame_id: int | None = None
    source: str = ""
    capture_time: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.image, bytearray | memoryview):
            object.__setattr__(self, "image", bytes(self.image))
        if not isinstance(self.image, np.ndarray | bytes):
            got = type(self.image).__name__
            hint = (
                ": for a file, give analyze() or stream() its path, or read it with "
                "read_image(path), which returns a Frame"
                if isinstance(self.image, str | os.PathLike)
                else ""
            )
            raise TypeError(
                f"a Frame's image is pixels (a numpy array) or JPEG/PNG bytes, got {got}{hint}"
            )
        if self.frame_id is not None:  # here, not when sent: a stream ended on it
            _check_frame_id(self.frame_id)

    def pixels(self) -> npt.NDArray[np.uint8]:
        """The frame as BGR uint8, shape (H, W, 3), decoding bytes if need be.

        Raises:
            SourceError: bytes that are no picture, or none (a file that could not be read).
        """
        image: np.ndarray | None = self.image if isinstance(self.image, np.ndarray) else None
        if image is None:
            data = np.frombuffer(self.image, np.uint8)  # type: ignore[arg-type]
            # Turned as its EXIF orientation says (a phone's portrait photo), as a viewer
            # shows it and the server analyses it: the result's geometry and heatmap are in
            # these pixels' coordinates.
            # no bytes (a file that could not be read): OpenCV asserts on an empty buffer
            image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
            if image is not None and self.image[:8] == _MAGIC[1] and image.size:
                image = _transparency_as_analysed(data, image)
            if image is None:
                raise SourceError(f"cannot decode {self.name or 'frame'} ({data.size} bytes)")
        if image.ndim == 2 or image.shape[2] == 1:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return cast("npt.NDArray[np.uint8]", image)  # OpenCV's types say any number

    def __repr__(self) -> str:
        if isinstance(self.image, np.ndarray):
            image = f"<{self.image.dtype} {self.image.shape}>"
        else:
            image = f"<{len(self.image)} bytes>"
        name = f"name={self.name!r}, " if self.name else ""
        return f"Frame({name}frame_id={self.frame_id}, image={image})"


FrameLike = Union[Frame, np.ndarray, bytes, str, "os.PathLike[str]"]


def as_frame(item: FrameLike) -> Frame:
    """A Frame from anything the client accepts (a path is read now)."""
    if isinstance(item, Frame):
        return item
    if isinstance(item, np.ndarray):
        check_pixels(item)
        return Frame(item)
    if isinstance(item, bytes | bytearray | memoryview):
        return Frame(bytes(item))
    if isinstance(item, str | os.PathLike):
        return read_image(item)
    raise TypeError(
        f"a frame must be a Frame, a BGR numpy array, JPEG/PNG bytes or an image path, "
        f"got {type(item).__name__}"
    )


def _transparency_as_analysed(data: np.ndarray, opaque: np.ndarray) -> np.ndarray:
    """A PNG as the server analyses it: transparent pixels over the grey it pads frames
    with, not the colour they hide (``opaque``, OpenCV's reading, when it has no alpha)."""
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # as stored: OpenCV does not turn it
    if (
        image is None
        or image.ndim != 3
        or image.shape[2] != 4
        or image.shape[:2] != opaque.shape[:2]
    ):
        return opaque  # (a PNG both transparent and turned a quarter by its eXIf is drawn so)
    alpha = image[..., 3:] / (65535.0 if image.dtype == np.uint16 else 255.0)
    mixed = opaque * alpha + PADDING_GREY * (1 - alpha)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def check_pixels(image: np.ndarray) -> None:
    """ValueError unless image is BGR uint8 (H, W, 3) or gray uint8 (H, W) or (H, W, 1)."""
    ok_shape = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
    if image.dtype != np.uint8 or not ok_shape or 0 in image.shape:
        raise ValueError(
            "frame pixels must be BGR uint8 of shape (H, W, 3) or gray uint8 of shape (H, W), "
            f"got {image.dtype} of shape {image.shape}"
        )


def read_image(path: str | os.PathLike[str]) -> Frame:
    """An image file as a Frame: JPEG and PNG keep their bytes (the server decodes them and
    says what is wrong with a broken one), other formats are decoded here.

    Raises:
        SourceError: the file cannot be read, is empty, is a video, or is no image OpenCV
            can decode.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if data.startswith(_MAGIC):
        return Frame(data, name=str(path))
    kind = _video_magic(data[:512])
    pixels = None
    if kind is None and data:
        # Turned as its EXIF orientation says, as the server turns a JPEG or PNG: one rule
        # for every image, whichever side decodes it.
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            kind = VIDEO_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        raise SourceError(
            f"{path} is a video ({kind}), not an image: read its frames with "
            f"Video({str(path)!r}) (from the shell, `convstream stream {path}`)"
        )
    if pixels is None:
        raise SourceError(
            f"{path} is not an image: not a JPEG or PNG, nor a format OpenCV decodes (BMP, "
            f"{'GIF, ' * DECODES_GIF}TIFF, WebP, ...); {what_it_holds(data)}"
        )
    return Frame(pixels, name=str(path))


def _why(source: str | int | os.PathLike[str], waited_s: float) -> str:
    """Why a video source did not open, as far as one look tells: a file's content, a URL's
    answer (the server's camera diagnosis: refused, no answer, a 404, a 401...); "" for a
    device. ``waited_s``: OpenCV's open, which the diagnosis counts in its "within N s"."""
    if isinstance(source, int):
        return ""
    if is_live(source):
        return f": {why_closed(str(source), 3.0, waited_s)}"
    path = Path(source)
    try:
        with path.open("rb") as file:
            head = file.read(48)
        return f": not a video OpenCV can read ({what_it_holds(head, path.stat().st_size)})"
    except OSError as exc:
        return f": {exc.strerror or exc}"


Paths = Iterable[str | os.PathLike[str]] | str | os.PathLike[str]
"""Files and folders: a list of them, or one (``image_files("images")`` went through the
name's letters, and said that no file "i" exists)."""


def _each(paths: Paths) -> Iterable[str | os.PathLike[str]]:
    return [paths] if isinstance(paths, str | os.PathLike) else paths


def image_files(paths: Paths) -> list[Path]:
    """Expand folders (recursively, sorted) into their image files; files stay as given.

    In a folder, hidden files and folders (a name starting with '.': macOS's ``._x.jpg``
    beside each copied file, a viewer's ``.thumbnails/``) and what is not a file (a folder
    named ``x.jpg``, a broken link) are left out.

    Raises:
        SourceError: a path does not exist.
    """
    found: list[Path] = []
    for item in _each(paths):
        path = Path(item)
        if path.is_dir():
            found.extend(p for p in _visible_files(path) if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise SourceError(f"no such file or folder: {path}")
    return found


def other_files(paths: Paths) -> list[Path]:
    """The files that image_files leaves out of the folders among ``paths`` as no images
    (by their suffix: a video, notes, ...); hidden ones are not counted."""
    found: list[Path] = []
    for item in _each(paths):
        if (path := Path(item)).is_dir():
            found.extend(p for p in _visible_files(path) if p.suffix.lower() not in IMAGE_SUFFIXES)
    return found


def _visible_files(folder: Path) -> list[Path]:
    """The files under folder, sorted, without hidden files and folders (a name starting
    with '.') or what is not a file (a folder named x.jpg, a broken link)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()
    )


def read_images(paths: Paths) -> Iterator[Frame]:
    """Frames from image files and folders, read one at a time as they are needed.

    A file that is no image raises SourceError, which ends the iteration (and a stream of
    it); ``client.stream(image_files(paths))`` reads the same files in the stream, where
    such a file is that frame's error result and the rest go on.
    """
    for path in image_files(paths):
        yield read_image(path)


def to_request(
    frame: Frame, frame_id: int, upload: Upload, max_bytes: int | None = None
) -> pb.FrameRequest:
    """The wire message for a frame, encoding pixels as ``upload`` says (no options set).

    Raises:
        InvalidFrame: the message would pass ``max_bytes`` (the channel's limit): gRPC
            would refuse it with its own words, and end the stream it was on.
    """
    request = _to_request(frame, frame_id, upload)
    # room for the options a request may carry besides (a frame within a few bytes of the
    # limit got gRPC's refusal all the same)
    if max_bytes is not None and (size := request.ByteSize()) > max_bytes - OPTIONS_ROOM:
        raw = request.HasField("raw")
        kind = _KINDS.get(bytes(request.encoded[:3]))
        # a JPEG or PNG goes as it is (what the server analyses is the file): re-encoding it
        # is the caller's (a JPEG was told to send it as JPEG; a newcomer's 90 MB PNG got
        # "send it smaller" after the Frame's repr); pixels are encoded as Upload says
        if raw:
            what, advice = "as raw pixels", "send it as JPEG, Upload(format='jpeg'), or smaller"
        elif isinstance(frame.image, np.ndarray):
            what = f"encoded as {kind or 'asked'} here"
            advice = (
                "send it as JPEG, Upload(format='jpeg'), or smaller"
                if kind == "PNG"
                else "send it smaller, or at a lower Upload(quality=...)"
            )
        elif kind == "PNG":
            what = "as the PNG it is"
            advice = "save it as a JPEG (a photo's PNG is several times its JPEG), or smaller"
        else:
            what = f"as the {kind} it is" if kind else "as encoded bytes"
            advice = "save it at a lower JPEG quality, or smaller"
        raise InvalidFrame(
            f"{frame.name or f'frame {frame_id}'} is {size:,} bytes {what}, over the "
            f"{max_bytes - OPTIONS_ROOM:,} a frame may take of the {max_bytes:,}-byte message "
            f"limit (Limits.max_message_bytes; the server's max_message_bytes): {advice}"
        )
    return request


OPTIONS_ROOM = 4096  # bytes kept for a request's options beside its frame
_KINDS = {_MAGIC[0]: "JPEG", _MAGIC[1][:3]: "PNG"}  # by an encoded frame's first bytes


def as_sent(frame: Frame, request: pb.FrameRequest) -> Frame:
    """The frame as its request carries it, for its result to keep: pixels this side
    encoded are kept as the JPEG or PNG bytes sent, which are what the server analysed, at
    a tenth of the memory or less (the 300 results of a 10 s 720p clip hold 49 MiB of JPEG,
    791 MiB as pixels: benchmarks/bench_client_memory.py); ``pixels()`` decodes them when
    an overlay needs them (about 2.4 ms for a 720p JPEG)."""
    if isinstance(frame.image, np.ndarray) and request.WhichOneof("image") == "encoded":
        return dataclasses.replace(frame, image=request.encoded)
    return frame


def _check_frame_id(frame_id: object) -> None:
    if not (isinstance(frame_id, numbers.Integral) and 0 <= int(frame_id) < 1 << 64):
        raise ValueError(f"frame_id must be an integer from 0 to 2**64 - 1, got {frame_id!r}")


def _to_request(frame: Frame, frame_id: int, upload: Upload) -> pb.FrameRequest:
    _check_frame_id(frame_id)
    request = pb.FrameRequest(frame_id=int(frame_id), source=frame.source)
    if frame.capture_time is not None:
        set_capture_time(request.capture_time, frame.capture_time)
    image = frame.image
    if not isinstance(image, np.ndarray):
        request.encoded = image
        return request
    check_pixels(image)
    if min(image.shape[:2]) < MIN_SIDE:  # said of the array: the JPEG made of it is ours
        raise InvalidFrame(
            f"{frame!r} is {image.shape[1]}x{image.shape[0]} pixels; frames must be at least "
            f"{MIN_SIDE}x{MIN_SIDE}: scaled up to the model's input, a smaller one is a blur "
            "it cannot judge"
        )
    height, width = image.shape[:2]
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidFrame(
            f"{frame!r} is {width}x{height} pixels; frames may be at most {MAX_ASPECT} times "
            "as wide as high or as high as wide: fitted into the model's input, a narrower "
            "one is a strip under four heatmap cells"
        )
    if upload.format == "raw":
        gray = image.ndim == 2 or image.shape[2] == 1
        request.raw.width, request.raw.height = image.shape[1], image.shape[0]
        request.raw.format = pb.PIXEL_FORMAT_GRAY8 if gray else pb.PIXEL_FORMAT_BGR8
        request.raw.data = np.ascontiguousarray(image).tobytes()
        return request
    if upload.format == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, upload.quality])
    else:
        ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} frame as {upload.format}")
    request.encoded = data.tobytes()
    return request


def set_capture_time(stamp: Timestamp, seconds: float) -> None:
    """Write seconds since the epoch into a Timestamp as they are, even out of its range
    (milliseconds by mistake, a date before 1970), so that the server refuses that frame
    alone and says why, rather than this side ending the stream."""
    if not (isinstance(seconds, numbers.Real) and math.isfinite(seconds)) or abs(seconds) >= 2**62:
        raise ValueError(f"capture_time must be seconds since the Unix epoch, got {seconds!r}")
    whole = math.floor(seconds)
    nanos = min(round((float(seconds) - whole) * 1e9), 999_999_999)
    stamp.seconds, stamp.nanos = whole, nanos


def public_url(url: str) -> str:
    """A camera URL as it may be shown and sent: without the user name and password before
    its host (rtsp://admin:pw@cam/x named the frames' source, which the server echoes in
    results, logs, and counts under on /metrics), and with its query's values hidden as the
    server hides them (``redact``: ?channel=1&subtype=0 stay, as they tell an NVR's channels
    apart; ?user=admin&password=... do not, since results may be published to other
    clients). Anything but a URL (a path) as it is."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # not a URL urllib reads (a bad port): the scheme alone
        return url.split("://", 1)[0] + "://..."
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return redact(urlunsplit((parts.scheme, host + port, parts.path, parts.query, "")))


def utf8_name(path: str | os.PathLike[str]) -> bool:
    """Whether a path's name is UTF-8, as OpenCV's file functions need: a name in another
    encoding (Latin-1's "caf\xe9.jpg") reaches Python with surrogates in it, on which OpenCV
    crashes the process."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class VideoFrames(Iterator[Frame]):
    """What ``Video.frames()`` returns: the Video's frames, one at a time, as a generator
    gives them (``close()`` stops it).

    Attributes:
        latest: each frame is the newest the source has (a latest-only Video, e.g. a
            camera): a stream then reads few of them ahead of its results
            (``Limits.fresh_in_flight``), so a loop slower than the camera gets results of
            fresh frames rather than of a backlog read while it was busy.
    """

    def __init__(self, frames: Generator[Frame, None, None], latest: bool) -> None:
        self._frames = frames
        self.latest = latest

    def __iter__(self) -> VideoFrames:
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()

    @property
    def closed(self) -> bool:
        """Ended, or closed: it gives no frame more (a stream closes it when it ends)."""
        return inspect.getgeneratorstate(self._frames) == inspect.GEN_CLOSED


def is_live(source: object) -> bool:
    """A camera index or a URL: a source read as it comes, which does not end."""
    return isinstance(source, int) or "://" in str(source)


def check_loop(loop: bool, source: object, live: bool | None = None) -> None:
    """ValueError for looping (``Video(loop=True)``, ``stream --loop``) a live source: a
    camera index or a URL, which never ends (``live``: as a Video found its own capture)."""
    live = is_live(source) if live is None else live
    if loop and live:
        shown = public_url(source) if isinstance(source, str) else source
        raise ValueError(f"looping is for video files: {shown!r} is live, and does not end")


class Video:
    """Frames from a video file, a URL OpenCV opens, or a camera, read on this side.

    A context manager that always releases the device:

        with Video("conveyor.avi") as video:
            print(video.fps, video.frame_count)
            for frame in video.frames():
                ...

    Args:
        source: a video file, a URL (rtsp://, http://), a camera index (0: the first), or a
            ``cv2.VideoCapture`` you opened and set up yourself (a GStreamer pipeline, a USB
            camera set to 1920x1080 with ``capture.set``): the Video takes it over and
            releases it on close. Such a capture is live unless it reports a frame count.
        name: the ``source`` sent with each frame; the file's stem, "camera0" or "capture"
            by default.
        latest_only: read in a background thread and hand out only the newest frame, so a
            consumer slower than a live camera sees fresh frames instead of a growing lag (the
            frames skipped leave gaps in frame ids). Default: on for cameras and URLs, off for
            files, where every frame is read in order.
        max_frames: stop after this many frames.
        realtime: a file's frames at the file's own frame rate (``fps``, when it says one),
            as a camera would deliver them and as the server plays a file camera: a stream
            then lasts as long as the clip, and a published one stays on the dashboard that
            long. Off (the default): as fast as they are taken, to analyse a file quickly.
            Cameras and URLs always come at their own pace.
        loop: start a file again from its first frame when it ends, for ever (or until
            ``max_frames``), as the server plays a file camera: a recording standing in for
            a camera. Frame ids go on counting. ValueError for a camera or a URL, which do
            not end; a file with no frame to read still ends (a source that gives no frame
            at all logs a warning on the "convstream.client" logger).

    Attributes:
        fps: the frame rate OpenCV reports (0.0 when unknown).
        frame_count: frames in a file, as its header gives them; None for cameras, URLs and
            unknown lengths. A file that ends with under 90% of them read (a recording copied
            in part) logs a warning on the "convstream.client" logger when frames() ends.
        frames_read: frames read from the source so far.

    Frame ids count the frames read from the source from 0; live frames, and a file's frames
    with ``realtime``, carry the time they were read as capture_time.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | int | cv2.VideoCapture,
        *,
        name: str | None = None,
        latest_only: bool | None = None,
        max_frames: int | None = None,
        realtime: bool = False,
        loop: bool = False,
    ) -> None:
        if isinstance(source, cv2.VideoCapture):
            if not source.isOpened():
                raise SourceError(
                    "the cv2.VideoCapture given is not open (its isOpened() is False)"
                )
            self.live = int(source.get(cv2.CAP_PROP_FRAME_COUNT) or 0) <= 0
            check_loop(loop, source, self.live)
            self._capture = source
        else:
            self.live = is_live(source)
            check_loop(loop, source, self.live)
            if not isinstance(source, int) and not self.live:
                path = Path(source)
                if path.is_dir():
                    raise SourceError(
                        f"{path} is a folder, not a video file (for its images: "
                        f"client.stream(image_files([{str(path)!r}])))"
                    )
                if not path.is_file():
                    raise SourceError(f"no such video file: {path}")
                if not utf8_name(path):  # OpenCV crashed the process on it
                    raise SourceError(
                        f"{str(path)!r}: OpenCV opens only file names that are UTF-8; rename it"
                    )
            opening = time.monotonic()
            self._capture = cv2.VideoCapture(source if isinstance(source, int) else str(source))
            # a text file FFmpeg opens as console text (.txt, .nfo) is no video all the same
            text = not isinstance(source, int) and not self.live and file_holds_text(source)
            if text or not self._capture.isOpened():
                waited = time.monotonic() - opening
                self._capture.release()
                device = Path(f"/dev/video{source}") if isinstance(source, int) else None
                if device is not None and sys.platform.startswith("linux") and not device.exists():
                    raise SourceError(
                        f"no camera {source} on this machine: {device} does not exist"
                    )
                shown = public_url(source) if isinstance(source, str) else source
                raise SourceError(
                    f"OpenCV cannot open video source {shown!r}{_why(source, waited)}"
                )
        self.source = source
        self.loop = loop
        self._read_this_pass = 0  # frames read since the file was last started again
        self.name = name if name is not None else self.default_name(source)
        self.latest_only = self.live if latest_only is None else latest_only
        self.max_frames = max_frames
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = None if self.live or count <= 0 else count
        self._latest: _LatestReader | None = None
        self._index = 0
        self.frames_read = 0  # from the source, also those a latest-only Video passed over
        # One read or release at a time: OpenCV frees the capture's buffers on release(), and
        # a read still running on another thread (a stream's feed, the latest-only reader)
        # would crash the process. Whoever finds the Video closed after a read releases it.
        self._lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()  # wakes a paced read up at once
        paced = realtime and not self.live and 0 < self.fps <= 240
        self._pacer = _Pacer(self.fps, self._closing) if paced else None

    @staticmethod
    def default_name(source: str | os.PathLike[str] | int | cv2.VideoCapture) -> str:
        """The ``name`` a Video of source gets when none is given: a file's stem ("conveyor"
        for conveyor.avi), "camera0" for camera 0, a URL without the user and password before
        its host (public_url), "capture" for a cv2.VideoCapture."""
        if isinstance(source, cv2.VideoCapture):
            return "capture"
        if isinstance(source, int):
            return f"camera{source}"
        if "://" in str(source):
            return public_url(str(source))  # the name the server is sent
        return Path(source).stem

    def frames(self) -> VideoFrames:
        """Its frames until the source ends, ``max_frames`` is reached or close() is called."""
        return VideoFrames(self._frames(), latest=self.latest_only)

    def _frames(self) -> Generator[Frame, None, None]:
        read = self._read_latest if self.latest_only else self._read_next
        served = 0
        while self.max_frames is None or served < self.max_frames:
            item = read()
            if item is None:
                self._say_how_it_ended()
                return
            index, image, taken = item
            served += 1
            yield Frame(
                image,
                frame_id=index,
                source=self.name,
                capture_time=taken if self.live or self._pacer is not None else None,
                name=f"{self.name}#{index}",
            )

    def _say_how_it_ended(self) -> None:
        """A source that gave no frame at all (a text file named .avi, which OpenCV opens; a
        stream that closed at once) is said, as a warning: a program's loop over its frames
        ended at once, as over an empty clip, and nothing told why. A file that ended well
        before the frames its header gives (a recording copied in part) is said too: it
        ended as if whole, and a check of it passed."""
        if self._closed:
            return
        if not self.frames_read:
            if isinstance(self.source, cv2.VideoCapture):
                shown, hint = "the cv2.VideoCapture given", "is its source sending?"
            elif isinstance(self.source, int):
                shown, hint = f"camera {self.source}", "is another program using it?"
            elif self.live:
                shown, hint = public_url(str(self.source)), "its stream ended at once"
            else:
                shown = str(self.source)
                hint = "expected a video file, a URL or a camera index"
            logger.warning("OpenCV opened %s but read no frame from it; %s", shown, hint)
            return
        count = self.frame_count
        if count is None or not self.frames_read < 0.9 * count:
            return  # container counts can be estimates: a few frames short is not said
        logger.warning(
            "%s ended after %d of the %d frames its header gives: is the file cut short?",
            self.name,
            self.frames_read,
            count,
        )

    def _read(self) -> np.ndarray | None:
        """The next image, or None at the end or once closed (thread-safe)."""
        if self._pacer is not None and not self._pacer.wait():
            return None  # closed while waiting for the frame's time
        with self._lock:
            if self._closed:
                return None
            ok, read = self._capture.read()
            image: np.ndarray | None = read if ok else None
            if image is None and self.loop and self._read_this_pass:
                self._read_this_pass = 0
                image = self._read_first()
            if self._closed:  # closed during this read (close() may have stopped waiting)
                self._capture.release()
                return None
            self.frames_read += image is not None
            self._read_this_pass += image is not None
            return image

    def _read_first(self) -> np.ndarray | None:
        """The file's first frame again (under the lock): seek back, or open the file again
        where its container cannot seek (or a seek lands elsewhere, or on no frame: a file
        of one frame)."""
        if self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0) and not self._capture.get(
            cv2.CAP_PROP_POS_FRAMES
        ):
            ok, image = self._capture.read()
            if ok:
                return image
        if isinstance(self.source, cv2.VideoCapture):
            return None  # a capture set up by the caller cannot be opened again here
        self._capture.release()
        self._capture = cv2.VideoCapture(str(self.source))
        ok, image = self._capture.read()
        return image if ok else None

    def _read_next(self) -> tuple[int, np.ndarray, float] | None:
        image = self._read()
        if image is None:
            return None
        self._index += 1
        return self._index - 1, image, time.time()

    def _read_latest(self) -> tuple[int, np.ndarray, float] | None:
        if self._latest is None:
            self._latest = _LatestReader(self._read)
        return self._latest.get()

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading and release the file or device; safe to call twice, and from another
        thread than the one reading.

        A read in progress (a stream's feed thread may be inside one) finishes first; if it
        takes longer than ``timeout`` seconds (a stalled camera), close returns and the
        device is released as soon as that read returns.
        """
        self._closed = True
        self._closing.set()
        if self._latest is not None:
            self._latest.stop(timeout)
        if self._lock.acquire(timeout=timeout):
            try:
                self._capture.release()
            finally:
                self._lock.release()

    def __enter__(self) -> Video:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        source = repr(self.source)
        if isinstance(self.source, cv2.VideoCapture):
            source = "<cv2.VideoCapture>"
        elif isinstance(self.source, str):
            source = repr(public_url(self.source))
        return f"Video({source}, name={self.name!r}, fps={self.fps:g})"


class _Pacer:
    """A file's frames at its frame rate: ``wait`` returns at the next frame's time, at once
    for the first; a reader that fell behind catches up by one frame at most, as the server's
    file cameras do, rather than send a burst."""

    def __init__(self, fps: float, closing: threading.Event) -> None:
        self._interval = 1 / fps
        self._closing = closing
        self._next: float | None = None

    def wait(self) -> bool:
        """Wait for the next frame's time; False if closed meanwhile."""
        now = time.monotonic()
        due = now if self._next is None else self._next
        if due > now and self._closing.wait(due - now):
            return False
        now = time.monotonic()
        self._next = max(due + self._interval, now - self._interval)
        return not self._closing.is_set()


class _LatestReader:
    """Reads a source in a thread and keeps only the newest frame. A read that raises (a
    cv2.error from a capture the caller set up) ends it, and get() raises that error after
    the newest frame: the thread had died and get() waited for ever."""

    def __init__(self, read: Callable[[], np.ndarray | None]) -> None:
        self._read = read
        self._cond = threading.Condition()
        self._newest: tuple[int, np.ndarray, float] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="convstream-video", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index = 0
        try:
            while not self._done:
                image = self._read()
                with self._cond:
                    if image is None:
                        self._done = True
                    else:
                        self._newest = (index, image, time.time())
                        index += 1
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the reader by get()
            with self._cond:
                self._error, self._done = exc, True
                self._cond.notify_all()

    def get(self) -> tuple[int, np.ndarray, float] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._newest is not None or self._done)
            item, self._newest = self._newest, None
            if item is None and self._error is not None:
                # raised once, and not kept: its traceback holds this reader
                error, self._error = self._error, None
                raise error
            return item

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._thread.join(timeout)
