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
from typing import Any

import numpy as np

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
    """What a threshold does on these images: damaged found, intact flagged."""

    threshold: float
    found: int
    damaged: int
    flagged: int
    intact: int
    why: str  # "the server's", "best balance", "at most 1% false alarms", ...

    @property
    def recall(self) -> float:
        return self.found / self.damaged

    @property
    def false_alarms(self) -> float:
        return self.flagged / self.intact


@dataclass(frozen=True)
class Evaluation:
    """Scores of labelled images, and what each threshold worth knowing does with them."""

    names: tuple[str, ...]
    scores: np.ndarray  # float64, (N,)
    damaged: np.ndarray  # bool, (N,)
    server_threshold: float

    def at(self, threshold: float, why: str) -> Operating:
        flagged = self.scores >= threshold
        return Operating(
            threshold,
            found=int((flagged & self.damaged).sum()),
            damaged=int(self.damaged.sum()),
            flagged=int((flagged & ~self.damaged).sum()),
            intact=int((~self.damaged).sum()),
            why=why,
        )

    def roc_auc(self) -> float:
        return roc_auc(self.scores, self.damaged)

    def best(self) -> Operating:
        """The whole-thousandth threshold that maximises balanced accuracy (Youden's J)."""
        candidates = np.unique(np.floor(self.scores * GRID)) / GRID
        rows = [self.at(float(t), "best balance (Youden's J)") for t in candidates]
        return max(rows, key=lambda r: (r.recall - r.false_alarms, r.threshold))

    def rows(self) -> list[Operating]:
        """The server's threshold, the best balance, and the lowest threshold (in whole
        thousandths) that keeps false alarms to each of FALSE_ALARM_RATES, highest first."""
        rows = [self.at(self.server_threshold, "the server's now"), self.best()]
        intact = np.sort(self.scores[~self.damaged])[::-1]  # highest first
        for rate in FALSE_ALARM_RATES:
            allowed = int(np.floor(rate * len(intact) + 1e-9))  # intact images it may flag
            threshold = 0.0
            if allowed < len(intact):  # the next thousandth over the first it may not flag
                threshold = float(np.floor(intact[allowed] * GRID) + 1) / GRID
            said = "no false alarm" if rate == 0 else f"at most {rate:.0%} false alarms"
            if rows[-1].threshold == threshold and rows[-1].why != "the server's now":
                said = f"{rows.pop().why}, {said}"  # a rate too small to allow one more
            rows.append(self.at(threshold, said))
        return sorted(rows, key=lambda r: -r.threshold)

    def missed(self, threshold: float) -> list[tuple[str, float, bool]]:
        """(name, score, damaged) of the damaged images under threshold and the intact ones
        at or over it, furthest from it first."""
        wrong = (self.scores >= threshold) != self.damaged
        order = np.argsort(-np.abs(self.scores - threshold), kind="stable")
        return [
            (self.names[i], float(self.scores[i]), bool(self.damaged[i])) for i in order if wrong[i]
        ]


def evaluation_text(evaluation: Evaluation, folder: str, listed: int = 10) -> str:
    """The report `convstream evaluate` prints."""
    best = evaluation.best()
    now = evaluation.at(evaluation.server_threshold, "")
    lines = [
        f"{now.damaged} damaged and {now.intact} intact images in {folder}",
        f"ROC AUC {evaluation.roc_auc():.3f} (how well the score ranks damaged images over "
        "intact ones: 1 is perfect, 0.5 chance)",
        "",
        f"{'threshold':>9}  {'damaged found':>14}  {'intact flagged':>15}",
    ]
    for row in evaluation.rows():
        lines.append(
            f"{row.threshold:9.3f}  {row.found:>5} ({row.recall:5.1%})  "
            f"{row.flagged:>5} ({row.false_alarms:5.1%})   {row.why}"
        )
    lines.append("")
    if abs(best.threshold - now.threshold) < 5e-4:
        lines.append(
            f"The server's threshold {now.threshold:.3f} is already the best balance here."
        )
    else:
        advice = (
            f"To flag at the best balance here: threshold = {best.threshold:.3f} in the server's "
            "config (or `convstream serve --threshold`), then reload it (SIGHUP) or restart; "
            "or pick the row whose false alarms you can afford."
        )
        lines.extend(textwrap.wrap(advice, 88))
    wrong = evaluation.missed(evaluation.server_threshold)
    if wrong:
        lines.append(
            f"Wrong at the server's threshold {now.threshold:.3f} ({len(wrong)}), furthest first:"
        )
        for name, score, damaged in wrong[:listed]:
            lines.append(f"  {score:.3f}  {'missed ' if damaged else 'flagged'}  {name}")
        if len(wrong) > listed:
            lines.append(f"  ... and {len(wrong) - listed} more (--json lists every score)")
    return "\n".join(lines)


def evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    def row(r: Operating) -> dict[str, Any]:
        return {
            "threshold": round(r.threshold, 6),  # whole thousandths but the server's
            "why": r.why,
            "damaged_found": r.found,
            "intact_flagged": r.flagged,
            "recall": round(r.recall, 6),
            "false_alarms": round(r.false_alarms, 6),
        }

    return {
        "damaged": int(evaluation.damaged.sum()),
        "intact": int((~evaluation.damaged).sum()),
        "roc_auc": round(evaluation.roc_auc(), 6),
        "server_threshold": round(evaluation.server_threshold, 6),
        "best_threshold": evaluation.best().threshold,
        "thresholds": [row(r) for r in evaluation.rows()],
        "images": [
            {"name": n, "damaged": bool(d), "score": round(float(s), 6)}
            for n, d, s in zip(evaluation.names, evaluation.damaged, evaluation.scores, strict=True)
        ],
    }


def labelled(
    names: Sequence[str], scores: Sequence[float], damaged: Sequence[bool], threshold: float
) -> Evaluation:
    return Evaluation(
        tuple(names), np.asarray(scores, np.float64), np.asarray(damaged, bool), threshold
    )
