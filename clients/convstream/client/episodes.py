"""Damage episodes: which frames of a camera raise an alert, for the dashboard and for
programs that file claims from a watch.

An alert is per episode: one package passing slowly under a camera keeps its score high for
many frames, and a score near the threshold flickers across it, so an episode begins when the
score reaches the threshold (for ``frames_over`` frames in a row) and ends only once it has
stayed below ``threshold - hysteresis`` for ``end_after_s`` (a frame or two of a turning
package scoring low do not end it). The alert is raised on the episode's first frame, and
"improved" as its best-scoring frame changes while it lasts (a package entering the view
scores less than the same package in full view).

The cooldown limits how often one camera alerts, and never loses an episode: one that begins
inside the cooldown is held, and raised (with its best frame, and how many episodes it stands
for) as soon as the cooldown has passed.

    for alert in alerts(client.watch("dock-3"), cooldown_s=30):
        if alert.kind == "raise":
            file_claim(alert.result)   # alert.result.regions: where, in its frame's pixels
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from convstream.client.results import Result

__all__ = [
    "AlertDetector",
    "DamageAlert",
    "Decision",
    "alerts",
    "alerts_async",
    "inside_by",
    "placement",
]

HYSTERESIS = 0.03
END_AFTER_S = 1.5  # below the threshold (less the hysteresis) this long ends an episode
BETTER_BY = 0.01  # a frame replaces an alert's snapshot when it scores this much higher
# Or when it scores as high, within ALIKE, with its damage this much further inside the
# picture (a share of its shorter side): scores reach 0.999 as a damaged box comes in, and
# the first frame, its box cut by the edge, stayed the alert's picture for good.
ALIKE = 0.005
FURTHER_INSIDE = 0.1
T = TypeVar("T")


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What to do with a frame: raise a new alert with it, or make it the snapshot of the
    camera's latest alert (``improve``)."""

    kind: str  # "raise" | "improve"
    score: float
    frame: T
    episodes: int = 1


@dataclass
class _Camera(Generic[T]):
    in_episode: bool = False
    below_since: float | None = None  # when the score last fell below, in an episode
    alerted: bool = False  # the current episode has its alert (else it is held)
    peak: float = -math.inf  # best score of the current episode, or of the held ones
    best: T | None = None  # the frame shown: the best score, or one alike better placed
    placement: float = 0.0  # how far inside the picture its damage is
    held: int = 0  # episodes waiting out the cooldown
    last_raised: float = -math.inf
    streak: int = 0  # frames in a row at or over the threshold
    streak_best: tuple[float, float, T] | None = None  # the best of them: score, placement, frame


