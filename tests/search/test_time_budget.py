"""tuner.max_minutes: the search starts no trial that, with the final run after it, might end
after the budget; real Keras Tuner oracles and a clock the test moves, then whole sweeps."""

import re

import keras_tuner as kt
import pytest

from petloc.config import parse_experiment
from petloc.search import time_budget as budgeted
from petloc.search.time_budget import PACE, TimeBudgetedOracle
from petloc.tracking.log import EpochLogger
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


TrialStatus = kt.engine.trial.TrialStatus
OBJECTIVE = kt.Objective("val_miou", "max")


def random_oracle(tmp_path, max_minutes=None, **time_budget):
    """The sweep's random oracle, with `max_minutes` and the rest of TimeBudgetedOracle's keywords."""
    return with_space(
        budgeted.RandomSearchOracle(
            OBJECTIVE, max_trials=30, seed=1, max_minutes=max_minutes, **time_budget
        ),
        tmp_path,
    )


def hyperband_oracle(tmp_path, max_minutes=None, **time_budget):
    return with_space(
        budgeted.HyperbandOracle(
            OBJECTIVE, max_epochs=9, factor=3, seed=1, max_minutes=max_minutes, **time_budget
        ),
        tmp_path,
    )


def finish_trial(oracle, clock, trial, epoch_s, first_extra_s, besides_s, epochs):
    """One trial as TrackedTuner runs it: its epochs (the first also traces), the rest, its report."""
    values = trial.hyperparameters.values  # Hyperband continues a trial from its initial epoch
    trained = values.get("tuner/epochs", epochs) - values.get("tuner/initial_epoch", 0)
    clock.now += epoch_s * trained + first_extra_s + besides_s
    steady = epoch_s if trained >= 2 else epoch_s + first_extra_s
    oracle.update_trial(
        trial.trial_id, {"val_miou": 0.5, "epoch_seconds": steady, "epochs_trained": trained}
    )
    trial.status = TrialStatus.COMPLETED
    oracle.end_trial(trial)


def run_trials(
    oracle, clock, epoch_s=5.0, first_extra_s=0.0, besides_s=0.0, epochs=2, limit=60
) -> int:
    """Asks for trials one at a time until the oracle stops; returns how many ran."""
    for ran in range(limit):
        trial = oracle.create_trial("tuner0")
        if trial.status == TrialStatus.STOPPED:
            return ran
        finish_trial(oracle, clock, trial, epoch_s, first_extra_s, besides_s, epochs)
    raise AssertionError("the oracle never stopped")


def test_no_trial_starts_that_would_leave_the_final_run_outside_the_budget(tmp_path):
    # 60 s; a trial is 2 epochs of 5 s; the final run 4 epochs (20 s).
    clock, said = Clock(), []
    oracle = random_oracle(
        tmp_path, 1.0, trial_epochs=2, final_epochs=4, say=said.append, clock=clock
    )
    # after 3 (30 s) a 4th fits: 30 + 10 + 20 = 60; after 4 it would not
    assert run_trials(oracle, clock) == 4
    assert oracle.estimates() == (40.0, 10.0, 20.0)
    assert said == [
        "\ntime budget (tuner.max_minutes): 40 s of 1 min 00 s spent, 4 trials ended; the next trial "
        "(2 epochs) takes about 10 s; about 20 s kept for the final run; no new trial starts"
    ]


def test_a_final_run_longer_than_what_is_left_is_said_at_once(tmp_path):
    # A slower machine than the file was sized for: 2-epoch trials of 30 s, a final run of
    # 10 epochs (150 s) in 2 minutes.
    clock, said = Clock(), []
    oracle = random_oracle(
        tmp_path, 2.0, trial_epochs=2, final_epochs=10, say=said.append, clock=clock
    )
    assert run_trials(oracle, clock, epoch_s=15.0) == 1
    assert said[1] == (
        "time budget (tuner.max_minutes): the final run alone (10 epochs, about 2 min 30 s) "
        "will end about 1 min 00 s past it; lower tuner.final_epochs or raise tuner.max_minutes "
        "(Ctrl+C, then the sweep with the new value resumes)"
    )


