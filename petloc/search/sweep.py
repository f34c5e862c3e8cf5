"""`petloc sweep`: one parent MLflow run around a Keras Tuner search, a leaderboard at the
end, and the winner offered to the registry.

A sweep's state lives in `mlruns/tuner/<name>/`: Keras Tuner's own oracle files and
`sweep.json` (the parent run and a fingerprint of the experiment). Running the same
sweep again continues it; `--fresh` starts over. `mlruns/tuner/<name>.lock` is held by the
process running the sweep, so a second start of the same sweep is refused at once.
Across processes and machines (`petloc.search.distributed`), the chief holds this state and
the oracle; workers learn the parent run from the chief itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from petloc import report, stopping
from petloc.config import Experiment, Range
from petloc.errors import PetlocError
from petloc.files import SMALL_FILE_LIMIT, atomic_write_text, exclusive_lock, read_bounded, remove_tree
from petloc.search import trial_rows
from petloc.search.budget import TimeBudgetedOracle
from petloc.search.ensemble import log_ensemble
from petloc.search.final import train_final
from petloc.search.tuner import TrackedTuner, tuner_dir
from petloc.tracking import log, registry, runs, store
from petloc.tracking.training_runs import run_settings
from petloc.training.dataset import PreparedData, prepare_data
from petloc.training.gallery import plot_pareto

LEADERBOARD_COLUMNS = [
    ("trial", "tags.trial_id"), ("backbone", "params.backbone"), ("image_size", "params.image_size"),
    ("aug_strength", "params.aug_strength"), ("head_units", "params.head_units"), ("learning_rate", "params.learning_rate"),
    ("val_miou", "metrics.best_val_miou"), ("iou50", "metrics.val_iou50"), ("accuracy", "metrics.val_accuracy"),
    ("latency_ms_b1", "metrics.latency_ms_b1"), ("params", "metrics.params_count"), ("train_s", "metrics.train_seconds"),
]


@dataclass
class SweepResult:
    parent_run_id: str
    leaderboard: list[dict]
    promotion: registry.Promotion | None
    failed: int


# What a sweep may change when it resumes (outside its fingerprint): tags, set again at each
# start, since MLflow's params are written once.
RESUMABLE_TUNER_SETTINGS = ("max_trials", "final_epochs", "max_minutes", "fill_budget")
TUNER_STATE_LIMIT = 16_000_000  # bytes of one of Keras Tuner's JSON files: its oracle's grows with the trials


def fingerprint(exp: Experiment) -> str:
    """What makes two sweeps the same sweep: everything but the trial and time budgets, which
    may grow, and what only the sweep's end does (the final run, the registry section)."""
    body = exp.model_dump(mode="json")
    for what_may_change in RESUMABLE_TUNER_SETTINGS:
        body["tuner"].pop(what_may_change)
    body.pop("registry")
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _older_fingerprint(exp: Experiment) -> str:
    """The fingerprint of sweeps started before the final run and the ensemble existed (the
    registry section counted then), so that they still resume."""
    body = exp.model_dump(mode="json")
    for added_since in RESUMABLE_TUNER_SETTINGS:
        body["tuner"].pop(added_since)
    body["registry"].pop("ensemble")
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _parent_run(exp: Experiment, state_file: Path, experiment_id: str) -> str:
    """The sweep's parent run: the one recorded in sweep.json, or a new one."""
    client = MlflowClient()
    state = _read_state(state_file)
    if state is not None and state["fingerprint"] == _older_fingerprint(exp):
        state["fingerprint"] = fingerprint(exp)
        atomic_write_text(state_file, json.dumps(state))
    if state is not None:
        if state["fingerprint"] != fingerprint(exp):
            raise PetlocError(
                f"{state_file.parent}: the sweep '{exp.name}' was started with different settings; "
                "run it with --fresh to start over, or give the experiment another name"
            )
        try:
            client.get_run(state["parent_run_id"])
        except mlflow.exceptions.MlflowException:
            raise PetlocError(f"{state_file}: its parent run is not in {mlflow.get_tracking_uri()}; run with --fresh") from None
        _end_orphans(state["parent_run_id"], "ended when the sweep was resumed")
        runs.claim_run(state["parent_run_id"])
        _log_resumable_settings(exp, state["parent_run_id"])  # sweep_tags too: parents made before they existed
        return state["parent_run_id"]
    run_id = runs.create_run(experiment_id, f"sweep-{exp.name}", {"petloc.kind": "sweep", **sweep_tags(exp)})
    atomic_write_text(state_file, json.dumps({"parent_run_id": run_id, "fingerprint": fingerprint(exp)}))
    _log_sweep_settings(exp, run_id)
    _log_resumable_settings(exp, run_id)
    return run_id


