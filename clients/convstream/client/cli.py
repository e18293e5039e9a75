"""The client commands: `convstream analyze | stream | info | cameras | watch`.

Exit codes (EXIT_STATUS, in every command's --help): one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import itertools
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from convstream.client._base import (
    ADDRESS_ENV,
    CAMERA_STATE_RECORD,
    check_address,
    check_camera_id,
    check_published_name,
)
from convstream.client._client import Client
from convstream.client._report import (
    Reporter,
    WatchReporter,
    camera_json,
    cameras_text,
    display_width,
    model_info_json,
    model_info_text,
    printable,
)
from convstream.client.connection_flags import (
    add_address_flag,
    add_security_flags,
    flag_words,
    misspelt_address,
    refused_hint,
    tls_from_flags,
    token_from_flags,
    unavailable_hint,
)
from convstream.client.errors import (
    ConvstreamError,
    DeadlineExceeded,
    NotFound,
    Overloaded,
    PermissionDenied,
    Rejected,
    ServerUnavailable,
    SourceError,
    Unauthenticated,
)
from convstream.client.evaluation import evaluation_json, evaluation_text, labelled
from convstream.client.frames import (
    IMAGE_SUFFIXES,
    Video,
    check_loop,
    image_files,
    other_files,
    video_container,
)
from convstream.client.options import Freshness, ResultOptions, Retry, Timeout, Upload
from convstream.client.results import CameraInfo, ModelInfo, Result, json_text
from convstream.v1 import MAX_WATCH_FPS, folded_id

__all__ = ["EXIT_STATUS", "add_commands"]

# What a script can tell apart by the exit code alone.
EXIT_FRAMES, EXIT_USAGE, EXIT_SERVER, EXIT_REFUSED, EXIT_SOURCE = 1, 2, 3, 4, 5
EXIT_DAMAGED = 6  # only with --fail-on-damage
EXIT_STATUS = """
exit status:
  0    done: every frame analysed (damage found is a result, not a failure)
  1    some frames could not be analysed, or the server failed on them
  2    usage: a bad option or value, a missing file, an unknown camera or
       feature map
  3    the server: no answer at --address (nor a TLS handshake, also when it
       refuses the client certificate: TLS 1.3 shows only a closed
       connection), or none within --timeout
  4    refused: the token, the token's role, or a limit on calls (the
       token's max_calls, the server's max_streams...: retry later)
  5    the source: a camera that failed, stopped or was removed; a video that
       cannot be read
  6    analyze, stream and watch with --fail-on-damage: some frame was called
       damaged (where the status would otherwise be 0)
  130  Ctrl-C; 143 SIGTERM (results so far written, and the summary; a second
       one: at once)
