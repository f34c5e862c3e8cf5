"""Fitting one model with fixed hyperparameters: pure Keras, no tracking here."""

from __future__ import annotations

import math
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Callable

import keras
import numpy as np

from petloc.errors import PetlocError
from petloc.data.records import CLASS_NAMES
from petloc.data.pipeline import Arrays, eval_batches, train_batches
from petloc.model import ModelSpec, build_model, compile_model

# Our tf.data pipeline shuffles itself; Keras warns that its own shuffle flag is ignored.
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")

# Keras names multi-output metrics after the output; petloc's contract uses short names.
LOG_NAMES = {
    "loss": "loss",
    "cls_accuracy": "accuracy",
    "box_miou": "miou",
    "cls_loss": "cls_loss",
    "box_loss": "box_loss",
}


class TrainingDiverged(PetlocError):
    """The loss became NaN or infinite."""


class ShortMetricNames(keras.callbacks.Callback):
    """Adds `miou`, `accuracy`, `val_miou`, `val_accuracy`, ... to the epoch logs, so that
    early stopping, Keras Tuner's objective and the trackers read one set of names."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for keras_name, short in LOG_NAMES.items():
            for prefix in ("", "val_"):
                if prefix + keras_name in logs:
                    logs[prefix + short] = logs[prefix + keras_name]


class KeepBest(keras.callbacks.Callback):
    """Ends training with the weights of the epoch with the best `monitor` (higher is better)."""

    def __init__(self, monitor: str = "val_miou"):
        super().__init__()
        self.monitor, self.best, self.weights = monitor, -1.0, None

    def on_epoch_end(self, epoch, logs=None):
        if logs and logs.get(self.monitor, -1.0) > self.best:
            self.best, self.weights = logs[self.monitor], self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def _balanced(labels: np.ndarray) -> np.ndarray:
    """Each class weighs total / (classes x its count): both classes count equally in the loss."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    return len(labels) / (len(CLASS_NAMES) * np.maximum(counts, 1))


# How much each class's images weigh in the class loss, from the training labels.
CLASS_WEIGHTS: dict[str, Callable[[np.ndarray], np.ndarray | None]] = {"none": lambda labels: None, "balanced": _balanced}


def model_spec(hp: dict[str, Any]) -> ModelSpec:
    fields = ModelSpec.__dataclass_fields__
    spec = {k: v for k, v in hp.items() if k in fields}
    if spec.get("weights") == "none":
        spec["weights"] = None
    return ModelSpec(**spec)


def fit_model(
    hp: dict[str, Any],
    train: Arrays,
    val: Arrays,
    epochs: int,
    seed: int = 0,
    early_stopping: int = 0,
    callbacks: list[keras.callbacks.Callback] = (),
    verbose: int | None = None,
    initial_epoch: int = 0,
    initial_weights: str | None = None,
    xla: bool = False,
    precision: str = "float32",
) -> tuple[keras.Model, keras.callbacks.History]:
    """Builds, compiles and trains the model `hp` describes; keeps the best val_miou weights.

    `initial_weights` and `initial_epoch` continue an earlier run (Hyperband's brackets).
    `precision` is a Keras dtype policy for training; the model returned is float32."""
    keras.utils.set_random_seed(seed)
    spec = model_spec(hp)
    batch_size = int(hp["batch_size"])
    with dtype_policy(precision):
        model = build_model(spec, int(hp["image_size"]))
    steps = -(-len(train) // batch_size)
    compile_model(model, spec, steps_per_epoch=steps, epochs=epochs, jit_compile=xla or "auto")
    if initial_weights:
        model.load_weights(initial_weights)
    every_epoch = [keras.callbacks.TerminateOnNaN(), ShortMetricNames(), KeepBest()]
    if early_stopping:
        every_epoch.append(keras.callbacks.EarlyStopping("val_miou", mode="max", patience=early_stopping))
    history = model.fit(
        train_batches(train, batch_size, float(hp["aug_strength"]), seed, CLASS_WEIGHTS[hp.get("class_weight", "none")](train.labels)),
        validation_data=eval_batches(val, batch_size),
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=every_epoch + list(callbacks),
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
    )
    losses = history.history.get("loss", [])
    if not losses or not math.isfinite(losses[-1]):
        raise TrainingDiverged(f"loss became {losses[-1] if losses else 'undefined'} in epoch {len(losses)}; try a lower learning_rate")
    if precision != "float32":
        model = in_float32(model, spec, int(hp["image_size"]))
    return model, history


@contextmanager
def dtype_policy(name: str):
    """Layers built inside take the Keras dtype policy `name`."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def in_float32(model: keras.Model, spec: ModelSpec, image_size: int) -> keras.Model:
    """The same network and weights in float32. A saved mixed-precision model computes in
    bfloat16 wherever it is loaded, which is 14x slower on CPUs without bf16 units."""
    with dtype_policy("float32"):
        again = build_model(spec, image_size)
    again.set_weights(model.get_weights())  # mixed precision keeps its weights in float32
    return compile_model(again, spec)
