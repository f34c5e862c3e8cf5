"""Dilated convolutions on small maps, measured side by side in one run: Keras's Conv2D
against petloc's TapsConv2D's matrix product over the nine shifted copies of the map,
for the dilated layers of `simple_context` (128 channels, rates 2 and 4) at the map sizes of
48-128 px inputs, and `simple_context`'s whole training step as petloc builds it against
the same network with Keras's Conv2D in every place.

    python benchmarks/dilated_conv_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (quiet TensorFlow before it loads)
import keras
import numpy as np
import tensorflow as tf
from common import alternate, table, write_block

from petloc.model import Hyperparameters, backbones, build_model, compile_model
from petloc.model.backbones import TapsConv2D, taps_pay

BATCH, CHANNELS, STEPS = 16, 128, 10


def layer_steps(conv_class, side: int, rate: int):
    """A function running STEPS forward and backward passes of one dilated layer."""
    layer = conv_class(CHANNELS, 3, dilation_rate=rate, padding="same", use_bias=False)
    layer.taps = True  # TapsConv2D's own computation, whatever this CPU would run
    x = tf.random.normal([BATCH, side, side, CHANNELS])
    layer.build(x.shape)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, [x, layer.kernel])

    step(x)
    return lambda: [step(x) for _ in range(STEPS)]


def model_steps(size: int, taps: bool):
    """A function running STEPS training steps of simple_context at `size` px."""
    hp = Hyperparameters(
        backbone="simple_context",
        width=0.5,
        head_units=128,
        dropout=0.0,
        box_loss="smooth_l1",
        box_loss_weight=5.0,
    )
    before = backbones.TapsConv2D, backbones.taps_pay
    backbones.TapsConv2D, backbones.taps_pay = (
        (TapsConv2D, lambda: True) if taps else (keras.layers.Conv2D, before[1])
    )
    try:
        model = compile_model(build_model(hp, size), hp)
    finally:
        backbones.TapsConv2D, backbones.taps_pay = before
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, size, size, 3)).astype(np.float32)
    y = {
        "cls": rng.integers(0, 2, BATCH),
        "box": np.tile([[0.2, 0.2, 0.6, 0.7]], (BATCH, 1)).astype(np.float32),
    }
    model.train_on_batch(x, y)
    return lambda: [model.train_on_batch(x, y) for _ in range(STEPS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for size in (48, 64, 96, 128):
        side = size // 8  # simple_context's output stride
        for rate in (2, 4):
            best = alternate(
                {
                    "keras": layer_steps(keras.layers.Conv2D, side, rate),
                    "taps": layer_steps(TapsConv2D, side, rate),
                },
                args.rounds,
            )
            picked = "the product" if side < 4 * rate and taps_pay() else "Conv2D's own"
            rows.append(
                [
                    f"one dilated layer, rate {rate}, {side}x{side} map ({size} px input)",
                    f"{best['taps'] / STEPS * 1000:.1f} / {best['keras'] / STEPS * 1000:.1f} ms",
                    f"**{best['taps'] / best['keras']:.2f}x**",
                    picked,
                ]
            )
    for size in (48, 64, 128):
        best = alternate(
            {"keras": model_steps(size, taps=False), "petloc": model_steps(size, taps=True)},
            args.rounds,
        )
        control = ": the same network both ways, a control" if size == 128 else ""
        rows.append(
            [
                "simple_context training step with TapsConv2D's product / Keras's Conv2D "
                f"everywhere ({size} px{control})",
                f"{best['petloc'] / STEPS * 1000:.1f} / {best['keras'] / STEPS * 1000:.1f} ms",
                f"**{best['petloc'] / best['keras']:.2f}x**",
                "the product" if taps_pay() else "Conv2D's own",
            ]
        )
    body = table(["what (A / B)", "A / B", "ratio", "petloc runs here"], rows) + (
        f"\n\nForward and backward passes, batch {BATCH}, {CHANNELS} channels (simple_context at "
        f"width 0.5), best of {args.rounds} alternating rounds of {STEPS} steps. petloc builds "
        "TapsConv2D where the map is under 4 x rate wide; it computes the matrix product where the "
        f"CPU lacks AVX-512 (`taps_pay`: {taps_pay()} here), else Conv2D's own."
    )
    write_block(
        "dilated_conv",
        "Dilated convolutions on small maps: `python benchmarks/dilated_conv_speed.py`",
        body,
    )


if __name__ == "__main__":
    main()
