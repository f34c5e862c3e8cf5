"""Quality and speed of a trained model on a dataset: mIoU, IoU >= 0.5 share, accuracy (top-1,
and top-5, macro and species where they apply), per-class figures, latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from petloc import quantities
from petloc.data.classes import Classes
from petloc.data.pipeline import ImageSet, load_arrays, split_train_val
from petloc.model.class_head import model_classes
from petloc.model.metrics import box_iou, class_figures, per_class_accuracy, summarise
from petloc.report import csv_text


@dataclass
class Predictions:
    labels: np.ndarray  # [N] indices into the model's classes
    scores: np.ndarray  # [N] probability of the predicted label
    boxes: np.ndarray  # [N, 4] normalised
    probs: np.ndarray  # [N, classes] every class's probability


def forward_pass(model: keras.Model) -> Callable[[tf.Tensor], dict]:
    """`model(x, training=False)` traced once for every batch size. `model.predict` builds a
    tf.data pipeline and traces on each call, which at batch 1 costs far more than the forward
    pass, and a trial's quality and latency each traced their own."""
    size = int(model.input_shape[1])
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32)]
    return tf.function(lambda x: model(x, training=False), input_signature=signature)


LATENCY_BATCH = (
    32  # the batch of latency_ms_b32, and of a quality pass, which measures it on the way
)


class TimedForward:
    """A forward pass that keeps the wall time of its warm calls (each batch size's first call
    traces or sets up, so is not kept), by batch size: a trial's quality pass over its
    validation photos at batch 32 is also its batch-32 latency measurement, the same calls
    not made again on random pixels."""

    def __init__(self, forward: Callable[[tf.Tensor], dict]):
        self.forward = forward
        self.warm_ms: dict[int, list[float]] = {}  # a batch size's entry is made by its first call

    def __call__(self, x: tf.Tensor) -> dict:
        start = time.perf_counter()
        out = self.forward(x)
        _ = out["box"].numpy()  # the answer in hand, as a caller gets it
        ms = (time.perf_counter() - start) * 1000
        batch = int(x.shape[0])
        if batch in self.warm_ms:
            self.warm_ms[batch].append(ms)
        else:
            self.warm_ms[batch] = []
        return out

    @classmethod
    def of(cls, model: keras.Model, forward=None) -> TimedForward:
        """`forward` if it already keeps times, else it (or `model`'s forward pass) timed."""
        return forward if isinstance(forward, cls) else cls(forward or forward_pass(model))


def predict_arrays(
    model: keras.Model, images: np.ndarray, batch_size: int = LATENCY_BATCH, forward=None
) -> Predictions:
    forward = forward or forward_pass(model)
    outs = [
        forward(tf.convert_to_tensor(images[i : i + batch_size], tf.float32))
        for i in range(0, len(images), batch_size)
    ]
    width = int(model.output["cls"].shape[-1])
    probs = (
        np.concatenate([o["cls"].numpy() for o in outs])
        if outs
        else np.zeros((0, width), np.float32)
    )
    boxes = (
        np.concatenate([o["box"].numpy() for o in outs]) if outs else np.zeros((0, 4), np.float32)
    )
    labels = probs.argmax(axis=1)
    return Predictions(labels, probs[np.arange(len(labels)), labels], boxes, probs)


def quality(
    model: keras.Model, arrays: ImageSet, forward=None
) -> tuple[dict[str, float], Predictions]:
    """miou, iou50, accuracy and the class figures (`petloc.model.metrics.class_figures`) on
    `arrays`, whose labels index the model's classes, and the predictions they came from."""
    pred = predict_arrays(model, arrays.images, forward=forward)
    figures = summarise(arrays.labels, pred.labels, arrays.boxes, pred.boxes)
    return {**figures, **class_figures(arrays.labels, pred.probs, arrays.classes)}, pred


def per_image_iou(arrays: ImageSet, pred: Predictions) -> np.ndarray:
    return box_iou(arrays.boxes, pred.boxes)


PER_CLASS_COLUMNS = ["class", "species", "count", "accuracy", "miou"]


