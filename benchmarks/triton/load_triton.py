"""Closed-loop load on the Triton server from serve_triton.py; prints one JSON line.

Runs inside the Triton virtualenv (tritonclient). K clients, each keeping W requests in
flight over Triton's gRPC API (tritonclient.grpc.aio), one JPEG per request, asking for
score, heatmap and stage3: the load convstream's benchmark puts on convstream.

    python load_triton.py --port 8001 --frames DIR --clients 4 --in-flight 4 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton


async def run(args: argparse.Namespace) -> dict[str, float]:
    data = [path.read_bytes() for path in sorted(Path(args.frames).glob("*.jpg"))]
    latencies: list[float] = []
    measuring = asyncio.Event()
    stop = asyncio.Event()
    client = triton.InferenceServerClient(f"127.0.0.1:{args.port}")
    outputs = [triton.InferRequestedOutput(name) for name in ("score", "heatmap", "stage3")]

    async def one(k: int, slot: int) -> None:
        i = slot
        while not stop.is_set():
            frame = triton.InferInput("jpeg", [1, 1], "BYTES")
            frame.set_data_from_numpy(np.array([[data[(i + k) % len(data)]]], dtype=object))
            started = time.perf_counter()
            result = await client.infer("damage", [frame], outputs=outputs)
            result.as_numpy("stage3")  # what a caller does with the answer
            if measuring.is_set() and not stop.is_set():
                latencies.append((time.perf_counter() - started) * 1000)
            i += args.in_flight

    tasks = [
        asyncio.create_task(one(k, slot))
        for k in range(args.clients)
        for slot in range(args.in_flight)
    ]
    await asyncio.sleep(args.warmup)
    measuring.set()
    started = time.perf_counter()
    await asyncio.sleep(args.seconds)
    stop.set()
    elapsed = time.perf_counter() - started
    await asyncio.gather(*tasks)
    await client.close()
    return {
        "fps": len(latencies) / elapsed,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", required=True, help="a folder of .jpg files")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