def test_the_final_run_is_priced_by_steady_epochs_not_by_short_trials(tmp_path):
    # 1-epoch trials of 5 s, which also trace (3 s) and score and log (20 s): 28 s each. The
    # final run of 10 epochs costs 50 s plus the 23 s besides them, not 10 x 28 s.
    clock = Clock()
    oracle = random_oracle(
        tmp_path, 3.0, trial_epochs=1, final_epochs=10, say=lambda _: None, clock=clock
    )
    ran = run_trials(oracle, clock, first_extra_s=3.0, besides_s=20.0, epochs=1)
    # A 1-epoch trial's epoch (8 s, traced) is all there is to go on: trial 8 + 20, final 80 + 20.
    assert ran == 2 and oracle.estimates() == pytest.approx((56.0, 28.0, 100.0))
    clock = Clock()
    oracle = random_oracle(
        tmp_path / "b", 3.0, trial_epochs=3, final_epochs=10, say=lambda _: None, clock=clock
    )
    # a steady epoch seen: 5 s
    finish_trial(oracle, clock, oracle.create_trial("tuner0"), 5.0, 3.0, 20.0, epochs=3)
    _elapsed, trial, final = oracle.estimates()
    assert (trial, final) == pytest.approx((15 + 23, 50 + 23))


def test_a_filled_final_run_trains_as_many_epochs_as_the_rest_of_the_budget_holds(tmp_path):
    clock = Clock()
    oracle = random_oracle(
        tmp_path, 10.0, trial_epochs=2, final_epochs=4, say=lambda _: None, clock=clock
    )
    assert oracle.final_epochs_for({}) == 4  # nothing timed yet: the epochs asked
    for _ in range(3):  # 3 trials of 2 epochs of 5 s, 6 s besides: 48 s of 600
        finish_trial(oracle, clock, oracle.create_trial("tuner0"), 5.0, 0.0, 6.0, epochs=2)
    # 552 s left, 6 s of it fixed and 30 s (5 %) kept for the ensemble and the promotion: 516 s of 5-s epochs.
    assert oracle.final_epochs_for({}) == 103
    clock.now += 560  # a search that used the budget: never fewer than final_epochs
    assert oracle.final_epochs_for({}) == 4


def test_a_sweep_that_fills_its_budget_trains_its_final_run_longer(tmp_path, monkeypatch):
    # The sums are the test above's; here, that the sweep trains its final run for what they say.
    # As if the trial had taken no time (a loaded machine could leave nothing to fill), and at
    # most 3 epochs, which the tiny model's sub-second epochs always fill.
    monkeypatch.chdir(tmp_path)
    asked = []
    real = TimeBudgetedOracle.final_epochs_for
    monkeypatch.setattr(TimeBudgetedOracle, "left", lambda self: self.budget_seconds)
    monkeypatch.setattr(
        TimeBudgetedOracle,
        "final_epochs_for",
        lambda self, values: asked.append(min(3, real(self, values))) or asked[-1],
    )
    # Trials of 2 epochs: the second is a steady one, whatever the first's tracing took on a loaded machine.
    exp = tiny_experiment(
        tmp_path,
        tiny_dataset(tmp_path / "photos"),
        train={"epochs": 2},
        space={"head_units": [8, 16]},
        tuner={"max_trials": 1, "max_minutes": 1, "final_epochs": 1, "fill_budget": True},
    )
    result = invoke("sweep", exp)
    assert result.exit_code == 0, result.output
    [epochs] = asked
    assert (
        epochs == 3
        and f"for {epochs} epochs (tuner.fill_budget: the time left holds {epochs - 1} more than tuner.final_epochs)"
        in result.output
    )
    client = store_client(tmp_path)
    [final] = [
        r
        for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        if r.data.tags.get("trial_id") == "final"
    ]
    assert (
        final.data.params["epochs"] == str(epochs)
        and final.data.metrics["epochs_trained"] == epochs
    )
    again = invoke("sweep", exp)  # run again: the final run is done, at whatever length it filled
    assert again.exit_code == 0 and "final run:" not in again.output, again.output


def test_a_trial_and_the_final_run_are_priced_by_the_backbone_they_may_train(tmp_path):
    clock, speed = Clock(), {"fast": 5.0, "slow": 20.0}
    oracle = budgeted.RandomSearchOracle(
        OBJECTIVE,
        max_trials=30,
        seed=1,
        max_minutes=10.0,
        trial_epochs=2,
        final_epochs=4,
        say=lambda _: None,
        clock=clock,
    )
    oracle._set_project_dir(str(tmp_path), "budget")
    hp = oracle.get_space()
    hp.Choice("backbone", ["fast", "slow"])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    oracle.update_space(hp)
    seen = set()
    while seen != {"fast", "slow"}:  # 2-epoch trials; the fast backbone scores better
        trial = oracle.create_trial("tuner0")
        backbone = trial.hyperparameters.values["backbone"]
        clock.now += 2 * speed[backbone]
        oracle.update_trial(
            trial.trial_id,
            {
                "val_miou": 0.6 if backbone == "fast" else 0.4,
                "epoch_seconds": speed[backbone],
                "epochs_trained": 2,
            },
        )
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
        seen.add(backbone)
    # Drawn fast: the final run trains a fast trial whichever wins; drawn slow, it may train that one.
    assert oracle.estimates({"backbone": "fast", "learning_rate": 1e-3})[1:] == (10.0, 20.0)
    assert oracle.estimates({"backbone": "slow", "learning_rate": 1e-3})[1:] == (40.0, 80.0)
    assert oracle.estimates()[1:] == (40.0, 80.0)  # nothing drawn: the slowest


