"""The command-line flags that reach a server (TLS, client certificate, bearer token), shared
by the client commands and the dashboard, and the hints their failures print."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from convstream.client import errors
from convstream.client._base import ADDRESS_ENV, DEFAULT_ADDRESS, clean_token
from convstream.client.options import TLS
from convstream.v1 import OUT_OF_SCOPE
from convstream.v1.pem import secret_file_warning

TOKEN_ENV = "CONVSTREAM_TOKEN"


def add_address_flag(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """--address, whose default $CONVSTREAM_ADDRESS sets for every command of a shell (a
    server on another port or machine), else 127.0.0.1:50051."""
    given = os.environ.get(ADDRESS_ENV)
    whence = f"from ${ADDRESS_ENV}" if given else f"${ADDRESS_ENV} sets another"
    group.add_argument(
        "--address",
        default=given or DEFAULT_ADDRESS,
        help=f"the convstream server's host:port (default %(default)s; {whence})",
    )


def misspelt_address(environ: Mapping[str, str] | None = None) -> str | None:
    """A warning for a variable that looks like a misspelt $CONVSTREAM_ADDRESS, which no command
    reads: with CONVSTREAM_ADRESS set, a newcomer's commands went to 127.0.0.1:50051 and said
    only that it was unavailable."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        upper = name.upper()
        if name == ADDRESS_ENV or (ADDRESS_ENV in upper and upper != ADDRESS_ENV):
            continue  # the name itself, or a variable of one's own (CONVSTREAM_ADDRESS_V6)
        if upper == ADDRESS_ENV or difflib.get_close_matches(upper, [ADDRESS_ENV], cutoff=0.9):
            return f"${name} is set, which no command reads: did you mean ${ADDRESS_ENV}?"
    return None


