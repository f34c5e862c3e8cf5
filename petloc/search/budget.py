"""A sweep's time budget (`tuner.max_minutes`): the search stops starting trials once a trial
started now and then the final run might not end inside it, so that a sweep sized on one
machine still ends in time on a machine several times slower, with fewer trials.

The budget sits on the oracle, which the one-process sweep and a distributed sweep's chief
both hold: when it is spent, the oracle answers "stopped" to whoever asks for a trial, as it
does when its own trials run out. It times each trial from its start to its end (with
workers, trials overlap; the final run starts only once all of them have ended) and reads
what each trial reports (`TrackedTuner.run_trial`): its epochs and an epoch's seconds once
traced; a trial still running reports its steady epoch as it goes (`PACE`), so that with
workers a slower backbone still training counts before it ends. From the trials of this start
of the sweep, on the safe side:
- an epoch: the slowest steady epoch of the trials that train like the one in question (same
  backbone, image size, width, batch size: `SPEED_KEYS`), else of all;
- a trial's fixed cost (building, tracing, scoring, logging): the largest seen;
- the next trial: the epochs of the trial the oracle draws (Hyperband's `tuner/epochs` less
  its initial epoch; else `train.epochs`) plus the fixed cost. With workers, a trial handed out
  now still takes its whole length, and the final run waits for it;
- the final run: `tuner.final_epochs` epochs of the slowest of what it may train (the best
  trial so far, the trial drawn, a trial still running) plus the fixed cost.
A short trial's wall time is no guide to a long run: Hyperband's 1-epoch trials on real photos
took 85 s for an epoch of 50 s on 2 cores, and their one epoch also traces (`EpochLogger`
takes what its first batches took beyond later ones out). Before any trial has finished (or while all fail,
which `tuner.max_consecutive_failures` bounds) there is nothing to go on, and trials start.
The leaderboard, the ensemble and the promotion after the final run are not priced (seconds;
a filled final run leaves `AFTER_FINAL` of the budget for them). With `tuner.fill_budget` the
final run trains as many epochs as the rest of the budget holds, at least `tuner.final_epochs`
(`final_epochs_for`), so a search that ends early leaves no hour idle.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Callable

import keras_tuner as kt
from keras_tuner.src.engine.trial import TrialStatus

from petloc.search.progress import duration

# What sets a trial's epoch time, for pricing a trial by the ones that trained like it.
SPEED_KEYS = ("backbone", "image_size", "width", "batch_size", "second_stage", "tta")
AFTER_FINAL = 0.05  # of the budget, kept after a filled final run: leaderboard, ensemble, promotion (not priced)
PACE = "epoch_seconds_so_far"  # a running trial's steady epoch, reported after each epoch past its first


def hear_paces(oracle: kt.Oracle) -> None:
    """Lets a running trial report its `PACE` alone: Keras Tuner's `update_trial` wants the
    objective in every report, and a trial's val mIoU is only known (with TTA) once it ends.
    On the oracle's holder (a one-process sweep, or a distributed sweep's chief), whose instance
    method the chief's service calls for its workers."""
    keras_tuners_update_trial = oracle.update_trial

    @kt.synchronized
    def update_trial(holder, trial_id, metrics, step=0):
        if set(metrics) != {PACE}:
            return keras_tuners_update_trial(trial_id, metrics, step)
        trial = holder.trials[trial_id]
        trial.metrics.update(PACE, metrics[PACE], step=step)
        holder._save_trial(trial)
        return trial

    oracle.update_trial = functools.partial(update_trial, oracle)


