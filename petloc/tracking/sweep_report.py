"""A search's parent run as its report: the description the MLflow UI shows first (the
leaderboard in Markdown, each trial a link to its run, the registry's answer a link to the
version) and the search's pictures and table among its artifacts. For any tracked search: a
`Board` says what its leaderboard is (columns, hyperparameters, objective and direction);
petloc's sweep passes the localiser's (`petloc.tracking.sweep_record.localiser_board`).

Nothing here may fail a sweep whose trials are done: a picture that cannot be drawn is one
warning line, and the rest is still logged."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from petloc import report, stopping
from petloc.tracking import log, store, ui_links
from petloc.tracking import vocabulary as vocab
from petloc.training import search_plots

if TYPE_CHECKING:
    from petloc.tracking.search_record import SearchRecord

# The parent run's artifacts, beside leaderboard.csv/.md and pareto.csv/.png.
TABLE_FILE = "leaderboard.json"  # the leaderboard as an MLflow table (mlflow.load_table reads it)
PARALLEL_HTML, PARALLEL_PNG = "parallel_coordinates.html", "parallel_coordinates.png"
IMPORTANCE_JSON, IMPORTANCE_PNG = "importance.json", "importance.png"
BEST_SO_FAR_PNG = "best_so_far.png"
PICTURES = (PARALLEL_HTML, PARALLEL_PNG, IMPORTANCE_PNG, BEST_SO_FAR_PNG, "pareto.png")

# An MLflow tag holds at most 8000 characters; the description keeps a margin below that.
MAX_DESCRIPTION = 7500
BETTER_FIRST = {vocab.MAX: "the higher first", vocab.MIN: "the lower first"}
Say = Callable[[str], None]


@dataclass(frozen=True)
class Board:
    """What a search's leaderboard is, for its report."""

    columns: tuple[str, ...]  # the leaderboard's columns, run_id last
    hyperparameters: tuple[str, ...]  # those of its columns a trial's hyperparameters fill
    objective: str  # the run metric it is ranked by (a column)
    direction: str  # vocab.MAX or vocab.MIN
    label: str  # the objective in the pictures ("val mIoU")
    order: str  # its order in words, as the description says it

    @property
    def lower_is_better(self) -> bool:
        return self.direction == vocab.MIN

    @classmethod
    def tracked(
        cls,
        hyperparameters: Sequence[str],
        objective: str,
        direction: str,
        figures: Sequence[str] = (),
    ) -> Board:
        """A tracked search's board (`petloc.search.tracked.TrackedTuner.finish`): the trial,
        its hyperparameters, the objective and the extra `figures` as columns, ranked as
        `TrackedTuner.standing` ranks (objectives within min_improvement of the best: the
        lower batch-1 latency first, when it is measured)."""
        by_latency = (
            f"{objective} within min_improvement of the best ranked by {vocab.LATENCY_MS_B1}, then "
            if vocab.LATENCY_MS_B1 in figures
            else ""
        )
        return cls(
            ("trial", *hyperparameters, objective, *figures, "run_id"),
            tuple(hyperparameters),
            objective,
            direction,
            objective,
            f"champion first: {by_latency}by {objective}, {BETTER_FIRST[direction]}",
        )


def varied(trials: list[dict], names: Sequence[str]) -> list[str]:
    """The hyperparameters among `names` that the trials vary (a constant one says nothing)."""
    return [n for n in names if len({str(row.get(n, "")) for row in trials}) > 1]


# ---- the description -------------------------------------------------------------------


def description(
    head: str,
    rows: list[dict],
    board: Board,
    experiment_id: str,
    promotion=None,
    logged: frozenset[str] = frozenset(),
) -> str:
    """`head` (what the search is), the leaderboard (`board`'s columns) with each trial
    linked to its run, and the registry's answer (`promotion`, a registry.Promotion) linked
    to its version, and which of the pictures the run's artifacts hold (`logged`: their
    paths). Rows that do not fit in a tag are left out, worst first, and counted."""
    columns = [c for c in board.columns if c != "run_id"]
    linked = [
        {
            **{c: _cell(row.get(c, "")) for c in columns},
            "trial": f"[{row['trial']}]({ui_links.run_route(experiment_id, row['run_id'])})",
        }
        for row in rows
    ]
    tail = _registry_line(promotion) + _artifacts_line(logged)
    for shown in range(len(linked), -1, -1):
        left_out = len(linked) - shown
        more = f"\n\n{left_out} more in leaderboard.csv." if left_out else ""
        table = report.table(linked[:shown], columns, markdown=True, same_decimals=True)
        text = (
            f"{head}\n\n**Leaderboard** ({board.order}; a trial links to its run):"
            f"\n\n{table or 'No finished trials.'}{more}{tail}"
        )
        if len(text) <= MAX_DESCRIPTION:
            return text
    return head[:MAX_DESCRIPTION]


