"""A sweep's time budget (`tuner.max_minutes`), kept by the oracle itself: once a trial
started now, and the final run after it, might end past the budget, the oracle answers
"stopped", as when its trials run out. A sweep sized on one machine then still ends in time on
a slower one, with fewer trials. The one-process tuner and a distributed sweep's chief (whose
service asks the same oracle for every worker) keep it alike. It prices on the safe side, from
the trials of this start only: a short trial's wall time is no guide to a long run (its epoch
also traces), so epochs and fixed costs are priced apart (`TimeBudgetedOracle.estimates`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import keras_tuner as kt

from petloc.search.progress import duration
from petloc.tracking import vocabulary as vocab

TrialStatus = kt.engine.trial.TrialStatus

# What sets a trial's epoch time, for pricing a trial by the ones that trained like it.
SPEED_KEYS = ("backbone", "image_size", "width", "batch_size", "second_stage", "tta")
AFTER_FINAL = 0.05  # of the budget, kept after a filled final run: leaderboard, ensemble, promotion (not priced)
PACE = "epoch_seconds_so_far"  # a running trial's steady epoch, reported after each epoch past its first


def _fixed_cost(timed: dict[str, tuple[float, float, float]]) -> float:
    """A trial's cost besides its epochs (building, tracing, scoring, logging): the largest seen."""
    return max(max(0.0, wall - trained * each) for trained, each, wall in timed.values())


