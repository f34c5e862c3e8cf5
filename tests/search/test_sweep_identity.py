"""One sweep, one parent, however many chiefs: a worker logs under the parent of the chief
it talks to, a second live chief of a sweep is refused, a chief started again does not
train a finished trial twice, and a worker without a chief says so in one line.

Two folders against one tracking store stand for two machines: nothing is shared but the
store (here one SQLite file; the PostgreSQL server of test_distributed_sweep.py behaves alike).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import keras_tuner as kt
import mlflow
import pytest
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_client
from keras_tuner.src.engine.trial import Trial, TrialStatus
from mlflow.tracking import MlflowClient

from petloc.config import load_experiment, parse_experiment
from petloc.errors import PetlocError
from petloc.search.chief import ChiefServicer, _refuse_a_concurrent_chief, refuse_a_second_chief
from petloc.search.state import RESUMABLE_TUNER_SETTINGS, fingerprint
from petloc.search.worker import _heartbeat, ask_chief
from petloc.tracking import runs
from petloc.tracking import vocabulary as vocab
from petloc.tracking.sweep_record import identity_tags
from petloc.tracking.vocabulary import CHIEF as CHIEF_TAG
from petloc.tracking.vocabulary import CHIEF_HEARTBEAT as CHIEF_HEARTBEAT_TAG
from tests.helpers import free_port, tiny_dataset, tiny_experiment
from tests.search.test_distributed_sweep import (
    Lines,
    finish,
    leaderboard,
    start_chief,
    start_worker,
    trial_runs,
)

# ---- fast: the parts, on real stores and servers of this process ---------------------------


@pytest.fixture
def shared_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def chief_parent(exp, owner: str, heartbeat: float) -> str:
    """A parent run as a chief of `exp` leaves it in the store."""
    run_id = runs.create_run(
        runs.experiment_id(exp.tracking.experiment),
        "sweep-tiny",
        {
            "petloc.kind": "sweep",
            **identity_tags(exp, fingerprint(exp)),
            CHIEF_TAG: "10.0.0.7:8470",
        },
    )
    client = MlflowClient()
    client.set_tag(run_id, vocab.OWNER, owner)
    client.set_tag(run_id, CHIEF_HEARTBEAT_TAG, f"{heartbeat:.0f}")
    return run_id


def test_a_live_chief_refuses_a_second_one_but_not_its_own_restart_nor_a_dead_ones_successor(
    tmp_path, shared_store
):
    exp = load_experiment(tiny_experiment(tmp_path, tiny_dataset(tmp_path / "photos", count=8)))
    # Another machine's chief, silent for ten minutes (killed -9, its parent left RUNNING): no obstacle.
    chief_parent(exp, "elsewhere:123:456", time.time() - 600)
    refuse_a_second_chief(exp, None)
    # This machine's chief whose process is gone, however recent its last beat: no obstacle either.
    # no such pid
    chief_parent(exp, f"{socket.gethostname()}:{os.getpid() + 10_000_000}:1", time.time())
    refuse_a_second_chief(exp, None)
    # A live chief (this process, beating now): refused in one line naming its host ...
    live = chief_parent(exp, runs.this_process(), time.time())
    with pytest.raises(
        PetlocError,
        match=f"sweep 'tiny' already has a live chief on {socket.gethostname()} "
        f"\\(at 10.0.0.7:8470, parent run {live}\\)",
    ):
        refuse_a_second_chief(exp, None)
    # ... unless it is this folder's own parent: the same chief started again.
    refuse_a_second_chief(exp, live)
    # Another sweep's live chief is no obstacle.
    other = load_experiment(
        tiny_experiment(tmp_path, tiny_dataset(tmp_path / "photos", count=8)), ["name=other"]
    )
    refuse_a_second_chief(other, None)
    # Two chiefs that passed the check at once, both beating now: the one with the newer parent gives way.
    time.sleep(0.05)  # a later start time (milliseconds)
    newer = chief_parent(exp, runs.this_process(), time.time())
    _refuse_a_concurrent_chief(exp, live)
    with pytest.raises(PetlocError, match=f"already has a live chief .* parent run {live}"):
        _refuse_a_concurrent_chief(exp, newer)


def restarted_oracle(tmp_path: Path) -> kt.Oracle:
    """A chief's oracle with trial 0 out to worker-a, saved, then reloaded as a restarted
    chief reloads it (Keras Tuner queues trial 0 again)."""

    def oracle():
        made = kt.oracles.RandomSearchOracle(kt.Objective("val_miou", "max"), max_trials=3, seed=1)
        made._set_project_dir(str(tmp_path), "sweep")
        hp = kt.HyperParameters()
        hp.Choice("head_units", [8, 16, 32])
        made.update_space(hp)
        return made

    first = oracle()
    assert first.create_trial("worker-a").trial_id == "0"
    first.save()
    again = oracle()
    again.reload()
    return again


class Metadata:
    """The call context a gRPC server hands a method: the caller's metadata."""

    def __init__(self, **metadata):
        self.metadata = tuple(metadata.items())

    def invocation_metadata(self):
        return self.metadata


