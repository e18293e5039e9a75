"""How well the server's scores separate your own damaged and intact images, and where to put
the threshold: ``convstream evaluate FOLDER`` (FOLDER/damaged/ and FOLDER/intact/).

The model is trained on rendered scenes only; a real camera's boxes, light and lens differ,
so its threshold (chosen on rendered scenes) is best chosen again on your own footage. The
scores are the server's own, for the frames as it analyses them, so the threshold chosen here
is the one to set in its config.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from convstream.client.results import score_text

FALSE_ALARM_RATES = (0.0, 0.01, 0.05, 0.10)
"""The false-alarm rates whose threshold (the lowest that keeps to it) the table gives."""
GRID = 1000
"""Thresholds offered are whole thousandths, so that one set as printed does as its row says."""


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half).

    Args:
        scores (np.ndarray): float, shape (N,).
        labels (np.ndarray): bool, shape (N,); both classes must be present.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positive and {n_neg} negative")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold that maximises balanced accuracy (Youden's J) on these scores."""
    candidates = np.unique(scores)
    best, best_j = 0.5, -1.0
    for t in candidates:
        predicted = scores >= t
        tpr = float((predicted & labels).sum()) / max(1, int(labels.sum()))
        fpr = float((predicted & ~labels).sum()) / max(1, int((~labels).sum()))
        if tpr - fpr > best_j:
            best, best_j = float(t), tpr - fpr
    return best


@dataclass(frozen=True)
class Operating:
    """What a threshold does on these images: damaged found, intact flagged.

    kind: "server" (the server's threshold now), "best" (best balance) or "false_alarms"
    (the lowest threshold keeping false alarms to ``rate``).
    """

    threshold: float
    found: int
    damaged: int
    flagged: int
    intact: int
    kind: str
    rate: float | None = None

    @property
    def recall(self) -> float:
        return self.found / self.damaged

    @property
    def false_alarms(self) -> float:
        return self.flagged / self.intact

    @property
    def why(self) -> str:
        if self.kind == "server":
            return "the server's now"
        if self.kind == "best":
            return "best balance (Youden's J)"
        return "no false alarm" if self.rate == 0 else f"at most {self.rate:.0%} false alarms"


@dataclass(frozen=True)
class Evaluation:
    """Scores of labelled images, and what each threshold worth knowing does with them."""

    names: tuple[str, ...]
    scores: np.ndarray  # float64, (N,)
    damaged: np.ndarray  # bool, (N,)
    server_threshold: float

    def at(self, threshold: float, kind: str, rate: float | None = None) -> Operating:
        flagged = self.scores >= threshold
        return Operating(
            threshold,
            found=int((flagged & self.damaged).sum()),
            damaged=int(self.damaged.sum()),
            flagged=int((flagged & ~self.damaged).sum()),
            intact=int((~self.damaged).sum()),
            kind=kind,
            rate=rate,
        )

    def roc_auc(self) -> float:
        return roc_auc(self.scores, self.damaged)

    @cached_property
    def best(self) -> Operating:
        """The whole-thousandth threshold that maximises balanced accuracy (Youden's J):
        of those that do equally well, the one midway in the gap of scores below the
        highest, so that it does not sit on an image's score."""
        candidates = np.unique(np.floor(self.scores * GRID)) / GRID
        rows = [self.at(float(t), "best") for t in candidates]
        top = max(rows, key=lambda r: (r.recall - r.false_alarms, r.threshold))
        below = self.scores[self.scores < top.threshold]
        if below.size:  # any threshold in (below.max(), top] flags the same images
            middle = float(np.ceil((below.max() + top.threshold) / 2 * GRID)) / GRID
            if below.max() < middle <= top.threshold:
                return self.at(middle, "best")
        return top

    def rows(self) -> list[Operating]:
        """The server's threshold, the best balance, and the lowest threshold (in whole
        thousandths, at most 1) that keeps false alarms to each of FALSE_ALARM_RATES,
        highest first. A rate no threshold up to 1 keeps to (intact images that score 1)
        has no row, nor one whose threshold finds no damaged image (a row "1.000: 0 found,
        no false alarm" offered to flag nothing)."""
        rows = [self.at(self.server_threshold, "server"), self.best]
        intact = np.sort(self.scores[~self.damaged])[::-1]  # highest first
        for rate in FALSE_ALARM_RATES:
            allowed = int(np.floor(rate * len(intact) + 1e-9))  # intact images it may flag
            threshold = 0.0
            if allowed < len(intact):  # the next thousandth over the first it may not flag
                threshold = float(np.floor(intact[allowed] * GRID) + 1) / GRID
            if threshold <= 1.0 and (row := self.at(threshold, "false_alarms", rate)).found:
                rows.append(row)
        return sorted(rows, key=lambda r: -r.threshold)

    def missed(self, threshold: float) -> list[tuple[str, float, bool]]:
        """(name, score, damaged) of the damaged images under threshold and the intact ones
        at or over it, furthest from it first."""
        wrong = (self.scores >= threshold) != self.damaged
        order = np.argsort(-np.abs(self.scores - threshold), kind="stable")
        return [
            (self.names[i], float(self.scores[i]), bool(self.damaged[i])) for i in order if wrong[i]
        ]


