"""IoU, mIoU, the share of IoU >= 0.5 and accuracy (top-1, top-5, macro, species): numpy for
evaluation, Keras for training logs."""

from __future__ import annotations

import keras
import numpy as np

from petloc import quantities
from petloc.data.classes import Classes
from petloc.model.losses import iou_and_enclosure

TOP_K = 5  # top-5 accuracy is reported only for models of more classes than this


def box_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-row IoU of [N, 4] boxes [x1, y1, x2, y2] (any units; no "+1" pixel convention)."""
    true = np.asarray(true, dtype=np.float64).reshape(-1, 4)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    t = np.concatenate(
        [np.minimum(true[:, :2], true[:, 2:]), np.maximum(true[:, :2], true[:, 2:])], axis=1
    )
    p = np.concatenate(
        [np.minimum(pred[:, :2], pred[:, 2:]), np.maximum(pred[:, :2], pred[:, 2:])], axis=1
    )
    wh = np.clip(np.minimum(t[:, 2:], p[:, 2:]) - np.maximum(t[:, :2], p[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = np.prod(t[:, 2:] - t[:, :2], axis=1) + np.prod(p[:, 2:] - p[:, :2], axis=1) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def summarise(true_labels, pred_labels, true_boxes, pred_boxes) -> dict[str, float]:
    """The quality figures petloc reports: miou, iou50 (share with IoU >= 0.5), accuracy."""
    ious = box_iou(true_boxes, pred_boxes)
    return {
        quantities.MIOU: float(ious.mean()) if len(ious) else 0.0,
        quantities.IOU50: float((ious >= 0.5).mean()) if len(ious) else 0.0,
        quantities.ACCURACY: float((np.asarray(true_labels) == np.asarray(pred_labels)).mean())
        if len(ious)
        else 0.0,
    }


def top_k_accuracy(true_labels, probs, k: int = TOP_K) -> float:
    """Share of images whose true class is among the `k` highest scores."""
    probs = np.asarray(probs)
    if not len(probs):
        return 0.0
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(true_labels)[:, None]).any(axis=1).mean())


def per_class_accuracy(true_labels, pred_labels, classes: int) -> np.ndarray:
    """Each class's accuracy (recall) over its own images; NaN for a class with none."""
    true, pred = np.asarray(true_labels), np.asarray(pred_labels)
    right = np.bincount(true[true == pred], minlength=classes).astype(np.float64)
    count = np.bincount(true, minlength=classes).astype(np.float64)
    return np.divide(right, count, out=np.full(classes, np.nan), where=count > 0)


def macro_accuracy(true_labels, pred_labels, classes: int) -> float:
    """The mean of the per-class accuracies over the classes present: a rare class counts
    as much as a common one."""
    per_class = per_class_accuracy(true_labels, pred_labels, classes)
    return float(np.nanmean(per_class)) if (~np.isnan(per_class)).any() else 0.0


def species_accuracy(true_labels, pred_labels, classes: Classes) -> float:
    """Share of images whose predicted class is of the true class's species (a breed model
    scored as a species model)."""
    species = np.asarray(classes.species_index())
    true, pred = np.asarray(true_labels), np.asarray(pred_labels)
    return float((species[true] == species[pred]).mean()) if len(true) else 0.0


def class_figures(true_labels, probs, classes: Classes) -> dict[str, float]:
    """The class figures beyond top-1 accuracy: macro_accuracy always, top5_accuracy for
    more than TOP_K classes, species_accuracy where the classes have species."""
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    figures = {quantities.MACRO_ACCURACY: macro_accuracy(true_labels, pred, len(classes))}
    if len(classes) > TOP_K:
        figures[quantities.TOP5_ACCURACY] = top_k_accuracy(true_labels, probs)
    if classes.species:
        figures[quantities.SPECIES_ACCURACY] = species_accuracy(true_labels, pred, classes)
    return figures


@keras.saving.register_keras_serializable(package="petloc")
class MeanIoU(keras.metrics.Mean):
    """Mean per-image IoU of predicted boxes (Keras's own MeanIoU is for segmentation)."""

    def __init__(self, name="miou", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        iou, _, _ = iou_and_enclosure(keras.ops.cast(y_true, y_pred.dtype), y_pred)
        return super().update_state(iou, sample_weight=sample_weight)
