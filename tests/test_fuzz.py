"""Property-based fuzzing of what reads untrusted bytes: the frame decoder and the validators.

Whatever a client sends, the decoder and the request validators raise only the server's own
errors (InvalidFrame, FrameTooLarge, InvalidOptions), and a frame that does decode has exactly
the size its header declared, inside the limits: the limits are checked on the header, so a
decoded image of any other size is memory nobody checked.

Reproducible: derandomized (examples follow from the test's code), no example database.
"""

from __future__ import annotations

import asyncio
import math
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import cv2
import grpc
import numpy as np
import pytest
from conftest import jpeg, png, scene
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from convstream.model import FEATURE_NAMES
from convstream.model.checks import StageInfo
from convstream.server import Server, Settings
from convstream.server.decode import (
    JPEG_MAGIC,
    PNG_MAGIC,
    Limits,
    decode_encoded,
    decode_raw,
    encoded_size,
)
from convstream.server.encode import to_float16
from convstream.server.errors import InvalidFrame, InvalidOptions
from convstream.server.metrics import Metrics
from convstream.server.pipeline import Options, Pipeline
from convstream.server.streams import StreamSession
from convstream.server.wire import Received
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMITS = Limits(max_pixels=320 * 240, max_side=400)  # small, so sizes over it are cheap to try
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]