def test_hyperband_never_ends_after_the_budget(tmp_path):
    # Hyperband runs its longest trials last: the next trial is priced as its longest (9 epochs).
    for minutes in (2.0, 4.0, 8.0):
        clock = Clock()
        oracle = hyperband_oracle(
            tmp_path / str(minutes),
            minutes,
            trial_epochs=9,
            final_epochs=9,
            say=lambda _: None,
            clock=clock,
        )
        ran = run_trials(oracle, clock, first_extra_s=1.0, besides_s=2.0)
        elapsed, _, final = oracle.estimates()
        assert ran >= 2 and elapsed + final <= minutes * 60, (minutes, ran, elapsed, final)


def test_hyperband_trials_are_priced_at_their_own_epochs_and_a_trial_that_does_not_fit_is_not_drawn(
    tmp_path,
):
    # Hyperband (max 9 epochs, factor 3) starts with 1-epoch trials; epochs of 10 s, final run 10 epochs.
    clock = Clock()
    oracle = hyperband_oracle(
        tmp_path, 3.0, trial_epochs=9, final_epochs=10, say=lambda _: None, clock=clock
    )
    ran = run_trials(oracle, clock, epoch_s=10.0)
    # 180 s: the final run keeps 100; 1-epoch trials of 10 s fit until 70 s elapsed (8 trials), where
    # a trial priced at Hyperband's longest (90 s) would have stopped the search after none.
    assert ran == 8 and oracle.spent.endswith(
        "the next trial (1 epoch) takes about 10 s; about 1 min 40 s kept for the final run"
    )
    state = oracle.get_state()
    # the 9th draw was undone
    assert sum(len(rounds[0]) for rounds in (b["rounds"] for b in state["brackets"])) == 8
    # A later start with more time hands out that same next trial (as a sweep without a budget
    # draws it ninth), and Hyperband goes on.
    oracle.save()
    again = hyperband_oracle(
        tmp_path, 30.0, trial_epochs=9, final_epochs=10, say=lambda _: None, clock=clock
    )
    again.reload()
    unbudgeted = hyperband_oracle(tmp_path / "unbudgeted")
    for _ in range(8):
        finish_trial(unbudgeted, Clock(), unbudgeted.create_trial("tuner0"), 10.0, 0.0, 0.0, 2)
    ninth = again.create_trial("tuner0")
    assert ninth.hyperparameters.values == unbudgeted.create_trial("tuner0").hyperparameters.values
    finish_trial(again, clock, ninth, 10.0, 0.0, 0.0, 2)
    assert run_trials(again, clock, epoch_s=10.0) > 0


def test_a_worker_waiting_for_running_trials_is_told_to_wait(tmp_path):
    # A grid with two workers: once its points are handed out, a worker asks while the other's
    # trial still runs, and the oracle says IDLE (wait), not "stopped"; the budget passes that on.
    clock = Clock()
    oracle = budgeted.GridSearchOracle(
        OBJECTIVE,
        seed=1,
        max_minutes=10.0,
        trial_epochs=2,
        final_epochs=2,
        say=lambda _: None,
        clock=clock,
    )
    oracle._set_project_dir(str(tmp_path), "grid")
    hp = oracle.get_space()
    hp.Choice("head_units", [8, 16, 32])
    oracle.update_space(hp)
    first, second = oracle.create_trial("worker-1"), oracle.create_trial("worker-2")
    finish_trial(oracle, clock, first, 5.0, 0.0, 0.0, 2)
    waits = oracle.create_trial("worker-1")
    assert waits.status in (TrialStatus.IDLE, TrialStatus.RUNNING) and not oracle.spent
    finish_trial(oracle, clock, second, 5.0, 0.0, 0.0, 2)
    assert (
        oracle.estimates() is not None
        and oracle.create_trial("worker-1").status != TrialStatus.STOPPED
    )


