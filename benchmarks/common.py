"""What the benchmark scripts share: the frames, the in-process limit, a server, a load generator.

Every figure a benchmark prints comes from one run on one machine; only ratios between figures
of the same run mean anything (these machines are noisy).
"""

from __future__ import annotations

import asyncio
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np

from convstream.model import DamageModel
from convstream.model.evaluate import cpu_name
from convstream.model.scenes import render_scene
from convstream.server.decode import Limits, decode_encoded, encoded_size
from convstream.server.letterbox import choose_input, letterbox, reduction
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(384, 640), (480, 640), (384, 384)]  # the server's default input sizes
LIMITS = Limits(40_000_000, 16384)
OUTPUTS = ["heatmap", "score", "stage3"]
# What every throughput benchmark asks for: score + heatmap + one float16 stage.
OPTIONS = pb.ResultOptions(feature_maps=["stage3"], encoding=pb.TENSOR_ENCODING_FLOAT16)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


def machine() -> str:
    """One line naming the machine the figures came from."""
    cpu = cpu_name()
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {python}"


def frames(count: int = 24, height: int = 720, width: int = 1280) -> list[bytes]:
    """JPEGs (quality 85) of rendered warehouse scenes, 720p by default."""
    out = []
    for seed in range(count):
        image = render_scene(3_000_000_000 + seed, height, width).image
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok
        out.append(data.tobytes())
    return out


def prepare(data: bytes, sizes: list[tuple[int, int]] = SIZES) -> np.ndarray:
    """What the server does to a JPEG before the model: reduced decode, letterbox."""
    _, w, h = encoded_size(data)
    target = choose_input(w, h, sizes)
    image = decode_encoded(data, LIMITS, reduction(w, h, target))
    return letterbox(image, target, (w, h))[0]


@dataclass
class Rate:
    """What an in-process loop did: frames/s, and the CPU each frame cost the process (ms,
    every thread's user and system time over the measured window)."""

    fps: float
    cpu_ms: float


def timed(seconds: float, step: Callable[[], int]) -> Rate:
    """The rate of step() (which returns frames done) over about `seconds`."""
    for _ in range(3):
        step()
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        done += step()
    return Rate(done / (time.perf_counter() - started), (time.process_time() - cpu) * 1000 / done)


def sequential_loop(data: list[bytes], seconds: float, model: DamageModel | None = None) -> Rate:
    """Decode, letterbox and run the model (by default on the CPU, onnxruntime on every
    core), one frame at a time."""
    model = model or DamageModel(provider="cpu", intra_op_threads=os.cpu_count() or 1)
    i = 0

    def step() -> int:
        nonlocal i
        model.run(prepare(data[i % len(data)])[None], OUTPUTS)
        i += 1
        return 1

    return timed(seconds, step)


def put_until(ready: queue.Queue[np.ndarray], pixels: np.ndarray, stop: threading.Event) -> None:
    """Put pixels on the queue as soon as there is room, unless stop is set first."""
    while not stop.is_set():
        try:
            ready.put(pixels, timeout=0.1)
            return
        except queue.Full:
            continue


def pipelined_loop(data: list[bytes], seconds: float) -> Rate:
    """The same, with a thread decoding the next frame while the model runs this one."""
    model = DamageModel(provider="cpu", intra_op_threads=os.cpu_count() or 1)
    ready: queue.Queue[np.ndarray] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def decoder() -> None:
        k = 0
        while not stop.is_set():
            put_until(ready, prepare(data[k % len(data)]), stop)
            k += 1

    thread = threading.Thread(target=decoder, daemon=True)
    thread.start()
    try:
        return timed(seconds, lambda: (model.run(ready.get()[None], OUTPUTS), 1)[1])
    finally:
        stop.set()
        thread.join()


def parallel_loop(data: list[bytes], seconds: float) -> Rate:
    """One thread per core, each decoding and running its own frames on a one-thread
    onnxruntime (one shared session)."""
    workers = os.cpu_count() or 1
    model = DamageModel(provider="cpu", intra_op_threads=1)
    counts = [0] * workers
    go, stop = threading.Event(), threading.Event()

    def loop(k: int) -> None:
        i = k
        model.run(prepare(data[i % len(data)])[None], OUTPUTS)
        go.wait()
        while not stop.is_set():
            model.run(prepare(data[i % len(data)])[None], OUTPUTS)
            counts[k] += 1
            i += workers

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # every thread warm
    go.set()
    started, cpu = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    done = sum(counts)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    stop.set()
    for thread in threads:
        thread.join()
    return Rate(done / elapsed, cpu * 1000 / done)


