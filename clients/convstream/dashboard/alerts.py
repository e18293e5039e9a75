"""Alerts: a camera's score crossing the threshold, with a snapshot of what crossed it.

One package passing slowly under a camera keeps its score high for many frames, and a score
near the threshold flickers across it; so an alert needs a rising edge (the score fell below
``threshold - hysteresis`` since the last one) and the camera's cooldown to have passed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import cv2
import numpy as np

HYSTERESIS = 0.03


@dataclass(frozen=True)
class Alert:
    """One alert as browsers see it; the snapshot is served at ``url``."""

    id: int
    camera: str
    time: float  # capture time, seconds since the epoch
    score: float
    threshold: float
    frame_id: int
    url: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class AlertDetector:
    """Decides, frame by frame, whether a camera's score raises an alert.

    Args:
        cooldown_s: seconds after an alert during which the same camera raises none.
        hysteresis: how far below the threshold a score must fall to re-arm the camera.
    """

    def __init__(self, cooldown_s: float, hysteresis: float = HYSTERESIS) -> None:
        self.cooldown_s = cooldown_s
        self.hysteresis = hysteresis
        self._armed: dict[str, bool] = {}
        self._last: dict[str, float] = {}

    def update(self, camera: str, score: float, threshold: float, now: float) -> bool:
        """True when this score (at monotonic time ``now``, seconds) raises an alert."""
        if score < threshold:
            if score < threshold - self.hysteresis:
                self._armed[camera] = True
            return False
        if not self._armed.get(camera, True):
            return False
        self._armed[camera] = False
        if now - self._last.get(camera, -math.inf) < self.cooldown_s:
            return False
        self._last[camera] = now
        return True

    def forget(self, camera: str) -> None:
        self._armed.pop(camera, None)
        self._last.pop(camera, None)


class AlertLog:
    """The newest ``limit`` alerts and their snapshots, in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._alerts: OrderedDict[int, tuple[Alert, bytes]] = OrderedDict()
        self._next_id = 1

    def add(
        self, camera: str, when: float, score: float, threshold: float, frame_id: int, jpeg: bytes
    ) -> Alert:
        alert = Alert(
            id=self._next_id,
            camera=camera,
            time=when,
            score=round(score, 4),
            threshold=round(threshold, 4),
            frame_id=frame_id,
            url=f"alerts/{self._next_id}.jpg",
        )
        self._next_id += 1
        self._alerts[alert.id] = (alert, jpeg)
        while len(self._alerts) > self.limit:
            self._alerts.popitem(last=False)
        return alert

    def recent(self) -> list[Alert]:
        """Newest first."""
        return [alert for alert, _ in reversed(self._alerts.values())]

    def snapshot(self, alert_id: int) -> bytes | None:
        entry = self._alerts.get(alert_id)
        return None if entry is None else entry[1]


def heat_colours(cells: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Colours and weights of a heatmap, as the page draws them (static/app.js, buildLut).

    Clear well below the threshold, yellow at it, red above it.

    Args:
        cells (np.ndarray): uint8, shape (H, W), the heatmap times 255.
        threshold: the alert threshold in [0, 1].

    Returns:
        tuple: BGR uint8 colours, shape (H, W, 3), and float32 weights in [0, 0.85], (H, W).
    """
    v = cells.astype(np.float32) / 255.0
    lo, hi = max(0.0, threshold - 0.25), min(1.0, threshold + 0.15)
    t = np.clip((v - lo) / max(1e-6, hi - lo), 0.0, 1.0)
    colours = cv2.applyColorMap((t * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = 0.85 * np.clip((v - lo) / max(1e-6, threshold - lo), 0.0, 1.0) ** 1.5
    return colours, weight.astype(np.float32)


def render_snapshot(
    jpeg: bytes,
    heat: np.ndarray | None,
    box: tuple[int, int, int, int],
    stride: int,
    label: str,
    threshold: float,
) -> bytes:
    """The frame that raised an alert, its heatmap blended in, as JPEG.

    Args:
        jpeg: the letterboxed model input.
        heat (np.ndarray | None): uint8, shape (h, w), one cell per ``stride`` input pixels.
        box: (left, top, right, bottom) of the frame inside the input, in input pixels.
        stride: input pixels per heatmap cell.
        label: written in the top-left corner (camera and score).
        threshold: the alert threshold, which the colours are relative to.

    Returns:
        bytes: JPEG of the frame's part of the input (padding cut away).
    """
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"frame_jpeg ({len(jpeg)} bytes) is not a readable JPEG")
    left, top, right, bottom = box
    out = image[top:bottom, left:right].copy()
    if heat is not None and heat.size:
        h, w = heat.shape
        cells = cv2.resize(heat, (w * stride, h * stride), interpolation=cv2.INTER_LINEAR)
        cells = cells[top:bottom, left:right]
        cells = cv2.resize(cells, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)
        colours, weight = heat_colours(cells, threshold)
        out = (out * (1.0 - weight[..., None]) + colours * weight[..., None]).astype(np.uint8)
        y, x = np.unravel_index(int(np.argmax(cells)), cells.shape)
        radius = max(8, round(stride * out.shape[1] / max(1, right - left)))
        cv2.circle(out, (int(x), int(y)), radius, (255, 255, 255), 2)
    scale = max(0.45, out.shape[1] / 1000)
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(4, th // 3)
    cv2.rectangle(out, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (40, 40, 200), cv2.FILLED)
    cv2.putText(
        out, label, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness
    )
    ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("OpenCV could not encode the alert snapshot")
    return encoded.tobytes()
