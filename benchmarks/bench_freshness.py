"""Freshness under overload: a 30 fps live source pushed into a server that manages fewer.

    .venv/bin/python benchmarks/bench_freshness.py [--seconds 20]

The server is made slower than the source the honest way: it letterboxes 1080p frames into a
1088x1920 model input (about 8 times the work of the default 384x640), so it manages about
10 frames/s on two cores. One client sends 1080p JPEGs on a 30 fps clock, each stamped with
its capture time, over one StreamFrames call, and records each result's age (received minus
captured) and the drops the server reports. With FRESHNESS_LATEST_ONLY the server keeps only
the newest waiting frame; a bounded queue of 4 is shown beside it for contrast.

Target (DESIGN.md): ages under one service time plus two frame intervals (66.7 ms), with no
upward trend ("trend": mean age of the last third of the run minus the first third).
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
from common import (
    Load,
    convstream_server,
    frames,
    machine,
    service_time,
    stream_load,
    table,
    trend,
)

from convstream.v1 import convstream_pb2 as pb

FPS = 30.0
INPUT = "1088x1920"


def row(name: str, load: Load, target: float) -> list[str]:
    within = float(np.mean(np.array(load.ages_ms) <= target))
    return [
        name,
        f"{load.fps:.1f}",
        f"{load.dropped / max(1, load.sent):.0%}",
        f"{load.age(50):.0f}",
        f"{load.age(95):.0f}",
        f"{max(load.ages_ms):.0f}",
        f"{within:.0%}",
        f"{trend(load.ages_ms):+.0f}",
        f"{load.wide_share:.0%}",
    ]


def latest_only() -> pb.ResultOptions:
    return pb.ResultOptions(freshness=pb.FRESHNESS_LATEST_ONLY, feature_maps=["stage3"])


def run(seconds: float) -> str:
    data = frames(8, 1080, 1920)
    queue = pb.ResultOptions(
        freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=4, feature_maps=["stage3"]
    )
    rows = []
    with convstream_server(input_sizes=[INPUT]) as port:
        alone = asyncio.run(service_time(port, data, count=20))
        target = alone + 2000 / FPS
        for name, options in [("latest-only", latest_only()), ("queue of 4", queue)]:
            load = asyncio.run(
                stream_load(port, data, streams=1, seconds=seconds, rate=FPS, options=options)
            )
            rows.append(row(name, load, target))
    # The same latest-only stream into a server that runs every frame on one thread.
    with convstream_server(input_sizes=[INPUT], widen_lone_frames=False) as port:
        narrow = asyncio.run(service_time(port, data, count=20))
        load = asyncio.run(
            stream_load(port, data, streams=1, seconds=seconds, rate=FPS, options=latest_only())
        )
        name = (
            f"latest-only, lone frames not widened ({narrow:.0f} ms a frame alone, target"
            f" {narrow + 2000 / FPS:.0f} ms)"
        )
        rows.append(row(name, load, narrow + 2000 / FPS))
    return "\n".join(
        [
            "### Freshness under overload",
            "",
            f"`benchmarks/bench_freshness.py --seconds {seconds:g}`: one 30 fps source of 1080p"
            f" JPEGs into a server whose {INPUT} input takes {alone:.0f} ms a frame alone"
            f" (so it manages about {1000 / alone:.0f} frames/s); target: ages under"
            f' {alone:.0f} + 66.7 = {target:.0f} ms, no upward trend. "Run wide": the share'
            " of results whose frame ran alone on every core.",
            "",
            table(
                [
                    "policy",
                    "results/s",
                    "dropped",
                    "age p50 ms",
                    "p95",
                    "max",
                    "within target",
                    "trend ms",
                    "run wide",
                ],
                rows,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print(run(args.seconds))


if __name__ == "__main__":
    main()
