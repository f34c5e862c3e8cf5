"""A sweep's time budget (`tuner.max_minutes`): the search stops starting trials once the next
one and the final run would no longer fit, so that a sweep sized on one machine still ends in
time on a machine several times slower.

The budget sits on the oracle, which the one-process sweep and a distributed sweep's chief
both hold: when it is spent, the oracle answers "stopped" to whoever asks for a trial, as it
does when its own trials run out. Estimates come from the trials ended since this start of
the sweep, which report their training seconds and epochs (`TrackedTuner.run_trial`):
- the next trial: the sweep's wall time so far per trial ended (with several workers, their
  trials overlap, so this is the sweep's pace);
- the final run: `tuner.final_epochs` at the trials' training seconds per epoch, plus what a
  trial cost besides its epochs (building, tracing, scoring, logging). A short trial's fixed
  cost is no guide to a long run's epochs: Hyperband's 1-epoch trials took 85 s for an epoch
  of 50 s on 2 cores.
A trial that starts inside the budget may end a little after it.
"""

from __future__ import annotations

import time
from typing import Callable

import keras_tuner as kt
from keras_tuner.src.engine.trial import TrialStatus

from petloc.search.progress import duration

ENDED = (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.INVALID)


class TimeBudget:
    """`minutes` for this start of the sweep on `oracle`, from now; the final run's epochs kept."""

    def __init__(self, oracle: kt.Oracle, minutes: float, final_epochs: int,
                 say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.oracle, self.seconds, self.final_epochs = oracle, minutes * 60, final_epochs
        self.say, self.clock = say, clock
        self.started = clock()
        self.earlier: set[str] | None = None  # the trials of earlier starts: their time is not in ours
        self.spent = False
        draw = oracle.populate_space

        def populate_space(trial_id):
            if self.earlier is None:  # at the first trial, once a resumed sweep's oracle has reloaded
                self.earlier = set(self.oracle.trials)
            if self.spent or self._would_overrun():
                return {"status": TrialStatus.STOPPED, "values": None}
            return draw(trial_id)

        oracle.populate_space = populate_space  # the instance's, for Keras Tuner's create_trial

    def _ended(self) -> list:
        return [t for tid, t in self.oracle.trials.items() if tid not in (self.earlier or ()) and t.status in ENDED]

    def seconds_an_epoch(self) -> float | None:
        """Training seconds per epoch of the trials that finished since this start (None before one did)."""
        timed = [t for t in self._ended() if t.metrics.exists("train_seconds") and t.metrics.exists("epochs_trained")]
        epochs = sum(t.metrics.get_last_value("epochs_trained") for t in timed)
        return sum(t.metrics.get_last_value("train_seconds") for t in timed) / epochs if epochs else None

    def estimates(self) -> tuple[float, float, float] | None:
        """Seconds: elapsed since this start, the next trial, the final run (None before a trial finished)."""
        ended, per_epoch = self._ended(), self.seconds_an_epoch()
        if per_epoch is None:
            return None
        elapsed = self.clock() - self.started
        trial = elapsed / len(ended)
        trained = [t.metrics.get_last_value("train_seconds") for t in ended if t.metrics.exists("train_seconds")]
        besides_epochs = max(0.0, trial - sum(trained) / len(trained))
        return elapsed, trial, per_epoch * self.final_epochs + besides_epochs

    def _would_overrun(self) -> bool:
        estimates = self.estimates()
        if estimates is None:
            return False
        elapsed, trial, final = estimates
        if elapsed + trial + final <= self.seconds:
            return False
        self.spent = True
        kept = f", about {duration(final)} kept for the final run" if self.final_epochs else ""
        self.say(f"\ntime budget: {duration(elapsed)} of {duration(self.seconds)} (tuner.max_minutes) spent on "
                 f"{len(self._ended())} trials; no new trial starts{kept}")
        return True
