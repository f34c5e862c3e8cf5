"""Input pipeline, measured side by side in one run:
- a training epoch fed by petloc's pipeline (cached decoded arrays, box-aware augmentation at
  the experiment's strength, shuffling, batching) vs the same model fed the same epoch's
  batches already in memory: the pipeline's share of that throughput (goal >= 0.95);
- the first-run cost of preparing a dataset (decode + resize + cache) per 1,000 photos, and
  a later run's (cache hit).

    python benchmarks/pipeline_speed.py [--photos 1000] [--epoch-photos 400] [--rounds 3] [--before]

Epochs run as petloc's `fit` runs them (several a fit, one iterator); the sides take turns and
each side's fastest epoch counts; the median step of each side, and the median ratio of the
epochs paired by round, are reported beside it, as checks that read through this machine's
bursts of slowness.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common  # noqa: F401  (quiet TensorFlow before it loads)
import keras
import numpy as np
import tensorflow as tf
from common import scratch, table, verdict, write_block
from photos import photo_files

from petloc.data.pipeline import load_arrays, train_batches
from petloc.data.synth import generate
from petloc.model import Hyperparameters, build_model, compile_model
from petloc.training.fit import dtype_policy, endless, resolved_precision

EPOCHS_A_FIT = 2

# (what, hyperparameters, image size): the quick sweep's first trial and the real-photo file's.
SETUPS = [
    (
        "simple, 64 px, aug 0.4, batch 16 (quick.yaml's model; the file is at 48 px since stop 14)",
        Hyperparameters(
            backbone="simple",
            width=0.5,
            head_units=128,
            dropout=0.0,
            box_loss="smooth_l1",
            box_loss_weight=5.0,
            aug_strength=0.4,
            batch_size=16,
        ),
        64,
    ),
    (
        "cats_dogs.yaml: simple_context + head crop, 128 px, aug 0.4, batch 16",
        Hyperparameters(
            backbone="simple_context",
            width=0.5,
            head_units=128,
            dropout=0.0,
            box_head="centre",
            second_stage="head_crop",
            box_loss="l1_giou",
            box_loss_weight=5.0,
            aug_strength=0.4,
            batch_size=16,
        ),
        128,
    ),
]


def linked_dataset(files: list[str]) -> Path:
    """A folder of links to `files` and their annotations: a dataset of exactly these photos."""
    root = scratch("data")
    for f in map(Path, files):
        for part in (f, f.with_suffix(".txt")):
            if part.exists():
                (root / part.name).symlink_to(part)
    return root


def preparation(files: list[str], what: str) -> tuple[list[list], Path]:
    root, cache = linked_dataset(files), scratch("cache")
    start = time.perf_counter()
    arrays = load_arrays(root, 128, cache_dir=cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_arrays(root, 128, cache_dir=cache)
    again = time.perf_counter() - start
    per_1000 = 1000 / len(arrays)
    return [
        [
            f"preparing a dataset, first run / cached run, per 1,000 photos ({what}, 128 px)",
            f"{first * per_1000:.1f} / {again * per_1000:.2f} s",
            f"{first / again:.0f}x",
            "reported",
        ]
    ], root


class Timer(keras.callbacks.Callback):
    """Wall time of every epoch and every training step (the wait for its batch included);
    fit's own set-up and tear-down, which move by up to a second here, are left out."""

    def __init__(self):
        super().__init__()
        self.epochs: list[float] = []
        self.steps: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.perf_counter() - self.epoch_start)

    def on_train_batch_begin(self, batch, logs=None):
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(time.perf_counter() - self.step_start)


