"""What a run of large Analyze calls leaves in the server's memory, analysed or refused.

    .venv/bin/python benchmarks/bench_analyze_memory.py [--calls 200]

Each row is a fresh `convstream serve` process (no cameras), sent `--calls` Analyze calls one
after another, each a raw 8 MiB frame (1920x1456 BGR): analysed as sent, or refused (INVALID_
ARGUMENT: its data one row short). The server's resident memory (RSS, from /proc) is read
before and after. Until commit c4ecfe2 each call's frame stayed in a reference cycle until
Python's next full garbage collection (grpc's receiving generator kept the message it last
gave; a refusal's abort kept its exception), and 200 such frames took the server from about
185 to 570 MiB, refused ones to about 1,100.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import numpy as np
from common import convstream_server, machine, table

from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

WIDTH, HEIGHT = 1920, 1456  # 8 MiB of BGR
MiB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """The resident memory of process pid, in MiB (Linux /proc)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * 4096 / MiB


async def calls(port: int, n: int, refused: bool) -> int:
    """n Analyze calls of one 8 MiB raw frame; how many were refused."""
    data = np.random.default_rng(0).integers(0, 256, WIDTH * HEIGHT * 3, np.uint8).tobytes()
    rows = HEIGHT - 1 if refused else HEIGHT
    raw = pb.RawImage(width=WIDTH, height=rows, format=pb.PIXEL_FORMAT_BGR8, data=data)
    options = [("grpc.max_send_message_length", 64 * MiB)]
    refusals = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.ConvstreamStub(channel)
        for i in range(n):
            try:
                await stub.Analyze(pb.FrameRequest(frame_id=i + 1, raw=raw))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                refusals += 1
    return refusals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    rows = []
    for refused in (False, True):
        with convstream_server(max_frame_pixels=4_000_000) as port:
            asyncio.run(calls(port, 1, refused=False))  # the model warmed, the buffers made
            before = rss_mib(port.pid)
            refusals = asyncio.run(calls(port, args.calls, refused))
            after = rss_mib(port.pid)
        rows.append(
            [
                "refused (one row short)" if refused else "analysed",
                str(args.calls),
                str(refusals),
                f"{before:.0f}",
                f"{after:.0f}",
                f"{after - before:+.0f}",
            ]
        )
    print(f"machine: {machine()}\n")
    header = ["8 MiB raw frames", "calls", "refused", "RSS before MiB", "after", "growth"]
    print(table(header, rows, "lrrrrr"))


if __name__ == "__main__":
    main()
