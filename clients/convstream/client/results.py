"""What the server answers, as plain Python: numpy arrays already decoded from the wire."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp

from convstream.client.errors import ConvstreamError, from_status
from convstream.client.frames import Frame
from convstream.client.options import FRESHNESS, Freshness
from convstream.client.tensors import to_numpy
from convstream.v1 import content_box
from convstream.v1 import convstream_pb2 as pb

__all__ = [
    "CameraInfo",
    "CameraState",
    "Geometry",
    "ModelInfo",
    "Region",
    "Result",
    "Stage",
    "Timings",
]

CameraState = Literal[
    "connecting", "running", "stalled", "reconnecting", "failed", "stopped", "unknown"
]


def camera_state_name(state: int) -> CameraState:
    """CAMERA_STATE_RUNNING -> "running"; "unknown" for a state this client does not know."""
    if not state or state not in pb.CameraState.values():
        return "unknown"
    return cast(CameraState, pb.CameraState.Name(state).removeprefix("CAMERA_STATE_").lower())


@dataclass(frozen=True)
class Timings:
    """Milliseconds the server spent on one frame, by step."""

    queue_ms: float
    decode_ms: float
    inference_ms: float
    encode_ms: float
    total_ms: float  # from arrival at the server to the result leaving it
    batch_size: int  # frames that shared the inference run
    inference_threads: int  # onnxruntime threads of that run (0: onnxruntime chose)


@dataclass(frozen=True)
class Region:
    """A damaged area of the frame: a group of touching heatmap cells at or over the
    threshold, as the server found it. Its box is in whole frame pixels, inside the frame::

        crop = frame[r.y : r.y + r.height, r.x : r.x + r.width]
    """

    x: int  # left
    y: int  # top
    width: int
    height: int
    value: float  # its hottest cell's P(damage); the first region's is the score
    cells: int  # its heatmap cells at or over the threshold (its box may cover others)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right and bottom exclusive, as OpenCV's rectangles
        and PIL's crops take them."""
        return self.x, self.y, self.x + self.width, self.y + self.height


@dataclass(frozen=True)
class Geometry:
    """How a frame was letterboxed into the model input.

    input = frame * scale + (pad_left, pad_top), in pixels; the content covers
    ``content_box()`` of the input and the rest is padding.
    """

    frame_width: int
    frame_height: int
    input_width: int
    input_height: int
    scale: float
    pad_left: int
    pad_top: int
    # the EXIF orientation (2-8) the server turned the frame by, as a viewer shows it; 0: none
    exif_orientation: int = 0

    @classmethod
    def from_proto(cls, g: pb.Geometry) -> Geometry:
        """The message's geometry, its scale exact: the server's, min(input / frame) each
        way, travels as a float32 (2/3 as 0.6666666865), and a 960x540 camera's cell boxes
        read 107.99999678 for 108 (a WMS integrator's review), and a centre on pixel 618,
        617.99997. Recomputed where it rounds to the one sent (the server's peak is found
        with it too); another rule's scale is kept as sent."""
        scale = g.scale
        if g.frame_width and g.frame_height:
            exact = min(g.input_width / g.frame_width, g.input_height / g.frame_height)
            if np.float32(exact) == np.float32(g.scale):
                scale = exact
        return cls(
            g.frame_width,
            g.frame_height,
            g.input_width,
            g.input_height,
            scale,
            g.pad_left,
            g.pad_top,
            g.exif_orientation,
        )

    def content_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the frame inside the model input, in input pixels."""
        g = self  # the letterbox's own fields, not its EXIF orientation
        return content_box(
            g.frame_width,
            g.frame_height,
            g.input_width,
            g.input_height,
            g.scale,
            g.pad_left,
            g.pad_top,
        )

    def to_frame(self, x: float, y: float) -> tuple[float, float]:
        """A point of the model input in frame pixels (clamped to the frame)."""
        fx = (x - self.pad_left) / self.scale
        fy = (y - self.pad_top) / self.scale
        return min(max(fx, 0.0), self.frame_width), min(max(fy, 0.0), self.frame_height)

    def cell_box(self, row: int, col: int, stride: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in frame pixels of heatmap or feature-map cell (row,
        col) at ``stride`` input pixels a cell (``Result.heatmap_stride``, a stage's stride),
        clamped to the frame: empty (zero width or height) for a cell of the padding.

        Example:
            >>> g = Geometry(1280, 720, 640, 384, 0.5, 0, 12)
            >>> g.cell_box(row=2, col=3, stride=8)
            (48.0, 8.0, 64.0, 24.0)
        """
        left, top = self.to_frame(col * stride, row * stride)
        right, bottom = self.to_frame((col + 1) * stride, (row + 1) * stride)
        return left, top, right, bottom


