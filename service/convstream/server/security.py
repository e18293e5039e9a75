"""Who may call what: bearer tokens with roles, checked by an interceptor (TLS: tls.py).

Roles, each including the one before it:

    watch     GetModelInfo, ListCameras, WatchCamera (what a dashboard needs)
    analyze   + Analyze, StreamFrames (what an integration that sends frames needs)

Health is open to all (load balancers probe it without credentials); every other method,
reflection included (v1 and v1alpha), needs a valid token of any role. The config holds
each token's SHA-256, never the token itself; ``convstream token`` makes a token and prints
the line to paste.

A token's ``cameras`` (ids or patterns) narrow what it may list and watch: the interceptor
refuses a watch of another camera (PERMISSION_DENIED) and sets SCOPE, the token, for the
call's handler, which lists (ListCameras, a NOT_FOUND's list) only what it may see.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

import grpc
from prometheus_client import Counter

from convstream.server.config import TokenConfig
from convstream.server.errors import quietly
from convstream.v1 import OUT_OF_SCOPE
from convstream.v1 import convstream_pb2 as pb

SERVICE = "/convstream.v1.Convstream/"
ROLES = ("watch", "analyze")
NEEDS = {
    "GetModelInfo": "watch",
    "ListCameras": "watch",
    "WatchCamera": "watch",
    "Analyze": "analyze",
    "StreamFrames": "analyze",
}
# Check and Watch answer of one service its caller names (a load balancer holds no token);
# List names every camera, so it takes a token, and a scoped one sees its own cameras.
OPEN_PREFIXES = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
# a streaming call with a token is logged (INFO) once it has lasted this long, and as it ends
LOG_CALLS_AFTER_S = 10.0
REFUSALS_LOG_S = 600.0  # a refused call is logged once per caller's host and reason this often
REFUSALS_KEPT = 1024  # (host, reason) pairs remembered for that; past it, the oldest go

logger = logging.getLogger(__name__)

# The token of the call being handled, when it names the cameras it may see (its ``cameras``);
# None: it may see them all (no tokens, or none so narrowed). Set by TokenInterceptor.
SCOPE: ContextVar[TokenConfig | None] = ContextVar("convstream_camera_scope", default=None)
# The name of the token the streaming call being handled was let in with (Analyze and
# StreamFrames are streaming calls here); None: it has none (a server without tokens). Set
# by TokenInterceptor, for what one caller may hold of the server (``caller``).
TOKEN: ContextVar[str | None] = ContextVar("convstream_token", default=None)


def scope_text(token: TokenConfig) -> str:
    """A token's cameras as the log says them: "all", or "'dock-*', 'yard'"."""
    if token.cameras is None:
        return "all"
    return ", ".join(repr(p) for p in token.cameras) or "none"


def cameras_shown(ids: Iterable[str]) -> str:
    """The cameras a NOT_FOUND lists to the call being handled: those of ``ids`` it may see
    (SCOPE), or "none yours" / "none configured"."""
    shown = ", ".join(c for c in ids if visible(c))
    return shown or ("none yours" if SCOPE.get() is not None else "none configured")


