"""`petloc tracking-server`: a real `mlflow server` on PostgreSQL (or the project's SQLite
store) with proxied artifacts, bound to 127.0.0.1; bad input is one line before anything starts."""

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.tracking import store
from tests.helpers import PETLOC, in_project, invoke, petloc_env, tiny_dataset, tiny_experiment
from tests.servers import free_port, healthy, stop_process_group, tracking_server


def test_backend_that_is_no_database_uri_is_refused():
    with pytest.raises(PetlocError, match="--backend mlruns: not a database URI"):
        invoke("tracking-server", "--backend", "mlruns")


def test_backend_that_does_not_answer_is_refused_with_the_uri():
    uri = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/runs"  # nothing listens there
    with pytest.raises(
        PetlocError,
        match=r"--backend postgresql://postgres:\*\*\*@127.0.0.1:\d+/runs: cannot connect",
    ) as err:
        invoke("tracking-server", "--backend", uri)
    assert "secret" not in str(err.value)  # the password stays out of the message


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PetlocError, match=f"port {port} on 127.0.0.1 is taken"):
            invoke(
                "tracking-server", "--backend", f"sqlite:///{tmp_path}/mlflow.db", "--port", port
            )


@pytest.mark.slow  # a new process
def test_bad_input_is_one_line_exit_2_without_tensorflow():
    code = (
        "import sys\nfrom petloc.cli import main\nsys.argv = ['petloc', 'tracking-server', '--backend', 'nope']\n"
        "try:\n    main()\nexcept SystemExit as end:\n    print(end.code, 'tensorflow' in sys.modules)"
    )
    done = subprocess.run(
        [PETLOC[0], "-c", code], capture_output=True, text=True, timeout=120, env=petloc_env()
    )
    assert done.stdout.split() == ["2", "False"]
    assert done.stderr.strip().splitlines() == [
        "petloc: error: --backend nope: not a database URI; use sqlite:///PATH/mlflow.db or postgresql://USER@HOST:5432/DB"
    ]


@pytest.mark.slow  # PostgreSQL and a tracking server
def test_runs_and_artifacts_go_through_the_server_to_postgres(postgres_uri, tmp_path):
    artifacts = tmp_path / "server-artifacts"
    with tracking_server(postgres_uri, artifacts) as uri:
        client = MlflowClient(uri)
        experiment = client.create_experiment("remote")
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, "backbone", "simple")
        client.log_metric(run.info.run_id, "val/miou", 0.5, step=3)
        (tmp_path / "note.txt").write_text("logged through the server")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run.info.run_id)

        stored = client.get_run(run.info.run_id)
        # clients never touch the server's disk
        assert stored.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert stored.data.params == {"backbone": "simple"} and stored.data.metrics == {
            "val/miou": 0.5
        }
        assert stored.info.status == "FINISHED"
        copy = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
        assert Path(copy).read_text() == "logged through the server"
    [kept] = artifacts.rglob("note.txt")  # the server wrote it under --artifacts
    assert kept.read_text() == "logged through the server"
    # in PostgreSQL
    assert MlflowClient(postgres_uri).get_run(run.info.run_id).data.params == {"backbone": "simple"}


