"""A tracked search's trial (petloc.TrackedTuner) is promoted by its search's objective and
direction, as its tags name them: a better value moves the alias, a worse one is registered
without it; for a min objective lower is better, and messages show the real values. Its
version carries the objective, so later trials compare against it; figures from other
validation data or another objective are not compared. Runs without an objective (petloc's
localisers) keep being ranked by val mIoU, and `petloc models` keeps its columns for them."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.tracking.registry import list_versions, promote
from petloc.tracking.store import configure
from tests.helpers import in_project

VAL_DATA = "sha256:abc"
NAME = "my-model"


@pytest.fixture
def store(tmp_path):
    with in_project(tmp_path):
        uri = configure()
        client = MlflowClient(uri, registry_uri=uri)
        experiment_id = client.create_experiment("my-search")
        parent = client.create_run(experiment_id, tags={"petloc.sweep": "digits"}).info.run_id
        yield client, experiment_id, parent


def _trial(
    store,
    trial: str,
    figures: dict[str, float],
    objective: tuple[str, str] | None = ("val_accuracy", "max"),
    val_data: str = VAL_DATA,
) -> str:
    """A finished trial as a tracked search leaves it: its figures, objective tags, validation
    data and logged model."""
    client, experiment_id, parent = store
    tags = {"trial_id": trial, "sweep_run_id": parent, "val_data": val_data}
    if objective is not None:
        tags.update({"petloc.objective": objective[0], "petloc.objective_direction": objective[1]})
    run_id = client.create_run(experiment_id, run_name=f"trial-{trial}", tags=tags).info.run_id
    mlflow.log_metrics(figures, run_id=run_id)
    model = mlflow.initialize_logged_model(
        name=f"trial-{trial}", source_run_id=run_id, experiment_id=experiment_id
    )
    client.set_tag(run_id, "model_uri", f"models:/{model.model_id}")
    client.set_terminated(run_id)
    return run_id


def _champion(store) -> str:
    return store[0].get_model_version_by_alias(NAME, "champion").run_id


def test_a_max_objective_moves_the_alias_to_a_higher_value_only(store):
    first = _trial(store, "0", {"val_accuracy": 0.9012, "val_loss": 0.41})
    promotion = promote(first, NAME, min_improvement=0.0)
    assert promotion.reason == (
        "my-model@champion is now version 1 (val accuracy 0.901, first champion)"
    )
    better = _trial(store, "1", {"val_accuracy": 0.9534, "val_loss": 0.35})
    promotion = promote(better, NAME, min_improvement=0.0)
    assert promotion.champion and _champion(store) == better
    assert promotion.reason.endswith("(val accuracy 0.953, beats 0.901)")
    worse = _trial(store, "2", {"val_accuracy": 0.8021, "val_loss": 0.2})
    promotion = promote(worse, NAME, min_improvement=0.0)
    assert not promotion.champion and _champion(store) == better
    assert promotion.reason == (
        "registered as version 3; val accuracy 0.802 does not beat my-model@champion's 0.953"
    )


def test_the_version_carries_the_objective_and_says_where_it_comes_from(store):
    figures = {"val_loss": 0.3012, "val_accuracy": 0.9, "latency_ms_b1": 1.5}
    run_id = _trial(store, "2", figures, ("val_loss", "min"))
    promote(run_id, NAME, min_improvement=0.0)
    client = store[0]
    version = client.get_model_version(NAME, "1")
    assert version.tags["petloc.objective"] == "val_loss"
    assert version.tags["petloc.objective_direction"] == "min"
    assert float(version.tags["val_loss"]) == pytest.approx(0.3012)
    assert version.tags["val_data"] == VAL_DATA
    assert version.description.startswith("Trial 2 of search 'digits', run ")
    assert "| `val_loss` | the objective (lower is better) | 0.301 |" in version.description
    assert "| `latency_ms_b1` | batch-1 latency, ms | 1.50 |" in version.description
    assert client.get_registered_model(NAME).description == (
        "petloc: Keras model tuned by petloc.TrackedTuner (objective: val_loss, min)"
    )
    [row] = list_versions()
    assert row["objective"] == "val_loss 0.301 (min)"


def test_a_min_objective_moves_the_alias_to_a_lower_value_only(store):
    loss = ("val_loss", "min")
    promote(_trial(store, "0", {"val_loss": 0.4123}, loss), NAME, min_improvement=0.0)
    lower = _trial(store, "1", {"val_loss": 0.3012}, loss)
    promotion = promote(lower, NAME, min_improvement=0.0)
    assert promotion.champion and _champion(store) == lower
    assert promotion.reason == "my-model@champion is now version 2 (val_loss 0.301, beats 0.412)"
    higher = _trial(store, "2", {"val_loss": 0.5}, loss)
    promotion = promote(higher, NAME, min_improvement=0.0)
    assert not promotion.champion and _champion(store) == lower
    assert promotion.reason == (
        "registered as version 3; val_loss 0.500 does not beat my-model@champion's 0.301"
    )


def test_a_min_objective_ties_within_min_improvement_and_the_faster_wins(store):
    loss = ("val_loss", "min")
    promote(_trial(store, "0", {"val_loss": 0.30, "latency_ms_b1": 5.0}, loss), NAME)
    equal_faster = _trial(store, "1", {"val_loss": 0.30, "latency_ms_b1": 2.0}, loss)
    promotion = promote(equal_faster, NAME, min_improvement=0.0)
    assert promotion.champion and _champion(store) == equal_faster
    assert promotion.reason.endswith("ties 0.300 within 0 and is faster: 2.00 ms against 5.00 ms)")
    slower = _trial(store, "2", {"val_loss": 0.295, "latency_ms_b1": 9.0}, loss)
    promotion = promote(slower, NAME, min_improvement=0.01)
    assert not promotion.champion and _champion(store) == equal_faster
    assert promotion.reason.endswith(
        "val_loss 0.295 does not beat my-model@champion's 0.300: a tie within 0.01, "
        "and not faster (9.00 ms against 2.00 ms)"
    )
    lower = _trial(store, "3", {"val_loss": 0.25, "latency_ms_b1": 9.0}, loss)
    assert promote(lower, NAME, min_improvement=0.01).champion  # beyond the threshold


def test_other_validation_data_or_another_objective_is_not_compared(store):
    holder = _trial(store, "0", {"val_accuracy": 0.9})
    promote(holder, NAME, min_improvement=0.0)
    elsewhere = _trial(store, "1", {"val_accuracy": 0.99}, val_data="sha256:other")
    promotion = promote(elsewhere, NAME, min_improvement=0.0)
    assert not promotion.champion and _champion(store) == holder
    assert "was measured on other validation data (sha256:abc; this run: sha256:other)" in (
        promotion.reason
    )
    by_loss = _trial(store, "2", {"val_loss": 0.01, "val_accuracy": 0.99}, ("val_loss", "min"))
    promotion = promote(by_loss, NAME, min_improvement=0.0)
    assert not promotion.champion and _champion(store) == holder
    assert (
        "my-model@champion (version 1) is ranked by val_accuracy (max) and this run by "
        "val_loss (min), so their figures do not compare" in promotion.reason
    )


def test_a_trial_without_its_objective_or_a_direction_is_refused_in_one_line(store):
    missing = _trial(store, "0", {"val_accuracy": 0.9}, ("val_loss", "min"))
    with pytest.raises(PetlocError) as err:
        promote(missing, NAME)
    assert str(err.value) == (
        f"run {missing}: has no logged model with val_loss; promote a finished petloc run"
    )
    sideways = _trial(store, "1", {"val_accuracy": 0.9}, ("val_accuracy", "up"))
    with pytest.raises(PetlocError, match=r"petloc\.objective_direction is 'up', not max or min"):
        promote(sideways, NAME)


def test_a_localiser_run_is_still_ranked_by_val_miou_and_listed_as_before(store):
    localiser = _trial(store, "3", {"best_val_miou": 0.55, "val_accuracy": 0.9}, objective=None)
    promotion = promote(localiser, "petloc")
    assert promotion.reason == "petloc@champion is now version 1 (val mIoU 0.550, first champion)"
    version = store[0].get_model_version("petloc", "1")
    assert "petloc.objective" not in version.tags
    assert store[0].get_registered_model("petloc").description == (
        "petloc: cat/dog head localiser (class + head box)"
    )
    [row] = list_versions()
    assert list(row) == [
        "name",
        "version",
        "aliases",
        "best_val_miou",
        "val_accuracy",
        "latency_ms_b1",
        "source_run",
    ]