def visible(camera_id: str) -> bool:
    """Whether the call being handled may list and watch ``camera_id`` (SCOPE)."""
    token = SCOPE.get()
    return token is None or token.may_see(camera_id)


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
    """Refuses calls without a valid ``authorization: Bearer <token>`` for their method, and
    ends the streaming calls open when a reload's tokens would refuse them.

    Installed whatever the config says, so that a reload can turn tokens on or off: with no
    tokens every call passes through (a streaming one watched, for the first token a reload
    adds).
    """

    def __init__(
        self,
        tokens: Sequence[TokenConfig],
        refusals: Counter | None = None,
        *,
        forwarded: Callable[[Sequence[tuple[str, str | bytes]]], bool] | None = None,
        admitted: Counter | None = None,
    ) -> None:
        """
        Args:
            tokens: the tokens that may call, each with its role; none: no token needed.
            refusals: counts each refused call by method and reason, when given.
            forwarded: whether a call's metadata marks it as forwarded by another process
                of this server: a reload leaves such a call to that process, which ends it
                (and so this end), and counts and logs it once.
            admitted: counts each call a token let in, by method and token name, when given
                (a leaked token's use showed nowhere: only refusals were counted and logged).
        """
        self._tokens: tuple[tuple[bytes, TokenConfig], ...] = ()
        self._refusals = refusals
        self._admitted = admitted
        self._forwarded = forwarded
        self._open: set[_OpenCall] = set()
        self._said: dict[tuple[str, str, str], float] = {}  # refusals logged, by host
        self.replace(tokens)

    @property
    def tokens(self) -> tuple[TokenConfig, ...]:
        return tuple(config for _, config in self._tokens)

    def replace(self, tokens: Sequence[TokenConfig]) -> list[str]:
        """Check calls against ``tokens`` from now on: new ones, and the streaming calls
        already open (a watch, a stream), which end with the refusal they would get now.

        Returns:
            what ended, e.g. ``["WatchCamera of 'dashboard'"]``, for the log.
        """
        # One assignment of an immutable tuple: a call is checked against the old set or the
        # new one, never a mix.
        self._tokens = tuple((bytes.fromhex(t.sha256), t) for t in tokens)
        ended = []
        for call in list(self._open):
            if call.forwarded:
                continue  # the process it was forwarded from ends it (had this one ended it
                # first, that one would have found it gone, and counted nothing)
            refusal = self._refused_now(call)
            if refusal is None or call.revoked is None or call.revoked.done():
                continue
            code, message = refusal
            if code == grpc.StatusCode.UNAUTHENTICATED and call.token is not None:
                message = f"token {call.token!r} was revoked: the server's config no longer has it"
            call.revoked.set_result((code, f"ended by a reload of the server's config: {message}"))
            self._count(call.method, code)
            who = repr(call.token) if call.token is not None else "a call without a token"
            ended.append(f"{_name(call.method)} of {who}")
        return ended

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        credential = _credential(metadata)
        refusal = _refusal(self._tokens, method, credential)
        if refusal is not None:
            self._count(method, refusal[0])
            return _deny(handler, *refusal, said=self._logger(method, *refusal))
        token = _found(self._tokens, credential) if isinstance(credential, bytes) else None
        if not (handler.request_streaming or handler.response_streaming):
            # a unary call is over before a reload could matter; one forwarded by another
            # process of this server was counted there (ListCameras: once a process)
            if token is not None and not (self._forwarded and self._forwarded(metadata)):
                self._admit(method, token.name)
            return handler if token is None or token.cameras is None else _scoped(handler, token)
        call = _OpenCall(method, credential, token)
        call.forwarded = self._forwarded is not None and self._forwarded(metadata)
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        at_limit = f"token {call.token!r} is at its max_calls ({call.max_calls})"
        say = self._logger(method, exhausted, at_limit)

        def over_quota(peer: str) -> None:
            self._count(method, exhausted)
            say(peer)

        def refused(peer: str) -> tuple[grpc.StatusCode, str] | None:
            """Why the tokens now refuse the call, as it starts (its request read: a reload
            may have come while the request was on its way), counted and logged; None: they
            let it, its token's cameras set for it."""
            refusal = self._refused_now(call)
            if refusal is not None:
                self._count(method, refusal[0])
                # said once per host and token, not once per camera asked for (a scoped
                # token trying ids one by one wrote a line each)
                said = refusal[1].split(", not ", 1)[0] if call.camera is not None else refusal[1]
                self._logger(method, refusal[0], said)(peer)
            elif call.token is not None and not call.forwarded:  # counted where it came in
                self._admit(method, call.token)
            return refusal

        return _watched(handler, call, self._open, over_quota, refused)

    def _refused_now(self, call: _OpenCall) -> tuple[grpc.StatusCode, str] | None:
        """Why the tokens of now refuse ``call`` (its role, or for a watch its camera);
        None: they let it, and its ``scope`` is its token's as they have it."""
        tokens = self._tokens
        refusal = _refusal(tokens, call.method, call.credential)
        credential = call.credential
        token = _found(tokens, credential) if tokens and isinstance(credential, bytes) else None
        call.scope = token if token is not None and token.cameras is not None else None
        if refusal is None and call.scope is not None and call.camera is not None:
            refusal = _scope_refusal(call.scope, call.camera)
        return refusal

    def _logger(self, method: str, code: grpc.StatusCode, message: str) -> Callable[[str], None]:
        """What logs a refusal, given the caller's address: once per address and reason
        every REFUSALS_LOG_S (a client with a wrong token may try every second)."""

        def say(peer: str) -> None:
            peer = unquote(peer)  # ipv6:%5B::1%5D:39472 -> ipv6:[::1]:39472
            key = (peer.rpartition(":")[0] or peer, code.name, message)  # its host, any port
            now = time.monotonic()
            if now - self._said.get(key, -math.inf) < REFUSALS_LOG_S:
                return
            self._said.pop(key, None)  # re-inserted last: the dict stays in time order
            if len(self._said) >= REFUSALS_KEPT:  # many callers: forget the oldest
                while self._said and (
                    len(self._said) >= REFUSALS_KEPT
                    or now - next(iter(self._said.values())) >= REFUSALS_LOG_S
                ):
                    del self._said[next(iter(self._said))]
            self._said[key] = now
            logger.warning(
                "refused %s from %s: %s: %s (the same refusal from there is not logged again "
                "for %.0f minutes; convstream_auth_refusals_total counts each)",
                _name(method),
                peer,
                code.name,
                message,
                REFUSALS_LOG_S / 60,
            )

        return say

    def _admit(self, method: str, token: str) -> None:
        if self._admitted is not None:
            # the server's methods and the config's token names: bounded labels
            self._admitted.labels(method.lstrip("/"), token).inc()

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        if self._refusals is not None:
            # only methods this server has get here (handler is not None): bounded labels
            self._refusals.labels(method.lstrip("/"), code.name.lower()).inc()