class TimeBudgetedOracle(kt.Oracle):
    """Mixed in before one of Keras Tuner's oracles: `max_minutes` for this start of the sweep,
    counted from `started` (monotonic); None, no budget. It times each trial from its start to
    its end (with workers, trials overlap; the final run starts once all have ended) and reads
    what each reports (`SweepTuner.run_trial`): its epochs and steady epoch once ended, its
    `PACE` while it runs. Before any trial has ended there is nothing to go on, and trials start.
    The leaderboard, ensemble and promotion are not priced; a filled final run leaves them
    `AFTER_FINAL` of the budget (`final_epochs_for`, `tuner.fill_budget`)."""

    def __init__(
        self,
        *args,
        max_minutes: float | None = None,
        trial_epochs: int = 1,
        final_epochs: int = 0,
        started: float | None = None,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.budget_seconds = None if max_minutes is None else max_minutes * 60
        self.trial_epochs, self.final_epochs = trial_epochs, final_epochs
        self.say, self.clock = say, clock
        self.started = clock() if started is None else started
        self.begun: dict[str, float] = {}  # trial_id -> when this start handed it out
        # trial_id -> its wall time, for the trials ended since this start
        self.took: dict[str, float] = {}
        self.spent: str | None = None  # why no trial starts any more

    def populate_space(self, trial_id):
        # Called by create_trial, which holds the oracle's lock (Keras Tuner's @synchronized).
        if self.budget_seconds is None:
            return super().populate_space(trial_id)
        if self.spent:
            return {"status": TrialStatus.STOPPED, "values": None}
        # Draw first, to price the trial the oracle would run (Hyperband's shortest trials
        # come first); a trial that does not fit was never drawn: the oracle's saved state
        # goes back, so a later start with more time draws it again. (What an oracle keeps
        # outside that state, such as the Bayesian oracle's random generator, may have
        # moved; this start draws nothing more, and a later one does not read it.)
        before = copy.deepcopy(self.get_state())
        drawn = super().populate_space(trial_id)
        if drawn.get("status") != TrialStatus.RUNNING:  # waiting for running trials (IDLE), or done
            return drawn
        if self._would_overrun(drawn["values"]):
            self.set_state(before)
            return {"status": TrialStatus.STOPPED, "values": None}
        self.begun[trial_id] = self.clock()
        return drawn

    @kt.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        if set(metrics) != {PACE}:
            return super().update_trial(trial_id, metrics, step)
        # A running trial's pace alone: Keras Tuner wants the objective in every report, and
        # a trial's val mIoU is only known (with TTA) once it ends. Saved with the trial's end.
        trial = self.trials[trial_id]
        trial.metrics.update(PACE, metrics[PACE], step=step)
        return trial

    @kt.synchronized
    def end_trial(self, trial):
        result = super().end_trial(trial)
        # A trial an earlier start left running is handed out again without a draw: timed from this start.
        self.took[trial.trial_id] = self.clock() - self.begun.get(trial.trial_id, self.started)
        return result

    def left(self) -> float:
        """Seconds of the budget not spent yet (no budget: no end)."""
        if self.budget_seconds is None:
            return math.inf
        return self.budget_seconds - (self.clock() - self.started)

    def _timed(self) -> dict[str, tuple[float, float, float]]:
        """trial_id -> (epochs, seconds an epoch, wall seconds) of each trial that finished since this start."""
        timed = {}
        for trial_id, wall in self.took.items():
            metrics = self.trials[trial_id].metrics
            if metrics.exists(vocab.EPOCH_SECONDS) and metrics.exists(vocab.EPOCHS_TRAINED):
                timed[trial_id] = (
                    metrics.get_last_value(vocab.EPOCHS_TRAINED),
                    metrics.get_last_value(vocab.EPOCH_SECONDS),
                    wall,
                )
        return timed

    def _running_paces(self) -> dict[str, float]:
        """trial_id -> the steady epoch each trial handed out by this start and still running has reported."""
        running = {
            trial_id: self.trials.get(trial_id)
            for trial_id in self.begun
            if trial_id not in self.took
        }
        return {
            trial_id: trial.metrics.get_last_value(PACE)
            for trial_id, trial in running.items()
            if trial and trial.metrics.exists(PACE)
        }

    def _epoch_like(self, values: dict | None, epochs: dict[str, float]) -> float:
        """The slowest of `epochs` (trial_id -> seconds) of the trials that train like `values`
        (same `SPEED_KEYS`), else of all (a backbone not timed yet, or no values)."""
        same = [
            each
            for trial_id, each in epochs.items()
            if values is not None
            and all(
                self.trials[trial_id].hyperparameters.values.get(key) == values.get(key)
                for key in SPEED_KEYS
            )
        ]
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
        best = self.get_best_trials(1)
        best_epoch = (
            seen[best[0].trial_id] if best and best[0].trial_id in seen else max(seen.values())
        )
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
        if not timed or self.budget_seconds is None:
            return self.final_epochs
        epoch = self._epoch_like(
            values, {trial_id: each for trial_id, (_, each, _) in timed.items()}
        )
        fixed = _fixed_cost(timed)
        room = self.left() - fixed - AFTER_FINAL * self.budget_seconds
        return max(self.final_epochs, int(room // epoch)) if epoch > 0 else self.final_epochs

    def _would_overrun(self, drawn: dict) -> bool:
        estimates = self.estimates(drawn)
        if estimates is None or self.budget_seconds is None:
            return False
        elapsed, trial, final = estimates
        if elapsed + trial + final <= self.budget_seconds:
            return False
        kept = f"; about {duration(final)} kept for the final run" if self.final_epochs else ""
        ended = f"{len(self.took)} trial{'' if len(self.took) == 1 else 's'} ended"
        trial_epochs = self.epochs_of(drawn)
        self.spent = (
            f"{duration(elapsed)} of {duration(self.budget_seconds)} spent, {ended}; "
            f"the next trial ({trial_epochs} epoch{'' if trial_epochs == 1 else 's'}) "
            f"takes about {duration(trial)}{kept}"
        )
        self.say(f"\ntime budget (tuner.max_minutes): {self.spent}; no new trial starts")
        # the final run always runs: say so now, while it can still be changed
        if elapsed + final > self.budget_seconds:
            self.say(
                f"time budget (tuner.max_minutes): the final run alone ({self.final_epochs} epochs, "
                f"about {duration(final)}) will end about "
                f"{duration(elapsed + final - self.budget_seconds)} past it; lower tuner.final_epochs "
                "or raise tuner.max_minutes (Ctrl+C, then the sweep with the new value resumes)"
            )
        return True


class RandomSearchOracle(TimeBudgetedOracle, kt.oracles.RandomSearchOracle):
    pass


class BayesianOptimizationOracle(TimeBudgetedOracle, kt.oracles.BayesianOptimizationOracle):
    pass


class GridSearchOracle(TimeBudgetedOracle, kt.oracles.GridSearchOracle):
    pass


class HyperbandOracle(TimeBudgetedOracle, kt.oracles.HyperbandOracle):
    pass
