"""Measure the damage model on rendered scenes whose seeds training never used.

    python -m convstream.model.evaluate               # the shipped model, 1000 held-out scenes
    python -m convstream.model.evaluate --conditions  # the same under each condition it must
                                                      # withstand, per background, kind and size

Seeds are split once, here: training draws from [0, VAL_SEED_BASE), the threshold is chosen
on VAL_SEED_BASE upward, evaluation draws from EVAL_SEED_BASE upward and the tests from
TEST_SEED_BASE upward, so no set overlaps another.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from convstream.client.evaluation import roc_auc
from convstream.model.runtime import DamageModel, ModelFileError
from convstream.model.scenes import BACKGROUNDS, DAMAGE_KINDS, Scene, render_scene
from convstream.v1 import shortest_float32

VAL_SEED_BASE = 500_000_000
EVAL_SEED_BASE = 1_000_000_000
TEST_SEED_BASE = 2_000_000_000
MIN_SIDE = 32
"""The smallest height and width render_scene draws."""


def peak_in_region(heatmap: np.ndarray, mask: np.ndarray, stride: int) -> bool:
    """Whether the heatmap's hottest cell covers any damaged pixel.

    Args:
        heatmap (np.ndarray): float, shape (h, w), one cell per stride x stride pixels.
        mask (np.ndarray): uint8, shape (H, W), 1 on damage.
        stride (int): pixels per heatmap cell.
    """
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cell = mask[row * stride : (row + 1) * stride, col * stride : (col + 1) * stride]
    return bool(cell.any())


@dataclass(frozen=True)
class Metrics:
    """What the model card reports."""

    images: int
    damaged: int
    roc_auc: float
    peak_in_region: float
    accuracy_at_threshold: float
    threshold: float


def score_scenes(
    model: DamageModel, scenes: Sequence[Scene]
) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Run the model on each scene: (scores, labels, peak-in-region for each damaged scene)."""
    scores, labels, peaks = [], [], []
    for scene in scenes:
        out = model.run(scene.image[None], ["heatmap", "score"])
        scores.append(float(out["score"][0]))
        labels.append(scene.damaged)
        if scene.damaged:
            peaks.append(peak_in_region(out["heatmap"][0, 0], scene.mask, model.heatmap_stride))
    return np.array(scores), np.array(labels, bool), peaks


def evaluate(
    model: DamageModel,
    seeds: Sequence[int],
    size: tuple[int, int] = (256, 256),
    threshold: float | None = None,
) -> Metrics:
    """Render one scene per seed at size (height, width) and measure the model on them."""
    scenes = [render_scene(seed, *size) for seed in seeds]
    scores, labels, peaks = score_scenes(model, scenes)
    t = model.threshold if threshold is None else threshold
    return Metrics(
        images=len(scenes),
        damaged=int(labels.sum()),
        roc_auc=roc_auc(scores, labels),
        peak_in_region=float(np.mean(peaks)) if peaks else 0.0,
        accuracy_at_threshold=float(((scores >= t) == labels).mean()),
        threshold=shortest_float32(t),  # compared as float32, said as the file says it
    )


def _jpeg(quality: int) -> Callable[[Scene], Scene]:
    def apply(scene: Scene) -> Scene:
        ok, data = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert ok and image is not None
        return replace(scene, image=image)

    return apply


def _pixels(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Scene], Scene]:
    def apply(scene: Scene) -> Scene:
        image = change(scene.image.astype(np.float32))
        return replace(scene, image=np.clip(image, 0, 255).round().astype(np.uint8))

    return apply