# The loops one would write without a server; the fastest on the machine at hand is the limit.
LOOPS: dict[str, Callable[[list[bytes], float], Rate]] = {
    "sequential": sequential_loop,
    "pipelined": pipelined_loop,
    "parallel": parallel_loop,
}


def in_process_limit(data: list[bytes], seconds: float) -> dict[str, Rate]:
    """The rate of every loop in LOOPS."""
    return {name: loop(data, seconds) for name, loop in LOOPS.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"nothing listened on port {port} within {timeout:.0f} s")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


class ServerPort(int):
    """A benchmark server's port, with the server's process id (to read its CPU time)."""

    pid: int

    def __new__(cls, port: int, pid: int) -> ServerPort:
        self = super().__new__(cls, port)
        self.pid = pid
        return self

    def __getnewargs__(self) -> tuple[int, int]:  # type: ignore[override]
        # for pickle, which hands it to load generator processes: int's own gave the port
        # alone, and bench_gpu's served rows died in every worker (found on an H100)
        return int(self), self.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def convstream_server(
    *, switch_interval: float | None = None, **settings: Any
) -> Iterator[ServerPort]:
    """A separate `convstream serve` process with no cameras; yields its port (with its pid).

    Keyword arguments are settings (config.py), written to a TOML file; switch_interval, in
    seconds, is the server's GIL switch interval (sys.setswitchinterval) where given.
    """
    if switch_interval is None:
        command = [sys.executable, "-m", "convstream.cli"]
    else:
        run = "import runpy, sys; sys.setswitchinterval({}); runpy.run_module({!r}, run_name={!r})"
        command = [sys.executable, "-c", run.format(switch_interval, "convstream.cli", "__main__")]
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "bench.toml"
        lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
        config.write_text("\n".join([*lines, "cameras = []", ""]))
        process = subprocess.Popen(
            [
                *command,
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--metrics-port",
                "-1",
                "--log-level",
                "warning",
            ]
        )
        try:
            wait_listening(port, process)
            yield ServerPort(port, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Load:
    """What a load generator saw over its measured window."""

    seconds: float
    latencies_ms: list[float] = field(default_factory=list)  # sent to result received
    ages_ms: list[float] = field(default_factory=list)  # captured to result received
    sent: int = 0
    dropped: int = 0  # frames the server reported dropped (latest-only, bounded queue)
    wide: int = 0  # results whose run took more than one onnxruntime thread
    batches: list[int] = field(default_factory=list)  # frames in each result's inference run
    # each result's server timings, ms: queue, decode, inference, encode, total
    timings: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    server_cpu_s: float = float("nan")  # the server process's CPU over the window (all threads)
    client_cpu_s: float = float("nan")  # this process's (the load generator's)

    def cpu_ms(self, which: str) -> float:
        """CPU ms per result of the "server" or the "client" (load generator)."""
        seconds = self.server_cpu_s if which == "server" else self.client_cpu_s
        return seconds * 1000 / len(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def wide_share(self) -> float:
        """Share of the measured results that ran on more than one onnxruntime thread."""
        return self.wide / len(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def fps(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def age(self, q: float) -> float:
        return float(np.percentile(self.ages_ms, q)) if self.ages_ms else float("nan")


async def stream_load(
    port: int,
    data: list[bytes],
    *,
    streams: int,
    seconds: float,
    in_flight: int = 4,
    rate: float | None = None,
    options: pb.ResultOptions = OPTIONS,
    warmup: float = 2.0,
    connection_per_stream: bool = False,
) -> Load:
    """Drive `streams` concurrent StreamFrames calls and measure the results.

    Closed loop (rate None): each stream keeps `in_flight` frames unanswered, as a real
    integration (and our Client) does, so latency is the server's and not a client queue's.
    Open loop (rate in frames/s per stream): each stream sends on a fixed clock like a camera,
    whatever comes back; with a latest-only policy the server drops what it cannot take.
    Every frame carries its capture time, so each result's age is measured too. The CPU
    time of this process and, given a ServerPort, of the server is read over the window.
    connection_per_stream: each stream on a TCP connection of its own, as separate cameras'
    integrations are (a server of several processes gets each connection in one of them);
    otherwise all share one.
    """
    load = Load(seconds)
    measuring = asyncio.Event()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ConvstreamStub(channel)

        async def one(k: int) -> None:
            if connection_per_stream:
                channel_options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
                own = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options)
                try:
                    await run(k, pb_grpc.ConvstreamStub(own))
                finally:
                    await own.close()
            else:
                await run(k, stub)

        async def run(k: int, stub: pb_grpc.ConvstreamStub) -> None:
            sent: dict[int, float] = {}
            window = asyncio.Semaphore(in_flight)
            # Open loop: the streams' clocks spread over one frame interval, as cameras' are,
            # not all ticking at once.
            started = time.perf_counter() + (k / (streams * rate) if rate else 0.0)
            wall = time.time() - time.perf_counter()  # perf_counter() to the wall clock

            async def requests() -> AsyncIterator[pb.FrameRequest]:
                i = 0
                while not stop.is_set():
                    if rate is None:
                        await window.acquire()
                        due = time.perf_counter()
                    else:
                        # On a clock, like a camera: a frame's time is when it was due, so
                        # a load generator running late cannot hide it from ages and latency.
                        due = started + i / rate
                        await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    request = pb.FrameRequest(frame_id=i, encoded=data[(i + k) % len(data)])
                    if i == 0:
                        request.options.CopyFrom(options)
                    request.capture_time.FromNanoseconds(round((due + wall) * 1e9))
                    sent[i] = due
                    if measuring.is_set():
                        load.sent += 1
                    yield request
                    i += 1

            call = stub.StreamFrames(requests())
            first_dropped: int | None = None
            async for result in call:
                if rate is None:
                    window.release()
                if result.status.code:
                    raise RuntimeError(result.status.message)
                now = time.perf_counter()
                began = sent.pop(result.frame_id)
                for frame_id in result.dropped_frame_ids:
                    sent.pop(frame_id, None)
                if measuring.is_set() and not stop.is_set():
                    if first_dropped is None:
                        first_dropped = result.frames_dropped
                    load.dropped += result.frames_dropped - first_dropped
                    first_dropped = result.frames_dropped
                    load.latencies_ms.append((now - began) * 1000)
                    load.wide += result.timings.inference_threads > 1
                    t = result.timings
                    load.batches.append(t.batch_size)
                    load.timings.append(
                        (t.queue_ms, t.decode_ms, t.inference_ms, t.encode_ms, t.total_ms)
                    )
                    captured = result.capture_time.ToNanoseconds() / 1e9
                    load.ages_ms.append((time.time() - captured) * 1000)
                if stop.is_set():
                    break
            call.cancel()

        pid = port.pid if isinstance(port, ServerPort) else None
        tasks = [asyncio.create_task(one(k)) for k in range(streams)]
        await asyncio.sleep(warmup)
        measuring.set()
        started, client = time.perf_counter(), time.process_time()
        server = cpu_seconds(pid) if pid else float("nan")
        await asyncio.sleep(seconds)
        stop.set()
        load.seconds = time.perf_counter() - started
        load.client_cpu_s = time.process_time() - client
        if pid:
            load.server_cpu_s = cpu_seconds(pid) - server
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
    return load


async def service_time(port: int, data: list[bytes], count: int = 60) -> float:
    """Median ms of one frame alone: Analyze calls one after another on an idle server."""
    times = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ConvstreamStub(channel)
        for i in range(count + 5):
            request = pb.FrameRequest(frame_id=i, encoded=data[i % len(data)], options=OPTIONS)
            started = time.perf_counter()
            await stub.Analyze(request)
            if i >= 5:
                times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def trend(ages: list[float] | np.ndarray) -> float:
    """Mean of the last third minus mean of the first third: a growing lag shows as > 0."""
    values = np.asarray(ages, np.float64)
    third = max(1, len(values) // 3)
    return float(values[-third:].mean() - values[:third].mean())


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A markdown table; `align` is one character per column, l or r (default: l then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
