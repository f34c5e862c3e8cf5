"""`petloc sweep`: one parent MLflow run around a Keras Tuner search, a leaderboard at the
end, and the winner offered to the registry.

A sweep's state lives in `mlruns/tuner/<name>/` (`petloc.search.state`); running the same
sweep again continues it, `--fresh` starts over. Its runs are recorded through
`petloc.tracking.sweep_record`. Across processes and machines (`petloc.search.distributed`, `chief.py`, `worker.py`),
the chief holds the state and the oracle; workers learn the parent run from the chief itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from petloc import stopping
from petloc.config import Experiment
from petloc.errors import PetlocError
from petloc.search.ending import SearchEnd, SearchResult, failed_trials, finish_search
from petloc.search.ensemble import log_ensemble
from petloc.search.final import train_final
from petloc.search.state import sweep_state
from petloc.search.time_budget import TimeBudgetedOracle
from petloc.search.tuner import SweepTuner
from petloc.tracking import registry, ties
from petloc.tracking import vocabulary as vocab
from petloc.tracking.sweep_record import LOCALISER_PARETO, SweepRecord, localiser_board, searched
from petloc.tracking.sweep_report import Board
from petloc.tracking.vocabulary import trial_rows
from petloc.training.dataset import PreparedData, prepare_data

SweepResult = SearchResult  # a sweep ends as every tracked search does


def run_sweep(
    exp: Experiment, fresh: bool = False, say: Callable[[str], None] = print
) -> SweepResult:
    """The whole sweep in this process: search, leaderboard, promotion. Safe to run again to continue."""
    started = time.monotonic()  # tuner.max_minutes counts the data's preparation too
    with sweep_state(exp, fresh) as (directory, record):
        data_for = data_preparer(exp, record, say)
        data_for(exp.data.image_size)  # a data problem is one line now, not a failed trial each
        tuner = SweepTuner(
            exp,
            record,
            data_for,
            say,
            started=started,
            directory=str(directory.parent),
            project_name=directory.name,
            overwrite=False,
        )
        tuner.count_finished_runs()
        stopped = None
        try:
            tuner.search()
        except RuntimeError as err:  # Keras Tuner's "too many consecutive failures"
            if "consecutive failures" not in str(err):
                raise
            stopped = (
                f"stopped after {exp.tuner.max_consecutive_failures} failed trials in a row; "
                "see the FAILED runs' 'error' tags"
            )
        say_why_the_search_ended(tuner, record, stopped, tuner.progress.planned, say)
        return finish(exp, record, failed_trials(tuner.oracle), stopped, say, tuner.time_budget)


def say_why_the_search_ended(
    tuner: SweepTuner,
    record: SweepRecord,
    stopped: str | None,
    planned: int,
    say: Callable[[str], None],
) -> None:
    """When the time budget ended the search, the parent run's `time_budget` tag says so;
    when Keras Tuner ran out of new points before the planned trials, one line says so."""
    if tuner.time_budget is not None and tuner.time_budget.spent:
        record.set_time_budget(f"the search stopped: {tuner.time_budget.spent}")
    elif stopped is None and len(tuner.oracle.trials) < planned:
        say(
            f"\nthe search ended after {len(tuner.oracle.trials)} of {planned} planned trials: Keras Tuner "
            "drew no new point from the space; add values or a range to search further"
        )


def data_preparer(
    exp: Experiment, record: SweepRecord, say: Callable[[str], None]
) -> Callable[[int], PreparedData]:
    """The data at a trial's image size, prepared once per size; the first one's tags (what
    data the sweep saw) go on the parent run."""
    cache: dict[int, PreparedData] = {}

    def data_for(size: int) -> PreparedData:
        if size not in cache:
            cache[size] = prepare_data(exp.data, size, say)
            if len(cache) == 1:
                record.log_data_tags(cache[size].tags())
        return cache[size]

    return data_for


def finish(
    exp: Experiment,
    record: SweepRecord,
    failed: int,
    stopped: str | None,
    say: Callable[[str], None],
    time_budget: TimeBudgetedOracle | None = None,
) -> SweepResult:
    """Leaderboard and promotion under the parent run once the trials are over, as every
    tracked search ends (`petloc.search.ending.finish_search`); raises when no trial
    finished. `time_budget`: the sweep's time budget, whose rest a final run fills with
    `tuner.fill_budget`."""
    return finish_search(SweepEnd(exp, record, say, time_budget), failed, stopped)


class SweepEnd(SearchEnd):
    """A localiser sweep's end: its leaderboard's columns (`SweepRecord.leaderboard`), the
    final run and the ensemble as extra candidates, the latency budget, and the registry
    settings of its experiment file. Its lines are printed by `petloc.search.summary`."""

    noun = "sweep"

    def __init__(
        self,
        exp: Experiment,
        record: SweepRecord,
        say: Callable[[str], None],
        time_budget: TimeBudgetedOracle | None = None,
    ):
        super().__init__(
            record,
            (vocab.BEST_VAL_MIOU, vocab.MAX),
            searched(exp),
            (),
            (vocab.LATENCY_MS_B1, vocab.MIN),
            exp.registry.name,
            exp.registry.alias,
            exp.registry.min_improvement,
            say,
        )
        self.exp, self.sweep_record = exp, record
        fills = time_budget is not None and exp.tuner.fill_budget
        self.final_epochs_for = time_budget.final_epochs_for if time_budget and fills else None

    def leaderboard(self) -> list[dict]:
        rows = ranked_rows(
            self.sweep_record.leaderboard(self.hyperparameters), self.min_improvement
        )
        return mark_latency_fit(rows, self.exp.registry.max_latency_ms)

    def champion(self, rows: list[dict]) -> tuple[list[dict], dict | None]:
        """The final run (the best trial trained again) and the ensemble join the trials."""
        exp, record = self.exp, self.sweep_record
        budget = exp.registry.max_latency_ms
        best_trial = champion_row(trial_rows(rows), budget, self.min_improvement)
        if best_trial and exp.tuner.final_epochs:
            trial = best_trial  # a name of its own for the lambda
            final = lambda: train_final(exp, record, trial, self.say, self.final_epochs_for)  # noqa: E731
            if _end_step("the final run", final, self.say):
                rows = self.leaderboard()
        ensemble = lambda: log_ensemble(exp, record, rows, self.say)  # noqa: E731
        if exp.registry.ensemble > 1 and _end_step("the ensemble", ensemble, self.say):
            rows = self.leaderboard()
        return rows, champion_row(rows, budget, self.min_improvement)

    def board(self, rows: list[dict]) -> Board:
        return localiser_board(rows)

    def best_figures(self) -> Sequence[str]:
        return vocab.BEST_FIGURES

    def pareto_pairs(self):
        return LOCALISER_PARETO

    def show(self, rows: list[dict], board: Board) -> None:
        """Nothing here: `petloc.search.summary` prints the sweep's leaderboard."""

    def nothing_finished(self, failed: int) -> None:
        raise PetlocError(
            f"sweep '{self.exp.name}': no trial finished ({failed} failed); see the FAILED runs' "
            "'error' tags in petloc ui"
        )

    def promote(self, best: dict | None) -> registry.Promotion:
        exp = self.exp
        max_latency_ms = exp.registry.max_latency_ms
        if best is None:
            return registry.Promotion(
                exp.registry.name,
                None,
                False,
                f"no trial's batch-1 latency fits registry.max_latency_ms={max_latency_ms:g}; nothing promoted",
            )
        return registry.promote(
            best["run_id"],
            exp.registry.name,
            exp.registry.alias,
            register_when_not_better=exp.registry.register_when_not_better,
            max_latency_ms=max_latency_ms,
            min_improvement=self.min_improvement,
        )

    def announce(self, promotion, links) -> None:
        """Nothing here: `petloc.search.summary` prints the promotion and the links."""


