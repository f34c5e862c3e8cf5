"""Any tracked search's parent run as its report, as petloc's own sweep has it: the search's
own hyperparameters as the leaderboard's columns and the pictures' axes, ranked by its own
objective and direction (here val_loss, lower is better). On a SearchRecord whose trial runs
are written directly to a real SQLite store (no search around them)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from petloc.tracking import runs, sweep_report
from petloc.tracking import vocabulary as vocab
from petloc.tracking.registry import Promotion
from petloc.tracking.search_record import SearchRecord
from petloc.tracking.store import configure
from petloc.tracking.sweep_report import Board
from petloc.training import search_plots
from tests.helpers import in_project

TRIALS = [  # units, lr -> val_loss, in the order the trials ran
    (8, 0.001, 0.9),
    (16, 0.01, 0.5),
    (32, 0.001, 0.7),
    (16, 0.0001, 0.3),
]
HEAD = "Keras Tuner search 'digits' (RandomSearchOracle, up to 4 trials, val_loss min)"
BOARD = Board.tracked(["units", "lr"], "val_loss", "min")


@dataclass
class Reported:
    """A search's parent run with its four trials, once its report is logged."""

    record: SearchRecord
    client: MlflowClient
    rows: list[dict]
    note: str  # the description the report wrote
    said: list[str]  # what the report said (its warnings)
    best_so_far: Figure  # the best-so-far picture, as drawn
    root: Path  # a folder to download artifacts into


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Iterator[Reported]:
    root = tmp_path_factory.mktemp("search")
    drawn = []

    def kept(fig, path, *args, **kwargs):
        drawn.append(fig)
        return save_figure(fig, path, *args, **kwargs)

    save_figure = search_plots.save_figure
    with in_project(root), pytest.MonkeyPatch.context() as mp:
        client = MlflowClient(configure())
        record = SearchRecord.create_parent(runs.experiment_id("digits"), "search-digits", {})
        record.set_tags({vocab.NOTE: HEAD})
        for i, (units, lr, loss) in enumerate(TRIALS):
            run_id = record.trial_run(str(i), f"trial-{i}", {})
            mlflow.log_params({"units": units, "lr": lr}, run_id=run_id)
            mlflow.log_metric("val_loss", loss, run_id=run_id)
            client.set_terminated(run_id)
        # ranked as TrackedTuner ranks a min objective: the lowest first
        rows = sorted(record.finished_trials(["units", "lr"], ["val_loss"]), key=by_loss)
        mp.setattr(search_plots, "save_figure", kept)
        said: list[str] = []
        record.log_report(rows, BOARD, said.append)
        mp.undo()
        figure = next(f for f in drawn if "so far" in f.get_suptitle())
        yield Reported(record, client, rows, note_of(record, client), said, figure, root)


def by_loss(row: dict) -> float:
    return row["val_loss"]


def note_of(record: SearchRecord, client: MlflowClient) -> str:
    return client.get_run(record.parent_run_id).data.tags["mlflow.note.content"]


def test_the_description_ranks_by_the_search_s_objective_with_its_hyperparameters_as_columns(
    reported,
):
    assert reported.said == []
    note = reported.note
    assert note.startswith(
        HEAD + "\n\n**Leaderboard** (champion first: by val_loss, the lower first;"
    )
    lines = note.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| trial |"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == [
        "trial",
        "units",
        "lr",
        "val_loss",
    ]
    table = lines[header + 2 : header + 2 + len(TRIALS)]
    assert [re.findall(r"^\| \[(\d+)\]", line)[0] for line in table] == ["3", "1", "2", "0"]
    assert "**Registry:**" not in note  # no promotion: no line
    assert (
        "**Pictures** (Artifacts tab): parallel_coordinates.html, parallel_coordinates.png, "
        "importance.png, best_so_far.png."
    ) in note


def test_a_refused_promotion_is_one_registry_line(reported):
    record, client, rows = reported.record, reported.client, reported.rows
    refused = Promotion("my-model", None, False, "nothing promoted: no model logged")
    said: list[str] = []
    record.describe(rows, BOARD, refused, said.append)
    assert said == []
    assert note_of(record, client).endswith(
        "**Registry:** nothing promoted: no model logged"
        + (
            "\n\n**Pictures** (Artifacts tab): parallel_coordinates.html, parallel_coordinates.png, "
            "importance.png, best_so_far.png."
        )
    )


def test_the_table_and_the_pictures_are_the_search_s_own(reported):
    record, client, root = reported.record, reported.client, reported.root
    run_id = record.parent_run_id
    experiment = client.get_run(run_id).info.experiment_id
    table = client.load_table(experiment, sweep_report.TABLE_FILE, run_ids=[run_id])
    assert list(table.columns) == ["trial", "units", "lr", "val_loss", "run_id"]
    assert list(table["val_loss"]) == pytest.approx([0.3, 0.5, 0.7, 0.9])

    page = Path(
        client.download_artifacts(run_id, sweep_report.PARALLEL_HTML, str(root))
    ).read_text()
    assert '"label":"units"' in page and '"label":"lr (log)"' in page
    assert '"label":"val_loss"' in page
    found = json.loads(
        Path(client.download_artifacts(run_id, sweep_report.IMPORTANCE_JSON, str(root))).read_text()
    )
    assert found["objective"] == "val_loss" and found["trials"] == len(TRIALS)
    assert {r["hyperparameter"] for r in found["importance"]} == {"units", "lr"}


def test_the_best_so_far_of_a_min_objective_is_the_running_minimum(reported):
    by_trial = reported.best_so_far.axes[0]
    best = next(line for line in by_trial.get_lines() if line.get_label() == "best so far")
    assert list(best.get_ydata()) == pytest.approx([0.9, 0.5, 0.5, 0.3])
    assert by_trial.get_ylabel() == "val_loss"


def test_a_measured_latency_breaks_ties_and_a_max_objective_ranks_the_higher_first():
    board = Board.tracked(["units"], "val_accuracy", "max", ["latency_ms_b1"])
    assert board.columns == ("trial", "units", "val_accuracy", "latency_ms_b1", "run_id")
    assert board.order == (
        "champion first: val_accuracy within min_improvement of the best ranked by "
        "latency_ms_b1, then by val_accuracy, the higher first"
    )
