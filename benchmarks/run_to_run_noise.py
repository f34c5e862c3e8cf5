"""How far apart are two runs of one setting? experiments/cats_dogs.yaml's fixed values trained
several times on the same photos and the same split, only the training seed changed (weights'
initialisation, augmentation, batch order), and scored on the same validation photos: the
spread of val mIoU and accuracy is the noise a leaderboard difference must clear to mean
anything (`registry.min_improvement`).

    python benchmarks/run_to_run_noise.py [--seeds 3] [--epochs 5] [--image-size 64]
        [--data ../shared/datasets/cats_dogs/train]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import common  # noqa: F401  (quiet TensorFlow before it loads)
from common import table, write_block

from petloc.config import load_experiment
from petloc.data.pipeline import load_arrays, split_train_val
from petloc.model import TTA
from petloc.training.evaluate import quality
from petloc.training.fit import fit_localiser

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/datasets/cats_dogs/train"
SHOWN = ("backbone", "head_units", "aug_strength", "learning_rate", "batch_size", "tta")


def spread(values: list[float]) -> str:
    return f"{max(values) - min(values):.4f} / {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--data", default=str(SHARED))
    args = parser.parse_args()
    exp = load_experiment(
        REPO / "experiments/cats_dogs.yaml",
        [f"data.path={args.data}", f"data.image_size={args.image_size}"],
    )
    values = {**exp.fixed_hyperparameters(), "image_size": args.image_size}
    photos = load_arrays(args.data, args.image_size)
    train, val = split_train_val(photos, exp.data.val_split, exp.data.seed)
    print(f"{len(train)} training and {len(val)} validation photos at {args.image_size} px")
    rows, mious, accuracies = [], [], []
    for seed in range(args.seeds):
        start = time.monotonic()
        model, _ = fit_localiser(
            values, train, val, args.epochs, seed=seed, precision=exp.train.precision
        )
        figures, _ = quality(TTA[values.get("tta", "none")](model), val)
        took = time.monotonic() - start
        mious.append(figures["miou"])
        accuracies.append(figures["accuracy"])
        rows.append(
            [str(seed), f"{figures['miou']:.4f}", f"{figures['accuracy']:.4f}", f"{took:.0f} s"]
        )
        print(f"seed {seed}: val mIoU {figures['miou']:.4f}, accuracy {figures['accuracy']:.4f}")
    rows.append(["**max - min / std**", f"**{spread(mious)}**", spread(accuracies), ""])
    body = table(["training seed", "val mIoU", "val accuracy", "took"], rows) + (
        f"\n\n{len(train)} training and {len(val)} validation photos of "
        f"`{Path(args.data).parent.name}/{Path(args.data).name}` at {args.image_size} px, "
        f"{args.epochs} epochs each, the split of experiments/cats_dogs.yaml (data.seed "
        f"{exp.data.seed}) for every run; only the training seed changes. Hyperparameters: "
        f"experiments/cats_dogs.yaml's fixed values ({', '.join(f'{k}={values[k]}' for k in SHOWN)})."
    )
    write_block(
        f"run_to_run_noise_{args.image_size}px_{args.epochs}ep",
        f"Run-to-run noise: one setting, {args.seeds} training seeds "
        f"({args.image_size} px, {args.epochs} epochs)",
        body,
    )


if __name__ == "__main__":
    main()
