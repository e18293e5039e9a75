"""What the dashboard sends to browsers over its WebSocket.

Text messages are JSON objects with a ``type``: ``hello`` (everything a new page needs),
``cameras`` (states and rates, every poll), ``model``, ``alert`` (new or with a better
frame; with ``open``, the alerts not marked handled), ``handled`` (alerts an operator marked,
in any browser, and ``open``), ``tick``. Frames travel as one binary
message each, so JPEG bytes are never base64-inflated::

    uint32 little-endian n | n bytes of JSON header | heatmap (h*w uint8) | frame JPEG

The header says the camera, score, times, the heatmap's shape and where the frame sits in the
model input (the JPEG is the letterboxed input; ``box`` is the frame's part of it), and
``peak``: the hottest cell's centre in the box's pixels (from its left and top), or null.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from convstream.client.episodes import inside_by
from convstream.client.results import camera_state_name, json_text
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import shortest_float32


def seconds(stamp: Any) -> float | None:
    """A protobuf Timestamp as seconds since the epoch; None when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return float(stamp.seconds) + stamp.nanos / 1e9


def state_name(state: int) -> str:
    return camera_state_name(state)


def camera_json(camera: pb.CameraStatus) -> dict[str, Any]:
    """The fields of a CameraStatus a tile shows."""
    return {
        "id": camera.id,
        "state": state_name(camera.state),
        "state_since": seconds(camera.state_since),
        "source_kind": camera.source_kind,
        "last_error": camera.last_error,
        "fps_in": round(camera.fps_in, 2),
        "fps_out": round(camera.fps_out, 2),
        "fps_cap": round(camera.fps_cap, 2),
        "frames_read": camera.frames_read,
        "frames_analysed": camera.frames_analysed,
        "frames_dropped": camera.frames_dropped,
        "frames_skipped": camera.frames_skipped,
        "frames_invalid": camera.frames_invalid,  # refused: too small, damaged, ...
        "reconnects": camera.reconnects,
        "watchers": camera.watchers,
        "width": camera.frame_width,
        "height": camera.frame_height,
        "last_score": camera.last_score,  # compared with the threshold, as a frame's score
        "last_blank": camera.last_blank,  # its latest frame showed next to nothing
        "last_frame_time": seconds(camera.last_frame_time),
        "latency_ms": round(camera.latency_ms, 1),
    }


def model_json(info: pb.ModelInfo, threshold: float) -> dict[str, Any]:
    """The model corner: name, hash, provider, versions and the alert threshold in use."""
    return {
        "name": info.name,
        "sha256": info.sha256[:12],
        "provider": info.execution_provider,
        "requested": info.requested_provider,
        # unrounded, as frames' scores are: the page calls a tile damaged by score >=
        # threshold, which at 4 decimals (0.8215 for a threshold of 0.82151) said DAMAGED of
        # frames the server calls intact
        # the server's threshold, for people (the tooltip): the shortest decimal the wire's
        # float32 holds, 0.939 as set, not 0.9390000104904175; and where it comes from
        "server_threshold": shortest_float32(info.threshold),
        "threshold_source": info.threshold_source,
        "threshold": shortest_float32(threshold),
        "onnxruntime": info.onnxruntime_version,
        "server_version": info.server_version,
        "stride": info.heatmap_stride,
    }


def peak_in_box(result: pb.FrameResult) -> list[float] | None:
    """The result's peak (the hottest cell's centre, in frame pixels) in the pixels of its
    frame's part of the model input, as the page draws that part; None when it sent none."""
    if not result.HasField("peak"):
        return None
    scale = result.geometry.scale or 1.0
    return [round(result.peak.x * scale, 1), round(result.peak.y * scale, 1)]


def placement(result: pb.FrameResult) -> float:
    """How far the result's peak is from its frame's nearest edge, as a share of the frame's
    shorter side: 0 at an edge, 0.5 in the middle (0 without a peak: nothing to prefer it
    for)."""
    if not result.HasField("peak"):
        return 0.0
    g = result.geometry
    return inside_by(result.peak.x, result.peak.y, g.frame_width, g.frame_height)


def quantise(heatmap: np.ndarray) -> np.ndarray:
    """float heatmap (h, w) in [0, 1] to uint8 0..255, the resolution a screen shows anyway."""
    return np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def frame_message(header: dict[str, Any], heat: np.ndarray | None, jpeg: bytes) -> bytes:
    """One binary frame message (see the module docstring).

    Args:
        header: JSON-able; ``heat`` ([h, w]) is filled in here.
        heat (np.ndarray | None): uint8, shape (h, w); None when the result had no heatmap.
        jpeg: the letterboxed model input as JPEG.
    """
    cells = b"" if heat is None else np.ascontiguousarray(heat, np.uint8).tobytes()
    header = {**header, "heat": [] if heat is None else list(heat.shape), "jpeg_len": len(jpeg)}
    encoded = json_text(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(encoded)) + encoded + cells + jpeg


def parse_frame_message(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """Inverse of frame_message: (header, heatmap bytes, JPEG bytes); for tests and tools."""
    (n,) = struct.unpack_from("<I", data)
    header: dict[str, Any] = json.loads(data[4 : 4 + n])
    shape = header["heat"]
    cells = int(np.prod(shape)) if shape else 0
    heat = data[4 + n : 4 + n + cells]
    return header, heat, data[4 + n + cells :]


def text(kind: str, **fields: Any) -> str:
    """A JSON text message of the given type."""
    return json_text({"type": kind, **fields}, separators=(",", ":"))
