"""Train the damage network on rendered scenes and ship it as ONNX.

    pip install '.[train]' && python -m convstream.model.train --out models/convstream/model

Reproduces the shipped model on a 2-core CPU in about 35 minutes when nothing else runs on
it: every seed is fixed (the previous model came out bit for bit the same twice; this one was
trained once, with today's defaults passed as flags), the data is rendered by our own code
(``scenes.py``), nothing is downloaded. It prints the held-out metrics (and latency) at the
end and writes ``damage.onnx``, ``damage.pt`` and ``damage.metrics.json`` into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from convstream.model.evaluate import (
    EVAL_SEED_BASE,
    best_threshold,
    evaluate,
    latency_ms,
    score_scenes,
)
from convstream.model.export import export_onnx
from convstream.model.network import HEATMAP_STRIDE, DamageNet, parameter_count
from convstream.model.runtime import DamageModel
from convstream.model.scenes import render_scene

logger = logging.getLogger(__name__)

VAL_SEED_BASE = 500_000_000
RENDER_SIZE = 256
CROP = 128
# A heatmap cell is a positive target when damage covers this much of it, a negative when none
# does; cells in between are ignored rather than forced either way.
POSITIVE_COVER = 0.2


def _render_pair(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    damaged = render_scene(seed, RENDER_SIZE, RENDER_SIZE, damaged=True)
    intact = render_scene(seed, RENDER_SIZE, RENDER_SIZE, damaged=False)
    return damaged.image, damaged.mask, intact.image, intact.mask


def render_pairs(seeds: Sequence[int], desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's scene with and without damage, rendered on every core.

    Returns:
        images (2N, 256, 256, 3) uint8 and masks (2N, 256, 256) uint8; rows 2i and 2i + 1 are
        the same scene, damaged and intact. Seeing both, the network learns what damage adds
        to a scene rather than what damaged scenes happen to have in common.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool() as pool:
        quads = list(
            tqdm(pool.imap(_render_pair, seeds, chunksize=16), total=len(seeds), desc=desc)
        )
    images = np.stack([img for q in quads for img in (q[0], q[2])])
    masks = np.stack([m for q in quads for m in (q[1], q[3])])
    return images, masks


def cell_targets(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell targets and weights at stride 8 from pixel masks (N, H, W) -> (N, 1, H/8, W/8)."""
    n, h, w = masks.shape
    cover = masks.reshape(n, h // HEATMAP_STRIDE, HEATMAP_STRIDE, w // HEATMAP_STRIDE, -1)
    cover = cover.astype(np.float32).mean(axis=(2, 4))
    target = (cover >= POSITIVE_COVER).astype(np.float32)
    weight = ((cover == 0) | (cover >= POSITIVE_COVER)).astype(np.float32)
    return target[:, None], weight[:, None]


def batches(
    images: np.ndarray, masks: np.ndarray, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One augmented batch of batch/2 scene pairs: the same stride-aligned crop and flips for
    a scene's damaged and intact versions."""
    pairs = rng.integers(0, len(images) // 2, batch // 2)
    xs = np.empty((batch, CROP, CROP, 3), np.uint8)
    ms = np.empty((batch, CROP, CROP), np.uint8)
    for k, pair in enumerate(pairs):
        dy, dx = rng.integers(0, (RENDER_SIZE - CROP) // HEATMAP_STRIDE + 1, 2) * HEATMAP_STRIDE
        flip_x, flip_y = rng.random() < 0.5, rng.random() < 0.3
        for j in (0, 1):
            i = 2 * pair + j
            img, m = (
                images[i, dy : dy + CROP, dx : dx + CROP],
                masks[i, dy : dy + CROP, dx : dx + CROP],
            )
            if flip_x:
                img, m = img[:, ::-1], m[:, ::-1]
            if flip_y:
                img, m = img[::-1], m[::-1]
            xs[2 * k + j], ms[2 * k + j] = img, m
    target, weight = cell_targets(ms)
    labels, label_weight = crop_labels(ms, target)
    return (
        torch.from_numpy(xs),
        torch.from_numpy(target),
        torch.from_numpy(weight),
        torch.from_numpy(np.stack([labels, label_weight], axis=1)),
    )


def crop_labels(masks: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-level label and weight per crop: damaged if some cell is a positive target,
    intact if no damaged pixel at all; a crop that cut the damage down to a sliver at its edge
    (damaged pixels but no positive cell) is left out, not forced to be called damaged."""
    positive = target.reshape(len(target), -1).any(axis=1)
    touched = masks.reshape(len(masks), -1).any(axis=1)
    return positive.astype(np.float32), (positive | ~touched).astype(np.float32)


def loss_fn(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Cell-wise BCE (where the damage is) plus image-wise BCE on the max cell (whether any).

    labels is (N, 2): the crop's label and its weight (0 for crops that cut damage off).
    """
    cells = F.binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=torch.tensor(5.0)
    )
    image = F.binary_cross_entropy_with_logits(
        logits.amax(dim=(1, 2, 3)), labels[:, 0], weight=labels[:, 1]
    )
    return cells + image


def train(
    out_dir: Path, *, scenes: int, steps: int, batch: int, seed: int = 0
) -> dict[str, object]:
    """Render, train, pick the threshold on a validation set, export, evaluate; returns metrics."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_num_threads(max(1, multiprocessing.cpu_count()))
    cv2.setNumThreads(1)  # small images: OpenCV's own threads only fight the training's
    train_x, train_m = render_pairs(range(scenes), "render train")

    net = DamageNet()
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    net.train()
    bar = tqdm(range(steps), desc="train")
    running = 0.0
    for step in bar:
        x, target, weight, labels = batches(train_x, train_m, batch, rng)
        logits = net(x)[-1]
        loss = loss_fn(logits, target, weight, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running = 0.98 * running + 0.02 * float(loss) if step else float(loss)
        bar.set_postfix(loss=f"{running:.3f}")
    del train_x, train_m

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "damage.onnx"
    # The checkpoint stays in the repository (not the wheel): fine-tuning starts from it, and
    # a test checks that the shipped ONNX file is its export.
    torch.save(net.state_dict(), out_dir / "damage.pt")
    export_onnx(net, onnx_path, threshold=0.5)
    # The threshold comes from a validation set; the reported metrics from another, unseen one.
    model = DamageModel(onnx_path, provider="cpu")
    val = [
        render_scene(s, RENDER_SIZE, RENDER_SIZE) for s in range(VAL_SEED_BASE, VAL_SEED_BASE + 500)
    ]
    val_scores, val_labels, _ = score_scenes(model, val)
    threshold = best_threshold(val_scores, val_labels)
    export_onnx(net, onnx_path, threshold=threshold)
    model = DamageModel(onnx_path, provider="cpu")
    held_out = evaluate(model, range(EVAL_SEED_BASE, EVAL_SEED_BASE + 1000))
    held_out_640 = evaluate(model, range(EVAL_SEED_BASE, EVAL_SEED_BASE + 300), (384, 640))
    report: dict[str, object] = {
        "held_out_256x256": asdict(held_out),
        "held_out_384x640": asdict(held_out_640),
        "threshold": threshold,
        "parameters": parameter_count(net),
        "train_scenes": scenes,
        "train_steps": steps,
        "batch": batch,
        "train_seconds": round(time.perf_counter() - started, 1),
        "latency_ms_256x256": round(latency_ms(model, (256, 256)), 2),
        "latency_ms_384x640": round(latency_ms(model, (384, 640)), 2),
        "sha256": model.sha256,
        "onnx_bytes": onnx_path.stat().st_size,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
    }
    (out_dir / "damage.metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and export the damage model.")
    parser.add_argument("--out", type=Path, default=Path("models/convstream/model"))
    parser.add_argument("--scenes", type=int, default=6000, help="rendered scene pairs")
    parser.add_argument("--steps", type=int, default=8000, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=64, help="crops per step (pairs x 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = train(args.out, scenes=args.scenes, steps=args.steps, batch=args.batch)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
