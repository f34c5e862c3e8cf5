"""Small shared fixtures: a tiny synthetic dataset and a tiny experiment file."""

from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from petloc.data.synth import generate

TINY_SPACE = {
    "backbone": "simple",
    "width": 0.25,
    "head_units": 16,
    "aug_strength": 0.2,
    "learning_rate": 0.003,
    "batch_size": 16,
}


def tiny_dataset(folder: Path, count: int = 60) -> Path:
    return generate(folder, count=count, seed=1, size=64)


def tiny_experiment(folder: Path, data: Path, **sections) -> Path:
    body = {
        "name": "tiny",
        "data": {"path": str(data), "image_size": 32, "val_split": 0.25, "seed": 0},
        "train": {"epochs": 1},
        "space": dict(TINY_SPACE),
        "tuner": {"kind": "random", "max_trials": 2, "seed": 0},
        "tracking": {"experiment": "tiny", "gallery_images": 4},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))  # the file keeps the order written here
    return path


@contextmanager
def in_project(root: Path):
    """Run inside `root` as a fresh project: its own mlruns/ store, no MLFLOW_TRACKING_URI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield
