"""Tracking under load, without TensorFlow: 16, 32 and 64 simulated workers log trial-sized
runs at once to `petloc tracking-server` on PostgreSQL (both started here, on 127.0.0.1).

A trial-sized run is what a sweep's trial logs: a child run of the level's parent run, 15
params, 40 epochs of 6 metrics (one log_batch per epoch), a ~50 KB PNG and a JSON, then
FINISHED. Workers are processes (forked after MLflow is imported), each with its own
MlflowClient and connection pool, as real workers are: threads would share one interpreter
lock and measure the client, not the server. Client retries are off (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0),
so every failed call counts as an error instead of being hidden by a retry. After each
level every run is read back through the server: none lost, none doubled, each FINISHED
with its params, 40 steps of each metric and both artifacts.

Then one client logs the same run to the server and to a local SQLite store, alternating:
the server's overhead per trial-sized run.

    python benchmarks/tracking_load.py [--workers 16 32 64] [--runs 64] [--seconds 150] [--no-write]

Exits 1 when any call failed or any run is lost, doubled or incomplete.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import struct
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves this machine
# a "View run" line per run ended
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers

import psutil
from common import scratch, table, write_block
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tests.servers import postgres_server, tracking_server

EPOCHS = 40
METRICS = ["train/loss", "train/miou", "train/accuracy", "val/loss", "val/miou", "val/accuracy"]
PARAMS = {
    "backbone": "simple",
    "width": 0.5,
    "image_size": 64,
    "aug_strength": 0.4,
    "head_units": 128,
    "head_depth": 1,
    "dropout": 0.0,
    "box_loss": "smooth_l1",
    "box_loss_weight": 5.0,
    "learning_rate": 0.002,
    "batch_size": 16,
    "box_head": "dense",
    "class_weight": "none",
    "seed": 0,
    "epochs": EPOCHS,
}
JOIN_GRACE = (
    120  # seconds past a level's deadline before a worker still running is stopped and counted
)


# ---- one trial-sized run ------------------------------------------------------------------


def trial_files(folder: Path) -> dict[str, Path]:
    """A ~50 KB PNG (noise does not compress) and a small JSON, as a trial's figures and summary."""
    side = 224
    rows = b"".join(b"\x00" + os.urandom(side) for _ in range(side))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )
    files = {"predictions.png": folder / "predictions.png", "summary.json": folder / "summary.json"}
    files["predictions.png"].write_bytes(png)
    files["summary.json"].write_text(
        json.dumps(
            {
                "best_val_miou": 0.61,
                "val_accuracy": 0.9,
                "latency_ms_b1": 3.2,
                "params_count": 123456,
                "epochs": list(range(EPOCHS)),
            }
        )
    )
    return files


def log_trial(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    name: str,
    files: dict[str, Path],
    latencies: list[float],
) -> str:
    run_id = client.create_run(
        experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id, "trial_id": name}
    ).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in PARAMS.items()])
    for epoch in range(1, EPOCHS + 1):
        stamp = int(time.time() * 1000)
        start = time.perf_counter()
        client.log_batch(
            run_id,
            metrics=[Metric(key, 1.0 / (epoch + i), stamp, epoch) for i, key in enumerate(METRICS)],
        )
        latencies.append(time.perf_counter() - start)
    for path in files.values():
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


# ---- a level: N workers at once -----------------------------------------------------------


def worker(uri, experiment_id, parent_id, index, runs, deadline, files, go, results) -> None:
    client = MlflowClient(uri)
    names, errors, latencies = [], [], []
    go.wait()
    for r in range(runs):
        if time.time() > deadline:
            break
        name = f"w{index:02d}-r{r:03d}"
        names.append(name)
        try:
            log_trial(client, experiment_id, parent_id, name, files, latencies)
        except Exception as err:  # noqa: BLE001  (counted and reported; the worker goes on with its next run)
            errors.append(f"{name}: {str(err).splitlines()[0][:300]}")
    cpu = os.times()
    results.put(
        {"names": names, "errors": errors, "latencies": latencies, "cpu": cpu.user + cpu.system}
    )


