"""The `convstream` command: `convstream serve` runs the server; client commands sit beside it."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convstream.server import Settings
    from convstream.server.processes import Peers


# SIGHUP's default action ends the process. Until the server's own handler takes over, after the
# model has loaded and warmed up (seconds; longer on a GPU), a reload (`systemctl reload` just
# after a start) would stop the server for good, and systemd counts that as a clean exit, not
# one to restart after. `serve` remembers it instead and reloads once it serves.
_RELOAD_ASKED = threading.Event()


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the convstream gRPC server. Settings come from a TOML file "
        "(--config or CONVSTREAM_CONFIG), CONVSTREAM_* variables, then these flags.",
    )
    p.add_argument("--config", type=Path, help="a TOML settings file")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks one)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="HTTP port of /metrics, /healthz and /readyz (default 9464; 0 picks one; -1 off)",
    )
    p.add_argument(
        "--metrics-host",
        help="address of the metrics port (default 127.0.0.1, whatever --host is)",
    )
    p.add_argument(
        "--provider",
        choices=("auto", "cpu", "cuda"),
        help="execution provider (default auto: CUDA where onnxruntime-gpu has a GPU, else CPU)",
    )
    p.add_argument(
        "--processes",
        type=int,
        help="server processes sharing the port and the cores (default 1; more pays where "
        "one process's Python is the limit, as on a GPU: docs/production.md, 'GPU')",
    )
    # one process of several, as the supervisor starts it (processes.py)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", dest="model_path", type=Path, help="an .onnx model file")
    p.add_argument(
        "--input-sizes",
        nargs="+",
        help="model input sizes (default 384x640 480x640 384x384: 16:9, 4:3, square)",
    )
    p.add_argument(
        "--no-reflection",
        dest="reflection",
        action="store_false",
        default=None,
        help="do not serve gRPC reflection",
    )
    # one or the other: given both, the cameras of --camera ran, or none, by their order
    pulled = p.add_mutually_exclusive_group()
    pulled.add_argument(
        "--camera",
        dest="cameras",
        action="append",
        metavar="ID=SOURCE",
        help="a camera to pull, e.g. dock-3=rtsp://10.0.0.7/stream (repeatable; replaces the "
        "config's cameras; per-camera options go in the TOML file)",
    )
    pulled.add_argument(
        "--no-cameras",
        dest="cameras",
        action="store_const",
        const=[],
        help="pull no cameras (not even the demo conveyor)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="the least severe log lines written to stderr (default info)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text (default) or one JSON object a line, for a log shipper",
    )
    # one or the other: given both, only the check ran, and no settings were printed
    once = p.add_mutually_exclusive_group()
    once.add_argument(
        "--check-config",
        action="store_true",
        help="check the settings (TOML, environment, flags), the TLS files and the model, "
        "print what would run, and exit: 0 if it would start, 2 if not. Run it before a "
        "SIGHUP reload",
    )
    once.add_argument(
        "--print-settings",
        action="store_true",
        help="print where serve would listen and what it would pull as one JSON object "
        "(address, the address a client here dials, TLS, token count, camera ids and kinds; "
        "no secrets) and exit, without loading the model: for scripts, e.g. scripts/run.sh",
    )
    p.set_defaults(func=_serve)


def _camera_flags(values: list[str] | None) -> list[dict[str, str]] | None:
    if values is None:
        return None
    cameras = []
    for value in values:
        camera_id, sep, source = value.partition("=")
        if not sep or not camera_id or not source:
            from convstream.v1.redaction import shown  # passwords hidden, as everywhere

            raise ValueError(
                f"--camera takes ID=SOURCE, e.g. dock-3=rtsp://host/path; got {shown(value, 200)}"
            )
        cameras.append({"id": camera_id, "source": source})
    return cameras


def _serve(args: argparse.Namespace) -> int:
    from convstream.server import ConfigError, load_settings

    if args.child:
        return _leave(_serve_child(args.child))
    keys = (
        "host",
        "port",
        "metrics_port",
        "metrics_host",
        "provider",
        "processes",
        "model_path",
        "input_sizes",
        "reflection",
        "log_level",
        "log_format",
    )

    def read() -> Settings:
        overrides = {k: getattr(args, k) for k in keys}
        overrides["cameras"] = _camera_flags(args.cameras)
        return load_settings(args.config, overrides=overrides)

    def load() -> Settings:  # a reload's: the log is set up by then
        settings = read()
        for warning in _readable_passwords(args.config):
            logging.getLogger("convstream.server.config").warning("reload: %s", warning)
        return settings

    try:
        settings = read()
        pem = settings.read_tls()  # now, not after the model has loaded
    except (ConfigError, ValueError) as exc:  # TLSFileError is a ValueError
        # as the log's lines would be: with --log-format json, a shipper parsed every line
        # but the one that said why the server did not start
        from convstream.v1.logs import fatal

        config = str(args.config) if args.config else None
        json_lines = _early_setting(args.log_format, config, "log_format") == "json"
        print(
            fatal("json" if json_lines else "text", "convstream serve", str(exc)), file=sys.stderr
        )
        return 2
    warnings = _readable_passwords(args.config)
    if args.check_config:
        return _check_config(settings, [*warnings, *([] if pem is None else pem.warnings)])
    if args.print_settings:
        print(json.dumps(_settings_json(settings)))
        return 0
    from convstream.v1.logs import set_up

    set_up(settings.log_level, settings.log_format)
    for warning in warnings:
        logging.getLogger("convstream.server.config").warning("%s", warning)
    if settings.processes > 1:
        from convstream.server.processes import Supervisor

        return Supervisor(settings, load, _RELOAD_ASKED).run()
    return _leave(_run_server(settings, load, None))


def _leave(status: int) -> int:
    """The server's exit status; or, while a camera's reader is still inside OpenCV (an open
    a stop let go, camera.py), the process ends here without finalising the interpreter:
    that open returning while the interpreter finalised killed its thread inside OpenCV's
    C++, and the stop aborted (SIGABRT, "terminate called without an active exception",
    exit 134 and a core dump under systemd). Logs and output are flushed first."""
    from convstream.server.camera import READER_PREFIX

    stuck = [t.name for t in threading.enumerate() if t.name.startswith(READER_PREFIX)]
    if not stuck:
        return status
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _readable_passwords(path: Path | None) -> list[str]:
    """A warning when the config file holds a password (in a camera's URL) that every user
    of this machine can read."""
    from convstream.server.config import config_path
    from convstream.v1.pem import readable_by_all
    from convstream.v1.redaction import names_a_secret

    path = config_path(path, os.environ)
    if path is None or (mode := readable_by_all(path)) is None:
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []  # load_settings read it: changed since, the next reload says so
    found = [
        number
        for number, line in enumerate(lines, 1)
        if not line.lstrip().startswith("#") and names_a_secret(line)
    ]
    if not found:
        return []
    where = ", ".join(map(str, found[:5])) + (", ..." if len(found) > 5 else "")
    return [
        f"config {path} holds a password (line{'s' * (len(found) > 1)} {where}) and every user "
        f"of this machine can read it ({mode}): chmod 600 {path}"
    ]


def _serve_child(child: str) -> int:
    """One of several processes of one server, as its supervisor starts it (processes.py):
    its settings come from the supervisor, and its log lines and errors say which it is."""
    from convstream.server import ConfigError
    from convstream.server.processes import Peers

    peers = Peers.attach(child)
    try:
        try:
            settings = peers.read()
        except ConfigError as exc:
            print(f"convstream serve [process {peers.index}]: {exc}", file=sys.stderr)
            return 2
        from convstream.v1.logs import set_up

        set_up(settings.log_level, settings.log_format, f"{peers.index}/{peers.count}")
        return _run_server(settings, peers.read, peers)
    finally:
        peers.detach()


def _run_server(settings: Settings, load: Callable[[], Settings], peers: Peers | None) -> int:
    import asyncio  # here: its import took 40 of the 52 ms before SIGHUP was taken over

    from convstream.model import ModelFileError
    from convstream.server import serve
    from convstream.server.malloc import limit_arenas
    from convstream.v1.logs import fatal
    from convstream.v1.pem import TLSFileError
    from convstream.v1.rlimit import raise_open_files

    who = "convstream serve" if peers is None else f"convstream serve [process {peers.index}]"
    limit_arenas()  # before the server's threads: RSS 14% lower (malloc.py)
    raise_open_files("the server")  # one a connection: 1024 let 1,100 idle ones lock all out
    try:
        asyncio.run(serve(settings, reload=load, peers=peers, reload_asked=_RELOAD_ASKED))
    except ModelFileError as exc:
        print(fatal(settings.log_format, who, f"model_path: {exc}"), file=sys.stderr)
        return 2
    except TLSFileError as exc:  # changed since the start checked them (a process restarting)
        print(fatal(settings.log_format, who, str(exc)), file=sys.stderr)
        return 2
    except OSError as exc:
        print(fatal(settings.log_format, who, str(exc)), file=sys.stderr)
        return 1
    return 0


def _settings_json(settings: Settings) -> dict[str, object]:
    """What `serve --print-settings` prints: what a script needs to find and reach the server
    as these settings would run it (the TOML file, CONVSTREAM_* and the flags, as serve
    merges them), with no source URL, path or token in it."""
    from convstream.server.sources import parse_source
    from convstream.v1 import dial_host as local_host
    from convstream.v1 import host_port

    # a server on every interface is reached here on loopback; port 0 is known only once bound
    dial_host = local_host(settings.host)
    return {
        "host": settings.host,
        "port": settings.port,
        "dial_host": dial_host,
        "dial_address": host_port(dial_host, settings.port) if settings.port else None,
        "metrics_port": settings.metrics_port,
        # each process its own: metrics_port, metrics_port + 1, ... (0: any free one; -1: none)
        "metrics_ports": [settings.metrics_port + i for i in range(settings.processes)]
        if settings.metrics_port > 0
        else [],
        "metrics_dial_host": local_host(settings.metrics_host),
        "processes": settings.processes,
        "tls": settings.tls_cert is not None,
        "tokens": len(settings.tokens),
        "cameras": [
            {"id": camera.id, "kind": parse_source(camera.source).kind}
            for camera in settings.cameras
        ],
    }


def _check_config(settings: Settings, warnings: list[str]) -> int:
    """What `serve --check-config` prints: the settings as they would run, or why not."""
    from convstream.model import DamageModel, ModelFileError
    from convstream.model.runtime import CUDA
    from convstream.server.app import (
        bind_failure,
        demo_warning,
        exposure_warning,
        metrics_exposure_warning,
        shared_source_warning,
    )
    from convstream.server.processes import assign
    from convstream.server.security import scope_text
    from convstream.server.sources import parse_source, unreadable_video
    from convstream.v1 import host_port

    try:
        from convstream.model import wants_cuda

        # the provider asked for, so that a GPU that would not load is said now, not at start;
        # and the batch the server would pad to there (fixed_batch does not depend on cores)
        plan = settings.scheduling(gpu=wants_cuda(settings.provider), cores=1)
        model = DamageModel(
            settings.model_path, provider=settings.provider, fixed_batch=plan.fixed_batch
        )
        # the sizes the server warms up at start, so that what it could not run is said now
        model.warm_up(settings.model_shapes(), plan.max_batch)
    except ModelFileError as exc:
        print(f"convstream serve: model_path: {exc}", file=sys.stderr)
        return 2
    # The addresses, not the ports (a running server holds those during a reload): a name
    # that does not resolve here, or an address that is not this machine's, cannot be bound.
    hosts = {"host": settings.host}
    if settings.metrics_port >= 0:
        hosts["metrics_host"] = settings.metrics_host
    for setting, host in hosts.items():
        why = bind_failure(host, 0)
        if why is not None:
            print(f"convstream serve: {setting} {host}: {why}", file=sys.stderr)
            return 2
    tls = "off"
    if settings.tls_cert is not None:
        tls = "mutual (client certificates from tls_client_ca)" if settings.tls_client_ca else "on"
    tokens = (
        ", ".join(
            f"{t.name} ({t.role}"
            + (f", cameras {scope_text(t)}" if t.cameras is not None else "")
            + (f", {t.max_calls} calls at most" if t.max_calls else "")
            + ")"
            for t in settings.tokens
        )
        or "none"
    )
    metrics = "off"
    if settings.metrics_port >= 0:
        metrics = host_port(settings.metrics_host, settings.metrics_port)
        if settings.processes > 1 and settings.metrics_port > 0:
            metrics += f" to {settings.metrics_port + settings.processes - 1}, one per process"
    cameras: list[str] = []
    owners = assign({}, [c.id for c in settings.cameras], settings.processes)
    for camera in settings.cameras:
        spec = parse_source(camera.source)
        cap = (
            f", at most {camera.fps:g} frame{'' if camera.fps == 1 else 's'}/s"
            if camera.fps
            else ""
        )
        looped = ", looped" if spec.kind == "file" and camera.loop else ""
        where = f", process {owners[camera.id]}" if settings.processes > 1 else ""
        cameras.append(
            f"  camera       {camera.id} ({spec.kind}{cap}{looped}{where}): {spec.describe()}"
        )
        if spec.kind == "file" and not Path(spec.target).is_file():
            seen = Path(spec.target)
            where_from = "" if seen.is_absolute() else f", {Path.cwd() / seen} from here"
            warnings.append(
                f"camera {camera.id}: no video file at {spec.target} (as this user sees it"
                f"{where_from}): it would be FAILED; relative paths are taken from the folder "
                "the server starts in, not the config file's"
            )
        elif spec.kind == "file" and (why := unreadable_video(Path(spec.target))):
            warnings.append(f"camera {camera.id}: {spec.target} {why}: it would be FAILED")
        if spec.kind == "device" and not Path(f"/dev/video{spec.device}").exists():
            warnings.append(
                f"camera {camera.id}: no /dev/video{spec.device} on this host (yet): it would "
                "be retried until one is plugged in"
            )
    if settings.provider == "cuda" and model.provider != CUDA:
        warnings.append(
            f"provider cuda: this host's onnxruntime runs {model.provider} (the lines above "
            "say why): the server would run on the CPU"
        )
    exposed = exposure_warning(settings, tls=settings.tls_cert is not None)
    for warning in (
        exposed,
        metrics_exposure_warning(settings),
        demo_warning(settings),
        shared_source_warning(settings),
    ):
        if warning:
            warnings.append(warning)
    address = host_port(settings.host, settings.port)
    verdict = f"config OK, {len(warnings)} warning(s) below" if warnings else "config OK"
    print(f"{verdict}: convstream serve would listen on {address}")
    print(f"  TLS          {tls}")
    print(f"  tokens       {tokens}")
    print(f"  metrics      {metrics}")
    threshold = settings.threshold if settings.threshold is not None else model.threshold
    source = "the model's own" if model.threshold_in_file else "a default: the model has none"
    if settings.threshold is not None:  # from the file, a variable or a flag
        source = f"set; the model's own is {model.threshold:.6g}"
        if not model.threshold_in_file:
            source = "set; the model has none of its own"
    print(f"  model        {model.path} (sha256 {model.sha256[:12]}...)")
    print(f"  provider     {model.provider} ({settings.provider} asked for)")
    if settings.processes > 1:
        print(
            f"  processes    {settings.processes}, sharing the port and the cores, each with "
            "its own model session and its share of the cameras"
        )
    print(f"  threshold    {threshold:.6g} ({source})")
    print(f"  input sizes  {', '.join(settings.input_sizes)}")
    print("\n".join(cameras) if cameras else "  cameras      none")
    for warning in warnings:
        print(f"warning: {warning}")
    return 0


def _add_samples(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "samples",
        help="write rendered warehouse frames to try the server on",
        description="Render warehouse frames (the same renderer the model was trained on, "
        "with seeds it never saw) as JPEG files; about half show damaged packages. With "
        "--clip, also a video of the server's demo camera.",
    )
    p.add_argument(
        "directory",
        type=Path,
        help="where the JPEG files (and --clip's video) go, created if needed",
    )
    p.add_argument("--count", type=int, default=8, help="how many frames (default 8)")
    p.add_argument(
        "--by-label",
        action="store_true",
        help="write them into DIRECTORY/damaged/ and DIRECTORY/intact/, the layout "
        "`convstream evaluate` reads",
    )
    p.add_argument(
        "--size",
        default="720x1280",
        help=f"HxW of each frame, {SAMPLE_MIN_SIDE} to {SAMPLE_MAX_SIDE} a side (default 720x1280)",
    )
    p.add_argument(
        "--clip",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also write conveyor.avi: the first SECONDS (e.g. 20, or 2.5) of the server's "
        f"demo camera (a conveyor, 360x640 at {CLIP_FPS:g} fps, packages passing, some "
        "damaged) as MJPEG, for `convstream stream`; default 0, no video",
    )
    p.set_defaults(func=_samples)


SAMPLE_MIN_SIDE = 32  # render_scene's smallest frame side
SAMPLE_MAX_SIDE = 8192  # 8K: a larger frame took minutes and GBs, then failed in the JPEG


class _Listing:
    """What `samples` says it wrote, a line at a time on stdout. A reader that went away
    (`| head -1`) or a stdout that cannot be written (a full disk) does not stop the files
    being written: the lines stop, the files go on, and ``done`` says how it ended."""

    def __init__(self) -> None:
        self.error: OSError | None = None

    def say(self, line: str) -> None:
        if self.error is not None:
            return
        try:
            print(line, flush=True)
        except OSError as exc:
            self.error = exc
            # keep Python's exit-time flush of what is left from failing on it again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def done(self) -> int:
        """0 once every file is written, unless stdout failed other than by its reader
        going away: then one line on stderr and 1."""
        if self.error is None or isinstance(self.error, BrokenPipeError):
            return 0
        why = self.error.strerror or str(self.error)
        print(
            f"convstream samples: cannot write to stdout: {why} (the files are written)",
            file=sys.stderr,
        )
        return 1


def _samples(args: argparse.Namespace) -> int:
    import cv2

    from convstream.model.scenes import render_scene

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(
            f"convstream samples: --size must look like 720x1280, got {args.size!r}",
            file=sys.stderr,
        )
        return 2
    wrong = [
        f"{flag} must be {bound}, got {value}"
        for flag, bound, value, ok in [
            ("--count", ">= 0", f"{args.count:g}", args.count >= 0),
            ("--clip", "0 to 3600 seconds", f"{args.clip:g}", 0 <= args.clip <= 3600),
            (
                "--size",
                f"{SAMPLE_MIN_SIDE} to {SAMPLE_MAX_SIDE} pixels a side (HxW, e.g. 720x1280)",
                args.size,
                min(height, width) >= SAMPLE_MIN_SIDE and max(height, width) <= SAMPLE_MAX_SIDE,
            ),
        ]
        if not ok
    ]
    if not wrong and args.count == 0 and args.clip == 0:  # it wrote nothing, and said 0
        wrong = ["nothing to write with --count 0 and --clip 0: ask for images or a clip"]
    if wrong:
        print(f"convstream samples: {'; '.join(wrong)}", file=sys.stderr)
        return 2
    if args.directory.exists() and not args.directory.is_dir():
        print(
            f"convstream samples: {args.directory} is a file; give a folder (created if need be)",
            file=sys.stderr,
        )
        return 2
    folders = {label: args.directory / label for label in ("damaged", "intact")}
    if not args.by_label:
        folders = dict.fromkeys(folders, args.directory)
    try:
        for folder in {args.directory, *folders.values()}:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"convstream samples: cannot create {exc.filename or args.directory}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    # An earlier run's samples go first: writing 2 into a folder of 6 left 4 old ones, and
    # `analyze` of the folder then mixed the two runs.
    earlier = [
        path
        for folder in dict.fromkeys(folders.values())
        for path in folder.glob("box-*.jpg")
        if SAMPLE_NAME.fullmatch(path.name) and path.is_file()
    ]
    for path in earlier:
        path.unlink(missing_ok=True)
    if earlier:
        print(
            f"convstream samples: removed {len(earlier)} sample image"
            f"{'s' * (len(earlier) != 1)} of an earlier run from {args.directory}",
            file=sys.stderr,
        )
    listing = _Listing()
    for i in range(args.count):
        scene = render_scene(4_000_000_000 + i, height, width, damaged=i % 2 == 1)
        label = "damaged" if scene.damaged else "intact"
        path = folders[label] / f"box-{i:03d}-{label}.jpg"
        # encoded here and written by Python, not cv2.imwrite: that returns only False,
        # and a file it did not write (a folder of that name, a full disk) read as written
        encoded, data = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        why = _write_file(path, data.tobytes()) if encoded else "OpenCV could not encode it"
        if why is not None:
            print(f"convstream samples: cannot write {path}: {why}", file=sys.stderr)
            return 1
        kinds = ", ".join(kind.replace("_", " ") for kind in scene.kinds)  # torn tape
        listing.say(f"{path}  {label}{f' ({kinds})' if kinds else ''}")
    if args.clip:
        code = _write_clip(args.directory / "conveyor.avi", args.clip, listing)
        if code:
            return code
    return listing.done()


SAMPLE_NAME = re.compile(r"box-[0-9]{3,}-(damaged|intact)\.jpg")  # what samples writes


def _write_file(path: Path, data: bytes) -> str | None:
    """Write data to path; why not, or None. A file cut short (a full disk) is removed,
    not left to read as a sample."""
    try:
        out = path.open("wb")
    except OSError as exc:  # a folder of that name, no permission
        return exc.strerror or str(exc)
    try:
        with out:
            out.write(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        return exc.strerror or str(exc)
    return None


CLIP_FPS = 15.0


def _write_clip(path: Path, seconds: float, listing: _Listing) -> int:
    """The server's demo camera (demo:conveyor, its defaults) as an MJPEG video file."""
    import cv2

    from convstream.model.scenes import Conveyor

    frames = max(1, round(seconds * CLIP_FPS))
    height, width = 360, 640
    conveyor = Conveyor(0, height, width, CLIP_FPS)
    if path.is_dir():  # OpenCV would say only that it cannot
        print(f"convstream samples: cannot write {path}: Is a directory", file=sys.stderr)
        return 1
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), CLIP_FPS, (width, height))
    if not writer.isOpened():
        print(f"convstream samples: OpenCV cannot write {path}", file=sys.stderr)
        return 1
    damaged = 0
    try:
        for i in range(frames):
            scene = conveyor.frame(i)
            damaged += scene.damaged
            writer.write(scene.image)
    finally:
        writer.release()
    listing.say(
        f"{path}  {frames / CLIP_FPS:g} s at {CLIP_FPS:g} fps, {frames} frames, {damaged} of "
        "them showing damage"
    )
    return 0


