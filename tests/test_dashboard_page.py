"""What the dashboard's page says, read as an operator reads it: a real server with real cameras,
the real dashboard, and real headless Chromium (the fixtures and helpers of test_dashboard.py).
Screenshots land beside test_dashboard.py's, in tests/dashboard_artifacts/; look at them."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
import test_dashboard
from live import FFmpegSource, write_video
from test_dashboard import _FIGURE_CLASHES, _open, _resized, _tile, _wait_frames
from test_dashboard import serving as _serving

from convstream.client.overlay import heat_colours
from convstream.dashboard import Dashboard, DashboardSettings
from convstream.dashboard.messages import parse_frame_message
from convstream.model.scenes import render_scene
from convstream.server import CameraConfig, Server
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc

# test_dashboard's fixtures, here by the names the tests ask for: Chromium, and the folder of
# screenshots
browser = test_dashboard.browser
artifacts = test_dashboard.artifacts


def _while_down(errors: list[str]) -> list[str]:
    """A page's console errors but those of the dashboard being down, which the test stopped:
    its WebSocket retrying, and what was loading then (an alert's picture raised just before
    the stop) refused a connection."""
    down = ("WebSocket connection", "net::ERR_CONNECTION_REFUSED")
    return [e for e in errors if not any(words in e for words in down)]


@asynccontextmanager
async def _watching(server_port: int, **settings: Any) -> AsyncIterator[Dashboard]:
    """A dashboard of the server on ``server_port`` (``settings``: DashboardSettings fields,
    its own ``port`` among them)."""
    base = DashboardSettings(address=f"127.0.0.1:{server_port}", port=0, poll_s=0.5)
    dash = Dashboard(replace(base, **settings))
    await dash.start()
    try:
        yield dash
    finally:
        await dash.stop()


@asynccontextmanager
async def _running(
    cameras: tuple[CameraConfig, ...], **settings: Any
) -> AsyncIterator[tuple[Server, Dashboard]]:
    """A server pulling ``cameras`` and a dashboard watching it."""
    async with _serving(cameras) as server, _watching(server.port, **settings) as dash:
        yield server, dash


async def _score(port: int, data: bytes) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ConvstreamStub(channel)
        return float((await stub.Analyze(pb.FrameRequest(encoded=data))).score)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_tiles_score_never_reads_as_the_threshold_it_is_under(
    browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """A still camera scores the same every frame; with the threshold one step (0.0001) over
    that score, the tile read "0.xx" in green beside `score ≥ 0.xxxx`, where the same "0.xx"
    at another threshold was red. The tile gives the score's four decimals, as the CLI does,
    and with the threshold at the score it reads as the threshold, in red."""
    still = tmp_path / "still.jpg"
    still.write_bytes(cv2.imencode(".jpg", render_scene(81, 360, 640).image)[1].tobytes())
    camera = CameraConfig(id="still", source=str(still), fps=2)
    async with _serving((camera,)) as server:
        sent = round(await _score(server.port, still.read_bytes()), 6)  # as the hub sends it
        shown = math.floor(sent * 10000 + 1e-6) / 10000  # four decimals, cut, as the page does
        from playwright.async_api import expect

        for threshold, hot in ((round(shown + 0.0001, 4), False), (shown, True)):
            async with _watching(server.port, threshold=threshold) as dash:
                page = await _open(browser, dash, 1280, 800)
                await _wait_frames(page, "still", 0, timeout=20.0)
                tile = _tile(page, "still")
                await expect(page.locator("#threshold")).to_have_text(
                    f"score \u2265 {threshold:.4g}"
                )
                await expect(tile.locator(".v-score")).to_have_text(f"{shown:.4f}")
                await expect(tile).to_have_class(re.compile(r"\bhot\b" if hot else r"^tile$"))
                assert (await tile.locator(".verdict").is_visible()) is hot
                name = "score-at-threshold" if hot else "score-under-threshold"
                await page.screenshot(path=artifacts / f"{name}.png")
                assert page.errors == []
                await page.context.close()


_RING_CENTRE = """(tile) => {
  const view = tile.querySelector(".view").getBoundingClientRect();
  const ring = tile.querySelector(".ring").getBoundingClientRect();
  return {x: (ring.left + ring.width / 2 - view.left) / view.width,
          y: (ring.top + ring.height / 2 - view.top) / view.height,
          width: ring.width, view: view.width};
}"""


@pytest.mark.asyncio(loop_scope="module")
async def test_a_damaged_tile_rings_where_the_damage_is(
    browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """The heatmap says where in colour, which a dim or busy picture (or the heatmap switched
    off) hides; a damaged tile also rings its hottest place, on the damage itself, and an
    intact one rings nothing. Two still cameras: the same scene with and without its tear;
    and a third, the tear moved to the top-left corner, where the DAMAGED badge covered it
    and its ring: there the badge goes top right."""
    cameras = []
    masks = {}
    for name, damaged in (("torn", True), ("intact", False), ("corner", True)):
        scene = render_scene(87, 360, 640, damaged=damaged)
        image, mask = scene.image, scene.mask
        if name == "corner":
            ys, xs = np.nonzero(mask)
            shift = (40 - int(ys.mean()), 60 - int(xs.mean()))
            image, mask = np.roll(image, shift, (0, 1)), np.roll(mask, shift, (0, 1))
        masks[name] = mask
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1])
        cameras.append(CameraConfig(id=name, source=str(path), fps=2))
    assert masks["torn"].any() and not masks["intact"].any()
    from playwright.async_api import expect

    async with _running(tuple(cameras), max_fps=2.0) as (_, dash):
        page = await _open(browser, dash, 1400, 900)
        for name in ("torn", "intact"):
            await _wait_frames(page, name, 0, timeout=20.0)
        torn, intact = _tile(page, "torn"), _tile(page, "intact")
        await expect(torn.locator(".verdict")).to_be_visible()
        await expect(torn.locator(".ring")).to_be_visible()
        await expect(intact.locator(".v-score")).to_have_text(re.compile(r"^0\.[0-7]"))
        assert not await intact.locator(".ring").is_visible()
        await page.screenshot(path=artifacts / "ring-on-damage.png")
        for heat in (True, False):  # the heatmap on, then off: the ring stays on the damage
            if not heat:
                await page.locator("#heat-toggle").uncheck()
                await expect(torn.locator(".ring")).to_be_visible()
            ring = await torn.evaluate(_RING_CENTRE)
            x, y = round(ring["x"] * 640), round(ring["y"] * 360)
            near = masks["torn"][max(0, y - 8) : y + 9, max(0, x - 8) : x + 9]
            assert near.any(), (heat, ring, x, y)  # within a heatmap cell of the damage
            assert 28 <= ring["width"] <= 0.1 * ring["view"], ring
        # The page's colours are the CLI's and the alerts' (heat_colours), value by value
        threshold = await page.evaluate("window.convstreamDashboard.state.threshold")
        lut = np.array(await page.evaluate("Array.from(window.convstreamDashboard.heatLut)"))
        colours, weights = heat_colours(np.arange(256)[None] / 255.0, threshold)
        rgba = lut.reshape(256, 4)
        assert np.abs(rgba[:, :3] - colours[0, :, ::-1].astype(int)).max() <= 3
        assert np.abs(rgba[:, 3] - np.round(0.85 * weights[0] * 255)).max() <= 1
        corner = _tile(page, "corner")
        await expect(corner.locator(".ring")).to_be_visible()
        badges = {n: await _tile(page, n).evaluate(_BADGE_AND_RING) for n in ("torn", "corner")}
        assert not badges["corner"]["overlap"] and badges["corner"]["right"], badges
        assert not badges["torn"]["right"], badges  # its tear is clear of the top-left corner
        await page.screenshot(path=artifacts / "ring-in-the-corner.png")
        assert page.errors == []
        await page.context.close()


_BADGE_AND_RING = """(tile) => {
  const badge = tile.querySelector(".verdict").getBoundingClientRect();
  const ring = tile.querySelector(".ring").getBoundingClientRect();
  const view = tile.querySelector(".view").getBoundingClientRect();
  return {right: badge.left > view.left + view.width / 2,
          overlap: !(ring.right < badge.left || ring.left > badge.right ||
                     ring.bottom < badge.top || ring.top > badge.bottom)};
}"""


# The widest score a tile shows, in place of test_dashboard's two-decimal one.
_WIDE_CLASHES = _FIGURE_CLASHES.replace('score: "1.00"', 'score: "0.8888"')


@pytest.mark.asyncio(loop_scope="module")
async def test_a_four_decimal_score_keeps_clear_of_the_other_figures(
    browser: Any, artifacts: Path
) -> None:
    """Four decimals are two digits wider in the score's large type: at each width the page
    supports, the score and the other figures keep apart and inside the tile."""
    cameras = tuple(
        CameraConfig(id=f"cam-{k}", source=f"demo:conveyor?fps=2&seed={k}", fps=2) for k in range(4)
    )
    async with _running(cameras, max_fps=2.0) as (_, dash):
        sizes = ((1280, 800), (1400, 900), (1920, 1080), (2560, 1440), (3840, 2160), (390, 844))
        page = await _open(browser, dash, *sizes[0])
        for camera in ("cam-0", "cam-3"):
            await _wait_frames(page, camera, 0, timeout=20.0)
        for width, height in sizes:
            await _resized(page, width, height)
            for k in range(4):
                tile = _tile(page, f"cam-{k}")
                handle = await tile.element_handle()
                seen = await page.evaluate(_WIDE_CLASHES, [handle, True])
                assert seen["clashes"] == [] and seen["clipped"] == [], (width, height, seen)
                score, fps = seen["score"], seen["fps"]
                if min(score["bottom"], fps["bottom"]) > max(score["top"], fps["top"]):
                    assert score["right"] + 5 <= fps["left"], (width, height, score, fps)
            await page.screenshot(path=artifacts / f"four-decimals-{width}x{height}.png")
        assert page.errors == []
        await page.context.close()


def _closed_port() -> int:
    """A loopback port nothing listens on: a camera there is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_HOUR_MINUTE = """(t) => new Date(t * 1000).toLocaleTimeString([], {
  hour12: false, hour: "2-digit", minute: "2-digit"})"""


