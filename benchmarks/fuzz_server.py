"""Mutated JPEG/PNG frames through a live `convstream serve`: results or errors, never a crash.

    PYTHONPATH=service:clients:models:protos .venv/bin/python benchmarks/fuzz_server.py \
        [--count 10000] [--streams 4] [--seed 0]

Starts `convstream serve --no-cameras --metrics-port -1` on a free port (a separate process,
so its RSS is its own), sends ``--count`` frames made from real JPEG and PNG frames by bit
flips, truncation, splices, byte runs and header field changes (JPEG SOF and PNG IHDR sizes,
with and without a fixed CRC) over a few concurrent StreamFrames calls, and checks that:

- every frame gets exactly one result, in order, carrying OK or INVALID_ARGUMENT
  (RESOURCE_EXHAUSTED is tolerated: a frame refused for the server's limits is fine);
- no result carries INTERNAL or UNKNOWN (the server failed on a frame instead of refusing it);
- every stream ends OK, the server process is alive and SERVING at the end.

It prints the server's RSS (VmRSS) and peak RSS (VmHWM, from /proc/PID/status) at start,
middle and end, and outcomes per mutation. Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import cv2
import grpc
from common import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from convstream.model.scenes import render_scene
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

OK = grpc.StatusCode.OK.value[0]
ACCEPTED = {
    OK,
    grpc.StatusCode.INVALID_ARGUMENT.value[0],
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
}
MESSAGE_LIMIT = 64 * 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


# ----------------------------------------------------------------------------- the corpus


def corpus() -> list[tuple[str, bytes]]:
    """Real frames: JPEG (baseline and progressive, colour and grey) and PNG, a few sizes."""
    out = []
    for seed, (h, w) in enumerate([(240, 320), (480, 640), (720, 1280), (96, 128)]):
        image = render_scene(5_000_000 + seed, h, w).image
        for name, ext, params in [
            ("jpeg", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 85]),
            ("jpeg-progressive", ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
            ("png", ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
        ]:
            ok, data = cv2.imencode(ext, image, params)
            assert ok
            out.append((f"{name} {w}x{h}", data.tobytes()))
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        out.append((f"jpeg-gray {w}x{h}", data.tobytes()))
    return out


def _sof_offset(data: bytes) -> int | None:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            return pos
        if 0xD0 <= marker <= 0xD9 or marker in (0x01, 0xFF):
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def _side(rng: random.Random) -> int:
    return rng.choice([0, 1, 7, 8, 63, 640, 4095, 16384, 16385, 40000, 65535, rng.randrange(65536)])


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 2, 8, 64])):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def header_flips(data: bytes, rng: random.Random) -> bytes:
    """Flips in the first 600 bytes, where the headers and tables are."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 2, 4])):
        i = rng.randrange(min(600, len(b)))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def truncate(data: bytes, rng: random.Random) -> bytes:
    cut = rng.choice([rng.randrange(len(data)), rng.randrange(min(64, len(data))), len(data) - 2])
    tail = b"\xff\xd9" if data[:2] == b"\xff\xd8" and rng.random() < 0.5 else b""
    return data[:cut] + tail  # half of them with an end marker put back: past the EOI check


def splice(data: bytes, other: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]


