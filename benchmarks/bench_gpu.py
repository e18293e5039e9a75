"""The CUDA provider on a real NVIDIA GPU: does it load, does it agree with the CPU, what
shapes and batching cost there, and what the server delivers with it.

    python benchmarks/bench_gpu.py [--seconds 8] [--streams 1 4 16 32] [--clients 4]
                                   [--servers 0 3 ...]

Needs onnxruntime-gpu and an NVIDIA driver (CI has neither and never runs it); Linux, since
it reads the server's CPU use from /proc. Earlier runs' output is in benchmarks/RESULTS_GPU.md.

1. Loading: whether a plain onnxruntime session and convstream's DamageModel come up on the
   CUDA provider (onnxruntime falls back to the CPU quietly when CUDA libraries are missing).
2. Agreement: the largest difference between CUDA's and the CPU's outputs on the same frames.
3. Shape changes: a run's cost when the input shape stays, and when batch sizes or input sizes
   alternate (onnxruntime's CUDA convolutions choose their kernels again on every change),
   against DamageModel(fixed_batch=8), which the server's CUDA plan uses.
4. Batching in onnxruntime alone: the first run at each batch size and warm runs, for each of
   onnxruntime's cuDNN algorithm searches.
5. In-process loops on the GPU: decode + letterbox + inference one frame after another, and
   every core decoding for one thread that runs batches of up to 8: the limit to serve against.
6. Served: `convstream serve` (a separate process) with K lossless streams of 720p JPEGs, 4
   frames in flight each, from several client processes (one Python client process tops out
   near a thousand results a second); as shipped and with one setting changed at a time
   (--servers picks rows by their index in served()), with the server's own timings, its CPU
   and its GPU memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from common import (
    CHANNEL_OPTIONS,
    OUTPUTS,
    Load,
    convstream_server,
    frames,
    machine,
    prepare,
    put_until,
    sequential_loop,
    stream_load,
    table,
    timed,
)

from convstream.model import DamageModel
from convstream.model.runtime import CPU, CUDA, INPUT_NAME, MODEL_PATH, load_cuda_libraries
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")  # onnxruntime's cudnn_conv_algo_search


def nvidia_smi(query: str) -> str | None:
    """nvidia-smi's CSV answer to --query-<query>, or None where it cannot run."""
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def gpu_name() -> str:
    out = nvidia_smi("gpu=name,driver_version,memory.total")
    if out is None:
        return "nvidia-smi could not run"
    return out or "no GPU reported by nvidia-smi"


def loading() -> str:
    """Which provider a session gets, in fresh processes: plain onnxruntime, and DamageModel."""
    plain = (
        "import onnxruntime as ort, time; t = time.perf_counter(); "
        f"s = ort.InferenceSession({str(MODEL_PATH)!r}, providers={[CUDA, CPU]!r}); "
        "print(s.get_providers()[0], f'{time.perf_counter() - t:.1f}')"
    )
    ours = (
        "from convstream.model import DamageModel; import time; t = time.perf_counter(); "
        "m = DamageModel(provider='cuda'); print(m.provider, f'{time.perf_counter() - t:.1f}')"
    )
    rows = []
    for name, code in (
        ("plain onnxruntime.InferenceSession, CUDA then CPU", plain),
        ("convstream DamageModel(provider='cuda')", ours),
    ):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        words = done.stdout.split()
        got, seconds = (words[-2], words[-1]) if len(words) >= 2 else ("failed", "")
        said = [line for line in done.stderr.splitlines() if line.strip()][-2:]
        rows.append([name, got, seconds, "<br>".join(s[:160] for s in said) or "-"])
    return table(["session", "provider it got", "s to load", "last stderr lines"], rows, "llrl")


def agreement(pixels: np.ndarray) -> str:
    """Largest |CUDA - CPU| of each output on the same batch of frames."""
    cpu = DamageModel(provider="cpu").run(pixels)
    gpu_model = DamageModel(provider="cuda")
    if gpu_model.provider != CUDA:
        raise SystemExit(f"DamageModel came up on {gpu_model.provider}, not CUDA")
    gpu = gpu_model.run(pixels)
    rows = [
        [
            name,
            f"{float(np.abs(gpu[name] - cpu[name]).max()):.2e}",
            f"{float(np.abs(cpu[name]).max()):.2e}",
        ]
        for name in cpu
    ]
    return table(["output", "max abs CUDA - CPU", "max abs CPU"], rows)


