"""Server settings: one validated model, loaded from a TOML file, the environment and flags.

Later sources win: defaults < TOML file < ``CONVSTREAM_*`` environment < command-line flags.
Unknown keys are refused everywhere, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import math
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from convstream.server.decode import MIN_SIDE
from convstream.v1 import CAMERA_ID, CAMERA_ID_RULE, folded_id
from convstream.v1.pem import PemFiles, read_pem
from convstream.v1.redaction import shown

ENV_PREFIX = "CONVSTREAM_"


class ConfigError(ValueError):
    """The settings could not be loaded; the message names the source and the bad key."""


# Model input sides: below 32 pixels a frame holds too little to judge (frames that small are
# refused too); above 4096 one frame takes seconds and gigabytes (a 4K frame fits 2160x3840).
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 32, 4096
# Frames per second: no camera or video here goes faster, so a rate above it is a mistake in
# a config and not believed in a stream's metadata.
MAX_FPS = 240.0
# A result keeps 16 KiB free for what is added after its feature maps (pipeline's
# _RESULT_SLACK); 128 KiB leaves room beside it for a small frame, its heatmap and, if asked
# for, the input JPEG.
MIN_MESSAGE_BYTES = 128 * 1024
# A connection's idle timeout: gRPC takes milliseconds as a C int, so 24.8 days at most;
# more (or inf) passed the settings and failed the server's start after the model had loaded.
MAX_IDLE_S = 2_000_000.0


def parse_size(text: str) -> tuple[int, int]:
    """'384x640' -> (384, 640); both multiples of 8 from MIN_INPUT_SIDE to MAX_INPUT_SIDE."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"input size must look like HxW, e.g. 384x640, got {text!r}") from None
    ok = all(MIN_INPUT_SIDE <= side <= MAX_INPUT_SIDE and side % 8 == 0 for side in (height, width))
    if not ok:
        raise ValueError(
            f"input size sides must be multiples of 8 from {MIN_INPUT_SIDE} to "
            f"{MAX_INPUT_SIDE}, got {text!r}"
        )
    return height, width


MAX_READ_TIMEOUT_S = 300.0
DEMO_SOURCE = "demo:conveyor"