"""


def exit_status(*codes: int, frames: bool = True) -> str:
    """EXIT_STATUS with only the statuses a command can end with (``info --help`` listed
    reading videos and --fail-on-damage, which it never does); 0 is plain "done" for a
    command that analyses no frame (``frames=False``)."""
    head, *rows = EXIT_STATUS.strip("\n").split("\n")
    entries: list[list[str]] = []
    for row in rows:
        if re.match(r"  \d", row):
            entries.append([row])
        else:
            entries[-1].append(row)
    kept = [e for e in entries if int(e[0].split()[0]) in codes]
    if not frames:  # no frames, results or summary to speak of
        plain = {"0": "  0    done", "1": "  1    the server failed on the call"}
        plain["130"] = "  130  Ctrl-C; 143 SIGTERM"
        kept = [[plain[e[0].split()[0]]] if e[0].split()[0] in plain else e for e in kept]
    return "\n" + "\n".join([head, *(line for e in kept for line in e)]) + "\n"


INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # Ctrl-C; `timeout`, systemd, a CI cancel


class Interruption:
    """Ctrl-C and SIGTERM to a client command: it stops, the results so far written and the
    summary said, with exit status 130 or 143.

    A handler that raises (Python's own for Ctrl-C) raises wherever the main thread is, also
    inside gRPC's wait on a threading.Condition, between its lock's release and the ``try``
    that takes it back: the lock is left released, and the command ended with "RuntimeError:
    cannot release un-acquired lock" and its traceback instead. So this handler raises
    nothing: it notes the signal and closes the client from a thread of its own; the call in
    progress ends with Cancelled, where the command handles its errors. A second signal ends
    the process at once. In a thread other than the main one, which signals never reach,
    it does nothing; a signal the process was started with ignored (a background job of a
    non-interactive shell ignores Ctrl-C) stays ignored.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._before: dict[int, object] = {}
        self.status = 0  # 130 or 143 once a signal came

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread():
            self._before = {
                s: signal.signal(s, self._handle)
                for s in INTERRUPTED
                # ignored when the process started (a background job of a script, `nohup`):
                # a Ctrl-C meant for the script in front must not end it
                if signal.getsignal(s) is not signal.SIG_IGN
            }
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        for signum, handler in self._before.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        # What the close() gave: Cancelled from the call in progress, RuntimeError from a call
        # begun after it (or gRPC's ValueError, begun as it closed). The command ends with the
        # signal's status, without a message.
        return bool(self.status) and isinstance(exc, ConvstreamError | RuntimeError | ValueError)

    def _handle(self, signum: int, frame: object) -> None:
        if self.status:  # asked twice: whatever the command was waiting for
            os._exit(self.status)
        self.status = INTERRUPTED[signal.Signals(signum)]
        threading.Thread(target=self._client.close, name="interrupt", daemon=True).start()


_EXAMPLES_ANALYZE = """examples:
  convstream analyze box.jpg
  convstream analyze photos/ --json > results.jsonl
  convstream analyze photos/ --maps stage3 --encoding uint8 --save-overlays out/
"""
_EXAMPLES_EVALUATE = """examples:
  convstream evaluate samples/   # samples/damaged/*.jpg, samples/intact/*.jpg
  convstream evaluate samples/ --json | jq .best_threshold
"""
_EXAMPLES_STREAM = """examples:
  convstream stream conveyor.avi --save-overlays overlays/
  convstream stream 0 --freshness latest_only    # camera 0, newest frames only
  convstream stream rtsp://cam-3/stream --max-frames 300 --json
  convstream stream belt.mp4 --name belt-test --publish --loop  # on the dashboard
"""
_EXAMPLES_CAMERAS = """examples:
  convstream cameras                # the ids the server pulls, and their health
  convstream cameras --address 10.0.0.5:50051 --token-file dock.token
  convstream cameras --json | jq -r .id    # the ids alone, for a script
  convstream cameras --json |
      jq 'select(.state != "running") | {id, state, last_error}'
"""
_EXAMPLES_WATCH = """examples:
  convstream cameras                # the ids the server pulls, and their health
  convstream watch dock-3
  convstream watch dock-3 --max-fps 2 --save-overlays overlays/
  convstream watch dock-3 --count 100 --json --maps stage3 > results.jsonl
"""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to ``convstream``: analyze, stream, info, cameras, watch and
    evaluate."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    add_address_flag(group)
    group.add_argument(
        "--timeout",
        type=_call_seconds,
        default=30.0,
        help="seconds per unary call, or inf (default 30)",
    )
    add_security_flags(group)

    results = argparse.ArgumentParser(add_help=False)
    group = results.add_argument_group("results")
    # One value, names split by commas: a list option (nargs="+") swallowed the paths after
    # it, and `analyze --maps stage3 photos/` failed with "PATH is required".
    group.add_argument(
        "--maps",
        type=_stage_names,
        action="extend",
        default=[],
        metavar="STAGE[,STAGE]",
        help="feature maps to fetch, e.g. --maps stage3 or --maps stage3,stage4; see "
        "`convstream info`",
    )
    group.add_argument(
        "--encoding",
        choices=("float16", "float32", "uint8"),
        default="float16",
        help="how feature maps travel (default float16); the heatmap comes in float16 for uint8",
    )
    group.add_argument("--json", action="store_true", help="one JSON object per line")
    group.add_argument(
        "--fail-on-damage",
        action="store_true",
        help="exit with status 6 when any frame is called damaged (for cron jobs and CI "
        "checks; a failure's own status comes first)",
    )
    group.add_argument(
        "--save-overlays",
        type=Path,
        metavar="DIR",
        help="write each frame with its damage heatmap drawn over it as PNG into DIR",
    )
    group.add_argument(
        "--save-maps",
        type=Path,
        metavar="DIR",
        help="write each frame's feature maps (the stages --maps fetches), a tile per "
        "channel beside the frame and its heatmap, as PNG into DIR",
    )
    group.add_argument(
        "--save-arrays",
        type=Path,
        metavar="DIR",
        help="write each frame's score, heatmap and feature maps (the stages --maps fetches) "
        "as numpy arrays into DIR, one .npz a frame (numpy.load reads it)",
    )

    upload = argparse.ArgumentParser(add_help=False)
    group = upload.add_argument_group("upload")
    group.add_argument(
        "--upload",
        choices=("jpeg", "png", "raw"),
        default="jpeg",
        help="how pixels are sent (JPEG/PNG files always go as they are; default jpeg)",
    )
    group.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")

    common = {"formatter_class": argparse.RawDescriptionHelpFormatter}
    analyze = commands.add_parser(
        "analyze",
        parents=[connection, results, upload],
        help="analyse images or folders of images",
        description="Send images (JPEG, PNG, BMP, GIF, TIFF, WebP; folders are searched\n"
        "recursively) over one stream and print a damage score for each.",
        epilog=_EXAMPLES_ANALYZE + exit_status(0, 1, 2, 3, 4, 6, 130),
        **common,  # type: ignore[arg-type]
    )
    analyze.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="images or folders")
    analyze.set_defaults(func=_analyze)

    stream = commands.add_parser(
        "stream",
        parents=[connection, results, upload],
        help="stream a video file or a camera through the server",
        description="Read a video file, a URL or a camera with OpenCV here, stream its\n"
        "frames to the server and print each result as it comes. A stream broken by a\n"
        "server restart resumes with the frames not yet answered.",
        epilog=_EXAMPLES_STREAM + exit_status(0, 1, 2, 3, 4, 5, 6, 130),
        **common,  # type: ignore[arg-type]
    )
    stream.add_argument("source", metavar="SOURCE", help="video file, URL, or camera index (0)")
    stream.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    stream.add_argument(
        "--loop",
        action="store_true",
        help="play a video file again from the start each time it ends, until --max-frames "
        "or Ctrl-C (a recording standing in for a camera)",
    )
    stream.add_argument(
        "--fast",
        action="store_true",
        help="send a video file's frames as fast as the server takes them (default: at the "
        "file's own frame rate, as a camera would send them; cameras and URLs always come at "
        "their own pace)",
    )
    stream.add_argument(
        "--freshness",
        choices=("lossless", "latest_only", "bounded_queue"),
        help="what the server does when frames come faster than it keeps up (default "
        "lossless: slow the reader down; bounded_queue with --queue-size)",
    )
    stream.add_argument(
        "--queue-size",
        type=int,
        metavar="N",
        help="frames that may wait, the oldest dropped: bounded_queue's, which it implies; "
        "1 to the server's largest (256 unless it is set otherwise; `convstream info` shows "
        "it), default: the server's default",
    )
    stream.add_argument("--name", help="source name sent with frames (default: file stem)")
    stream.add_argument(
        "--publish",
        action="store_true",
        help="also show the results to `convstream watch NAME`, `convstream cameras` and the "
        "dashboard, under --name (letters, digits, '.', '_', '-')",
    )
    stream.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="fail instead of resuming when the server goes away",
    )
    stream.add_argument(
        "--resume-timeout",
        type=_seconds,
        metavar="S",
        help="how long to keep trying to resume after a break, in seconds, or inf (default "
        "30: a restarting server loads its model first)",
    )
    stream.set_defaults(func=_stream)

    info = commands.add_parser(
        "info",
        parents=[connection],
        help="show the model the server runs",
        description="Show the server's model: stages, input sizes, threshold, provider.",
        epilog=exit_status(0, 1, 2, 3, 4, 130, frames=False),
        **common,  # type: ignore[arg-type]
    )
    info.add_argument("--json", action="store_true", help="print it as one JSON object")
    info.set_defaults(func=_info)

    cameras = commands.add_parser(
        "cameras",
        parents=[connection],
        help="list the cameras the server pulls, and their health",
        description="List the server's cameras: state, source kind, frames read and analysed\n"
        "per second, drops, reconnects, watchers, latency, the latest score and error.",
        epilog=_EXAMPLES_CAMERAS + exit_status(0, 1, 2, 3, 4, 130, frames=False),
        **common,  # type: ignore[arg-type]
    )
    cameras.add_argument("--json", action="store_true", help="one JSON object per camera")
    cameras.set_defaults(func=_cameras)

    watch = commands.add_parser(
        "watch",
        parents=[connection, results],
        help="print the results of a camera the server pulls",
        description="Subscribe to a camera the server reads and analyses (see `convstream\n"
        "cameras`) and print each result as it comes. The server keeps only the newest\n"
        "results for a slow reader and counts the rest as DROPPED. The watch resumes\n"
        "after a server restart.",
        epilog=_EXAMPLES_WATCH + exit_status(0, 1, 2, 3, 4, 5, 6, 130),
        **common,  # type: ignore[arg-type]
    )
    watch.add_argument("camera_id", metavar="CAMERA_ID", help="the camera's id")
    watch.add_argument(
        "--max-fps", type=float, metavar="N", help="results per second at most (default: all)"
    )
    watch.add_argument("--count", type=int, metavar="N", help="stop after N results")
    watch.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="fail instead of subscribing again when the server goes away",
    )
    watch.add_argument(
        "--resume-timeout",
        type=_seconds,
        metavar="S",
        default=math.inf,
        help="how long to keep trying to subscribe again after a break, in seconds (default "
        "inf: a watch outlasts any outage, saying so on stderr, until stopped)",
    )
    watch.set_defaults(func=_watch)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[connection],
        help="how well the scores separate your own damaged and intact images",
        description="Analyse FOLDER/damaged/ and FOLDER/intact/ (images, searched recursively)\n"
        "on the server and print how well its scores separate them (ROC AUC), what the\n"
        "server's threshold finds and flags there, and the thresholds worth setting\n"
        "instead. The model learnt from rendered scenes: choose its threshold on your own\n"
        "footage.",
        epilog=_EXAMPLES_EVALUATE + exit_status(0, 1, 2, 3, 4, 130),
        **common,  # type: ignore[arg-type]
    )
    evaluate.add_argument("folder", type=Path, metavar="FOLDER", help="holds damaged/ and intact/")
    evaluate.add_argument(
        "--json", action="store_true", help="one JSON object: the table and every image's score"
    )
    evaluate.set_defaults(func=_evaluate)