async def _seconds(locator: Any, pattern: str) -> int:
    """The seconds in ``locator``'s text, which must match ``pattern`` (one group)."""
    text = await locator.text_content()
    found = re.fullmatch(pattern, text or "")
    assert found, (pattern, text)
    return int(found.group(1))


async def _seconds_reach(locator: Any, pattern: str, at_least: int, timeout: float) -> None:
    """Wait until the seconds in ``locator``'s text (``pattern``, as _seconds) reach
    ``at_least``: the page redraws them in its own tick, every 0.5 s while it is drawn."""
    deadline = time.monotonic() + timeout
    while (seconds := await _seconds(locator, pattern)) < at_least:
        assert time.monotonic() < deadline, (pattern, seconds, at_least)
        await asyncio.sleep(0.1)


@pytest.mark.asyncio(loop_scope="module")
async def test_trouble_says_since_when(browser: Any, artifacts: Path) -> None:
    """A camera down, the server lost, the dashboard lost: each says since when and for how
    long, as `convstream cameras` says "reconnecting 14s"; nothing on the page did."""
    from playwright.async_api import expect

    cameras = (
        CameraConfig(id="belt", source="demo:conveyor?fps=2", fps=2),
        CameraConfig(
            id="dock",
            source=f"http://127.0.0.1:{_closed_port()}/video.mjpg",
            reconnect_min_s=0.2,
            reconnect_max_s=1.0,
        ),
    )
    async with _serving(cameras) as server, _watching(server.port) as dash:
        page = await _open(browser, dash)
        tile = _tile(page, "dock")
        await expect(tile.locator(".state")).to_have_text("reconnecting", timeout=15000)
        await _wait_frames(page, "belt", 0, timeout=20.0)
        since = dash.hub.cameras["dock"].status["state_since"]
        at = re.escape(await page.evaluate(_HOUR_MINUTE, since))
        # on the tile, under its state; in its badge's tooltip; beside its name in the header
        notice = tile.locator(".notice .since")
        first = await _seconds(notice, rf"since {at} \((\d+) s\)")
        await expect(tile.locator(".state")).to_have_attribute(
            "title", re.compile(rf"^reconnecting since {at} \(\d+ s\)$")
        )
        # a camera that comes back by itself: a dashed border (a failed one's is solid)
        assert await tile.evaluate("(el) => getComputedStyle(el).borderTopStyle") == "dashed"
        await expect(page.locator("#summary")).to_contain_text(
            re.compile(r"cameras running · dock reconnecting \d+ s$")
        )
        header = page.locator("#summary .down-for")
        # no news of the camera: the times go on
        await _seconds_reach(notice, rf"since {at} \((\d+) s\)", first + 2, timeout=10)
        await _seconds_reach(header, r"(\d+) s", first + 2, timeout=10)
        await page.screenshot(path=artifacts / "since-camera-down.png")

        # The server goes: the banner says since the last the dashboard heard of it (belt's
        # last frame), on this page and on one opened during the outage.
        await server.stop(grace=0)
        banner = page.locator("#banner-since")
        await expect(banner).to_be_visible(timeout=10000)
        await expect(page.locator("#conn-text")).to_have_text("server unreachable")
        last = parse_frame_message(dash.hub.cameras["belt"].last_frame)[0]["received"]
        at = re.escape(await page.evaluate(_HOUR_MINUTE, last))
        await page.wait_for_timeout(1500)
        later = await _open(browser, dash, 1280, 720)
        await expect(later.locator("#banner-since")).to_be_visible()
        for shown in (page, later):  # on the later page, once belt's last frame has come
            since = re.compile(rf"^since {at} \(\d+ s\)$")
            await expect(shown.locator("#banner-since")).to_have_text(since, timeout=10000)
            notice = _tile(shown, "belt").locator(".notice .since")
            await expect(notice).to_have_text(since, timeout=10000)
        await later.screenshot(path=artifacts / "since-server-down.png")
        assert later.errors == [] and page.errors == []
        await later.context.close()

        # The dashboard goes: the banner says so (it went on about the server), since the last
        # message it sent.
        await dash.stop()
        await expect(page.locator("#conn-text")).to_have_text("dashboard offline, reconnecting…")
        await expect(page.locator("#banner")).to_have_text(
            re.compile(r"^Cameras are not updating: this page lost the dashboard, ")
        )
        corner = page.locator("#banner-since")
        await expect(corner).to_be_visible()
        heard = await page.evaluate("window.convstreamDashboard.state.heardAt")
        at = re.escape(await page.evaluate(_HOUR_MINUTE, heard))
        await _seconds_reach(corner, rf"since {at} \((\d+) s\)", 1, timeout=10)
        await _seconds_reach(tile.locator(".notice .since"), rf"since {at} \((\d+) s\)", 1, 10)
        await page.screenshot(path=artifacts / "since-dashboard-down.png")
        assert _while_down(page.errors) == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_figures_that_are_not_current_show_a_dash(browser: Any, artifacts: Path) -> None:
    """A camera that stops keeps its last latency on the server (217 ms beside fps 0.0), the
    server lost left fps "0.0/2" as if measured, and a dashboard that never reached its server
    said "0/0 cameras running": each is shown as not known."""
    from playwright.async_api import expect

    dock = FFmpegSource("mjpeg", fps=5, size=(640, 360)).start()
    cameras = (
        CameraConfig(id="belt", source="demo:conveyor?fps=2", fps=2),
        CameraConfig(id="dock", source=dock.url, fps=2, read_timeout_s=1.0, reconnect_min_s=0.2),
    )
    try:
        async with _serving(cameras) as server, _watching(server.port) as dash:
            page = await _open(browser, dash)
            tile = _tile(page, "dock")
            await _wait_frames(page, "dock", 0, timeout=20.0)
            await expect(tile.locator(".v-latency")).to_have_text(re.compile(r"^\d+ ms$"))
            dock.stop()
            await expect(tile.locator(".state")).to_have_text("reconnecting", timeout=15000)
            status = dash.hub.cameras["dock"].status
            assert status["latency_ms"] > 0, status  # what the server still says
            await expect(tile.locator(".v-latency")).to_have_text("\u2013")
            await expect(tile.locator(".v-fps")).to_have_text(re.compile(r"^\d+\.\d/2$"))
            belt = _tile(page, "belt")
            await expect(belt.locator(".v-latency")).to_have_text(re.compile(r"^\d+ ms$"))

            await server.stop(grace=0)
            await expect(belt.locator(".state")).to_have_text("offline", timeout=10000)
            for shown in (belt, tile):
                await expect(shown.locator(".v-fps")).to_have_text("\u2013")
                await expect(shown.locator(".v-latency")).to_have_text("\u2013")
            await expect(page.locator("#summary")).to_have_text("cameras: no data")
            await page.screenshot(path=artifacts / "not-current-server-down.png")
            assert page.errors == []
            await page.context.close()
    finally:
        dock.stop()

    async with _watching(_closed_port()) as dash:
        page = await _open(browser, dash, 1280, 720)
        await expect(page.locator("#conn-text")).to_have_text("server unreachable", timeout=10000)
        await expect(page.locator("#summary")).to_have_text("cameras not known yet")
        await page.screenshot(path=artifacts / "server-never-reached.png")
        assert page.errors == []
        await page.context.close()


