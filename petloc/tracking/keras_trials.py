"""What a tracked Keras Tuner trial logs in its MLflow run, for any model (not only petloc's
localiser): its hyperparameters as flat params, Keras's per-epoch curves, the figures of its
best epoch with the objective named, its model with a signature and an input example, and
the search's settings on the parent run.

Per-epoch curves are `train/<name>` and `val/<name>` with step = the epoch, as for petloc's
own runs; the summary figures keep Keras's names (`val_accuracy`, `loss`, ...): the values of
the epoch Keras Tuner scored the trial by.
"""

from __future__ import annotations

import hashlib
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import mlflow
import mlflow.keras
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError, did_you_mean
from petloc.tracking import log
from petloc.tracking import vocabulary as vocab


class EpochCurves(keras.callbacks.Callback):
    """Each epoch's logs as `train/<name>` / `val/<name>` of run `run_id`, step = epoch.
    Keras Tuner deep-copies a search's callbacks for each trial: this one holds nothing but
    the run ID, which the tracked tuner sets before the copy is made."""

    def __init__(self, run_id: str | None = None, expected: tuple[str, ...] = ()):
        super().__init__()
        self.run_id, self.expected = run_id, expected

    def on_epoch_end(self, epoch, logs=None):
        if not self.run_id or not logs:
            return
        missing = [name for name in self.expected if name not in logs]
        if missing:  # Keras Tuner would find out after the last epoch of every trial
            raise ObjectiveNotLogged(
                f"objective: the model logs no {missing[0]!r} (it logs {', '.join(sorted(logs))});"
                + (did_you_mean(missing[0], logs) or " compile it with that metric")
            )
        now = int(time.time() * 1000)
        metrics = [
            Metric(curve_name(key), float(value), now, epoch + 1)
            for key, value in logs.items()
            if isinstance(value, (int, float, np.number)) and np.isfinite(value)
        ]
        if metrics:
            MlflowClient().log_batch(self.run_id, metrics=metrics)


class ObjectiveNotLogged(PetlocError, kt.errors.FatalError):
    """An objective the model does not log: no trial can be scored, so the search stops."""


def curve_name(key: str) -> str:
    """Keras's `val_accuracy` -> `val/accuracy`, `loss` -> `train/loss`."""
    return f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"train/{key}"


def log_trial_inputs(run_id: str, values: dict[str, Any], tags: dict[str, str]) -> None:
    """A trial's hyperparameters as flat params (Keras Tuner's own `tuner/*` as tags), where
    it comes from, and `tags`."""
    every = {**log.provenance(), **tags}
    MlflowClient().log_batch(
        run_id, params=_params(values), tags=[RunTag(k, str(v)) for k, v in every.items()]
    )


def log_hyperparameters(run_id: str, values: dict[str, Any]) -> None:
    """A trial's hyperparameters again once it trained: those its model declared as it was
    built or fitted join the params (MLflow accepts the others, unchanged)."""
    MlflowClient().log_batch(run_id, params=_params(values))


def _params(values: dict[str, Any]) -> list[Param]:
    return [
        Param(k, "none" if v is None else str(v)[:6000])
        for k, v in values.items()
        if not k.startswith("tuner/")
    ]


def log_figures(run_id: str, figures: dict[str, float]) -> None:
    """A trial's summary figures, at step 0."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()]
    )


def log_keras_model(run_id: str, model: keras.Model, example: Any) -> str:
    """The model in MLflow's Keras flavour (loadable with `mlflow.pyfunc.load_model`), with
    the signature of `example` (a few validation inputs) and the example itself, named after
    its run; its URI becomes the run's `model_uri` tag and is returned."""
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    name = log.logged_model_name(MlflowClient().get_run(run_id))
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=name,
            flavor=_KerasWithExample,
            keras_model=model,
            signature=signature,
            input_example=example,
            # MLflow would load the model back to serve the example, with Keras's progress
            # bar; tests/search/test_tracked_tuner.py loads it as users do
            validate_serving_input=False,
            # MLflow's Keras requirements as installed: inferring them loads the model in a
            # subprocess, seconds per trial
            pip_requirements=[
                *mlflow.keras.get_default_pip_requirements(),
                f"tensorflow=={metadata.version('tensorflow')}",
            ],
        )
    MlflowClient().set_tag(run_id, vocab.MODEL_URI, info.model_uri)
    return info.model_uri


class _KerasWithExample:
    """MLflow's Keras flavour, saved into a folder made first: its `save_model` writes the
    input example before it makes the folder, so `mlflow.keras.log_model(input_example=...)`
    fails (tests/tracking/test_tracked_tuner.py shows it still does)."""

    @staticmethod
    def save_model(keras_model, path, mlflow_model=None, **kwargs):
        kwargs.pop("validate_serving_input", None)  # read by Model.log itself, not a save setting
        Path(path).mkdir(parents=True, exist_ok=True)
        mlflow.keras.save_model(keras_model, path, mlflow_model=mlflow_model, **kwargs)


def data_digest(data: Any) -> str | None:
    """A digest of validation data given as arrays (`(x, y)` or `(x, y, weights)`, arrays
    or dicts of arrays), so that figures compare only on the same data; None for data Keras
    reads in batches (a `tf.data.Dataset`, a generator), which cannot be read here twice."""
    parts = data if isinstance(data, (tuple, list)) else (data,)
    digest = hashlib.sha256()
    for part in parts:
        arrays = part.values() if isinstance(part, dict) else (part,)
        for array in arrays:
            if array is None:
                continue
            if not hasattr(array, "shape") or not hasattr(array, "dtype"):
                return None
            array = np.ascontiguousarray(np.asarray(array))
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"