def byte_runs(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    i = rng.randrange(len(b))
    n = rng.choice([1, 4, 16, 256])
    b[i : i + n] = bytes([rng.choice([0x00, 0xFF, rng.randrange(256)])]) * n
    return bytes(b)


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(2, len(data))
    blob = rng.choice([b"\xff", b"\xff\x00", b"\xff\xd9", b"\xff\xd8", rng.randbytes(8)])
    return data[:i] + blob + data[i:]


def header_fields(data: bytes, rng: random.Random) -> bytes:
    """Change the declared size: JPEG SOF height/width, or PNG IHDR (CRC fixed or not)."""
    b = bytearray(data)
    if data[:2] == b"\xff\xd8":
        sof = _sof_offset(data)
        if sof is None:
            return bit_flips(data, rng)
        which = rng.choice(["h", "w", "both", "components", "sampling"])
        if which in ("h", "both"):
            b[sof + 5 : sof + 7] = struct.pack(">H", _side(rng))
        if which in ("w", "both"):
            b[sof + 7 : sof + 9] = struct.pack(">H", _side(rng))
        if which == "components":
            b[sof + 9] = rng.choice([0, 2, 4, 255])
        if which == "sampling" and len(b) > sof + 11:
            b[sof + 11] = rng.randrange(256)
        return bytes(b)
    w, h = _side(rng) * rng.choice([1, 1, 65537]), _side(rng)
    b[16:24] = struct.pack(">II", w & 0xFFFFFFFF, h & 0xFFFFFFFF)
    if rng.random() < 0.3:
        b[24] = rng.choice([1, 2, 4, 16, 255])  # bit depth
    if rng.random() < 0.7:
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def random_bytes(data: bytes, rng: random.Random) -> bytes:
    magic = data[:8] if data[:2] != b"\xff\xd8" else data[:3]
    return magic + rng.randbytes(rng.choice([0, 1, 20, 500, 5000]))


MUTATIONS: dict[str, Callable[..., bytes]] = {
    "bit flips": bit_flips,
    "header flips": header_flips,
    "truncation": truncate,
    "splice": splice,
    "byte runs": byte_runs,
    "insertion": insert_bytes,
    "header fields": header_fields,
    "random after magic": random_bytes,
}


def mutated(count: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    base = corpus()
    out = []
    names = list(MUTATIONS)
    for i in range(count):
        kind = names[i % len(names)]
        _, data = rng.choice(base)
        if kind == "splice":
            frame = splice(data, rng.choice(base)[1], rng)
        else:
            frame = MUTATIONS[kind](data, rng)
        out.append((kind, frame))
    return out


# ----------------------------------------------------------------------------- the run


# `convstream serve`, with faulthandler on SIGUSR1: a stall's report shows every thread's stack.
SERVE = (
    "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "from convstream.cli import main; sys.exit(main(sys.argv[1:]))"
)


def start_server(port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    # stderr to a file, never a pipe nobody reads while the run lasts: once the pipe is full,
    # the server's next log line blocks its event loop (a stall that is ours, not the server's)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            "serve",
            "--port",
            str(port),
            "--no-cameras",
            "--metrics-port",
            "-1",
            "--log-level",
            "error",
        ],
        stderr=log,
    )


async def wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen[bytes]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError("server did not become SERVING in 120 s")


class Run:
    def __init__(self, frames: list[tuple[str, bytes]], pid: int) -> None:
        self.frames = frames
        self.pid = pid
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.failures: list[str] = []
        self.samples: list[tuple[str, int, float, float]] = []
        self.done = 0
        self.waiting: dict[int, int] = {}  # stream -> the frame whose result it waits for
        self._middle = len(frames) // 2

    def sample(self, label: str) -> None:
        rss, hwm = rss_mib(self.pid)
        self.samples.append((label, self.done, rss, hwm))

    async def stream(self, stub: pb_grpc.ConvstreamStub, k: int, ids: list[int]) -> None:
        async def requests() -> AsyncIterator[pb.FrameRequest]:
            for i in ids:
                yield pb.FrameRequest(frame_id=i, source="fuzz", encoded=self.frames[i][1])

        got = 0
        self.waiting[k] = ids[0]
        call = stub.StreamFrames(requests(), timeout=3600)
        async for result in call:
            i = ids[got] if got < len(ids) else None
            got += 1
            self.waiting[k] = ids[got] if got < len(ids) else -1
            if i is None or result.frame_id != i:
                self.failures.append(f"frame {i}: got the result of frame {result.frame_id}")
                continue
            kind = self.frames[i][0]
            code = result.status.code
            name = grpc.StatusCode.OK.name if code == OK else _code_name(code)
            self.outcomes[kind][name] += 1
            if code not in ACCEPTED:
                self.failures.append(f"frame {i} ({kind}): {name}: {result.status.message}")
                Path(f"/tmp/fuzz-failure-{i}.bin").write_bytes(self.frames[i][1])
            self.done += 1
            if self.done == self._middle:
                self.sample("middle")
        left = ids[got:]
        if left:
            self.failures.append(f"{len(left)} frames got no result (first: {left[0]})")
        if await call.code() != grpc.StatusCode.OK:
            self.failures.append(f"stream ended {await call.code()}: {await call.details()}")


async def watch(run: Run, streams: asyncio.Future[list[None]], stall_s: float) -> None:
    """Wait for the streams; a stall (no result for stall_s) is a failure: name the frames."""
    last, since = -1, time.monotonic()
    while not streams.done():
        await asyncio.wait([streams], timeout=1.0)
        if run.done != last:
            last, since = run.done, time.monotonic()
        elif time.monotonic() - since > stall_s:
            for k, i in sorted(run.waiting.items()):
                if 0 <= i < len(run.frames):
                    path = f"/tmp/fuzz-stalled-{i}.bin"
                    Path(path).write_bytes(run.frames[i][1])
                    run.failures.append(
                        f"stall: no result for {stall_s:g} s; stream {k} waits for frame {i} "
                        f"({run.frames[i][0]}, saved as {path})"
                    )
            os.kill(run.pid, signal.SIGUSR1)  # the server's threads' stacks, to its stderr
            await asyncio.sleep(1)
            streams.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streams
            return
    await streams


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


async def main_async(args: argparse.Namespace) -> int:
    print(f"making {args.count} mutated frames (seed {args.seed}) ...", flush=True)
    frames = mutated(args.count, args.seed)
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    process = start_server(port, log)
    options = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            await wait_serving(channel, process)
            stub = pb_grpc.ConvstreamStub(channel)
            run = Run(frames, process.pid)
            run.sample("start")
            started = time.monotonic()
            shares = [list(range(k, len(frames), args.streams)) for k in range(args.streams)]
            streams = asyncio.gather(*(run.stream(stub, k, ids) for k, ids in enumerate(shares)))
            await watch(run, streams, args.stall_s)
            elapsed = time.monotonic() - started
            run.sample("end")
            alive = process.poll() is None
            health = health_pb2_grpc.HealthStub(channel)
            serving = False
            if alive:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.seek(0)
        stderr = log.read().decode(errors="replace")
        log.close()

    print(
        f"\n{run.done} of {len(frames)} frames answered in {elapsed:.1f} s over "
        f"{args.streams} streams; server alive at the end: {alive}, SERVING: {serving}\n"
    )
    print("| when | frames done | server RSS MiB | server peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for label, done, rss, hwm in run.samples:
        print(f"| {label} | {done} | {rss:.0f} | {hwm:.0f} |")
    codes = sorted({c for counts in run.outcomes.values() for c in counts})
    print("\n| mutation | " + " | ".join(codes) + " |")
    print("|---|" + "---:|" * len(codes))
    for kind in MUTATIONS:
        counts = run.outcomes.get(kind, Counter())
        print(f"| {kind} | " + " | ".join(str(counts[c]) for c in codes) + " |")
    if stderr.strip():
        lines = stderr.strip().splitlines()
        stalled = any(f.startswith("stall") for f in run.failures)
        keep = 120 if stalled else 10
        print(f"\nserver stderr ({len(lines)} lines), last {keep}:")
        print("\n".join(lines[-keep:]))
    ok = alive and serving and not run.failures and run.done == len(frames)
    if run.failures:
        print(f"\n{len(run.failures)} failures (the frames are in /tmp/fuzz-failure-*.bin):")
        shown = [f for f in run.failures if f.startswith("stall")]
        shown += [f for f in run.failures if not f.startswith("stall")]
        for failure in shown[:20]:
            print(" ", failure[:300])
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="frames to send")
    parser.add_argument("--streams", type=int, default=4, help="concurrent StreamFrames calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall-s", type=float, default=60.0, help="no result this long: fail")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