class CameraConfig(BaseModel):
    """One server-pulled camera. Clients know it by ``id`` only; ``source`` stays here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="the name clients watch it by")
    source: str = Field(
        description="rtsp://, http(s):// (MJPEG or MPEG-TS), tcp://, udp://, a video file, "
        "device:N for a USB camera, or demo:conveyor[?fps=15&seed=0&size=360x640]",
    )
    fps: float = Field(
        0.0, ge=0, le=MAX_FPS, description="frames analysed per second at most; 0: all"
    )
    input_size: str | None = Field(
        None, description="model input HxW; unset: the input_sizes entry closest in aspect"
    )
    # strict: TOML has true and false; "yes" or "no" in quotes is a mistake to point out
    loop: StrictBool = Field(True, description="video files: start again at the end")
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="opening the source")
    read_timeout_s: float = Field(
        5.0, gt=0, le=MAX_READ_TIMEOUT_S, description="one read() of a frame"
    )
    reconnect_min_s: float = Field(
        0.5,
        gt=0,
        le=600,
        description="first retry delay before jitter: the first retry comes after half to all "
        "of it, and each later one doubles it, up to reconnect_max_s",
    )
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="longest retry delay")
    max_reconnects: int = Field(
        0, ge=0, description="failed retries in a row before FAILED; 0: forever"
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, camera_id: str) -> str:
        if not re.fullmatch(CAMERA_ID, camera_id):
            # what lands here by mistake is often the source, password and all
            raise ValueError(f"a camera id is {CAMERA_ID_RULE}; got {shown(camera_id, 80)}")
        return camera_id

    @field_validator("source")
    @classmethod
    def _check_source(cls, source: str) -> str:
        from convstream.server.sources import parse_source  # sources builds on this module

        parse_source(source)
        return source

    @field_validator("input_size")
    @classmethod
    def _check_size(cls, size: str | None) -> str | None:
        if size is not None:
            parse_size(size)
        return size

    @model_validator(mode="before")
    @classmethod
    def _first_delay_within_the_longest(cls, data: Any) -> Any:
        """A config that sets only reconnect_max_s, below the first delay's default: the
        first delay is that too (refused, it named a 0.5 the config never wrote)."""
        if isinstance(data, dict) and "reconnect_min_s" not in data:
            longest = data.get("reconnect_max_s")
            default = cls.model_fields["reconnect_min_s"].default
            if isinstance(longest, int | float) and 0 < longest < default:
                data = {**data, "reconnect_min_s": longest}
        return data

    @model_validator(mode="after")
    def _check_reconnects(self) -> CameraConfig:
        if self.reconnect_min_s > self.reconnect_max_s:  # the longest delay would win
            raise ValueError(
                f"reconnect_min_s {self.reconnect_min_s:g} is longer than reconnect_max_s "
                f"{self.reconnect_max_s:g}, the longest retry delay: expected min <= max"
            )
        return self


class TokenConfig(BaseModel):
    """A bearer token clients may present; only its SHA-256 is kept (`convstream token`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, description="who holds it, for messages")
    role: Literal["watch", "analyze"] = Field(
        description="watch: model info and cameras; analyze: also Analyze and StreamFrames"
    )
    sha256: str = Field(description="hex SHA-256 of the token")
    max_calls: int | None = Field(
        None,
        ge=1,
        description="calls open at once with this token (streams, camera watches, Analyze "
        "calls), at most, in each process; past it RESOURCE_EXHAUSTED. Unset: the server's "
        "max_streams, max_watchers and max_analyze_calls alone",
    )
    cameras: tuple[str, ...] | None = Field(
        None,
        description="the cameras (and published streams) this token may list and watch: "
        "ids, or shell patterns such as 'dock-*'; another's watch is PERMISSION_DENIED and "
        "ListCameras leaves it out. Unset: every camera. Sending frames is its role's alone",
    )

    @field_validator("cameras")
    @classmethod
    def _check_cameras(cls, cameras: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in cameras or ():
            if not pattern.strip() or len(pattern) > 128:
                raise ValueError(
                    f"cameras: expected camera ids or patterns such as 'dock-*' (1 to 128 "
                    f"characters), got {pattern[:40]!r}"
                )
        return cameras

    def may_see(self, camera_id: str) -> bool:
        """Whether this token may list and watch ``camera_id`` (its ``cameras``)."""
        return self.cameras is None or any(fnmatchcase(camera_id, p) for p in self.cameras)

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, sha256: str) -> str:
        # Checked here rather than by a pattern, whose error would print the value: what is
        # pasted there by mistake is usually the token itself, which must not reach the logs.
        # A field's check, so that the error names the sha256 line (a table's named its
        # [[tokens]] header, an operator's review); the table's name is added by _describe.
        if re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            return sha256
        if re.fullmatch(r"[0-9a-fA-F]*", sha256):
            found = f"what is there has {len(sha256)} hex digits"
        elif re.fullmatch(r"[A-Za-z0-9_-]{20,}", sha256):  # as `convstream token` makes
            found = (
                "what is there looks like the token itself — never put the token in the "
                "config (if it is, make a new one: this one has been seen)"
            )
        else:  # a placeholder ("...", "<sha256>") left from an example
            found = f"what is there is {len(sha256)} characters that are not hex digits"
        raise ValueError(
            f"must be the 64-hex SHA-256 of the token, as `convstream token` prints it; {found}"
        )


