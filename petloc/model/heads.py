"""The heads on a backbone's feature map, as registries: how the box is read off the map
(BOX_HEADS) and how the class head may look again at the head the box found (SECOND_STAGES).

Each takes the run's hyperparameters (`petloc.hyperparams.Hyperparameters`).
Under a mixed-precision policy the box's position and the head crop stay float32.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from petloc.hyperparams import Hyperparameters
from petloc.model.backbones import Pretrained, build_backbone
from petloc.model.losses import ordered


def dense_stack(x, units: int, depth: int, dropout: float, prefix: str):
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


def _head_crop_stage(hparams: Hyperparameters, inputs, box, pooled, pretrained: Pretrained | None):
    """A second backbone of the same kind, on the head crop at half the input size; its pooled
    features join the whole photo's."""
    size = max(32, inputs.shape[1] // 2)
    net = build_backbone(hparams.backbone, size, hparams.width, hparams.weights, pretrained)
    crop_net = keras.Model(net.input, net.output, name=f"crop_{net.name}")  # names must be unique
    crop_net.trainable = not hparams.freeze_backbone
    # crop_and_resize has no bfloat16
    crops = CropBoxes(size, name="head_crop", dtype="float32")(inputs, box)
    crop_pooled = layers.GlobalAveragePooling2D(name="crop_pool")(crop_net(crops))
    return layers.Concatenate(name="cls_features")([pooled, crop_pooled])


# How the class head sees the photo: the whole photo only, or also the head crop.
SECOND_STAGES = {
    "none": lambda hparams, inputs, box, pooled, pretrained: pooled,
    "head_crop": _head_crop_stage,
}


def _dense_box_head(hparams: Hyperparameters, features):
    """Keep the spatial layout (a thin 1x1 conv), flatten, and regress the four corners."""
    # BatchNorm keeps the flattened map's scale steady: without it the box sigmoids were
    # seen to saturate on real photos (every prediction the whole image, no gradient).
    # Large inputs give large maps; pooling them to about 8x8 keeps the flattened width
    # (and the head's first Dense) the same at 64 px and 128 px.
    side = features.shape[1]
    if side and side > 8:
        features = layers.AveragePooling2D(side // 8, name="box_pool")(features)
    squeezed = layers.Conv2D(32, 1, use_bias=False, name="box_squeeze")(features)
    squeezed = layers.Activation("relu", name="box_squeeze_relu")(
        layers.BatchNormalization(momentum=0.9, name="box_squeeze_bn")(squeezed)
    )
    flat = layers.Flatten(name="box_flatten")(squeezed)
    box = layers.Dense(4, activation="sigmoid", name="box", dtype="float32")(
        dense_stack(flat, hparams.head_units, hparams.head_depth, hparams.dropout, "box")
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
        centre = ops.stack(
            [ops.sum(weights * grid_x, axis=-1), ops.sum(weights * grid_y, axis=-1)], axis=-1
        )
        pooled = ops.einsum("bn,bnc->bc", weights, ops.reshape(features, (-1, h * w, c)))
        return centre, pooled


@keras.saving.register_keras_serializable(package="petloc")
class CentreSizeBox(layers.Layer):
    """[cx, cy] and [w, h] -> [x1, y1, x2, y2], clipped to the image."""

    def call(self, centre, size):
        half = size / 2.0
        return ops.clip(ops.concatenate([centre - half, centre + half], axis=-1), 0.0, 1.0)


def _centre_box_head(hparams: Hyperparameters, features):
    """Where: a heat map over the feature map, read out as its expected position (translation
    equivariant, and exact between cells). How big: regressed from the features there."""
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="box_map_conv")(features)
    x = layers.Activation("relu", name="box_map_relu")(
        layers.BatchNormalization(momentum=0.9, name="box_map_bn")(x)
    )
    logits = layers.Conv2D(1, 1, name="box_heatmap")(x)
    # float32 even under mixed precision: bfloat16 rounds a position to 1/256 (half a pixel at 128 px).
    centre, at_head = SoftArgmaxPool(name="box_centre", dtype="float32")(logits, features)
    size = layers.Dense(2, activation="sigmoid", name="box_size", dtype="float32")(
        dense_stack(at_head, hparams.head_units, hparams.head_depth, hparams.dropout, "box")
    )
    return CentreSizeBox(name="box", dtype="float32")(centre, size), at_head


# How the box is read off the feature map.
BOX_HEADS = {"dense": _dense_box_head, "centre": _centre_box_head}