def _cell(value):
    return value.replace("|", "\\|") if isinstance(value, str) else value


def _registry_line(promotion) -> str:
    if promotion is None:
        return ""
    if promotion.version is None:
        return f"\n\n**Registry:** {promotion.reason}"
    held = "the champion" if promotion.champion else "registered, not the champion"
    link = ui_links.version_route(promotion.name, promotion.version)
    return (
        f"\n\n**Registry:** [{promotion.name} version {promotion.version}]({link}) ({held}): "
        f"{promotion.reason}"
    )


def _artifacts_line(logged: frozenset[str]) -> str:
    shown = [name for name in PICTURES if name in logged]
    if not shown:
        return ""
    return f"\n\n**Pictures** (Artifacts tab): {', '.join(shown)}."


def head_of(note: str) -> str:
    """The description's first paragraph: what the search is, as its parent run's start wrote it."""
    return note.split("\n\n", 1)[0]


# ---- the artifacts ---------------------------------------------------------------------


def log_table(record: SearchRecord, rows: list[dict], board: Board) -> None:
    """The leaderboard as an MLflow table. log_table appends to a table already there, so a
    refresh (a resumed sweep) overwrites the file in the same format instead."""
    client, run_id = record.client, record.parent_run_id
    frame = report.frame(rows, list(board.columns))
    if TABLE_FILE not in {f.path for f in client.list_artifacts(run_id)}:
        client.log_table(run_id, frame, TABLE_FILE)
        return
    with log.scratch_dir() as tmp:
        path = Path(tmp) / TABLE_FILE
        frame.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path))


def log_pictures(record: SearchRecord, rows: list[dict], board: Board, say: Say) -> None:
    """The search's pictures from its own trials (not the final run or the ensemble), on
    `board`'s objective (a column: the runs' metric name); each one that fails is a warning
    line, and the others are still drawn."""
    trials = [r for r in vocab.trial_rows(rows) if _is_number(r.get(board.objective))]
    if not trials:
        return
    names = varied(trials, board.hyperparameters)
    with log.scratch_dir() as tmp:
        folder = Path(tmp)
        pictures: dict[str, Callable[[], list[Path]]] = {
            "parallel coordinates": lambda: _parallel(folder, trials, names, board),
            "hyperparameter importance": lambda: _importance(folder, trials, names, board),
            "best so far": lambda: _best_so_far(record, folder, trials, board),
        }
        for what, draw in pictures.items():
            guarded(f"the sweep's {what} picture", partial(_log, record, draw), say)


def _log(record: SearchRecord, draw: Callable[[], list[Path]]) -> None:
    for path in draw():
        record.client.log_artifact(record.parent_run_id, str(path))


def guarded(what: str, step: Callable[[], object], say: Say) -> None:
    """`step`, whose failure is one warning line: the sweep's results are already recorded."""
    try:
        step()
    except Exception as err:  # noqa: BLE001  (a picture or a description is never worth the sweep)
        stopping.raise_stop_behind(err)  # Ctrl+C that a library turned into its own error
        say(f"warning: {what} was not logged: {type(err).__name__}: {store.first_line(err)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parallel(folder: Path, trials: list[dict], names: list[str], board: Board) -> list[Path]:
    if len(trials) < 2 or not names:
        return []
    drawn = {
        PARALLEL_HTML: search_plots.parallel_coordinates_html,
        PARALLEL_PNG: search_plots.parallel_coordinates_png,
    }
    return [
        draw(trials, names, board.objective, board.label, folder / name, board.lower_is_better)
        for name, draw in drawn.items()
    ]


def _importance(folder: Path, trials: list[dict], names: list[str], board: Board) -> list[Path]:
    """Importance for the objective as it is (whichever way is better, what moves it)."""
    found = search_plots.importance(trials, names, board.objective, board.label)
    if found is None:
        return []
    path = folder / IMPORTANCE_JSON
    path.write_text(json.dumps(found, indent=2) + "\n")
    return [path, search_plots.plot_importance(found, folder / IMPORTANCE_PNG)]


def _best_so_far(
    record: SearchRecord, folder: Path, trials: list[dict], board: Board
) -> list[Path]:
    """The trials in the order they started, each at the minute it ended (from the sweep's
    start); the best so far by `board`'s direction."""
    started = record.started()
    ended = {r.info.run_id: r.info for r in record.finished_runs().values()}
    points = sorted(
        (
            {
                "start": ended[t["run_id"]].start_time,
                "minutes": (ended[t["run_id"]].end_time - started) / 60_000,
                "objective": float(t[board.objective]),
            }
            for t in trials
            if t["run_id"] in ended
        ),
        key=lambda p: p["start"],
    )
    path = folder / BEST_SO_FAR_PNG
    return [search_plots.plot_best_so_far(points, board.label, path, board.lower_is_better)]