def _scale(factor: float) -> Callable[[Scene], Scene]:
    """The scene seen closer or farther: packages (and damage) factor times as large."""

    def apply(scene: Scene) -> Scene:
        h, w = scene.mask.shape
        size = (round(w * factor), round(h * factor))
        area = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        # Any damage in a pixel's footprint keeps it damaged: nearest-neighbour could drop a
        # small region when shrinking, while the scene stayed labelled damaged.
        mask = (cv2.resize(scene.mask, size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        return replace(scene, image=cv2.resize(scene.image, size, interpolation=area), mask=mask)

    return apply


def _shift(dx: int, dy: int) -> Callable[[Scene], Scene]:
    """Everything moved right and down by (dx, dy) pixels, off the stride-8 grid."""

    def apply(scene: Scene) -> Scene:
        pad = ((dy, 0), (dx, 0))
        return replace(
            scene,
            image=np.pad(scene.image, (*pad, (0, 0)), mode="edge"),
            mask=np.pad(scene.mask, pad),
        )

    return apply


def _noise(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    def add(image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(image.tobytes()))  # the same for the same frame
        return image + rng.normal(0.0, sigma, image.shape).astype(np.float32)

    return add


CONDITIONS: tuple[tuple[str, Callable[[Scene], Scene] | None], ...] = (
    ("as rendered (already varied: JPEG 60-95, blur, noise, lighting)", None),
    ("JPEG quality 60 on top", _jpeg(60)),
    ("JPEG quality 95 on top", _jpeg(95)),
    ("Gaussian blur, sigma 1.5 px", _pixels(lambda im: cv2.GaussianBlur(im, (0, 0), 1.5))),
    ("sensor noise, sigma 10 levels", _pixels(_noise(10.0))),
    ("dim: half the light", _pixels(lambda im: im * 0.5)),
    ("bright: 1.6x the light, clipped", _pixels(lambda im: im * 1.6)),
    ("scale 0.5x", _scale(0.5)),
    ("scale 0.75x", _scale(0.75)),
    ("scale 1.25x", _scale(1.25)),
    ("scale 1.5x", _scale(1.5)),
    ("shifted by (5, 3) px", _shift(5, 3)),
)
"""What the model must withstand (issue #2): each applied to the same held-out scenes."""


@dataclass(frozen=True)
class Row:
    """One line of the conditions report."""

    name: str
    images: int
    damaged: int
    roc_auc: float
    peak_in_region: float
    recall: float  # damaged scenes at or above the threshold
    false_alarms: float  # intact scenes at or above the threshold


def _row(name: str, scores: np.ndarray, labels: np.ndarray, peaks: list[bool], t: float) -> Row:
    hit = scores >= t
    return Row(
        name=name,
        images=len(scores),
        damaged=int(labels.sum()),
        roc_auc=roc_auc(scores, labels),
        peak_in_region=float(np.mean(peaks)) if peaks else 0.0,
        recall=float(hit[labels].mean()),
        false_alarms=float(hit[~labels].mean()),
    )


# Damage area as a share of the frame, so the groups mean the same at any render size
# (0.6% is about 400 pixels, 2x2 heatmap cells, at 256x256).
DAMAGE_SIZES: dict[str, tuple[float, float]] = {
    "under 0.6% of the frame": (0.0, 0.006),
    "0.6-1.5% of the frame": (0.006, 0.015),
    "over 1.5% of the frame": (0.015, 1.01),
}


def conditions(
    model: DamageModel, seeds: Sequence[int], size: tuple[int, int] = (384, 640)
) -> dict[str, list[Row]]:
    """The held-out metrics under each of CONDITIONS, then as rendered per background, per
    damage kind and per damage size (scenes with only that kind, or damage of that size,
    against every intact scene)."""
    scenes = [render_scene(seed, *size) for seed in seeds]
    if all(s.damaged for s in scenes) or not any(s.damaged for s in scenes):
        raise ValueError(f"{len(scenes)} scenes are all of one class; AUC needs more of them")
    t = model.threshold
    scores, labels, peaks = score_scenes(model, scenes)  # as rendered: the groups split these
    report: dict[str, list[Row]] = {
        "condition": [],
        "background": [],
        "damage kind": [],
        "damage size": [],
    }
    for name, change in CONDITIONS:
        seen = [change(scene) for scene in scenes] if change else None
        measured = score_scenes(model, seen) if seen else (scores, labels, peaks)
        report["condition"].append(_row(name, *measured, t))
    peak_of = dict(zip(np.flatnonzero(labels), peaks, strict=True))
    groups: tuple[tuple[str, Sequence[str], Callable[[Scene, str], bool]], ...] = (
        ("background", BACKGROUNDS, lambda s, key: s.background == key),
        ("damage kind", DAMAGE_KINDS, lambda s, key: s.kinds in ((), (key,))),
        ("damage size", tuple(DAMAGE_SIZES), _has_damage_of_size),
    )
    for group, keys, belongs in groups:
        for key in keys:
            idx = np.array([i for i, s in enumerate(scenes) if belongs(s, key)], int)
            if len(idx) == 0 or labels[idx].all() or not labels[idx].any():
                continue
            in_region = [peak_of[i] for i in idx if labels[i]]
            report[group].append(_row(key, scores[idx], labels[idx], in_region, t))
    return report


def _has_damage_of_size(scene: Scene, key: str) -> bool:
    """Intact, or damaged over a share of the frame within DAMAGE_SIZES[key]."""
    low, high = DAMAGE_SIZES[key]
    return not scene.damaged or low <= float(scene.mask.mean()) < high


def conditions_table(report: dict[str, list[Row]]) -> str:
    """The report as markdown tables."""
    out = []
    for group, rows in report.items():
        out += [
            f"| {group} | images (damaged) | ROC AUC | peak in region | recall | false alarms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r.name} | {r.images} ({r.damaged}) | {r.roc_auc:.3f} | {r.peak_in_region:.3f}"
            f" | {r.recall:.3f} | {r.false_alarms:.3f} |"
            for r in rows
        ]
        out.append("")
    return "\n".join(out)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo, else what platform knows), to say where a
    figure was measured."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def latency_ms(model: DamageModel, size: tuple[int, int], runs: int = 100) -> float:
    """Median milliseconds of one frame at size (height, width), returning what the server
    asks for (heatmap, score and one feature map)."""
    return latencies_ms([model], size, runs)[0]


def latencies_ms(
    models: Sequence[DamageModel], size: tuple[int, int], runs: int = 100
) -> list[float]:
    """Each model's median milliseconds of one frame at size (height, width), measured side by
    side: the models take turns, run by run, so that what else the machine does weighs on
    each alike (one after the other, a busy minute made int8 read slower than float32)."""
    pixels = render_scene(7, *size).image[None]
    for model in models:
        for _ in range(10):
            model.run(pixels, ["score"])
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for model, taken in zip(models, times, strict=True):
            started = time.perf_counter()
            model.run(pixels, ["heatmap", "score", "stage3"])
            taken.append((time.perf_counter() - started) * 1000)
    return [float(np.median(taken)) for taken in times]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m convstream.model.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, default=None, help="an .onnx file (default: shipped)")
    parser.add_argument(
        "--images", type=int, default=1000, help="held-out scenes to render (default %(default)s)"
    )
    parser.add_argument(
        "--height", type=int, default=256, help="scene height (default %(default)s)"
    )
    parser.add_argument("--width", type=int, default=256, help="scene width (default %(default)s)")
    parser.add_argument(
        "--latency", action="store_true", help="also time one frame at 256x256 and 384x640"
    )
    parser.add_argument(
        "--conditions",
        action="store_true",
        help="instead: markdown tables of the metrics under each condition, per background,"
        " per damage kind and per damage size (--images scenes at --height x --width; the"
        " model card uses 600 at 384x640)",
    )
    args = parser.parse_args(argv)
    if args.images < 10:
        parser.error(f"--images must be at least 10 (an AUC needs both classes), got {args.images}")
    if args.latency and args.conditions:
        parser.error("--latency and --conditions are separate runs")
    if min(args.height, args.width) < MIN_SIDE:
        parser.error(
            f"--height and --width must be at least {MIN_SIDE} (the smallest scene rendered), "
            f"got {args.height}x{args.width}"
        )
    sizes = [(args.height, args.width)]
    if args.latency:
        sizes += [(256, 256), (384, 640)]
    try:
        model = DamageModel(args.model, provider="cpu")
        # the checks the server makes at start, at the sizes run here
        model.warm_up(sizes, sizes_from=("evaluate runs {} here", "set --height and --width"))
    except ModelFileError as exc:
        parser.error(f"--model: {exc}")
    seeds = range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.images)
    if args.conditions:
        print(conditions_table(conditions(model, seeds, (args.height, args.width))))
        return
    report: dict[str, object] = asdict(evaluate(model, seeds, (args.height, args.width)))
    if args.latency:
        for h, w in sizes[1:]:
            report[f"latency_ms_{h}x{w}"] = round(latency_ms(model, (h, w)), 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
