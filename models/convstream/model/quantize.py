"""Try an int8 (static, QDQ) variant of the shipped model and compare it with float32.

    python -m convstream.model.quantize [--out /tmp/damage.int8.onnx]

Calibrates on rendered scenes from the validation seed range and quantizes the convolutions
of stages 2-4 (weights per channel, activations per tensor), then prints held-out ROC AUC and
onnxruntime latency of both models, measured side by side, on one thread (as the server runs
frames on a CPU) and on every core. The file it writes is a model the server takes as it is
(``convstream serve --model FILE``): the metadata, threshold included, comes along. See
MODEL_CARD.md for the numbers and why float32 stays the default.

What stays float32, and why (onnxruntime's profile, 384x640, one thread, on a Xeon): the
input's scaling and the first convolution. Quantized, the per-channel scaling became
QLinearMul and QLinearAdd over every pixel (16 ms of a 24 ms frame), and the first
convolution, three channels in, ran slower in int8 (2.2 ms) than in float32; left in float32
they cost about 1 ms, and the int8 convolutions after them are 1.6x faster than float32's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from convstream.model.checks import out_problem as file_out_problem
from convstream.model.evaluate import EVAL_SEED_BASE, evaluate, latencies_ms
from convstream.model.runtime import INPUT_NAME, MODEL_PATH, DamageModel, ModelFileError
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


QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"})


def quantize(source: Path, target: Path, *, calibration: int = 200) -> None:
    """Write an int8 QDQ copy of source to target, calibrated on rendered scenes: every
    convolution but the first in int8, everything else float32 (see the module's docstring).

    The copy is written beside target under a temporary name and renamed to target only once
    it loads as a convstream damage model, so a failed run leaves no file behind.

    Raises:
        ModelFileError: source is already quantized (checked before calibrating), or the copy
            does not load.
    """
    ops = sorted({n.op_type for n in onnx.load(str(source)).graph.node} & QUANTIZED_OPS)
    if ops:
        raise ModelFileError(
            f"--model {source} is already quantized (it has {', '.join(ops)} nodes); expected "
            "a float32 model: quantize the one it was made from"
        )
    written = target.with_name(f".{target.name}.{os.getpid()}.tmp.onnx")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            first_conv = next(
                n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"
            )
            quantize_static(
                str(prepared),
                str(written),
                _Scenes(calibration, (256, 256)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv"],
                nodes_to_exclude=[first_conv],
            )
        try:  # loads, and its outputs have the right shapes
            DamageModel(written, provider="cpu")
        except ModelFileError as exc:
            reason = str(exc).replace(str(written), "it")
            raise ModelFileError(f"the int8 copy of {source} does not load: {reason}") from exc
        os.replace(written, target)
    finally:
        written.unlink(missing_ok=True)


def out_problem(model: Path, out: Path) -> str | None:
    """Why --out cannot take the int8 copy of --model, or None: checked before calibrating."""
    if out.resolve() == model.resolve() or (out.exists() and os.path.samefile(out, model)):
        return f"--out {out} is --model: expected another file (it would replace the float32 model)"
    return file_out_problem(out, "damage.int8.onnx")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m convstream.model.quantize",
        description="Write an int8 variant of a model and compare the two side by side.",
    )
    parser.add_argument(
        "--model", type=Path, default=MODEL_PATH, help="the float32 .onnx (default: shipped)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "damage.int8.onnx",
        help="where the int8 .onnx goes (default %(default)s)",
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=200,
        help="validation scenes that calibrate the activations' ranges (default %(default)s)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=1000,
        help="held-out scenes to compare on at 256x256; at most 300 of them at 384x640"
        " (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.calibration < 1 or args.images < 10:
        parser.error("--calibration must be at least 1 and --images at least 10")
    try:
        DamageModel(args.model, provider="cpu")
    except ModelFileError as exc:
        parser.error(f"--model: {exc}")
    problem = out_problem(args.model, args.out)
    if problem:
        parser.error(problem)
    try:
        quantize(args.model, args.out, calibration=args.calibration)
    except ModelFileError as exc:
        parser.error(f"{exc}; nothing was written")
    written = DamageModel(args.out, provider="cpu")
    print(f"wrote {args.out} (sha256 {written.sha256}); serve it with --model {args.out}\n")
    seeds = range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.images)
    wide = os.cpu_count() or 1
    print(
        "| model | ROC AUC 256x256 / 384x640 | peak in region | ms 384x640, 1 thread |"
        f" ms 384x640, {wide} threads |"
    )
    print("|---|---:|---:|---:|---:|")
    paths = (args.model, args.out)
    one_thread = latencies_ms(
        [DamageModel(p, provider="cpu", intra_op_threads=1) for p in paths], (384, 640)
    )
    every_thread = latencies_ms(
        [DamageModel(p, provider="cpu", intra_op_threads=wide) for p in paths], (384, 640)
    )
    names = (args.model.name, f"{args.out.name} (int8 QDQ)")
    rows = zip(names, paths, one_thread, every_thread, strict=True)
    for name, path, one, every in rows:
        model = DamageModel(path, provider="cpu")
        small = evaluate(model, seeds)
        large = evaluate(model, seeds[:300], (384, 640))
        print(
            f"| {name} | {small.roc_auc:.3f} / {large.roc_auc:.3f} |"
            f" {small.peak_in_region:.3f} / {large.peak_in_region:.3f} | {one:.2f} | {every:.2f} |"
        )


if __name__ == "__main__":
    main()
