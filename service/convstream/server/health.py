"""gRPC's health service as the server runs it: a service per camera (its reads working),
Check and Watch for load balancers and clients, Watch calls bounded per host, and a camera
pulled by another server process answered by forwarding to that process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from convstream.server.cameras import HEALTH_PREFIX
from convstream.server.processes import Peers
from convstream.server.security import peer_host, visible
from convstream.server.servicer import PEER_CONNECT_S, SERVICE_NAME
from convstream.v1 import SHUTTING_DOWN
from convstream.v1.redaction import shown

logger = logging.getLogger(__name__)


# Health Watch calls open at once, at most: a load balancer or a client keeps one or a few,
# and each costs about 10 kB (20,000 of them, open to anyone, held 210 MB). One host may
# hold a tenth of them, so that one caller cannot take them all.
MAX_HEALTH_WATCHES = 1000
MAX_HEALTH_WATCHES_PER_HOST = 100


PeerChannel = Callable[[int, float], Awaitable[grpc.aio.Channel | None]]
# A forwarded Watch ended so: the process is restarting or stopping, not the camera's health
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SILENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


class _OwnerSilent(Exception):
    """The process that pulls a camera does not answer (restarting)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"server process {index}, which pulls this camera, is not answering")


class _Said:
    """A Watch call's context that writes a status only when it is not the one written last:
    a relay started again (a reload, the owner back) or a stop says nothing twice."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context
        self.last: int | None = None

    async def write(self, reply: health_pb2.HealthCheckResponse) -> None:
        if reply.status != self.last:
            self.last = reply.status
            await self.context.write(reply)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.context, name)


class Health(health.aio.HealthServicer):
    """gRPC's health service, where a service set to SERVICE_UNKNOWN (a camera a reload
    removed) is as one never set: Check answers NOT_FOUND, as the health protocol asks of an
    unknown service (its Watch says SERVICE_UNKNOWN, as the protocol's Watch does). Past
    MAX_HEALTH_WATCHES open Watch calls, or MAX_HEALTH_WATCHES_PER_HOST from one host, another
    is refused with RESOURCE_EXHAUSTED. Once the server stops taking calls (end_watches),
    every Watch ends, UNAVAILABLE, after its NOT_SERVING. In one of several processes of a
    server (forward_to), a camera another process pulls is checked and watched there."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0
        self._by_host: dict[str, list[asyncio.Event]] = {}  # each host's open Watches
        self._said_room = -math.inf
        self._ended = asyncio.Event()  # end_watches: the server is stopping
        # several processes: a camera another process pulls is asked of that process
        self._peers: Peers | None = None
        self._channel: PeerChannel | None = None
        self._owners_changed = asyncio.Event()  # replaced at each owners_changed()

    def forward_to(self, peers: Peers, channel: PeerChannel) -> None:
        """This is one of several processes of one server: a check or watch of a camera that
        another process pulls is passed to it (its health said NOT_FOUND here, as of a camera
        that does not exist, from every process but one)."""
        self._peers, self._channel = peers, channel

    def owners_changed(self) -> None:
        """A reload may have added, removed or moved cameras: each Watch looks again for the
        process to ask (one opened before a camera came stayed SERVICE_UNKNOWN)."""
        changed, self._owners_changed = self._owners_changed, asyncio.Event()
        changed.set()

    def end_watches(self) -> None:
        """End every Watch (UNAVAILABLE), and any Watch started from now on, once the server
        stops taking calls: grpcio's Watch never ends by itself, and a load balancer's or a
        client's Watch (gRPC's client-side health checking keeps one open all the time) made
        every stop wait out the whole grace period."""
        self._ended.set()

    async def _owner(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> tuple[health_pb2_grpc.HealthStub, tuple[tuple[str, str], ...]] | None:
        """The Health service of the process that pulls the camera asked about, and the
        metadata to call it with, when that is another process and the call was not
        forwarded already; None otherwise. _OwnerSilent when that process does not answer
        (restarting)."""
        peers = self._peers
        if peers is None or self._channel is None or not request.service.startswith(HEALTH_PREFIX):
            return None
        owner = peers.owner(request.service.removeprefix(HEALTH_PREFIX))
        if owner is None or owner == peers.index or peers.forwarded(context.invocation_metadata()):
            return None
        channel = await self._channel(owner, PEER_CONNECT_S)
        if channel is None:
            raise _OwnerSilent(owner)
        return health_pb2_grpc.HealthStub(channel), peers.forward_metadata(())

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        said = _Said(context)
        if self._peers is not None and self._peers.forwarded(context.invocation_metadata()):
            # another process of this server, which counted its caller against the limits
            await self._until_stopped(self._watch(request, said), said)
            return
        host = peer_host(context.peer())  # ipv4:10.0.0.7:51234 -> ipv4:10.0.0.7
        held = len(self._by_host.get(host, ()))
        refusal = None
        if held >= MAX_HEALTH_WATCHES_PER_HOST:
            refusal = (
                f"{held} health Watch calls open from your host, the limit is "
                f"{MAX_HEALTH_WATCHES_PER_HOST}"
            )
        elif self.watches >= MAX_HEALTH_WATCHES and not self._make_room(held):
            refusal = f"{self.watches} health Watch calls open, the limit is {MAX_HEALTH_WATCHES}"
        if refusal is not None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{refusal}: keep one Watch per client, or call Check",
            )
        ended = asyncio.Event()  # set by _make_room
        self.watches += 1
        self._by_host.setdefault(host, []).append(ended)
        try:
            await self._until_stopped(self._watch(request, said), said, ended)
        finally:
            held_now = self._by_host.get(host, [])
            if ended in held_now:  # not when _make_room ended it (and counted it out)
                held_now.remove(ended)
                self.watches -= 1
                if not held_now:
                    del self._by_host[host]
        if ended.is_set():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "every health Watch place was taken and your host held the most: its oldest "
                "Watch, this one, was ended to make room for another host's; keep fewer "
                "Watches, or call Check",
            )

    async def _until_stopped(
        self, watch: Awaitable[None], said: _Said, ended: asyncio.Event | None = None
    ) -> None:
        """Run a Watch until it ends by itself (its error raised), ``ended`` is set (its place
        taken: it returns), or the server stops taking calls: then NOT_SERVING, if it did not
        say so last, and UNAVAILABLE."""
        watching = asyncio.ensure_future(watch)
        waits = [asyncio.ensure_future(self._ended.wait())]
        if ended is not None:
            waits.append(asyncio.ensure_future(ended.wait()))
        try:
            await asyncio.wait((watching, *waits), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watching, *waits):
                task.cancel()
        if watching.done() and not watching.cancelled():
            watching.result()  # its own end, or its error, as before
        elif self._ended.is_set():
            await said.write(health_pb2.HealthCheckResponse(status=_NOT_SERVING))
            await said.context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def _watch(self, request: health_pb2.HealthCheckRequest, said: _Said) -> None:
        """grpcio's Watch, or, for a camera another process pulls, that process's, relayed;
        looked for again when a reload changes which process pulls which camera."""
        while True:
            changed = self._owners_changed.wait()
            relay = asyncio.ensure_future(self._relay(request, said))
            waiter = asyncio.ensure_future(changed)
            try:
                await asyncio.wait((relay, waiter), return_when=asyncio.FIRST_COMPLETED)
            finally:
                relay.cancel()
                waiter.cancel()
            if relay.done() and not relay.cancelled():
                relay.result()
                return

    async def _relay(self, request: health_pb2.HealthCheckRequest, said: _Said) -> None:
        """The Watch of the process that pulls the camera, relayed (NOT_SERVING while it does
        not answer, until it does again), or this process's own."""
        while True:
            try:
                owner = await self._owner(request, said.context)
            except _OwnerSilent:
                owner = None
            else:
                if owner is None:
                    await super().Watch(request, said)
                    return
                stub, metadata = owner
                try:
                    async for reply in stub.Watch(request, metadata=metadata):
                        await said.write(reply)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _SILENT:  # the owner's answer, passed on
                        await said.context.abort(exc.code(), exc.details() or "")
            await said.write(health_pb2.HealthCheckResponse(status=_NOT_SERVING))
            await asyncio.sleep(1.0)

    def _make_room(self, held: int) -> bool:
        """All places taken: end the oldest Watch of the host holding the most, if it holds
        more than the caller (who holds ``held``) would with this one. Hosts that fill the
        places, ten of them at a hundred each, must not keep a load balancer out."""
        busiest = max(self._by_host, key=lambda host: len(self._by_host[host]), default=None)
        if busiest is None or len(self._by_host[busiest]) <= held + 1:
            return False
        oldest = self._by_host[busiest].pop(0)
        if not self._by_host[busiest]:
            del self._by_host[busiest]
        self.watches -= 1
        oldest.set()  # its call ends with RESOURCE_EXHAUSTED
        now = time.monotonic()
        if now - self._said_room >= 60.0:  # under a flood, once a minute
            self._said_room = now
            logger.warning(
                "health: every Watch place is taken; ending the oldest Watch of the host "
                "holding the most (%s) to make room for one that holds fewer",
                busiest,
            )
        return True

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        try:
            owner = await self._owner(request, context)
        except _OwnerSilent as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if owner is not None:
            stub, metadata = owner
            try:
                reply: health_pb2.HealthCheckResponse = await stub.Check(
                    request, metadata=metadata, timeout=5
                )
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            return reply
        # grpcio's own Check answers an unknown service with NOT_FOUND and no message
        status = self._server_status.get(request.service)
        if status in (None, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                # cut: a 10,000-character name, said back whole, passed gRPC's metadata limit
                # and the caller got RESOURCE_EXHAUSTED
                f"no service {shown(request.service, 100)} here: '' (the server), "
                f"'{SERVICE_NAME}', or 'convstream.camera.ID' for a camera",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service's status, as Check gives each: the server, convstream.v1.Convstream
        and each camera ('convstream.camera.ID'). grpcio's servicer left it unimplemented,
        and each call logged a traceback. With tokens it takes one (it names the cameras),
        and a token scoped to some cameras lists those. In one of several processes, each
        camera is as the process that pulls it says (NOT_SERVING while that one is silent)."""
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
            if status != health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            # a scoped token's cameras
            and (not name.startswith(HEALTH_PREFIX) or visible(name.removeprefix(HEALTH_PREFIX)))
        }
        peers = self._peers
        metadata = context.invocation_metadata()
        if peers is None or self._channel is None or peers.forwarded(metadata):
            return health_pb2.HealthListResponse(statuses=statuses)
        for index in sorted(set(peers.owners.values()) - {peers.index}):
            theirs = {
                HEALTH_PREFIX + camera
                for camera, owner in peers.owners.items()
                if owner == index and visible(camera)
            }
            silent = health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.NOT_SERVING
            )
            told: dict[str, health_pb2.HealthCheckResponse] = {}
            channel = await self._channel(index, PEER_CONNECT_S)
            if channel is not None:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health_pb2_grpc.HealthStub(channel).List(
                        request, metadata=peers.forward_metadata(metadata), timeout=5
                    )
                    told = dict(reply.statuses)
            for name in theirs:
                statuses[name] = told.get(name, silent)
        return health_pb2.HealthListResponse(statuses=statuses)
