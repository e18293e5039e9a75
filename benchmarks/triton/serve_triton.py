"""Serve the shipped damage model through NVIDIA Triton (nvidia-pytriton), as a Triton user would.

Runs inside the Triton virtualenv that ``benchmarks/bench_triton.py`` builds (tritonclient pins
protobuf < 7, so it cannot share convstream's environment); it imports nothing of convstream.

The model is a Python model: each request carries one JPEG; the model decodes it with OpenCV,
letterboxes it to 384x640, and runs the same ONNX file convstream ships through onnxruntime
(CPU provider, spin-wait off), returning score, heatmap and stage3 in float16: the same steps
and the same result convstream's benchmark asks for. Triton's dynamic batcher is on, so
concurrent requests share inference runs.

Two ways to write it:
- as written first (the defaults): one model instance whose onnxruntime session spreads over
  every core; the JPEG decoded in full, then resized;
- tuned as convstream is (``--instances 2 --reduced-decode`` on 2 cores): one instance per
  core, each with a one-thread session, so one batch decodes while another infers; a JPEG at
  least twice the input's size decoded by libjpeg at half (or a quarter, an eighth) of its
  size, as convstream's server does, rather than in full and then resized.

    python serve_triton.py --model damage.onnx --grpc-port 8001 --http-port 8000
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

import cv2
import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

INPUT = (384, 640)  # the size convstream letterboxes 16:9 frames into


def letterbox(image: np.ndarray) -> np.ndarray:
    height, width = INPUT
    scale = min(width / image.shape[1], height / image.shape[0])
    new_w, new_h = round(image.shape[1] * scale), round(image.shape[0] * scale)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def reduced_flag(data: np.ndarray) -> int:
    """The imdecode flag that decodes a JPEG at the smallest libjpeg scale (1/2, 1/4, 1/8)
    that still covers what the letterbox keeps, from the frame's SOF header; IMREAD_COLOR
    otherwise."""
    raw = data.tobytes()
    i = 2
    while i + 9 < len(raw) and raw[i] == 0xFF:
        marker, length = raw[i + 1], int.from_bytes(raw[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(raw[i + 5 : i + 7], "big")
            width = int.from_bytes(raw[i + 7 : i + 9], "big")
            shrink = max(width / INPUT[1], height / INPUT[0])  # the letterbox's downscale
            for factor, flag in (
                (8, cv2.IMREAD_REDUCED_COLOR_8),
                (4, cv2.IMREAD_REDUCED_COLOR_4),
                (2, cv2.IMREAD_REDUCED_COLOR_2),
            ):
                if shrink >= factor:
                    return flag
            break
        i += 2 + length
    return cv2.IMREAD_COLOR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument(
        "--instances", type=int, default=1, help="model instances, the cores shared among them"
    )
    parser.add_argument(
        "--reduced-decode", action="store_true", help="decode large JPEGs at a reduced size"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = max(1, (os.cpu_count() or 1) // args.instances)
    names = ["score", "heatmap", "stage3"]

    def decode(row: np.ndarray) -> np.ndarray:
        data = np.frombuffer(row[0], np.uint8)
        flag = reduced_flag(data) if args.reduced_decode else cv2.IMREAD_COLOR
        image = cv2.imdecode(data, flag)
        if image is None:
            raise ValueError(f"not a decodable image ({len(data)} bytes)")
        return letterbox(image)

    def instance() -> object:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

        @batch
        def infer(jpeg: np.ndarray) -> dict[str, np.ndarray]:
            pixels = np.stack([decode(row) for row in jpeg])
            score, heatmap, stage3 = session.run(names, {"pixels": pixels})
            return {
                "score": score.astype(np.float32)[:, None],
                "heatmap": heatmap.astype(np.float16),
                "stage3": stage3.astype(np.float16),
            }

        return infer

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_metrics=False,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="damage",
            infer_func=[instance() for _ in range(args.instances)],
            inputs=[Tensor(name="jpeg", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="score", dtype=np.float32, shape=(1,)),
                Tensor(name="heatmap", dtype=np.float16, shape=(1, -1, -1)),
                Tensor(name="stage3", dtype=np.float16, shape=(-1, -1, -1)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=False,
        )
        # bash starts background jobs with SIGINT ignored: stop on SIGTERM too.
        signal.signal(signal.SIGTERM, lambda *_: triton.stop())
        triton.serve()


if __name__ == "__main__":
    main()
