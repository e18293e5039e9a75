"""Frame bytes to BGR pixels: sniff the format, check the header, decode with OpenCV.

Nothing reaches OpenCV's decoder until the format is known from its leading bytes (never
from a field the client sets) and the dimensions read from the header are inside the limits,
so a decompression bomb or an exotic format costs a few microseconds, not gigabytes.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from convstream.server.errors import FrameTooLarge, InvalidFrame
from convstream.server.letterbox import PAD_VALUE
from convstream.v1 import MAX_ASPECT

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOS = frozenset({0xDA})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})  # start-of-frame markers of progressive JPEGs
# A marker as libjpeg finds one between segments and scans: ff (fill bytes ff ff ... allowed)
# then a code that is neither a stuffed 00 nor a restart marker inside a scan's data.
_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")
# Scans of a JPEG decoded at most. A progressive JPEG's every scan is a pass over the whole
# image (about 3 ms at 40 megapixels), so a crafted 365 KB file repeating one tiny scan 2,000
# times held a decoding thread for 6.7 s, and three such frames held up every other client's.
# libjpeg's own progressive script writes 10 scans (6 for grey); a sequential JPEG has one
# per component at most.
MAX_SCANS = 100
_BLEND_PIXELS = 1 << 18  # pixels of a transparent PNG blended over the grey at a time
_IEND = b"\x00\x00\x00\x00IEND"
_REDUCED = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_CHANNELS = {"BGR8": 3, "RGB8": 3, "GRAY8": 1}
# The smallest side a frame may have. Letterboxed into a 384-pixel input, a smaller frame is
# scaled up more than 12 times: a blur in which the model "finds" damage (an 8x8 PNG scored
# 0.86). Four heatmap cells.
MIN_SIDE = 32


@dataclass(frozen=True)
class Limits:
    """The largest frame the server will decode."""

    max_pixels: int
    max_side: int

    def check(self, width: int, height: int, what: str) -> None:
        if width <= 0 or height <= 0:
            raise InvalidFrame(f"{what} must have positive width and height, got {width}x{height}")
        if width < MIN_SIDE or height < MIN_SIDE:
            raise InvalidFrame(
                f"{what} is {width}x{height}; frames must be at least {MIN_SIDE}x{MIN_SIDE} "
                "pixels: scaled up to the model's input, a smaller one is a blur it cannot judge"
            )
        if width > self.max_side or height > self.max_side or width * height > self.max_pixels:
            raise FrameTooLarge(
                f"{what} is {width}x{height} ({width * height:,} pixels); the limit is "
                f"{self.max_side:,} pixels a side and {self.max_pixels:,} pixels in all "
                "(max_frame_pixels and max_frame_side in the server's config)"
            )
        if max(width, height) > MAX_ASPECT * min(width, height):
            wide = "wide as high" if width > height else "high as wide"
            # rounded up: 12.001 said as 12 read as within the rule it broke
            ratio = math.ceil(max(width, height) / min(width, height) * 100) / 100
            raise InvalidFrame(
                f"{what} is {width}x{height}, {ratio:g} "
                f"times as {wide}; frames may be at most {MAX_ASPECT} times as wide as high "
                "or as high as wide: fitted into the model's input, a narrower one is a strip "
                "under four heatmap cells"
            )


def sniff(data: bytes) -> str:
    """'jpeg' or 'png' from the leading bytes; InvalidFrame for anything else."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if not data:
        raise InvalidFrame("expected JPEG or PNG bytes, got an empty frame")
    head = data[:8].hex(" ")
    looks = _looks_like(data)
    raise InvalidFrame(
        f"expected JPEG (ff d8 ff) or PNG (89 50 4e 47) bytes, got {len(data)} bytes "
        f"starting {head}" + (f" ({looks}: send it as JPEG or PNG)" if looks else "")
    )


