"""A sweep's runs in MLflow: its parent run, the trial runs under it, and what the sweep
logs there (settings, data, leaderboard, Pareto front, promotion). `petloc.search` runs
the search and keeps its state files; everything it records goes through here."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import mlflow
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc import report
from petloc.config import Experiment, Range
from petloc.errors import PetlocError
from petloc.tracking import log, runs, store, sweep_report, ui_links
from petloc.tracking import vocabulary as vocab
from petloc.tracking.training_runs import run_settings
from petloc.training.gallery import plot_pareto

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

CHIEF_LIVE_SECONDS = 60.0  # many heartbeats: a busy tracking server or some clock skew is no death
FINISHED, RUNNING = "attributes.status = 'FINISHED'", "attributes.status = 'RUNNING'"


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


class SweepRecord:
    """The runs of one sweep, by its parent run."""

    def __init__(self, parent_run_id: str):
        self.parent_run_id = parent_run_id
        self.client = MlflowClient()

    # ---- the parent run ---------------------------------------------------------------

    @classmethod
    def create(cls, exp: Experiment, fingerprint: str, experiment_id: str) -> SweepRecord:
        """A new parent run for the sweep, with only what finds it: the caller records it
        (sweep.json) before `log_settings`, so a stop in between leaves no run nobody knows."""
        run_id = runs.create_run(
            experiment_id,
            f"sweep-{exp.name}",
            {vocab.KIND: vocab.SWEEP_KIND, **identity_tags(exp, fingerprint)},
        )
        return cls(run_id)

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
        record = cls.existing(
            run_id,
            f"{state_file}: its parent run is not in {store.tracking_uri()}; run with --fresh",
        )
        record.end_orphans("ended when the sweep was resumed")
        runs.claim_run(run_id)
        # identity tags too: parents made before they existed
        record.log_resumable_settings(exp, fingerprint)
        return record

    @classmethod
    def existing(cls, run_id: str, missing: str) -> SweepRecord:
        """The sweep whose parent is `run_id`; PetlocError(`missing`) when the store has no such run."""
        record = cls(run_id)
        try:
            record.client.get_run(run_id)
        except MlflowException:
            raise PetlocError(missing) from None
        return record

    def end_orphans(self, why: str) -> None:
        """Runs of this sweep left RUNNING by a process that died (kill -9, power loss) end KILLED."""
        running = [
            self.parent_run_id,
            *(r.info.run_id for r in runs.child_runs(self.parent_run_id, RUNNING)),
        ]
        runs.end_orphans(running, why)

    def retire(self, why: str) -> None:
        """end_orphans, for a sweep started over: a parent run gone from the store is no error."""
        with contextlib.suppress(MlflowException):
            self.end_orphans(why)

    @overload
    def ended(self, err: None = None) -> None: ...
    @overload
    def ended(self, err: BaseException) -> BaseException: ...
    def ended(self, err: BaseException | None = None) -> BaseException | None:
        """Ends the parent run FINISHED, or FAILED / KILLED for `err`; returns what to raise."""
        if err is not None:
            return runs.end_run(self.parent_run_id, err)
        self.client.set_terminated(self.parent_run_id, "FINISHED")
        return None

    def started(self) -> int:
        """The parent run's start time (ms)."""
        return self.client.get_run(self.parent_run_id).info.start_time

    def run(self, run_id: str):
        """One run of the sweep, as MLflow keeps it."""
        return self.client.get_run(run_id)

    def _set_tags(self, tags: dict[str, Any], run_id: str | None = None) -> None:
        # One call for all of them: a call per tag is a store transaction (or a server request) each.
        self.client.log_batch(
            run_id or self.parent_run_id,
            tags=[RunTag(key, str(value)) for key, value in tags.items()],
        )

    def log_data_tags(self, tags: dict[str, Any]) -> None:
        """What data the sweep saw."""
        self._set_tags(tags)

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
        self._set_tags(tags)
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
        self._set_tags(log.provenance())

    def set_time_budget(self, why: str) -> None:
        self.client.set_tag(self.parent_run_id, vocab.TIME_BUDGET, why)

    def set_promotion(self, reason: str) -> None:
        self.client.set_tag(self.parent_run_id, vocab.PROMOTION, reason)

    # ---- a distributed sweep's chief --------------------------------------------------

    def mark_chief(self, address: str) -> None:
        self.client.set_tag(self.parent_run_id, vocab.CHIEF, address)

    def beat(self) -> None:
        """The chief's sign of life on its parent run, for a second chief to see."""
        self.client.set_tag(self.parent_run_id, vocab.CHIEF_HEARTBEAT, f"{time.time():.0f}")

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

    # ---- its trial runs ---------------------------------------------------------------

    def child_run(self, trial_id: str, run_name: str, tags: dict[str, str]) -> str:
        """A new child run of the sweep for `trial_id` (a trial, or an end run), RUNNING."""
        tags = {
            vocab.PARENT_RUN_ID: self.parent_run_id,
            vocab.SWEEP_RUN_ID: self.parent_run_id,
            vocab.TRIAL_ID: trial_id,
            **tags,
        }
        experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        return runs.create_run(experiment_id, run_name, tags)

    def trial_run(self, trial_id: str, run_name: str, tags: dict[str, str]) -> str:
        """A new child run for a trial. A run that an earlier attempt of the same trial left
        unfinished (its process interrupted or killed) ends KILLED, so the trial is logged
        once as FINISHED."""
        for run in self.runs_of(trial_id):
            if run.info.status in ("RUNNING", "FINISHED"):  # a FAILED attempt stays FAILED
                self.client.set_tag(
                    run.info.run_id,
                    vocab.ERROR,
                    f"trial {trial_id} was run again; this attempt "
                    f"({run.info.status} when it was dropped) did not end it",
                )
                self.client.set_terminated(run.info.run_id, "KILLED")
        return self.child_run(trial_id, run_name, tags)

    def runs_of(self, trial_id: str, status: str | None = None) -> list:
        """The child runs of `trial_id` (FINAL_TRIAL, ENSEMBLE_TRIAL or a trial's), optionally of one status."""
        where = f"tags.{vocab.TRIAL_ID} = '{trial_id}'" + (
            f" and attributes.status = '{status}'" if status else ""
        )
        return runs.child_runs(self.parent_run_id, where)

    def finished_runs(self) -> dict[str, Any]:
        """The FINISHED child runs, by trial_id."""
        return {
            run.data.tags.get(vocab.TRIAL_ID): run
            for run in runs.child_runs(self.parent_run_id, FINISHED)
        }

    def fail_running(self, reason: str, trial_id: str | None = None) -> None:
        """The runs a lost worker left RUNNING (for one trial, or any) end FAILED, saying why."""
        trial = f" and tags.{vocab.TRIAL_ID} = '{trial_id}'" if trial_id is not None else ""
        for run in runs.child_runs(self.parent_run_id, f"{RUNNING}{trial}"):
            self.client.set_tag(run.info.run_id, vocab.ERROR, reason)
            self.client.set_terminated(run.info.run_id, "FAILED")

    def upload_checkpoint(self, run_id: str, weights: Path) -> None:
        """A Hyperband trial's weights in its run, for a later round on another machine."""
        log.log_files(run_id, {vocab.CHECKPOINT_FOLDER: weights})

    def download_checkpoint(self, trial_id: str, file_name: str, into: Path) -> Path | None:
        """The weights a FINISHED run of `trial_id` uploaded, into folder `into`; None when there are none."""
        for run in self.runs_of(trial_id, "FINISHED"):
            try:
                return Path(
                    self.client.download_artifacts(
                        run.info.run_id, f"{vocab.CHECKPOINT_FOLDER}/{file_name}", str(into)
                    )
                )
            except MlflowException:
                continue
        return None

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
                row[column] = _number_or_text(source.get(name, ""))
            row.update({name: _number_or_text(run.data.params.get(name, "")) for name in extra})
            rows.append(row)
        return _without_absent_class_figures(rows)

    def log_leaderboard(self, rows: list[dict], failed: int, best: dict | None = None) -> None:
        """`leaderboard.csv` and `.md`, the trial counts, and the figures and IDs of `best`:
        the sweep's champion (`petloc.search.sweep.champion_row`, which under a latency budget
        may be no leaderboard's first row); without one, as when no trial fits the budget,
        the first row's."""
        columns = leaderboard_columns(rows)
        with log.scratch_dir() as tmp:
            csv_path, md_path = Path(tmp) / "leaderboard.csv", Path(tmp) / "leaderboard.md"
            csv_path.write_text(report.csv_text(rows, columns))
            md_path.write_text(
                report.table(rows, columns, markdown=True, same_decimals=True)
                or "No finished trials.\n"
            )
            self.client.log_artifact(self.parent_run_id, str(csv_path))
            self.client.log_artifact(self.parent_run_id, str(md_path))
        metrics = {
            vocab.TRIALS_FINISHED: float(len(vocab.trial_rows(rows))),
            vocab.TRIALS_FAILED: float(failed),
        }
        best = best if best is not None else (rows[0] if rows else None)
        if best is not None:
            self._set_tags({vocab.BEST_TRIAL_ID: best["trial"], vocab.BEST_RUN_ID: best["run_id"]})
            # under the trials' own names: one column of the runs table for parent and trials
            metrics.update({k: float(best[k]) for k in vocab.BEST_FIGURES if best.get(k, "") != ""})
        mlflow.log_metrics(metrics, run_id=self.parent_run_id)

    def log_pareto(self, rows: list[dict]) -> None:
        """`pareto.csv` (every trial, on the front or not) and `pareto.png`."""
        on_front = {row["run_id"] for row in pareto_front(rows)}
        points = [
            {
                "trial": r["trial"],
                vocab.BEST_VAL_MIOU: r[vocab.BEST_VAL_MIOU],
                vocab.LATENCY_MS_B1: r[vocab.LATENCY_MS_B1],
                "pareto": "yes" if r["run_id"] in on_front else "no",
                "run_id": r["run_id"],
            }
            for r in rows
        ]
        with log.scratch_dir() as tmp:
            csv_path = Path(tmp) / "pareto.csv"
            csv_path.write_text(
                report.csv_text(
                    points, ["trial", vocab.BEST_VAL_MIOU, vocab.LATENCY_MS_B1, "pareto", "run_id"]
                )
            )
            self.client.log_artifact(self.parent_run_id, str(csv_path))
            if points:
                self.client.log_artifact(
                    self.parent_run_id,
                    str(
                        plot_pareto(
                            points,
                            Path(tmp) / "pareto.png",
                            miou=vocab.BEST_VAL_MIOU,
                            latency=vocab.LATENCY_MS_B1,
                        )
                    ),
                )

    # ---- the report: the parent run read first -----------------------------------------

    def log_report(self, rows: list[dict], say: Callable[[str], None] = print) -> None:
        """The description (the leaderboard, each trial linked to its run), the leaderboard as
        an MLflow table, and the search's pictures; what fails is a warning line."""
        sweep_report.guarded(
            f"the table {sweep_report.TABLE_FILE}",
            lambda: sweep_report.log_table(self.client, self.parent_run_id, rows),
            say,
        )
        sweep_report.log_pictures(self.client, self.parent_run_id, rows, say)
        self.describe(rows, say=say)

    def describe(
        self, rows: list[dict], promotion=None, say: Callable[[str], None] = print
    ) -> None:
        """The parent run's description: what the sweep is, its linked leaderboard and, once
        known, the registry's answer (`promotion`, a registry.Promotion) linked to its version."""

        def write() -> None:
            run = self.client.get_run(self.parent_run_id)
            head = sweep_report.head_of(run.data.tags.get(vocab.NOTE, ""))
            logged = frozenset(a.path for a in self.client.list_artifacts(self.parent_run_id))
            text = sweep_report.description(head, rows, run.info.experiment_id, promotion, logged)
            self._set_tags({vocab.NOTE: text})

        sweep_report.guarded("the parent run's description", write, say)

    def links(self, best_run_id: str | None, promotion=None) -> ui_links.SweepLinks:
        """The URLs of the parent run, the best run and its registered version."""
        registered = promotion is not None and promotion.version is not None
        return ui_links.sweep_links(
            self.client.get_run(self.parent_run_id).info.experiment_id,
            self.parent_run_id,
            best_run_id,
            (promotion.name, promotion.version) if registered else None,
            bool(registered and promotion.champion),
        )


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


