"""tuner.max_minutes: the search starts no trial that, with the final run, would end after the
budget; a real Keras Tuner oracle, a clock the test moves, then a whole sweep."""

import keras_tuner as kt
import pytest
from keras_tuner.src.engine.trial import TrialStatus

from petloc.search.budget import TimeBudget
from tests.helpers import children, invoke, store_client, tiny_dataset, tiny_experiment


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def with_space(oracle, tmp_path):
    oracle._set_project_dir(str(tmp_path), "budget")
    hp = oracle.get_space()
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    oracle.update_space(hp)
    return oracle


def random_oracle(tmp_path):
    return with_space(kt.oracles.RandomSearchOracle(kt.Objective("val_miou", "max"), max_trials=30, seed=1), tmp_path)


def run_trials(oracle, clock, epoch_s=5.0, besides_s=0.0, epochs=2, limit=50) -> int:
    """Asks for trials until the oracle stops; each trains its epochs at `epoch_s` and spends
    `besides_s` on the rest, and reports both as TrackedTuner.run_trial does. Returns how many ran."""
    for ran in range(limit):
        trial = oracle.create_trial("tuner0")
        if trial.status == TrialStatus.STOPPED:
            return ran
        values = trial.hyperparameters.values  # Hyperband continues a trial from its initial epoch
        trained = values.get("tuner/epochs", epochs) - values.get("tuner/initial_epoch", 0)
        clock.now += epoch_s * trained + besides_s
        oracle.update_trial(trial.trial_id, {"val_miou": 0.5, "train_seconds": epoch_s * trained, "epochs_trained": trained})
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
    raise AssertionError("the oracle never stopped")


def test_no_trial_starts_that_would_leave_the_final_run_outside_the_budget(tmp_path):
    oracle, clock, said = random_oracle(tmp_path), Clock(), []
    # 60 s; a trial is 2 epochs of 5 s; the final run 4 epochs (20 s).
    budget = TimeBudget(oracle, 1.0, final_epochs=4, say=said.append, clock=clock)
    assert run_trials(oracle, clock) == 4  # after 3 (30 s) a 4th fits: 30 + 10 + 20 = 60; after 4 it would not
    assert budget.spent and said == ["\ntime budget: 40 s of 1 min 00 s (tuner.max_minutes) spent on 4 trials; "
                                     "no new trial starts, about 20 s kept for the final run"]


def test_the_final_run_is_priced_by_epochs_not_by_short_trials(tmp_path):
    # Hyperband-like 1-epoch trials: 5 s of training and 20 s besides (build, trace, score, log).
    # The final run of 10 epochs is 50 + 20 s, not 10 x 25 s: in 3 minutes, 4 trials and the final run.
    oracle, clock = random_oracle(tmp_path), Clock()
    budget = TimeBudget(oracle, 3.0, final_epochs=10, say=lambda _: None, clock=clock)
    assert run_trials(oracle, clock, besides_s=20.0, epochs=1) == 4  # 75 + 25 + 70 = 170 fits; 100 + 95 does not
    assert budget.estimates() == pytest.approx((100.0, 25.0, 70.0))


def test_hyperband_trials_count_the_epochs_they_trained(tmp_path):
    oracle = with_space(kt.oracles.HyperbandOracle(kt.Objective("val_miou", "max"), max_epochs=9, factor=3, seed=1), tmp_path)
    clock = Clock()
    budget = TimeBudget(oracle, 2.0, final_epochs=9, say=lambda _: None, clock=clock)
    ran = run_trials(oracle, clock, besides_s=2.0)
    assert budget.spent and ran > 3
    assert budget.seconds_an_epoch() == pytest.approx(5.0)  # a continued trial's earlier epochs are not counted again
    elapsed, _, final = budget.estimates()
    assert final == pytest.approx(9 * 5.0 + 2.0) and elapsed + final <= 120.0 + 9 * 5.0 + 2.0  # at most one trial over


def test_trials_of_an_earlier_start_do_not_count_against_this_one(tmp_path):
    oracle, clock = random_oracle(tmp_path), Clock()
    for _ in range(3):  # an earlier start of the sweep, without a budget, on a faster machine
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(trial.trial_id, {"val_miou": 0.5, "train_seconds": 0.2, "epochs_trained": 2})
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
    clock.now += 10_000  # hours ago
    budget = TimeBudget(oracle, 1.0, final_epochs=4, say=lambda _: None, clock=clock)
    # As in the first test, 4 trials of this start; counting the earlier ones would price the final run at 0.4 s.
    assert run_trials(oracle, clock) == 4 and budget.spent


def test_a_sweep_out_of_time_still_trains_its_final_run_and_promotes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tiny_dataset(tmp_path / "photos")
    exp = tiny_experiment(tmp_path, data, tuner={"max_trials": 6, "max_minutes": 0.001, "final_epochs": 1})
    result = invoke("sweep", exp)
    assert result.exit_code == 0, result.output
    assert "time budget:" in result.output and "no new trial starts" in result.output
    assert "drew no new point" not in result.output  # the budget, not the space, ended it
    client = store_client(tmp_path)
    [parent] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`petloc.kind` = 'sweep'")
    runs = children(client, parent.info.run_id)
    assert sorted(r.data.tags["trial_id"] for r in runs) == ["0", "final"]
    assert parent.info.status == "FINISHED" and parent.data.tags["tuner.max_minutes"] == "0.001"
    assert client.get_model_version_by_alias("petloc", "champion") is not None
