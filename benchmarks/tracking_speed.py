"""Tracking overhead: one small trial run as `petloc train` runs it (an MLflow run on a local
SQLite store: per-epoch metrics, system metrics, quality and latency, curves, gallery, the
model logged) vs the same trial untracked (the same data, the same fit), alternating, in one
run (goal <= 1.03x wall time). The after-training work is reported by itself.

    python benchmarks/tracking_speed.py [--epochs 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

import common  # noqa: F401  (quiet TensorFlow before it loads)
from common import scratch, table, verdict, write_block

from petloc.config import parse_experiment
from petloc.data.synth import generate
from petloc.training.dataset import prepare_data
from petloc.training.fit import fit_localiser
from petloc.tracking.training_runs import train_run

QUICK_TRIAL = {"backbone": "simple", "width": 0.5, "aug_strength": 0.4, "head_units": 128, "dropout": 0.0,
               "box_loss": "smooth_l1", "box_loss_weight": 5.0, "learning_rate": 2e-3, "batch_size": 16}


def experiment(data: Path, epochs: int):
    return parse_experiment({"name": "bench", "data": {"path": str(data), "image_size": 64, "val_split": 0.15},
                             "train": {"epochs": epochs}, "space": QUICK_TRIAL, "tracking": {"experiment": "bench"}})


def untracked(exp) -> float:
    start = time.perf_counter()
    hp = exp.fixed_hyperparameters()
    data = prepare_data(exp.data, hp["image_size"], log=lambda _: None)
    fit_localiser(hp, data.train, data.val, exp.train.epochs, seed=exp.train.seed, precision=exp.train.precision)
    return time.perf_counter() - start


def tracked(exp) -> tuple[float, float]:
    """Wall time of the whole run, and of its work around the fit (set-up, then quality, latency, figures, model)."""
    start = time.perf_counter()
    run = train_run(exp, say=lambda _: None)
    total = time.perf_counter() - start
    return total, total - run.summary["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--count", type=int, default=600)
    args = parser.parse_args()
    project = scratch("tracking")
    os.chdir(project)  # a fresh project: its own mlruns/ store and data cache
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    generate(project / "pets", count=args.count, seed=0)
    exp = experiment(project / "pets", args.epochs)
    with contextlib.redirect_stdout(io.StringIO()):
        untracked(exp), tracked(exp)  # warm up: first store, first cache, first traces
        plain, runs = [], []
        for _ in range(args.rounds):
            plain.append(untracked(exp))
            runs.append(tracked(exp))
    best_plain, (best_run, after) = min(plain), min(runs)
    ratio = best_run / best_plain
    rows = [[f"`petloc train`-style tracked trial / the same trial untracked ({args.count} synthetic pets, 64 px, simple, {args.epochs} epochs)",
             f"{best_run:.1f} / {best_plain:.1f} s", f"**{ratio:.2f}x**", verdict(ratio, 1.03)],
            ["the tracked trial's work around its fit (run set-up and inputs; after training: quality, latency, curves, gallery, model logging) / untracked trial",
             f"{after:.1f} / {best_plain:.1f} s", f"{after / best_plain:.2f}x", "reported"]]
    write_block("tracking", "Tracking overhead: `python benchmarks/tracking_speed.py`", table(["what (A / B)", "A / B", "ratio", "goal"], rows))


if __name__ == "__main__":
    main()
