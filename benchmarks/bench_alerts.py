"""How many of the dashboard's alerts are right, on the demo conveyor, by alert setting.

    .venv/bin/python benchmarks/bench_alerts.py [--seconds 240] [--cameras 6]

Not a speed benchmark: what an operator sees. Each camera is the demo conveyor (`demo:conveyor`,
360x640 at 15 fps, seeds 1, 2, ...), which knows where every package's damage is. Every third
frame is scored, as the dashboard watches a 15 fps camera at its default 5 results a second,
and scored as the server scores it (letterboxed to 384x640, the hottest cell off the bars,
by the shipped model in onnxruntime). The dashboard's own AlertDetector, with its default
10 s cooldown, then raises the alerts, at each threshold and number of results in a row
(`--threshold`, `--alert-frames`). An alert is right when the frame it shows has damage in it
(any damaged pixel); a damaged package is caught when, while its damage shows (100 pixels or
more), that many results in a row reach the threshold.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import machine, table

from convstream.client.episodes import AlertDetector
from convstream.model import DamageModel
from convstream.model.scenes import Conveyor
from convstream.server.letterbox import letterbox

FPS, EVERY, SHOWN_PX = 15.0, 3, 100
COOLDOWN_S = 10.0  # the dashboard's default


def scores(seed: int, seconds: float, model: DamageModel) -> list[tuple[float, float, int]]:
    """(time, score, damaged pixels) of every third frame of one conveyor."""
    conveyor = Conveyor(seed, 360, 640, FPS)
    rows = []
    for index in range(0, int(seconds * FPS), EVERY):
        scene = conveyor.frame(index)
        pixels, geometry = letterbox(scene.image, (384, 640), (640, 360))
        heat = model.run(pixels[None], ["heatmap"])["heatmap"]
        score = geometry.hottest_cell(heat, 8)[4]
        rows.append((index / FPS, score, int(np.count_nonzero(scene.mask))))
    return rows


def judge(
    cameras: list[list[tuple[float, float, int]]], threshold: float, frames: int
) -> tuple[int, int, int, int]:
    """(right alerts, wrong alerts, damaged packages caught, damaged packages)."""
    right = wrong = caught = packages = 0
    for rows in cameras:
        detector: AlertDetector[int] = AlertDetector(COOLDOWN_S, frames_over=frames)
        for k, (when, score, _) in enumerate(rows):
            decision = detector.update("demo", score, threshold, when, k)
            if decision is not None and decision.kind == "raise":
                if rows[decision.frame][2] > 0:
                    right += 1
                else:
                    wrong += 1
        streak, hit, showing = 0, False, False
        for _, score, damaged in [*rows, (0.0, 0.0, 0)]:  # a last row ends the last package
            if damaged >= SHOWN_PX:
                showing = True
                streak = streak + 1 if score >= threshold else 0
                hit = hit or streak >= frames
            elif showing:
                packages, caught = packages + 1, caught + hit
                streak, hit, showing = 0, False, False
    return right, wrong, caught, packages


def run(seconds: float, cameras: int, thresholds: list[float], frames: list[int]) -> str:
    model = DamageModel()
    scored = [scores(seed, seconds, model) for seed in range(1, cameras + 1)]
    minutes = cameras * seconds / 60
    rows = []
    for threshold in thresholds or [model.threshold]:
        for n in frames:
            right, wrong, caught, packages = judge(scored, threshold, n)
            alerts = right + wrong
            rows.append(
                [
                    f"{threshold:.3f}",
                    str(n),
                    f"{alerts / minutes:.1f}",
                    f"{right / max(1, alerts):.2f}",
                    f"{wrong / minutes:.2f}",
                    f"{caught}/{packages} ({caught / max(1, packages):.0%})",
                ]
            )
    head = (
        f"{cameras} demo conveyors x {seconds:g} s ({minutes:g} camera-minutes), scored at "
        f"{FPS / EVERY:g} results/s, alert cooldown {COOLDOWN_S:g} s; model threshold "
        f"{model.threshold:.3f}. Machine: {machine()}\n\n"
    )
    header = [
        "threshold",
        "results in a row",
        "alerts/min a camera",
        "right",
        "wrong alerts/min a camera",
        "damaged packages caught",
    ]
    return head + table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="per camera")
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--threshold", type=float, action="append", default=[], help="repeatable")
    parser.add_argument("--alert-frames", type=int, action="append", default=[])
    args = parser.parse_args()
    print(run(args.seconds, args.cameras, args.threshold, args.alert_frames or [1, 2, 3]))


if __name__ == "__main__":
    main()
