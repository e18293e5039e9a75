"""Alerts: a camera's score crossing the threshold, with a snapshot of what crossed it.

Which frames raise an alert, one per episode of damage, or improve the alert's snapshot
(the episode's best frame) is the client's AlertDetector (convstream.client.episodes says
how), which programs that file claims from a watch use too. Here: the alerts kept, on disk
and in memory, and their pictures.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convstream.client.overlay import heat_colours
from convstream.client.results import json_text, score_text
from convstream.v1 import shortest_float32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """One alert as browsers see it; the snapshot is served at ``url``, the frame as it came
    (no heatmap drawn on it) at ``frame_url``.

    Alerts are listed newest first by ``raised``, and that is the time the list shows: the
    snapshot's ``time`` moves with the episode's best frame, and a held alert's best frame
    is older than its raising: a list that showed it read out of order.
    """

    id: int
    camera: str
    time: float  # capture time of the snapshot's frame, seconds since the epoch
    score: float  # the snapshot frame's: the highest of the episode so far
    threshold: float
    frame_id: int
    episodes: int = 1  # more when episodes held back by the cooldown were raised as one
    version: int = 1  # grows each time a better frame replaces the snapshot
    raised: float = 0.0  # the dashboard's clock when it raised the alert, seconds since the epoch
    # when an operator marked it handled, seconds since the epoch; 0: not handled. One mark
    # for every browser: a wall screen, a second desk and the next shift see the same list
    handled: float = 0.0

    @property
    def url(self) -> str:
        return f"alerts/{self.id}.jpg{self._query}"

    @property
    def frame_url(self) -> str:
        return f"alerts/{self.id}-frame.jpg{self._query}"

    @property
    def thumb_url(self) -> str:
        return f"alerts/{self.id}-thumb.jpg{self._query}"

    @property
    def _query(self) -> str:
        # Browsers keep each picture an hour: a url names the alert by when it was raised as
        # well as its id, which a dashboard restarted without --alerts-dir counts from 1 again
        # (an open page showed the old alert 1's picture for the new one).
        return f"?v={self.version}&at={round(self.raised * 1000)}"

    def to_json(self) -> dict[str, object]:
        urls = {"url": self.url, "frame_url": self.frame_url, "thumb_url": self.thumb_url}
        return {**asdict(self), "threshold": shortest_float32(self.threshold), **urls}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        names = {f.name for f in fields(cls)}
        known = {key: value for key, value in data.items() if key in names}
        known.setdefault("raised", known.get("time", 0.0))  # written before alerts had it
        return cls(**known)


@dataclass(frozen=True)
class Snapshot:
    """An alert's pictures, JPEG: the frame with its heatmap drawn in, the frame alone, and
    the list's thumbnail: the overlay's part around the hottest place, without the label
    (empty: alerts archived before thumbnails, whose overlay stands in)."""

    overlay: bytes
    frame: bytes
    thumb: bytes = b""

    @property
    def thumbnail(self) -> bytes:
        return self.thumb or self.overlay


# An alert's files in its directory, after its zero-padded id; the .json is written last.
_PARTS = ("-frame.jpg", "-thumb.jpg", ".jpg", ".json")
# "mark all handled" in a directory: every alert raised until then, those no longer kept in
# memory too (their own files keep no mark)
_HANDLED_UP_TO = "handled-up-to.json"
DISK_BYTES = 1_000_000_000  # an alerts directory's default size at most


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: to ``path.part`` first, then renamed
    over it; a write that fails (a full disk) leaves neither (zero-byte .part files stayed
    behind), nor touches ``path``."""
    partial = path.with_name(path.name + ".part")
    try:
        # readable by this user alone, whatever the umask (0644 let every local user see the
        # cameras' pictures, a security review found)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


