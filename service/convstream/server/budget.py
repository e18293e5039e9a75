"""The budgets that bound what the server holds for its callers: bytes of frames waiting
for streams (streams.py) and of results waiting for watchers (feeds.py), and the places that
one host's calls which send nothing yet may hold (servicer.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SilentCalls:
    """When each call of one kind (Analyze, StreamFrames) still waiting for its first request
    began, by host: once half of the kind's places are taken, one host may hold a quarter
    of them with calls silent for over ``after`` seconds. Past that its new calls are
    refused, and a burst's calls still silent then end, the oldest kept, until fewer than
    half the places are taken (each was let in while none was silent yet). One caller
    opening every place and sending nothing kept the kind from everyone (reviews of both).
    Used from the event loop only."""

    def __init__(self, after: float) -> None:
        self.after = after
        self._by_host: dict[str, list[float]] = {}

    def crowded(self, host: str, now: float, open_now: int, most: int) -> int | None:
        """At the door: how many of ``host``'s calls have been silent over ``after`` when
        they are ``most`` or more and ``open_now`` of the places are at least twice that (a
        refusal); else None."""
        silent = sum(now - since > self.after for since in self._by_host.get(host, ()))
        return silent if silent >= most and open_now >= most * 2 else None

    def enter(self, host: str, started: float) -> Callable[[], None]:
        """Count a call that began at ``started`` as silent; returns what forgets it (its
        first request came, or it ended), once whatever the number of calls."""
        waits = self._by_host.setdefault(host, [])
        waits.append(started)
        silent = True

        def forget() -> None:
            nonlocal silent
            if silent:
                silent = False
                waits.remove(started)
                if not waits and self._by_host.get(host) is waits:
                    del self._by_host[host]

        return forget

    def too_many(self, host: str, started: float, open_now: int, most: int) -> int | None:
        """At ``after`` for a call that began at ``started`` and is still silent: how many
        of ``host``'s silent calls began before it (or with it), when this one is one too
        many (``crowded``'s rule); else None. A call ended so must give its place back at
        once, so that the next one's check counts without it."""
        silent = sum(started - since >= 0 for since in self._by_host.get(host, ())) - 1
        return silent if silent >= most and open_now >= most * 2 else None


class ByteBudget:
    """Bytes of frames the server holds for streams at most, over all of them: frame counts
    alone bound nothing when frames may be 100 KB JPEGs or 60 MB raw pixels. One stream
    holds at most a quarter of them (or one frame, whatever its size), so that a stream
    whose client stops reading its results cannot take every other stream's room. A lossless
    stream waits for room (its reader stops, and gRPC flow control slows the sender); any
    other frame that would pass a limit is refused, RESOURCE_EXHAUSTED for that frame alone,
    rather than held (INVALID_ARGUMENT if it is larger than all of them: it never fits).
    Watches' results (max_watcher_bytes) are held with ``hold``: they exist already, and each
    watch drops its own oldest past its share or the limit. Used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.share = limit // 4
        self.held = 0
        self._freed = asyncio.Event()

    def fits(self, size: int, mine: int, freed: int = 0) -> bool:
        """Whether a stream holding `mine` bytes may take `size` more (once it has given
        back `freed` of them)."""
        mine -= freed
        return self.held - freed + size <= self.limit and (mine == 0 or mine + size <= self.share)

    async def room(self, size: int, mine: Callable[[], int]) -> None:
        """Wait until `size` more bytes fit beside what the stream holds (`mine()`, which
        falls as its frames leave); size <= limit, or this never returns."""
        while not self.fits(size, mine()):
            self._freed.clear()
            await self._freed.wait()

    def take(self, size: int, mine: int) -> bool:
        if not self.fits(size, mine):
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size
        self._freed.set()

    def hold(self, size: int) -> None:
        """Count ``size`` more bytes whatever the limits: what is already there (a result
        made for a watcher) and must be counted, for what comes after to see it."""
        self.held += size
