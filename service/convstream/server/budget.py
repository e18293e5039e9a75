"""The byte budgets that bound what the server holds for its callers: frames waiting for
streams (streams.py), and results waiting for watchers (feeds.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


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
