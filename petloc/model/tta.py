"""Test-time augmentation, baked into the saved model so that every consumer of it
(evaluate, predict, the served pyfunc) gets the same answers the run logged.

A registry, name -> wrapper; "none" leaves the trained model as it is."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="petloc")
class MirrorImages(layers.Layer):
    """Flips a batch of images left to right."""

    def call(self, images):
        return ops.flip(images, axis=2)


@keras.saving.register_keras_serializable(package="petloc")
class MirrorBoxes(layers.Layer):
    """Maps normalised [x1, y1, x2, y2] boxes of a mirrored image back onto the original."""

    def call(self, boxes):
        x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
        return ops.stack([1.0 - x2, y1, 1.0 - x1, y2], axis=-1)


def with_flip(model: keras.Model) -> keras.Model:
    """Averages the predictions for each photo and its mirror image (two forward passes)."""
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    plain, mirrored = model(inputs), model(MirrorImages(name="mirror_images")(inputs))
    return keras.Model(
        inputs,
        {
            "cls": layers.Average(name="cls")([plain["cls"], mirrored["cls"]]),
            "box": layers.Average(name="box")(
                [plain["box"], MirrorBoxes(name="mirror_boxes")(mirrored["box"])]
            ),
        },
        name=f"{model.name}_flip_tta",
    )


TTA: dict[str, Callable[[keras.Model], keras.Model]] = {
    "none": lambda model: model,
    "flip": with_flip,
}