def _usage(args: argparse.Namespace, message: str) -> int:
    print(f"convstream {args.command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _client(args: argparse.Namespace) -> Client:
    """A Client from the flags; ValueError or OSError for bad values or unreadable files."""
    try:
        check_address(args.address)  # as Client checks it, said of the flag
    except ValueError as exc:
        # said of the variable where the value came from it (no --address was given)
        flag = "--address"
        if os.environ.get(ADDRESS_ENV) == args.address:
            flag = f"${ADDRESS_ENV}"
        raise ValueError(f"{flag}{str(exc).removeprefix('address')}") from None
    _check_flags(args)
    tls = tls_from_flags(args)
    token = token_from_flags(args)
    options = ResultOptions()
    upload = Upload()
    if hasattr(args, "maps"):
        # --maps stage3,stage4 is split by its type (_stage_names), and extended flag by flag
        options = ResultOptions(feature_maps=args.maps, encoding=args.encoding)
    if hasattr(args, "upload"):
        upload = Upload(args.upload, quality=args.quality)
    retry = Retry()
    if getattr(args, "resume_timeout", None) is not None:
        retry = Retry(resume_timeout=args.resume_timeout)
    try:
        return Client(
            args.address,
            timeout=Timeout(args.timeout),  # inf: no limit
            tls=tls,
            token=token,
            options=options,
            upload=upload,
            retry=retry,
            allow_plaintext_token=args.allow_plaintext_token,
        )
    except ValueError as exc:  # a PEM file that holds something else: said of its flag
        raise ValueError(flag_words(_tls_flags(str(exc)), args)) from None


def _check_flags(args: argparse.Namespace) -> None:
    """ValueError, naming the flag, for what Upload and TLS would refuse in their own terms
    ("Upload.quality", "cert and key") or a PEM file that cannot be read."""
    quality = getattr(args, "quality", None)
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"--quality must be 1 to 100 (JPEG quality), got {quality}")
    if (args.cert is None) != (args.key is None):
        given, missing = ("--cert", "--key") if args.key is None else ("--key", "--cert")
        raise ValueError(
            "--cert and --key go together (the client certificate and its private key, for "
            f"mutual TLS); got {given} without {missing}"
        )
    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if path is not None:
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