def caller(peer: str) -> str:
    """Whom the call being handled counts as, for the shares one caller may hold of what
    every caller needs (frames held for streams, decoding threads): its token, e.g.
    ``"token 'dock-3'"``, where the server has tokens (a token's holder may call from many
    addresses, as its max_calls counts), else its host, e.g. ``"host ipv4:10.0.0.7"``
    (``peer_host``; ``peer`` is ``context.peer()``). Said as it is in refusals."""
    token = TOKEN.get()
    return f"token {token!r}" if token is not None else f"host {peer_host(peer)}"


def peer_host(peer: str) -> str:
    """Whom a call counts as, for limits per caller (``context.peer()``'s form): its IP
    address (an IPv4 one seen on a server listening on [::] as IPv4), whatever its port;
    anything else (a Unix socket) as given. Not a /64 for IPv6: in a cloud subnet or a
    Kubernetes node every machine or pod shares one, and would share the limits."""
    text = unquote(peer)  # ipv6:%5B::1%5D:39472 -> ipv6:[::1]:39472
    kind, _, rest = text.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return text
    address = rest.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 caller of a server listening on [::]
            return f"ipv4:{ip.ipv4_mapped}"
        return f"ipv6:{ip}"
    return f"ipv4:{ip}"


def _name(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def _credential(metadata: Sequence[tuple[str, str | bytes]]) -> bytes | str:
    """The SHA-256 of the call's bearer token, or why it has none (the message to refuse it
    with, should the server need a token): the token itself is not kept."""
    header = next((v for k, v in metadata if k == "authorization"), None)
    if header is None:
        return "this server needs a token: send metadata 'authorization: Bearer <token>'"
    parts = header.split(maxsplit=1) if isinstance(header, str) else []
    # RFC 7235: the scheme is case-insensitive ("bearer" from some HTTP libraries)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return "the authorization metadata must read 'Bearer <token>'"
    return hashlib.sha256(parts[1].strip().encode()).digest()


def _found(tokens: tuple[tuple[bytes, TokenConfig], ...], digest: bytes) -> TokenConfig | None:
    found = None
    for expected, config in tokens:  # compare with every one: no timing hint
        if hmac.compare_digest(digest, expected):
            found = config
    return found


def _refusal(
    tokens: tuple[tuple[bytes, TokenConfig], ...], method: str, credential: bytes | str
) -> tuple[grpc.StatusCode, str] | None:
    """Why ``tokens`` refuse a call of ``method`` with ``credential``; None: they let it."""
    if not tokens:
        return None
    if isinstance(credential, str):
        return grpc.StatusCode.UNAUTHENTICATED, credential
    token = _found(tokens, credential)
    if token is None:
        return (
            grpc.StatusCode.UNAUTHENTICATED,
            "the token was not recognised: it is none of this server's tokens "
            "(mistyped, or removed from its config?)",
        )
    needed = NEEDS.get(method.removeprefix(SERVICE), "watch")
    if not _role_allows(token.role, needed):
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"token {token.name!r} has role {token.role!r}; {_name(method)} needs role {needed!r}",
        )
    return None


