"""One sweep over several processes: Keras Tuner's chief and workers, all logging to one
tracking store. On a real `petloc tracking-server` on PostgreSQL (as a team runs it) and on
the local SQLite store (`--workers N` on one machine).

Each trial must be logged exactly once as FINISHED under the one parent run, whichever
worker ran it, and the faults a cluster sees (a worker killed and restarted, a worker that
never comes back, a worker with other settings) must end the sweep cleanly.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.search.time_budget import PACE
from tests.helpers import (
    PETLOC,
    free_port,
    in_project,
    invoke,
    petloc_env,
    store_client,
    tiny_dataset,
    tiny_experiment,
)
from tests.servers import tracking_server

SPACE = {"head_units": [8, 16, 32]}


# ---- how the tests run a sweep's processes ------------------------------------------------


def start(args, cwd: Path, uri: str | None = None) -> subprocess.Popen:
    env = petloc_env()
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.Popen(
        [*PETLOC, *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_chief(exp, address: str, cwd: Path, uri: str | None, *options) -> subprocess.Popen:
    return start(["sweep", exp, "--chief", "--address", address, *options], cwd, uri)


def start_worker(
    exp, worker_id: str, address: str, cwd: Path, uri: str | None, *overrides
) -> subprocess.Popen:
    return start(["sweep", exp, *overrides, "--worker", worker_id, "--chief", address], cwd, uri)


def finish(process: subprocess.Popen, timeout: float = 420) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"{process.args} did not end in {timeout} s:\n{out}") from None
    return out


def trial_runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], "tags.trial_id != ''") if found else []


def wait_for_training(
    client: MlflowClient, experiment: str, worker: subprocess.Popen, timeout: float = 240
):
    """The trial run of `worker` once it has logged an epoch (it is mid-training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        time.sleep(1)
        try:
            for run in trial_runs(client, experiment):
                if run.info.status == "RUNNING" and client.get_metric_history(
                    run.info.run_id, "val/miou"
                ):
                    return run
        except Exception:  # noqa: BLE001  (the store is still being created by another process)
            pass
    raise AssertionError(
        f"no trial was training: {finish(worker) if worker.poll() is not None else 'timeout'}"
    )


def describe(runs, *outputs: str) -> str:
    """What a failed assertion on trial runs shows: each run's status, worker and error, then
    the processes' output (a flaky failure must say its cause the first time)."""
    lines = [
        f"{run.info.run_id} trial {run.data.tags.get('trial_id')} {run.info.status} "
        f"worker {run.data.tags.get('petloc.worker')}, {len(run.data.metrics)} metrics, "
        f"start {run.info.start_time} end {run.info.end_time}: {run.data.tags.get('error', '')}"
        for run in runs
    ]
    return "\n".join([*lines, *outputs])


def parent_of(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([found.experiment_id], "tags.`petloc.kind` = 'sweep'")
    return parent


def leaderboard(client: MlflowClient, parent_id: str) -> list[dict]:
    text = Path(client.download_artifacts(parent_id, "leaderboard.csv")).read_text().splitlines()
    header = text[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in text[1:]]


# ---- the whole loop on a tracking server on PostgreSQL ------------------------------------


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """One `petloc tracking-server` on a new database of the session's PostgreSQL for this
    module's sweeps (each sweep in an experiment of its own)."""
    with tracking_server(postgres.new_database(), tmp_path_factory.mktemp("artifacts")) as uri:
        yield uri


@pytest.mark.slow
def test_a_chief_and_two_workers_log_each_trial_once_through_the_tracking_server(server, tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(
        tmp_path,
        data,
        space=SPACE,
        tuner={"max_trials": 3},
        tracking={"experiment": "team-sweep"},
        registry={"name": "team-model"},
    )
    address = f"127.0.0.1:{free_port()}"
    # Each process in a folder of its own, as on machines of their own: nothing shared but the server.
    folders = [tmp_path / name for name in ("chief", "one", "two")]
    for folder in folders:
        folder.mkdir()
    chief = start_chief(exp, address, folders[0], server)
    workers = [
        start_worker(exp, n, address, folder, server)
        for n, folder in zip(("1", "2"), folders[1:], strict=True)
    ]
    outputs = [finish(worker) for worker in workers]
    out = finish(chief)
    assert chief.returncode == 0, out
    assert all(worker.returncode == 0 for worker in workers), outputs

    client = MlflowClient(server, registry_uri=server)
    parent = parent_of(client, "team-sweep")
    trials = trial_runs(client, "team-sweep")
    # each once
    assert Counter(run.data.tags["trial_id"] for run in trials) == {"0": 1, "1": 1, "2": 1}
    assert {run.info.status for run in trials} == {"FINISHED"}, describe(trials, out, *outputs)
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {parent.info.run_id}
    assert {run.data.tags["petloc.worker"] for run in trials} <= {"1", "2"}
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:/") for run in trials)
    for run in trials:  # each says which worker ran it, in the chief's output as in its run
        assert (
            f"trial {run.data.tags['trial_id']} -> worker-{run.data.tags['petloc.worker']}" in out
        )
    assert parent.info.status == "FINISHED"
    assert len(leaderboard(client, parent.info.run_id)) == 3
    (version,) = client.search_model_versions("name = 'team-model'")
    assert client.get_model_version_by_alias("team-model", "champion").version == version.version
    # The chief ends with the sweep's pages on the server's UI, its report on the parent run.
    experiment = parent.info.experiment_id
    assert "in the MLflow UI:" in out
    assert f"{server}/#/experiments/{experiment}/runs/{parent.info.run_id}" in out
    assert f"{server}/#/models/team-model/versions/{version.version}" in out
    assert "](#/experiments/" in parent.data.tags["mlflow.note.content"]
    assert {"leaderboard.json", "importance.json", "parallel_coordinates.html"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }

    # Anyone pulls the champion by name through the same server.
    photo = next(data.glob("*.jpg")) if list(data.glob("*.jpg")) else next(data.rglob("*.png"))
    env = {**petloc_env(), "MLFLOW_TRACKING_URI": server}
    answer = subprocess.run(
        [*PETLOC, "predict", "team-model@champion", str(photo), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr
    assert "box" in json.dumps(json.loads(answer.stdout))
    # ... and browses it in the server's own UI.
    ui = subprocess.run(
        [*PETLOC, "ui"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert ui.returncode == 0 and f"the tracking server {server} serves the MLflow UI" in ui.stdout
    assert (
        f"runs of team-sweep    {server}/#/experiments/{parent.info.experiment_id}/runs"
        in ui.stdout
    )


@pytest.mark.slow
def test_a_worker_killed_mid_trial_and_restarted_resumes_that_trial(server, tmp_path):
    """kill -9 of a worker: started again with the same ID, Keras Tuner hands it the same
    trial; its half-done run ends KILLED and the trial is logged once as FINISHED."""
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(
        tmp_path,
        data,
        train={"epochs": 30},
        tuner={"max_trials": 1},  # long enough to be caught
        tracking={"experiment": "killed-worker"},
        registry={"name": "killed-worker"},
    )
    client = MlflowClient(server, registry_uri=server)
    address = f"127.0.0.1:{free_port()}"
    chief = start_chief(exp, address, tmp_path, server)
    worker = start_worker(exp, "a", address, tmp_path, server)
    first = wait_for_training(client, "killed-worker", worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    again = start_worker(exp, "a", address, tmp_path, server)
    finish(again)
    out = finish(chief)
    assert chief.returncode == 0, out
    assert "trial 0 -> worker-a again" in out

    runs = trial_runs(client, "killed-worker")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"]
    killed = client.get_run(first.info.run_id)
    assert killed.info.status == "KILLED" and "trial 0 was run again" in killed.data.tags["error"]
    assert len(leaderboard(client, parent_of(client, "killed-worker").info.run_id)) == 1


@pytest.mark.slow
def test_a_lost_worker_fails_its_trial_after_the_timeout_and_the_sweep_ends(server, tmp_path):
    """A worker that never comes back: after --worker-timeout its trial is FAILED (saying
    why), the other worker finishes the rest, and the sweep ends with its leaderboard. A
    worker started with other settings is refused in one line."""
    data = tiny_dataset(tmp_path / "photos", count=40)
    # Trials of about a minute: the lost worker is still training while the others are refused.
    exp = tiny_experiment(
        tmp_path,
        data,
        train={"epochs": 250},
        space={"head_units": [8, 16]},
        tuner={"max_trials": 2},
        tracking={"experiment": "lost-worker"},
        registry={"name": "lost-worker"},
    )
    client = MlflowClient(server, registry_uri=server)
    address = f"127.0.0.1:{free_port()}"
    chief = start_chief(exp, address, tmp_path, server, "--worker-timeout", "10")
    lost = start_worker(exp, "lost", address, tmp_path, server)
    lost_run = wait_for_training(client, "lost-worker", lost)
    # While it trains (the chief is there to ask): a worker with other settings, and one with its ID.
    other = start_worker(exp, "odd", address, tmp_path, server, "train.epochs=2")
    twin = start_worker(exp, "lost", address, tmp_path, server)
    refused, twice = finish(other), finish(twin)
    assert other.returncode == 2 and "Traceback" not in refused
    assert "settings differ from the chief's" in refused.strip().splitlines()[-1]
    assert (
        twin.returncode == 2
        and "worker lost of sweep 'tiny' is already running on this machine" in twice
    )
    # still training: they were refused, not it
    assert client.get_run(lost_run.info.run_id).info.status == "RUNNING"
    lost.send_signal(signal.SIGKILL)
    lost.wait(timeout=60)

    survivor = start_worker(exp, "b", address, tmp_path, server)
    finish(survivor)
    out = finish(chief)
    assert chief.returncode == 0, out
    failed = client.get_run(lost_run.info.run_id)
    assert failed.info.status == "FAILED"
    assert "worker-lost was not heard from" in failed.data.tags["error"]
    assert "marked failed, not re-queued" in failed.data.tags["error"]
    assert "1 finished, 1 failed" in out
    assert len(leaderboard(client, parent_of(client, "lost-worker").info.run_id)) == 1


class Lines:
    """A process's output lines as they come, read on a thread."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.lines = process, []
        self.thread = threading.Thread(
            target=lambda: self.lines.extend(process.stdout), daemon=True
        )
        self.thread.start()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if text in line), None)
            if found:
                return found
            if not self.thread.is_alive():  # the process ended without it
                break
            time.sleep(0.5)
        raise AssertionError(f"no line with {text!r} in {timeout} s:\n{''.join(self.lines)}")

    def text(self, timeout: float = 420) -> str:
        self.process.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return "".join(self.lines)


@pytest.mark.slow
def test_a_tracking_server_down_mid_trial_fails_that_trial_and_the_sweep_goes_on(
    postgres, tmp_path, monkeypatch
):
    """MLflow's own retries ride out a short outage (petloc sets them; here about 30 s);
    a longer one fails the trial with the reason, and once the server is back the sweep
    goes on and ends with its leaderboard."""
    for name, value in {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }.items():
        monkeypatch.setenv(name, value)  # the child processes inherit them through petloc_env()
    data = tiny_dataset(tmp_path / "photos", count=40)
    # still training when the server stops
    exp = tiny_experiment(
        tmp_path,
        data,
        train={"epochs": 60},
        space={"head_units": [8, 16]},
        tuner={"max_trials": 2},
        tracking={"experiment": "outage"},
    )
    backend, artifacts, port = postgres.new_database(), tmp_path / "artifacts", free_port()
    address = f"127.0.0.1:{free_port()}"
    with tracking_server(backend, artifacts, port=port) as uri:
        client = MlflowClient(uri)
        chief = start_chief(exp, address, tmp_path, uri)
        worker = start_worker(exp, "1", address, tmp_path, uri)
        worker_lines = Lines(worker)
        wait_for_training(client, "outage", worker)
    # The server is down now, mid-trial, for longer than the retries last.
    failed = worker_lines.wait_for("trial 0 failed", timeout=240)
    with tracking_server(backend, artifacts, port=port):
        worker_lines.text()
        out = finish(chief)
        statuses = {
            run.data.tags["trial_id"]: run.info.status for run in trial_runs(client, "outage")
        }
    assert f"the tracking server {uri} did not answer, even after MLflow's retries" in failed, (
        failed
    )
    assert chief.returncode == 0, out
    assert "1 finished, 1 failed" in out
    # 0 closed by the chief: its worker could not
    assert statuses == {"0": "FAILED", "1": "FINISHED"}


# ---- one machine: --workers N on the local store ------------------------------------------


@pytest.mark.slow
def test_workers_on_this_machine_share_one_sweep_on_the_local_store(tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(tmp_path, data, space=SPACE, tuner={"max_trials": 4})  # 3 points to draw
    done = subprocess.run(
        [*PETLOC, "sweep", exp, "--workers", "2"],
        cwd=tmp_path,
        env=petloc_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the chief says it too
    assert (
        "the search ended after 3 of 4 planned trials: Keras Tuner drew no new point" in done.stdout
    )
    client = store_client(tmp_path)
    trials = trial_runs(client, "tiny")
    assert Counter(run.data.tags["trial_id"] for run in trials) == {"0": 1, "1": 1, "2": 1}
    assert {run.info.status for run in trials} == {"FINISHED"}
    assert "[worker-1]" in done.stdout and "[worker-2]" in done.stdout
    assert "Leaderboard of sweep 'tiny' (3 finished, 0 failed" in done.stdout
    assert str(client.get_model_version_by_alias("petloc", "champion").version) == "1"


@pytest.mark.slow
def test_the_chief_keeps_the_time_budget_for_every_worker(tmp_path):
    # tuner.max_minutes sits on the chief's oracle: once the first trial has ended, no worker gets a new one.
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(
        tmp_path,
        data,
        train={"epochs": 2},
        space=SPACE,
        tuner={"max_trials": 6, "max_minutes": 0.001, "final_epochs": 1},
    )
    done = subprocess.run(
        [*PETLOC, "sweep", exp, "--workers", "2"],
        cwd=tmp_path,
        env=petloc_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "time budget (tuner.max_minutes):" in done.stdout and "no new trial starts" in done.stdout
    )
    trials = Counter(
        run.data.tags["trial_id"] for run in trial_runs(store_client(tmp_path), "tiny")
    )
    # Both workers may have started one before the first ended; none started after.
    assert trials["final"] == 1 and set(trials) - {"final"} in ({"0"}, {"0", "1"}), trials
    # Each worker told the chief its trial's steady epoch as it trained (only the chief's oracle records it).
    trial_files = list((tmp_path / "mlruns" / "tuner").glob("**/trial.json"))
    assert any(PACE in each.read_text() for each in trial_files), trial_files


@pytest.mark.slow
def test_ctrl_c_stops_every_process_and_the_sweep_continues_when_started_again(tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=40)
    # Trials of 6-15 s here: the stop may land mid-epoch, mid-trace or between trials; a worker
    # that dropped it went on training (test_stop_signals_never_lost.py has each way it was lost).
    exp = tiny_experiment(
        tmp_path, data, train={"epochs": 40}, space=SPACE, tuner={"max_trials": 3}
    )
    client = store_client(tmp_path)
    # Ctrl+C as in a terminal: a shell without job control (`cmd &` in a script, as CI may run
    # us) starts its children with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    launcher = subprocess.Popen(
        [*PETLOC, "sweep", exp, "--workers", "2"],
        cwd=tmp_path,
        env=petloc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # its own lines, not the store: a reader racing the chief to create it can miss a short trial
    lines = Lines(launcher)
    lines.wait_for("epoch 1/40", timeout=240)
    launcher.send_signal(signal.SIGINT)
    out = lines.text(timeout=120)
    assert launcher.returncode == 130, out
    assert "stopping the workers, then the chief" in out
    interrupted = trial_runs(client, "tiny")
    # each ended KILLED or FINISHED
    assert interrupted and "RUNNING" not in {run.info.status for run in interrupted}, describe(
        interrupted, out
    )
    parent = parent_of(client, "tiny")
    assert parent.info.status == "KILLED", f"{parent.data.tags.get('error')}\n{out}"

    again = subprocess.run(
        [*PETLOC, "sweep", exp, "--workers", "2"],
        cwd=tmp_path,
        env=petloc_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    finished = [run for run in trial_runs(client, "tiny") if run.info.status == "FINISHED"]
    # none lost, none twice
    assert Counter(run.data.tags["trial_id"] for run in finished) == {"0": 1, "1": 1, "2": 1}
    assert parent_of(client, "tiny").info.status == "FINISHED"
    assert "Leaderboard of sweep 'tiny' (3 finished, 0 failed" in again.stdout


# ---- one-line errors, before anything starts -----------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["--worker", "1"], "--worker ID needs --chief HOST:PORT"),
        (
            ["--worker", "1", "--chief", "127.0.0.1:1", "--fresh"],
            "takes neither --address, --workers nor --fresh",
        ),
        (["--workers", "2", "--chief"], "--workers N starts its own chief"),
        (["--address", "127.0.0.1:8470"], "--address is where a chief listens"),
        (["--worker", "chief-1", "--chief", "127.0.0.1:1"], "not 'chief'"),
        (["--worker", "1", "--chief", "nowhere"], "not HOST:PORT"),
    ],
)
def test_distributed_options_that_do_not_fit_are_one_line(tmp_path, args, says):
    data = tiny_dataset(tmp_path / "photos", count=8)
    exp = tiny_experiment(tmp_path, data)
    with in_project(tmp_path), pytest.raises(PetlocError, match=re.escape(says)):
        invoke("sweep", exp, *args)
    assert not (tmp_path / "mlruns" / "tuner" / "tiny").exists()


def test_a_chief_that_cannot_listen_says_so_before_touching_the_sweep(tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=8)
    exp = tiny_experiment(tmp_path, data)
    with socket.create_server(("127.0.0.1", 0)) as taken, in_project(tmp_path):
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(PetlocError, match=f"--address {address}: cannot listen there"):
            invoke("sweep", exp, "--chief", "--address", address)
    assert not (tmp_path / "mlruns" / "tuner" / "tiny").exists()