_TLS_FIELDS = {"TLS ca ": "--ca ", "TLS cert ": "--cert ", "TLS key ": "--key "}


def _tls_flags(message: str) -> str:
    """A TLS error in the flags' words: "TLS key k.pem is encrypted" -> "--key k.pem ..."."""
    for field_words, flag in _TLS_FIELDS.items():
        if message.startswith(field_words):
            message = flag + message.removeprefix(field_words)
            break
    return message.replace("(cert and key swapped?)", "(--cert and --key swapped?)")


def _seconds(text: str, *, zero: bool = True) -> float:
    """A --resume-timeout: seconds, 0 or more, or inf; without ``zero`` (a --timeout), over 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or inf, got {text!r}") from None
    if not (value >= 0 if zero else value > 0):
        least = "0 or more seconds" if zero else "seconds over 0"
        raise argparse.ArgumentTypeError(f"expected {least}, or inf, got {text!r}")
    return value


def _call_seconds(text: str) -> float:
    """A --timeout: seconds over 0, or inf."""
    return _seconds(text, zero=False)


def _output_folder(flag: str, folder: Path) -> str | None:
    """Why flag (--save-overlays, --save-maps, --save-arrays) cannot write into folder
    (created here if need be), or None. Asked before anything is sent: afterwards the frames
    would be analysed for nothing."""
    if folder.exists() and not folder.is_dir():
        return f"{flag} {folder} is a file; give a folder (created if need be)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{flag} {folder}: cannot create the folder: {exc.strerror or exc}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{flag} {folder}: this user cannot write into that folder"
    return None


def _run(args: argparse.Namespace, body: Callable[[Client], int]) -> int:
    """Run body with a client; ConvstreamError becomes one line on stderr and exit code 1."""
    if getattr(args, "save_maps", None) is not None and not args.maps:
        return _usage(args, "--save-maps draws the stages --maps fetches: add e.g. --maps stage3")
    for flag in ("--save-overlays", "--save-maps", "--save-arrays"):
        folder = getattr(args, flag[2:].replace("-", "_"), None)
        if folder is not None and (problem := _output_folder(flag, folder)) is not None:
            return _usage(args, problem)
    if (misspelt := misspelt_address()) is not None:
        print(f"convstream {args.command}: warning: {misspelt}", file=sys.stderr)
    try:
        client = _client(args)
    except (OSError, ValueError) as exc:
        return _usage(args, str(exc))
    # The library's warnings (a stream resuming after a server restart) as the CLI's lines;
    # not a camera's state as a watch is taken, which `watch` says in its own words (and
    # again as it changes).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"convstream {args.command}: %(message)s"))
    handler.addFilter(lambda record: not hasattr(record, CAMERA_STATE_RECORD))
    log = logging.getLogger("convstream.client")
    log.addHandler(handler)
    interruption = Interruption(client)
    try:
        with client, interruption:
            return body(client)
    except _UsageError as exc:
        return _usage(args, str(exc))
    except ConvstreamError as exc:
        hint = ""
        if isinstance(exc, ServerUnavailable):
            hint = unavailable_hint(exc.message, tls_from_flags(args))
        elif isinstance(exc, Unauthenticated | PermissionDenied):
            code = exc.code.name if exc.code else ""
            hint = refused_hint(code, token=client.has_token, message=exc.message)
        print(f"convstream {args.command}: {_hinted(exc.message, hint)}", file=sys.stderr)
        return _exit_status(exc)
    except BrokenPipeError:
        raise  # stdout's reader went away (`| head`): convstream's main stops quietly
    except OSError as exc:  # e.g. an overlay folder that cannot be written
        print(f"convstream {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        log.removeHandler(handler)
        if interruption.status:  # the summary read as a finished run's: the status alone said
            said = "Ctrl-C" if interruption.status == INTERRUPTED[signal.SIGINT] else "SIGTERM"
            print(f"convstream {args.command}: stopped by {said}", file=sys.stderr)
    return interruption.status  # a signal's: Interruption took the error that it caused


def _hinted(message: str, hint: str) -> str:
    """message, then hint in brackets; after a semicolon where message ends in a bracket of
    its own, rather than a second bracket beside it."""
    if not hint:
        return message
    return f"{message}; {hint}" if message.endswith(")") else f"{message} ({hint})"


def _exit_status(exc: ConvstreamError) -> int:
    if isinstance(exc, ServerUnavailable | DeadlineExceeded):
        return EXIT_SERVER
    if isinstance(exc, Unauthenticated | PermissionDenied | Overloaded):
        return EXIT_REFUSED
    if isinstance(exc, Rejected | NotFound | SourceError):  # a camera down or gone, a video
        return EXIT_SOURCE
    return EXIT_FRAMES


class _UsageError(Exception):
    """A usage error found once the server has answered: exit 2, as argparse's own."""


def _servers_camera(args: argparse.Namespace, name: str) -> bool:
    """Whether the server has a camera of that id (False when it cannot say within 2 s: a
    misspelt file's name waited 22 s on a server that never answered)."""
    if "/" in name or os.sep in name or Path(name).suffix:  # a file's name, not an id
        return False
    try:
        with _client(args) as client:
            return name in {camera.id for camera in client.cameras(timeout=2.0)}
    except (ConvstreamError, ValueError, OSError):
        return False


