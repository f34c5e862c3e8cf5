"""Search speed on the real photos: how soon a sweep's best val mIoU comes within 0.02 of
its final best, Hyperband against random search, in one run.

Each sweep is `petloc sweep experiments/cats_dogs.yaml` in a fresh project (its own store),
with the photos decoded once beforehand. Hyperband runs first; random search then gets the
same budget in epochs (as many full-length trials as Hyperband's epochs fill). By default
both run at 64 px so that the pair takes about 20 minutes on two cores; `--image-size 128`
is the experiment as written (about 40 minutes a sweep).

    python benchmarks/search_speed.py [--data ../shared/datasets/cats_dogs/train] [--image-size 64]
    python benchmarks/search_speed.py --store PROJECT/mlruns   # the figures of sweeps already run there
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import scratch, table, write_block
from photos import SHARED_PHOTOS

from petloc.config import load_experiment
from petloc.tracking.vocabulary import ENSEMBLE_TRIAL, FINAL_TRIAL

ROOT = Path(__file__).resolve().parent.parent
WITHIN = 0.02


@dataclass
class SweepFigures:
    tuner: str
    trials: int
    epochs: int  # epochs trained, all trials together
    wall_s: float  # the parent run's start to its last trial's end
    best: float
    to_within_s: (
        float  # start to the first trial end at which the best so far is within WITHIN of `best`
    )

    def row(self) -> list:
        return [
            self.tuner,
            self.trials,
            self.epochs,
            f"{self.wall_s / 60:.1f}",
            f"{self.best:.3f}",
            f"**{self.to_within_s / 60:.1f}**",
            f"{self.to_within_s / self.wall_s:.2f}",
        ]


def sweep_figures(tracking_uri: str) -> list[SweepFigures]:
    """The figures of every sweep in the store at `tracking_uri`, from its runs' times."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = []
    for experiment in client.search_experiments():
        for parent in client.search_runs([experiment.experiment_id], "tags.`petloc.sweep` != ''"):
            if parent.data.tags.get("mlflow.parentRunId"):
                continue  # a trial: its tags repeat the sweep's
            trials = [
                r
                for r in client.search_runs(
                    [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
                )
                if "best_val_miou" in r.data.metrics
                and r.info.end_time
                and r.data.tags.get("trial_id") not in (FINAL_TRIAL, ENSEMBLE_TRIAL)
            ]
            if trials:
                found.append(figures_of(parent, trials))
    return found


def figures_of(parent, trials) -> SweepFigures:
    start = parent.info.start_time
    trials = sorted(trials, key=lambda r: r.info.end_time)
    best = max(r.data.metrics["best_val_miou"] for r in trials)
    so_far, reached = -1.0, None
    for run in trials:
        so_far = max(so_far, run.data.metrics["best_val_miou"])
        if reached is None and so_far >= best - WITHIN:
            reached = run.info.end_time
    return SweepFigures(
        tuner=parent.data.params.get("tuner.kind", "?"),
        trials=len(trials),
        epochs=int(sum(r.data.metrics.get("epochs_trained", 0) for r in trials)),
        wall_s=(trials[-1].info.end_time - start) / 1000,
        best=best,
        to_within_s=(reached - start) / 1000,
    )


def run_sweep(project: Path, data: Path, image_size: int, overrides: list[str]) -> None:
    # The search alone: no final run, no ensemble at the end.
    args = [
        sys.executable,
        "-m",
        "petloc",
        "sweep",
        "experiments/cats_dogs.yaml",
        f"data.path={data}",
        f"data.image_size={image_size}",
        "tuner.final_epochs=0",
        "registry.ensemble=0",
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        args, cwd=project, env=env, capture_output=True, text=True, timeout=3 * 3600
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(args[3:])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_PHOTOS)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--store", type=Path, help="report the sweeps already in this mlruns/ folder, run nothing"
    )
    args = parser.parse_args()
    if args.store:
        for figures in sweep_figures(f"sqlite:///{args.store.resolve() / 'mlflow.db'}"):
            print(figures)
        return
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such folder of photos (the cats_dogs layout)")
    project = scratch("search")
    shutil.copytree(ROOT / "experiments", project / "experiments")
    # The photos decoded once, outside the timings (the decode cache is shared by both sweeps).
    prepare = (
        "import sys; from petloc.config import load_experiment; from petloc.training.dataset import prepare_data; "
        "exp = load_experiment('experiments/cats_dogs.yaml', "
        f"['data.path={args.data}', 'data.image_size={args.image_size}']); "
        "prepare_data(exp.data, exp.data.image_size, print)"
    )
    subprocess.run([sys.executable, "-c", prepare], cwd=project, check=True, capture_output=True)
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    start = time.perf_counter()
    print(f"Hyperband sweep of cats_dogs.yaml at {args.image_size} px ...", flush=True)
    run_sweep(project, args.data, args.image_size, ["tracking.experiment=search-hyperband"])
    hyperband = sweep_figures(uri)[0]
    print(hyperband, flush=True)
    # Hyperband's longest trial
    max_epochs = load_experiment(project / "experiments/cats_dogs.yaml").train.epochs
    trials = max(1, round(hyperband.epochs / max_epochs))
    print(f"random search, {trials} trials of {max_epochs} epochs ...", flush=True)
    run_sweep(
        project,
        args.data,
        args.image_size,
        [
            "tuner.kind=random",
            f"tuner.max_trials={trials}",
            "tracking.experiment=search-random",
            "--fresh",
        ],
    )
    both = sorted(sweep_figures(uri), key=lambda f: f.tuner != "hyperband")
    rows = [f.row() for f in both]
    body = table(
        [
            "tuner",
            "trials",
            "epochs trained",
            "sweep min",
            "best val mIoU",
            f"min to within {WITHIN} of its best",
            "share of the sweep",
        ],
        rows,
    )
    body += (
        f"\n\n`experiments/cats_dogs.yaml` on {args.data.name} photos of "
        f"`{args.data.parent.name}` at {args.image_size} px, each sweep in a fresh store, the "
        "photos decoded once before; random search given Hyperband's budget in epochs "
        f"({trials} trials of {max_epochs}). Both searches start from the same seed. Whole benchmark "
        f"{(time.perf_counter() - start) / 60:.0f} min."
    )
    write_block("search", "Search speed on real photos: Hyperband / random search", body)


if __name__ == "__main__":
    main()
