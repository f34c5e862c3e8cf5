"""A sweep's own lines while it runs: which trial starts (k of N), and for each one that ends
its figures, its time, the sweep's elapsed time and an estimate of the time left.

Trials are named by their Keras Tuner trial_id (0, 1, ...), as in the MLflow runs
(`trial-0-simple`, tag `trial_id`) and the leaderboard; Keras Tuner's own display, which
counts from 1, is silenced by the tuner.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras_tuner as kt

from petloc import library_internals
from petloc.config import Experiment, Range
from petloc.report import figure, number
from petloc.tracking import vocabulary as vocab


def planned_trials(exp: Experiment, oracle: kt.Oracle) -> int:
    """How many trials the sweep will run in all (its earlier runs included)."""
    if isinstance(oracle, kt.oracles.HyperbandOracle):
        # one iteration; it only feeds these lines
        return library_internals.hyperband_iteration_trials(oracle)
    if exp.tuner.kind == "grid":
        return min(exp.tuner.max_trials, grid_size(exp))
    return exp.tuner.max_trials


def grid_size(exp: Experiment) -> int:
    """Combinations of the space's choices and stepped ranges."""
    size = 1
    for value in exp.space.values():
        if isinstance(value, list):
            size *= len(value)
        elif isinstance(value, Range) and value.step:
            if value.sampling == "log":  # the step is a factor
                size *= (
                    math.floor(math.log(value.max / value.min) / math.log(value.step) + 1e-9) + 1
                )
            else:
                size *= math.floor((value.max - value.min) / value.step + 1e-9) + 1
    return size


HEADLINE = (vocab.BEST_VAL_MIOU, vocab.VAL_ACCURACY, vocab.LATENCY_MS_B1)


def headline(figures: Mapping[str, float]) -> str:
    """`val mIoU 0.734, accuracy 0.912, latency 4.47 ms`: a run's summary `figures` (its
    metrics) as every progress line shows them, each rounded as in the tables."""
    shown = {name: figure(name, figures[name]) for name in HEADLINE}
    return (
        f"val mIoU {shown[vocab.BEST_VAL_MIOU]}, accuracy {shown[vocab.VAL_ACCURACY]}, "
        f"latency {shown[vocab.LATENCY_MS_B1]} ms"
    )


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class SweepProgress:
    """Prints a line when a trial starts and one when it ends; the estimate of the time left
    is the mean time of the trials this process ran, times the trials still to run, or, under
    a time budget (`time_budget_left()`, seconds), what is left of it: the final run is in it."""

    def __init__(
        self,
        planned: int,
        say: Callable[[str], None] = print,
        time_budget_left: Callable[[], float] | None = None,
    ):
        self.planned, self.say, self.time_budget_left = planned, say, time_budget_left
        self.started = time.perf_counter()
        self.trial_started = self.started
        self.ran = 0

    def trial_begins(self, trial_id: str, number_in_sweep: int, values: dict[str, Any]) -> None:
        self.trial_started = time.perf_counter()
        shown = "  ".join(f"{k}={number(v)}" for k, v in values.items())
        self.say(f"\ntrial {trial_id} ({number_in_sweep} of {self.planned}): {shown}")

    def trial_ends(
        self,
        trial_id: str,
        ended_in_sweep: int,
        figures: dict[str, float] | None,
        error: str = "",
        sweep: bool = True,
    ) -> None:
        """`figures` of a finished trial (its summary metrics: `headline`), or None
        and the `error` of a failed one; without `sweep`, the line leaves out the sweep's
        progress (a worker sees only its own trials; the chief prints the sweep's)."""
        now = time.perf_counter()
        self.ran += 1
        took = duration(now - self.trial_started)
        if figures is None:
            head = f"trial {trial_id} failed after {took}: {error}"
        else:
            head = f"trial {trial_id} done in {took}: {headline(figures)}"
        if not sweep:
            self.say(head)
            return
        elapsed = now - self.started
        left = max(0, self.planned - ended_in_sweep)
        eta = f", about {duration(elapsed / self.ran * left)} left" if left else ""
        if self.time_budget_left:
            time_left = max(0.0, self.time_budget_left())
            eta = f", at most {duration(time_left)} left (tuner.max_minutes, final run included)"
        self.say(
            f"{head}  [sweep: {ended_in_sweep} of {self.planned} trials, {duration(elapsed)} elapsed{eta}]"
        )