def run_level(
    uri: str, experiment_id: str, workers: int, runs_each: int, seconds: float, files
) -> dict:
    client = MlflowClient(uri)
    parent_id = client.create_run(experiment_id, run_name=f"load-{workers}-workers").info.run_id
    # MLflow already imported: 64 workers start in a second
    fork = multiprocessing.get_context("fork")
    go, results = fork.Event(), fork.Queue()
    deadline = time.time() + seconds
    procs = [
        fork.Process(
            target=worker,
            args=(uri, experiment_id, parent_id, i, runs_each, deadline, files, go, results),
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    clients = {proc.pid for proc in procs}
    server_cpu_before = server_cpu(clients)
    start = time.perf_counter()
    go.set()
    reports = [results.get(timeout=seconds + JOIN_GRACE) for _ in procs]
    wall = time.perf_counter() - start
    server_used = server_cpu(clients) - server_cpu_before
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    client.set_terminated(parent_id, "FINISHED")
    names = [n for r in reports for n in r["names"]]
    errors = [e for r in reports for e in r["errors"]]
    latencies = sorted(x for r in reports for x in r["latencies"])
    problems = check_runs(client, experiment_id, parent_id, names, files)
    return {
        "workers": workers,
        "runs": len(names),
        "wall": wall,
        "errors": errors,
        "problems": problems,
        "p50": statistics.median(latencies),
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
        "max": latencies[-1],
        "client_cpu": sum(r["cpu"] for r in reports),
        "server_cpu": server_used,
    }


def check_runs(
    client: MlflowClient, experiment_id: str, parent_id: str, names: list[str], files
) -> list[str]:
    """Every run read back through the server: none lost or doubled, each complete."""
    runs = []
    page = None
    while True:
        found = client.search_runs(
            [experiment_id],
            f"tags.mlflow.parentRunId = '{parent_id}'",
            max_results=1000,
            page_token=page,
        )
        runs += found
        page = found.token
        if not page:
            break
    counts = Counter(r.info.run_name for r in runs)
    problems = [f"lost: {n}" for n in sorted(set(names) - set(counts))]
    problems += [f"doubled: {n} x{c}" for n, c in counts.items() if c > 1]
    problems += [f"{r.info.run_name}: {r.info.status}" for r in runs if r.info.status != "FINISHED"]
    problems += [
        f"{r.info.run_name}: {len(r.data.params)} params"
        for r in runs
        if len(r.data.params) != len(PARAMS)
    ]
    sizes = {name: path.stat().st_size for name, path in files.items()}

    def complete(run) -> list[str]:
        found = []
        for key in METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            if steps != list(range(1, EPOCHS + 1)):
                found.append(
                    f"{run.info.run_name}: {key} has {len(steps)} points, {len(set(steps))} distinct steps"
                )
        listed = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id)}
        if listed != sizes:
            found.append(f"{run.info.run_name}: artifacts {listed}")
        return found

    with ThreadPoolExecutor(8) as pool:
        problems += [p for found in pool.map(complete, runs) for p in found]
    return problems


def server_cpu(clients: set[int]) -> float:
    """CPU seconds of the tracking server (our child processes but the clients: petloc, mlflow,
    uvicorn and its workers) and of PostgreSQL (the postmaster, its backends, and backends gone)."""
    total = 0.0
    ours = [p for p in psutil.Process().children(recursive=True) if p.pid not in clients]
    for proc in [*ours, *POSTGRES]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


POSTGRES: list[psutil.Process] = []  # the postmaster, set once it runs


# ---- one client: server vs local SQLite -----------------------------------------------------


def overhead(uri: str, folder: Path, files, rounds: int) -> tuple[float, float]:
    """Best wall time of one trial-sized run logged through the server and to a local SQLite
    store (artifacts on local disk), alternating; the first of each is a warm-up."""
    local_uri = f"sqlite:///{folder / 'local.db'}"
    clients = {"server": MlflowClient(uri), "local": MlflowClient(local_uri)}
    where = {
        "server": clients["server"].create_experiment("one-client"),
        "local": clients["local"].create_experiment(
            "one-client", artifact_location=(folder / "local-artifacts").as_uri()
        ),
    }
    parents = {k: clients[k].create_run(where[k]).info.run_id for k in clients}
    best = {k: float("inf") for k in clients}
    for round_ in range(rounds + 1):
        for k, client in clients.items():
            start = time.perf_counter()
            log_trial(client, where[k], parents[k], f"one-{round_}", files, [])
            if round_:
                best[k] = min(best[k], time.perf_counter() - start)
    return best["server"], best["local"]


