"""Tracking overhead: a trial run as `petloc train` runs it (an MLflow run on a local SQLite
store: per-epoch metrics, system metrics, quality and latency, curves, gallery, the model
logged) vs the same trial untracked (the same data, the same fit), at two sizes: the trial of
`make run` (experiments/quick.yaml: 1,500 synthetic pets, 6 epochs) and a tiny one (600
pets, 4 epochs), where the fixed cost shows most. Goal <= 1.03x wall time. The rows under
the `make run` trial say what each piece of the work costs by itself.

The ratio is the trial plus what tracking adds on the training thread, measured where it
happens: the work around the fit (run set-up and inputs; after training: quality, latency,
curves, gallery, model logging) and the time inside the per-epoch logger's hooks. The trial's
own time is its fastest fit over all rounds of both sides (the same fit), plus the data
cache read both sides make.
A plain difference of two trials cannot judge 3% on these machines: the same untracked
trial, the same CPU seconds, took 7.7 s in one round and 12.4 s in the next (stop 26, no
steal time shown), and one run gave a tracked trial 0.74x of an untracked one. That
side-by-side ratio (best of the rounds, the sides taking turns) is still reported, as a
check, with the untracked rounds' spread.

    python benchmarks/tracking_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path
from typing import ClassVar

import common  # noqa: F401  (quiet TensorFlow before it loads)
from common import scratch, table, verdict, write_block

from petloc.config import parse_experiment
from petloc.data.synth import generate
from petloc.tracking import log, training_runs
from petloc.tracking import runs as run_store
from petloc.tracking.log import EpochLogger
from petloc.tracking.training_runs import train_run
from petloc.training.dataset import prepare_data
from petloc.training.fit import fit_localiser

QUICK_TRIAL = {
    "backbone": "simple",
    "width": 0.5,
    "aug_strength": 0.4,
    "head_units": 128,
    "dropout": 0.0,
    "box_loss": "smooth_l1",
    "box_loss_weight": 5.0,
    "learning_rate": 2e-3,
    "batch_size": 16,
}


SIZE = 48  # px, as experiments/quick.yaml trains


def experiment(data: Path, epochs: int):
    return parse_experiment(
        {
            "name": "bench",
            "data": {"path": str(data), "image_size": SIZE, "val_split": 0.15},
            "train": {"epochs": epochs},
            "space": QUICK_TRIAL,
            "tracking": {"experiment": "bench"},
        }
    )


def untracked(exp) -> tuple[float, float]:
    """Wall time of the untracked trial, and of its work around the fit (the data cache read)."""
    start = time.perf_counter()
    hp = exp.fixed_hyperparameters()
    data = prepare_data(exp.data, hp["image_size"], say=lambda _: None)
    fitting = time.perf_counter()
    fit_localiser(
        hp,
        data.train,
        data.val,
        exp.train.epochs,
        seed=exp.train.seed,
        precision=exp.train.precision,
    )
    end = time.perf_counter()
    return end - start, fitting - start


def tracked(exp) -> tuple[float, float]:
    """Wall time of the whole run, and of its work around the fit (set-up, then quality, latency, figures, model)."""
    start = time.perf_counter()
    run = train_run(exp, say=lambda _: None)
    total = time.perf_counter() - start
    return total, total - run.summary["train_seconds"]


class HookClock:
    """Time spent inside `log.EpochLogger`'s Keras hooks (the per-epoch curves logged, the
    epoch timed): tracking's cost inside the fit."""

    HOOKS = (
        "on_epoch_begin",
        "on_epoch_end",
        "on_train_batch_end",
        "on_test_begin",
        "on_test_batch_end",
    )

    def __init__(self):
        self.seconds = 0.0
        for name in self.HOOKS:
            setattr(EpochLogger, name, self.timed(getattr(EpochLogger, name)))

    def timed(self, hook):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return run


class PieceClock:
    """Time spent in each piece of the work around a tracked fit, as `training_runs` calls them."""

    PIECES: ClassVar[dict[str, list[tuple[object, str]]]] = {  # label -> (module, function name)
        "run set-up and inputs (params, tags, datasets, experiment.json)": [
            (log, "log_run_inputs"),
            (log, "log_experiment"),
            (run_store, "create_run"),
        ],
        "quality pass on the validation photos (mIoU, accuracy, IoU >= 0.5; its forward pass traced)": [
            (training_runs, "quality")
        ],
        "latency at batch 1 and 32": [(training_runs, "latencies")],
        "curves figure": [(training_runs, "plot_curves")],
        "gallery of predictions": [(training_runs, "gallery_image"), (training_runs, "save_rgb")],
        "model logged (saved, copied into the store, registered as a logged model)": [
            (log, "log_model")
        ],
        "files logged (curves, gallery)": [(log, "log_files")],
    }

    def __init__(self):
        self.seconds = {label: 0.0 for label in self.PIECES}
        for label, functions in self.PIECES.items():
            for module, name in functions:
                setattr(module, name, self.timed(label, getattr(module, name)))

    def timed(self, label, function):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        return run


