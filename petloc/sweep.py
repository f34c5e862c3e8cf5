"""`petloc sweep`: one parent MLflow run around a Keras Tuner search, a leaderboard at the
end, and the winner offered to the registry.

A sweep's state lives in `mlruns/tuner/<name>/`: Keras Tuner's own oracle files and
`sweep.json` (the parent run and a fingerprint of the experiment). Running the same
sweep again continues it; `--fresh` starts over.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.tracking import MlflowClient

from petloc import registry, tracking
from petloc.config import Experiment, Range
from petloc.errors import PetlocError
from petloc.experiment import PreparedData, prepare_data, run_settings
from petloc.search import TrackedTuner, reset, tuner_dir

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


def fingerprint(exp: Experiment) -> str:
    """What makes two sweeps the same sweep (tuner trial budget aside, so it may grow)."""
    body = exp.model_dump(mode="json")
    body["tuner"].pop("max_trials")
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _parent_run(exp: Experiment, state_file: Path, experiment_id: str) -> str:
    """The sweep's parent run: the one recorded in sweep.json, or a new one."""
    client = MlflowClient()
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != fingerprint(exp):
            raise PetlocError(
                f"{state_file.parent}: the sweep '{exp.name}' was started with different settings; "
                "run it with --fresh to start over, or give the experiment another name"
            )
        try:
            client.get_run(state["parent_run_id"])
            client.update_run(state["parent_run_id"], status="RUNNING")
            return state["parent_run_id"]
        except mlflow.exceptions.MlflowException:
            raise PetlocError(f"{state_file}: its parent run is not in {mlflow.get_tracking_uri()}; run with --fresh") from None
    run = client.create_run(experiment_id, run_name=f"sweep-{exp.name}", tags={"petloc.kind": "sweep"})
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"parent_run_id": run.info.run_id, "fingerprint": fingerprint(exp)}))
    _log_sweep_settings(exp, run.info.run_id)
    return run.info.run_id


def _log_sweep_settings(exp: Experiment, run_id: str) -> None:
    client = MlflowClient()
    space = {name: (p.model_dump() if hasattr(p, "model_dump") else p) for name, p in exp.space.items()}
    params = {f"space.{k}": json.dumps(v) for k, v in space.items()}
    params.update({f"tuner.{k}": v for k, v in exp.tuner.model_dump().items()})
    params.update(run_settings(exp, exp.train.epochs))
    params["image_size"] = exp.data.image_size
    mlflow.log_params({k: (str(v)[:6000]) for k, v in params.items()}, run_id=run_id)
    client.log_dict(run_id, {"space": space, "experiment": exp.model_dump(mode="json")}, "search_space.json")
    client.set_tag(run_id, "git_commit", tracking.git_commit())


def searched(exp: Experiment) -> list[str]:
    """The hyperparameters the space varies beyond the leaderboard's own columns."""
    shown = {key.split(".", 1)[1] for _, key in LEADERBOARD_COLUMNS}
    return [name for name, value in exp.space.items() if isinstance(value, (list, Range)) and name not in shown]


def leaderboard(parent_run_id: str, extra: list[str] = ()) -> list[dict]:
    """Finished trials of the sweep, best val mIoU first; `extra` hyperparameters as columns too."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = mlflow.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'",
        order_by=["metrics.best_val_miou DESC"], output_format="list",
    )
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id}
        for column, key in LEADERBOARD_COLUMNS:
            kind, name = key.split(".", 1)
            source = {"tags": run.data.tags, "params": run.data.params, "metrics": run.data.metrics}[kind]
            row[column] = source.get(name, "")
        row.update({name: run.data.params.get(name, "") for name in extra})
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "No finished trials.\n"
    keys = list(rows[0])[1:] + ["run_id"]  # run_id last
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _log_leaderboard(parent_run_id: str, rows: list[dict], failed: int) -> None:
    client = MlflowClient()
    with tracking.scratch_dir() as tmp:
        csv_path = Path(tmp) / "leaderboard.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=(list(rows[0])[1:] if rows else [c for c, _ in LEADERBOARD_COLUMNS]) + ["run_id"])
            writer.writeheader()
            writer.writerows(rows)
        md_path = Path(tmp) / "leaderboard.md"
        md_path.write_text(markdown(rows))
        client.log_artifact(parent_run_id, str(csv_path))
        client.log_artifact(parent_run_id, str(md_path))
    metrics = {"trials_finished": float(len(rows)), "trials_failed": float(failed)}
    if rows:
        best = rows[0]
        client.set_tag(parent_run_id, "best_trial_id", best["trial"])
        client.set_tag(parent_run_id, "best_run_id", best["run_id"])
        metrics.update({f"best_{k}": float(best[k]) for k in ("val_miou", "accuracy", "iou50", "latency_ms_b1") if best[k] != ""})
    mlflow.log_metrics(metrics, run_id=parent_run_id)


def _failed_trials(parent_run_id: str) -> int:
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return len(client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FAILED'"))


def run_sweep(exp: Experiment, fresh: bool = False, log: Callable[[str], None] = print) -> SweepResult:
    """The whole sweep: search, leaderboard, promotion. Safe to run again to continue."""
    tracking.configure(exp.tracking.uri)
    experiment_id = tracking.experiment_id(exp.tracking.experiment)
    directory = tuner_dir(exp, tracking.STORE_DIR)
    if fresh:
        reset(directory)
    parent = _parent_run(exp, directory / "sweep.json", experiment_id)

    cache: dict[int, PreparedData] = {}

    def data_for(size: int) -> PreparedData:
        if size not in cache:
            cache[size] = prepare_data(exp.data, size, log)
        return cache[size]

    client = MlflowClient()
    first = data_for(exp.data.image_size)
    for key, value in first.tags().items():
        client.set_tag(parent, key, str(value))
    tuner = TrackedTuner(exp, parent, data_for, directory=str(directory.parent), project_name=directory.name, overwrite=False)
    stopped = None
    try:
        tuner.search()
    except RuntimeError as err:  # Keras Tuner's "too many consecutive failures"
        if "consecutive failures" not in str(err):
            raise
        stopped = f"stopped after {exp.tuner.max_consecutive_failures} failed trials in a row; see the FAILED runs' 'error' tags"
    except BaseException as err:
        client.set_terminated(parent, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise

    rows = leaderboard(parent, searched(exp))
    failed = _failed_trials(parent)
    _log_leaderboard(parent, rows, failed)
    promotion = None
    if rows:
        promotion = registry.promote(
            rows[0]["run_id"], exp.registry.name, exp.registry.alias,
            register_when_not_better=exp.registry.register_when_not_better,
            score_champion=lambda uri: _score_on(uri, exp, data_for),
        )
        client.set_tag(parent, "promotion", promotion.reason)
    client.set_terminated(parent, "FINISHED" if rows else "FAILED")
    if stopped:
        log(f"sweep {stopped}")
    return SweepResult(parent, rows, promotion, failed)


def _score_on(uri: str, exp: Experiment, data_for) -> float:
    """The current champion's val mIoU on this sweep's validation data."""
    from petloc.evaluate import quality
    from petloc.predict import load_keras

    model = load_keras(uri)
    figures, _ = quality(model, data_for(int(model.input_shape[1])).val)
    return figures["miou"]