# ---- the whole benchmark --------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument(
        "--runs", type=int, default=64, help="runs per level, shared among its workers"
    )
    parser.add_argument(
        "--seconds", type=float, default=150, help="a level's workers start no new run after this"
    )
    parser.add_argument(
        "--server-workers",
        type=int,
        default=4,
        help="the tracking server's web workers (its default)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="one-client rounds, server vs local SQLite"
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print, leave RESULTS.md alone (the test's small run)",
    )
    args = parser.parse_args()
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = (
        "0"  # a failed call is an error, not a silent retry
    )
    folder = scratch("tracking-load")
    files = trial_files(folder)
    started = time.perf_counter()
    with postgres_server(durable=True) as postgres:
        POSTGRES.append(psutil.Process(postgres.pid()))
        with tracking_server(
            postgres.new_database("tracking_load"),
            folder / "artifacts",
            workers=args.server_workers,
        ) as uri:
            experiment_id = MlflowClient(uri).create_experiment("tracking-load")
            levels = []
            for workers in args.workers:
                level = run_level(
                    uri, experiment_id, workers, max(1, args.runs // workers), args.seconds, files
                )
                print(
                    f"{workers} workers: {level['runs']} runs in {level['wall']:.1f} s, {len(level['errors'])} errors, "
                    f"{len(level['problems'])} problems",
                    flush=True,
                )
                levels.append(level)
            server_s, local_s = overhead(uri, folder, files, args.rounds)
    report(levels, server_s, local_s, args, time.perf_counter() - started)
    failed = [x for level in levels for x in level["errors"] + level["problems"]]
    for line in failed[:20]:
        print("FAILED", line)
    sys.exit(1 if failed else 0)


def report(levels: list[dict], server_s: float, local_s: float, args, total: float) -> None:
    rows = [
        [
            level["workers"],
            level["runs"],
            f"{level['wall']:.1f} s",
            f"**{60 * level['runs'] / level['wall']:.0f}**",
            f"{len(level['errors'])}",
            "none" if not level["problems"] else f"{len(level['problems'])} problems",
            f"{1000 * level['p50']:.0f} / {1000 * level['p99']:.0f} / {1000 * level['max']:.0f} ms",
            f"{level['server_cpu'] / level['runs']:.2f} s",
            f"{level['client_cpu'] / level['runs']:.2f} s",
        ]
        for level in levels
    ]
    body = table(
        [
            "workers (processes)",
            "runs",
            "wall",
            "runs / min",
            "errors",
            "lost or doubled",
            "log_batch p50 / p99 / max",
            "server + PostgreSQL CPU per run",
            "clients' CPU per run",
        ],
        rows,
    )
    ratio = server_s / local_s
    body += "\n\n" + table(
        ["one client, one trial-sized run (A / B)", "A / B", "ratio"],
        [
            [
                f"through `petloc tracking-server` on PostgreSQL / to a local SQLite store (best of {args.rounds})",
                f"{server_s:.2f} / {local_s:.2f} s",
                f"**{ratio:.2f}x**",
            ]
        ],
    )
    body += (
        f"\n\nA run: 15 params, {EPOCHS} epochs x {len(METRICS)} metrics (one log_batch each), a 50 KB PNG and a JSON, "
        f"FINISHED; client retries off, so an error is a failed call. The server: {args.server_workers} web workers, "
        f"PostgreSQL with fsync on, clients and server on the same 2 cores. Whole benchmark {total / 60:.1f} min."
    )
    if not args.no_write:
        write_block(
            "tracking_load",
            "Tracking server under load: `python benchmarks/tracking_load.py`",
            body,
        )
    else:
        print(body)


if __name__ == "__main__":
    main()