class AlertLog:
    """The newest ``limit`` alerts and their snapshots, in memory, and in ``directory`` when
    given: there each alert is four files, ``<id>.json`` (the alert), ``<id>.jpg`` (the
    snapshot), ``<id>-frame.jpg`` (the frame alone) and ``<id>-thumb.jpg`` (the list's
    thumbnail), ids zero-padded to eight digits, so alerts outlive a restart (the newest
    ``limit`` are read back) and can be archived. The directory holds at most ``max_bytes``
    of alerts: past it the oldest are deleted (a count bounded no bytes: a camera whose
    input_size is 1088x1920 makes alerts nine times the size of a 384x640 one's).
    """

    def __init__(
        self, limit: int, directory: Path | None = None, max_bytes: int = DISK_BYTES
    ) -> None:
        self.limit = limit
        self.directory = directory
        self.max_bytes = max_bytes
        self._alerts: OrderedDict[int, tuple[Alert, Snapshot]] = OrderedDict()
        self._next_id = 1
        self._on_disk: dict[int, int] = {}  # bytes of each alert in the directory
        self._deleted_below = 0  # ids below it were deleted as the oldest
        self._disk_lock = threading.Lock()
        # when the alerts that left the newest ``limit`` before anyone marked them handled
        # were raised (those in the directory, read at start, too): still open, or the count
        # stood at ``limit`` however many came, and fell back to it at a restart
        self._older_open: list[float] = []
        self.handled_up_to = 0.0  # "mark all handled": every alert raised until then
        self._handled_at = 0.0  # ... marked then
        if directory is not None:
            # the cameras' pictures: this user's alone (a folder already there keeps its mode)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._load(directory)

    @property
    def bytes_on_disk(self) -> int:
        with self._disk_lock:
            return sum(self._on_disk.values())

    def _load(self, directory: Path) -> None:
        sizes: dict[int, int] = {}
        complete: list[int] = []  # the alerts whose .json, written last, is there
        for path in directory.iterdir():
            if path.name.endswith(".part"):  # a write cut short (a crash, a full disk)
                logger.info("removing %s, an alert file left half written", path)
                path.unlink(missing_ok=True)
            elif path.name[:8].isdigit() and path.name[8:] in _PARTS:
                alert_id = int(path.name[:8])
                complete += [alert_id] * (path.name[8:] == ".json")
                with contextlib.suppress(OSError):
                    sizes[alert_id] = sizes.get(alert_id, 0) + path.stat().st_size
        self._on_disk = sizes
        ids = sorted(complete)
        if ids:
            self._next_id = ids[-1] + 1
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            marked = json.loads((directory / _HANDLED_UP_TO).read_text())
            self.handled_up_to, self._handled_at = float(marked["up_to"]), float(marked["at"])
        for alert_id in ids[: -self.limit]:  # older than those kept: open ones still count
            with contextlib.suppress(OSError, ValueError, TypeError):
                older = Alert.from_json(
                    json.loads((directory / f"{alert_id:08d}.json").read_text())
                )
                if not older.handled and older.raised > self.handled_up_to:
                    self._older_open.append(older.raised)
        for alert_id in ids[-self.limit :]:
            base = directory / f"{alert_id:08d}"
            try:
                alert = Alert.from_json(json.loads(base.with_suffix(".json").read_text()))
                thumb = base.with_name(f"{base.name}-thumb.jpg")
                snapshot = Snapshot(
                    base.with_suffix(".jpg").read_bytes(),
                    base.with_name(f"{base.name}-frame.jpg").read_bytes(),
                    thumb.read_bytes() if thumb.exists() else b"",  # older alerts have none
                )
            except (OSError, ValueError, TypeError) as exc:  # half written, or hand edited
                logger.warning("alert %s in %s not read back: %s", alert_id, directory, exc)
                continue
            if not alert.handled and alert.raised <= self.handled_up_to:
                alert = replace(alert, handled=self._handled_at)
            self._alerts[alert_id] = (alert, snapshot)

    def save(self, alert_id: int) -> None:
        """Write an alert's files (blocking: call it off the event loop), after deleting the
        oldest alerts that leave no room for them (a full disk still takes the newest).

        Saves run in worker threads, one at a time here, and may come in any order: the
        alerts kept are the newest by id. One that would be the oldest kept, or was deleted
        as such (its better snapshot coming after), is not written (back).
        """
        if self.directory is None:
            return
        with self._disk_lock:
            # read under the lock, as save_marks reads it: a mark made while this waited is in
            entry = self._alerts.get(alert_id)
            if entry is None or alert_id < self._deleted_below:
                return
            alert, snapshot = entry
            base = f"{alert_id:08d}"
            files = (
                (f"{base}.jpg", snapshot.overlay),
                (f"{base}-frame.jpg", snapshot.frame),
                (f"{base}-thumb.jpg", snapshot.thumbnail),
                (f"{base}.json", json_text(alert.to_json()).encode()),  # last: complete
            )
            size = sum(len(data) for _, data in files)
            self._on_disk.pop(alert_id, None)  # its files, if any, are replaced or deleted
            others = sum(self._on_disk.values())
            for oldest in sorted([*self._on_disk, alert_id]):
                if others + size <= self.max_bytes:
                    break
                if oldest != alert_id:
                    others -= self._on_disk.pop(oldest)
                    self._delete(oldest)
                elif others:  # this alert is the oldest, and newer ones are kept
                    self._delete(alert_id)
                    return
            while True:
                try:
                    for name, data in files:
                        write_file(self.directory / name, data)
                    break
                except OSError as exc:
                    # A full disk (or quota) takes the newest too: the oldest alerts make
                    # room, as max_bytes would have them. It lost the newest three and kept
                    # the oldest (a reliability review's 300 KB disk).
                    older = [i for i in sorted(self._on_disk) if i < alert_id]
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not older:
                        self._count(alert_id)  # what of it is there: an older version's
                        raise
                    self._on_disk.pop(older[0])
                    self._delete(older[0])
            self._on_disk[alert_id] = size

    def save_marks(self, ids: Iterable[int]) -> None:
        """Write the ``.json`` of these alerts again, for their handled marks, and when
        "mark all handled" reached (blocking: call it off the event loop). One not written
        yet is left to its own save, which writes the mark with it."""
        if self.directory is None:
            return
        with self._disk_lock:
            if self.handled_up_to:
                marked = {"up_to": self.handled_up_to, "at": self._handled_at}
                write_file(self.directory / _HANDLED_UP_TO, json_text(marked).encode())
            for alert_id in ids:
                entry = self._alerts.get(alert_id)
                if entry is None or alert_id not in self._on_disk:
                    continue
                path = self.directory / f"{alert_id:08d}.json"
                data = json_text(entry[0].to_json()).encode()
                try:
                    was = path.stat().st_size
                except OSError:
                    was = 0
                write_file(path, data)
                self._on_disk[alert_id] += len(data) - was

    def mark_handled(self, ids: Iterable[int], handled: bool, when: float) -> list[Alert]:
        """Mark these alerts handled at ``when`` (or not handled); returns the ones that
        changed. Ids no longer kept are passed over."""
        changed = []
        for alert_id in ids:
            entry = self._alerts.get(alert_id)
            if entry is None or bool(entry[0].handled) == handled:
                continue
            alert = replace(entry[0], handled=when if handled else 0.0)
            self._alerts[alert_id] = (alert, entry[1])
            changed.append(alert)
        return changed

    def mark_all_handled(self, up_to: float, when: float) -> list[Alert]:
        """Mark every alert raised until ``up_to`` handled, those no longer kept too."""
        if not math.isfinite(up_to):
            raise ValueError(f"up_to must be a time, got {up_to}")
        if up_to > self.handled_up_to:
            self.handled_up_to, self._handled_at = up_to, when
        self._older_open = [raised for raised in self._older_open if raised > up_to]
        ids = [alert.id for alert, _ in self._alerts.values() if alert.raised <= up_to]
        return self.mark_handled(ids, True, when)

    @property
    def older_open(self) -> int:
        """Alerts no longer kept in memory that nobody marked handled."""
        return len(self._older_open)

    @property
    def open_count(self) -> int:
        """Alerts nobody has marked handled, those that left the newest ``limit`` too."""
        return self.older_open + sum(1 for alert, _ in self._alerts.values() if not alert.handled)

    def _count(self, alert_id: int) -> None:
        """Count the files of ``alert_id`` that are there (a save that failed part-way
        replaced some of them), so that max_bytes counts what the directory holds."""
        assert self.directory is not None
        size = 0
        for part in _PARTS:
            with contextlib.suppress(OSError):
                size += (self.directory / f"{alert_id:08d}{part}").stat().st_size
        if size:
            self._on_disk[alert_id] = size

    def _delete(self, alert_id: int) -> None:
        assert self.directory is not None
        self._deleted_below = max(self._deleted_below, alert_id + 1)
        for part in _PARTS:
            (self.directory / f"{alert_id:08d}{part}").unlink(missing_ok=True)

    def add(
        self,
        camera: str,
        when: float,
        score: float,
        threshold: float,
        frame_id: int,
        snapshot: Snapshot,
        episodes: int = 1,
        raised: float | None = None,
    ) -> Alert:
        """A new alert, the newest: ``when`` is its snapshot frame's capture time, ``raised``
        (now, unless given) when it is raised, both in seconds since the epoch."""
        alert_id = self._next_id
        self._next_id += 1
        alert = Alert(
            id=alert_id,
            camera=camera,
            time=when,
            # unrounded: the page and the picture's label cut to four decimals, and a score
            # rounded first read 0.9997 in the list beside 0.9996 on its picture
            score=score,
            threshold=threshold,
            frame_id=frame_id,
            episodes=episodes,
            raised=time.time() if raised is None else raised,
        )
        self._alerts[alert.id] = (alert, snapshot)
        while len(self._alerts) > self.limit:
            _, (oldest, _) = self._alerts.popitem(last=False)
            if not oldest.handled:
                self._older_open.append(oldest.raised)
        return alert

    def improve(
        self, alert_id: int, when: float, score: float, frame_id: int, snapshot: Snapshot
    ) -> Alert | None:
        """Give an alert a better frame (captured at ``when``); it keeps its place in the list
        and the time it was raised. None when it is no longer kept."""
        entry = self._alerts.get(alert_id)
        if entry is None:
            return None
        old = entry[0]
        alert = replace(old, time=when, score=score, frame_id=frame_id, version=old.version + 1)
        self._alerts[alert_id] = (alert, snapshot)
        return alert

    def recent(self) -> list[Alert]:
        """Newest first."""
        return [alert for alert, _ in reversed(self._alerts.values())]

    def snapshot(self, alert_id: int) -> Snapshot | None:
        entry = self._alerts.get(alert_id)
        return None if entry is None else entry[1]


