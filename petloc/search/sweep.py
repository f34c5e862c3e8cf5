"""`petloc sweep`: one parent MLflow run around a Keras Tuner search, a leaderboard at the
end, and the winner offered to the registry.

A sweep's state lives in `mlruns/tuner/<name>/` (`petloc.search.state`); running the same
sweep again continues it, `--fresh` starts over. Its runs are recorded through
`petloc.tracking.sweep_record`. Across processes and machines (`petloc.search.distributed`, `chief.py`, `worker.py`),
the chief holds the state and the oracle; workers learn the parent run from the chief itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from petloc import stopping
from petloc.config import Experiment
from petloc.errors import PetlocError
from petloc.search.ensemble import log_ensemble
from petloc.search.final import train_final
from petloc.search.state import sweep_state
from petloc.search.time_budget import TimeBudgetedOracle
from petloc.search.tuner import SweepTuner
from petloc.tracking import registry, ties
from petloc.tracking import vocabulary as vocab
from petloc.tracking.sweep_record import SweepRecord, searched
from petloc.tracking.ui_links import SweepLinks
from petloc.tracking.vocabulary import trial_rows
from petloc.training.dataset import PreparedData, prepare_data


@dataclass
class SweepResult:
    parent_run_id: str
    leaderboard: list[dict]
    promotion: registry.Promotion | None
    failed: int
    links: SweepLinks | None = None  # the parent run, the best run and its version in the UI


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


def failed_trials(oracle) -> int:
    """Failed trials as the oracle counts them, this run and earlier ones of the sweep."""
    return sum(trial.status == "FAILED" for trial in oracle.trials.values())


def finish(
    exp: Experiment,
    record: SweepRecord,
    failed: int,
    stopped: str | None,
    say: Callable[[str], None],
    time_budget: TimeBudgetedOracle | None = None,
) -> SweepResult:
    """Leaderboard and promotion under the parent run once the trials are over; raises when
    no trial finished. `time_budget`: the sweep's time budget, whose rest a final run fills
    with `tuner.fill_budget`."""
    epochs_for = time_budget.final_epochs_for if time_budget and exp.tuner.fill_budget else None
    max_latency_ms, min_improvement = exp.registry.max_latency_ms, exp.registry.min_improvement

    def ranked() -> list[dict]:
        rows = ranked_rows(record.leaderboard(searched(exp)), min_improvement)
        return mark_latency_fit(rows, max_latency_ms)

    rows = ranked()
    best_trial = champion_row(trial_rows(rows), max_latency_ms, min_improvement)
    if (
        exp.tuner.final_epochs
        and best_trial
        and _end_step(
            "the final run", lambda: train_final(exp, record, best_trial, say, epochs_for), say
        )
    ):
        rows = ranked()
    if exp.registry.ensemble > 1 and _end_step(
        "the ensemble", lambda: log_ensemble(exp, record, rows, say), say
    ):
        rows = ranked()
    best = champion_row(rows, max_latency_ms, min_improvement)
    record.log_leaderboard(rows, failed, best)
    record.log_pareto(rows)
    record.log_report(rows, say)
    if stopped:
        say(f"sweep {stopped}")
    if not rows:
        raise PetlocError(
            f"sweep '{exp.name}': no trial finished ({failed} failed); see the FAILED runs' 'error' tags in petloc ui"
        )
    if best is None:
        promotion = registry.Promotion(
            exp.registry.name,
            None,
            False,
            f"no trial's batch-1 latency fits registry.max_latency_ms={max_latency_ms:g}; nothing promoted",
        )
    else:
        promotion = registry.promote(
            best["run_id"],
            exp.registry.name,
            exp.registry.alias,
            register_when_not_better=exp.registry.register_when_not_better,
            max_latency_ms=max_latency_ms,
            min_improvement=min_improvement,
        )
    record.set_promotion(promotion.reason)
    record.describe(rows, promotion, say)
    links = record.links(best["run_id"] if best else None, promotion)
    return SweepResult(record.parent_run_id, rows, promotion, failed, links)


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