class FeatureMaps(dict[str, "npt.NDArray[np.float32]"]):
    """A result's feature maps by stage name; one that was not asked for says how to ask
    (a bare KeyError: 'stage3' told a newcomer nothing)."""

    def __missing__(self, stage: str) -> npt.NDArray[np.float32]:
        have = f"; this result has {', '.join(self)}" if self else ""
        raise KeyError(
            f"no feature map {stage!r} in this result{have}: ask for it with "
            f"options=ResultOptions(feature_maps=[{stage!r}]) (the stages are "
            "model_info().stage_names)"
        )


@dataclass(frozen=True, repr=False, eq=False)
class Result:
    """The answer for one frame.

    Attributes:
        frame_id: the frame's id, as sent; on a watch, the camera's count of frames read,
            which restarts with the server (``capture_time`` is the key that does not).
        source: the frame's source name as sent (a camera's id on a watch).
        score: P(damage) of the most damaged heatmap cell, in [0, 1]; NaN for a frame that
            failed (``ok`` False), so that it is never counted as a confident "intact" and
            turns a mean or a chart it slips into NaN rather than lowering it.
        damaged: score >= the model's threshold; False for a frame that failed.
        blank: the frame shows next to nothing (contrast under 2: a covered or capped lens,
            a black, white or single-colour frame), so its score, low, says nothing about a
            package; False for a frame that failed.
        brightness: the mean of the frame's luma, 0-255 (over one sample per 8x8 pixels of
            the model input); NaN for a frame that failed, or from a server older than it.
        contrast: the standard deviation of that luma; NaN as brightness is.
        published: on a stream that publishes (``stream(..., publish=True)``), this
            frame went to the watchers of its source name; False when that name was refused
            (the stream goes on unpublished) or on any other call.
        threshold: the threshold ``damaged`` was decided by (the server's when the frame was
            analysed); NaN for a frame that failed, or from a server older than the field.
        heatmap (NDArray[float32] | None): shape (h, w): the damage probability per cell of
            the model input, ``heatmap_stride`` input pixels a side; None when not asked for.
        heatmap_stride: input pixels a side of a heatmap cell (8); the stages' strides are
            in ``model_info().stages``.
        feature_maps (dict[str, NDArray[float32]]): stage name to array of shape (C, H, W).
        timings: the server's time per step, None for a frame that failed.
        frame_age_ms: result time minus the frame's capture time (or its arrival).
        frames_dropped: frames the stream's freshness policy has dropped so far.
        freshness: the stream's policy in force when the server sent this result,
            "lossless", "latest_only" or "bounded_queue" (set by the first options the server
            accepted: "lossless" until then, whatever the stream asked for); "" on analyze and
            watch, or from a server older than the field.
        queue_size: the frames that policy lets wait (1 for "latest_only"); 0 where
            ``freshness`` is "".
        dropped_frame_ids: the ids of frames dropped since the previous result.
        sequence: the server's count of results on this stream, from 1 (0 for analyze).
        geometry: how the frame sits in the model input; see ``peak()`` and overlays.
        hottest: (x, y) of the frame pixel the hottest heatmap cell's centre falls in, as
            the server found it in float32 (sent with or without the heatmap); see ``peak()``.
        hottest_cell: (row, col) of that cell in ``heatmap``, and in the feature maps of the
            stages at the heatmap's stride (stage3, stage4); see ``peak_cell()``.
        regions: where the damage is, as areas (``Region``: a box in frame pixels, its
            hottest value, its cells): each group of touching heatmap cells at or over the
            threshold, the one holding the peak first, then the hotter first, at most 16.
            Empty on an intact frame and on one that failed (and from a server older than
            the field: there only ``peak()`` says where). Sent with or without the heatmap.
        error: why this frame was not analysed (a stream goes on past bad frames); None if ok.
        camera_state: on a watch of a camera, "stalled" or "reconnecting" on a result of no
            frame (``frame_id`` 0, ``error`` a ServerUnavailable saying why) that the server
            sends as the camera goes down (and first, to a watch taken while it is); the
            watch goes on, and results come again once the camera sends frames. None on
            every other result.
        frame: the Frame as it was sent, kept for overlays and names: pixels the client
            encoded for the upload are kept as the JPEG or PNG bytes it sent (what the
            server analysed); ``frame.pixels()`` gives them as pixels either way.
        input_jpeg: the analysed model input as JPEG, when ResultOptions(input_jpeg=True).
        capture_time: when the frame was captured (or read by the server, on a watch), in
            seconds since the Unix epoch as ``time.time()`` gives them; None if not said.
    """

    frame_id: int
    source: str = ""
    score: float = math.nan
    damaged: bool = False
    blank: bool = False
    brightness: float = math.nan
    contrast: float = math.nan
    threshold: float = math.nan
    published: bool = False
    heatmap: npt.NDArray[np.float32] | None = None
    heatmap_stride: int = 8
    feature_maps: dict[str, npt.NDArray[np.float32]] = field(default_factory=lambda: FeatureMaps())
    timings: Timings | None = None
    frame_age_ms: float = 0.0
    frames_dropped: int = 0
    freshness: Freshness | Literal[""] = ""
    queue_size: int = 0
    dropped_frame_ids: tuple[int, ...] = ()
    sequence: int = 0
    geometry: Geometry | None = None
    hottest: tuple[int, int] | None = None
    hottest_cell: tuple[int, int] | None = None
    regions: tuple[Region, ...] = ()
    capture_time: float | None = None
    error: ConvstreamError | None = None
    camera_state: CameraState | None = None
    frame: Frame | None = None
    input_jpeg: bytes | None = None

    @property
    def ok(self) -> bool:
        """True when the frame was analysed."""
        return self.error is None

    def raise_for_status(self) -> Result:
        """Raise ``error`` if the frame failed; return self otherwise (for chaining)."""
        if self.error is not None:
            raise self.error
        return self

    def peak(self) -> tuple[int, int] | None:
        """(x, y) in frame pixels of the centre of the heatmap's hottest cell, or None.

        The server's own answer (``hottest``) when it sent one; else (an older server that
        sends no ``peak``, a Result made by hand) found in ``heatmap``, where FLOAT16 or UINT8
        cells near 1.0 may tie and the first of them wins.
        """
        if self.hottest is not None:
            return self.hottest
        cell = self.peak_cell()
        if cell is None or self.geometry is None:
            return None
        s = self.heatmap_stride
        x, y = self.geometry.to_frame((cell[1] + 0.5) * s, (cell[0] + 0.5) * s)
        g = self.geometry  # a pixel of the frame, as the server's peak is
        return int(min(x, g.frame_width - 1)), int(min(y, g.frame_height - 1))

    def peak_cell(self) -> tuple[int, int] | None:
        """(row, col) of the heatmap's hottest cell over the frame, or None: the index into
        ``heatmap``, and into a stage's map at the heatmap's stride, e.g. the stage4
        features where the damage is: ``feature_maps["stage4"][:, row, col]``.

        The server's own answer (``hottest_cell``) when it sent one; else found in
        ``heatmap`` as ``peak()`` says.
        """
        if self.hottest_cell is not None:
            return self.hottest_cell
        if self.heatmap is None or self.geometry is None or not self.heatmap.size:
            return None
        # Only cells over the frame count: the letterbox padding is not part of it.
        left, top, right, bottom = self.geometry.content_box()
        s = self.heatmap_stride
        r0, c0 = top // s, left // s
        content = self.heatmap[r0 : -(-bottom // s), c0 : -(-right // s)]
        if not content.size:
            content, r0, c0 = self.heatmap, 0, 0
        row, col = np.unravel_index(int(np.argmax(content)), content.shape)
        return r0 + int(row), c0 + int(col)

    @classmethod
    def from_proto(cls, message: pb.FrameResult, frame: Frame | None = None) -> Result:
        """Decode a FrameResult; tensors become float32 numpy arrays."""
        capture = None
        if message.HasField("capture_time"):
            capture = message.capture_time.ToNanoseconds() / 1e9
        common: dict[str, Any] = {
            "frame_id": message.frame_id,
            "source": message.source,
            "frames_dropped": message.frames_dropped,
            "freshness": _freshness(message.freshness),
            "queue_size": message.queue_size,
            "dropped_frame_ids": tuple(message.dropped_frame_ids),
            "sequence": message.sequence,
            "capture_time": capture,
            "frame": frame,
        }
        if message.status.code != 0:
            return cls(
                error=from_status(message.status.code, message.status.message),
                camera_state=camera_state_name(message.camera_state)
                if message.camera_state
                else None,
                **common,
            )
        heatmap = None
        if message.HasField("heatmap"):
            array = to_numpy(message.heatmap)
            heatmap = array.reshape(array.shape[-2:]) if array.ndim == 3 else array
        t = message.timings
        return cls(
            score=float(message.score),
            damaged=message.damaged,
            blank=message.blank,
            published=message.published,
            brightness=float(message.brightness) if message.HasField("brightness") else math.nan,
            contrast=float(message.contrast) if message.HasField("contrast") else math.nan,
            # float32 on the wire: 0.82151 arrives 0.8215100169181824, said as sent
            threshold=float(str(np.float32(message.threshold)))
            if message.HasField("threshold")
            else math.nan,
            heatmap=heatmap,
            heatmap_stride=message.heatmap.stride or 8,
            feature_maps=FeatureMaps(
                {tensor.name: to_numpy(tensor) for tensor in message.feature_maps}
            ),
            timings=Timings(
                t.queue_ms,
                t.decode_ms,
                t.inference_ms,
                t.encode_ms,
                t.total_ms,
                t.batch_size,
                t.inference_threads,
            ),
            frame_age_ms=message.frame_age_ms,
            geometry=Geometry.from_proto(message.geometry)
            if message.HasField("geometry")
            else None,
            # the pixel the centre falls in, as peak() finds it (646.875 is pixel 646: round()
            # said 647, a pixel off the heatmap's own answer)
            hottest=(int(message.peak.x), int(message.peak.y))
            if message.HasField("peak")
            else None,
            hottest_cell=(message.peak.row, message.peak.col) if message.HasField("peak") else None,
            regions=tuple(
                Region(r.x, r.y, r.width, r.height, float(r.value), r.cells)
                for r in message.regions
            ),
            input_jpeg=message.frame_jpeg or None,
            **common,
        )

    def __repr__(self) -> str:
        name = f" name={self.frame.name!r}" if self.frame is not None and self.frame.name else ""
        if self.error is not None:
            return f"<Result frame_id={self.frame_id}{name} error={self.error!r}>"
        parts = [f"score={self.score:.3f}", f"damaged={self.damaged}"]
        if self.blank:
            parts.append("blank=True")
        if self.regions:
            parts.append(f"regions={len(self.regions)}")
        if self.heatmap is not None:
            parts.append(f"heatmap={self.heatmap.shape}")
        if self.feature_maps:
            parts.append(f"feature_maps={list(self.feature_maps)}")
        if self.timings is not None:
            parts.append(f"total_ms={self.timings.total_ms:.1f}")
        if self.frames_dropped:
            parts.append(f"frames_dropped={self.frames_dropped}")
        return f"<Result frame_id={self.frame_id}{name} {' '.join(parts)}>"


class Size(NamedTuple):
    """A model input size, named so it cannot be read backwards: ``size.width``,
    ``size.height``. As a plain tuple it is (width, height), like OpenCV's sizes; the server's
    config and ``convstream info`` write it the other way round, "384x640" = height x width."""

    width: int
    height: int


@dataclass(frozen=True)
class Stage:
    """A feature-map stage of the model: channels and stride (input pixels per cell)."""

    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class ModelInfo:
    """The model the server runs and the limits it applies.

    Attributes:
        input_sizes: model input sizes (``Size(width, height)``); each frame is letterboxed
            into the one whose aspect ratio is closest to its own.
        execution_provider: the onnxruntime provider really running, e.g. CPUExecutionProvider.
    """

    name: str
    sha256: str
    execution_provider: str
    requested_provider: str
    available_providers: tuple[str, ...]
    threshold: float
    heatmap_stride: int
    stages: tuple[Stage, ...]
    input_sizes: tuple[Size, ...]
    onnxruntime_version: str
    server_version: str
    max_message_bytes: int
    max_frame_pixels: int
    max_frame_side: int  # 0 from a server that does not say
    # StreamFrames: the default and largest queue_size, the idle timeout, and the frames all
    # streams' queues hold together (0: not said)
    stream_queue_size: int = 0
    max_stream_queue_size: int = 0
    stream_idle_timeout_s: float = 0.0
    max_queued_frames: int = 0
    # the calls taken at once, and a watcher's default queue (0: not said)
    max_streams: int = 0
    max_analyze_calls: int = 0
    max_watchers: int = 0
    watcher_queue_size: int = 0
    # where the threshold comes from: "setting", "model" or "default" ("": not said)
    threshold_source: str = ""
    # bytes of frames all streams hold, of results all watchers hold, a frame's shortest
    # side, and the largest request of the calls without a frame (0: not said)
    max_held_bytes: int = 0
    max_watcher_bytes: int = 0
    min_frame_side: int = 0
    max_small_request_bytes: int = 0

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Names to pass as ResultOptions.feature_maps."""
        return tuple(stage.name for stage in self.stages)

    @classmethod
    def from_proto(cls, message: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=message.name,
            sha256=message.sha256,
            execution_provider=message.execution_provider,
            requested_provider=message.requested_provider,
            available_providers=tuple(message.available_providers),
            # the shortest decimal the wire's float32 holds: 0.962 as set, not 0.9620000124
            threshold=float(str(np.float32(message.threshold))),
            heatmap_stride=message.heatmap_stride,
            stages=tuple(Stage(s.name, s.channels, s.stride) for s in message.stages),
            input_sizes=tuple(Size(s.width, s.height) for s in message.input_sizes),
            onnxruntime_version=message.onnxruntime_version,
            server_version=message.server_version,
            max_message_bytes=message.max_message_bytes,
            max_frame_pixels=message.max_frame_pixels,
            max_frame_side=message.max_frame_side,
            stream_queue_size=message.stream_queue_size,
            max_stream_queue_size=message.max_stream_queue_size,
            stream_idle_timeout_s=message.stream_idle_timeout_s,
            max_queued_frames=message.max_queued_frames,
            max_streams=message.max_streams,
            max_analyze_calls=message.max_analyze_calls,
            max_watchers=message.max_watchers,
            watcher_queue_size=message.watcher_queue_size,
            threshold_source=message.threshold_source,
            max_held_bytes=message.max_held_bytes,
            max_watcher_bytes=message.max_watcher_bytes,
            min_frame_side=message.min_frame_side,
            max_small_request_bytes=message.max_small_request_bytes,
        )


@dataclass(frozen=True)
class CameraInfo:
    """A server-pulled camera as ListCameras reports it; ``watch(info.id)`` for its results.

    Attributes:
        id: the name to watch it by.
        state: "connecting" (opening for the first time), "running" (frames arrive),
            "stalled" (open, but no frame for longer than expected), "reconnecting" (lost;
            retrying with backoff), "failed" (given up), "stopped" (a file that ended, or the
            server stopping); "unknown" for a state newer than this client.
        since: when it entered ``state`` (UTC), None if the server did not say.
        source_kind: rtsp, http, tcp, udp, file, device or demo; stream for a stream a client
            publishes; never the URL itself.
        last_error: the latest open or read failure ("" if none), credentials removed. It
            stays after the camera recovers: compare ``last_error_time`` with ``since``.
        last_error_time: when last_error happened (UTC), None if none or not said.
        fps_in: frames read from the source per second, lately.
        fps_out: frames analysed per second, lately.
        fps_cap: the configured cap on analysed frames per second; 0.0: none.
        frames_read: frames read from the source since the server started it.
        frames_analysed: frames analysed; each one once, however many watch.
        frames_dropped: frames read but superseded by a newer one before analysis because
            the server was busy.
        frames_skipped: frames read but passed over to keep to ``fps_cap``: by design, not a
            drop. ``frames_read`` is about analysed + dropped + skipped.
        reconnects: attempts to reopen the source (each failed retry counts).
        watchers: open watch() calls.
        frame_width: of the source's frames, in pixels; 0 before the first frame.
        frame_height: of the source's frames, in pixels; 0 before the first frame.
        last_score: the score of the latest analysed frame; None before the first.
        last_frame_time: when the latest result was ready (UTC); None before the first.
        latency_ms: from reading a frame to its result being ready, lately.
        frames_invalid: frames that could not be analysed: an MJPEG camera's frame that was
            not a whole JPEG (cut short in transit) or did not decode; ``last_error`` says why.
        last_blank: the latest analysed frame was blank (``Result.blank``): the camera shows
            next to nothing (covered, capped, black) and ``last_score`` says nothing.
    """

    id: str
    state: CameraState
    since: datetime | None
    source_kind: str
    last_error: str
    last_error_time: datetime | None
    fps_in: float
    fps_out: float
    fps_cap: float
    frames_read: int
    frames_analysed: int
    frames_dropped: int
    frames_skipped: int
    reconnects: int
    watchers: int
    frame_width: int
    frame_height: int
    last_score: float | None
    last_frame_time: datetime | None
    latency_ms: float
    frames_invalid: int = 0
    last_blank: bool = False

    @property
    def flowing(self) -> bool:
        """True while frames come from the source ("running", or "stalled" for a moment)."""
        return self.state in ("running", "stalled")

    @classmethod
    def from_proto(cls, message: pb.CameraStatus) -> CameraInfo:
        analysed = message.frames_analysed > 0
        return cls(
            id=message.id,
            state=camera_state_name(message.state),
            since=_datetime(message.state_since),
            source_kind=message.source_kind,
            last_error=message.last_error,
            last_error_time=_datetime(message.last_error_time),
            fps_in=message.fps_in,
            fps_out=message.fps_out,
            fps_cap=round(float(message.fps_cap), 3),  # a float32 on the wire
            frames_read=message.frames_read,
            frames_analysed=message.frames_analysed,
            frames_dropped=message.frames_dropped,
            frames_skipped=message.frames_skipped,
            reconnects=message.reconnects,
            watchers=message.watchers,
            frame_width=message.frame_width,
            frame_height=message.frame_height,
            last_score=float(message.last_score) if analysed else None,
            last_frame_time=_datetime(message.last_frame_time) if analysed else None,
            latency_ms=message.latency_ms,
            frames_invalid=message.frames_invalid,
            last_blank=message.last_blank,
        )


def _datetime(stamp: Timestamp) -> datetime | None:
    """A protobuf Timestamp as an aware UTC datetime; None for an unset (zero) one."""
    if not stamp.seconds and not stamp.nanos:
        return None
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


def score_text(score: float) -> str:
    """A score for people: four decimals, cut rather than rounded, so that a score under a
    threshold never reads as at it (0.993855 is 0.9938, not 0.994, under a threshold 0.994)."""
    if not math.isfinite(score):  # a model's NaN, said as such (floor raised on it)
        return str(score)
    return f"{math.floor(score * 10_000 + 1e-6) / 10_000:.4f}"


def json_text(value: Any, separators: tuple[str, str] | None = None) -> str:
    """One line of strict JSON: a float that is not a number (a model's NaN score, its
    statistics) is null, since `NaN` and `Infinity` are not JSON and stop jq, a browser's
    JSON.parse and most other parsers."""
    return json.dumps(_finite(value), allow_nan=False, separators=separators)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _freshness(value: int) -> Freshness | Literal[""]:
    """A result's policy by the name ``stream(freshness=...)`` takes; "" when unset."""
    names = [name for name, number in FRESHNESS.items() if number == value]
    return cast(Freshness, names[0]) if names else ""
