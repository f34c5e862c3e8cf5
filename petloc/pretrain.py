"""Pretraining a backbone as a cat / dog classifier, for transfer into the localiser.

The classifier learns from the training split's whole photos and their head crops (a head
is where cats and dogs differ most), with the localiser's box-aware augmentation. The run is
tracked like any other and registered (`petloc-backbone@champion` by default); a localiser
then names it as its backbone: `backbone: registered:petloc-backbone@champion`.
The validation photos are never trained on, so the localiser's figures stay honest.
"""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np
from keras import layers

from petloc import tracking
from petloc.config import Experiment
from petloc.data.pipeline import Arrays, eval_batches, train_batches
from petloc.experiment import PreparedData
from petloc.model import build_backbone
from petloc.model.build import CropBoxes, crop_windows
from petloc.train import KeepBest, ShortMetricNames

def with_head_crops(arrays: Arrays, margin: float = 0.25, chunk: int = 256) -> Arrays:
    """The photos plus, for each, a crop around its head (`margin` of the box on each side),
    resized to the photo size, with the head box moved into the crop's coordinates."""
    side = arrays.images.shape[1]
    cut = CropBoxes(side, margin)
    crops = np.concatenate([
        np.asarray(cut(arrays.images[i:i + chunk].astype(np.float32), arrays.boxes[i:i + chunk]))
        for i in range(0, len(arrays), chunk)
    ])
    window = np.asarray(crop_windows(arrays.boxes, margin))
    origin, extent = window[:, [0, 1, 0, 1]], window[:, [2, 3, 2, 3]] - window[:, [0, 1, 0, 1]]
    boxes = np.clip((arrays.boxes - origin) / extent, 0.0, 1.0).astype(np.float32)
    return Arrays(
        np.concatenate([arrays.images, np.round(crops).clip(0, 255).astype(np.uint8)]),
        np.concatenate([arrays.labels, arrays.labels]),
        np.concatenate([arrays.boxes, boxes]),
        arrays.paths + [f"{p}#head" for p in arrays.paths],
        arrays.splits * 2,
        digest=arrays.digest,
    )


def build_classifier(backbone: str, width: float, image_size: int, dropout: float) -> keras.Model:
    net = build_backbone(backbone, image_size, width)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.GlobalAveragePooling2D(name="cls_pool")(net(inputs))
    if dropout > 0:
        x = layers.Dropout(dropout, name="cls_dropout")(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax", name="cls")(x), name=f"classifier_{backbone}")


def _class_only(batches):
    return batches.map(lambda x, y: (x, y["cls"]))


def image_size(exp: Experiment) -> int:
    """The pretraining image size; the backbone is convolutional, so a localiser may use another."""
    return exp.pretrain.image_size or exp.data.image_size


def pretrain_tracked(exp: Experiment, data: PreparedData, run_id: str, verbose: int | None = None) -> dict[str, float]:
    """Trains the classifier inside MLflow run `run_id`; logs and returns its figures."""
    import mlflow
    import mlflow.keras

    cfg = exp.pretrain
    params: dict[str, Any] = {**cfg.model_dump(exclude={"register_as", "alias"}), "image_size": image_size(exp),
                              "seed": exp.train.seed, "val_split": exp.data.val_split}
    tracking.log_run_inputs(run_id, params, data.tags(), exp.train.seed, petloc_kind="pretrain")

    keras.utils.set_random_seed(exp.train.seed)
    train = with_head_crops(data.train) if cfg.head_crops else data.train
    model = build_classifier(cfg.backbone, cfg.width, image_size(exp), cfg.dropout)
    steps = -(-len(train) // cfg.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps * cfg.epochs, alpha=0.05)),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=cfg.xla or "auto",
    )
    start = time.perf_counter()
    # KeepBest watches val_miou; for a classifier the score to keep is accuracy.
    keep = KeepBest(monitor="val_accuracy")
    history = model.fit(
        _class_only(train_batches(train, cfg.batch_size, cfg.aug_strength, exp.train.seed)),
        validation_data=_class_only(eval_batches(data.val, cfg.batch_size)),
        epochs=cfg.epochs,
        callbacks=[keras.callbacks.TerminateOnNaN(), ShortMetricNames(), keep, tracking.EpochLogger(run_id)],
        verbose=verbose if verbose is not None else 2,
    )
    probs = model.predict(data.val.images.astype(np.float32), batch_size=64, verbose=0)
    heads = with_head_crops(data.val).subset(np.arange(len(data.val), 2 * len(data.val)))
    head_probs = model.predict(heads.images.astype(np.float32), batch_size=64, verbose=0)
    summary = {
        "val_accuracy": float((probs.argmax(1) == data.val.labels).mean()),
        "val_head_accuracy": float((head_probs.argmax(1) == data.val.labels).mean()),
        "train_images": float(len(train)),
        "params_count": float(model.count_params()),
        "train_seconds": time.perf_counter() - start,
        "epochs_trained": float(len(history.history.get("loss", []))),
    }
    mlflow.log_metrics(summary, run_id=run_id)
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.keras.log_model(model, name="model")
    mlflow.MlflowClient().set_tag(run_id, "model_uri", info.model_uri)
    return summary