def snapshot_label(camera: str, score: float) -> str:
    """What an alert's picture says in its corner: the camera, and the score as the page
    and the CLI write it (four decimals, cut): rounded to two, 0.8552 read 0.86 beside the
    list's 0.8552, and a score just over a threshold of 0.8215 would have read 0.82."""
    return f"{camera}  {score_text(score)}"


def render_snapshot(
    jpeg: bytes,
    heat: np.ndarray | None,
    box: tuple[int, int, int, int],
    stride: int,
    label: str,
    threshold: float,
) -> Snapshot:
    """An alert's pictures of a frame: the heatmap drawn in, and the frame alone.

    The heatmap is drawn lighter than the live view's, with the outline of where it passes
    the threshold and a ring at its hottest cell, so the damage itself stays visible.

    Args:
        jpeg: the letterboxed model input.
        heat (np.ndarray | None): uint8, shape (h, w), one cell per ``stride`` input pixels.
        box: (left, top, right, bottom) of the frame inside the input, in input pixels.
        stride: input pixels per heatmap cell.
        label: written in the top-left corner of the overlay (camera and score).
        threshold: the alert threshold, which the colours are relative to.

    Returns:
        Snapshot: JPEGs of the frame's part of the input (padding cut away), and a
        thumbnail of the overlay around its hottest place (the label left out: unreadable
        that small, and beside it in the list).
    """
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"frame_jpeg ({len(jpeg)} bytes) is not a readable JPEG")
    left, top, right, bottom = box
    clean = image[top:bottom, left:right]
    out = clean.copy()
    if heat is not None and heat.size:
        h, w = heat.shape
        cells = cv2.resize(heat, (w * stride, h * stride), interpolation=cv2.INTER_LINEAR)
        cells = cells[top:bottom, left:right]
        cells = cv2.resize(cells, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)
        colours, weight = heat_colours(cells.astype(np.float32) / 255.0, threshold)
        weight *= 0.85 * 0.5  # half the live view's: the damage must show through
        out = (out * (1.0 - weight[..., None]) + colours * weight[..., None]).astype(np.uint8)
        # where the colours turn red (heat_colours): at the threshold and over it
        hot = (cells.astype(np.float32) / 255.0 >= threshold).astype(np.uint8)
        contours, _ = cv2.findContours(hot, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        line = max(1, round(out.shape[1] / 400))
        cv2.drawContours(out, contours, -1, (0, 0, 255), line, cv2.LINE_AA)
        y, x = np.unravel_index(int(np.argmax(cells)), cells.shape)
        radius = max(8, round(stride * out.shape[1] / max(1, right - left)))
        cv2.circle(out, (int(x), int(y)), radius, (255, 255, 255), 2, cv2.LINE_AA)
        hottest = (int(x), int(y))
    else:
        hottest = (out.shape[1] // 2, out.shape[0] // 2)
    thumb = _thumbnail(out, hottest)
    scale = max(0.45, out.shape[1] / 1000)
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(4, th // 3)
    cv2.rectangle(out, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (40, 40, 200), cv2.FILLED)
    cv2.putText(
        out, label, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness
    )
    return Snapshot(_jpeg(out), _jpeg(clean), _jpeg(thumb))


THUMB_SIZE = (384, 216)  # (width, height): 16:9, as the list shows it, twice its widest


def _thumbnail(image: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    """The part of ``image`` around ``centre`` that the alert list shows: a 16:9 window half
    the image's width (a damaged corner fills the thumbnail rather than a few pixels of
    it), or THUMB_SIZE where that is larger (not scaled up), as near centred on it as the
    image allows, scaled to THUMB_SIZE."""
    height, width = image.shape[:2]
    w = min(width, max(width // 2, THUMB_SIZE[0]), round(height * 16 / 9))
    h = min(height, max(1, round(w * 9 / 16)))
    left = min(max(0, centre[0] - w // 2), width - w)
    top = min(max(0, centre[1] - h // 2), height - h)
    window = image[top : top + h, left : left + w]
    return cv2.resize(window, THUMB_SIZE, interpolation=cv2.INTER_AREA)


def _jpeg(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("OpenCV could not encode the alert snapshot")
    return encoded.tobytes()
