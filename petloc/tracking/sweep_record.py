"""A sweep's runs in MLflow: its parent run, the trial runs under it, and what the sweep
logs there (settings, data, leaderboard, Pareto front, promotion). `petloc.search` runs
the search and keeps its state files; everything it records goes through here."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from petloc.config import Experiment, Range
from petloc.tracking import log, runs, search_record, store, sweep_report
from petloc.tracking import vocabulary as vocab
from petloc.tracking.search_record import FINISHED, RUNNING, SearchRecord, number_or_text
from petloc.tracking.training_runs import run_settings

LEADERBOARD_COLUMNS = [
    ("trial", f"tags.{vocab.TRIAL_ID}"),
    ("backbone", "params.backbone"),
    ("image_size", "params.image_size"),
    ("aug_strength", "params.aug_strength"),
    ("head_units", "params.head_units"),
    ("learning_rate", "params.learning_rate"),
    # the figures under the runs' own metric names
    *((metric, f"metrics.{metric}") for metric in vocab.LEADERBOARD_METRICS),
]

# What a sweep may change when it resumes (outside its fingerprint): tags, set again at each
# start, since MLflow's params are written once.
RESUMABLE_TUNER_SETTINGS = ("max_trials", "final_epochs", "max_minutes", "fill_budget")

LOCALISER_PARETO = ((vocab.BEST_VAL_MIOU, vocab.MAX), (vocab.LATENCY_MS_B1, vocab.MIN))

# The report's words for the leaderboard (`localiser_board`): the columns that are no
# hyperparameter, the objective's label and the latency budget's setting.
FIGURE_COLUMNS = {c for c, key in LEADERBOARD_COLUMNS if not key.startswith("params.")}
NOT_HYPERPARAMETERS = ("run_id", "fits_budget")
OBJECTIVE_LABEL = "val mIoU"
BUDGET = "registry.max_latency_ms"

CHIEF_LIVE_SECONDS = 60.0  # many heartbeats: a busy tracking server or some clock skew is no death


def identity_tags(exp: Experiment, fingerprint: str) -> dict[str, str]:
    """What finds a sweep's parent run in the tracking server, and tells its settings apart."""
    return {vocab.SWEEP: exp.name, vocab.FINGERPRINT: fingerprint}


@dataclass
class LiveChief:
    """The parent run of a distributed sweep's chief that is still alive."""

    run_id: str
    started: int  # the run's start time (ms)
    host: str
    address: str


class SweepRecord(SearchRecord):
    """The runs of one localiser sweep, by its parent run (`SearchRecord`'s, and what
    only a sweep of an experiment file logs)."""

    # ---- the parent run ---------------------------------------------------------------

    @classmethod
    def create(cls, exp: Experiment, fingerprint: str, experiment_id: str) -> SweepRecord:
        """A new parent run for the sweep, with only what finds it: the caller records it
        (sweep.json) before `log_settings`, so a stop in between leaves no run nobody knows."""
        return cls.create_parent(
            experiment_id, f"sweep-{exp.name}", identity_tags(exp, fingerprint)
        )

    def log_settings(self, exp: Experiment, fingerprint: str) -> None:
        """A new sweep's settings: what it is (params, provenance) and what this start runs with."""
        self._log_sweep_settings(exp)
        self.log_resumable_settings(exp, fingerprint)

    @classmethod
    def resume(
        cls, exp: Experiment, fingerprint: str, run_id: str, state_file: Path
    ) -> SweepRecord:
        """The parent run `state_file` recorded, claimed by this process; the runs a dead process
        left RUNNING under it end KILLED."""
        record = cls.claimed(
            run_id,
            f"{state_file}: its parent run is not in {store.tracking_uri()}; run with --fresh",
            "sweep",
        )
        # identity tags too: parents made before they existed
        record.log_resumable_settings(exp, fingerprint)
        return record

    def log_data_tags(self, tags: dict[str, Any]) -> None:
        """What data the sweep saw."""
        self.set_tags(tags)

    def log_resumable_settings(self, exp: Experiment, fingerprint: str) -> None:
        """The settings this start of the sweep runs with, and `search_space.json` rewritten."""
        size = (
            f"trials of up to {exp.train.epochs} epochs, as many as Hyperband's brackets hold"
            if exp.tuner.kind == "hyperband"
            else f"up to {exp.tuner.max_trials} trials"
        )
        tags = {f"tuner.{k}": str(getattr(exp.tuner, k)) for k in RESUMABLE_TUNER_SETTINGS}
        tags.update({f"registry.{k}": str(value) for k, value in exp.registry.model_dump().items()})
        tags.update(identity_tags(exp, fingerprint))
        tags[vocab.NOTE] = (
            f"Keras Tuner sweep '{exp.name}' ({exp.tuner.kind}, {size}); "
            "its trials are the child runs, ranked below once they end"
        )
        self.set_tags(tags)
        self.client.log_dict(
            self.parent_run_id,
            {"space": _space(exp), "experiment": exp.model_dump(mode="json")},
            "search_space.json",
        )

    def _log_sweep_settings(self, exp: Experiment) -> None:
        """What a sweep is (its fingerprint covers it): params, written once, and provenance."""
        params: dict[str, Any] = {
            f"space.{k}": json.dumps(value) for k, value in _space(exp).items()
        }
        params.update(
            {
                f"tuner.{k}": value
                for k, value in exp.tuner.model_dump().items()
                if k not in RESUMABLE_TUNER_SETTINGS
            }
        )
        params.update(run_settings(exp, exp.train.epochs))
        params[vocab.IMAGE_SIZE] = exp.data.image_size
        mlflow.log_params(
            {k: (str(value)[:6000]) for k, value in params.items()}, run_id=self.parent_run_id
        )
        self.set_tags(log.provenance())

    def set_time_budget(self, why: str) -> None:
        self.client.set_tag(self.parent_run_id, vocab.TIME_BUDGET, why)

    # ---- a distributed sweep's chief --------------------------------------------------

    @staticmethod
    def live_chiefs(exp: Experiment) -> list[LiveChief]:
        """The RUNNING parent runs of live chiefs of this sweep (its name compared here, not
        pasted into the filter)."""
        client = MlflowClient()
        experiment = client.get_experiment_by_name(exp.tracking.experiment)
        if experiment is None:
            return []
        found = client.search_runs(
            [experiment.experiment_id],
            f"{RUNNING} and tags.`{vocab.KIND}` = '{vocab.SWEEP_KIND}'",
            max_results=1000,
        )
        return [
            LiveChief(
                run.info.run_id,
                run.info.start_time,
                run.data.tags.get(vocab.OWNER, "?").partition(":")[0],
                run.data.tags[vocab.CHIEF],
            )
            for run in found
            if run.data.tags.get(vocab.SWEEP) == exp.name
            and vocab.CHIEF in run.data.tags
            and _chief_alive(run.data.tags)
        ]

    # ---- the leaderboard --------------------------------------------------------------

    def leaderboard(self, extra: Sequence[str] = ()) -> list[dict]:
        """Finished trials of the sweep, best val mIoU first; `extra` hyperparameters as columns too."""
        finished = runs.child_runs(
            self.parent_run_id, FINISHED, order_by=[f"metrics.{vocab.BEST_VAL_MIOU} DESC"]
        )
        rows = []
        for run in finished:
            row = {"run_id": run.info.run_id}
            for column, key in LEADERBOARD_COLUMNS:
                kind, name = key.split(".", 1)
                if kind == "tags":  # text as Keras Tuner wrote it: trial "0012" stays "0012"
                    row[column] = run.data.tags.get(name, "")
                    continue
                source = {"params": run.data.params, "metrics": run.data.metrics}[kind]
                row[column] = number_or_text(source.get(name, ""))
            row.update({name: number_or_text(run.data.params.get(name, "")) for name in extra})
            rows.append(row)
        return _without_absent_class_figures(rows)


