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


@contextmanager
def triton_server(python: Path) -> Iterator[int]:
    """serve_triton.py in the Triton virtualenv; yields its gRPC port once the model is ready."""
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
            ],
            env=triton_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ready = f"http://127.0.0.1:{http_port}/v2/models/damage/ready"
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"Triton did not become ready:\n{tail}")
                try:
                    with urllib.request.urlopen(ready, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.5)
            yield grpc_port
        finally:
            # SIGTERM, not SIGINT: bash starts background jobs with SIGINT ignored.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def triton_load(python: Path, port: int, folder: Path, clients: int, seconds: float) -> dict:
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
        ],
        env=triton_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(seconds: float, clients: list[int]) -> str:
    python = triton_python()
    data = frames()
    rows = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for i, frame in enumerate(data):
            (folder / f"{i:03d}.jpg").write_bytes(frame)
        with convstream_server() as port, triton_server(python) as triton_port:
            for k in clients:
                ours = asyncio.run(
                    stream_load(port, data, streams=k, seconds=seconds, in_flight=IN_FLIGHT)
                )
                theirs = triton_load(python, triton_port, folder, k, seconds)
                rows.append(
                    [
                        str(k),
                        f"{ours.fps:.1f}",
                        f"{ours.latency(50):.0f}",
                        f"{ours.latency(99):.0f}",
                        f"{theirs['fps']:.1f}",
                        f"{theirs['p50']:.0f}",
                        f"{theirs['p99']:.0f}",
                        f"**{ours.fps / theirs['fps']:.2f}**",
                        f"{ours.latency(99) / theirs['p99']:.2f}",
                    ]
                )
    return "\n".join(
        [
            "### Against Triton",
            "",
            f"`benchmarks/bench_triton.py --seconds {seconds:g}`: the same 720p JPEGs, model and"
            " results on convstream and on Triton (nvidia-pytriton 0.7.0, Python model doing"
            " decode + letterbox + onnxruntime, dynamic batching up to 8 with a 2 ms queue delay);"
            f" each client keeps {IN_FLIGHT} frames in flight. Target: >= 1.5x Triton's frames/s"
            " at equal or better p99.",
            "",
            table(
                [
                    "clients",
                    "convstream fps",
                    "p50 ms",
                    "p99 ms",
                    "Triton fps",
                    "p50 ms",
                    "p99 ms",
                    "fps ratio",
                    "p99 ratio",
                ],
                rows,
                "r" * 9,
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
