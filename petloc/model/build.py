"""The two-headed localiser: a registered backbone, a class head and a box head.

Outputs are a dict: "cls" (softmax over the dataset's classes, whose names the head
carries: `petloc.model.class_head`) and "box" (4 sigmoids, normalised
[x1, y1, x2, y2]). The input is RGB pixels in 0..255 at `image_size` x `image_size`.
Under a mixed-precision policy the outputs stay float32.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from petloc.data.classes import SPECIES, Classes
from petloc.hyperparams import Hyperparameters
from petloc.model.backbones import Pretrained, build_backbone
from petloc.model.class_head import ClassHead
from petloc.model.heads import BOX_HEADS, SECOND_STAGES, dense_stack
from petloc.model.losses import BOX_LOSSES, class_loss
from petloc.model.metrics import MeanIoU


def build_model(
    hparams: Hyperparameters,
    image_size: int,
    pretrained: Pretrained | None = None,
    classes: Classes = SPECIES,
) -> keras.Model:
    """The localiser `hparams` describes, scoring `classes`; `pretrained` is the network a
    `registered:` backbone names."""
    backbone = build_backbone(
        hparams.backbone, image_size, hparams.width, hparams.weights, pretrained
    )
    # frozen, its BatchNorms also stay in inference mode
    backbone.trainable = not hparams.freeze_backbone
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(inputs)

    pooled = class_pool(features)

    box, head_features = BOX_HEADS[hparams.box_head](hparams, features)
    if head_features is not None:  # the box head found where the head is: let the class head see it
        pooled = layers.Concatenate(name="cls_with_head")([pooled, head_features])

    # A second stage may look again at the head the box found, and classify from both.
    pooled = SECOND_STAGES[hparams.second_stage](hparams, inputs, box, pooled, pretrained)
    cls = ClassHead.of(classes)(
        dense_stack(pooled, hparams.head_units, hparams.head_depth, hparams.dropout, "cls")
    )
    return keras.Model(
        inputs,
        {"cls": cls, "box": box},
        name="petloc_" + re.sub(r"[^\w]+", "_", hparams.backbone).strip("_"),
    )


def class_pool(features):
    """What the class head sees of the map, pooled globally (what is in the picture does not
    depend on where): the average and the maximum of each channel. The cue that tells a cat
    from a dog (ears, muzzle) fills a few cells of the map among body and clutter of the same
    fur; averaged alone it was lost (the synthetic pets' class head stayed at the dog share
    for 6 epochs), the maximum keeps it."""
    average = layers.GlobalAveragePooling2D(name="cls_pool")(features)
    strongest = layers.GlobalMaxPooling2D(name="cls_max_pool")(features)
    return layers.Concatenate(name="cls_pools")([average, strongest])


def compile_model(
    model: keras.Model,
    hparams: Hyperparameters,
    steps_per_epoch: int = 0,
    epochs: int = 0,
    jit_compile="auto",
) -> keras.Model:
    """The localiser's losses and metrics, Adam as `optimizer` says. `jit_compile` is Keras's:
    "auto" means no XLA on a CPU."""
    model.compile(
        optimizer=optimizer(
            hparams.learning_rate,
            steps_per_epoch * epochs,
            hparams.ema,
            warmup_steps=round(hparams.lr_warmup * steps_per_epoch),
        ),
        loss={"cls": class_loss(hparams.label_smoothing), "box": BOX_LOSSES[hparams.box_loss]},
        loss_weights={"cls": 1.0, "box": hparams.box_loss_weight},
        metrics={
            "cls": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            "box": [MeanIoU()],
        },
        jit_compile=jit_compile,
    )
    return model


def optimizer(
    learning_rate: float, total_steps: int = 0, ema: float = 0.0, warmup_steps: int = 0
) -> keras.optimizers.Optimizer:
    """Adam, with cosine decay to 5% over the whole run when its length is known, after
    `warmup_steps` of linear warm-up from 5% (a high rate is then safe in the first steps,
    where the batch-norm statistics and Adam's moment estimates are still settling); with `ema`,
    Adam also keeps a moving average of the weights at that momentum (fit validates and keeps
    the average: `petloc.training.fit`)."""
    if total_steps:
        warmup_steps = min(warmup_steps, total_steps - 1)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate * 0.05 if warmup_steps else learning_rate,
            total_steps - warmup_steps,
            alpha=0.05,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    return keras.optimizers.Adam(learning_rate, use_ema=ema > 0, ema_momentum=ema or 0.99)
