"""A `petloc train` stopped with SIGTERM (kill, a CI timeout) ends its MLflow run KILLED."""

import os
import signal
import subprocess
import sys
import time

import mlflow
from mlflow.tracking import MlflowClient

from tests.helpers import tiny_dataset, tiny_experiment


def test_sigterm_marks_the_run_killed(tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(tmp_path, data)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "petloc", "train", str(exp), "train.epochs=1000"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    client = MlflowClient()
    run = None
    deadline = time.monotonic() + 240
    while run is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(2)
        try:
            runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
        except Exception:  # the store is still being created by the other process
            continue
        if runs and client.get_metric_history(runs[0].info.run_id, "val/miou"):  # training, not setting up
            run = runs[0]
    assert run is not None, f"no training run appeared: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"

    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stderr
    assert "petloc: aborted" in stderr and "Traceback" not in stderr
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["error"].startswith("KeyboardInterrupt")
