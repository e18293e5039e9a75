"""`convstream serve`: its flags, the settings they make, and the server (or its processes)
run on them; `--check-config` and `--print-settings`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
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
RELOAD_ASKED = threading.Event()


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        json_lines = early_setting(args.log_format, config, "log_format") == "json"
        print(
            fatal("json" if json_lines else "text", "convstream serve", str(exc)), file=sys.stderr
        )
        return 2
    warnings = _readable_passwords(args.config) + _passwords_in_flags(args.cameras)
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

        return Supervisor(settings, load, RELOAD_ASKED).run()
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


def _passwords_in_flags(values: list[str] | None) -> list[str]:
    """A warning for each --camera flag whose source holds a password: the command line is
    every local user's to read (`ps`), where a config file of mode 600 is not (an operator
    review's: docs/production.md said so, the command did not)."""
    from convstream.v1.redaction import names_a_secret

    said = []
    for value in values or ():
        camera_id = value.partition("=")[0]
        if names_a_secret(value):
            said.append(
                f"--camera {camera_id}=... holds credentials (user:password@), which every user "
                "of this machine can read on the command line (ps): put the camera in the "
                "config file, chmod 600, instead"
            )
    return said


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
        asyncio.run(serve(settings, reload=load, peers=peers, reload_asked=RELOAD_ASKED))
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
        token_share_warning,
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
        token_share_warning(settings),
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


def quiet_log_level(args: Sequence[str]) -> bool:
    """Whether `serve`'s log level, as the settings will read it (the flag, else
    CONVSTREAM_LOG_LEVEL, else the config file's), is warning or error: a production config's
    `log_level = "warning"` left gRPC's own lines on, a plaintext client's handshake failures
    the only lines in the log."""
    level = early_setting(_flag(args, "--log-level"), _flag(args, "--config"), "log_level")
    return level.strip().lower() in ("warning", "error")


def early_setting(given: str | None, config: str | None, key: str) -> str:
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
