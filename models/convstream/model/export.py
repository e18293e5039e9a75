"""Export the trained network to ONNX: opset 18, named outputs, dynamic batch/height/width.

The graph takes ``pixels`` (uint8 BGR, shape (N, H, W, 3)) and returns stage1..stage4 (float32
NCHW feature maps), ``heatmap`` (N, 1, ceil(H/8), ceil(W/8)) and ``score`` (N,). What the
server needs to know about the model (stages, threshold, stride) travels in the file's
metadata, so a model file is self-describing.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import onnx
import torch

from convstream.model.network import HEATMAP_STRIDE, STAGES, DamageNet, ExportWrapper
from convstream.model.runtime import INPUT_NAME, OUTPUT_NAMES

OPSET = 18


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
    path.write_bytes(model.SerializeToString())