def report_completed(servicer: ChiefServicer, trial_id: str) -> None:
    service = protos.get_service()
    servicer.UpdateTrial(
        service.UpdateTrialRequest(
            trial_id=trial_id, metrics={"val_miou": 0.5, "val_accuracy": 0.9}
        ),
        Metadata(),
    )
    trial = Trial(
        servicer.oracle.trials[trial_id].hyperparameters,
        trial_id=trial_id,
        status=TrialStatus.COMPLETED,
    )
    servicer.EndTrial(service.EndTrialRequest(trial=trial.to_proto()), Metadata())


def test_a_restarted_chief_counts_a_trial_that_ended_while_it_was_down(tmp_path):
    lines = []
    servicer = ChiefServicer(restarted_oracle(tmp_path), 3, ["head_units"], None, lines.append)
    report_completed(servicer, "0")
    assert servicer.oracle.trials["0"].status == TrialStatus.COMPLETED, lines
    assert not any("ignored" in line for line in lines), lines
    # The next worker gets a new trial, not trial 0 again.
    created = servicer.CreateTrial(
        protos.get_service().CreateTrialRequest(tuner_id="worker-b"), Metadata()
    )
    assert Trial.from_proto(created.trial).trial_id == "1"


def test_a_restarted_chief_gives_a_trial_back_to_the_worker_still_training_it(tmp_path):
    lines = []
    servicer = ChiefServicer(restarted_oracle(tmp_path), 3, ["head_units"], None, lines.append)
    # worker-a's heartbeat reaches the new chief before any other worker asks for a trial.
    servicer.GetTrial(
        protos.get_service().GetTrialRequest(trial_id="0"),
        Metadata(**{"petloc-tuner-id": "worker-a"}),
    )
    created = servicer.CreateTrial(
        protos.get_service().CreateTrialRequest(tuner_id="worker-b"), Metadata()
    )
    # not trial 0, which worker-a is training
    assert Trial.from_proto(created.trial).trial_id == "1"
    assert servicer.oracle.ongoing_trials["worker-a"].trial_id == "0"
    report_completed(servicer, "0")
    assert servicer.oracle.trials["0"].status == TrialStatus.COMPLETED
    # each figure rounded as in the tables
    assert any(
        "trial 0 done on worker-a: val mIoU 0.500, accuracy 0.900" in line for line in lines
    ), lines


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_worker_told_an_http_server_is_its_chief_says_so_at_once(http_server):
    host, port = http_server.split(":")
    started = time.monotonic()
    with pytest.raises(PetlocError, match=f"--chief {http_server}: not a petloc chief"):
        ask_chief(host, int(port), 30, print)
    assert time.monotonic() - started < 10


def test_a_worker_with_no_chief_there_gives_up_after_its_patience():
    port = free_port()
    said = []
    with pytest.raises(PetlocError, match=f"--chief 127.0.0.1:{port}: no chief answered in 3 s"):
        ask_chief("127.0.0.1", port, 3, said.append)
    assert said == [f"waiting for the chief at 127.0.0.1:{port} (up to 3 s)"]


def test_a_training_worker_says_once_that_its_chief_has_gone_silent(monkeypatch):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_port()))  # nobody there
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "worker-a")
    said = []
    with _heartbeat(oracle_client.OracleClient(None), "0", said.append, every=0.2, patience=1):
        time.sleep(2.5)
    assert len(said) == 1 and said[0] >= 1


# ---- slow: chiefs and workers as a user starts them ----------------------------------------


def shared(tmp_path: Path, *names: str) -> tuple[str, list[Path]]:
    """A tracking store for every process, and a folder of its own for each (a machine)."""
    (tmp_path / "store").mkdir()
    folders = [tmp_path / name for name in names]
    for folder in folders:
        folder.mkdir()
    return f"sqlite:///{tmp_path}/store/mlflow.db", folders


@pytest.mark.slow
def test_two_chiefs_of_one_sweep_the_second_is_refused_and_the_worker_logs_under_its_own_chief(
    tmp_path,
):
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(tmp_path, data, tuner={"max_trials": 1})
    uri, (one, two, worker_folder) = shared(tmp_path, "one", "two", "worker")
    client = MlflowClient(uri)
    address = f"127.0.0.1:{free_port()}"
    chief = start_chief(exp, address, one, uri)
    chief_lines = Lines(chief)
    chief_lines.wait_for(f"chief of sweep 'tiny' on {address}", timeout=240)
    (own,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`petloc.kind` = 'sweep'"
    )
    # A newer RUNNING parent of the same sweep, as a chief killed on another machine leaves it.
    stale = client.create_run(
        own.info.experiment_id,
        run_name="sweep-tiny",
        tags={
            **{k: v for k, v in own.data.tags.items() if not k.startswith("mlflow.")},
            "petloc.owner": "elsewhere:1:1",
            CHIEF_HEARTBEAT_TAG: "1000",
        },
    ).info.run_id

    worker = start_worker(exp, "1", address, worker_folder, uri)
    second = start_chief(exp, f"127.0.0.1:{free_port()}", two, uri)
    try:
        worker_out = finish(worker)
        out = chief_lines.text()
        assert chief.returncode == 0 and worker.returncode == 0, out + worker_out
        # The worker's trial is under its own chief's parent, not the newest RUNNING one.
        (trial,) = trial_runs(client, "tiny")
        assert trial.data.tags["mlflow.parentRunId"] == own.info.run_id, worker_out
        assert trial.info.status == "FINISHED"
        assert client.get_run(own.info.run_id).info.status == "FINISHED"
        assert len(leaderboard(client, own.info.run_id)) == 1
        # The second chief was refused in one line naming the first one's host.
        refused = finish(second, timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 2 and "Traceback" not in refused, refused
    says = (
        f"sweep 'tiny' already has a live chief on {socket.gethostname()} "
        f"(at {address}, parent run {own.info.run_id})"
    )
    assert says in refused.strip().splitlines()[-1], refused
    parents = client.search_runs([own.info.experiment_id], "tags.`petloc.kind` = 'sweep'")
    # the refused chief made none
    assert {run.info.run_id for run in parents} == {own.info.run_id, stale}


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"no {what} in {timeout} s")


