"""Soak: full load of mixed frames for minutes, the server's RSS sampled, its trend judged.

    PYTHONPATH=service:clients:models:protos .venv/bin/python benchmarks/soak.py \
        [--minutes 10] [--streams 4] [--sample-s 5] [--max-slope 3] [--positive-control]

A server runs in a child process (this script with ``--serve PORT``: a convstream Server
in-process, no cameras, no metrics port) so that the RSS read from /proc/PID/status is the
server's alone. The parent drives ``--streams`` lossless StreamFrames calls, each sending
without pause a mix of 480p, 720p and 1080p JPEGs and 480p and 720p raw BGR frames (the
server's flow control paces them), and samples the server's VmRSS every ``--sample-s``
seconds.

RSS swings by tens of MiB with whatever frames are in flight when it is read; a leak lifts the
floor. The verdict: the least-squares slope of the per-window floor (the lowest RSS in each
``--window-s`` window) after the warm-up (the first quarter of the run, one minute at most),
in MiB per minute, must be under ``--max-slope``; every result must be OK and the server
alive at the end.

``--positive-control`` runs the same load against a server whose Pipeline also appends the
first ``--leak-kib`` KiB (64) of every frame it analyses to a module-level list (a deliberate,
modest leak in the server): the same check must then FAIL, which shows it can catch a leak.
The exit status is 0 when the verdict is what the mode expects (PASS normally, FAIL under the
control), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import grpc
import numpy as np
from common import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from convstream.model.scenes import render_scene
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

MESSAGE_LIMIT = 64 * 1024 * 1024
LEAKED: list[bytes] = []  # --positive-control: the server's deliberate leak


# ----------------------------------------------------------------------------- the server


async def serve(port: int, leak_kib: int) -> None:
    from convstream.server import Server, Settings
    from convstream.server.pipeline import Pipeline

    if leak_kib:
        # analyze_parts where there is one (analyze and StreamFrames both go through it)
        name = "analyze_parts" if hasattr(Pipeline, "analyze_parts") else "analyze"
        analyze = getattr(Pipeline, name)
        size = leak_kib * 1024

        async def leaky(self: Pipeline, request: pb.FrameRequest, *args: object) -> object:
            # keeps a copy of the first leak_kib KiB of every frame it is asked to analyse
            pixels = request.encoded if request.HasField("encoded") else request.raw.data
            LEAKED.append(pixels[:size])
            return await analyze(self, request, *args)

        setattr(Pipeline, name, leaky)
    server = Server(Settings(port=port, metrics_port=-1, cameras=(), log_level="warning"))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


# ----------------------------------------------------------------------------- the load


def frames() -> list[pb.FrameRequest]:
    out = []
    for seed, (h, w) in enumerate([(480, 640), (720, 1280), (1080, 1920)]):
        for k in range(2):
            image = render_scene(7_000_000 + 10 * seed + k, h, w).image
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok
            out.append(pb.FrameRequest(source=f"jpeg-{h}p", encoded=data.tobytes()))
            if h < 1080:
                raw = pb.RawImage(width=w, height=h, format=pb.PIXEL_FORMAT_BGR8)
                raw.data = np.ascontiguousarray(image).tobytes()
                out.append(pb.FrameRequest(source=f"raw-{h}p", raw=raw))
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    t = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if len(t) < 2 or np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t, y, 1)[0] * 60)


class Load:
    def __init__(self, requests: list[pb.FrameRequest], until: float) -> None:
        self.requests = requests
        self.until = until
        self.results = 0
        self.errors: list[str] = []

    async def stream(self, stub: pb_grpc.ConvstreamStub, offset: int) -> None:
        async def send() -> AsyncIterator[pb.FrameRequest]:
            i = offset
            while time.monotonic() < self.until:
                request = self.requests[i % len(self.requests)]
                request.frame_id = i
                yield request
                i += 1

        call = stub.StreamFrames(send())
        async for result in call:
            if result.status.code:
                self.errors.append(f"{result.source}: {result.status.message}")
            self.results += 1
        if await call.code() != grpc.StatusCode.OK:
            self.errors.append(f"stream ended {await call.code()}: {await call.details()}")


async def soak(args: argparse.Namespace) -> int:
    requests = frames()
    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--leak-kib", "0"]
    if args.positive_control:
        command += ["--leak-kib", str(args.leak_kib)]
    process = subprocess.Popen(command, env=os.environ.copy())
    options = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ]
    samples: list[tuple[float, float, int]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                await asyncio.sleep(0.3)
            stub = pb_grpc.ConvstreamStub(channel)
            started = time.monotonic()
            load = Load(requests, started + args.minutes * 60)
            streams = asyncio.gather(
                *(load.stream(stub, k * 1_000_000) for k in range(args.streams))
            )
            while not streams.done():
                samples.append((time.monotonic() - started, rss_mib(process.pid), load.results))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(streams), args.sample_s)
            await streams
            samples.append((time.monotonic() - started, rss_mib(process.pid), load.results))
            alive = process.poll() is None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    warmup_s = 60 * (
        args.warmup_minutes if args.warmup_minutes is not None else min(1.0, args.minutes / 4)
    )
    # RSS swings by tens of MiB with the frames in flight at the moment of a sample; a leak
    # lifts the floor. So: the lowest RSS of each window, and the trend of those floors.
    windows: list[tuple[float, float, float, int]] = []  # end, floor, peak, results
    edge = args.window_s
    bucket: list[tuple[float, float, int]] = []
    for point in samples:
        bucket.append(point)
        if point[0] >= edge or point is samples[-1]:
            if point[0] < edge - args.window_s / 2:
                break  # a last sliver of a window, taken after the load stopped: not judged
            windows.append(
                (point[0], min(p[1] for p in bucket), max(p[1] for p in bucket), point[2])
            )
            bucket, edge = [], edge + args.window_s
    after = [(t, floor) for t, floor, _, _ in windows if t - args.window_s >= warmup_s]
    slope = slope_per_min(after)
    mode = "positive control (the server leaks)" if args.positive_control else "normal"
    elapsed = samples[-1][0]
    print(
        f"\nsoak, {mode}: {args.minutes:g} min, {args.streams} streams, warm-up "
        f"{warmup_s:.0f} s, {load.results} results ({load.results / elapsed:.1f}/s), "
        f"{len(load.errors)} errors, server alive: {alive}; RSS sampled every "
        f"{args.sample_s:g} s, floor and peak per {args.window_s:g} s window\n"
    )
    print("| t (s) | RSS floor MiB | RSS peak MiB | results | frames/s |")
    print("|---:|---:|---:|---:|---:|")
    previous = (0.0, 0)
    for t, floor, peak, done in windows:
        fps = (done - previous[1]) / max(1e-9, t - previous[0])
        previous = (t, done)
        mark = " (warm-up)" if t - args.window_s < warmup_s else ""
        print(f"| {t:.0f}{mark} | {floor:.0f} | {peak:.0f} | {done} | {fps:.1f} |")
    growth = after[-1][1] - after[0][1] if after else 0.0
    passed = slope < args.max_slope and alive and not load.errors
    print(
        f"\nRSS floor after warm-up: {after[0][1]:.0f} -> {after[-1][1]:.0f} MiB ({growth:+.0f}); "
        f"slope {slope:+.2f} MiB/min (limit {args.max_slope:g}) -> "
        f"{'PASS' if passed else 'FAIL'}"
    )
    for error in load.errors[:10]:
        print("  error:", error[:200])
    expected = not args.positive_control
    if passed != expected:
        print("UNEXPECTED: the positive control passed" if args.positive_control else "")
    else:
        print("as expected for this mode")
    return 0 if passed == expected else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--window-s", type=float, default=10.0, help="seconds per window (its floor is judged)"
    )
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="default: a quarter of the run, one minute at most",
    )
    parser.add_argument(
        "--max-slope",
        type=float,
        default=3.0,
        help="MiB/min of RSS growth after warm-up that fails the run",
    )
    parser.add_argument(
        "--positive-control",
        action="store_true",
        help="the server leaks every request: the check must FAIL",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--leak-kib",
        type=int,
        default=64,
        help="--positive-control: KiB of each frame the server keeps (default 64)",
    )
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.leak_kib))
        return
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
