"""What a frame's request deserializer reads off its wire bytes without copying them: its
size, its id and source, the length of its raw pixels.

Reading a bytes field of a parsed message copies it (``request.raw.data``: 35 ms for 64 MB,
``request.ByteSize()`` 71 ms), and a stream's checks run on the event loop every other call
waits on: three such reads of each 63.5 MB raw frame from one client stalled the others'
frames for seconds (a robustness review). The wire bytes say the same in microseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from convstream.v1 import convstream_pb2 as pb

# FrameRequest's fields read here, and RawImage's (convstream.proto)
_FRAME_ID, _SOURCE, _ENCODED, _RAW = 1, 2, 4, 5
_RAW_DATA = 4
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True)
class Received:
    """A FrameRequest as its deserializer gives it: the message, its size in bytes on the
    wire (what the byte budget counts), and the length of its raw pixels (None: no raw
    image)."""

    request: pb.FrameRequest
    size: int
    raw_length: int | None


# Fields read at most, in a message and in its raw image: a FrameRequest has 6 and a RawImage
# 4, and the walk is Python on the event loop: a message of 8 MB of repeated 2-byte fields
# took 0.9-2.9 s to walk (a diff review's), where parsing it took 10 ms.
MAX_FIELDS = 64


class _Unread(Exception):
    """The walk stopped before the message's end: too many fields, a group, a cut field."""


def _fields(
    data: bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value, offset) of each field of the message in
    data[start:end]: a varint's value, or a length-delimited field's length and the offset
    of its bytes (fixed-size fields: 0 and their offset), at most MAX_FIELDS of them. Raises
    _Unread where it cannot read to the end (the parse, or a copy of the field, says)."""
    end = len(data) if end is None else end
    at = start

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while shift < 64:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise ValueError("varint too long")

    for _ in range(MAX_FIELDS):
        if at >= end:
            return
        try:
            key = varint()
            field, wire = key >> 3, key & 7
            if wire == _VARINT:
                value, offset = varint(), at
            elif wire == _BYTES:
                value = varint()
                offset, at = at, at + value
            elif wire in (_FIXED64, _FIXED32):
                value, offset = 0, at
                at += 8 if wire == _FIXED64 else 4
            else:
                raise _Unread  # a group (deprecated), or no wire type at all
        except (IndexError, ValueError):
            raise _Unread from None
        if at > end:
            raise _Unread
        yield field, wire, value, offset
    if at < end:
        raise _Unread


def id_and_source(data: bytes) -> tuple[int, str]:
    """FrameRequest's frame_id and source (at most 256 bytes read) from its wire bytes, for
    the refusal of a message too large to parse; (0, "") for what is not found."""
    frame_id, source = 0, ""
    try:
        for field, wire, value, at in _fields(data):
            if field == _FRAME_ID and wire == _VARINT:
                frame_id = value
            elif field == _SOURCE and wire == _BYTES:
                source = data[at : at + min(value, 256)].decode("utf-8", "replace")
    except _Unread:
        pass  # what was read before
    return frame_id, source


def raw_data_length(data: bytes) -> int | None:
    """len(request.raw.data) of a FrameRequest from its wire bytes, as the parse reads it: a
    field given twice, the last one (a raw image's data merged over an earlier one's; an
    encoded image after a raw one replaces it, being the same oneof). None: no raw image,
    or bytes the walk does not read to their end (then the check reads raw.data itself)."""
    length = None
    try:
        for field, wire, value, at in _fields(data):
            if field == _ENCODED and wire == _BYTES:
                length = None
            elif field == _RAW and wire == _BYTES:
                length = length or 0  # a raw image, empty unless its data says otherwise
                for inner, inner_wire, inner_value, _ in _fields(data, at, at + value):
                    if inner == _RAW_DATA and inner_wire == _BYTES:
                        length = inner_value
    except _Unread:
        return None
    return length