def fresh_project(name: str) -> Path:
    """A new scratch folder as the working directory: a project with its own mlruns/ store
    and data cache, on the local store whatever MLFLOW_TRACKING_URI says."""
    project = scratch(name)
    os.chdir(project)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return project


SIZES = {"quick": (1500, 6), "tiny": (600, 4)}  # pets, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    project = fresh_project("tracking")
    rows, exps = [], {}
    for name, (count, epochs) in SIZES.items():
        generate(project / name, count=count, seed=0)
        exps[name] = experiment(project / name, epochs)
        # each data cache made before timing
        prepare_data(exps[name].data, SIZE, say=lambda _: None)
    # warm up once, on the tiny trial: the store made, first imports and traces
    with contextlib.redirect_stdout(io.StringIO()):
        untracked(exps["tiny"]), tracked(exps["tiny"])
    hooks, pieces = HookClock(), PieceClock()
    for name, (count, epochs) in SIZES.items():
        exp = exps[name]
        plain, runs, in_hooks, in_pieces = [], [], [], []
        with contextlib.redirect_stdout(io.StringIO()):
            for _ in range(args.rounds):
                plain.append(untracked(exp))
                hooks.seconds = 0.0
                pieces.seconds = dict.fromkeys(pieces.seconds, 0.0)
                runs.append(tracked(exp))
                in_hooks.append(hooks.seconds)
                in_pieces.append(pieces.seconds)
        # Both sides run the same fit and read the same data cache: the trial's own time is its
        # fastest fit of all 2 x rounds (the tracked ones without their hooks) and the cache read;
        # tracking adds the rest of the work around the fit, and the time inside the hooks.
        fits = [t - a for t, a in plain] + [
            t - a - h for (t, a), h in zip(runs, in_hooks, strict=True)
        ]
        base = min(fits) + min(a for _, a in plain)
        around, logging = min(a for _, a in runs) - min(a for _, a in plain), min(in_hooks)
        added = around + logging
        side_by_side = min(t for t, _ in runs) / min(t for t, _ in plain)
        what = "the `make run` trial (quick.yaml: " if name == "quick" else "a tiny trial ("
        # What each piece of the work around the fit costs by itself (fastest round of each), on the `make run` trial.
        each = (
            [
                [
                    f"of that work: {label} / untracked trial",
                    f"{min(r[label] for r in in_pieces):.3f} / {base:.1f} s",
                    f"{min(r[label] for r in in_pieces) / base:.4f}x",
                    "reported",
                ]
                for label in PieceClock.PIECES
            ]
            if name == "quick"
            else []
        )
        rows += [
            [
                f"tracked trial / the same trial untracked: {what}{count} synthetic pets, {SIZE} px, "
                f"simple, {epochs} epochs), as the trial plus what tracking adds on the training "
                "thread",
                f"{base + added:.1f} / {base:.1f} s",
                f"**{(base + added) / base:.3f}x**",
                verdict((base + added) / base, 1.03),
            ],
            [
                "of which: the work around the fit beyond the untracked trial's (run set-up and "
                "inputs; after training: quality, latency, curves, gallery, model logging) / "
                "untracked trial",
                f"{around:.2f} / {base:.1f} s",
                f"{around / base:.3f}x",
                "reported",
            ],
            *each,
            [
                f"of which: inside the per-epoch logger's hooks ({epochs} epochs) / untracked trial",
                f"{logging:.3f} / {base:.1f} s",
                f"{logging / base:.4f}x",
                "reported",
            ],
            [
                f"check: the two trials side by side, best of {args.rounds} rounds each (untracked rounds "
                f"{min(t for t, _ in plain):.1f}-{max(t for t, _ in plain):.1f} s)",
                f"{min(t for t, _ in runs):.1f} / {min(t for t, _ in plain):.1f} s",
                f"{side_by_side:.2f}x",
                "check",
            ],
        ]
        print(*rows, sep="\n", flush=True)
    write_block(
        "tracking",
        "Tracking overhead: `python benchmarks/tracking_speed.py`",
        table(["what (A / B)", "A / B", "ratio", "goal"], rows),
    )


if __name__ == "__main__":
    main()