@pytest.mark.slow
def test_a_chief_killed_and_started_again_counts_the_trial_a_worker_finished_meanwhile(tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=40)
    # mid-trial when killed
    exp = tiny_experiment(tmp_path, data, train={"epochs": 25}, tuner={"max_trials": 1})
    uri, (chief_folder, worker_folder) = shared(tmp_path, "chief", "worker")
    client = MlflowClient(uri)
    address = f"127.0.0.1:{free_port()}"
    chief = start_chief(exp, address, chief_folder, uri)
    worker = start_worker(exp, "a", address, worker_folder, uri)
    worker_lines = Lines(worker)
    running = wait_until(
        lambda: [run for run in trial_runs(client, "tiny") if run.info.status == "RUNNING"],
        timeout=240,
        what="trial run",
    )[0]
    chief.send_signal(signal.SIGKILL)
    chief.wait(timeout=60)
    wait_until(
        lambda: client.get_run(running.info.run_id).info.status == "FINISHED",
        timeout=300,
        what="finished trial",
    )
    finished_at = time.monotonic()
    try:  # without its chief, the worker says so and ends
        worker.wait(timeout=90)
    except subprocess.TimeoutExpired:
        worker.kill()
    waited = time.monotonic() - finished_at
    worker_out = worker_lines.text()

    again = start_chief(exp, address, chief_folder, uri)
    worker_again = start_worker(exp, "a", address, worker_folder, uri)
    again_out, worker_again_out = finish(again), finish(worker_again)
    assert again.returncode == 0, again_out + worker_again_out
    # Trial 0 ran once: its one run, FINISHED, counted by the chief started again.
    runs_of_the_sweep = trial_runs(client, "tiny")
    assert [(run.info.run_id, run.info.status) for run in runs_of_the_sweep] == [
        (running.info.run_id, "FINISHED")
    ], again_out + worker_again_out
    assert (
        f"trial 0: its run {running.info.run_id} had ended FINISHED before the sweep stopped"
        in again_out
    )
    (row,) = leaderboard(client, running.data.tags["mlflow.parentRunId"])
    assert row["run_id"] == running.info.run_id
    # The worker whose chief had gone ended in one line, naming it, within its 30 s patience.
    assert worker.returncode == 2 and waited < 60, worker_out
    last = worker_out.strip().splitlines()[-1]
    assert f"worker a: lost the chief at {address}" in last and "Traceback" not in worker_out, (
        worker_out
    )


@pytest.mark.slow
def test_a_worker_whose_chief_is_not_there_or_not_a_chief_says_so_in_one_line(
    tmp_path, http_server
):
    data = tiny_dataset(tmp_path / "photos", count=8)
    exp = tiny_experiment(tmp_path, data)
    for address, says in [
        (http_server, f"--chief {http_server}: not a petloc chief"),
        (f"127.0.0.1:{free_port()}", "no chief answered in 30 s"),
    ]:
        started = time.monotonic()
        worker = start_worker(exp, "1", address, tmp_path, None)
        out = finish(worker, timeout=120)
        assert worker.returncode == 2 and "Traceback" not in out, out
        assert says in out.strip().splitlines()[-1], out
        assert time.monotonic() - started < 90  # the process's own start (TensorFlow) included


def test_settings_added_since_a_sweep_started_keep_it_the_same_sweep_at_their_defaults():
    """`data.labels` and `plugins` came after sweeps were started: at their defaults the
    fingerprint is the one such a sweep recorded (computed without them); set otherwise, they
    make another sweep."""
    plain = parse_experiment({"name": "s"})
    spelled = parse_experiment({"name": "s", "data": {"labels": "species"}, "plugins": []})
    before = plain.model_dump(mode="json")  # what a sweep started before these settings hashed
    del before["plugins"], before["data"]["labels"], before["registry"]
    for setting in RESUMABLE_TUNER_SETTINGS:
        del before["tuner"][setting]
    recorded = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint(plain) == fingerprint(spelled) == recorded
    assert fingerprint(parse_experiment({"name": "s", "data": {"labels": "breed"}})) != recorded
