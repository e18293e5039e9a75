"""Who may call what: bearer tokens with roles, checked by an interceptor (TLS: tls.py).

Roles, each including the one before it:

    watch     GetModelInfo, ListCameras, WatchCamera (what a dashboard needs)
    analyze   + Analyze, StreamFrames (what an integration that sends frames needs)

Health is open to all (load balancers probe it without credentials); every other method,
reflection included (v1 and v1alpha), needs a valid token of any role. The config holds
each token's SHA-256, never the token itself; ``convstream token`` makes a token and prints
the line to paste.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from prometheus_client import Counter

from convstream.server.config import TokenConfig

SERVICE = "/convstream.v1.Convstream/"
ROLES = ("watch", "analyze")
NEEDS = {
    "GetModelInfo": "watch",
    "ListCameras": "watch",
    "WatchCamera": "watch",
    "Analyze": "analyze",
    "StreamFrames": "analyze",
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def new_token() -> tuple[str, str]:
    """A fresh random token and its SHA-256 (hex), for the config.

    Never one that starts with '-' (1 in 64 of token_urlsafe's): ``--token -x...`` reads as
    an option to argparse, and to most command lines, and was refused as a missing value.
    """
    token = "-"
    while token.startswith("-"):
        token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid ``authorization: Bearer <token>`` for their method.

    Installed whatever the config says, so that a reload can turn tokens on or off: with no
    tokens every call passes through untouched.
    """

    def __init__(self, tokens: Sequence[TokenConfig], refusals: Counter | None = None) -> None:
        """
        Args:
            tokens: the tokens that may call, each with its role; none: no token needed.
            refusals: counts each refused call by method and reason, when given.
        """
        self._tokens: tuple[tuple[bytes, TokenConfig], ...] = ()
        self._refusals = refusals
        self.replace(tokens)

    @property
    def tokens(self) -> tuple[TokenConfig, ...]:
        return tuple(config for _, config in self._tokens)

    def replace(self, tokens: Sequence[TokenConfig]) -> None:
        """Check new calls against ``tokens`` from now on; calls already open carry on."""
        # One assignment of an immutable tuple: a call is checked against the old set or the
        # new one, never a mix.
        self._tokens = tuple((bytes.fromhex(t.sha256), t) for t in tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        tokens = self._tokens
        if not tokens or handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        token = _lookup(tokens, handler_call_details.invocation_metadata or ())
        if isinstance(token, str):
            return self._deny(handler, method, grpc.StatusCode.UNAUTHENTICATED, token)
        needed = NEEDS.get(method.removeprefix(SERVICE), "watch")
        if not _role_allows(token.role, needed):
            return self._deny(
                handler,
                method,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {token.name!r} has role {token.role!r}; {method.rsplit('/', 1)[-1]} "
                f"needs role {needed!r}",
            )
        return handler

    def _deny(
        self, handler: grpc.RpcMethodHandler, method: str, code: grpc.StatusCode, message: str
    ) -> Any:
        if self._refusals is not None:
            # only methods this server has get here (handler is not None): bounded labels
            self._refusals.labels(method.lstrip("/"), code.name.lower()).inc()
        return _deny(handler, code, message)


def _lookup(
    tokens: tuple[tuple[bytes, TokenConfig], ...], metadata: Sequence[tuple[str, str | bytes]]
) -> TokenConfig | str:
    """The token's config, or why the call has none (the message to refuse it with)."""
    header = next((v for k, v in metadata if k == "authorization"), None)
    if header is None:
        return "this server needs a token: send metadata 'authorization: Bearer <token>'"
    parts = header.split(maxsplit=1) if isinstance(header, str) else []
    # RFC 7235: the scheme is case-insensitive ("bearer" from some HTTP libraries)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return "the authorization metadata must read 'Bearer <token>'"
    digest = hashlib.sha256(parts[1].strip().encode()).digest()
    found = None
    for expected, config in tokens:  # compare with every one: no timing hint
        if hmac.compare_digest(digest, expected):
            found = config
    if found is None:
        return (
            "the token was not recognised: it is none of this server's tokens "
            "(mistyped, or removed from its config?)"
        )
    return found


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as ``handler`` that fails the call with ``code``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    shape = (handler.request_streaming, handler.response_streaming)
    make, behaviour = {
        (False, False): (grpc.unary_unary_rpc_method_handler, unary),
        (True, False): (grpc.stream_unary_rpc_method_handler, unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, streaming),
        (True, True): (grpc.stream_stream_rpc_method_handler, streaming),
    }[shape]
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def token_changes(old: Sequence[TokenConfig], new: Sequence[TokenConfig]) -> list[str]:
    """What a reload changes in the tokens, by name only (never a hash): e.g.
    ``["added 'ci', 'qa'", "removed 'old'", "'dock-3': role watch -> analyze"]``."""
    before: dict[str, list[TokenConfig]] = {}
    after: dict[str, list[TokenConfig]] = {}
    for tokens, by_name in ((old, before), (new, after)):
        for token in tokens:
            by_name.setdefault(token.name, []).append(token)
    changes = []
    for verb, names in (
        ("added", [name for name in after if name not in before]),
        ("removed", [name for name in before if name not in after]),
    ):
        if names:
            changes.append(f"{verb} {', '.join(map(repr, names))}")
    for name in [name for name in after if name in before]:
        was, now = before[name], after[name]
        parts = []
        if sorted(t.role for t in was) != sorted(t.role for t in now):
            parts.append(f"role {'/'.join(t.role for t in was)} -> {'/'.join(t.role for t in now)}")
        if sorted(t.sha256.lower() for t in was) != sorted(t.sha256.lower() for t in now):
            parts.append("a new token (the old one no longer works)")
        if parts:
            changes.append(f"{name!r}: {', '.join(parts)}")
    return changes