def epoch_ratio(
    what: str, hp: Hyperparameters, size: int, arrays, rounds: int, before: bool = False
) -> list[list]:
    """Epochs as petloc's `fit` runs them (the batches repeated, one iterator a fit), `epochs`
    a fit, the sides taking turns; `before` (--before): also the pipeline with an iterator an
    epoch, as until stop 15 (its figures are in RESULTS.md's stop-15 notes; `make bench` leaves it out)."""
    # the precision a run trains in here (train.precision: auto)
    precision = resolved_precision("auto", size)
    with dtype_policy(precision):
        model = compile_model(build_model(hp, size), hp)
    piped = train_batches(arrays, hp.batch_size, hp.aug_strength, seed=0)
    # one augmented epoch, held as arrays
    in_memory = [(x.numpy(), {k: v.numpy() for k, v in y.items()}) for x, y in piped]
    xs = np.concatenate([x for x, _ in in_memory])
    ys = {k: np.concatenate([y[k] for _, y in in_memory]) for k in ("cls", "box")}
    memory = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(hp.batch_size).cache()
    list(memory)  # filled once, before timing
    feeds = {"memory": endless(memory), "pipeline": endless(piped)}
    if before:
        feeds["an iterator an epoch"] = (piped, None)
    for ds, steps in feeds.values():
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)  # trace, fill
    timers = {name: Timer() for name in feeds}
    for _ in range(rounds):
        for name, (ds, steps) in feeds.items():
            model.fit(
                ds, epochs=EPOCHS_A_FIT, steps_per_epoch=steps, verbose=0, callbacks=[timers[name]]
            )
    epoch = {name: min(t.epochs) for name, t in timers.items()}
    step_ms = {name: 1000 * float(np.median(t.steps)) for name, t in timers.items()}
    # Each in-memory epoch beside the pipeline epoch of the same round (seconds apart): the
    # fastest epochs alone swung from 0.85 to 1.02 for the same code within an hour here.
    paired = {
        name: float(np.median(np.array(timers["memory"].epochs) / np.array(t.epochs)))
        for name, t in timers.items()
    }
    rows = []
    for name in feeds:
        if name == "memory":
            continue
        share = epoch["memory"] / epoch[name]
        label = "petloc pipeline" if name == "pipeline" else f"petloc pipeline, {name} (before)"
        rows += [
            [
                f"training epoch, in-memory batches / {label} ({what}, {precision}, {len(arrays)} images)",
                f"{epoch['memory']:.2f} / {epoch[name]:.2f} s",
                f"**{share:.3f}** of in-memory throughput",
                verdict(share, 0.95, at_most=False) if name == "pipeline" else "before",
            ],
            [
                f"median training step, in-memory / {label} ({rounds} x {EPOCHS_A_FIT} epochs each)",
                f"{step_ms['memory']:.1f} / {step_ms[name]:.1f} ms",
                f"{step_ms['memory'] / step_ms[name]:.3f}",
                "check",
            ],
            [
                f"median of the {rounds * EPOCHS_A_FIT} epoch pairs, each in-memory epoch / "
                f"the {label} epoch of its round",
                "",
                f"{paired[name]:.3f}",
                "check",
            ],
        ]
    return rows


def pipeline_cpu(what: str, hp: Hyperparameters, arrays, rounds: int) -> list[list]:
    """CPU time (every thread of the process) a training batch costs the pipeline alone, no
    model, once it runs (one iterator, as a fit keeps, past its first epoch): augmented at the
    experiment's strength / not augmented, the sides taking turns, each side's lowest of
    `rounds` stretches of 3 epochs. CPU time, unlike an epoch's wall time, hardly moves with
    this machine's bursts."""
    sides = {"augmented": hp.aug_strength, "not augmented": 0.0}
    running = {
        side: iter(train_batches(arrays, hp.batch_size, strength, seed=0).repeat())
        for side, strength in sides.items()
    }
    steps = -(-len(arrays) // hp.batch_size)
    for batches in running.values():
        for _ in range(steps):
            next(batches)
    best = {side: float("inf") for side in sides}
    for _ in range(rounds):
        for side, batches in running.items():
            start = time.process_time()
            for _ in range(3 * steps):
                next(batches)
            best[side] = min(best[side], 1000 * (time.process_time() - start) / (3 * steps))
    aug, plain = best["augmented"], best["not augmented"]
    return [
        [
            f"CPU time a training batch costs the pipeline alone, augmented / not augmented ({what})",
            f"{aug:.2f} / {plain:.2f} ms",
            f"{aug / plain:.1f}x",
            "reported",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument(
        "--epoch-photos",
        type=int,
        default=400,
        help="of those, how many the 128-px epoch trains on",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--before",
        action="store_true",
        help="also the pipeline before stop 15 (an iterator an epoch)",
    )
    args = parser.parse_args()
    files, what = photo_files(args.photos)
    rows, root = preparation(files, what)
    synth = scratch("synth")
    generate(synth, count=600, seed=0)
    data = {64: load_arrays(synth, 64, cache_dir=None), 128: load_arrays(root, 128, cache_dir=None)}
    data[128] = data[128].subset(np.arange(min(args.epoch_photos, len(data[128]))))
    for name, hp, size in SETUPS:
        rows += epoch_ratio(
            name, hp, size, data[size], args.rounds, before=args.before and size == 64
        )
        rows += pipeline_cpu(name, hp, data[size], args.rounds)
    body = table(["what (A / B)", "A / B", "ratio", "goal"], rows) + (
        "\n\nThe 64-px epoch runs on 600 synthetic pets, the 128-px one on "
        f"{len(data[128])} of the {what}. In-memory: the same epoch's augmented batches, "
        "computed beforehand and held as arrays, so the model waits for nothing."
    )
    write_block("pipeline", "Input pipeline: `python benchmarks/pipeline_speed.py`", body)


if __name__ == "__main__":
    main()