class AlertDetector(Generic[T]):
    """Decides, frame by frame, which frames raise an alert or improve one.

    Args:
        cooldown_s: the shortest time between two alerts of one camera.
        hysteresis: how far below the threshold a score must fall to end an episode.
        end_after_s: and for how long.
        frames_over: frames in a row at or over the threshold that start an episode: 2 or 3
            pass over a single frame's spike (most false alarms), at the cost of a frame
            interval's delay and of damage seen in one frame only.
    """

    def __init__(
        self,
        cooldown_s: float,
        hysteresis: float = HYSTERESIS,
        end_after_s: float = END_AFTER_S,
        frames_over: int = 1,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.hysteresis = hysteresis
        self.end_after_s = end_after_s
        self.frames_over = frames_over
        self._cameras: dict[str, _Camera[T]] = {}

    def update(
        self,
        camera: str,
        score: float,
        threshold: float,
        now: float,
        frame: T,
        placement: float = 0.0,
    ) -> Decision[T] | None:
        """The decision for this frame, with ``score``, at monotonic time ``now`` (seconds).

        placement: how far the frame's hottest place is from its nearest edge, as a share of
        its shorter side (0 at the edge or not known, 0.5 in the middle): of two frames that
        score alike, the alert shows the one whose damage is well inside the picture. Its
        score stays the episode's best.
        """
        cam = self._cameras.setdefault(camera, _Camera())
        if cam.below_since is not None and now - cam.below_since >= self.end_after_s:
            cam.in_episode, cam.below_since = False, None  # it stayed below long enough
        if score >= threshold:
            cam.streak += 1
            if cam.streak_best is None or score > cam.streak_best[0]:
                cam.streak_best = (score, placement, frame)
        else:
            cam.streak, cam.streak_best = 0, None
        if score >= threshold and (cam.in_episode or cam.streak >= self.frames_over):
            cam.below_since = None
            if not cam.in_episode:
                cam.in_episode, cam.alerted = True, False
                cam.held += 1
                if cam.held == 1:
                    cam.peak = -math.inf
                assert cam.streak_best is not None
                score, placement, frame = cam.streak_best  # the streak's best frame starts it
            higher = score >= cam.peak + BETTER_BY
            inside = score >= cam.peak - ALIKE and placement >= cam.placement + FURTHER_INSIDE
            if higher or inside:
                cam.peak, cam.placement, cam.best = max(cam.peak, score), placement, frame
                if cam.alerted:
                    return Decision("improve", cam.peak, frame)
        elif score < threshold - self.hysteresis and cam.in_episode and cam.below_since is None:
            cam.below_since = now
        if cam.held and now - cam.last_raised >= self.cooldown_s:
            assert cam.best is not None
            decision = Decision("raise", cam.peak, cam.best, cam.held)
            cam.held, cam.last_raised = 0, now
            cam.alerted = cam.in_episode  # its later frames improve this alert
            return decision
        return None

    def forget(self, camera: str) -> None:
        self._cameras.pop(camera, None)


@dataclass(frozen=True)
class DamageAlert:
    """An alert from ``alerts()``: ``kind`` "raise" for a new episode (or, after a cooldown,
    ``episodes`` of them held), "improve" when the episode raised has a better frame.

    Attributes:
        kind: "raise" or "improve".
        result: the frame it shows: the episode's best so far (``result.source`` is its
            camera; ``result.regions`` where the damage is).
        score: the episode's best score.
        episodes: how many episodes it stands for (more than 1 when some began inside the
            cooldown).
    """

    kind: Literal["raise", "improve"]
    result: Result
    score: float
    episodes: int = 1


def placement(result: Result) -> float:
    """How far the result's peak is from its frame's nearest edge, as a share of the frame's
    shorter side: 0 at an edge (or without a peak), 0.5 in the middle."""
    peak, g = result.peak(), result.geometry
    if peak is None or g is None:
        return 0.0
    return inside_by(peak[0], peak[1], g.frame_width, g.frame_height)


def inside_by(x: float, y: float, width: int, height: int) -> float:
    """How far (x, y) is from the nearest edge of a width x height frame, as a share of its
    shorter side: 0 at an edge (or for a frame of no size), 0.5 in the middle."""
    if not width or not height:
        return 0.0
    return max(0.0, min(x, width - x, y, height - y)) / min(width, height)


class _Alerts:
    """alerts() and alerts_async()'s state: one detector, the time each result is at."""

    def __init__(
        self,
        cooldown_s: float,
        frames_over: int,
        hysteresis: float,
        end_after_s: float,
        clock: Callable[[], float],
    ) -> None:
        if cooldown_s < 0 or frames_over < 1 or end_after_s < 0 or not 0 <= hysteresis < 1:
            raise ValueError(
                "alerts() takes cooldown_s >= 0, frames_over >= 1, end_after_s >= 0 and "
                f"hysteresis from 0 to 1; got {cooldown_s}, {frames_over}, {end_after_s} and "
                f"{hysteresis}"
            )
        self.detector: AlertDetector[Result] = AlertDetector(
            cooldown_s, hysteresis, end_after_s, frames_over
        )
        self.clock = clock

    def decide(self, result: Result) -> DamageAlert | None:
        # a frame that failed, or one from a server that sends no threshold, says nothing
        if not result.ok or math.isnan(result.threshold) or math.isnan(result.score):
            return None
        # the camera's time when the frame has one: results that come in a burst (a watch
        # catching up) are as far apart as their frames were
        now = result.capture_time if result.capture_time is not None else self.clock()
        decision = self.detector.update(
            result.source, result.score, result.threshold, now, result, placement(result)
        )
        if decision is None:
            return None
        kind: Literal["raise", "improve"] = "raise" if decision.kind == "raise" else "improve"
        return DamageAlert(kind, decision.frame, decision.score, decision.episodes)


def alerts(
    results: Iterable[Result],
    *,
    cooldown_s: float = 10.0,
    frames_over: int = 2,
    hysteresis: float = HYSTERESIS,
    end_after_s: float = END_AFTER_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[DamageAlert]:
    """The alerts of a stream of results (a watch's, a stream's, several cameras' mixed:
    each source is its own camera), as the dashboard raises them: one an episode of damage,
    not one a frame.

    Args:
        results: e.g. ``client.watch("dock-3")``; results that failed are passed over.
        cooldown_s: the shortest time between two alerts of one camera (episodes in
            between are held, and raised together once it has passed).
        frames_over: frames in a row at or over the threshold that begin an episode (2
            passes over a single frame's spike, most false alarms; 1 alerts at once).
        hysteresis, end_after_s: an episode ends once the score has stayed under the
            threshold less ``hysteresis`` for ``end_after_s`` seconds.
        clock: the time of a result without a capture time.
    """
    state = _Alerts(cooldown_s, frames_over, hysteresis, end_after_s, clock)
    for result in results:
        if (alert := state.decide(result)) is not None:
            yield alert


async def alerts_async(
    results: AsyncIterable[Result],
    *,
    cooldown_s: float = 10.0,
    frames_over: int = 2,
    hysteresis: float = HYSTERESIS,
    end_after_s: float = END_AFTER_S,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[DamageAlert]:
    """alerts() of an AsyncClient's results: ``async for alert in alerts_async(...)``."""
    state = _Alerts(cooldown_s, frames_over, hysteresis, end_after_s, clock)
    async for result in results:
        if (alert := state.decide(result)) is not None:
            yield alert
