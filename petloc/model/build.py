"""The two-headed localiser: a registered backbone, a class head and a box head.

Outputs are a dict: "cls" (softmax over cat, dog) and "box" (4 sigmoids, normalised
[x1, y1, x2, y2]). The input is RGB pixels in 0..255 at `image_size` x `image_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from petloc.model.backbones import build_backbone
from petloc.model.losses import BOX_LOSSES
from petloc.model.metrics import MeanIoU


@dataclass(frozen=True)
class ModelSpec:
    """The hyperparameters that shape and train the network."""

    backbone: str = "simple"
    width: float = 1.0  # width multiplier (simple: filters, mobilenetv2: alpha)
    weights: str | None = None  # None, "imagenet" or a local weights file
    head_units: int = 128
    head_depth: int = 1
    dropout: float = 0.2
    box_loss: str = "giou"
    box_loss_weight: float = 1.0
    learning_rate: float = 1e-3


def _dense_stack(x, units: int, depth: int, dropout: float, prefix: str):
    for i in range(depth):
        x = layers.Dense(units, activation="relu", name=f"{prefix}_dense{i + 1}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"{prefix}_dropout{i + 1}")(x)
    return x


def build_model(spec: ModelSpec, image_size: int) -> keras.Model:
    backbone = build_backbone(spec.backbone, image_size, spec.width, spec.weights)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(inputs)

    # Class: what is in the picture does not depend on where, so pool globally.
    pooled = layers.GlobalAveragePooling2D(name="cls_pool")(features)
    cls = layers.Dense(2, activation="softmax", name="cls")(
        _dense_stack(pooled, spec.head_units, spec.head_depth, spec.dropout, "cls")
    )

    # Box: where matters, so keep the spatial layout (a thin 1x1 conv, then flatten).
    # BatchNorm keeps the flattened map's scale steady: without it the box sigmoids were
    # seen to saturate on real photos (every prediction the whole image, no gradient).
    # Large inputs give large maps; pooling them to about 8x8 keeps the flattened width
    # (and the head's first Dense) the same at 64 px and 128 px.
    side = features.shape[1]
    if side and side > 8:
        features = layers.AveragePooling2D(side // 8, name="box_pool")(features)
    squeezed = layers.Conv2D(32, 1, use_bias=False, name="box_squeeze")(features)
    squeezed = layers.Activation("relu", name="box_squeeze_relu")(layers.BatchNormalization(momentum=0.9, name="box_squeeze_bn")(squeezed))
    flat = layers.Flatten(name="box_flatten")(squeezed)
    box = layers.Dense(4, activation="sigmoid", name="box")(
        _dense_stack(flat, spec.head_units, spec.head_depth, spec.dropout, "box")
    )
    return keras.Model(inputs, {"cls": cls, "box": box}, name=f"petloc_{spec.backbone}")


def compile_model(model: keras.Model, spec: ModelSpec, steps_per_epoch: int = 0, epochs: int = 0) -> keras.Model:
    """Adam, with cosine decay over the whole run when its length is known."""
    lr = spec.learning_rate
    if steps_per_epoch and epochs:
        lr = keras.optimizers.schedules.CosineDecay(spec.learning_rate, steps_per_epoch * epochs, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss={"cls": "sparse_categorical_crossentropy", "box": BOX_LOSSES[spec.box_loss]},
        loss_weights={"cls": 1.0, "box": spec.box_loss_weight},
        metrics={"cls": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")], "box": [MeanIoU()]},
    )
    return model
