"""The `convstream` command: `convstream serve` runs the server; client commands sit beside it."""

from __future__ import annotations

import argparse
import io
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence

from convstream.cli.samples import add_samples
from convstream.cli.serve import RELOAD_ASKED, add_serve, quiet_log_level
from convstream.cli.token import add_token


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
    if not serving or quiet_log_level(args_given):
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    main_thread = threading.current_thread() is threading.main_thread()
    if serving and hasattr(signal, "SIGHUP") and main_thread:
        signal.signal(signal.SIGHUP, lambda signum, frame: RELOAD_ASKED.set())
    parser = argparse.ArgumentParser(
        prog="convstream", description="Damage scores and feature maps for camera frames."
    )
    from convstream.client._base import client_version

    parser.add_argument("--version", action="version", version=f"convstream {client_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve(commands)
    add_token(commands)
    add_samples(commands)
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
