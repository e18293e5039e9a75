"""How the CLI shows results: a table for people, JSON lines for programs, overlay files."""

from __future__ import annotations

import time
import unicodedata
from collections import deque
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from convstream.client.featureview import save_feature_maps
from convstream.client.overlay import save_overlay
from convstream.client.results import CameraInfo, ModelInfo, Result, json_text, score_text
from convstream.v1 import MAX_ASPECT

MiB = 1024 * 1024


def result_json(
    result: Result,
    overlay: Path | None = None,
    maps: dict[str, Path] | None = None,
    arrays: Path | None = None,
) -> dict[str, Any]:
    """One JSON-ready object per result; arrays as their shape and statistics, not values.

    A frame that failed (``ok`` false) has no result: its ``score``, ``damaged``, ``peak``,
    ``regions``, ``frame_age_ms``, ``timings``, ``geometry``, ``heatmap`` and ``feature_maps``
    are null, not the zeros (or the empty list) of an intact frame's. ``sequence`` is the
    server's count of results on the call; null for a frame that failed here, before the
    server saw it (``error.code`` null).
    """
    error = result.error
    code = error.code.name if error is not None and error.code is not None else None
    ok = result.ok
    peak = result.peak() if ok else None
    return {
        "frame_id": result.frame_id,
        "name": result_name(result),
        "source": result.source,
        "ok": ok,
        "score": round(result.score, 6) if ok else None,
        "damaged": result.damaged if ok else None,
        # next to nothing to see (a covered lens, a black frame): the score says nothing
        "blank": result.blank if ok else None,
        "brightness": round(result.brightness, 2) if ok else None,
        "contrast": round(result.contrast, 2) if ok else None,
        "peak": list(peak) if peak is not None else None,
        # the damaged areas, in frame pixels: [] on an intact frame
        "regions": [asdict(r) | {"value": round(r.value, 6)} for r in result.regions]
        if ok
        else None,
        "frame_age_ms": round(result.frame_age_ms, 3) if ok else None,
        # when the frame was captured (or reached the server), to order and de-duplicate
        # logged results: frame ids start again when a server or a stream does
        "capture_time": _iso(result.capture_time),
        "frames_dropped": result.frames_dropped,
        "dropped_frame_ids": list(result.dropped_frame_ids),
        "sequence": result.sequence if error is None or error.code is not None else None,
        "timings": _rounded(asdict(result.timings)) if ok and result.timings is not None else None,
        "geometry": asdict(result.geometry) if ok and result.geometry is not None else None,
        "heatmap": _summary(result.heatmap) if ok and result.heatmap is not None else None,
        "feature_maps": {name: _summary(a) for name, a in result.feature_maps.items()}
        if ok
        else None,
        "overlay": str(overlay) if overlay is not None else None,
        # --save-maps: each stage's picture
        "map_images": {stage: str(path) for stage, path in maps.items()} if maps else None,
        # --save-arrays: the heatmap and feature maps as numpy arrays
        "arrays": str(arrays) if arrays is not None else None,
        "error": None
        if error is None
        else {"type": type(error).__name__, "code": code, "message": error.message},
    }


def result_name(result: Result) -> str:
    """What a result is called in a table row and a JSON line: the frame's name (a file's),
    else its source's (a camera's id on a watch: its JSON line said "name": "")."""
    return result.frame.name if result.frame is not None else result.source


def _iso(seconds: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC, as `cameras --json` gives its times."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def _rounded(fields: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds to the microsecond, like frame_age_ms; counts as they are."""
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}


def _summary(array: np.ndarray) -> dict[str, Any]:
    return {
        "shape": list(array.shape),
        "min": round(float(array.min()), 6),
        "max": round(float(array.max()), 6),
        "mean": round(float(array.mean()), 6),
    }


