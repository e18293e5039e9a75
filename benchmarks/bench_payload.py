"""Bytes per result for float32, float16 and uint8 maps, with each encoding's error.

    .venv/bin/python benchmarks/bench_payload.py

One 720p JPEG analysed at 384x640 by `convstream serve`, asking for the heatmap and all four
stages in each encoding. "bytes" is the serialised FrameResult; the error compares each map,
decoded by the client library, with the float32 result: the largest absolute difference and
the RMS difference relative to the map's own RMS. Target (DESIGN.md): float16 half of float32,
uint8 a quarter, the error reported.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np
from common import CHANNEL_OPTIONS, convstream_server, frames, machine, table

from convstream.client.tensors import to_numpy
from convstream.model import FEATURE_NAMES
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

ENCODINGS = [
    ("float32", pb.TENSOR_ENCODING_FLOAT32),
    ("float16", pb.TENSOR_ENCODING_FLOAT16),
    ("uint8", pb.TENSOR_ENCODING_UINT8),
]


async def results(port: int, frame: bytes) -> dict[str, pb.FrameResult]:
    out = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ConvstreamStub(channel)
        for name, encoding in ENCODINGS:
            options = pb.ResultOptions(feature_maps=FEATURE_NAMES, encoding=encoding)
            out[name] = await stub.Analyze(pb.FrameRequest(encoded=frame, options=options))
    return out


def maps(result: pb.FrameResult) -> dict[str, np.ndarray]:
    return {"heatmap": to_numpy(result.heatmap)} | {
        t.name: to_numpy(t) for t in result.feature_maps
    }


def run() -> str:
    frame = frames(1)[0]
    with convstream_server() as port:
        got = asyncio.run(results(port, frame))
    reference = maps(got["float32"])
    full = got["float32"].ByteSize()
    rows = []
    for name, _ in ENCODINGS:
        decoded = maps(got[name])
        worst_abs, worst_rel = 0.0, 0.0
        for key, ref in reference.items():
            diff = decoded[key].astype(np.float64) - ref
            worst_abs = max(worst_abs, float(np.abs(diff).max()))
            scale = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))) or 1.0
            worst_rel = max(worst_rel, float(np.sqrt(np.mean(diff**2))) / scale)
        size = got[name].ByteSize()
        heatmap = got[name].heatmap.ByteSize()
        rows.append(
            [
                name,
                f"{size:,}",
                f"{heatmap:,}",
                f"**{size / full:.2f}**",
                f"{worst_abs:.2g}",
                f"{worst_rel:.2%}",
            ]
        )
    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in reference.items())
    return "\n".join(
        [
            "### Payload",
            "",
            "`benchmarks/bench_payload.py`: one result for a 720p frame at 384x640 with the"
            f" heatmap and every stage ({shapes}); error against float32, worst over the maps.",
            "",
            table(
                [
                    "encoding",
                    "result bytes",
                    "heatmap bytes",
                    "/ float32",
                    "max abs error",
                    "RMS error / RMS",
                ],
                rows,
            ),
        ]
    )


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    print(f"machine: {machine()}\n")
    print(run())


if __name__ == "__main__":
    main()
