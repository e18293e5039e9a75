"""Fit frames into one of a few fixed model input sizes, keeping their aspect ratio.

A fixed set of sizes keeps onnxruntime's memory flat (each new shape would allocate new
buffers) and lets frames from different streams share a batch. Letterboxing (scale to fit,
pad the rest with mid-grey) keeps packages undistorted, which is what the model was trained
on; the Geometry returned maps heatmap cells back onto the original frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # close to the training data's mean, so the padding reads as "nothing here"


@dataclass(frozen=True)
class Geometry:
    """How a frame sits in the model input: input = frame * scale + (pad_left, pad_top)."""

    frame_width: int
    frame_height: int
    input_width: int
    input_height: int
    scale: float
    pad_left: int
    pad_top: int

    def hottest_cell(self, heat: np.ndarray, stride: int) -> tuple[int, int, float, float, float]:
        """The hottest cell of a heatmap over the frame, the letterbox bars left out.

        Args:
            heat (np.ndarray): float32, shape (..., h, w), one cell per ``stride`` input pixels.
            stride: input pixels per cell.

        Returns:
            (row, col, x, y, value): the cell, its centre in frame pixels (clamped to the
            frame), and its value.
        """
        heat = heat.reshape(heat.shape[-2:])
        right = min(self.input_width, self.pad_left + round(self.frame_width * self.scale))
        bottom = min(self.input_height, self.pad_top + round(self.frame_height * self.scale))
        r0, c0 = self.pad_top // stride, self.pad_left // stride
        content = heat[r0 : -(-bottom // stride), c0 : -(-right // stride)]
        if not content.size:
            content, r0, c0 = heat, 0, 0
        cell = np.unravel_index(int(np.argmax(content)), content.shape)
        row, col = int(cell[0]) + r0, int(cell[1]) + c0
        x = ((col + 0.5) * stride - self.pad_left) / self.scale
        y = ((row + 0.5) * stride - self.pad_top) / self.scale
        x, y = min(max(x, 0.0), self.frame_width), min(max(y, 0.0), self.frame_height)
        return row, col, x, y, float(heat[row, col])


def choose_input(width: int, height: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) from sizes whose aspect ratio is closest to width/height."""
    aspect = math.log(width / height)
    return min(sizes, key=lambda s: abs(aspect - math.log(s[1] / s[0])))


def reduction(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 by which a frame can shrink and still cover target's content.

    JPEG decoding at 1/2, 1/4 or 1/8 scale is done inside libjpeg's DCT and costs a fraction of
    a full decode, so a 1080p frame bound for a 384x640 input is decoded at 960x540.
    """
    scale = min(target[1] / width, target[0] / height)
    factor = 1
    while factor < 8 and scale * factor * 2 <= 1.0:
        factor *= 2
    return factor


def letterbox(
    image: np.ndarray, target: tuple[int, int], frame_size: tuple[int, int]
) -> tuple[np.ndarray, Geometry]:
    """Scale image to fit target (height, width) and pad; returns (pixels, geometry).

    Args:
        image (np.ndarray): BGR uint8, shape (h, w, 3), possibly a reduced decode of the frame.
        target: the model input (height, width).
        frame_size: the original frame's (width, height), for the geometry.

    Returns:
        (np.ndarray, Geometry): BGR uint8 of shape (target_h, target_w, 3), and how the
        original frame maps into it.
    """
    t_h, t_w = target
    h, w = image.shape[:2]
    fit = min(t_w / w, t_h / h)
    new_w, new_h = max(1, min(t_w, round(w * fit))), max(1, min(t_h, round(h * fit)))
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if fit < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    left, top = (t_w - new_w) // 2, (t_h - new_h) // 2
    if (new_w, new_h) == (t_w, t_h):
        pixels = np.ascontiguousarray(image)
    else:
        pixels = cv2.copyMakeBorder(
            image,
            top,
            t_h - new_h - top,
            left,
            t_w - new_w - left,
            cv2.BORDER_CONSTANT,
            value=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
        )
    frame_w, frame_h = frame_size
    geometry = Geometry(frame_w, frame_h, t_w, t_h, new_w / frame_w, left, top)
    return pixels, geometry
