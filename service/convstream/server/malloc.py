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
"""

from __future__ import annotations

import ctypes
import os
import platform

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
