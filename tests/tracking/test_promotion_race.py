"""Promotions racing against one registry (two sweeps finishing at once) never leave the
alias on the worse model: real processes, one real SQLite store, many rounds."""

from __future__ import annotations

import multiprocessing

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from petloc.tracking.registry import promote
from petloc.tracking.store import configure

RACERS = 3  # processes promoting at once, each its own run
ROUNDS = 12  # each round a registered model of its own; a race the old code loses 2 rounds in 3
VAL_DATA = "digest=abc split=0.25 seed=0"


def _promote_in_rounds(uri: str, start, runs: list[tuple[str, str]]) -> None:
    """One racer: in each round, waits for the others at the barrier, then promotes its run."""
    configure(uri)
    try:
        for name, run_id in runs:
            start.wait(timeout=120)
            promote(run_id, name)
    except BaseException:
        start.abort()  # the others stop waiting for this racer
        raise


def _finished_run(client: MlflowClient, experiment_id: str, miou: float) -> str:
    """A run as a trial leaves it: its val mIoU, latency, validation data and logged model."""
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "best_val_miou", miou)
    client.log_metric(run_id, "latency_ms_b1", 5.0)
    client.set_tag(run_id, "val_data", VAL_DATA)
    model = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, experiment_id=experiment_id
    )
    client.set_tag(run_id, "model_uri", f"models:/{model.model_id}")
    client.set_terminated(run_id)
    return run_id


def _old_champion(client: MlflowClient, name: str, run_id: str) -> None:
    """A champion registered before this change (no promotion record on it)."""
    client.create_registered_model(name)
    version = client.create_model_version(
        name,
        client.get_run(run_id).data.tags["model_uri"],
        run_id=run_id,
        tags={"best_val_miou": "0.5", "val_data": VAL_DATA},
    )
    client.set_registered_model_alias(name, "champion", version.version)


@pytest.mark.slow
def test_racing_promotions_leave_the_champion_on_the_best_model(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    configure(uri)
    client = MlflowClient(uri, registry_uri=uri)
    experiment_id = client.create_experiment("race")
    scores = [0.6 + 0.1 * i for i in range(RACERS)]
    rounds = []  # per round: the model name, each racer's run, the best run
    for r in range(ROUNDS):
        name = f"race-{r}"
        if r % 2 == 0:  # even rounds race against an old champion, odd ones for the first one
            _old_champion(client, name, _finished_run(client, experiment_id, 0.5))
        ranked = [_finished_run(client, experiment_id, miou) for miou in scores]
        # the best run is promoted by each racer in turn
        turn = ranked[r % RACERS :] + ranked[: r % RACERS]
        rounds.append((name, turn, ranked[-1]))

    spawn = multiprocessing.get_context("spawn")  # TensorFlow and fork do not mix
    start = spawn.Barrier(RACERS)
    racers = [
        spawn.Process(
            target=_promote_in_rounds,
            args=(uri, start, [(name, turn[i]) for name, turn, _ in rounds]),
        )
        for i in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=600)
    assert [racer.exitcode for racer in racers] == [0] * RACERS

    wrong = [
        name
        for name, _, best in rounds
        if client.get_model_version_by_alias(name, "champion").run_id != best
    ]
    assert not wrong, f"@champion left on a worse model in {len(wrong)} of {ROUNDS} rounds: {wrong}"
    # Every racer registered its run once, whoever won.
    assert all(
        len(client.search_model_versions(f"name='{name}'")) == RACERS + (r % 2 == 0)
        for r, (name, _, _) in enumerate(rounds)
    )


def test_a_forced_champion_is_not_undone_by_the_next_promotion(tmp_path, monkeypatch):
    """Settling a race looks only at versions still holding their win: a champion the user
    forced away stays away when a later run beats the forced one."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    configure(uri)
    client = MlflowClient(uri, registry_uri=uri)
    experiment_id = client.create_experiment("forced")
    best, forced, later = (_finished_run(client, experiment_id, miou) for miou in (0.8, 0.4, 0.6))
    assert promote(best, "forced").champion
    assert promote(forced, "forced", force=True).reason.endswith("(val mIoU 0.400, forced)")
    assert (
        promote(later, "forced").reason
        == "forced@champion is now version 3 (val mIoU 0.600, beats 0.400)"
    )
    assert client.get_model_version_by_alias("forced", "champion").run_id == later
