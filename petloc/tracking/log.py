"""What a run records: params and tags, per-epoch curves, files and the model."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.keras
from mlflow.tracking import MlflowClient

from petloc import serving

EPOCH_METRICS = {  # Keras log name -> MLflow metric name
    "loss": "train/loss",
    "miou": "train/miou",
    "accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_miou": "val/miou",
    "val_accuracy": "val/accuracy",
}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch curves (`train/loss`, `val/miou`, `val/accuracy`, ...) with step = epoch."""

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.client = MlflowClient()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {name: float(logs[key]) for key, name in EPOCH_METRICS.items() if logs and key in logs}
        if metrics:
            mlflow.log_metrics(metrics, step=epoch + 1, run_id=self.run_id)


def log_model(model: keras.Model, run_id: str, localiser: bool = True) -> str:
    """The model in MLflow's Keras flavour (a localiser also as a pyfunc that takes JPEGs);
    its URI is the run's `model_uri` tag and is returned."""
    with mlflow.start_run(run_id=run_id, nested=True):
        if localiser:
            info = mlflow.models.Model.log(artifact_path=None, name="model", flavor=serving, keras_model=model)
        else:
            info = mlflow.keras.log_model(model, name="model")
    MlflowClient().set_tag(run_id, "model_uri", info.model_uri)
    return info.model_uri


def log_run_inputs(run_id: str, params: dict[str, Any], data_tags: dict[str, Any], seed: int, **tags: Any) -> None:
    """What a run was given: flat params, the data's tags, the git commit and the seed."""
    # MLflow shows a missing value as "None"; petloc's files say "none".
    mlflow.log_params({k: ("none" if v is None else v) for k, v in params.items()}, run_id=run_id)
    client = MlflowClient()
    for key, value in {**data_tags, "git_commit": git_commit(), "seed": seed, **tags}.items():
        client.set_tag(run_id, key, str(value))


def log_files(run_id: str, files: dict[str, Path]) -> None:
    """Each local file under the artifact folder named by its key ("" = top level)."""
    client = MlflowClient()
    for folder, path in files.items():
        client.log_artifact(run_id, str(path), folder or None)


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="petloc-")
