"""`convstream analyze | stream | info` against a real server, as a person or a script runs them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import jpeg, png, scene
from live import blackhole

from convstream.cli import main
from convstream.client._report import score_text
from convstream.client.evaluation import evaluation_text, labelled
from convstream.client.results import ModelInfo
from convstream.server import CameraConfig, Server, Settings
from convstream.server.config import load_settings
from convstream.v1 import convstream_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(*argv: str) -> int:
    """main() in a thread: the server runs on this test's event loop."""
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    (folder / "box-1.jpg").write_bytes(jpeg(scene(1, 480, 640)))
    (folder / "box-2.png").write_bytes(png(scene(2, 240, 320)))
    (folder / "more").mkdir()
    (folder / "more" / "wide.jpg").write_bytes(jpeg(scene(3, 300, 900)))
    return folder


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "dock.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(12):
        writer.write(scene(50 + i % 3, 240, 320))
    writer.release()
    return path


async def test_analyze_prints_a_table(
    server: Server, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("analyze", str(images), "--address", f"127.0.0.1:{server.port}") == 0
    out, err = capsys.readouterr()
    header, *rows, summary = out.splitlines()
    assert " ".join(header.split()) == "FRAME NAME SCORE DAMAGED PEAK (x, y) SERVER MS"
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert [Path(row.split()[1]).name for row in rows] == ["box-1.jpg", "box-2.png", "wide.jpg"]
    assert all(0.0 <= float(row.split()[2]) <= 1.0 for row in rows)
    assert all(row.split()[3] in ("yes", "no") for row in rows)
    assert summary.startswith("3 frames in ") and "frames/s" in summary and "0 failed" in summary
    assert err == ""
    # one frame: no rate, which would only be the inverse of one round trip
    argv = ["analyze", str(images / "box-1.jpg"), "--address", f"127.0.0.1:{server.port}"]
    assert await run(*argv) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert (
        summary.startswith("1 frame in ") and "frames/s" not in summary and "blank" not in summary
    )


async def test_analyze_says_which_frames_show_next_to_nothing(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A black frame (a capped lens) read "no" under DAMAGED, an all-clear for a picture of
    nothing; it reads "blank", the summary counts such frames, and the JSON line says so."""
    folder = tmp_path / "dock"
    folder.mkdir()
    cv2.imwrite(str(folder / "capped.jpg"), np.zeros((360, 640, 3), np.uint8))
    cv2.imwrite(str(folder / "scene.jpg"), scene(13, 360, 640))
    address = ["--address", f"127.0.0.1:{server.port}"]
    assert await run("analyze", str(folder), *address) == 0
    _, capped, seen, summary = capsys.readouterr().out.splitlines()
    assert capped.split()[1].endswith("capped.jpg") and capped.split()[3] == "blank", capped
    assert seen.split()[3] in ("yes", "no") and "dropped, 1 blank;" in summary, summary
    assert await run("analyze", str(folder / "capped.jpg"), "--json", *address) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["blank"] is True and line["damaged"] is False and line["contrast"] < 2


async def test_a_file_in_a_folder_that_is_no_image_fails_alone(
    server: Server, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .jpg that holds text (a download that saved an error page) is that file's error
    row, in its place, and the others are analysed: exit 1, some frames failed."""
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    (folder / "box-15.jpg").write_text("<html>404 Not Found</html>\n")
    assert await run("analyze", str(folder), "--address", f"127.0.0.1:{server.port}") == 1
    _, *rows, summary = capsys.readouterr().out.splitlines()
    names = [Path(row.split()[1]).name for row in rows]
    assert names == ["box-1.jpg", "box-15.jpg", "box-2.png", "wide.jpg"]
    assert "source error: " in rows[1] and "is not an image" in rows[1] and "holds text" in rows[1]
    assert "1 failed" in summary and all(row.split()[3] in ("yes", "no") for row in rows[::2])


async def test_analyze_json_lines_and_overlays(
    server: Server, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overlays, maps, arrays = tmp_path / "overlays", tmp_path / "maps", tmp_path / "arrays"
    # --maps before the path: it takes one value, so it cannot swallow the paths after it
    argv = ["analyze", "--maps", "stage3,stage1", str(images), "--encoding", "uint8", "--json"]
    argv += ["--save-overlays", str(overlays), "--address", f"127.0.0.1:{server.port}"]
    assert await run(*argv, "--save-maps", str(maps), "--save-arrays", str(arrays)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["frame_id"] for line in lines] == [1, 2, 3]
    sizes = {"box-1.jpg": (480, 640), "box-2.png": (240, 320), "wide.jpg": (300, 900)}
    for line in lines:
        assert line["ok"] and line["error"] is None and 0.0 <= line["score"] <= 1.0
        height, width = sizes[Path(line["name"]).name]
        # the damaged areas in frame pixels: one at least on a damaged frame, none otherwise
        assert bool(line["regions"]) == line["damaged"], line["regions"]
        for region in line["regions"]:
            assert sorted(region) == ["cells", "height", "value", "width", "x", "y"]
            assert region["x"] + region["width"] <= width, region
            assert region["y"] + region["height"] <= height, region
        assert (line["geometry"]["frame_width"], line["geometry"]["frame_height"]) == (
            width,
            height,
        )
        assert sorted(line["feature_maps"]) == ["stage1", "stage3"]
        assert line["feature_maps"]["stage3"]["shape"][0] == 64
        assert line["timings"]["inference_ms"] > 0
        assert all(v == round(v, 3) for v in line["timings"].values()), line["timings"]
        image = cv2.imread(line["overlay"])
        assert image is not None and image.shape == (height, width, 3)
        # a tile a channel, 160 pixels wide for stage3's 64 (and the frame's and heatmap's),
        # 320 for stage1's 16, in about as many rows as columns (a wide frame: 5 of 14)
        assert sorted(line["map_images"]) == ["stage1", "stage3"]
        for stage, least in (("stage3", 160 * 5), ("stage1", 320 * 3)):
            picture = cv2.imread(line["map_images"][stage])
            assert picture is not None and picture.shape[1] >= least, (stage, picture.shape)
        # the numbers themselves, for a shell that wants arrays (the JSON has their shape)
        with np.load(line["arrays"]) as saved:
            assert sorted(saved.files) == ["heatmap", "score", "stage1", "stage3"]
            assert abs(float(saved["score"]) - line["score"]) < 1e-6  # 6 decimals in JSON
            for stage in ("stage1", "stage3"):
                assert list(saved[stage].shape) == line["feature_maps"][stage]["shape"]
                assert saved[stage].dtype == np.float32
            assert list(saved["heatmap"].shape) == line["heatmap"]["shape"]
    assert sorted(p.name for p in overlays.iterdir()) == [
        "000001-box-1.png",
        "000002-box-2.png",
        "000003-wide.png",
    ]
    assert sorted(p.name for p in maps.iterdir()) == [
        f"{name}-{stage}.png"
        for name in ("000001-box-1", "000002-box-2", "000003-wide")
        for stage in ("stage1", "stage3")
    ]
    # a stage to draw is a stage fetched
    assert await run("analyze", str(images), "--save-maps", str(maps), *argv[-2:]) == 2
    assert "--save-maps draws the stages --maps fetches" in capsys.readouterr().err


async def test_bad_image_is_a_row_and_exit_code_1(
    server: Server, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg(scene(4, 240, 320))[:300])
    argv = ["analyze", str(images / "box-1.jpg"), str(broken)]
    assert await run(*argv, "--address", f"127.0.0.1:{server.port}") == 1
    out, err = capsys.readouterr()
    header = out.splitlines()[0]
    row = next(line for line in out.splitlines() if "broken.jpg" in line)
    # the error's kind in words, not its class's name ("InvalidFrame: ...")
    assert "error" in row and "invalid frame: " in row and "JPEG" in row
    # the table's columns hold: no score, then "error" under DAMAGED, the message under PEAK
    assert row.index("  error  ") + 2 == header.index("DAMAGED")
    assert row.index("invalid frame") == header.index("PEAK")
    assert row[header.index("SCORE") : header.index("SCORE") + 5].strip() == "-"
    assert err.strip() == "convstream analyze: 1 of 2 frames failed"
    assert await run("analyze", str(broken), "--address", f"127.0.0.1:{server.port}") == 1
    assert capsys.readouterr().err.strip() == "convstream analyze: 1 of 1 frame failed"


async def test_fail_on_damage_exits_6_when_a_frame_is_called_damaged(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For a cron job or a CI check: damage found is a result (exit 0) unless asked to fail
    on it; a frame that could not be analysed still says so first (1)."""
    address = f"127.0.0.1:{server.port}"
    rendered = tmp_path / "rendered"
    assert await run("samples", str(rendered), "--count", "8", "--size", "384x640") == 0
    capsys.readouterr()
    argv = ["analyze", str(rendered), "--json", "--address", address]
    assert await run(*argv) == 0
    damaged = sum(json.loads(line)["damaged"] for line in capsys.readouterr().out.splitlines())
    assert damaged > 0  # 4 of the 8 are drawn damaged
    assert await run(*argv, "--fail-on-damage") == 6
    assert capsys.readouterr().err.strip() == f"convstream analyze: {damaged} of 8 frames damaged"
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), np.full((240, 320, 3), 128, np.uint8))  # nothing to call damaged
    assert await run("analyze", str(plain), "--fail-on-damage", "--address", address) == 0
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    assert await run("analyze", str(rendered), str(broken), *argv[2:], "--fail-on-damage") == 1
    assert capsys.readouterr().err.strip().endswith("convstream analyze: 1 of 9 frames failed")
    # `... | head -1`: the reader gone, the status still says what was found before (it said
    # 0, "done", and a CI check piping its output passed on failed and damaged frames)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "convstream.cli", "analyze", str(broken), str(rendered)]
    read, write = os.pipe()
    os.close(read)  # gone before the first line
    try:
        done = await asyncio.to_thread(  # the server runs on this test's event loop
            subprocess.run,
            [*command, "--fail-on-damage", "--address", address],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr


RESULT_ONLY = ("score", "damaged", "peak", "frame_age_ms", "timings", "geometry", "heatmap")


async def test_a_failed_frame_in_json_has_nulls_where_a_result_would_be(
    server: Server, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed frame's line read "score": 0.0, "damaged": false, "frame_age_ms": 0.0, as an
    intact package's would: a script that missed "ok" counted it as checked and fine."""
    text = tmp_path / "page.jpg"
    text.write_text("<html>404 Not Found</html>\n")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg(scene(4, 240, 320))[:300])
    argv = ["analyze", str(text), str(truncated), str(images / "box-1.jpg"), "--json"]
    assert await run(*argv, "--maps", "stage3", "--address", f"127.0.0.1:{server.port}") == 1
    here, there, good = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert here["error"]["type"] == "SourceError" and there["error"]["code"] == "INVALID_ARGUMENT"
    for failed in (here, there):
        assert failed["ok"] is False and failed["feature_maps"] is None
        assert {key: failed[key] for key in RESULT_ONLY} == dict.fromkeys(RESULT_ONLY), failed
    # the server's count of results on the call: the frame that failed here never reached it
    assert (here["sequence"], there["sequence"], good["sequence"]) == (None, 1, 2)
    assert good["ok"] is True and isinstance(good["damaged"], bool) and good["score"] >= 0.0
    assert good["frame_age_ms"] > 0.0 and list(good["feature_maps"]) == ["stage3"]


def test_a_failed_watch_result_in_json_has_no_score_age_or_lateness() -> None:
    """A camera's frame that did not decode comes with the age the server gives it; its line
    read "score": 0.0, "damaged": false, and a "late_ms" worked out from no capture time."""
    from convstream.client import _report
    from convstream.client.results import Result

    lines = io.StringIO()
    reporter = _report.WatchReporter(
        lines, io.StringIO(), json_lines=True, overlays=None, total=None
    )
    failed = pb.FrameResult(frame_id=7, source="belt", sequence=3, frame_age_ms=41.5)
    failed.status.code = 3  # INVALID_ARGUMENT
    failed.status.message = "truncated JPEG"
    reporter.add(Result.from_proto(failed))
    line = json.loads(lines.getvalue())
    assert line["ok"] is False and line["sequence"] == 3 and line["late_ms"] is None
    assert line["name"] == "belt"  # the camera's id, as the table's row says: it was ""
    assert {key: line[key] for key in RESULT_ONLY} == dict.fromkeys(RESULT_ONLY), line


def test_a_nan_score_is_null_in_json_lines_so_every_parser_reads_them() -> None:
    """`--json` printed a custom model's NaN score as the bare word NaN: not JSON, so jq and
    most parsers stopped at that line."""
    from convstream.client import _report
    from convstream.client.results import Result

    def strict(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    lines = io.StringIO()
    reporter = _report.Reporter(lines, io.StringIO(), json_lines=True, overlays=None, total=None)
    nan = pb.FrameResult(frame_id=1, source="belt", score=float("nan"), frame_age_ms=float("inf"))
    reporter.add(Result.from_proto(nan))
    line = json.loads(lines.getvalue(), parse_constant=strict)
    assert line["ok"] is True and line["score"] is None and line["frame_age_ms"] is None


def test_the_table_aligns_wide_and_escaped_names_and_cuts_them_by_columns() -> None:
    """A name in Japanese takes two columns a character: len() padded it short and pushed
    its row's SCORE two columns right per character; a name with an escape was padded before
    the escape was written out, and overflowed its column."""
    from convstream.client import _report

    names = ["倉庫/カメラ一番.jpg", "belt.jpg", "a\x1bb.jpg", "é́.jpg"]
    width = max(_report.display_width(_report.printable(n)) for n in names)
    reporter = _report.Reporter(
        io.StringIO(), io.StringIO(), json_lines=False, overlays=None, total=None, name_width=width
    )
    rows = [reporter._row("1", name, "0.5000", "no", "(1, 2)", "9.0") for name in names]
    columns = {_report.display_width(row.split("0.5000")[0]) for row in rows}
    assert len(columns) == 1, rows  # every SCORE starts in the same column
    assert _report.display_width("倉庫") == 4 and _report.display_width("é́") == 1
    narrow = _report.Reporter(
        io.StringIO(), io.StringIO(), json_lines=False, overlays=None, total=None, name_width=8
    )
    cut = narrow._row("1", "倉庫/カメラ一番.jpg", "0.5000", "no", "(1, 2)", "9.0")
    name = cut[9:].split("  0.5000")[0]  # after FRAME's 7 columns and its gap
    assert name.startswith("…") and _report.display_width(name) <= 8, cut
    assert "番.jpg" in name  # the end of a name, which tells files apart, kept


async def test_a_video_cut_short_is_said_and_a_whole_one_is_not(
    server: Server, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recording copied in part streamed its first frames and ended as if whole, "0
    failed", exit 0: a check of it passed (an integrator's review). It is now said."""
    address = f"127.0.0.1:{server.port}"
    cut = tmp_path / "dock-cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    assert await run("stream", str(cut), "--fast", "--address", address) == 0
    captured = capsys.readouterr()
    shown = len(captured.out.splitlines()) - 2  # the header and the summary
    assert 1 <= shown < 12, captured.out
    assert captured.err == (
        f"convstream stream: dock-cut ended after {shown} of the 12 frames its header gives: "
        "is the file cut short?\n"
    )
    assert await run("stream", str(video), "--fast", "--address", address) == 0
    assert capsys.readouterr().err == ""
    # a file that is no video at all (OpenCV opens a text file named .jpg) is not one cut
    # short: said once, in the words that fit (it was said both ways)
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image\n")
    assert await run("stream", str(fake), "--fast", "--address", address) == 5
    err = capsys.readouterr().err
    assert "not a video OpenCV can read (it holds text" in err and "cut short" not in err


async def test_stream_a_video_file(
    server: Server, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{server.port}"
    started = time.monotonic()
    assert await run("stream", str(video), "--address", address) == 0
    # at the file's own 10 frames/s, as a camera would send them: 11 intervals of 0.1 s
    assert time.monotonic() - started >= 1.05
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[1:-1]] == [[str(i), f"dock#{i}"] for i in range(12)]
    assert out[-1].startswith("12 frames in ")

    overlays = tmp_path / "overlays"
    argv = ["stream", str(video), "--json", "--max-frames", "5", "--save-overlays", str(overlays)]
    argv += ["--fast"]  # as fast as the server takes them
    assert await run(*argv, "--freshness", "bounded_queue", "--address", address) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["frame_id"] for line in lines] == [0, 1, 2, 3, 4]
    assert all(line["source"] == "dock" for line in lines)
    for line in lines:
        image = cv2.imread(line["overlay"])
        assert image is not None and image.shape == (240, 320, 3)

    # --loop: the 12-frame file again from its start, ids counting on, until --max-frames
    argv = ["stream", str(video), "--json", "--fast", "--loop", "--max-frames", "30"]
    assert await run(*argv, "--address", address) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["frame_id"] for line in lines] == list(range(30))
    assert [line["score"] for line in lines[12:24]] == [line["score"] for line in lines[:12]]
    assert await run("stream", "rtsp://127.0.0.1:9/cam", "--loop", "--address", address) == 2
    err = capsys.readouterr().err
    assert "--loop: looping is for video files: 'rtsp://127.0.0.1:9/cam' is live" in err


async def test_samples_write_frames_and_a_clip_that_analyze_and_stream_take(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first hour's steps: `samples --clip` writes JPEGs and the demo conveyor as a video;
    `analyze` of the folder takes the JPEGs only, `stream` takes the video."""
    folder = tmp_path / "boxes"
    assert (
        await run("samples", str(folder), "--count", "2", "--size", "240x320", "--clip", "2") == 0
    )
    written = capsys.readouterr().out.splitlines()
    assert written[0].endswith("box-000-intact.jpg  intact")
    assert "box-001-damaged.jpg  damaged (" in written[1]
    assert written[2].startswith(f"{folder / 'conveyor.avi'}  2 s at 15 fps, 30 frames, ")
    # the kinds in words, as people read them ("torn label", not "torn_label")
    assert main(["samples", str(tmp_path / "kinds"), "--count", "6", "--size", "120x160"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[5].endswith("box-005-damaged.jpg  damaged (tear, torn label)")
    # again, fewer, into the same folder: the earlier run's go (4 of them were left, and
    # `analyze` of the folder mixed the two runs); a file of the user's own stays
    (tmp_path / "kinds" / "box-9-mine.jpg").write_bytes(b"")
    assert main(["samples", str(tmp_path / "kinds"), "--count", "2", "--size", "120x160"]) == 0
    said = capsys.readouterr().err
    kinds = tmp_path / "kinds"
    assert said == f"convstream samples: removed 6 sample images of an earlier run from {kinds}\n"
    assert sorted(p.name for p in (tmp_path / "kinds").iterdir()) == [
        "box-000-intact.jpg",
        "box-001-damaged.jpg",
        "box-9-mine.jpg",
    ]
    capture = cv2.VideoCapture(str(folder / "conveyor.avi"))
    size = (capture.get(cv2.CAP_PROP_FRAME_HEIGHT), capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    assert (size, capture.get(cv2.CAP_PROP_FRAME_COUNT)) == ((360, 640), 30)  # the demo's
    capture.release()
    address = f"127.0.0.1:{server.port}"
    assert await run("analyze", str(folder), "--json", "--address", address) == 0
    out, err = capsys.readouterr()
    names = [Path(json.loads(line)["name"]).name for line in out.splitlines()]
    assert names == ["box-000-intact.jpg", "box-001-damaged.jpg"]
    # the video left out, and said: two results from a folder of three files is no surprise
    assert err == "convstream analyze: left out 1 file that is not an image: conveyor.avi\n"
    clip = str(folder / "conveyor.avi")
    assert await run("stream", clip, "--json", "--fast", "--address", address) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["frame_id"] for r in results] == list(range(30))
    assert main(["samples", str(folder), "--clip", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "convstream samples: --clip must be 0 to 3600 seconds, got -1"
    )
    # nothing asked for: it wrote nothing and exited 0 without a word
    assert main(["samples", str(tmp_path / "none"), "--count", "0", "--clip", "0"]) == 2
    assert "nothing to write with --count 0 and --clip 0" in capsys.readouterr().err


def test_samples_writes_every_file_whatever_becomes_of_stdout(tmp_path: Path) -> None:
    """`samples DIR --count 6 --clip 2 | head -1` wrote 2 of the 6 JPEGs and no video, and
    exited 0; stdout on a full disk was a traceback. The files are written either way: a
    reader gone is no failure (0, quietly), a stdout that cannot be written is one line, 1."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "convstream.cli", "samples"]
    flags = ["--count", "6", "--clip", "1", "--size", "120x160"]
    written = [f"box-{i:03d}-{'damaged' if i % 2 else 'intact'}.jpg" for i in range(6)]

    def samples_into(folder: str, stdout: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, str(tmp_path / folder), *flags],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: `| head -0`
    try:
        done = samples_into("piped", write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")
    assert sorted(p.name for p in (tmp_path / "piped").iterdir()) == [*written, "conveyor.avi"]
    assert all(cv2.imread(str(tmp_path / "piped" / name)) is not None for name in written)
    with open("/dev/full", "w") as full:
        done = samples_into("full", full)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == (
        "convstream samples: cannot write to stdout: No space left on device "
        "(the files are written)\n"
    )
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [*written, "conveyor.avi"]


def test_samples_refuses_a_size_too_small_and_a_file_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--size 10x10 was a traceback ("image too small"); a folder where a JPEG goes was
    listed as written, exit 0."""
    # the last took minutes and GBs; 32x4000 is a strip the server would refuse
    for size in ("10x10", "0x100", "100000x100000", "32x4000"):
        assert main(["samples", str(tmp_path / "small"), "--size", size]) == 2
        assert capsys.readouterr().err == (
            "convstream samples: --size must be 32 to 8192 pixels a side and at most 12 "
            "times as wide as high or as high as wide, as the server takes frames (HxW, e.g. "
            f"720x1280), got {size}\n"
        )
    assert not (tmp_path / "small").exists()
    (tmp_path / "taken" / "box-001-damaged.jpg").mkdir(parents=True)
    argv = ["samples", str(tmp_path / "taken"), "--count", "3", "--size", "64x64"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{tmp_path / 'taken' / 'box-000-intact.jpg'}  intact"]
    assert err == (
        f"convstream samples: cannot write {tmp_path / 'taken' / 'box-001-damaged.jpg'}: "
        "Is a directory\n"
    )
    (tmp_path / "clip" / "conveyor.avi").mkdir(parents=True)
    assert main(["samples", str(tmp_path / "clip"), "--count", "0", "--clip", "1"]) == 1
    assert capsys.readouterr().err == (
        f"convstream samples: cannot write {tmp_path / 'clip' / 'conveyor.avi'}: Is a directory\n"
    )


async def test_evaluate_measures_the_servers_scores_on_labelled_folders(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`samples --by-label` writes the layout `evaluate` reads; evaluate's scores are the
    server's (as `analyze` gives them), its AUC and each threshold's counts follow from them."""
    folder = tmp_path / "labelled"
    argv = ["samples", str(folder), "--count", "24", "--size", "256x256", "--by-label"]
    assert await run(*argv) == 0
    capsys.readouterr()
    assert sorted(p.name for p in folder.iterdir()) == ["damaged", "intact"]
    assert len(list((folder / "damaged").iterdir())) == 12
    address = f"127.0.0.1:{server.port}"
    assert await run("evaluate", str(folder), "--json", "--address", address) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["damaged_images"], report["intact_images"]) == (12, 12)
    images = {i["name"]: i for i in report["images"]}
    assert all(Path(n).parent.name == i["folder"] for n, i in images.items())
    assert await run("analyze", str(folder), "--json", "--address", address) == 0
    analysed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["score"] for r in analysed} == {
        n: pytest.approx(i["score"], abs=1e-5) for n, i in images.items()
    }
    damaged = [i["score"] for i in images.values() if i["folder"] == "damaged"]
    intact = [i["score"] for i in images.values() if i["folder"] == "intact"]
    wins = sum(1.0 if d > n else 0.5 if d == n else 0.0 for d in damaged for n in intact)
    assert report["roc_auc"] == pytest.approx(wins / (12 * 12), abs=1e-6)
    assert report["roc_auc"] > 0.6  # the model tells its own rendered scenes apart
    assert await run("info", "--json", "--address", address) == 0
    threshold = json.loads(capsys.readouterr().out)["threshold"]
    assert report["server_threshold"] == pytest.approx(threshold, abs=1e-6)
    assert all(i["damaged"] == (i["score"] >= threshold) for i in images.values())
    for row in report["thresholds"]:
        t = row["threshold"]
        assert row["damaged_found"] == sum(s >= t for s in damaged), row
        assert row["intact_flagged"] == sum(s >= t for s in intact), row
    rows = {(r["kind"], r["max_false_alarms"]): r for r in report["thresholds"]}
    offered = [r["threshold"] for r in report["thresholds"] if r["kind"] != "server"]
    assert all(t == round(t, 3) for t in offered), offered  # as printed, so as set
    assert rows[("false_alarms", 0.0)]["intact_flagged"] == 0
    assert rows[("false_alarms", 0.1)]["intact_flagged"] <= 1  # 10% of 12
    assert rows[("server", None)]["threshold"] == report["server_threshold"]
    assert report["best_threshold"] == rows[("best", None)]["threshold"]
    # for people: the table, and what to set
    assert await run("evaluate", str(folder), "--address", address) == 0
    text = capsys.readouterr().out
    assert f"12 damaged and 12 intact images in {folder}" in text
    assert f"ROC AUC {report['roc_auc']:.3f}" in text
    assert "no false alarm" in text and "the server's now" in text
    # hidden files are not read; an image that cannot be analysed is left out and named
    (folder / "damaged" / "._box-001-damaged.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "intact" / ".thumbnails").mkdir()
    (folder / "intact" / ".thumbnails" / "t.jpg").write_bytes(jpeg(scene(9, 64, 64)))
    (folder / "intact" / "cut.jpg").write_bytes(b"\xff\xd8\xff not a whole JPEG")
    assert await run("evaluate", str(folder), "--address", address) == 1
    out, err = capsys.readouterr()
    assert f"12 damaged and 12 intact images in {folder} (1 more could not be analysed" in out
    assert err.startswith(f"convstream evaluate: left out {folder / 'intact' / 'cut.jpg'}: ")
    # a folder without the layout is told what it needs
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no damaged/ folder; expected damaged/ and intact/ folders" in err
    assert "(it has labelled/)" in err


def test_evaluate_says_when_the_scores_do_not_separate_and_offers_thresholds_that_can_be_set() -> (
    None
):
    """Scores that tell nothing get no recommendation; a threshold over 1 is never offered
    (the server takes 0 to 1); the best balance sits midway in the gap it may move in."""
    same = labelled(["a", "b", "c", "d"], [0.5] * 4, [True, True, False, False], 0.822)
    assert "do not separate the two kinds here" in evaluation_text(same, "f")
    swapped = labelled(["a", "b", "c", "d"], [0.1, 0.2, 0.8, 0.9], [True, True, False, False], 0.8)
    assert "are damaged/ and intact/ the wrong way round?" in evaluation_text(swapped, "f")
    saturated = labelled(["a", "b", "c"], [1.0, 1.0, 0.2], [True, False, False], 0.822)
    assert all(r.threshold <= 1.0 for r in saturated.rows())
    assert not [r for r in saturated.rows() if r.kind == "false_alarms" and r.rate == 0.0]
    # a rate kept only by flagging nothing is no row to offer (the newcomer's "1.000  0 (0.0%)
    # 0 (0.0%)  no false alarm")
    flags_all = labelled(["a", "b", "c"], [0.9, 0.9995, 0.2], [True, False, False], 0.822)
    assert all(r.found for r in flags_all.rows() if r.kind == "false_alarms")
    assert not [r for r in flags_all.rows() if r.kind == "false_alarms" and r.rate == 0.0]
    apart = labelled(["a", "b"], [0.999, 0.135], [True, False], 0.822)
    best = apart.best
    assert 0.55 < best.threshold < 0.58  # not 0.999, on the damaged image's own score
    assert (best.found, best.flagged) == (1, 0)
    text = evaluation_text(apart, "f")
    assert "Few images: with 1 of a kind, each one moves its rate by 100%" in text
    assert f"CONVSTREAM_THRESHOLD={best.threshold:.3f}" in text and "--threshold" not in text


def test_a_threshold_set_as_evaluate_offers_it_reads_the_same_everywhere() -> None:
    """Set to 0.962, the server's threshold comes back as float32 0.9620000124: it is still
    the best balance, one row, 0.962 in `info`; and a score under it never reads as at it."""
    wire = float(np.float32(0.962))
    scores = [0.97, 0.99, 0.954, 0.5]  # best balance: 0.962, midway in 0.954..0.97
    evaluation = labelled(["a", "b", "c", "d"], scores, [True, True, False, False], wire)
    assert evaluation.best.threshold == 0.962
    text = evaluation_text(evaluation, "f")
    assert "The server's threshold 0.962 is the best balance." in text
    assert sum(line.strip().startswith("0.962 ") for line in text.splitlines()) == 1  # one row
    message = pb.ModelInfo(threshold=0.962)
    assert ModelInfo.from_proto(message).threshold == 0.962
    assert score_text(0.993855) == "0.9938" and score_text(float(np.float32(0.994))) == "0.9940"
    assert score_text(1.0) == "1.0000" and score_text(0.0) == "0.0000"
    assert score_text(math.nan) == "nan"  # an overlay's label of a NaN score raised


async def test_a_file_that_is_no_video_is_an_error_not_an_empty_success(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_video = tmp_path / "notes.jpg"
    not_video.write_text("hello\n")
    assert await run("stream", str(not_video), "--address", f"127.0.0.1:{server.port}") == 5
    out, err = capsys.readouterr()
    assert out == ""
    assert "not a video OpenCV can read (it holds text" in err and "notes.jpg" in err


async def test_info(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("info", "--address", f"127.0.0.1:{server.port}") == 0
    out = capsys.readouterr().out
    assert "CPUExecutionProvider" in out and "stage3" in out and "384x640" in out
    # the room all streams share, which a fifth stream of the largest queue found full unsaid
    assert "at most 256 (1024 for all streams together)" in out
    # every limit a frame is held to, the narrowest frame taken too
    assert "pixels per frame, 32 to 16,384 a side (12:1 at most)\n" in out
    assert await run("info", "--json", "--address", f"127.0.0.1:{server.port}") == 0
    info = json.loads(capsys.readouterr().out)
    # the threshold as the server compares with it (0.82151 read 0.8215: a score of 0.82150
    # printed "0.8215 no" beside it)
    printed = re.search(r"^threshold +([0-9.]+) ", out, re.MULTILINE)
    assert printed is not None and float(printed[1]) == round(info["threshold"], 6)
    # and where it comes from: the shipped model's own, here
    assert info["threshold_source"] == "model"
    assert "(damaged when score >= threshold; the model's own)" in out
    assert [s["name"] for s in info["stages"]] == ["stage1", "stage2", "stage3", "stage4"]
    # named, as the text names them (384x640 is height x width): a pair read backwards
    assert {"height": 384, "width": 640} in info["input_sizes"]
    assert all(set(size) == {"height", "width"} for size in info["input_sizes"])


async def test_the_address_comes_from_the_environment_unless_a_flag_gives_it(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server on another port or machine: CONVSTREAM_ADDRESS once, not --address on every
    command; the flag still wins, the dashboard takes it too, and the server ignores it."""
    from convstream.dashboard.cli import add_commands as add_dashboard

    monkeypatch.setenv("CONVSTREAM_ADDRESS", f"127.0.0.1:{server.port}")
    assert await run("info") == 0
    out = capsys.readouterr().out
    assert "CPUExecutionProvider" in out and "Azure" not in out  # none it would run
    elsewhere = nowhere()
    assert await run("info", "--address", elsewhere) == 3
    assert f"convstream server at {elsewhere}" in capsys.readouterr().err
    parser = argparse.ArgumentParser(prog="convstream")
    add_dashboard(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["dashboard"]).address == f"127.0.0.1:{server.port}"
    assert load_settings(environ={"CONVSTREAM_ADDRESS": "10.0.0.5:50051"}).port == 50051
    # the dashboard's port as run.sh takes it (the dashboard command bound 8080 regardless)
    monkeypatch.setenv("CONVSTREAM_DASHBOARD_PORT", "8099")
    parser = argparse.ArgumentParser(prog="convstream")
    add_dashboard(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["dashboard"]).port == 8099
    assert parser.parse_args(["dashboard", "--port", "8098"]).port == 8098
    monkeypatch.setenv("CONVSTREAM_DASHBOARD_PORT", "80a")  # the error says where it came from
    parser = argparse.ArgumentParser(prog="convstream")
    add_dashboard(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["dashboard"])
    assert "got '80a' (from $CONVSTREAM_DASHBOARD_PORT)" in capsys.readouterr().err
    # a misspelt variable is said, not taken for no address at all (the commands went to
    # 127.0.0.1:50051 and said only that it was unavailable)
    monkeypatch.delenv("CONVSTREAM_ADDRESS")
    monkeypatch.setenv("CONVSTREAM_ADRESS", f"127.0.0.1:{server.port}")
    assert await run("info", "--address", f"127.0.0.1:{server.port}") == 0
    assert capsys.readouterr().err.startswith(
        "convstream info: warning: $CONVSTREAM_ADRESS is set, which no command reads: did you "
        "mean $CONVSTREAM_ADDRESS?\n"
    )
    # a misspelling, in any case, not a variable of one's own that names an address
    from convstream.client.connection_flags import misspelt_address

    names = ["CONVSTREAM_ADDR", "convstream_address", "CONVSTREAM_ACCESS"]
    names += ["CONVSTREAM_GRPC_ADDRESS", "CONVSTREAM_ADDRESS_V6", "CONVSTREAM_ADDRESS"]
    said = {name: misspelt_address({name: "x"}) is not None for name in names}
    assert [name for name, warned in said.items() if warned] == [
        "CONVSTREAM_ADDR",
        "convstream_address",
    ]


def test_no_server_is_one_line_and_exit_code_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--address", f"127.0.0.1:{free_port()}"]) == 3  # not a frame's 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("convstream info: convstream server at 127.0.0.1:")
    assert "unavailable" in err and "convstream serve" in err
    assert "(nothing listens on that port: is `convstream serve` running there?)" in err
    assert "TLS" not in err  # a refused connection is no handshake


def test_a_web_port_is_told_from_a_grpc_port(capsys: pytest.CaptureFixture[str]) -> None:
    """The dashboard's or the metrics port given for the server's: gRPC's words, then advice
    about TLS; it is an HTTP/1 server that answered."""
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        assert main(["info", "--address", f"127.0.0.1:{web.server_address[1]}"]) == 3
    finally:
        web.shutdown()
        web.server_close()
    err = capsys.readouterr().err
    assert "an HTTP/1 server answered there, not gRPC: the dashboard's or the metrics port?" in err
    assert "TLS" not in err


def test_usage_errors_exit_2(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(tmp_path / "missing.jpg")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["stream", str(tmp_path / "missing.avi")]) == 2
    assert main(["analyze", str(images), "--quality", "0"]) == 2
    assert "quality" in capsys.readouterr().err
    assert main(["analyze", str(images), "--ca", str(tmp_path / "no-ca.pem")]) == 2
    bad = (["analyze"], ["stream", "x.avi", "--freshness", "newest"], ["nope"])
    for argv in (*bad, ["analyze", str(images), "--maps", ","]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # a flag another command has: this one's usage
        main(["serve", "--tls-cert", "x.pem"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage: convstream serve ")
    assert "unrecognized arguments: --tls-cert x.pem" in err
    # `--server` is no abbreviation of `--server-name` (which would connect to the default
    # address with the given one as a TLS name); a guess at the address flag names it.
    with pytest.raises(SystemExit) as info:
        main(["analyze", "--server", "127.0.0.1:1", str(images)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "unrecognized arguments: --server" in err
    assert "the server's address is --address HOST:PORT" in err
    with pytest.raises(SystemExit) as info:
        main(["serve", "--po", "5"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "unrecognized arguments: --po 5" in err
    assert "--address" not in err.splitlines()[-1]  # serve has no --address to point to
    # a camera's '=' left out: its source read as a stray argument, which is named
    with pytest.raises(SystemExit) as info:
        main(["serve", "--camera", "belt", "/tmp/belt.avi", "--check-config"])
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "convstream serve: error: unrecognized arguments: /tmp/belt.avi; --camera takes "
        "ID=SOURCE in one argument: --camera belt=/tmp/belt.avi"
    )
    # no command at all: the commands there are, not only that one is needed
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "analyze   analyse images or folders of images" in err and "dashboard" in err
    # an option before the command: argparse called the address an unknown command
    with pytest.raises(SystemExit) as info:
        main(["--address", "127.0.0.1:1", "cameras"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "options go after the command: convstream cameras --address 127.0.0.1:1" in err


def test_a_bad_tls_file_or_upload_flag_is_said_of_its_flag(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library's words reached the user: "[Errno 2] No such file or directory: ...",
    "Upload.quality must be 1..100", "TLS needs both cert and key": which flag was wrong?"""
    missing, text = tmp_path / "missing.pem", tmp_path / "text.pem"
    text.write_text("not a certificate\n")
    wrong = {
        ("--ca", str(missing)): f"--ca {missing}: No such file or directory",
        ("--ca", str(tmp_path)): f"--ca {tmp_path}: Is a directory",
        ("--ca", str(text)): f"--ca {text} holds no PEM block, expected a PEM certificate",
        ("--cert", str(text)): "--cert and --key go together (the client certificate and its "
        "private key, for mutual TLS); got --cert without --key",
        ("--key", str(text)): "--cert and --key go together (the client certificate and its "
        "private key, for mutual TLS); got --key without --cert",
        (
            "--cert",
            str(missing),
            "--key",
            str(text),
        ): f"--cert {missing}: No such file or directory",
    }
    for flags, told in wrong.items():
        assert main(["info", *flags, "--address", nowhere()]) == 2, flags
        assert capsys.readouterr().err == f"convstream info: error: {told}\n"
    for quality in ("0", "101"):
        assert main(["analyze", str(images), "--quality", quality, "--address", nowhere()]) == 2
        assert capsys.readouterr().err == (
            f"convstream analyze: error: --quality must be 1 to 100 (JPEG quality), got {quality}\n"
        )


def test_the_console_command_has_no_traceback() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "convstream.cli", "analyze", str(Path(__file__))]
    command += ["--address", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "unavailable" in done.stderr
    assert done.stdout == ""  # no table header above an error


@pytest.mark.parametrize("command", ["analyze", "stream", "info", "cameras", "watch"])
def test_every_client_command_says_its_exit_statuses(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script tells "server down" (3) from "refused" (4), "camera or video failed" (5) and
    "frames failed" (1): it exited 1 for all of them, said only in the source."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "exit status:" in out
    for line in ("  3    the server", "  4    refused", "143 SIGTERM"):
        assert line in out, (command, line)
    # and only those it can end with: `info` listed reading videos and --fail-on-damage
    assert ("  5    the source" in out) == (command in ("stream", "watch")), command
    fails_on_damage = command in ("analyze", "stream", "watch")
    assert ("  6    analyze, stream and watch" in out) == fails_on_damage, command
    frames = command not in ("info", "cameras")
    assert ("  0    done: every frame analysed" in out) == frames, command
    assert ("some frames could not be analysed" in out) == frames, command


@contextlib.contextmanager
def _children_sigint(handler: Any = signal.SIG_DFL) -> Iterator[None]:
    """Child processes started inside start with SIGINT as ``handler`` says: SIG_IGN stays
    ignored across exec, and anything else is SIG_DFL there (CI runs the suite as a
    background job, which ignores Ctrl-C, and its children would too). Set in this process
    for the spawn, not by a preexec_fn: that ran Python in the forked child, where gRPC's
    fork handlers started a poller thread whose epoll fd the close before exec took away,
    and about one spawn in four on a busy machine aborted ("epoll_wait error: Bad file
    descriptor", SIGABRT) before it printed a line."""
    ignored = handler is signal.SIG_IGN
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextlib.asynccontextmanager
async def _watching_belt(
    python: list[str], sigint: Any = signal.SIG_DFL
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python [python...] watch belt` of a demo camera, started with SIGINT set to ``sigint``
    (a background job of a script has it ignored), yielded once a result has come."""
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=5")
    server = Server(Settings(port=0, metrics_port=0, cameras=(belt,)))
    await server.start()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    watch = [sys.executable, *python, "watch", "belt", "--address", f"127.0.0.1:{server.port}"]
    try:
        with _children_sigint(sigint):
            process = await asyncio.create_subprocess_exec(
                *watch, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
            )
        assert process.stdout is not None
        header = await asyncio.wait_for(process.stdout.readline(), 60)
        if header.split()[:2] != [b"FRAME", b"SCORE"]:  # it ended: say how
            out, err = await asyncio.wait_for(process.communicate(), 30)
            raise AssertionError((process.returncode, header + out, err))
        await asyncio.wait_for(process.stdout.readline(), 30)  # a result: in the loop
        yield process
    finally:
        await server.stop(grace=0)


async def _watch_then_signal(
    python: list[str], sent: signal.Signals
) -> tuple[int | None, bytes, bytes]:
    """`python [python...] watch belt` of a demo camera, sent ``sent`` once a result came:
    its exit status, stdout and stderr."""
    async with _watching_belt(python) as process:
        process.send_signal(sent)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out, err


async def test_an_analyze_stopped_early_names_the_images_it_did_not_analyse(
    server: Server, tmp_path: Path
) -> None:
    """Ctrl-C in a long `analyze` (or SIGTERM, or the server lost) printed the rows so far and
    a count: which images had no result, and where to start again, was left to the reader."""
    data = jpeg(scene(5100, 720, 1280))
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(300):
        (folder / f"img-{k:03d}.jpg").write_bytes(data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        "-m",
        "convstream.cli",
        "analyze",
        str(folder),
        "--address",
        f"127.0.0.1:{server.port}",
    ]
    with _children_sigint():
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readline(), 60)  # the header
    await asyncio.wait_for(process.stdout.readline(), 30)  # a result
    process.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err
    rows = [line.split() for line in out.decode().splitlines()[:-1]]  # the summary last
    answered = len(rows) + 1  # and the one read before the signal
    assert 1 <= answered < 300
    # the rows are the first images, in order (the NAME column keeps their ends); the
    # message names the first without a row
    assert [row[1][-11:] for row in rows] == [f"img-{k:03d}.jpg" for k in range(1, answered)]
    first = folder / f"img-{answered:03d}.jpg"
    more = 300 - answered - 1
    expected = (
        f"convstream analyze: stopped after {answered} of 300 images; "
        f"not analysed: {first} and {more} more after it\n"
        "convstream analyze: stopped by Ctrl-C\n"
    )
    assert err.decode() == expected


async def test_client_commands_end_on_sigterm_or_ctrl_c_without_a_traceback() -> None:
    """SIGTERM (`timeout 60 convstream watch ...`, systemd) killed a watch mid-line with no
    summary; Ctrl-C outside the result loop (a server that does not answer) printed a
    traceback. Both now end as Ctrl-C in the loop did: 143 and 130, the summary said."""
    status, out, err = await _watch_then_signal(["-m", "convstream.cli"], signal.SIGTERM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert status == 143, err
    assert b"Traceback" not in err and re.match(rb"\d+ frames? in ", out.splitlines()[-1]), out
    assert err.endswith(b"convstream watch: stopped by SIGTERM\n"), err  # not a finished run
    silent, port = blackhole()  # accepts, never answers: `info` waits inside its call
    try:
        info = [sys.executable, "-m", "convstream.cli", "info", "--address", f"127.0.0.1:{port}"]
        for sent, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            with _children_sigint():
                started = subprocess.Popen(
                    info, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
                )
            # its connection accepted (and never answered): the call is waiting
            silent.settimeout(30)
            connection, _ = await asyncio.to_thread(silent.accept)
            await asyncio.sleep(0.5)
            started.send_signal(sent)
            out, err = await asyncio.to_thread(started.communicate, timeout=30)
            assert started.returncode == status, (sent, err)
            assert b"Traceback" not in err and out == b"", err
            said = b"Ctrl-C" if sent == signal.SIGINT else b"SIGTERM"
            assert err.endswith(b"convstream info: stopped by " + said + b"\n"), err
            connection.close()
    finally:
        silent.close()


# main() as the console script runs it, with Ctrl-C as it imports grpc: the client's modules
# (grpc, numpy, OpenCV) load for a second or two before a command begins
_CTRL_C_AS_THE_CLIENT_LOADS = """
import signal, sys
from convstream.cli import main

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc":
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None

assert "grpc" not in sys.modules
sys.meta_path.insert(0, CtrlC())
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_the_client_loads_ends_quietly_with_130() -> None:
    """Ctrl-C in the first second or two of any client command (main() loading the client's
    modules, before its `try`) printed a KeyboardInterrupt traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", _CTRL_C_AS_THE_CLIENT_LOADS, "info", "--address", nowhere()]
    with _children_sigint():
        done = subprocess.run(command, capture_output=True, env=env, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, b"", b"")


async def test_a_background_job_that_ignores_ctrl_c_keeps_ignoring_it() -> None:
    """A script's `convstream watch ... &` starts with SIGINT ignored (a non-interactive
    shell does that to background jobs); the watch put its own handler in, and a Ctrl-C
    meant for the script ended it. Ignored at the start, ignored throughout; SIGTERM ends it."""
    async with _watching_belt(["-m", "convstream.cli"], signal.SIG_IGN) as process:
        assert process.stdout is not None
        process.send_signal(signal.SIGINT)
        for _ in range(3):  # results go on coming: about 5 a second
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert re.match(rb" *\d+  ", line), line  # a result's row, not the summary
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 143, err
    assert b"Traceback" not in err and re.match(rb"\d+ frames? in ", out.splitlines()[-1]), out


# A signal at the worst moment Python has for one: inside gRPC's wait on a Condition, its lock
# just released and the `try` that takes it back not yet entered. SIGUSR1 arms it once the
# watch is in its result loop; the next such wait of the main thread raises the signal there.
_SIGNAL_IN_A_WAIT = """
import signal, sys, threading
from convstream.cli import main
from convstream.client._report import score_text
from convstream.client.evaluation import evaluation_text, labelled
from convstream.client.results import ModelInfo

armed = threading.Event()
signal.signal(signal.SIGUSR1, lambda signum, frame: armed.set())
condition_init = threading.Condition.__init__

def init(self, lock=None):
    condition_init(self, lock)
    release = self._release_save

    def release_save():
        state = release()
        if armed.is_set() and threading.current_thread() is threading.main_thread():
            armed.clear()
            signal.raise_signal(int(sys.argv[1]))
        return state

    self._release_save = release_save

threading.Condition.__init__ = init
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
async def test_a_signal_inside_grpcs_wait_ends_a_watch_cleanly(sent: signal.Signals) -> None:
    """CI saw `timeout`'s SIGTERM end a watch with "RuntimeError: cannot release un-acquired
    lock" and exit 1: the handler raised inside gRPC's Condition.wait, where the lock was
    released. Ctrl-C's KeyboardInterrupt could do the same. The signal now only closes the
    client, from a thread: 143 or 130, the summary said, no traceback, whenever it comes."""
    status, out, err = await _watch_then_signal(
        ["-c", _SIGNAL_IN_A_WAIT, str(int(sent))], signal.SIGUSR1
    )
    assert status == {signal.SIGTERM: 143, signal.SIGINT: 130}[sent], err
    said = {signal.SIGTERM: b"SIGTERM", signal.SIGINT: b"Ctrl-C"}[sent]
    assert err == b"convstream watch: stopped by " + said + b"\n", err  # and nothing else
    assert b" damaged, " in out.splitlines()[-1], out  # the summary


async def test_analyze_and_stream_give_up_on_a_silent_server_within_timeout(
    images: Path, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that accepts connections and never answers: a stream has no deadline, and
    analyze and stream waited out gRPC's own connect timeout (22 s) whatever --timeout said."""
    silent, port = blackhole()
    try:
        for argv in (["analyze", str(images)], ["stream", str(video)]):
            started = time.monotonic()
            assert await run(*argv, "--address", f"127.0.0.1:{port}", "--timeout", "2") == 3
            took = time.monotonic() - started
            assert took < 12, (argv, took)  # 2 s and start-up, not 22
            assert "timed out" in capsys.readouterr().err
    finally:
        silent.close()


async def test_an_unknown_feature_map_is_a_usage_error_before_any_frame(
    server: Server, images: Path, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{server.port}"
    for argv in (["analyze", str(images)], ["stream", str(video)]):
        assert await run(*argv, "--maps", "stage9", "--address", address) == 2
        out, err = capsys.readouterr()
        assert out == "" and "unknown feature map 'stage9'; the model has stage1" in err


@pytest.mark.parametrize("address", ["foo:bar", "127.0.0.1:", "[::1]:http", "host:50O51"])
def test_an_address_whose_port_is_no_number_is_a_usage_error(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--address foo:bar exited 3, "the host name does not resolve" (gRPC took the whole of
    it for a name); 127.0.0.1: dialled port 443. Both are usage errors, as :99999 is."""
    assert main(["info", "--address", address]) == 2
    assert capsys.readouterr().err == (
        "convstream info: error: --address's port must be 1 to 65535 (host:port, e.g. "
        f"127.0.0.1:50051), got {address!r}\n"
    )


def test_a_bad_address_from_the_environment_is_said_of_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was said of --address, which the command was not given."""
    monkeypatch.setenv("CONVSTREAM_ADDRESS", "foo:bar")
    assert main(["info"]) == 2
    assert capsys.readouterr().err.startswith(
        "convstream info: error: $CONVSTREAM_ADDRESS's port must be 1 to 65535"
    )


@pytest.mark.parametrize("rate", ["inf", "-1", "nan", "1001"])
def test_a_max_fps_that_is_no_rate_is_a_usage_error(
    rate: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """watch --max-fps inf passed the command's check and ended in the library's ValueError,
    with its traceback."""
    assert main(["watch", "belt", "--max-fps", rate, "--address", nowhere()]) == 2
    assert capsys.readouterr().err == (
        "convstream watch: error: --max-fps must be 0 (all) to 1000 results per second, got "
        f"{float(rate)}\n"
    )


async def test_timeout_inf_means_no_limit(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """--timeout inf (as --resume-timeout takes it) failed every call at once."""
    assert await run("info", "--timeout", "inf", "--address", f"127.0.0.1:{server.port}") == 0
    assert "CPUExecutionProvider" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["info", "--timeout", "0"])
    assert done.value.code == 2 and "--timeout: expected seconds over 0" in capsys.readouterr().err
    assert main(["info", "--address", "127.0.0.1:99999"]) == 2  # gRPC dialled port 34463
    assert "port must be 1 to 65535" in capsys.readouterr().err
    assert main(["info", "--address", "51101"]) == 2  # a port alone: said, not a DNS error
    assert "got a port alone (51101): 127.0.0.1:51101 for a server" in capsys.readouterr().err
    assert main(["info", "--address", "http://127.0.0.1:51101"]) == 2
    assert "--tls or --ca FILE for the commands" in capsys.readouterr().err


async def test_output_that_the_terminal_cannot_encode_is_escaped_not_a_crash(
    server: Server,
) -> None:
    """The '\u2026' of info's hash line (or a file's name) in an ASCII-only locale crashed
    with UnicodeEncodeError, a traceback and status 1."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "convstream.cli", "info"]
    command += ["--address", f"127.0.0.1:{server.port}"]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "\\u2026" in done.stdout  # the sha256's ellipsis, escaped


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"convstream {version('convstream')}\n"


@pytest.mark.parametrize("which", ["port", "metrics-port"])
def test_serve_on_a_busy_port_names_it_in_one_line(which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"port": free_port(), "metrics-port": free_port(), which: busy}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-m", "convstream.cli", "serve", "--no-cameras"]
        command += ["--port", str(ports["port"]), "--metrics-port", str(ports["metrics-port"])]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("convstream serve:")]
    assert len(ours) == 1, done.stderr
    assert f"127.0.0.1:{busy}" in ours[0] and f"--{which}" in ours[0], ours[0]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this host's onnxruntime offers CUDA: a GPU that does not load cannot be played",
)
def test_check_config_says_a_gpu_asked_for_would_not_be_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('provider = "cuda"\ncameras = []\n')
    assert main(["serve", "--check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK, 1 warning(s) below: ")
    assert "  provider     CPUExecutionProvider (cuda asked for)\n" in out
    assert "warning: provider cuda: this host's onnxruntime runs CPUExecutionProvider" in out
    # the threshold as the server compares with it, as `info` prints it (0.8215 hid a digit)
    from convstream.model.runtime import DamageModel

    threshold = DamageModel(provider="cpu").threshold
    assert f"  threshold    {threshold:.6g} (the model's own)\n" in out


def test_a_config_whose_password_every_user_can_read_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A camera's password in a config file of mode 0644 (what a plain umask gives) is
    every local user's: said at start, on each reload and by --check-config, as ssh says of a
    key file."""
    config = tmp_path / "serve.toml"
    config.write_text(
        '# e.g. source = "rtsp://admin:example@cam/s" (a comment: not read)\n'
        '[[cameras]]\nid = "dock-3"\nsource = "rtsp://user:hunter2@10.0.0.7/s"\n'
        '[[cameras]]\nid = "gate"\nsource = "http://10.0.0.8/video.cgi?user=a&pwd=b"\n'
        # a stream's own parameters are no password (a review's Dahua URL was warned of)
        '[[cameras]]\nid = "yard"\n'
        'source = "rtsp://10.0.0.7/cam/realmonitor?channel=1&subtype=0&proto=Onvif"\n'
    )
    config.chmod(0o644)
    assert main(["serve", "--check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK, 1 warning(s) below: "), out
    assert (
        f"warning: config {config} holds a password (lines 4, 7) and every user of this "
        f"machine can read it (mode 0644): chmod 600 {config}\n" in out
    )
    assert "hunter2" not in out
    config.chmod(0o640)  # its group only: the owner's call
    assert main(["serve", "--check-config", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("config OK: ")
    # and on the command line, every local user's to read in ps (an operator's review)
    argv = ["serve", "--check-config", "--camera", "yard=rtsp://user:hunter2@10.0.0.7/s"]
    assert main([*argv, "--camera", "gate=rtsp://10.0.0.8/s"]) == 0
    out = capsys.readouterr().out
    assert "warning: --camera yard=... holds credentials (user:password@)" in out, out
    assert "hunter2" not in out and "--camera gate" not in out


def test_check_config_refuses_an_address_that_is_not_this_machines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 192.0.2.1 is TEST-NET-1: never an address of this machine, so serve could not bind it
    for flags, setting in ((["--host"], "host"), (["--metrics-host"], "metrics_host")):
        argv = ["serve", "--no-cameras", "--check-config", *flags, "192.0.2.1"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"convstream serve: {setting} 192.0.2.1: the address is not one of this " + (
            "machine's\n"
        )


def test_check_config_says_what_would_run_without_running_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        'host = "0.0.0.0"\n[[tokens]]\nname = "dash"\nrole = "watch"\n'
        f'sha256 = "{"0" * 64}"\n'
        f'[[tokens]]\nname = "ingest"\nrole = "analyze"\nmax_calls = 2\nsha256 = "{"1" * 64}"\n'
        '[[cameras]]\nid = "dock-3"\nsource = "rtsp://user:hunter2@10.0.0.7/s"\nfps = 5\n'
    )
    config.chmod(0o600)  # its password readable by all is a warning of its own (below)
    with socket.socket() as taken:  # nothing is bound: a port in use does not matter
        taken.bind(("127.0.0.1", 0))
        busy = str(taken.getsockname()[1])
        assert main(["serve", "--check-config", "--config", str(config), "--port", busy]) == 0
    out = capsys.readouterr().out
    prefix = "config OK, 2 warning(s) below: "
    assert out.startswith(f"{prefix}convstream serve would listen on 0.0.0.0:{busy}\n")
    # a token without max_calls beside another: one of its clients may take every place
    # (a security review's: one watch token's 248 slow watches kept every other client out)
    assert (
        "warning: token dash has no max_calls: one client holding one may take every place "
        "of max_streams (64), max_watchers (256) and max_analyze_calls (64)"
    ) in out
    assert "ingest has" not in out  # its max_calls is set
    # tokens in plaintext on every interface: said before it runs, as the server's log would
    assert (
        "warning: listening on 0.0.0.0 (every IPv4 and IPv6 address of this machine) with "
        "tokens but without TLS: each call carries its " + ("token in the clear") in out
    )
    assert "dash (watch)" in out and "dock-3 (rtsp, at most 5 frames/s)" in out
    assert "ingest (analyze, 2 calls at most)" in out  # its max_calls was left out
    assert "  provider     CPUExecutionProvider (auto asked for)\n" in out
    assert "127.0.0.1:9464" in out and "hunter2" not in out
    assert "rtsp://user:***@10.0.0.7/s" in out  # the address, to check, with no password
    # metrics opened to the network: plain HTTP naming every camera, said too
    assert (
        main(["serve", "--check-config", "--config", str(config), "--metrics-host", "0.0.0.0"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("config OK, 3 warning(s) below: ")
    assert "warning: metrics listen on 0.0.0.0 (every IPv4 and IPv6 address" in out
    assert "over plain HTTP with no tokens" in out
    # a config of no cameras runs the demo conveyor: on a server others reach, said (README's
    # production example ran fake packages on every dashboard)
    bare = tmp_path / "bare.toml"
    bare.write_text('host = "0.0.0.0"\n')
    assert main(["serve", "--check-config", "--config", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "warning: camera demo: the synthetic demo conveyor, on a server others can " in out
    assert "cameras = [] for none" in out
    bare.write_text('host = "0.0.0.0"\ncameras = []\n')
    assert main(["serve", "--check-config", "--config", str(bare)]) == 0
    assert "demo" not in capsys.readouterr().out
    # a [[cameras]] block copied and given only a new id: two tiles of one picture, and the
    # dock meant for the second unwatched, with nothing said (an operator review's)
    copied = tmp_path / "copied.toml"
    blocks = [
        ("dock-1", "rtsp://user:pw1@10.0.0.7/s"),
        ("dock-2", "rtsp://10.0.0.7/s"),  # the same camera, its password aside
        ("dock-3", "rtsp://10.0.0.7/s?channel=2"),  # another channel: its own
        ("wall", "demo:conveyor"),
        ("wall-copy", "demo:conveyor"),
    ]
    copied.write_text(
        "".join(f'[[cameras]]\nid = "{name}"\nsource = "{url}"\n' for name, url in blocks)
    )
    copied.chmod(0o600)
    assert main(["serve", "--check-config", "--config", str(copied)]) == 0
    out = capsys.readouterr().out
    assert (
        "warning: cameras dock-1 and dock-2 read the same source; wall and wall-copy read the "
        "same source: their tiles show one picture"
    ) in out
    assert "dock-3" not in out.split("warning:")[1] and "pw1" not in out
    # what would fail at run time, said now: a video file not there
    with config.open("a") as toml:
        toml.write(f'[[cameras]]\nid = "replay"\nsource = "{tmp_path / "gone.mp4"}"\n')
    assert main(["serve", "--check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK, 3 warning(s) below: ")
    assert "replay (file, looped)" in out
    assert f"warning: camera replay: no video file at {tmp_path / 'gone.mp4'}" in out
    assert "from here" not in out  # an absolute path needs no explaining
    # a relative path: where it would be looked for, and from which folder
    with config.open("a") as toml:
        toml.write('[[cameras]]\nid = "belt"\nsource = "belt-gone.avi"\n')
    assert main(["serve", "--check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK, 4 warning(s) below: ")
    assert (
        f"no video file at belt-gone.avi (as this user sees it, {Path.cwd() / 'belt-gone.avi'}"
        in out
    )
    assert "relative paths are taken from the folder the server starts in" in out
    config.write_text(
        config.read_text().replace('[[cameras]]\nid = "belt"\nsource = "belt-gone.avi"\n', "")
    )
    index = next(i for i in range(64) if not Path(f"/dev/video{i}").exists())
    with config.open("a") as toml:
        toml.write(f'[[cameras]]\nid = "bench"\nsource = "device:{index}"\n')
    assert main(["serve", "--check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK, 4 warning(s) below: ")
    assert f"warning: camera bench: no /dev/video{index} on this host (yet)" in out
    config.write_text(config.read_text().replace("fps = 5", "fsp = 5"))
    assert main(["serve", "--check-config", "--config", str(config)]) == 2
    assert "fsp" in capsys.readouterr().err
    # and what cannot work at all is refused, saying what was expected
    for line, told in [
        ('source = "demo:conveyor"\nloop = "yes"', "loop (camera 'x'): expected true or false"),
        ('source = "rtsp://u:pw@10.0.0.7:99999/s"', "not a number from 0 to 65535"),
        ('source = "device:zero"', "device:N with N its number"),
    ]:
        config.write_text(f'[[cameras]]\nid = "x"\n{line}\n')
        assert main(["serve", "--check-config", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert told in err and "pw@" not in err, err


def test_serve_refuses_a_file_that_is_no_model_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    assert main(["serve", "--check-config", "--model", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convstream serve: model_path: ") and "notes.onnx" in err
    serve = ["serve", "--no-cameras", "--port", "0", "--metrics-port", "-1", "--model"]
    assert main([*serve, str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"convstream serve: model_path: {tmp_path / 'missing.onnx'}: No such file or directory\n"
    )
    # a relative path: where it was looked for, the server's folder, not the config's
    monkeypatch.chdir(tmp_path)
    assert main([*serve, "models/missing.onnx"]) == 2
    assert capsys.readouterr().err == (
        "convstream serve: model_path: models/missing.onnx: No such file or directory "
        f"(looked for at {tmp_path / 'models/missing.onnx'}: a relative path is taken from "
        "the folder the server starts in)\n"
    )
    # an ONNX model, but not ours: named for what it lacks
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), other)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "convstream.cli", "serve", "--no-cameras", "--port", "0"]
    command += ["--metrics-port", "-1", "--model", str(other)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not a convstream damage model" in done.stderr
    assert "it has inputs x tensor(float) and outputs y" in done.stderr
    # a float input: what the server hands over instead, and where the rest goes
    assert "the server hands a model frames as decoded, uint8 BGR of shape (N, H, W, 3)" in (
        done.stderr
    )


def test_a_missing_usb_camera_is_our_line_without_opencv_warnings() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("OPENCV_LOG_LEVEL", None)
    command = [sys.executable, "-m", "convstream.cli", "stream", "57"]  # no /dev/video57
    command += ["--address", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 5  # the source
    assert done.stderr.strip().splitlines() == [
        "convstream stream: no camera 57 on this machine: /dev/video57 does not exist"
    ]


def test_a_camera_flag_without_an_id_never_prints_its_password() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "convstream.cli", "serve", "--check-config"]
    command += ["--camera", "rtsp://admin:hunter2@10.0.0.7/stream"]  # the id= forgotten
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--camera takes ID=SOURCE" in done.stderr
    assert "rtsp://admin:***@10.0.0.7/stream" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_a_call_refused_at_a_limit_exits_refused_not_frames_failed() -> None:
    """A watch refused at its token's max_calls (or the server's max_streams) exited 1, "some
    frames could not be analysed", though none was sent: it is 4, refused, to retry later."""
    from convstream.client.cli import EXIT_REFUSED, _exit_status
    from convstream.client.errors import Overloaded

    assert _exit_status(Overloaded("token 'a' has 1 call open; its limit is 1")) == EXIT_REFUSED


def test_no_cameras_and_a_camera_flag_together_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both were taken, and which won went by their order on the command line."""
    from convstream.cli import main

    for flags in (
        ["--no-cameras", "--camera", "dock=rtsp://admin:hunter2@10.0.0.7/s"],
        ["--camera", "dock=rtsp://admin:hunter2@10.0.0.7/s", "--no-cameras"],
    ):
        with pytest.raises(SystemExit) as done:
            main(["serve", "--check-config", *flags])
        assert done.value.code == 2
        said = capsys.readouterr()
        assert "not allowed with argument" in said.err, said.err
        assert "hunter2" not in said.err + said.out


def test_a_refused_stream_url_is_our_line_without_ffmpeg_noise() -> None:
    """...and it says why, as a server's camera does (it said only that OpenCV could not
    open it, where the server's camera on the same URL said "connection refused")."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("OPENCV_FFMPEG_LOGLEVEL", None)
    url = f"rtsp://127.0.0.1:{free_port()}/x"  # nothing listens: FFmpeg's tcp logs a refusal
    command = [sys.executable, "-m", "convstream.cli", "stream", url]
    command += ["--address", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 5  # the source
    assert done.stdout == ""  # OpenCV writes FFmpeg's lines to stdout, amid the results
    assert done.stderr.strip().splitlines() == [
        f"convstream stream: OpenCV cannot open video source '{url}': connection refused: "
        "nothing listens at that address and port (camera down?)"
    ]


def test_a_watch_reports_the_rate_its_results_came_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """Results 0.2 s apart after a 1 s connection read as 5 frames/s, not 3 in 1.4 s."""
    from convstream.client import _report
    from convstream.client.results import Result

    clock = [100.0, 101.0, 101.2, 101.4]  # start, three results; then it stands still

    def perf_counter() -> float:
        return clock.pop(0) if len(clock) > 1 else clock[0]

    monkeypatch.setattr(_report.time, "perf_counter", perf_counter)
    out = io.StringIO()
    reporter = _report.WatchReporter(out, io.StringIO(), json_lines=True, overlays=None, total=3)
    for frame_id in (1, 2, 3):
        reporter.add(Result(frame_id=frame_id, score=0.5))
    summary = reporter.summary()
    assert summary.startswith("3 frames in 1.4 s (5.0 frames/s from the first to the last): ")


def test_a_watch_summary_says_how_long_no_result_came(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch across a server restart: 3 results 0.1 s apart, 20 s of nothing, 2 more, and
    then 10 s of nothing before Ctrl-C read as 10 frames/s while they came, with the pauses
    said, not as 5 frames over 30 s "from the first to the last"."""
    from convstream.client import _report
    from convstream.client.results import Result

    clock = [100.0, 100.5, 100.6, 100.7, 120.7, 120.8, 130.8]

    def perf_counter() -> float:
        return clock.pop(0) if len(clock) > 1 else clock[0]

    monkeypatch.setattr(_report.time, "perf_counter", perf_counter)
    reporter = _report.WatchReporter(
        io.StringIO(), io.StringIO(), json_lines=True, overlays=None, total=None, gap_s=3.0
    )
    for frame_id in range(5):
        reporter.add(Result(frame_id=frame_id, score=0.5))
    assert reporter.summary().startswith(
        "5 frames in 30.8 s (10.0 frames/s while they came; none for 20.0 s between them and "
        "none in the last 10.0 s): "
    )


def test_resume_timeout_is_seconds_or_inf(
    video: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A watch outlasts any outage by default (an alert pipeline under a supervisor that does
    not restart it ended 30 s into a switch reboot); a stream keeps the library's 30 s."""
    from convstream.client import cli

    made: list[float] = []
    real = cli._client

    def spy(args: object) -> object:
        client = real(args)  # type: ignore[arg-type]
        made.append(client.retry.resume_timeout)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_client", spy)
    for argv in (
        ["watch", "belt"],
        ["watch", "belt", "--resume-timeout", "90"],
        ["stream", str(video)],
    ):
        with pytest.raises(SystemExit):
            main([*argv, "--address", nowhere()])
    assert made == [math.inf, 90.0, 30.0]
    with pytest.raises(SystemExit):
        main(["watch", "belt", "--resume-timeout", "-1"])
    assert "expected 0 or more seconds, or inf, got '-1'" in capsys.readouterr().err


def test_a_watch_result_held_up_on_the_way_shows_its_age_here_and_says_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a stalled link, results that waited 40 s on the way came out reading an age of
    53-154 ms, "damaged", for a package long gone. The age shown counts the wait beyond the
    quickest way a result has taken (which also stands for the two clocks' offset)."""
    from convstream.client import _report
    from convstream.client.results import Result

    # the clock stands still: a busy machine between a result's stamp and its report made
    # the third's age pass its bound (a flake hunter's loaded runs: 1 in 450)
    now = time.time()
    monkeypatch.setattr(_report.time, "time", lambda: now)
    out = io.StringIO()
    reporter = _report.WatchReporter(
        out, io.StringIO(), json_lines=False, overlays=None, total=None
    )

    def ago(seconds: float) -> float:
        return now - seconds

    reporter.add(Result(frame_id=1, score=0.2, capture_time=ago(0.10), frame_age_ms=50.0))
    reporter.add(Result(frame_id=2, score=0.9, capture_time=ago(40.1), frame_age_ms=60.0))
    reporter.add(Result(frame_id=3, score=0.3, capture_time=ago(0.11), frame_age_ms=55.0))
    rows = out.getvalue().splitlines()[1:]
    ages = [float(row.split()[4]) for row in rows]
    assert ages == [50.0, 40_050.0, 60.0]
    assert rows[1].endswith("late: 40.0 s on the way here") and "late" not in rows[0] + rows[2]
    lines = io.StringIO()
    reporter = _report.WatchReporter(
        lines, io.StringIO(), json_lines=True, overlays=None, total=None
    )
    reporter.add(Result(frame_id=1, score=0.2, capture_time=ago(0.10), frame_age_ms=50.0))
    reporter.add(Result(frame_id=2, score=0.9, capture_time=ago(40.1), frame_age_ms=60.0))
    late = [json.loads(line)["late_ms"] for line in lines.getvalue().splitlines()]
    assert late[0] == 0.0 and 39_900 < late[1] < 40_100
    # this clock steps 2 s ahead: late at first, but not for good
    for frame_id in range(3, 3 + _report.WAYS + 1):
        reporter.add(Result(frame_id=frame_id, capture_time=ago(2.1), frame_age_ms=50.0))
    late = [json.loads(line)["late_ms"] for line in lines.getvalue().splitlines()]
    assert late[2] > 1_900 and late[-1] < 100


def nowhere() -> str:
    """An address where no server listens: a command that got as far as connecting would
    exit 1, "unavailable"; these must stop at exit 2 without sending anything."""
    return f"127.0.0.1:{free_port()}"


def test_a_file_where_a_folder_goes_is_one_line_before_anything_is_sent(
    images: Path, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "fake.jpg"
    a_file.write_bytes(b"x")
    assert main(["samples", str(a_file), "--count", "1"]) == 2
    assert capsys.readouterr().err == (
        f"convstream samples: {a_file} is a file; give a folder (created if need be)\n"
    )
    assert main(["samples", str(a_file / "below"), "--count", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"convstream samples: cannot create {a_file / 'below'}: ")
    assert err.count("\n") == 1
    for argv in (
        ["analyze", str(images)],
        ["stream", str(video)],
        ["watch", "belt", "--count", "1"],
    ):
        assert main([*argv, "--save-overlays", str(a_file), "--address", nowhere()]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == (
            f"convstream {argv[0]}: error: --save-overlays {a_file} is a file; give a folder "
            "(created if need be)\n"
        )
    assert a_file.read_bytes() == b"x"


def test_a_video_given_to_analyze_and_a_folder_given_to_stream_are_pointed_the_right_way(
    images: Path, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(video), "--address", nowhere()]) == 2
    assert capsys.readouterr().err == (
        f"convstream analyze: error: {video} is a video (AVI); analyze takes images and "
        f"folders of them: stream a video's frames with `convstream stream {video}`\n"
    )
    # by its leading bytes, whatever its name says; an image named like a video is an image
    disguised = tmp_path / "clip.jpg"
    disguised.write_bytes(video.read_bytes())
    assert main(["analyze", str(disguised), "--address", nowhere()]) == 2
    assert "clip.jpg is a video (AVI)" in capsys.readouterr().err
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(64))
    assert main(["analyze", str(mp4), "--address", nowhere()]) == 2
    assert "clip.mp4 is a video (MP4)" in capsys.readouterr().err
    assert main(["stream", str(images), "--address", nowhere()]) == 2
    assert capsys.readouterr().err == (
        f"convstream stream: error: {images} is a folder; stream takes a video file, a URL or "
        f"a camera index: analyse a folder's images with `convstream analyze {images}`\n"
    )


async def test_streaming_a_cameras_id_says_to_watch_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newcomer's `convstream stream demo` read "no such video file: demo (or give a camera
    index, e.g. 0)", though the server pulls a camera of that id."""
    monkeypatch.chdir(tmp_path)  # no file of these names here
    dock = CameraConfig(id="dock-3", source="demo:conveyor?fps=1")
    server = Server(Settings(port=0, metrics_port=-1, cameras=(dock,)))
    await server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        assert await run("stream", "dock-3", "--address", address) == 2
        assert capsys.readouterr().err == (
            "convstream stream: error: no such video file: dock-3; dock-3 is a camera the "
            "server pulls: watch it with `convstream watch dock-3`\n"
        )
        assert await run("stream", "dock-4", "--address", address) == 2
        assert "no such video file: dock-4 (or give a camera index" in capsys.readouterr().err
    finally:
        await server.stop(grace=0)


def test_stream_refuses_before_sending_what_the_server_would_refuse(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name the server would not publish under (it refused frame 0, scored the rest and
    published nothing), and a queue size the policy would ignore."""
    argv = ["stream", str(video), "--publish", "--address", nowhere()]
    assert main([*argv, "--name", "bad name"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convstream stream: error: --publish: --name: a published stream's ")
    assert "letters, digits, '.', '_' or '-'" in err and "got 'bad name'" in err
    spaced = tmp_path / "my clip.avi"
    shutil.copy(video, spaced)
    assert main(["stream", str(spaced), "--publish", "--address", nowhere()]) == 2
    err = capsys.readouterr().err
    assert "the name taken from SOURCE" in err and "'my clip'" in err
    assert err.rstrip().endswith("give one with --name")
    for freshness in ("lossless", "latest_only"):
        queued = ["stream", str(video), "--queue-size", "3", "--freshness", freshness]
        assert main([*queued, "--address", nowhere()]) == 2
        err = capsys.readouterr().err
        assert err.startswith("convstream stream: error: --queue-size is for --freshness ")
        assert f"--freshness {freshness} ignores it" in err
    assert main(["stream", str(video), "--queue-size", "0", "--address", nowhere()]) == 2
    assert "--queue-size must be at least 1, got 0" in capsys.readouterr().err


async def test_a_queue_size_alone_means_bounded_queue(
    server: Server, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["stream", str(video), "--queue-size", "2", "--fast", "--json"]
    assert await run(*argv, "--address", f"127.0.0.1:{server.port}") == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answered = [r["frame_id"] for r in results]
    dropped = [i for r in results for i in r["dropped_frame_ids"]]
    assert sorted(answered + dropped) == list(range(12))
    # A queue the server lets no stream hold is refused before a frame is sent: the server
    # would refuse the first frame and serve the rest LOSSLESS, not as asked.
    largest = server.servicer.model_info.max_stream_queue_size
    too_many = ["stream", str(video), "--queue-size", str(largest + 1), "--fast", "--json"]
    assert await run(*too_many, "--address", f"127.0.0.1:{server.port}") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"--queue-size {largest + 1} is more than this server lets one stream hold" in err
    assert f"hold, {largest} (ModelInfo.max_stream_queue_size" in err


def test_help_says_what_each_flag_does_and_shows_the_command_s_own_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def help_of(command: str) -> str:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    assert "--log-level {debug,info,warning,error} the least severe log lines" in help_of("serve")
    cameras = help_of("cameras").split("examples:")[1]
    assert cameras.count("convstream cameras") >= 3 and "convstream watch" not in cameras
    stream = help_of("stream")
    assert "--fast send a video file's frames as fast as the server takes them" in stream
    assert "at the file's own frame rate" in stream


def test_print_settings_says_where_serve_would_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As serve merges them: the config file, then CONVSTREAM_*, then flags."""
    config = tmp_path / "good.toml"
    config.write_text(
        'port = 50061\n[[cameras]]\nid = "dock-3"\nsource = "rtsp://u:hunter2@10.0.0.7/s"\n'
    )
    assert main(["serve", "--config", str(config), "--print-settings"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert (settings["port"], settings["dial_address"]) == (50061, "127.0.0.1:50061")
    assert settings["cameras"] == [{"id": "dock-3", "kind": "rtsp"}]
    assert not settings["tls"] and settings["tokens"] == 0
    monkeypatch.setenv("CONVSTREAM_PORT", "50071")
    assert main(["serve", "--config", str(config), "--print-settings", "--host", "0.0.0.0"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["dial_address"] == "127.0.0.1:50071" and "hunter2" not in out
    assert main(["serve", "--print-settings", "--port", "50081"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["dial_address"] == "127.0.0.1:50081"
    assert settings["cameras"] == [{"id": "demo", "kind": "demo"}]
    assert settings["metrics_ports"] == [9464]
    assert main(["serve", "--print-settings", "--processes", "3", "--metrics-port", "9500"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics_ports"] == [9500, 9501, 9502]
    # one or the other: with both, the check ran alone and nothing was printed
    with pytest.raises(SystemExit) as usage:
        main(["serve", "--print-settings", "--check-config"])
    assert usage.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def checkout_with_run_sh(tmp_path: Path) -> Path:
    """scripts/run.sh in a folder of its own, whose .venv/bin/convstream is this test's, and
    whose install stamp is newer than everything there: the script installs nothing."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(Path(__file__).parents[1] / "scripts" / "run.sh", root / "scripts")
    for folder in ("service", "clients", "models", "protos"):
        (root / folder).mkdir()
    (root / "pyproject.toml").write_text("")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    command = bin_dir / "convstream"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m convstream.cli "$@"\n')
    command.chmod(0o755)
    (root / ".venv" / ".convstream-installed").touch()
    return root


@pytest.mark.parametrize("which", ["the config's port", "the metrics port"])
def test_run_sh_refuses_a_port_it_needs_that_is_taken_before_printing_a_url(
    tmp_path: Path, which: str
) -> None:
    root = checkout_with_run_sh(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        command = [str(root / "scripts" / "run.sh")]
        if which == "the config's port":
            config = tmp_path / "good.toml"
            config.write_text(f"port = {busy}\n")
            command += ["--config", str(config)]
            said = f"run.sh: port {busy} is taken (another convstream serve?)"
        else:
            command += ["--port", str(free_port()), "--metrics-port", str(busy)]
            said = f"run.sh: metrics port {busy} is taken"
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(said) and "dashboard:" not in done.stdout


def test_run_sh_takes_relative_paths_from_where_it_is_run(tmp_path: Path) -> None:
    """run.sh used to start the server in the checkout: `run.sh --config cams.toml` from the
    folder holding cams.toml could not read it, where `convstream serve` could."""
    root = checkout_with_run_sh(tmp_path)
    here = tmp_path / "site"
    here.mkdir()
    (here / "cams.toml").write_text("metrics_port = -1\ncameras = []\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [str(root / "scripts" / "run.sh"), "--config", "cams.toml", "--print-settings"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=here, timeout=60)
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert settings["metrics_port"] == -1 and settings["cameras"] == []


def test_run_sh_points_the_dashboard_at_the_port_the_server_really_uses(tmp_path: Path) -> None:
    """The port from CONVSTREAM_PORT, a config without the demo camera: the dashboard
    reaches the server, and the script says nothing of a demo camera."""
    root = checkout_with_run_sh(tmp_path)
    port, dash_port = free_port(), free_port()
    config = tmp_path / "good.toml"
    config.write_text("metrics_port = -1\ncameras = []\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "CONVSTREAM_PORT": str(port),
        "CONVSTREAM_DASHBOARD_PORT": str(dash_port),
    }
    command = [str(root / "scripts" / "run.sh"), "--config", str(config)]
    script = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert script.stdout is not None
        line = script.stdout.readline()  # the first: the dashboard's own line said it again
        assert line.startswith(f"dashboard: http://127.0.0.1:{dash_port}/ ("), line
        assert "the server pulls no cameras" in line and "demo" not in line
        deadline = time.monotonic() + 60
        while True:
            url = f"http://127.0.0.1:{dash_port}/api/state"
            with urllib.request.urlopen(url, timeout=5) as reply:
                server = json.load(reply)["server"]
            if server["ok"]:
                break
            assert time.monotonic() < deadline, f"the dashboard never reached it: {server}"
            time.sleep(0.2)
        # and it was the server on that port it reached, not one on the default port
        pid = script.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        argvs = [Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0") for child in children]
        (dashboard,) = [argv for argv in argvs if b"dashboard" in argv]
        assert dashboard[dashboard.index(b"--address") + 1] == f"127.0.0.1:{port}".encode()
        # its alerts kept across a restart of the script (they were gone without a word)
        kept = root / ".convstream" / f"alerts-{dash_port}"
        assert dashboard[dashboard.index(b"--alerts-dir") + 1] == str(kept).encode()
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=30) == 0
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
        script.stdout.close()  # type: ignore[union-attr]
        script.stderr.close()  # type: ignore[union-attr]


async def test_stream_publish_stops_when_the_server_will_not_publish_it(
    video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stream --publish` under a camera's name had its first frame refused, then streamed
    the rest unpublished (with --loop, for ever, never on the dashboard) and ended 1. A name
    taken (or one that reads as a taken one) is now a usage error before any frame is sent,
    and a name the server refuses at the first frame (a token's cameras) stops the stream."""
    from convstream.server.config import TokenConfig
    from convstream.server.security import token_hash

    crew = TokenConfig(
        name="crew", role="analyze", sha256=token_hash("crew-token-1234"), cameras=("dock-*",)
    )
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=2")
    server = Server(Settings(port=0, metrics_port=-1, cameras=(belt,), tokens=(crew,)))
    await server.start()
    try:
        argv = ["stream", str(video), "--publish", "--address", f"127.0.0.1:{server.port}"]
        argv += ["--token", "crew-token-1234", "--fast"]
        crew_all = crew.model_copy(update={"cameras": None})
        await server.reload(server.settings.model_copy(update={"tokens": (crew_all,)}))
        for name, said in [
            ("belt", "'belt' is a configured camera on this server"),
            ("Belt", "'Belt' reads as 'belt', a configured camera on this server"),
        ]:
            assert await run(*argv, "--name", name) == 2
            out, err = capsys.readouterr()
            assert err == (
                f"convstream stream: error: --publish: {said}; give the stream another --name\n"
            )
            assert out == ""  # not a frame sent
        await server.reload(server.settings.model_copy(update={"tokens": (crew,)}))
        assert await run(*argv, "--name", "yard-3") == 4  # its token's cameras are dock-*
        out, err = capsys.readouterr()
        assert err.startswith(
            "convstream stream: --publish: the server did not publish the stream, which "
            "stopped: token 'crew' may publish under the names of its cameras 'dock-*' only"
        ), err
        assert await run(*argv, "--name", "dock-1") == 0
        assert "12 frames" in capsys.readouterr().out
    finally:
        await server.stop(grace=0)


def test_a_json_lines_first_region_says_the_score_as_the_line_does() -> None:
    """The first region holds the peak, its value the score: the line rounded the score to 6
    decimals and wrote the region's float32 whole (0.987654 beside 0.9876543283462524)."""
    from convstream.client import Region, Result
    from convstream.client._report import result_json

    score = float(np.float32(0.98765432))
    result = Result(1, score=score, damaged=True, regions=(Region(8, 16, 32, 24, score, 5),))
    line = result_json(result)
    assert line["regions"] == [
        {"x": 8, "y": 16, "width": 32, "height": 24, "value": line["score"], "cells": 5}
    ]
    assert line["score"] == 0.987654