SWEEP_TAG, FINGERPRINT_TAG = "petloc.sweep", "petloc.sweep_fingerprint"


def sweep_tags(exp: Experiment) -> dict[str, str]:
    """What finds a sweep's parent run in the tracking server, and tells its settings apart."""
    return {SWEEP_TAG: exp.name, FINGERPRINT_TAG: fingerprint(exp)}


def _read_state(state_file: Path) -> dict | None:
    """sweep.json, None when the sweep has not started; a damaged file is a user error."""
    if not state_file.exists():
        return None
    try:
        state = json.loads(read_bounded(state_file, SMALL_FILE_LIMIT))
        if isinstance(state, dict) and {"parent_run_id", "fingerprint"} <= set(state):
            return state
    except (OSError, ValueError):  # a FIFO, device or huge file is UnreadableFile: its own line
        pass
    raise PetlocError(f"{state_file}: damaged sweep state (empty or cut short); run with --fresh to start over")


def recorded_parent(state_file: Path) -> str | None:
    """The parent run that sweep.json records, None when there is none or it is damaged."""
    with contextlib.suppress(PetlocError):
        state = _read_state(state_file)
        return state["parent_run_id"] if state else None
    return None


def _end_orphans(parent_run_id: str, why: str) -> None:
    """Runs of this sweep left RUNNING by a process that died (kill -9, power loss) end KILLED."""
    running = [parent_run_id, *(r.info.run_id for r in runs.child_runs(parent_run_id, "attributes.status = 'RUNNING'"))]
    runs.end_orphans(running, why)


def _retire(state_file: Path) -> None:
    """--fresh: the old sweep's runs that a dead process left RUNNING end KILLED."""
    try:
        state = _read_state(state_file)
    except PetlocError:
        return  # damaged state: nothing to retire, and --fresh replaces it
    if state is not None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            _end_orphans(state["parent_run_id"], "the sweep was started again with --fresh")


def check_state_files(directory: Path) -> None:
    """Keras Tuner's own JSON files (oracle, trials) must be whole, or it fails with a traceback."""
    for path in sorted(directory.rglob("*.json")):
        try:
            json.loads(read_bounded(path, TUNER_STATE_LIMIT))  # UnreadableFile: its own line
        except (OSError, ValueError):
            raise PetlocError(f"{path}: damaged sweep state (empty or cut short, as a kill during a write leaves it); "
                              "run with --fresh to start over") from None


def _log_resumable_settings(exp: Experiment, run_id: str) -> None:
    """The settings this start of the sweep runs with, and `search_space.json` rewritten."""
    size = (f"trials of up to {exp.train.epochs} epochs, as many as Hyperband's brackets hold" if exp.tuner.kind == "hyperband"
            else f"up to {exp.tuner.max_trials} trials")
    tags = {f"tuner.{k}": str(getattr(exp.tuner, k)) for k in RESUMABLE_TUNER_SETTINGS}
    tags.update({f"registry.{k}": str(v) for k, v in exp.registry.model_dump().items()})
    tags.update(sweep_tags(exp))
    tags["mlflow.note.content"] = (f"Keras Tuner sweep '{exp.name}' ({exp.tuner.kind}, {size}); "
                                   "its trials are the child runs, the leaderboard is in the artifacts")
    client = MlflowClient()
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.log_dict(run_id, {"space": _space(exp), "experiment": exp.model_dump(mode="json")}, "search_space.json")


