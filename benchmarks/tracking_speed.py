"""Tracking overhead: a trial run as `petloc train` runs it (an MLflow run on a local SQLite
store: per-epoch metrics, system metrics, quality and latency, curves, gallery, the model
logged) vs the same trial untracked (the same data, the same fit), alternating, in one run
(goal <= 1.03x wall time), at two sizes: the trial of `make run` (experiments/quick.yaml:
1,500 synthetic pets, 6 epochs) and a tiny one (600 pets, 4 epochs), where the fixed cost
shows most. The work around the fit is reported by itself.

    python benchmarks/tracking_speed.py [--rounds 2]
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


SIZES = {"quick": (1500, 6), "tiny": (600, 4)}  # pets, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    project = scratch("tracking")
    os.chdir(project)  # a fresh project: its own mlruns/ store and data cache
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    rows, exps = [], {}
    for name, (count, epochs) in SIZES.items():
        generate(project / name, count=count, seed=0)
        exps[name] = experiment(project / name, epochs)
        prepare_data(exps[name].data, 64, log=lambda _: None)  # each data cache made before timing
    with contextlib.redirect_stdout(io.StringIO()):  # warm up once, on the tiny trial: the store made, first imports and traces
        untracked(exps["tiny"]), tracked(exps["tiny"])
    for name, (count, epochs) in SIZES.items():
        exp = exps[name]
        with contextlib.redirect_stdout(io.StringIO()):
            plain, runs = [], []
            for _ in range(args.rounds):
                plain.append(untracked(exp))
                runs.append(tracked(exp))
        best_plain, (best_run, around) = min(plain), min(runs)
        ratio = best_run / best_plain
        what = "the `make run` trial (quick.yaml: " if name == "quick" else "a tiny trial ("
        rows += [[f"`petloc train`-style tracked trial / the same trial untracked: {what}{count} synthetic pets, 64 px, simple, {epochs} epochs)",
                  f"{best_run:.1f} / {best_plain:.1f} s", f"**{ratio:.2f}x**", verdict(ratio, 1.03)],
                 ["its work around the fit (run set-up and inputs; after training: quality, latency, curves, gallery, model logging) / untracked trial",
                  f"{around:.1f} / {best_plain:.1f} s", f"{around / best_plain:.2f}x", "reported"]]
        print(rows[-2], flush=True)
    write_block("tracking", "Tracking overhead: `python benchmarks/tracking_speed.py`", table(["what (A / B)", "A / B", "ratio", "goal"], rows))


if __name__ == "__main__":
    main()
