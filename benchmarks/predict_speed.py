"""Prediction speed, each figure a ratio measured side by side in one run:
- Predictor.predict at batch 1 vs the same model's raw compiled forward pass (goal <= 1.2x),
  with the old path (`model.predict` per call) beside it;
- predict_files on a folder of 400 JPEGs (decode + batch + forward) vs the original
  notebooks' per-image `model.predict` loop (goal >= 10x faster);
- peak memory of predict_files over 10,000 images vs over 400 (goal: flat);
- the champion's architecture vs a VGG16 localiser at 224 px, both with random weights
  (goal <= 0.1x latency).

    python benchmarks/predict_speed.py [--files 400] [--many 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import common  # noqa: F401  (quiet TensorFlow before it loads)
import keras
import numpy as np
import psutil
import tensorflow as tf
from common import alternate, median_ms, scratch, table, verdict, write_block
from photos import photo_files

from petloc.data.images import read_image
from petloc.model import Hyperparameters, build_model
from petloc.training.predict import Predictor, predict_files

# The real-photo champion's architecture (experiments/cats_dogs.yaml), random weights: the
# champion itself is not in this machine's store.
CHAMPION = Hyperparameters(
    backbone="simple_context",
    width=0.5,
    head_units=128,
    head_depth=1,
    dropout=0.0,
    box_head="centre",
    second_stage="head_crop",
    tta="flip",
    box_loss="l1_giou",
)
CHAMPION_SIZE = 128


def champion() -> keras.Model:
    return build_model(CHAMPION, CHAMPION_SIZE)


def vgg16_localiser(size: int = 224, head_units: int = 128) -> keras.Model:
    """The original project's network: VGG16 (random weights) with the same two heads."""
    inputs = keras.Input((size, size, 3))
    features = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    hidden = keras.layers.Dense(head_units, activation="relu")(pooled)
    return keras.Model(
        inputs,
        {
            "cls": keras.layers.Dense(2, activation="softmax", name="cls")(hidden),
            "box": keras.layers.Dense(4, activation="sigmoid", name="box")(hidden),
        },
    )


def compiled_forward_ms(model: keras.Model, size: int, batch: int = 1, repeats: int = 30) -> float:
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.random.uniform((batch, size, size, 3), 0, 255)
    for _ in range(3):
        forward(x)
    return median_ms(lambda: forward(x)["box"].numpy(), repeats)


def batch1(model: keras.Model) -> list[list]:
    predictor = Predictor(model)
    image = np.random.default_rng(0).integers(
        0, 256, (CHAMPION_SIZE, CHAMPION_SIZE, 3), dtype=np.uint8
    )
    x = image[None].astype(np.float32)
    forward = tf.function(lambda t: model(t, training=False))
    for _ in range(3):
        predictor.predict([image]), forward(x), model.predict(x, verbose=0)
    ms = {name: [] for name in ("raw", "predictor", "model.predict")}
    for _ in range(30):  # interleaved, one call each in turn
        ms["raw"].append(median_ms(lambda: forward(tf.constant(x))["box"].numpy(), 1))
        ms["predictor"].append(median_ms(lambda: predictor.predict([image]), 1))
        ms["model.predict"].append(median_ms(lambda: model.predict(x, verbose=0), 1))
    raw, new, old = (float(np.median(ms[k])) for k in ("raw", "predictor", "model.predict"))
    return [
        [
            "`Predictor.predict([image])` / raw compiled forward, batch 1",
            f"{new:.2f} / {raw:.2f} ms",
            f"**{new / raw:.2f}x**",
            verdict(new / raw, 1.2),
        ],
        [
            "before the fix: `model.predict` per call / raw forward",
            f"{old:.2f} / {raw:.2f} ms",
            f"{old / raw:.2f}x",
            verdict(old / raw, 1.2),
        ],
    ]


def naive_loop(model: keras.Model, files: list[str]) -> None:
    """The original notebooks: read, resize and `model.predict` one image at a time."""
    size = int(model.input_shape[1])
    for path in files:
        pixels = read_image(path).pixels
        x = tf.image.resize(pixels[None], (size, size)).numpy()
        model.predict(x, verbose=0)


