"""Measure the damage model on rendered scenes whose seeds training never used.

    python -m convstream.model.evaluate            # the shipped model, 1000 held-out scenes

Seeds are split once, here: training draws from [0, EVAL_SEED_BASE), evaluation from
EVAL_SEED_BASE upward, and the tests from TEST_SEED_BASE upward, so no set overlaps another.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from convstream.model.runtime import DamageModel
from convstream.model.scenes import Scene, render_scene

EVAL_SEED_BASE = 1_000_000_000
TEST_SEED_BASE = 2_000_000_000


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half).

    Args:
        scores (np.ndarray): float, shape (N,).
        labels (np.ndarray): bool, shape (N,); both classes must be present.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positive and {n_neg} negative")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold that maximises balanced accuracy (Youden's J) on these scores."""
    candidates = np.unique(scores)
    best, best_j = 0.5, -1.0
    for t in candidates:
        predicted = scores >= t
        tpr = float((predicted & labels).sum()) / max(1, int(labels.sum()))
        fpr = float((predicted & ~labels).sum()) / max(1, int((~labels).sum()))
        if tpr - fpr > best_j:
            best, best_j = float(t), tpr - fpr
    return best


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
        threshold=t,
    )


def latency_ms(model: DamageModel, size: tuple[int, int], runs: int = 100) -> float:
    """Median milliseconds of one frame at size (height, width), returning what the server
    asks for (heatmap, score and one feature map)."""
    pixels = render_scene(7, *size).image[None]
    for _ in range(10):
        model.run(pixels, ["score"])
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run(pixels, ["heatmap", "score", "stage3"])
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="an .onnx file (default: shipped)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument(
        "--latency", action="store_true", help="also time one frame at 256x256 and 384x640"
    )
    args = parser.parse_args(argv)
    model = DamageModel(args.model, provider="cpu")
    seeds = range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.images)
    report: dict[str, object] = asdict(evaluate(model, seeds, (args.height, args.width)))
    if args.latency:
        for h, w in ((256, 256), (384, 640)):
            report[f"latency_ms_{h}x{w}"] = round(latency_ms(model, (h, w)), 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
