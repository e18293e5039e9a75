"""convstream against NVIDIA Triton serving the same model, same frames, same concurrency.

    .venv/bin/python benchmarks/bench_triton.py [--seconds 10] [--clients 1 4 8]

Triton runs through the nvidia-pytriton wheel (a real tritonserver binary with its Python
backend), installed by this script into its own virtualenv under .cache/bench/ (tritonclient
pins protobuf < 7, which convstream's generated code cannot share). Its model is the Python
model a Triton user would write (benchmarks/triton/serve_triton.py): decode the JPEG with
OpenCV, letterbox to 384x640, run the same ONNX file through onnxruntime (one thread per core,
spin-wait off, as in convstream), return score, heatmap and stage3 in float16; Triton's dynamic
batcher on (up to 8, 2 ms queue delay). The load is the same on both: K clients, each keeping
4 frames in flight (convstream: one lossless stream per client; Triton: 4 concurrent infer calls
per client over its gRPC API), the same 720p JPEGs, the load generator on the same cores.

Both servers stay up for the whole run and each K is measured on one, then the other, so a
drift in the machine's speed hits both. Target (issue 8): convstream >= 1.5x Triton's frames/s
at equal or better p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import onnxruntime
from common import (
    ROOT,
    convstream_server,
    frames,
    free_port,
    machine,
    stream_load,
    table,
)

from convstream.model import MODEL_PATH

VENV = ROOT / ".cache" / "bench" / "triton-venv"
HERE = Path(__file__).resolve().parent / "triton"
REQUIREMENTS = [
    "nvidia-pytriton==0.7.0",
    f"onnxruntime=={onnxruntime.__version__}",
    "opencv-python-headless",
    "numpy",
]
IN_FLIGHT = 4


def triton_python() -> Path:
    """The Triton virtualenv's interpreter, built on first use."""
    python = VENV / "bin" / "python"
    stamp = VENV / "requirements.txt"
    if not (python.exists() and stamp.exists() and stamp.read_text() == "\n".join(REQUIREMENTS)):
        print(f"building {VENV} (nvidia-pytriton, onnxruntime, opencv) ...", file=sys.stderr)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *REQUIREMENTS,
            ],
            check=True,
        )
        stamp.write_text("\n".join(REQUIREMENTS))
    return python


def triton_env() -> dict[str, str]:
    """Triton's Python backend stub links a libpython; make it this interpreter's own.

    Without it the stub picks up the system libpython while the virtualenv brings another
    interpreter's stdlib, and the model fails to load (`'_thread.RLock' object has no attribute
    '_recursion_count'`).
    """
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    return env


# The two ways a Triton user writes the model (serve_triton.py): name, its arguments.
TRITONS: list[tuple[str, list[str]]] = [
    ("Triton, as written first", []),
    (
        "Triton, tuned as convstream is",
        ["--instances", str(os.cpu_count() or 1), "--reduced-decode"],
    ),
]
NAMES = ["convstream"] + [name for name, _ in TRITONS]
OPEN_SHARE = 0.8  # the open-loop rate, as a share of the slowest server's closed-loop frames/s


@contextmanager
def triton_server(python: Path, extra: list[str]) -> Iterator[int]:
    """serve_triton.py in the Triton virtualenv; yields its gRPC port once the model is ready.

    pytriton's model now and then fails its first handshake ("Connection refused" on its
    socket) and the model never loads: the server is started again, once.
    """
    for attempt in (1, 2):
        with _triton_process(python, extra) as (process, log, http_port, grpc_port):
            if _ready(process, http_port):
                yield grpc_port
                return
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            if attempt == 2:
                raise RuntimeError(f"Triton did not become ready:\n{tail}")
            print("Triton did not become ready; starting it again", file=sys.stderr)