# Each camera name's parts as drawn: the text shown of its end, whether its start is cut, and
# whether any of it runs past its container (the tile's head, the alert's card, the header).
_NAMES = """(selector) => [...document.querySelectorAll(selector)].map((name) => {
  const box = (el) => {
    const range = document.createRange();
    range.selectNodeContents(el);
    return range.getBoundingClientRect();
  };
  const tail = name.querySelector(".name-tail");
  const head = name.querySelector(".name-head");
  const edge = name.closest(".tile, button.alert, .bar").getBoundingClientRect();
  const right = Math.max(...[name, ...name.children].map((n) => n.getBoundingClientRect().right));
  return {
    text: name.textContent,
    title: name.title || name.closest("[title]")?.title || "",
    tail: tail ? tail.textContent : null,
    tailShown: Boolean(tail) && box(tail).width > 0 &&
      box(tail).right <= name.getBoundingClientRect().right + 1,
    headCut: Boolean(head) &&
      (head.scrollWidth > head.clientWidth || head.scrollHeight > head.clientHeight + 1),
    past: right > edge.right - 2,
    width: name.getBoundingClientRect().width,
  };
})"""

_LONG = "outbound_lane.12-very-long-camera-identifier-for-the-westgate-"


@pytest.mark.asyncio(loop_scope="module")
async def test_long_camera_ids_show_the_end_that_tells_them_apart(
    browser: Any, artifacts: Path
) -> None:
    """Ids of 63 characters differing only in the last: cut at their end, two tiles both read
    "outbound_lane.12-very-long-…", and in the alert list at 1280x720 such an id ran past the
    card's edge. The start is cut instead, the end always shows, and nothing runs over."""
    from playwright.async_api import expect

    ids = [_LONG + end for end in "abc"]
    assert all(len(i) == 63 for i in ids)
    cameras = (
        *(
            CameraConfig(id=i, source=f"demo:conveyor?fps=2&seed={k}")
            for k, i in enumerate(ids[:2])
        ),
        CameraConfig(id=ids[2], source=f"http://127.0.0.1:{_closed_port()}/v.mjpg"),
    )
    # threshold 0: every frame is over it, one alert a camera
    async with _running(cameras, threshold=0.0) as (_, dash):
        page = await _open(browser, dash, 1280, 720)
        await expect(page.locator("#alerts button.alert")).to_have_count(2, timeout=20000)
        await expect(page.locator("#summary .down")).to_have_count(1, timeout=15000)
        for k in range(2):
            await _wait_frames(page, ids[k], 0, timeout=20.0)
        tiles = await page.evaluate(_NAMES, "article.tile .cam")
        alerts = await page.evaluate(_NAMES, "#alerts .a-cam")
        header = await page.evaluate(_NAMES, "#summary .down")
        for shown in (*alerts, *tiles, *header):
            camera = shown["text"].split(" ")[0]
            assert camera in ids, shown
            assert not shown["past"], shown
            assert shown["tail"] == camera[-12:] and shown["tailShown"] and shown["headCut"], shown
            assert shown["title"].startswith(("show " + camera, camera)), shown
        assert len({t["tail"] for t in tiles}) == 3, tiles  # three ends, told apart
        assert header[0]["width"] < 1280 / 3, header  # one line of the header, not two
        await page.screenshot(path=artifacts / "long-ids-1280x720.png")
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_ids_that_differ_in_the_middle_show_where_they_differ(
    browser: Any, artifacts: Path
) -> None:
    """'outbound_lane-07-westgate-a' and 'outbound_lane-17-westgate-a' both read
    "outboun… 7-westgate-a" on a 1080p wall (an operator's review): the end shown is the
    last 12 characters, and these differ before them. It now holds where they differ, and
    a number whole."""
    from playwright.async_api import expect

    ids = ["outbound_lane-07-westgate-a", "outbound_lane-17-westgate-a", "dock-1"]
    # and where they differ far from their end, the usual end, which fits its tile (an end
    # from the difference on ran past the tile's edge, cut, a and b alike)
    ids += [f"warehouse-{at}-dock-door-01-camera-{k}" for at, k in (("north", "a"), ("north", "b"))]
    ids.append("warehouse-south-dock-door-01-camera-a")
    cameras = tuple(
        CameraConfig(id=i, source=f"demo:conveyor?fps=2&seed={k}") for k, i in enumerate(ids)
    )
    async with _running(cameras, threshold=0.0) as (_, dash):
        page = await _open(browser, dash, 1920, 1080)
        await expect(page.locator("#alerts button.alert")).to_have_count(6, timeout=20000)
        tiles = await page.evaluate(_NAMES, "article.tile .cam")
        tails = {t["text"]: t["tail"] for t in tiles}
        assert not [t for t in tiles if t["past"]], tiles  # nothing runs past its tile
        north = [tails[i] for i in ids if "north" in i]
        assert len(set(north)) == 2 and all(t.endswith(("camera-a", "camera-b")) for t in north)
        assert tails["outbound_lane-07-westgate-a"] == "07-westgate-a", tails
        assert tails["outbound_lane-17-westgate-a"] == "17-westgate-a", tails
        assert tails["dock-1"] == "", tails  # short: whole, no cut
        assert all(t["tailShown"] for t in tiles if t["tail"]), tiles
        await page.screenshot(path=artifacts / "ids-differing-in-the-middle.png")
        assert page.errors == []
        await page.context.close()