def _add_token(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "token",
        help="make a bearer token for clients",
        description="Print a new random token (give it to the client) and the [[tokens]] "
        "table for the server's config, which keeps only the token's SHA-256.",
    )
    p.add_argument(
        "--name",
        required=True,
        help="who will hold it, e.g. dock-3-integration: 1 to 64 characters, as the server's "
        "config takes it",
    )
    p.add_argument(
        "--role",
        choices=("watch", "analyze"),
        required=True,
        help="watch: model info and cameras (a dashboard); analyze: also send frames",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="write the token to this new file (mode 600, no newline: what the client "
        "commands' --token-file reads) instead of printing it",
    )
    p.add_argument(
        "--max-calls",
        type=_at_least_one,
        metavar="N",
        help="calls open at once with this token (streams, camera watches, Analyze calls), "
        "at most (the table's max_calls); default: only the server's own limits",
    )
    p.add_argument(
        "--camera",
        action="append",
        dest="cameras",
        metavar="ID",
        help="a camera (or published stream) this token may list and watch: an id, or a "
        "pattern such as 'dock-*'; again for more (the table's cameras); default: every camera",
    )
    p.set_defaults(func=_token)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _token(args: argparse.Namespace) -> int:
    from convstream.client.connection_flags import write_secret
    from convstream.server.security import new_token

    wrong = _token_name_problem(args.name)
    if wrong is None and args.cameras is not None:  # as the server's config checks them
        from pydantic import ValidationError

        from convstream.server.config import TokenConfig

        try:
            TokenConfig(name=args.name, role=args.role, sha256="0" * 64, cameras=args.cameras)
        except ValidationError as exc:
            wrong = "--camera: " + exc.errors()[0]["msg"].removeprefix("Value error, cameras: ")
    if wrong is not None:  # before a token is made, or its file written, for nothing
        print(f"convstream token: {wrong}", file=sys.stderr)
        return 2
    token, digest = new_token()
    if args.token_file is None:
        print(f"token (give this to the client; it is not stored anywhere): {token}")
    else:
        path = args.token_file
        try:  # a new file only: never overwrite a token someone holds, nor follow a link
            write_secret(path, token)
        except OSError as exc:
            print(f"convstream token: --token-file {path}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"token written to {args.token_file} (mode 600; give it to the client)")
    print("\nadd to the server's config:\n")
    name = _toml_string(args.name, sys.stdout.encoding or "ascii")
    print(f'[[tokens]]\nname = {name}\nrole = "{args.role}"\nsha256 = "{digest}"')
    if args.max_calls is not None:
        print(f"max_calls = {args.max_calls}")
    if args.cameras is not None:
        encoding = sys.stdout.encoding or "ascii"
        print(f"cameras = [{', '.join(_toml_string(c, encoding) for c in args.cameras)}]")
    return 0


def _token_name_problem(name: str) -> str | None:
    """Why the server's config would refuse name as a token's (TokenConfig's rule), or None."""
    from convstream.server.config import TokenConfig

    bounds = {type(rule).__name__: rule for rule in TokenConfig.model_fields["name"].metadata}
    least, most = bounds["MinLen"].min_length, bounds["MaxLen"].max_length
    if not least <= len(name) <= most:
        return (
            f"--name must be {least} to {most} characters (the server's limit for a token's "
            f"name), got {len(name)}"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes of another encoding, as the shell passed them
        return (
            "--name must be text a UTF-8 config file can hold; it has bytes that are not UTF-8: "
            f"{name.encode('utf-8', 'surrogateescape')!r}"
        )
    return None


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
_TOML_ESCAPES |= {"\f": "\\f", "\r": "\\r"}


def _toml_string(text: str, encoding: str) -> str:
    """text as a TOML basic string ("..."), as it loads whatever it holds: quotes,
    backslashes and control characters escaped, and characters that the terminal's encoding
    cannot show as \\uXXXX (printed, they would become Python's \\xNN, which TOML refuses)."""
    parts = []
    for char in text:
        if char in _TOML_ESCAPES:
            parts.append(_TOML_ESCAPES[char])
        elif char.isprintable() and _encodable(char, encoding):
            parts.append(char)
        elif ord(char) <= 0xFFFF:
            parts.append(f"\\u{ord(char):04X}")
        else:
            parts.append(f"\\U{ord(char):08X}")
    return f'"{"".join(parts)}"'


def _encodable(char: str, encoding: str) -> bool:
    try:
        char.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _quiet_log_level(args: Sequence[str]) -> bool:
    """Whether `serve`'s log level, as the settings will read it (the flag, else
    CONVSTREAM_LOG_LEVEL, else the config file's), is warning or error: a production config's
    `log_level = "warning"` left gRPC's own lines on, a plaintext client's handshake failures
    the only lines in the log."""
    level = _early_setting(_flag(args, "--log-level"), _flag(args, "--config"), "log_level")
    return level.strip().lower() in ("warning", "error")


def _early_setting(given: str | None, config: str | None, key: str) -> str:
    """A setting as the settings will read it, before they can be (gRPC's level, before it
    loads; the log's format, for a config that does not read): the flag's ``given`` value,
    else CONVSTREAM_<KEY>, else the config file's (``config``, else CONVSTREAM_CONFIG); ""
    when none says."""
    if given:
        return given
    if found := os.environ.get(f"CONVSTREAM_{key.upper()}", ""):
        return found
    config = config or os.environ.get("CONVSTREAM_CONFIG", "")
    if not config:
        return ""
    try:  # read as load_settings reads it: Notepad's byte-order mark is no error there
        value = tomllib.loads(Path(config).read_text(encoding="utf-8-sig")).get(key, "")
    except (OSError, ValueError):  # the settings will say what is wrong with it
        return ""
    return value if isinstance(value, str) else ""


def _flag(args: Sequence[str], flag: str) -> str:
    """The value of the last ``flag VALUE`` or ``flag=VALUE`` among args, or ""."""
    value = ""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.partition("=")[2]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before a client command's Interruption took over: while the client's
        # modules load (grpc, numpy, OpenCV: a second or two), or before a command began
        return 130


def _main(argv: Sequence[str] | None) -> int:
    # OpenCV's own warnings (e.g. "backend is generally available but can't be used to capture
    # by name" after a camera fails to open) say less than the command's own message and land
    # in the middle of its output; keep its errors. OpenCV reads this once, when it loads (the
    # client commands below import it), so it is set first; a value the user set wins.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    # FFmpeg's own lines too ("[tcp @ 0x...] Connection to tcp://... failed" on every retry of
    # a camera that is down): the camera's state and last_error say it once, in our words.
    # OPENCV_FFMPEG_LOGLEVEL=24 (warnings) brings them back for debugging a source.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    # gRPC's own informational lines ("Handshake failed with error ..." once per retry) say
    # what a client command's message says, in its words; its errors stay, and the server
    # keeps them all (a client failing its TLS handshake shows nowhere else) unless its log
    # level is warning or error. gRPC reads this once, when it loads, before the settings are
    # read, so the level is read here as they will read it; GRPC_VERBOSITY=INFO brings them
    # back.
    args_given = sys.argv[1:] if argv is None else list(argv)
    serving = args_given[:1] == ["serve"]
    if not serving or _quiet_log_level(args_given):
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    main_thread = threading.current_thread() is threading.main_thread()
    if serving and hasattr(signal, "SIGHUP") and main_thread:
        signal.signal(signal.SIGHUP, lambda signum, frame: _RELOAD_ASKED.set())
    parser = argparse.ArgumentParser(
        prog="convstream", description="Damage scores and feature maps for camera frames."
    )
    from convstream.client._base import client_version

    parser.add_argument("--version", action="version", version=f"convstream {client_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_token(commands)
    _add_samples(commands)
    from convstream.client.cli import add_commands
    from convstream.dashboard.cli import add_commands as add_dashboard_commands

    add_commands(commands)
    add_dashboard_commands(commands)
    # argparse would take `--server HOST:PORT` as an abbreviation of `--server-name` and quietly
    # connect to the default address; every option is taken whole or refused.
    for command_parser in (parser, *commands.choices.values()):
        command_parser.allow_abbrev = False
    if not args_given:  # the commands there are, not argparse's "COMMAND is required"
        parser.print_help(sys.stderr)
        return 2
    first = args_given[0] if args_given else ""
    if first.startswith("-") and first not in ("-h", "--help", "--version"):
        # `convstream --address HOST:PORT cameras`: argparse would call the address an
        # unknown command; every option belongs to a command, so say where it goes.
        at = next((i for i, a in enumerate(args_given) if a in commands.choices), None)
        if at is not None:
            moved = [args_given[at], *args_given[:at], *args_given[at + 1 :]]
            parser.error(f"options go after the command: convstream {shlex.join(moved)}")
        parser.error(f"options go after the command: convstream COMMAND {shlex.join(args_given)}")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # with the command's own usage line, not the top level's
        command_parser = commands.choices[args.command]
        message = f"unrecognized arguments: {' '.join(unknown)}"
        guessed = {"--server", "--host", "--port", "--addr"} & {u.split("=")[0] for u in unknown}
        if guessed and "--address" in command_parser._option_string_actions:
            message += "; the server's address is --address HOST:PORT"
        cameras = getattr(args, "cameras", None) or []
        halves = [c for c in cameras if isinstance(c, str) and "=" not in c]  # "--camera belt /p"
        if halves and not unknown[0].startswith("-"):
            message += (
                f"; --camera takes ID=SOURCE in one argument: --camera "
                f"{shlex.quote(halves[0] + '=' + unknown[0])}"
            )
        command_parser.error(message)
    for stream in (sys.stdout, sys.stderr):  # a name or a '…' in an ASCII-only locale
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        result: int = args.func(args)
    except BrokenPipeError as exc:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush
        # of stdout from failing on the closed pipe. A client command's status says what it
        # had found by then (OutputClosed's); else the reader's leaving is no failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status: int = getattr(exc, "status", 0)
        return status
    return result