def per_class_rows(arrays: ImageSet, pred: Predictions) -> list[dict]:
    """One row per class: its species, its number of images, the share of them classed
    right and their mIoU (empty where the class has no image)."""
    classes, ious = arrays.classes, per_image_iou(arrays, pred)
    accuracy = per_class_accuracy(arrays.labels, pred.labels, len(classes))
    rows = []
    for i, name in enumerate(classes.names):
        mine = arrays.labels == i
        rows.append(
            {
                "class": name,
                "species": classes.species[i] if classes.species else "",
                "count": int(mine.sum()),
                "accuracy": float(accuracy[i]) if mine.any() else "",
                "miou": float(ious[mine].mean()) if mine.any() else "",
            }
        )
    return rows


def per_class_csv(arrays: ImageSet, pred: Predictions) -> str:
    return csv_text(per_class_rows(arrays, pred), PER_CLASS_COLUMNS)


def latency_ms(
    model: keras.Model, image_size: int, batch: int, repeats: int = 10, forward=None
) -> float:
    """Median wall time of one forward pass (graph-compiled, after a warm-up call), in
    milliseconds, over at least `repeats` calls: those a `TimedForward` already made at this
    batch size count."""
    forward = TimedForward.of(model, forward)
    x = tf.random.uniform((batch, image_size, image_size, 3), 0, 255)
    while len(forward.warm_ms.get(batch, ())) < repeats:
        forward(x)
    return float(np.median(forward.warm_ms[batch]))


def latencies(model: keras.Model, image_size: int, forward=None) -> dict[str, float]:
    forward = TimedForward.of(model, forward)
    return {
        quantities.LATENCY_MS_B1: latency_ms(model, image_size, 1, repeats=20, forward=forward),
        quantities.LATENCY_MS_B32: latency_ms(
            model, image_size, LATENCY_BATCH, repeats=5, forward=forward
        ),
    }


def _labelled_as_trained(
    data: str | Path, size: int, classes: Classes, on_bad: str, strict: bool
) -> ImageSet:
    """The photos at `data` labelled as the model's were: the labelling (LABELLINGS) whose
    classes the model knows, breeds first for classes that have a species (a breed model)."""
    order = ("breed", "species") if classes.species else ("species", "breed")
    for labels in order:
        arrays = load_arrays(data, size, on_bad=on_bad, strict=strict, labels=labels)
        if set(arrays.classes.names) <= set(classes.names):
            return arrays
    return arrays  # relabelled then names the first photo of a class the model does not know


def validation_paths(
    model: keras.Model, data: str | Path, val_split: float, seed: int
) -> list[str]:
    """The files of the validation side of the split a run of `model` made of `data` with
    `val_split` and `seed` (data.seed), as `evaluate_dataset(subset="val")` scores them."""
    size, classes = int(model.input_shape[1]), model_classes(model)
    arrays = _labelled_as_trained(data, size, classes, "skip", strict=True)
    return split_train_val(arrays, val_split, seed)[1].paths


def evaluate_dataset(
    model: keras.Model,
    data: str | Path,
    on_bad: str = "skip",
    subset: str = "all",
    val_split: float = 0.15,
    seed: int = 0,
) -> tuple[dict, list]:
    """Figures and latency of `model` on the dataset at `data` (or one side of the split a run
    made of it), under the quantities' bare names (petloc.quantities), and the files skipped."""
    size, classes = int(model.input_shape[1]), model_classes(model)
    # Every photo that decodes is scored; only re-making a run's split needs the photos its
    # training kept (training skips the JPEGs the decoder had to repair).
    arrays = _labelled_as_trained(data, size, classes, on_bad, strict=subset != "all")
    skipped = arrays.skipped
    if subset != "all":
        arrays = dict(zip(("train", "val"), split_train_val(arrays, val_split, seed), strict=True))[
            subset
        ]
    # after the split, which is made on the data's own labels as the run's was
    arrays = arrays.relabelled(classes)
    # the quality pass's batches count towards latency_ms_b32
    forward = TimedForward(forward_pass(model))
    figures, _ = quality(model, arrays, forward)
    return {
        "images": len(arrays),
        "classes": len(classes),
        "skipped": len(skipped),
        **figures,
        **latencies(model, size, forward),
        quantities.PARAMS_COUNT: model.count_params(),
    }, skipped
