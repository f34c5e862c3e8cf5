"""SweepRecord: a sweep's runs in a real MLflow store, without a search around them."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.tracking import runs, vocabulary
from petloc.tracking.sweep_record import LOCALISER_PARETO, SweepRecord, leaderboard_columns
from tests.helpers import recorded_sweep


@pytest.fixture
def sweep(tmp_path):
    with recorded_sweep(tmp_path) as recorded:
        yield recorded


def finish(client: MlflowClient, run_id: str, miou: float) -> None:
    client.log_metric(run_id, "best_val_miou", miou)
    client.log_metric(run_id, "latency_ms_b1", 10 * miou)
    client.set_terminated(run_id)


def test_a_new_parent_run_carries_the_sweep_s_identity_and_settings(sweep):
    exp, record, client = sweep
    tags = client.get_run(record.parent_run_id).data.tags
    assert (tags["petloc.kind"], tags["petloc.sweep"], tags["petloc.sweep_fingerprint"]) == (
        "sweep",
        exp.name,
        "f1",
    )
    assert (
        tags["petloc.owner"] == runs.this_process()
        and "petloc.version" in tags
        and "petloc_version" not in tags
    )
    assert tags["tuner.max_trials"] == str(exp.tuner.max_trials)
    with pytest.raises(PetlocError, match=r"^gone: no such parent$"):
        SweepRecord.existing("0" * 32, "gone: no such parent")


def test_a_trial_run_again_ends_its_earlier_attempt_and_the_leaderboard_ranks_the_finished(sweep):
    _, record, client = sweep
    first = record.trial_run("0", "trial-0", {"tuner/epochs": "2"})
    again = record.trial_run("0", "trial-0", {})
    ended = client.get_run(first)
    assert ended.info.status == "KILLED" and ended.data.tags["error"].startswith(
        "trial 0 was run again"
    )
    assert client.get_run(again).data.tags["sweep_run_id"] == record.parent_run_id
    finish(client, again, 0.5)
    better = record.trial_run("1", "trial-1", {})
    finish(client, better, 0.7)
    running = record.trial_run("2", "trial-2", {})
    assert set(record.finished_runs()) == {"0", "1"}

    record.fail_running("its worker was lost", trial_id="2")
    lost = client.get_run(running)
    assert (lost.info.status, lost.data.tags["error"]) == ("FAILED", "its worker was lost")

    rows = record.leaderboard()
    assert [row["trial"] for row in rows] == ["1", "0"] and rows[0]["run_id"] == better
    record.log_leaderboard_files(rows, leaderboard_columns(rows))
    record.log_outcome(rows[0], vocabulary.BEST_FIGURES, len(rows), failed=1)
    record.log_pareto(rows, *LOCALISER_PARETO)
    record.set_promotion("nothing promoted")
    parent = client.get_run(record.parent_run_id)
    assert (
        parent.data.tags["best_trial_id"],
        parent.data.tags["best_run_id"],
        parent.data.tags["promotion"],
    ) == ("1", better, "nothing promoted")
    assert (
        parent.data.metrics["best_val_miou"] == 0.7 and parent.data.metrics["trials_failed"] == 1.0
    )
    files = {f.path for f in client.list_artifacts(record.parent_run_id)}
    assert {"leaderboard.csv", "leaderboard.md", "pareto.csv", "pareto.png"} <= files


def test_a_trial_s_checkpoint_goes_up_and_comes_back(sweep, tmp_path):
    _, record, client = sweep
    run_id = record.trial_run("3", "trial-3", {})
    weights = tmp_path / "weights.weights.h5"
    weights.write_bytes(b"weights")
    # not FINISHED, nothing up
    assert record.download_checkpoint("3", weights.name, tmp_path / "none") is None
    record.upload_checkpoint(run_id, weights)
    client.set_terminated(run_id)
    (tmp_path / "back").mkdir()
    assert (
        record.download_checkpoint("3", weights.name, tmp_path / "back").read_bytes() == b"weights"
    )


def test_a_chief_is_live_while_it_beats(sweep):
    exp, record, _ = sweep
    assert SweepRecord.live_chiefs(exp) == []  # a sweep's parent, but no chief's
    record.mark_chief("10.0.0.7:8470")
    assert SweepRecord.live_chiefs(exp) == []  # no heartbeat yet
    record.beat()
    [chief] = SweepRecord.live_chiefs(exp)
    assert (chief.run_id, chief.address, chief.started) == (
        record.parent_run_id,
        "10.0.0.7:8470",
        record.started(),
    )
    # another sweep's chief
    assert SweepRecord.live_chiefs(exp.model_copy(update={"name": "other"})) == []