def folder(model: keras.Model, files: list[str], what: str, rounds: int) -> list[list]:
    predictor = Predictor(model)
    best = alternate(
        {
            "naive": lambda: naive_loop(model, files),
            "petloc": lambda: list(predict_files(predictor, files)),
        },
        rounds,
    )
    speedup = best["naive"] / best["petloc"]
    process = command_seconds(model, files)
    return [
        [
            f"per-image `model.predict` loop / `predict_files` ({what}: decode + batch + forward)",
            f"{best['naive']:.1f} / {best['petloc']:.1f} s",
            f"**{speedup:.1f}x faster**",
            verdict(speedup, 10, at_most=False),
        ],
        [
            "per-image `model.predict` loop (model loaded) / `petloc predict model.keras FILES "
            "--json` as a process (start-up and model load included)",
            f"{best['naive']:.1f} / {process:.1f} s",
            f"{best['naive'] / process:.1f}x faster",
            "reported",
        ],
    ]


def command_seconds(model: keras.Model, files: list[str]) -> float:
    """Wall time of the `petloc predict` command on `files`, as a user runs it."""
    folder = scratch("model")
    model.save(folder / "model.keras")
    start = time.perf_counter()
    subprocess.run(
        [
            str(Path(sys.executable).with_name("petloc")),
            "predict",
            str(folder / "model.keras"),
            *files,
            "--json",
        ],
        capture_output=True,
        check=False,
    )
    return time.perf_counter() - start


def peak_rss_mb(run) -> float:
    """Peak resident memory while `run()` runs, sampled every 20 ms, in MB."""
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return peak[0] / 2**20


def memory(files: list[str], many: int) -> list[list]:
    """Streaming does not depend on the model: a small one keeps this check short."""
    predictor = Predictor(
        build_model(Hyperparameters(backbone="simple", width=0.25, head_units=16), 64)
    )
    # the same files over again: the stream cannot tell
    repeated = [files[i % len(files)] for i in range(many)]
    start = time.perf_counter()
    small = peak_rss_mb(lambda: sum(1 for _ in predict_files(predictor, files)))
    large = peak_rss_mb(lambda: sum(1 for _ in predict_files(predictor, repeated)))
    seconds = time.perf_counter() - start
    growth = large - small
    return [
        [
            f"peak memory, `predict_files` on {many:,} / on {len(files)} images",
            f"{large:.0f} / {small:.0f} MB",
            f"{large / small:.2f}x (+{growth:.0f} MB)",
            f"{'flat' if large / small <= 1.1 else 'grows'} (small model, {seconds:.0f} s)",
        ]
    ]


def champion_vs_vgg16() -> list[list]:
    ours, vgg = champion(), vgg16_localiser()
    ms = {"ours": [], "vgg": []}
    for _ in range(3):
        ms["ours"].append(compiled_forward_ms(ours, CHAMPION_SIZE, repeats=10))
        ms["vgg"].append(compiled_forward_ms(vgg, 224, repeats=5))
    a, b = min(ms["ours"]), min(ms["vgg"])
    return [
        [
            f"champion architecture ({CHAMPION_SIZE} px, flip TTA, head crop) / "
            "VGG16 localiser (224 px), batch 1, random weights",
            f"{a:.2f} / {b:.1f} ms",
            f"**{a / b:.3f}x**",
            verdict(a / b, 0.1) + "; champion val mIoU 0.726 (RESULTS.md above)",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--many", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = champion()
    files, what = photo_files(args.files)
    rows = (
        batch1(model)
        + folder(model, files, what, args.rounds)
        + memory(files, args.many)
        + champion_vs_vgg16()
    )
    body = table(["what (A / B)", "A / B", "ratio", "goal"], rows) + (
        "\n\nModel: the real-photo champion's architecture (`experiments/cats_dogs.yaml`: "
        "simple_context, centre box head, head crop, flip TTA, 128 px) with random weights; "
        "the champion itself is not in this machine's store. "
        "Times are medians of interleaved calls (batch 1) or the best of alternating rounds (folders)."
    )
    write_block("predict", "Prediction: `python benchmarks/predict_speed.py`", body)


if __name__ == "__main__":
    main()