def _fixed_cost(timed: dict[str, tuple[float, float, float]]) -> float:
    """A trial's cost besides its epochs (building, tracing, scoring, logging): the largest seen."""
    return max(max(0.0, wall - trained * each) for trained, each, wall in timed.values())


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
        hear_paces(oracle)
        draw, end = oracle.populate_space, oracle.end_trial

        def populate_space(trial_id):
            if self.spent:
                return {"status": TrialStatus.STOPPED, "values": None}
            # Draw first, to price the trial the oracle would run (Hyperband's shortest trials
            # come first); a trial that does not fit was never drawn: the oracle's saved state
            # goes back, so a later start with more time draws it again. (What an oracle keeps
            # outside that state, such as the Bayesian oracle's random generator, may have
            # moved; this start draws nothing more, and a later one does not read it.)
            before = copy.deepcopy(oracle.get_state())
            drawn = draw(trial_id)
            if drawn.get("status") != TrialStatus.RUNNING:  # waiting for running trials (IDLE), or done
                return drawn
            if self._would_overrun(drawn["values"]):
                oracle.set_state(before)
                return {"status": TrialStatus.STOPPED, "values": None}
            self.begun[trial_id] = self.clock()
            return drawn

        def end_trial(trial):
            result = end(trial)
            # A trial an earlier start left running is handed out again without a draw: timed from this start.
            self.took[trial.trial_id] = self.clock() - self.begun.get(trial.trial_id, self.started)
            return result

        # The instance's own methods, which Keras Tuner's create_trial and the chief's service call.
        oracle.populate_space, oracle.end_trial = populate_space, end_trial

    def left(self) -> float:
        """Seconds of the budget not spent yet."""
        return self.seconds - (self.clock() - self.started)

    def _timed(self) -> dict[str, tuple[float, float, float]]:
        """trial_id -> (epochs, seconds an epoch, wall seconds) of each trial that finished since this start."""
        timed = {}
        for trial_id, wall in self.took.items():
            metrics = self.oracle.trials[trial_id].metrics
            if metrics.exists("epoch_seconds") and metrics.exists("epochs_trained"):
                timed[trial_id] = (metrics.get_last_value("epochs_trained"), metrics.get_last_value("epoch_seconds"), wall)
        return timed

    def _running_paces(self) -> dict[str, float]:
        """trial_id -> the steady epoch each trial handed out by this start and still running has reported."""
        running = {trial_id: self.oracle.trials.get(trial_id) for trial_id in self.begun if trial_id not in self.took}
        return {trial_id: trial.metrics.get_last_value(PACE) for trial_id, trial in running.items()
                if trial and trial.metrics.exists(PACE)}

    def _epoch_like(self, values: dict | None, epochs: dict[str, float]) -> float:
        """The slowest of `epochs` (trial_id -> seconds) of the trials that train like `values`
        (same `SPEED_KEYS`), else of all (a backbone not timed yet, or no values)."""
        same = [each for trial_id, each in epochs.items() if values is not None and all(
            self.oracle.trials[trial_id].hyperparameters.values.get(key) == values.get(key) for key in SPEED_KEYS)]
        return max(same or epochs.values())

    def epochs_of(self, values: dict) -> int:
        """The epochs a drawn trial trains: Hyperband's say, else `train.epochs`."""
        if "tuner/epochs" in values:
            return values["tuner/epochs"] - values.get("tuner/initial_epoch", 0)
        return self.trial_epochs

    def estimates(self, drawn: dict | None = None) -> tuple[float, float, float] | None:
        """Seconds: elapsed since the start, the next trial (the `drawn` values, else one of
        `train.epochs` at the slowest epoch seen), the final run; None before a trial finished.
        The final run trains the best trial so far, the drawn one, or one still running."""
        timed = self._timed()
        if not timed:
            return None
        running = self._running_paces()
        seen = {**{trial_id: each for trial_id, (_, each, _) in timed.items()}, **running}
        epochs = self.epochs_of(drawn) if drawn is not None else self.trial_epochs
        trial_epoch = self._epoch_like(drawn, seen)
        best = self.oracle.get_best_trials(1)
        best_epoch = seen[best[0].trial_id] if best and best[0].trial_id in seen else max(seen.values())
        final_epoch = max([best_epoch, trial_epoch, *running.values()])
        fixed = _fixed_cost(timed)
        final = self.final_epochs * final_epoch + fixed if self.final_epochs else 0.0
        return self.clock() - self.started, epochs * trial_epoch + fixed, final

    def final_epochs_for(self, values: dict) -> int:
        """`tuner.fill_budget`: the epochs of a final run of `values` that the rest of the budget
        holds (its epoch priced by the trials that trained like it, plus the fixed cost, with
        `AFTER_FINAL` of the budget kept for the ensemble and the promotion), never fewer than
        `final_epochs`; `final_epochs` before a trial has been timed."""
        timed = self._timed()
        if not timed:
            return self.final_epochs
        epoch = self._epoch_like(values, {trial_id: each for trial_id, (_, each, _) in timed.items()})
        fixed = _fixed_cost(timed)
        room = self.left() - fixed - AFTER_FINAL * self.seconds
        return max(self.final_epochs, int(room // epoch)) if epoch > 0 else self.final_epochs

    def _would_overrun(self, drawn: dict) -> bool:
        estimates = self.estimates(drawn)
        if estimates is None:
            return False
        elapsed, trial, final = estimates
        if elapsed + trial + final <= self.seconds:
            return False
        kept = f"; about {duration(final)} kept for the final run" if self.final_epochs else ""
        ended = f"{len(self.took)} trial{'' if len(self.took) == 1 else 's'} ended"
        trial_epochs = self.epochs_of(drawn)
        self.spent = (f"{duration(elapsed)} of {duration(self.seconds)} spent, {ended}; "
                      f"the next trial ({trial_epochs} epoch{'' if trial_epochs == 1 else 's'}) takes about {duration(trial)}{kept}")
        self.say(f"\ntime budget (tuner.max_minutes): {self.spent}; no new trial starts")
        if elapsed + final > self.seconds:  # the final run always runs: say so now, while it can still be changed
            self.say(f"time budget (tuner.max_minutes): the final run alone ({self.final_epochs} epochs, about {duration(final)}) "
                     f"will end about {duration(elapsed + final - self.seconds)} past it; lower tuner.final_epochs or "
                     "raise tuner.max_minutes (Ctrl+C, then the sweep with the new value resumes)")
        return True
