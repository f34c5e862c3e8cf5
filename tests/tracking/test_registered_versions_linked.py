"""A registered version is linked both ways, as MLflow's own registration links it: its logged
model lists it (what the UI's logged model page reads) and it names its run; the logged model
is named after its trial; the version's description holds its figures. Models of older runs,
all named `model`, and `runs:/RUN/model` keep loading."""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from petloc.model import Hyperparameters, build_model
from petloc.tracking import log
from petloc.tracking.registry import load_localiser, loadable_uri, promote
from petloc.tracking.store import configure
from tests.helpers import in_project
from tests.servers import tracking_server

VAL_DATA = "digest=abc split=0.25 seed=0"


@dataclass
class Trial:
    client: MlflowClient
    run_id: str
    model_uri: str


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Trial:
    """Trial 3 of sweep 'quick': a finished run with its figures and its logged localiser
    (untrained, 32 px), as a sweep leaves it."""
    root = tmp_path_factory.mktemp("linked")
    with in_project(root):
        uri = configure()
        client = MlflowClient(uri, registry_uri=uri)
        experiment_id = client.create_experiment("linked")
        parent = client.create_run(experiment_id, tags={"petloc.sweep": "quick"}).info.run_id
        run_id = client.create_run(
            experiment_id,
            run_name="trial-3-simple",
            tags={"trial_id": "3", "sweep_run_id": parent, "val_data": VAL_DATA},
        ).info.run_id
        client.log_param(run_id, "backbone", "simple")
        client.log_param(run_id, "classes", 2)
        figures = {
            "best_val_miou": 0.5491,
            "val_accuracy": 0.8125,
            "val_iou50": 0.6406,
            "latency_ms_b1": 3.1,
        }
        mlflow.log_metrics(figures, run_id=run_id)
        model = build_model(Hyperparameters(width=0.25, head_units=8), 32)
        model_uri = log.log_model(model, run_id)
        client.set_terminated(run_id)
        yield Trial(client, run_id, model_uri)


def test_the_logged_model_is_named_after_its_trial(trial):
    logged = trial.client.get_logged_model(trial.model_uri.removeprefix("models:/"))
    assert logged.name == "trial-3-simple"
    assert logged.source_run_id == trial.run_id


def test_a_promoted_version_is_listed_on_its_logged_model_and_names_its_run(trial):
    promotion = promote(trial.run_id, "petloc")
    assert promotion.champion and str(promotion.version) == "1"
    version = trial.client.get_model_version("petloc", "1")
    assert version.run_id == trial.run_id  # the version page's "Source run"
    assert version.source == trial.model_uri  # ... and its "Source model"
    logged = trial.client.get_logged_model(trial.model_uri.removeprefix("models:/"))
    listed = json.loads(logged.tags["mlflow.modelVersions"])
    assert listed == [{"name": "petloc", "version": "1"}]
    # registered again under another name: listed once each
    promote(trial.run_id, "petloc-other")
    promote(trial.run_id, "petloc-other")
    logged = trial.client.get_logged_model(trial.model_uri.removeprefix("models:/"))
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [
        {"name": "petloc", "version": "1"},
        {"name": "petloc-other", "version": "1"},
    ]


def test_a_version_describes_its_trial_sweep_and_figures_and_keeps_its_tags(trial):
    promote(trial.run_id, "petloc-described")
    version = trial.client.get_model_version("petloc-described", "1")
    text = version.description
    assert text.startswith("Trial 3 (simple) of sweep 'quick', run `")
    # under the runs' metric names, rounded as every table rounds them
    for row in (
        "| `best_val_miou` | val mIoU | 0.549 |",
        "| `val_accuracy` | val accuracy | 0.812 |",
        "| `val_iou50` | share of val boxes with IoU >= 0.5 | 0.641 |",
        "| `latency_ms_b1` | batch-1 latency, ms | 3.10 |",
        "| `classes` | classes | 2 |",
    ):
        assert row in text
    assert version.tags["best_val_miou"] == "0.5491" and version.tags["val_data"] == VAL_DATA
    assert version.tags["trial_id"] == "3" and version.tags["classes"] == "2"


def test_runs_uri_of_the_old_model_name_still_loads(trial):
    # `runs:/RUN/model`, as older petloc printed it, is the run's model whatever its name
    assert loadable_uri(f"runs:/{trial.run_id}/model") == trial.model_uri
    assert loadable_uri(f"runs:/{trial.run_id}/trial-3-simple") == (
        f"runs:/{trial.run_id}/trial-3-simple"
    )
    model = load_localiser(f"runs:/{trial.run_id}/model")
    assert model.input_shape[1] == 32
    # MLflow finds the model by its new name too
    assert mlflow.artifacts.list_artifacts(f"runs:/{trial.run_id}/trial-3-simple")


@pytest.mark.slow  # a tracking server process
def test_through_a_tracking_server_the_version_is_listed_once(tmp_path):
    """A server's create call lists the version on the logged model itself (MLflow 3's
    handler); petloc's link then finds it there and does not list it twice."""
    with (
        tracking_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts") as uri,
        in_project(tmp_path),
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        configure(uri)
        client = MlflowClient(uri, registry_uri=uri)
        experiment_id = client.create_experiment("served")
        run_id = client.create_run(experiment_id, run_name="train-simple").info.run_id
        client.log_metric(run_id, "best_val_miou", 0.5)
        model = mlflow.initialize_logged_model(
            name="train-simple", source_run_id=run_id, experiment_id=experiment_id
        )
        client.set_tag(run_id, "model_uri", f"models:/{model.model_id}")
        client.set_terminated(run_id)
        assert promote(run_id, "served").champion
        listed = json.loads(client.get_logged_model(model.model_id).tags["mlflow.modelVersions"])
        assert [{k: str(v) for k, v in e.items()} for e in listed] == [
            {"name": "served", "version": "1"}
        ]
        assert client.get_model_version("served", "1").run_id == run_id
