"""Sweep state and the store: names never reach outside mlruns/, damaged state is one line,
run status tells the truth, and several processes on one store do not corrupt each other."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from petloc.data.pipeline import CACHE_VERSION, dataset_digest, load_arrays
from petloc.errors import PetlocError
from petloc.files import atomic_write_text, exclusive_lock, remove_tree
from petloc.tracking import runs, store
from petloc.tracking import vocabulary as vocab
from tests.helpers import (
    PETLOC,
    in_project,
    invoke,
    petloc_env,
    store_client,
    tiny_dataset,
    tiny_experiment,
)


def sweep_runs(root: Path, name: str = "tiny"):
    client = store_client(root)
    experiment = client.get_experiment_by_name(name)
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`petloc.kind` = 'sweep'", run_view_type=3
    )
    return client, parents


# --- names and deletes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["{victim}", "../../victim", "a/b", ".hidden", "..", "x" * 101, "", "a\\b"]
)
def test_sweep_names_that_are_paths_are_refused(tmp_path, name):
    project, victim = tmp_path / "project", tmp_path / "victim"
    (project / "mlruns" / "tuner").mkdir(parents=True)
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    exp = tiny_experiment(project, tmp_path / "photos")
    with in_project(project), pytest.raises(PetlocError, match="is not a usable sweep name"):
        invoke("sweep", exp, f"name={json.dumps(name.format(victim=victim))}", "--fresh")
    assert (victim / "keep.txt").read_text() == "mine"


def test_remove_tree_deletes_only_inside_its_root_and_never_follows_a_link(tmp_path):
    root, keep = tmp_path / "out", tmp_path / "keep"
    (root / "staging" / "sub").mkdir(parents=True)
    (root / "staging" / "sub" / "f").write_text("x")
    keep.mkdir()
    (keep / "precious.txt").write_text("mine")
    (root / "link").symlink_to(keep)
    for outside in (
        keep,
        root / ".." / "keep",
        root / "staging" / ".." / "..",
        root,
        root / "link" / "precious.txt",
    ):
        with pytest.raises(PetlocError, match="refusing to touch it, it is not inside"):
            remove_tree(outside, root)
    remove_tree(root / "link", root)  # the link goes, its target stays
    remove_tree(root / "staging", root)
    remove_tree(root / "absent", root)
    assert not list(root.iterdir()) and [p.name for p in keep.iterdir()] == ["precious.txt"]


def test_atomic_write_keeps_the_old_content_when_the_write_fails(tmp_path):
    state = tmp_path / "sweep.json"
    atomic_write_text(state, '{"old": 1}')

    with pytest.raises(TypeError):
        atomic_write_text(state, 42)  # fails mid-way: not text
    assert json.loads(state.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]  # no temp file left behind


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_gives_a_new_file_the_permissions_open_would_and_keeps_an_old_files(
    tmp_path, umask
):
    before = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "sweep.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
        assert stat.S_IMODE((tmp_path / "sweep.json").stat().st_mode) == stat.S_IMODE(
            (tmp_path / "plain.json").stat().st_mode
        )
        (tmp_path / "sweep.json").chmod(0o640)
        atomic_write_text(tmp_path / "sweep.json", '{"again": 1}')
        assert stat.S_IMODE((tmp_path / "sweep.json").stat().st_mode) == 0o640
    finally:
        os.umask(before)


# --- one small sweep, then damage and resume ---------------------------------------------


@pytest.fixture(scope="module")
def one_trial(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    data = tiny_dataset(root / "photos", count=24)
    exp = tiny_experiment(root, data, tuner={"max_trials": 1})
    with in_project(root):
        assert invoke("sweep", exp).exit_code == 0
    return root, exp


@pytest.mark.parametrize(
    "file, content",
    [
        ("sweep.json", ""),
        ("sweep.json", '{"parent_run_id": "ab'),
        ("oracle.json", '{"ongoing_trials": {'),
        ("trial_0/trial.json", ""),
    ],
)
def test_damaged_state_files_are_one_line_that_suggests_fresh(one_trial, file, content):
    root, exp = one_trial
    path = root / "mlruns" / "tuner" / "tiny" / file
    before = path.read_text()
    path.write_text(content)
    try:
        with (
            in_project(root),
            pytest.raises(PetlocError, match=rf"{file}: damaged sweep state .*run with --fresh"),
        ):
            invoke("sweep", exp)
    finally:
        path.write_text(before)
    with in_project(root):
        assert invoke("sweep", exp).exit_code == 0  # whole again: the sweep continues


def test_a_sweep_already_running_is_refused_at_once(one_trial):
    root, exp = one_trial
    with in_project(root), exclusive_lock(Path("mlruns/tuner/tiny.lock"), "held by the test"):
        with pytest.raises(PetlocError, match="sweep 'tiny' is already running in another process"):
            invoke("sweep", exp, "--fresh")
        # --fresh deleted nothing
        assert (root / "mlruns" / "tuner" / "tiny" / "oracle.json").is_file()


def test_runs_left_running_by_a_dead_process_end_killed_and_live_ones_are_kept(one_trial):
    root, exp = one_trial
    dead = subprocess.Popen(["sleep", "60"])
    dead_owner = runs._owner(dead.pid)
    dead.kill()
    dead.wait()
    client, [parent] = sweep_runs(root)
    experiment_id = parent.info.experiment_id
    with in_project(root):
        store.configure()
        orphan = runs.create_run(
            experiment_id, "orphan", {"mlflow.parentRunId": parent.info.run_id}
        )
        client.set_tag(orphan, vocab.OWNER, dead_owner)
        # this process
        live = runs.create_run(experiment_id, "live", {"mlflow.parentRunId": parent.info.run_id})
        elsewhere = runs.create_run(
            experiment_id, "elsewhere", {"mlflow.parentRunId": parent.info.run_id}
        )
        client.set_tag(elsewhere, vocab.OWNER, "another-host:1:1")
        assert invoke("sweep", exp).exit_code == 0
    ended = client.get_run(orphan)
    assert (
        ended.info.status == "KILLED"
        and f"its process ({dead_owner}) ended" in ended.data.tags["error"]
    )
    assert ended.data.tags["error"].endswith("ended when the sweep was resumed")
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    for run_id in (live, elsewhere):
        client.delete_run(run_id)


# --- run status ----------------------------------------------------------------------------


def test_a_sweep_that_fails_after_its_parent_run_exists_ends_it_failed(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
        (photos / f"bad{i}.txt").write_text("1 1 1 5 5\n")
    exp = tiny_experiment(tmp_path, photos)
    with in_project(tmp_path), pytest.raises(PetlocError, match="no usable images"):
        invoke("sweep", exp)
    _, [parent] = sweep_runs(tmp_path)
    assert parent.info.status == "FAILED"
    assert "no usable images" in parent.data.tags["error"]


def test_a_stop_while_a_new_sweep_logs_its_settings_leaves_its_parent_recorded_and_killed(
    tmp_path, monkeypatch
):
    """The parent run is in sweep.json before its settings go to the store: a Ctrl+C (or a
    store error) in between ends it KILLED, and the next start finds it, not a run nobody knows."""
    from petloc.config import load_experiment
    from petloc.search.state import sweep_state
    from petloc.tracking.sweep_record import SweepRecord

    def stopped(self, exp, fingerprint):
        raise KeyboardInterrupt

    exp = load_experiment(tiny_experiment(tmp_path, tiny_dataset(tmp_path / "photos", count=8)))
    with in_project(tmp_path):
        monkeypatch.setattr(SweepRecord, "log_settings", stopped)
        with pytest.raises(KeyboardInterrupt), sweep_state(exp, fresh=False):
            pass
        _, [parent] = sweep_runs(tmp_path)
        state = json.loads((tmp_path / "mlruns" / "tuner" / exp.name / "sweep.json").read_text())
        assert state["parent_run_id"] == parent.info.run_id and parent.info.status == "KILLED"


# --- several processes, one store ----------------------------------------------------------

OPEN_STORE = "from petloc.tracking import runs, store; store.configure(); runs.experiment_id('e')"


@pytest.mark.slow
def test_processes_opening_a_new_store_together_all_succeed(tmp_path):
    """MLflow migrates a new SQLite store on first open; two processes doing it at once
    crashed one of them ("Online migration expected to match one row")."""
    for attempt in range(3):
        root = tmp_path / str(attempt)
        root.mkdir()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_STORE],
                cwd=root,
                env=petloc_env(),
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.strip().splitlines()[-1]


def test_preparing_a_dataset_never_writes_into_another_process_temp_file(tmp_path):
    """Two processes preparing one new dataset both wrote `<cache>.tmp.npz`, and the first to
    finish renamed the other's half-written file into place."""
    data = tiny_dataset(tmp_path / "photos", count=24)
    cache = tmp_path / "cache"
    cache.mkdir()
    name = f"{dataset_digest(data)[:16]}-48-v{CACHE_VERSION}"
    others = {
        cache / f"{name}.tmp.npz": b"another process, mid-write",
        cache / f".{name}.tmp": b"and another",
    }
    for path, content in others.items():
        path.write_bytes(content)
    arrays = load_arrays(data, 48, cache_dir=cache)
    assert all(path.read_bytes() == content for path, content in others.items())
    # read back from the cache
    assert len(load_arrays(data, 48, cache_dir=cache)) == len(arrays) == 24


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_and_fresh_retires_its_runs(tmp_path):
    """kill -9 mid-trial: the lock is released, the run it left RUNNING ends KILLED with a
    reason, a second start of the same sweep while one runs is refused, and --fresh retires
    the old parent run."""
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(tmp_path, data, train={"epochs": 1000}, tuner={"max_trials": 1})
    client = store_client(tmp_path)
    proc = subprocess.Popen(
        [*PETLOC, "sweep", str(exp)],
        cwd=tmp_path,
        env=petloc_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        trial = _wait_for_training_trial(client, proc)
        second = subprocess.run(
            [*PETLOC, "sweep", str(exp)],
            cwd=tmp_path,
            env=petloc_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "is already running in another process" in second.stderr.strip().splitlines()[-1]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    parent_id = trial.data.tags["mlflow.parentRunId"]
    assert client.get_run(trial.info.run_id).info.status == "RUNNING"  # what kill -9 leaves
    fresh = subprocess.run(
        [*PETLOC, "sweep", str(exp), "train.epochs=1", "--fresh"],
        cwd=tmp_path,
        env=petloc_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fresh.returncode == 0, fresh.stderr
    for run_id in (parent_id, trial.info.run_id):
        old = client.get_run(run_id)
        assert old.info.status == "KILLED"
        assert (
            "ended without closing the run; the sweep was started again with --fresh"
            in old.data.tags["error"]
        )
    assert socket.gethostname() in client.get_run(parent_id).data.tags[vocab.OWNER]


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_in_its_final_run_resumes_that_run(tmp_path):
    """kill -9 after the final run's second epoch: the sweep run again ends that run KILLED as
    an orphan, then resumes it, in the same run, from its last finished epoch."""
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(tmp_path, data, tuner={"max_trials": 1, "final_epochs": 30})
    client = store_client(tmp_path)
    proc = subprocess.Popen(
        [*PETLOC, "sweep", str(exp)],
        cwd=tmp_path,
        env=petloc_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        final = _wait_for_epochs(client, proc, "final", 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    before = len(client.get_metric_history(final.info.run_id, "val/miou"))
    assert before < 30
    again = subprocess.run(
        [*PETLOC, "sweep", str(exp)],
        cwd=tmp_path,
        env=petloc_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert f"final run: resuming run {final.info.run_id} (30 epochs" in again.stdout
    [resumed] = [
        r for r in client.search_runs([final.info.experiment_id], "tags.trial_id = 'final'")
    ]
    assert resumed.info.run_id == final.info.run_id and resumed.info.status == "FINISHED", (
        resumed.data.tags.get("error")
    )
    steps = [m.step for m in client.get_metric_history(final.info.run_id, "val/miou")]
    # Each epoch once, but the one the kill may have caught between its metrics and its backup.
    assert (
        sorted(set(steps)) == list(range(1, 31))
        and len(steps) <= 31
        and resumed.data.metrics["epochs_trained"] == 30.0
    )


def _wait_for_epochs(client, proc, trial_id, epochs, timeout=240):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            experiment = client.get_experiment_by_name("tiny")
            found = (
                client.search_runs([experiment.experiment_id], f"tags.trial_id = '{trial_id}'")
                if experiment
                else []
            )
            if found and len(client.get_metric_history(found[0].info.run_id, "val/miou")) >= epochs:
                return found[0]
        except Exception:  # noqa: BLE001  (the other process is still creating the store)
            pass
    raise AssertionError(
        f"no {trial_id} run trained {epochs} epochs: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
    )


def _wait_for_training_trial(client, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(2)
        try:
            experiment = client.get_experiment_by_name("tiny")
            runs = (
                client.search_runs([experiment.experiment_id], "tags.trial_id = '0'")
                if experiment
                else []
            )
            if runs and client.get_metric_history(runs[0].info.run_id, "val/miou"):
                return runs[0]
        except Exception:  # noqa: BLE001  (the other process is still creating the store)
            pass
    raise AssertionError(
        f"no trial started: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
    )


@pytest.mark.slow
def test_two_different_sweeps_started_together_on_a_new_store_both_finish(tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=24)
    exp = tiny_experiment(tmp_path, data, space={"head_units": [8, 16]}, tuner={"max_trials": 2})
    procs = [
        subprocess.Popen(
            [*PETLOC, "sweep", str(exp), f"name={name}"],
            cwd=tmp_path,
            env=petloc_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.strip().splitlines()[-1:]
        assert "(2 finished, 0 failed" in out
    client = store_client(tmp_path)
    [experiment] = [e for e in client.search_experiments() if e.name == "tiny"]
    parents = client.search_runs([experiment.experiment_id], "tags.`petloc.kind` = 'sweep'")
    assert sorted(p.info.status for p in parents) == ["FINISHED", "FINISHED"]
