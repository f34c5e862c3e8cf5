"""Pretraining a backbone as a classifier of the dataset's classes, for transfer into the localiser.

The classifier learns from the training split's whole photos and their head crops (a head
is where cats and dogs differ most), with the localiser's box-aware augmentation. The run is
tracked like any other and registered (`petloc-backbone@champion` by default); a localiser
then names it as its backbone: `backbone: registered:petloc-backbone@champion`.
The validation photos are never trained on, so the localiser's figures stay honest.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from petloc.config import PretrainConfig
from petloc.data.classes import SPECIES, Classes
from petloc.data.pipeline import ImageSet, eval_batches, train_batches
from petloc.model import ClassHead, build_backbone, optimizer
from petloc.model.heads import CropBoxes, crop_windows
from petloc.model.metrics import class_figures
from petloc.training.dataset import PreparedData
from petloc.training.fit import fit


def with_head_crops(arrays: ImageSet, margin: float = 0.25, chunk: int = 256) -> ImageSet:
    """The photos plus, for each, a crop around its head (`margin` of the box on each side),
    resized to the photo size, with the head box moved into the crop's coordinates."""
    side = arrays.images.shape[1]
    cut = CropBoxes(side, margin)
    crops = np.concatenate(
        [
            np.asarray(
                cut(arrays.images[i : i + chunk].astype(np.float32), arrays.boxes[i : i + chunk])
            )
            for i in range(0, len(arrays), chunk)
        ]
    )
    window = np.asarray(crop_windows(arrays.boxes, margin))
    origin, extent = window[:, [0, 1, 0, 1]], window[:, [2, 3, 2, 3]] - window[:, [0, 1, 0, 1]]
    boxes = np.clip((arrays.boxes - origin) / extent, 0.0, 1.0).astype(np.float32)
    return ImageSet(
        np.concatenate([arrays.images, np.round(crops).clip(0, 255).astype(np.uint8)]),
        np.concatenate([arrays.labels, arrays.labels]),
        np.concatenate([arrays.boxes, boxes]),
        arrays.paths + [f"{p}#head" for p in arrays.paths],
        arrays.splits * 2,
        digest=arrays.digest,
        classes=arrays.classes,
    )


def build_classifier(
    backbone: str, width: float, image_size: int, dropout: float, classes: Classes = SPECIES
) -> keras.Model:
    """A backbone with a softmax over `classes`, whose names the head carries."""
    net = build_backbone(backbone, image_size, width)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.GlobalAveragePooling2D(name="cls_pool")(net(inputs))
    if dropout > 0:
        x = layers.Dropout(dropout, name="cls_dropout")(x)
    return keras.Model(inputs, ClassHead.of(classes)(x), name=f"classifier_{backbone}")


def _class_only(batches):
    return batches.map(lambda x, y: (x, y["cls"]))


def fit_classifier(
    cfg: PretrainConfig, data: PreparedData, seed: int, callbacks=()
) -> tuple[keras.Model, keras.callbacks.History]:
    """Trains the classifier `cfg` describes on `data`'s training photos (and their head crops)
    through the shared fit path; keeps the weights of the best val accuracy."""
    train = with_head_crops(data.train) if cfg.head_crops else data.train
    size = int(data.train.images.shape[1])  # prepared at the pretraining size

    def build() -> keras.Model:
        model = build_classifier(cfg.backbone, cfg.width, size, cfg.dropout, train.classes)
        model.compile(
            optimizer=optimizer(cfg.learning_rate, -(-len(train) // cfg.batch_size) * cfg.epochs),
            loss="sparse_categorical_crossentropy",
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=cfg.xla or "auto",
        )
        return model

    def batches():
        return (
            _class_only(train_batches(train, cfg.batch_size, cfg.aug_strength, seed)),
            _class_only(eval_batches(data.val, cfg.batch_size)),
        )

    return fit(build, batches, cfg.epochs, seed=seed, monitor="val_accuracy", callbacks=callbacks)


def classifier_figures(model: keras.Model, val: ImageSet) -> dict[str, float]:
    """Accuracy on the validation photos (and the class figures that apply to its classes,
    `petloc.model.metrics.class_figures`, under the run metric names `val_<figure>`), and on
    the crops around their heads."""
    probs = model.predict(val.images.astype(np.float32), batch_size=64, verbose=0)
    heads = with_head_crops(val).subset(np.arange(len(val), 2 * len(val)))
    head_probs = model.predict(heads.images.astype(np.float32), batch_size=64, verbose=0)
    return {
        "val_accuracy": float((probs.argmax(1) == val.labels).mean()),
        "val_head_accuracy": float((head_probs.argmax(1) == val.labels).mean()),
        **{
            f"val_{name}": value
            for name, value in class_figures(val.labels, probs, val.classes).items()
        },
        "params_count": model.count_params(),
    }