class Reporter:
    """Prints each result as it arrives, saves overlays, and sums up at the end.

    Args:
        out: where rows or JSON lines go (stdout).
        err: where the progress bar goes (stderr); it only shows on a terminal.
        json_lines: one JSON object per line instead of the table.
        overlays: a folder to write ``<name>.png`` overlays into, or None.
        maps: a folder to write ``<name>-<stage>.png`` feature-map pictures into, or None.
        arrays: a folder to write ``<name>.npz`` into (the score, the heatmap and each
            stage's feature maps, as numpy arrays), or None.
        total: frames expected, for the progress bar (None: unknown, e.g. a camera).
        name_width: width of the table's NAME column.
    """

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        json_lines: bool,
        overlays: Path | None,
        total: int | None,
        name_width: int = 24,
        maps: Path | None = None,
        arrays: Path | None = None,
    ) -> None:
        self.out = out
        self.json_lines = json_lines
        self.overlays = overlays
        self.maps = maps
        self.arrays = arrays
        self.name_width = max(4, min(name_width, 48))
        self.count = self.failed = self.damaged = self.blank = 0
        self.dropped = 0
        self.server_ms: list[float] = []
        self.started = self.last_at = time.perf_counter()
        long_work = total is None or total > 1
        self.bar = tqdm(
            total=total,
            unit="frame",
            file=err,
            disable=None if long_work else True,  # None: only on a terminal
            dynamic_ncols=True,
            leave=False,
        )
        self._headed = json_lines  # the table's header waits for its first row

    def _header(self) -> str:
        return self._row("FRAME", "NAME", "SCORE", "DAMAGED", "PEAK (x, y)", "SERVER MS")

    def _row(self, *cells: str) -> str:
        frame, name, score, damaged, peak, ms = cells
        name = _fit_left(printable(name), self.name_width)
        name += " " * (self.name_width - display_width(name))
        return f"{frame:>7}  {name}  {score:>6}  {damaged:<7}  {peak:<12}  {ms:>9}"

    def _line(self, text: str) -> None:
        text = printable(text)
        if self.bar.disable:
            print(text, file=self.out, flush=True)
        else:
            self.bar.write(text, file=self.out)

    def add(self, result: Result) -> None:
        self.count += 1
        self.last_at = time.perf_counter()
        self.dropped = result.frames_dropped
        overlay = arrays = None
        maps: dict[str, Path] = {}
        if result.ok:
            self.damaged += result.damaged
            self.blank += result.blank
            if result.timings is not None:
                self.server_ms.append(result.timings.total_ms)
            if self.overlays is not None and result.heatmap is not None:
                overlay = save_overlay(self.overlays / _file_name(result), result)
            if self.maps is not None:
                stem = _file_name(result).removesuffix(".png")
                for stage in result.feature_maps:
                    path = self.maps / f"{stem}-{stage}.png"
                    maps[stage] = save_feature_maps(path, result, stage)
            if self.arrays is not None:
                arrays = save_arrays(self.arrays / _file_name(result, ".npz"), result)
        else:
            self.failed += 1
        if self.json_lines:
            self._line(json_text(self._json(result, overlay, maps, arrays)))
        else:
            if not self._headed:  # not before: a call that fails at once prints no table
                self._line(self._header())
                self._headed = True
            self._line(self._table_row(result))
        self.bar.update(1)

    def _json(
        self, result: Result, overlay: Path | None, maps: dict[str, Path], arrays: Path | None
    ) -> dict[str, Any]:
        return result_json(result, overlay, maps, arrays)

    def _table_row(self, result: Result) -> str:
        name = result_name(result)
        if result.error is not None:  # no score; DAMAGED says error, PEAK onwards what went wrong
            message = f"{result.error.kind}: {result.error.message}"
            return self._row(str(result.frame_id), name, "-", "error", message, "").rstrip()
        peak = result.peak()
        total_ms = result.timings.total_ms if result.timings is not None else 0.0
        return self._row(
            str(result.frame_id),
            name,
            score_text(result.score),
            _verdict(result),
            f"({peak[0]}, {peak[1]})" if peak is not None else "-",
            f"{total_ms:.1f}",
        )

    def close(self) -> None:
        self.bar.close()

    def summary(self) -> str:
        """One line: frames, rate, damaged, failed, dropped, server time percentiles."""
        elapsed = time.perf_counter() - self.started
        # One frame has no rate worth printing (it would be the inverse of one round trip).
        speed = f" ({self.rate_text(elapsed)})" if self.count > 1 else ""
        text = (
            f"{self.count} frame{'' if self.count == 1 else 's'} in {elapsed:.1f} s{speed}: "
            f"{self.damaged} damaged, {self.failed} failed, {self.dropped} dropped"
        )
        if self.blank:  # said only when there are some: most runs have none
            text += f", {self.blank} blank"
        if self.server_ms:
            p50, p95 = np.percentile(self.server_ms, [50, 95])
            text += f"; server time p50 {p50:.1f} ms, p95 {p95:.1f} ms"
        return text

    def rate_text(self, elapsed: float) -> str:
        """Frames per second of the whole command: what sending them all took."""
        return f"{self.count / elapsed if elapsed > 0 else 0.0:.1f} frames/s"


