"""Try an int8 (static, QDQ) variant of the shipped model and compare it with float32.

    python -m convstream.model.quantize [--out /tmp/damage.int8.onnx]

Calibrates on rendered scenes from the validation seed range, quantizes weights per channel
and activations per tensor, then prints held-out ROC AUC and onnxruntime latency of both
models, measured side by side. The int8 file ships only if its accuracy holds (see
MODEL_CARD.md for the decision and the numbers).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from convstream.model.evaluate import EVAL_SEED_BASE, evaluate
from convstream.model.runtime import INPUT_NAME, MODEL_PATH, DamageModel
from convstream.model.scenes import render_scene

CALIBRATION_SEED_BASE = 600_000_000


class _Scenes(CalibrationDataReader):
    def __init__(self, count: int, size: tuple[int, int]) -> None:
        self._seeds: Iterator[int] = iter(
            range(CALIBRATION_SEED_BASE, CALIBRATION_SEED_BASE + count)
        )
        self._size = size

    def get_next(self) -> dict[str, np.ndarray] | None:
        seed = next(self._seeds, None)
        if seed is None:
            return None
        return {INPUT_NAME: render_scene(seed, *self._size).image[None]}


def quantize(source: Path, target: Path, *, calibration: int = 200) -> None:
    """Write an int8 QDQ copy of source to target, calibrated on rendered scenes."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            _Scenes(calibration, (256, 256)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def latency_ms(model: DamageModel, size: tuple[int, int], runs: int = 100) -> float:
    """Median milliseconds of one frame at size (height, width)."""
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
    parser = argparse.ArgumentParser(description="Compare an int8 variant with the shipped model.")
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "damage.int8.onnx"
    )
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args(argv)
    quantize(MODEL_PATH, args.out)
    seeds = range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.images)
    print("| model | ROC AUC | peak in region | ms 256x256 | ms 384x640 |")
    print("|---|---:|---:|---:|---:|")
    for name, path in (("float32 (shipped)", MODEL_PATH), ("int8 QDQ", args.out)):
        model = DamageModel(path, provider="cpu")
        m = evaluate(model, seeds)
        small, large = latency_ms(model, (256, 256)), latency_ms(model, (384, 640))
        print(f"| {name} | {m.roc_auc:.4f} | {m.peak_in_region:.3f} | {small:.2f} | {large:.2f} |")


if __name__ == "__main__":
    main()
