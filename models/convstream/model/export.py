"""Export the trained network to ONNX: opset 18, named outputs, dynamic batch/height/width.

    python -m convstream.model.export models/convstream/model/damage.pt --out /tmp/damage.onnx

``train`` exports what it trains; this command exports a checkpoint (a DamageNet state dict,
such as the ``damage.pt`` that training writes beside the model, or one your own training code
saved), choosing the threshold on the validation scenes as training does unless given one.

The graph takes ``pixels`` (uint8 BGR, shape (N, H, W, 3)) and returns stage1..stage4 (float32
NCHW feature maps), ``heatmap`` (N, 1, ceil(H/8), ceil(W/8)) and ``score`` (N,). What the
server needs to know about the model (stages, threshold, stride) travels in the file's
metadata, so a model file is self-describing.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from convstream.client.evaluation import best_threshold
from convstream.model.checks import out_problem
from convstream.model.evaluate import VAL_SEED_BASE, score_scenes
from convstream.model.network import HEATMAP_STRIDE, STAGES, DamageNet, ExportWrapper
from convstream.model.runtime import INPUT_NAME, OUTPUT_NAMES, DamageModel
from convstream.model.scenes import render_scene

OPSET = 18
VALIDATION_SCENES = 500
"""Scenes (256x256, from VAL_SEED_BASE) the threshold is chosen on."""


def export_onnx(net: DamageNet, path: Path, *, threshold: float) -> None:
    """Write net to path as ONNX with the metadata the runtime reads.

    Args:
        net: the trained network (put in eval mode here).
        path: where the .onnx file goes.
        threshold: score at or above which a frame is called damaged.
    """
    wrapper = ExportWrapper(net).eval()
    example = torch.zeros(1, 64, 96, 3, dtype=torch.uint8)
    # The TorchScript exporter folds BatchNorm into the convolutions and names every dynamic
    # axis explicitly; each output gets its own axis names, which that exporter requires.
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}}
    for name in OUTPUT_NAMES[:-1]:
        axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    axes["score"] = {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,  # type: ignore[arg-type]  # a file object works; the stub says a path
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    meta = {
        "threshold": f"{threshold:.6f}",
        "heatmap_stride": str(HEATMAP_STRIDE),
        "stages": json.dumps([{"name": n, "channels": c, "stride": s} for n, c, s in STAGES]),
        "input": "pixels: uint8 BGR (N, H, W, 3); any H, W",
        "producer": "convstream.model.train",
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    # Whole or not at all: written beside path, then renamed over it, so a server reading
    # path (a reload, a restart) never reads half a file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(model.SerializeToString())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def export_validated(net: DamageNet, path: Path) -> None:
    """Write net to path with the threshold that best separates the validation scenes (the
    balanced accuracy's best). The scenes are scored on a copy in a temporary folder: a server
    watching path never sees the model with a threshold not yet chosen."""
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / "unvalidated.onnx"
        export_onnx(net, scratch, threshold=0.5)
        seeds = range(VAL_SEED_BASE, VAL_SEED_BASE + VALIDATION_SCENES)
        scores, labels, _ = score_scenes(
            DamageModel(scratch, provider="cpu"), [render_scene(s) for s in seeds]
        )
    export_onnx(net, path, threshold=best_threshold(scores, labels))


def load_checkpoint(path: Path) -> DamageNet:
    """The network whose weights the checkpoint at path holds (a DamageNet state dict).

    Raises:
        ValueError: the file cannot be read, is not a state dict, or does not fit DamageNet
            (the message names the first weights that differ).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint of plain tensors, as torch.save("
            f"net.state_dict(), path) writes (torch.load refused it: {type(exc).__name__})"
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(
            f"{path} holds a {type(state).__name__}; expected a DamageNet state dict, as "
            "torch.save(net.state_dict(), path) writes"
        )
    net = DamageNet()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} (DamageNet's {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape
    ]
    if missing or extra or shapes:
        found = "; ".join(
            f"{what}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
            for what, names in (
                ("missing", missing),
                ("not in DamageNet", extra),
                ("shape", shapes),
            )
            if names
        )
        raise ValueError(
            f"{path} does not fit this version's DamageNet ({len(expected)} tensors): {found}"
        )
    net.load_state_dict(state)
    return net.eval()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m convstream.model.export",
        description="Export a DamageNet checkpoint (a state dict) to the ONNX model file the "
        "server runs, with its threshold and stages in the file's metadata.",
    )
    parser.add_argument("checkpoint", type=Path, help="the .pt file, e.g. damage.pt")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--threshold",
        type=float,
        help="score at or above which a frame is called damaged, between 0 and 1 (default:"
        f" chosen on {VALIDATION_SCENES} rendered validation scenes, as training does)",
    )
    args = parser.parse_args(argv)
    if args.threshold is not None and not (
        math.isfinite(args.threshold) and 0 < args.threshold < 1
    ):
        parser.error(f"--threshold must be between 0 and 1, got {args.threshold}")
    problem = out_problem(args.out, "damage.onnx")
    if args.out.exists() and args.checkpoint.exists() and args.out.samefile(args.checkpoint):
        problem = f"--out {args.out} is the checkpoint: expected another file (it would replace it)"
    if problem:
        parser.error(problem)
    try:
        net = load_checkpoint(args.checkpoint)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threshold is None:
        print(f"choosing the threshold on {VALIDATION_SCENES} validation scenes ...", flush=True)
        export_validated(net, args.out)
    else:
        export_onnx(net, args.out, threshold=args.threshold)
    written = DamageModel(args.out, provider="cpu")
    print(
        f"wrote {args.out} (sha256 {written.sha256}, threshold {written.own_threshold:.4g});"
        f" serve it with --model {args.out}"
    )


if __name__ == "__main__":
    main()
