"""A `petloc train` stopped with SIGTERM (kill, a CI timeout) ends its MLflow run KILLED."""

import signal
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import PETLOC, petloc_env, store_client, tiny_dataset, tiny_experiment

pytestmark = pytest.mark.slow  # a training process of its own, killed mid-run


def training_run(client: MlflowClient):
    """The run of experiment 'tiny' once it has logged an epoch (it is training), else None."""
    try:
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return (
            runs[0] if runs and client.get_metric_history(runs[0].info.run_id, "val/miou") else None
        )
    except Exception:  # noqa: BLE001  (the other process is still creating the store)
        return None


def test_sigterm_marks_the_run_killed(tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(tmp_path, data)
    client = store_client(tmp_path)
    proc = subprocess.Popen(
        [*PETLOC, "train", str(exp), "train.epochs=1000"],
        cwd=tmp_path,
        env=petloc_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run, deadline = None, time.monotonic() + 240
        while run is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
            run = training_run(client)
        assert run is not None, (
            f"no training run appeared: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
        )

        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a 1000-epoch training behind

    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "petloc: terminated" in stderr and "Traceback" not in stderr
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["error"].startswith("Terminated")
