"""Quality and speed of a trained model on a dataset: mIoU, IoU >= 0.5 share, accuracy, latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from petloc.data.pipeline import ImageSet, load_arrays, split_train_val
from petloc.model.metrics import box_iou, summarise


@dataclass
class Predictions:
    labels: np.ndarray  # [N] 0 = cat, 1 = dog
    scores: np.ndarray  # [N] probability of the predicted label
    boxes: np.ndarray  # [N, 4] normalised


def predict_arrays(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> Predictions:
    out = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    probs = np.asarray(out["cls"])
    labels = probs.argmax(axis=1)
    return Predictions(labels, probs[np.arange(len(labels)), labels], np.asarray(out["box"]))


def quality(model: keras.Model, arrays: ImageSet) -> tuple[dict[str, float], Predictions]:
    """miou, iou50, accuracy on `arrays`, and the predictions they came from."""
    pred = predict_arrays(model, arrays.images)
    return summarise(arrays.labels, pred.labels, arrays.boxes, pred.boxes), pred


def per_image_iou(arrays: ImageSet, pred: Predictions) -> np.ndarray:
    return box_iou(arrays.boxes, pred.boxes)


def latency_ms(model: keras.Model, image_size: int, batch: int, repeats: int = 10) -> float:
    """Median wall time of one forward pass (graph-compiled, after warm-up), in milliseconds."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    x = tf.random.uniform((batch, image_size, image_size, 3), 0, 255)
    for _ in range(2):
        forward(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = forward(x)
        _ = out["box"].numpy()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def latencies(model: keras.Model, image_size: int) -> dict[str, float]:
    return {
        "latency_ms_b1": latency_ms(model, image_size, 1, repeats=20),
        "latency_ms_b32": latency_ms(model, image_size, 32, repeats=5),
    }


def evaluate_dataset(model: keras.Model, data: str | Path, on_bad: str = "skip", subset: str = "all",
                     val_split: float = 0.15, seed: int = 0) -> tuple[dict, list]:
    """Figures and latency of `model` on the dataset at `data` (or one side of the split a run
    made of it), and the files skipped."""
    size = int(model.input_shape[1])
    # Every photo that decodes is scored; only re-making a run's split needs the photos its
    # training kept (training skips the JPEGs the decoder had to repair).
    arrays = load_arrays(data, size, on_bad=on_bad, strict=subset != "all")
    skipped = arrays.skipped
    if subset != "all":
        arrays = dict(zip(("train", "val"), split_train_val(arrays, val_split, seed)))[subset]
    figures, _ = quality(model, arrays)
    return {"images": len(arrays), "skipped": len(skipped), **figures, **latencies(model, size)}, skipped
