"""`convstream token`: a new access token, written as the line a config file takes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_token(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