def _space(exp: Experiment) -> dict:
    return {name: (p.model_dump() if hasattr(p, "model_dump") else p) for name, p in exp.space.items()}


def _log_sweep_settings(exp: Experiment, run_id: str) -> None:
    """What a sweep is (its fingerprint covers it): params, written once, and provenance."""
    params = {f"space.{k}": json.dumps(v) for k, v in _space(exp).items()}
    params.update({f"tuner.{k}": v for k, v in exp.tuner.model_dump().items() if k not in RESUMABLE_TUNER_SETTINGS})
    params.update(run_settings(exp, exp.train.epochs))
    params["image_size"] = exp.data.image_size
    mlflow.log_params({k: (str(v)[:6000]) for k, v in params.items()}, run_id=run_id)
    MlflowClient().log_batch(run_id, tags=[RunTag(key, value) for key, value in log.provenance().items()])


def searched(exp: Experiment) -> list[str]:
    """The hyperparameters the space varies beyond the leaderboard's own columns."""
    shown = {key.split(".", 1)[1] for _, key in LEADERBOARD_COLUMNS}
    return [name for name, value in exp.space.items() if isinstance(value, (list, Range)) and name not in shown]


def leaderboard(parent_run_id: str, extra: list[str] = ()) -> list[dict]:
    """Finished trials of the sweep, best val mIoU first; `extra` hyperparameters as columns too."""
    finished = runs.child_runs(parent_run_id, "attributes.status = 'FINISHED'", order_by=["metrics.best_val_miou DESC"])
    rows = []
    for run in finished:
        row = {"run_id": run.info.run_id}
        for column, key in LEADERBOARD_COLUMNS:
            kind, name = key.split(".", 1)
            if kind == "tags":  # text as Keras Tuner wrote it: trial "0012" stays "0012"
                row[column] = run.data.tags.get(name, "")
                continue
            source = {"params": run.data.params, "metrics": run.data.metrics}[kind]
            row[column] = _number_or_text(source.get(name, ""))
        row.update({name: _number_or_text(run.data.params.get(name, "")) for name in extra})
        rows.append(row)
    return rows


def _number_or_text(value):
    """MLflow keeps params as text; a number reads back as one, so tables can round it."""
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def leaderboard_columns(rows: list[dict]) -> list[str]:
    """The leaderboard's columns: what each row holds, run_id last."""
    return [c for c in (rows[0] if rows else dict(LEADERBOARD_COLUMNS)) if c != "run_id"] + ["run_id"]


def _log_leaderboard(parent_run_id: str, rows: list[dict], failed: int) -> None:
    client = MlflowClient()
    columns = leaderboard_columns(rows)
    with log.scratch_dir() as tmp:
        csv_path, md_path = Path(tmp) / "leaderboard.csv", Path(tmp) / "leaderboard.md"
        csv_path.write_text(report.csv_text(rows, columns))
        md_path.write_text(report.table(rows, columns, markdown=True, same_decimals=True) or "No finished trials.\n")
        client.log_artifact(parent_run_id, str(csv_path))
        client.log_artifact(parent_run_id, str(md_path))
    metrics = {"trials_finished": float(len(trial_rows(rows))), "trials_failed": float(failed)}
    if rows:
        best = rows[0]
        client.set_tag(parent_run_id, "best_trial_id", best["trial"])
        client.set_tag(parent_run_id, "best_run_id", best["run_id"])
        metrics.update({f"best_{k}": float(best[k]) for k in ("val_miou", "accuracy", "iou50", "latency_ms_b1") if best[k] != ""})
    mlflow.log_metrics(metrics, run_id=parent_run_id)