def _scope_refusal(token: TokenConfig, camera_id: str) -> tuple[grpc.StatusCode, str] | None:
    """Why ``token``'s cameras refuse a watch of ``camera_id``; None: they let it."""
    if token.may_see(camera_id):
        return None
    return (
        grpc.StatusCode.PERMISSION_DENIED,
        f"token {token.name!r} {OUT_OF_SCOPE} {scope_text(token)} (its cameras in the "
        f"server's config), not {camera_id[:80]!r}",
    )


def _scoped(handler: grpc.RpcMethodHandler, token: TokenConfig) -> Any:
    """A unary ``handler`` run with SCOPE set to ``token``."""

    async def scoped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        was = SCOPE.set(token)
        try:
            return await handler.unary_unary(request, context)
        finally:
            SCOPE.reset(was)

    return grpc.unary_unary_rpc_method_handler(
        scoped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _OpenCall:
    """A streaming call let in: what it was let in with, and, once a reload's tokens refuse
    it, the status it ends with."""

    def __init__(self, method: str, credential: bytes | str, token: TokenConfig | None) -> None:
        self.method = method
        self.credential = credential
        self.token = token.name if token is not None else None  # the name it was let in with
        self.max_calls = token.max_calls if token is not None else None
        self.scope = token if token is not None and token.cameras is not None else None
        self.camera: str | None = None  # a watch's camera, checked again at each reload
        self.revoked: asyncio.Future[tuple[grpc.StatusCode, str]] | None = None  # once running
        self.writing: asyncio.Future[None] | None = None  # the last message handed to gRPC
        self.forwarded = False  # by another process of this server


class _Writes:
    """The call's context as its handler sees it, with each write noted: a message gRPC
    holds must go before the status that ends the call (a status sent beside it waits behind
    it, or is refused: GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, and the call ends without one)."""

    def __init__(self, context: grpc.aio.ServicerContext, call: _OpenCall) -> None:
        self._context = context
        self._call = call

    def write(self, message: Any) -> asyncio.Future[None]:
        writing = asyncio.ensure_future(self._context.write(message))
        writing.add_done_callback(quietly)  # its awaiter, if any, still gets its failure
        self._call.writing = writing
        return writing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _watched(
    handler: grpc.RpcMethodHandler,
    call: _OpenCall,
    open_calls: set[_OpenCall],
    over_quota: Callable[[str], None],
    refused: Callable[[str], tuple[grpc.StatusCode, str] | None],
) -> Any:
    """``handler`` run as a task of its own, with SCOPE and TOKEN set, ended with the refusal
    a reload gives it; refused past its token's max_calls, which ``over_quota`` is told (the
    caller's address), and as it starts by what ``refused`` (given that address) says of it
    then."""
    shape = (handler.request_streaming, handler.response_streaming)
    make, behaviour = {
        (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream),
        (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream),
    }[shape]

    async def run(request: Any, context: _Writes) -> Any:
        outcome = behaviour(request, context)
        if not inspect.isasyncgen(outcome):
            return await outcome
        # aclosing: cancelled while a write waits (a client that reads nothing and leaves,
        # or a reload), the generator is closed at once, and its finally gives back what it
        # holds (a camera watcher), not whenever it is collected
        async with contextlib.aclosing(outcome) as messages:
            async for message in messages:  # written here, to be noted
                await asyncio.shield(context.write(message))
        return None

    async def watched(request: Any, context: grpc.aio.ServicerContext) -> Any:
        quota = _over_quota(call, open_calls)
        if quota is not None:
            over_quota(context.peer())
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, quota)
        if isinstance(request, pb.WatchCameraRequest):
            call.camera = request.camera_id
        if (refusal := refused(context.peer())) is not None:
            await context.abort(*refusal)
        revoked = call.revoked = asyncio.get_running_loop().create_future()
        was = SCOPE.set(call.scope)  # for the handler's task, made with this context
        named = TOKEN.set(call.token)
        running = asyncio.ensure_future(run(request, _Writes(context, call)))
        TOKEN.reset(named)
        SCOPE.reset(was)
        open_calls.add(call)
        said = _said_call(call, context.peer())
        began = time.monotonic()
        # said once the call has lasted LOG_CALLS_AFTER_S (a token's holder opening 200
        # one-frame streams wrote 150 lines a second); shorter ones at debug
        told = (
            asyncio.get_running_loop().call_later(
                LOG_CALLS_AFTER_S, logger.info, "%s: open for %.0f s", said, LOG_CALLS_AFTER_S
            )
            if said
            else None
        )
        try:
            await asyncio.wait({running, revoked}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                running.cancel()
                await asyncio.wait({running})
                open_calls.discard(call)  # ended: no longer one of its token's max_calls
                await _end(context, call, revoked.result())
            return running.result()
        finally:
            open_calls.discard(call)
            if not running.done():  # the client left: its handler ends as it would have
                running.cancel()
                await asyncio.wait({running})
            quietly(running)  # a failure of a call the client left is no one's error
            if told is not None:
                told.cancel()
                lasted = time.monotonic() - began
                level = logging.INFO if lasted >= LOG_CALLS_AFTER_S else logging.DEBUG
                logger.log(level, "%s: ended after %.0f s", said, lasted)

    return make(
        watched,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _said_call(call: _OpenCall, peer: str) -> str:
    """A streaming call with a token, as the log names it where it came in (its begin and end
    lines: who watched which camera, and for how long, showed nowhere); "" for one without
    a token, or forwarded by another process of this server (said there)."""
    if call.token is None or call.forwarded:
        return ""
    camera = f" of {call.camera!r}" if call.camera is not None else ""
    return f"{_name(call.method)}{camera} by token {call.token!r} from {unquote(peer)}"


def _over_quota(call: _OpenCall, open_calls: set[_OpenCall]) -> str | None:
    """Why ``call`` would take its token past the token's max_calls; None: it would not. A
    call forwarded by another process of this server was counted there."""
    if call.max_calls is None or call.forwarded:
        return None
    held = sum(other.token == call.token and not other.forwarded for other in open_calls)
    if held < call.max_calls:
        return None
    return (
        f"token {call.token!r} has {held} call{'s' * (held != 1)} open (streams, camera "
        f"watches, Analyze calls), its limit (max_calls) is {call.max_calls}: end one first, "
        "or raise the token's max_calls"
    )


async def _end(
    context: grpc.aio.ServicerContext, call: _OpenCall, status: tuple[grpc.StatusCode, str]
) -> None:
    """End a call a reload refuses with ``status``, after the message gRPC holds for it: once
    its client reads that one, or leaves. Its handler has ended: what it held (a camera
    watcher, a stream's place and frames) is given back now; the call holds that message
    alone meanwhile, as a stream whose results wait unread (the status waits behind it in
    any case: without a status, its client would wait for ever)."""
    if call.writing is not None and not call.writing.done():
        await asyncio.wait({call.writing})
    # InternalError: the client left; UsageError: the handler's own abort came first
    with contextlib.suppress(grpc.aio.InternalError, grpc.aio.UsageError):
        await context.abort(*status)


def _deny(
    handler: grpc.RpcMethodHandler,
    code: grpc.StatusCode,
    message: str,
    *,
    said: Callable[[str], None],
) -> Any:
    """A handler that fails the call with ``code`` before reading its request, and tells
    ``said`` the caller's address.

    It takes its requests as a stream, whatever the method's shape, and never reads one: gRPC
    reads a unary request whole before calling its handler, so a refusal of the method's own
    shape let anyone without a token make the server hold 16 requests of 120 MiB (2 GB).
    Unread, a request costs what HTTP/2 flow control lets through before the call ends."""

    async def unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        said(context.peer())
        await context.abort(code, message)

    async def streaming(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        said(context.peer())
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    if handler.response_streaming:
        make, behaviour = grpc.stream_stream_rpc_method_handler, streaming
    else:
        make, behaviour = grpc.stream_unary_rpc_method_handler, unary
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
        limits = [[str(t.max_calls or "none") for t in tokens] for tokens in (was, now)]
        if sorted(limits[0]) != sorted(limits[1]):
            parts.append(f"max_calls {'/'.join(limits[0])} -> {'/'.join(limits[1])}")
        scopes = [[scope_text(t) for t in tokens] for tokens in (was, now)]
        if sorted(scopes[0]) != sorted(scopes[1]):
            parts.append(f"cameras {'/'.join(scopes[0])} -> {'/'.join(scopes[1])}")
        if parts:
            changes.append(f"{name!r}: {', '.join(parts)}")
    return changes
