"""`convstream dashboard`: the live monitoring page for a server's cameras.

Register it beside the other commands with ``add_commands(subparsers)``, or run it alone with
``python -m convstream.dashboard`` (same flags). Exit codes: 0 stopped by SIGINT/SIGTERM,
1 the port could not be bound, 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from convstream.client.connection_flags import (
    add_address_flag,
    add_security_flags,
    flag_words,
    tls_from_flags,
    token_from_flags,
)
from convstream.dashboard.settings import DashboardSettings
from convstream.v1.logs import fatal, set_up
from convstream.v1.pem import secret_file_warning
from convstream.v1.rlimit import raise_open_files

__all__ = ["add_commands", "run_dashboard"]

PORT_ENV = "CONVSTREAM_DASHBOARD_PORT"
_EXAMPLES = """examples:
  convstream dashboard        # server on 127.0.0.1:50051, page on :8080
  convstream dashboard --address 10.0.0.5:50051 --host 0.0.0.0 \\
      --access-token-file dashboard.token \\
      --https-cert page.crt --https-key page.key
  convstream dashboard --threshold 0.7 --alert-cooldown 30
"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_address_flag(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the page listens on (default %(default)s; 0.0.0.0 exposes it)",
    )
    given = os.environ.get(PORT_ENV)  # as run.sh takes it, for every dashboard of a shell
    whence = f"from ${PORT_ENV}" if given else f"${PORT_ENV} sets another"

    def port(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            whence = f" (from ${PORT_ENV})" if text == given else ""
            raise argparse.ArgumentTypeError(
                f"expected a port number, got {text!r}{whence}"
            ) from None

    p.add_argument(
        "--port",
        type=port,
        default=given or 8080,
        help=f"the page's port (default %(default)s; {whence})",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name, e.g. a reverse proxy's public name "
        "or the page's own name in your DNS (repeatable); on 127.0.0.1 the page answers only "
        "to localhost and loopback addresses, elsewhere to IP addresses and this machine's "
        "own names unless names are given, so that no web page elsewhere can read it "
        "through a name of its own pointed at the page's address",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="score that raises an alert, 0..1 (default: the server's threshold, which its "
        "config sets, else its model's own; a reload's change shows within a poll)",
    )
    p.add_argument(
        "--alert-cooldown",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="shortest time between two alerts of one camera; a package crossing inside it "
        "is alerted once it has passed, never dropped (default %(default)s)",
    )
    p.add_argument(
        "--alert-frames",
        type=int,
        default=2,
        metavar="N",
        help="results in a row at or over the threshold that raise an alert: 2 halves the "
        "false alarms of 1 on the demo conveyor and misses a few more damaged packages "
        "(docs/dashboard.md, 'Setting up the dashboard'; default %(default)s)",
    )
    p.add_argument(
        "--alerts-dir",
        type=Path,
        metavar="DIR",
        help="also write alerts and their snapshots here, and show them again after a "
        "restart (default: kept in memory only)",
    )
    p.add_argument(
        "--alerts-max-mb",
        type=float,
        metavar="MB",
        help="megabytes of alert files (their bytes, not the disk blocks they take) kept in "
        "--alerts-dir at most; past it the oldest are deleted (default 1000: about 10,000 "
        "alerts of the demo's)",
    )
    p.add_argument(
        "--contact",
        metavar="TEXT",
        help="whom operators call about a camera that is down, as its tile says it, e.g. "
        "'maintenance, ext. 4411' (default: advice for whoever runs the server)",
    )
    p.add_argument(
        "--max-fps",
        type=float,
        default=5.0,
        metavar="N",
        help="frames per second shown per camera (default %(default)s)",
    )
    p.add_argument(
        "--history",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="seconds of score history per camera (default %(default)s)",
    )
    page = p.add_argument_group(
        "who may see the page (docs/dashboard.md, 'Setting up the dashboard')"
    )
    page.add_argument(
        "--access-token-file",
        type=Path,
        metavar="FILE",
        help="the page asks for the token in FILE once per browser (a login form; scripts "
        "send 'Authorization: Bearer <token>'); a FILE not there yet is made, mode 600, with "
        "a new random token (default: no login, for a page kept on 127.0.0.1)",
    )
    page.add_argument(
        "--https-cert",
        type=Path,
        metavar="FILE",
        help="serve the page over HTTPS with this PEM certificate (its chain after it)",
    )
    page.add_argument(
        "--https-key", type=Path, metavar="FILE", help="the PEM private key of --https-cert"
    )
    group = p.add_argument_group("reaching a server with TLS or tokens (role watch is enough)")
    add_security_flags(group)
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="the least severe log lines written to stderr (default warning)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (default) or one JSON object a line, for a log shipper; "
        "so too the line that says why it did not start",
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dashboard`` to the ``convstream`` command (it calls ``args.func(args)``)."""
    p = commands.add_parser(
        "dashboard",
        help="serve the live monitoring page for the server's cameras",
        description="A web page with every camera of a convstream server: the live frame\n"
        "with its damage heatmap, score history, state and rates, and alerts, which operators\n"
        "mark handled for every screen. It changes nothing on the server.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=_dashboard)


# DashboardSettings' names for its values, and the flags that give them here
_FLAGS = {
    "address": "--address",
    "port": "--port",
    "threshold": "--threshold",
    "max_fps": "--max-fps",
    "history_s": "--history",
    "alert_cooldown_s": "--alert-cooldown",
    "alert_frames": "--alert-frames",
    "alerts_max_mb": "--alerts-max-mb",
    "contact": "--contact",
}


def _in_flags(message: str) -> str:
    """A settings error said of the flag that gave the value ("--max-fps must be ...")."""
    name, _, rest = message.partition(" ")
    return f"{_FLAGS[name]} {rest}" if name in _FLAGS else message


def _dashboard(args: argparse.Namespace) -> int:
    from convstream.dashboard.access import read_access_token
    from convstream.dashboard.app import serve
    from convstream.dashboard.https import https_context, https_warnings

    if args.alerts_max_mb is not None and args.alerts_dir is None:
        return _stop(
            args,
            "--alerts-max-mb bounds the files of --alerts-dir, and no --alerts-dir is given "
            "(alerts are kept in memory only, the newest 100)",
        )
    if (args.https_cert is None) != (args.https_key is None):
        return _stop(
            args, "--https-cert and --https-key go together: the page's certificate and its key"
        )
    try:
        access_token = None
        if args.access_token_file is not None:
            try:
                access_token, made = read_access_token(args.access_token_file)
            except OSError as exc:
                path = args.access_token_file
                raise ValueError(f"--access-token-file {path}: {exc.strerror}") from None
            said = secret_file_warning(
                args.access_token_file,
                f"--access-token-file {args.access_token_file}",
                ", and make a new token if someone may have read it",
            )
            if said is not None:
                print(f"convstream dashboard: warning: {said}", file=sys.stderr)
            if made:
                print(
                    f"made a new access token in {args.access_token_file} (mode 600): give "
                    "it to whoever may see the page; the page asks for it once per browser",
                    flush=True,
                )
        settings = DashboardSettings(
            address=args.address,
            host=args.host,
            port=args.port,
            threshold=args.threshold,
            alert_cooldown_s=args.alert_cooldown,
            alert_frames=args.alert_frames,
            alerts_dir=args.alerts_dir,
            alerts_max_mb=DashboardSettings.alerts_max_mb
            if args.alerts_max_mb is None
            else args.alerts_max_mb,
            max_fps=args.max_fps,
            history_s=args.history,
            token=token_from_flags(args),
            token_file=args.token_file,
            tls=tls_from_flags(args),
            allow_plaintext_token=args.allow_plaintext_token,
            allowed_hosts=tuple(args.allow_host),
            access_token=access_token,
            https_cert=args.https_cert,
            https_key=args.https_key,
            contact=args.contact,
        )
        if settings.tls is not None:
            settings.tls.credentials()  # a missing or unreadable PEM file: say so now
        https_context(settings)  # and of the page's own certificate
        https_warnings(settings)  # an expired one: refused now
        if access_token is not None and access_token == settings.token:
            print(
                "convstream dashboard: warning: the page's access token is this dashboard's "
                "token for the server: whoever may watch the page could call the server too; "
                "give the page a token of its own",
                file=sys.stderr,
            )
    except (OSError, ValueError) as exc:
        return _stop(args, flag_words(_in_flags(str(exc)), args))
    set_up(args.log_level, args.log_format)  # as the server's lines: UTC times, ISO 8601
    raise_open_files("the dashboard")  # a file a viewer's connection (rlimit.py)
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _stop(
                args,
                f"port {settings.port} on {settings.host} is taken (by another dashboard, or "
                "another program): give another with --port",
                status=1,
            )
        return _stop(args, str(exc), status=1)
    except KeyboardInterrupt:
        return 0
    return 0


def _stop(args: argparse.Namespace, message: str, status: int = 2) -> int:
    """Why the dashboard does not start, as its log's lines are (a JSON line with
    --log-format json), and the status it ends with."""
    print(fatal(args.log_format, "convstream dashboard", message), file=sys.stderr)
    return status


def run_dashboard(argv: Sequence[str] | None = None) -> int:
    """`convstream dashboard` on its own: parse argv (sys.argv[1:] when None) and run."""
    p = argparse.ArgumentParser(
        prog="convstream dashboard",
        description="The live monitoring page for a convstream server's cameras.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # as under `convstream`: options whole or refused
    )
    _add_arguments(p)
    return _dashboard(p.parse_args(argv))