def _ready(args: argparse.Namespace, client: Client) -> ModelInfo:
    """Before a stream or a watch, which have no deadline of their own: the server's model,
    asked within --timeout (against a server that accepted the connection and said nothing,
    they waited out gRPC's own 20 s connect timeout whatever --timeout said), and --maps
    checked against its stages (a typo is a usage error, not one failed frame after
    another)."""
    info = client.model_info()
    unknown = [m for m in args.maps if m not in info.stage_names]
    if unknown:
        raise _UsageError(
            f"unknown feature map {unknown[0]!r}; the model has {', '.join(info.stage_names)}"
        )
    return info


def _report(args: argparse.Namespace, results: Iterator[Result], reporter: Reporter) -> int:
    closed: BrokenPipeError | None = None
    try:
        for result in results:
            reporter.add(result)
    except BrokenPipeError as exc:
        # The reader went away (`| head`): the command stops there, quietly, its status
        # saying what it found before (it said 0 for `analyze --fail-on-damage | head -1`
        # on damaged and failed frames). What is still written goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        closed = exc
    finally:  # also when Ctrl-C or SIGTERM ended the results (see Interruption)
        reporter.close()
        if not args.json and reporter.count:
            print(reporter.summary(), file=sys.stdout)
    status = 0
    if reporter.failed:
        print(
            f"convstream {args.command}: {reporter.failed} of {reporter.count} "
            f"frame{'' if reporter.count == 1 else 's'} failed",
            file=sys.stderr,
        )
        status = EXIT_FRAMES
    elif args.fail_on_damage and reporter.damaged:
        print(
            f"convstream {args.command}: {reporter.damaged} of {reporter.count} "
            f"frame{'' if reporter.count == 1 else 's'} damaged",
            file=sys.stderr,
        )
        status = EXIT_DAMAGED
    if closed is not None:  # nothing more of the command: convstream's main ends it
        raise OutputClosed(status) from closed
    return status