def test_with_workers_a_trial_is_priced_whole_not_at_the_sweeps_pace(tmp_path):
    # Two workers, one started 5 s after the other, trials of 10 s: a trial ends every 5 s.
    # A trial handed out now still takes its whole length, and the final run waits for it.
    clock = Clock()
    oracle = random_oracle(
        tmp_path, 1.0, trial_epochs=2, final_epochs=2, say=lambda _: None, clock=clock
    )
    asks = [(1000.0, "worker-1"), (1005.0, "worker-2")]  # (when, who) asks for a trial
    out = []  # (ends, trial)
    while asks or out:
        if asks and (not out or asks[0][0] <= out[0][0]):
            clock.now, worker = asks.pop(0)
            trial = oracle.create_trial(worker)
            if trial.status != TrialStatus.STOPPED:
                out = sorted([*out, (clock.now + 10.0, trial, worker)], key=lambda each: each[0])
            continue
        clock.now, trial, worker = out.pop(0)
        oracle.update_trial(
            trial.trial_id, {"val_miou": 0.5, "epoch_seconds": 5.0, "epochs_trained": 2}
        )
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
        asks.append((clock.now, worker))
    last_end = clock.now - 1000.0
    # then the final run of 2 epochs
    assert oracle.spent and len(oracle.took) >= 6 and last_end + 10.0 <= 60.0


def test_a_slower_trial_still_running_counts_before_it_ends(tmp_path):
    # Two workers: a slow backbone (epochs of 20 s) and a fast one (5 s), 3 epochs a trial.
    clock = Clock()
    oracle = random_oracle(
        tmp_path, 2.0, trial_epochs=3, final_epochs=3, say=lambda _: None, clock=clock
    )
    slow, fast = oracle.create_trial("worker-1"), oracle.create_trial("worker-2")
    clock.now += 15.0
    oracle.update_trial(fast.trial_id, {"val_miou": 0.5, "epoch_seconds": 5.0, "epochs_trained": 3})
    fast.status = TrialStatus.COMPLETED
    oracle.end_trial(fast)
    assert oracle.estimates() == (15.0, 15.0, 15.0)  # the fast trial alone: another fits
    clock.now += 25.0
    oracle.update_trial(slow.trial_id, {PACE: 20.0}, step=2)  # the slow one, after its second epoch
    # It may win, and the final run would train its epochs: 40 + 60 + 60 > 120 s.
    assert oracle.estimates() == (40.0, 60.0, 60.0)
    assert oracle.create_trial("worker-2").status == TrialStatus.STOPPED and oracle.spent


def test_a_resumed_sweep_times_only_its_own_start_and_counts_a_retried_trial(tmp_path):
    oracle, clock = random_oracle(tmp_path), Clock()
    for _ in range(3):  # an earlier start, without a budget, on a much faster machine
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(
            trial.trial_id, {"val_miou": 0.5, "epoch_seconds": 0.1, "epochs_trained": 2}
        )
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
    cut_short = oracle.create_trial("tuner0")  # then stopped mid-trial
    oracle.save()
    clock.now += 10_000
    again = random_oracle(
        tmp_path, 1.0, trial_epochs=2, final_epochs=4, say=lambda _: None, clock=clock
    )
    again.reload()  # the tuner reloads its oracle after building it, budget and all
    retried = again.create_trial("tuner0")
    # Keras Tuner hands the cut-short trial out again, without a draw
    assert retried.trial_id == cut_short.trial_id
    finish_trial(again, clock, retried, 5.0, 0.0, 0.0, 2)
    # The retried trial counts as this start's; the earlier 0.1-s epochs do not: 3 more as in the first test.
    assert run_trials(again, clock) == 3 and again.spent and len(again.took) == 4


