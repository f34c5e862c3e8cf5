"""When one model beats another: by val mIoU, where a difference at or below
`registry.min_improvement` is a tie (two runs of one setting differ by that much), and a tie
goes to the lower batch-1 latency. The sweep's champion, its leaderboard's order and
`petloc promote` all follow this rule. Free of MLflow, so that `petloc.search` may import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Standing:
    score: float  # val mIoU (a pretrained classifier: val accuracy)
    latency_ms: float | None  # batch-1 latency; None when unknown


@dataclass(frozen=True)
class Verdict:
    better: bool
    tie: bool  # the scores differ by min_improvement or less


def within(difference: float, min_improvement: float) -> bool:
    """Whether a score difference is a tie; one a float's rounding puts a hair above the
    threshold (0.5591 - 0.5491) still is."""
    return abs(difference) <= min_improvement or math.isclose(
        abs(difference), min_improvement, rel_tol=1e-9, abs_tol=1e-12
    )


def compare(candidate: Standing, holder: Standing, min_improvement: float) -> Verdict:
    """Whether `candidate` beats `holder`: a score higher by more than `min_improvement`, or a
    tie with a lower known latency."""
    difference = candidate.score - holder.score
    if within(difference, min_improvement):
        return Verdict(_faster(candidate, holder), tie=True)
    return Verdict(difference > 0, tie=False)


def _faster(one: Standing, other: Standing) -> bool:
    return one.latency_ms is not None and (
        other.latency_ms is None or one.latency_ms < other.latency_ms
    )


def ranked(
    items: list[T], standing: Callable[[T], Standing | None], min_improvement: float
) -> list[T]:
    """`items` best first. The first is the fastest of those that tie with the best score; the
    rest are ranked the same way, again and again. Items with no score come last, in their
    order; among equally fast ties the higher score, then the earlier item, comes first.
    With min_improvement 0 this is the order of the scores, the faster first when equal."""
    scored = [(item, s) for item in items if (s := standing(item)) is not None]
    rest = [item for item in items if standing(item) is None]
    order: list[T] = []
    while scored:
        top = max(s.score for _, s in scored)
        ties = [i for i, (_, s) in enumerate(scored) if within(top - s.score, min_improvement)]
        first = min(ties, key=lambda i: (_latency(scored[i][1]), -scored[i][1].score))
        order.append(scored.pop(first)[0])
    return order + rest


def _latency(standing: Standing) -> float:
    return math.inf if standing.latency_ms is None else standing.latency_ms
