"""Run every benchmark and write one markdown report (benchmarks/RESULTS.md by default).

    .venv/bin/python benchmarks/run_all.py [--seconds 10] [--out benchmarks/RESULTS.md] [--quick]

In order: served against the in-process limit (with what each scheduling choice buys),
against Triton (builds its own virtualenv on first use: a download of about 100 MB), latency
at half load, freshness under overload, server-pulled cameras, payload. About 10 minutes on a
2-core machine; --quick shortens every run for a smoke test (its figures mean little). Nothing
else should run on the machine meanwhile: every figure is a ratio within this run, but a
neighbour that comes and goes in the middle of it still skews them.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import bench_cameras
import bench_freshness
import bench_latency
import bench_payload
import bench_served
import bench_triton
import onnxruntime
from common import ROOT, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="2-second runs, fewer cases")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    started = time.monotonic()
    sections = []
    steps = [
        ("served", lambda: bench_served.run(seconds, [1, 2, 4, 8], choices=not args.quick)),
        ("triton", lambda: bench_triton.run(seconds, [1, 4] if args.quick else [1, 4, 8])),
        ("latency", lambda: bench_latency.run(seconds * 1.5)),
        ("freshness", lambda: bench_freshness.run(seconds * 2)),
        ("cameras", lambda: bench_cameras.run(seconds, [1] if args.quick else [1, 2, 4])),
        ("camera reading", lambda: bench_cameras.reading_cost(seconds)),
        ("payload", bench_payload.run),
    ]
    for name, step in steps:
        print(f"running {name} ...", flush=True)
        section = step()
        print(section + "\n", flush=True)
        sections.append(section)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    minutes = (time.monotonic() - started) / 60
    head = [
        "## Benchmark results",
        "",
        f"`benchmarks/run_all.py{' --quick' if args.quick else ''}` on {now}, {minutes:.0f}"
        f" minutes. Machine: {machine()}; onnxruntime {onnxruntime.__version__}, CPU"
        " provider. Every ratio compares figures from this same run.",
    ]
    args.out.write_text("\n\n".join(["\n".join(head), *sections]) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
