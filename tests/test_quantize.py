"""The int8 variant: what stays float32, and that it is a model the server takes as it is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convstream.model import DamageModel
from convstream.model.evaluate import TEST_SEED_BASE
from convstream.model.quantize import latencies_ms, quantize
from convstream.model.runtime import MODEL_PATH, OUTPUT_NAMES
from convstream.model.scenes import render_scene


def test_int8_variant_keeps_the_first_layer_in_float_and_tracks_the_float_model(
    tmp_path: Path,
) -> None:
    target = tmp_path / "damage.int8.onnx"
    quantize(MODEL_PATH, target, calibration=8)

    # The input's scaling and the first convolution stay float32 (quantized, they made the
    # whole model slower than float32); every later convolution reads int8.
    nodes = onnx.load(str(target)).graph.node
    made_by = {out: n.op_type for n in nodes for out in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in onnx.load(str(MODEL_PATH)).graph.node)
    assert not any(made_by.get(x) == "DequantizeLinear" for x in convs[0].input)
    assert all(made_by.get(c.input[0]) == "DequantizeLinear" for c in convs[1:])
    assert all(made_by.get(c.input[1]) == "DequantizeLinear" for c in convs[1:])
    scaling = [n for n in nodes if n.op_type in ("Mul", "Add")]
    assert scaling and not any(
        made_by.get(x) == "DequantizeLinear" for n in scaling for x in n.input
    )
    assert not [n.op_type for n in nodes if n.op_type.startswith("QLinear")]

    shipped, int8 = DamageModel(provider="cpu"), DamageModel(target, provider="cpu")
    assert int8.threshold == shipped.threshold  # the metadata comes along
    assert [s.name for s in int8.stages] == [s.name for s in shipped.stages]
    pixels = np.stack([render_scene(TEST_SEED_BASE + i, 256, 320).image for i in range(4)])
    want, got = shipped.run(pixels), int8.run(pixels)
    for name in OUTPUT_NAMES:
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32, name
    # Quantization error, not another model: the heatmap within a few hundredths.
    assert np.abs(got["heatmap"] - want["heatmap"]).mean() < 0.02
    assert np.abs(got["score"] - want["score"]).max() < 0.1


def test_latencies_are_measured_side_by_side_run_by_run() -> None:
    """quantize's table compares float32 and int8 latencies; measured one model after the
    other, a busy minute on the machine made int8 read slower than float32. The models now
    take turns run by run."""
    order: list[str] = []

    class Recorded(DamageModel):
        def __init__(self, name: str) -> None:
            super().__init__(provider="cpu", intra_op_threads=1)
            self.name = name

        def run(self, pixels: np.ndarray, outputs: Sequence[str] | None = None) -> Any:
            order.append(self.name)
            return super().run(pixels, outputs)

    times = latencies_ms([Recorded("a"), Recorded("b")], (64, 96), runs=3)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert order == ["a"] * 10 + ["b"] * 10 + ["a", "b"] * 3  # warm-up, then in turns
