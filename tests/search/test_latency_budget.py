"""Choosing under a latency budget: the champion is the best val mIoU among the trials whose
batch-1 latency fits; the leaderboard says which fit; the parent run holds the Pareto front."""

import csv

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from petloc.cli import cli
from petloc.config import load_experiment
from petloc.search.sweep import champion_row, finish, mark_latency_fit
from petloc.tracking import runs
from petloc.tracking.store import configure
from petloc.tracking.sweep_record import SweepRecord, pareto_front
from tests.helpers import in_project, tiny_dataset, tiny_experiment

ROWS = [  # a leaderboard, best val mIoU first: the most accurate trial is the slowest
    {"trial": 2, "best_val_miou": 0.80, "latency_ms_b1": 9.0, "run_id": "c"},
    {"trial": 0, "best_val_miou": 0.70, "latency_ms_b1": 3.0, "run_id": "a"},
    {"trial": 1, "best_val_miou": 0.60, "latency_ms_b1": 4.0, "run_id": "b"},
    {"trial": 3, "best_val_miou": 0.50, "latency_ms_b1": 1.0, "run_id": "d"},
]


def test_the_budget_excludes_the_most_accurate_trial():
    assert champion_row(ROWS, None)["run_id"] == "c"
    # c (9 ms) does not fit; a is the best that does
    assert champion_row(ROWS, 5.0)["run_id"] == "a"
    assert champion_row(ROWS, 0.5) is None
    assert [r["fits_budget"] for r in mark_latency_fit(ROWS, 5.0)] == ["no", "yes", "yes", "yes"]
    assert mark_latency_fit(ROWS, None) == ROWS


def _trial(record: SweepRecord, row: dict) -> str:
    """A finished trial run under the sweep's parent, as a trial leaves it: its figures,
    validation data and logged model."""
    client = record.client
    run_id = record.trial_run(str(row["trial"]), f"trial-{row['trial']}", {})
    metrics = {k: row[k] for k in ("best_val_miou", "latency_ms_b1")}
    mlflow.log_metrics(metrics, run_id=run_id)
    client.set_tag(run_id, "val_data", "digest=abc split=0.25 seed=0")
    experiment_id = client.get_run(run_id).info.experiment_id
    model = mlflow.initialize_logged_model(
        name=f"trial-{row['trial']}-simple", source_run_id=run_id, experiment_id=experiment_id
    )
    client.set_tag(run_id, "model_uri", f"models:/{model.model_id}")
    client.set_terminated(run_id)
    return run_id


def test_under_a_budget_the_parent_s_best_is_the_champion_not_the_top_row(tmp_path):
    exp = load_experiment(
        tiny_experiment(
            tmp_path, tiny_dataset(tmp_path / "photos", count=4), registry={"max_latency_ms": 5.0}
        )
    )
    with in_project(tmp_path):
        configure()
        record = SweepRecord.create(exp, "f1", runs.experiment_id(exp.tracking.experiment))
        run_ids = {row["run_id"]: _trial(record, row) for row in ROWS}
        result = finish(exp, record, 0, None, say=lambda line: None)
        parent = record.client.get_run(record.parent_run_id).data
    champion = run_ids["a"]  # c leads the leaderboard, but its 9 ms are over the budget
    assert result.leaderboard[0]["run_id"] == run_ids["c"]
    assert (parent.tags["best_run_id"], parent.tags["best_trial_id"]) == (champion, "0")
    assert (parent.metrics["best_val_miou"], parent.metrics["latency_ms_b1"]) == (0.70, 3.0)
    assert result.promotion.champion and result.promotion.reason.startswith(
        "petloc@champion is now version 1 (val mIoU 0.700"
    )
    assert record.client.get_model_version("petloc", "1").run_id == champion


def test_pareto_front_keeps_the_trials_nothing_beats_on_both():
    # b is slower and worse than a
    assert [r["run_id"] for r in pareto_front(ROWS)] == ["d", "a", "c"]


@pytest.fixture(scope="module")
def budget_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    data = tiny_dataset(root / "photos", count=24)
    exp = tiny_experiment(
        root, data, space={"head_units": [8, 16]}, registry={"max_latency_ms": 0.001}
    )
    with in_project(root):
        result = CliRunner().invoke(cli, ["sweep", str(exp)], catch_exceptions=False)
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`petloc.kind` = 'sweep'"
    )
    return root, client, parent, result.output


def test_a_sweep_under_a_budget_no_trial_fits_promotes_nothing(budget_sweep):
    _root, client, _parent, output = budget_sweep
    assert (
        "no trial's batch-1 latency fits registry.max_latency_ms=0.001; nothing promoted" in output
    )
    assert "fits_budget" in output.split("Leaderboard of sweep")[1].splitlines()[1].split()
    assert client.search_registered_models() == []


def test_the_parent_run_holds_the_pareto_front(budget_sweep):
    _root, client, parent, _ = budget_sweep
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.png"} <= artifacts
    with open(client.download_artifacts(parent.info.run_id, "pareto.csv")) as file:
        rows = list(csv.DictReader(file))
    columns = {"trial", "best_val_miou", "latency_ms_b1", "pareto", "run_id"}
    assert len(rows) == 2 and columns <= set(rows[0])
    assert "yes" in {r["pareto"] for r in rows}  # the fastest trial is always on the front


def test_promote_refuses_a_run_over_the_budget_unless_forced(budget_sweep):
    root, client, parent, _ = budget_sweep
    run_id = parent.data.tags["best_run_id"]
    latency = client.get_run(run_id).data.metrics["latency_ms_b1"]
    with in_project(root):
        refused = CliRunner().invoke(
            cli, ["promote", run_id, "--max-latency-ms", str(latency / 2)], catch_exceptions=False
        )
        assert (
            f"not promoted: its batch-1 latency {latency:.2f} ms is over the budget"
            in refused.output
        )
        assert client.search_registered_models() == []
        fits = CliRunner().invoke(
            cli, ["promote", run_id, "--max-latency-ms", str(latency * 2)], catch_exceptions=False
        )
    # the experiment file names no registry.name
    assert "petloc@champion is now version 1" in fits.output
