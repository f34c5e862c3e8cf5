"""Does breed supervision help the cat/dog answer? The breed model (37 classes,
experiments/breeds.yaml) and a species model (2 classes) with the same hyperparameters, trained
on the same photos for the same epochs, scored on the same validation photos: breed top-1,
top-5, macro accuracy and mIoU, and species accuracy (the breed model's derived from the breed
it predicts). Each model's last-epoch training accuracy shows how far its class head overfits.

    python benchmarks/breed_supervision.py [--epochs 15] [--data ../shared/datasets/cats_dogs/train]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import common  # noqa: F401  (quiet TensorFlow before it loads)
import numpy as np
from common import table, write_block

from petloc.config import load_experiment
from petloc.data.classes import SPECIES
from petloc.data.pipeline import ImageSet, load_arrays, split_train_val
from petloc.training.evaluate import quality
from petloc.training.fit import fit_localiser

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("backbone", "head_units", "aug_strength", "learning_rate", "image_size")
SHARED = REPO.parent / "shared/datasets/cats_dogs/train"


def as_species(arrays: ImageSet) -> ImageSet:
    """The same photos labelled cat / dog: each breed's species."""
    index = np.array(arrays.classes.species_index(), np.int32)
    assert arrays.classes.species_names == SPECIES.names
    return replace(arrays, labels=index[arrays.labels], classes=SPECIES)


def trained(values: dict, train: ImageSet, val: ImageSet, epochs: int, precision: str):
    start = time.monotonic()
    model, history = fit_localiser(values, train, val, epochs, seed=0, precision=precision)
    figures, _ = quality(model, val)
    last_train_accuracy = history.history.get("accuracy", [float("nan")])[-1]
    return figures, float(last_train_accuracy), time.monotonic() - start


def cell(figures: dict, key: str) -> str:
    return f"{figures[key]:.3f}" if key in figures else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--data", default=str(SHARED))
    args = parser.parse_args()
    exp = load_experiment(REPO / "experiments/breeds.yaml", [f"data.path={args.data}"])
    values = exp.fixed_hyperparameters()
    breeds = load_arrays(args.data, values["image_size"], labels="breed")
    train, val = split_train_val(breeds, exp.data.val_split, exp.data.seed)
    print(f"{len(train)} training and {len(val)} validation photos, {len(breeds.classes)} breeds")
    breed_figures, breed_train_acc, breed_s = trained(
        values, train, val, args.epochs, exp.train.precision
    )
    species_figures, species_train_acc, species_s = trained(
        values, as_species(train), as_species(val), args.epochs, exp.train.precision
    )
    rows = [
        [
            f"breed model ({len(breeds.classes)} classes)",
            cell(breed_figures, "accuracy"),
            cell(breed_figures, "top5_accuracy"),
            cell(breed_figures, "macro_accuracy"),
            f"**{breed_figures['species_accuracy']:.3f}**",
            f"{breed_train_acc:.3f}",
            cell(breed_figures, "miou"),
            f"{breed_s / 60:.0f} min",
        ],
        [
            "species model (cat, dog)",
            "-",
            "-",
            "-",
            f"**{species_figures['accuracy']:.3f}**",
            f"{species_train_acc:.3f}",
            cell(species_figures, "miou"),
            f"{species_s / 60:.0f} min",
        ],
    ]
    body = table(
        [
            f"model ({args.epochs} epochs each, same hyperparameters and photos)",
            "breed top-1",
            "breed top-5",
            "breed macro",
            "species accuracy (val)",
            "train accuracy (last epoch)",
            "val mIoU",
            "took",
        ],
        rows,
    ) + (
        f"\n\n{len(train)} training and {len(val)} validation photos of "
        f"`{Path(args.data).parent.name}/{Path(args.data).name}` (the split of "
        "experiments/breeds.yaml, stratified by breed; the species model is scored on the same "
        "photos). Hyperparameters: experiments/breeds.yaml's fixed values "
        f"({', '.join(f'{k}={values[k]}' for k in SHOWN)})."
    )
    write_block(
        f"breed_supervision_{args.epochs}",
        f"Breeds, and does breed supervision help species? ({args.epochs} epochs)",
        body,
    )


if __name__ == "__main__":
    main()
