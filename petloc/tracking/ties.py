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
    """`items` best first: those whose score is within `min_improvement` of the best score
    (ties with it), the fastest first; then every other item by score, the higher first.
    Only the best score makes ties: an item that ties with a tied one, but not with the best,
    is ranked by its score (ties do not chain). Equal keys keep the faster, then the higher
    score, then the earlier item first; items with no score come last, in their order. With
    min_improvement 0 this is the order of the scores, the faster first when equal."""
    standings = [(item, standing(item)) for item in items]
    scored = [(item, s) for item, s in standings if s is not None]
    rest = [item for item, s in standings if s is None]
    top = max((s.score for _, s in scored), default=0.0)
    tied: list[tuple[T, Standing]] = []
    others: list[tuple[T, Standing]] = []
    for pair in scored:
        (tied if within(top - pair[1].score, min_improvement) else others).append(pair)
    tied.sort(key=lambda pair: (_latency(pair[1]), -pair[1].score))
    others.sort(key=lambda pair: (-pair[1].score, _latency(pair[1])))
    return [item for item, _ in tied + others] + rest


def _latency(standing: Standing) -> float:
    return math.inf if standing.latency_ms is None else standing.latency_ms
