"""A Keras Tuner user's own search, tracked by `petloc.TrackedTuner`, in Keras Tuner's own
distributed mode: one script run by a chief and two workers (KERASTUNER_* variables), all
logging to one tracking server. The workers' trials are child runs of the chief's parent run,
each once; the chief ranks them all, promotes the best and ends the parent run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from tests.helpers import free_port, petloc_env
from tests.search.test_distributed_sweep import Lines, describe, finish, leaderboard
from tests.servers import tracking_server

# The user's script: nothing in it but Keras, Keras Tuner, their data and one petloc line;
# and the test's choreography: worker tuner1's first trial fails; each worker waits for the
# other before it searches, so that both take trials; the chief waits for the test's go.
SCRIPT = """
import os, sys, time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
from sklearn.datasets import load_digits

from petloc.search.tracked import TrackedTuner

digits = load_digits()
x = (digits.data / 16).astype("float32")
x_train, y_train, x_val, y_val = x[:1000], digits.target[:1000], x[1000:], digits.target[1000:]
me = os.environ["KERASTUNER_TUNER_ID"]


def wait_for(*names):
    while not all(Path(sys.argv[1], name).exists() for name in names):
        time.sleep(0.2)


class Digits(kt.HyperModel):
    failed = False

    def build(self, hp):
        model = keras.Sequential([
            keras.Input((64,)),
            keras.layers.Dense(hp.Int("units", 8, 32, step=8), activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ])
        model.compile(
            keras.optimizers.Adam(hp.Float("lr", 1e-3, 1e-2, sampling="log")),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def fit(self, hp, model, *args, **kwargs):
        if me == "tuner1" and not Digits.failed:
            Digits.failed = True
            raise ValueError("this worker's first trial fails")
        return model.fit(*args, **kwargs)


tuner = TrackedTuner(
    Digits(),
    objective="val_accuracy",
    oracle="random",
    max_trials=4,
    seed=3,
    experiment="digits-team",
    registry="digits",
    directory=sys.argv[1],
    project_name="digits",
)
if me == "chief":
    wait_for("go")
else:
    Path(sys.argv[1], f"{me}.ready").touch()
    wait_for("tuner0.ready", "tuner1.ready")
tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=2, verbose=0)
if me == "chief":
    print("RESULT", tuner.result.parent_run_id, len(tuner.result.leaderboard), tuner.result.failed)
    import mlflow
    champion = mlflow.pyfunc.load_model("models:/digits@champion")
    best = tuner.get_best_models()[0]
    gap = np.abs(champion.predict(x_val[:20]) - best.predict(x_val[:20], verbose=0)).max()
    assert gap < 1e-5, gap
    print("CHAMPION PREDICTS AS THE BEST MODEL")
"""


def start(script: Path, tuner_id: str, port: int, folder: Path, uri: str) -> subprocess.Popen:
    env = {
        **petloc_env(),
        "MLFLOW_TRACKING_URI": uri,
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
    }
    return subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_workers_log_a_users_trials_under_the_chiefs_parent_run(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "tuning"  # one folder for all three, as Keras Tuner's docs run them
    with tracking_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts") as uri:
        port = free_port()
        workers = [Lines(start(script, n, port, folder, uri)) for n in ("tuner0", "tuner1")]
        chief = start(script, "chief", port, folder, uri)
        # The workers search first: each waits for the chief's parent run, then finds it.
        for worker in workers:
            worker.wait_for("waiting up to", timeout=180)
        (folder / "go").touch()
        outputs = [worker.text(timeout=300) for worker in workers]
        out = finish(chief, timeout=300)
        client = MlflowClient(uri, registry_uri=uri)
        experiment = client.get_experiment_by_name("digits-team")
        assert experiment is not None, out
        (parent,) = client.search_runs([experiment.experiment_id], "tags.`petloc.kind` = 'sweep'")
        trials = client.search_runs([experiment.experiment_id], "tags.trial_id != ''")
        board = leaderboard(client, parent.info.run_id)
        versions = client.search_model_versions("name = 'digits'")
    assert chief.returncode == 0, out
    assert all(w.process.returncode == 0 for w in workers), outputs
    for output in outputs:
        assert f"go under the chief's parent run {parent.info.run_id}" in output

    story = describe(trials, out, *outputs)
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {parent.info.run_id}
    assert Counter(run.data.tags["trial_id"] for run in trials) == {"0": 1, "1": 1, "2": 1, "3": 1}
    finished = [run for run in trials if run.info.status == "FINISHED"]
    (failed,) = [run for run in trials if run.info.status == "FAILED"]
    assert len(finished) == 3, story
    assert failed.data.tags["petloc.worker"] == "tuner1", story
    assert "this worker's first trial fails" in failed.data.tags["error"]
    # both workers ran trials; the chief ran none
    assert {run.data.tags["petloc.worker"] for run in finished} == {"tuner0", "tuner1"}, story
    assert all("val_accuracy" in run.data.metrics for run in finished)
    assert all(run.data.metrics.get("train/loss") is not None for run in finished)
    # The chief ranked every finished trial, ended the parent run once the workers were done,
    # and promoted the best trial once.
    assert parent.info.status == "FINISHED", story
    assert parent.info.end_time >= max(run.info.end_time for run in trials)
    assert f"RESULT {parent.info.run_id} 3 1" in out
    assert sorted(row["trial"] for row in board) == sorted(
        run.data.tags["trial_id"] for run in finished
    )
    (version,) = versions
    assert version.run_id == parent.data.tags["best_run_id"]
    assert "CHAMPION PREDICTS AS THE BEST MODEL" in out, out


def test_a_worker_whose_chief_never_comes_says_so_in_one_line(tmp_path, monkeypatch):
    """A worker waits for its chief's parent run, saying so once, then gives up in one line;
    the RUNNING parent run a killed chief left at the same address is not taken for it."""
    import petloc.search.tracked as tracked

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracked, "CHIEF_WAIT_SECONDS", 1.5)
    # a worker that took the stale run would wait an hour for the chief's oracle: seconds here
    monkeypatch.setattr("keras_tuner.src.distribute.oracle_client.TIMEOUT", 5)
    port = str(free_port())
    for name, value in {
        "KERASTUNER_TUNER_ID": "tuner0",
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": port,
    }.items():
        monkeypatch.setenv(name, value)
    heard: list[str] = []
    tuner = tracked.TrackedTuner(
        _tiny_build,
        objective="val_loss",
        oracle="random",
        max_trials=1,
        experiment="nobody",
        directory=str(tmp_path / "kt"),
        project_name="lonely",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        say=heard.append,
    )
    client = MlflowClient()  # the store the tuner uses
    dead_chief = f"{socket.gethostname()}:{os.getpid()}:0"  # this pid, another start: gone
    stale = {"petloc.kind": "sweep", "petloc.sweep": "lonely", "petloc.chief": f"127.0.0.1:{port}"}
    client.create_run(
        client.create_experiment("nobody"), tags={**stale, "petloc.owner": dead_chief}
    )
    with pytest.raises(PetlocError) as raised:
        tuner.search([[0.0]], [0.0], epochs=1)
    assert len(str(raised.value).splitlines()) == 1
    assert f"no chief at 127.0.0.1:{port} started its parent run" in str(raised.value)
    assert len(heard) == 1 and "waiting up to" in heard[0]
    assert not (tmp_path / "kt" / "lonely" / "tracking.json").exists()


def _tiny_build(hp):
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(hp.Int("units", 1, 2))])
    model.compile("sgd", "mse")
    return model
