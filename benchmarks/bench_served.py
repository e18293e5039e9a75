"""Served frames/s against the in-process limit, measured side by side in one run.

    .venv/bin/python benchmarks/bench_served.py [--seconds 10] [--streams 1 2 4]

The in-process limit is the best loop this machine can run without a server: decode the
same 720p JPEGs (reduced decode), letterbox, run the same model with the same threads, in
one thread or pipelined over two. The served figure is what `convstream serve` (a separate
process) delivers to K concurrent lossless streams of the same frames, each keeping 4 frames
in flight and asking for score + heatmap + stage3 in float16. The load generator shares the
machine's cores with the server. Only ratios measured in the same run mean anything: these
machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import cv2
import grpc
import numpy as np

from convstream.model import DamageModel
from convstream.model.scenes import render_scene
from convstream.server.decode import Limits, decode_encoded, encoded_size
from convstream.server.letterbox import choose_input, letterbox, reduction
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

SIZES = [(384, 640), (480, 640), (384, 384)]
LIMITS = Limits(40_000_000, 16384)
IN_FLIGHT = 4  # frames each stream keeps in flight
OPTIONS = pb.ResultOptions(feature_maps=["stage3"], encoding=pb.TENSOR_ENCODING_FLOAT16)


def frames(count: int = 24) -> list[bytes]:
    """720p JPEGs of rendered warehouse scenes, quality 85."""
    out = []
    for seed in range(count):
        image = render_scene(3_000_000_000 + seed, 720, 1280).image
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok
        out.append(data.tobytes())
    return out


def prepare(data: bytes) -> np.ndarray:
    _, w, h = encoded_size(data)
    target = choose_input(w, h, SIZES)
    image = decode_encoded(data, LIMITS, reduction(w, h, target))
    return letterbox(image, target, (w, h))[0]


def timed(seconds: float, step: Callable[[], int]) -> float:
    """Frames per second of step() (which returns frames done) over about `seconds`."""
    for _ in range(3):
        step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += step()
    return done / (time.perf_counter() - started)


def in_process_sequential(model: DamageModel, data: list[bytes], seconds: float) -> float:
    i = 0

    def step() -> int:
        nonlocal i
        model.run(prepare(data[i % len(data)])[None], ["heatmap", "score", "stage3"])
        i += 1
        return 1

    return timed(seconds, step)


def in_process_pipelined(model: DamageModel, data: list[bytes], seconds: float) -> float:
    """Decode in one thread while the model runs the previous frame in another."""
    ready: queue.Queue[np.ndarray] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def decoder() -> None:
        i = 0
        while not stop.is_set():
            pixels = prepare(data[i % len(data)])
            i += 1
            while not stop.is_set():
                try:
                    ready.put(pixels, timeout=0.1)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=decoder, daemon=True)
    thread.start()
    try:
        return timed(
            seconds,
            lambda: (model.run(ready.get()[None], ["heatmap", "score", "stage3"]), 1)[1],
        )
    finally:
        stop.set()
        thread.join()


async def served(
    port: int, data: list[bytes], streams: int, seconds: float
) -> tuple[float, float, float]:
    """(results/s, p50 ms, p99 ms) over `streams` concurrent lossless streams."""
    latencies: list[float] = []
    counts = [0] * streams
    measuring = asyncio.Event()
    stop = asyncio.Event()
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.ConvstreamStub(channel)

        async def one(k: int) -> None:
            sent: dict[int, float] = {}
            # Like a real integration (and our Client), keep a few frames in flight rather
            # than filling gRPC's flow-control window, so latency is the server's, not a queue's.
            window = asyncio.Semaphore(IN_FLIGHT)

            async def requests():  # type: ignore[no-untyped-def]
                i = 0
                while not stop.is_set():
                    await window.acquire()
                    sent[i] = time.perf_counter()
                    yield pb.FrameRequest(
                        frame_id=i,
                        encoded=data[(i + k) % len(data)],
                        options=OPTIONS if i == 0 else None,
                    )
                    i += 1

            async for result in stub.StreamFrames(requests()):
                window.release()
                if result.status.code:
                    raise RuntimeError(result.status.message)
                if measuring.is_set() and not stop.is_set():
                    counts[k] += 1
                    latencies.append((time.perf_counter() - sent.pop(result.frame_id)) * 1000)
                else:
                    sent.pop(result.frame_id, None)
                if stop.is_set():
                    break

        tasks = [asyncio.create_task(one(k)) for k in range(streams)]
        await asyncio.sleep(2.0)  # warm up
        measuring.set()
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        elapsed = time.perf_counter() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = np.array(latencies)
    return sum(counts) / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "convstream.cli",
            "serve",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            "--log-level",
            "warning",
        ],
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    data = frames()
    cores = os.cpu_count() or 1
    model = DamageModel(provider="cpu", intra_op_threads=cores)
    sequential = in_process_sequential(model, data, args.seconds)
    pipelined = in_process_pipelined(model, data, args.seconds)
    limit = max(sequential, pipelined)
    del model
    port = free_port()
    process = start_server(port)
    rows = []
    try:
        for k in args.streams:
            fps, p50, p99 = asyncio.run(served(port, data, k, args.seconds))
            rows.append((k, fps, p50, p99))
    finally:
        process.terminate()
        process.wait(30)
    cpu = platform.processor() or platform.platform()
    print(f"machine: {platform.machine()}, {cores} cores, {cpu}")
    print(
        f"frames: 720p JPEG q85 ({np.mean([len(d) for d in data]) / 1024:.0f} KiB avg), "
        "results: score + heatmap + stage3 float16\n"
    )
    print("| loop | frames/s | p50 ms | p99 ms | served / limit |")
    print("|---|---:|---:|---:|---:|")
    print(f"| in-process, sequential | {sequential:.1f} | | | |")
    print(f"| in-process, decode beside inference | {pipelined:.1f} | | | |")
    for k, fps, p50, p99 in rows:
        name = f"served, {k} stream{'s' if k > 1 else ''}"
        print(f"| {name} | {fps:.1f} | {p50:.1f} | {p99:.1f} | {fps / limit:.2f} |")


if __name__ == "__main__":
    main()
