"""Open files: a server holds one per connection, and Linux starts a process with 1024.

A security review held 1,100 idle TCP connections to a server started with 1024 (systemd's
default soft limit): every other client then timed out connecting, /healthz stopped
answering, and gRPC logged "File descriptor limit reached" each second. The soft limit may
be raised to the hard one (systemd's default 524,288) by the process itself, so the server
and the dashboard do that as they start.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

FEW_FILES = 4096  # fewer than this after raising: said, with how to give more


def raise_open_files(who: str) -> int | None:
    """Raise this process's soft limit of open files to its hard limit; returns the limit
    now (None where there is none to read). Warns when even the hard limit is under
    FEW_FILES: a few thousand idle connections would then lock every other client out."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # past the kernel's nr_open: keep what there is
            pass
    if soft < FEW_FILES:
        logger.warning(
            "%s may open %d files at most (its hard limit: %s), and each connection takes "
            "one: that many idle connections would lock every other client out; raise it "
            "(LimitNOFILE=65536 in a systemd unit, ulimit -Hn in a shell)",
            who,
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
        )
    return soft


def open_files() -> int | None:
    """This process's soft limit of open files now; None where there is none to read."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft
