"""IoU, mIoU, the share of IoU >= 0.5 and accuracy: numpy for evaluation, Keras for training logs."""

from __future__ import annotations

import keras
import numpy as np

from petloc.model.losses import iou_and_enclosure


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
        "miou": float(ious.mean()) if len(ious) else 0.0,
        "iou50": float((ious >= 0.5).mean()) if len(ious) else 0.0,
        "accuracy": float((np.asarray(true_labels) == np.asarray(pred_labels)).mean())
        if len(ious)
        else 0.0,
    }


@keras.saving.register_keras_serializable(package="petloc")
class MeanIoU(keras.metrics.Mean):
    """Mean per-image IoU of predicted boxes (Keras's own MeanIoU is for segmentation)."""

    def __init__(self, name="miou", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        iou, _, _ = iou_and_enclosure(keras.ops.cast(y_true, y_pred.dtype), y_pred)
        return super().update_state(iou, sample_weight=sample_weight)