def add_security_flags(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """--tls, --ca, --cert, --key, --server-name, --token and --token-file."""
    group.add_argument("--tls", action="store_true", help="use TLS with the system's CAs")
    group.add_argument("--ca", type=Path, help="CA certificate (PEM) of the server; implies TLS")
    group.add_argument("--cert", type=Path, help="client certificate (PEM) for mutual TLS")
    group.add_argument("--key", type=Path, help="client private key (PEM), with --cert")
    group.add_argument(
        "--server-name",
        metavar="NAME",
        help="the name the server's certificate carries, when the address does not use it "
        "(e.g. connecting by IP); implies TLS",
    )
    group.add_argument(
        "--token",
        help="sent as 'authorization: Bearer TOKEN' with each call; other users can read it "
        f"in `ps`, so prefer --token-file or the {TOKEN_ENV} environment variable",
    )
    group.add_argument(
        "--token-file", type=Path, metavar="FILE", help="a file whose first line is the token"
    )
    group.add_argument(
        "--allow-plaintext-token",
        action="store_true",
        help="send the token without TLS to another machine, where the network itself is "
        "private (a VPN); refused otherwise, as anyone who sees the traffic could read it",
    )


def tls_from_flags(args: argparse.Namespace) -> TLS | None:
    """TLS settings when any TLS flag is given, else None (plaintext)."""
    if args.tls or args.ca or args.cert or args.key or args.server_name:
        return TLS(ca=args.ca, cert=args.cert, key=args.key, server_name=args.server_name)
    return None


def token_from_flags(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> str | None:
    """The bearer token: --token, else --token-file's first line, else $CONVSTREAM_TOKEN.

    Raises ValueError for both flags at once, or a file missing, unreadable or empty.
    """
    if args.token and args.token_file:
        raise ValueError("give the token with --token or --token-file, not both")
    if args.token_file:
        token = read_token_file(args.token_file)
        # the dashboard's and the server's rule for a file of secrets
        said = secret_file_warning(args.token_file, f"--token-file {args.token_file}")
        if said is not None:
            print(f"convstream: warning: {said}", file=sys.stderr)
        return token
    environ = os.environ if environ is None else environ
    if args.token:
        return _token(args.token, "--token")
    return _token(environ.get(TOKEN_ENV) or None, TOKEN_ENV)


def read_token_file(path: Path) -> str:
    """The token on the first line of ``path`` (read again by the dashboard on SIGHUP).

    Raises ValueError for a file missing, unreadable, not text or with an empty first line.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # BOM too
    except UnicodeDecodeError:
        raise ValueError(
            f"--token-file {path} is not a text file (a token is a line of printable ASCII)"
        ) from None
    except OSError as exc:
        raise ValueError(f"--token-file {path}: {exc.strerror}") from exc
    first = lines[0].strip() if lines else ""
    token = _token(first, f"--token-file {path}") if first else None
    if not token:
        raise ValueError(f"--token-file {path}: the first line is empty")
    return token


def _token(token: str | None, given: str) -> str | None:
    """clean_token's, with where the token came from in its error."""
    if token is not None and token.lstrip().startswith("-----BEGIN"):
        raise ValueError(
            f"{given}: this is a PEM file's text (a certificate or a key), not a token: give "
            "the token the server's operator made with `convstream token`"
        )
    try:
        return clean_token(token)
    except ValueError as exc:
        raise ValueError(f"{given}: {exc}") from None


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` (a token) to the new file ``path``, mode 600 whatever the umask, and
    no newline; never over a file that is there (FileExistsError), nor through a link.

    Raises:
        OSError: the file is there, or cannot be made or written (none is left behind then).
    """
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory; give a file's path")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret)
    except OSError:  # a full disk, say: leave no empty file to block a rerun
        path.unlink(missing_ok=True)
        raise


# The Python API's words in check_plaintext_token's refusal, and the flags that say the same
_PLAINTEXT_WORDS = {
    "connect with TLS (tls=TLS(...))": "connect with TLS (--ca FILE, or --tls)",
    "pass allow_plaintext_token=True": "pass --allow-plaintext-token",
}


def flag_words(message: str, args: argparse.Namespace) -> str:
    """A refusal to send a token in plaintext in the flags' words, not the Python API's, and
    naming where the token came from (set in the shell, it may be news to the user)."""
    for words, flags in _PLAINTEXT_WORDS.items():
        message = message.replace(words, flags)
    given = "--token" if args.token else f"--token-file {args.token_file}"
    if not args.token and args.token_file is None:
        given = f"${TOKEN_ENV}"
    return message.replace("send the token to", f"send the token of {given} to")


def refused_hint(code: str, *, token: bool, message: str = "") -> str:
    """What to do when the server refused a call for its token (a gRPC status code's name,
    the server's ``message``); ``token``: whether the call carried one."""
    if code == "UNAUTHENTICATED" and not token:
        return f"give this server's token with --token-file FILE or the {TOKEN_ENV} variable"
    if code == "UNAUTHENTICATED":  # revoked, mistyped, or another server's
        return (
            "this server does not take that token: ask its operator for one it does "
            "(`convstream token` makes one for its config)"
        )
    if code == "PERMISSION_DENIED" and OUT_OF_SCOPE in message:  # its role is not the matter
        return (
            "the token is for other cameras: ask for one whose cameras include this one "
            "(`convstream token --camera ID`, once per camera or pattern, makes one)"
        )
    if code == "PERMISSION_DENIED":
        return "the token's role does not allow this; `convstream token --role analyze` makes one"
    return ""


# unavailable_hint's words for the commands: their flags
FLAG_TERMS: Mapping[str, str] = {
    "ca": "--ca FILE",
    "cert": "--cert FILE and --key FILE",
    "server_name": "--server-name NAME",
    "plaintext": "leave out --tls, --ca, --cert and --key",
    "tls": "--tls",
}


def unavailable_hint(message: str, tls: TLS | None) -> str:
    """What to check when a call found no server, in the commands' flags."""
    return errors.unavailable_hint(message, tls, FLAG_TERMS)
