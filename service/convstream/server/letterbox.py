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

from convstream.v1 import content_box

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

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input, as input_sizes write it."""
        return self.input_height, self.input_width

    def content_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the frame inside the model input, in input pixels."""
        return content_box(
            self.frame_width,
            self.frame_height,
            self.input_width,
            self.input_height,
            self.scale,
            self.pad_left,
            self.pad_top,
        )

    def hottest_cell(self, heat: np.ndarray, stride: int) -> tuple[int, int, float, float, float]:
        """The hottest cell of a heatmap over the frame, the letterbox bars left out.

        Args:
            heat (np.ndarray): float32, shape (..., h, w), one cell per ``stride`` input pixels.
            stride: input pixels per cell.

        Returns:
            (row, col, x, y, value): the cell, its centre in frame pixels (clamped to the
            frame's pixels: 0 to width - 1, 0 to height - 1), and its value.
        """
        heat = heat.reshape(heat.shape[-2:])
        content, r0, c0 = self._frame_cells(heat, stride)
        cell = np.unravel_index(int(np.argmax(content)), content.shape)
        row, col = int(cell[0]) + r0, int(cell[1]) + c0
        # the exact scale, which a client recomputes from the sizes (Geometry.from_proto): a
        # centre on a whole pixel is that pixel on both sides. The float32 the message carries
        # read a 960x540 frame's 618.0 as 617.99997, a pixel off (a review's)
        x = ((col + 0.5) * stride - self.pad_left) / self.scale
        y = ((row + 0.5) * stride - self.pad_top) / self.scale
        # a pixel of the frame: frame[int(y), int(x)] never indexes past its last row or column
        x = min(max(x, 0.0), self.frame_width - 1.0)
        y = min(max(y, 0.0), self.frame_height - 1.0)
        return row, col, x, y, float(heat[row, col])

    def regions(self, heat: np.ndarray, stride: int, threshold: float) -> list[Region]:
        """The damaged areas of a heatmap: each group of touching cells (sides or corners) at
        or over threshold, over the frame (the letterbox bars left out, as hottest_cell leaves
        them), the group holding hottest_cell's cell first, then the hotter first; at most
        MAX_REGIONS, the hottest.

        Args:
            heat (np.ndarray): float32, shape (..., h, w), one cell per ``stride`` input pixels.
            stride: input pixels per cell.
            threshold: the model's; a cell at it counts, as ``damaged`` is score >= threshold.
        """
        heat = heat.reshape(heat.shape[-2:])
        content, r0, c0 = self._frame_cells(heat, stride)
        # in float64, as the score is compared: a float32 comparison rounds the threshold
        hot = (content.astype(np.float64) >= threshold).astype(np.uint8)
        if not hot.any():
            return []
        count, labels, stats, _ = cv2.connectedComponentsWithStats(hot, connectivity=8)
        peaks = np.full(count, -np.inf)
        on = hot.astype(bool)  # the hot cells alone: few, where a frame has 3,840
        np.maximum.at(peaks, np.asarray(labels, np.intp)[on], content[on])
        first = labels.flat[int(np.argmax(content))]  # hottest_cell's group: a tie at 1.0 is common
        order = sorted(range(1, count), key=lambda k: (k != first, -peaks[k], k))
        found = []
        for k in order[:MAX_REGIONS]:
            left, top, width, height, cells = (int(v) for v in stats[k])
            x0, x1 = self._to_frame((c0 + left) * stride, (c0 + left + width) * stride, "x")
            y0, y1 = self._to_frame((r0 + top) * stride, (r0 + top + height) * stride, "y")
            found.append(Region(x0, y0, x1 - x0, y1 - y0, float(peaks[k]), cells))
        return found

    def _frame_cells(self, heat: np.ndarray, stride: int) -> tuple[np.ndarray, int, int]:
        """The cells that cover some of the frame, and the row and column of the first: the
        cells of only letterbox bars are not part of it (all of them, for a frame too thin to
        fill a cell)."""
        _, _, right, bottom = self.content_box()
        r0, c0 = self.pad_top // stride, self.pad_left // stride
        content = heat[r0 : -(-bottom // stride), c0 : -(-right // stride)]
        if not content.size:
            return heat, 0, 0
        return content, r0, c0

    def _to_frame(self, start: int, end: int, axis: str) -> tuple[int, int]:
        """Input pixels [start, end) along an axis as the whole frame pixels that cover
        them, inside the frame and at least one."""
        pad, size = (
            (self.pad_left, self.frame_width) if axis == "x" else (self.pad_top, self.frame_height)
        )
        low = min(max(math.floor((start - pad) / self.scale), 0), size - 1)
        high = min(max(math.ceil((end - pad) / self.scale), low + 1), size)
        return low, high


MAX_REGIONS = 16  # a result's damaged areas; a frame's noise should not fill a message


@dataclass(frozen=True)
class Region:
    """A damaged area: its box in whole frame pixels (frame[y : y + height, x : x + width]),
    its hottest cell's value and how many of its cells are at or over the threshold."""

    x: int
    y: int
    width: int
    height: int
    value: float
    cells: int


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


def _reduction_of(image: np.ndarray, frame_size: tuple[int, int]) -> int:
    """By how much image is the frame shrunk: 1, or the 2, 4 or 8 of a reduced JPEG decode,
    whose sides libjpeg rounds up (the last pixel partly past the frame's edge)."""
    h, w = image.shape[:2]
    frame_w, frame_h = frame_size
    for factor in (1, 2, 4, 8):
        if (w, h) == (-(-frame_w // factor), -(-frame_h // factor)):
            return factor
    raise ValueError(
        f"a {w}x{h} image is neither the {frame_w}x{frame_h} frame nor its 1/2, 1/4 or 1/8"
    )


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
    frame_w, frame_h = frame_size
    factor = _reduction_of(image, frame_size)
    # One scale for both axes, from the frame's own fit: the side that fills the input does so
    # exactly, and the geometry maps every input pixel back to where the resize took it from.
    scale = min(t_w / frame_w, t_h / frame_h)
    zoom = scale * factor  # image pixels to input pixels
    exact_w, exact_h = round(w * zoom), round(h * zoom)
    new_w, new_h = max(1, min(t_w, exact_w)), max(1, min(t_h, exact_h))
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
        if (new_w, new_h) == (exact_w, exact_h):
            # fx and fy, not a size: OpenCV then maps by zoom on both axes, where a size
            # would stretch the short side to whole pixels (a 0.75-pixel side by a third)
            image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=interp)
        else:
            # a side under half an input pixel: its one pixel is that side's average either way
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
    geometry = Geometry(frame_w, frame_h, t_w, t_h, scale, left, top)
    return pixels, geometry
