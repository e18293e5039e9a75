"""`convstream samples`: rendered warehouse frames (and a clip) to try the service on,
written as JPEGs a newcomer can open."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


def add_samples(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "samples",
        help="write rendered warehouse frames to try the server on",
        description="Render warehouse frames (the same renderer the model was trained on, "
        "with seeds it never saw) as JPEG files; about half show damaged packages. With "
        "--clip, also a video of the server's demo camera.",
    )
    p.add_argument(
        "directory",
        type=Path,
        help="where the JPEG files (and --clip's video) go, created if needed",
    )
    p.add_argument("--count", type=int, default=8, help="how many frames (default 8)")
    p.add_argument(
        "--by-label",
        action="store_true",
        help="write them into DIRECTORY/damaged/ and DIRECTORY/intact/, the layout "
        "`convstream evaluate` reads",
    )
    p.add_argument(
        "--size",
        default="720x1280",
        help=f"HxW of each frame, {SAMPLE_MIN_SIDE} to {SAMPLE_MAX_SIDE} a side (default 720x1280)",
    )
    p.add_argument(
        "--clip",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also write conveyor.avi: the first SECONDS (e.g. 20, or 2.5) of the server's "
        f"demo camera (a conveyor, 360x640 at {CLIP_FPS:g} fps, packages passing, some "
        "damaged) as MJPEG, for `convstream stream`; default 0, no video",
    )
    p.set_defaults(func=_samples)


SAMPLE_MIN_SIDE = 32  # render_scene's smallest frame side
SAMPLE_MAX_SIDE = 8192  # 8K: a larger frame took minutes and GBs, then failed in the JPEG


class _Listing:
    """What `samples` says it wrote, a line at a time on stdout. A reader that went away
    (`| head -1`) or a stdout that cannot be written (a full disk) does not stop the files
    being written: the lines stop, the files go on, and ``done`` says how it ended."""

    def __init__(self) -> None:
        self.error: OSError | None = None

    def say(self, line: str) -> None:
        if self.error is not None:
            return
        try:
            print(line, flush=True)
        except OSError as exc:
            self.error = exc
            # keep Python's exit-time flush of what is left from failing on it again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def done(self) -> int:
        """0 once every file is written, unless stdout failed other than by its reader
        going away: then one line on stderr and 1."""
        if self.error is None or isinstance(self.error, BrokenPipeError):
            return 0
        why = self.error.strerror or str(self.error)
        print(
            f"convstream samples: cannot write to stdout: {why} (the files are written)",
            file=sys.stderr,
        )
        return 1


def _samples(args: argparse.Namespace) -> int:
    import cv2

    from convstream.model.scenes import render_scene
    from convstream.v1 import MAX_ASPECT

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(
            f"convstream samples: --size must look like 720x1280, got {args.size!r}",
            file=sys.stderr,
        )
        return 2
    wrong = [
        f"{flag} must be {bound}, got {value}"
        for flag, bound, value, ok in [
            ("--count", ">= 0", f"{args.count:g}", args.count >= 0),
            ("--clip", "0 to 3600 seconds", f"{args.clip:g}", 0 <= args.clip <= 3600),
            (
                "--size",
                f"{SAMPLE_MIN_SIDE} to {SAMPLE_MAX_SIDE} pixels a side and at most "
                f"{MAX_ASPECT} times as wide as high or as high as wide, as the server takes "
                "frames (HxW, e.g. 720x1280)",
                args.size,
                min(height, width) >= SAMPLE_MIN_SIDE
                and max(height, width) <= SAMPLE_MAX_SIDE
                and max(height, width) <= MAX_ASPECT * min(height, width),
            ),
        ]
        if not ok
    ]
    if not wrong and args.count == 0 and args.clip == 0:  # it wrote nothing, and said 0
        wrong = ["nothing to write with --count 0 and --clip 0: ask for images or a clip"]
    if wrong:
        print(f"convstream samples: {'; '.join(wrong)}", file=sys.stderr)
        return 2
    if args.directory.exists() and not args.directory.is_dir():
        print(
            f"convstream samples: {args.directory} is a file; give a folder (created if need be)",
            file=sys.stderr,
        )
        return 2
    folders = {label: args.directory / label for label in ("damaged", "intact")}
    if not args.by_label:
        folders = dict.fromkeys(folders, args.directory)
    try:
        for folder in {args.directory, *folders.values()}:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"convstream samples: cannot create {exc.filename or args.directory}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    # An earlier run's samples go first: writing 2 into a folder of 6 left 4 old ones, and
    # `analyze` of the folder then mixed the two runs.
    earlier = [
        path
        for folder in dict.fromkeys(folders.values())
        for path in folder.glob("box-*.jpg")
        if SAMPLE_NAME.fullmatch(path.name) and path.is_file()
    ]
    for path in earlier:
        path.unlink(missing_ok=True)
    if earlier:
        print(
            f"convstream samples: removed {len(earlier)} sample image"
            f"{'s' * (len(earlier) != 1)} of an earlier run from {args.directory}",
            file=sys.stderr,
        )
    listing = _Listing()
    for i in range(args.count):
        scene = render_scene(4_000_000_000 + i, height, width, damaged=i % 2 == 1)
        label = "damaged" if scene.damaged else "intact"
        path = folders[label] / f"box-{i:03d}-{label}.jpg"
        # encoded here and written by Python, not cv2.imwrite: that returns only False,
        # and a file it did not write (a folder of that name, a full disk) read as written
        encoded, data = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        why = _write_file(path, data.tobytes()) if encoded else "OpenCV could not encode it"
        if why is not None:
            print(f"convstream samples: cannot write {path}: {why}", file=sys.stderr)
            return 1
        kinds = ", ".join(kind.replace("_", " ") for kind in scene.kinds)  # torn tape
        listing.say(f"{path}  {label}{f' ({kinds})' if kinds else ''}")
    if args.clip:
        code = _write_clip(args.directory / "conveyor.avi", args.clip, listing)
        if code:
            return code
    return listing.done()


SAMPLE_NAME = re.compile(r"box-[0-9]{3,}-(damaged|intact)\.jpg")  # what samples writes


def _write_file(path: Path, data: bytes) -> str | None:
    """Write data to path; why not, or None. A file cut short (a full disk) is removed,
    not left to read as a sample."""
    try:
        out = path.open("wb")
    except OSError as exc:  # a folder of that name, no permission
        return exc.strerror or str(exc)
    try:
        with out:
            out.write(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        return exc.strerror or str(exc)
    return None


CLIP_FPS = 15.0


def _write_clip(path: Path, seconds: float, listing: _Listing) -> int:
    """The server's demo camera (demo:conveyor, its defaults) as an MJPEG video file."""
    import cv2

    from convstream.model.scenes import Conveyor

    frames = max(1, round(seconds * CLIP_FPS))
    height, width = 360, 640
    conveyor = Conveyor(0, height, width, CLIP_FPS)
    if path.is_dir():  # OpenCV would say only that it cannot
        print(f"convstream samples: cannot write {path}: Is a directory", file=sys.stderr)
        return 1
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), CLIP_FPS, (width, height))
    if not writer.isOpened():
        print(f"convstream samples: OpenCV cannot write {path}", file=sys.stderr)
        return 1
    damaged = 0
    try:
        for i in range(frames):
            scene = conveyor.frame(i)
            damaged += scene.damaged
            writer.write(scene.image)
    finally:
        writer.release()
    listing.say(
        f"{path}  {frames / CLIP_FPS:g} s at {CLIP_FPS:g} fps, {frames} frames, {damaged} of "
        "them showing damage"
    )
    return 0
