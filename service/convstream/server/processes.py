"""Several server processes on one port (``processes = N``): what each one is told, the calls
they forward to each other, and the supervisor that starts them.

One Python process tops out where its GIL does: on an H200 one server delivered about a
third of what the same host's in-process loop reaches, while using 3 of its 16 cores
(benchmarks/RESULTS_GPU.md). With ``processes = N``, ``convstream serve`` becomes a supervisor
that starts N copies of itself and restarts any that dies. Each copy

- binds the same port with SO_REUSEPORT: the kernel spreads new connections over them, and
  every call of one connection goes to the same process;
- runs its own model session (on a GPU, its own GPU memory) with 1/N of the cores;
- pulls its share of the cameras (``assign``), and listens on a Unix socket in a folder only
  this user can open, so that the others can forward the calls that name a camera it holds:
  ListCameras asks every process, WatchCamera asks the camera's owner (and, for a published
  client stream, each process in turn until one has it).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from convstream.server.config import ConfigError, Settings, parse_size
from convstream.v1 import host_port
from convstream.v1.logs import fatal
from convstream.v1.pem import TLSFileError

logger = logging.getLogger(__name__)

# Marks a call one process forwards to another: the receiver answers from what it holds
# itself and never forwards it again.
FORWARDED = "convstream-forwarded"
START_TIMEOUT_S = 300.0  # for every process to load and warm its model (CUDA: a session a size)
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STEADY_S = 60.0  # a process that served this long before dying is restarted at once
SNAPSHOT = "settings.json"  # the settings every process runs, and who pulls which camera
# What a reload changes in running processes (Server.reload); every other setting is kept as
# the server started with it, in the processes that restart too.
TLS_FILES = ("tls_cert", "tls_key", "tls_client_ca")
RELOADED = ("cameras", "tokens", "threshold", *TLS_FILES)
HEALTH_EVERY_S = 5.0  # how often the supervisor asks each serving process whether it serves
STUCK_S = 30.0  # a serving process that has not answered for this long is killed (restarted)
SECRET = "secret"  # marks forwarded calls: only the server's processes can read it


def assign(previous: Mapping[str, int], camera_ids: Sequence[str], count: int) -> dict[str, int]:
    """The process that pulls each camera, in the config's order: a camera keeps the process
    it had, and each new one goes to the process with the fewest (the lowest index first), so
    that a reload moves no running camera and the cameras stay shared out evenly."""
    owners = {c: previous[c] for c in camera_ids if previous.get(c, count) < count}
    held = [0] * count
    for index in owners.values():
        held[index] += 1
    for camera_id in camera_ids:
        if camera_id not in owners:
            index = min(range(count), key=lambda i: (held[i], i))
            owners[camera_id] = index
            held[index] += 1
    return {c: owners[c] for c in camera_ids}


@dataclass
class Peers:
    """This process's place among the server's processes, and what the supervisor told them
    all: the settings and which process pulls each camera (``read()``, at start and on each
    SIGHUP)."""

    index: int
    count: int
    folder: Path
    supervisor: int  # its pid
    secret: str = ""
    owners: dict[str, int] = field(default_factory=dict)
    # the model file's sha256 as the server started: a process that restarts after the file
    # was replaced would serve another model than the others on the same port, and refuses
    model_sha256: str = ""
    # the last reload as the supervisor read it, for each process's metrics: whether it
    # applied the config, and the settings it read that only a restart applies
    reload_ok: bool = True
    restart_pending: list[str] = field(default_factory=list)
    reload_refused: bool = False  # whole: the settings are as before, and nothing is to do
    generation: int = 0  # the settings' own: a refused reload writes the same generation

    @classmethod
    def parse(cls, text: str) -> Peers:
        """From the supervisor's ``--child INDEX:COUNT:SUPERVISOR_PID:FOLDER``."""
        index, count, pid, folder = text.split(":", 3)
        peers = cls(int(index), int(count), Path(folder), int(pid))
        if not 0 <= peers.index < peers.count:
            raise ValueError(f"--child: index {peers.index} is not below count {peers.count}")
        return peers

    @classmethod
    def attach(cls, text: str) -> Peers:
        """This process as the supervisor started it: it stops when the supervisor dies, and
        reads the secret that marks calls forwarded between the processes."""
        peers = cls.parse(text)
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):  # PR_SET_PDEATHSIG: SIGTERM
                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        if os.getppid() != peers.supervisor:
            shutil.rmtree(peers.folder, ignore_errors=True)
            raise SystemExit("convstream serve: the supervisor that started this process is gone")
        # Until the server's own handlers take over, SIGTERM (the supervisor stopping, or dead)
        # ends the process through its exit path, which removes the folder if it must.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        peers.secret = (peers.folder / SECRET).read_text()
        return peers

    def arg(self) -> str:
        return f"{self.index}:{self.count}:{self.supervisor}:{self.folder}"

    def read(self) -> Settings:
        """The settings the supervisor last wrote, with who pulls which camera and the model
        file's sha256 when it started; ConfigError (and nothing changed) if they cannot be
        read."""
        try:
            snapshot = json.loads((self.folder / SNAPSHOT).read_text())
            settings = Settings.model_validate(snapshot["settings"])
            owners = {str(k): int(v) for k, v in snapshot["owners"].items()}
            model_sha256 = str(snapshot.get("model_sha256", ""))
            reload = snapshot.get("reload", {})
            reload_ok, pending = bool(reload.get("ok", True)), list(reload.get("pending", []))
            refused = bool(reload.get("refused", False))
            generation = int(snapshot.get("generation", 0))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"the supervisor's settings could not be read: {exc}") from exc
        self.owners, self.model_sha256 = owners, model_sha256
        self.reload_ok, self.restart_pending = reload_ok, [str(name) for name in pending]
        self.reload_refused, self.generation = refused, generation
        return settings

    def supervisor_gone(self) -> bool:
        """Whether the supervisor has died (killed, crashed): this process has another
        parent now, or its parent is a zombie (Linux: /proc)."""
        if os.getppid() != self.supervisor:
            return True
        try:
            stat = Path(f"/proc/{self.supervisor}/stat").read_text()
        except OSError:
            return False  # not Linux: the parent is as it was
        return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")

    def detach(self) -> None:
        """At exit: a process that outlived its supervisor (killed) removes the folder (its
        secret too). Asked of /proc as well: a dying supervisor may still be the parent.
        Tried again for up to a second while the folder stays: the processes remove it at
        once, and twice in CI it was left, empty, after both had exited (a removal that
        raced the other's, the cause not found; one more try by either takes it)."""
        if not self.supervisor_gone():
            return
        for _ in range(10):
            shutil.rmtree(self.folder, ignore_errors=True)
            if not self.folder.exists():
                return
            time.sleep(0.1)
        with contextlib.suppress(OSError):  # what stays, for the cause not found yet
            left = sorted(p.name for p in self.folder.iterdir())
            logger.warning("the socket folder %s stays, holding %s", self.folder, left or "nothing")

    def address(self, index: int) -> str:
        """Where process ``index`` takes forwarded calls."""
        return f"unix:{self.folder / f'process-{index}.sock'}"

    def owner(self, camera_id: str) -> int | None:
        """The process that pulls a configured camera; None for an id not configured."""
        return self.owners.get(camera_id)

    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    def share(self, cores: int) -> int:
        """This process's share of the cores."""
        return max(1, cores // self.count)

    def forwarded(self, metadata: Any) -> bool:
        """Whether another process of this server forwarded the call (a client cannot say
        so: it does not know the secret)."""
        return any(
            key == FORWARDED and hmac.compare_digest(str(value), self.secret)
            for key, value in metadata or ()
        )

    def forward_metadata(self, metadata: Any) -> tuple[tuple[str, str], ...]:
        """What a forwarded call carries: the caller's token, if any, and the mark."""
        kept = tuple((key, value) for key, value in metadata or () if key == "authorization")
        return (*kept, (FORWARDED, self.secret))


def _in_use(host: str, port: int) -> bool:
    """Whether something already accepts connections on host:port (a wildcard host: on
    loopback). SO_REUSEPORT would let this server's processes join another server's port
    unnoticed, so the supervisor asks first."""
    if port == 0:
        return False
    target = host.strip("[]")
    if target in ("0.0.0.0", ""):
        target = "127.0.0.1"
    elif target == "::":
        target = "::1"
    try:
        with socket.create_connection((target, port), timeout=1):
            return True
    except OSError:
        return False


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


def reload_keeps(current: Settings, loaded: Settings) -> dict[str, str]:
    """What a reload keeps as it was, whatever ``loaded`` says, each with why: "tokens" when
    the config has none (a config templated wrong must not open the server to every caller
    with a log line as the only sign: that takes a restart, on purpose), "tls" when it would
    turn TLS or mutual TLS on or off (gRPC fixes both when the port is bound). A server's
    reload logs and keeps them (``Server.reload``); the supervisor of several processes
    keeps them in the snapshot a restarted process reads (``refusals_kept``)."""
    keeps = {}
    if current.tokens and not loaded.tokens:
        keeps["tokens"] = (
            f"the config has no tokens; kept the {len(current.tokens)} there were: a reload "
            "does not turn tokens off (restart the server to run without them)"
        )
    if (current.tls_cert is None) != (loaded.tls_cert is None):
        keeps["tls"] = "turning TLS on or off needs a restart"
    elif (current.tls_client_ca is None) != (loaded.tls_client_ca is None):
        keeps["tls"] = "turning mutual TLS on or off needs a restart"
    return keeps


def refusals_kept(current: Settings, loaded: Settings) -> Settings:
    """``current`` with what a reload changes taken from ``loaded``, less what the serving
    processes keep (``reload_keeps``). The snapshot had them as loaded, so a process
    restarted after a crash served without tokens, in plaintext, or without asking for
    client certificates, beside processes that kept them, while the log said they were
    kept."""
    update = {name: getattr(loaded, name) for name in RELOADED}
    keeps = reload_keeps(current, loaded)
    if "tokens" in keeps:
        update["tokens"] = current.tokens
    if "tls" in keeps:
        update.update({name: getattr(current, name) for name in TLS_FILES})
    return current.model_copy(update=update)


def model_sha256(model_path: Path | None) -> str:
    """The sha256 of the model file the processes load (the shipped one for None), found
    without importing onnxruntime into the supervisor; "" if it cannot be read (each process
    then says why as it loads)."""
    path = model_path
    if path is None:
        spec = importlib.util.find_spec("convstream.model")
        if spec is None or not spec.submodule_search_locations:
            return ""
        path = Path(spec.submodule_search_locations[0]) / "damage.onnx"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


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
    and passes SIGHUP (reload) and SIGTERM/SIGINT (drain, then stop) on to them.

    The processes run in a session of their own, so a terminal's Ctrl-C or hangup reaches
    only the supervisor, which tells them once. They read their settings from a snapshot the
    supervisor writes (at start and on each SIGHUP), never the config file itself, so a
    process that restarts runs what the others run.
    """

    def __init__(
        self,
        settings: Settings,
        load: Callable[[], Settings],
        reload_asked: threading.Event | None = None,
    ) -> None:
        """reload_asked: set if a SIGHUP came before run() took the signal over."""
        self.settings = settings
        self.load = load  # the settings from the config file, environment and flags, again
        self.count = settings.processes
        self.folder = Path()
        self.children: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.started_at = [0.0] * self.count
        self.failures = [0] * self.count
        self.serving = [False] * self.count
        self.serving_since = [0.0] * self.count
        self.answered_at = [0.0] * self.count  # its last good health check
        self.restart_at: dict[int, float] = {}
        self.owners: dict[str, int] = {}
        self.written_at = 0.0  # when the snapshot last changed
        self.stop_signal: int | None = None
        self.reload_asked = False
        self.reload_asked_early = reload_asked
        self.generation = 0  # of the settings written (Peers.generation)
        self.reload_ok = True  # the last reload's outcome, in the snapshot (Peers)
        self.restart_pending: list[str] = []
        self.reload_refused = False
        self.port = settings.port
        self.configured_port = settings.port  # 0 in the settings, the port bound in self.port
        self.model_sha256 = ""  # the model file's, as the server started

    def run(self) -> int:
        """Until SIGTERM or SIGINT; the exit status of `convstream serve`."""
        if not sys.platform.startswith("linux"):
            # elsewhere SO_REUSEPORT does not spread connections (macOS hands them all to
            # one socket) or does not exist (Windows)
            print(
                fatal(
                    self.settings.log_format,
                    "convstream serve",
                    f"processes = {self.count} needs Linux, whose kernel spreads "
                    f"connections over the processes; this is {sys.platform}: run one process",
                ),
                file=sys.stderr,
            )
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if self.reload_asked_early is not None and self.reload_asked_early.is_set():
            self.reload_asked = True
        address = host_port(self.settings.host, self.settings.port)
        if _in_use(self.settings.host, self.settings.port):
            print(
                fatal(
                    self.settings.log_format,
                    "convstream serve",
                    f"cannot listen on {address}: the port is in use (another "
                    "convstream serve?); choose another with --port or --host",
                ),
                file=sys.stderr,
            )
            return 1
        try:
            held = _reserve(self.settings.host, self.settings.port)
        except OSError as exc:
            print(
                fatal(
                    self.settings.log_format,
                    "convstream serve",
                    f"cannot listen on {address}: {exc.strerror or exc}; "
                    "choose another with --port or --host",
                ),
                file=sys.stderr,
            )
            return 1
        self.folder = Path(tempfile.mkdtemp(prefix="convstream-"))  # mode 0700
        self.model_sha256 = model_sha256(self.settings.model_path)
        try:
            with held:
                self.port = int(held.getsockname()[1])
                secret = self.folder / SECRET
                secret.touch(mode=0o600)
                secret.write_text(secrets.token_hex(16))
                self._write(self.settings)
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
            self.reload_asked = True
        elif self.stop_signal is None:
            self.stop_signal = signum

    def _write(self, settings: Settings) -> None:
        """The snapshot the processes read: the settings (the port as bound), owners, and
        the last reload's outcome (their metrics say it); settings not refused are a new
        generation."""
        if not self.reload_refused:
            self.generation += 1
        self.owners = assign(self.owners, [c.id for c in settings.cameras], self.count)
        self.settings = settings.model_copy(update={"port": self.port})
        snapshot = {
            "settings": self.settings.model_dump(mode="json"),
            "owners": self.owners,
            "model_sha256": self.model_sha256,
            "generation": self.generation,
            "reload": {
                "ok": self.reload_ok,
                "pending": self.restart_pending,
                "refused": self.reload_refused,
            },
        }
        draft = self.folder / (SNAPSHOT + ".new")
        draft.write_text(json.dumps(snapshot))
        draft.replace(self.folder / SNAPSHOT)  # a process reads the old one or the new one
        self.written_at = time.monotonic()

    def _reload(self) -> None:
        """SIGHUP: read the settings again; every serving process applies what a reload
        changes (one that is starting reads it as it starts)."""
        self.reload_asked = False
        try:
            loaded = self.load()
            self.reload_ok = True
            try:
                loaded.read_tls()
            except TLSFileError as exc:
                # As one process's reload does: the files it has stay, the rest applies.
                # Written to the snapshot, files that do not load would stop every process
                # that restarts.
                logger.error("reload: TLS files kept as before: %s", exc)
                self.reload_ok = False
                kept = {n: getattr(self.settings, n) for n in TLS_FILES}
                loaded = loaded.model_copy(update=kept)
            self._check_new_sizes(loaded)
        except (ConfigError, ValueError) as exc:
            logger.error("reload refused, nothing changed: %s", exc)
            # the processes' metrics say so; told to reload, they only read that (a reload
            # of the same settings restarted failed cameras and re-read TLS files)
            self.reload_ok, self.reload_refused = False, True
            self._write(self.settings)
            self._signal_serving(signal.SIGHUP)
            return
        self.reload_refused = False
        keeps = reload_keeps(self.settings, loaded)
        # Kept in the snapshot, these reach no process as a change, and none would say so.
        for name, why in keeps.items():
            (logger.error if name == "tokens" else logger.warning)("reload: %s", why)
        self.reload_ok = self.reload_ok and "tokens" not in keeps
        changed = [
            name
            for name in Settings.model_fields
            if name not in RELOADED
            and getattr(loaded, name)
            != (self.configured_port if name == "port" else getattr(self.settings, name))
        ]
        if changed:
            logger.warning(
                "reload: %s: changes only on restart; kept as before", ", ".join(changed)
            )
        self.restart_pending = [*changed, *keeps]
        self._write(refusals_kept(self.settings, loaded))
        self._signal_serving(signal.SIGHUP)
        logger.info("reload: settings read; every process applies them")

    def _signal_serving(self, signum: int) -> None:
        """Send ``signum`` to every process that serves (one starting reads the snapshot)."""
        for index, child in enumerate(self.children):
            if child is not None and self.serving[index]:
                child.send_signal(signum)

    def _check_new_sizes(self, loaded: Settings) -> None:
        """ConfigError if the model cannot run an input size the reloaded cameras bring. The
        processes refuse such a reload (Server.reload), and so must the snapshot: written, it
        had each process restarted later warm the size up, fail, and start again, its cameras
        never back."""
        sizes = [parse_size(c.input_size) for c in loaded.cameras if c.input_size]
        new = [size for size in dict.fromkeys(sizes) if size not in self.settings.model_shapes()]
        if not new:
            return
        from convstream.model import DamageModel, ModelFileError

        asked = ("the new config's cameras run {} (their input_size)", "set their input_size")
        try:  # the input's fixed sides, read from a CPU session: nothing run, no GPU taken
            model = DamageModel(self.settings.model_path, provider="cpu", intra_op_threads=1)
            model.check_sizes(new, sizes_from=asked)
        except ModelFileError as exc:
            raise ConfigError(str(exc)) from exc

    def _start(self, index: int) -> None:
        peers = Peers(index, self.count, self.folder, os.getpid())
        command = [sys.executable, "-m", "convstream.cli", "serve", "--child", peers.arg()]
        self.children[index] = subprocess.Popen(command, start_new_session=True)
        self.started_at[index] = time.monotonic()
        self.serving[index] = False

    def _check(self, index: int) -> bool:
        """Whether process ``index`` reports SERVING on its Unix socket."""
        address = Peers(index, self.count, self.folder, 0).address(index)
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _now_serving(self, index: int) -> None:
        self.serving[index] = True
        self.serving_since[index] = self.answered_at[index] = time.monotonic()
        child = self.children[index]
        if child is not None and self.written_at > self.started_at[index]:
            child.send_signal(signal.SIGHUP)  # settings changed while it started

    def _wait_started(self) -> int | None:
        """None once every process serves; else the exit status to end with."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(self.serving):
            if self.stop_signal is not None:
                logger.info("signal received while starting: stopping every process")
                return 0
            if self.reload_asked:
                self._reload()
            for index in range(self.count):
                child = self.children[index]
                assert child is not None
                if self.serving[index]:
                    continue
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
                if self._check(index):
                    self._now_serving(index)
            if time.monotonic() > deadline:
                waiting = [str(i) for i in range(self.count) if not self.serving[i]]
                logger.error(
                    "process %s did not start serving in %.0f s; stopping",
                    ", ".join(waiting),
                    START_TIMEOUT_S,
                )
                return 1
            time.sleep(0.1)
        return None

    def _announce(self) -> None:
        where = ", ".join(f"{c} in {k}" for c, k in self.owners.items()) or "none"
        metrics = ""
        if self.settings.metrics_port > 0:
            last = self.settings.metrics_port + self.count - 1
            metrics = f"; metrics on ports {self.settings.metrics_port} to {last}"
        logger.info(
            "convstream serving on %s with %d processes (pids %s; each with 1/%d of the cores "
            "and its own model session; cameras: %s%s); the kernel spreads connections over "
            "them",
            host_port(self.settings.host, self.port),
            self.count,
            ", ".join(str(c.pid) for c in self.children if c is not None),
            self.count,
            where,
            metrics,
        )

    def _watch(self) -> None:
        """Restart what dies, with a backoff, until a signal says stop."""
        while self.stop_signal is None:
            if self.reload_asked:
                self._reload()
            now = time.monotonic()
            for index, child in enumerate(self.children):
                if child is None or index in self.restart_at:
                    continue
                code = child.poll()
                if code is None:
                    if not self.serving[index]:
                        self._watch_start(index, child, now)
                    elif now - self.answered_at[index] > HEALTH_EVERY_S:
                        self._watch_health(index, child, now)
                    continue
                self._schedule_restart(index, child, code, now)
            for index, when in list(self.restart_at.items()):
                if now >= when:
                    del self.restart_at[index]
                    self._start(index)
            time.sleep(0.1)
        logger.info("signal received: every process drains, then stops")
        self._stop_all()

    def _watch_start(self, index: int, child: subprocess.Popen[bytes], now: float) -> None:
        """A restarted process: serving yet, or stuck?"""
        if self._check(index):
            self._now_serving(index)
            logger.info("process %d (pid %d) is serving again", index, child.pid)
        elif now - self.started_at[index] > START_TIMEOUT_S:
            logger.error(
                "process %d (pid %d) did not start serving in %.0f s; killing it",
                index,
                child.pid,
                START_TIMEOUT_S,
            )
            child.kill()

    def _watch_health(self, index: int, child: subprocess.Popen[bytes], now: float) -> None:
        """A serving process that stops answering its health check (wedged, or stopped)
        is killed, and so restarted."""
        if self._check(index):
            self.answered_at[index] = time.monotonic()
        elif now - self.answered_at[index] > STUCK_S:
            logger.error(
                "process %d (pid %d) has not answered for %.0f s; killing it",
                index,
                child.pid,
                now - self.answered_at[index],
            )
            child.kill()

    def _schedule_restart(
        self, index: int, child: subprocess.Popen[bytes], code: int, now: float
    ) -> None:
        ran = now - self.started_at[index]
        served = now - self.serving_since[index] if self.serving[index] else 0.0
        self.serving[index] = False
        # back off unless it had served a while: a process that never starts is no reason
        # to try again at once
        self.failures[index] = 0 if served > STEADY_S else self.failures[index] + 1
        delay = 0.0
        if self.failures[index]:
            delay = RESTART_DELAYS_S[min(self.failures[index], len(RESTART_DELAYS_S)) - 1]
        logger.error(
            "process %d (pid %d) %s after %.0f s; starting it again in %.0f s (its streams "
            "ended; their clients reconnect)",
            index,
            child.pid,
            _ended(code),
            ran,
            delay,
        )
        self.restart_at[index] = now + delay

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
