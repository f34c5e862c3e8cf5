"""The two-headed localiser: a registered backbone, a class head and a box head.

Outputs are a dict: "cls" (softmax over cat, dog) and "box" (4 sigmoids, normalised
[x1, y1, x2, y2]). The input is RGB pixels in 0..255 at `image_size` x `image_size`.
Under a mixed-precision policy the outputs, the box's position and the head crop stay float32.
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
    box_head: str = "dense"  # dense: regress corners from the flattened map; centre: heat map + size
    second_stage: str = "none"  # none, or head_crop: classify from the head crop as well
    freeze_backbone: bool = False  # train only the heads, keeping a pretrained backbone as it is


def _dense_stack(x, units: int, depth: int, dropout: float, prefix: str):
    for i in range(depth):
        x = layers.Dense(units, activation="relu", name=f"{prefix}_dense{i + 1}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"{prefix}_dropout{i + 1}")(x)
    return x


def crop_windows(boxes, margin: float):
    """Each box widened by `margin` of its size on every side, clipped to the image."""
    x1, y1, x2, y2 = ordered(boxes)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return ops.clip(ops.stack([x1 - dx, y1 - dy, x2 + dx, y2 + dy], axis=-1), 0.0, 1.0)


@keras.saving.register_keras_serializable(package="petloc")
class CropBoxes(layers.Layer):
    """Cuts each image at its box, widened by `margin` of the box on every side, and resizes
    the cut to `size` x `size`. No gradient flows into the boxes: the crop is a look, not a loss."""

    def __init__(self, size: int, margin: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.size, self.margin = size, margin

    def call(self, images, boxes):
        import tensorflow as tf

        window = crop_windows(ops.stop_gradient(boxes), self.margin)
        index = tf.range(tf.shape(images)[0])
        yx = ops.take(window, [1, 0, 3, 2], axis=-1)  # crop_and_resize wants [y1, x1, y2, x2]
        return tf.image.crop_and_resize(images, yx, index, (self.size, self.size))

    def get_config(self):
        return {**super().get_config(), "size": self.size, "margin": self.margin}


def _head_crop_stage(spec: ModelSpec, inputs, box, pooled):
    """A second backbone of the same kind, on the head crop at half the input size; its pooled
    features join the whole photo's."""
    size = max(32, inputs.shape[1] // 2)
    net = build_backbone(spec.backbone, size, spec.width, spec.weights)
    crop_net = keras.Model(net.input, net.output, name=f"crop_{net.name}")  # names must be unique
    crop_net.trainable = not spec.freeze_backbone
    crops = CropBoxes(size, name="head_crop", dtype="float32")(inputs, box)  # crop_and_resize has no bfloat16
    crop_pooled = layers.GlobalAveragePooling2D(name="crop_pool")(crop_net(crops))
    return layers.Concatenate(name="cls_features")([pooled, crop_pooled])


# How the class head sees the photo: the whole photo only, or also the head crop.
SECOND_STAGES = {"none": lambda spec, inputs, box, pooled: pooled, "head_crop": _head_crop_stage}


def _dense_box_head(spec: ModelSpec, features):
    """Keep the spatial layout (a thin 1x1 conv), flatten, and regress the four corners."""
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
    box = layers.Dense(4, activation="sigmoid", name="box", dtype="float32")(
        _dense_stack(flat, spec.head_units, spec.head_depth, spec.dropout, "box")
    )
    return box, None


@keras.saving.register_keras_serializable(package="petloc")
class SoftArgmaxPool(layers.Layer):
    """From a map of logits and the features under it: the expected position (softmax over
    the cells, so between cells too) as [cx, cy] in 0..1, and the features averaged with
    the same weights."""

    def call(self, logits, features):
        _, h, w, c = ops.shape(features)  # dynamic: tf.data batches may not carry static sizes
        weights = ops.softmax(ops.reshape(logits, (-1, h * w)), axis=-1)
        xs = (ops.cast(ops.arange(w), "float32") + 0.5) / ops.cast(w, "float32")
        ys = (ops.cast(ops.arange(h), "float32") + 0.5) / ops.cast(h, "float32")
        grid_x, grid_y = ops.tile(xs, [h]), ops.repeat(ys, w)  # row-major, like the reshape
        centre = ops.stack([ops.sum(weights * grid_x, axis=-1), ops.sum(weights * grid_y, axis=-1)], axis=-1)
        pooled = ops.einsum("bn,bnc->bc", weights, ops.reshape(features, (-1, h * w, c)))
        return centre, pooled


@keras.saving.register_keras_serializable(package="petloc")
class CentreSizeBox(layers.Layer):
    """[cx, cy] and [w, h] -> [x1, y1, x2, y2], clipped to the image."""

    def call(self, centre, size):
        half = size / 2.0
        return ops.clip(ops.concatenate([centre - half, centre + half], axis=-1), 0.0, 1.0)


def _centre_box_head(spec: ModelSpec, features):
    """Where: a heat map over the feature map, read out as its expected position (translation
    equivariant, and exact between cells). How big: regressed from the features there."""
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="box_map_conv")(features)
    x = layers.Activation("relu", name="box_map_relu")(layers.BatchNormalization(momentum=0.9, name="box_map_bn")(x))
    logits = layers.Conv2D(1, 1, name="box_heatmap")(x)
    # float32 even under mixed precision: bfloat16 rounds a position to 1/256 (half a pixel at 128 px).
    centre, at_head = SoftArgmaxPool(name="box_centre", dtype="float32")(logits, features)
    size = layers.Dense(2, activation="sigmoid", name="box_size", dtype="float32")(
        _dense_stack(at_head, spec.head_units, spec.head_depth, spec.dropout, "box")
    )
    return CentreSizeBox(name="box", dtype="float32")(centre, size), at_head


