"""Shared fixtures: a real convstream server on a loopback port, real frames, a real model."""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator

import cv2
import grpc
import numpy as np
import pytest

from convstream.model.scenes import render_scene
from convstream.server import Server, Settings
from convstream.v1 import convstream_pb2_grpc as pb_grpc

MESSAGE_LIMIT = 64 * 1024 * 1024


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def with_exif_orientation(data: bytes, orientation: int) -> bytes:
    """JPEG bytes with an EXIF APP1 segment holding only an Orientation tag, as phones write."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08" + ifd + b"\x00\x00\x00\x00"
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def png_with(data: bytes, chunk: bytes, body: bytes, before: bytes) -> bytes:
    """PNG bytes with a chunk put before the first chunk of type ``before``."""
    at = data.index(before) - 4
    crc = struct.pack(">I", zlib.crc32(chunk + body))
    return data[:at] + struct.pack(">I", len(body)) + chunk + body + crc + data[at:]


def exif(orientation: int, order: str = ">", kind: int = 3) -> bytes:
    """A TIFF block holding only an Orientation tag, of type SHORT (3) or LONG (4)."""
    value = struct.pack(
        order + ("HH" if kind == 3 else "I"), orientation, *([0] if kind == 3 else [])
    )
    entry = struct.pack(order + "HHI", 0x0112, kind, 1) + value
    head = (b"MM\x00*" if order == ">" else b"II*\x00") + struct.pack(order + "I", 8)
    return head + struct.pack(order + "H", 1) + entry + b"\x00\x00\x00\x00"


def scene(
    seed: int, height: int = 720, width: int = 1280, damaged: bool | None = None
) -> np.ndarray:
    """A rendered warehouse frame (BGR uint8)."""
    return render_scene(seed, height, width, damaged=damaged).image


@pytest.fixture
def settings() -> Settings:
    return Settings(port=0, metrics_port=0, grace_period_s=1.0, cameras=())


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    srv = Server(settings)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(grace=0)


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    options = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.ConvstreamStub:
    return pb_grpc.ConvstreamStub(channel)