def test_a_sweep_out_of_time_still_trains_its_final_run_and_promotes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tiny_dataset(tmp_path / "photos")
    exp = tiny_experiment(
        tmp_path,
        data,
        train={"epochs": 2},
        space={"head_units": [8, 16, 32]},
        tuner={"max_trials": 6, "max_minutes": 0.001, "final_epochs": 1},
    )
    result = invoke("sweep", exp)
    assert result.exit_code == 0, result.output
    assert (
        "time budget (tuner.max_minutes):" in result.output
        and "no new trial starts" in result.output
    )
    assert "drew no new point" not in result.output  # the budget, not the space, ended it
    # The trial's line tells what is left of the budget, not of the trials it will not run.
    assert re.search(
        r"\[sweep: 1 of 6 trials, \d+ s elapsed, at most 0 s left \(tuner.max_minutes, final run included\)\]$",
        result.output,
        re.M,
    ), result.output
    client = store_client(tmp_path)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`petloc.kind` = 'sweep'"
    )
    runs = children(client, parent.info.run_id)
    assert sorted(r.data.tags["trial_id"] for r in runs) == ["0", "final"]
    assert parent.info.status == "FINISHED" and parent.data.tags["tuner.max_minutes"] == "0.001"
    assert parent.data.tags["time_budget"].startswith("the search stopped: ")
    [trial] = [r for r in runs if r.data.tags["trial_id"] == "0"]
    assert 0 < trial.data.metrics["epoch_seconds"] <= trial.data.metrics["train_seconds"]
    # As it trained, the trial told the oracle its steady epoch (the second): the budget's view of a running trial.
    trial_files = list((tmp_path / "mlruns" / "tuner").glob("**/trial.json"))
    assert trial_files and all(PACE in each.read_text() for each in trial_files)
    assert client.get_model_version_by_alias("petloc", "champion") is not None


def test_a_one_epoch_trial_reports_its_epoch_without_the_tracing_of_its_first_batches(
    tmp_path, monkeypatch
):
    # Hyperband's first trials train one epoch, whose first training and validation batches also
    # trace; the budget prices a 40-epoch final run by that epoch, so the tracing comes out.
    # no logs, so nothing is logged; MLflow's client still opens a store
    monkeypatch.chdir(tmp_path)
    clock = Clock()
    monkeypatch.setattr("petloc.tracking.log.time.perf_counter", clock)
    logger = EpochLogger("no-run")
    clock.now = 0.0
    logger.on_epoch_begin(0)
    for end in (5.0, 6.0, 7.0, 8.0):  # 4 training batches of 1 s, the first also traced (4 s more)
        clock.now = end
        logger.on_train_batch_end(0)
    logger.on_test_begin()  # validation: 3 batches of 0.5 s, the first also traced (3 s more)
    for step in (3.5, 0.5, 0.5):
        clock.now += step
        logger.on_test_batch_end(0)
    logger.on_test_end()
    logger.on_epoch_end(0)
    assert logger.seconds == [12.5]
    assert logger.epoch_seconds() == pytest.approx(12.5 - 4.0 - 3.0)


def test_keras_calls_the_hooks_that_time_a_first_epoch(tmp_path, monkeypatch):
    import keras
    import mlflow
    import numpy as np

    from petloc.tracking import store

    monkeypatch.chdir(tmp_path)
    store.configure()  # this folder's mlruns/, as every petloc command in a test
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    logger = EpochLogger(
        mlflow.MlflowClient()
        .create_run(mlflow.MlflowClient().create_experiment("hooks"))
        .info.run_id
    )
    x = np.zeros((40, 4), "float32")
    model.fit(
        x,
        x[:, :1],
        batch_size=8,
        epochs=1,
        validation_data=(x[:24], x[:24, :1]),
        callbacks=[logger],
        verbose=0,
    )
    # began, then each batch's end
    assert [len(marks) for marks in logger.first_epoch.values()] == [1 + 5, 1 + 3]
    assert 0 < logger.epoch_seconds() <= logger.seconds[0]


@pytest.mark.parametrize("kind", ["random", "bayesian", "grid", "hyperband"])
def test_every_oracle_a_sweep_can_choose_keeps_the_budget(tmp_path, kind):
    # The oracle the tuner builds from the file (ORACLES) keeps the budget: 2 minutes, 9-epoch trials
    # (Hyperband's shorter first), a final run of 4 epochs, epochs of 5 s.
    from petloc.search.tuner import ORACLES, SpaceHyperModel

    exp = parse_experiment(
        {
            "space": {"head_units": list(range(8, 200))},
            "train": {"epochs": 9},
            "tuner": {"kind": kind, "max_trials": 100},
        }
    )
    clock = Clock()
    oracle = ORACLES[kind](
        exp, max_minutes=2.0, trial_epochs=9, final_epochs=4, say=lambda _: None, clock=clock
    )
    oracle._set_project_dir(str(tmp_path), kind)
    hp = oracle.get_space()
    SpaceHyperModel(exp).declare_hyperparameters(hp)
    oracle.update_space(hp)
    ran = run_trials(oracle, clock, epochs=9, limit=100)
    elapsed, _, final = oracle.estimates()
    assert (
        isinstance(oracle, TimeBudgetedOracle)
        and oracle.spent
        and ran >= 2
        and elapsed + final <= 120.0
    )
