"""A sweep's parent run as its report: the linked leaderboard as its description, the search's
pictures and table among its artifacts, and its pages' URLs. On a SweepRecord whose trial
runs are written directly to a real SQLite store (no search around them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from petloc.search.summary import sweep_summary
from petloc.search.sweep import SweepResult
from petloc.tracking import sweep_report, ui_links
from petloc.tracking.registry import Promotion
from petloc.tracking.sweep_record import SweepRecord, localiser_board
from petloc.training import search_plots
from tests.helpers import recorded_sweep

TRIALS = [  # head_units, learning_rate, backbone -> val mIoU
    (8, 0.001, "simple", 0.41),
    (16, 0.01, "simple", 0.55),
    (32, 0.001, "mobilenet", 0.62),
    (16, 0.0001, "mobilenet", 0.48),
]


@pytest.fixture
def sweep(tmp_path):
    with recorded_sweep(tmp_path) as (_exp, record, client):
        yield record, client, tmp_path


def add_trials(record: SweepRecord, client: MlflowClient, trials=TRIALS) -> None:
    for i, (units, rate, backbone, miou) in enumerate(trials):
        run_id = record.trial_run(str(i), f"trial-{i}", {})
        params = {"head_units": units, "learning_rate": rate, "backbone": backbone}
        params |= {"image_size": 32, "aug_strength": 0.2}
        mlflow.log_params(params, run_id=run_id)
        mlflow.log_metrics(
            {"best_val_miou": miou, "val_accuracy": 0.9, "latency_ms_b1": 10 * miou},
            run_id=run_id,
        )
        client.set_terminated(run_id)


def artifact(client: MlflowClient, run_id: str, name: str, into: Path) -> Path:
    return Path(client.download_artifacts(run_id, name, str(into)))


def test_the_description_is_the_leaderboard_each_trial_linked_and_the_version_linked(sweep):
    record, client, _ = sweep
    add_trials(record, client)
    rows = record.leaderboard()
    said: list[str] = []
    record.log_report(rows, localiser_board(rows), said.append)
    promotion = Promotion("my pets", "3", True, "registered as version 3, now the champion")
    record.describe(rows, localiser_board(rows), promotion, said.append)
    assert said == []

    parent = client.get_run(record.parent_run_id)
    note = parent.data.tags["mlflow.note.content"]
    experiment = parent.info.experiment_id
    assert note.startswith("Keras Tuner sweep 'tiny'")
    lines = note.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| trial |"))
    assert {"head_units", "learning_rate", "backbone"} <= {
        cell.strip() for cell in lines[header].split("|")
    }
    table = lines[header + 2 : header + 2 + len(TRIALS)]
    # best first, each trial's cell a link to its run in the UI
    assert [re.findall(r"^\| \[(\d+)\]\(([^)]+)\)", line)[0] for line in table] == [
        (row["trial"], f"#/experiments/{experiment}/runs/{row['run_id']}") for row in rows
    ]
    assert [row["trial"] for row in rows] == ["2", "1", "3", "0"]
    assert (
        "**Registry:** [my pets version 3](#/models/my%20pets/versions/3) (the champion): "
        "registered as version 3, now the champion"
    ) in note
    assert (
        "**Pictures** (Artifacts tab): parallel_coordinates.html, parallel_coordinates.png, "
        "importance.png, best_so_far.png."
    ) in note


def test_the_parent_run_logs_the_search_pictures_and_the_leaderboard_table(sweep):
    record, client, root = sweep
    add_trials(record, client)
    rows = record.leaderboard()
    said: list[str] = []
    record.log_report(rows, localiser_board(rows), said.append)
    assert said == []
    run_id = record.parent_run_id

    page = artifact(client, run_id, sweep_report.PARALLEL_HTML, root).read_text()
    assert "Plotly" in page and not re.search(r"<script[^>]+src=", page)  # works offline
    assert "mobilenet" in page and "learning_rate (log)" in page and "0.62" in page
    for picture in (
        sweep_report.PARALLEL_PNG,
        sweep_report.IMPORTANCE_PNG,
        sweep_report.BEST_SO_FAR_PNG,
    ):
        with Image.open(artifact(client, run_id, picture, root)) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100

    found = json.loads(artifact(client, run_id, sweep_report.IMPORTANCE_JSON, root).read_text())
    assert "permutation importance" in found["method"] and "random forest" in found["method"]
    assert "indicative" in found["method"] and found["trials"] == len(TRIALS)
    # image_size and aug_strength are the same in every trial: not searched here
    assert {r["hyperparameter"] for r in found["importance"]} == {
        "backbone",
        "head_units",
        "learning_rate",
    }

    # The table, as MLflow reads it back; logged again (a resumed sweep), replaced, not appended.
    experiment = client.get_run(run_id).info.experiment_id

    def table_of_run():
        return client.load_table(experiment, sweep_report.TABLE_FILE, run_ids=[run_id])

    table = table_of_run()
    objective = "best_val_miou"
    assert [str(t) for t in table["trial"]] == ["2", "1", "3", "0"]  # pandas reads "2" as 2
    assert list(table[objective]) == pytest.approx([0.62, 0.55, 0.48, 0.41])
    record.log_report(rows, localiser_board(rows), said.append)
    assert len(table_of_run()) == len(TRIALS)


def test_with_two_trials_there_is_no_importance_and_a_failing_picture_is_one_warning(
    sweep, monkeypatch
):
    record, client, _ = sweep
    add_trials(record, client, TRIALS[:2])

    def broken(*args, **kwargs):
        raise ValueError("no room to draw\nsecond line")

    monkeypatch.setattr(search_plots, "plot_best_so_far", broken)
    said: list[str] = []
    record.log_report(rows := record.leaderboard(), localiser_board(rows), said.append)
    assert said == [
        "warning: the sweep's best so far picture was not logged: ValueError: no room to draw"
    ]
    logged = {a.path for a in client.list_artifacts(record.parent_run_id)}
    assert {sweep_report.PARALLEL_HTML, sweep_report.PARALLEL_PNG} <= logged
    assert not {sweep_report.IMPORTANCE_JSON, sweep_report.IMPORTANCE_PNG} & logged
    note = client.get_run(record.parent_run_id).data.tags["mlflow.note.content"]
    assert note.count("](#/experiments/") == 2
    # it names only the pictures there are
    assert (
        "parallel_coordinates.png." in note and "importance" not in note and "best_so" not in note
    )


def test_a_long_leaderboard_fits_the_description_and_counts_what_it_leaves_out():
    rows = [
        {"trial": str(i), "backbone": "x" * 60, "val_miou": 0.5, "run_id": f"{i:032x}"}
        for i in range(200)
    ]
    text = sweep_report.description("head", rows, localiser_board(rows), "1")
    assert len(text) <= sweep_report.MAX_DESCRIPTION
    shown = text.count("](#/experiments/1/runs/")
    assert 10 < shown < 200 and f"{200 - shown} more in leaderboard.csv." in text


def test_the_description_says_the_leaderboard_s_order():
    rows = [{"trial": "0", "val_miou": 0.5, "run_id": "r0"}]
    assert (
        "**Leaderboard** (champion first: val mIoU within registry.min_improvement of the best "
        "ranked by batch-1 latency, then by val mIoU; a trial links to its run)"
    ) in sweep_report.description("head", rows, localiser_board(rows), "1")
    # under a latency budget the champion may not lead: it is ranked among the trials that fit
    budget_rows = [{**rows[0], "fits_budget": "no"}]
    budget = sweep_report.description("head", budget_rows, localiser_board(budget_rows), "1")
    assert (
        "champion first" not in budget
        and (
            "then by val mIoU; the champion: the first by that rule of those that fit "
            "registry.max_latency_ms;"
        )
        in budget
    )


def test_the_pages_are_urls_on_a_tracking_server_and_petloc_ui_s_otherwise(monkeypatch):
    promotion = (("petloc", "4"), True)
    monkeypatch.setattr(
        "petloc.tracking.store.tracking_uri", lambda: "https://ann:secret@mlflow.example:8443/"
    )
    on_server = ui_links.sweep_links("7", "p1", "r2", *promotion)
    assert on_server.command is None
    assert on_server.urls == {
        "sweep (parent run)": "https://mlflow.example:8443/#/experiments/7/runs/p1",
        "champion's run": "https://mlflow.example:8443/#/experiments/7/runs/r2",
        "model version": "https://mlflow.example:8443/#/models/petloc/versions/4",
    }
    monkeypatch.setattr("petloc.tracking.store.tracking_uri", lambda: "sqlite:///mlruns/mlflow.db")
    local = ui_links.sweep_links("7", "p1", "r2", None, False)
    assert local.command == "petloc ui"
    assert local.urls == {
        "sweep (parent run)": "http://127.0.0.1:5000/#/experiments/7/runs/p1",
        "best run": "http://127.0.0.1:5000/#/experiments/7/runs/r2",
    }

    rows = [{"trial": "0", "val_miou": 0.5, "run_id": "r2"}]
    lines = sweep_summary("tiny", SweepResult("p1", rows, None, 0, local), 3, "petloc@champion")
    at = lines.index("parent run p1")  # the links block says how to open them: said once
    assert sum("petloc ui" in line for line in lines) == 1
    assert lines[at + 1 : at + 4] == [
        "open in the MLflow UI once `petloc ui` runs:",
        "  sweep (parent run)  http://127.0.0.1:5000/#/experiments/7/runs/p1",
        "  best run            http://127.0.0.1:5000/#/experiments/7/runs/r2",
    ]