def run_sweep(exp: Experiment, fresh: bool = False, log: Callable[[str], None] = print) -> SweepResult:
    """The whole sweep in this process: search, leaderboard, promotion. Safe to run again to continue."""
    started = time.monotonic()  # tuner.max_minutes counts the data's preparation too
    with sweep_state(exp, fresh) as (directory, parent):
        data_for = data_preparer(exp, parent, log)
        data_for(exp.data.image_size)  # a data problem is one line now, not a failed trial each
        tuner = TrackedTuner(exp, parent, data_for, log, started=started,
                             directory=str(directory.parent), project_name=directory.name, overwrite=False)
        tuner.count_finished_runs(log)
        stopped = None
        try:
            tuner.search()
        except RuntimeError as err:  # Keras Tuner's "too many consecutive failures"
            if "consecutive failures" not in str(err):
                raise
            stopped = f"stopped after {exp.tuner.max_consecutive_failures} failed trials in a row; see the FAILED runs' 'error' tags"
        say_why_the_search_ended(tuner, parent, stopped, tuner.progress.planned, log)
        return finish(exp, parent, failed_trials(tuner.oracle), stopped, log, tuner.time_budget)


def say_why_the_search_ended(tuner: TrackedTuner, parent: str, stopped: str | None, planned: int,
                             log: Callable[[str], None]) -> None:
    """When the time budget ended the search, the parent run's `time_budget` tag says so;
    when Keras Tuner ran out of new points before the planned trials, one line says so."""
    if tuner.time_budget is not None and tuner.time_budget.spent:
        MlflowClient().set_tag(parent, "time_budget", f"the search stopped: {tuner.time_budget.spent}")
    elif stopped is None and len(tuner.oracle.trials) < planned:
        log(f"\nthe search ended after {len(tuner.oracle.trials)} of {planned} planned trials: Keras Tuner "
            "drew no new point from the space; add values or a range to search further")


@contextlib.contextmanager
def sweep_state(exp: Experiment, fresh: bool, vet: Callable[[str | None], None] | None = None):
    """The sweep's folder and parent run, held by this process (its lock) until the sweep
    ends; the parent ends FINISHED, or FAILED / KILLED with the reason. `vet` is called
    under the lock, before any run is made or claimed, with the parent run this folder
    recorded (None for a new sweep): it raises to refuse the start."""
    store.configure(exp.tracking.uri)
    directory = tuner_dir(exp, store.STORE_DIR)
    busy = f"sweep '{exp.name}' is already running in another process; wait for it, or stop it and run this again"
    with exclusive_lock(directory.with_name(directory.name + ".lock"), busy):
        experiment_id = runs.experiment_id(exp.tracking.experiment)
        if vet is not None:
            vet(recorded_parent(directory / "sweep.json"))
        if fresh:
            _retire(directory / "sweep.json")
            remove_tree(directory, directory.parent)
        check_state_files(directory)
        parent = _parent_run(exp, directory / "sweep.json", experiment_id)
        try:
            yield directory, parent
        except BaseException as err:
            raise runs.end_run(parent, err)  # err itself, or the interrupt behind it (err as its cause)
        MlflowClient().set_terminated(parent, "FINISHED")


def data_preparer(exp: Experiment, parent: str, log: Callable[[str], None]) -> Callable[[int], PreparedData]:
    """The data at a trial's image size, prepared once per size; the first one's tags (what
    data the sweep saw) go on the parent run."""
    cache: dict[int, PreparedData] = {}

    def data_for(size: int) -> PreparedData:
        if size not in cache:
            cache[size] = prepare_data(exp.data, size, log)
            if len(cache) == 1:
                tags = [RunTag(key, str(value)) for key, value in cache[size].tags().items()]
                MlflowClient().log_batch(parent, tags=tags)
        return cache[size]

    return data_for


def failed_trials(oracle) -> int:
    """Failed trials as the oracle counts them, this run and earlier ones of the sweep."""
    return sum(trial.status == "FAILED" for trial in oracle.trials.values())


