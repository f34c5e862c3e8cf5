"""Fitting a network: the one fit path of the localiser and the pretrained classifier.
Pure Keras, no tracking here."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from petloc import library_internals
from petloc.cpu import CPUINFO, cpu_flags
from petloc.data.classes import SPECIES, Classes
from petloc.data.pipeline import ImageSet, eval_batches, train_batches
from petloc.errors import PetlocError
from petloc.files import (
    SMALL_FILE_LIMIT,
    atomic_write,
    atomic_write_text,
    check_regular,
    open_regular,
    read_bounded,
)
from petloc.model import CLASS_WEIGHTS, Hyperparameters, Pretrained, build_model, compile_model
from petloc.training import progress

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


BEST_EPOCH = "best-epoch.npz"  # KeepBest's, in a backup folder: the weights, the score and the epoch in one file


def best_epoch(folder: str | Path | None) -> tuple[float, int] | None:
    """The score and the epoch (counted from 1) of the best epoch kept in a backup folder, if any."""
    path = Path(folder) / BEST_EPOCH if folder else None
    if not path or not path.exists():
        return None
    # Any size (the weights are in it): np.load reads only the members asked for, a few bytes.
    with open_regular(path) as file, np.load(file) as saved:
        if not {"score", "epoch"} <= set(saved.files):  # another layout, or not petloc's
            raise PetlocError(
                f"{path}: holds no best epoch this petloc reads; remove {path.parent} to train "
                "that run again from scratch"
            )
        return float(saved["score"]), int(saved["epoch"])


class KeepBest(keras.callbacks.Callback):
    """Ends training with the weights of the epoch with the best `monitor` (higher is better).
    With `folder` (a resumable fit's backup folder) the best so far is kept there too, so a
    fit resumed after a stop still ends with the best epoch from before the stop when no
    later epoch beats it (long runs peak late, and are the ones worth resuming). Weights,
    score and epoch are one file, renamed into place: a kill never pairs one epoch's score
    with another's weights."""

    def __init__(self, monitor: str = "val_miou", folder: str | None = None):
        super().__init__()
        self.monitor, self.best = monitor, -1.0
        self.weights: list[np.ndarray] | None = None
        self.folder = Path(folder) if folder else None

    def on_train_begin(self, logs=None):
        kept = best_epoch(self.folder)  # its weights stay on disk until the end
        self.best_on_disk = kept is not None
        if kept:
            self.best = kept[0]

    def on_epoch_end(self, epoch, logs=None):
        if logs and logs.get(self.monitor, -1.0) > self.best:
            weights = self.model.get_weights()
            self.best, self.weights = logs[self.monitor], weights
            if self.folder:
                atomic_write(
                    self.folder / BEST_EPOCH,
                    lambda file: np.savez(
                        file, *weights, score=np.float64(self.best), epoch=np.int64(epoch + 1)
                    ),
                )

    def on_train_end(self, logs=None):
        if self.weights is None and self.best_on_disk and self.folder:
            # The best epoch came before a resume.
            with open_regular(self.folder / BEST_EPOCH) as file, np.load(file) as saved:
                self.weights = [saved[f"arr_{i}"] for i in range(len(saved.files) - 2)]
        if self.weights is not None:
            self.model.set_weights(self.weights)


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping (higher `monitor` is better) that, in a fit resumed from a backup
    folder, counts its patience from the best epoch before the stop: Keras's starts again
    from nothing, so a run stopped now and then would never stop early."""

    def __init__(self, monitor: str, patience: int, folder: str | None = None):
        super().__init__(monitor, mode="max", patience=patience)
        self.folder, self.first_epoch = folder, True

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        kept = best_epoch(self.folder) if self.first_epoch else None
        self.first_epoch = False
        if kept and epoch > 0:  # resumed at `epoch`: the epochs after the best one did not improve
            self.best, self.best_epoch = kept[0], kept[1] - 1
            # the best file is this epoch's when a kill came between it and the backup
            self.wait = max(0, epoch - kept[1])


class ResumedSwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras's SwapEMAWeights(swap_on_epoch=True) for a fit that resumes from a backup: the
    backup was written at an epoch's end, with the averaged weights in the model and the raw
    ones in the optimizer's average slots, so the first epoch must swap them back (Keras's
    callback starts out believing the raw weights are in the model)."""

    def __init__(self):
        super().__init__(swap_on_epoch=True)
        library_internals.start_with_averaged_weights(self)


# Keras's BackupAndRestore's files
BACKUP_WEIGHTS, BACKUP_STATE = ("latest.weights.h5", "training_metadata.json")


def has_backup(folder: str | Path) -> bool:
    """Whether a fit given `folder` as its backup resumes from it."""
    weights = Path(folder) / BACKUP_WEIGHTS
    if not weights.exists():
        return False
    check_regular(weights)  # Keras would open a FIFO there and wait for ever
    return True


class BackedUp(NamedTuple):
    """What a backup folder's training state says (Keras's metadata, and petloc's additions)."""

    epochs: int = 0  # finished
    # spent training up to them, over every fit (from each fit's first epoch; building the
    # model not counted)
    seconds: float = 0.0
    stopped: bool = False  # early stopping ended the fit after them: nothing left to train


def backed_up(folder: str | Path) -> BackedUp:
    """The training state in a backup folder; all zero when it holds none."""
    path = Path(folder) / BACKUP_STATE
    if not path.exists():
        return BackedUp()
    try:
        # a FIFO or device: UnreadableFile, one line
        state = json.loads(read_bounded(path, SMALL_FILE_LIMIT))
        return BackedUp(
            int(state["epoch"]), float(state.get("seconds", 0.0)), bool(state.get("stopped", False))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return BackedUp()


class WholeBackup(library_internals.BackupHooks, keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore (the training state after each epoch, and a fit that starts
    from it), with each file written whole and then renamed into place. Keras writes them
    in place: a kill -9 during the write left a weights file that h5py could not open ("bad
    object header version number"), and the run could not resume (tests/search/test_sweep_state_and_shared_store.py).
    The weights go first, then the epoch: a kill between the two trains one epoch more.
    The state also counts the seconds spent training, over every fit that resumed it."""

    def on_train_begin(self, logs=None):
        self.began, self.seconds_before, self.stopped = (
            time.perf_counter(),
            backed_up(self.backup_dir).seconds,
            False,
        )
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        # Early stopping (before this callback) ended the fit: a kill before the fit's end must
        # not train on when it resumes. A NaN loss stops it too, and is an error again.
        self.stopped = bool(self.model.stop_training) and math.isfinite(
            (logs or {}).get("loss", math.nan)
        )
        super().on_epoch_end(epoch, logs)

    def write_backup(self, weights_path: str, state_path: str, state: dict[str, int]) -> None:
        # Keras wants the .weights.h5 ending
        partial = os.path.join(self.backup_dir, ".partial.weights.h5")
        os.makedirs(self.backup_dir, exist_ok=True)
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, weights_path)
        ours = {
            "seconds": self.seconds_before + time.perf_counter() - self.began,
            "stopped": self.stopped,
        }
        atomic_write_text(Path(state_path), json.dumps({**state, **ours}))


def fit(
    build: Callable[[], keras.Model],
    batches: Callable[[], tuple[tf.data.Dataset, tf.data.Dataset]],
    epochs: int,
    seed: int = 0,
    monitor: str = "val_miou",
    early_stopping: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    initial_weights: str | None = None,
    backup: str | None = None,
    say: Callable[[str], None] = print,
) -> tuple[keras.Model, keras.callbacks.History]:
    """The one fit path of petloc's networks: seed, build (compiled), make the training and
    validation batches, fit, and end with the weights of the epoch with the best `monitor`;
    a NaN or infinite loss is an error. Both callables run after the seed is set, in this
    order, so a run repeats exactly.

    `initial_weights` and `initial_epoch` continue an earlier run (Hyperband's brackets).
    `backup`: a folder where the training state (weights, optimizer, epoch, the best epoch so
    far) is kept after each epoch; a fit given one that holds a state resumes from it, and a
    fit that ends removes it. `say` hears the epoch lines."""
    keras.utils.set_random_seed(seed)
    model = build()
    if initial_weights:
        model.load_weights(initial_weights)
    backing_up = WholeBackup(backup) if backup else None
    resuming = bool(backup and has_backup(backup))
    state = backed_up(backup) if backup and resuming else BackedUp()
    if state.stopped:  # early stopping had ended it: resume with no epoch left
        epochs = state.epochs
    every_epoch = [keras.callbacks.TerminateOnNaN(), ShortMetricNames(), KeepBest(monitor, backup)]
    if getattr(model.optimizer, "use_ema", False):
        # Validate the averaged weights, and hold them at each epoch's end, so that KeepBest
        # keeps the best average (Keras swaps the raw weights back for the next epoch).
        every_epoch.insert(
            0,
            ResumedSwapEMAWeights()
            if resuming
            else keras.callbacks.SwapEMAWeights(swap_on_epoch=True),
        )
    if early_stopping:
        every_epoch.append(ResumedEarlyStopping(monitor, early_stopping, backup))
    if not progress.detailed():
        # instead of Keras's line, which repeats each metric under two names
        every_epoch.append(progress.EpochLine(say))
    # Last: its epoch-end backup holds what the callbacks above left (the averaged weights),
    # and at the end it removes the folder after KeepBest has read the best epoch from it.
    after_all = [backing_up] if backing_up else []
    train, val = batches()
    build_training_state(model, train)
    train, steps_per_epoch = endless(train)
    history = model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=every_epoch + list(callbacks) + after_all,
        verbose=progress.keras_verbose(),
    )
    losses = history.history.get("loss", [])
    # stopped after the last epoch's backup: nothing left to train
    if resuming and not losses and state.epochs >= epochs:
        return model, history
    if not losses or not math.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"loss became {losses[-1] if losses else 'undefined'} in epoch {len(losses)}; try a lower learning_rate"
        )
    return model, history


def endless(train: tf.data.Dataset) -> tuple[tf.data.Dataset, int | None]:
    """The training batches repeated, and the number in one pass: Keras then keeps one iterator
    for the whole fit and the pipeline runs on across epochs and validation. Keras makes a new
    iterator for each epoch of a finite dataset, which fills the shuffle buffer, augments the
    first batch and stops the pipeline's threads again every epoch (benchmarks/RESULTS.md).
    Each pass still reshuffles and draws new augmentations."""
    steps = int(train.cardinality())
    if steps <= 0:  # infinite or unknown: Keras reads it as it comes
        return train, None
    return train.repeat(), steps


def build_training_state(model: keras.Model, train: tf.data.Dataset) -> None:
    """Creates the optimizer's slots and the losses' and metrics' totals before training.
    Keras 3 (TensorFlow, no distribution strategy) leaves them to the first trace of the
    training step, and a `tf.function` that creates variables is traced twice; built first,
    it is traced once (tests/model/test_network.py counts them). Keras's own symbolic build, which it
    runs itself under a distribution strategy, from the batches' spec (no batch is drawn, so
    the data's order is unchanged)."""
    library_internals.build_symbolically(model, train.element_spec)  # without it, two traces


def fit_localiser(
    values: dict[str, Any],
    train: ImageSet,
    val: ImageSet,
    epochs: int,
    seed: int = 0,
    early_stopping: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    initial_weights: str | None = None,
    backup: str | None = None,
    xla: bool = False,
    precision: str = "float32",
    pretrained: Pretrained | None = None,
    say: Callable[[str], None] = print,
) -> tuple[keras.Model, keras.callbacks.History]:
    """Builds and trains the localiser the hyperparameter `values` describe; keeps the best
    val_miou weights. `precision` is a Keras dtype policy for training; the model returned
    is float32. `pretrained` is the network a `registered:` backbone names; `say` hears the
    epoch lines."""
    hparams = Hyperparameters.of(values)
    assert hparams.image_size is not None, "values carry image_size (Experiment fills it in)"
    image_size, batch_size = int(hparams.image_size), hparams.batch_size
    precision = resolved_precision(precision, image_size)

    def build() -> keras.Model:
        with dtype_policy(precision):
            model = build_model(hparams, image_size, pretrained, train.classes)
        return compile_model(
            model,
            hparams,
            steps_per_epoch=-(-len(train) // batch_size),
            epochs=epochs,
            jit_compile=xla or "auto",
        )

    def batches():
        weights = CLASS_WEIGHTS[hparams.class_weight](train.labels, len(train.classes))
        return train_batches(
            train, batch_size, hparams.aug_strength, seed, weights, hparams.aug_erase
        ), eval_batches(val, batch_size)

    model, history = fit(
        build,
        batches,
        epochs,
        seed=seed,
        early_stopping=early_stopping,
        callbacks=callbacks,
        initial_epoch=initial_epoch,
        initial_weights=initial_weights,
        backup=backup,
        say=say,
    )
    if precision != "float32":
        model = in_float32(model, hparams, image_size, pretrained, train.classes)
    return model, history


BF16_UNITS = {"avx512_bf16", "amx_bf16"}  # CPU flags with bfloat16 maths in hardware
# Below this input side bfloat16 was not steadily faster even with the units (small tensors:
# the conversions cost about what the maths saves; benchmarks/RESULTS.md).
BF16_MIN_IMAGE_SIZE = 128


def resolved_precision(precision: str, image_size: int, cpuinfo: Path = CPUINFO) -> str:
    """The Keras dtype policy `train.precision` means for this machine and input size: `auto`
    is mixed_bfloat16 where the CPU has bf16 units and the images are large enough for it to
    pay, float32 elsewhere (without the units bfloat16 is emulated, far slower)."""
    if precision != "auto":
        return precision
    return (
        "mixed_bfloat16"
        if cpu_flags(cpuinfo) & BF16_UNITS and image_size >= BF16_MIN_IMAGE_SIZE
        else "float32"
    )


@contextmanager
def dtype_policy(name: str):
    """Layers built inside take the Keras dtype policy `name`."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def in_float32(
    model: keras.Model,
    hparams: Hyperparameters,
    image_size: int,
    pretrained: Pretrained | None = None,
    classes: Classes = SPECIES,
) -> keras.Model:
    """The same network and weights in float32. A saved mixed-precision model computes in
    bfloat16 wherever it is loaded, which is far slower on CPUs without bf16 units."""
    with dtype_policy("float32"):
        again = build_model(hparams, image_size, pretrained, classes)
    again.set_weights(model.get_weights())  # mixed precision keeps its weights in float32
    return compile_model(again, hparams)
