"""The two-headed localiser: a registered backbone, a class head and a box head.

Outputs are a dict: "cls" (softmax over cat, dog) and "box" (4 sigmoids, normalised
[x1, y1, x2, y2]). The input is RGB pixels in 0..255 at `image_size` x `image_size`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
from keras import layers, ops

from petloc.model.backbones import build_backbone
from petloc.model.losses import BOX_LOSSES, ordered
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
    second_stage: str = "none"  # none, or head_crop: classify from the head crop as well
    freeze_backbone: bool = False  # train only the heads, keeping a pretrained backbone as it is


def _dense_stack(x, units: int, depth: int, dropout: float, prefix: str):
    for i in range(depth):
        x = layers.Dense(units, activation="relu", name=f"{prefix}_dense{i + 1}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"{prefix}_dropout{i + 1}")(x)
    return x


@keras.saving.register_keras_serializable(package="petloc")
class CropBoxes(layers.Layer):
    """Cuts each image at its box, widened by `margin` of the box on every side, and resizes
    the cut to `size` x `size`. No gradient flows into the boxes: the crop is a look, not a loss."""

    def __init__(self, size: int, margin: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.size, self.margin = size, margin

    def call(self, images, boxes):
        import tensorflow as tf

        x1, y1, x2, y2 = ordered(ops.stop_gradient(boxes))
        dx, dy = (x2 - x1) * self.margin, (y2 - y1) * self.margin
        window = ops.clip(ops.stack([y1 - dy, x1 - dx, y2 + dy, x2 + dx], axis=-1), 0.0, 1.0)
        index = tf.range(tf.shape(images)[0])
        return tf.image.crop_and_resize(images, window, index, (self.size, self.size))

    def get_config(self):
        return {**super().get_config(), "size": self.size, "margin": self.margin}


def _head_crop_stage(spec: ModelSpec, inputs, box, pooled):
    """A second backbone of the same kind, on the head crop at half the input size; its pooled
    features join the whole photo's."""
    size = max(32, inputs.shape[1] // 2)
    net = build_backbone(spec.backbone, size, spec.width, spec.weights)
    crop_net = keras.Model(net.input, net.output, name=f"crop_{net.name}")  # names must be unique
    crop_net.trainable = not spec.freeze_backbone
    crops = CropBoxes(size, name="head_crop")(inputs, box)
    crop_pooled = layers.GlobalAveragePooling2D(name="crop_pool")(crop_net(crops))
    return layers.Concatenate(name="cls_features")([pooled, crop_pooled])


# How the class head sees the photo: the whole photo only, or also the head crop.
SECOND_STAGES = {"none": lambda spec, inputs, box, pooled: pooled, "head_crop": _head_crop_stage}


def build_model(spec: ModelSpec, image_size: int) -> keras.Model:
    backbone = build_backbone(spec.backbone, image_size, spec.width, spec.weights)
    backbone.trainable = not spec.freeze_backbone  # frozen, its BatchNorms also stay in inference mode
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(inputs)

    # Class: what is in the picture does not depend on where, so pool globally.
    pooled = layers.GlobalAveragePooling2D(name="cls_pool")(features)

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

    # A second stage may look again at the head the box found, and classify from both.
    pooled = SECOND_STAGES[spec.second_stage](spec, inputs, box, pooled)
    cls = layers.Dense(2, activation="softmax", name="cls")(
        _dense_stack(pooled, spec.head_units, spec.head_depth, spec.dropout, "cls")
    )
    return keras.Model(inputs, {"cls": cls, "box": box}, name="petloc_" + re.sub(r"[^\w]+", "_", spec.backbone).strip("_"))


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