LATE_MS = 1000.0  # a result that waited this long on the way is marked late
WAYS = 1000  # how many results back the quickest way is looked for (a stall's backlog fits)


class WatchReporter(Reporter):
    """A Reporter for a camera's results: age and drops instead of names and server time.

    Its rate is of the results as they came, and a pause (no result for ``gap_s`` or more:
    the server restarting, the camera down) is not part of it but said beside it, so that 38
    results in 2.5 s and then 20 s of nothing do not read as 15 frames/s over 22 s.
    """

    def __init__(self, *args: Any, gap_s: float = 3.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gap_s = gap_s
        self.flowing_s = 0.0  # the intervals between results shorter than gap_s, summed
        self.flowing_n = 0
        self.paused_s = 0.0  # the longer ones
        self.pauses = 0
        # (number, way) of recent results, for the shortest way lately (plus the clocks'
        # offset), and how many results have had theirs measured
        self._ways: deque[tuple[int, float]] = deque()
        self._seen = 0
        self._late_ms = 0.0  # this result's wait on the way beyond it

    def add(self, result: Result) -> None:
        before = self.last_at
        self._late_ms = self._late(result)
        super().add(result)
        if self.count > 1:
            interval = self.last_at - before
            if interval >= self.gap_s:
                self.paused_s += interval
                self.pauses += 1
            else:
                self.flowing_s += interval
                self.flowing_n += 1

    def _late(self, result: Result) -> float:
        """Milliseconds this result waited on its way here beyond the quickest one lately.

        frame_age_ms is the age when the server sent it: results held up on a stalled link
        came out 39 s late reading 53-154 ms, "damaged", for a package long gone. Received
        minus capture time minus that age is the way here plus the two clocks' offset; its
        least over the last WAYS results stands for the offset, so only the wait beyond it
        counts (over all of them, a clock stepped forward, or drifting, marked every result
        late for good; counted in results, not seconds, so a stall of any length is seen).
        """
        if result.capture_time is None:
            return 0.0
        way = time.time() - result.capture_time - result.frame_age_ms / 1000
        self._seen += 1
        ways = self._ways  # ways rising from the front: its front is the window's least
        while ways and ways[-1][1] >= way:
            ways.pop()
        ways.append((self._seen, way))
        while ways[0][0] <= self._seen - WAYS:
            ways.popleft()
        return (way - ways[0][1]) * 1000

    def _json(
        self, result: Result, overlay: Path | None, maps: dict[str, Path], arrays: Path | None
    ) -> dict[str, Any]:
        late = round(self._late_ms, 3) if result.ok else None  # a failure has no age
        # "stalled" or "reconnecting" on the server's word that the camera went down
        return {
            **result_json(result, overlay, maps, arrays),
            "late_ms": late,
            "camera_state": result.camera_state,
        }

    def notice(self, result: Result) -> None:
        """The server's word that the camera went down (``camera_state``): a line of its own
        with --json, not a frame (not counted, nor failed); the table leaves it to the
        lull's line on stderr."""
        if self.json_lines:
            self._line(json_text(self._json(result, None, {}, None)))

    def rate_text(self, elapsed: float) -> str:
        """Results per second while they came (a watch at --max-fps 3 reads 3.0, not the
        count over the time since connecting), and how long none came, if any pause was
        long enough to be one; the time before the first result is connecting, not a pause."""
        rate = self.flowing_n / self.flowing_s if self.flowing_s > 0 else 0.0
        tail = elapsed - (self.last_at - self.started)  # since the last result
        if not self.pauses and tail < self.gap_s:
            return f"{rate:.1f} frames/s from the first to the last"
        quiet = []
        if self.pauses:
            times = "" if self.pauses == 1 else f" ({self.pauses} pauses)"
            quiet.append(f"none for {self.paused_s:.1f} s between them{times}")
        if tail >= self.gap_s:
            quiet.append(f"none in the last {tail:.1f} s")
        return f"{rate:.1f} frames/s while they came; {' and '.join(quiet)}"

    def _header(self) -> str:
        return self._watch_row("FRAME", "SCORE", "DAMAGED", "PEAK (x, y)", "AGE MS", "DROPPED")

    def _watch_row(self, *cells: str) -> str:
        frame, score, damaged, peak, age, dropped = cells
        return f"{frame:>9}  {score:>6}  {damaged:<7}  {peak:<12}  {age:>8}  {dropped:>7}"

    def _table_row(self, result: Result) -> str:
        if result.error is not None:
            message = f"{result.error.kind}: {result.error.message}"
            return self._watch_row(str(result.frame_id), "-", "error", message, "", "").rstrip()
        peak = result.peak()
        row = self._watch_row(
            str(result.frame_id),
            score_text(result.score),
            _verdict(result),
            f"({peak[0]}, {peak[1]})" if peak is not None else "-",
            f"{result.frame_age_ms + self._late_ms:.1f}",  # its age here, on the way included
            str(result.frames_dropped),
        )
        if self._late_ms >= LATE_MS:
            row += f"  late: {self._late_ms / 1000:.1f} s on the way here"
        return row


def _verdict(result: Result) -> str:
    """The DAMAGED cell of an analysed frame: yes, no, or blank for a frame that shows next
    to nothing (a covered lens, a black frame), whose low score is no all-clear."""
    return "yes" if result.damaged else "blank" if result.blank else "no"


def display_width(text: str) -> int:
    """The columns text takes on a terminal: two for a wide character (CJK, most emoji),
    none for a combining mark; len() misaligned a table of names in Japanese."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _fit_left(text: str, width: int) -> str:
    """text cut from the left to at most width columns, "…" in place of what went: a file
    name's end tells files apart."""
    if display_width(text) <= width:
        return text
    kept = ""
    for c in reversed(text):
        if display_width(c + kept) > width - 1:
            break
        kept = c + kept
    return "…" + kept


def printable(text: str) -> str:
    """text with what a terminal would act on written out as escapes: a file named
    "a\x1b[31mRED\nb.jpg" turned the table red and split its row in two."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _file_name(result: Result, suffix: str = ".png") -> str:
    """An overlay's file name (or, by ``suffix``, another file of the frame's): the frame's id
    and its file's (or camera's) name. A watched
    camera's ids start again with its server, which overwrote a watch's earlier overlays: its
    names begin with when the frame was read, and end with the id. A name that is not UTF-8
    (a file named in another encoding) is written with '?' for what is not: OpenCV crashed
    on it."""
    name = result.frame.name if result.frame is not None and result.frame.name else ""
    stem = Path(name.split("#")[0]).stem or result.source or "frame"
    stem = stem.encode("utf-8", "replace").decode("utf-8")
    if result.frame is None and result.capture_time is not None:  # a watch
        read = datetime.fromtimestamp(result.capture_time, UTC)
        # then the frame's id, as the table's FRAME column shows it
        when = f"{read:%Y%m%dT%H%M%S}.{read.microsecond // 1000:03d}Z"
        return f"{when}-{stem}-{result.frame_id}{suffix}"
    return f"{result.frame_id:06d}-{stem}{suffix}"


def save_arrays(path: Path, result: Result) -> Path:
    """A result's numbers as one ``.npz`` (``np.load(path)``): ``score`` (a 0-d float32),
    ``heatmap`` (h, w) when it came, and each stage's feature maps by its name (C, H, W),
    float32 as the client decoded them; for a shell that wants arrays, not pictures."""
    # Any: numpy's stubs take a name among them for savez's own allow_pickle
    arrays: dict[str, Any] = {"score": np.array(result.score, np.float32)}
    if result.heatmap is not None:
        arrays["heatmap"] = result.heatmap
    arrays.update(result.feature_maps)
    # uncompressed: float maps barely shrink, and compressing costs a core (no allow_pickle:
    # before numpy 2.2 savez kept it as one more array; float arrays are never pickled)
    np.savez(path, **arrays)
    return path


def camera_json(camera: CameraInfo) -> dict[str, Any]:
    """One JSON-ready object per camera; times (``since``, ``last_error_time``,
    ``last_frame_time``) as ISO 8601 (UTC) strings.

    Every field is converted by its type, not by a list of names, so a datetime field added
    to CameraInfo later cannot make ``cameras --json`` fail. A camera that is down has no
    current latency: null, as the table's "-" (its 0 was a false figure in a script's mean).
    """
    fields = {key: _json_value(value) for key, value in asdict(camera).items()}
    fields["latency_ms"] = _json_value(_latency_now(camera))
    return fields


def _latency_now(camera: CameraInfo) -> float | None:
    """A camera's latency while frames come; None when it is down (its last would read as
    live) or before its first frame."""
    return camera.latency_ms if camera.flowing and camera.frames_analysed else None


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)  # as results write scores: float32's digits, not float64's
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    raise TypeError(f"no JSON form for {type(value).__name__} {value!r}")


# The cameras table's columns, each with whether its figures are right-aligned; the ones a
# narrow terminal goes without, first to last (the id, state, source, rates and score stay).
_CAMERA_COLUMNS = (
    ("ID", False),
    ("STATE", False),
    ("SOURCE", False),
    ("FPS IN/OUT", True),
    ("FPS CAP", True),
    ("ANALYSED", True),
    ("DROPPED", True),
    ("RECONNECTS", True),
    ("WATCHERS", True),
    ("LATENCY MS", True),
    ("SCORE", True),
)
_DROPPED_FIRST = ("WATCHERS", "ANALYSED", "RECONNECTS", "DROPPED", "FPS CAP", "LATENCY MS")


def cameras_text(
    cameras: list[CameraInfo], now: datetime | None = None, width: int | None = None
) -> str:
    """ListCameras for people: one row per camera, its health at a glance.

    width: the terminal's columns. Columns are as wide as their widest cell; a terminal too
    narrow for all of them and ERROR_MIN characters of the last error goes without the
    lesser ones (watchers, analysed, reconnects, dropped, the cap, latency: 80 columns
    wrapped every row of the 128 the table took), and a last error that would run past the
    edge is cut to fit (at least ERROR_MIN characters of it stay), ending with "..."; piped
    (no width) and with `--json` all of it is there."""
    if not cameras:
        return "no cameras: the server pulls none (see `convstream serve --camera ID=SOURCE`)"
    now = now or datetime.now(UTC)
    names = [name for name, _ in _CAMERA_COLUMNS]
    rows = [[*names, "LAST ERROR"]]
    for c in cameras:
        state = c.state if c.since is None else f"{c.state} {_duration(now - c.since)}"
        rows.append(
            [
                c.id,
                state,
                c.source_kind,
                f"{c.fps_in:.1f}/{c.fps_out:.1f}",
                f"{c.fps_cap:g}" if c.fps_cap else "-",
                str(c.frames_analysed),
                str(c.frames_dropped),
                str(c.reconnects),
                str(c.watchers),
                # a camera that is down has no current latency or score: its last ones
                # would read as live
                "-" if (latency := _latency_now(c)) is None else f"{latency:.1f}",
                _camera_score(c),
                _last_error(c, now),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(names))]
    shown = list(range(len(names)))

    def figures() -> int:  # the columns before the error, with their gaps
        return sum(widths[i] + 2 for i in shown)

    error = min(ERROR_MIN, max(len(r[-1]) for r in rows))  # the room an error needs
    for name in _DROPPED_FIRST:
        if width is None or figures() + error <= width:
            break
        shown.remove(names.index(name))

    def line(cells: list[str]) -> str:
        aligned = [f"{cells[i]:{'>' if _CAMERA_COLUMNS[i][1] else '<'}{widths[i]}}" for i in shown]
        text = "  ".join([*aligned, cells[-1]]).rstrip()
        if width is not None and len(text) > width:
            room = max(ERROR_MIN, width - figures())
            if room < len(cells[-1]):
                text = text[: len(text) - len(cells[-1])] + cells[-1][: room - 3] + "..."
        return text

    return "\n".join(line(r) for r in rows)


def _camera_score(camera: CameraInfo) -> str:
    """The SCORE cell: the latest frame's score while frames come (a camera that is down has
    no current score: its last would read as live), marked "blank" when that frame showed
    next to nothing (a covered lens: its low score would read as all clear). The score stays
    beside the mark: "blank" alone hid a damaged frame's 0.96 (a small package on black)."""
    if not camera.flowing or camera.last_score is None:
        return "-"
    shown = score_text(camera.last_score)
    return f"{shown} blank" if camera.last_blank else shown


