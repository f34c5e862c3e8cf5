"""A tracked search's runs in MLflow, for any Keras Tuner search: its parent run, one child
run per trial (an earlier attempt of a trial ends KILLED, so a trial is logged once as
FINISHED), the leaderboard of its finished trials and, for a distributed search, the chief's
marks. petloc's own sweep (`petloc.tracking.sweep_record.SweepRecord`) adds what only a
localiser's sweep has."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, overload

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc import report
from petloc.errors import PetlocError
from petloc.tracking import log, runs, sweep_report, ui_links
from petloc.tracking import vocabulary as vocab
from petloc.training.gallery import plot_pareto

FINISHED, RUNNING = "attributes.status = 'FINISHED'", "attributes.status = 'RUNNING'"


# The pictures' words for petloc's own figures; any other figure is shown by its name.
PARETO_LABELS = {vocab.BEST_VAL_MIOU: "val mIoU", vocab.LATENCY_MS_B1: "latency, batch 1 (ms)"}


class SearchRecord:
    """The runs of one search, by its parent run."""

    def __init__(self, parent_run_id: str):
        self.parent_run_id = parent_run_id
        self.client = MlflowClient()

    # ---- the parent run ---------------------------------------------------------------

    @classmethod
    def create_parent(cls, experiment_id: str, run_name: str, tags: dict[str, str]):
        """A new RUNNING parent run with `tags` (those that find it again)."""
        return cls(runs.create_run(experiment_id, run_name, {vocab.KIND: vocab.SWEEP_KIND, **tags}))

    @classmethod
    def existing(cls, run_id: str, missing: str):
        """The search whose parent is `run_id`; PetlocError(`missing`) when the store has no such run."""
        record = cls(run_id)
        try:
            record.client.get_run(run_id)
        except MlflowException:
            raise PetlocError(missing) from None
        return record

    @classmethod
    def claimed(cls, run_id: str, missing: str, what: str = "search"):
        """The existing parent `run_id`, claimed by this process to go on with the `what`
        (search, sweep); the runs a dead process left RUNNING under it end KILLED."""
        record = cls.existing(run_id, missing)
        record.end_orphans(f"ended when the {what} was resumed")
        runs.claim_run(run_id)
        return record

    def end_orphans(self, why: str) -> None:
        """Runs of this search left RUNNING by a process that died (kill -9, power loss) end KILLED."""
        running = [
            self.parent_run_id,
            *(r.info.run_id for r in runs.child_runs(self.parent_run_id, RUNNING)),
        ]
        runs.end_orphans(running, why)

    def retire(self, why: str) -> None:
        """end_orphans, for a search started over: a parent run gone from the store is no error."""
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
        """One run of the search, as MLflow keeps it."""
        return self.client.get_run(run_id)

    def set_tags(self, tags: dict[str, Any], run_id: str | None = None) -> None:
        """Tags of the parent run (or of `run_id`), in one call: a call per tag is a store
        transaction (or a server request) each."""
        self.client.log_batch(
            run_id or self.parent_run_id,
            tags=[RunTag(key, str(value)) for key, value in tags.items()],
        )

    def log_params_once(self, params: dict[str, Any]) -> None:
        """The parent's params (what the search is), each cut to MLflow's length. MLflow
        refuses to change a param: a resumed search logs only those its parent lacks (a
        hyperparameter the space gained); what a start may change belongs in tags."""
        logged = self.client.get_run(self.parent_run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
        if new:
            self.client.log_batch(self.parent_run_id, params=new)

    def log_dict(self, content: dict, file_name: str) -> None:
        self.client.log_dict(self.parent_run_id, content, file_name)

    def set_promotion(self, reason: str) -> None:
        self.client.set_tag(self.parent_run_id, vocab.PROMOTION, reason)

    # ---- a distributed search's chief -------------------------------------------------

    def mark_chief(self, address: str) -> None:
        self.client.set_tag(self.parent_run_id, vocab.CHIEF, address)

    def beat(self) -> None:
        """The chief's sign of life on its parent run, for a second chief to see."""
        self.client.set_tag(self.parent_run_id, vocab.CHIEF_HEARTBEAT, f"{time.time():.0f}")

    # ---- its trial runs ---------------------------------------------------------------

    def child_run(self, trial_id: str, run_name: str, tags: dict[str, str]) -> str:
        """A new child run of the search for `trial_id` (a trial, or an end run), RUNNING."""
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

    def finished_trials(self, params: Sequence[str], figures: Sequence[str]) -> list[dict]:
        """The finished trials, as rows: trial, `params`, `figures` ("" where a run has none)
        and run_id, in the order the store returns them."""
        rows = []
        for run in runs.child_runs(self.parent_run_id, FINISHED):
            row: dict[str, Any] = {"trial": run.data.tags.get(vocab.TRIAL_ID, "")}
            row.update({name: number_or_text(run.data.params.get(name, "")) for name in params})
            row.update({name: run.data.metrics.get(name, "") for name in figures})
            row["run_id"] = run.info.run_id
            rows.append(row)
        return sorted(rows, key=lambda row: row["trial"])

    def log_pareto(self, rows: list[dict], first: tuple[str, str], second: tuple[str, str]) -> None:
        """`pareto.csv` (every trial, on the front or not) and `pareto.png`: `first` against
        `second`, each a (metric, direction) pair."""
        on_front = {row["run_id"] for row in pareto_front(rows, first, second)}
        names = [first[0], second[0]]
        points = [
            {
                "trial": r["trial"],
                **{n: r[n] for n in names},
                "pareto": "yes" if r["run_id"] in on_front else "no",
                "run_id": r["run_id"],
            }
            for r in rows
            if all(isinstance(r.get(n), (int, float)) for n in names)
        ]
        with log.scratch_dir() as tmp:
            csv_path = Path(tmp) / "pareto.csv"
            csv_path.write_text(report.csv_text(points, ["trial", *names, "pareto", "run_id"]))
            self.client.log_artifact(self.parent_run_id, str(csv_path))
            if points:
                picture = plot_pareto(
                    points, Path(tmp) / "pareto.png", first[0], second[0], PARETO_LABELS
                )
                self.client.log_artifact(self.parent_run_id, str(picture))

    def log_leaderboard_files(self, rows: list[dict], columns: list[str]) -> None:
        """`leaderboard.csv` (full precision) and `leaderboard.md` (as the terminal rounds)."""
        with log.scratch_dir() as tmp:
            csv_path, md_path = Path(tmp) / "leaderboard.csv", Path(tmp) / "leaderboard.md"
            csv_path.write_text(report.csv_text(rows, columns))
            md_path.write_text(
                report.table(rows, columns, markdown=True, same_decimals=True)
                or "No finished trials.\n"
            )
            self.client.log_artifact(self.parent_run_id, str(csv_path))
            self.client.log_artifact(self.parent_run_id, str(md_path))

    def log_outcome(
        self, best: dict | None, figures: Sequence[str], finished: int, failed: int
    ) -> None:
        """The trial counts and the best trial's IDs and `figures`, under the trials' own
        names (one column of the runs table for parent and trials)."""
        metrics = {vocab.TRIALS_FINISHED: float(finished), vocab.TRIALS_FAILED: float(failed)}
        if best is not None:
            self.set_tags({vocab.BEST_TRIAL_ID: best["trial"], vocab.BEST_RUN_ID: best["run_id"]})
            metrics.update({k: float(best[k]) for k in figures if best.get(k, "") != ""})
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_run_id, metrics=[Metric(k, value, now, 0) for k, value in metrics.items()]
        )

    # ---- the report: the parent run read first -----------------------------------------

    def log_report(
        self, rows: list[dict], board: sweep_report.Board, say: Callable[[str], None] = print
    ) -> None:
        """The description (the leaderboard, each trial linked to its run), the leaderboard as
        an MLflow table, and the search's pictures, as `board` says the leaderboard is; what
        fails is a warning line."""
        sweep_report.guarded(
            f"the table {sweep_report.TABLE_FILE}",
            lambda: sweep_report.log_table(self, rows, board),
            say,
        )
        sweep_report.log_pictures(self, rows, board, say)
        self._describe(rows, board, None, say)

    def describe(
        self,
        rows: list[dict],
        board: sweep_report.Board,
        promotion=None,
        say: Callable[[str], None] = print,
    ) -> None:
        """The parent run's description: what the search is, its linked leaderboard and, once
        known, the registry's answer (`promotion`, a registry.Promotion) linked to its version."""
        self._describe(rows, board, promotion, say)

    def _describe(
        self, rows: list[dict], board: sweep_report.Board, promotion, say: Callable[[str], None]
    ) -> None:
        # log_report's own description, whatever a subclass makes of `describe`
        def write() -> None:
            run = self.client.get_run(self.parent_run_id)
            head = sweep_report.head_of(run.data.tags.get(vocab.NOTE, ""))
            logged = frozenset(a.path for a in self.client.list_artifacts(self.parent_run_id))
            text = sweep_report.description(
                head, rows, board, run.info.experiment_id, promotion, logged
            )
            self.set_tags({vocab.NOTE: text})

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


def pareto_front(rows: list[dict], first: tuple[str, str], second: tuple[str, str]) -> list[dict]:
    """The rows no other row beats on both figures, each a (metric, direction) pair, best
    `second` first."""
    (a, dir_a), (b, dir_b) = first, second
    sign_a, sign_b = (1.0 if dir_a == vocab.MAX else -1.0), (1.0 if dir_b == vocab.MAX else -1.0)
    scored = [
        r for r in rows if isinstance(r.get(a), (int, float)) and isinstance(r.get(b), (int, float))
    ]
    front, best = [], float("-inf")
    for row in sorted(scored, key=lambda r: (-sign_b * r[b], -sign_a * r[a])):
        if sign_a * row[a] > best:
            front.append(row)
            best = sign_a * row[a]
    return front


def number_or_text(value):
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
