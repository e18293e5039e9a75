"""The damage heatmap drawn over the frame it belongs to, for people to look at.

The heatmap covers the model input (letterboxed); ``Result.geometry`` says where the frame
sits in it, so cells are cropped to the frame's part of the input and stretched back onto
the original frame, whatever its size or aspect ratio.

    cv2.imwrite("overlay.png", draw_overlay(result))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from convstream.client.errors import SourceError
from convstream.client.frames import utf8_name
from convstream.client.results import Geometry, Result, score_text

__all__ = ["draw_overlay", "heat_colours", "heatmap_on_frame", "save_overlay"]

_DAMAGED = (40, 40, 230)  # BGR
_INTACT = (60, 180, 60)
_BLANK = (34, 153, 210)  # the dashboard's amber: a frame of next to nothing is no all-clear
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SMALLEST = 0.3  # the smallest label type, about 7 pixels tall
_CARD = (640, 360)  # width, height of what an error result whose frame is no picture draws


def heatmap_on_frame(
    heatmap: np.ndarray,
    geometry: Geometry,
    stride: int = 8,
    size: tuple[int, int] | None = None,
    *,
    crisp: bool = False,
) -> npt.NDArray[np.float32]:
    """Resample a heatmap (or a feature map's channel) onto the frame it was computed for.

    Args:
        heatmap (np.ndarray): float32, shape (h, w), one value per ``stride`` input pixels.
        geometry: how the frame was letterboxed into the model input.
        stride: input pixels per heatmap cell.
        size: (width, height) of the image to cover; the frame's own size by default.
        crisp: cells kept as squares (nearest, or an area average where shrunk) rather than
            blended smoothly into one another.

    Returns:
        np.ndarray: float32, shape (height, width), the value under each frame pixel.
    """
    h, w = heatmap.shape
    smooth = cv2.INTER_NEAREST if crisp else cv2.INTER_LINEAR
    cells = cv2.resize(heatmap.astype(np.float32), (w * stride, h * stride), interpolation=smooth)
    left, top, right, bottom = geometry.content_box()
    content = cells[top:bottom, left:right]
    width, height = size or (geometry.frame_width, geometry.frame_height)
    if crisp and width < content.shape[1]:
        smooth = cv2.INTER_AREA
    return cast(  # OpenCV's types say any number
        "npt.NDArray[np.float32]", cv2.resize(content, (width, height), interpolation=smooth)
    )


def heat_colours(heat: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Colours and weights of heatmap values relative to the threshold, as the dashboard
    draws them (its static/app.js, buildLut): clear a quarter under the threshold and lower,
    then blue through green to yellow as they near it, red at it and over it.

    Args:
        heat (np.ndarray): float, shape (H, W), values in [0, 1].
        threshold: the score at which a frame is damaged.

    Returns:
        tuple: BGR uint8 colours, shape (H, W, 3), and float32 weights in [0, 1], shape
        (H, W): 0 a quarter under the threshold and lower, 1 at it and over it.
    """
    lo = max(0.0, threshold - 0.25)
    near = np.clip((heat - lo) / max(1e-6, threshold - lo), 0.0, 1.0)
    # positions on JET: 0.625 is yellow, 0.875 red
    position = np.where(heat >= threshold, 0.875, 0.625 * near)
    colours = cv2.applyColorMap(np.round(position * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return colours, (near**1.5).astype(np.float32)


def draw_overlay(
    result: Result, image: np.ndarray | None = None, *, alpha: float = 0.6, label: bool = True
) -> npt.NDArray[np.uint8]:
    """The frame with its heatmap blended in and the score.

    The colours are relative to the threshold the server decided ``damaged`` by, as the
    dashboard's (``heat_colours``): red where a cell is at or over it, yellow to blue under
    it, clear a quarter under it and lower, so intact areas stay readable. A result without
    a threshold (a server older than it) is coloured by its raw value, blue 0 to red 1.

    Args:
        result: a result with a heatmap and geometry (the default ResultOptions give both).
        image (np.ndarray | None): BGR uint8, shape (H, W, 3), the frame analysed; when None,
            the frame kept in ``result.frame``, or else (a camera's result from ``watch()``)
            the frame's part of ``result.input_jpeg``, at the model input's scale; an error
            result whose frame is no picture (bytes that do not decode) is drawn on a grey
            640x360 card, its label saying the error.
        alpha: the colour's weight where the heatmap is at or over the threshold.
        label: write the score (and DAMAGED) in the top-left corner, and, on a damaged
            frame, ring the hottest cell and box each damaged area (``result.regions``).

    Returns:
        np.ndarray: BGR uint8, the size of the image drawn on.
    """
    if image is None:
        image = analysed_image(result)
    elif image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    out = image.copy()
    height, width = out.shape[:2]
    if result.heatmap is not None and result.geometry is not None:
        heat = heatmap_on_frame(
            result.heatmap, result.geometry, result.heatmap_stride, (width, height)
        )
        heat = np.clip(heat, 0.0, 1.0)
        if math.isfinite(result.threshold):
            colours, weights = heat_colours(heat, result.threshold)
        else:
            colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
            weights = heat
        weight = (alpha * weights)[..., None]
        out = (out * (1.0 - weight) + colours * weight).astype(np.uint8)
    if label:
        _label(out, result, width, height)
    return cast("npt.NDArray[np.uint8]", out)


def analysed_image(result: Result) -> npt.NDArray[np.uint8]:
    """The picture a result belongs to: the frame sent, or the frame cut out of input_jpeg;
    for an error result whose frame is no picture (bytes that do not decode), a grey card,
    so that a loop drawing every result draws this one's error too."""
    if result.frame is not None:
        try:
            return result.frame.pixels()
        except SourceError:
            if result.error is None:
                raise
            return np.full((_CARD[1], _CARD[0], 3), 96, np.uint8)
    if result.input_jpeg is None or result.geometry is None:
        raise ValueError(
            "draw_overlay needs the frame: pass image=, a result from analyze() or stream(), "
            "or one asked for with ResultOptions(input_jpeg=True)"
        )
    data = np.frombuffer(result.input_jpeg, np.uint8)
    model_input = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if model_input is None:
        raise ValueError(f"result.input_jpeg ({len(data)} bytes) is not a readable JPEG")
    # The input is the frame letterboxed: scaled, then padded. Drop the padding.
    left, top, right, bottom = result.geometry.content_box()
    return cast("npt.NDArray[np.uint8]", model_input[top:bottom, left:right])


def label_text(result: Result) -> str:
    """The overlay's corner label: the score as the commands print it (4 decimals, cut: its
    "1.00 DAMAGED" was 0.9964 in the table beside it), DAMAGED where the server says so, and
    BLANK on a frame that shows next to nothing (its low score says nothing)."""
    if result.error is not None:
        return f"error: {result.error.kind}"
    score = score_text(result.score)
    return f"{score} DAMAGED" if result.damaged else f"{score} BLANK" if result.blank else score


def _label_layout(text: str, width: int, height: int) -> tuple[list[str], float, int]:
    """The label's lines, font scale and stroke: one line at a scale that grows with the
    frame; on a frame too narrow for it (a 64-pixel-wide crop cut "0.9964 DAMAGED" to
    "0.99") the words go on lines of their own, then the type shrinks to the width, down to
    what can still be read."""
    scale = max(0.4, min(width, height) / 600)
    lines = text.split(" ") if _label_width([text], scale) > width else [text]
    while _label_width(lines, scale) > width and scale > _SMALLEST:
        scale = max(_SMALLEST, scale * 0.9)
    return lines, scale, _stroke(scale)


def _stroke(scale: float) -> int:
    return max(1, round(scale * 2))


def _label_width(lines: list[str], scale: float) -> int:
    """The width of the label's box: its widest line and the padding either side."""
    sizes = [cv2.getTextSize(line, _FONT, scale, _stroke(scale))[0] for line in lines]
    return max(w for w, _ in sizes) + 2 * max(3, max(h for _, h in sizes) // 3)


def _label(out: np.ndarray, result: Result, width: int, height: int) -> None:
    colour = _DAMAGED if result.damaged else _BLANK if result.blank else _INTACT
    if result.error is not None:
        colour = (0, 0, 0)
    lines, scale, thickness = _label_layout(label_text(result), width, height)
    sizes = [cv2.getTextSize(line, _FONT, scale, thickness) for line in lines]
    th = max(h for (_, h), _ in sizes)
    step = th + max(b for _, b in sizes) + max(2, th // 3)
    pad = max(3, th // 3)
    box = (max(w for (w, _), _ in sizes) + 2 * pad, len(lines) * step + pad)
    peak = result.peak()
    centre = radius = None
    if peak is not None and result.geometry is not None:
        fx = width / max(1, result.geometry.frame_width)
        fy = height / max(1, result.geometry.frame_height)
        centre = (int(peak[0] * fx), int(peak[1] * fy))
        cell = result.heatmap_stride / max(result.geometry.scale, 1e-6)
        radius = max(6, int(cell * fx))
    # On an intact frame the hottest cell is noise: a label moved by it would jump from
    # corner to corner between the frames of a watch.
    x, y = _label_corner(box, width, height, centre if result.damaged else None, radius or 0)
    cv2.rectangle(out, (x, y), (x + box[0], y + box[1]), colour, cv2.FILLED)
    for k, line in enumerate(lines):
        origin = (x + pad, y + th + pad + k * step)
        cv2.putText(out, line, origin, _FONT, scale, (255, 255, 255), thickness)
    # Only where there is damage to point at: on an intact frame the hottest cell is noise.
    if result.damaged and centre is not None and radius is not None:
        cv2.circle(out, centre, radius, (255, 255, 255), thickness)
    if result.damaged and result.geometry is not None:  # and a box round each damaged area
        fx = width / max(1, result.geometry.frame_width)
        fy = height / max(1, result.geometry.frame_height)
        for region in result.regions:
            left, top, right, bottom = region.box
            corner = (int(left * fx), int(top * fy))
            far = (max(corner[0], round(right * fx) - 1), max(corner[1], round(bottom * fy) - 1))
            cv2.rectangle(out, corner, far, (255, 255, 255), max(1, thickness - 1))


def _label_corner(
    box: tuple[int, int], width: int, height: int, centre: tuple[int, int] | None, radius: int
) -> tuple[int, int]:
    """Where the label's box goes: the top-left corner, unless the damage's hottest cell (and
    its ring) is under it there, as damage in a frame's top-left corner was; then the first
    other corner clear of it."""
    corners = [(0, 0), (width - box[0], 0), (0, height - box[1]), (width - box[0], height - box[1])]
    if centre is None:
        return corners[0]
    for x, y in corners:
        clear_x = centre[0] + radius < x or centre[0] - radius > x + box[0]
        clear_y = centre[1] + radius < y or centre[1] - radius > y + box[1]
        if clear_x or clear_y:
            return max(0, x), max(0, y)
    return corners[0]


def save_overlay(
    path: str | os.PathLike[str], result: Result, image: np.ndarray | None = None
) -> Path:
    """Write ``draw_overlay(result, image)`` to path, in the format its suffix names (.png,
    .jpg, ...); returns the path.

    Raises:
        ValueError: the path has no image suffix OpenCV writes.
        OSError: the file could not be written.
    """
    return write_image(Path(path), lambda: draw_overlay(result, image))


def write_image(path: Path, draw: Callable[[], np.ndarray]) -> Path:
    """Write what draw() gives to path, in the format its suffix names, after checking that
    OpenCV can write there (so nothing is drawn for a path it would refuse)."""
    if not utf8_name(path):  # OpenCV crashed the process on it
        raise ValueError(f"cannot write an image to {str(path)!r}: its name is not UTF-8")
    if not cv2.haveImageWriter(str(path)):
        raise ValueError(f"cannot write an image to {path}: give a suffix such as .png or .jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), draw()):
        raise OSError(f"OpenCV could not write {path}")
    return path
