"""Frame decoding and fitting: real JPEG/PNG bytes through OpenCV, bad bytes refused early."""

from __future__ import annotations

import re
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
import simplejpeg
from conftest import exif, jpeg, png, png_with, scene, with_exif_orientation

from convstream.client import Frame
from convstream.server.decode import (
    MAX_HEADER_STEPS,
    MAX_SCANS,
    Limits,
    check_encoded,
    decode_encoded,
    decode_raw,
    encoded_size,
    jpeg_scans,
)
from convstream.server.errors import FrameTooLarge, InvalidFrame
from convstream.server.letterbox import (
    MAX_REGIONS,
    PAD_VALUE,
    Geometry,
    Region,
    choose_input,
    letterbox,
    reduction,
)

LIMITS = Limits(max_pixels=40_000_000, max_side=16384)
IMAGE = scene(3, 240, 320)


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 4096)
    idat_chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", 0)
    return b"\x89PNG\r\n\x1a\n" + body + idat_chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def with_thumbnail(image: bytes) -> bytes:
    """The JPEG with an EXIF APP1 segment holding a small JPEG (scan, end marker and all)."""
    thumb = jpeg(cv2.resize(IMAGE, (80, 60)))
    app1 = b"Exif\x00\x00" + thumb
    return image[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + image[2:]


def progressive(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    return data.tobytes()


def with_scans(data: bytes, times: int, between: bytes = b"") -> bytes:
    """A progressive JPEG whose last scan (a refinement: libjpeg warns and decodes on) comes
    `times` more times, each copy after ``between`` (a segment)."""
    last = data.rindex(b"\xff\xda")
    scan = data[last:-2]  # to the end marker
    return data[:-2] + (between + scan) * times + b"\xff\xd9"


def comment(text: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text


CASES = [
    ("jpeg", jpeg(IMAGE), None, "ok"),
    ("progressive jpeg", progressive(IMAGE), None, "ok"),
    ("png", png(IMAGE), None, "ok"),
    ("jpeg q60", jpeg(IMAGE, 60), None, "ok"),
    ("truncated jpeg", jpeg(IMAGE)[: len(jpeg(IMAGE)) // 2], InvalidFrame, "truncated JPEG"),
    ("truncated png", png(IMAGE)[:-40], InvalidFrame, "truncated PNG"),
    # bytes after the end marker are ignored, as decoders do (a camera's padding, a trailer)
    ("jpeg with a trailer", jpeg(IMAGE) + b"GARBAGE" * 100, None, "ok"),
    # a trailer holding ff da (a phone's motion photo: the JPEG, then an MP4) once read as a
    # scan after the last end marker, and a whole JPEG was refused as truncated
    ("jpeg with a trailer holding ff da", jpeg(IMAGE) + b"\xff\xda\x00\x0c" * 50, None, "ok"),
    ("png with a trailer", png(IMAGE) + b"\xff\xda GARBAGE", None, "ok"),
    # the thumbnail's end marker is not the image's
    (
        "truncated jpeg with a thumbnail",
        with_thumbnail(jpeg(IMAGE))[:-2000],
        InvalidFrame,
        "truncated",
    ),
    ("jpeg with a thumbnail", with_thumbnail(jpeg(IMAGE)), None, "ok"),
    (
        "random bytes",
        bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8)),
        InvalidFrame,
        "expected JPEG",
    ),
    ("tiff", b"II*\x00" + b"\x00" * 200, InvalidFrame, "starting 49 49 2a 00.*a TIFF image"),
    ("webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(200), InvalidFrame, "looks like a WebP"),
    ("heic", b"\x00\x00\x00\x18ftypheic" + bytes(200), InvalidFrame, "looks like a HEIC"),
    ("exr", b"\x76\x2f\x31\x01" + b"\x00" * 200, InvalidFrame, "expected JPEG"),
    ("empty", b"", InvalidFrame, "empty frame"),
    ("jpeg magic only", b"\xff\xd8\xff", InvalidFrame, "no frame header"),
    ("png bomb", png_header(20000, 20000), FrameTooLarge, r"20000x20000 \(400,000,000 pixels\)"),
    ("png zero size", png_header(0, 10), InvalidFrame, "positive width"),
    # past max_side in height alone, with pixels to spare
    ("png tall", png_header(2000, 16385), FrameTooLarge, r"2000x16385 \(32,770,000 pixels\)"),
    ("png 8x8", png(IMAGE[:8, :8]), InvalidFrame, "8x8; frames must be at least 32x32 pixels"),
    ("jpeg 31 wide", jpeg(IMAGE[:, :31]), InvalidFrame, "31x240; frames must be at least 32x32"),
    # a strip the model would see under one heatmap cell high, not scored as a frame
    (
        "png 4000x32",
        png(np.zeros((32, 4000, 3), np.uint8)),
        InvalidFrame,
        "4000x32, 125 times as wide as high; frames may be at most 12 times",
    ),
    (
        "jpeg 32x400",
        jpeg(np.zeros((400, 32, 3), np.uint8)),
        InvalidFrame,
        "32x400, 12.5 times as high as wide",
    ),
]


@pytest.mark.parametrize(("name", "data", "error", "text"), CASES, ids=[c[0] for c in CASES])
def test_decode_encoded(name: str, data: bytes, error: type[Exception] | None, text: str) -> None:
    if error is None:
        image = decode_encoded(data, LIMITS)
        assert image.shape == IMAGE.shape and image.dtype == np.uint8
        assert np.abs(image.astype(int) - IMAGE.astype(int)).mean() < 8  # lossy but faithful
    else:
        with pytest.raises(error, match=text):
            decode_encoded(data, LIMITS)


def test_transparent_pixels_are_analysed_over_the_padding_grey() -> None:
    """A PNG's transparent pixels are what a person sees through, not the colour they hide:
    analysed as stored, an intact box over a transparent half hiding a damaged one scored
    0.9999. Over the letterbox's grey they read as nothing there, as the padding does."""
    rgba = np.dstack([IMAGE, np.full(IMAGE.shape[:2], 255, np.uint8)])
    rgba[:, 160:, 3] = 0  # the right half transparent, its colour still there
    rgba[:100, :80, 3] = 128  # a half-transparent corner
    image = decode_encoded(png(rgba), LIMITS)
    assert (image[:, 160:] == PAD_VALUE).all()
    assert (image[100:, :160] == IMAGE[100:, :160]).all()  # opaque: as stored
    mixed = np.rint(IMAGE[:100, :80] * (128 / 255) + PAD_VALUE * (127 / 255))
    assert np.abs(image[:100, :80] - mixed).max() <= 1
    # 16 bits a channel alike
    wide = rgba.astype(np.uint16) * 257
    assert (decode_encoded(png(wide), LIMITS) == image).all()
    assert (decode_encoded(png(IMAGE), LIMITS) == IMAGE).all()  # no alpha: as before
    # the client draws its overlays on the same pixels
    for data in (png(rgba), png(wide), png(IMAGE)):
        assert (Frame(data).pixels() == decode_encoded(data, LIMITS)).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_orientation_turns_the_frame_as_opencv_and_viewers_do(orientation: int) -> None:
    """Width and height from the header are those shown (a quarter turn trades them), and
    the pixels, decoded in full or at half size, are OpenCV's own turning of them."""
    big = cv2.resize(IMAGE, (640, 480))
    data = with_exif_orientation(jpeg(big), orientation)
    quarter = orientation >= 5
    assert encoded_size(data) == ("jpeg", *((480, 640) if quarter else (640, 480)))
    stored = np.frombuffer(data, np.uint8)
    for reduce, flag in ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        assert (decode_encoded(data, LIMITS, reduce) == cv2.imdecode(stored, flag)).all()
    if orientation != 1:  # turned: not the stored pixels
        as_stored = cv2.imdecode(stored, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        assert not np.array_equal(decode_encoded(data, LIMITS), as_stored)


def test_an_exif_orientation_is_read_where_opencv_reads_it() -> None:
    """A LONG tag, an APP1 after the frame header (libjpeg keeps markers up to the scan), a
    PNG eXIf after the image data or after a text that says IDAT: OpenCV, which draws the
    client's overlays, turned them and the server did not."""
    turned = cv2.rotate(IMAGE, cv2.ROTATE_90_CLOCKWISE)
    plain = jpeg(IMAGE)
    app1 = b"Exif\x00\x00" + exif(6, "<", 4)
    sof = plain.index(b"\xff\xc0")
    after_sof = plain[:sof] + plain[sof:].replace(
        b"\xff\xc4", b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + b"\xff\xc4", 1
    )
    lossless = png(IMAGE)
    text = b"Comment\x00the IDAT chunk follows"
    cases = {
        "a LONG tag": plain[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + plain[2:],
        "APP1 after the frame header": after_sof,
        "eXIf after IDAT": png_with(lossless, b"eXIf", exif(6), b"IEND"),
        "a text saying IDAT first": png_with(
            png_with(lossless, b"eXIf", exif(6), b"IDAT"), b"tEXt", text, b"eXIf"
        ),
    }
    for name, data in cases.items():
        assert encoded_size(data)[1:] == (240, 320), name
        image = decode_encoded(data, LIMITS)
        assert np.abs(image.astype(int) - turned).mean() < 8, name  # JPEG's loss at most
        shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert (image == shown).all(), name


def test_what_an_exif_search_walks_past_is_not_judged_by_it() -> None:
    """The orientation search walks a PNG's chunks only up to its image data (and its last
    bytes for an eXIf after it), and a JPEG's header as far as it can: a 4 MB PNG in 1 KiB
    image chunks was refused for its chunk count, and a JPEG with stray bytes before its
    scan (libjpeg skips them) was refused; a chunk longer than the file is refused at once
    (OpenCV took seconds on a 200-byte PNG)."""
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), np.uint8)
    plain = png(noise)
    head, body, pos = b"", b"", 8
    while pos < len(plain):  # the image data, out of however many chunks OpenCV wrote
        (length,) = struct.unpack(">I", plain[pos : pos + 4])
        if plain[pos + 4 : pos + 8] == b"IDAT":
            body += plain[pos + 8 : pos + 8 + length]
        elif not body:
            head += plain[pos : pos + 12 + length]
        pos += 12 + length
    small = b"".join(
        struct.pack(">I", len(part))
        + b"IDAT"
        + part
        + struct.pack(">I", zlib.crc32(b"IDAT" + part))
        for part in (body[i : i + 1024] for i in range(0, len(body), 1024))
    )
    rechunked = plain[:8] + head + small + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    assert rechunked.count(b"IDAT") > 4096
    assert (decode_encoded(rechunked, LIMITS) == noise).all()
    stray = jpeg(IMAGE)
    scan = stray.index(b"\xff\xda")
    stray = stray[:scan] + b"\x00\x00\x00" + stray[scan:]
    assert decode_encoded(stray, LIMITS).shape == IMAGE.shape
    huge = png(IMAGE[:40, :40])
    at = huge.index(b"IDAT") - 4
    huge = huge[:at] + struct.pack(">I", 3_000_000_000) + huge[at + 4 :]
    with pytest.raises(InvalidFrame, match="IDAT chunk of 3,000,000,000 bytes runs past"):
        decode_encoded(huge, LIMITS)


def test_a_transparent_png_is_blended_in_bands_not_in_float_copies_of_it_all() -> None:
    """Blended whole, a 40-megapixel half-transparent 16-bit PNG (321 KB sent) took 2.1 GB
    beside its pixels, three at once 5.3 GB: float copies of the whole image. In bands of
    rows, the decoding holds little more than the stored pixels and the BGR it returns."""
    side = 2000
    rgba = np.zeros((side, side, 4), np.uint16)
    rgba[..., :3] = 40000
    rgba[..., 3] = 32768  # half transparent everywhere
    data = png(rgba)
    stored = rgba.nbytes  # what OpenCV decodes it to, 32 MB
    tracemalloc.start()  # numpy's allocations (OpenCV's arrays are numpy's) are traced
    try:
        image = decode_encoded(data, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (side, side, 3)
    expected = round(40000 / 257 * 32768 / 65535 + PAD_VALUE * (1 - 32768 / 65535))
    assert np.abs(image.astype(int) - expected).max() <= 1
    assert peak < stored + image.nbytes + 16 * 2**20, f"{peak / 2**20:.0f} MiB at the peak"


def test_a_16_bit_png_is_held_to_the_bytes_of_the_largest_8_bit_frame() -> None:
    """A 6300x6300 16-bit RGBA PNG (308 KB) passed the 40-megapixel limit and took 3.4 s and
    380 MB to decode. Its pixels at its own depth are now held to what the largest 8-bit
    RGBA frame takes; the same size at 8 bits still decodes."""
    limits = Limits(max_pixels=100 * 100, max_side=16384)
    wide = png(np.zeros((100, 100, 4), np.uint16))
    with pytest.raises(
        FrameTooLarge,
        match=r"PNG is 100x100 at 16 bits a sample: 80,000 bytes decoded, past the 40,000 of "
        r"the largest 8-bit RGBA frame \(max_frame_pixels .*\); send it at 8 bits, or smaller",
    ):
        check_encoded(wide, limits)
    assert decode_encoded(png(np.zeros((100, 100, 4), np.uint8)), limits).shape == (100, 100, 3)
    # 16-bit grey, 2 bytes a pixel, is no more than 8-bit RGBA: it decodes
    assert decode_encoded(png(np.zeros((100, 100), np.uint16)), limits).shape == (100, 100, 3)


def test_a_grey_png_s_transparent_shade_is_analysed_over_the_padding_grey() -> None:
    grey = cv2.cvtColor(IMAGE, cv2.COLOR_BGR2GRAY)
    grey[:, :100] = 7  # the shade its tRNS makes transparent
    data = png_with(png(grey), b"tRNS", struct.pack(">H", 7), b"IDAT")
    image = decode_encoded(data, LIMITS)
    assert (image[:, :100] == PAD_VALUE).all()
    assert (image[:, 100:] == cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)[:, 100:]).all()


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding() -> None:
    """Each scan of a progressive JPEG is a pass over the whole image: a 365 KB file of one
    tiny scan repeated 2,000 times held a decoding thread for 6.7 s at 6320x6320, and three of
    them held up every other client. Past MAX_SCANS such a frame is refused unread."""
    data = progressive(IMAGE)
    assert jpeg_scans(data) == 10  # libjpeg's progressive script
    assert jpeg_scans(progressive(IMAGE[..., 0])) == 6  # grey
    assert jpeg_scans(jpeg(IMAGE)) == 1
    assert jpeg_scans(with_scans(data, MAX_SCANS - 10)) == MAX_SCANS
    decode_encoded(with_scans(data, MAX_SCANS - 10), LIMITS)  # the last one allowed: decoded
    bombs = [
        with_scans(data, MAX_SCANS - 9),
        with_scans(data, 2000),
        # an end marker inside a comment between scans is skipped with it, as libjpeg does
        with_scans(data, MAX_SCANS, between=comment(b"\xff\xd9")),
    ]
    for bomb in bombs:
        assert jpeg_scans(bomb) == MAX_SCANS + 1  # counted to the limit, no further
        with pytest.raises(InvalidFrame, match=f"JPEG with more than {MAX_SCANS} scans"):
            decode_encoded(bomb, LIMITS)
    # ff da after the end of the image (a motion photo's video) is no scan of it
    trailer = data + b"\xff\xda\x00\x0c" * (2 * MAX_SCANS)
    assert jpeg_scans(trailer) == 10
    assert decode_encoded(trailer, LIMITS).shape == IMAGE.shape
    # A sequential JPEG whose first scan holds every component is read to that scan's end:
    # libjpeg decodes no scan after it (checked: 200 more took no longer), so none is counted.
    sequential = jpeg(IMAGE)
    first = sequential.index(b"\xff\xda")
    repeated = sequential[:-2] + sequential[first:-2] * 200 + b"\xff\xd9"
    assert jpeg_scans(repeated) == 1
    assert decode_encoded(repeated, LIMITS).shape == IMAGE.shape
    # One whose first scan holds one component of three reads on: its scans are counted.
    one_of_three = repeated[: first + 4] + b"\x01" + repeated[first + 5 :]
    assert jpeg_scans(one_of_three) == MAX_SCANS + 1


def test_header_size_is_read_without_decoding() -> None:
    frame = scene(4, 720, 1280)
    assert encoded_size(jpeg(frame)) == ("jpeg", 1280, 720)
    assert encoded_size(png(frame)) == ("png", 1280, 720)


def test_a_jpeg_header_is_walked_a_bounded_number_of_steps() -> None:
    """Fill bytes before a marker are legal and read past; a header of millions of them (or
    of empty segments), which a stream would walk on its event loop as the frame arrives, is
    refused after MAX_HEADER_STEPS steps rather than walked to its end."""
    data = jpeg(IMAGE)
    padded = data[:2] + b"\xff" * 100 + data[2:]  # 100 fill bytes after SOI
    assert encoded_size(padded) == ("jpeg", 320, 240)
    for header in (b"\xff" * (4 << 20), b"\xff\xfe\x00\x02" * (1 << 20)):  # fill, empty COMs
        with pytest.raises(InvalidFrame, match=f"within {MAX_HEADER_STEPS} markers"):
            encoded_size(data[:2] + header + data[2:])


def test_reduced_jpeg_decode_gives_the_fraction() -> None:
    frame = scene(5, 1080, 1920)
    assert reduction(1920, 1080, (384, 640)) == 2
    assert reduction(1280, 720, (384, 640)) == 2  # exactly twice: decoded straight to 640x360
    assert reduction(1000, 600, (384, 640)) == 1
    assert reduction(4000, 3000, (480, 640)) == 4
    image = decode_encoded(jpeg(frame), LIMITS, reduce=2)
    assert image.shape == (540, 960, 3)


def test_a_jpeg_whose_picture_data_is_damaged_is_refused_and_a_quirky_one_is_not() -> None:
    """A JPEG with bytes changed inside its picture data (a newcomer's garbled sample box)
    decoded without a word from OpenCV, its lost blocks filled with noise, and scored 0.12,
    "intact"; only libjpeg's "Corrupt JPEG data" line on stderr said so. It is refused now,
    in libjpeg's words; a USB webcam's two stray bytes before the end ("2 extraneous bytes
    before marker 0xd9") and an encoder's zeros padding the end, which leave the picture
    whole, still decode, to the pixels OpenCV gives, at every reduction."""
    frame = scene(6, 720, 1280)
    data = jpeg(frame)
    garbled = bytearray(data)
    for i in range(2000, len(garbled) - 100, 997):
        garbled[i] = 0 if garbled[i] != 0xFF else 1
    with pytest.raises(InvalidFrame, match=r"^corrupt JPEG: libjpeg says 'Corrupt JPEG data: "):
        decode_encoded(bytes(garbled), LIMITS)
    # 200 bytes flipped anywhere in the picture data: refused, whatever libjpeg calls it. A
    # flipped byte read as a marker ("Unsupported marker type 0x1a") gave the rows read so
    # far with grey below, and 46 bytes left before the end a smeared picture: both scored.
    said = set()
    for at in range(2000, len(data) - 300, 15013):
        flipped = data[:at] + bytes(b ^ 0x55 for b in data[at : at + 200]) + data[at + 200 :]
        with pytest.raises(InvalidFrame) as refused:
            decode_encoded(flipped, LIMITS)
        said.add(re.sub(r"\d+|0x[0-9a-f]+", "N", str(refused.value)))
    assert any("Unsupported marker type" in words for words in said), said
    assert any("N extraneous bytes before marker N" in words for words in said), said
    # a progressive JPEG's: stray bytes before the next scan's Huffman tables (0xc4) passed
    # as a header's quirk, whatever their count (a reviewer's byte flips)
    sweep = progressive(frame[:360, :640])
    refused = 0
    for at in range(sweep.index(b"\xff\xda") + 14, len(sweep) - 2, 997):
        if refused:
            break
        flipped = sweep[:at] + bytes([sweep[at] ^ 0x10]) + sweep[at + 1 :]
        try:
            simplejpeg.decode_jpeg(flipped, colorspace="BGR", strict=True)
        except ValueError as exc:
            if "marker 0xc4" in str(exc):
                with pytest.raises(InvalidFrame, match="extraneous bytes before marker 0xc4"):
                    decode_encoded(flipped, LIMITS)
                refused += 1
    assert refused, "no flip of the sweep left stray bytes before a Huffman table"
    assert data.endswith(b"\xff\xd9")
    for stray in (b"\x00\x00", b"\x12\x34", b"\x07" * 10, b"\x00" * 100):
        _decodes_as_opencv_does(data[:-2] + stray + data[-2:])
    _decodes_as_opencv_does(data)


def _decodes_as_opencv_does(data: bytes) -> None:
    for reduce in (1, 2, 4):
        flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
        opencv = cv2.imdecode(np.frombuffer(data, np.uint8), flag[reduce])
        assert np.array_equal(decode_encoded(data, LIMITS, reduce=reduce), opencv)


RAW_CASES = [
    ("bgr", IMAGE.tobytes(), 320, 240, "BGR8", None),
    ("rgb", IMAGE[:, :, ::-1].tobytes(), 320, 240, "RGB8", None),
    (
        "short",
        IMAGE.tobytes()[:-1],
        320,
        240,
        "BGR8",
        "needs 230400 bytes for 320x240 BGR8, got 230399",
    ),
    ("gray as bgr", IMAGE[:, :, 0].tobytes(), 320, 240, "BGR8", "got 76800"),
    ("zero", b"", 0, 240, "BGR8", "positive width"),
    ("tiny", b"\x00" * 3 * 320 * 16, 320, 16, "BGR8", "320x16; frames must be at least 32x32"),
    # a 1280x720 BGR frame's bytes (2,764,800) declared as 9600x96: as many, a 100 to 1 strip
    ("mixed up", IMAGE.tobytes() * 12, 9600, 96, "BGR8", "9600x96, 100 times as wide"),
    ("huge", b"\x00" * 12, 100000, 100000, "BGR8", "100000x100000"),
]


@pytest.mark.parametrize(
    ("name", "data", "w", "h", "fmt", "error"), RAW_CASES, ids=[c[0] for c in RAW_CASES]
)
def test_decode_raw(name: str, data: bytes, w: int, h: int, fmt: str, error: str | None) -> None:
    if error is None:
        assert np.array_equal(decode_raw(data, w, h, fmt, LIMITS), IMAGE)
    else:
        with pytest.raises(InvalidFrame, match=error):
            decode_raw(data, w, h, fmt, LIMITS)


def test_a_frame_twelve_times_as_wide_as_high_is_the_widest_taken() -> None:
    for w, h in ((384, 32), (32, 384), (1920, 160)):
        assert decode_raw(bytes(w * h * 3), w, h, "BGR8", LIMITS).shape == (h, w, 3)
    with pytest.raises(InvalidFrame, match=r"1921x160, 12\.01 times as wide as high"):
        decode_raw(bytes(1921 * 160 * 3), 1921, 160, "BGR8", LIMITS)


def test_raw_gray_becomes_three_equal_channels() -> None:
    gray = cv2.cvtColor(IMAGE, cv2.COLOR_BGR2GRAY)
    out = decode_raw(gray.tobytes(), 320, 240, "GRAY8", LIMITS)
    assert out.shape == (240, 320, 3)
    assert np.array_equal(out[:, :, 0], gray) and np.array_equal(out[:, :, 2], gray)


SIZES = [(384, 640), (480, 640), (384, 384)]


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (1280, 720, (384, 640)),
        (1920, 1080, (384, 640)),
        (640, 480, (480, 640)),
        (500, 500, (384, 384)),
        (300, 1000, (384, 384)),
    ],
)
def test_choose_input_by_aspect(w: int, h: int, expected: tuple[int, int]) -> None:
    assert choose_input(w, h, SIZES) == expected


def test_letterbox_maps_back_to_the_frame() -> None:
    frame = scene(6, 720, 1280)
    pixels, g = letterbox(frame, (384, 640), (1280, 720))
    assert pixels.shape == (384, 640, 3)
    assert (g.scale, g.pad_left, g.pad_top) == (0.5, 0, 12)
    # the padding is flat grey, the content is the frame scaled by half
    assert (pixels[:12] == 114).all() and (pixels[-12:] == 114).all()
    expected = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
    assert np.array_equal(pixels[12:372], expected)


@pytest.mark.parametrize(("w", "h"), [(1280, 720), (1000, 563), (563, 1000), (32, 16384)])
def test_the_peak_of_a_corner_cell_is_a_pixel_of_the_frame(w: int, h: int) -> None:
    """A cell past the frame's last row or column (its centre beyond the edge) gives the
    frame's last pixel: a 1280x720 frame's peak was (1256, 720), and frame[720, 1256] fails."""
    target = choose_input(w, h, [(384, 640), (384, 384)])
    _, g = letterbox(np.zeros((h, w, 3), np.uint8), target, (w, h))
    heat = np.zeros((target[0] // 8, target[1] // 8), np.float32)
    right = -(-(g.pad_left + round(w * g.scale)) // 8) - 1  # the last cells over the frame
    bottom = -(-(g.pad_top + round(h * g.scale)) // 8) - 1
    top, left = g.pad_top // 8, g.pad_left // 8  # and the first
    for row, col in ((bottom, right), (top, left), (bottom, left), (top, right)):
        heat[:] = 0.0
        heat[row, col] = 1.0
        got_row, got_col, x, y, value = g.hottest_cell(heat, 8)
        assert (got_row, got_col, value) == (row, col, 1.0)
        assert 0 <= x <= w - 1 and 0 <= y <= h - 1, (x, y)
        frame = np.zeros((h, w), np.uint8)
        assert frame[round(y), round(x)] == 0  # an index of the frame, as a client rounds it


def test_regions_are_the_groups_of_cells_over_the_threshold_in_frame_pixels() -> None:
    """Each group of touching cells at or over the threshold is one box, in the frame's own
    pixels (a 1280x720 frame at half scale, 12 px of bar above): touching by a corner joins
    two cells; cells of only bar are not the frame's; the group of the hottest cell comes
    first even when another reaches 1.0 too (a sigmoid's float32 saturates there)."""
    g = Geometry(1280, 720, 640, 384, 0.5, 0, 12)
    heat = np.zeros((48, 80), np.float32)
    heat[10:13, 20:25] = 0.95  # rows 10-12, columns 20-24: input x 160-200, y 80-104
    heat[40, 70] = 1.0  # a lone cell, as hot, but later in reading order
    heat[11, 22] = 1.0  # the hottest cell, first in reading order, so hottest_cell's
    heat[13, 25] = 0.9  # touches the first group by a corner only
    heat[0, 5] = 1.0  # a cell of only bar (input rows 0-7, the bar is 12 px)
    heat[30, 30] = np.nextafter(np.float32(0.875), np.float32(0.0))  # under by a float32 step
    heat[20, 40] = 0.875  # at the threshold (0.875 is a float32): damaged, as a score at it
    assert g.hottest_cell(heat, 8)[:2] == (11, 22)
    assert g.regions(heat, 8, 0.875) == [
        # x 160-208 input -> 320-416; y (80 - 12) / 0.5 = 136 to (112 - 12) / 0.5 = 200
        Region(320, 136, 96, 64, 1.0, 16),
        # (320 - 12) / 0.5 = 616; a 16-pixel cell
        Region(1120, 616, 16, 16, 1.0, 1),
        Region(640, 296, 16, 16, 0.875, 1),
    ]
    # a group is kept whole, its box covering cells it does not hold
    assert [r.cells for r in g.regions(heat, 8, 0.9375)] == [15, 1]  # the corner cell out
    assert g.regions(heat, 8, 1.0001) == []
    # the last cells over the frame's edge: their box stops at the frame's last pixel
    edge = np.zeros((48, 80), np.float32)
    edge[46, 79] = edge[1, 0] = 1.0  # row 46 covers input y 368-376; the frame ends at 372
    assert g.regions(edge, 8, 0.5) == [
        Region(0, 0, 16, 8, 1.0, 1),  # y (8 - 12) / 0.5 = -8: from 0 to (16 - 12) / 0.5 = 8
        Region(1264, 712, 16, 8, 1.0, 1),
    ]


def test_regions_are_at_most_the_hottest_sixteen() -> None:
    g = Geometry(640, 384, 640, 384, 1.0, 0, 0)
    heat = np.zeros((48, 80), np.float32)
    values = np.linspace(0.5, 0.99, 40, dtype=np.float32)
    for k, value in enumerate(values):  # 40 lone cells, two cells apart
        heat[2 * (k // 20) * 2, 2 * (k % 20) * 2] = value
    found = g.regions(heat, 8, 0.4)
    assert len(found) == MAX_REGIONS == 16
    assert [r.value for r in found] == sorted(values.tolist(), reverse=True)[:16]


@pytest.mark.parametrize(("w", "h"), [(1280, 720), (1000, 563), (563, 1000), (32, 16384)])
def test_every_region_is_inside_the_frame(w: int, h: int) -> None:
    target = choose_input(w, h, [(384, 640), (384, 384)])
    _, g = letterbox(np.zeros((h, w, 3), np.uint8), target, (w, h))
    heat = np.ones((target[0] // 8, target[1] // 8), np.float32)  # every cell, bars too
    (whole,) = g.regions(heat, 8, 0.5)
    assert (whole.x, whole.y, whole.width, whole.height) == (0, 0, w, h)


GEOMETRY_CASES = [
    # (frame width, frame height, model input (h, w)); JPEG frames are decoded reduced
    (1280, 720, (384, 640), "raw"),
    (1000, 563, (384, 640), "raw"),  # the short side is 360.32 input pixels
    (563, 1000, (384, 384), "raw"),  # and here 216.19
    (1920, 1080, (384, 640), "jpeg"),  # decoded at 1/2
    (1281, 721, (384, 640), "jpeg"),  # at 1/2, its last pixel partly past the frame
    (32, 16384, (384, 384), "raw"),  # 0.75 input pixels wide
    (16384, 32, (384, 640), "raw"),  # 1.25 input pixels high
    (32, 16384, (32, 4096), "raw"),  # 0.0625 input pixels wide: one pixel all the same
]


@pytest.mark.parametrize(("w", "h", "target", "kind"), GEOMETRY_CASES)
def test_geometry_maps_the_input_back_to_the_frame_as_the_resize_did(
    w: int, h: int, target: tuple[int, int], kind: str
) -> None:
    # Ramps: blue is x and green is y, so each input pixel tells where in the frame the resize
    # took it from; red marks the frame, against the grey padding.
    frame = np.empty((h, w, 3), np.uint8)
    frame[:, :, 0] = np.round(255 * (np.arange(w) + 0.5) / w)
    frame[:, :, 1] = np.round(255 * (np.arange(h) + 0.5) / h)[:, None]
    frame[:, :, 2] = 255
    if kind == "jpeg":
        image = decode_encoded(jpeg(frame, 100), LIMITS, reduction(w, h, target))
        assert image.shape[:2] != (h, w)
    else:
        image = frame
    pixels, g = letterbox(image, target, (w, h))
    t_h, t_w = target
    assert pixels.shape == (t_h, t_w, 3)
    # The side that fills the input maps back onto the frame's edge exactly...
    if t_w / w <= t_h / h:
        assert g.pad_left == 0 and (t_w - g.pad_left) / g.scale == pytest.approx(w, rel=1e-12)
    else:
        assert g.pad_top == 0 and (t_h - g.pad_top) / g.scale == pytest.approx(h, rel=1e-12)
    # ...and the other side ends within the input pixel that holds the frame's edge.
    rows, cols = np.nonzero(pixels[:, :, 2] > 200)
    assert (cols.min(), rows.min()) == (g.pad_left, g.pad_top)
    assert abs(cols.max() + 1 - (g.pad_left + w * g.scale)) < 1
    assert abs(rows.max() + 1 - (g.pad_top + h * g.scale)) < 1
    # Every input pixel whose cell lies in the frame holds the ramps where the geometry puts
    # that cell (an area average of a ramp is the ramp at the cell's centre).
    tolerance = 4 if kind == "jpeg" else 1.5  # JPEG's own error, on its subsampled colour
    for axis, channel, side, pad in ((1, 0, w, g.pad_left), (0, 1, h, g.pad_top)):
        cells = np.arange(pad, pixels.shape[axis])
        inside = cells[(cells + 1 - pad) / g.scale <= side]
        expected = 255 * (inside + 0.5 - pad) / g.scale / side
        ramp = pixels[:, :, channel] if axis == 1 else pixels[:, :, channel].T
        across = np.unique(rows if axis == 1 else cols)  # the frame's rows (or columns)
        got = ramp[across][:, inside].astype(float)
        assert (np.abs(got - expected) <= tolerance).all()
