"""The server's log lines on stderr: text, or one JSON object a line for a log shipper.

Text lines carry their time in UTC, ISO 8601 with a ``Z`` (they were local time without a zone:
a server run with ``TZ=America/New_York`` and one in UTC wrote the same instant five hours
apart); a record of several lines (a refusal listing what was wrong) keeps its later lines
indented under its first. JSON lines carry ``time``, ``level``, ``logger``, ``message``,
``process`` (one of several processes) and ``exception`` (a traceback) as fields. gRPC's own
C-core lines (a failed TLS handshake) are written by gRPC in its own format either way, and
so is a config that does not load (its format is in it).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

LogFormat = Literal["text", "json"]


def utc(created: float) -> str:
    """A record's time as ISO 8601 in UTC, to the millisecond."""
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


class TextFormatter(logging.Formatter):
    """``TIME LEVEL [process N/M] LOGGER: MESSAGE``, later lines of a message indented."""

    def __init__(self, process: str = "") -> None:
        tag = f"[process {process}] " if process else ""
        super().__init__(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc(record.created)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\n    ")


class JsonFormatter(logging.Formatter):
    """One JSON object a record, on one line."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process:
            entry["process"] = self.process
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def fatal(form: LogFormat, who: str, message: str) -> str:
    """Why the server stopped at its start, as the log's lines are: "WHO: MESSAGE", or a
    JSON object (a shipper parsed every line but the one that said why it did not start)."""
    if form != "json":
        return f"{who}: {message}"
    entry = {"time": utc(time.time()), "level": "CRITICAL", "logger": who, "message": message}
    return json.dumps(entry, ensure_ascii=False)


def set_up(level: str, form: LogFormat, process: str = "") -> None:
    """Log to stderr at ``level`` in ``form``; ``process``: "N/M" for one of several."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(process) if form == "json" else TextFormatter(process))
    logging.basicConfig(level=level.upper(), handlers=[handler])