# How the box is read off the feature map.
BOX_HEADS = {"dense": _dense_box_head, "centre": _centre_box_head}


def build_model(spec: ModelSpec, image_size: int) -> keras.Model:
    backbone = build_backbone(spec.backbone, image_size, spec.width, spec.weights)
    backbone.trainable = not spec.freeze_backbone  # frozen, its BatchNorms also stay in inference mode
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(inputs)

    # Class: what is in the picture does not depend on where, so pool globally.
    pooled = layers.GlobalAveragePooling2D(name="cls_pool")(features)

    box, head_features = BOX_HEADS[spec.box_head](spec, features)
    if head_features is not None:  # the box head found where the head is: let the class head see it
        pooled = layers.Concatenate(name="cls_with_head")([pooled, head_features])

    # A second stage may look again at the head the box found, and classify from both.
    pooled = SECOND_STAGES[spec.second_stage](spec, inputs, box, pooled)
    cls = layers.Dense(2, activation="softmax", name="cls", dtype="float32")(
        _dense_stack(pooled, spec.head_units, spec.head_depth, spec.dropout, "cls")
    )
    return keras.Model(inputs, {"cls": cls, "box": box}, name="petloc_" + re.sub(r"[^\w]+", "_", spec.backbone).strip("_"))


def compile_model(model: keras.Model, spec: ModelSpec, steps_per_epoch: int = 0, epochs: int = 0, jit_compile="auto") -> keras.Model:
    """Adam, with cosine decay over the whole run when its length is known. `jit_compile`
    is Keras's: "auto" means no XLA on a CPU."""
    lr = spec.learning_rate
    if steps_per_epoch and epochs:
        lr = keras.optimizers.schedules.CosineDecay(spec.learning_rate, steps_per_epoch * epochs, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss={"cls": "sparse_categorical_crossentropy", "box": BOX_LOSSES[spec.box_loss]},
        loss_weights={"cls": 1.0, "box": spec.box_loss_weight},
        metrics={"cls": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")], "box": [MeanIoU()]},
        jit_compile=jit_compile,
    )
    return model