# The space between each down camera's name and its state in the header, in pixels.
_DOWN_SHOWN = """() => {
    const summary = document.querySelector("#summary").getBoundingClientRect();
    const buttons = [...document.querySelectorAll("#summary .down, #summary .down-for")];
    const bar = document.querySelector(".bar");
    return {
        names: document.querySelectorAll("#summary .down").length,
        cut: buttons.filter((b) => b.getBoundingClientRect().right > summary.right + 0.5)
            .map((b) => b.textContent),
        crowded: bar.classList.contains("crowded"),
        slider_hidden: getComputedStyle(document.querySelector(".slider")).display === "none",
    };
}"""

_NAME_STATE_GAPS = """() => [...document.querySelectorAll("#summary .down")].map((button) =>
  button.querySelector(".down-state").getBoundingClientRect().left -
  button.querySelector(".down-name").getBoundingClientRect().right)"""

_HEADS = """() => [...document.querySelectorAll("article.tile")].map((tile) => {
  const cam = tile.querySelector(".cam"), state = tile.querySelector(".state");
  return {id: tile.dataset.camera, cut: cam.scrollWidth > cam.clientWidth,
          kind: tile.querySelector(".kind").textContent,
          state: state.textContent, title: state.title,
          badge: state.getBoundingClientRect().width, width: tile.clientWidth};
})"""