class OutputClosed(BrokenPipeError):
    """stdout's reader went away; ``status`` is the command's exit status, as far as it got."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the output's reader went away (exit status {status})")
        self.status = status


def _reporter(args: argparse.Namespace, total: int | None, name_width: int) -> Reporter:
    return Reporter(
        sys.stdout,
        sys.stderr,
        json_lines=args.json,
        overlays=args.save_overlays,
        maps=args.save_maps,
        arrays=args.save_arrays,
        total=total,
        name_width=name_width,
    )


def _stage_names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected stage names such as stage3, got {value!r}")
    return names


def _analyze(args: argparse.Namespace) -> int:
    try:
        paths = image_files(args.paths)
    except SourceError as exc:
        return _usage(args, exc.message)
    for path in args.paths:  # named here, not uploaded whole to be refused as "not an image"
        try:
            kind = None if path.is_dir() else video_container(path)
        except OSError as exc:
            return _usage(args, f"cannot read {path}: {exc.strerror or exc}")
        if kind is not None:
            return _usage(
                args,
                f"{path} is a video ({kind}); analyze takes images and folders of them: "
                f"stream a video's frames with `convstream stream {shlex.quote(str(path))}`",
            )
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        return _usage(args, f"no image files ({suffixes}) in {', '.join(map(str, args.paths))}")
    width = max(display_width(printable(str(path))) for path in paths)
    skipped = other_files(args.paths)
    if skipped:  # said, so that a count of results is not a surprise
        names = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(
            f"convstream analyze: left out {len(skipped)} "
            f"{'files that are not images' if len(skipped) > 1 else 'file that is not an image'}"
            f": {names}",
            file=sys.stderr,
        )

    def body(client: Client) -> int:
        _ready(args, client)
        # the paths, read as the stream takes them: a file that is no image fails alone
        results = client.stream(paths, resume=True)
        reporter = _reporter(args, len(paths), width)
        try:
            return _report(args, results, reporter)
        finally:  # Ctrl-C, SIGTERM, the server lost: which images have no result, in words
            _say_not_analysed(paths, reporter.count)

    return _run(args, body)


def _say_not_analysed(paths: list[Path], answered: int) -> None:
    """Results come in the order of ``paths``: those after the first ``answered`` have none."""
    left = paths[answered:]
    if left:
        more = f" and {len(left) - 1} more after it" if len(left) > 1 else ""
        print(
            f"convstream analyze: stopped after {answered} of {len(paths)} images; "
            f"not analysed: {left[0]}{more}",
            file=sys.stderr,
        )


def _evaluate(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        return _usage(args, f"{folder} is not a folder; expected one holding damaged/ and intact/")
    sets: dict[bool, list[Path]] = {}
    for damaged, label in ((True, "damaged"), (False, "intact")):
        sub = folder / label
        if not sub.is_dir():
            has = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir())
            return _usage(
                args,
                f"{folder} has no {label}/ folder; expected damaged/ and intact/ folders of "
                f"images, one for each kind (it has {', '.join(has) or 'no folders'})",
            )
        try:
            sets[damaged] = image_files([sub])
        except SourceError as exc:
            return _usage(args, exc.message)
        if not sets[damaged]:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            return _usage(args, f"no image files ({suffixes}) in {sub}")
    paths = [*sets[True], *sets[False]]
    truth = [True] * len(sets[True]) + [False] * len(sets[False])

    def body(client: Client) -> int:
        info = client.model_info()
        kept: list[tuple[str, float, bool]] = []
        failed: list[str] = []
        score_only = ResultOptions(heatmap=False)
        results = client.stream(paths, options=score_only, resume=True)
        for path, damaged, result in zip(paths, truth, results, strict=True):
            if result.error is not None:  # left out, and said: the rest are measured
                failed.append(f"{path}: {result.error.message}")
            else:
                kept.append((str(path), result.score, damaged))
        for line in failed[:10]:
            print(f"convstream evaluate: left out {line}", file=sys.stderr)
        if len(failed) > 10:
            print(f"convstream evaluate: ... and {len(failed) - 10} more", file=sys.stderr)
        kinds = {damaged for _, _, damaged in kept}
        if kinds != {True, False}:
            none = "damaged" if True not in kinds else "intact"
            print(
                f"convstream evaluate: no {none} image could be analysed, so nothing is measured",
                file=sys.stderr,
            )
            return EXIT_FRAMES
        names, scores, labels = zip(*kept, strict=True)
        evaluation = labelled(names, scores, labels, info.threshold)
        if args.json:
            print(json_text({**evaluation_json(evaluation), "left_out": failed}))
        else:
            print(evaluation_text(evaluation, str(folder), failed=len(failed)))
        return EXIT_FRAMES if failed else 0

    return _run(args, body)


def _stream(args: argparse.Namespace) -> int:
    source: str | int = int(args.source) if args.source.isdigit() else args.source
    if isinstance(source, str) and "://" not in source and Path(source).is_dir():
        return _usage(
            args,
            f"{source} is a folder; stream takes a video file, a URL or a camera index: "
            f"analyse a folder's images with `convstream analyze {shlex.quote(source)}`",
        )
    if isinstance(source, str) and "://" not in source and not Path(source).is_file():
        if _servers_camera(args, source):  # a newcomer's `convstream stream demo`
            return _usage(
                args,
                f"no such video file: {source}; {source} is a camera the server pulls: "
                f"watch it with `convstream watch {shlex.quote(source)}`",
            )
        return _usage(args, f"no such video file: {source} (or give a camera index, e.g. 0)")
    if args.max_frames is not None and args.max_frames < 1:
        return _usage(args, f"--max-frames must be at least 1, got {args.max_frames}")
    try:
        check_loop(args.loop, source)
    except ValueError as exc:
        return _usage(args, f"--loop: {exc}")
    # --queue-size is bounded_queue's: the other policies would ignore it without a word
    freshness: Freshness = args.freshness or (
        "bounded_queue" if args.queue_size is not None else "lossless"
    )
    if args.queue_size is not None and freshness != "bounded_queue":
        return _usage(
            args,
            f"--queue-size is for --freshness bounded_queue (--freshness {freshness} ignores "
            "it: lossless queues every frame, latest_only only the newest); drop one of them",
        )
    if args.queue_size is not None and args.queue_size < 1:
        return _usage(args, f"--queue-size must be at least 1, got {args.queue_size}")
    if args.publish:  # the server would refuse the name only once frames were sent
        name = args.name if args.name is not None else Video.default_name(source)
        try:
            check_published_name(name)
        except ValueError as exc:
            given = "--name" if args.name is not None else "the name taken from SOURCE"
            fix = "" if args.name is not None else "; give one with --name"
            return _usage(args, f"--publish: {given}: {exc}{fix}")

    def body(client: Client) -> int:
        realtime = not args.fast
        with Video(
            source,
            name=args.name,
            max_frames=args.max_frames,
            realtime=realtime,
            loop=args.loop,
        ) as video:
            largest = _ready(args, client).max_stream_queue_size  # the source opened: the server
            if args.queue_size is not None and largest and args.queue_size > largest:
                # the server would refuse the first frame and serve the rest LOSSLESS
                return _usage(
                    args,
                    f"--queue-size {args.queue_size} is more than this server lets one stream "
                    f"hold, {largest} (ModelInfo.max_stream_queue_size, `convstream info` "
                    "shows it); ask for fewer",
                )
            if args.publish and (taken := _name_taken(client, video.name)):
                return _usage(args, f"--publish: {taken}; give the stream another --name")
            total = None if args.loop else video.frame_count
            if args.max_frames is not None:
                total = min(total, args.max_frames) if total else args.max_frames
            results = client.stream(
                video.frames(),
                freshness=freshness,
                queue_size=args.queue_size,
                resume=args.resume,
                publish=args.publish,
            )
            if args.publish:
                results = _published_or_stop(results)
            reporter = _reporter(args, total, display_width(printable(video.name)) + 7)
            try:
                code = _report(args, results, reporter)
            except _NotPublished as refused:
                error = refused.args[0]
                print(
                    f"convstream stream: --publish: the server did not publish the stream, "
                    f"which stopped: {error}",
                    file=sys.stderr,
                )
                return EXIT_REFUSED if isinstance(error, PermissionDenied) else EXIT_USAGE
        if code == 0 and not video.frames_read:
            return EXIT_SOURCE  # the Video said so
        return code

    try:
        return _run(args, body)
    except ValueError as exc:  # an option the library refuses when the stream starts
        return _usage(args, str(exc))


def _name_taken(client: Client, name: str) -> str:
    """Why a stream cannot publish as ``name`` on this server, from the cameras the call may
    list: a camera or another published stream has it, or a name that reads as it; "" if
    none does. The server would refuse it only once frames were sent, and the stream went on
    unpublished, never on the dashboard, however long it looped."""
    for camera in client.cameras():
        if folded_id(camera.id) == folded_id(name):
            stream = camera.source_kind == "stream"
            what = "another client's published stream" if stream else "a configured camera"
            said = "is" if camera.id == name else f"reads as {camera.id!r},"
            return f"{name!r} {said} {what} on this server"
    return ""


class _NotPublished(Exception):
    """The server refused to publish a stream (args: its error)."""


def _published_or_stop(
    results: Generator[Result, None, None],
) -> Generator[Result, None, None]:
    """``results``, ended by _NotPublished (the stream closed) if the first says the server
    refused to publish the stream (a name taken since it was checked, or one the token may
    not use)."""
    with contextlib.closing(results):
        first = True
        for result in results:
            refused = isinstance(result.error, Rejected | PermissionDenied)
            if first and refused and not result.published:
                raise _NotPublished(result.error)
            first = False
            yield result


def _info(args: argparse.Namespace) -> int:
    def body(client: Client) -> int:
        info = client.model_info()
        print(json_text(model_info_json(info)) if args.json else model_info_text(info))
        return 0

    return _run(args, body)


def _cameras(args: argparse.Namespace) -> int:
    def body(client: Client) -> int:
        cameras = client.cameras()
        if args.json:
            for camera in cameras:
                print(json_text(camera_json(camera)))
        else:
            # On a terminal each row fits its width (the lesser columns go, a long error is
            # cut: --json has it all); piped, rows stay whole for grep.
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
            print(cameras_text(cameras, width=width))
        return 0

    return _run(args, body)


def _watch(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        return _usage(args, f"--count must be at least 1, got {args.count}")
    if args.max_fps is not None and not 0 <= args.max_fps <= MAX_WATCH_FPS:
        return _usage(
            args,
            f"--max-fps must be 0 (all) to {MAX_WATCH_FPS:g} results per second, got "
            f"{args.max_fps}",
        )

    def body(client: Client) -> int:
        # Asked first, as --maps is: a typo is a usage error that names the right ids.
        try:
            check_camera_id(args.camera_id)
        except ValueError as exc:  # the client's own rule, which never echoes a URL
            return _usage(args, str(exc))
        _ready(args, client)
        cameras = {camera.id: camera for camera in client.cameras()}
        if args.camera_id not in cameras:
            have = f"the server has {', '.join(cameras)}" if cameras else "the server pulls none"
            if client.has_token:
                # A token may list some cameras only: "unknown camera 'yard'" of a camera
                # that runs sent an operator looking for it. The server says which it is:
                # PERMISSION_DENIED naming what the token may watch, or NOT_FOUND.
                asked = client.watch(args.camera_id, max_fps=1)
                with contextlib.closing(asked), contextlib.suppress(NotFound):
                    next(iter(asked), None)
                have = f"the server lists {', '.join(cameras) or 'none'} to this token"
            alike = _reads_alike(args.camera_id, list(cameras))
            mean = f"; did you mean {alike!r}?" if alike else ""
            return _usage(args, f"unknown camera {args.camera_id!r}{mean} ({have})")
        camera = cameras[args.camera_id]
        # its own pace too: a camera sending a frame every 5 s is slow, not paused
        rates = [r for r in (args.max_fps, camera.fps_cap, camera.fps_in) if r]
        quiet_s = max(QUIET_S, 3 / min(rates, default=1.0))
        lull = CameraLull(client, args.camera_id, quiet_s)
        opening = datetime.now(UTC) - (camera.since or datetime.now(UTC))
        slow_open = camera.state == "connecting" and opening > timedelta(seconds=2)
        if slow_open or camera.state in ("stalled", "reconnecting"):
            lull.told(camera)  # not said again while it lasts
            # Results come once its frames do; without this line the command looks hung.
            why = f" Last error: {camera.last_error}" if camera.last_error else ""
            print(
                f"convstream watch: camera {camera.id!r} is {camera.state}; waiting for its "
                f"frames (Ctrl-C to stop).{why}",
                file=sys.stderr,
            )
        # Overlays and maps are drawn beside the analysed frame, which comes when asked for.
        drawn = args.save_overlays or args.save_maps
        options = replace(client.options, input_jpeg=True) if drawn else None
        watching = client.watch(
            args.camera_id, options=options, max_fps=args.max_fps, resume=args.resume
        )
        reporter = WatchReporter(
            sys.stdout,
            sys.stderr,
            json_lines=args.json,
            overlays=args.save_overlays,
            maps=args.save_maps,
            arrays=args.save_arrays,
            total=args.count,
            gap_s=quiet_s,  # a pause the lull would have told of
        )
        with contextlib.closing(watching), lull:  # closing ends the call at --count
            results = itertools.islice(lull.timed(watching, reporter.notice), args.count)
            code = _report(args, results, reporter)
        if code in (0, EXIT_DAMAGED) and (args.count is None or reporter.count < args.count):
            # only a published stream ends a watch by itself
            print(f"convstream watch: stream {args.camera_id!r} ended", file=sys.stderr)
        return code

    return _run(args, body)


QUIET_S = 3.0  # no result for this long: `watch` asks the server how its camera is
ASK_S = 3.0  # the longest it waits for the answer


class CameraLull:
    """Says on stderr when a watched camera goes quiet because it is down, and when its
    results come again: without it, `watch` just stops printing while a camera reconnects.

    A thread asks ListCameras once a second while no result has come for ``quiet_s``, and
    at once when the server says the camera is reconnecting (a result of no frame, its
    ``camera_state`` set: said here in the same words, not as a frame of the table; one
    that says "stalled" waits for ``quiet_s``, as a camera that pauses for a second or two
    is no news).
    """

    def __init__(self, client: Client, camera_id: str, quiet_s: float) -> None:
        self._client = client
        self._camera_id = camera_id
        self._quiet_s = quiet_s
        self._last = time.monotonic()
        self._told = ""  # what was last said: the state and error, "" while results come
        self._analysed: int | None = None  # the camera's frames analysed when results stopped
        self._invalid = 0  # and its frames refused then
        self._stop = threading.Event()
        self._down = threading.Event()  # the server said the camera went down: ask now
        self._results = 0  # frames' results so far
        self._thread = threading.Thread(target=self._run, name="watch-lull", daemon=True)

    def __enter__(self) -> CameraLull:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def timed(
        self, results: Iterator[Result], notice: Callable[[Result], None]
    ) -> Iterator[Result]:
        """The frames' results, timed; the server's word that the camera went down is
        taken out, handed to ``notice``, and said as the lull says a state."""
        for result in results:
            if result.camera_state is not None:
                notice(result)
                if result.camera_state == "reconnecting":
                    self._down.set()
                continue
            self._last = time.monotonic()
            self._analysed = None
            if self._told:
                self._told = ""
                # "again" of a camera down since before the first ("results again" of a
                # camera that had never sent a frame read as a camera back, a review's)
                said = "results again" if self._results else "its first results"
                print(
                    f"convstream watch: {_clock()} camera {self._camera_id!r}: {said}",
                    file=sys.stderr,
                )
            self._results += 1
            yield result

    def told(self, camera: CameraInfo) -> None:
        """Mark the camera's state and error as said (the command said them as it began)."""
        self._told = _state_said(camera)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            quiet = time.monotonic() - self._last
            if quiet < self._quiet_s and not self._down.is_set():
                continue
            self._down.clear()
            try:
                # briefly: a frozen link held the question for the whole call timeout
                cameras = {c.id: c for c in self._client.cameras(timeout=ASK_S)}
            except Exception as exc:
                if self._client.closed:  # by Ctrl-C or SIGTERM (Interruption): nothing to say
                    return  # (a RuntimeError, or gRPC's ValueError as it closed, then)
                if not isinstance(exc, ConvstreamError):
                    raise
                quiet = time.monotonic() - self._last
                if isinstance(exc, Unauthenticated | PermissionDenied):
                    # the watch ends with this refusal as it tries again
                    code = exc.code.name if exc.code else ""
                    hint = refused_hint(code, token=self._client.has_token, message=exc.message)
                    self._say(
                        "refused",
                        f"no result for {quiet:.0f} s, and the server refuses this client: "
                        f"{_hinted(exc.message, hint)}",
                    )
                    continue
                # A stalled link or a server gone quiet: the watch itself notices only when
                # its keepalive fails, up to 25 s on. Its error says which, with what to
                # check (a certificate for another name keeps a watch waiting for ever).
                hint = unavailable_hint(exc.message, self._client.tls)
                self._say(
                    "unreachable",
                    f"no result for {quiet:.0f} s, and the server does not answer: "
                    f"{exc.message} ({hint or 'the network or the server is down'}); waiting",
                )
                continue
            camera = cameras.get(self._camera_id)
            if camera is None:
                continue
            if camera.state == "running":
                # Analysed frames that did not come: a camera that is only slow (a frame
                # every 5 s) analyses none meanwhile, and is not the link's fault.
                if self._analysed is None:
                    self._analysed, self._invalid = camera.frames_analysed, camera.frames_invalid
                elif camera.frames_analysed >= self._analysed + 2:
                    self._say(
                        "running",
                        f"no result for {quiet:.0f} s although camera {self._camera_id!r} "
                        "analyses frames: its results are not getting here (a slow or "
                        "stalled link?)",
                    )
                elif camera.frames_invalid >= self._invalid + 2:
                    # frames that come and cannot be analysed: "running", and silence
                    self._say(
                        "invalid",
                        f"no result for {quiet:.0f} s: camera {self._camera_id!r} runs, but "
                        f"its frames cannot be analysed ({camera.frames_invalid - self._invalid}"
                        f" refused meanwhile). Last error: {camera.last_error}",
                    )
                continue
            why = f" Last error: {camera.last_error}" if camera.last_error else ""
            self._say(
                _state_said(camera),
                f"camera {self._camera_id!r} is {camera.state}; waiting for its frames.{why}",
            )

    def _say(self, told: str, line: str) -> None:
        """Say line on stderr once while ``told`` lasts (results coming again end it)."""
        if told != self._told and not self._stop.is_set():
            self._told = told
            print(f"convstream watch: {_clock()} {line}", file=sys.stderr)


def _reads_alike(wanted: str, ids: list[str]) -> str | None:
    """The camera id ``wanted`` was meant as: one that reads as it (case, '-', '_', '.', a
    0 for an o: the server refuses ids that read alike, so there is at most one), else the
    closest spelling."""

    same = [i for i in ids if folded_id(i) == folded_id(wanted)]
    if same:
        return same[0]
    close = difflib.get_close_matches(wanted, ids, n=1, cutoff=0.75)
    return close[0] if close else None


def _clock() -> str:
    """The local time a notice of a watch is said at: an outage's start and end, read later
    in a terminal's scrollback, said nothing of when."""
    return f"[{datetime.now().astimezone():%H:%M:%S}]"


def _state_said(camera: CameraInfo) -> str:
    """What a state line said, to say it once: its numbers aside, as a retry's error says
    what it measured ("did not answer within 4.3 s"), and the same line came twice."""
    return f"{camera.state}: {re.sub(r'[0-9.]+', '#', camera.last_error)}"
