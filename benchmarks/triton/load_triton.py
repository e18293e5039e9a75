"""Load on the Triton server from serve_triton.py; prints one JSON line.

Runs inside the Triton virtualenv (tritonclient). K clients over Triton's gRPC API
(tritonclient.grpc.aio), one JPEG per request, asking for score, heatmap and stage3: the load
convstream's benchmark puts on convstream. Closed loop: each client keeps W requests in
flight. Open loop (``--rate``): each client sends on a fixed clock, whatever comes back, and
latency counts from the moment a frame was due.

    python load_triton.py --port 8001 --frames DIR --clients 4 --in-flight 4 --seconds 10
    python load_triton.py --port 8001 --frames DIR --clients 4 --rate 15 --seconds 10
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
    window = [float("inf"), float("inf")]  # perf_counter() bounds of the measured window
    stop = asyncio.Event()
    client = triton.InferenceServerClient(f"127.0.0.1:{args.port}")
    outputs = [triton.InferRequestedOutput(name) for name in ("score", "heatmap", "stage3")]

    async def request(k: int, i: int, due: float) -> None:
        frame = triton.InferInput("jpeg", [1, 1], "BYTES")
        frame.set_data_from_numpy(np.array([[data[(i + k) % len(data)]]], dtype=object))
        result = await client.infer("damage", [frame], outputs=outputs)
        result.as_numpy("stage3")  # what a caller does with the answer
        if window[0] <= due < window[1]:  # sent in the window, however late it comes back
            latencies.append((time.perf_counter() - due) * 1000)

    async def closed(k: int, slot: int) -> None:
        i = slot
        while not stop.is_set():
            await request(k, i, time.perf_counter())
            i += args.in_flight

    async def opened(k: int) -> None:
        # the clients' clocks spread over one frame interval, as cameras' are
        started = time.perf_counter() + k / (args.clients * args.rate)
        pending: set[asyncio.Task[None]] = set()
        i = 0
        while not stop.is_set():
            due = started + i / args.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(request(k, i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.gather(*pending)

    if args.rate:
        tasks = [asyncio.create_task(opened(k)) for k in range(args.clients)]
    else:
        tasks = [
            asyncio.create_task(closed(k, slot))
            for k in range(args.clients)
            for slot in range(args.in_flight)
        ]
    await asyncio.sleep(args.warmup)
    window[0] = time.perf_counter()
    await asyncio.sleep(args.seconds)
    window[1] = time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = window[1] - window[0]
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
    parser.add_argument(
        "--rate", type=float, default=0.0, help="frames/s per client, open loop (0: closed)"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