@pytest.mark.asyncio(loop_scope="module")
async def test_a_narrow_tile_shows_its_cameras_whole_name(browser: Any, artifacts: Path) -> None:
    """Five cameras at 1024x768 (and 1280x800): each tile's head held the name, the source
    kind and the state's word, and "dock-2-north" beside "HTTP" and "RECONNECTING" read "d…".
    A narrow tile shows the state as a dot of its colour, its word in the tooltip, and the
    name whole; a wide one keeps the word. A camera named after its source kind ("demo")
    reads "demo", not "demo DEMO". The header lists a failed camera before those
    reconnecting, and on a touch screen keeps a space between each name and its state
    ("dock-2-northreconnecting")."""
    closed = _closed_port()
    cameras = (
        CameraConfig(id="demo", source="demo:conveyor?fps=2"),
        *(
            CameraConfig(
                id=name,
                source=f"http://127.0.0.1:{closed}/{name}.mjpg",
                max_reconnects=1 if name == "outbound-lane-4" else 0,
            )
            for name in ("dock-2-north", "dock-3-south", "outbound-lane-4")
        ),
        CameraConfig(id="belt-5", source="demo:conveyor?fps=2&seed=5"),
    )
    from playwright.async_api import expect

    async with _running(cameras) as (_, dash):
        # at 1024 the header takes a second row for the names of the cameras in trouble,
        # and the tiles may come out either side of 340 pixels
        sizes: tuple[tuple[int, int, bool | None], ...] = (
            (1024, 768, None),
            (1280, 800, True),
            (1920, 1080, False),
        )
        for width, height, narrow in sizes:
            page = await _open(browser, dash, width, height)
            for running in ("demo", "belt-5"):
                await _wait_frames(page, running, 0, timeout=20.0)
            await expect(page.locator("#summary .down")).to_have_count(3, timeout=15000)
            # the failed camera first, though the config lists it last
            await expect(page.locator("#summary .down").first).to_have_text(
                "outbound-lane-4 failed", timeout=15000
            )
            # Frames come on each camera's watch, the state with the next poll of the cameras'
            # list (poll_s): a tile may draw a frame a moment before its state says "running".
            for running in ("demo", "belt-5"):
                state = page.locator(f'article.tile[data-camera="{running}"] .state')
                await expect(state).to_have_text("running", timeout=15000)
            heads = await page.evaluate(_HEADS)
            assert len(heads) == 5
            for head in heads:
                assert not head["cut"], (width, head)
                word = {"demo": "running", "belt-5": "running", "outbound-lane-4": "failed"}.get(
                    head["id"], "reconnecting"
                )
                assert head["state"] == word and head["title"].startswith(word), (width, head)
                kind = {"demo": "", "belt-5": "demo"}.get(head["id"], "http")
                assert head["kind"] == kind, (width, head)
                # a dot, or the word's badge (the container query's 340 pixels are the tile's
                # inside, its border left out)
                dot = head["width"] <= 340
                assert narrow is None or dot == narrow, (width, head)
                assert (head["badge"] < 20) if dot else (head["badge"] > 60), (width, head)
            # Every camera in trouble is named whole in the header: the opacity slider and the
            # model's name give way first (the third name was cut at 1366 and on a TV at 150%)
            await page.wait_for_timeout(1100)  # a tick of the times beside the names
            shown = await page.evaluate(_DOWN_SHOWN)
            assert shown["names"] == 3 and shown["cut"] == [], (width, shown)
            # (the slider narrows; hidden, no keyboard or pointer could reach it)
            assert not shown["slider_hidden"], (width, shown)
            await page.screenshot(path=artifacts / f"five-cameras-{width}x{height}.png")
            assert page.errors == []
            await page.context.close()
        page = await _open(browser, dash, 390, 844, touch=True)
        await expect(page.locator("#summary .down")).to_have_count(3, timeout=15000)
        gaps = await page.evaluate(_NAME_STATE_GAPS)
        assert len(gaps) == 3 and all(gap >= 3 for gap in gaps), gaps
        # a phone's tiles are wider than a dot's 340 pixels: the source kind gives way, not
        # the name ("dock-2-no…" beside HTTP and RECONNECTING; an operator review's)
        for running in ("demo", "belt-5"):
            await _wait_frames(page, running, 0, timeout=20.0)
        heads = await page.evaluate(_HEADS)
        assert len(heads) == 5 and not [h for h in heads if h["cut"]], heads
        assert await page.locator('article.tile[data-camera="belt-5"] .kind').is_hidden()
        await page.screenshot(path=artifacts / "five-cameras-touch-390x844.png")
        # the header scrolls away with the page (it kept a third of the screen, or more)
        bar = await page.evaluate(
            "window.scrollTo(0, 600), document.querySelector('.bar').getBoundingClientRect().bottom"
        )
        assert bar <= 0, bar
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_page_shows_a_clock_that_moves_only_with_data(
    browser: Any, artifacts: Path
) -> None:
    """A running tile showed no time until its frames were 3 s old, and the page no clock at
    all: a hung browser on a wall looked live. The header says when data last came, and each
    picture its time; both move on with data and stand still without it."""
    from playwright.async_api import expect

    clock = r"\d\d:\d\d:\d\d"
    cameras = (CameraConfig(id="belt", source="demo:conveyor?fps=2", fps=2),)
    async with _running(cameras) as (_, dash):
        page = await _open(browser, dash, timezone="America/Chicago")
        await _wait_frames(page, "belt", 0, timeout=20.0)
        updated = page.locator("#updated")
        stamp = _tile(page, "belt").locator(".stamp")
        # the zone every time of the page is in, once (a kiosk on UTC and a laptop on local
        # time showed one alert at two times, nothing saying why)
        await expect(updated).to_have_text(re.compile(rf"^updated {clock} C[SD]T$"))
        await expect(stamp).to_have_text(re.compile(rf"^{clock}$"))
        before = (await updated.text_content(), await stamp.text_content())
        await expect(updated).not_to_have_text(before[0], timeout=3000)  # data comes: it moves
        await expect(stamp).not_to_have_text(before[1], timeout=3000)
        await page.screenshot(path=artifacts / "clock-live.png")

        await dash.stop()  # no more data: both stand still, and the header says how long
        await expect(page.locator("#conn-text")).to_have_text("dashboard offline, reconnecting…")
        last = (await updated.text_content() or "").split(" (")[0]
        shown = await stamp.text_content()
        # amber after STALE_S (3 s) with how long ago, as soon as it is (a fixed 4 s before)
        await expect(updated).to_have_text(
            re.compile(rf"^{re.escape(last)} \(\d+ s ago\)$"), timeout=8000
        )
        await expect(updated).to_have_attribute("data-late", "true")
        await expect(stamp).to_have_text(shown or "")
        # under the tile's notice, which says the time: the chip covered its end
        await expect(_tile(page, "belt").locator(".notice")).to_be_visible()
        await expect(stamp).to_be_hidden()
        await page.screenshot(path=artifacts / "clock-stopped.png")
        assert _while_down(page.errors) == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_failed_camera_and_an_empty_server_say_what_to_do(
    browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """A camera the server gave up on stays so until someone acts, and a server with no
    cameras shows nothing: the page said only why ("no such video file") and "No cameras on
    the server."; it now says what to do as well."""
    from playwright.async_api import expect

    gone = CameraConfig(id="gone", source=str(tmp_path / "missing.mp4"))
    # running, its every frame refused (24x16, too small to judge): "waiting for frames…"
    # on a green badge for as long as it lasted
    tiny = CameraConfig(id="tiny", source=str(write_video(tmp_path / "t.mp4", size=(24, 16))))
    async with _serving((gone, tiny)) as server, _watching(server.port) as dash:
        page = await _open(browser, dash)
        refused = _tile(page, "tiny").locator(".notice")
        await expect(refused).to_contain_text("frames refused", timeout=15000)
        await expect(refused.locator("small")).to_contain_text("frame is 24x16; frames must be")
        tile = _tile(page, "gone")
        await expect(tile.locator(".state")).to_have_text("failed", timeout=15000)
        await expect(tile.locator(".notice small.reason")).to_contain_text("no such video file")
        advice = tile.locator(".notice small.advice")
        await expect(advice).to_have_text(
            "fix the camera or the server's config, then reload the server (SIGHUP)"
        )
        # given up, someone must act: a solid bright border, not reconnecting's dashed one,
        # and a narrow tile's dot is a square, not a running camera's circle (colour-blind
        # eyes told the two apart by colour alone)
        style = await tile.evaluate(
            "(el) => { const s = getComputedStyle(el); return [s.borderTopStyle, "
            "s.borderTopColor]; }"
        )
        assert style == ["solid", "rgb(210, 153, 34)"], style
        await page.set_viewport_size({"width": 330, "height": 700})
        await expect(tile.locator(".state")).to_have_css("border-top-left-radius", "2px")
        # the advice under the error, inside the notice even where the error is cut short
        # (written first, it pushed a long error's own advice out of the tile)
        inside = await tile.locator(".notice").evaluate(
            "(n) => { const a = n.querySelector('.advice').getBoundingClientRect(); "
            "const b = n.getBoundingClientRect(); return a.height > 0 && a.bottom <= b.bottom "
            "+ 1 && n.querySelector('.reason').getBoundingClientRect().top < a.top; }"
        )
        assert inside
        await page.screenshot(path=artifacts / "failed-camera-advice.png")
        assert page.errors == []
        await page.context.close()
        # "reload the server (SIGHUP)" is no step an operator can take: a dashboard given
        # whom they call says that, the server's advice in the tooltip (an operator review's)
        contact = "maintenance, ext. 4411"
        async with _watching(server.port, contact=contact) as told:
            page = await _open(browser, told)
            tile = _tile(page, "gone")
            await expect(tile.locator(".state")).to_have_text("failed", timeout=15000)
            await expect(tile.locator(".notice small.advice")).to_have_text(
                f"not working: call {contact}"
            )
            await expect(tile.locator(".notice")).to_have_attribute(
                "title",
                re.compile(r"no such video file.* · fix the camera .*SIGHUP\) · not working"),
            )
            # a running camera, even one whose frames are refused, calls nobody
            await expect(_tile(page, "tiny").locator(".notice small.advice")).to_have_count(0)
            # one reconnecting calls once it has been down a minute (its status fed by the
            # page's own code, its time down chosen)
            down_for = """([id, seconds]) => {
                const dash = window.convstreamDashboard;
                const tile = dash.tiles.get(id);
                if (!tile.fedStatus) {
                    tile.fedStatus = tile.setStatus.bind(tile);
                    tile.setStatus = () => {};
                }
                const clock = dash.state.clock;
                const now = clock.dash + (performance.now() - clock.at) / 1000;
                tile.fedStatus({...tile.status, state: "reconnecting", last_error: "no answer",
                                down_since: now - seconds, state_since: now - seconds});
                const advice = tile.el.querySelector(".notice small.advice");
                return advice ? advice.textContent : null;
            }"""
            assert await page.evaluate(down_for, ["tiny", 20]) is None
            assert await page.evaluate(down_for, ["tiny", 70]) == f"not working: call {contact}"
            await page.screenshot(path=artifacts / "failed-camera-contact.png")
            assert page.errors == []
            await page.context.close()
    async with _serving(()) as server, _watching(server.port) as dash:
        page = await _open(browser, dash)
        await expect(page.locator("#empty")).to_have_text(
            re.compile(r"^No cameras on the server\. Add \[\[cameras\]\] to its config and reload")
        )
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_camera_that_shows_next_to_nothing_says_so(
    browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """A capped lens showed a black tile with a low score and no word: all clear, at a
    glance from across the room. The tile now says it shows next to nothing, since when."""
    from playwright.async_api import expect

    capped = write_video(tmp_path / "capped.mp4", frames=10, fps=10, pattern="color=c=black")
    cameras = (
        CameraConfig(id="capped", source=str(capped)),
        CameraConfig(id="belt", source=str(write_video(tmp_path / "belt.mp4", frames=10))),
    )
    async with _running(cameras) as (_, dash):
        page = await _open(browser, dash)
        await _wait_frames(page, "belt", 1)
        notice = _tile(page, "capped").locator(".notice")
        await expect(notice).to_contain_text("blank picture", timeout=10000)
        await expect(notice.locator("small")).to_have_text(
            re.compile(r"^since \d\d:\d\d:\d\d: the camera shows next to nothing ")
        )
        await expect(_tile(page, "belt").locator(".notice")).to_be_hidden()
        # the header names it among the cameras in trouble, though it runs, and does not
        # count it as running (an operator review's "5/6 cameras running" beside it)
        await expect(page.locator("#summary .down")).to_have_text("capped blank", timeout=10000)
        await expect(page.locator("#summary")).to_contain_text("1/2 cameras running")
        colours = {
            camera: await _tile(page, camera)
            .locator(".v-score")
            .evaluate("(el) => getComputedStyle(el).color")
            for camera in ("capped", "belt")
        }
        assert colours["capped"] == "rgb(139, 148, 158)", colours  # grey: no all-clear green
        assert colours["belt"] != colours["capped"], colours
        # and its badge says so, amber, where a green RUNNING read "fine" from across the room
        for camera, word, colour in (
            ("capped", "blank", "rgb(210, 153, 34)"),
            ("belt", "running", "rgb(63, 185, 80)"),
        ):
            badge = _tile(page, camera).locator(".state")
            await expect(badge).to_have_text(word)
            await expect(badge).to_have_css("background-color", colour)
        # what the overlay's colours mean, said beside the alerts; gone with the overlay
        legend = page.locator(".legend")
        await expect(legend.locator("span[aria-hidden]")).to_have_text(
            "heatmap: nearing the threshold, over it"
        )
        # and in words for a screen reader, which heard the words without the colours
        await expect(legend.locator(".sr-only")).to_have_text(
            "heatmap colours: clear where nothing looks like damage, blue to yellow as a spot "
            "nears the threshold, red where it is at or over it"
        )
        await page.locator("#heat-toggle").uncheck()
        await expect(legend).to_be_hidden()
        await page.locator("#heat-toggle").check()
        await page.screenshot(path=artifacts / "blank-camera.png")
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_slow_camera_is_not_said_to_have_no_new_frames_between_two(
    browser: Any, artifacts: Path
) -> None:
    """A camera sending a frame every 10 s read "no new frames", its tile greyed, most of
    the time: a tile waits STALE_S (3 s) or 2.5 of the camera's own intervals, whichever is
    longer (an operator review's). A frame every 5 s here: 4.3 s after one, live."""

    # a read timeout that allows its pace (at 5 s the server itself calls it stalled)
    cameras = (CameraConfig(id="slow", source="demo:conveyor?fps=0.2", read_timeout_s=20),)
    async with _running(cameras) as (_, dash):
        page = await _open(browser, dash)
        tile = _tile(page, "slow")
        drawn = await _wait_frames(page, "slow", 0, timeout=20.0)
        await _wait_frames(page, "slow", drawn, timeout=20.0)  # a second: its pace is known
        await page.wait_for_timeout(4300)  # past STALE_S, before the next frame
        # read once, not awaited: the next frame would clear it
        assert "stale" not in (await tile.get_attribute("class") or "").split()
        assert not await tile.locator(".notice").is_visible()
        assert page.errors == []
        await page.context.close()


_RECORD = """([id, time, score]) => {
    const tile = window.convstreamDashboard.tiles.get(id);
    if (!tile.fed) {  // the camera's own frames still drawn, their scores no longer recorded
        tile.fed = tile.record.bind(tile);
        tile.record = () => {};
    }
    tile.fed({n: tile.lastN + 1, time, score, received: 0, blank: false});
    const verdict = tile.el.querySelector(".verdict");
    return [tile.el.querySelector(".v-score").textContent,
            verdict.hidden ? null : verdict.innerText, !tile.el.querySelector(".ring").hidden];
}"""


_BEHIND = """([id, statuses]) => {
    const dash = window.convstreamDashboard;
    const tile = dash.tiles.get(id);
    if (!tile.fedStatus) {  // the server's own statuses no longer reach it
        tile.fedStatus = tile.setStatus.bind(tile);
        tile.setStatus = () => {};
    }
    const clock = dash.state.clock;
    const seen = [];
    for (const [after, change] of statuses) {  // [seconds on, the status's rates]
        dash.state.clock = {dash: clock.dash + after, at: clock.at};
        tile.fedStatus({...tile.status, state: "running", ...change});
        const fps = tile.el.querySelector(".v-fps");
        seen.push([fps.classList.contains("behind"), fps.title, getComputedStyle(fps).color]);
    }
    dash.state.clock = clock;
    return seen;
}"""


@pytest.mark.asyncio(loop_scope="module")
async def test_a_camera_analysed_well_under_its_cap_is_said_to_be_behind(browser: Any) -> None:
    """A server short of CPU analysed 0.8 of a camera's 4 frames a second under a green
    RUNNING (an operator review's): a capped camera analysed at under half what its cap and
    source allow, for over 10 s, has its fps in amber and says why. Fed here by the page's own
    code, the rates and times chosen (a server made slow on purpose would be a timed test)."""
    cameras = (CameraConfig(id="belt", source="demo:conveyor?fps=2"),)
    async with _running(cameras) as (_, dash):
        page = await _open(browser, dash)
        await _wait_frames(page, "belt", 0)
        slow = {"fps_cap": 4, "fps_in": 5.9, "fps_out": 0.8}
        seen = await page.evaluate(
            _BEHIND,
            [
                "belt",
                [
                    [0, slow],
                    [9, slow],  # not yet: a moment's slowness is not news
                    [11, slow],
                    [12, {**slow, "fps_out": 3.9}],  # caught up
                    [13, slow],  # slow again: its 10 s start again
                    [20, {**slow, "fps_cap": 0}],  # no cap: as fast as it can is no trouble
                    [40, {**slow, "fps_in": 1.0}],  # a source sending 1 a second: not behind
                ],
            ],
        )
        assert [behind for behind, _, _ in seen] == [False, False, True, False, False, False, False]
        # in the amber of a camera in trouble, then back to the figures' own colour
        assert seen[2][2] == "rgb(210, 153, 34)" and seen[3][2] != seen[2][2]
        assert seen[2][1] == (
            "in 5.9 fps from the source, 0.8 fps analysed: behind, under half the 4.0 its cap "
            "and source allow, for over 10 s; the server is short of CPU (too many cameras, or "
            'too high a rate: docs/server.md, "Sizing a camera server")'
        )
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_tiles_score_holds_the_highest_of_the_last_second(browser: Any) -> None:
    """At 4 frames a second the large score read 0.1000, 0.9866, 0.9849, 0.9980 in a second,
    too fast to read, DAMAGED blinking with it (an operator review's). It holds the highest
    of the last second; the ring marks a spot only on a frame damaged itself. Fed here by the
    page's own code, the frames' times and scores chosen (the camera's are drawn, not
    recorded, once the test feeds it)."""
    cameras = (CameraConfig(id="slow", source="demo:conveyor?fps=2"),)
    async with _running(cameras, threshold=0.5) as (_, dash):
        page = await _open(browser, dash)
        await _wait_frames(page, "slow", 0, timeout=20.0)
        from playwright.async_api import expect

        # its state with the next poll of the cameras' list: DAMAGED is for a running camera
        await expect(_tile(page, "slow").locator(".state")).to_have_text("running", timeout=15000)
        t = 4e9  # ahead of the frame drawn
        record = lambda at, score: page.evaluate(_RECORD, ["slow", t + at, score])  # noqa: E731
        now, held = "\u26a0 DAMAGED", "\u26a0 DAMAGED JUST NOW"  # as shown: upper case
        assert await record(0.0, 0.99) == ["0.9900", now, True]  # ringed: damaged itself
        # held; no ring on it, and said to be of a frame before (the package may be gone)
        assert await record(0.25, 0.10) == ["0.9900", held, False]
        assert await record(0.5, 0.35) == ["0.9900", held, False]
        await page.set_viewport_size({"width": 400, "height": 800})  # a tile under 460 px
        assert await record(0.6, 0.30) == ["0.9900", now, False]  # one line, not two
        await page.set_viewport_size({"width": 1920, "height": 1080})
        assert await record(1.1, 0.20) == ["0.3500", None, False]  # 0.99 is 1.1 s old
        assert await record(0.3, 0.30) == ["0.3000", None, False]  # a clock set back
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_page_of_an_older_dashboard_loads_the_new_one(
    browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wall screen left open across an upgrade kept its old script, which spoke the old
    messages to the new dashboard (a review's): a dashboard whose page files differ from
    those the page came with (a hash in its hello) has the page load them again."""
    from convstream.dashboard import web

    belt = CameraConfig(id="belt", source="demo:conveyor?fps=4")
    async with _serving((belt,)) as server:
        async with _watching(server.port) as first:
            page = await _open(browser, first)
            await _wait_frames(page, "belt", 0)
            await page.evaluate("window.beforeTheUpgrade = true")
            port = first.port
        monkeypatch.setattr(web, "assets_version", lambda: "0123456789abcdef")
        async with _watching(server.port, port=port):
            await page.wait_for_function(
                "() => window.beforeTheUpgrade === undefined", timeout=20000
            )
            await _wait_frames(page, "belt", 0)
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_dashboard_restarted_without_its_alerts_says_the_page_lost_them(
    browser: Any,
) -> None:
    """A dashboard started again without --alerts-dir lists none of the alerts before: the
    open page emptied its list, 110 unhandled alerts gone without a word (an operator
    review's). It says so above the list, with when and how many."""
    from playwright.async_api import expect

    belt = CameraConfig(id="belt", source="demo:conveyor?fps=4")
    async with _serving((belt,)) as server:
        async with _watching(server.port, threshold=0.001) as first:  # every frame alerts
            page = await _open(browser, first)
            await expect(page.locator("#alerts button.alert")).to_have_count(1, timeout=15000)
            await expect(page.locator("#alerts-lost")).to_be_hidden()
            port = first.port
        async with _watching(server.port, port=port, threshold=0.99999):
            lost = page.locator("#alerts-lost-text")
            await expect(lost).to_have_text(
                re.compile(
                    r"^The dashboard restarted at \d\d:\d\d:\d\d and keeps no alerts across a "
                    r"restart: the 1 listed here before are gone \(its --alerts-dir keeps them\)\.$"
                ),
                timeout=15000,
            )
            await expect(page.locator("#no-alerts")).to_be_visible()
            await page.click("#alerts-lost-ok")  # read: it goes (it stayed for good)
            await expect(page.locator("#alerts-lost")).to_be_hidden()
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_page_whose_dashboard_goes_silent_says_so_and_connects_again(
    browser: Any, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dashboard stopped (SIGSTOP) or hung keeps its connections open: its page said
    "live", every badge a green RUNNING, for as long as that lasted. The dashboard ticks
    every heartbeat_s; a page that hears nothing for longer than a live link is ever silent
    (its hello says: three ticks, or one message slow to cross) says it lost the dashboard,
    and connects again."""
    from playwright.async_api import expect

    from convstream.dashboard import hub, web

    monkeypatch.setattr(hub, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(web, "SEND_TIMEOUT_S", 4.0)  # a live link is silent 5.5 s at most
    belt = CameraConfig(id="belt", source="demo:conveyor?fps=4")
    async with _running((belt,)) as (_, dash):
        page = await _open(browser, dash)
        state = _tile(page, "belt").locator(".state")
        await expect(state).to_have_text("running", timeout=15000)
        await expect(page.locator("#conn-text")).to_have_text("live")
        for viewer in list(dash.hub._subscribers):  # silent, its connection open
            viewer.offer_text = lambda *args, **kwargs: None  # type: ignore[method-assign]
            viewer.offer_frame = lambda *args, **kwargs: None  # type: ignore[method-assign]
        conn = page.locator("#conn-text")
        # said in amber after four ticks missed (2 s), not "live" until the page gives up
        # (5.5 s), and the tile's state and rates are not vouched for either: a green
        # RUNNING and "4.0/4" stood while the page waited out the silence (an operator
        # review's). Read together, every 50 ms: expect() looks every half second or so,
        # and on a slow machine it missed the window in between.
        await page.wait_for_function(
            """() => document.querySelector('#conn-text').textContent
                    === 'no word from the dashboard'
                && document.querySelector('#conn').dataset.ok === 'false'
                && document.querySelector('article.tile[data-camera="belt"] .state')
                    .textContent.trim() === 'no data'
                && document.querySelector('article.tile[data-camera="belt"] .v-fps')
                    .textContent === '\u2013'""",
            timeout=10000,
            polling=50,
        )
        # all three at one moment: the page connects again half a second later, and the
        # new link's hello clears them (three expects one after the other missed it on CI)
        await page.wait_for_function(
            """() => document.querySelector('#conn-text').textContent
                    === 'dashboard offline, reconnecting…'
                && document.querySelector('article.tile[data-camera="belt"] .state')
                    .textContent.trim() === 'no data'
                && document.querySelector('#banner').textContent
                    .includes('this page lost the dashboard')""",
            timeout=10000,
            polling=50,
        )
        await page.screenshot(path=artifacts / "dashboard-silent.png")
        await expect(conn).to_have_text("live", timeout=15000)  # a new connection, heard
        await expect(state).to_have_text("running")
        assert page.errors == []
        await page.context.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_keyboard_reaches_what_the_tooltips_say(browser: Any, artifacts: Path) -> None:
    """What the score, fps and dropped mean, a narrow tile's state and a camera in trouble's
    whole reason were in tooltips alone, which no keyboard, and no touch screen, reaches. A
    help button opens what the page shows; Tab reaches each tile, which then says over its
    picture what its tooltips say."""
    from playwright.async_api import expect

    # held, bound and not listening, for the test's whole length: connections to it are
    # refused, and no server started meanwhile takes it (one did, on CI, and answered 404)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    cameras = (
        CameraConfig(id="belt", source="demo:conveyor?fps=2"),
        CameraConfig(id="dock-2", source=f"http://127.0.0.1:{closed.getsockname()[1]}/v.mjpg"),
    )
    async with _running(cameras) as (server, dash):
        page = await _open(browser, dash, 1280, 800)
        await _wait_frames(page, "belt", 0, timeout=20.0)
        belt, dock = _tile(page, "belt"), _tile(page, "dock-2")
        await expect(belt.locator(".state")).to_have_text("running", timeout=15000)
        await expect(dock.locator(".state")).to_have_text("reconnecting", timeout=15000)
        await page.locator("#help-open").focus()
        await page.keyboard.press("Enter")
        help_ = page.locator("#help")
        await expect(help_).to_be_visible()
        await expect(help_.locator("dl")).to_contain_text("How sure the model is")
        await page.screenshot(path=artifacts / "help.png")
        await page.keyboard.press("Escape")
        await expect(help_).to_be_hidden()
        await expect(page.locator("#help-open")).to_be_focused()  # where it was opened
        await page.keyboard.press("?")  # the key the button names, from anywhere
        await expect(help_).to_be_visible()
        await page.keyboard.press("Escape")
        await expect(help_).to_be_hidden()
        for _ in range(30):  # past the header's buttons, to the first tile
            await page.keyboard.press("Tab")
            if await belt.evaluate("(tile) => tile === document.activeElement"):
                break
        else:
            raise AssertionError("Tab never reached the first tile")
        said = belt.locator(".details")
        await expect(said).to_be_visible()
        await expect(said).to_contain_text("state: running")
        await expect(said).to_contain_text(re.compile(r"fps: in [0-9.]+ fps from the source"))
        await expect(said).to_contain_text("superseded: ")
        # never a scroller of its own (one that overflowed, on a compact tile, was a Tab stop,
        # and Tab dropped the focus to the page when it hid)
        overflow = await said.evaluate("(p) => getComputedStyle(p).overflowY")
        assert overflow == "hidden", overflow
        # the wall is one Tab stop: the arrow keys move between its tiles (40 cameras took 40
        # presses of Tab to cross), and Tab leaves it
        assert await dock.get_attribute("tabindex") == "-1"
        await page.keyboard.press("ArrowRight")
        await expect(dock).to_be_focused()
        await expect(said).to_be_hidden()
        await page.keyboard.press("ArrowRight")  # the last: the focus stays
        await expect(dock).to_be_focused()
        assert (await belt.get_attribute("tabindex"), await dock.get_attribute("tabindex")) == (
            "-1",
            "0",
        )
        await page.keyboard.press("Home")
        await expect(belt).to_be_focused()
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.closest('.tile') === null")
        await page.keyboard.press("Shift+Tab")  # back to the tile last focused
        await expect(belt).to_be_focused()
        await page.keyboard.press("End")
        await expect(dock).to_be_focused()
        await expect(dock.locator(".details")).to_contain_text("state: reconnecting since")
        await expect(dock.locator(".details")).to_contain_text("connection refused")
        await page.screenshot(path=artifacts / "tile-details.png")
        # a screen reader hears it as the tile's description
        await expect(dock).to_have_accessible_description(re.compile("connection refused"))
        phone = await _open(browser, dash, 390, 844, touch=True)
        await phone.locator("#help-open").click()
        terms = phone.locator("#help dt")
        # each term above what it means, the meaning the dialog's width, not a narrow column
        width = await phone.locator("#help dd").first.evaluate("(dd) => dd.clientWidth")
        assert width > 250, width
        await expect(terms.first).to_be_visible()
        await phone.screenshot(path=artifacts / "help-phone.png")
        await phone.keyboard.press("Escape")
        # one tile a row here: down is the next camera, as right is on a wide screen
        await _tile(phone, "belt").focus()
        await phone.keyboard.press("ArrowDown")
        await expect(_tile(phone, "dock-2")).to_be_focused()
        await phone.keyboard.press("ArrowUp")
        await expect(_tile(phone, "belt")).to_be_focused()
        await phone.context.close()
        # a focused camera a reload removes: the keyboard's place goes to its neighbour (it
        # fell to the page, and the next Tab began from the top)
        await expect(dock).to_be_focused()
        await server.reload(server.settings.model_copy(update={"cameras": cameras[:1]}))
        await expect(dock).to_have_count(0, timeout=10000)
        await expect(belt).to_be_focused()
        # a mouse's click leaves the picture in view (its ring, the damage it shows)
        await page.keyboard.press("Tab")  # out of the wall first
        await belt.click()
        await expect(belt).to_be_focused()
        await expect(said).to_be_hidden()
        assert page.errors == []
        await page.context.close()
    closed.close()
