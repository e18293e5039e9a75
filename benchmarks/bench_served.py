"""Served frames/s against the in-process limit, measured side by side in one run.

    .venv/bin/python benchmarks/bench_served.py [--seconds 10] [--streams 1 2 4 8] [--choices]

The in-process limit is the best loop this machine can run without a server: decode the
same 720p JPEGs (reduced decode), letterbox, run the same model with the same threads, in
one thread or pipelined over two. The served figure is what `convstream serve` (a separate
process) delivers to K concurrent lossless streams of the same frames, each keeping 4 frames
in flight and asking for score + heatmap + stage3 in float16. The load generator shares the
machine's cores with the server. Target (DESIGN.md): served / limit >= 0.9.

Every row also says what a frame cost in CPU: the in-process loop's whole process, the
server's whole process (every thread, read from /proc), and the load generator's, which on
these cores is paid out of the same CPU. Where the server's figure exceeds the limit's is
where served frames/s is lost.

--choices also serves 4 streams with one scheduling choice changed at a time (onnxruntime
threads, decode threads, spin-waiting, batching), to show what each one buys.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import numpy as np
from common import (
    LOOPS,
    Load,
    Rate,
    convstream_server,
    frames,
    in_process_limit,
    machine,
    stream_load,
    table,
)

from convstream.server import Settings

DEFAULTS = Settings()
FIXED_RATE = 15.0  # frames/s a stream for the fixed-load row: 60 in all, under capacity
CHOICES: list[tuple[str, dict[str, Any]]] = [
    ("as shipped", {}),
    ("as shipped, again (how far noise alone moves a row)", {}),
    ("1 worker, onnxruntime on every core", {"inference_workers": 1}),
    (
        "1 worker on every core, batches of up to 8 (before 2026-11-25)",
        {"inference_workers": 1, "max_batch": 8},
    ),
    ("batches of up to 8", {"max_batch": 8}),
    ("1 decode thread", {"decode_threads": 1}),
    ("onnxruntime spin-waits", {"spin_wait": True}),
    ("a lone frame not widened to every core", {"widen_lone_frames": False}),
]


def run(seconds: float, streams: list[int], choices: bool = False) -> str:
    data = frames()
    loops = in_process_limit(data, seconds)
    best = max(loops, key=lambda key: loops[key].fps)
    cores = os.cpu_count()
    names = {
        "sequential": "in-process, one frame after another",
        "pipelined": "in-process, decode beside inference",
        "parallel": f"in-process, {cores} threads each decoding and inferring on 1 thread",
    }
    rows = [
        [
            names[key],
            f"{r.fps:.1f}",
            "",
            "",
            f"{r.cpu_ms:.1f}",
            "",
            "",
            f"{r.fps / loops[best].fps:.2f}",
        ]
        for key, r in loops.items()
    ]

    def beside(port: int, streams: int) -> tuple[Load, Rate]:
        """The load of `streams` streams, and the best loop measured right before and right
        after it, averaged: a machine whose speed drifts over minutes moves both alike."""
        before = LOOPS[best](data, seconds / 2)
        load = asyncio.run(stream_load(port, data, streams=streams, seconds=seconds))
        after = LOOPS[best](data, seconds / 2)
        return load, Rate((before.fps + after.fps) / 2, (before.cpu_ms + after.cpu_ms) / 2)

    def row(name: str, load: Load, limit: Rate, bold: bool) -> list[str]:
        ratio = f"{load.fps / limit.fps:.2f}"
        return [
            name,
            f"{load.fps:.1f}",
            f"{load.latency(50):.1f}",
            f"{load.latency(99):.1f}",
            f"{load.cpu_ms('server'):.1f}",
            f"{load.cpu_ms('client'):.1f}",
            f"{limit.fps:.1f} ({limit.cpu_ms:.1f})",
            f"**{ratio}**" if bold else ratio,
        ]

    header = [
        "loop",
        "frames/s",
        "p50 ms",
        "p99 ms",
        "CPU ms a frame",
        "load generator CPU ms",
        "limit beside (CPU ms)",
        "/ limit",
    ]

    with convstream_server() as port:
        for k in streams:
            rows.append(row(f"served, {k} stream{'s' if k > 1 else ''}", *beside(port, k), True))
        # Below capacity, as cameras send: what a frame costs the server when it has room.
        fixed = asyncio.run(stream_load(port, data, streams=4, seconds=seconds, rate=FIXED_RATE))
        rows.append(
            [
                f"served, 4 streams x {FIXED_RATE:g} frames/s on a clock (below capacity)",
                f"{fixed.fps:.1f}",
                f"{fixed.latency(50):.1f}",
                f"{fixed.latency(99):.1f}",
                f"{fixed.cpu_ms('server'):.1f}",
                f"{fixed.cpu_ms('client'):.1f}",
                "",
                "",
            ]
        )
    size = np.mean([len(d) for d in data]) / 1024
    out = [
        "### Served against the in-process limit",
        "",
        f"`benchmarks/bench_served.py --seconds {seconds:g}`: 720p JPEG q85 ({size:.0f} KiB avg);"
        " results with score, heatmap and stage3 in float16; each stream lossless with 4 frames"
        " in flight; the load generator shares the cores with the server. Each served row is"
        " divided by the fastest in-process loop measured right before and right after it"
        ' ("limit beside"). "CPU ms a frame": the user + system CPU time of every thread of'
        " the process doing the work (the loop's, or the server's) over the measured window,"
        " per frame; the load generator's is a column of its own, since on these cores it is"
        " paid out of the same CPU. The last row offers a fixed load under capacity, as"
        " cameras send: what a frame costs the server when it has room. Target: served /"
        " limit >= 0.9.",
        "",
        table(header, rows),
    ]
    if choices:
        shipped = DEFAULTS.scheduling(gpu=False, cores=cores or 1)
        choice_rows = []
        for name, settings in CHOICES:
            with convstream_server(**settings) as port:
                choice_rows.append(row(name, *beside(port, 4), False))
        out += [
            "",
            "What each scheduling choice buys: 4 streams, one setting changed at a time from"
            f" the shipped defaults ({shipped.workers} inference workers of"
            f" {shipped.intra_op_threads} onnxruntime thread each, a lone frame on"
            f" {shipped.wide_threads} threads, {cores} decode threads,"
            f" spin_wait {str(DEFAULTS.spin_wait).lower()}, max_batch {shipped.max_batch}):",
            "",
            table(["server", *header[1:]], choice_rows),
        ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--choices", action="store_true", help="also one change at a time")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print(run(args.seconds, args.streams, args.choices))


if __name__ == "__main__":
    main()
