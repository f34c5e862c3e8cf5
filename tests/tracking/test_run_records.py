"""What an MLflow user looks for on a run: datasets as inputs, system metrics, where the run
comes from (command, version, git commit), a description, and the resolved experiment."""

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import petloc
from petloc.cli import cli
from petloc.errors import PetlocError
from petloc.tracking import log
from tests.helpers import in_project, tiny_dataset, tiny_experiment


def git(folder, *args):
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny `petloc train` in a git work tree with a commit and an uncommitted change."""
    root = tmp_path_factory.mktemp("records")
    git(root, "init", "-q")
    (root / "notes.txt").write_text("v1\n")
    git(root, "add", "notes.txt")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    (root / "notes.txt").write_text("v2\n")  # dirty
    data = tiny_dataset(root / "photos", count=24)
    exp = tiny_experiment(root, data)
    with in_project(root), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
        result = CliRunner().invoke(cli, ["train", str(exp)], catch_exceptions=False)
    run_id = result.output.split("MLflow run ")[1].split()[0]
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    return root, client, client.get_run(run_id)


def test_run_says_where_it_comes_from(trained):
    root, _, run = trained
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    tags = run.data.tags
    assert tags["git_commit"] == tags["mlflow.source.git.commit"] == commit
    assert tags["git_dirty"] == "true"
    assert tags["petloc.version"] == petloc.__version__
    assert " train " in f" {tags['command']} " and tags["mlflow.source.name"] == tags["command"]
    assert tags["mlflow.note.content"].startswith(
        "Training run of experiment 'tiny': simple at 32 px, 1 epochs"
    )


def test_training_and_validation_sides_are_mlflow_datasets(trained):
    _, _, run = trained
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
        for i in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "validation"}
    train, val = inputs["training"].dataset, inputs["validation"].dataset
    assert (train.name, val.name) == ("photos-training", "photos-validation")
    assert train.digest != val.digest and len(train.digest) == 16
    assert json.loads(train.source)["uri"].endswith("/photos")
    # 24 photos, val_split 0.25
    assert [t.value for t in inputs["training"].tags if t.key == "images"] == ["18"]
    assert run.data.tags["dataset_digest"]  # petloc's own digest stays


def test_system_metrics_are_logged_while_it_trains(trained):
    _, client, run = trained
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert history and all(0 <= m.value <= 100 * 64 for m in history)
    assert client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")


def test_the_resolved_experiment_is_an_artifact(trained):
    _, client, run = trained
    path = client.download_artifacts(run.info.run_id, "experiment.json")
    body = json.loads(Path(path).read_text())
    assert (
        body["name"] == "tiny"
        and body["train"]["epochs"] == 1
        and body["space"]["head_units"] == 16
    )


@pytest.mark.parametrize("repository", [False, True])
def test_no_commit_is_named_outside_a_work_tree_with_commits(tmp_path, monkeypatch, repository):
    monkeypatch.chdir(tmp_path)
    if repository:
        git(tmp_path, "init", "-q")  # a repository without commits: HEAD names nothing
    tags = log.provenance()
    assert (
        "git_commit" not in tags
        and "mlflow.source.git.commit" not in tags
        and "git_dirty" not in tags
    )
    assert tags["petloc.version"] == petloc.__version__


def test_reproduce_reruns_a_run_from_what_it_logged(trained):
    root, client, run = trained
    with in_project(root):
        result = CliRunner().invoke(cli, ["reproduce", run.info.run_id], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    new_id = result.output.split("reproduction: MLflow run ")[1].split()[0]
    again = client.get_run(new_id)
    assert again.data.tags["reproduces"] == run.info.run_id
    assert abs(again.data.metrics["best_val_miou"] - run.data.metrics["best_val_miou"]) < 1e-4
    assert {k: again.data.params[k] for k in ("backbone", "head_units", "seed", "epochs")} == {
        k: run.data.params[k] for k in ("backbone", "head_units", "seed", "epochs")
    }
    assert "difference" in result.output


def test_reproduce_refuses_when_the_code_or_data_differ(trained):
    root, _client, run = trained
    (root / "notes.txt").write_text("v3\n")
    # another commit
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "second")
    try:
        with (
            in_project(root),
            pytest.raises(
                PetlocError,
                match=r"the code differs \(commit \w+, the run had \w+ with uncommitted changes\); pass --force",
            ),
        ):
            CliRunner().invoke(cli, ["reproduce", run.info.run_id], catch_exceptions=False)
        (root / "photos" / "extra.txt").write_text("1 1 1 5 5\n")
        with in_project(root), pytest.raises(PetlocError, match="the data differ"):
            CliRunner().invoke(cli, ["reproduce", run.info.run_id], catch_exceptions=False)
    finally:
        (root / "photos" / "extra.txt").unlink(missing_ok=True)
    with in_project(root), pytest.raises(PetlocError, match="run 0123abcd: not found"):
        CliRunner().invoke(cli, ["reproduce", "0123abcd"], catch_exceptions=False)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_runs_logging_the_same_new_dataset_at_once_all_log_it(tmp_path, store, request):
    """Trials starting together on two workers log the same datasets: MLflow's store looks a
    dataset up, then inserts it, and all but one of the racing calls failed on the table's
    key (a trial FAILED in tests/search/test_distributed_sweep.py). Each round is a new experiment, where
    the dataset is new."""
    import threading

    import mlflow

    from petloc.config import load_experiment
    from petloc.training.dataset import prepare_data

    exp = load_experiment(tiny_experiment(tmp_path, tiny_dataset(tmp_path / "photos", count=8)))
    data = prepare_data(exp.data, say=lambda _: None)
    uri = (
        f"sqlite:///{tmp_path}/mlflow.db"
        if store == "sqlite"
        else request.getfixturevalue("postgres_uri")
    )
    client, before = MlflowClient(uri), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    failures, run_ids = [], []
    try:
        for round in range(10):
            experiment_id = client.create_experiment(
                f"race-{round}", artifact_location=str(tmp_path / "artifacts")
            )
            racers = [client.create_run(experiment_id).info.run_id for _ in range(4)]
            start = threading.Barrier(len(racers))

            def log_them(run_id, start):
                start.wait()
                try:
                    log.log_datasets(run_id, data)
                except Exception as err:  # noqa: BLE001  (any failure is the test's finding)
                    failures.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")

            threads = [threading.Thread(target=log_them, args=(run_id, start)) for run_id in racers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            run_ids += racers
    finally:
        mlflow.set_tracking_uri(before)
    assert not failures, failures[:3]
    for run_id in run_ids:
        # training and validation, each once
        assert len(client.get_run(run_id).inputs.dataset_inputs) == 2


def test_an_ensemble_needs_the_plugins_its_members_recorded():
    """The ensemble's run and model name every plug-in module of its members, each once."""
    from petloc.tracking.training_runs import modules_needed, plugins_tag, recorded_plugins

    members = [
        {"petloc.plugins": "team_nets"},
        {},  # a built-in backbone
        {"petloc.plugins": "other_nets,team_nets"},
    ]
    needs = recorded_plugins(members)
    assert needs == ("team_nets", "other_nets")
    assert plugins_tag(needs) == {"petloc.plugins": "team_nets,other_nets"}
    assert plugins_tag(modules_needed({"backbone": "simple"}, None)) == {}
