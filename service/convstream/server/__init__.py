"""The convstream server: frames in, damage scores and feature maps out, over gRPC.

import asyncio
from convstream.server import Server, load_settings

async def main() -> None:
    server = Server(load_settings(overrides={"port": 0}))
    await server.start()
    ...
    await server.stop()
"""

from convstream.model import _offline  # noqa: F401  (before onnxruntime loads)
from convstream.server.app import Server, serve
from convstream.server.config import CameraConfig, ConfigError, Settings, load_settings
from convstream.server.errors import (
    ConvstreamError,
    Draining,
    FrameTooLarge,
    InvalidFrame,
    InvalidOptions,
    NotFound,
    Overloaded,
)

__all__ = [
    "CameraConfig",
    "ConfigError",
    "ConvstreamError",
    "Draining",
    "FrameTooLarge",
    "InvalidFrame",
    "InvalidOptions",
    "NotFound",
    "Overloaded",
    "Server",
    "Settings",
    "load_settings",
    "serve",
]