@contextmanager
def _triton_process(
    python: Path, extra: list[str]
) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes], int, int]]:
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                str(python),
                str(HERE / "serve_triton.py"),
                "--model",
                str(MODEL_PATH),
                "--grpc-port",
                str(grpc_port),
                "--http-port",
                str(http_port),
                "--metrics-port",
                str(metrics_port),
                *extra,
            ],
            env=triton_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process, log, http_port, grpc_port
        finally:
            # SIGTERM, not SIGINT: bash starts background jobs with SIGINT ignored.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _ready(process: subprocess.Popen[bytes], http_port: int, timeout: float = 180) -> bool:
    """Whether Triton's model became ready before the process exited or the time ran out."""
    ready = f"http://127.0.0.1:{http_port}/v2/models/damage/ready"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(ready, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def triton_load(
    python: Path, port: int, folder: Path, clients: int, seconds: float, rate: float = 0.0
) -> tuple[float, float, float]:
    """(frames/s, p50 ms, p99 ms) of load_triton.py: closed loop, or open at `rate` per client."""
    out = subprocess.run(
        [
            str(python),
            str(HERE / "load_triton.py"),
            "--port",
            str(port),
            "--frames",
            str(folder),
            "--clients",
            str(clients),
            "--in-flight",
            str(IN_FLIGHT),
            "--seconds",
            str(seconds),
            "--rate",
            str(rate),
        ],
        env=triton_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["fps"], result["p50"], result["p99"]


def run(seconds: float, clients: list[int]) -> str:
    python = triton_python()
    data = frames()
    closed_rows: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for i, frame in enumerate(data):
            (folder / f"{i:03d}.jpg").write_bytes(frame)
        port = stack.enter_context(convstream_server())
        ports = [stack.enter_context(triton_server(python, extra)) for _, extra in TRITONS]

        turns = itertools.count()

        def measure(clients: int, rate: float = 0.0) -> list[tuple[float, float, float]]:
            """convstream's then each Triton's (frames/s, p50, p99), run one after another,
            the order turned each time so that none always runs first."""

            def ours() -> tuple[float, float, float]:
                load = asyncio.run(
                    stream_load(
                        port,
                        data,
                        streams=clients,
                        seconds=seconds,
                        in_flight=IN_FLIGHT,
                        rate=rate or None,
                    )
                )
                return load.fps, load.latency(50), load.latency(99)

            runs = [ours] + [
                functools.partial(triton_load, python, p, folder, clients, seconds, rate)
                for p in ports
            ]
            shift = next(turns) % len(runs)
            order = [*range(shift, len(runs)), *range(shift)]
            out = {j: runs[j]() for j in order}
            return [out[j] for j in range(len(runs))]

        def rows(results: list[tuple[float, float, float]], prefix: list[str]) -> list[list[str]]:
            """A row per server; the ratios are convstream's frames/s and p99 over each one's."""
            (ours_fps, _, ours_p99), *_ = results
            out = []
            for name, (fps, p50, p99) in zip(NAMES, results, strict=True):
                ratios = (
                    ["", ""]
                    if name == NAMES[0]
                    else [f"{ours_fps / fps:.2f}", f"{ours_p99 / p99:.2f}"]
                )
                out.append([*prefix, name, f"{fps:.1f}", f"{p50:.0f}", f"{p99:.0f}", *ratios])
            return out

        slowest = 0.0
        for k in clients:
            results = measure(k)
            slowest = min(fps for fps, _, _ in results)
            closed_rows += rows(results, [str(k)])
        k = clients[-1]
        rate = OPEN_SHARE * slowest / k
        open_rows = [row[:4] + row[5:] for row in rows(measure(k, rate), [])]  # no fps ratio
    tuned = " ".join(TRITONS[1][1])
    return "\n".join(
        [
            "### Against Triton",
            "",
            f"`benchmarks/bench_triton.py --seconds {seconds:g}`: the same 720p JPEGs, model and"
            " results on convstream and on Triton (nvidia-pytriton 0.7.0, a Python model doing"
            " decode + letterbox + onnxruntime, dynamic batching up to 8 with a 2 ms queue"
            " delay), written two ways: as first written (one model instance, onnxruntime on"
            f" every core, the JPEG decoded in full and resized) and tuned as convstream is"
            f" (`{tuned}`: one instance per core on one onnxruntime thread each, a 720p JPEG"
            " decoded at half size). Closed loop: each client keeps"
            f" {IN_FLIGHT} frames in flight, so latency follows throughput. Target: >= 1.5x"
            " Triton's frames/s at equal or better p99.",
            "",
            table(
                [
                    "clients",
                    "server",
                    "frames/s",
                    "p50 ms",
                    "p99 ms",
                    "convstream / this",
                    "convstream p99 / this",
                ],
                closed_rows,
                "rlrrrrr",
            ),
            "",
            f"Open loop, the same offered load on each: {k} clients each sending {rate:.1f}"
            f" frames/s on a clock ({OPEN_SHARE:.0%} of the slowest server's closed-loop"
            f" frames/s at {k} clients), latency counted from when a frame was due:",
            "",
            table(
                [
                    "server",
                    "frames/s",
                    "p50 ms",
                    "p99 ms",
                    "convstream p99 / this",
                ],
                open_rows,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print(run(args.seconds, args.clients))


if __name__ == "__main__":
    main()
