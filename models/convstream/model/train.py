"""Train the damage network on rendered scenes and ship it as ONNX.

    pip install '.[train]' && python -m convstream.model.train --out models/convstream/model

Trained the shipped model, once, with these defaults: 13 minutes on a 2-core Xeon with AMX and
nothing else running, where the command runs forward and backward in bfloat16, as it does on
CPUs with AVX-512 BF16 (AMD Zen 4). CPUs with neither train in float32, slower (the previous,
smaller network took 35 minutes on a 2-core AVX2-only AMD EPYC; ``--precision`` chooses). Every
seed is fixed (a rerun gives a model of the same quality, not necessarily the same bits), the
data is rendered by our own code (``scenes.py``), nothing is downloaded. It prints the held-out
metrics (and latency) at the end and writes ``damage.onnx``, ``damage.pt`` and
``damage.metrics.json`` into --out.
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
import onnxruntime as ort
import torch
import torch.nn.functional as F
from tqdm import tqdm

from convstream.model.evaluate import (
    EVAL_SEED_BASE,
    cpu_name,
    evaluate,
    latency_ms,
)
from convstream.model.export import export_validated
from convstream.model.network import HEATMAP_STRIDE, DamageNet, parameter_count
from convstream.model.runtime import DamageModel
from convstream.model.scenes import render_scene

logger = logging.getLogger(__name__)

RENDER_SIZE = 256
CROP = 128
# A heatmap cell is a positive target when damage covers this much of it, a negative when none
# does; cells in between are ignored rather than forced either way.
POSITIVE_COVER = 0.2
# ... and only if the damage shows in it: at least SEEN of its pixels are damaged pixels that
# differ from the intact twin by more than VISIBLE levels in some colour channel. Damage drawn
# but then lost to darkness, blur, noise or JPEG would teach the network to see what no camera
# shows; such cells are ignored instead.
VISIBLE = 12
SEEN = 0.05
# Most crops are placed over the pair's damage, at least MARGIN pixels inside the crop where the
# frame allows: a crop beside the damage shows the same intact view twice and teaches nothing
# about what damage adds. Uniform crops missed the damage in a third of the pairs.
ON_DAMAGE = 0.7
MARGIN = 16
# A positive cell weighs this many negatives in the cell-wise loss: positives are few (damage
# covers ~1% of a frame) and a missed tear costs more than a false alarm. 10 against the 5 of
# the models before 2026-12-03: +0.01 / +0.02 AUC at 256x256 / 384x640, 3,000-step runs.
POSITIVE_WEIGHT = 10.0
_LAST_START = (RENDER_SIZE - CROP) // HEATMAP_STRIDE  # the last crop start, in cells
PRECISIONS = ("auto", "bf16", "fp32")  # see train()
# This share of the pairs is rendered larger, 1.25 to DOWNSCALE_MAX times a side, and scaled
# down to RENDER_SIZE as the server scales a 720p or 1080p frame (INTER_AREA): a scene drawn
# with more pixels and then shrunk is finer and less noisy than one drawn small, and a model
# trained on the latter alone raised an alarm on 40-45% of intact 720p and 1080p renders
# scaled so, against 17% drawn at the size it ran (MODEL_CARD, "What changed on 2026-12-07").
DOWNSCALED = 0.35
DOWNSCALE_MAX = 3.0


def _render_pair(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seed's scene damaged and intact, drawn at RENDER_SIZE or, for DOWNSCALED of the
    seeds (the seed decides), larger and scaled down to it; the masks keep the pixels that
    damage covers at least half of."""
    rng = np.random.default_rng([seed, 77])
    side = RENDER_SIZE
    if rng.random() < DOWNSCALED:
        side = round(RENDER_SIZE * rng.uniform(1.25, DOWNSCALE_MAX) / 8) * 8
    out: list[np.ndarray] = []
    for damaged in (True, False):
        scene = render_scene(seed, side, side, damaged=damaged)
        image, mask = scene.image, scene.mask
        if side != RENDER_SIZE:
            size = (RENDER_SIZE, RENDER_SIZE)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            cover = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            mask = (cover >= 0.5).astype(np.uint8)
        out += [image, mask]
    return out[0], out[1], out[2], out[3]


