"""A sweep's time budget (`tuner.max_minutes`): the search stops starting trials once a trial
started now and then the final run might not end inside it, so that a sweep sized on one
machine still ends in time on a machine several times slower, with fewer trials.

The budget sits on the oracle, which the one-process sweep and a distributed sweep's chief
both hold: when it is spent, the oracle answers "stopped" to whoever asks for a trial, as it
does when its own trials run out. It times each trial from its start to its end (with
workers, trials overlap; the final run starts only once all of them have ended) and reads
what each trial reports (`TrackedTuner.run_trial`): its epochs and an epoch's seconds once
traced. From the trials ended since this start of the sweep, on the safe side:
- an epoch: the slowest steady epoch of any trial (of a trial that trained two or more, else
  of any): the winner's backbone is not known yet;
- a trial's fixed cost (building, tracing, scoring, logging): the largest seen;
- the next trial: `train.epochs` epochs (Hyperband's longest trial; it does not say which
  comes next) plus the fixed cost;
- the final run: `tuner.final_epochs` epochs plus the fixed cost.
A short trial's wall time is no guide to a long run: Hyperband's 1-epoch trials on real photos
took 85 s for an epoch of 50 s on 2 cores. Before any trial has finished (or while all fail,
which `tuner.max_consecutive_failures` bounds) there is nothing to go on, and trials start.
The leaderboard, the ensemble and the promotion after the final run are not priced (seconds).
"""

from __future__ import annotations

import time
from typing import Callable

import keras_tuner as kt
from keras_tuner.src.engine.trial import TrialStatus

from petloc.search.progress import duration


class TimeBudget:
    """`minutes` for this start of the sweep on `oracle`, counted from `started` (monotonic)."""

    def __init__(self, oracle: kt.Oracle, minutes: float, trial_epochs: int, final_epochs: int,
                 started: float | None = None, say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.oracle, self.seconds = oracle, minutes * 60
        self.trial_epochs, self.final_epochs = trial_epochs, final_epochs
        self.say, self.clock = say, clock
        self.started = clock() if started is None else started
        self.begun: dict[str, float] = {}  # trial_id -> when this start handed it out
        self.took: dict[str, float] = {}  # trial_id -> its wall time, for the trials ended since this start
        self.spent: str | None = None  # why no trial starts any more
        draw, end = oracle.populate_space, oracle.end_trial

        def populate_space(trial_id):
            if self.spent or self._would_overrun():
                return {"status": TrialStatus.STOPPED, "values": None}
            self.begun[trial_id] = self.clock()
            return draw(trial_id)

        def end_trial(trial):
            result = end(trial)
            # A trial an earlier start left running is handed out again without a draw: timed from this start.
            self.took[trial.trial_id] = self.clock() - self.begun.get(trial.trial_id, self.started)
            return result

        # The instance's own methods, which Keras Tuner's create_trial and the chief's service call.
        oracle.populate_space, oracle.end_trial = populate_space, end_trial

    def _timed(self) -> list[tuple[float, float, float]]:
        """(epochs, seconds an epoch, wall seconds) of each trial that finished since this start."""
        timed = []
        for trial_id, wall in self.took.items():
            metrics = self.oracle.trials[trial_id].metrics
            if metrics.exists("epoch_seconds") and metrics.exists("epochs_trained"):
                timed.append((metrics.get_last_value("epochs_trained"), metrics.get_last_value("epoch_seconds"), wall))
        return timed

    def estimates(self) -> tuple[float, float, float] | None:
        """Seconds: elapsed since the start, the next trial, the final run; None before a trial finished."""
        timed = self._timed()
        if not timed:
            return None
        steady = [each for epochs, each, _ in timed if epochs >= 2] or [each for _, each, _ in timed]
        epoch = max(steady)
        fixed = max(max(0.0, wall - epochs * each) for epochs, each, wall in timed)
        final = self.final_epochs * epoch + fixed if self.final_epochs else 0.0
        return self.clock() - self.started, self.trial_epochs * epoch + fixed, final

    def _would_overrun(self) -> bool:
        estimates = self.estimates()
        if estimates is None:
            return False
        elapsed, trial, final = estimates
        if elapsed + trial + final <= self.seconds:
            return False
        kept = f"; about {duration(final)} kept for the final run" if self.final_epochs else ""
        ended = f"{len(self.took)} trial{'' if len(self.took) == 1 else 's'} ended"
        self.spent = (f"{duration(elapsed)} of {duration(self.seconds)} spent, {ended}; "
                      f"a trial takes up to about {duration(trial)}{kept}")
        self.say(f"\ntime budget (tuner.max_minutes): {self.spent}; no new trial starts")
        return True
