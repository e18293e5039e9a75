"""A stage's feature maps drawn for people: one small picture per channel, beside the frame.

Each channel of a convolutional stage is one small detector slid over the whole frame; its
map is bright where that detector's pattern is. Drawn side by side, cropped to the frame's
part of the model input (the letterbox bars left out) and stretched to the frame's aspect,
every tile lines up with the frame's own tile, the first, and the damage heatmap's, the
second: move the package and every map moves with it.

    cv2.imwrite("stage3.png", draw_feature_maps(result, "stage3"))
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from convstream.client.overlay import analysed_image, heat_colours, heatmap_on_frame, write_image
from convstream.client.results import Result, score_text

__all__ = ["draw_feature_maps", "save_feature_maps"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GAP = 2  # pixels between tiles
_BACKGROUND = 32  # grey behind the tiles and the caption


def draw_feature_maps(
    result: Result, stage: str, image: np.ndarray | None = None, *, tile_width: int | None = None
) -> npt.NDArray[np.uint8]:
    """A grid of one stage's channels: the frame first, then the damage heatmap (when the
    result has one), then every channel in order, each scaled to its own range (black: the
    channel is silent there; yellow: as strong as it gets in this frame), under a caption.

    Args:
        result: a result carrying ``feature_maps[stage]`` (ask for it with
            ``ResultOptions(feature_maps=[stage])``, or ``--maps`` on the command line) and
            its geometry.
        stage: a stage name, e.g. "stage3"; ``model_info().stages`` lists them.
        image (np.ndarray | None): BGR uint8, the frame analysed; as ``draw_overlay`` finds
            it when None.
        tile_width: each tile's width in pixels (its height follows the frame's aspect);
            by default a pixel a cell, 160 to 320 pixels: a stride-2 stage's fine detail is
            not shrunk away, a stride-8 stage's cells are enlarged to be seen.

    Returns:
        np.ndarray: BGR uint8.

    Raises:
        ValueError: the result failed, has no such map, or no geometry.
    """
    if result.error is not None:
        raise ValueError(f"frame {result.frame_id} was not analysed: {result.error}")
    maps = result.feature_maps.get(stage)
    if maps is None:
        have = ", ".join(result.feature_maps) or "none"
        raise ValueError(
            f"the result has no feature map {stage!r} (it has: {have}): ask for it with "
            f"ResultOptions(feature_maps=[{stage!r}]), or --maps {stage}"
        )
    geometry = result.geometry
    if geometry is None or maps.ndim != 3 or not maps.shape[2]:
        raise ValueError("draw_feature_maps needs a result's geometry and a (C, H, W) map")
    stride = max(1, round(geometry.input_width / maps.shape[2]))
    if tile_width is None:  # a pixel a cell of the frame's part of the input, 160 to 320
        tile_width = min(320, max(160, round(geometry.frame_width * geometry.scale / stride)))
    if not 8 <= tile_width <= 2048:
        raise ValueError(f"tile_width must be 8..2048 pixels, got {tile_width}")
    aspect = geometry.frame_height / max(1, geometry.frame_width)
    size = (tile_width, min(4 * tile_width, max(8, round(tile_width * aspect))))
    frame = image if image is not None else analysed_image(result)
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    tiles = [("frame", cv2.resize(frame, size, interpolation=cv2.INTER_AREA))]
    if result.heatmap is not None:
        heat = heatmap_on_frame(result.heatmap, geometry, result.heatmap_stride, size, crisp=True)
        tiles.append((f"damage {score_text(result.score)}", _damage_tile(heat, result.threshold)))
    for channel, values in enumerate(maps):
        # over the frame alone, as the heatmap's overlay: the letterbox bars are no part of it
        on_frame = heatmap_on_frame(values, geometry, stride, size, crisp=True)
        top = float(on_frame.max())  # its strongest cell is yellow
        scaled = on_frame / top if top > 1e-6 else np.zeros_like(on_frame)
        tiles.append((str(channel), _tile(scaled, cv2.COLORMAP_VIRIDIS)))
    grid = _grid(tiles, size)
    name = result.frame.name if result.frame is not None and result.frame.name else result.source
    name = Path(name).name if "/" in name or "\\" in name else name  # a file's, not its folders
    cells = f"{maps.shape[1]}x{maps.shape[2]}"  # height first, as every size said here
    named = f"{name} {stage}" if name else stage
    caption = (
        f"{named}: {len(maps)} channels, {cells} cells of {stride}x{stride} model-input "
        f"pixels. Each tile is one channel, scaled to its own range: yellow where its "
        f"pattern is strongest in this frame, dark purple where it is absent. First: the frame"
        + (
            " and the damage heatmap (red at or over the threshold, as on the overlays)."
            if result.heatmap is not None
            else "."
        )
    )
    return np.vstack([_caption(caption, grid.shape[1]), grid])


def save_feature_maps(
    path: str | os.PathLike[str],
    result: Result,
    stage: str,
    image: np.ndarray | None = None,
) -> Path:
    """Write ``draw_feature_maps(result, stage, image)`` to path, in the format its suffix
    names (.png, .jpg, ...); returns the path. ValueError and OSError as ``save_overlay``."""
    return write_image(Path(path), lambda: draw_feature_maps(result, stage, image))


def _damage_tile(heat: np.ndarray, threshold: float) -> np.ndarray:
    """The heatmap in the overlay's and the dashboard's colours, relative to the threshold:
    red at it and over, yellow to blue nearing it, black well under it. A full blue-to-red
    scale painted an intact frame blue all over, unlike every other picture of the heatmap.
    Without a threshold (an older server's result), blue 0 to red 1."""
    if not math.isfinite(threshold):
        return cv2.applyColorMap((np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colours, weights = heat_colours(heat, threshold)
    return (colours * weights[..., None]).astype(np.uint8)


def _tile(values: np.ndarray, colormap: int) -> np.ndarray:
    """Values in [0, 1] (already of the tile's size) as a colour picture."""
    return cv2.applyColorMap((np.clip(values, 0.0, 1.0) * 255).astype(np.uint8), colormap)


def _grid(tiles: list[tuple[str, np.ndarray]], size: tuple[int, int]) -> np.ndarray:
    """The tiles in rows, about as wide as tall, each labelled in its top-left corner."""
    width, height = size
    columns = max(1, math.ceil(math.sqrt(len(tiles) * height / width)))
    rows = -(-len(tiles) // columns)
    out = np.full(
        (rows * (height + _GAP) + _GAP, columns * (width + _GAP) + _GAP, 3), _BACKGROUND, np.uint8
    )
    scale = max(0.3, min(0.5, width / 320))
    for k, (label, tile) in enumerate(tiles):
        y = _GAP + (k // columns) * (height + _GAP)
        x = _GAP + (k % columns) * (width + _GAP)
        out[y : y + height, x : x + width] = tile
        origin = (x + 3, y + 3 + cv2.getTextSize(label, _FONT, scale, 1)[0][1])
        cv2.putText(out, label, origin, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, origin, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _caption(text: str, width: int) -> np.ndarray:
    """text wrapped to width, white on the background."""
    scale = 0.45 if width >= 480 else 0.35
    lines: list[str] = []
    for word in text.split(" "):
        wider = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(wider, _FONT, scale, 1)[0][0] <= width - 12:
            lines[-1] = wider
        else:
            lines.append(word)
    step = cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] + 8
    out = np.full((len(lines) * step + 8, width, 3), _BACKGROUND, np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(out, line, (6, (k + 1) * step), _FONT, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return out
