"""Losses by name: box losses (BOX_LOSSES) and class weightings (CLASS_WEIGHTS).

Box losses: Boxes are normalised [x1, y1, x2, y2]; predictions may be inverted
(four independent sigmoids), so the IoU-based loss orders each predicted box's corners first."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops


def ordered(box):
    """Corners sorted so that x1 <= x2 and y1 <= y2."""
    x1, y1, x2, y2 = (box[..., i] for i in range(4))
    return ops.minimum(x1, x2), ops.minimum(y1, y2), ops.maximum(x1, x2), ops.maximum(y1, y2)


def iou_and_enclosure(y_true, y_pred):
    """Per-box IoU and the area of the smallest box enclosing both (for GIoU)."""
    tx1, ty1, tx2, ty2 = ordered(y_true)
    px1, py1, px2, py2 = ordered(y_pred)
    iw = ops.maximum(ops.minimum(tx2, px2) - ops.maximum(tx1, px1), 0.0)
    ih = ops.maximum(ops.minimum(ty2, py2) - ops.maximum(ty1, py1), 0.0)
    inter = iw * ih
    union = (tx2 - tx1) * (ty2 - ty1) + (px2 - px1) * (py2 - py1) - inter
    enclosure = (ops.maximum(tx2, px2) - ops.minimum(tx1, px1)) * (
        ops.maximum(ty2, py2) - ops.minimum(ty1, py1)
    )
    eps = keras.backend.epsilon()
    return inter / (union + eps), enclosure + eps, union


@keras.saving.register_keras_serializable(package="petloc")
def giou_loss(y_true, y_pred):
    y_true = ops.cast(y_true, y_pred.dtype)
    iou, enclosure, union = iou_and_enclosure(y_true, y_pred)
    giou = iou - (enclosure - union) / enclosure
    return 1.0 - giou


@keras.saving.register_keras_serializable(package="petloc")
def smooth_l1_loss(y_true, y_pred):
    y_true = ops.cast(y_true, y_pred.dtype)
    # beta = 1/9 on boxes in 0..1, the common detection setting scaled to normalised boxes.
    diff = ops.abs(y_true - y_pred)
    beta = 1.0 / 9.0
    return ops.mean(ops.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta), axis=-1)


@keras.saving.register_keras_serializable(package="petloc")
def l1_loss(y_true, y_pred):
    # Unlike smooth L1, the pull stays full-size for small errors: it keeps tightening boxes.
    y_true = ops.cast(y_true, y_pred.dtype)
    return ops.mean(ops.abs(y_true - y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="petloc")
def mse_loss(y_true, y_pred):
    y_true = ops.cast(y_true, y_pred.dtype)
    return ops.mean(ops.square(y_true - y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="petloc")
def l1_giou_loss(y_true, y_pred):
    # GIoU alone was seen to collapse to degenerate boxes early on; L1 anchors the corners
    # while GIoU scores the overlap itself. The 5:2 mix is DETR's.
    return l1_loss(y_true, y_pred) + 0.4 * giou_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="petloc")
class SmoothedClassLoss(keras.losses.Loss):
    """Cross-entropy of the class head's softmax against integer labels smoothed by
    `smoothing` (Keras's sparse cross-entropy has no label smoothing)."""

    def __init__(self, smoothing: float = 0.0, name: str = "smoothed_class_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true, y_pred):
        # as many classes as the head scores (static in the traced graph)
        labels = ops.one_hot(
            ops.cast(ops.reshape(y_true, [-1]), "int32"), y_pred.shape[-1], dtype=y_pred.dtype
        )
        return keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=self.smoothing)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


def class_loss(smoothing: float):
    return SmoothedClassLoss(smoothing) if smoothing else "sparse_categorical_crossentropy"


BOX_LOSSES = {
    "mse": mse_loss,
    "l1": l1_loss,
    "smooth_l1": smooth_l1_loss,
    "giou": giou_loss,
    "l1_giou": l1_giou_loss,
}


def _balanced(labels: np.ndarray, classes: int) -> np.ndarray:
    """Each of the `classes` weighs total / (classes x its count): every class counts equally
    in the loss (a class missing from the labels gets the weight of a class seen once)."""
    counts = np.bincount(labels, minlength=classes)
    return len(labels) / (classes * np.maximum(counts, 1))


# How much each class's images weigh in the class loss, from the training labels and the
# number of classes the model scores.
CLASS_WEIGHTS: dict[str, Callable[[np.ndarray, int], np.ndarray | None]] = {
    "none": lambda labels, classes: None,
    "balanced": _balanced,
}