ERROR_MIN = 30  # characters of a last error that stay, however narrow the terminal


def _last_error(camera: CameraInfo, now: datetime) -> str:
    """The camera's last error with how long ago it was, so one from before it came back
    does not read as its state."""
    error = " ".join(camera.last_error.split())
    if not error:
        return "-"
    if camera.last_error_time is None:
        return error
    when = f"{_duration(now - camera.last_error_time)} ago"
    if camera.state == "running" and camera.since and camera.last_error_time <= camera.since:
        when += ", before it ran again"  # beside "running", it read as the camera's trouble
    return f"{when}: {error}"


def _duration(elapsed: timedelta) -> str:
    """A state's age, coarse as people read it: 42s, 5m, 3h, 2d."""
    seconds = max(0, int(elapsed.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def model_info_json(info: ModelInfo) -> dict[str, Any]:
    """GetModelInfo for programs. Input sizes are objects, ``{"height": 384, "width": 640}``:
    a pair would read backwards to someone who knows them from the settings ("384x640",
    height x width) or from Size (width, height)."""
    fields = asdict(info)
    fields["input_sizes"] = [{"height": s.height, "width": s.width} for s in info.input_sizes]
    return fields


def model_info_text(info: ModelInfo) -> str:
    """GetModelInfo for people."""
    sizes = ", ".join(f"{s.height}x{s.width}" for s in info.input_sizes)
    lines = [
        f"model        {info.name} (sha256 {info.sha256[:16]}…)",
        f"provider     {info.execution_provider} (requested {info.requested_provider}; "
        f"available {', '.join(info.available_providers)})",
        f"threshold    {info.threshold:.6g} (damaged when score >= threshold{_from(info)})",
        f"input sizes  {sizes} (height x width, as in the settings; frames are letterboxed)",
        f"heatmap      one cell per {info.heatmap_stride} input pixels",
        "stages       NAME      CHANNELS  STRIDE",
    ]
    lines += [f"             {s.name:<8}  {s.channels:>8}  {s.stride:>6}" for s in info.stages]
    lines += [
        f"limits       {info.max_message_bytes / MiB:g} MiB per message, "
        f"{info.max_frame_pixels:,} pixels per frame"
        + (
            f", {info.min_frame_side or 32} to {info.max_frame_side:,} a side "
            f"({MAX_ASPECT}:1 at most)"
            if info.max_frame_side
            else ""
        ),
    ]
    if info.max_stream_queue_size:
        together = (
            f" ({info.max_queued_frames} for all streams together)"
            if info.max_queued_frames
            else ""
        )
        lines.append(
            f"streams      queue_size {info.stream_queue_size} by default, at most "
            f"{info.max_stream_queue_size}{together}; a stream idle for "
            f"{info.stream_idle_timeout_s:g} s is ended"
        )
    if info.max_streams:
        lines.append(
            f"calls        {info.max_streams} streams, {info.max_analyze_calls} Analyze and "
            f"{info.max_watchers} watches at once; a watcher's queue holds "
            f"{info.watcher_queue_size} results by default"
        )
    lines += [
        f"server       convstream {info.server_version}, onnxruntime {info.onnxruntime_version}",
    ]
    return "\n".join(lines)


_THRESHOLD_FROM = {
    "setting": "; the server's threshold setting",
    "model": "; the model's own",
    "default": "; a default: the model has none, set the server's threshold",
}


def _from(info: ModelInfo) -> str:
    """Where `convstream info` says the threshold comes from ("" when the server does not)."""
    return _THRESHOLD_FROM.get(info.threshold_source, "")
