"""examples/track_your_own_search.py as a user runs it: their own Keras Tuner search, tracked,
promoted and loaded back by name with plain MLflow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import petloc_env

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "track_your_own_search.py"
TRIALS = 2


@pytest.mark.slow  # a tiny search in a new process: about 40 s
def test_the_own_search_example_tracks_promotes_and_loads_the_champion_by_name(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--trials", str(TRIALS), "--epochs", "1"],
        cwd=tmp_path,  # a user's own folder: its own mlruns/
        env={**petloc_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    champion = re.search(
        r"^champion: digits-classifier@champion is version 1 \(run (\w+)\)$", out, re.M
    )
    assert champion, out
    assert "same predictions as tuner.get_best_models()[0]: yes" in out
    held_out = re.search(r"^held-out accuracy of the champion: ([\d.]+) on 300 digits", out, re.M)
    assert held_out and 0.0 <= float(held_out.group(1)) <= 1.0, out

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("digits-search")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in found if "mlflow.parentRunId" not in run.data.tags]
    trials = [run for run in found if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(found) == 1 + TRIALS
    assert sorted(run.info.status for run in trials) == ["FINISHED"] * TRIALS
    assert champion.group(1) in {run.info.run_id for run in trials}
    version = client.get_model_version_by_alias("digits-classifier", "champion")
    assert (str(version.version), version.run_id) == ("1", champion.group(1))
