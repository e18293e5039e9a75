"""What a list of a video's results holds in the client: the frames as sent, not as pixels.

    .venv/bin/python benchmarks/bench_client_memory.py [--seconds 10]

A 720p MJPEG clip at 30 frames/s is streamed through `convstream serve` by the Python client
(`client.stream(Video(clip).frames())`), and every result is kept in a list, as a script that
collects results does. Each upload runs in a fresh process, so its resident memory (RSS) after
the stream, less before it, is the list's (and the client's own buffers). "As pixels" is what
the same frames take decoded, 1280x720x3 bytes each: what a result held before it kept the
bytes it sent (commit 14e46b5), and what a raw upload still holds, since raw pixels are what
it sends.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
from common import convstream_server, machine, table

from convstream.model.scenes import render_scene

CHILD = """
import json, os, sys
from convstream.client import Client, Upload, Video

def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

address, clip, upload = sys.argv[1:]
with Client(address, upload=Upload(format=upload)) as client, Video(clip) as video:
    before = rss()
    results = list(client.stream(video.frames()))
    after = rss()
held = sum(len(r.frame.image) if isinstance(r.frame.image, bytes) else r.frame.image.nbytes
           for r in results)
print(json.dumps({"results": len(results), "ok": sum(r.ok for r in results), "held": held,
                  "rss": after - before}))
"""


def write_clip(path: Path, seconds: float, fps: int = 30) -> int:
    """A 720p MJPEG clip of `seconds`, ten rendered scenes in turn; returns its frame count."""
    scenes = [render_scene(900 + k, 720, 1280).image for k in range(10)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (1280, 720))
    count = round(seconds * fps)
    for i in range(count):
        writer.write(scenes[i % len(scenes)])
    writer.release()
    return count


def run(seconds: float) -> str:
    MiB = 1024 * 1024
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.avi"
        count = write_clip(clip, seconds)
        pixels = count * 1280 * 720 * 3
        with convstream_server() as server:
            address = f"127.0.0.1:{server}"
            for upload in ("jpeg", "png", "raw"):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, address, str(clip), upload],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                got = json.loads(out.strip().splitlines()[-1])
                if got["ok"] != count:
                    raise RuntimeError(f"{upload}: {got['ok']} of {count} frames analysed")
                rows.append(
                    [
                        f"`Upload(format={upload!r})`",
                        str(got["results"]),
                        f"{got['held'] / MiB:.0f}",
                        f"{pixels / MiB:.0f}",
                        f"{got['rss'] / MiB:.0f}",
                    ]
                )
    header = ["upload", "results kept", "frames held, MiB", "as pixels, MiB", "RSS growth, MiB"]
    return "\n".join(
        [
            f"machine: {machine()}",
            "",
            "### A list of a video's results, in the client",
            "",
            f"`benchmarks/bench_client_memory.py --seconds {seconds:g}`: a {seconds:g} s 720p "
            "clip at 30 frames/s streamed with the Python client, every result kept.",
            "",
            table(header, rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    args = parser.parse_args()
    print(run(args.seconds))


if __name__ == "__main__":
    main()