def render_pairs(seeds: Sequence[int], desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's scene with and without damage, rendered on every core into arrays
    allocated once (stacking a list of renders needed twice the memory: 6.3 GB for 6,000 pairs).

    Returns:
        images (2N, 256, 256, 3) uint8 and masks (2N, 256, 256) uint8; rows 2i and 2i + 1 are
        the same scene, damaged and intact. Seeing both, the network learns what damage adds
        to a scene rather than what damaged scenes happen to have in common.
    """
    images = np.empty((2 * len(seeds), RENDER_SIZE, RENDER_SIZE, 3), np.uint8)
    masks = np.empty((2 * len(seeds), RENDER_SIZE, RENDER_SIZE), np.uint8)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool() as pool:
        quads = pool.imap(_render_pair, seeds, chunksize=16)
        for i, quad in enumerate(tqdm(quads, total=len(seeds), desc=desc)):
            images[2 * i], masks[2 * i], images[2 * i + 1], masks[2 * i + 1] = quad
    return images, masks


def _per_cell(pixels: np.ndarray) -> np.ndarray:
    """Share of each stride-8 cell's pixels that are set: (N, H, W) 0/1 -> (N, H/8, W/8).

    INTER_AREA at an integer factor is the exact mean of each block, and ~6x faster than
    numpy's mean over two strided axes (a training step builds two of these).
    """
    h, w = pixels.shape[1:]
    size = (w // HEATMAP_STRIDE, h // HEATMAP_STRIDE)
    return np.stack(
        [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in pixels.astype(np.float32)]
    )


def cell_targets(masks: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell targets and weights at stride 8, (N, 1, H/8, W/8).

    Args:
        masks: uint8 (N, H, W), 1 on damage.
        seen: bool (N, H, W), damaged pixels that visibly differ from the intact twin.
    """
    cover = _per_cell(masks)
    target = (cover >= POSITIVE_COVER) & (_per_cell(seen) >= SEEN)
    weight = (cover == 0) | target
    return target[:, None].astype(np.float32), weight[:, None].astype(np.float32)


def batches(
    images: np.ndarray, masks: np.ndarray, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One augmented batch of batch/2 scene pairs, rows 2k and 2k + 1 a scene damaged and
    intact: the same stride-aligned crop (over the damage ON_DAMAGE of the time) and flips."""
    if masks.shape[1:] != (RENDER_SIZE, RENDER_SIZE):
        raise ValueError(f"training renders are {RENDER_SIZE}x{RENDER_SIZE}, got {masks.shape[1:]}")
    pairs = rng.integers(0, len(images) // 2, batch // 2)
    xs = np.empty((batch, CROP, CROP, 3), np.uint8)
    ms = np.empty((batch, CROP, CROP), np.uint8)
    for k, pair in enumerate(pairs):
        damage = np.flatnonzero(masks[2 * pair]) if rng.random() < ON_DAMAGE else ()
        if len(damage):
            y, x = divmod(int(damage[rng.integers(len(damage))]), RENDER_SIZE)
            dy, dx = crop_start(y, rng) * HEATMAP_STRIDE, crop_start(x, rng) * HEATMAP_STRIDE
        else:
            dy, dx = rng.integers(0, _LAST_START + 1, 2) * HEATMAP_STRIDE
        flip_x, flip_y = rng.random() < 0.5, rng.random() < 0.3
        for j in (0, 1):
            i = 2 * pair + j
            img, m = (
                images[i, dy : dy + CROP, dx : dx + CROP],
                masks[i, dy : dy + CROP, dx : dx + CROP],
            )
            if flip_x:  # numpy copies a reversed 3-channel row ~10x slower than cv2.flip
                img, m = cv2.flip(img, 1), cv2.flip(m, 1)
            if flip_y:
                img, m = img[::-1], m[::-1]
            xs[2 * k + j], ms[2 * k + j] = img, m
    # |damaged - intact| per channel without leaving uint8, then the largest of the three;
    # numpy's max over an axis of 3 took ~20 ms a batch, this ~1.
    change = np.maximum(xs[0::2], xs[1::2])
    change -= np.minimum(xs[0::2], xs[1::2])
    largest = np.maximum(np.maximum(change[..., 0], change[..., 1]), change[..., 2])
    seen = np.zeros(ms.shape, bool)
    seen[0::2] = (largest > VISIBLE) & (ms[0::2] > 0)
    target, weight = cell_targets(ms, seen)
    labels, label_weight = crop_labels(ms, target)
    return (
        torch.from_numpy(xs),
        torch.from_numpy(target),
        torch.from_numpy(weight),
        torch.from_numpy(np.stack([labels, label_weight], axis=1)),
    )


def crop_start(pixel: int, rng: np.random.Generator) -> int:
    """A random crop start, in heatmap cells, whose crop holds this pixel (row or column) at
    least MARGIN pixels from the crop's edge, or as far in as the frame allows."""
    first = max(0, -(-(pixel + MARGIN + 1 - CROP) // HEATMAP_STRIDE))
    last = min(_LAST_START, (pixel - MARGIN) // HEATMAP_STRIDE)
    if last < first:  # the pixel is within MARGIN of the frame's edge: the crop at that edge
        return min(first, _LAST_START)
    return int(rng.integers(first, last + 1))


def crop_labels(masks: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-level label and weight per crop: damaged if some cell is a positive target,
    intact if no damaged pixel at all; a crop that cut the damage down to a sliver at its edge
    (damaged pixels but no positive cell) is left out, not forced to be called damaged."""
    positive = np.asarray(target.reshape(len(target), -1).any(axis=1))
    touched = np.asarray(masks.reshape(len(masks), -1).any(axis=1))
    return positive.astype(np.float32), (positive | ~touched).astype(np.float32)


def loss_fn(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Cell-wise BCE (where the damage is) plus image-wise BCE on the max cell (whether any).

    labels is (N, 2): the crop's label and its weight (0 for crops that cut damage off).
    """
    cells = F.binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=torch.tensor(POSITIVE_WEIGHT)
    )
    image = F.binary_cross_entropy_with_logits(
        logits.amax(dim=(1, 2, 3)), labels[:, 0], weight=labels[:, 1]
    )
    return cells + image


def train_step(
    net: DamageNet,
    optimiser: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    bf16: bool,
) -> float:
    """One optimiser step on one batch from ``batches``; returns the loss.

    With bf16 the forward and backward convolutions run in bfloat16 (torch's CPU autocast);
    the weights, the optimiser's state and the loss stay float32, so small updates are not
    rounded away.
    """
    x, target, weight, labels = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)[-1]
    loss = loss_fn(logits.float(), target, weight, labels)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return float(loss.item())


def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware: Intel AMX tiles (a training step in
    oneDNN's bfloat16 convolutions costs 1/1.6 of one in float32) or AVX-512 BF16 (AMD Zen 4
    and later, Intel Cooper Lake: 104-114 ms a step against 158-160 in float32 on a 2-core
    AMD EPYC). Elsewhere (AVX2-only CPUs such as AMD Zen 3) bfloat16 is emulated and slower
    than float32."""
    # private functions of torch.cpu (2.13 has both): absent, the CPU is taken to lack it
    hardware = any(
        getattr(torch.cpu, name, lambda: False)()
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    return bool(torch.backends.mkldnn.is_available() and hardware)


def train(
    out_dir: Path,
    *,
    scenes: int,
    steps: int,
    batch: int,
    seed: int = 0,
    precision: str = "auto",
) -> dict[str, object]:
    """Render, train, pick the threshold on a validation set, export, evaluate; returns metrics.

    precision: "bf16" runs forward and backward in bfloat16 autocast (weights, optimiser and
    loss stay float32), "fp32" in float32, "auto" picks bf16 where bf16_is_fast().
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision is {', '.join(PRECISIONS)}, got {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast())
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_num_threads(max(1, multiprocessing.cpu_count()))
    cv2.setNumThreads(1)  # small images: OpenCV's own threads only fight the training's
    train_x, train_m = render_pairs(range(scenes), "render train")
    rendered = time.perf_counter()

    # The NHWC input permuted to NCHW is already channels-last in memory; keeping the weights
    # channels-last too lets oneDNN run every layer without reordering (20% faster in bf16).
    net = DamageNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    net.train()
    bar = tqdm(range(steps), desc="train")
    running = 0.0
    for step in bar:
        loss = train_step(net, optimiser, batches(train_x, train_m, batch, rng), bf16=bf16)
        schedule.step()
        running = 0.98 * running + 0.02 * loss if step else loss
        bar.set_postfix(loss=f"{running:.3f}")
    del train_x, train_m
    trained = time.perf_counter()
    net = net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "damage.onnx"
    # The checkpoint stays in the repository (not the wheel): a test checks that the shipped
    # ONNX file is its export, and your own training code may start from it (this command
    # always trains from scratch, on rendered scenes only).
    torch.save(net.state_dict(), out_dir / "damage.pt")
    # The threshold comes from a validation set; the reported metrics from another, unseen one.
    logger.info("choosing the threshold on 500 validation scenes, then measuring on 1,300")
    export_validated(net, onnx_path)
    model = DamageModel(onnx_path, provider="cpu")
    threshold = model.own_threshold  # as the file keeps it (6 decimals): the metrics say the same
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
        "precision": "bf16" if bf16 else "fp32",
        "cpu": cpu_name(),
        "train_seconds": round(time.perf_counter() - started, 1),
        "render_seconds": round(rendered - started, 1),
        "step_ms": round((trained - rendered) / steps * 1000, 1),
        "latency_ms_256x256": round(latency_ms(model, (256, 256)), 2),
        "latency_ms_384x640": round(latency_ms(model, (384, 640)), 2),
        "sha256": model.sha256,
        "onnx_bytes": onnx_path.stat().st_size,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "seed": seed,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / "damage.metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info(
        "wrote %s, %s and %s",
        onnx_path,
        out_dir / "damage.pt",
        out_dir / "damage.metrics.json",
    )
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m convstream.model.train",
        description="Train and export the damage model (the defaults reproduce the shipped one).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for damage.onnx, damage.pt and damage.metrics.json, created if needed;"
        " models/convstream/model in a checkout replaces the shipped model (the server loads"
        " the installed package's copy: reinstall, or serve --model FOLDER/damage.onnx)",
    )
    parser.add_argument(
        "--scenes", type=int, default=6000, help="rendered scene pairs (default %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=8000, help="optimiser steps (default %(default)s)"
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="crops per step, an even number (default %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the network's initial weights and the crops (not the scenes); the shipped"
        " model used 0, another value measures how much a rerun alone moves the metrics",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="arithmetic of forward and backward: auto (default) is bf16 on CPUs that"
        " multiply bfloat16 in hardware, AMX or AVX-512 BF16 (a step 1.4-1.6x faster there),"
        " and fp32 elsewhere",
    )
    args = parser.parse_args(argv)
    # Checked before minutes of rendering and training, not after.
    if args.scenes < 1 or args.steps < 1:
        parser.error(f"--scenes and --steps must be at least 1, got {args.scenes}, {args.steps}")
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch must be even and at least 2 (pairs of crops), got {args.batch}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; it must be a folder")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: {exc.strerror}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = train(
        args.out,
        scenes=args.scenes,
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        precision=args.precision,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