_IMAGE = scene(21, 48, 64)
BASES = {
    "jpeg": jpeg(_IMAGE),
    "jpeg-q20": jpeg(_IMAGE, 20),
    "jpeg-progressive": cv2.imencode(".jpg", _IMAGE, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[
        1
    ].tobytes(),
    "jpeg-gray": cv2.imencode(".jpg", cv2.cvtColor(_IMAGE, cv2.COLOR_BGR2GRAY))[1].tobytes(),
    "png": png(_IMAGE),
    "png-gray": png(cv2.cvtColor(_IMAGE, cv2.COLOR_BGR2GRAY)),
}


def sof_offset(data: bytes) -> int:
    """Where a real (unmutated) JPEG's start-of-frame marker is."""
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return pos


SIDES = st.one_of(
    st.sampled_from([0, 1, 8, 400, 401, 65535]), st.integers(0, 600), st.integers(0, 65535)
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A real JPEG or PNG after one to three mutations."""
    name = draw(st.sampled_from(sorted(BASES)))
    data = bytearray(BASES[name])
    is_jpeg = name.startswith("jpeg")
    for op in draw(
        st.lists(
            st.sampled_from(["flip", "truncate", "overwrite", "insert", "splice", "header"]),
            min_size=1,
            max_size=3,
        )
    ):
        n = len(data)
        if n < 8:
            break
        if op == "flip":
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            data = data[: draw(st.integers(0, n - 1))]
            if is_jpeg and draw(st.booleans()):
                data += b"\xff\xd9"  # put an end marker back: past the truncation check
        elif op == "overwrite":
            i = draw(st.integers(0, n - 1))
            data[i : i + 4] = draw(st.binary(min_size=1, max_size=4))
        elif op == "insert":
            i = draw(st.integers(2, n))
            blob = draw(
                st.one_of(st.sampled_from([b"\xff", b"\xff\x00", b"\xff\xd9"]), st.binary())
            )
            data[i:i] = blob
        elif op == "splice":
            other = BASES[draw(st.sampled_from(sorted(BASES)))]
            data = data[: draw(st.integers(0, n))] + other[draw(st.integers(0, len(other))) :]
        elif is_jpeg and data[:2] == b"\xff\xd8" and op == "header":
            sof = sof_offset(BASES[name])
            if sof + 9 <= len(data):
                data[sof + 5 : sof + 9] = struct.pack(">HH", draw(SIDES), draw(SIDES))
        elif op == "header" and len(data) >= 33:
            width = draw(st.one_of(SIDES, st.integers(0, 2**32 - 1)))
            data[16:24] = struct.pack(">II", width, draw(SIDES))
            if draw(st.booleans()):
                data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


ARBITRARY = st.builds(
    lambda head, body: head + body,
    st.sampled_from([b"", JPEG_MAGIC, b"\xff\xd8", PNG_MAGIC, PNG_MAGIC + b"\x00\x00\x00\x0dIHDR"]),
    st.binary(max_size=2048),
)


def check_decode(data: bytes, reduce: int) -> None:
    """decode_encoded raises InvalidFrame, or gives the header's size, inside the limits."""
    try:
        kind, width, height = encoded_size(data)
    except InvalidFrame:
        kind = ""
    try:
        image = decode_encoded(data, LIMITS, reduce)
    except InvalidFrame:  # FrameTooLarge is one
        return
    assert kind, "decoded a frame whose header could not be read"
    LIMITS.check(width, height, "the decoded frame")  # inside the limits, by its header
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    r = reduce if kind == "jpeg" and reduce in (2, 4, 8) else 1
    expected = (math.ceil(height / r), math.ceil(width / r))
    assert image.shape[:2] == expected, (
        f"the header of this {kind} says {width}x{height} (limits checked on that), "
        f"the decoder made {image.shape[1]}x{image.shape[0]} at 1/{r}"
    )


@FUZZ
@given(ARBITRARY)
def test_encoded_size_of_arbitrary_bytes(data: bytes) -> None:
    try:
        kind, width, height = encoded_size(data)
    except InvalidFrame:
        return
    assert kind in ("jpeg", "png") and width >= 0 and height >= 0


@FUZZ
@given(st.one_of(ARBITRARY, mutated_frames()), st.sampled_from([1, 2, 4, 8]))
def test_decode_arbitrary_and_mutated_bytes(data: bytes, reduce: int) -> None:
    check_decode(data, reduce)


@FUZZ
@given(mutated_frames(), st.sampled_from([1, 2]))
def test_decode_mutated_frames(data: bytes, reduce: int) -> None:
    check_decode(data, reduce)


@st.composite
def raw_frames(draw: st.DrawFn) -> tuple[bytes, int, int, str]:
    width = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
    height = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
    fmt = draw(st.sampled_from(["BGR8", "RGB8", "GRAY8", "YUYV", ""]))
    exact = width * height * (1 if fmt == "GRAY8" else 3)
    if exact <= 64 * 64 * 3 and draw(st.booleans()):
        data = bytes(draw(st.integers(0, 255)) for _ in range(1)) * exact
    else:
        data = draw(st.binary(max_size=4096))
    return data, width, height, fmt


@FUZZ
@given(raw_frames())
def test_decode_raw_arbitrary(frame: tuple[bytes, int, int, str]) -> None:
    data, width, height, fmt = frame
    try:
        image = decode_raw(data, width, height, fmt, LIMITS)
    except InvalidFrame:
        return
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    LIMITS.check(width, height, "raw")


RESULT_OPTIONS = st.builds(
    lambda maps, encoding, heatmap, frame, freshness, queue: pb.ResultOptions(
        feature_maps=maps,
        encoding=encoding,
        include_frame=frame,
        freshness=freshness,
        queue_size=queue,
        **({} if heatmap is None else {"include_heatmap": heatmap}),
    ),
    st.lists(st.one_of(st.sampled_from(FEATURE_NAMES), st.text(max_size=12)), max_size=6),
    st.one_of(st.sampled_from(list(pb.TensorEncoding.values())), st.integers(-(2**31), 2**31 - 1)),
    st.none() | st.booleans(),
    st.booleans(),
    st.one_of(st.sampled_from(list(pb.Freshness.values())), st.integers(-(2**31), 2**31 - 1)),
    st.one_of(st.integers(0, 2000), st.integers(0, 2**32 - 1)),
)


@FUZZ
@given(st.one_of(RESULT_OPTIONS, st.binary(max_size=256)))
def test_options_parse(message: pb.ResultOptions | bytes) -> None:
    if isinstance(message, bytes):
        parsed = pb.ResultOptions()
        try:
            parsed.ParseFromString(message)
        except DecodeError:
            assume(False)
        message = parsed
    try:
        options = Options.parse(message)
    except InvalidOptions:
        return
    assert set(options.feature_maps) <= set(FEATURE_NAMES)
    assert len(set(options.feature_maps)) == len(options.feature_maps)
    assert options.encoding in pb.TensorEncoding.values() and options.encoding != 0


@FUZZ
@given(message=RESULT_OPTIONS)
def test_stream_options_never_raise(pipeline: Pipeline, message: pb.ResultOptions) -> None:
    """A stream's first options configure its queue; bad ones fail that frame, nothing else."""
    session = StreamSession(pipeline, Metrics(), default_queue=4, draining=asyncio.Event())
    request = pb.FrameRequest(frame_id=7, encoded=BASES["jpeg"], options=message)
    item = session._accept(Received(request, request.ByteSize(), None), 0.0)
    if item.options is None:
        assert item.failure is not None and item.failure.status.code == INVALID
        assert item.failure.frame_id == 7
    else:
        assert 1 <= session.capacity <= 1024
        assert session.freshness in pb.Freshness.values() and session.freshness != 0


# ------------------------------------------------------------- the whole request, via prepare


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    """A real Pipeline; prepare() needs the settings only (the engine is not used there), and
    a stream's new options the model's stages and heatmap stride (whether their result fits
    in a message): the shipped model's, as its card gives them."""
    stages = [StageInfo("stage1", 16, 2), StageInfo("stage2", 32, 4)]
    stages += [StageInfo("stage3", 64, 8), StageInfo("stage4", 64, 8)]
    fake_engine = SimpleNamespace(model=SimpleNamespace(stages=stages, heatmap_stride=8))
    return Pipeline(
        Settings(cameras=(), max_frame_pixels=320 * 240, max_frame_side=400),
        fake_engine,  # type: ignore[arg-type]
        ThreadPoolExecutor(1),
    )


@st.composite
def frame_requests(draw: st.DrawFn) -> pb.FrameRequest:
    kind = draw(st.sampled_from(["encoded", "arbitrary", "raw", "empty", "wire"]))
    if kind == "encoded":
        return pb.FrameRequest(encoded=draw(mutated_frames()))
    if kind == "arbitrary":
        return pb.FrameRequest(encoded=draw(ARBITRARY))
    if kind == "raw":
        data, width, height, _ = draw(raw_frames())
        fmt = draw(st.one_of(st.sampled_from(list(pb.PixelFormat.values())), st.integers(0, 99)))
        return pb.FrameRequest(raw=pb.RawImage(width=width, height=height, format=fmt, data=data))
    if kind == "empty":
        return pb.FrameRequest()
    request = pb.FrameRequest()
    try:
        request.ParseFromString(draw(st.binary(max_size=512)))
    except DecodeError:
        assume(False)
    return request


@FUZZ
@given(frame_requests())
def test_prepare_any_request(pipeline: Pipeline, request: pb.FrameRequest) -> None:
    """The server's own decode-and-fit step: InvalidFrame or a model-ready input."""
    try:
        prepared = pipeline.prepare(request)
    except InvalidFrame:
        return
    assert prepared.pixels.shape[:2] in pipeline.sizes and prepared.pixels.dtype == np.uint8
    g = prepared.geometry
    assert g.scale > 0 and g.pad_left >= 0 and g.pad_top >= 0


# ------------------------------------------------------- what the fuzzing found, pinned down


def png_declaring(width: int, height: int) -> bytes:
    """A real PNG whose IHDR is changed to width x height, with a correct CRC."""
    data = bytearray(BASES["png"])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_hiding_a_larger_frame(side: int) -> bytes:
    """A JPEG whose header says 64x48 to our parser, and side x side to libjpeg.

    Our parser reads ``ff 00`` after SOI as a marker with a length and skips that many bytes;
    libjpeg takes ``ff 00`` for a stuffed zero, discards it, and reads on: the skipped bytes
    hold a whole side x side frame header (DQT, SOF, DHT, SOS) and the start of its scan.
    The real 64x48 header comes after, where libjpeg ends the scan early and fills the rest.
    """
    big = jpeg(np.full((side, side, 3), 128, np.uint8), 50)
    pos = 2
    while big[pos + 1] != 0xDA:
        pos += 2 + struct.unpack(">H", big[pos + 2 : pos + 4])[0]
    sos_end = pos + 2 + struct.unpack(">H", big[pos + 2 : pos + 4])[0]
    hidden = big[2:sos_end] + big[sos_end : sos_end + 64]
    length = struct.pack(">H", len(hidden) + 2)
    assert b"\xff" not in length
    return b"\xff\xd8\xff\x00" + length + hidden + BASES["jpeg"][2:]


def test_a_stuffed_marker_cannot_hide_a_larger_frame_from_the_limits() -> None:
    data = jpeg_hiding_a_larger_frame(2000)  # 2000x2000: 4M pixels against a 76,800 limit
    assert len(data) < 4096  # a few KiB that libjpeg decodes to 12 MB
    direct = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert direct is not None and direct.shape == (2000, 2000, 3)
    check_decode(data, 1)  # refused (InvalidFrame), or decoded at the size the limits saw


@pytest.mark.parametrize(("width", "height"), [(0, 48), (64, 0), (0, 0)])
def test_a_zero_sized_header_is_an_invalid_frame(
    pipeline: Pipeline, width: int, height: int
) -> None:
    with pytest.raises(InvalidFrame, match="positive width"):
        pipeline.prepare(pb.FrameRequest(encoded=png_declaring(width, height)))


async def test_served_zero_sized_and_hidden_frames_are_invalid_argument() -> None:
    """Through a live server: INVALID_ARGUMENT for Analyze, a frame error in a stream."""
    server = Server(Settings(port=0, metrics_port=-1, cameras=(), max_frame_pixels=320 * 240))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            bad = [png_declaring(0, 48), jpeg_hiding_a_larger_frame(1000)]
            for data in bad:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Analyze(pb.FrameRequest(encoded=data), timeout=30)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                    info.value.code(),
                    info.value.details(),
                )
            stream = stub.StreamFrames(timeout=30)
            for i, data in enumerate(bad):
                await stream.write(pb.FrameRequest(frame_id=i, encoded=data))
            await stream.done_writing()
            codes = [r.status.code async for r in stream]
            assert codes == [INVALID, INVALID], codes
    finally:
        await server.stop(grace=0)


@FUZZ
@given(
    st.lists(
        st.floats(width=32, allow_nan=False),
        min_size=1,
        max_size=600,
    ),
    st.integers(1, 6),
)
@example([0.5], 1)  # 1x1: OpenCV 5.1 read it as a scalar and returned four values
@example([float(i) for i in range(64)], 1)  # the smallest array converted by OpenCV
def test_fast_float16_is_numpys_bit_for_bit(values: list[float], rows: int) -> None:
    """The encoder's SIMD float16 conversion gives what numpy's astype gives, bits and all."""
    array = np.array(values, np.float32)
    array = array[: len(array) // rows * rows].reshape(rows, -1) if len(array) >= rows else array
    with np.errstate(over="ignore"):
        want = array.astype(np.float16)
    got = to_float16(array)
    assert got.dtype == np.float16 and got.shape == want.shape
    # +0.0 and -0.0 compare equal; every other value must match exactly, infinities included.
    assert np.array_equal(got, want)
    assert np.array_equal(got.view(np.uint16)[want != 0], want.view(np.uint16)[want != 0])
