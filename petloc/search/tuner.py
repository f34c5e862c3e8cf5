"""Keras Tuner over the experiment's search space, each trial a tracked MLflow child run.

The HyperModel turns the space into Keras Tuner hyperparameters; `SweepTuner` is the
tracked tuner every Keras Tuner search can use (`petloc.search.tracked.TrackedTuner`: a child
run per trial, FAILED runs for failed trials, no double logging when a stopped sweep is
resumed) whose trials train as `petloc train` does (curves, figures, gallery, model), with
petloc's progress lines (trial k of N, figures, time left) in place of Keras Tuner's display.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from petloc import stopping
from petloc.config import Experiment, Range
from petloc.data.classes import SPECIES, Classes
from petloc.model import Hyperparameters, build_model, hyperparams
from petloc.quiet import keras_tuner_prints_hidden
from petloc.search.progress import SweepProgress, planned_trials
from petloc.search.time_budget import (
    PACE,
    BayesianOptimizationOracle,
    GridSearchOracle,
    HyperbandOracle,
    RandomSearchOracle,
    TimeBudgetedOracle,
)
from petloc.search.tracked import TrackedTuner
from petloc.tracking import vocabulary as vocab
from petloc.tracking.sweep_record import SweepRecord
from petloc.tracking.training_runs import train_tracked
from petloc.training import progress
from petloc.training.dataset import PreparedData

OBJECTIVE = kt.Objective("val_miou", direction="max")


def oracle_seed(exp: Experiment) -> int:
    """The experiment's tuner.seed as Keras Tuner takes it: its oracles read 0 as 'no seed'
    (`seed or random.randint(...)`), so seed n is passed as n + 1 and every seed repeats."""
    return exp.tuner.seed + 1


# Each takes the experiment and the time budget's settings (TimeBudgetedOracle's keywords):
# petloc.search.time_budget's oracles are Keras Tuner's, with the budget mixed in.
def _oracle_random(exp: Experiment, **time_budget):
    return RandomSearchOracle(
        OBJECTIVE,
        max_trials=exp.tuner.max_trials,
        seed=oracle_seed(exp),
        max_consecutive_failed_trials=exp.tuner.max_consecutive_failures,
        **time_budget,
    )


def _oracle_bayesian(exp: Experiment, **time_budget):
    return BayesianOptimizationOracle(
        OBJECTIVE,
        max_trials=exp.tuner.max_trials,
        seed=oracle_seed(exp),
        max_consecutive_failed_trials=exp.tuner.max_consecutive_failures,
        **time_budget,
    )


def _oracle_grid(exp: Experiment, **time_budget):
    # Every combination of the choices, in the order the file lists them (ranges need a step).
    return GridSearchOracle(
        OBJECTIVE,
        max_trials=exp.tuner.max_trials,
        seed=oracle_seed(exp),
        max_consecutive_failed_trials=exp.tuner.max_consecutive_failures,
        **time_budget,
    )


def _oracle_hyperband(exp: Experiment, **time_budget):
    # Hyperband decides the epochs of each trial itself, up to train.epochs.
    return HyperbandOracle(
        OBJECTIVE,
        max_epochs=exp.train.epochs,
        factor=3,
        seed=oracle_seed(exp),
        max_consecutive_failed_trials=exp.tuner.max_consecutive_failures,
        **time_budget,
    )


ORACLES: dict[str, Callable[..., TimeBudgetedOracle]] = {
    "random": _oracle_random,
    "bayesian": _oracle_bayesian,
    "grid": _oracle_grid,
    "hyperband": _oracle_hyperband,
}


class SpaceHyperModel(kt.HyperModel):
    """The experiment's `space:` as Keras Tuner hyperparameters, and the model they build."""

    def __init__(self, exp: Experiment, classes: Classes = SPECIES):
        """`classes`: those the models score (the trials' own models take their data's)."""
        super().__init__(name="petloc")
        self.exp, self.classes = exp, classes

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        fixed = self.exp.fixed_hyperparameters()
        # The file's order first: the grid oracle turns the last-listed hyperparameter fastest.
        for name in [
            *self.exp.space,
            *(n for n in hyperparams.DECLARED if n not in self.exp.space),
        ]:
            param = self.exp.space.get(name, fixed[name])
            kind = hyperparams.kind(name)
            if isinstance(param, list):
                hp.Choice(name, param)
            elif isinstance(param, Range) and kind is int:
                hp.Int(
                    name,
                    int(param.min),
                    int(param.max),
                    step=int(param.step) if param.step else None,
                    sampling=param.sampling,
                )
            elif isinstance(param, Range):
                hp.Float(name, param.min, param.max, step=param.step, sampling=param.sampling)
            else:
                hp.Fixed(name, param)

    def values(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """petloc's hyperparameters of a trial (Keras Tuner's own `tuner/*` left out)."""
        return {name: hp.values[name] for name in hyperparams.DECLARED if name in hp.values}

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """Keras Tuner's hook; petloc's trials build and train through `train_tracked`."""
        values = self.values(hp)
        return build_model(
            Hyperparameters.of(values), int(values["image_size"]), classes=self.classes
        )


class SweepTuner(TrackedTuner):
    """petloc's own sweep on the tracked-tuner layer: each trial trained as `petloc train`
    would, inside its child run of the sweep (`TrackedTuner.trial_tracked`), with petloc's
    progress lines and time budget."""

    noun = "sweep"

    def __init__(
        self,
        exp: Experiment,
        record: SweepRecord,
        data_for: Callable[[int], PreparedData] | None,
        say: Callable[[str], None] = print,
        started: float | None = None,
        **kwargs,
    ):
        """`started`: when this start of the sweep began (time.monotonic), for `tuner.max_minutes`.
        `data_for`: the data at an image size; None for a chief, which trains no trial."""
        self.exp, self.data_for = exp, data_for
        # The time budget is the oracle's, on the process that holds it.
        budgeted_here = bool(exp.tuner.max_minutes) and self.holds_the_oracle
        oracle = ORACLES[exp.tuner.kind](
            exp,
            max_minutes=exp.tuner.max_minutes if budgeted_here else None,
            trial_epochs=exp.train.epochs,
            final_epochs=exp.tuner.final_epochs,
            started=started,
            say=say,
        )
        self.time_budget: TimeBudgetedOracle | None = oracle if budgeted_here else None
        # Keras Tuner prints "Reloading Tuner from FILE" as a sweep resumes; the trial lines
        # (numbered on from the trials done) already show it.
        with keras_tuner_prints_hidden(not progress.detailed()):
            super().__init__(
                hypermodel=SpaceHyperModel(exp), oracle=oracle, record=record, say=say, **kwargs
            )
        self.sweep = record
        # petloc prints its own trial lines (SweepProgress), numbered by trial_id as the runs
        # and the leaderboard are; Keras Tuner's display counts from 1 and shows every value.
        # Shown under --verbose with the libraries' other lines.
        oracle.verbose = 1 if progress.detailed() else 0
        self.progress = SweepProgress(
            planned_trials(exp, oracle), say, self.time_budget.left if self.time_budget else None
        )

    def state_file(self) -> str | None:
        # One file for the oracle's holder, alone or as the chief of workers, so a sweep
        # started in one process can go on distributed and back (Keras Tuner names it by
        # KERASTUNER_TUNER_ID and would not reload the oracle under another name).
        return str(Path(self.project_dir) / "tuner0.json") if self.holds_the_oracle else None

    def show_failed_trial_traceback(self) -> bool:
        # A failed trial's run `error` tag and petloc's line say what failed; --verbose adds the traceback.
        return progress.detailed()

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self.say_trial_begins(trial)

    def say_trial_begins(self, trial) -> None:
        """petloc's line for a trial that starts: k of N in the sweep."""
        self.progress.trial_begins(
            trial.trial_id, len(self.oracle.trials), self.shown_values(trial)
        )

    def shown_values(self, trial) -> dict[str, Any]:
        """The values the space varies, and Hyperband's epochs for the trial."""
        values = {
            name: trial.hyperparameters.values[name]
            for name in searched_names(self.exp)
            if name in trial.hyperparameters.values
        }
        if "tuner/epochs" in trial.hyperparameters.values:
            values["epochs"] = trial.hyperparameters.values["tuner/epochs"]
        return values

    def on_trial_end(self, trial):
        # Before Keras Tuner's own end: it raises when too many trials failed in a row.
        self.say_trial_ends(trial)
        super().on_trial_end(trial)

    def say_trial_ends(self, trial) -> None:
        """petloc's line for a trial that ended: its figures or why it failed, and the sweep's progress."""
        ended = len(self.oracle.end_order) + 1
        why = self.errors.get(trial.trial_id) or "see its run's error tag"
        self.progress.trial_ends(trial.trial_id, ended, self.figures.get(trial.trial_id), why)

    def populate_initial_space(self) -> None:
        # The space has no conditional hyperparameters, so declaring it is enough: Keras
        # Tuner's default also builds a model to discover conditions, which for a big
        # backbone costs a minute and fails the whole sweep on one bad combination.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def trial_run_name(self, trial) -> str:
        return f"trial-{trial.trial_id}-{trial.hyperparameters.values.get('backbone', '')}"

    def log_trial_inputs(self, trial, run_id: str) -> None:
        """Nothing here: `train_tracked` logs the trial's inputs with its data."""

    def log_trial_outcome(self, trial, run_id: str) -> None:
        """Nothing here: `train_tracked` logs the figures, the pictures and the model."""

    def oracle_metrics(self, run_metrics: dict[str, float]) -> dict[str, float] | None:
        return trial_metrics(run_metrics) if vocab.BEST_VAL_MIOU in run_metrics else None

    def run_trial(self, trial: kt.engine.trial.Trial, *args, **kwargs) -> dict[str, float]:
        hp = trial.hyperparameters
        values = self.hypermodel.values(hp)
        assert self.current_run_id is not None, "a trial runs inside its run (trial_tracked)"
        try:
            assert self.data_for is not None, "a chief trains no trial"
            data = self.data_for(int(values["image_size"]))
            summary = train_tracked(
                self.exp,
                values,
                data,
                self.current_run_id,
                epochs=hp.values.get("tuner/epochs"),
                initial_epoch=hp.values.get("tuner/initial_epoch", 0),
                initial_weights=self._warm_start_weights(hp),
                save_weights=self._weights_file(trial.trial_id),
                description=f"Trial {trial.trial_id} of sweep '{self.exp.name}'",
                pace=self._pace_reporter(trial.trial_id),
                say=self.progress.say,
            )
        except Exception as err:
            # a stop that a library turned into its own error: no failed trial
            stopping.raise_stop_behind(err)
            # FAILED, not INVALID: a trial that fails here would fail again
            raise kt.errors.FailedTrialError(f"{type(err).__name__}: {err}") from err
        self.figures[trial.trial_id] = summary
        return trial_metrics(summary)

    def _pace_reporter(self, trial_id: str) -> Callable[[int, float], None] | None:
        """How a trial tells the time budget its steady epoch as it trains (petloc.search.time_budget)."""
        if not self.exp.tuner.max_minutes:
            return None
        return lambda epoch, seconds: self.oracle.update_trial(
            trial_id, {PACE: seconds}, step=epoch
        )

    def _weights_file(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id)) / "weights.weights.h5"

    def _warm_start_weights(self, hp) -> Path | None:
        """Hyperband continues a trial of an earlier bracket from that trial's weights."""
        previous = hp.values.get("tuner/trial_id")
        if previous and self._weights_file(previous).is_file():
            return self._weights_file(previous)
        return None


def trial_metrics(summary: dict[str, float]) -> dict[str, float]:
    """What the oracle keeps of a trial's summary (a run's metrics): the objective, and the
    training time that the time budget (petloc.search.time_budget) reads."""
    metrics = {OBJECTIVE.name: summary[vocab.BEST_VAL_MIOU]}
    kept = (vocab.VAL_ACCURACY, vocab.EPOCH_SECONDS, vocab.EPOCHS_TRAINED)
    metrics.update({name: summary[name] for name in kept if name in summary})
    return metrics


def searched_names(exp: Experiment) -> list[str]:
    """The hyperparameters the experiment's space varies."""
    return [name for name, value in exp.space.items() if isinstance(value, (list, Range))]


def tuner_dir(exp: Experiment, store: Path) -> Path:
    return store / "tuner" / exp.name