MAX_AUTO_WORKERS = 64
# Threads of the wide session (one lone frame over several cores). Measured here on 2 cores
# only; a network this small stops gaining long before 64 threads, so wider hosts stop at 8.
MAX_WIDE_THREADS = 8


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity (e.g. a container's cpuset), and no
    more than its cgroup's CPU quota allows, rounded up (`docker --cpus=2`, a Kubernetes CPU
    limit: on a 64-core node, 64 workers would share 2 cores' time, throttled)."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota - 0.01)))


def cpu_quota(cgroup: Path, own: str | None = None) -> float | None:
    """The cores' worth of CPU time this process's cgroup may use, or None for no limit: cgroup
    v2's cpu.max ("150000 100000": 1.5; "max 100000": none), the least of this process's own
    cgroup's and its parents' (a limit set on a pod, the container's cgroup under it), else
    v1's cpu.cfs_quota_us over cpu.cfs_period_us (-1: none). None where unreadable.
    ``own``: the process's cgroup under ``cgroup``, as /proc/self/cgroup says when None."""
    if own is None:
        own = ""
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    own = line[3:].strip("/")
    found: list[float] = []
    folder = cgroup / own
    while True:
        with contextlib.suppress(OSError, ValueError):
            limit, interval = (folder / "cpu.max").read_text().split()[:2]
            found.append(math.inf if limit == "max" else int(limit) / int(interval))
        if folder == cgroup or cgroup not in folder.parents:
            break
        folder = folder.parent
    if found:
        return None if min(found) == math.inf else min(found)
    with contextlib.suppress(OSError, ValueError):
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    return None


@dataclass(frozen=True)
class Scheduling:
    """Inference workers, onnxruntime threads per run, and frames per run at most; the
    onnxruntime threads of the wide session that runs a lone frame (0: none); and the batch
    every run is padded to (0: none; see DamageModel's fixed_batch)."""

    workers: int
    intra_op_threads: int
    max_batch: int
    wide_threads: int = 0
    fixed_batch: int = 0


def _may_share_a_port(a: str, b: str) -> bool:
    """Whether listening on hosts a and b with one port number would clash: the same
    address however written ("::1", "[::1]"), a wildcard (which takes every address), or
    localhost beside a loopback address (gRPC binds localhost as 127.0.0.1 and ::1)."""

    def addresses(host: str) -> set[str] | None:  # None: every address
        host = host.strip("[]").lower()
        if not host:
            return None
        if host == "localhost":
            return {"127.0.0.1", "::1"}
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return {host}  # a name: taken as written
        return None if address.is_unspecified else {str(address)}

    first, second = addresses(a), addresses(b)
    return first is None or second is None or bool(first & second)


class Settings(BaseModel):
    """Everything `convstream serve` can be told."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 exposes it")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int = Field(
        9464,
        ge=-1,
        le=65535,
        description="plain-HTTP port of /metrics, /healthz and /readyz; 0 picks a free one, "
        "-1 turns it off",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address of metrics_port; loopback whatever host is, so exposing gRPC "
        "never exposes the metrics by accident",
    )
    # Every switch is strict, as TOML writes it: "yes" or "no" in quotes is a mistake to point
    # out, not a guess to make (the environment's "true" and "false" are read as TOML's).
    reflection: StrictBool = Field(
        True, description="serve gRPC reflection for grpcurl and friends"
    )
    model_path: Path | None = Field(None, description="an .onnx file; the shipped model if unset")
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="score at or above which a frame is damaged; unset: the model's own, "
        "chosen on rendered validation scenes (set it from your own footage)",
    )
    provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="onnxruntime execution provider; auto takes CUDA when present"
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes sharing the port (the kernel spreads connections over "
        "them) and the cores, each with its own model session and its share of the cameras; "
        "more than 1 only pays where one process's Python is the limit, as with a GPU",
    )
    inference_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="model runs side by side (threads sharing one session); 0 = one per core "
        "this process may use (at most 64) on the CPU provider, 1 on CUDA",
    )
    intra_op_threads: int = Field(
        0, ge=0, le=256, description="onnxruntime threads per run; 0 = the cores / the workers"
    )
    decode_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="threads one stream, call or camera decodes and resizes frames on at "
        "once, and one client's (its token's, or host's) calls together (the pool has one "
        "more, for the others, and one more only cameras take); 0 = one per core",
    )
    spin_wait: StrictBool = Field(
        False,
        description="let idle onnxruntime threads spin: a little less latency back to back, "
        "but a core burnt while idle, which starves decoding on a small CPU",
    )
    reduced_jpeg_decode: StrictBool = Field(
        True,
        description="decode a JPEG at least twice the model input at 1/2, 1/4 or 1/8 scale "
        "inside libjpeg (about 2.4 ms instead of 6 for 720p): faster, but its score differs a "
        "little from the same pixels sent raw or as PNG; false: every frame alike",
    )
    widen_lone_frames: StrictBool = Field(
        True,
        description="on a CPU with several workers, run a frame that finds every worker idle, "
        "nothing else waiting and nothing being decoded on every core (a second onnxruntime "
        "session, up to 8 threads): a lone frame comes back sooner, busy servers are unchanged",
    )
    input_sizes: tuple[str, ...] = Field(
        ("384x640", "480x640", "384x384"),
        min_length=1,
        description="model input sizes HxW (multiples of 8); each frame is letterboxed into "
        "the one whose aspect ratio is closest to its own",
    )
    max_batch: int = Field(
        0,
        ge=0,
        le=256,
        description="frames per inference run at most; 0 = 1 on the CPU provider (a batch "
        "costs more CPU per frame there than single runs side by side), 8 on CUDA, where "
        "every run is padded to it (fixed_shapes): a large value costs a lone frame more",
    )
    fixed_shapes: StrictBool = Field(
        True,
        description="on CUDA, pad every run to max_batch frames and give each input size a "
        "session of its own, so the GPU never sees a new input shape: onnxruntime's CUDA "
        "convolutions choose their kernels again on every new shape (about 100 ms on an H200, "
        "against about 2 ms for a run); ignored on the CPU",
    )
    # No lower than the smallest frame taken (MIN_SIDE a side): below, every frame is refused.
    max_frame_pixels: int = Field(
        40_000_000,
        ge=MIN_SIDE * MIN_SIDE,
        description="width x height above which a frame is refused",
    )
    max_frame_side: int = Field(
        16384, ge=MIN_SIDE, description="width or height above which a frame is refused"
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=MIN_MESSAGE_BYTES,
        le=2**31 - 1,  # gRPC's limits are C ints
        description="largest request or result message",
    )
    max_streams: int = Field(
        64,
        ge=1,
        description="concurrent StreamFrames calls at most (and as many more ended for "
        "results left unread, waiting for their clients to read or leave)",
    )
    max_queued_frames: int = Field(
        1024,
        ge=1,
        description="frames the server holds for streams at most: each stream reserves its "
        "queue_size when it opens; past it the stream is refused (RESOURCE_EXHAUSTED), and "
        "so is a caller's (its token, or its host without tokens) past half of them",
    )
    max_held_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="bytes of frames the server holds for streams at most; past it a lossless "
        "stream waits for room, any other frame is refused alone (RESOURCE_EXHAUSTED; a frame "
        "larger than all of it, INVALID_ARGUMENT)",
    )
    max_analyze_calls: int = Field(
        64, ge=1, description="concurrent Analyze calls at most; past it, RESOURCE_EXHAUSTED"
    )
    stream_queue_size: int = Field(
        4, ge=1, le=1024, description="waiting frames per stream unless the caller sets queue_size"
    )
    grace_period_s: float = Field(
        5.0,
        ge=0,
        description="SIGTERM: the longest open streams get to answer the frames they hold, "
        "then they end with UNAVAILABLE",
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="SIGTERM: seconds health says NOT_SERVING (and /healthz 503) while calls "
        "are still taken, for load balancers to stop sending first; then the drain",
    )
    stream_idle_timeout_s: float = Field(
        300.0,
        gt=0,
        description="a StreamFrames call that sends no frame, or reads no result that waits "
        "for it, this long is ended",
    )
    connection_idle_timeout_s: float = Field(
        3600.0,
        gt=0,
        le=MAX_IDLE_S,
        description="a connection with no call this long is closed (GOAWAY)",
    )
    frame_jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality of result frames")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object a line (for a log shipper)"
    )
    cameras: tuple[CameraConfig, ...] = Field(
        (CameraConfig(id="demo", source=DEMO_SOURCE),),
        description="server-pulled cameras ([[cameras]] tables in TOML); the default is one "
        "synthetic conveyor so a fresh install shows the whole product; [] for none",
    )
    watcher_queue_size: int = Field(
        2, ge=1, le=1024, description="results waiting per WatchCamera call by default"
    )
    max_watchers: int = Field(256, ge=1, description="concurrent WatchCamera calls at most")
    max_watcher_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        description="bytes of results waiting for all WatchCamera calls together (the one "
        "being sent counted twice); one call keeps at most a quarter (but always its newest "
        "result), and drops its oldest past it; over it, new watches are refused and those "
        "reading nothing for 10 s ended",
    )

    tls_cert: Path | None = Field(None, description="PEM certificate chain: turns TLS on")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA of client certificates: turns mutual TLS on"
    )
    tokens: tuple[TokenConfig, ...] = Field(
        (), description="bearer tokens ([[tokens]] in TOML); none: no token needed"
    )

    @model_validator(mode="after")
    def _check_metrics_ports(self) -> Settings:
        last = self.metrics_port + self.processes - 1
        if self.metrics_port > 0 and last > 65535:
            raise ValueError(
                f"metrics_port {self.metrics_port} with {self.processes} processes needs ports "
                f"up to {last}, past 65535 (each process takes the next port); choose a lower "
                "metrics_port"
            )
        same_host = _may_share_a_port(self.host, self.metrics_host)
        if self.metrics_port > 0 and same_host and self.metrics_port <= self.port <= last:
            taken = (
                f"metrics_port {self.metrics_port}"
                if self.processes == 1
                else f"metrics_port {self.metrics_port} with {self.processes} processes (ports "
                f"{self.metrics_port}-{last}, one each)"
            )
            raise ValueError(
                f"{taken} takes port {self.port}, the gRPC port: the two need ports of their "
                "own; choose another metrics_port (9464 by default), or -1 to turn it off"
            )
        return self

    @model_validator(mode="after")
    def _check_queues(self) -> Settings:
        if self.max_queued_frames < self.stream_queue_size:
            raise ValueError(
                f"max_queued_frames {self.max_queued_frames} is below stream_queue_size "
                f"{self.stream_queue_size}: every stream reserves its queue when it opens, so "
                "none could open; raise max_queued_frames or lower stream_queue_size"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both for TLS, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self

    def read_tls(self) -> PemFiles | None:
        """The TLS files read and checked, or None without TLS.

        Raises:
            TLSFileError: a file is missing, unusable, expired or not yet valid; the message
                names its setting (gRPC itself would only log "Invalid private key" and then
                fail to bind the port). Start and --check-config call this; validating the
                settings does not, so that a reload whose new TLS files fail still applies
                the rest (a revoked token) and keeps the files it had.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        return read_pem(self.tls_cert, self.tls_key, self.tls_client_ca, host=self.host)

    @field_validator("threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: object) -> object:
        """A score from 0 to 1: NaN said as such, and a percentage told as one (from the
        environment too, where it is text)."""
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value  # pydantic says it is no number
        if isinstance(number, int | float) and not isinstance(number, bool):
            if math.isnan(number):
                raise ValueError("must be a score from 0 to 1, got nan")
            if 1 < number <= 100:
                raise ValueError(
                    f"must be a score from 0 to 1, got {number:g} (a percentage? then "
                    f"{number / 100:g})"
                )
        return value

    @field_validator("host", "metrics_host")
    @classmethod
    def _check_host(cls, host: str, info: ValidationInfo) -> str:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if ":" in bare:
            try:
                ipaddress.IPv6Address(bare)
            except ValueError:
                flag = "--port" if info.field_name == "host" else "--metrics-port"
                raise ValueError(
                    f"{info.field_name} is an address without a port, got {host!r}; give the "
                    f"port with {flag} ({flag[2:].replace('-', '_')} in the config file)"
                ) from None
        return host

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: tuple[CameraConfig, ...]) -> tuple[CameraConfig, ...]:
        # Ids that read alike ("dock-3" and "Dock_3") are two tiles an operator cannot tell
        # apart; a client stream published under such a name is refused too.
        seen: dict[str, str] = {}
        for camera in cameras:
            other = seen.get(folded_id(camera.id))
            if other == camera.id:
                raise ValueError(f"camera id {camera.id!r} is listed twice")
            if other is not None:
                raise ValueError(
                    f"camera ids {other!r} and {camera.id!r} read alike (ids are compared "
                    "without case, '-', '_' or '.', and with 0 as o and 1 and i as l): an "
                    "operator cannot tell them apart; rename one"
                )
            seen[folded_id(camera.id)] = camera.id
        return cameras

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, tokens: tuple[TokenConfig, ...]) -> tuple[TokenConfig, ...]:
        # One token, two tables: the last one's role won, so a line appended by mistake could
        # quietly give a watch token the analyze role (or take it away).
        seen: dict[str, str] = {}
        names: set[str] = set()
        for token in tokens:
            digest = token.sha256.lower()
            if digest in seen:
                raise ValueError(
                    f"tokens {seen[digest]!r} and {token.name!r} have the same sha256: one "
                    "token, one table (give each holder a token of its own)"
                )
            seen[digest] = token.name
            # The log, the refusals and a revocation name a token by its name: two of one
            # name (a watch and an analyze one) could not be told apart there.
            if token.name in names:
                raise ValueError(
                    f"two tokens are named {token.name!r}: the log and its refusals name a "
                    f"token by its name, so give each its own (while replacing one, say "
                    f"{token.name + '-old'!r} for the token on its way out)"
                )
            names.add(token.name)
        return tokens

    @field_validator("input_sizes")
    @classmethod
    def _check_sizes(cls, sizes: tuple[str, ...]) -> tuple[str, ...]:
        for size in sizes:
            parse_size(size)
        return sizes

    def scheduling(self, *, gpu: bool, cores: int) -> Scheduling:
        """How inference runs, the 0 (automatic) settings resolved for this host.

        On a CPU, one single-threaded run per core, each frame alone, beats one run spread
        over every core (which waits at onnxruntime's barriers whenever decoding holds a core)
        and beats batches (which cost more CPU per frame): benchmarks/bench_served.py
        --choices measures each. On a GPU, one worker feeding batches is what pays.
        """
        workers = self.inference_workers or (1 if gpu else min(cores, MAX_AUTO_WORKERS))
        threads = self.intra_op_threads or max(1, cores // workers)
        widen = self.widen_lone_frames and not gpu and workers > 1 and threads < cores
        max_batch = self.max_batch or (8 if gpu else 1)
        return Scheduling(
            workers=workers,
            intra_op_threads=threads,
            max_batch=max_batch,
            wide_threads=min(cores, MAX_WIDE_THREADS) if widen else 0,
            fixed_batch=max_batch if gpu and self.fixed_shapes else 0,
        )

    def input_shapes(self) -> list[tuple[int, int]]:
        """input_sizes as (height, width) pairs."""
        return [parse_size(s) for s in self.input_sizes]

    def model_shapes(self) -> list[tuple[int, int]]:
        """Every (height, width) the model is known to see at start: input_sizes, then the
        cameras' own input_size, each once (what the server warms up)."""
        return list(dict.fromkeys([*map(parse_size, self.input_sizes), *self.camera_shapes()]))

    def camera_shapes(self) -> list[tuple[int, int]]:
        """The (height, width) the cameras' own input_size sets, each once (a reload may
        change these; input_sizes changes only on restart)."""
        return list(dict.fromkeys(parse_size(c.input_size) for c in self.cameras if c.input_size))


# CONVSTREAM_* variables that are not server settings, read by others: the config file's
# path (here, before the settings), the client commands' token and server address (a shell
# may hold both a client's and a server's), and scripts/run.sh's dashboard port
NOT_SETTINGS = tuple(
    f"{ENV_PREFIX}{name}" for name in ("CONFIG", "TOKEN", "ADDRESS", "DASHBOARD_PORT")
)


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in fields:
            # a typo of a client's variable (CONVSTREAM_ADRESS) is named as that one
            others = [n[len(ENV_PREFIX) :].lower() for n in NOT_SETTINGS]
            guess = close_match(name, [*fields, *others])
            hint = f"did you mean {ENV_PREFIX}{guess.upper()}? " if guess else ""
            raise ConfigError(
                f"unknown setting {key}; {hint}known: {', '.join(sorted(fields))}, and "
                f"{', '.join(NOT_SETTINGS)}, which are not settings"
            )
        if name in ("cameras", "tokens"):
            raise ConfigError(f"{key}: {name} are configured in the TOML file")
        if name == "input_sizes":
            values[name] = raw.split(",")
        elif fields[name].annotation is bool:  # TOML's words; anything else is refused
            values[name] = {"true": True, "false": False}.get(raw, raw)
        else:
            values[name] = raw
    return values


def _quoted_numbers(toml: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Where and what for each number the TOML file writes in quotes (port = "51100"): TOML
    has numbers, so a quoted one is a string that pydantic would take as the number it
    spells, and the same mistake in a switch is refused (the environment's values are all
    strings, and are taken)."""
    tables: list[tuple[tuple[Any, ...], Mapping[str, Any], type[BaseModel]]] = [
        ((), toml, Settings)
    ]
    entries: dict[str, type[BaseModel]] = {"cameras": CameraConfig, "tokens": TokenConfig}
    for name, table_model in entries.items():
        if isinstance(listed := toml.get(name), list):
            tables += [
                ((name, i), t, table_model) for i, t in enumerate(listed) if isinstance(t, dict)
            ]
    found = []
    for prefix, table, model in tables:
        for key, value in table.items():
            field = model.model_fields.get(key)
            kind = _number_kind(field.annotation) if field is not None else None
            if kind is None or not isinstance(value, str):
                continue
            if (number := _as_toml(kind, value)) is None:
                continue  # not a number of its kind: pydantic says what was expected
            where = f"{prefix[0]}[{prefix[1]}].{key}" if prefix else key
            found.append(
                (
                    (*prefix, key),
                    f"{where}: expected a number (unquoted in TOML), got {value!r}: write "
                    f"{key} = {number}",
                )
            )
    return found


def _number_kind(annotation: Any) -> type | None:
    """int or float for a number field (one that may also be None, as threshold), else None."""
    kinds = set(typing.get_args(annotation)) - {type(None)} or {annotation}
    return float if kinds == {float} else int if kinds == {int} else None


def _as_toml(kind: type, text: str) -> str | None:
    """The number a quoted text spells, written as TOML writes it, if it is one of this kind
    (which pydantic would take): "05" is 5, ".5" 0.5 and "Infinity" inf; "1.5" and "1e4" are
    no int, "nan" no setting's, and digits other than ASCII's no TOML number."""
    if not text.isascii():
        return None
    try:
        number = kind(text)
    except ValueError:
        return None
    if math.isnan(number):
        return None
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))  # fps = 15, which a float setting takes as well
    return repr(number)


def close_match(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` is most likely a typo of, if one is close enough."""
    found = difflib.get_close_matches(name, list(known), n=1)
    return found[0] if found else None


def config_path(path: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The TOML file load_settings reads: ``path``, else the one CONVSTREAM_CONFIG names."""
    if path is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        return Path(environ[f"{ENV_PREFIX}CONFIG"])
    return path


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, a TOML file, CONVSTREAM_* variables and overrides; validate once.

    Args:
        path: a TOML file whose top-level keys are Settings fields; CONVSTREAM_CONFIG names
            one when path is None.
        environ: the environment (os.environ by default).
        overrides: values from command-line flags; None values are ignored.
    """
    environ = os.environ if environ is None else environ
    path = config_path(path, environ)
    toml: dict[str, Any] = {}
    if path is not None:
        try:
            # utf-8-sig: Windows' Notepad starts the file with a byte-order mark, which
            # tomllib called "Invalid statement (at line 1, column 1)"
            toml = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"cannot read config file {path}: it is not UTF-8 text (byte {exc.start}); "
                "save it as UTF-8"
            ) from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    merged = dict(toml)
    from_env = _from_env(environ)
    merged.update(from_env)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged.update(flags)
    variables = {name: f"{ENV_PREFIX}{name.upper()}" for name in from_env if name not in flags}
    # a key the environment or a flag replaces is not read from the file (as a switch's)
    written = {k for k in toml if k not in from_env | flags}  # read from the file
    found = _quoted_numbers({k: v for k, v in toml.items() if k in written})
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        found += [
            (e["loc"], _describe(e, variables, merged)) for e in exc.errors(include_url=False)
        ]
        cause: Exception | None = exc
    else:
        cause = None
    text = ""
    if path is not None and found:
        with contextlib.suppress(OSError, UnicodeDecodeError):  # read above: gone since?
            text = path.read_text(encoding="utf-8-sig")
    lines = []
    for loc, described in found:  # with the file's line, for what the file gave
        number = _line_of(text, loc, written)
        lines.append(described if number is None else f"line {number}: {described}")
    if lines:
        where = f"{path}, " if path is not None else ""
        raise ConfigError(
            f"invalid settings (from {where}{ENV_PREFIX}* variables and flags):\n  "
            + "\n  ".join(lines)
        ) from cause
    return settings


# the key a table's entries are known by, said beside an error in one of them
_NAMED_BY = {"cameras": "id", "tokens": "name"}


def _line_of(text: str, loc: tuple[Any, ...], written: set[str]) -> int | None:
    """The line of the TOML file an error at ``loc`` is about: its ``key =`` at the top
    level, or in the n-th ``[[cameras]]`` (or ``[[tokens]]``) table, or that table's header;
    None for a setting the file did not give, or that cannot be told (an inline table)."""
    if not loc or loc[0] not in written:
        return None
    lines = text.splitlines()
    table = re.compile(r"\s*\[")
    start, end, key = 0, len(lines), loc[0]
    if len(loc) >= 2 and isinstance(loc[1], int) and loc[0] in ("cameras", "tokens"):
        header = re.compile(rf"\s*\[\[\s*{re.escape(str(loc[0]))}\s*\]\]")
        headers = [i for i, line in enumerate(lines) if header.match(line)]
        if loc[1] >= len(headers):
            return None
        start = headers[loc[1]]
        end = next((i for i in range(start + 1, len(lines)) if table.match(lines[i])), end)
        if len(loc) == 2 or isinstance(loc[2], int):
            return start + 1
        key = loc[2]
    else:
        end = next((i for i, line in enumerate(lines) if table.match(line)), end)
    assignment = re.compile(rf"\s*[\"']?{re.escape(str(key))}[\"']?\s*=")
    found = next((i for i in range(start, end) if assignment.match(lines[i])), None)
    if found is None:
        return start + 1 if start else None  # a key missing from a table: the table's header
    return found + 1


def _describe(
    error: Any, variables: Mapping[str, str], given: Mapping[str, Any] | None = None
) -> str:
    """One pydantic error as one line: where (and the environment variable, when the value
    came from one), what was expected, and what arrived when that is a single value
    (shortened, passwords in URLs hidden; never a whole table, which would print every
    camera's source)."""
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
    ).lstrip(".")
    where = where or "settings"
    loc = error["loc"]
    if len(loc) >= 2 and loc[0] in _NAMED_BY and isinstance(loc[1], int) and given:
        # a camera by its id too: "cameras[7]" sent a reader counting tables
        entries = given.get(loc[0])
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        name = entry.get(_NAMED_BY[loc[0]]) if isinstance(entry, dict) else None
        key = _NAMED_BY[loc[0]]
        if isinstance(name, str) and name and loc[2:3] != (key,):  # its id's own error has it
            where += f" ({loc[0].rstrip('s')} {shown(name, 40)})"
    if error["loc"] and error["loc"][0] in variables:
        where += f" (from {variables[error['loc'][0]]})"
    if error["type"] == "extra_forbidden":
        loc = error["loc"]
        tables: dict[str, type[BaseModel]] = {"cameras": CameraConfig, "tokens": TokenConfig}
        model = tables.get(loc[0], Settings) if len(loc) > 1 else Settings
        if model is not Settings and len(loc) == 3 and loc[-1] in Settings.model_fields:
            # TOML puts every key after a [[cameras]] header into that table, to its end
            return (
                f"{where}: {loc[-1]} is a top-level setting, and a key written below a "
                f"[[{loc[0]}]] table belongs to that table in TOML: move it above the first "
                f"[[{loc[0]}]]"
            )
        guess = close_match(str(loc[-1]), model.model_fields)
        hint = f"; did you mean {guess!r}?" if guess else ""
        return f"{where}: unknown setting{hint} (docs/server.md lists them all)"
    value = error.get("input")
    if error["loc"] in (("cameras",), ("tokens",)) and isinstance(value, dict):
        table = error["loc"][0]
        return (
            f"{table}: expected [[{table}]] tables (two brackets: one table per entry), got a "
            f"single [{table}] table"
        )
    if error["type"] in ("value_error", "missing") or isinstance(value, dict | list | tuple):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across settings, whose message names them
            return str(message)
        return f"{where}{' ' if message.startswith('(') else ': '}{message}"
    if "sha256" in error["loc"]:  # a token's hash, or the token pasted there by mistake
        return f"{where}: {error['msg']}"
    if error["type"] == "string_type" and type(value) in (int, float):
        key = error["loc"][-1]  # an index, for an item of a list (input_sizes = [640])
        if key == "source" and type(value) is int:  # OpenCV's VideoCapture(0)
            usb = f'source = "device:{value}"'
            return f"{where}: expected a string, got {value}: a USB camera is {usb}"
        advice = f': write {key} = "{value}"' if isinstance(key, str) else ""
        return f"{where}: expected a string (in quotes in TOML), got {value}{advice}"
    if error["type"] == "bool_type":
        toml = "" if error["loc"][0] in variables else " (unquoted in TOML)"
        return f"{where}: expected true or false{toml}, got {shown(value)}"
    return f"{where}: {error['msg']}, got {shown(value)}"
