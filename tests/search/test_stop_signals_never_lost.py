"""A stop signal is never lost: Python drops what a signal handler raises inside a weakref
callback or a `__del__` (garbage collection), and petloc sends that signal again."""

import signal
import subprocess
import sys

import pytest

from petloc import stopping
from tests.helpers import children, invoke, petloc_env, store_client, tiny_dataset, tiny_experiment

# A stop that arrives while garbage collection runs a weakref callback, as SQLAlchemy's
# registry does in a sweep worker (the case that let a stopped worker finish its trial).
STOPPED_DURING_A_CALLBACK = """
import os, signal, sys, time, weakref
from petloc import stopping

stopping.install()

class Thing:
    pass

def on_collected(_ref):
    os.kill(os.getpid(), signal.{signal})
    for _ in range(200_000):  # the handler runs here, where Python drops what it raises
        pass

try:
    thing = Thing()
    ref = weakref.ref(thing, on_collected)
    del thing
    print("went on", flush=True)
    time.sleep(10)
    print("never stopped", flush=True)
except KeyboardInterrupt as err:
    print("stopped by", type(err).__name__, flush=True)
"""


@pytest.mark.parametrize(
    "sig, raised", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")]
)
def test_a_stop_dropped_inside_a_callback_is_sent_again(sig, raised):
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_DURING_A_CALLBACK.format(signal=sig)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert done.stdout.splitlines() == ["went on", f"stopped by {raised}"], (
        done.stdout + done.stderr
    )
    assert "Traceback" not in done.stderr  # an interrupt is no bug: no "Exception ignored" trace


# A stop that library code turns into an error of its own (TensorFlow, tracing a model when
# SIGTERM came, raised "TypeError: Failed to convert elements of (None,) to Tensor").
STOPPED_INSIDE_A_LIBRARY = """
import os, signal
from petloc import stopping
from petloc.tracking import runs, store

stopping.install()
store.configure()
run_id = runs.create_run(runs.experiment_id("stops"), "trial")

def library_call():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200_000):
            pass
    except KeyboardInterrupt:
        raise TypeError("Failed to convert elements of (None,) to Tensor") from None

try:
    with runs.run_status(run_id):
        library_call()
except Exception as err:
    print("went on after", type(err).__name__)
except KeyboardInterrupt as err:
    print("stopped by", type(err).__name__, "after", type(err.__cause__).__name__)
print(run_id)
"""


def test_a_stop_turned_into_another_error_still_stops_and_ends_the_run_killed(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_INSIDE_A_LIBRARY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=petloc_env(),
    )
    assert done.returncode == 0 and len(done.stdout.splitlines()) >= 2, done.stdout + done.stderr
    said, run_id = done.stdout.splitlines()[-2:]
    assert said == "stopped by Terminated after TypeError", done.stdout + done.stderr
    run = store_client(tmp_path).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"].startswith(
        "Terminated: signal 15 (surfaced as TypeError: Failed to convert elements"
    )


# A stop that arrives while the store creates a run (a worker's trial run, as Ctrl+C found
# it in tests/search/test_distributed_sweep.py): raised inside the call, the run was made but its ID never
# came back, and it stayed RUNNING.
STOPPED_WHILE_A_RUN_IS_CREATED = """
import os, signal
from mlflow.tracking import MlflowClient
from petloc import stopping
from petloc.tracking import runs, store

stopping.install()
store.configure()
experiment_id = runs.experiment_id("stops")
creates = MlflowClient.create_run

def create_run(self, *args, **kwargs):
    run = creates(self, *args, **kwargs)
    os.kill(os.getpid(), signal.{signal})  # the store has made it; its answer is on the way back
    for _ in range(200_000):
        pass
    return run

MlflowClient.create_run = create_run
try:
    runs.create_run(experiment_id, "trial")
    print("went on")
except KeyboardInterrupt as err:
    print("stopped by", type(err).__name__)
"""


@pytest.mark.parametrize(
    "sig, raised", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")]
)
def test_a_stop_while_the_store_creates_a_run_ends_that_run_killed(tmp_path, sig, raised):
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_A_RUN_IS_CREATED.format(signal=sig)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=petloc_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert done.stdout.splitlines()[-1:] == [f"stopped by {raised}"], done.stdout + done.stderr
    client = store_client(tmp_path)
    [run] = client.search_runs([client.get_experiment_by_name("stops").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"].startswith(raised)


SECOND_CTRL_C_IN_A_HELD_CALL = """
import signal
from petloc import stopping

stopping.install()
try:
    with stopping.held_back():
        signal.raise_signal(signal.SIGINT)
        print("held")
        signal.raise_signal(signal.SIGINT)
        print("held again")
except KeyboardInterrupt:
    print("stopped")
"""


def test_a_second_ctrl_c_does_not_wait_for_a_held_call():
    done = subprocess.run(
        [sys.executable, "-c", SECOND_CTRL_C_IN_A_HELD_CALL],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert done.stdout.splitlines() == ["held", "stopped"], done.stdout + done.stderr


def test_a_sweep_whose_stop_was_swallowed_starts_no_other_trial(tmp_path, monkeypatch):
    """The stop came during trial 0 and some library swallowed it: trial 1 never starts."""
    from petloc.search.tuner import SweepTuner

    trial_ends = SweepTuner.on_trial_end

    def on_trial_end(self, trial):
        # as the SIGTERM handler records it
        monkeypatch.setattr(stopping, "_stopped_by", signal.SIGTERM)
        trial_ends(self, trial)

    monkeypatch.setattr(SweepTuner, "on_trial_end", on_trial_end)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tiny_experiment(
        tmp_path, tiny_dataset(tmp_path / "photos"), space={"head_units": [8, 16, 32]}
    )
    result = invoke("sweep", exp)
    assert result.exit_code != 0 and "Leaderboard" not in result.output, result.output
    client = store_client(tmp_path)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`petloc.kind` = 'sweep'"
    )
    assert parent.info.status == "KILLED"
    assert parent.data.tags["error"] == "Terminated: signal 15 (it had been swallowed)"
    assert [
        (run.data.tags["trial_id"], run.info.status) for run in children(client, parent.info.run_id)
    ] == [("0", "FINISHED")]


def test_a_stop_turned_into_an_error_by_an_end_step_stops_the_sweep(monkeypatch):
    """The final run or the ensemble failing goes on without it; being stopped does not."""
    from petloc.search.sweep import _end_step

    said = []

    def traces_a_model():
        raise TypeError("Failed to convert elements of (None,) to Tensor")

    # no stop: one line, and on
    assert _end_step("the ensemble", traces_a_model, said.append) is None and said
    monkeypatch.setattr(stopping, "_stopped_by", signal.SIGTERM)
    with pytest.raises(stopping.Terminated, match="surfaced as TypeError"):
        _end_step("the ensemble", traces_a_model, said.append)
    assert len(said) == 1
