"""The terminal shows petloc's own lines: no Keras Tuner prints or TensorFlow start-up log from
a resumed sweep or from the model server `petloc serve` starts, unless `petloc --verbose`."""

import os
import re
import sys
from pathlib import Path

import pytest

from petloc.quiet import VERBOSE_SETTING
from tests.helpers import free_port, petloc_process, tiny_dataset, tiny_experiment
from tests.serving.test_served_model import serve_until_answering, stop_group

TENSORFLOW_LINE = re.compile(r"tensorflow|oneDNN|cpu_feature_guard|absl|cuda", re.IGNORECASE)
KERAS_TUNER_LINE = re.compile(r"Reloading Tuner|Search: Running Trial|Trial \S+ Complete")


def user_env() -> dict:
    """A user's environment: none of the settings that change what petloc shows."""
    unset = ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_TRACKING_URI", VERBOSE_SETTING)
    return {k: v for k, v in os.environ.items() if k not in unset}


def sweep(root: Path, *args):
    result = petloc_process(*args, cwd=root, env=user_env(), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A project with one sweep of one trial done, of three the space allows."""
    root = tmp_path_factory.mktemp("quiet")
    data = tiny_dataset(root / "photos", count=40)
    experiment = tiny_experiment(
        root,
        data,
        space={"learning_rate": [0.003, 0.01, 0.001]},
        tuner={"max_trials": 1},
    )
    sweep(root, "sweep", experiment)
    return root, experiment


@pytest.mark.slow
def test_a_resumed_sweep_shows_no_tuner_or_tensorflow_lines_unless_verbose(swept):
    root, experiment = swept
    resumed = sweep(root, "sweep", experiment, "tuner.max_trials=2")  # one more trial
    assert "trial 1 (2 of 2)" in resumed.stdout  # petloc's own lines stay
    output = resumed.stdout + resumed.stderr
    assert not KERAS_TUNER_LINE.search(output), output
    assert not [line for line in resumed.stderr.splitlines() if TENSORFLOW_LINE.search(line)]

    verbose = sweep(root, "--verbose", "sweep", experiment, "tuner.max_trials=2")
    assert "Reloading Tuner from" in verbose.stdout
    assert TENSORFLOW_LINE.search(verbose.stderr)  # TensorFlow's start-up log is back


@pytest.mark.slow
def test_petloc_serve_starts_without_tensorflow_lines(swept, tmp_path):
    root, _ = swept
    port = free_port()
    # uvicorn and MLflow's scoring app run from the venv, as for a user whose venv is active
    env = {**user_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "petloc", "serve", "petloc@champion", "--port", str(port)]
    server = serve_until_answering(cmd, root, env, log)
    stop_group(server)
    lines = log.read_text().splitlines()
    assert any("Uvicorn running" in line for line in lines), lines  # the server's own log stays
    assert not [line for line in lines if TENSORFLOW_LINE.search(line)], lines
