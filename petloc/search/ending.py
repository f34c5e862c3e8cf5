"""How every tracked search ends, once its trials are over: one sequence (`finish_search`),
the same for any Keras Tuner search (`SearchEnd`) and for petloc's own sweep
(`petloc.search.sweep.SweepEnd`, which adds its end runs, its latency budget and its
leaderboard's columns): the leaderboard ranked and logged, the Pareto front, the report on
the parent run, the champion offered to the registry, the links to it all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from petloc import report
from petloc.tracking import registry, ties
from petloc.tracking import vocabulary as vocab
from petloc.tracking.search_record import SearchRecord
from petloc.tracking.sweep_report import Board
from petloc.tracking.ui_links import SweepLinks

Pair = tuple[str, str]  # a figure and its direction (vocab.MAX or vocab.MIN)


@dataclass
class SearchResult:
    """What a tracked search ended with."""

    parent_run_id: str
    leaderboard: list[dict]
    promotion: registry.Promotion | None
    failed: int
    links: SweepLinks | None = None  # the parent run, the best run and its version in the UI
    columns: list[str] = field(default_factory=list)


@dataclass
class SearchEnd:
    """The end of a tracked search of any Keras Tuner HyperModel (`petloc.TrackedTuner`):
    each step a method, for petloc's own sweep to change."""

    record: SearchRecord
    objective: Pair  # the objective metric and its direction
    hyperparameters: Sequence[str]
    figures: Sequence[str]  # measured beside the objective (latency, the Pareto figure)
    pareto: Pair | None  # the figure the objective is drawn against
    registry_name: str | None
    alias: str
    min_improvement: float
    say: Callable[[str], None]
    name: str = ""  # the search's, as its lines name it
    noun = "search"  # what the lines call it

    def standing(self, row: dict) -> ties.Standing | None:
        """A row's place by the objective, its direction folded in (higher is better)."""
        name, direction = self.objective
        score, latency = row.get(name), row.get(vocab.LATENCY_MS_B1)
        if not isinstance(score, (int, float)):
            return None
        sign = 1.0 if direction == vocab.MAX else -1.0
        return ties.Standing(sign * score, latency if isinstance(latency, (int, float)) else None)

    def leaderboard(self) -> list[dict]:
        """The finished trials, the champion first (`petloc.tracking.ties.ranked`)."""
        rows = self.record.finished_trials(self.hyperparameters, [self.objective[0], *self.figures])
        return ties.ranked(rows, self.standing, self.min_improvement)

    def champion(self, rows: list[dict]) -> tuple[list[dict], dict | None]:
        """The leaderboard with any end runs added, and the row offered to the registry."""
        return rows, (rows[0] if rows else None)

    def board(self, rows: list[dict]) -> Board:
        return Board.tracked(self.hyperparameters, *self.objective, self.figures)

    def best_figures(self) -> Sequence[str]:
        """The figures the parent run takes from its best row."""
        return [self.objective[0], *self.figures]

    def pareto_pairs(self) -> tuple[Pair, Pair] | None:
        return (self.objective, self.pareto) if self.pareto is not None else None

    def show(self, rows: list[dict], board: Board) -> None:
        table = report.table(rows, list(board.columns))
        self.say(
            f"\nleaderboard of {self.noun} '{self.name}' ({board.order}):\n{table}"
            if table
            else "no trial finished"
        )

    def nothing_finished(self, failed: int) -> None:
        """A search whose trials all failed ends with its parent run, and no promotion."""

    def promote(self, best: dict | None) -> registry.Promotion | None:
        if self.registry_name is None or best is None:
            return None
        if not self.record.run(best["run_id"]).data.tags.get(vocab.MODEL_URI):
            self.say(
                f"registry: nothing promoted: the best trial ({best['trial']}) logged no model; "
                "its training saved no Keras Tuner checkpoint (a run_trial or fit of your own "
                "that does not pass on the search's callbacks), or its validation data was a generator"
            )
            return None
        return registry.promote(
            best["run_id"], self.registry_name, self.alias, min_improvement=self.min_improvement
        )

    def announce(self, promotion: registry.Promotion | None, links: SweepLinks) -> None:
        if promotion is not None:
            self.say(f"registry: {promotion.reason}")
        for line in links.lines():
            self.say(line)


def failed_trials(oracle) -> int:
    """Failed trials as the oracle counts them, this run and earlier ones of the search
    (Keras Tuner's INVALID trials become FAILED once their retries are spent)."""
    return sum(trial.status == "FAILED" for trial in oracle.trials.values())


def finish_search(end: SearchEnd, failed: int, stopped: str | None = None) -> SearchResult:
    """The search's end: leaderboard, Pareto front, report, promotion. `failed`: the failed
    trials; `stopped`: why the search stopped before its planned trials, if it did."""
    rows, best = end.champion(end.leaderboard())
    board = end.board(rows)
    record = end.record
    record.log_leaderboard_files(rows, list(board.columns))
    # Without a champion (none fits a latency budget) the parent shows the top row's figures.
    top = best if best is not None else (rows[0] if rows else None)
    record.log_outcome(top, end.best_figures(), len(vocab.trial_rows(rows)), failed)
    pairs = end.pareto_pairs()
    if pairs is not None and rows:
        record.log_pareto(rows, *pairs)
    end.show(rows, board)
    record.log_report(rows, board, end.say)
    if stopped:
        end.say(f"{end.noun} {stopped}")
    if not rows:
        end.nothing_finished(failed)
    promotion = end.promote(best)
    if promotion is not None:
        record.set_promotion(promotion.reason)
    record.describe(rows, board, promotion, end.say)
    links = record.links(best["run_id"] if best else None, promotion)
    end.announce(promotion, links)
    return SearchResult(record.parent_run_id, rows, promotion, failed, links, list(board.columns))
