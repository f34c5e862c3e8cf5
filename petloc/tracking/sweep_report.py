"""A sweep's parent run as its report: the description the MLflow UI shows first (the
leaderboard in Markdown, each trial a link to its run, the registry's answer a link to the
version) and the search's pictures and table among its artifacts.

Nothing here may fail a sweep whose trials are done: a picture that cannot be drawn is one
warning line, and the rest is still logged."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mlflow.tracking import MlflowClient

from petloc import report, stopping
from petloc.tracking import log, runs, store, sweep_record, ui_links
from petloc.tracking import vocabulary as vocab
from petloc.training import search_plots

# The parent run's artifacts, beside leaderboard.csv/.md and pareto.csv/.png.
TABLE_FILE = "leaderboard.json"  # the leaderboard as an MLflow table (mlflow.load_table reads it)
PARALLEL_HTML, PARALLEL_PNG = "parallel_coordinates.html", "parallel_coordinates.png"
IMPORTANCE_JSON, IMPORTANCE_PNG = "importance.json", "importance.png"
BEST_SO_FAR_PNG = "best_so_far.png"
PICTURES = (PARALLEL_HTML, PARALLEL_PNG, IMPORTANCE_PNG, BEST_SO_FAR_PNG, "pareto.png")

# An MLflow tag holds at most 8000 characters; the description keeps a margin below that.
MAX_DESCRIPTION = 7500
NOT_HYPERPARAMETERS = ("trial", "run_id", "fits_budget")
OBJECTIVE_LABEL = "val mIoU"
BUDGET = "registry.max_latency_ms"
Say = Callable[[str], None]


def hyperparameters(rows: list[dict]) -> list[str]:
    """The leaderboard's hyperparameter columns that the finished trials vary: the params
    among its columns, and the extra searched ones (a constant one says nothing)."""
    if not rows:
        return []
    figures = {c for c, key in sweep_record.LEADERBOARD_COLUMNS if not key.startswith("params.")}
    names = [c for c in rows[0] if c not in figures and c not in NOT_HYPERPARAMETERS]
    return [n for n in names if len({str(row.get(n, "")) for row in rows}) > 1]


# ---- the description -------------------------------------------------------------------


def description(
    head: str,
    rows: list[dict],
    experiment_id: str,
    promotion=None,
    logged: frozenset[str] = frozenset(),
) -> str:
    """`head` (what the sweep is), the leaderboard with each trial linked to its run, and the
    registry's answer (`promotion`, a registry.Promotion) linked to its version, and which of
    the pictures the run's artifacts hold (`logged`: their paths). Rows that do
    not fit in a tag are left out, worst first, and counted."""
    columns = [c for c in sweep_record.leaderboard_columns(rows) if c != "run_id"]
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
            f"{head}\n\n**Leaderboard** ({_order(rows)}; a trial links to its run):"
            f"\n\n{table or 'No finished trials.'}{more}{tail}"
        )
        if len(text) <= MAX_DESCRIPTION:
            return text
    return head[:MAX_DESCRIPTION]


def _order(rows: list[dict]) -> str:
    """The leaderboard's order in words (`petloc.search.sweep.ranked_rows`); under a latency
    budget (a `fits_budget` column) the champion is ranked among the trials that fit, and
    may not be first."""
    rule = (
        f"{OBJECTIVE_LABEL} within registry.min_improvement of the best ranked by batch-1 "
        f"latency, then by {OBJECTIVE_LABEL}"
    )
    if any("fits_budget" in row for row in rows):
        return f"{rule}; the champion: the first by that rule of those that fit {BUDGET}"
    return f"champion first: {rule}"


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
    """The description's first paragraph: what the sweep is, as its parent run's start wrote it."""
    return note.split("\n\n", 1)[0]


# ---- the artifacts ---------------------------------------------------------------------


def log_table(client: MlflowClient, run_id: str, rows: list[dict]) -> None:
    """The leaderboard as an MLflow table. log_table appends to a table already there, so a
    refresh (a resumed sweep) overwrites the file in the same format instead."""
    frame = report.frame(rows, sweep_record.leaderboard_columns(rows))
    if TABLE_FILE not in {f.path for f in client.list_artifacts(run_id)}:
        client.log_table(run_id, frame, TABLE_FILE)
        return
    with log.scratch_dir() as tmp:
        path = Path(tmp) / TABLE_FILE
        frame.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path))


def log_pictures(client: MlflowClient, run_id: str, rows: list[dict], say: Say) -> None:
    """The search's pictures from its own trials (not the final run or the ensemble); each
    one that fails is a warning line, and the others are still drawn."""
    objective = vocab.BEST_VAL_MIOU  # the leaderboard's columns are the runs' metric names
    trials = [r for r in vocab.trial_rows(rows) if _is_number(r.get(objective))]
    if not trials:
        return
    names = hyperparameters(trials)
    with log.scratch_dir() as tmp:
        folder = Path(tmp)
        pictures: dict[str, Callable[[], list[Path]]] = {
            "parallel coordinates": lambda: _parallel(folder, trials, names, objective),
            "hyperparameter importance": lambda: _importance(folder, trials, names, objective),
            "best so far": lambda: _best_so_far(client, run_id, folder, trials, objective),
        }
        for what, draw in pictures.items():
            guarded(f"the sweep's {what} picture", partial(_log, client, run_id, draw), say)


def _log(client: MlflowClient, run_id: str, draw: Callable[[], list[Path]]) -> None:
    for path in draw():
        client.log_artifact(run_id, str(path))


def guarded(what: str, step: Callable[[], object], say: Say) -> None:
    """`step`, whose failure is one warning line: the sweep's results are already recorded."""
    try:
        step()
    except Exception as err:  # noqa: BLE001  (a picture or a description is never worth the sweep)
        stopping.raise_stop_behind(err)  # Ctrl+C that a library turned into its own error
        say(f"warning: {what} was not logged: {type(err).__name__}: {store.first_line(err)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parallel(folder: Path, trials: list[dict], names: list[str], objective: str) -> list[Path]:
    if len(trials) < 2 or not names:
        return []
    return [
        search_plots.parallel_coordinates_html(
            trials, names, objective, OBJECTIVE_LABEL, folder / PARALLEL_HTML
        ),
        search_plots.parallel_coordinates_png(
            trials, names, objective, OBJECTIVE_LABEL, folder / PARALLEL_PNG
        ),
    ]


def _importance(folder: Path, trials: list[dict], names: list[str], objective: str) -> list[Path]:
    found = search_plots.importance(trials, names, objective, OBJECTIVE_LABEL)
    if found is None:
        return []
    path = folder / IMPORTANCE_JSON
    path.write_text(json.dumps(found, indent=2) + "\n")
    return [path, search_plots.plot_importance(found, folder / IMPORTANCE_PNG)]


def _best_so_far(
    client: MlflowClient, run_id: str, folder: Path, trials: list[dict], objective: str
) -> list[Path]:
    """The trials in the order they started, each at the minute it ended (from the sweep's start)."""
    started = client.get_run(run_id).info.start_time
    ended = {r.info.run_id: r.info for r in runs.child_runs(run_id, sweep_record.FINISHED)}
    points = sorted(
        (
            {
                "start": ended[t["run_id"]].start_time,
                "minutes": (ended[t["run_id"]].end_time - started) / 60_000,
                "objective": float(t[objective]),
            }
            for t in trials
            if t["run_id"] in ended
        ),
        key=lambda p: p["start"],
    )
    return [search_plots.plot_best_so_far(points, OBJECTIVE_LABEL, folder / BEST_SO_FAR_PNG)]