def session(search: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cuda = (CUDA, {"cudnn_conv_algo_search": search})
    made = ort.InferenceSession(str(MODEL_PATH), options, providers=[cuda, CPU])
    assert made.get_providers()[0] == CUDA, made.get_providers()
    return made


def per_run_ms(run: Callable[[np.ndarray], object], batches: list[np.ndarray]) -> float:
    """Median ms of run() over the batches in turn, after one pass to warm every shape."""
    for batch in batches:
        run(batch)
    times = []
    for _ in range(max(2, 24 // len(batches))):
        for batch in batches:
            started = time.perf_counter()
            run(batch)
            times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def shape_changes(wide: np.ndarray, tall: np.ndarray) -> str:
    """What a run costs when the input shape stays, and when it changes between shapes the
    session has already seen: batch sizes 1-4 in turn, and two input sizes in turn."""
    sizes = [np.repeat(wide[None], n, axis=0) for n in (1, 2, 3, 4)]
    two = [np.repeat(wide[None], 8, axis=0), np.repeat(tall[None], 8, axis=0)]
    rows = []
    for search in SEARCHES:
        made = session(search)

        def plain(batch: np.ndarray, made: ort.InferenceSession = made) -> object:
            return made.run(OUTPUTS, {INPUT_NAME: batch})

        rows.append(
            [
                f"one session, cuDNN search {search}"
                + (" (onnxruntime's default)" if search == "EXHAUSTIVE" else ""),
                f"{per_run_ms(plain, two[:1]):.2f}",
                f"{per_run_ms(plain, sizes):.2f}",
                f"{per_run_ms(plain, two):.2f}",
            ]
        )
    fixed = DamageModel(provider="cuda", fixed_batch=8)

    def padded(batch: np.ndarray) -> object:
        return fixed.run(batch, OUTPUTS)

    rows.append(
        [
            "DamageModel(fixed_batch=8): padded to 8, a session per input size",
            f"{per_run_ms(padded, two[:1]):.2f}",
            f"{per_run_ms(padded, sizes):.2f}",
            f"{per_run_ms(padded, two):.2f}",
        ]
    )
    h, w = wide.shape[:2]
    th, tw = tall.shape[:2]
    return table(
        [
            "how",
            f"ms a run, batch 8 of {h}x{w} every time",
            "ms a run, batches of 1, 2, 3, 4 in turn",
            f"ms a run, batch 8 of {h}x{w} and of {th}x{tw} in turn",
        ],
        rows,
    )


def batching(one: np.ndarray, runs: int = 30) -> str:
    """ms of the first run at each new batch size, and warm ms and frames/s at each."""
    rows = []
    for search in SEARCHES:
        made = session(search)
        cold: dict[int, float] = {}
        for n in (1, 2, 4, 8, 32):
            batch = np.repeat(one[None], n, axis=0)
            started = time.perf_counter()
            made.run(OUTPUTS, {INPUT_NAME: batch})
            cold[n] = (time.perf_counter() - started) * 1000
        for n in (1, 2, 4, 8, 32):
            batch = np.repeat(one[None], n, axis=0)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                made.run(OUTPUTS, {INPUT_NAME: batch})
                times.append((time.perf_counter() - started) * 1000)
            ms = float(np.median(times))
            rows.append([search, str(n), f"{cold[n]:.1f}", f"{ms:.2f}", f"{n * 1000 / ms:.0f}"])
    return table(
        ["cuDNN search", "batch", "first run ms", "warm run ms", "frames/s (model only)"], rows
    )


def batched(data: list[bytes], seconds: float, most: int = 8) -> float:
    """Every core decoding into a queue; one thread running what waits, up to `most` a run
    (padded to `most`: see shape_changes)."""
    model = DamageModel(provider="cuda", fixed_batch=most)
    ready: queue.Queue[np.ndarray] = queue.Queue(maxsize=4 * most)
    stop = threading.Event()
    decoders = os.cpu_count() or 1

    def decoder(k: int) -> None:
        i = k
        while not stop.is_set():
            put_until(ready, prepare(data[i % len(data)]), stop)
            i += decoders

    threads = [threading.Thread(target=decoder, args=(k,), daemon=True) for k in range(decoders)]
    for thread in threads:
        thread.start()

    def step() -> int:
        batch = [ready.get()]
        while len(batch) < most:
            try:
                batch.append(ready.get_nowait())
            except queue.Empty:
                break
        model.run(np.stack(batch), OUTPUTS)
        return len(batch)

    try:
        return timed(seconds, step).fps
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _client(port: int, data: list[bytes], streams: int, seconds: float, own: bool) -> Load:
    return asyncio.run(
        stream_load(port, data, streams=streams, seconds=seconds, connection_per_stream=own)
    )


def load_from(
    ports: Sequence[int],
    data: list[bytes],
    streams: int,
    seconds: float,
    clients: int,
    connection_per_stream: bool = False,
) -> Load:
    """`streams` streams spread over up to `clients` processes, each process driving one of
    `ports` in turn (on one connection, or one per stream), their results pooled."""
    clients = max(min(clients, streams), len(ports))
    shares = [streams // clients + (k < streams % clients) for k in range(clients)]
    own = connection_per_stream
    work = [(ports[k % len(ports)], data, s, seconds, own) for k, s in enumerate(shares) if s]
    with multiprocessing.get_context("spawn").Pool(len(work)) as pool:
        loads = pool.starmap(_client, work)
    pooled = Load(seconds=float(np.mean([load.seconds for load in loads])))
    for load in loads:
        pooled.latencies_ms += load.latencies_ms
        pooled.batches += load.batches
        pooled.timings += load.timings
    return pooled


def provider_of(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        info = pb_grpc.ConvstreamStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    return info.execution_provider


def server_pids(port: int) -> list[int]:
    """The `convstream serve` process listening on port (Linux: read from /proc), or with
    `processes`, the processes its supervisor started."""
    parents: dict[int, int] = {}
    found = None
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    words = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            if any(b"convstream.cli" in w for w in words) and str(port).encode() in words:
                found = int(entry)
    if found is None:
        raise RuntimeError(f"no convstream server found on port {port}")
    return sorted(pid for pid, parent in parents.items() if parent == found) or [found]


def gpu_memory_mib(pids: list[int]) -> str:
    """GPU memory the processes hold together, as nvidia-smi reports it ("-" where it cannot
    say)."""
    held = {}
    for line in (nvidia_smi("compute-apps=pid,used_memory") or "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit():
            held[int(fields[0])] = fields[1]
    if not all(pid in held for pid in pids):
        return "-"
    if len(pids) == 1:
        return held[pids[0]]
    return f"{sum(int(held[pid].split()[0]) for pid in pids)} MiB ({len(pids)} processes)"


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread's name and CPU clock ticks so far."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (name, int(fields[11]) + int(fields[12]))
    return out


def cpu_use(pid: int, before: dict[int, tuple[str, int]], seconds: float) -> tuple[str, ...]:
    """Cores the server used, its main thread's (the event loop's) share of one core, and the
    busiest other thread's, since `before`."""
    after = thread_ticks(pid)
    tick = os.sysconf("SC_CLK_TCK")
    used = {
        t: (name, (n - before.get(t, (name, 0))[1]) / tick / seconds)
        for t, (name, n) in after.items()
    }
    main = used.get(pid, ("", 0.0))[1]
    others = sorted(((share, name) for t, (name, share) in used.items() if t != pid), reverse=True)
    top = f"{others[0][0]:.0%} ({others[0][1]})" if others else "-"
    return f"{sum(share for _, share in used.values()):.1f}", f"{main:.0%}", top


@dataclass
class Server:
    """One served configuration: its settings, the loads it is measured under, how many
    separate servers (each on its own port) share the GPU, streams split evenly over them, and
    its GIL switch interval."""

    name: str
    settings: dict[str, Any]
    loads: list[tuple[int, list[bytes]]]
    servers: int = 1
    switch_interval: float | None = None


def served(
    data: list[bytes],
    mixed: list[bytes],
    seconds: float,
    streams: list[int],
    clients: int,
    limit: float,
    only: list[int] | None = None,
    connection_per_stream: bool = False,
) -> str:
    most = max(streams)
    shipped = [(k, data) for k in streams] + [(16, mixed)]
    cuda: dict[str, Any] = {"provider": "cuda"}
    at_most = [(most, data)]
    servers = [
        Server("as shipped (1 worker, up to 8 a run, fixed shapes)", cuda, shipped),
        Server(
            "fixed_shapes = false (as before 2026-12-04)",
            {**cuda, "fixed_shapes": False},
            [(1, data), (most, data), (16, mixed)],
        ),
        Server("up to 16 a run", {**cuda, "max_batch": 16}, at_most),
        Server("2 workers", {**cuda, "inference_workers": 2}, at_most),
        Server("this host's CPUs alone, as shipped", {"provider": "cpu"}, at_most),
        Server("1 onnxruntime CPU thread beside the GPU", {**cuda, "intra_op_threads": 1}, at_most),
        Server("4 workers", {**cuda, "inference_workers": 4}, at_most),
        Server("8 decode threads", {**cuda, "decode_threads": 8}, at_most),
        Server("as shipped, streams only", cuda, at_most),
        Server("GIL switch interval 1 ms", cuda, at_most, switch_interval=0.001),
        Server("2 servers on 2 ports sharing the GPU", cuda, at_most, servers=2),
        Server("4 servers on 4 ports sharing the GPU", cuda, at_most, servers=4),
        Server("processes = 2", {**cuda, "processes": 2}, at_most),
        Server("processes = 4", {**cuda, "processes": 4}, at_most),
        Server("processes = 8", {**cuda, "processes": 8}, at_most),
    ]
    if only:
        servers = [servers[i] for i in only]
    rows = []
    for server in servers:
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            ports = [
                stack.enter_context(
                    convstream_server(switch_interval=server.switch_interval, **server.settings)
                )
                for _ in range(server.servers)
            ]
            up = (time.perf_counter() - started) / server.servers
            provider = provider_of(ports[0])
            pids = [pid for port in ports for pid in server_pids(port)]
            for k, frames_ in server.loads:
                ticks = [thread_ticks(pid) for pid in pids]
                began = time.perf_counter()
                load = load_from(ports, frames_, k, seconds, clients, connection_per_stream)
                elapsed = time.perf_counter() - began
                uses = [cpu_use(pid, t, elapsed) for pid, t in zip(pids, ticks, strict=True)]
                cores = f"{sum(float(u[0]) for u in uses):.1f}"
                _, main, top = uses[0]
                inside = np.median(np.array(load.timings), axis=0)
                rows.append(
                    [
                        server.name,
                        provider.removesuffix("ExecutionProvider"),
                        f"{up:.1f}",
                        f"{k}{' mixed' if frames_ is mixed else ''}",
                        f"{load.fps:.0f}",
                        f"{load.latency(50):.1f}",
                        f"{load.latency(99):.1f}",
                        f"{np.mean(load.batches):.2f}",
                        " / ".join(f"{ms:.1f}" for ms in inside),
                        f"{load.fps / limit:.2f}",
                        cores,
                        main,
                        top,
                        gpu_memory_mib(pids),
                    ]
                )
    return table(
        [
            "server",
            "provider",
            "s to listen",
            "streams",
            "frames/s",
            "p50 ms",
            "p99 ms",
            "mean batch",
            "in the server p50 ms: queue / decode / inference / encode / total",
            "/ in-process batched",
            "server cores (all processes)",
            "event loop (first process)",
            "busiest other thread",
            "GPU MiB",
        ],
        rows,
        "llrlrrrrrrrrlr",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--clients", type=int, default=4, help="load generator processes")
    parser.add_argument("--servers", type=int, nargs="*", help="served rows to run (indices)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["loading", "agreement", "shapes", "batching"],
        help="sections to leave out (the in-process loops always run: they are the limit)",
    )
    parser.add_argument(
        "--connection-per-stream",
        action="store_true",
        help="each stream on a TCP connection of its own (the kernel gives each connection to "
        "one process of a server with processes > 1); default: one per client process",
    )
    args = parser.parse_args()
    failed = False

    def section(title: str, make: Callable[[], str], key: str = "") -> None:
        """Print one section; a section that fails says why and the next one still runs."""
        nonlocal failed
        if key in args.skip:
            return
        print(f"\n### {title}\n", flush=True)
        try:
            print(make(), flush=True)
        except Exception:
            failed = True
            traceback.print_exc()

    load_cuda_libraries()
    print(f"machine: {machine()}")
    print(f"GPU: {gpu_name()}")
    print(f"onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}")
    section("Loading", loading, "loading")
    if CUDA not in ort.get_available_providers():
        raise SystemExit(
            "this onnxruntime has no CUDA provider: install the gpu extra "
            "(docs/production.md, 'GPU')"
        )
    data = frames()
    pixels = np.stack([prepare(d) for d in data[:8]])
    size = f"{pixels.shape[1]}x{pixels.shape[2]}"
    section(f"Agreement on {len(pixels)} frames of {size}", lambda: agreement(pixels), "agreement")
    tall = prepare(frames(1, 480, 640)[0])
    section(
        f"Shape changes in onnxruntime alone, {size} and {tall.shape[0]}x{tall.shape[1]}",
        lambda: shape_changes(pixels[0], tall),
        "shapes",
    )
    section(f"Batching in onnxruntime alone, {size}", lambda: batching(pixels[0]), "batching")
    cores = os.cpu_count()
    loops: dict[str, float] = {}

    def in_process() -> str:
        loops["decode, letterbox, infer, one frame after another"] = sequential_loop(
            data, args.seconds, DamageModel(provider="cuda")
        ).fps
        loops[f"{cores} decode threads, one thread running batches of up to 8"] = batched(
            data, args.seconds
        )
        return table(["loop", "frames/s"], [[k, f"{v:.0f}"] for k, v in loops.items()])

    section(f"In-process loops, 720p JPEGs, {cores} cores", in_process)
    limit = max(loops.values(), default=float("nan"))
    # "mixed": 720p and 640x480 frames in turn on every stream (two model input sizes)
    mixed = [f for pair in zip(data[:12], frames(12, 480, 640), strict=True) for f in pair]
    section(
        f"Served, {args.clients} client processes, 4 frames in flight per stream",
        lambda: served(
            data,
            mixed,
            args.seconds,
            args.streams,
            args.clients,
            limit,
            args.servers,
            args.connection_per_stream,
        ),
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
