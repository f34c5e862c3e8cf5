"""Everything that talks to MLflow runs: experiments, params, per-epoch metrics, artifacts."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import keras
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.store import STORE_DIR, configure

__all__ = ["STORE_DIR", "configure"]  # re-exported: callers here deal in runs and the store alike

EPOCH_METRICS = {  # Keras log name -> MLflow metric name
    "loss": "train/loss",
    "miou": "train/miou",
    "accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_miou": "val/miou",
    "val_accuracy": "val/accuracy",
}


def experiment_id(name: str) -> str:
    """The MLflow experiment `name`, created on first use with artifacts under mlruns/artifacts."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found and found.lifecycle_stage == "deleted":
        raise PetlocError(f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) or set tracking.experiment to another name")
    if found:
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (STORE_DIR / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


OWNER_TAG = "petloc.owner"  # host:pid:start time of the process that runs it


def create_run(experiment_id: str, run_name: str, tags: dict[str, str] | None = None) -> str:
    """A new RUNNING run owned by this process; every petloc run starts here."""
    tags = {**(tags or {}), OWNER_TAG: this_process()}
    return MlflowClient().create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def claim_run(run_id: str) -> None:
    """Mark an existing run (a resumed sweep's parent) RUNNING and owned by this process."""
    client = MlflowClient()
    client.set_tag(run_id, OWNER_TAG, this_process())
    if "error" in client.get_run(run_id).data.tags:  # the reason it stopped last time no longer holds
        client.delete_tag(run_id, "error")
    client.update_run(run_id, status="RUNNING")


def this_process() -> str:
    return _owner(os.getpid())


def _owner(pid: int) -> str | None:
    """host:pid:start; the start time (clock ticks after boot) tells a reused pid apart."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{socket.gethostname()}:{pid}:{start}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by an OWNER_TAG value still runs. A process on another host
    cannot be checked from here, so it counts as alive."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return _owner(int(pid)) == owner


def end_orphans(run_ids: list[str], why: str) -> list[str]:
    """End KILLED each RUNNING run among `run_ids` whose owning process has died; returns them."""
    client = MlflowClient()
    ended = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        owner = run.data.tags.get(OWNER_TAG)
        if run.info.status != "RUNNING" or not owner or owner_alive(owner):
            continue
        client.set_tag(run_id, "error", f"its process ({owner}) ended without closing the run; {why}")
        client.set_terminated(run_id, "KILLED")
        ended.append(run_id)
    return ended


def child_runs(parent_run_id: str, where: str = "", order_by: list[str] | None = None) -> list:
    """The runs nested under `parent_run_id`, optionally filtered (`attributes.status = 'FAILED'`)."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and {where}" if where else "")
    return client.search_runs([experiment_id], query, order_by=order_by, max_results=50000)


def end_run(run_id: str, err: BaseException) -> None:
    """End `run_id` FAILED, or KILLED for an interrupt, with the reason as its `error` tag."""
    client = MlflowClient()
    client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
    client.set_terminated(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def flat_params(hp: dict[str, Any]) -> dict[str, Any]:
    """Params as MLflow shows them: numbers stay numbers, None becomes 'none'."""
    return {k: ("none" if v is None else v) for k, v in hp.items()}


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


def log_model(model: keras.Model, run_id: str) -> str:
    """The model in MLflow's Keras flavour, loadable as a pyfunc that takes JPEGs; returns its URI."""
    from petloc import serving

    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.models.Model.log(artifact_path=None, name="model", flavor=serving, keras_model=model)
    return info.model_uri


def log_run_inputs(run_id: str, params: dict[str, Any], data_tags: dict[str, Any], seed: int, **tags: Any) -> None:
    """What a run was given: flat params, the data's tags, the git commit and the seed."""
    mlflow.log_params(flat_params(params), run_id=run_id)
    client = MlflowClient()
    for key, value in {**data_tags, "git_commit": git_commit(), "seed": seed, **tags}.items():
        client.set_tag(run_id, key, str(value))


@contextlib.contextmanager
def run_status(run_id: str):
    """Ends MLflow run `run_id` FINISHED, or FAILED / KILLED with the reason as its `error` tag."""
    try:
        yield
    except BaseException as err:
        end_run(run_id, err)
        raise
    MlflowClient().set_terminated(run_id, "FINISHED")


def log_files(run_id: str, files: dict[str, Path]) -> None:
    """Each local file under the artifact folder named by its key ("" = top level)."""
    client = MlflowClient()
    for folder, path in files.items():
        client.log_artifact(run_id, str(path), folder or None)


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="petloc-")


def load_logged_model(uri: str) -> keras.Model:
    """A Keras model logged by petloc, by MLflow URI."""
    import mlflow.keras

    from petloc.registry import check_exists

    configure()
    if uri.startswith("models:/"):
        check_exists(uri)
    try:
        return mlflow.keras.load_model(uri)
    except MlflowException as err:
        raise PetlocError(f"{uri}: {err.message.splitlines()[0]}") from None
    except OSError as err:
        raise PetlocError(f"{uri}: cannot read the model ({err})") from None
