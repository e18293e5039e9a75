"""glibc's malloc in a server of many threads: two arenas, not up to eight a core.

Each thread that allocates gets an arena of its own, up to 8 a core (16 on 2 cores), and each
keeps the memory its thread freed for itself. Measured on a 2-core AMD EPYC (35 minutes of
camera, stream, watch and reload churn against two servers side by side, identical but for
this): 2 arenas held 333 MB from the OS against 388 for 16, with the same 290 MB in use, an
RSS 50 to 64 MB (about 14%) lower throughout, at the same CPU time (+0.8%, within the noise)
and frames analysed (+0.1%). The slow growth after warm-up (22 to 25 MB an hour over the
last 25 minutes) was the same either way. At full load it costs a little: served frames/s
of `bench_served.py --seconds 8 --streams 4`, five rounds alternating with
MALLOC_ARENA_MAX=16, 154.3 against 157.5 on average (2% less; 3.6 to 4.6 less in four
rounds, 1.0 more in the fifth), 12.1 against 12.0 ms of the server's CPU a frame.

And memory freed in a burst stays with malloc, not the system: four health Checks of 120 MB
each (gRPC reads a request whole before the server can refuse it) took a server from 157 to
299 MiB, and it stayed there for good (a security review's: 256 to 517 MiB). Trimmer gives it
back once RSS has grown: malloc_trim took it to 155 MiB in 6 ms.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import time
from pathlib import Path

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let malloc make at most ``arenas`` arenas from now on; call it before the threads
    start. Not where MALLOC_ARENA_MAX is set (the operator's choice wins) or the C library is
    not glibc. Returns whether the limit was set."""
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


# How often Trimmer.due is asked (Server._trim_memory), and by how much RSS must have grown
# since the last trim for another: a trim takes milliseconds, holding malloc's locks.
TRIM_EVERY_S = 10.0
TRIM_GROWTH_BYTES = 32 << 20


def rss_bytes() -> int | None:
    """This process's resident memory (Linux: /proc/self/statm); None elsewhere."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33 and later): sizes over every arena."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


class Trimmer:
    """Gives the memory malloc keeps freed back to the system (glibc's malloc_trim), once
    RSS has grown TRIM_GROWTH_BYTES over what it was after the last trim, or malloc's free
    memory has (a trim at a burst's peak gave back little; what the burst freed after it
    stayed, 1.9-2.4 GB for minutes on an idle server, until RSS grew again: a reliability
    review). Does nothing where the C library is not glibc or RSS cannot be read."""

    def __init__(self) -> None:
        self._trim = None
        self._info = None
        if platform.libc_ver()[0] == "glibc" and (after := rss_bytes()) is not None:
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None)
                self._trim = libc.malloc_trim
                with contextlib.suppress(AttributeError):  # before glibc 2.33
                    self._info = libc.mallinfo2
                    self._info.restype = _MallInfo2
            self._after = after
            self._free_after = self.free_bytes() or 0

    def free_bytes(self) -> int | None:
        """The bytes malloc holds free in its arenas (mallinfo2's fordblks; a trim gives
        back their pages without taking them from this count); None without mallinfo2."""
        return None if self._info is None else int(self._info().fordblks)

    def due(self) -> bool:
        now = rss_bytes()
        if self._trim is None or now is None:
            return False
        free = self.free_bytes()
        grown = free is not None and free - self._free_after > TRIM_GROWTH_BYTES
        return grown or now - self._after > TRIM_GROWTH_BYTES

    def trim(self) -> tuple[int, float]:
        """Trim now (a few milliseconds; ctypes lets the GIL go meanwhile): the bytes of RSS
        given back, and the milliseconds it took."""
        if self._trim is None:
            return 0, 0.0
        before, started = rss_bytes() or 0, time.perf_counter()
        self._trim(0)
        took = (time.perf_counter() - started) * 1000
        self._after = rss_bytes() or self._after
        self._free_after = self.free_bytes() or 0
        return max(before - self._after, 0), took