_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
# Leading bytes of formats a client may send by mistake, to name them in the refusal.
_OTHER_FORMATS = (
    (0, b"RIFF", 8, b"WEBP", "a WebP image"),
    (0, b"II*\x00", 0, b"", "a TIFF image"),
    (0, b"MM\x00*", 0, b"", "a TIFF image"),
    (0, b"GIF8", 0, b"", "a GIF image"),
    (0, b"BM", 0, b"", "a BMP image"),
    (0, b"\x00\x00\x00\x0cjP  ", 0, b"", "a JPEG 2000 image"),
    *((4, b"ftyp" + brand, 0, b"", "a HEIC or HEIF image") for brand in _HEIF_BRANDS),
    (4, b"ftypavif", 0, b"", "an AVIF image"),
    (4, b"ftypavis", 0, b"", "an AVIF image"),
    (4, b"ftyp", 0, b"", "an MP4 or QuickTime video"),
    (0, b"\x1aE\xdf\xa3", 0, b"", "a Matroska or WebM video"),
)


def _looks_like(data: bytes) -> str:
    for at, magic, also_at, also, name in _OTHER_FORMATS:
        if data[at : at + len(magic)] == magic and data[also_at : also_at + len(also)] == also:
            return f"it looks like {name}"
    return ""


# Steps (markers and fill bytes) jpeg_size takes before giving up. Real JPEGs reach their frame
# header within a few dozen (APPn, DQT, DHT, ...); the bound keeps a crafted header of
# millions of fill bytes or empty segments from holding the event loop (a stream checks each
# frame's header as it arrives) for seconds: each step is a Python loop turn, ~0.1 us.
MAX_HEADER_STEPS = 4096


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(position, marker) of each header segment that has a length, walking the segments
    from the start (an EXIF thumbnail's markers are inside its APP1 segment, and skipped
    with it), until the data ends."""
    pos = 2
    for _ in range(MAX_HEADER_STEPS):
        if pos + 4 > len(data):
            return
        if data[pos] != 0xFF:
            raise InvalidFrame(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0x00:
            # libjpeg skips a stuffed ff 00 and reads on, so a length read here could hop
            # over a second, larger frame header that the decoder would then use.
            raise InvalidFrame(f"corrupt JPEG: a stuffed byte (ff 00) in the header at {pos}")
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        yield pos, marker
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    raise InvalidFrame(
        f"corrupt JPEG: no frame header within {MAX_HEADER_STEPS} markers and fill bytes"
    )


def _jpeg_segment(data: bytes, wanted: frozenset[int]) -> int | None:
    """Where the first header segment with a marker in ``wanted`` starts; None when the
    data ends first."""
    return next((pos for pos, marker in _jpeg_segments(data) if marker in wanted), None)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment, without decoding."""
    pos = _jpeg_segment(data, _SOF_MARKERS)
    if pos is None or pos + 9 > len(data):
        raise InvalidFrame(f"truncated or corrupt JPEG: no frame header in {len(data)} bytes")
    height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
    return width, height


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidFrame(f"truncated or corrupt PNG: no IHDR chunk in {len(data)} bytes")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _complete(kind: str, data: bytes) -> bool:
    # A frame cut short in transit still decodes in OpenCV (the rest painted grey), so check
    # that the image ends: a JPEG's EOI after its first scan starts (none can come inside the
    # entropy-coded data; an EXIF thumbnail's EOI is inside its APP1 segment, which the walk
    # skips), a PNG's IEND chunk. Bytes after the end are ignored, as decoders do: a phone's
    # motion photo (a JPEG, then an MP4), a trailer some cameras add. The last EOI or SOS
    # in the file was the wrong test: a trailer holding ff da refused a whole JPEG.
    # Most frames end with the end: say so without a walk or a search.
    if kind == "jpeg":
        if data.endswith(b"\xff\xd9"):
            return True
        # searched from the end: a trailer is short beside the scan (a motion photo's MP4
        # is not: 1.2 ms searched forward through its scan, on the event loop)
        try:
            scan = _jpeg_segment(data, _SOS)
        except InvalidFrame:  # stray bytes past the frame header: from the frame header
            scan = _jpeg_segment(data, _SOF_MARKERS)
        return scan is not None and data.rfind(b"\xff\xd9", scan) != -1
    if data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND":
        return True
    # IEND is empty: its length, 0, then its type, then its CRC
    return data.rfind(_IEND, 33, len(data) - 4) != -1