@pytest.mark.slow  # a tracking server
def test_default_store_then_sigterm_stops_server_and_workers(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [*PETLOC, "tracking-server", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=petloc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while (
            not healthy(f"http://127.0.0.1:{port}")
            and time.monotonic() < deadline
            and server.poll() is None
        ):
            time.sleep(0.5)
        assert healthy(f"http://127.0.0.1:{port}")
        assert (tmp_path / "mlruns" / "mlflow.db").is_file()  # the project's store by default
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
        # no web worker left listening (closed connections may linger: REUSEADDR)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        stop_process_group(server)
    assert server.returncode == 0
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in out
    assert f"artifacts in {tmp_path / 'mlruns' / 'artifacts'}" in out
    assert out.strip().endswith("tracking server stopped")


# ---- clients of a tracking server: checked before use, retried through outages -------------


def test_dead_server_is_one_line_naming_it_and_what_to_do():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(
        PetlocError,
        match=f"tracking server {uri} does not answer .*Connection refused"
        ".*petloc tracking-server.*MLFLOW_TRACKING_URI",
    ):
        store.configure(uri)


def test_sweep_and_train_against_a_dead_server_create_nothing(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "data")
    uri = f"http://127.0.0.1:{free_port()}"
    experiment = tiny_experiment(tmp_path, data, tracking={"uri": uri})
    with in_project(tmp_path):
        for command in ("sweep", "train"):
            with pytest.raises(PetlocError, match=f"tracking server {uri} does not answer"):
                invoke(command, experiment)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the variable is checked alike
        with pytest.raises(PetlocError, match=f"tracking server {uri} does not answer"):
            invoke("sweep", tiny_experiment(tmp_path, data))
    assert not (tmp_path / "mlruns").exists()  # no sweep folder, no local store instead


def test_users_retry_settings_win_over_petlocs(tmp_path, monkeypatch):
    for name in store.HTTP_RETRY_DEFAULTS:
        monkeypatch.setenv(name, "")  # restored after the test, whatever configure sets
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    store.configure(f"sqlite:///{tmp_path}/mlflow.db")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert (
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
        == store.HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
    )


@pytest.mark.slow  # PostgreSQL, a tracking server stopped and started again, and a minute of retries
def test_outage_of_half_a_minute_is_ridden_out_and_a_longer_one_fails_within_two(
    postgres_uri, tmp_path, monkeypatch
):
    for name, value in store.HTTP_RETRY_DEFAULTS.items():
        monkeypatch.setenv(name, value)  # petloc's, whatever the shell has
    port, artifacts = free_port(), tmp_path / "artifacts"
    with tracking_server(postgres_uri, artifacts, port=port) as uri:
        store.configure(uri)
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
    outcome = {}

    def log_epoch():  # what a trial does at each epoch's end
        start = time.monotonic()
        client.log_batch(run_id, metrics=[Metric("val/miou", 0.5, int(time.time() * 1000), 1)])
        outcome["seconds"] = time.monotonic() - start

    caller = threading.Thread(target=log_epoch)
    stopped = time.monotonic()
    caller.start()
    time.sleep(20)
    # back after 20 s and the restart's 10-30 s
    with tracking_server(postgres_uri, artifacts, port=port):
        caller.join(timeout=120)
        outage = time.monotonic() - stopped
        assert outcome["seconds"] > 25  # the call waited for the server...
        # ...and landed once
        assert [m.value for m in client.get_metric_history(run_id, "val/miou")] == [0.5]
    start = time.monotonic()
    with pytest.raises(MlflowException, match="Max retries exceeded"):
        client.log_batch(run_id, metrics=[Metric("val/miou", 0.6, int(time.time() * 1000), 2)])
    assert 55 < time.monotonic() - start < 120, f"outage ridden out: {outage:.0f} s"


def api_status(uri: str, host: str) -> int:
    """The HTTP status of an API call to `uri` sent with the Host header `host`."""
    import requests

    return requests.get(
        f"{uri}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        headers={"Host": host},
    ).status_code


@pytest.mark.slow  # two tracking servers
def test_host_names_the_server_refuses_are_one_line_and_allowed_hosts_admits_them(tmp_path):
    backend = f"sqlite:///{tmp_path}/mlflow.db"
    with tracking_server(
        backend, tmp_path / "a", options=("--allowed-hosts", "tracker.example")
    ) as uri:
        port = uri.rsplit(":", 1)[1]
        assert api_status(uri, f"tracker.example:{port}") == 200
        assert api_status(uri, f"127.0.0.1:{port}") == 200  # MLflow's defaults stay
        assert api_status(uri, f"other.example:{port}") == 403
    # a user's own list: only that name
    env = {**petloc_env(), "MLFLOW_SERVER_ALLOWED_HOSTS": "tracker.example:*"}
    with (
        tracking_server(backend, tmp_path / "a", env=env) as uri,
        pytest.raises(PetlocError) as refused,
    ):
        store.configure(uri)
    # An address is refused as a name is: the cure is the list, not "use its IP address".
    assert str(refused.value) == (
        f"tracking server {uri} refuses the address 127.0.0.1 (not on its allowed-hosts list): "
        "start it with petloc tracking-server --allowed-hosts 127.0.0.1 (or mlflow server --allowed-hosts)"
    )
