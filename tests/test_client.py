"""The Python client against a real server on a loopback port: each call, sync and async."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import jpeg, png, scene, with_exif_orientation

from convstream import client as cs
from convstream.client import (
    AsyncClient,
    Client,
    Frame,
    Freshness,
    InvalidFrame,
    Overloaded,
    Result,
    ResultOptions,
    Retry,
    ServerUnavailable,
    Upload,
    Video,
)
from convstream.model.scenes import render_scene
from convstream.server import Server, Settings
from convstream.v1 import convstream_pb2 as pb

STAGES = ("stage1", "stage2", "stage3", "stage4")


def address(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Rendered warehouse frames of a few sizes (BGR uint8)."""
    return [scene(i, 240, 320) for i in range(6)] + [scene(6, 480, 640), scene(7, 300, 900)]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 30-frame MJPG video, 320x240 at 10 fps."""
    path = tmp_path_factory.mktemp("video") / "conveyor.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for i in range(30):
        writer.write(scene(100 + i % 5, 240, 320))
    writer.release()
    return path


def test_public_names() -> None:
    assert sorted(cs.__all__) == sorted(set(cs.__all__))
    for name in cs.__all__:
        assert getattr(cs, name) is not None
    expected = {"Client", "AsyncClient", "Result", "ModelInfo", "Frame", "Video", "Timeout"}
    expected |= {"TLS", "Limits", "Retry", "ResultOptions", "Upload", "ConvstreamError"}
    assert expected <= set(cs.__all__)
    errors = [getattr(cs, n) for n in cs.__all__ if isinstance(getattr(cs, n), type)]
    defined = {c for c in vars(cs.errors).values() if isinstance(c, type)}
    assert {e for e in errors if issubclass(e, Exception)} == {
        c for c in defined if issubclass(c, cs.ConvstreamError)
    }


def test_client_package_imports_nothing_of_the_server_or_model() -> None:
    """Nor the dashboard, which runs where no model does: its HTTPS and open-files helpers
    came from the server package, and with it onnxruntime, 1.5 s into every command."""
    code = (
        "import sys, convstream.client, convstream.client.cli, convstream.dashboard.cli, "
        "convstream.dashboard.app; "
        "bad = [m for m in sys.modules if m.startswith(('convstream.server', 'convstream.model'))"
        " or m == 'onnxruntime']; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_model_info_sync_and_async(server: Server) -> None:
    def sync() -> cs.ModelInfo:
        with Client(address(server)) as client:
            return client.model_info()

    info = await asyncio.to_thread(sync)
    async with AsyncClient(address(server)) as client:
        assert await client.model_info() == info
    assert info.stage_names == STAGES
    assert info.execution_provider == "CPUExecutionProvider"
    assert (640, 384) in info.input_sizes and 0.0 < info.threshold < 1.0
    assert (info.input_sizes[0].width, info.input_sizes[0].height) == (640, 384)  # named
    assert info.max_message_bytes == 64 * 1024 * 1024


def check_result(
    result: Result, image: np.ndarray, threshold: float, maps: tuple[str, ...]
) -> None:
    assert result.ok and result.error is None and result.raise_for_status() is result
    height, width = image.shape[:2]
    g = result.geometry
    assert g is not None and (g.frame_width, g.frame_height) == (width, height)
    assert 0.0 <= result.score <= 1.0 and result.damaged == (result.score >= threshold)
    assert result.heatmap is not None and result.heatmap.dtype == np.float32
    assert result.heatmap.shape == (g.input_height // 8, g.input_width // 8)
    assert result.heatmap.max() == pytest.approx(result.score, abs=2e-3)
    assert list(result.feature_maps) == list(maps)
    for name, array in result.feature_maps.items():
        stride = {"stage1": 2, "stage2": 4}.get(name, 8)
        assert array.dtype == np.float32
        assert array.shape[1:] == (g.input_height // stride, g.input_width // stride)
    assert result.timings is not None and result.timings.inference_ms > 0
    peak = result.peak()
    assert peak is not None and 0 <= peak[0] <= width and 0 <= peak[1] <= height


INPUTS = [
    ("array as jpeg", lambda img, tmp: img, Upload()),
    ("array raw", lambda img, tmp: img, Upload("raw")),
    ("array png", lambda img, tmp: img, Upload("png")),
    ("gray raw", lambda img, tmp: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), Upload("raw")),
    ("jpeg bytes", lambda img, tmp: jpeg(img), Upload()),
    ("png file", lambda img, tmp: write(tmp / "f.png", png(img)), Upload()),
    ("bmp file", lambda img, tmp: write_image(tmp / "f.bmp", img), Upload()),
    ("frame", lambda img, tmp: Frame(jpeg(img), frame_id=7, source="dock-1"), Upload()),
]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_image(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize(("name", "make", "upload"), INPUTS, ids=[i[0] for i in INPUTS])
async def test_analyze_sync_and_async(
    server: Server, frames: list[np.ndarray], tmp_path: Path, name: str, make, upload: Upload
) -> None:
    image = frames[6]
    item = make(image, tmp_path)
    options = ResultOptions(feature_maps=["stage1", "stage3"], encoding="uint8")

    def sync() -> Result:
        with Client(address(server), upload=upload) as client:
            return client.analyze(item, options=options)

    result = await asyncio.to_thread(sync)
    async with AsyncClient(address(server), upload=upload, options=options) as client:
        again = await client.analyze(item)
        threshold = (await client.model_info()).threshold
    for r in (result, again):
        check_result(r, image, threshold, ("stage1", "stage3"))
        assert r.frame is not None and r.frame.pixels().shape == image.shape
    assert again.score == pytest.approx(result.score, abs=1e-6)
    if isinstance(item, Frame):
        assert (result.frame_id, result.source) == (7, "dock-1")


async def test_encodings_decode_to_float32_close_to_each_other(
    server: Server, frames: list[np.ndarray]
) -> None:
    maps = {}
    async with AsyncClient(address(server)) as client:
        for encoding in ("float32", "float16", "uint8"):
            options = ResultOptions(feature_maps=["stage4"], encoding=encoding, heatmap=False)
            result = await client.analyze(frames[0], options=options)
            assert result.heatmap is None
            maps[encoding] = result.feature_maps["stage4"]
        # a map not asked for says how to ask for it (it was a bare KeyError: 'stage3')
        with pytest.raises(
            KeyError,
            match=r"no feature map 'stage3' in this result; this "
            r"result has stage4: ask for it with options=ResultOptions\("
            r"feature_maps=\['stage3'\]\)",
        ):
            result.feature_maps["stage3"]
        assert "stage3" not in result.feature_maps and result.feature_maps.get("stage3") is None
    ref = maps["float32"]
    assert all(m.dtype == np.float32 and m.shape == ref.shape for m in maps.values())
    top = max(1.0, float(ref.max()))
    assert np.abs(maps["float16"] - ref).max() <= 1e-2 * top
    assert np.abs(maps["uint8"] - ref).max() <= top / 255 + 1e-6


async def test_the_peak_is_the_servers_float32_answer_in_every_encoding(
    server: Server, frames: list[np.ndarray]
) -> None:
    """A FLOAT16 or UINT8 heatmap ties cells near 1.0; the peak is found before that."""
    async with AsyncClient(address(server)) as client:
        # and a frame whose scale (2/3) a float32 cannot hold: both sides find the peak with
        # the exact scale (with the float32 one, a centre on pixel 618 read 617.99997)
        odd = cv2.resize(frames[0], (960, 540))
        for image in [*frames[:8], odd]:
            exact = await client.analyze(image, options=ResultOptions(encoding="float32"))
            assert exact.heatmap is not None and exact.geometry is not None
            # the server's answer is the float32 heatmap's own hottest cell over the frame
            by_hand = Result(frame_id=0, heatmap=exact.heatmap, geometry=exact.geometry)
            assert exact.hottest is not None and exact.hottest == by_hand.peak()
            # and its cell, an index into the heatmap and the stride-8 stages' maps
            assert exact.hottest_cell is not None and exact.hottest_cell == by_hand.peak_cell()
            assert exact.heatmap[exact.hottest_cell] == exact.heatmap.max() == exact.score
            for encoding in ("float16", "uint8"):
                options = ResultOptions(encoding=encoding)
                assert (await client.analyze(image, options=options)).peak() == exact.peak()
            bare = await client.analyze(image, options=ResultOptions(heatmap=False))
            assert bare.heatmap is None and bare.peak() == exact.peak()


async def test_regions_say_where_the_damage_is_in_frame_pixels(server: Server) -> None:
    """Each region is a group of the float32 heatmap's cells at or over the threshold, the
    one holding the peak first; on a damaged render found damaged, the first covers some of
    its damage (the model's peak is in the damage on about 87% of such frames)."""
    found, covered = 0, 0
    async with AsyncClient(address(server)) as client:
        for seed in range(12):
            drawn = render_scene(7_000 + seed, 720, 1280, damaged=seed % 2 == 0)
            result = await client.analyze(drawn.image, options=ResultOptions(encoding="float32"))
            g, heat = result.geometry, result.heatmap
            assert g is not None and heat is not None
            assert bool(result.regions) == result.damaged, (seed, result)
            if not result.damaged:
                continue
            first = result.regions[0]
            assert first.value == result.score
            peak = result.peak()
            assert peak is not None
            assert first.x <= peak[0] < first.x + first.width, (first, peak)
            assert first.y <= peak[1] < first.y + first.height, (first, peak)
            for region in result.regions:
                assert region.value >= result.threshold and region.cells >= 1
                assert 0 <= region.x < region.x + region.width <= g.frame_width, region
                assert 0 <= region.y < region.y + region.height <= g.frame_height, region
            # every cell over the frame at or over the threshold is in one region
            left, top, right, bottom = g.content_box()
            frame_cells = heat[top // 8 : -(-bottom // 8), left // 8 : -(-right // 8)]
            hot = int((frame_cells.astype(np.float64) >= result.threshold).sum())
            if len(result.regions) < 16:
                assert sum(r.cells for r in result.regions) == hot
            if drawn.mask.any():
                found += 1
                x0, y0, x1, y1 = first.box
                covered += bool(drawn.mask[y0:y1, x0:x1].any())
    assert found >= 4  # of the 6 damaged renders (fixed seeds, the shipped model: 5)
    assert covered >= found - 1  # (4 of 5)


def mixed(frames: list[np.ndarray]) -> list[object]:
    return [frames[0], jpeg(frames[1]), b"GIF89a not an image", frames[2], png(frames[3])]


async def test_stream_sync_and_async_answers_in_order_past_bad_frames(
    server: Server, frames: list[np.ndarray]
) -> None:
    def sync() -> list[Result]:
        with Client(address(server)) as client:
            return list(client.stream(mixed(frames), options=ResultOptions(["stage2"])))

    async with AsyncClient(address(server)) as client:

        async def items() -> AsyncIterator[object]:
            for item in mixed(frames):
                yield item

        by_async = [r async for r in client.stream(items(), options=ResultOptions(["stage2"]))]
        by_plain = [r async for r in client.stream(mixed(frames))]
    by_sync = await asyncio.to_thread(sync)
    for results in (by_sync, by_async, by_plain):
        assert [r.frame_id for r in results] == [1, 2, 3, 4, 5]
        assert [r.ok for r in results] == [True, True, False, True, True]
        assert isinstance(results[2].error, InvalidFrame)
        assert "expected JPEG" in results[2].error.message
        with pytest.raises(InvalidFrame):
            results[2].raise_for_status()
        analysed = [r for r in results if r.ok]
        assert all(r.heatmap is not None and 0.0 <= r.score <= 1.0 for r in analysed)
    assert list(by_sync[0].feature_maps) == ["stage2"] and not by_plain[0].feature_maps
    # The same frames get the same scores whichever way they were sent.
    for i in (0, 1, 3, 4):
        assert by_sync[i].score == pytest.approx(by_async[i].score, abs=1e-6)
        assert by_plain[i].score == pytest.approx(by_async[i].score, abs=1e-6)


async def test_a_stream_left_early_closes_the_generator_of_its_frames(
    server: Server, frames: list[np.ndarray]
) -> None:
    """A program's frames generator, its camera handle released in its ``finally``: a
    stream left after its first result closed the pump but not the generator, whose
    ``finally`` ran at some later garbage collection (an integrator's review)."""
    data = jpeg(frames[0])
    released: list[str] = []

    def camera(name: str) -> Iterator[bytes]:
        try:
            while True:
                yield data
        finally:
            released.append(name)

    async def async_camera(name: str) -> AsyncIterator[bytes]:
        try:
            while True:
                yield data
        finally:
            released.append(name)

    def sync() -> None:
        with Client(address(server)) as client:
            for result in client.stream(camera("sync, loop left")):
                assert result.ok
                break
            assert released == ["sync, loop left"]
            source = camera("sync, closed")
            results = client.stream(source)
            assert next(results).ok
            results.close()
            assert released[-1] == "sync, closed"
            # given again, it would stream nothing and end OK: said at once instead
            with pytest.raises(ValueError, match="frames already used up"):
                client.stream(source)

    await asyncio.to_thread(sync)
    async with AsyncClient(address(server)) as client:
        for source in (camera("async, plain"), async_camera("async, generator")):
            results = client.stream(source)
            assert (await anext(results)).ok
            await results.aclose()
            with pytest.raises(ValueError, match="frames already used up"):
                await anext(client.stream(source))  # checked as iteration starts
    assert released == ["sync, loop left", "sync, closed", "async, plain", "async, generator"]


async def test_options_the_server_refuses_are_refused_for_every_frame_not_only_the_first(
    server: Server, frames: list[np.ndarray]
) -> None:
    """A stream's options went with its first frame only: refused there, the frames after
    it were analysed on the server's defaults (no maps, a LOSSLESS stream) and no result
    said so. They now go with every frame until the stream takes them."""
    three = [frames[0], frames[1], frames[2]]

    def sync() -> list[list[Result]]:
        with Client(address(server)) as client:
            return [
                list(client.stream(three, options=ResultOptions(["stage3", "stage9"]))),
                list(client.stream(three, freshness="bounded_queue", queue_size=300)),
                list(client.stream([b"not an image", *three], options=ResultOptions(["stage3"]))),
            ]

    async with AsyncClient(address(server)) as client:
        by_async = [r async for r in client.stream(three, options=ResultOptions(["stage9"]))]
    unknown_map, too_large_queue, bad_first_frame = await asyncio.to_thread(sync)
    for results in (unknown_map, by_async):
        assert [r.ok for r in results] == [False, False, False]
        assert all(
            isinstance(r.error, InvalidFrame) and "stage9" in r.error.message for r in results
        )
    assert [r.ok for r in too_large_queue] == [False, False, False]
    assert all(r.error is not None and "queue" in r.error.message for r in too_large_queue)
    # a bad first frame does not cost the others their options
    assert [r.ok for r in bad_first_frame] == [False, True, True, True]
    assert all(list(r.feature_maps) == ["stage3"] for r in bad_first_frame[1:])


async def test_folder_of_images(server: Server, frames: list[np.ndarray], tmp_path: Path) -> None:
    from convstream.client import frames as frames_module

    (tmp_path / "sub").mkdir()
    write(tmp_path / "a.jpg", jpeg(frames[0]))
    write(tmp_path / "b.png", png(frames[1]))
    write_image(tmp_path / "sub" / "c.bmp", frames[2])
    # a GIF too: read when named, it was left out of its folder as "not an image"
    write_image(tmp_path / "sub" / "d.gif", frames[3])
    write(tmp_path / "notes.txt", b"not an image")
    paths = cs.image_files([tmp_path])
    found = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert found == ["a.jpg", "b.png", "sub/c.bmp", "sub/d.gif"]
    # one folder given alone, as a string or a path: its files (a string was read letter by
    # letter, "no such file or folder: /")
    assert cs.image_files(str(tmp_path)) == cs.image_files(tmp_path) == paths
    assert frames_module.other_files(str(tmp_path)) == [tmp_path / "notes.txt"]

    def sync() -> list[Result]:
        with Client(address(server)) as client:
            return list(client.stream(cs.read_images([tmp_path])))

    async with AsyncClient(address(server)) as client:
        by_async = [r async for r in client.stream(cs.read_images([tmp_path]))]
    for results in (await asyncio.to_thread(sync), by_async):
        assert [r.frame.name for r in results if r.frame] == [str(p) for p in paths]
        assert all(r.ok for r in results)
        assert results[2].geometry is not None and results[2].geometry.frame_width == 320


async def test_an_async_clients_quiet_sources_never_stall_its_other_streams(
    server: Server,
) -> None:
    """A plain (blocking) source is read on a thread of its stream's own. Read on the loop's
    default executor (cores + 4 threads), that many cameras with nothing to send stopped
    every other stream of the client, and whatever else the program ran there."""
    quiet_streams = min(32, (os.cpu_count() or 1) + 4) + 1  # more than that executor's threads
    image = scene(5, 240, 320)
    blocked = threading.Semaphore(0)
    release = threading.Event()

    def quiet() -> Iterator[Frame]:
        blocked.release()
        release.wait(60)  # a camera with nothing to send, until the test ends
        yield Frame(image, frame_id=1)

    async with AsyncClient(address(server)) as client:

        async def run(frames: Iterable[Frame]) -> list[Result]:
            return [result async for result in client.stream(frames)]

        waiting = [asyncio.create_task(run(quiet())) for _ in range(quiet_streams)]
        try:
            entered, deadline = 0, time.monotonic() + 20
            while entered < quiet_streams:  # every quiet source blocked in its read
                if blocked.acquire(blocking=False):
                    entered += 1
                    continue
                assert time.monotonic() < deadline, f"{entered} of {quiet_streams} sources read"
                await asyncio.sleep(0.01)
            busy = await asyncio.wait_for(run(Frame(image, frame_id=i) for i in range(5)), 20)
            assert [r.frame_id for r in busy] == list(range(5)) and all(r.ok for r in busy)
            assert not any(task.done() for task in waiting)  # still waiting for their cameras
        finally:
            release.set()
        for results in await asyncio.gather(*waiting):
            assert [r.frame_id for r in results] == [1]


def test_a_camera_urls_credentials_are_neither_its_name_nor_in_its_error() -> None:
    """A Video of a URL is named by it, and the name is every frame's source, which the
    server echoes in results and logs: the user and password before the host are left out
    of it, and out of its error and repr. The query's values are hidden as the server hides
    them (results may be published to other clients), but those that pick a stream: an
    NVR's channels differ only there."""
    url = "rtsp://admin:Zq9Secret@cam.local:554/cam/realmonitor?channel=2&subtype=0"
    assert Video.default_name(url) == "rtsp://cam.local:554/cam/realmonitor?channel=2&subtype=0"
    url = "http://10.0.0.9/cgi-bin/mjpg/video.cgi?channel=1&user=admin&password=Zq9Secret"
    assert Video.default_name(url) == (
        "http://10.0.0.9/cgi-bin/mjpg/video.cgi?channel=1&user=***&password=***"
    )
    # two cameras told apart by a number are two names
    names = {Video.default_name(f"http://10.0.0.9/mjpeg?stream={n}") for n in (1, 2)}
    assert len(names) == 2, names
    assert Video.default_name("C:/videos/a#1.avi") == "a#1"  # a path is no URL
    with pytest.raises(cs.SourceError) as info:
        Video("rtsp://admin:Zq9Secret@127.0.0.1:1/x")  # nothing listens: refused at once
    assert "Zq9Secret" not in str(info.value) and "'rtsp://127.0.0.1:1/x'" in str(info.value)


async def test_video_file_streamed_in_order_none_missing(server: Server, video: Path) -> None:
    def sync() -> list[Result]:
        with Client(address(server)) as client, Video(video) as source:
            assert (source.frame_count, source.fps, source.name) == (30, 10.0, "conveyor")
            return list(client.stream(source.frames()))

    async with AsyncClient(address(server)) as client:
        with Video(video) as source:
            by_async = [r async for r in client.stream(source.frames())]
    for results in (await asyncio.to_thread(sync), by_async):
        assert [r.frame_id for r in results] == list(range(30))
        assert [r.sequence for r in results] == list(range(1, 31))
        assert all(r.ok and r.source == "conveyor" for r in results)
        assert results[5].frame is not None and results[5].frame.name == "conveyor#5"
        assert sum(r.frames_dropped for r in results) == 0


async def test_results_keep_the_bytes_sent_not_the_pixels_they_were_made_of(
    server: Server, video: Path
) -> None:
    """A list of a video's results holds each frame as the JPEG that went (what the server
    analysed), not as decoded pixels: ten times less memory or more; pixels() decodes it.
    Raw uploads keep the array, which is what they send."""
    with Video(video) as source:
        originals = [frame.pixels() for frame in source.frames()]
    async with AsyncClient(address(server)) as client:
        with Video(video) as source:
            results = [r async for r in client.stream(source.frames())]
        one = await client.analyze(originals[3])
    for result, original in zip([*results, one], [*originals, originals[3]], strict=True):
        assert result.frame is not None and isinstance(result.frame.image, bytes)
        assert result.frame.image[:2] == b"\xff\xd8"  # a JPEG
        assert 10 * len(result.frame.image) < original.nbytes
        pixels = result.frame.pixels()
        assert pixels.shape == original.shape
        assert np.abs(pixels.astype(int) - original).mean() < 4  # JPEG's loss only
    async with AsyncClient(address(server), upload=Upload(format="raw")) as client:
        raw = [r async for r in client.stream(originals[:2])]
    assert all(
        r.frame is not None and r.frame.image is o for r, o in zip(raw, originals[:2], strict=True)
    )


async def test_a_fresh_stream_reads_few_frames_ahead_of_a_slow_reader(
    server: Server, frames: list[np.ndarray], video: Path
) -> None:
    """A loop taking 0.5 s a result over a camera's frames read Limits.max_in_flight (32)
    frames ahead of it, each result waiting its turn: 16 s behind the camera, while its
    frame_age_ms said 60 ms (an API review). A latest-only stream, and a latest-only Video's
    frames on any stream, read at most 2 ahead."""
    from convstream.client.frames import VideoFrames

    pulled = 0

    def camera() -> Iterator[Frame]:
        nonlocal pulled
        for k in itertools.count():
            pulled += 1
            yield Frame(frames[k % 6], frame_id=k)

    def slowly(source: Iterable[Frame], freshness: Freshness, fresh: int = 2) -> list[int]:
        nonlocal pulled
        pulled, ahead = 0, []
        with Client(address(server), limits=cs.Limits(fresh_in_flight=fresh)) as client:
            for n, result in enumerate(client.stream(source, freshness=freshness)):
                assert result.ok, result.error
                time.sleep(0.05)
                ahead.append(pulled - 1 - result.frame_id)  # frames read after its own
                if n == 9:
                    break
        return ahead

    for source, freshness in (
        (camera(), "latest_only"),
        (VideoFrames(camera(), latest=True), "lossless"),
    ):
        ahead = await asyncio.to_thread(slowly, source, freshness)  # type: ignore[arg-type]
        assert max(ahead) <= 2, (freshness, ahead)
    # more for a link whose round trip is longer than an analysis: Limits.fresh_in_flight
    # (lossless: a latest-only stream's dropped frames are answered, and make room)
    ahead = await asyncio.to_thread(slowly, VideoFrames(camera(), latest=True), "lossless", 4)
    assert 3 <= max(ahead) <= 4, ahead
    with Video(video, latest_only=True) as live, Video(video) as played:
        assert live.frames().latest and not played.frames().latest


async def test_a_capture_opened_by_the_caller_is_streamed_and_released(
    server: Server, video: Path
) -> None:
    """Video(cv2.VideoCapture(...)): a capture set up by hand (a GStreamer pipeline, a USB
    camera's resolution) is read as its own source would be, and released on close."""
    capture = cv2.VideoCapture(str(video))
    with Video(capture) as source:
        assert (source.name, source.frame_count, source.live) == ("capture", 30, False)
        assert repr(source) == "Video(<cv2.VideoCapture>, name='capture', fps=10)"
        async with AsyncClient(address(server)) as client:
            results = [r async for r in client.stream(source.frames())]
    assert [r.frame_id for r in results] == list(range(30))
    assert all(r.ok and r.source == "capture" for r in results)
    assert not capture.isOpened()  # released with the Video
    with pytest.raises(cs.SourceError, match=r"the cv2\.VideoCapture given is not open"):
        Video(cv2.VideoCapture())


def test_a_realtime_video_file_comes_at_its_own_frame_rate(video: Path) -> None:
    """realtime=True: the 10 fps file's frames 0.1 s apart, as a camera's, each carrying the
    time it was handed out; without it, as fast as they are read, with no capture_time."""
    with Video(video, realtime=True, max_frames=5) as source:
        started = time.monotonic()
        got = list(source.frames())
        took = time.monotonic() - started
    assert [f.frame_id for f in got] == [0, 1, 2, 3, 4]
    assert took >= 0.38  # four intervals of 0.1 s; the first frame comes at once
    times = [f.capture_time or 0.0 for f in got]
    assert all(times), times
    assert all(b - a >= 0.08 for a, b in itertools.pairwise(times)), times
    with Video(video, max_frames=5) as source:
        assert all(f.capture_time is None for f in source.frames())
    # close() from another thread ends a paced read without waiting for its frame's time
    slow = video.parent / "slow.avi"
    writer = cv2.VideoWriter(str(slow), cv2.VideoWriter_fourcc(*"MJPG"), 0.5, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    source = Video(slow, realtime=True)
    frames = source.frames()
    next(frames)  # the first at once; the next is due in 2 s
    threading.Timer(0.2, source.close).start()
    started = time.monotonic()
    assert list(frames) == [] and time.monotonic() - started < 1.5


def test_a_looped_video_file_starts_again_and_its_ids_go_on(
    video: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """loop=True: the 30-frame file played 2.5 times, its frame ids going on counting and its
    pixels those of the file's first frames again; a camera or a URL cannot loop, and a file
    with no frame to read still ends, with a warning."""
    caplog.set_level(logging.WARNING, logger="convstream.client")
    with Video(video, max_frames=75, loop=True) as source:
        got = list(source.frames())
    assert [f.frame_id for f in got] == list(range(75))
    for i in (0, 7, 14):
        assert np.array_equal(got[i].pixels(), got[30 + i].pixels())
        assert np.array_equal(got[i].pixels(), got[60 + i].pixels())
    assert np.array_equal(got[29].pixels(), got[59].pixels())
    assert not np.array_equal(got[0].pixels(), got[29].pixels())
    with pytest.raises(ValueError, match=r"looping is for video files: 'http://127\.0\.0\.1:9/"):
        Video("http://127.0.0.1:9/stream.mjpg", loop=True)
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    with Video(empty, loop=True, max_frames=3) as source:
        assert len(list(source.frames())) == 3  # one frame, played three times
    nothing = tmp_path / "nothing.avi"  # a file OpenCV opens, with no frame in it
    cv2.VideoWriter(str(nothing), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48)).release()
    with Video(nothing, loop=True) as source:
        assert list(source.frames()) == []  # ends: a pass read nothing, so none comes again
    # and says why, to a program as to the CLI: its loop over the frames ended at once
    said = [r.getMessage() for r in caplog.records if r.name == "convstream.client"]
    assert said == [
        f"OpenCV opened {nothing} but read no frame from it; expected a video file, a URL or "
        "a camera index"
    ]


def test_a_latest_only_videos_read_that_raises_ends_its_frames_with_that_error() -> None:
    """A read that raises (a cv2.error from a capture the caller set up, a GStreamer
    pipeline): the latest-only reader's thread died with it, and the frames waited for ever.
    (The reader is driven directly: a Python subclass of cv2.VideoCapture crashes pytest's
    interpreter at exit.)"""
    from convstream.client.frames import _LatestReader

    reads = iter([np.zeros((4, 4, 3), np.uint8)] * 3)

    def read() -> np.ndarray | None:
        image = next(reads, None)
        if image is None:
            raise cv2.error("the pipeline broke")
        return image

    reader = _LatestReader(read)
    outcome: list[object] = []

    def consume() -> None:
        try:
            while (item := reader.get()) is not None:
                outcome.append(item[0])
        except cv2.error as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(10)
    reader.stop(1.0)
    assert not consumer.is_alive(), "the frames waited for ever"
    assert isinstance(outcome[-1], cv2.error) and "the pipeline broke" in str(outcome[-1])
    assert all(isinstance(i, int) and i <= 2 for i in outcome[:-1]), outcome


def test_video_latest_only_reader_hands_out_newest_frames(video: Path) -> None:
    with Video(video, latest_only=True) as source:
        got = []
        for frame in source.frames():
            got.append(frame.frame_id)
            time.sleep(0.002)
    assert got == sorted(got) and len(set(got)) == len(got) and got[-1] <= 29
    with Video(video, max_frames=4) as source:
        assert [f.frame_id for f in source.frames()] == [0, 1, 2, 3]
    with pytest.raises(cs.SourceError, match="no such video"):
        Video(video.with_name("missing.avi"))
    # one that is there but no video says what it holds (it said only "cannot open")
    notes = video.with_name("notes.mp4")
    notes.write_text("hello\n")
    with pytest.raises(
        cs.SourceError, match=r"not a video OpenCV can read \(it holds text \(6 bytes\): 'hello'\)"
    ):
        Video(notes)
    # a .txt long enough is one FFmpeg opens, as console text: 21 frames of letters, "damaged"
    readme = video.with_name("readme.txt")
    readme.write_text("# notes\n" + "a line of plain text, as a README has\n" * 130)
    with pytest.raises(cs.SourceError, match=r"not a video OpenCV can read \(it holds text"):
        Video(readme)
    with pytest.raises(
        cs.SourceError, match=r"a video file \(for its images: client.stream\(image_files"
    ):
        Video(video.parent)


# What the package docstring promises for each kind of thing that is not a frame to analyse
NOT_FRAMES = [
    ("bytes that are no image", lambda p: b"garbage bytes, not an image", cs.InvalidFrame),
    ("a file that is no image", lambda p: p["notes"], cs.SourceError),
    ("a missing file", lambda p: p["missing"], cs.SourceError),
    ("a folder", lambda p: p["folder"], cs.SourceError),
    ("a video file", lambda p: p["video"], cs.SourceError),
    ("float pixels", lambda p: np.zeros((8, 8, 3), np.float32), ValueError),
    ("an object that is no frame", lambda p: 42, TypeError),
]


async def test_what_is_not_a_frame_raises_what_the_docstring_says(
    server: Server, video: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello")
    paths = {"notes": notes, "missing": tmp_path / "gone.jpg", "folder": tmp_path}
    paths["video"] = video
    for name, make, raised in NOT_FRAMES:
        assert raised.__name__ in (cs.__doc__ or ""), name
        async with AsyncClient(address(server)) as client:
            with pytest.raises(raised):
                await client.analyze(make(paths))
    with pytest.raises(cs.SourceError, match=r"conveyor.avi is a video \(AVI\), not an image"):
        cs.read_image(video)


def test_a_frame_says_what_its_image_must_be_when_it_is_made(tmp_path: Path) -> None:
    """Frame(path, source=...) is the natural way to tag a file, and it was made, showed as
    "image=<33 bytes>", and failed later with "expected bytes, str found" (an integrator's
    review). A Frame says at once what its image must be, and how to give a file."""
    for wrong in (str(tmp_path / "box.jpg"), tmp_path / "box.jpg", None):
        with pytest.raises(TypeError, match="pixels \\(a numpy array\\) or JPEG/PNG bytes"):
            Frame(wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"read_image\(path\)"):
        Frame(str(tmp_path / "box.jpg"))  # type: ignore[arg-type]
    data = jpeg(scene(3))
    assert Frame(bytearray(data)).image == data == Frame(memoryview(data)).image


async def test_an_answer_over_the_clients_own_limit_is_no_overload(
    server: Server, frames: list[np.ndarray]
) -> None:
    """A client that takes 4 MiB asked for every map in float32 (7.9 MB): gRPC's refusal came
    as Overloaded, "back off and retry", which never helps (an integrator's review). It is
    InvalidFrame, naming the limit and what to ask for instead."""
    every = ResultOptions(feature_maps=["stage1", "stage2", "stage3", "stage4"], encoding="float32")
    limits = cs.Limits(max_message_bytes=4 << 20)
    async with AsyncClient(address(server), limits=limits) as client:
        with pytest.raises(InvalidFrame, match=r"Limits\.max_message_bytes") as raised:
            await client.analyze(jpeg(frames[0]), options=every)
        assert "larger than this client takes (4,194,304" in raised.value.message
        # what fits still comes
        assert (await client.analyze(jpeg(frames[0]))).ok


def test_a_calls_own_timeout_is_checked_as_timeouts_are() -> None:
    with Client("127.0.0.1:1") as client:
        for wrong in (-1, 0):
            with pytest.raises(ValueError, match=r"Timeout\.call"):
                client.cameras(timeout=wrong)


def test_the_published_name_rule_is_the_servers() -> None:
    from convstream.client._base import check_published_name

    for name, ok in [("belt-7", True), ("a" * 64, True), ("bad name", False), ("", False)]:
        if ok:
            check_published_name(name)
        else:
            with pytest.raises(ValueError, match="a published stream's name must be"):
                check_published_name(name)


def test_a_queue_size_another_policy_would_ignore_is_refused() -> None:
    with Client("127.0.0.1:1") as client:
        for freshness in ("lossless", "latest_only"):
            with pytest.raises(ValueError, match="queue_size is for freshness='bounded_queue'"):
                client.stream([], freshness=freshness, queue_size=3)  # type: ignore[arg-type]


async def test_latest_only_answers_or_reports_every_frame_once(
    server: Server, frames: list[np.ndarray]
) -> None:
    sent = [Frame(jpeg(frames[i % 6]), frame_id=100 + i) for i in range(40)]
    async with AsyncClient(address(server)) as client:
        results = [r async for r in client.stream(sent, freshness="latest_only")]
    answered = [r.frame_id for r in results]
    dropped = [i for r in results for i in r.dropped_frame_ids]
    assert answered == sorted(answered) and answered[-1] == 139
    assert sorted(answered + dropped) == [f.frame_id for f in sent]
    assert results[-1].frames_dropped == len(dropped)
    # each result says the policy it was answered under, by the name the call takes
    assert {(r.freshness, r.queue_size) for r in results} == {("latest_only", 1)}


async def test_what_is_no_image_is_said_in_the_callers_terms(
    server: Server, frames: list[np.ndarray], tmp_path: Path
) -> None:
    """A text file was sent as bytes and refused as 'expected JPEG (ff d8 ff) or PNG ...,
    got 37 bytes starting 74 68 72 65', though BMP, TIFF and WebP files are read here; a
    10x10 array was refused as 'JPEG is 10x10', a JPEG the caller never made."""
    notes, empty = tmp_path / "notes.txt", tmp_path / "empty.png"
    notes.write_text("three little pigs\nand a wolf\n")
    empty.write_bytes(b"")
    tiny = np.zeros((10, 10, 3), np.uint8)
    async with AsyncClient(address(server)) as client:
        with pytest.raises(cs.SourceError) as text:
            await client.analyze(notes)
        assert str(text.value) == (
            f"{notes} is not an image: not a JPEG or PNG, nor a format OpenCV decodes (BMP, "
            "GIF, TIFF, WebP, ...); it holds text (29 bytes): 'three little pigs'"
        )
        with pytest.raises(cs.SourceError, match=r"empty\.png is not an image: .*it is empty"):
            await client.analyze(empty)
        with pytest.raises(cs.InvalidFrame, match=r"is 10x10 pixels; frames must be at least"):
            await client.analyze(tiny)
        # a strip the server refuses is not sent; as the server has it, its own words
        with pytest.raises(cs.InvalidFrame, match=r"is 4000x32 pixels; frames may be at most 12"):
            await client.analyze(np.zeros((32, 4000, 3), np.uint8))
        strip = cv2.imencode(".png", np.zeros((32, 4000, 3), np.uint8))[1].tobytes()
        with pytest.raises(cs.InvalidFrame, match=r"4000x32, 125 times as wide as high") as info:
            await client.analyze(strip)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # in a stream, each is that frame's error result, in its place
        results = [r async for r in client.stream([frames[0], notes, tiny, frames[1]])]
    assert [(r.frame_id, r.ok) for r in results] == [(1, True), (2, False), (3, False), (4, True)]
    assert isinstance(results[1].error, cs.SourceError) and "holds text" in str(results[1].error)
    assert isinstance(results[2].error, cs.InvalidFrame)


async def test_server_errors_arrive_mapped(server: Server, frames: list[np.ndarray]) -> None:
    async with AsyncClient(address(server)) as client:
        with pytest.raises(InvalidFrame, match="expected JPEG") as info:
            await client.analyze(b"garbage bytes, not an image")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidFrame, match="stage9"):
            await client.analyze(frames[0], options=ResultOptions(feature_maps=["stage9"]))
        assert (await client.analyze(frames[0])).ok  # the server is fine

    def sync() -> None:
        with Client(address(server)) as client, pytest.raises(InvalidFrame, match="truncated"):
            client.analyze(jpeg(frames[0])[:500])

    await asyncio.to_thread(sync)


async def test_too_many_streams_is_overloaded(frames: list[np.ndarray]) -> None:
    server = Server(Settings(port=0, metrics_port=-1, max_streams=1))
    await server.start()
    try:
        async with AsyncClient(address(server)) as client:
            first = client.stream([frames[0]] * 200)
            assert (await anext(first)).ok

            # The refused stream goes through the blocking Client: grpc's asyncio client can
            # report INTERNAL instead of the server's status when one of its writes races the
            # server ending the call (grpc/grpc#36066, fix pending in grpc/grpc#43486).
            def refused() -> None:
                with Client(address(server)) as sync_client:
                    list(sync_client.stream([frames[0]]))

            with pytest.raises(Overloaded, match="limit is 1"):
                await asyncio.to_thread(refused)
            assert (await anext(first)).ok  # the open stream is unaffected
            await first.aclose()
    finally:
        await server.stop(grace=0)


def test_an_async_client_belongs_to_one_event_loop() -> None:
    """Used from a second asyncio.run(), it failed with "Event loop is closed", a warning of
    a coroutine never awaited, and a poller thread left running."""
    client = AsyncClient("127.0.0.1:1", retry=cs.Retry(attempts=1), timeout=1.0)

    async def ask() -> None:
        await client.model_info()

    with pytest.raises(cs.ServerUnavailable):
        asyncio.run(ask())  # no server there: the call is made, in this loop
    with pytest.raises(RuntimeError, match=r"another event loop .* create an AsyncClient in each"):
        asyncio.run(ask())


def test_no_server_is_server_unavailable() -> None:
    with Client("127.0.0.1:1", retry=Retry(attempts=2)) as client:
        with pytest.raises(ServerUnavailable, match=r"127\.0\.0\.1:1"):
            client.model_info()
        with pytest.raises(ServerUnavailable):
            list(client.stream([b"x"], resume=True))


async def test_breaking_out_of_a_stream_ends_it(server: Server, frames: list[np.ndarray]) -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield jpeg(frames[0])

    def sync() -> list[int]:
        with Client(address(server)) as client:
            results = client.stream(endless())
            ids = [next(results).frame_id for _ in range(3)]
            results.close()
            return ids

    assert await asyncio.to_thread(sync) == [1, 2, 3]
    async with AsyncClient(address(server)) as client:
        results = client.stream(endless())
        assert (await anext(results)).frame_id == 1
        await results.aclose()
    assert server.servicer is not None
    for _ in range(100):
        if server.servicer.open_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert server.servicer.open_streams == 0


async def test_a_frame_over_the_message_limit_is_refused_by_the_client_saying_why(
    server: Server, frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC refused it with its own words ("CLIENT: Sent message larger than max"), as
    Overloaded, which says retry later: it never can. On a stream that frame alone fails,
    in its place, and the stream goes on; runs of such frames too, however few may be in
    flight, unless no frame is sent at all for FAILED_RUN of them."""
    limits = cs.Limits(max_message_bytes=1 << 19)  # a raw 640x480 frame is 921,600 bytes
    raw = cs.Upload(format="raw")
    told = (
        r"is 921,6\d\d bytes as raw pixels, over the 520,192 a frame may take of the "
        r"524,288-byte message limit .* Upload\(format='jpeg'\)"
    )
    big, small = frames[6], cv2.resize(frames[1], (320, 240))
    async with AsyncClient(address(server), limits=limits, upload=raw) as client:
        with pytest.raises(cs.InvalidFrame, match=told):
            await client.analyze(big)
        got = [r async for r in client.stream([small, big, small])]
        assert [(r.frame_id, r.ok) for r in got] == [(1, True), (2, False), (3, True)]
        assert isinstance(got[1].error, cs.InvalidFrame) and re.search(told, str(got[1].error))
        assert got[1].frame is not None and got[1].frame.image == b""  # its pixels let go
        # a JPEG over it is told to send it smaller, not as the JPEG it already is; named as
        # the caller named it, not by the Frame's repr (a newcomer's 90 MB PNG was
        # "Frame(name='bad/noise90mb.png', frame_id=None, image=<90036828 bytes>) is ...")
        tiled = np.tile(big, (3, 3, 1))
        jpeg_told = r"^frame 1 is [0-9,]+ bytes as the JPEG it is, .*: save it at a lower JPEG"
        with pytest.raises(cs.InvalidFrame, match=jpeg_told):
            await client.analyze(cs.Frame(cv2.imencode(".jpg", tiled)[1].tobytes()))
        photo = cs.Frame(cv2.imencode(".png", tiled)[1].tobytes(), name="dock/huge.png")
        with pytest.raises(
            cs.InvalidFrame, match=r"^dock/huge\.png is .* as the PNG it is, .*: save it as a JPEG"
        ):
            await client.analyze(photo)
    # one frame in flight at most, and a run of ten that fail between good ones
    one = cs.Limits(max_message_bytes=1 << 19, max_in_flight=1)
    mixed = [small] * 3 + [big] * 10 + [small] * 3

    def sync(frames_in: list[np.ndarray]) -> list[Result]:
        with Client(address(server), limits=one, upload=raw) as client:
            return list(client.stream(frames_in))

    got = await asyncio.to_thread(sync, mixed)
    assert [r.ok for r in got] == [True] * 3 + [False] * 10 + [True] * 3
    assert [r.frame_id for r in got] == list(range(1, 17))
    # a source whose every frame fails: their results, then the stream ends saying why (none
    # was sent, so no answer would ever hand them over)
    monkeypatch.setattr("convstream.client._feed.FAILED_RUN", 3)
    async with AsyncClient(address(server), limits=one, upload=raw) as client:
        got = []
        with pytest.raises(cs.InvalidFrame) as ended:
            async for result in client.stream([big] * 6):
                got.append(result)
    assert [(r.frame_id, r.ok) for r in got] == [(1, False), (2, False), (3, False)]
    why = str(ended.value)
    assert why.startswith("4 frames in a row failed on this side, none sent, so the stream ")
    assert re.search(told, why)
    assert len(await asyncio.to_thread(sync, [big] * 3)) == 3  # no more: no error
    async with AsyncClient(address(server), limits=limits) as client:  # JPEG fits
        assert (await client.analyze(big)).error is None


async def test_source_errors_come_after_the_frames_before_them(
    server: Server, frames: list[np.ndarray]
) -> None:
    def failing() -> Iterator[object]:
        yield frames[0]
        yield frames[1]
        raise cs.SourceError("camera unplugged")

    def sync() -> list[Result]:
        got: list[Result] = []
        with Client(address(server)) as client, pytest.raises(cs.SourceError, match="unplugged"):
            got.extend(client.stream(failing()))
        return got

    assert [r.frame_id for r in await asyncio.to_thread(sync)] == [1, 2]
    async with AsyncClient(address(server)) as client:
        got = []
        with pytest.raises(TypeError, match="a frame must be"):
            async for r in client.stream([frames[0], 3.5]):  # type: ignore[list-item]
                got.append(r)
    assert [r.frame_id for r in got] == [1]


async def test_leaving_a_video_stream_early_never_reads_a_released_capture(
    server: Server, video: Path
) -> None:
    """The feed thread may be inside a read when the caller breaks out and closes the Video:
    the read finishes first (before, OpenCV freed the capture under it and the process died
    with a segfault on the first or second pass)."""

    def sync() -> list[int]:
        firsts = []
        with Client(address(server)) as client:
            for _ in range(12):
                with Video(video) as source:
                    for result in client.stream(source.frames()):
                        firsts.append(result.frame_id)
                        break
        return firsts

    assert await asyncio.to_thread(sync) == [0] * 12
    async with AsyncClient(address(server)) as client:
        for _ in range(6):
            with Video(video) as source:
                async for result in client.stream(source.frames()):
                    assert result.frame_id == 0
                    break
    # closed from another thread in the middle of a latest-only read loop
    source = Video(video, latest_only=True)
    frames = source.frames()
    next(frames)
    closer = threading.Thread(target=source.close)
    closer.start()
    rest = list(frames)
    closer.join()
    assert len(rest) < 29  # it stopped early, and nothing crashed


async def test_frames_the_server_must_judge_are_judged_there_and_the_stream_goes_on(
    server: Server, frames: list[np.ndarray]
) -> None:
    now = time.time()
    items = [
        Frame(jpeg(frames[0]), capture_time=now),
        Frame(jpeg(frames[1]), capture_time=now * 1000),  # milliseconds by mistake
        Frame(jpeg(frames[2]), capture_time=-5.0),  # before 1970
        Frame(jpeg(frames[3]), capture_time=now),
    ]

    def sync() -> list[Result]:
        with Client(address(server)) as client:
            return list(client.stream(items))

    results = await asyncio.to_thread(sync)
    assert [r.ok for r in results] == [True, False, False, True]
    assert isinstance(results[1].error, InvalidFrame)
    assert "milliseconds" in results[1].error.message
    assert "before 1970" in results[2].error.message


async def test_frame_ids_given_and_numbered_never_collide(
    server: Server, frames: list[np.ndarray]
) -> None:

    def sync() -> None:
        with Client(address(server)) as client:
            mixed = [Frame(jpeg(frames[0]), frame_id=5), jpeg(frames[1]), jpeg(frames[2])]
            assert [r.frame_id for r in client.stream(mixed)] == [5, 6, 7]
            assert [r.frame_id for r in client.stream([jpeg(frames[0])] * 2)] == [1, 2]
            twice = [Frame(jpeg(frames[0]), frame_id=7)] * 3
            got: list[Result] = []
            with pytest.raises(ValueError, match="frame_id 7 is already in flight"):
                got.extend(client.stream(twice))
            assert [r.frame_id for r in got] == [7]
            with pytest.raises(ValueError, match="frame_id must be an integer from 0"):
                Frame(jpeg(frames[0]), frame_id=-1)  # made, not sent: a stream ended on it
            # published under the frames' source name: said before sending, not refused by the
            # server for the first frame while the stream goes on unpublished
            with pytest.raises(ValueError, match=r"first frame \(Frame\(.*\) has none: give one"):
                list(client.stream([jpeg(frames[0])], publish=True))
            with pytest.raises(ValueError, match="must be 1 to 64 letters"):
                list(client.stream([Frame(jpeg(frames[0]), source="a b")], publish=True))
            with pytest.raises(ValueError, match="capture_time must be seconds"):
                client.analyze(Frame(jpeg(frames[0]), capture_time=float("nan")))

    await asyncio.to_thread(sync)


async def test_a_stream_published_from_the_client_is_watched_by_id(
    server: Server, frames: list[np.ndarray]
) -> None:
    def stream() -> list[Result]:
        items = (Frame(jpeg(frames[i % 6]), source="belt-7") for i in range(400))
        with Client(address(server)) as client:
            return list(client.stream(items, publish=True))

    sender = asyncio.create_task(asyncio.to_thread(stream))
    async with AsyncClient(address(server)) as client:
        for _ in range(200):
            listed = {c.id: c for c in await client.cameras()}
            if "belt-7" in listed:
                break
            await asyncio.sleep(0.02)
        assert listed["belt-7"].source_kind == "stream"
        # the watch ends, without an error, when the stream publishing it does
        seen = [r async for r in client.watch("belt-7")]
    assert seen and all(0.0 <= r.score <= 1.0 for r in seen)
    sent = await sender
    assert len(sent) == 400 and all(r.ok for r in sent)


async def test_a_stream_whose_publish_name_is_taken_goes_on_unpublished(
    server: Server, frames: list[np.ndarray]
) -> None:
    """Publishing under a name another stream has: the client sent its options, publish and
    all, again on each frame until one was taken, and the server refused each for the name:
    not one frame of the stream was analysed (an integrator's review). Frames sent before
    the refusal came back carry it; the rest are analysed, unpublished, as the docs say."""

    def stream(count: int) -> list[Result]:
        items = (Frame(jpeg(frames[i % 6]), source="belt-8") for i in range(count))
        # at most 4 frames sent before the server's first answer comes back
        with Client(address(server), limits=cs.Limits(max_in_flight=4)) as client:
            return list(client.stream(items, publish=True))

    owner = asyncio.create_task(asyncio.to_thread(stream, 300))
    async with AsyncClient(address(server)) as client:
        for _ in range(200):
            if "belt-8" in {c.id for c in await client.cameras()}:
                break
            await asyncio.sleep(0.02)
    second = await asyncio.to_thread(stream, 12)
    assert all(r.ok for r in await owner)
    refused = [r for r in second if not r.ok]
    assert 1 <= len(refused) <= 4 and refused == second[: len(refused)], second
    for result in refused:
        assert isinstance(result.error, cs.errors.Rejected), result.error
        assert "already published" in result.error.message
    assert all(r.ok and 0.0 <= r.score <= 1.0 for r in second[len(refused) :])


def test_an_overlay_path_without_an_image_suffix_is_refused(tmp_path: Path) -> None:
    result = Result.from_proto(pb.FrameResult(score=0.5), None)
    with pytest.raises(ValueError, match="give a suffix such as"):
        cs.save_overlay(tmp_path / "overlays", result, np.zeros((8, 8, 3), np.uint8))


MISSING = 7  # each 7th frame is an image file that is not there


def restarting_source(frames: list[np.ndarray], count: int) -> Iterator[Frame | str]:
    for i in range(1, count + 1):
        time.sleep(0.03)  # a camera: frames keep coming while the server restarts
        if i % MISSING == 0:
            yield f"/nonexistent/frame-{i}.jpg"  # fails here: its result says so, in place
        else:
            yield Frame(jpeg(frames[i % 6]), capture_time=time.time())


async def restart(first: Server) -> Server:
    """Stop a server (it drains its streams) and start another on the same port."""
    await first.stop(grace=1.0)
    second = Server(Settings(port=first.port, metrics_port=-1))
    await second.start()
    return second


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_broken_stream_resumes_on_a_restarted_server(
    frames: list[np.ndarray], flavour: str
) -> None:
    first = Server(Settings(port=0, metrics_port=-1))
    await first.start()
    servers = [first]
    count = 40
    try:
        if flavour == "async":
            results: list[Result] = []
            restarted: asyncio.Task[Server] | None = None
            async with AsyncClient(address(first)) as client:
                async for result in client.stream(restarting_source(frames, count), resume=True):
                    results.append(result)
                    if len(results) == 5:
                        restarted = asyncio.create_task(restart(first))
            assert restarted is not None
            servers.append(await restarted)
        else:
            five = threading.Event()

            def consume() -> list[Result]:
                got = []
                with Client(address(first)) as client:
                    for result in client.stream(restarting_source(frames, count), resume=True):
                        got.append(result)
                        if len(got) == 5:
                            five.set()
                return got

            consumer = asyncio.create_task(asyncio.to_thread(consume))
            assert await asyncio.to_thread(five.wait, 30)
            servers.append(await restart(first))
            results = await consumer
    finally:
        for server in servers:
            await server.stop(grace=0)
    assert [r.frame_id for r in results] == list(range(1, count + 1))
    failed = [r for r in results if not r.ok]
    assert [r.frame_id for r in failed] == list(range(MISSING, count + 1, MISSING))
    for r in failed:
        assert isinstance(r.error, cs.SourceError) and r.frame is not None
        assert r.frame.name == f"/nonexistent/frame-{r.frame_id}.jpg"  # which file it was
        assert f"cannot read image /nonexistent/frame-{r.frame_id}.jpg" in str(r.error)
    sequences = [r.sequence for r in results if r.ok]
    assert sequences != sorted(sequences), "the results should come from two streams"


@pytest.mark.parametrize(
    ("freshness", "then"),
    [
        (pb.FRESHNESS_LATEST_ONLY, "a new frame"),
        (pb.FRESHNESS_LATEST_ONLY, "the source ends"),
        (pb.FRESHNESS_LATEST_ONLY, "the source had ended"),
        (pb.FRESHNESS_LOSSLESS, "the source had ended"),
    ],
)
def test_a_resumed_latest_only_stream_sends_the_sources_next_frame_first(
    frames: list[np.ndarray], freshness: int, then: str
) -> None:
    """Frames left unanswered by a break (up to max_in_flight) are stale to a LATEST_ONLY
    stream: re-sent, the newest was analysed as though fresh, as old as the outage. They are
    reported dropped with the next result, and the source's next frame goes first; the
    newest goes again only if the source gives none. Lossless re-sends all."""
    from convstream.client._feed import Ledger

    ledger = Ledger(pb.ResultOptions(freshness=freshness), Upload(), 1 << 22)
    ledger.new_attempt(exhausted=False)  # the first stream: nothing dropped on starting
    data = jpeg(frames[0])
    for item in (data, "/nonexistent/4.jpg", data, data):  # ids 1..4, the 2nd fails here
        ledger.add(*ledger.prepare(item))
    answered = ledger.match(pb.FrameResult(frame_id=1, frames_dropped=0))
    assert [(r.frame_id, r.ok) for r in answered] == [(1, True), (2, False)]
    for item in (data, data):
        ledger.add(*ledger.prepare(item))  # 3, 4, 5, 6 in flight when the stream breaks
    ledger.new_attempt(exhausted=then == "the source had ended")
    if then == "a new frame":
        ledger.add(*ledger.prepare(data))  # 7, read once the break made room
    elif then == "the source ends":
        ledger.source_ended()
    resent = []
    while (entry := ledger.after(resent[-1].seq if resent else 0)) is not None:
        resent.append(entry)
    if freshness == pb.FRESHNESS_LOSSLESS:
        assert [e.request.frame_id for e in resent] == [3, 4, 5, 6]
        ledger.match(pb.FrameResult(frame_id=6, frames_dropped=0))
        assert ledger.unanswered(exhausted=True) is None  # 3, 4, 5: dropped by the server
        return
    newest = 7 if then == "a new frame" else 6
    assert [e.request.frame_id for e in resent] == [newest]
    first = ledger.match(pb.FrameResult(frame_id=newest, frames_dropped=0))
    dropped = (3, 4, 5, 6) if then == "a new frame" else (3, 4, 5)
    assert [(r.frame_id, r.frames_dropped, r.dropped_frame_ids) for r in first] == [
        (newest, len(dropped), dropped)
    ]
    ledger.source_ended()  # nothing left to restore: the frame dropped was answered for
    assert len(ledger) == 0


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_resumed_latest_only_feed_reads_the_frame_it_sends_first_after_the_break(
    frames: list[np.ndarray], flavour: str
) -> None:
    """The feed reads a frame only once there is room for it: the asyncio feed read one
    ahead, held it through the outage and sent it first, as old as the outage (0.95 s in a
    review), while the sync feed's was read after the break."""
    from convstream.client._feed import AsyncFeed, Ledger, SyncFeed

    data = jpeg(frames[0])

    def source() -> Iterator[Frame]:
        for i in itertools.count(1):
            yield Frame(data, frame_id=i, capture_time=time.time())

    ledger = Ledger(pb.ResultOptions(freshness=pb.FRESHNESS_LATEST_ONLY), Upload(), 1 << 22)
    if flavour == "sync":
        feed = SyncFeed(source(), ledger, max_in_flight=2)
        first = feed.requests()
        sent = [next(first), next(first)]  # as many in flight as allowed; none answered
        await asyncio.sleep(0.5)  # the outage
        broke = time.time()
        resent = next(feed.requests())
        feed.close()
    else:
        async_feed = AsyncFeed(source(), ledger, max_in_flight=2)
        opened = async_feed.requests()
        sent = [await anext(opened), await anext(opened)]
        await asyncio.sleep(0.5)
        broke = time.time()
        resent = await anext(async_feed.requests())
        await async_feed.close()
    assert [r.frame_id for r in sent] == [1, 2] and resent.frame_id == 3
    read = resent.capture_time.ToNanoseconds() / 1e9
    assert read >= broke - 0.05, f"frame 3 was read {broke - read:.2f} s before the break"


KILLED = [
    ("async", "latest_only", None),
    ("sync", "latest_only", None),
    ("async", "bounded_queue", 2),
    ("sync", "lossless", None),
]


@pytest.mark.parametrize(("flavour", "freshness", "queue_size"), KILLED)
async def test_a_stream_across_a_server_killed_answers_or_reports_every_frame(
    frames: list[np.ndarray], flavour: str, freshness: Freshness, queue_size: int | None
) -> None:
    """The server stopped without draining while frames are in flight, and another started
    on its port: under each policy every frame is answered or listed as dropped, once, in
    order, and frames_dropped counts every listed one (lossless: none). A latest_only
    stream listed the drops of its last result before the break a second time."""
    first = Server(Settings(port=0, metrics_port=-1))
    await first.start()
    servers = [first]
    count = 60

    def source() -> Iterator[Frame]:
        for i in range(1, count + 1):
            time.sleep(0.01)  # faster than the server: frames wait in flight
            yield Frame(jpeg(frames[i % 6]), frame_id=i, capture_time=time.time())

    async def kill_and_restart() -> None:
        await first.stop(grace=0)
        await asyncio.sleep(0.5)
        second = Server(Settings(port=first.port, metrics_port=-1))
        await second.start()
        servers.append(second)

    policy = {"freshness": freshness, "queue_size": queue_size, "resume": True}
    try:
        results: list[Result] = []
        if flavour == "async":
            restarted: asyncio.Task[None] | None = None
            async with AsyncClient(address(first)) as client:
                async for result in client.stream(source(), **policy):
                    results.append(result)
                    if len(results) == 3:
                        restarted = asyncio.create_task(kill_and_restart())
            assert restarted is not None
            await restarted
        else:
            three = threading.Event()

            def consume() -> None:
                with Client(address(first)) as client:
                    for result in client.stream(source(), **policy):
                        results.append(result)
                        if len(results) == 3:
                            three.set()

            consumer = asyncio.create_task(asyncio.to_thread(consume))
            assert await asyncio.to_thread(three.wait, 30)
            await kill_and_restart()
            await consumer
    finally:
        for server in servers:
            await server.stop(grace=0)
    answered = [r.frame_id for r in results]
    dropped = [i for r in results for i in r.dropped_frame_ids]
    assert answered == sorted(answered) and answered[-1] == count
    assert sorted(answered + dropped) == list(range(1, count + 1)), (answered, dropped)
    assert results[-1].frames_dropped == len(dropped)
    assert freshness != "lossless" or not dropped
    sequences = [r.sequence for r in results]
    assert sequences != sorted(sequences), "the results should come from two streams"


def test_heatmap_cells_land_where_they_were_computed() -> None:
    # A 900x300 frame letterboxed into 640x384: scaled by 640/900 to 640x213, 85 rows of pad
    # above. The cell at row 23, column 40 covers input (324, 188), i.e. frame (456, 145).
    geometry = cs.Geometry(900, 300, 640, 384, 640 / 900, 0, 85)
    heat = np.zeros((48, 80), np.float32)
    heat[23, 40] = 1.0
    on_frame = cs.heatmap_on_frame(heat, geometry)
    assert on_frame.shape == (300, 900) and on_frame.dtype == np.float32
    y, x = np.unravel_index(int(np.argmax(on_frame)), on_frame.shape)
    cell = 8 / geometry.scale  # a heatmap cell, in frame pixels
    assert abs(x - 456) <= cell and abs(y - 145) <= cell
    peak = Result(frame_id=1, heatmap=heat, geometry=geometry).peak()
    assert peak is not None and abs(peak[0] - 456) <= 1 and abs(peak[1] - 145) <= 1
    heat[2, 2] = 2.0  # hotter, but in the padding above the frame: not the frame's peak
    assert Result(frame_id=1, heatmap=heat, geometry=geometry).peak() == peak
    # any cell's box in the frame: the peak's cell holds the peak, padding cells are empty,
    # and the cells tile the frame
    left, top, right, bottom = geometry.cell_box(row=23, col=40, stride=8)
    assert left <= peak[0] <= right and top <= peak[1] <= bottom
    assert right - left == pytest.approx(cell) and bottom - top == pytest.approx(cell)
    boxes = [geometry.cell_box(r, c, 8) for r in range(48) for c in range(80)]
    assert geometry.cell_box(2, 2, 8)[3] - geometry.cell_box(2, 2, 8)[1] == 0
    area = sum((r - le) * (b - t) for le, t, r, b in boxes)
    assert area == pytest.approx(900 * 300)
    # as a result brings it: the scale travels as a float32 (2/3 as 0.6666666865), and a
    # 960x540 camera's boxes read 107.99999678 for 108 (a WMS integrator's review)
    sent = pb.Geometry(
        frame_width=960, frame_height=540, input_width=640, input_height=384, scale=640 / 960
    )
    sent.pad_top = 12
    received = cs.Geometry.from_proto(pb.Geometry.FromString(sent.SerializeToString()))
    assert received.cell_box(row=7, col=9, stride=8) == (108.0, 66.0, 120.0, 78.0)
    odd = pb.Geometry(frame_width=960, frame_height=540, input_width=640, input_height=384)
    odd.scale = 0.5  # another rule's scale is kept as sent
    assert cs.Geometry.from_proto(odd).scale == 0.5


def test_the_overlay_rings_the_hottest_cell_only_on_a_damaged_frame() -> None:
    geometry = cs.Geometry(640, 384, 640, 384, 1.0, 0, 0)
    heat = np.zeros((48, 80), np.float32)
    heat[30, 60] = 0.13
    image = np.zeros((384, 640, 3), np.uint8)
    rings = {}
    for damaged in (False, True):
        result = Result(
            frame_id=1, score=float(heat.max()), damaged=damaged, heatmap=heat, geometry=geometry
        )
        drawn = cs.draw_overlay(result, image)
        around = drawn[200:300, 430:530]  # the cell at (484, 244) and its surroundings
        rings[damaged] = int((around == 255).all(axis=2).sum())
    assert rings[False] == 0 and rings[True] > 20, rings  # a ring of radius 8, 1 px wide


def test_the_overlay_boxes_each_damaged_area_on_a_frame_twice_its_size() -> None:
    """A region's box is in frame pixels; drawn on an image of another size, it is scaled
    with the picture, and only on a damaged frame."""
    geometry = cs.Geometry(640, 384, 640, 384, 1.0, 0, 0)
    heat = np.zeros((48, 80), np.float32)
    regions = (cs.Region(80, 96, 64, 32, 0.99, 8), cs.Region(400, 240, 16, 16, 0.95, 1))
    image = np.zeros((768, 1280, 3), np.uint8)
    for damaged in (False, True):
        result = Result(
            frame_id=1,
            score=0.99,
            damaged=damaged,
            heatmap=heat,
            geometry=geometry,
            threshold=0.9,
            regions=regions,
        )
        white = (cs.draw_overlay(result, image) == 255).all(axis=2)
        for region in regions:
            left, top, right, bottom = (2 * v for v in region.box)
            edges = [white[top, left:right], white[bottom - 1, left:right]]
            edges += [white[top:bottom, left], white[top:bottom, right - 1]]
            assert all(edge.all() == damaged for edge in edges), (damaged, region)
            assert not white[top + 3 : bottom - 3, left + 3 : right - 3].any()  # outlined


def test_feature_maps_are_drawn_a_tile_a_channel_lined_up_with_the_frame() -> None:
    """Each channel's tile shows where it fires, at the place in the frame: a channel hot in
    one cell is yellow there and dark elsewhere, cropped to the frame (a bright letterbox bar
    neither shows nor dims the rest), after a tile of the frame itself and one of the heatmap."""
    geometry = cs.Geometry(320, 192, 320, 208, 1.0, 0, 8)  # one bar of 8 px above and below
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.0, 0.1, (4, 26, 40)).astype(np.float32)  # stride 8
    maps[:, 0, :] = maps[:, 25, :] = 50.0  # the bars' cells, brighter than anything
    hot = [(1 + 5 * k, 3 + 9 * k) for k in range(4)]  # (row, col) of each channel's cell
    for k, (row, col) in enumerate(hot):
        maps[k, row, col] = 5.0
    frame = rng.integers(0, 256, (192, 320, 3), dtype=np.uint8)
    result = Result(
        frame_id=1,
        score=0.5,
        heatmap=np.zeros((26, 40), np.float32),
        geometry=geometry,
        feature_maps={"stage3": maps},
        frame=cs.Frame(frame),
    )
    drawn = cs.draw_feature_maps(result, "stage3", tile_width=160)
    width, height, gap = 160, 96, 2  # the frame's aspect; 4x4 pixels a cell
    columns = (drawn.shape[1] - gap) // (width + gap)
    rows = -(-6 // columns)  # the frame, the heatmap, 4 channels
    assert drawn.shape[1] == columns * (width + gap) + gap
    top = drawn.shape[0] - rows * (height + gap)  # the first row, under the caption
    assert top > 20  # a caption says what the tiles are

    def tile(k: int) -> np.ndarray:
        y, x = top + (k // columns) * (height + gap), gap + (k % columns) * (width + gap)
        return drawn[y : y + height, x : x + width].astype(int)

    shrunk = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(tile(0)[20:, 60:] - shrunk[20:, 60:]).max() == 0  # past its label
    yellow = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0]
    for k, (row, col) in enumerate(hot):
        picture = tile(2 + k)
        y, x = (row - 1) * 4 + 2, col * 4 + 2  # the bars' row is cropped away
        assert (picture[y, x] == yellow).all(), (k, picture[y, x])
        bright = (np.abs(picture - yellow).sum(axis=2) < 30).sum()
        assert 16 <= bright <= 40, (k, bright)  # that cell alone (and a label's few pixels)
    with pytest.raises(ValueError, match=r"no feature map 'stage1' .*feature_maps=\['stage1'\]"):
        cs.draw_feature_maps(result, "stage1")
    # the damage tile in the overlay's colours, relative to the threshold: a cold heatmap is
    # black, not the blue a full scale painted over all of an intact frame; a cell at the
    # threshold red
    heat = np.zeros((26, 40), np.float32)
    heat[13, 20] = 0.9
    judged = dataclasses.replace(result, heatmap=heat, threshold=0.82)
    drawn = cs.draw_feature_maps(judged, "stage3", tile_width=160).astype(int)
    picture = drawn[top : top + height, gap + width + gap : gap + 2 * width + gap]
    assert (picture[60:, :] == 0).all()  # under the label: black, but for the hot cell
    red = cv2.applyColorMap(np.array([[round(0.875 * 255)]], np.uint8), cv2.COLORMAP_JET)[0, 0]
    assert (picture[(13 - 1) * 4 + 2, 20 * 4 + 2] == red).all()


def test_the_overlays_label_never_covers_the_damage_it_rings() -> None:
    """Damage in the top-left corner lay under the label (and its ring against it): the label
    moves to the first corner clear of the hottest cell."""
    geometry = cs.Geometry(640, 384, 640, 384, 1.0, 0, 0)
    image = np.full((384, 640, 3), 128, np.uint8)
    red = np.array([40, 40, 230])  # the label of a damaged frame

    def labelled(drawn: np.ndarray) -> dict[str, bool]:
        corners = {"top-left": drawn[2, 2], "top-right": drawn[2, -3]}
        return {name: bool((pixel == red).all()) for name, pixel in corners.items()}

    for (row, col), where in (((30, 60), "top-left"), ((1, 2), "top-right")):
        heat = np.zeros((48, 80), np.float32)
        heat[row, col] = 0.99
        result = Result(frame_id=1, score=0.99, damaged=True, heatmap=heat, geometry=geometry)
        drawn = cs.draw_overlay(result, image, alpha=0.0)
        assert labelled(drawn) == {
            "top-left": where == "top-left",
            "top-right": where != "top-left",
        }
        # the ring around the cell at (20, 12) is drawn whole, nothing over it
        if where == "top-right":
            assert (drawn[12, 20 + 8] == 255).all() or (drawn[12 + 8, 20] == 255).all()
        # an intact frame's hottest cell is noise: its label stays put, frame after frame
        drawn = cs.draw_overlay(replace(result, damaged=False), image, alpha=0.0)
        assert (drawn[2, 2] == np.array([60, 180, 60])).all()


def test_an_overlay_colours_the_heatmap_as_the_dashboard_does() -> None:
    """The overlay coloured raw values (yellow about 0.7, intact) where the dashboard colours
    them against the threshold (yellow near it, red over it): the same frame read two ways.
    Both now use heat_colours: red at and over the threshold, nothing a quarter under it."""
    geometry = cs.Geometry(640, 384, 640, 384, 1.0, 0, 0)
    image = np.full((384, 640, 3), 128, np.uint8)
    heat = np.zeros((48, 80), np.float32)
    # 3x3 cells each (one cell alone is blended with its neighbours): over the threshold,
    # just under it, far under it
    heat[9:12, 9:12], heat[9:12, 39:42], heat[9:12, 69:72] = 0.85, 0.80, 0.55
    result = Result(frame_id=1, score=0.85, heatmap=heat, geometry=geometry, threshold=0.82)
    drawn = cs.draw_overlay(result, image, alpha=1.0, label=False).astype(int)
    over, near, far = (drawn[10 * 8 + 4, col * 8 + 4] for col in (10, 40, 70))
    assert over[2] > 200 and over[:2].max() < 60, over  # red (BGR)
    assert near[1] > 200 and near[2] > 150 and near[0] < 100, near  # yellow
    assert (far == 128).all(), far  # under threshold - 0.25: untouched
    # without a threshold (a server older than the field): the raw values, blue 0 to red 1
    raw = cs.draw_overlay(replace(result, threshold=math.nan), image, alpha=1.0, label=False)
    assert tuple(raw[10 * 8 + 4, 70 * 8 + 4]) != (128, 128, 128)


def test_a_results_threshold_and_light_are_told_from_a_server_that_sent_none() -> None:
    """A threshold of 0 (everything damaged) read as "not sent" and coloured the overlay by
    raw values; an older server's result read contrast 0.0 and blank false together."""
    sent = Result.from_proto(pb.FrameResult(score=0.5, threshold=0.0, brightness=0.0, contrast=0.0))
    assert (sent.threshold, sent.brightness, sent.contrast) == (0.0, 0.0, 0.0)
    older = Result.from_proto(pb.FrameResult(score=0.5))
    assert all(math.isnan(v) for v in (older.threshold, older.brightness, older.contrast))
    assert Result.from_proto(pb.FrameResult(score=0.5, published=True)).published
    assert not older.published


def test_the_pictures_and_arrays_the_library_returns_say_their_dtype() -> None:
    """draw_overlay, to_numpy and the rest returned a bare np.ndarray: under mypy --strict an
    integrator's own typed code could not tell pixels from probabilities."""
    import typing

    import numpy.typing as npt

    from convstream.client import draw_feature_maps, draw_overlay, to_numpy
    from convstream.client.overlay import analysed_image, heatmap_on_frame

    pixels, floats = npt.NDArray[np.uint8], npt.NDArray[np.float32]
    for function, returned in [
        (draw_overlay, pixels),
        (draw_feature_maps, pixels),
        (analysed_image, pixels),
        (Frame.pixels, pixels),
        (to_numpy, floats),
        (heatmap_on_frame, floats),
    ]:
        assert typing.get_type_hints(function)["return"] == returned, function


def test_the_overlays_label_gives_the_score_as_the_commands_print_it() -> None:
    # "1.00 DAMAGED" stood over a frame the table beside it listed as 0.9964
    from convstream.client.overlay import label_text

    assert label_text(Result(frame_id=1, score=0.99646, damaged=True)) == "0.9964 DAMAGED"
    assert label_text(Result(frame_id=2, score=0.82149, damaged=False)) == "0.8214"
    # a picture of next to nothing (a capped lens): its low score is no all-clear, nor is
    # its label green, as an intact frame's is (amber, as the dashboard's blank badge)
    assert label_text(Result(frame_id=3, score=0.0053, blank=True)) == "0.0053 BLANK"
    # a frame that failed says how in words, not by the error's class ("error: InvalidFrame")
    failed = Result(frame_id=5, error=ServerUnavailable("shutting down"))
    assert label_text(failed) == "error: server unavailable"
    from convstream.client.overlay import _label

    corners = {}
    for name, result in (
        ("intact", Result(frame_id=4, score=0.0053)),
        ("blank", Result(frame_id=5, score=0.0053, blank=True)),
    ):
        canvas = np.zeros((360, 640, 3), np.uint8)
        _label(canvas, result, 640, 360)
        corners[name] = tuple(int(v) for v in canvas[1, 1])  # the label's box, top left
    assert corners["intact"] == (60, 180, 60) and corners["blank"] == (34, 153, 210), corners


def test_a_file_name_that_is_not_utf8_is_refused_not_a_crash(tmp_path: Path, video: Path) -> None:
    """A video or an overlay named in another encoding ("v\xe9.avi", Latin-1) reached OpenCV
    with surrogates in its name, and OpenCV crashed the process (exit 139, not a word)."""
    from convstream.client._report import _file_name, printable

    latin = Path(os.fsdecode(bytes(tmp_path) + b"/v\xe9.avi"))
    latin.write_bytes(video.read_bytes())
    with pytest.raises(cs.SourceError, match="OpenCV opens only file names that are UTF-8"):
        Video(latin)
    result = Result(frame_id=3, score=0.5, frame=Frame(b"", name=str(latin)))
    with pytest.raises(ValueError, match="its name is not UTF-8"):
        cs.save_overlay(latin.with_suffix(".png"), result)
    assert _file_name(result) == "000003-v?.png"  # what --save-overlays writes instead
    # nor does a name's escape sequence reach the terminal, in a table row
    assert printable("a\x1b[31mRED\nb.jpg") == "a\\x1b[31mRED\\nb.jpg"


@pytest.mark.parametrize("width", [64, 90, 640])
def test_the_overlays_label_fits_the_frames_width(width: int) -> None:
    """A 64-pixel-wide crop cut "0.9964 DAMAGED" to "0.99": the label now fits its frame,
    on two lines and in smaller type where it must, one line where it fits."""
    from convstream.client.overlay import _label

    result = Result(frame_id=1, score=0.99646, damaged=True)
    # drawn for a frame `width` wide on a wider canvas: what lands past `width` was cut
    canvas = np.zeros((2000, 800, 3), np.uint8)
    _label(canvas, result, width, 2000)
    white = (canvas == 255).all(axis=2)
    columns = np.flatnonzero(white.any(axis=0))
    rows = np.flatnonzero(white.any(axis=1))
    assert columns.size and columns.max() < width, (width, columns.max())
    lines = 1 if width == 640 else 2
    height = rows.max() - rows.min() + 1
    assert (height < 30) if lines == 1 else (height > 12), (width, height)


async def test_overlays_written_and_readable(
    server: Server, frames: list[np.ndarray], tmp_path: Path
) -> None:
    gray = cv2.cvtColor(frames[1], cv2.COLOR_BGR2GRAY)
    async with AsyncClient(address(server)) as client:
        results = [r async for r in client.stream([frames[0], frames[6], frames[7], gray])]
    for result in results:
        assert result.frame is not None
        original = result.frame.pixels()
        path = cs.save_overlay(tmp_path / "overlays" / f"{result.frame_id}.png", result)
        image = cv2.imread(str(path))
        assert image is not None and image.shape == original.shape
        assert not np.array_equal(image, original)
    drawn = cs.draw_overlay(results[0], frames[0], label=False)
    assert drawn.shape == frames[0].shape and drawn.dtype == np.uint8
    # An error result whose frame is no picture is drawn too: a card saying the error, so a
    # loop saving every overlay does not stop at the first bad frame.
    async with AsyncClient(address(server)) as client:
        bad = [r async for r in client.stream([frames[0], b"\xff\xd8\xffjunk"])][1]
    assert bad.error is not None
    card = cv2.imread(str(cs.save_overlay(tmp_path / "bad.png", bad)))
    assert card is not None and card.shape == (360, 640, 3)
    assert (card[:3, :3] == 0).all() and (card[-20:, -20:] == 96).all()  # the label, grey
    # So is one that failed here, its file not there (its frame holds no bytes): OpenCV's
    # assertion on an empty buffer ended such a loop (an integrator's review).
    async with AsyncClient(address(server)) as client:
        (missing,) = [r async for r in client.stream([tmp_path / "missing.jpg"])]
    assert missing.error is not None and missing.error.code is None
    card = cv2.imread(str(cs.save_overlay(tmp_path / "missing.png", missing)))
    assert card is not None and card.shape == (360, 640, 3)
    assert missing.frame is not None
    with pytest.raises(cs.errors.SourceError, match="0 bytes"):
        missing.frame.pixels()


async def test_a_failed_frame_has_no_score_to_mistake_for_intact(
    server: Server, frames: list[np.ndarray], tmp_path: Path
) -> None:
    """A frame that failed, on the server (not a JPEG) or here (no such file), scored 0.0:
    a loop that stored scores without looking at ``ok`` stored a confident "intact", and a
    mean of them came out low. Its score is now NaN, which nothing mistakes for a score."""
    async with AsyncClient(address(server)) as client:
        results = [
            r
            async for r in client.stream(
                [frames[0], b"\xff\xd8\xffjunk", tmp_path / "missing.jpg", frames[1]]
            )
        ]
    good, server_side, client_side, after = results
    assert server_side.error is not None and server_side.error.code is not None
    assert client_side.error is not None and client_side.error.code is None  # never sent
    for failed in (server_side, client_side):
        assert not failed.ok and not failed.damaged and math.isnan(failed.score), failed
    for ok in (good, after):
        assert ok.ok and 0.0 <= ok.score <= 1.0
    assert math.isnan(float(np.mean([r.score for r in results])))


async def test_exif_orientation_is_applied_alike_by_server_and_overlay(
    server: Server, frames: list[np.ndarray], tmp_path: Path
) -> None:
    """A phone's portrait photo is analysed as a viewer shows it, turned as its EXIF
    orientation says (it was analysed as stored, lying on its side, with the peak in stored
    pixels), and the overlay is drawn on the same turned picture."""
    image = frames[6]  # 480x640
    rotated = with_exif_orientation(jpeg(image), 6)  # "show turned 90 degrees clockwise"
    shown = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    async with AsyncClient(address(server)) as client:
        plain = await client.analyze(shown)
        turned = await client.analyze(rotated)
    g = turned.geometry
    assert g is not None and (g.frame_width, g.frame_height) == (480, 640)
    assert turned.peak() == plain.peak() and abs(turned.score - plain.score) < 0.02
    assert turned.frame is not None and turned.frame.pixels().shape == shown.shape
    assert np.abs(turned.frame.pixels().astype(int) - shown).mean() < 4  # JPEG's loss only
    drawn = cs.draw_overlay(turned, label=False)
    assert drawn.shape == shown.shape


def test_reprs_are_short_and_useful(frames: list[np.ndarray]) -> None:
    frame = Frame(jpeg(frames[0]), frame_id=3, name="a.jpg")
    assert repr(frame).startswith("Frame(name='a.jpg', frame_id=3, image=<")
    bad = Result(frame_id=3, frame=frame, error=InvalidFrame("truncated JPEG"))
    assert repr(bad) == "<Result frame_id=3 name='a.jpg' error=InvalidFrame('truncated JPEG')>"
    good = Result(frame_id=4, score=0.25, heatmap=np.zeros((48, 80), np.float32))
    assert repr(good) == "<Result frame_id=4 score=0.250 damaged=False heatmap=(48, 80)>"


async def test_stream_of_one_frame_or_a_video_says_what_to_pass(tmp_path: Path) -> None:
    """A Video, a path, bytes or an array given as the frames: iterated, a path went a
    character at a time and an array a row at a time, and a Video was "not iterable"."""
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    image = scene(5, 48, 64)
    with Video(clip) as video:
        cases = [
            (video, "pass video.frames(), not the Video"),
            (str(clip), "got one path (" + str(clip) + "): for a video, pass Video(path).frames()"),
            (clip, "for one image, call analyze(path)"),
            # not read_images, which ends the stream at the first file that is no image
            (tmp_path, "for a folder, image_files([folder]) (a file in it that is no image"),
            (jpeg(image), "got one bytes"),
            (image, "got one ndarray"),
            (Frame(image), "got one Frame"),
        ]
        with Client("127.0.0.1:9") as client:  # nothing is sent: refused before any call
            for frames, says in cases:
                with pytest.raises(TypeError, match=re.escape(says)):
                    client.stream(frames)  # type: ignore[arg-type]
        async with AsyncClient("127.0.0.1:9") as aclient:
            for frames, says in cases:
                with pytest.raises(TypeError, match=re.escape(says)):
                    await anext(aclient.stream(frames))  # type: ignore[arg-type]


async def test_a_stack_of_frames_is_streamed_frame_by_frame(server: Server) -> None:
    """An (N, H, W, 3) array is N frames, as it always iterated: not refused as one frame."""
    stack = np.stack([scene(k, 96, 128) for k in range(3)])

    def sync() -> list[Result]:
        with Client(address(server)) as client:
            return list(client.stream(stack))

    async with AsyncClient(address(server)) as client:
        by_async = [r async for r in client.stream(stack)]
    for results in (await asyncio.to_thread(sync), by_async):
        assert [r.frame_id for r in results] == [1, 2, 3] and all(r.ok for r in results)


def _scored(source: str, score: float, at: float) -> Result:
    return Result(frame_id=int(at * 10), source=source, score=score, threshold=0.9, capture_time=at)


def test_alerts_are_one_an_episode_as_the_dashboards() -> None:
    """A WMS integrator deduplicated damaged frames by hand (a frame a second of one box for
    as long as it passed): alerts() raises one an episode, by the dashboard's own rule. A
    single frame's spike is passed over (frames_over=2); a dip of a frame or two does not
    end an episode; one beginning inside the cooldown is held and raised after it, saying
    how many it stands for; each camera (source) has its own."""
    scores = [0.1, 0.95, 0.2, 0.3]  # a spike: no alert
    scores += [0.92, 0.97, 0.5, 0.99, 0.93]  # an episode, a dip inside it, a better frame
    scores += [0.1] * 10  # 2 s under: it ends
    scores += [0.95, 0.96, 0.2]  # another, inside the 5 s cooldown: held
    scores += [0.1] * 20
    results = [_scored("dock-3", s, 1000 + k * 0.2) for k, s in enumerate(scores)]
    results.insert(6, _scored("gate", 0.98, 1001.0))  # another camera, one frame: nothing
    results.insert(7, _scored("gate", 0.99, 1001.1))  # its second: its own alert
    seen: list[float] = []  # when each result went in: when each alert came out

    def fed() -> Iterator[Result]:
        for result in results:
            seen.append(result.capture_time or 0.0)
            yield result

    got, at = [], []
    for alert in cs.alerts(fed(), cooldown_s=5.0):
        got.append(alert)
        at.append(seen[-1])
    said = [(a.kind, a.result.source, round(a.score, 2), a.episodes) for a in got]
    assert said == [
        ("raise", "dock-3", 0.97, 1),  # the streak's best frame begins it
        ("raise", "gate", 0.99, 1),
        ("improve", "dock-3", 0.99, 1),
        ("raise", "dock-3", 0.96, 1),  # held through the cooldown, raised after it
    ], said
    assert at[-1] >= at[0] + 5.0 and got[-1].result.capture_time == 1004.0  # its best frame
    # failed frames are passed over, and a bad argument is said at once
    failed = Result(frame_id=1, source="dock-3", error=cs.InvalidFrame("no"))
    assert list(cs.alerts([failed])) == []
    with pytest.raises(ValueError, match="frames_over >= 1"):
        list(cs.alerts([], frames_over=0))


async def test_alerts_of_a_real_stream_raise_once_for_a_damaged_package(server: Server) -> None:
    """The same through the server: 4 frames of one damaged render between intact ones,
    0.2 s apart in their capture times, are one alert, whose result says where (regions)."""
    damaged = render_scene(7_002, 720, 1280, damaged=True).image  # scored 0.98 (above)
    intact = render_scene(7_001, 720, 1280, damaged=False).image
    frames = [
        cs.Frame(image, source="belt", capture_time=2_000_000_000 + k * 0.2)
        for k, image in enumerate([intact] * 3 + [damaged] * 4 + [intact] * 12)
    ]
    async with AsyncClient(address(server)) as client:
        got = [a async for a in cs.alerts_async(client.stream(frames), cooldown_s=60)]
    assert [(a.kind, a.episodes) for a in got] == [("raise", 1)], got
    assert got[0].result.damaged and got[0].result.regions and got[0].result.frame_id in range(4, 8)
