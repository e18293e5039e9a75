"""The gRPC service against a real server on a loopback port with the shipped model."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.request import urlopen

import cv2
import grpc
import numpy as np
import pytest
from conftest import jpeg, png, scene
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from convstream.client import AsyncClient, InvalidFrame, Limits, Upload
from convstream.client.tensors import to_numpy
from convstream.model import DamageModel
from convstream.model.scenes import render_scene
from convstream.server import Server, Settings
from convstream.server.app import server_version
from convstream.server.config import MIN_MESSAGE_BYTES
from convstream.server.metrics import MAX_SOURCES, Metrics
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


async def requests(frames: Iterable[pb.FrameRequest]) -> AsyncIterator[pb.FrameRequest]:
    for frame in frames:
        yield frame


async def test_model_info_reports_what_runs(stub: pb_grpc.ConvstreamStub) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    model = DamageModel(provider="cpu")
    assert info.sha256 == model.sha256
    assert info.execution_provider == "CPUExecutionProvider"
    assert [(s.name, s.channels, s.stride) for s in info.stages] == [
        ("stage1", 16, 2),
        ("stage2", 32, 4),
        ("stage3", 64, 8),
        ("stage4", 64, 8),
    ]
    assert info.threshold == pytest.approx(model.threshold)
    assert (info.input_sizes[0].height, info.input_sizes[0].width) == (384, 640)
    assert (info.max_frame_pixels, info.max_frame_side) == (40_000_000, 16384)
    assert (info.stream_queue_size, info.max_stream_queue_size) == (4, 256)
    assert info.stream_idle_timeout_s == 300.0
    # the call limits, which a client could not read (the watch queue's default was named in
    # the proto, and nowhere to be found)
    settings = Settings()
    limits = (info.max_streams, info.max_analyze_calls, info.max_watchers)
    assert limits == (settings.max_streams, settings.max_analyze_calls, settings.max_watchers)
    assert info.watcher_queue_size == settings.watcher_queue_size > 0
    # the room all streams share, which four streams of the largest queue fill: a fifth was
    # refused with no way to foresee it
    assert info.max_queued_frames == settings.max_queued_frames == 4 * info.max_stream_queue_size
    # and the byte limits, the shortest side and the cap on requests without a frame, which
    # only the docs said (an integrator's review from the proto alone)
    assert (info.max_held_bytes, info.max_watcher_bytes) == (1 << 30, 256 << 20)
    assert (info.min_frame_side, info.max_small_request_bytes) == (32, 64 * 1024)
    # the largest queue it says one stream may ask for is taken, and one more is refused;
    # each result says the policy in force (a refused one's: the stream's default)
    frame = jpeg(scene(2, 240, 320))
    in_force = (
        (info.max_stream_queue_size, 0, pb.FRESHNESS_BOUNDED_QUEUE, info.max_stream_queue_size),
        (info.max_stream_queue_size + 1, 3, pb.FRESHNESS_LOSSLESS, info.stream_queue_size),
    )
    for size, code, freshness, queue in in_force:
        options = pb.ResultOptions(freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=size)
        sent = [pb.FrameRequest(frame_id=1, encoded=frame, options=options)]
        results = [r async for r in stub.StreamFrames(requests(sent))]
        assert results[0].status.code == code, (size, results[0].status.message)
        assert (results[0].freshness, results[0].queue_size) == (freshness, queue)
    analysed = await stub.Analyze(pb.FrameRequest(frame_id=1, encoded=frame))
    assert (analysed.freshness, analysed.queue_size) == (0, 0)  # no stream, no policy


async def test_a_jpeg_can_score_as_its_pixels_do_sent_raw() -> None:
    """Reduced JPEG decoding is libjpeg's downscale, not the resize raw pixels get; turned
    off, a frame scores the same however it is sent."""
    frames = [render_scene(seed, 720, 1280).image for seed in (2, 3, 5)]
    scores: dict[bool, list[tuple[float, float]]] = {}
    for reduced in (True, False):
        server = Server(Settings(port=0, metrics_port=-1, cameras=(), reduced_jpeg_decode=reduced))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.ConvstreamStub(channel)
                scores[reduced] = []
                for frame in frames:
                    data = jpeg(frame, 95)
                    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    raw = pb.RawImage(
                        data=pixels.tobytes(), width=1280, height=720, format=pb.PIXEL_FORMAT_BGR8
                    )
                    as_jpeg = await stub.Analyze(pb.FrameRequest(encoded=data))
                    as_raw = await stub.Analyze(pb.FrameRequest(raw=raw))
                    scores[reduced].append((as_jpeg.score, as_raw.score))
        finally:
            await server.stop(grace=0)
    assert all(a == pytest.approx(b, abs=1e-6) for a, b in scores[False]), scores
    assert any(abs(a - b) > 1e-4 for a, b in scores[True]), scores  # what the setting is for


async def test_a_threshold_in_the_config_decides_damaged_and_a_reload_changes_it() -> None:
    settings = Settings(port=0, metrics_port=-1, cameras=(), threshold=0.0)
    server = Server(settings)
    await server.start()
    frame = pb.FrameRequest(encoded=jpeg(scene(12, 384, 640)))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            own = DamageModel(provider="cpu").threshold
            for threshold, expected in [(0.0, 0.0), (1.0, 1.0), (None, own)]:
                if threshold != 0.0:
                    await server.reload(settings.model_copy(update={"threshold": threshold}))
                info = await stub.GetModelInfo(pb.GetModelInfoRequest())
                assert info.threshold == pytest.approx(expected)
                assert info.threshold_source == ("model" if threshold is None else "setting")
                result = await stub.Analyze(frame)
                assert 0.0 < result.score < 1.0
                assert result.damaged == (result.score >= expected)
                # said beside it: what overlays colour the heatmap by
                assert result.threshold == pytest.approx(expected)
                # and on /metrics, for dashboards and alerts that compare with it
                assert server.metrics.registry.get_sample_value(
                    "convstream_threshold"
                ) == pytest.approx(expected)
            # A threshold the score equals as float32, as the wire carries both (and clients
            # compare them), is met: the server compared its float64 and said not damaged.
            just_over = result.score * (1 + 2**-26)  # rounds to the same float32
            assert np.float32(just_over) == np.float32(result.score) and just_over > result.score
            await server.reload(settings.model_copy(update={"threshold": just_over}))
            tie = await stub.Analyze(frame)
            assert tie.score == result.score and tie.threshold == result.score
            assert tie.damaged
    finally:
        await server.stop(grace=0)


FRAMES = [
    ("jpeg 1280x720", lambda: pb.FrameRequest(encoded=jpeg(scene(1, 720, 1280))), (384, 640)),
    ("jpeg 1920x1080", lambda: pb.FrameRequest(encoded=jpeg(scene(2, 1080, 1920))), (384, 640)),
    ("png 640x480", lambda: pb.FrameRequest(encoded=png(scene(3, 480, 640))), (480, 640)),
    (
        "raw bgr 300x300",
        lambda: pb.FrameRequest(
            raw=pb.RawImage(
                width=300,
                height=300,
                format=pb.PIXEL_FORMAT_BGR8,
                data=scene(4, 300, 300).tobytes(),
            )
        ),
        (384, 384),
    ),
    (
        "raw gray 640x360",
        lambda: pb.FrameRequest(
            raw=pb.RawImage(
                width=640,
                height=360,
                format=pb.PIXEL_FORMAT_GRAY8,
                data=cv2.cvtColor(scene(5, 360, 640), cv2.COLOR_BGR2GRAY).tobytes(),
            )
        ),
        (384, 640),
    ),
]


@pytest.mark.parametrize(("name", "make", "input_hw"), FRAMES, ids=[f[0] for f in FRAMES])
async def test_analyze_formats_and_sizes(
    stub: pb_grpc.ConvstreamStub, name: str, make: object, input_hw: tuple[int, int]
) -> None:
    request = make()  # type: ignore[operator]
    request.frame_id = 42
    request.options.feature_maps[:] = ["stage1", "stage3"]
    result = await stub.Analyze(request)
    h, w = input_hw
    assert result.frame_id == 42 and result.status.code == 0
    assert (result.geometry.input_height, result.geometry.input_width) == input_hw
    assert 0.0 <= result.score <= 1.0
    assert result.damaged == (
        result.score >= (await stub.GetModelInfo(pb.GetModelInfoRequest())).threshold
    )
    heatmap = to_numpy(result.heatmap)
    assert heatmap.shape == (1, h // 8, w // 8)
    assert heatmap.max() == pytest.approx(result.score, abs=1e-3)  # float16 on the wire
    maps = {t.name: to_numpy(t) for t in result.feature_maps}
    assert maps["stage1"].shape == (16, h // 2, w // 2)
    assert maps["stage3"].shape == (64, h // 8, w // 8)
    assert (
        result.timings.inference_ms > 0 and result.timings.total_ms >= result.timings.inference_ms
    )


async def test_the_score_is_the_frames_not_the_letterbox_bars(stub: pb_grpc.ConvstreamStub) -> None:
    # A flat, wide strip letterboxed into 384x640 is mostly grey bars; the model's own score
    # output is its whole input's hottest cell, here one of only bars at the input's edge
    # (0.0167 against the strip's 0.0025 with the model of 2026-12-07, for a strip of the
    # bars' own grey; 0.0108 against 0.0063 for a lighter one with the model before). The
    # result's score is the frame's.
    frame = np.full((100, 640, 3), 114, np.uint8)
    raw = pb.RawImage(width=640, height=100, format=pb.PIXEL_FORMAT_BGR8, data=frame.tobytes())
    result = await stub.Analyze(pb.FrameRequest(raw=raw))
    geometry = result.geometry
    heat = to_numpy(result.heatmap)[0]
    rows = range(geometry.pad_top // 8, -(-(geometry.pad_top + 100) // 8))
    bars = np.delete(heat, rows, axis=0).max()
    assert bars > heat[rows.start : rows.stop].max() + 1e-3  # the case this test is about
    assert result.score == pytest.approx(float(heat[rows.start : rows.stop].max()), abs=1e-3)
    assert result.score == result.peak.value and result.peak.row in rows
    # and ListCameras' last_score (the camera table, the dashboard's first score) says the same
    options = pb.ResultOptions(publish=True)
    stream = stub.StreamFrames()  # kept open: a published stream is listed while it lasts
    await stream.write(pb.FrameRequest(frame_id=1, source="strip", raw=raw, options=options))
    published = await stream.read()
    assert published.status.code == 0 and published.score == result.score
    listed = await stub.ListCameras(pb.ListCamerasRequest())
    status = {c.id: c for c in listed.cameras}["strip"]
    assert status.frames_analysed == 1 and status.last_score == pytest.approx(result.score)
    await stream.done_writing()


async def test_a_frame_that_shows_next_to_nothing_is_said_blank(
    server: Server, stub: pb_grpc.ConvstreamStub
) -> None:
    """A covered lens or a black frame scored 0.005, "intact", with nothing to tell it from a
    good frame of an empty belt. Its result says blank, as do the camera list and a counter;
    the letterbox's grey bars do not count as something to see."""
    black = np.zeros((100, 640, 3), np.uint8)  # a wide strip: mostly bars in a 384x640 input
    green = np.zeros((360, 640, 3), np.uint8)
    green[..., 1] = 135  # a decoder's green frame
    scenery = scene(13, 360, 640)
    slats = np.zeros((384, 640, 3), np.uint8)
    slats[:, ::4] = slats[:, 1::4] = 200
    frames = {
        "black JPEG": pb.FrameRequest(encoded=jpeg(black)),
        "grey PNG": pb.FrameRequest(encoded=png(np.full((480, 640, 3), 128, np.uint8))),
        "green raw": pb.FrameRequest(
            raw=pb.RawImage(
                width=640, height=360, format=pb.PIXEL_FORMAT_BGR8, data=green.tobytes()
            )
        ),
        "a scene": pb.FrameRequest(encoded=jpeg(scenery)),
        "a scene at half the light": pb.FrameRequest(encoded=jpeg(scenery // 2)),
        # detail finer than the 8x8 samples, which read it as flat: a mesh belt's slats
        "slats 4 pixels apart": pb.FrameRequest(encoded=png(slats)),
    }
    options = pb.ResultOptions(publish=True)
    stream = stub.StreamFrames()  # kept open: a published stream is listed while it lasts
    seen = {}
    for k, (name, request) in enumerate(frames.items()):
        request.frame_id, request.source = k + 1, "dock-9"
        request.options.CopyFrom(options)
        await stream.write(request)
        result = await stream.read()
        assert result.status.code == 0, result.status
        seen[name] = result
        listed = await stub.ListCameras(pb.ListCamerasRequest())
        assert {c.id: c for c in listed.cameras}["dock-9"].last_blank == result.blank, name
    await stream.done_writing()
    blank = {name for name, result in seen.items() if result.blank}
    assert blank == {"black JPEG", "grey PNG", "green raw"}, {
        name: (r.brightness, r.contrast) for name, r in seen.items()
    }
    assert all(seen[name].contrast < 2 for name in blank)
    assert seen["a scene"].contrast > 2 * seen["a scene at half the light"].contrast > 4
    assert seen["green raw"].brightness == pytest.approx(0.587 * 135, abs=1)  # luma of green
    assert seen["black JPEG"].brightness < 1 and seen["black JPEG"].score < 0.5
    samples = await asyncio.to_thread(scrape, server.metrics_port)
    assert samples[("convstream_blank_frames_total", (("source", "dock-9"),))] == 3.0
    assert samples[("convstream_frames_total", (("outcome", "ok"), ("source", "dock-9")))] == 6.0
    assert seen["slats 4 pixels apart"].contrast < 2  # what the samples see of them


async def test_served_outputs_equal_the_model_run_directly(stub: pb_grpc.ConvstreamStub) -> None:
    # A raw frame already at an input size is not resized, so the server must give exactly
    # what onnxruntime gives for those pixels.
    frame = scene(7, 384, 640, damaged=True)
    request = pb.FrameRequest(
        raw=pb.RawImage(width=640, height=384, format=pb.PIXEL_FORMAT_BGR8, data=frame.tobytes()),
        options=pb.ResultOptions(feature_maps=["stage4"], encoding=pb.TENSOR_ENCODING_FLOAT32),
    )
    result = await stub.Analyze(request)
    direct = DamageModel(provider="cpu").run(frame[None])
    assert result.score == pytest.approx(float(direct["score"][0]), abs=1e-5)
    np.testing.assert_allclose(to_numpy(result.heatmap), direct["heatmap"][0], atol=1e-5)
    np.testing.assert_allclose(to_numpy(result.feature_maps[0]), direct["stage4"][0], atol=1e-4)


async def test_encodings_shrink_the_payload_and_keep_the_values(
    stub: pb_grpc.ConvstreamStub,
) -> None:
    data = jpeg(scene(8, 720, 1280))
    results = {}
    for enc in (pb.TENSOR_ENCODING_FLOAT32, pb.TENSOR_ENCODING_FLOAT16, pb.TENSOR_ENCODING_UINT8):
        options = pb.ResultOptions(feature_maps=["stage3"], encoding=enc)
        results[enc] = await stub.Analyze(pb.FrameRequest(encoded=data, options=options))
    f32, f16, u8 = (results[e].feature_maps[0] for e in sorted(results))
    assert len(f16.data) * 2 == len(f32.data) and len(u8.data) * 4 == len(f32.data)
    ref = to_numpy(f32)
    assert np.abs(to_numpy(f16) - ref).max() <= 1e-2 * max(1.0, float(ref.max()))
    assert np.abs(to_numpy(u8) - ref).max() <= u8.scale / 2 + 1e-6
    # The heatmap follows, except that uint8 maps bring it in float16: quantised, its hottest
    # cells tie and the peak moves.
    heat = {e: results[e].heatmap for e in results}
    assert heat[pb.TENSOR_ENCODING_FLOAT32].encoding == pb.TENSOR_ENCODING_FLOAT32
    assert heat[pb.TENSOR_ENCODING_FLOAT16].encoding == pb.TENSOR_ENCODING_FLOAT16
    assert heat[pb.TENSOR_ENCODING_UINT8].encoding == pb.TENSOR_ENCODING_FLOAT16
    exact = to_numpy(heat[pb.TENSOR_ENCODING_FLOAT32])
    np.testing.assert_allclose(to_numpy(heat[pb.TENSOR_ENCODING_UINT8]), exact, atol=1e-3)


async def test_bad_frames_mid_stream_get_errors_and_the_stream_goes_on(
    stub: pb_grpc.ConvstreamStub,
) -> None:
    good = jpeg(scene(9, 480, 640))
    frames = [
        pb.FrameRequest(frame_id=1, encoded=good),
        pb.FrameRequest(frame_id=2, encoded=good[: len(good) // 3]),
        pb.FrameRequest(frame_id=3, encoded=b"GIF89a" + b"\x00" * 100),
        pb.FrameRequest(
            frame_id=4,
            raw=pb.RawImage(width=40, height=40, format=pb.PIXEL_FORMAT_BGR8, data=b"\x00" * 4799),
        ),
        pb.FrameRequest(
            frame_id=5, encoded=good, options=pb.ResultOptions(feature_maps=["stage9"])
        ),
        pb.FrameRequest(frame_id=6),
        # milliseconds put in the seconds field, and a negative fraction
        pb.FrameRequest(
            frame_id=7, encoded=good, capture_time=Timestamp(seconds=int(time.time() * 1000))
        ),
        pb.FrameRequest(frame_id=8, encoded=good, capture_time=Timestamp(seconds=1, nanos=-5)),
        pb.FrameRequest(frame_id=9, encoded=good),
        # a camera's uptime sent as the time: every frame_age_ms was 56 years
        pb.FrameRequest(frame_id=10, encoded=good, capture_time=Timestamp(seconds=12345)),
    ]
    results = [r async for r in stub.StreamFrames(requests(frames))]
    assert [r.frame_id for r in results] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [r.sequence for r in results] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    codes = [r.status.code for r in results]
    assert codes == [0, *[INVALID] * 7, 0, INVALID]
    messages = [r.status.message for r in results]
    assert "truncated JPEG" in messages[1]
    assert "expected JPEG" in messages[2] and "47 49 46 38" in messages[2]
    assert "needs 4800 bytes for 40x40 BGR8, got 4799" in messages[3]
    assert "stage9" in messages[4] and "stage1" in messages[4]
    assert "no image" in messages[5]
    assert "capture_time must be seconds" in messages[6] and "milliseconds" in messages[6]
    assert "nanos -5" in messages[7] and "fraction of a second" in messages[7]
    assert "seconds 12345" in messages[9] and "a camera's uptime" in messages[9]
    assert results[8].score == pytest.approx(results[0].score)
    assert results[8].frames_dropped == 0


async def test_stream_options_stick_until_changed(stub: pb_grpc.ConvstreamStub) -> None:
    data = jpeg(scene(10, 384, 640))
    frames = [
        pb.FrameRequest(
            frame_id=1,
            encoded=data,
            options=pb.ResultOptions(feature_maps=["stage2"], include_heatmap=False),
        ),
        pb.FrameRequest(frame_id=2, encoded=data),
        pb.FrameRequest(frame_id=3, encoded=data, options=pb.ResultOptions()),
    ]
    r1, r2, r3 = [r async for r in stub.StreamFrames(requests(frames))]
    assert [t.name for t in r1.feature_maps] == ["stage2"] and not r1.HasField("heatmap")
    assert [t.name for t in r2.feature_maps] == ["stage2"] and not r2.HasField("heatmap")
    assert not r3.feature_maps and r3.HasField("heatmap")


async def test_later_frames_cannot_change_the_stream_policy_silently(
    server: Server, stub: pb_grpc.ConvstreamStub
) -> None:
    """The policy and queue come from a stream's first accepted options; a later frame that
    asks for others, or for values no stream could have, is refused alone, and a later frame
    may still publish the stream."""
    data = jpeg(scene(12, 384, 640))
    queued = pb.ResultOptions(freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=4)
    frames = [
        pb.FrameRequest(frame_id=1, encoded=data, options=queued),
        pb.FrameRequest(
            frame_id=2,
            encoded=data,
            options=pb.ResultOptions(freshness=pb.FRESHNESS_LATEST_ONLY),
        ),
        pb.FrameRequest(frame_id=3, encoded=data, options=pb.ResultOptions(freshness=42)),  # type: ignore[arg-type]
        pb.FrameRequest(frame_id=4, encoded=data, options=pb.ResultOptions(queue_size=8)),
        pb.FrameRequest(frame_id=5, encoded=data, options=pb.ResultOptions(queue_size=5000)),
        # the same policy again, and new maps: accepted
        pb.FrameRequest(
            frame_id=6,
            encoded=data,
            options=pb.ResultOptions(
                freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=4, feature_maps=["stage3"]
            ),
        ),
        pb.FrameRequest(frame_id=7, encoded=data),
        pb.FrameRequest(
            frame_id=8,
            source="late-publisher",
            encoded=data,
            options=pb.ResultOptions(publish=True, feature_maps=["stage3"]),
        ),
    ]
    call = stub.StreamFrames()
    results = []
    for frame in frames:
        await call.write(frame)
        results.append(await call.read())
    assert [r.frame_id for r in results] == [1, 2, 3, 4, 5, 6, 7, 8]
    codes = [r.status.code for r in results]
    assert codes == [0, INVALID, INVALID, INVALID, INVALID, 0, 0, 0]
    messages = [r.status.message for r in results]
    assert "freshness is set once per stream" in messages[1]
    assert "FRESHNESS_BOUNDED_QUEUE" in messages[1] and "FRESHNESS_LATEST_ONLY" in messages[1]
    assert "unknown freshness policy 42" in messages[2]
    assert (
        "queue_size is set once per stream" in messages[3] and "lets 4 frames wait" in messages[3]
    )
    assert "queue_size must be 0" in messages[4] and "got 5000" in messages[4]
    assert [t.name for t in results[6].feature_maps] == ["stage3"]
    listed = await stub.ListCameras(pb.ListCamerasRequest())
    assert [c.id for c in listed.cameras] == ["late-publisher"]
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    # LATEST_ONLY keeps one frame whatever queue_size says, as the proto has it
    latest = pb.ResultOptions(freshness=pb.FRESHNESS_LATEST_ONLY, queue_size=5000)
    frames = [pb.FrameRequest(frame_id=1, encoded=data, options=latest)]
    results = [r async for r in stub.StreamFrames(requests(frames))]
    assert [r.status.code for r in results] == [0]


async def test_a_message_that_does_not_parse_is_invalid_argument_and_a_stream_goes_on(
    channel: grpc.aio.Channel,
) -> None:
    """Bytes that are no protobuf message of the method's type (a client built from another
    .proto, or a corrupted message) get INVALID_ARGUMENT; on a stream that message alone."""

    def as_is(data: bytes) -> bytes:
        return data

    garbage = b"\x22\x10abc"  # field 4 (encoded) announcing 16 bytes, holding 3
    for method, answer in (
        ("Analyze", pb.FrameResult),
        ("GetModelInfo", pb.ModelInfo),
        ("ListCameras", pb.ListCamerasResponse),
    ):
        call = channel.unary_unary(
            f"/convstream.v1.Convstream/{method}",
            request_serializer=as_is,
            response_deserializer=answer.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(garbage)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert f"got {len(garbage)} bytes that do not parse" in (info.value.details() or "")
    watch = channel.unary_stream(
        "/convstream.v1.Convstream/WatchCamera",
        request_serializer=as_is,
        response_deserializer=pb.FrameResult.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in watch(garbage):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "convstream.v1.WatchCameraRequest" in (info.value.details() or "")

    data = jpeg(scene(13, 384, 640))
    stream = channel.stream_stream(
        "/convstream.v1.Convstream/StreamFrames",
        request_serializer=as_is,
        response_deserializer=pb.FrameResult.FromString,
    )
    messages = [
        pb.FrameRequest(frame_id=1, source="dock", encoded=data).SerializeToString(),
        garbage,
        pb.FrameRequest(frame_id=3, encoded=data).SerializeToString(),
    ]
    call = stream(iter(messages))
    results = [result async for result in call]
    assert [r.frame_id for r in results] == [1, 0, 3]
    assert [r.status.code for r in results] == [0, INVALID, 0]
    assert "expected a convstream.v1.FrameRequest protobuf message" in results[1].status.message
    assert results[1].source == "dock"  # the stream's source, as for any frame naming none
    assert await call.code() == grpc.StatusCode.OK


async def test_a_frame_over_the_message_limit_is_refused_alone_in_the_servers_words() -> None:
    """A client that does not check the limit itself (grpcurl, another language) sending one
    frame over max_message_bytes had gRPC end its whole stream, in gRPC's words. Up to twice
    the limit, that frame alone is refused, named by its id; past that gRPC still ends it."""
    server = Server(Settings(port=0, metrics_port=-1, max_message_bytes=MIN_MESSAGE_BYTES))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            data = jpeg(scene(14, 240, 320))
            pixels = scene(14, 240, 320)  # 230,400 bytes raw: over 131,072, under twice it
            raw = pb.RawImage(width=320, height=240, format=pb.PIXEL_FORMAT_BGR8)
            raw.data = pixels.tobytes()
            frames = [
                pb.FrameRequest(frame_id=1, source="dock", encoded=data),
                pb.FrameRequest(frame_id=2, raw=raw),
                pb.FrameRequest(frame_id=3, encoded=data),
                pb.FrameRequest(frame_id=2**64 - 1, source="yard-é", raw=raw),
            ]
            results = [r async for r in stub.StreamFrames(requests(frames))]
            assert [(r.frame_id, r.status.code) for r in results] == [
                (1, 0),
                (2, INVALID),
                (3, 0),
                (2**64 - 1, INVALID),
            ]
            assert [r.source for r in results] == ["dock", "dock", "dock", "yard-é"]
            message = results[1].status.message
            assert "FrameRequest message is 230,4" in message
            assert "over this server's limit of 131,072 (max_message_bytes" in message
            # the advice for either kind of frame (a PNG was told to "send it as JPEG or PNG")
            assert message.endswith(
                "send raw pixels as JPEG, and a JPEG or PNG re-encoded smaller (a lower JPEG "
                "quality, or fewer pixels)"
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Analyze(pb.FrameRequest(raw=raw))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "over this server's limit of 131,072" in (info.value.details() or "")
            # past twice the limit, gRPC refuses the message, and the call with it
            raw.width, raw.height, raw.data = 640, 240, np.hstack([pixels, pixels]).tobytes()
            call = stub.StreamFrames(requests([pb.FrameRequest(frame_id=4, raw=raw)]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [r async for r in call]
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the Python client calls it what it is, not Overloaded ("back off and retry")
        limits = Limits(max_message_bytes=4 << 20)  # the client's own limit lets it go
        async with AsyncClient(
            f"127.0.0.1:{server.port}", upload=Upload(format="raw"), limits=limits
        ) as client:
            with pytest.raises(InvalidFrame, match=r"twice its max_message_bytes") as refused:
                await client.analyze(np.hstack([pixels, pixels]))
        assert "more than the server at 127.0.0.1" in str(refused.value)
    finally:
        await server.stop(grace=0)


def test_an_oversized_messages_id_and_source_are_read_off_its_start_unparsed() -> None:
    from convstream.server.wire import id_and_source as _id_and_source

    image = b"\x00" * 100_000
    message = pb.FrameRequest(frame_id=300, source="dock-3", encoded=image).SerializeToString()
    assert _id_and_source(message) == (300, "dock-3")
    # fields in another order (the wire allows it), an unknown field, a fixed64
    odd = (
        pb.FrameRequest(encoded=image).SerializeToString()
        + b"\x49"
        + b"\x01" * 8  # field 9, 64-bit
        + pb.FrameRequest(source="x", frame_id=7).SerializeToString()
    )
    assert _id_and_source(odd) == (7, "x")
    assert _id_and_source(message[:5]) == (300, "")  # cut inside the source
    assert _id_and_source(b"\xff" * 20) == (0, "")  # no message at all
    assert _id_and_source(b"") == (0, "")


def test_a_frames_size_and_raw_length_are_read_off_its_bytes_as_the_parse_reads_them() -> None:
    """A stream's checks run on the event loop: request.ByteSize() (71 ms for a 64 MB raw
    frame) and len(request.raw.data) (a 35 ms copy) there stalled every other client's
    frames for seconds while one sent such frames. The deserializer reads both off the wire
    bytes, and must read what the parse does, whatever order or repetition the wire has."""
    from convstream.server.servicer import _parse
    from convstream.server.wire import MAX_FIELDS, Received, raw_data_length
    from convstream.server.wire import id_and_source as _id_and_source

    def raw(data: bytes, width: int = 4) -> bytes:
        return pb.FrameRequest(raw=pb.RawImage(width=width, data=data)).SerializeToString()

    jpeg_part = pb.FrameRequest(encoded=b"\xff\xd8" * 10).SerializeToString()
    wires = [
        pb.FrameRequest(frame_id=1, source="a", raw=pb.RawImage(data=b"x" * 300)),
        pb.FrameRequest(frame_id=2, encoded=b"y" * 300),
        pb.FrameRequest(frame_id=3),
        pb.FrameRequest(raw=pb.RawImage(width=3, height=2)),  # a raw image without data
    ]
    cases = [w.SerializeToString() for w in wires] + [
        raw(b"a" * 10) + raw(b"b" * 20),  # merged: the last data
        raw(b"a" * 10) + raw(b"", width=9),  # merged, the second without data: the first's
        raw(b"a" * 10) + jpeg_part,  # an encoded image after: no raw at all
        jpeg_part + raw(b"c" * 7),  # a raw image after an encoded one: it
        raw(b"a" * 10) + jpeg_part + pb.FrameRequest(raw=pb.RawImage(width=2)).SerializeToString(),
    ]
    parse = _parse(pb.FrameRequest, 1 << 20)
    for wire in cases:
        parsed = pb.FrameRequest.FromString(wire)
        expected = len(parsed.raw.data) if parsed.WhichOneof("image") == "raw" else None
        assert raw_data_length(wire) == expected, (wire[:40], expected)
        received = parse(wire)
        assert isinstance(received, Received) and received.request == parsed
        assert received.size == len(wire)  # what gRPC read (ByteSize, for canonical bytes)
        assert wire not in cases[: len(wires)] or received.size == parsed.ByteSize()
        assert received.raw_length == expected
    # What the walk does not read to its end is unknown (None: the check reads raw.data):
    # many small fields (8 MB of them took seconds of Python on the event loop; the walk
    # reads MAX_FIELDS at most), and a group, which the parse skips and the walk does not.
    group = b"\x5b\x5c"  # field 11, start and end group
    unread = [
        raw(b"a" * 10) + b"\x08\x01" * (MAX_FIELDS + 1),
        raw(b"a" * 10) + group + raw(b"b" * 20),
    ]
    for wire in unread:
        assert len(pb.FrameRequest.FromString(wire).raw.data) in (10, 20)
        assert raw_data_length(wire) is None
        received = parse(wire)
        assert isinstance(received, Received) and received.raw_length is None
    assert _id_and_source(b"\x08\x07" + b"\x10\x01" * 100_000)[0] == 7  # read up to the cap


async def test_a_message_limit_over_1_gib_starts() -> None:
    """gRPC's limits are C ints: twice 1 GiB and 1 byte did not fit, and the server did not
    start; past 2 GiB it is refused when read."""
    server = Server(Settings(port=0, metrics_port=-1, max_message_bytes=(1 << 30) + 1))
    await server.start()
    await server.stop(grace=0)
    with pytest.raises(ValueError, match="max_message_bytes"):
        Settings(max_message_bytes=1 << 31)


async def test_an_analyze_calls_frame_is_freed_as_the_call_ends(
    stub: pb_grpc.ConvstreamStub,
) -> None:
    """Analyzed or refused, a call's request is freed when the call ends, not at Python's next
    full garbage collection, which counts objects, not bytes: grpc's receiving generator kept
    the message it last gave, and an abort's exception the refused one, each in a reference
    cycle with the call (a soak: 200 raw 8 MiB frames took the server from 171 to 671 MiB,
    3,000 refused 720p JPEGs to 856)."""
    width, height = 64, 48
    for rows, refused in ((height, False), (height - 1, True)):  # refused: 64 bytes too many
        raw = pb.RawImage(
            width=width, height=rows, format=pb.PIXEL_FORMAT_BGR8, data=bytes(width * height * 3)
        )
        sent = [pb.FrameRequest(frame_id=90001, raw=raw) for _ in range(10)]
        gc.collect()
        gc.disable()
        try:
            for request in sent:
                if refused:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.Analyze(request)
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                else:
                    assert (await stub.Analyze(request)).frame_id == 90001
            await asyncio.sleep(0.1)
            held = [
                o
                for o in gc.get_objects()
                if type(o) is pb.FrameRequest
                and o.frame_id == 90001
                and not any(o is mine for mine in sent)
            ]
        finally:
            gc.enable()
        assert len(held) == 0, f"{len(held)} of 10 {'refused' if refused else ''} frames held"


async def test_analyze_bad_frame_is_invalid_argument(stub: pb_grpc.ConvstreamStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Analyze(pb.FrameRequest(encoded=b"not an image"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected JPEG" in (info.value.details() or "")
    # a stream's options: what would be lost is refused, a valid policy ignored
    data = jpeg(scene(11, 240, 320))
    for options, told in [
        (pb.ResultOptions(publish=True), "publish is for StreamFrames: Analyze results"),
        (pb.ResultOptions(freshness=99), "unknown freshness policy 99"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Analyze(pb.FrameRequest(encoded=data, options=options))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert told in (info.value.details() or ""), info.value.details()
    stream_options = pb.ResultOptions(freshness=pb.FRESHNESS_BOUNDED_QUEUE, queue_size=8)
    kept = await stub.Analyze(pb.FrameRequest(encoded=data, options=stream_options))
    assert kept.status.code == 0 and 0 <= kept.score <= 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        stamp = Timestamp(seconds=int(time.time() * 1000))
        await stub.Analyze(pb.FrameRequest(encoded=jpeg(scene(11, 240, 320)), capture_time=stamp))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "milliseconds" in (info.value.details() or "")
    # a capture time ahead of the server's clock is a frame of age 0, not an error
    stamp = Timestamp(seconds=int(time.time()) + 10)
    ahead = await stub.Analyze(
        pb.FrameRequest(encoded=jpeg(scene(11, 240, 320)), capture_time=stamp)
    )
    assert ahead.frame_age_ms == 0.0 and ahead.capture_time == stamp
    # the epoch itself is what a client that always fills the field sends for "unknown"
    unset = await stub.Analyze(
        pb.FrameRequest(encoded=jpeg(scene(11, 240, 320)), capture_time=Timestamp())
    )
    assert 0 < unset.frame_age_ms < 60_000 and not unset.HasField("capture_time")
    with pytest.raises(grpc.aio.AioRpcError) as info:  # no camera's clock says 1969
        old = Timestamp(seconds=-5)
        await stub.Analyze(pb.FrameRequest(encoded=jpeg(scene(11, 240, 320)), capture_time=old))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "before 1970" in (info.value.details() or "")
    # options that do not exist say which do
    for options, says in [
        (pb.ResultOptions(encoding=7), "unknown tensor encoding 7; expected one of 1 (TENSOR_"),
        (pb.ResultOptions(encoding=7), "_UINT8), or 0 (unset: FLOAT16)"),  # 0 is valid too
        (pb.ResultOptions(freshness=9), "unknown freshness policy 9; expected one of 1 (FRESH"),
        (pb.ResultOptions(freshness=9), "_LOSSLESS), or 0 (unset: the stream's policy"),
        # the bound this server can give (a quarter of max_queued_frames), not the proto's
        (
            pb.ResultOptions(queue_size=5000),
            "queue_size must be 0 (the server's default, 4) to 1024, and one stream may hold "
            "at most 256",
        ),
    ]:
        stream = stub.StreamFrames()
        await stream.write(pb.FrameRequest(encoded=jpeg(scene(11, 240, 320)), options=options))
        refused = await stream.read()
        await stream.done_writing()
        assert refused.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert says in refused.status.message, refused.status.message
    # the server is still fine
    result = await stub.Analyze(pb.FrameRequest(encoded=jpeg(scene(11, 240, 320))))
    assert result.status.code == 0


@pytest.fixture
def small_messages() -> Settings:
    return Settings(port=0, metrics_port=0, max_message_bytes=2 * 1024 * 1024)


async def test_result_over_the_message_limit_is_a_frame_error(small_messages: Settings) -> None:
    server = Server(small_messages)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            data = jpeg(scene(12, 720, 1280))
            everything = pb.ResultOptions(
                feature_maps=["stage1", "stage2", "stage3", "stage4"],
                encoding=pb.TENSOR_ENCODING_FLOAT32,
            )
            frames = [
                pb.FrameRequest(frame_id=1, encoded=data, options=everything),
                pb.FrameRequest(frame_id=2, encoded=data),
                pb.FrameRequest(
                    frame_id=3, encoded=data, options=pb.ResultOptions(feature_maps=["stage3"])
                ),
            ]
            r1, r2, r3 = [r async for r in stub.StreamFrames(requests(frames))]
            assert r1.status.code == INVALID  # never fits: not to retry
            assert "message limit" in r1.status.message and "FLOAT16" in r1.status.message
            # the input's size as input_sizes and `convstream info` write it (it read 640x384)
            assert "for a 384x640 (height x width) input" in r1.status.message
            # refused options change nothing: the next frame, with none, has the defaults (they
            # stuck, and every later frame was refused with the first one's reason)
            assert r2.status.code == 0 and not r2.feature_maps and r2.heatmap.name == "heatmap"
            assert r3.status.code == 0 and r3.feature_maps[0].name == "stage3"
            # nor on a frame that is no image, whose size is not known: measured at the
            # largest input size, they are refused, and the next frame has the defaults
            bad = pb.FrameRequest(frame_id=4, encoded=b"no image", options=everything)
            plain = pb.FrameRequest(frame_id=5, encoded=data)
            r4, r5 = [r async for r in stub.StreamFrames(requests([bad, plain]))]
            assert r4.status.code == INVALID and "message limit" in r4.status.message
            assert r5.status.code == 0 and not r5.feature_maps
            # a request bigger than twice the limit is refused by gRPC itself
            big = pb.FrameRequest(encoded=b"\xff\xd8\xff" + b"\x00" * (5 * 1024 * 1024))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Analyze(big)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.Analyze(pb.FrameRequest(encoded=data))).status.code == 0
    finally:
        await server.stop(grace=0)


async def test_options_on_a_frame_that_is_no_image_still_stick(server: Server) -> None:
    """Options stick to a stream from the frame that brings them, whatever becomes of that
    frame: a first frame cut short (a truncated JPEG) with the stream's options lost them
    while the results' size check was new, and the stream ran on defaults, saying nothing."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConvstreamStub(channel)
        data = jpeg(scene(12, 360, 640))
        options = pb.ResultOptions(feature_maps=["stage3"])
        frames = [
            pb.FrameRequest(frame_id=1, encoded=data[: len(data) // 3], options=options),
            pb.FrameRequest(frame_id=2, encoded=data),
        ]
        r1, r2 = [r async for r in stub.StreamFrames(requests(frames))]
    assert r1.status.code == INVALID, r1.status
    assert r2.status.code == 0 and [m.name for m in r2.feature_maps] == ["stage3"]


async def test_an_input_jpeg_that_tips_a_result_over_the_limit_is_a_frame_error() -> None:
    """The maps fit (checked before inference), the JPEG of the input does not: per frame."""
    settings = Settings(
        port=0, metrics_port=0, max_message_bytes=2 * 1024 * 1024, frame_jpeg_quality=100
    )
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            noise = np.random.default_rng(0).integers(0, 256, (384, 640, 3), np.uint8)
            heavy = pb.ResultOptions(
                feature_maps=["stage2"], encoding=pb.TENSOR_ENCODING_FLOAT32, include_frame=True
            )
            frames = [
                pb.FrameRequest(frame_id=1, encoded=jpeg(noise), options=heavy),
                pb.FrameRequest(frame_id=2, encoded=jpeg(noise), options=pb.ResultOptions()),
            ]
            r1, r2 = [r async for r in stub.StreamFrames(requests(frames))]
            assert r1.status.code == INVALID  # never fits: not to retry
            assert "with the input JPEG" in r1.status.message, r1.status.message
            assert r2.status.code == 0 and r2.heatmap.name == "heatmap"
    finally:
        await server.stop(grace=0)


async def test_a_heatmap_that_would_pass_the_message_limit_is_a_frame_error() -> None:
    """The heatmap counts against the limit as the maps do: a large input's, over a small
    limit, made a result gRPC would not send, which ended the whole stream."""
    settings = Settings(
        port=0, metrics_port=0, max_message_bytes=MIN_MESSAGE_BYTES, input_sizes=("1152x1920",)
    )
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            data = jpeg(np.full((1152, 1920, 3), 128, np.uint8))
            wide = pb.ResultOptions(encoding=pb.TENSOR_ENCODING_FLOAT32)  # 144x240 cells: 138 KB
            frames = [
                pb.FrameRequest(frame_id=1, encoded=data, options=wide),
                pb.FrameRequest(
                    frame_id=2,
                    encoded=data,
                    options=pb.ResultOptions(encoding=wide.encoding, include_heatmap=False),
                ),
                pb.FrameRequest(frame_id=3, encoded=data, options=pb.ResultOptions()),
            ]
            r1, r2, r3 = [r async for r in stub.StreamFrames(requests(frames))]
            assert r1.status.code == INVALID  # never fits: not to retry
            assert "the heatmap in TENSOR_ENCODING_FLOAT32" in r1.status.message, r1.status.message
            assert "a smaller encoding (FLOAT16, UINT8) or no heatmap" in r1.status.message
            assert r2.status.code == 0 and not r2.HasField("heatmap") and r2.score > 0
            assert r3.status.code == 0 and r3.HasField("heatmap")  # in FLOAT16 it fits (69 KB)
    finally:
        await server.stop(grace=0)


async def test_a_source_is_a_name_not_a_payload(stub: pb_grpc.ConvstreamStub) -> None:
    """A frame's source is echoed in every result, and on a stream sticks to the frames after
    it: a source of megabytes made results over the message limit, which ended the stream.
    One over 256 characters is refused alone, and the stream keeps the name it had."""
    data = jpeg(scene(13, 240, 320))
    frames = [
        pb.FrameRequest(frame_id=1, encoded=data, source="dock-1"),
        pb.FrameRequest(frame_id=2, encoded=data, source="x" * 100_000),
        pb.FrameRequest(frame_id=3, encoded=data),
        pb.FrameRequest(frame_id=4, encoded=data, source="y" * 256),
    ]
    results = [r async for r in stub.StreamFrames(requests(frames))]
    assert [r.status.code for r in results] == [0, INVALID, 0, 0]
    assert "at most 256 characters" in results[1].status.message
    assert "got 100000 characters starting 'xxx" in results[1].status.message
    assert [r.source for r in results] == ["dock-1", "dock-1", "dock-1", "y" * 256]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Analyze(pb.FrameRequest(encoded=data, source="z" * 257))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256 characters" in str(info.value.details())


def build_pool(
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    """A pool of `files`, each added after its dependencies, as a pool takes them."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name not in added:
            for dependency in files[name].dependency:
                add(dependency)
            pool.Add(files[name])
            added.add(name)

    for name in files:
        add(name)
    return pool


async def test_health_and_reflection(server: Server, channel: grpc.aio.Channel) -> None:
    """Health says SERVING for the server and its service.

    What a tool such as grpcurl does with no .proto at hand, in each version of reflection: list
    the services, fetch the files that define each (with their dependencies), build them into
    a pool of its own and read the methods there. grpcio-reflection alone serves v1alpha only.
    """
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "convstream.v1.Convstream"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # an unknown name, however long, is NOT_FOUND: said back whole, 10,000 characters passed
    # gRPC's metadata limit, and the caller got RESOURCE_EXHAUSTED; a long one is said in
    # part, or by its length (redaction reads REDACT_MAX characters)
    for name, said in (("x" * 80, "'xxxx"), ("x" * 10_000, "(10,002 characters not shown)")):
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        details = unknown.value.details() or ""
        assert details.startswith(f"no service {said}") and len(details) < 300, details
    for version in ("v1", "v1alpha"):
        ask = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in ask(requests([listing]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert names == {
            "convstream.v1.Convstream",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }, (version, names)
        wanted = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names]
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        async for reply in ask(requests(wanted)):
            assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
            for blob in reply.file_descriptor_response.file_descriptor_proto:
                proto = descriptor_pb2.FileDescriptorProto.FromString(blob)
                files[proto.name] = proto
        # convstream's file with its comments, which grpcurl's describe prints
        api = files["convstream/v1/convstream.proto"]
        said = {tuple(c.path): c.leading_comments for c in api.source_code_info.location}
        service = next(i for i, s in enumerate(api.service) if s.name == "Convstream")
        methods = [m.name for m in api.service[service].method]
        # (6: FileDescriptorProto.service, 2: ServiceDescriptorProto.method)
        path = (6, service, 2, methods.index("StreamFrames"))
        assert "Client-pushed frames over one long stream" in said[path]
        # the status codes every method keeps: with the service, which `describe` prints
        assert "RESOURCE_EXHAUSTED   over a cap" in said[(6, service)]
        pool = build_pool(files)
        methods = {n: [m.name for m in pool.FindServiceByName(n).methods] for n in names}
        assert methods["convstream.v1.Convstream"] == [
            "Analyze",
            "StreamFrames",
            "GetModelInfo",
            "ListCameras",
            "WatchCamera",
        ]
        # `grpcurl describe convstream.v1.Convstream.StreamFrames`, as the README has it, asks
        # for the file of the method by its name; an unknown name stays NOT_FOUND
        symbols = ["convstream.v1.Convstream.StreamFrames", "convstream.v1.Convstream.Nope"]
        asks = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in symbols]
        found, missing = [r async for r in ask(requests(asks))]
        assert found.original_request.file_containing_symbol == symbols[0]
        blob = found.file_descriptor_response.file_descriptor_proto[0]
        assert descriptor_pb2.FileDescriptorProto.FromString(blob) == api  # with its comments
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert missing.original_request.file_containing_symbol == symbols[1]
        for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
            service = pool.FindServiceByName(f"{package}.ServerReflection")
            method = service.methods_by_name["ServerReflectionInfo"]
            assert method.input_type.full_name == f"{package}.ServerReflectionRequest"
            assert method.output_type.full_name == f"{package}.ServerReflectionResponse"


async def test_a_request_that_carries_no_frame_is_refused_unparsed_past_64_kib(
    server: Server, channel: grpc.aio.Channel
) -> None:
    """gRPC reads any request up to twice max_message_bytes (128 MiB) before its handler
    runs. A health Check, which needs no token, naming a 100 MiB service was parsed, four
    times its size in memory, and a Watch of it was held open; a camera watch's id was read
    as long. A request that carries no frame is refused past 64 KiB, unparsed, and ends."""
    huge = "x" * (1 << 20)
    health = health_pb2_grpc.HealthStub(channel)
    stub = pb_grpc.ConvstreamStub(channel)
    calls: dict[str, Any] = {
        "Check": health.Check(health_pb2.HealthCheckRequest(service=huge)),
        "Watch": health.Watch(health_pb2.HealthCheckRequest(service=huge)).read(),
        "WatchCamera": stub.WatchCamera(pb.WatchCameraRequest(camera_id=huge)).read(),
        "ListCameras": stub.ListCameras(pb.ListCamerasRequest()),
    }
    for name in ("Check", "Watch", "WatchCamera"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(calls[name], 10)  # the Watch ends: it is not held open
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        details = refused.value.details() or ""
        assert "message is 1,048,5" in details and "at most 65,536" in details, details
    # the same calls of the usual size are answered, on the same connection
    await calls["ListCameras"]
    assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).sha256
    assert (await health.List(health_pb2.HealthListRequest())).statuses
    reply = await health.Check(health_pb2.HealthCheckRequest(service="convstream.v1.Convstream"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_can_be_switched_off() -> None:
    server = Server(Settings(port=0, metrics_port=-1, reflection=False))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            # The call is answered before any request is read. Sending one raced that answer
            # (a send on a call already closed fails as INTERNAL on the client), so none is.
            call = stub.ServerReflectionInfo()
            code = await asyncio.wait_for(call.code(), timeout=10)  # on: it waits, and fails
            assert code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(grace=0)


_ARENAS = """
import ctypes, sys, threading
from convstream.server.malloc import limit_arenas
if sys.argv[1] == "limit":
    assert limit_arenas()
start = threading.Barrier(8)
def work():
    start.wait()
    kept = [bytearray(100_000) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()  # "Arena N:" per arena, on stderr
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc arenas")
def test_the_server_keeps_malloc_to_two_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each thread that allocates got an arena of its own, up to 16 on 2 cores, each keeping
    what its thread freed: the server's RSS 14% higher in a 35-minute soak (malloc.py)."""

    from convstream.server.malloc import limit_arenas

    def arenas(mode: str, **env: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _ARENAS, mode],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env,
        )
        assert run.returncode == 0, run.stderr
        return run.stderr.count("Arena ")

    assert arenas("none") > 2  # what the limit is for: one arena a thread
    assert arenas("limit") == 2
    # an operator's MALLOC_ARENA_MAX is theirs: the limit is not set over it
    assert arenas("none", MALLOC_ARENA_MAX="4") <= 4
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not limit_arenas()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def test_a_failed_frames_result_has_no_score_to_read_as_intact(
    stub: pb_grpc.ConvstreamStub,
) -> None:
    """A frame that failed carried score 0.0 and damaged false, the proto's defaults: a
    client made from the proto that read them before status read "intact" (an integrator's
    trap). They are unset now; a frame analysed has both, a blank frame's 0 scores too."""
    frames = [pb.FrameRequest(encoded=b"junk"), pb.FrameRequest(encoded=jpeg(scene(3, 240, 320)))]
    black = np.zeros((240, 320, 3), np.uint8)
    raw = pb.RawImage(data=black.tobytes(), width=320, height=240, format=pb.PIXEL_FORMAT_BGR8)
    frames.append(pb.FrameRequest(raw=raw))
    failed, analysed, blank = [r async for r in stub.StreamFrames(requests(frames))]
    assert failed.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not failed.HasField("score") and not failed.HasField("damaged")
    for result in (analysed, blank):
        assert result.status.code == 0 and result.HasField("score") and result.HasField("damaged")


async def test_metrics_count_frames_by_source_and_outcome(
    server: Server, stub: pb_grpc.ConvstreamStub
) -> None:
    good = jpeg(scene(13, 480, 640))
    # a stream's source sticks: the frames after the first that name none are dock-1's too
    frames = [pb.FrameRequest(source="dock-1", encoded=good)]
    frames += [pb.FrameRequest(encoded=good) for _ in range(2)]
    frames.append(pb.FrameRequest(encoded=b"junk"))
    frames += [pb.FrameRequest(source="dock-2", encoded=good), pb.FrameRequest(encoded=good)]
    results = [r async for r in stub.StreamFrames(requests(frames))]
    assert [r.source for r in results] == ["dock-1"] * 4 + ["dock-2"] * 2  # the last one given
    samples = await asyncio.to_thread(scrape, server.metrics_port)
    ok = samples[("convstream_frames_total", (("outcome", "ok"), ("source", "dock-1")))]
    bad = samples[("convstream_frames_total", (("outcome", "invalid"), ("source", "dock-1")))]
    other = samples[("convstream_frames_total", (("outcome", "ok"), ("source", "dock-2")))]
    assert (ok, bad, other) == (3.0, 1.0, 2.0)
    assert samples[("convstream_step_seconds_count", (("step", "inference"),))] == 5.0
    assert samples[("convstream_inference_threads_count", ())] == 5.0
    assert samples[("convstream_streams_in_flight", ())] == 0.0
    assert samples[("convstream_streams_total", (("outcome", "ok"),))] == 1.0
    # and no `_created` series beside every counter and histogram
    assert not [name for name, _ in samples if name.endswith("_created")]
    provider = (("provider", "CPUExecutionProvider"), ("requested", "auto"))
    assert samples[("convstream_execution_provider", provider)] == 1.0
    # which model answers, and from which score a frame is damaged
    shipped = DamageModel(provider="cpu")
    model = (("name", "damage.onnx"), ("sha256", shipped.sha256))
    assert samples[("convstream_model_info", model)] == 1.0
    assert samples[("convstream_threshold", ())] == pytest.approx(shipped.threshold)
    # what the in-flight gauges fill up against, for alerts that copy no number
    assert samples[("convstream_limit", (("setting", "max_streams"),))] == (
        server.settings.max_streams
    )
    assert samples[("convstream_limit", (("setting", "max_watcher_bytes"),))] == (
        server.settings.max_watcher_bytes
    )
    assert [labels for name, labels in samples if name == "convstream_build_info"] == [
        (("version", server_version()),)
    ]
    # and what every exporter has: the process's CPU, memory, files and start, and Python's
    # version; no TLS expiry without TLS
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert samples[("process_resident_memory_bytes", ())] > 50e6  # the model and onnxruntime
    assert samples[("process_open_fds", ())] >= 3
    assert 0 < time.time() - samples[("process_start_time_seconds", ())] < 3600
    assert any(name == "python_info" for name, _ in samples)
    assert not any(name.startswith("convstream_tls") for name, _ in samples)


async def test_every_metric_the_docs_name_is_exported() -> None:
    """The docs' metrics list and alerts are what operators build on: a name there that
    the server does not export is an alert that never fires."""
    import pathlib
    import re

    from convstream.server import CameraConfig

    root = pathlib.Path(__file__).parent.parent
    docs = "".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    named = set(re.findall(r"\b(convstream_[a-z0-9_]+)", docs))
    camera = CameraConfig(id="belt", source="demo:conveyor?fps=2")
    server = Server(Settings(port=0, metrics_port=0, cameras=(camera,)))
    await server.start()
    try:
        while not server.cameras or not server.cameras.feeds["belt"].camera.frames_read:
            await asyncio.sleep(0.1)
        families = {family.name for family in server.metrics.registry.collect()}
        samples = await asyncio.to_thread(scrape, server.metrics_port)
    finally:
        await server.stop(grace=0)
    # a counter's family is named without its _total; one with no labels set yet has no
    # samples, but is exported as soon as it counts
    exported = families | {f"{name}_total" for name in families} | {n for n, _ in samples}
    code = {"convstream_pb2", "convstream_pb2_grpc"}  # the generated modules' names
    missing = sorted(n for n in named - exported - code if not n.startswith("convstream_tls_"))
    assert not missing, missing  # TLS's with TLS only (test_security checks it)
    assert len(named) > 20


def test_the_refusals_an_alert_watches_are_zero_from_the_start() -> None:
    """A counter series that first appears at its value (11 refusals in one burst) reads to
    Prometheus' rate() and increase() as no increase: the alert on refused clients missed
    the first burst (the SRE review). Those series exist, at 0, before anything happens."""
    from prometheus_client import generate_latest

    metrics = Metrics()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
    }
    expected = [
        ("convstream_calls_refused_total", (("method", "Analyze"),)),
        ("convstream_calls_refused_total", (("method", "WatchCamera"),)),
        ("convstream_streams_total", (("outcome", "rejected"),)),
        ("convstream_streams_total", (("outcome", "error"),)),
        ("convstream_watches_total", (("outcome", "resource_exhausted"),)),
        ("convstream_frames_total", (("outcome", "rejected"), ("source", "unnamed"))),
        ("convstream_frames_total", (("outcome", "invalid"), ("source", "unnamed"))),
    ]
    assert {key: samples.get(key) for key in expected} == dict.fromkeys(expected, 0.0)


def test_a_cameras_metric_label_is_its_own() -> None:
    """Client frames never land in a configured camera's series: not under a name that only
    becomes the camera's label once cleaned up or cut to 64 characters, and not when clients
    have used up the cap on names (the camera's label is exempt)."""
    metrics = Metrics()
    long_id = "d" * 64
    metrics.set_cameras(["dock_3", long_id])
    assert metrics.client_source("dock 3") == "client:dock_3"
    assert metrics.client_source(long_id + "-extra") == ("client:" + long_id)[:64]
    assert metrics.client_source("dock-4") == "dock-4"
    for i in range(MAX_SOURCES):
        metrics.client_source(f"integration-{i}")
    assert metrics.client_source("one-too-many") == "other"
    assert metrics.source("dock_3") == "dock_3"  # the camera's own frames
    metrics.set_cameras(["belt"])  # a reload adds a camera: its label is its own at once
    assert metrics.source("belt") == "belt"
    assert metrics.client_source("belt") == "other"  # client:belt, past the cap


def test_a_source_named_by_a_camera_url_shows_no_password_on_metrics() -> None:
    """A client that names its frames by its camera's URL (a Video's default name) put the
    password in a label on /metrics: rtsp://admin:pw@cam/x became rtsp___admin_pw_cam_x."""
    metrics = Metrics()
    for name in (
        "rtsp://admin:Zq9Secret@cam/live",
        "http://cam/video.cgi?user=admin&pwd=Zq9Secret&channel=1",
    ):
        label = metrics.client_source(name)
        assert "Zq9Secret" not in label and label.startswith(("rtsp:", "http:")), label


async def test_too_many_streams_is_resource_exhausted() -> None:
    server = Server(Settings(port=0, metrics_port=-1, max_streams=1))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            first = stub.StreamFrames()
            await first.write(pb.FrameRequest(frame_id=1, encoded=jpeg(scene(14, 240, 320))))
            assert (await first.read()).frame_id == 1
            second = stub.StreamFrames()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await second.read()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit is 1" in (info.value.details() or "")
            # counted where an alert on refused clients reads it
            refused = server.metrics.registry.get_sample_value
            assert refused("convstream_streams_total", {"outcome": "rejected"}) == 1
            # the first stream is unaffected
            await first.write(pb.FrameRequest(frame_id=2, encoded=jpeg(scene(15, 240, 320))))
            assert (await first.read()).frame_id == 2
            await first.done_writing()
            assert await first.code() == grpc.StatusCode.OK
    finally:
        await server.stop(grace=0)


async def test_an_idle_stream_is_ended_with_a_clear_status() -> None:
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), stream_idle_timeout_s=0.5))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = pb_grpc.ConvstreamStub(channel).StreamFrames()
            await stream.write(pb.FrameRequest(frame_id=1, encoded=jpeg(scene(3, 240, 320))))
            assert (await stream.read()).frame_id == 1
            with pytest.raises(grpc.aio.AioRpcError) as ended:  # then nothing for 0.5 s
                await stream.read()
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no frame for 0.5 s" in str(ended.value.details())
        assert server.servicer is not None and server.servicer.open_streams == 0
    finally:
        await server.stop(grace=0)


async def test_a_failure_of_our_own_is_internal_on_analyze_as_on_a_stream(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A bug of ours (stood in for by a pipeline that raises) is INTERNAL with our words, and
    # logged; left to grpc, Analyze answered UNKNOWN with the exception's class and text.
    server = Server(Settings(port=0, metrics_port=-1, cameras=()))
    await server.start()
    try:
        assert server.servicer is not None

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(server.servicer.pipeline, "analyze", broken)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Analyze(pb.FrameRequest(encoded=jpeg(scene(3, 240, 320))))
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert info.value.details() == "internal error analysing frame"
            assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).sha256  # still serving
        assert "secret internals" in caplog.text and server.servicer.open_analyze_calls == 0
    finally:
        await server.stop(grace=0)


def test_memory_freed_after_a_trim_at_a_bursts_peak_is_given_back_too() -> None:
    """The trimmer trimmed once RSS had grown 32 MiB since its last trim: one at a burst's
    peak gave back nothing, and what the burst freed after it stayed with malloc (1.9-2.4 GB
    on an idle server for minutes, a reliability review's). Freed memory grown past the
    same step is due too. In a process of its own: the test's malloc is its own."""
    script = (
        "import ctypes\n"
        "from convstream.server.malloc import Trimmer, rss_bytes\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "trimmer = Trimmer()\n"
        "blocks = [libc.malloc(4096) for _ in range(40000)]  # 160 MiB in small blocks\n"
        "for block in blocks: ctypes.memset(block, 1, 4096)\n"
        "assert trimmer.due(); trimmer.trim()  # at the peak: nothing to give back\n"
        "peak = rss_bytes()\n"
        "for block in blocks: libc.free(block)\n"
        "assert rss_bytes() > peak - (16 << 20), 'malloc gave it back by itself'\n"
        "assert trimmer.due(), 'freed, and not due'\n"
        "given, _ = trimmer.trim()\n"
        "assert given > 100 << 20 and rss_bytes() < peak - (100 << 20), given\n"
        "assert not trimmer.due()  # until malloc's free memory grows again\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
