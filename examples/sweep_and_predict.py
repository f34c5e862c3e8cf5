"""Sweep, read the leaderboard, predict with the champion: petloc from Python.

Run it from any folder; the runs go to that folder's mlruns/ and the synthetic photos to
its data/synthetic/:

    python examples/sweep_and_predict.py

It shrinks experiments/quick.yaml to a tiny sweep (2 trials of 1 epoch on 120 synthetic
photos at 32 px, under a minute on a laptop CPU): the figures are poor, the flow is the real one.
"""

from pathlib import Path

import numpy as np
from PIL import Image

import petloc

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "quick.yaml"
TINY = {
    "data": {"synthetic_count": 120, "image_size": 32},
    "train": {"epochs": 1},
    "tuner.max_trials": 2,
}


def main() -> None:
    # Progress lines as it goes (say=None: none); fresh=True: forget an earlier run's trials.
    result = petloc.sweep(EXPERIMENT, TINY, fresh=True)

    print("\nleaderboard (a pandas DataFrame, as the parent run's leaderboard.csv):")
    print(
        result.leaderboard[["trial", "backbone", "best_val_miou", "val_accuracy", "latency_ms_b1"]]
    )
    print(f"parent run: {result.parent_run_id}")
    print(f"champion: {result.champion}")
    if result.champion is None:  # e.g. no trial fitted registry.max_latency_ms
        raise SystemExit(f"nothing to predict with: {result.registry}")

    model = petloc.load_model(result.champion)
    photos = sorted(Path("data/synthetic").glob("*.jpg"))
    photos = [photos[0], photos[-1]]  # one of each end: the generator names cats, then dogs
    images = [np.asarray(Image.open(photo).convert("RGB")) for photo in photos]
    print("\npredictions (box in the photo's pixels):")
    for photo, answer in zip(photos, model.predict(images), strict=True):
        box = ", ".join(f"{x:.0f}" for x in answer.box)
        print(f"{photo.name}: {answer.label} {answer.score:.2f} box [{box}]")


if __name__ == "__main__":
    main()
