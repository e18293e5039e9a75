"""What a model file must be for the server to run it: one uint8 input ``pixels`` of shape
(N, H, W, 3), BGR with channels last, and the outputs ``OUTPUT_NAMES`` at the shapes its
metadata (threshold, heatmap_stride, stages) declares. DamageModel (runtime.py) checks a file
with these when it loads it, and at the server's input sizes when it warms up, so that a file
that is not one is refused in one line rather than failing every frame.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

INPUT_NAME = "pixels"
OUTPUT_NAMES: tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4", "heatmap", "score")
FEATURE_NAMES: tuple[str, ...] = OUTPUT_NAMES[:4]


class ModelFileError(ValueError):
    """A model file onnxruntime cannot load, or one that is not a convstream damage model."""


@dataclass(frozen=True)
class StageInfo:
    """One feature-map output: its name, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


Dim = int | None
"""A size a model's input fixes, or None where it takes any."""


def input_dims(path: Path, shape: Sequence[object]) -> tuple[Dim, Dim, Dim]:
    """(batch, height, width) as the model's input fixes them; ModelFileError unless the input
    is (N, H, W, 3), channels last, as the server hands frames over."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if len(dims) == 4 and dims[3] in (3, None) and not (dims[3] is None and dims[1] == 3):
        return dims[0], dims[1], dims[2]
    shown = ", ".join("?" if d is None else str(d) for d in shape)
    nchw = " (channels first)" if len(dims) == 4 and dims[1] == 3 else ""
    raise ModelFileError(
        f"{path}: its input {INPUT_NAME!r} has shape ({shown}){nchw}; expected (N, H, W, 3), "
        "BGR with channels last"
    )


def read_metadata(
    path: Path, meta: Mapping[str, str]
) -> tuple[float | None, int | None, tuple[StageInfo, ...] | None]:
    """The threshold, heatmap stride and stages the file's metadata gives, None where it gives
    none; ModelFileError for an entry that cannot be right."""

    def bad(key: str, expected: str) -> ModelFileError:
        value = meta[key] if len(meta[key]) <= 80 else meta[key][:77] + "..."
        return ModelFileError(f"{path}: its metadata's {key} is {value!r}; expected {expected}")

    threshold = stride = stages = None
    if "threshold" in meta:
        try:
            threshold = float(meta["threshold"])
        except ValueError:
            threshold = math.nan
        if not 0.0 <= threshold <= 1.0:  # NaN included
            raise bad("threshold", "a score from 0 to 1")
    if "heatmap_stride" in meta:
        text = meta["heatmap_stride"].strip()
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise bad("heatmap_stride", "input pixels per heatmap cell, a whole number")
        stride = int(text)
    if "stages" in meta:
        stages = _stages(meta["stages"])
        if stages is None:
            raise bad(
                "stages",
                'a JSON list of {"name", "channels", "stride"}, whole numbers, naming '
                f"{', '.join(FEATURE_NAMES)} once each",
            )
    return threshold, stride, stages


def _stages(text: str) -> tuple[StageInfo, ...] | None:
    """The stages a metadata entry lists, or None unless it lists each feature map once."""
    try:
        stages = tuple(StageInfo(**entry) for entry in json.loads(text))
        names = sorted(s.name for s in stages)  # TypeError for names that are not all str
    except (ValueError, TypeError):  # not JSON, not a list of objects, other keys
        return None
    numbers = [n for s in stages for n in (s.channels, s.stride)]
    if names != sorted(FEATURE_NAMES) or not all(type(n) is int and n > 0 for n in numbers):
        return None
    return stages


def fixed_size(dims: tuple[Dim, Dim, Dim]) -> str:
    """The input size a model fixes, as "HxW", "height H" or "width W"."""
    _, height, width = dims
    if height and width:
        return f"{height}x{width}"
    return f"height {height}" if height else f"width {width}"


def stride_of(
    path: Path, name: str, shapes: Mapping[str, tuple[int, ...]], height: int, width: int
) -> int:
    """The stride that gives output name its size at a height x width input."""
    shape = shapes[name]
    if len(shape) == 4 and shape[2] > 0:
        stride = max(1, round(height / shape[2]))
        if shape[2:] == (-(-height // stride), -(-width // stride)):
            return stride
    raise ModelFileError(
        f"{path}: for a {height}x{width} input its output {name} has shape {shape}; "
        "expected (N, C, ceil(H/s), ceil(W/s)) for a whole stride s"
    )


@dataclass(frozen=True)
class Declared:
    """The output shapes a model declares: its heatmap's stride and its stages, and where
    each came from (its metadata, or measured when it loaded), as an error will say."""

    heatmap_stride: int
    stages: tuple[StageInfo, ...]
    stride_from: str
    stages_from: str


def check_shapes(
    path: Path,
    declared: Declared,
    shapes: Mapping[str, tuple[int, ...]],
    n: int,
    height: int,
    width: int,
) -> None:
    """ModelFileError unless, for n frames of height x width, score is (N,), heatmap
    (N, 1, ceil(H/s), ceil(W/s)) at the heatmap's stride s, and each stage (N, C,
    ceil(H/s), ceil(W/s)) with its channels C and stride s."""

    def cells(stride: int) -> tuple[int, int]:
        return -(-height // stride), -(-width // stride)

    s = declared.heatmap_stride
    expected = {
        "score": ((n,), "one score per frame"),
        "heatmap": ((n, 1, *cells(s)), f"one channel at heatmap_stride {s} {declared.stride_from}"),
    }
    for stage in declared.stages:
        said = f"{stage.name} {stage.channels} channels at stride {stage.stride}"
        expected[stage.name] = (
            (n, stage.channels, *cells(stage.stride)),
            f"{declared.stages_from} {said}",
        )
    for name, (want, why) in expected.items():
        if shapes[name] != want:
            raise ModelFileError(
                f"{path}: for {n} frame(s) of {height}x{width} its output {name} has "
                f"shape {shapes[name]}; expected {want} ({why})"
            )


def out_problem(out: Path, example: str) -> str | None:
    """Why a model file cannot be written to --out, or None: checked before the work that
    makes it. example: a file name to suggest where out is a folder."""
    if out.is_dir():
        return f"--out {out} is a folder; expected a file to write, e.g. {out / example}"
    if not out.parent.is_dir():
        return f"--out {out}: there is no folder {out.parent}; make it first or choose another"
    if not os.access(out.parent, os.W_OK):
        return f"--out {out}: this user cannot write in {out.parent}"
    return None
