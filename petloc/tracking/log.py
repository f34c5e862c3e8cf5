"""What a run records: params and tags, per-epoch curves, files and the model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.keras
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

import petloc
from petloc import serving
from petloc.config import Experiment
from petloc.data.classes import Classes
from petloc.errors import COMMAND_ENV
from petloc.model import model_classes
from petloc.tracking import vocabulary as vocab
from petloc.training.dataset import PreparedData

EPOCH_METRICS = vocab.EPOCH_METRICS  # Keras log name -> MLflow metric name


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, str]:
    """Where a run comes from: the command line, petloc's version and, in a git work tree
    with commits, the commit (MLflow's own source tags too) and whether the tree was dirty."""
    # Python use: the script that called petloc
    command = os.environ.get(COMMAND_ENV) or shlex.join(sys.argv)
    tags = {
        vocab.VERSION: petloc.__version__,
        vocab.COMMAND: command,
        "mlflow.source.name": command,
        "mlflow.source.type": "LOCAL",
    }
    commit = _git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if commit:  # no repository, or one without commits: no commit to name
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        tags.update(
            {
                vocab.GIT_COMMIT: commit,
                "mlflow.source.git.commit": commit,
                vocab.GIT_DIRTY: str(dirty).lower(),
            }
        )
    return tags


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch curves (`train/loss`, `val/miou`, `val/accuracy`, ...) with step = epoch, and
    the wall time of each epoch, validation included; `pace(epoch, seconds)`, when given, hears
    the steady epoch time after each epoch past the first."""

    def __init__(self, run_id: str, pace: Callable[[int, float], None] | None = None):
        super().__init__()
        self.run_id, self.pace = run_id, pace
        self.client = MlflowClient()
        self.seconds: list[float] = []
        # The first epoch's loops: when each began, then when each of its batches ended.
        self.first_epoch: dict[str, list[float]] = {"train": [], "test": []}

    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()
        if not self.seconds:
            self.first_epoch["train"].append(self.began)

    def on_train_batch_end(self, batch, logs=None):
        if not self.seconds:
            self.first_epoch["train"].append(time.perf_counter())

    def on_test_begin(self, logs=None):  # fit's validation, once an epoch
        if not self.seconds:
            self.first_epoch["test"].append(time.perf_counter())

    def on_test_batch_end(self, batch, logs=None):
        if not self.seconds:
            self.first_epoch["test"].append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.began)
        metrics = {
            name: float(logs[key]) for key, name in EPOCH_METRICS.items() if logs and key in logs
        }
        if metrics:  # one call: `mlflow.log_metrics(run_id=...)` also reads the run back, a second round trip an epoch
            now = int(time.time() * 1000)
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(key, value, now, epoch + 1) for key, value in metrics.items()],
            )
        if self.pace and len(self.seconds) >= 2:
            self.pace(epoch + 1, self.epoch_seconds())

    def epoch_seconds(self) -> float:
        """An epoch's time once the training and validation steps are traced: the mean of the
        epochs after the first, or, after one, the first without what its first batches took
        beyond a later one (tracing): a time budget prices a 40-epoch run by a 1-epoch trial."""
        if len(self.seconds) >= 2:
            return sum(self.seconds[1:]) / len(self.seconds[1:])
        if not self.seconds:
            return 0.0
        return self.seconds[0] - sum(
            _first_batch_excess(marks) for marks in self.first_epoch.values()
        )


def epoch_history(run_id: str) -> dict[str, list[float]]:
    """The per-epoch curves a run has logged, under Keras's names, one value an epoch (the
    last logged: an epoch run again after an interruption counts once)."""
    client = MlflowClient()
    history = {}
    for key, name in EPOCH_METRICS.items():
        by_epoch = {
            m.step: m.value
            for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp)
        }
        if by_epoch:
            history[key] = [by_epoch[step] for step in sorted(by_epoch)]
    return history


def _first_batch_excess(marks: list[float]) -> float:
    """What a loop's first batch took beyond its later ones, from [began, end of each batch]."""
    if len(marks) < 4:  # two later batches at least, or nothing to compare with
        return 0.0
    began, first, last = marks[0], marks[1], marks[-1]
    later = (last - first) / (len(marks) - 2)
    return max(0.0, (first - began) - later)


def log_model(
    model: keras.Model, run_id: str, localiser: bool = True, plugins: tuple[str, ...] = ()
) -> str:
    """The model in MLflow's Keras flavour (a localiser also as a pyfunc that takes JPEGs),
    named after its run (`logged_model_name`); its URI is the run's `model_uri` tag and is
    returned. `plugins`: the plug-in modules it needs to load (petloc/plugins.py), kept in its
    metadata for every loader to import."""
    metadata = {vocab.MODEL_PLUGINS: list(plugins)} if plugins else None
    name = logged_model_name(MlflowClient().get_run(run_id))
    with mlflow.start_run(run_id=run_id, nested=True):
        if localiser:
            # MLflow would load the model back and serve its input example to check it, a large
            # share of a trial's tracking (benchmarks/RESULTS.md); tests/serving/ check the served model.
            info = mlflow.models.Model.log(
                artifact_path=None,
                name=name,
                flavor=serving,
                keras_model=model,
                validate_serving_input=False,
                metadata=metadata,
            )
        else:
            info = mlflow.keras.log_model(
                model,
                name=name,
                metadata={**(metadata or {}), vocab.MODEL_CLASSES: classes_metadata(model)},
            )
    MlflowClient().set_tag(run_id, vocab.MODEL_URI, info.model_uri)
    return info.model_uri


