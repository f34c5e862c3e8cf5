"""`petloc.TrackedTuner`: any Keras Tuner search, tracked the petloc way.

A `keras_tuner.Tuner` whose search is one MLflow parent run and whose every trial is one
child run, logged once: its hyperparameters as params, Keras's per-epoch curves, the figures
of the epoch Keras Tuner scored it by (the objective named), and its model with a signature
and an input example. A failed trial's run ends FAILED with its error, a stopped one (Ctrl+C,
SIGTERM) KILLED; running the same search again resumes it, in the same parent run, with no
trial logged twice. At the end, the leaderboard (terminal and artifacts) and the best trial
offered to the registry, which moves `NAME@champion` only when it beats the holder on the same
validation data by the objective's direction. Keras Tuner's distributed mode (its
KERASTUNER_* variables) logs the workers' trials under the chief's parent run.

petloc's own sweep (`petloc.search.tuner.SweepTuner`) is a subclass: it brings its parent run
(`petloc.search.state`), trains its trials itself and ends the sweep its own way.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner as kt
import numpy as np

from petloc import library_internals, stopping
from petloc.errors import PetlocError, did_you_mean
from petloc.files import SMALL_FILE_LIMIT, atomic_write_text, exclusive_lock, read_bounded
from petloc.registry_names import check_alias, check_name
from petloc.search.ending import SearchEnd, SearchResult, failed_trials, finish_search
from petloc.tracking import keras_trials, runs, store
from petloc.tracking import vocabulary as vocab
from petloc.tracking.log import system_metrics as log_system_metrics
from petloc.tracking.search_record import SearchRecord
from petloc.training.latency import batch1_latency_ms

MAX_TRIALS = "tuner.max_trials"  # a tag of the parent: a resumed search may raise it
STATE_FILE = "tracking.json"  # in the project folder: the search's parent run
CHIEF_WAIT_SECONDS = 120.0  # how long a worker looks for its chief's parent run

ORACLES: dict[str, Callable[..., kt.Oracle]] = {
    "random": kt.oracles.RandomSearchOracle,
    "bayesian": kt.oracles.BayesianOptimizationOracle,
    "grid": kt.oracles.GridSearchOracle,
}


class TrackedTuner(library_internals.TunerHooks, kt.Tuner):
    """A Keras Tuner `Tuner` whose search and trials are MLflow runs (this module's docstring).

    `hypermodel`, `directory`, `project_name`, `overwrite`, `executions_per_trial` and the
    rest of Keras Tuner's Tuner arguments mean what they mean there. `oracle` is "bayesian",
    "random" or "grid" (built with `objective`, `max_trials`, `seed` and
    `max_consecutive_failed_trials`), or any `keras_tuner.Oracle`. `objective` is any Keras
    metric the model logs, by name (direction inferred as Keras Tuner infers it) or as a
    `keras_tuner.Objective`.

    `experiment`: the MLflow experiment (default: the project name). `registry`: the
    registered model name the best trial is offered to as `NAME@alias` (None: no promotion).
    `min_improvement`: how much better than the holder a trial must be (0: any better).
    `latency`: also measure each trial's batch-1 latency (`latency_ms_b1`, ms) on validation
    inputs. `pareto`: a second figure (`latency_ms_b1`, or any of the trial's metrics, as a
    name or a `keras_tuner.Objective`) to draw the objective against. `tracking_uri`: the
    MLflow tracking URI (default: MLFLOW_TRACKING_URI, else petloc's `mlruns/mlflow.db`).
    `say`: hears the lines the search prints (None: silent).
    """

    holds_the_oracle = True  # alone or as a chief; a worker asks the chief's
    noun = "search"  # what its lines call it

    def __init__(
        self,
        hypermodel=None,
        objective=None,
        oracle: str | kt.Oracle = "bayesian",
        max_trials: int = 10,
        *,
        experiment: str | None = None,
        registry: str | None = None,
        alias: str = "champion",
        min_improvement: float = 0.0,
        latency: bool = False,
        pareto: str | kt.Objective | None = None,
        tracking_uri: str | None = None,
        seed: int | None = None,
        max_consecutive_failed_trials: int = 3,
        say: Callable[[str], None] | None = print,
        record: SearchRecord | None = None,
        **kwargs,
    ):
        self.say = say or (lambda _line: None)
        self._record = record  # given: the caller runs the parent (petloc's own sweep)
        self.owns_parent = record is None
        self.experiment, self.registry_name, self.alias = experiment, registry, alias
        self.min_improvement, self.latency = min_improvement, latency
        self.pareto = _objective(pareto) if pareto is not None else None
        if self.pareto is not None and self.pareto.name == vocab.LATENCY_MS_B1:
            self.latency = True  # the figure drawn must be measured
        self.figures: dict[str, dict[str, float]] = {}  # trial_id -> its figures, this process's
        self.errors: dict[str, str] = {}  # trial_id -> why it failed
        self.trial_runs: dict[str, str] = {}  # trial_id -> its run, this process's finished ones
        self.run_tags: dict[str, str] = {}  # more tags for each trial's run
        self.current_run_id: str | None = None  # the run of the trial being trained
        self.curves = keras_trials.EpochCurves()  # the same, for Keras's callbacks
        self.validation: Any = None  # the search's validation data, once it runs
        self.val_data: str | None = None  # its digest, when given as arrays
        self.example: Any = None  # validation inputs as arrays, for the models and latency
        self.result: SearchResult | None = None
        if isinstance(oracle, str):
            oracle = _oracle(oracle, objective, max_trials, seed, max_consecutive_failed_trials)
        if record is None:
            if registry is not None:  # a bad name is one line now, not after the trials
                check_name(registry)
                check_alias(alias)
            _refuse_hyperband(oracle)
            store.configure(tracking_uri, "tracking_uri")  # before anything is logged
            if kwargs.get("overwrite") and not _is_worker():
                _refuse_when_running(_project_dir(kwargs))  # Keras Tuner deletes it right away
        if record is None and _is_worker():
            # Workers share the chief's project folder on one machine (as Keras Tuner's docs
            # run them) and run the same script: a worker's overwrite would wipe the chief's
            # state and the other workers' checkpoints mid-search. The chief's alone starts over.
            kwargs["overwrite"] = False
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)
        objectives = getattr(self.oracle.objective, "objectives", [self.oracle.objective])
        self.curves.expected = tuple(o.name for o in objectives)

    # ---- the search: one parent run ---------------------------------------------------

    @property
    def record(self) -> SearchRecord:
        """The search's runs, while it runs."""
        if self._record is None:
            raise RuntimeError("the tracked search is not running")
        return self._record

    @property
    def objective_name(self) -> str:
        return self.oracle.objective.name

    @property
    def direction(self) -> str:
        return self.oracle.objective.direction

    def search(self, *fit_args, **fit_kwargs):
        """Keras Tuner's search, inside the search's parent run (made, or resumed); at the
        end, the leaderboard and the promotion (`self.result`)."""
        if not self.owns_parent:  # petloc's own sweep: the caller runs the parent
            return super().search(*fit_args, **fit_kwargs)
        self.validation = _validation_data(fit_args, fit_kwargs)
        # once a search, not once a trial: a digest reads every validation array
        if self.validation is not None:
            self.val_data = keras_trials.data_digest(self.validation)
            self.example = _inputs(self.validation)
        fit_kwargs = {**fit_kwargs, "callbacks": [*fit_kwargs.get("callbacks", []), self.curves]}
        if _is_worker():
            return self._search_as_worker(fit_args, fit_kwargs)
        lock, busy = _lock_of(Path(self.project_dir))
        with stopping.handled(), exclusive_lock(lock, busy), self._parent_run() as record:
            self._record = record
            try:
                self.count_finished_runs()
                self._search_then_finish(fit_args, fit_kwargs)
            finally:
                self._record = None
        return None

    def _search_then_finish(self, fit_args: tuple, fit_kwargs: dict) -> None:
        """Keras Tuner's search, then `finish`; when Keras Tuner stops it after too many failed
        trials in a row, the trials that finished are still ranked and offered, and its error
        then raised, as Keras Tuner raises it."""
        try:
            super().search(*fit_args, **fit_kwargs)
        except RuntimeError as err:
            if "consecutive failures" not in str(err):
                raise
            self.result = self.finish()
            raise
        self.result = self.finish()

    @contextlib.contextmanager
    def _parent_run(self):
        """The search's parent run: the one the project folder recorded, resumed, or a new
        one; it ends FINISHED, or FAILED / KILLED with the reason."""
        state_file = Path(self.project_dir) / STATE_FILE
        parent = _recorded_parent(state_file)
        # a deleted experiment is one line, a new search's or a resumed one's
        experiment_id = runs.experiment_id(
            self.experiment or self.project_name, "pass experiment= with"
        )
        if parent is None:
            record = SearchRecord.create_parent(
                experiment_id,
                f"search-{self.project_name}",
                {vocab.SWEEP: self.project_name, **self.objective_tags()},
            )
            atomic_write_text(state_file, json.dumps({"parent_run_id": record.parent_run_id}))
        else:
            record = SearchRecord.claimed(
                parent,
                f"{state_file}: its parent run is not in {store.tracking_uri()}; "
                "pass overwrite=True to start over",
            )
        try:
            self._log_search_settings(record)
            if _is_chief():
                record.mark_chief(_chief_address())
            yield record
        except BaseException as err:  # noqa: BLE001  (every end, Ctrl+C too, ends the parent run; re-raised)
            raise record.ended(err)  # noqa: B904  (err itself, or the interrupt behind it)
        record.ended()

    def _search_as_worker(self, fit_args: tuple, fit_kwargs: dict) -> None:
        """A worker of Keras Tuner's distributed mode: the trials its chief hands out, each in
        a child run of the chief's parent run, tagged with this worker's ID. The chief's
        process ends the parent run and ranks the trials; a worker has no `result`."""
        with stopping.handled():
            self._record = self._chief_record()
            self.run_tags = {**self.run_tags, vocab.WORKER: self.tuner_id}
            self.say(
                f"{self.tuner_id}: trials of search '{self.project_name}' go under the chief's "
                f"parent run {self.record.parent_run_id}"
            )
            try:
                super().search(*fit_args, **fit_kwargs)
            finally:
                self._record = None

    def _chief_record(self) -> SearchRecord:
        """A worker's parent run: the chief's, found by the address the chief marked on it
        before serving its oracle. A worker started first waits for it (CHIEF_WAIT_SECONDS)."""
        address, experiment = _chief_address(), self.experiment or self.project_name
        tags = {vocab.SWEEP: self.project_name, vocab.CHIEF: address}
        deadline = time.monotonic() + CHIEF_WAIT_SECONDS
        waiting = False
        while (found := runs.running_parent(experiment, tags)) is None:
            if time.monotonic() >= deadline:
                raise PetlocError(
                    f"search '{self.project_name}': no chief at {address} started its parent run in "
                    f"experiment '{experiment}' of {store.tracking_uri()} within {CHIEF_WAIT_SECONDS:g} s; "
                    "start the chief (KERASTUNER_TUNER_ID=chief) with the same tracking URI, "
                    "experiment and project_name"
                )
            if not waiting:
                self.say(
                    f"{self.tuner_id}: waiting up to {CHIEF_WAIT_SECONDS:g} s for the chief at {address} "
                    f"to start search '{self.project_name}' in {store.tracking_uri()}"
                )
                waiting = True
            time.sleep(1)
        return SearchRecord(found)

    def objective_tags(self) -> dict[str, str]:
        """What a run's figures are ranked by, for the registry to compare versions."""
        return {vocab.OBJECTIVE: self.objective_name, vocab.OBJECTIVE_DIRECTION: self.direction}

    def _log_search_settings(self, record: SearchRecord) -> None:
        """The space and the tuner's settings, as the parent run's params (its trial budget,
        which a resumed search may raise, as a tag) and `search_space.json`."""
        space = self.oracle.get_space()
        settings = {
            "tuner.oracle": type(self.oracle).__name__,
            "tuner.objective": self.objective_name,
            "tuner.direction": self.direction,
            "tuner.executions_per_trial": self.executions_per_trial,
            "tuner.seed": self.oracle.seed,
            "tuner.hypermodel": _hypermodel_name(self.hypermodel),
        }
        params = {f"space.{hp.name}": json.dumps(hp.get_config()) for hp in space.space}
        record.log_params_once({**settings, **params})
        record.log_dict(
            {
                "space": space.get_config(),
                "tuner": {**settings, MAX_TRIALS: self.oracle.max_trials},
            },
            "search_space.json",
        )
        record.set_tags(
            {
                MAX_TRIALS: self.oracle.max_trials,
                vocab.NOTE: f"Keras Tuner search '{self.project_name}' ({type(self.oracle).__name__}, "
                f"up to {self.oracle.max_trials} trials, {self.objective_name} {self.direction}); "
                "its trials are the child runs, ranked below once the search ends",
            }
        )

    # ---- a trial: one child run -------------------------------------------------------

    def pre_create_trial(self):
        stopping.raise_if_stopped()  # a stopped process never asks for another trial

    @contextlib.contextmanager
    def trial_tracked(self, trial):
        """The trial's child run around its training: FINISHED with its figures and model,
        FAILED with its error, KILLED when the search is stopped."""
        run_id = self.record.trial_run(
            trial.trial_id, self.trial_run_name(trial), self.trial_tags(trial)
        )
        self.curves.run_id = self.current_run_id = run_id
        try:
            with log_system_metrics(run_id):
                self.log_trial_inputs(trial, run_id)
                yield run_id
                self.log_trial_outcome(trial, run_id)
        except BaseException as err:
            if self.ends_finished(err):
                runs.end_finished(run_id)
                self.trial_runs[trial.trial_id] = run_id
                raise
            # petloc's own trials wrap their error for Keras Tuner: the run keeps the first
            cause = (
                err.__cause__
                if isinstance(err, kt.errors.FailedTrialError) and err.__cause__
                else err
            )
            if isinstance(cause, Exception):  # first: ending the run may fail the same way
                self.errors[trial.trial_id] = runs.why_failed(cause)
            stop = runs.end_run(run_id, cause)
            if isinstance(stop, KeyboardInterrupt) and stop is not err:
                raise stop from err  # a stop that a library turned into its own error: no failed trial
            raise
        finally:
            self.curves.run_id = self.current_run_id = None
        runs.end_finished(run_id)
        self.trial_runs[trial.trial_id] = run_id

    def ends_finished(self, err: BaseException) -> bool:
        """Whether `err`, raised once the trial has trained and been logged, leaves its run
        FINISHED (a worker that lost its chief: the run counts once the chief is back)."""
        return False

    def trial_run_name(self, trial) -> str:
        return f"trial-{trial.trial_id}"

    def trial_tags(self, trial) -> dict[str, str]:
        """The tags of a trial's run: Keras Tuner's own `tuner/*` values and `run_tags`."""
        values = trial.hyperparameters.values
        tags = {name: str(value) for name, value in values.items() if name.startswith("tuner/")}
        return {**tags, **self.run_tags}

    def log_trial_inputs(self, trial, run_id: str) -> None:
        """The trial's hyperparameters, what they are ranked by and on what data."""
        tags = {
            **self.objective_tags(),
            # unread data (a Dataset, a generator) compares only within this search
            vocab.VAL_DATA: self.val_data or f"unhashed:{self.record.parent_run_id}",
            vocab.NOTE: f"Trial {trial.trial_id} of Keras Tuner search '{self.project_name}'",
        }
        keras_trials.log_trial_inputs(run_id, trial.hyperparameters.values, tags)

    def log_trial_outcome(self, trial, run_id: str) -> None:
        """The figures Keras Tuner scored the trial by (its best epoch), the latency when asked,
        and the model as `get_best_models` rebuilds it (the best epoch's weights)."""
        # hyperparameters the trial declared itself, as its model was built or fitted
        keras_trials.log_hyperparameters(run_id, trial.hyperparameters.values)
        scored = self.oracle.get_trial(trial.trial_id)
        figures = {
            name: float(value)
            for name in scored.metrics.metrics
            if (value := scored.metrics.get_last_value(name)) is not None
        }
        model = self._best_epoch_model(scored)
        example = self.example
        if self.latency and model is not None and example is not None:
            figures[vocab.LATENCY_MS_B1] = batch1_latency_ms(model, example)
        keras_trials.log_figures(run_id, figures)
        if model is not None and example is not None:
            keras_trials.log_keras_model(run_id, model, _first(example, 5))
        self.figures[trial.trial_id] = figures

    def _best_epoch_model(self, trial):
        """The trial's model with its best epoch's weights; None when the trial saved none (a
        `run_trial` of the user's that trains no Keras model)."""
        if self.hypermodel is None:  # a run_trial of the user's, with no Keras model to rebuild
            return None
        try:
            with warnings.catch_warnings():
                # the weights file keeps the optimizer's state, which a model to predict with
                # does not build: Keras says so once a trial
                warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
                return self.load_model(trial)
        except (OSError, ValueError):
            return None

    def count_finished_runs(self) -> list[str]:
        """Trials a killed process left running whose run had already ended FINISHED in the
        store (a worker finished it while its chief was down) end COMPLETED in the oracle with
        that run's figures, instead of being handed out and trained again; returns their IDs.
        Keras Tuner puts such trials in its retry queue when it reloads the oracle."""
        queued = library_internals.retry_queue(self.oracle)
        if not queued:
            return []
        finished = self.record.finished_runs()
        counted = []
        for trial_id in queued:
            run = finished.get(trial_id)
            metrics = self.oracle_metrics(run.data.metrics) if run is not None else None
            if run is None or not metrics:
                continue
            library_internals.take_from_retry_queue(self.oracle, trial_id)
            self.oracle.update_trial(trial_id, metrics)
            trial = self.oracle.trials[trial_id]
            trial.status = kt.engine.trial.TrialStatus.COMPLETED
            self.oracle.end_trial(trial)
            self.trial_runs[trial_id] = run.info.run_id
            self.say(
                f"trial {trial_id}: its run {run.info.run_id} had ended FINISHED before the {self.noun} stopped; "
                "counted as done, not run again"
            )
            counted.append(trial_id)
        return counted

    def oracle_metrics(self, run_metrics: dict[str, float]) -> dict[str, float] | None:
        """What the oracle keeps of a finished run's metrics; None without the objective."""
        if self.objective_name not in run_metrics:
            return None
        return {k: v for k, v in run_metrics.items() if "/" not in k}

    # ---- the end: leaderboard and promotion ---------------------------------------------

    def hyperparameter_names(self) -> list[str]:
        return [hp.name for hp in self.oracle.get_space().space]

    def extra_figures(self) -> list[str]:
        extra = [vocab.LATENCY_MS_B1] if self.latency else []
        if self.pareto is not None and self.pareto.name not in extra:
            extra.append(self.pareto.name)
        return extra

    def end(self) -> SearchEnd:
        """How this search ends (`petloc.search.ending.finish_search`)."""
        return SearchEnd(
            self.record,
            (self.objective_name, self.direction),
            self.hyperparameter_names(),
            self.extra_figures(),
            (self.pareto.name, self.pareto.direction) if self.pareto is not None else None,
            self.registry_name,
            self.alias,
            self.min_improvement,
            self.say,
            self.project_name,
        )

    def finish(self) -> SearchResult:
        """The leaderboard (printed and logged), the report, and the best trial offered to
        the registry."""
        return finish_search(self.end(), failed_trials(self.oracle))


def _project_dir(tuner_kwargs: dict) -> Path:
    """The project folder Keras Tuner will use, before it is made (its defaults)."""
    folder = tuner_kwargs.get("directory") or "."
    return Path(folder) / (tuner_kwargs.get("project_name") or "untitled_project")


def _lock_of(project_dir: Path) -> tuple[Path, str]:
    """The lock a running search holds beside its project folder, and the line refusing a second."""
    busy = f"search '{project_dir.name}' is already running in another process"
    return project_dir.with_name(project_dir.name + ".lock"), busy


def _refuse_when_running(project_dir: Path) -> None:
    """overwrite=True of a search that another process runs: refused before Keras Tuner
    deletes its folder under it."""
    lock, busy = _lock_of(project_dir)
    if lock.parent.is_dir():
        with exclusive_lock(lock, busy):
            pass


def _refuse_hyperband(oracle) -> None:
    # Hyperband's trials continue one another (tuner/epochs, the earlier round's weights),
    # which Keras Tuner's own Hyperband tuner does and a plain Tuner does not.
    if isinstance(oracle, kt.oracles.HyperbandOracle):
        raise PetlocError(
            "oracle: a HyperbandOracle needs Keras Tuner's Hyperband tuner, which TrackedTuner "
            "is not; pass bayesian, random, grid or another keras_tuner.Oracle"
        )


def _hypermodel_name(hypermodel) -> str:
    """The user's HyperModel class, or the build function Keras Tuner wrapped."""
    built_by = getattr(getattr(hypermodel, "build", None), "__name__", None)
    if type(hypermodel).__name__ == "DefaultHyperModel" and built_by:
        return str(built_by)
    return type(hypermodel).__name__


def _oracle(kind: str, objective, max_trials: int, seed: int | None, max_failed: int) -> kt.Oracle:
    if kind not in ORACLES:
        raise PetlocError(
            f"oracle: {kind!r} is none of {', '.join(ORACLES)} (or pass a keras_tuner.Oracle);"
            + (did_you_mean(kind, ORACLES) or " pick one")
        )
    return ORACLES[kind](
        objective=objective,
        max_trials=max_trials,
        seed=seed,
        max_consecutive_failed_trials=max_failed,
    )


def _objective(given: str | kt.Objective) -> kt.Objective:
    """A second figure: a `keras_tuner.Objective`, or a name Keras Tuner knows the direction
    of (latency is lower-better)."""
    if isinstance(given, kt.Objective):
        return given
    if given == vocab.LATENCY_MS_B1 or given.endswith(("loss", "error", "_ms")):
        return kt.Objective(given, "min")
    return kt.Objective(given, "max")


def _recorded_parent(state_file: Path) -> str | None:
    if not state_file.is_file():
        return None
    try:
        state = json.loads(read_bounded(state_file, SMALL_FILE_LIMIT))
        return str(state["parent_run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        raise PetlocError(
            f"{state_file}: damaged search state; pass overwrite=True to start over"
        ) from None


# Keras Tuner's distributed mode, as its documentation sets it up: every process of the
# search has the chief's address, and an ID ("chief" for the one that serves the oracle).
def _is_distributed() -> bool:
    return "KERASTUNER_ORACLE_IP" in os.environ and "KERASTUNER_TUNER_ID" in os.environ


def _is_chief() -> bool:
    return _is_distributed() and "chief" in os.environ["KERASTUNER_TUNER_ID"]


def _is_worker() -> bool:
    return _is_distributed() and not _is_chief()


def _chief_address() -> str:
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ.get('KERASTUNER_ORACLE_PORT', '')}"


def _validation_data(fit_args: tuple, fit_kwargs: dict) -> Any:
    """The search's validation data as `fit` takes it: `validation_data`, else the training
    data (a `validation_split` of it)."""
    if fit_kwargs.get("validation_data") is not None:
        return fit_kwargs["validation_data"]
    x = fit_args[0] if fit_args else fit_kwargs.get("x")
    return None if x is None else (x,)


def _inputs(data: Any) -> Any:
    """Validation inputs as arrays: those of `(x, y)`, or of the first batch of a
    `tf.data.Dataset`; None for data that cannot be read again (a generator)."""
    if hasattr(data, "element_spec") and hasattr(data, "take"):  # a tf.data.Dataset
        data = next(iter(data.take(1)), None)
    x = data[0] if isinstance(data, (tuple, list)) else data
    if isinstance(x, dict):
        return {k: np.asarray(v) for k, v in x.items()}
    return np.asarray(x) if hasattr(x, "shape") else None


def _first(x: Any, count: int) -> Any:
    return {k: v[:count] for k, v in x.items()} if isinstance(x, dict) else x[:count]