def orientation(kind: str, data: bytes) -> int:
    """The EXIF orientation of JPEG (APP1 "Exif") or PNG (eXIf) bytes: 1 to 8, 1 for none."""
    tiff = b""
    if kind == "jpeg":
        # where libjpeg, and so OpenCV, looks: any APP1 before the first scan (stray bytes
        # after the frame header, which libjpeg skips, end the search, not the frame)
        with contextlib.suppress(InvalidFrame):
            for pos, marker in _jpeg_segments(data):
                if marker in _SOS:
                    break
                (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
                body = data[pos + 4 : pos + 2 + length]
                if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
                    tiff = body[6:]
                    break
    else:
        # before the image data, or after it, as libpng reads it: the chunks up to the first
        # IDAT, then those after the last (walking every IDAT cost 72 us of the event loop
        # a 720p PNG, 648 at 4K)
        for chunk, start, length in _png_chunks(data):
            if chunk == b"eXIf":
                tiff = data[start : start + length]
            if chunk in (b"eXIf", b"IDAT"):
                break
        else:
            return 1
        if not tiff:
            tiff = _png_tail_exif(data)
    return _tiff_orientation(tiff)


def _png_tail_exif(png: bytes) -> bytes:
    """An eXIf chunk after a PNG's image data: looked for in its last PNG_TAIL bytes, and
    taken only if the chunks from there lead to IEND (the bytes "eXIf" may be image data)."""
    at = png.rfind(b"eXIf", max(33, len(png) - PNG_TAIL))
    if at == -1:
        return b""
    with contextlib.suppress(InvalidFrame):  # not a chunk after all
        for chunk, _, _ in _png_chunks(png, at - 4):
            if chunk == b"IEND":
                (length,) = struct.unpack(">I", png[at - 4 : at])
                return png[at + 4 : at + 4 + length]
    return b""


# Chunks before the image data png_chunks walks at most: real PNGs have a few dozen; the bound
# keeps a crafted file of millions of empty chunks from holding the event loop.
MAX_PNG_CHUNKS = 4096
PNG_TAIL = 16384  # where an eXIf after the image data is looked for


def _png_chunks(data: bytes, pos: int = 8) -> Iterator[tuple[bytes, int, int]]:
    """(type, where its data starts, its length) of each chunk from the one at ``pos`` (the
    IHDR) on, until IEND or the data ends."""
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            return
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunk = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            # what OpenCV took seconds to refuse (a 200-byte PNG declaring a huge chunk)
            what = "truncated PNG" if chunk == b"IDAT" else "corrupt PNG"
            raise InvalidFrame(
                f"{what}: its {chunk.decode('latin-1')} chunk of {length:,} bytes runs past "
                f"the {len(data):,} bytes of the file"
            )
        yield chunk, pos + 8, length
        if chunk == b"IEND":
            return
        pos += 12 + length
    raise InvalidFrame(f"corrupt PNG: more than {MAX_PNG_CHUNKS:,} chunks before its image")


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first directory; 1 when absent."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (first,) = struct.unpack(order + "I", tiff[4:8])
    if first + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[first : first + 2])
    for at in range(first + 2, min(first + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack(order + "HH", tiff[at : at + 4])
        if tag == 0x0112 and kind in (3, 4):  # a SHORT, or a LONG as some writers put it
            fmt, size = ("H", 2) if kind == 3 else ("I", 4)
            (value,) = struct.unpack(order + fmt, tiff[at + 8 : at + 8 + size])
            return value if 1 <= value <= 8 else 1
    return 1


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels turned as an EXIF orientation says, as OpenCV's imread turns them."""
    if orientation >= 5:
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


def encoded_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of JPEG or PNG bytes, from the header alone: as shown, turned
    as an EXIF orientation says."""
    return _header(data)[:3]


def _header(data: bytes) -> tuple[str, int, int, int]:
    """encoded_size, and the EXIF orientation it took from the header."""
    kind = sniff(data)
    width, height = jpeg_size(data) if kind == "jpeg" else png_size(data)
    turn = orientation(kind, data)
    if turn >= 5:  # turned a quarter: width and height trade places
        width, height = height, width
    return kind, width, height, turn


def check_encoded(data: bytes, limits: Limits) -> tuple[str, int, int]:
    """(format, width, height) of JPEG or PNG bytes whose header is inside the limits and that
    end as a complete image does: every check short of decoding, in microseconds.
    Raises InvalidFrame or FrameTooLarge."""
    return _checked(data, limits)[:3]


# Channels a PNG's pixels hold, by its IHDR colour type: grey, RGB, palette, grey and
# alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _check_png_depth(data: bytes, width: int, height: int, limits: Limits) -> None:
    """FrameTooLarge for a PNG whose pixels, at its own depth, pass what the largest 8-bit
    RGBA frame takes (4 bytes a pixel of max_frame_pixels): a 6300x6300 16-bit RGBA PNG of
    308 KB passed the pixel limit, and took 3.4 s and 380 MB to decode, 17 at once on a
    16-core server's decoding threads."""
    if len(data) < 26:
        return  # png_size refused it already
    bits, kind = data[24], data[25]
    stored = width * height * _PNG_CHANNELS.get(kind, 4) * max(8, bits) // 8
    if stored > limits.max_pixels * 4:
        raise FrameTooLarge(
            f"PNG is {width}x{height} at {bits} bits a sample: {stored:,} bytes decoded, past "
            f"the {limits.max_pixels * 4:,} of the largest 8-bit RGBA frame (max_frame_pixels "
            "in the server's config, at 4 bytes a pixel); send it at 8 bits, or smaller"
        )


def _checked(data: bytes, limits: Limits) -> tuple[str, int, int, int]:
    """check_encoded, and the EXIF orientation."""
    kind, width, height, turn = _header(data)
    limits.check(width, height, kind.upper())
    if kind == "png":
        _check_png_depth(data, width, height, limits)
    if not _complete(kind, data):
        raise InvalidFrame(
            f"truncated {kind.upper()}: {len(data)} bytes with no end marker "
            f"({'ff d9 after its first scan starts' if kind == 'jpeg' else 'IEND'}) for a "
            f"{width}x{height} image"
        )
    return kind, width, height, turn


def decode_encoded(data: bytes, limits: Limits, reduce: int = 1) -> np.ndarray:
    """decode_oriented's picture alone."""
    return decode_oriented(data, limits, reduce)[0]


def decode_oriented(data: bytes, limits: Limits, reduce: int = 1) -> tuple[np.ndarray, int]:
    """Decode JPEG or PNG bytes to BGR, after check_encoded, turned as their EXIF orientation
    says; with that orientation (1 to 8, 1 for none).

    Args:
        data: the encoded frame.
        limits: checked against the header's dimensions before decoding.
        reduce: 2, 4 or 8 to let libjpeg decode at that fraction of the size (much cheaper
            than decoding in full and resizing); ignored for PNG.

    Returns:
        (np.ndarray, int): BGR uint8, shape (H, W, 3), and the EXIF orientation applied.
    """
    kind, width, height, turn = _checked(data, limits)
    if kind == "jpeg" and jpeg_scans(data) > MAX_SCANS:
        raise InvalidFrame(
            f"JPEG with more than {MAX_SCANS} scans, each a pass over the whole image (a "
            "progressive JPEG has about 10, a baseline one 1): re-encode it"
        )
    flag = _REDUCED.get(reduce, cv2.IMREAD_COLOR) if kind == "jpeg" else cv2.IMREAD_COLOR
    # Decoded as stored, then turned here as the EXIF orientation read above says: OpenCV's
    # own turning could read the EXIF otherwise, behind the geometry's back.
    buffer = np.frombuffer(data, np.uint8)
    as_stored = (height, width) if turn >= 5 else (width, height)  # as _orient turns it
    image = _jpeg(data, *as_stored, reduce) if kind == "jpeg" else None
    if kind == "png" and _transparent(data):
        stored = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        image = _over_grey(stored, data)
    if image is None:
        image = cv2.imdecode(buffer, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise InvalidFrame(f"corrupt {kind.upper()}: OpenCV could not decode {len(data)} bytes")
    image = _orient(image, turn)
    factor = reduce if kind == "jpeg" and reduce in _REDUCED else 1
    expected = (-(-height // factor), -(-width // factor))
    if image.shape[:2] != expected:  # the header we checked is not the one that was decoded
        raise InvalidFrame(
            f"corrupt {kind.upper()}: the header says {width}x{height} but "
            f"{image.shape[1] * factor}x{image.shape[0] * factor} was decoded"
        )
    return image, turn


# What libjpeg may say of a JPEG whose picture is whole: its warnings of a quirk in the file
# (a JFIF or Adobe header of another revision, an ICC profile it skips, a progressive script
# it decodes on) and few stray bytes after the picture data (_EXTRANEOUS). Anything else it
# says of a JPEG is damage: bits flipped in transit or storage, a part lost. It decodes on
# regardless, filling what it cannot read with grey, smears or stray blocks, which OpenCV
# returns without a word and the model scored (a garbled damaged box 0.12, "intact"); an
# error mid-picture ("Unsupported marker type 0x1a": a flipped byte read as a marker) gave
# the rows read so far, grey below, scored too.
_QUIRKS = (
    "unknown JFIF revision",
    "Unknown Adobe color transform",
    "Inconsistent progression sequence",
    "bad ICC marker",
    "Invalid SOS parameters for sequential JPEG",
)
# What simplejpeg does not decode and OpenCV's build may: its turn (scans after a sequential
# JPEG's whole first one are simplejpeg's own refusal; libjpeg reads the first alone).
_NOT_SIMPLEJPEG = (
    "conversion",
    "colorspace",
    "color space",
    "precision",
    "Didn't expect more than one scan",
    # TurboJPEG's header reading, for samplings it has no name for (cjpeg -sample 2x1,1x1,2x1)
    "subsampling level",
)
# "N extraneous bytes before marker 0xMM": bytes left unread before a marker after picture
# data mean the data did not decode as written (200 bytes flipped left 46 to 15,743; one
# flipped in a progressive JPEG, 1 to 8 before the next scan's Huffman tables, 0xc4); USB
# webcams' MJPEG frames often leave 1 to 4 before the end, and some encoders pad the end
# with zeros, their pictures whole.
_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x([0-9a-f]{2})")
EXTRANEOUS_OK = 16


def damaged_data(said: str, data: bytes) -> bool:
    """Whether what libjpeg said of ``data`` (its strict decoding's error) means that its
    picture's data did not decode as written."""
    if any(words in said for words in (*_QUIRKS, *_NOT_SIMPLEJPEG)):
        return False
    extra = _EXTRANEOUS.search(said)
    if extra is None:
        return True
    count = int(extra[1])
    if extra[2] == "d9":  # before the end: a webcam's few bytes, an encoder's padding
        if count <= EXTRANEOUS_OK:
            return False
        if data.endswith(b"\xff\xd9") and count + 2 <= len(data):
            return bool(data[-2 - count : -2].strip(b"\x00\xff"))  # more than padding
        return True
    # Elsewhere, a few between the header's segments are skipped before any picture data;
    # after it (before a restart, the next scan, a progressive JPEG's next Huffman tables)
    # any at all are data that did not decode as written.
    return count > EXTRANEOUS_OK or not _stray_in_header(data)


def _stray_in_header(data: bytes) -> bool:
    """Whether walking the header meets bytes that are no segment before the first scan."""
    try:
        return all(marker != 0xDA for _, marker in _jpeg_segments(data))
    except InvalidFrame:
        return True


def _jpeg(data: bytes, width: int, height: int, reduce: int) -> np.ndarray | None:
    """A JPEG of ``width`` x ``height`` as stored decoded to BGR (at 1/``reduce`` of its size,
    as _REDUCED takes it) by libjpeg, its warnings heard: InvalidFrame if what it says means
    the picture data is damaged. None for what simplejpeg does not decode (a colour space it
    does not convert): OpenCV's turn. The same pixels as OpenCV's libjpeg gives, as fast,
    and the GIL released alike."""
    factor = reduce if reduce in _REDUCED else 1
    size = {
        "min_factor": factor,
        "min_height": -(-height // factor),
        "min_width": -(-width // factor),
    }
    try:
        image: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, **size)
        return image
    except ValueError as exc:
        said = str(exc)
        if damaged_data(said, data):
            raise InvalidFrame(
                f"corrupt JPEG: libjpeg says {said!r}: part of the picture could not be "
                "read (damaged in transit or in storage), and what it filled in would have "
                "been scored as if it were seen"
            ) from exc
    try:  # a quirk: decoded again, hearing none
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False, **size)
        return image
    except ValueError:
        return None


def jpeg_scans(data: bytes) -> int:
    """The scans libjpeg decodes from a JPEG, as far as MAX_SCANS matters: 1 for a sequential
    JPEG whose first scan holds every component (the camera's kind: libjpeg then expects the
    end), else a count of the scan markers from the first, exact once it passes MAX_SCANS
    (then the scans are walked as libjpeg reads them, and the walk stops at MAX_SCANS + 1)."""
    frame = first = None
    with contextlib.suppress(InvalidFrame):  # stray bytes after the frame header: count all
        for pos, marker in _jpeg_segments(data):
            if marker in _SOF_MARKERS and frame is None:
                frame = pos
            if marker in _SOS:
                first = pos
                break
    if (
        frame is not None
        and first is not None
        and data[frame + 1] not in _PROGRESSIVE
        and first + 4 < len(data)
        and frame + 9 < len(data)
        and data[first + 4] >= data[frame + 9]  # components in the scan, in the frame
    ):
        return 1
    start = first if first is not None else 2
    # Every scan marker is ff da in the file (a scan's data never holds one); the count also
    # takes ff da inside a segment or a trailer after the end, so it only bounds the scans.
    # Counted with numpy: 29 us for a 720p progressive JPEG, against 183 for bytes.count.
    after = np.frombuffer(data, np.uint8, offset=start)
    scans = int(np.count_nonzero((after[:-1] == 0xFF) & (after[1:] == 0xDA)))
    if scans <= MAX_SCANS:
        return scans
    scans, pos = 0, start
    while scans <= MAX_SCANS and (found := _MARKER.search(data, pos)) is not None:
        marker, at = found[1][0], found.end() - 2
        if marker == 0xD9:  # the end of the image
            break
        scans += marker == 0xDA
        if marker == 0x01:  # TEM: no length
            pos = found.end()
            continue
        if at + 4 > len(data):
            break
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        pos = at + 2 + max(length, 2)  # over the segment (a scan's header), as libjpeg skips it
    return scans


def _transparent(png: bytes) -> bool:
    """Whether a PNG may have transparent pixels: an alpha channel (colour type 4 or 6) or
    a tRNS chunk (before the image data, where the format puts it)."""
    if len(png) > 25 and png[25] in (4, 6):
        return True
    for chunk, _, _ in _png_chunks(png):
        if chunk in (b"tRNS", b"IDAT"):
            return chunk == b"tRNS"
    return False


def _over_grey(image: np.ndarray | None, png: bytes) -> np.ndarray | None:
    """A PNG read as stored (IMREAD_UNCHANGED) over the letterbox's grey, as BGR uint8: its
    alpha (BGRA, 8 or 16 bits), or a grey PNG's transparent shade (tRNS); None for anything
    else, decoded as usual.

    Analysed as stored, a transparent pixel's hidden colour is what the model sees: a PNG
    showing an intact box over a transparent half that held a damaged one scored 0.9999,
    and 0.026 as a person sees it. Over the grey that pads every frame, what is transparent
    reads as nothing there, as the padding does."""
    if image is None:
        return None
    wide = image.dtype == np.uint16
    if image.ndim == 2:  # grey: OpenCV gives its tRNS shade no alpha
        key = _grey_key(png)
        if key is None:
            return None
        grey = (image >> 8 if wide else image).astype(np.uint8)
        out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        out[image == key] = PAD_VALUE
        return out
    if image.shape[2] != 4:
        return None
    opaque = 65535 if wide else 255
    out = np.empty((*image.shape[:2], 3), np.uint8)
    blend = image[..., 3].min() != opaque  # else all opaque, as most tools write
    # A band of rows at a time: blended whole, a 40-megapixel 16-bit PNG's float copies took
    # 2.1 GB beside the image (three at once, 5.3 GB); a band's take a few MB.
    rows = max(1, _BLEND_PIXELS // image.shape[1])
    for top in range(0, image.shape[0], rows):
        band = image[top : top + rows]
        # 16 bits to 8 as OpenCV reads an opaque PNG: the high byte
        colour = band[..., :3] >> 8 if wide else band[..., :3]
        if not blend:
            out[top : top + rows] = colour
            continue
        alpha = band[..., 3:] * np.float32(1 / opaque)
        mixed = colour.astype(np.float32) * alpha + np.float32(PAD_VALUE) * (1 - alpha)
        out[top : top + rows] = np.clip(np.rint(mixed, out=mixed), 0, 255, out=mixed)
    return out


def _grey_key(png: bytes) -> int | None:
    """A grey PNG's transparent shade (its tRNS), as OpenCV reads the pixels: 8-bit for 1, 2
    and 4 bits a pixel, 16-bit as it is."""
    if len(png) < 26 or png[25] != 0:
        return None
    for chunk, start, length in _png_chunks(png):
        if chunk == b"tRNS" and length >= 2:
            (key,) = struct.unpack(">H", png[start : start + 2])
            depth = png[24]
            return key * 255 // ((1 << depth) - 1) if depth < 8 else key
        if chunk == b"IDAT":
            return None
    return None


def check_raw(size: int, width: int, height: int, pixel_format: str, limits: Limits) -> None:
    """Refuse raw pixels of an unknown format, outside the limits, or of `size` bytes that are
    not width x height pixels of that format (rows top to bottom, no padding)."""
    channels = _CHANNELS.get(pixel_format)
    if channels is None:
        raise InvalidFrame(
            f"raw frame pixel format must be one of {', '.join(_CHANNELS)}, got {pixel_format}"
        )
    limits.check(width, height, "raw frame")
    expected = width * height * channels
    if size != expected:
        raise InvalidFrame(
            f"raw frame needs {expected} bytes for {width}x{height} {pixel_format}, got {size}"
        )


def decode_raw(
    data: bytes, width: int, height: int, pixel_format: str, limits: Limits
) -> np.ndarray:
    """Raw pixels to BGR without copying more than once, after check_raw.

    Args:
        data: rows top to bottom, no padding.
        width, height: the frame's size in pixels.
        pixel_format: "BGR8", "RGB8" or "GRAY8".
        limits: checked before anything is allocated.

    Returns:
        np.ndarray: BGR uint8, shape (height, width, 3).
    """
    check_raw(len(data), width, height, pixel_format, limits)
    pixels = np.frombuffer(data, np.uint8)
    if pixel_format == "GRAY8":
        return cv2.cvtColor(pixels.reshape(height, width), cv2.COLOR_GRAY2BGR)
    image = pixels.reshape(height, width, 3)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if pixel_format == "RGB8" else image