def _without_absent_class_figures(rows: list[dict]) -> list[dict]:
    """The rows without the class figures no run has (top-5 of a 2-class sweep, species of
    classes without species)."""
    absent = [name for name in vocab.CLASS_FIGURES.values() if all(row[name] == "" for row in rows)]
    return [{k: v for k, v in row.items() if k not in absent} for row in rows]


def leaderboard_columns(rows: list[dict]) -> list[str]:
    """The leaderboard's columns: what each row holds, run_id last."""
    empty = [c for c, _ in LEADERBOARD_COLUMNS if c not in vocab.CLASS_FIGURES.values()]
    return [c for c in (rows[0] if rows else empty) if c != "run_id"] + ["run_id"]


def pareto_front(rows: list[dict]) -> list[dict]:
    """The trials no other trial beats on both val mIoU (higher) and batch-1 latency (lower),
    fastest first."""
    timed = sorted(
        (r for r in rows if isinstance(r.get(vocab.LATENCY_MS_B1), (int, float))),
        key=lambda r: (r[vocab.LATENCY_MS_B1], -r[vocab.BEST_VAL_MIOU]),
    )
    front, best = [], float("-inf")
    for row in timed:
        if row[vocab.BEST_VAL_MIOU] > best:
            front.append(row)
            best = row[vocab.BEST_VAL_MIOU]
    return front
