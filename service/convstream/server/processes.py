"""Several server processes on one port (``processes = N``): what each one is told, the calls
they forward to each other, and the supervisor that starts them.

One Python process tops out where its GIL does: on an H200 one server delivered about a
third of what the same host's in-process loop reaches, while using 3 of its 16 cores
(benchmarks/RESULTS_GPU.md). With ``processes = N``, ``convstream serve`` becomes a supervisor
that starts N copies of itself and restarts any that dies. Each copy

- binds the same port with SO_REUSEPORT: the kernel spreads new connections over them, and
  every call of one connection goes to the same process;
- runs its own model session (on a GPU, its own GPU memory) with 1/N of the cores;
- pulls the cameras whose id hashes to it, and listens on a Unix socket in a folder only this
  user can open, so that the others can forward the calls that name a camera it holds:
  ListCameras asks every process, WatchCamera asks the camera's owner (and, for a published
  client stream, each process in turn until one has it).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from convstream.server.config import Settings, host_port

logger = logging.getLogger(__name__)

# Marks a call one process forwards to another: the receiver answers from what it holds
# itself and never forwards it again.
FORWARDED = "convstream-forwarded"
START_TIMEOUT_S = 300.0  # for every process to load and warm its model (CUDA: a session a size)
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STEADY_S = 60.0  # a process that ran this long before dying is restarted at once again


@dataclass(frozen=True)
class Peers:
    """This process's place among the server's processes."""

    index: int
    count: int
    folder: Path

    @classmethod
    def parse(cls, text: str) -> Peers:
        """From the supervisor's ``--child INDEX:COUNT:FOLDER``."""
        index, count, folder = text.split(":", 2)
        peers = cls(int(index), int(count), Path(folder))
        if not 0 <= peers.index < peers.count:
            raise ValueError(f"--child: index {peers.index} is not below count {peers.count}")
        return peers

    def arg(self) -> str:
        return f"{self.index}:{self.count}:{self.folder}"

    def address(self, index: int) -> str:
        """Where process ``index`` takes forwarded calls."""
        return f"unix:{self.folder / f'process-{index}.sock'}"

    def owners(self, camera_ids: Sequence[str]) -> dict[str, int]:
        """The process that pulls each configured camera: in turn, in the config's order, so
        that they are shared out evenly (a camera added at the end moves no other; one removed
        moves those after it, which restart in their new process)."""
        return {camera_id: k % self.count for k, camera_id in enumerate(camera_ids)}

    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    def share(self, cores: int) -> int:
        """This process's share of the cores."""
        return max(1, cores // self.count)


def forwarded(metadata: Any) -> bool:
    """Whether a call's invocation metadata says another process forwarded it."""
    return any(key == FORWARDED for key, _ in metadata or ())


def forward_metadata(metadata: Any) -> tuple[tuple[str, str], ...]:
    """The metadata a forwarded call carries: the caller's token, if any, and the mark."""
    kept = tuple((key, value) for key, value in metadata or () if key == "authorization")
    return (*kept, (FORWARDED, "1"))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the supervisor dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, held while the processes bind it too:
    it turns port 0 into a number they all share, and fails at once, with the reason, when
    another program holds the port."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    held = socket.socket(family, kind, proto)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(address)
    except OSError:
        held.close()
        raise
    return held


def _ended(code: int) -> str:
    """How a process ended, in words."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Starts ``settings.processes`` copies of ``convstream serve``, restarts any that dies,
    forwards SIGHUP (reload) and SIGTERM/SIGINT (drain, then stop) to them."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv  # the serve command's own arguments, given to every process
        self.count = settings.processes
        self.folder = Path(tempfile.mkdtemp(prefix="convstream-"))  # mode 0700
        self.children: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.started_at = [0.0] * self.count
        self.failures = [0] * self.count
        self.restart_at: dict[int, float] = {}
        self.signal: int | None = None
        self.port = settings.port

    def run(self) -> int:
        """Until SIGTERM or SIGINT; the exit status of `convstream serve`."""
        address = host_port(self.settings.host, self.settings.port)
        try:
            try:
                held = _reserve(self.settings.host, self.settings.port)
            except OSError as exc:
                print(
                    f"convstream serve: cannot listen on {address}: {exc.strerror or exc}; "
                    "choose another with --port or --host",
                    file=sys.stderr,
                )
                return 1
            with held:
                self.port = int(held.getsockname()[1])
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, self._on_signal)
                for index in range(self.count):
                    self._start(index)
                failed = self._wait_started()
            if failed is not None:
                self._stop_all()
                return failed
            self._announce()
            self._watch()
            return 0
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            for child in self.children:
                if child is not None and child.poll() is None:
                    child.send_signal(signal.SIGHUP)
            logger.info("reload: asked every process to read its config again")
        elif self.signal is None:
            self.signal = signum

    def _start(self, index: int) -> None:
        peers = Peers(index, self.count, self.folder)
        command = [sys.executable, "-m", "convstream.cli", *self.argv]
        command += ["--port", str(self.port), "--child", peers.arg()]
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self.children[index] = subprocess.Popen(command, preexec_fn=preexec)
        self.started_at[index] = time.monotonic()

    def _serving(self, index: int) -> bool:
        address = Peers(index, self.count, self.folder).address(index)
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _wait_started(self) -> int | None:
        """None once every process serves; else the exit status to end with."""
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(range(self.count))
        while waiting:
            if self.signal is not None:
                return 0
            for index in sorted(waiting):
                child = self.children[index]
                assert child is not None
                code = child.poll()
                if code is not None:
                    logger.error(
                        "process %d of %d %s while starting (its lines above say why); "
                        "stopping the others",
                        index,
                        self.count,
                        _ended(code),
                    )
                    return code if code > 0 else 1
                if self._serving(index):
                    waiting.discard(index)
            if time.monotonic() > deadline:
                logger.error(
                    "processes %s did not start serving in %.0f s; stopping",
                    ", ".join(map(str, sorted(waiting))),
                    START_TIMEOUT_S,
                )
                return 1
            time.sleep(0.1)
        return None

    def _announce(self) -> None:
        cameras = self.settings.cameras
        peers = Peers(0, self.count, self.folder)
        owners = peers.owners([c.id for c in cameras])
        where = ", ".join(f"{c} in {k}" for c, k in owners.items()) or "none"
        logger.info(
            "convstream serving on %s with %d processes (pids %s; each with 1/%d of the cores "
            "and its own model session; cameras: %s); the kernel spreads connections over them",
            host_port(self.settings.host, self.port),
            self.count,
            ", ".join(str(c.pid) for c in self.children if c is not None),
            self.count,
            where,
        )

    def _watch(self) -> None:
        """Restart what dies, with a backoff, until a signal says stop."""
        while self.signal is None:
            now = time.monotonic()
            for index, child in enumerate(self.children):
                if child is None or index in self.restart_at:
                    continue
                code = child.poll()
                if code is None:
                    continue
                ran = now - self.started_at[index]
                self.failures[index] = 0 if ran > STEADY_S else self.failures[index] + 1
                delay = 0.0
                if self.failures[index]:
                    delay = RESTART_DELAYS_S[min(self.failures[index], len(RESTART_DELAYS_S)) - 1]
                logger.error(
                    "process %d (pid %d) %s after %.0f s; starting it again in %.0f s (its "
                    "streams ended; their clients reconnect)",
                    index,
                    child.pid,
                    _ended(code),
                    ran,
                    delay,
                )
                self.restart_at[index] = now + delay
            for index, when in list(self.restart_at.items()):
                if now >= when:
                    del self.restart_at[index]
                    self._start(index)
            time.sleep(0.1)
        logger.info("signal received: every process drains, then stops")
        self._stop_all()

    def _stop_all(self) -> None:
        running = [c for c in self.children if c is not None and c.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        wait = self.settings.drain_delay_s + self.settings.grace_period_s + 10.0
        deadline = time.monotonic() + wait
        for child in running:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("process pid %d did not stop in %.0f s; killing it", child.pid, wait)
                child.kill()
                child.wait()