def _chief_alive(tags: dict[str, str]) -> bool:
    """A chief's parent shows a live chief: its heartbeat is recent and, on this machine,
    its process still runs (a chief killed here is known dead at once)."""
    owner = tags.get(vocab.OWNER)
    if owner and not runs.owner_alive(owner):
        return False
    try:
        return time.time() - float(tags.get(vocab.CHIEF_HEARTBEAT, "")) < CHIEF_LIVE_SECONDS
    except ValueError:  # a chief of an older petloc: no heartbeat to tell
        return False


def _space(exp: Experiment) -> dict:
    return {name: (p.model_dump() if isinstance(p, Range) else p) for name, p in exp.space.items()}


def searched(exp: Experiment) -> list[str]:
    """The hyperparameters the space varies beyond the leaderboard's own columns."""
    shown = {key.split(".", 1)[1] for _, key in LEADERBOARD_COLUMNS}
    return [
        name
        for name, value in exp.space.items()
        if isinstance(value, (list, Range)) and name not in shown
    ]


def _without_absent_class_figures(rows: list[dict]) -> list[dict]:
    """The rows without the class figures no run has (top-5 of a 2-class sweep, species of
    classes without species)."""
    absent = [name for name in vocab.CLASS_FIGURES.values() if all(row[name] == "" for row in rows)]
    return [{k: v for k, v in row.items() if k not in absent} for row in rows]


def localiser_board(rows: list[dict]) -> sweep_report.Board:
    """What the localiser's leaderboard `rows` are, for the sweep's report: its columns as the
    rows hold them, the params and the extra searched hyperparameters among them, ranked by
    val mIoU (`petloc.search.sweep.ranked_rows`)."""
    columns = leaderboard_columns(rows)
    return sweep_report.Board(
        tuple(columns),
        tuple(c for c in columns if c not in FIGURE_COLUMNS and c not in NOT_HYPERPARAMETERS),
        vocab.BEST_VAL_MIOU,
        vocab.MAX,
        OBJECTIVE_LABEL,
        _order(rows),
    )


def _order(rows: list[dict]) -> str:
    """The leaderboard's order in words; under a latency budget (a `fits_budget` column) the
    champion is ranked among the trials that fit, and may not be first."""
    rule = (
        f"{OBJECTIVE_LABEL} within registry.min_improvement of the best ranked by batch-1 "
        f"latency, then by {OBJECTIVE_LABEL}"
    )
    if any("fits_budget" in row for row in rows):
        return f"{rule}; the champion: the first by that rule of those that fit {BUDGET}"
    return f"champion first: {rule}"


def leaderboard_columns(rows: list[dict]) -> list[str]:
    """The leaderboard's columns: what each row holds, run_id last."""
    empty = [c for c, _ in LEADERBOARD_COLUMNS if c not in vocab.CLASS_FIGURES.values()]
    return [c for c in (rows[0] if rows else empty) if c != "run_id"] + ["run_id"]


def pareto_front(rows: list[dict]) -> list[dict]:
    """The trials no other trial beats on both val mIoU (higher) and batch-1 latency (lower),
    fastest first."""
    return search_record.pareto_front(rows, *LOCALISER_PARETO)