# What MLflow refuses in a logged model's name ('/', ':', '.', '%', quotes), and what would
# make `runs:/RUN/NAME` awkward to type, becomes '-'.
UNNAMEABLE = re.compile(r"[^A-Za-z0-9_-]+")


def logged_model_name(run) -> str:
    """A logged model's name, after what its run is: `final` and `ensemble` for a sweep's end
    runs, else the run's name (`trial-0003-simple`, `train-simple`, `pretrain-small_resnet`).
    Older petloc named every model `model` (`runs:/RUN/model` still loads their models and
    these: `registry.loadable_uri`)."""
    trial = run.data.tags.get(vocab.TRIAL_ID)
    if trial in (vocab.FINAL_TRIAL, vocab.ENSEMBLE_TRIAL):
        return trial
    return UNNAMEABLE.sub("-", run.info.run_name or "").strip("-")[:100] or vocab.OLD_MODEL_NAME


def run_model_uri(run_id: str) -> str:
    """`runs:/RUN/NAME`: the model petloc logged in run `run_id`, as MLflow loads it."""
    return f"runs:/{run_id}/{logged_model_name(MlflowClient().get_run(run_id))}"


def classes_metadata(model: keras.Model) -> dict:
    """The classes a model answers with, as its MLflow model metadata holds them."""
    return json.loads(model_classes(model).to_json())


def log_run_inputs(
    run_id: str,
    params: dict[str, Any],
    data: PreparedData,
    seed: int,
    description: str,
    **tags: Any,
) -> None:
    """What a run was given: flat params (with the number of classes), its data (tags, MLflow
    datasets and its classes as `classes.json`), where it comes from, the seed, and a
    description the MLflow UI shows."""
    classes = data.whole.classes
    params = {**params, vocab.CLASSES: len(classes)}
    # MLflow shows a missing value as "None"; petloc's files say "none".
    mlflow.log_params({k: ("none" if v is None else v) for k, v in params.items()}, run_id=run_id)
    log_classes(run_id, classes)
    every = {**data.tags(), **provenance(), vocab.SEED: seed, vocab.NOTE: description, **tags}
    # One call for all of them: a call per tag was a store transaction (or a server request) each.
    MlflowClient().log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in every.items()])
    log_datasets(run_id, data)


def log_classes(run_id: str, classes: Classes) -> None:
    """The run's classes, in the model's order, as `classes.json` (Classes.from_json reads it)."""
    MlflowClient().log_text(run_id, classes.to_json(), vocab.CLASSES_FILE)


def log_datasets(run_id: str, data: PreparedData) -> None:
    """The training and validation sides as MLflow datasets (name, digest, source, context),
    so the UI's Datasets column shows what each run trained and was measured on."""
    # "can be interpreted in multiple ways": a local folder, either way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(Path(data.source).resolve()))
    inputs = []
    for context, side in (("training", data.train), ("validation", data.val)):
        # Same folder, another side of the split: its own digest (folder digest + split + side).
        digest = hashlib.sha256(
            f"{data.whole.digest}/{data.val_key}/{context}".encode()
        ).hexdigest()[:16]
        # MLflow leaves Dataset.profile abstract in MetaDataset, its documented metadata-only
        # dataset; Dataset is no ABC, so it instantiates.
        name = f"{Path(data.source).name}-{context}"
        dataset = MetaDataset(source, name=name, digest=digest)  # type: ignore[abstract]
        tags = [InputTag("mlflow.data.context", context), InputTag("images", str(len(side)))]
        inputs.append(DatasetInput(Dataset(**dataset.to_dict()), tags))
    # Through the client: `mlflow.log_input` needs an active run, and ending one marks it FINISHED.
    for attempt in range(DATASET_RACE_ATTEMPTS):
        try:
            MlflowClient().log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as err:
            if attempt == DATASET_RACE_ATTEMPTS - 1 or not _lost_dataset_race(err):
                raise


# MLflow's store looks an experiment's dataset up, then inserts it when it is missing, in
# one transaction: runs logging the same new dataset at once (trials starting together on
# two workers) all miss it, all insert, and all but one fail on the table's key, on PostgreSQL
# and SQLite alike (tests/tracking/test_run_records.py). The failed call wrote nothing, and again
# it finds the winner's row.
DATASET_RACE_ATTEMPTS = 3
# PostgreSQL's, SQLite's words
DATASET_KEY_CLASHES = ('"dataset_pk"', "UNIQUE constraint failed: datasets.")


def _lost_dataset_race(err: MlflowException) -> bool:
    return any(clash in str(err) for clash in DATASET_KEY_CLASHES)


@contextlib.contextmanager
def system_metrics(run_id: str):
    """CPU, memory, disk and network as `system/*` metrics of `run_id` while the block runs,
    through MLflow's own monitor (every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds, 10 by default)."""
    monitor = SystemMetricsMonitor(run_id, sampling_interval=10)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def log_experiment(run_id: str, exp: Experiment) -> None:
    """The resolved experiment as `experiment.json`: what `petloc reproduce` re-runs."""
    MlflowClient().log_dict(run_id, exp.model_dump(mode="json"), vocab.EXPERIMENT_FILE)


def log_files(run_id: str, files: dict[str, Path | list[Path]]) -> None:
    """Each local file (or list of them) under the artifact folder named by its key ("" = top level)."""
    client = MlflowClient()
    for folder, paths in files.items():
        for path in paths if isinstance(paths, list) else [paths]:
            client.log_artifact(run_id, str(path), folder or None)


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="petloc-")