def _end_step(what: str, step: Callable[[], str | None], say: Callable[[str], None]) -> str | None:
    """An extra candidate at the sweep's end (its run ID, or None); when it fails, one line,
    and the leaderboard and the promotion of the trials go on without it."""
    try:
        return step()
    # Its run ended FAILED with the reason; Ctrl+C still stops the sweep.
    except Exception as err:  # noqa: BLE001  (whatever fails an extra candidate leaves the trials' results)
        stopping.raise_stop_behind(err)  # ... also one that a library turned into its own error
        first = str(err).splitlines()[0] if str(err) else ""
        say(f"{what} failed, the sweep ends without it: {type(err).__name__}: {first}")
        return None


def mark_latency_fit(rows: list[dict], max_latency_ms: float | None) -> list[dict]:
    """With a latency budget, each leaderboard row says whether its trial fits it."""
    if max_latency_ms is None:
        return rows
    return [{**row, "fits_budget": "yes" if _fits(row, max_latency_ms) else "no"} for row in rows]


def _fits(row: dict, max_latency_ms: float | None) -> bool:
    latency = row.get(vocab.LATENCY_MS_B1)
    return max_latency_ms is None or (
        isinstance(latency, (int, float)) and latency <= max_latency_ms
    )


def _standing(row: dict) -> ties.Standing | None:
    score, latency = row.get(vocab.BEST_VAL_MIOU), row.get(vocab.LATENCY_MS_B1)
    if not isinstance(score, (int, float)):
        return None
    return ties.Standing(score, latency if isinstance(latency, (int, float)) else None)


def ranked_rows(rows: list[dict], min_improvement: float) -> list[dict]:
    """The leaderboard's order, the champion first: val mIoU, where differences at or below
    `min_improvement` (registry.min_improvement) are ties that the lower batch-1 latency
    wins: the rows within min_improvement of the best val mIoU, the fastest first, then the
    other rows by val mIoU (`petloc.tracking.ties.ranked`)."""
    return ties.ranked(rows, _standing, min_improvement)


def champion_row(
    rows: list[dict], max_latency_ms: float | None, min_improvement: float = 0.0
) -> dict | None:
    """The first of the trials that fit the latency budget, ranked as the leaderboard is
    (`ranked_rows`) among themselves: a trial over the budget ties with none."""
    fitting = [row for row in rows if _fits(row, max_latency_ms)]
    return next(iter(ranked_rows(fitting, min_improvement)), None)
