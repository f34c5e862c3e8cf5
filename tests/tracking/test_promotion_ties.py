"""Ties are ties in `promote`: a val mIoU within registry.min_improvement of the champion's
wins only by a lower batch-1 latency, and the message says so; a bigger difference wins or
loses by the score alone; a tie wins only within min_improvement of the best version on the
same validation data too, so that ties cannot walk the champion down."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from petloc.tracking.registry import promote
from petloc.tracking.store import configure
from tests.helpers import in_project, invoke

VAL_DATA = "digest=abc split=0.25 seed=0"


@pytest.fixture
def store(tmp_path):
    with in_project(tmp_path):
        uri = configure()
        client = MlflowClient(uri, registry_uri=uri)
        yield client, client.create_experiment("ties")


def _run(store, miou: float, latency: float) -> str:
    """A finished run as a trial leaves it: val mIoU, latency, validation data, logged model."""
    client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    mlflow.log_metrics({"best_val_miou": miou, "latency_ms_b1": latency}, run_id=run_id)
    client.set_tag(run_id, "val_data", VAL_DATA)
    model = mlflow.initialize_logged_model(
        name="trial-0-simple", source_run_id=run_id, experiment_id=experiment_id
    )
    client.set_tag(run_id, "model_uri", f"models:/{model.model_id}")
    client.set_terminated(run_id)
    return run_id


def _champion(store, name: str = "petloc") -> str:
    return store[0].get_model_version_by_alias(name, "champion").run_id


def test_a_tie_within_min_improvement_goes_to_the_faster_run(store):
    holder = _run(store, 0.5491, 6.2)
    assert promote(holder, min_improvement=0.01).champion
    faster = _run(store, 0.5451, 3.1)  # a lower score, within 0.01: a tie
    promotion = promote(faster, min_improvement=0.01)
    assert promotion.champion and _champion(store) == faster
    assert promotion.reason == (
        "petloc@champion is now version 2 (val mIoU 0.545, "
        "ties 0.549 within 0.01 and is faster: 3.10 ms against 6.20 ms)"
    )


def test_a_tie_that_is_not_faster_leaves_the_champion(store):
    holder = _run(store, 0.5491, 3.1)
    promote(holder, min_improvement=0.01)
    slower = _run(store, 0.5580, 6.2)  # higher, but by less than 0.01
    promotion = promote(slower, min_improvement=0.01)
    assert not promotion.champion and _champion(store) == holder
    assert promotion.reason == (
        "registered as version 2; val mIoU 0.558 does not beat petloc@champion's "
        "0.549: a tie within 0.01, and not faster (6.20 ms against 3.10 ms)"
    )


def test_a_difference_beyond_min_improvement_is_decided_by_the_score(store):
    holder = _run(store, 0.5491, 3.1)
    promote(holder, min_improvement=0.01)
    faster_but_worse = _run(store, 0.5300, 1.0)
    assert not promote(faster_but_worse, min_improvement=0.01).champion
    better = _run(store, 0.5700, 9.0)
    promotion = promote(better, min_improvement=0.01)
    assert promotion.champion and _champion(store) == better
    assert promotion.reason.endswith("(val mIoU 0.570, beats 0.549)")


def test_without_min_improvement_any_higher_score_wins(store):
    promote(_run(store, 0.5491, 3.1), min_improvement=0.0)
    slower = _run(store, 0.5492, 9.0)
    assert promote(slower, min_improvement=0.0).champion and _champion(store) == slower


def test_petloc_promote_takes_min_improvement(store):
    from petloc.cli import MIN_IMPROVEMENT
    from petloc.config import RegistryConfig

    assert RegistryConfig().min_improvement == MIN_IMPROVEMENT  # what --help says
    promote(_run(store, 0.5491, 3.1))  # the default: 0.5580 ties with it
    slower = _run(store, 0.5580, 6.2)
    assert "a tie within" in invoke("promote", slower).output
    assert _champion(store) != slower
    moved = invoke("promote", slower, "--min-improvement", "0.001").output
    assert "petloc@champion is now version 2 (val mIoU 0.558, beats 0.549)" in moved
    refused = invoke("promote", slower, "--min-improvement", "-1")
    assert refused.exit_code == 2 and "--min-improvement" in refused.output


def test_a_champion_of_the_past_does_not_come_back_through_a_tie(store):
    """Settling weighs only recent wins: neither a champion a later one beat, nor one an older
    petloc recorded, returns because it ties with the newcomer and is faster."""
    client = store[0]
    first = _run(store, 0.6000, 2.0)
    promote(first, min_improvement=0.0)
    second = _run(store, 0.6101, 9.0)
    assert promote(second, min_improvement=0.0).champion  # strictly higher: it beats first
    client.set_model_version_tag(
        "petloc", "1", "promoted_to_champion", "true"
    )  # an older petloc's record
    third = _run(store, 0.6050, 5.0)  # ties second (0.0051) and is faster; ties first, slower
    promotion = promote(third, min_improvement=0.01)
    assert promotion.champion and _champion(store) == third, promotion.reason


def test_ties_do_not_walk_the_champion_down(store):
    """Each run ties with the champion before it and is faster, but a tie wins only within
    min_improvement of the best version on the same validation data too."""
    first = _run(store, 0.600, 10.0)
    assert promote(first, min_improvement=0.01).champion
    second = _run(store, 0.591, 9.0)  # 0.009 below version 1: a tie, and faster
    assert promote(second, min_improvement=0.01).reason == (
        "petloc@champion is now version 2 (val mIoU 0.591, "
        "ties 0.600 within 0.01 and is faster: 9.00 ms against 10.00 ms)"
    )
    third = _run(store, 0.582, 8.0)  # ties version 2 (0.009), but is 0.018 below version 1
    refused = promote(third, min_improvement=0.01)
    assert not refused.champion and _champion(store) == second
    assert refused.reason == (
        "registered as version 3; val mIoU 0.582 does not beat petloc@champion's 0.591: "
        "a tie within 0.01 and faster (8.00 ms against 9.00 ms), but 0.018 below version 1's "
        "0.600 (a tie wins only within 0.01 of the best version)"
    )
    fourth = _run(store, 0.573, 7.0)  # 0.018 below the champion: no tie, the score decides
    assert not promote(fourth, min_improvement=0.01).champion and _champion(store) == second


def test_the_best_version_counts_only_on_the_same_validation_data(store):
    client = store[0]
    elsewhere = _run(store, 0.900, 50.0)  # measured on other photos: its 0.900 does not compare
    client.set_tag(elsewhere, "val_data", "digest=other split=0.25 seed=0")
    assert promote(elsewhere, min_improvement=0.01).champion
    holder = _run(store, 0.600, 10.0)
    assert promote(holder, force=True, min_improvement=0.01).champion
    faster = _run(store, 0.591, 9.0)  # within 0.01 of the best version on its data, 0.600
    assert promote(faster, min_improvement=0.01).champion and _champion(store) == faster
