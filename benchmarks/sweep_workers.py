"""Sweep throughput with workers: `experiments/quick.yaml` run as one process and with
`--workers 1, 2, 4` on this machine, each a fresh sweep in a fresh project (its own local
store), in one run. Trials per hour of wall time, install and data generation excluded
(the synthetic set and its decode cache are made once before the first timing). On two cores, expect little gain
from more workers: the figure is for the record, and shows what the chief and the worker
processes cost on top of the trials.

    python benchmarks/sweep_workers.py [--workers 1 2 4] [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import scratch, table, write_block

ROOT = Path(__file__).resolve().parent.parent


def sweep(project: Path, trials: int, workers: int | None) -> tuple[float, int]:
    """Wall seconds and finished trials of one fresh quick sweep."""
    args = [
        sys.executable,
        "-m",
        "petloc",
        "sweep",
        "experiments/quick.yaml",
        f"tuner.max_trials={trials}",
        "--fresh",
    ]
    if workers:
        args += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"sweep with workers={workers} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    finished = int(re.search(r"\((\d+) finished", done.stdout)[1])
    return seconds, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    project = scratch("workers")
    shutil.copytree(ROOT / "experiments", project / "experiments")
    # The synthetic set and its decode cache once, outside the timings.
    prepare = (
        "from petloc.config import load_experiment; from petloc.training.dataset import prepare_data; "
        "exp = load_experiment('experiments/quick.yaml'); prepare_data(exp.data, exp.data.image_size, print)"
    )
    subprocess.run([sys.executable, "-c", prepare], cwd=project, check=True, capture_output=True)
    rows, base = [], None
    for workers in [None, *args.workers]:
        shutil.rmtree(project / "mlruns", ignore_errors=True)
        seconds, finished = sweep(project, args.trials, workers)
        per_hour = finished / seconds * 3600
        base = base or per_hour
        label = "one process (no chief)" if workers is None else f"--workers {workers}"
        rows.append(
            [label, finished, f"{seconds:.0f}", f"{per_hour:.0f}", f"{per_hour / base:.2f}x"]
        )
        print(rows[-1], flush=True)
    body = table(["sweep", "trials finished", "wall s", "trials / hour", "vs one process"], rows)
    body += (
        "\n\nEach row a fresh `petloc sweep experiments/quick.yaml` (its own store, the synthetic set already made). "
        "With workers, a chief process holds the search and each worker trains its trials; all log to the one "
        "local SQLite store. Two cores: workers share them, so more workers mostly add start-up cost."
    )
    write_block(
        "sweep_workers", f"Sweep throughput with workers (quick.yaml, {args.trials} trials)", body
    )


if __name__ == "__main__":
    main()
