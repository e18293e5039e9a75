"""Frame bytes to BGR pixels: sniff the format, check the header, decode with OpenCV.

Nothing reaches OpenCV's decoder until the format is known from its leading bytes (never
from a field the client sets) and the dimensions read from the header are inside the limits,
so a decompression bomb or an exotic format costs a few microseconds, not gigabytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from convstream.server.errors import FrameTooLarge, InvalidFrame

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
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


def sniff(data: bytes) -> str:
    """'jpeg' or 'png' from the leading bytes; InvalidFrame for anything else."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if not data:
        raise InvalidFrame("expected JPEG or PNG bytes, got an empty frame")
    head = data[:8].hex(" ")
    raise InvalidFrame(
        f"expected JPEG (ff d8 ff) or PNG (89 50 4e 47) bytes, got {len(data)} bytes "
        f"starting {head}"
    )


# Steps (markers and fill bytes) jpeg_size takes before giving up. Real JPEGs reach their frame
# header within a few dozen (APPn, DQT, DHT, ...); the bound keeps a crafted header of
# millions of fill bytes or empty segments from holding the event loop (a stream checks each
# frame's header as it arrives) for seconds: each step is a Python loop turn, ~0.1 us.
MAX_HEADER_STEPS = 4096


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment, without decoding."""
    pos = 2
    for _ in range(MAX_HEADER_STEPS):
        if pos + 4 > len(data):
            break
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
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    else:
        raise InvalidFrame(
            f"corrupt JPEG: no frame header within {MAX_HEADER_STEPS} markers and fill bytes"
        )
    raise InvalidFrame(f"truncated or corrupt JPEG: no frame header in {len(data)} bytes")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidFrame(f"truncated or corrupt PNG: no IHDR chunk in {len(data)} bytes")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _complete(kind: str, data: bytes) -> bool:
    # A frame cut short in transit still decodes in OpenCV (the rest painted grey), so check
    # the end marker: JPEG's EOI after its last scan (an EXIF thumbnail ends with an EOI of
    # its own, before the image's scan; bytes after the EOI are ignored, as decoders do),
    # PNG's IEND chunk.
    # Most frames end with the EOI: say so without scanning back through the entropy-coded
    # data for the last SOS (36 us with the GIL held for a 75 KiB 720p frame).
    if kind == "jpeg":
        if data.endswith(b"\xff\xd9"):
            return True
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")
    return data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND"


def encoded_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of JPEG or PNG bytes, from the header alone."""
    kind = sniff(data)
    width, height = jpeg_size(data) if kind == "jpeg" else png_size(data)
    return kind, width, height


def check_encoded(data: bytes, limits: Limits) -> tuple[str, int, int]:
    """(format, width, height) of JPEG or PNG bytes whose header is inside the limits and that
    end as a complete image does: every check short of decoding, in microseconds.
    Raises InvalidFrame or FrameTooLarge."""
    kind, width, height = encoded_size(data)
    limits.check(width, height, kind.upper())
    if not _complete(kind, data):
        raise InvalidFrame(
            f"truncated {kind.upper()}: {len(data)} bytes with no end marker "
            f"({'ff d9 after the last scan' if kind == 'jpeg' else 'IEND'}) for a "
            f"{width}x{height} image"
        )
    return kind, width, height


def decode_encoded(data: bytes, limits: Limits, reduce: int = 1) -> np.ndarray:
    """Decode JPEG or PNG bytes to BGR, after check_encoded.

    Args:
        data: the encoded frame.
        limits: checked against the header's dimensions before decoding.
        reduce: 2, 4 or 8 to let libjpeg decode at that fraction of the size (much cheaper
            than decoding in full and resizing); ignored for PNG.

    Returns:
        np.ndarray: BGR uint8, shape (H, W, 3).
    """
    kind, width, height = check_encoded(data, limits)
    flag = _REDUCED.get(reduce, cv2.IMREAD_COLOR) if kind == "jpeg" else cv2.IMREAD_COLOR
    # Pixels as stored, as the header describes them: an EXIF rotation would swap width and
    # height behind the geometry's back.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise InvalidFrame(f"corrupt {kind.upper()}: OpenCV could not decode {len(data)} bytes")
    factor = reduce if kind == "jpeg" and reduce in _REDUCED else 1
    expected = (-(-height // factor), -(-width // factor))
    if image.shape[:2] != expected:  # the header we checked is not the one that was decoded
        raise InvalidFrame(
            f"corrupt {kind.upper()}: the header says {width}x{height} but "
            f"{image.shape[1] * factor}x{image.shape[0] * factor} was decoded"
        )
    return image


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