def _threshold(value: float) -> str:
    """A threshold as the server's log and `convstream info` write it (0.962, 0.8215); the
    whole thousandths offered with three decimals (0.990, not 0.99), so the column aligns."""
    if abs(value * GRID - round(value * GRID)) < 5e-4:
        return f"{value:.3f}"
    return f"{value:.4g}"


def _same(a: float, b: float) -> bool:
    """Whether two thresholds flag the same scores (the server's travels as float32)."""
    return abs(a - b) < 5e-7


FEW = 30
"""Below this many images of a kind, the report says each moves its rate by a lot."""


def evaluation_text(evaluation: Evaluation, folder: str, listed: int = 10, failed: int = 0) -> str:
    """The report `convstream evaluate` prints; failed: images left out, not analysed."""
    best = evaluation.best
    now = evaluation.at(evaluation.server_threshold, "server")
    auc = evaluation.roc_auc()
    were = "it is" if failed == 1 else "they are"
    left_out = f" ({failed} more could not be analysed; {were} left out)" if failed else ""
    lines = [
        f"{now.damaged} damaged and {now.intact} intact images in {folder}{left_out}",
        f"ROC AUC {auc:.3f} (how well the score ranks damaged images over intact ones: 1 is "
        "perfect, 0.5 chance)",
    ]
    few = min(now.damaged, now.intact)
    if few < FEW:
        lines.append(
            f"Few images: with {few} of a kind, each one moves its rate by "
            f"{1 / few:.0%}; a few dozen of each, or more, make these figures worth more."
        )
    lines += ["", f"{'threshold':>9}  {'damaged found':>14}  {'intact flagged':>15}"]
    merged: dict[float, list[Operating]] = {}
    for row in evaluation.rows():  # rows of one threshold are one line
        key = next((t for t in merged if _same(t, row.threshold)), row.threshold)
        merged.setdefault(key, []).append(row)
    for threshold, same in merged.items():
        row = same[0]
        whys = [r.why for r in same if r.kind != "false_alarms"]
        rates = [r.rate for r in same if r.kind == "false_alarms" and r.rate is not None]
        if rates:  # the largest rate says it: the row keeps to every smaller one too
            whys.append(
                "no false alarm" if row.flagged == 0 else f"at most {max(rates):.0%} false alarms"
            )
        lines.append(
            f"{_threshold(threshold):>9}  {row.found:>5} ({row.recall:6.1%})  "
            f"{row.flagged:>5} ({row.false_alarms:6.1%})   {'; '.join(whys)}"
        )
    lines.append("")
    if best.recall - best.false_alarms <= 0:
        swapped = " (are damaged/ and intact/ the wrong way round?)" if auc < 0.3 else ""
        lines.append(
            "The scores do not separate the two kinds here: no threshold does better than "
            f"chance{swapped}."
        )
    elif _same(best.threshold, now.threshold):
        lines.append(f"The server's threshold {_threshold(now.threshold)} is the best balance.")
    else:
        advice = (
            f"To flag at the best balance here: threshold = {_threshold(best.threshold)} in "
            "the server's config, then reload it (SIGHUP), or CONVSTREAM_THRESHOLD="
            f"{_threshold(best.threshold)} when it starts; or set the row whose false alarms "
            "you can afford."
        )
        lines.extend(textwrap.wrap(advice, 88))
    wrong = evaluation.missed(evaluation.server_threshold)
    if wrong:
        lines.append(
            f"Wrong at the server's threshold {_threshold(now.threshold)} ({len(wrong)}), "
            "furthest first:"
        )
        for name, score, damaged in wrong[:listed]:
            lines.append(f"  {score_text(score)}  {'missed ' if damaged else 'flagged'}  {name}")
        if len(wrong) > listed:
            lines.append(f"  ... and {len(wrong) - listed} more (--json lists every score)")
    return "\n".join(lines)


def evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    def row(r: Operating) -> dict[str, Any]:
        return {
            "threshold": round(r.threshold, 6),  # whole thousandths but the server's
            "kind": r.kind,
            "max_false_alarms": r.rate,
            "why": r.why,
            "damaged_found": r.found,
            "intact_flagged": r.flagged,
            "recall": round(r.recall, 6),
            "false_alarms": round(r.false_alarms, 6),
        }

    return {
        # counts, named apart from a result's "damaged", which says what the server calls it
        "damaged_images": int(evaluation.damaged.sum()),
        "intact_images": int((~evaluation.damaged).sum()),
        "roc_auc": round(evaluation.roc_auc(), 6),
        "server_threshold": round(evaluation.server_threshold, 6),
        "best_threshold": evaluation.best.threshold,
        "thresholds": [row(r) for r in evaluation.rows()],
        # each image's folder (the truth) and, as in a result, whether the server calls it
        # damaged at its threshold now
        "images": [
            {
                "name": n,
                "folder": "damaged" if d else "intact",
                "score": round(float(s), 6),
                "damaged": bool(s >= evaluation.server_threshold),
            }
            for n, d, s in zip(evaluation.names, evaluation.damaged, evaluation.scores, strict=True)
        ],
    }


def labelled(
    names: Sequence[str], scores: Sequence[float], damaged: Sequence[bool], threshold: float
) -> Evaluation:
    return Evaluation(
        tuple(names), np.asarray(scores, np.float64), np.asarray(damaged, bool), threshold
    )