def finish(exp: Experiment, parent: str, failed: int, stopped: str | None, log: Callable[[str], None],
           time_budget: TimeBudgetedOracle | None = None) -> SweepResult:
    """Leaderboard and promotion under the parent run once the trials are over; raises when
    no trial finished. `time_budget`: the sweep's time budget, whose rest a final run fills
    with `tuner.fill_budget`."""
    epochs_for = time_budget.final_epochs_for if time_budget and exp.tuner.fill_budget else None
    budget = exp.registry.max_latency_ms
    rows = mark_budget(leaderboard(parent, searched(exp)), budget)
    best_trial = champion_row(trial_rows(rows), budget)
    if exp.tuner.final_epochs and best_trial and _end_step("the final run", lambda: train_final(exp, parent, best_trial, log, epochs_for), log):
        rows = mark_budget(leaderboard(parent, searched(exp)), budget)
    if exp.registry.ensemble > 1 and _end_step("the ensemble", lambda: log_ensemble(exp, parent, rows, log), log):
        rows = mark_budget(leaderboard(parent, searched(exp)), budget)
    _log_leaderboard(parent, rows, failed)
    _log_pareto(parent, rows)
    if stopped:
        log(f"sweep {stopped}")
    if not rows:
        raise PetlocError(f"sweep '{exp.name}': no trial finished ({failed} failed); see the FAILED runs' 'error' tags in petloc ui")
    best = champion_row(rows, budget)
    if best is None:
        promotion = registry.Promotion(exp.registry.name, None, False,
                                       f"no trial's batch-1 latency fits registry.max_latency_ms={budget:g}; nothing promoted")
    else:
        promotion = registry.promote(best["run_id"], exp.registry.name, exp.registry.alias,
                                     register_when_not_better=exp.registry.register_when_not_better, max_latency_ms=budget)
    MlflowClient().set_tag(parent, "promotion", promotion.reason)
    return SweepResult(parent, rows, promotion, failed)


def _end_step(what: str, step: Callable[[], str | None], log: Callable[[str], None]) -> str | None:
    """An extra candidate at the sweep's end (its run ID, or None); when it fails, one line,
    and the leaderboard and the promotion of the trials go on without it."""
    try:
        return step()
    except Exception as err:  # its run ended FAILED with the reason; Ctrl+C still stops the sweep
        stopping.raise_stop_behind(err)  # ... also one that a library turned into its own error
        log(f"{what} failed, the sweep ends without it: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None


def mark_budget(rows: list[dict], budget: float | None) -> list[dict]:
    """With a latency budget, each leaderboard row says whether its trial fits it."""
    if budget is None:
        return rows
    return [{**row, "fits_budget": "yes" if _fits(row, budget) else "no"} for row in rows]


def _fits(row: dict, budget: float | None) -> bool:
    latency = row.get("latency_ms_b1")
    return budget is None or (isinstance(latency, (int, float)) and latency <= budget)


def champion_row(rows: list[dict], budget: float | None) -> dict | None:
    """The best val mIoU among the trials that fit the latency budget (rows come best first)."""
    return next((row for row in rows if _fits(row, budget)), None)


def pareto_front(rows: list[dict]) -> list[dict]:
    """The trials no other trial beats on both val mIoU (higher) and batch-1 latency (lower),
    fastest first."""
    timed = sorted((r for r in rows if isinstance(r.get("latency_ms_b1"), (int, float))), key=lambda r: (r["latency_ms_b1"], -r["val_miou"]))
    front, best = [], float("-inf")
    for row in timed:
        if row["val_miou"] > best:
            front.append(row)
            best = row["val_miou"]
    return front


def _log_pareto(parent_run_id: str, rows: list[dict]) -> None:
    """`pareto.csv` (every trial, on the front or not) and `pareto.png` on the parent run."""
    on_front = {row["run_id"] for row in pareto_front(rows)}
    points = [{"trial": r["trial"], "val_miou": r["val_miou"], "latency_ms_b1": r["latency_ms_b1"],
               "pareto": "yes" if r["run_id"] in on_front else "no", "run_id": r["run_id"]} for r in rows]
    client = MlflowClient()
    with log.scratch_dir() as tmp:
        csv_path = Path(tmp) / "pareto.csv"
        csv_path.write_text(report.csv_text(points, ["trial", "val_miou", "latency_ms_b1", "pareto", "run_id"]))
        client.log_artifact(parent_run_id, str(csv_path))
        if points:
            client.log_artifact(parent_run_id, str(plot_pareto(points, Path(tmp) / "pareto.png")))

