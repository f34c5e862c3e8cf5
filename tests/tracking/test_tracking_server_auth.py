"""The tracking server's door: `petloc tracking-server --auth` (MLflow's basic-auth app) on a
real server, SQLite and PostgreSQL. Nobody without a password reads or changes anything, a
READ user deletes nothing, a sweep's processes log with their user's credentials, and a
refused client is one line before anything is created. Serving beyond this machine is a
choice said out loud: --auth or --no-auth."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import threading
from collections import Counter

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.tracking import store
from tests.helpers import (
    PETLOC,
    free_port,
    in_project,
    invoke,
    petloc_env,
    petloc_process,
    tiny_dataset,
    tiny_experiment,
)
from tests.servers import stop_process_group, tracking_server

ADMIN_PASSWORD = "first-admin-secret-1"  # MLflow wants 12 characters at least
READER, READER_PASSWORD = "reader", "reader-secret-123"


@pytest.fixture
def no_credentials(monkeypatch):
    """No user, token or auth settings from the shell; whatever a test's commands set is undone after it."""
    for name in (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_AUTH_CONFIG_PATH",
    ):
        monkeypatch.setenv(name, "")  # recorded, so restored (or removed) after the test
        monkeypatch.delenv(name)


def auth_server(backend: str, tmp_path, **kw):
    """`petloc tracking-server --auth` with the admin's first password in the environment."""
    env = {**petloc_env(), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH"):
        env.pop(name, None)
    return tracking_server(
        backend, tmp_path / "server-artifacts", env=env, options=("--auth",), **kw
    )


def as_user(monkeypatch, name: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def user_env(uri: str, name: str, password: str) -> dict:
    return {
        **petloc_env(),
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_TRACKING_USERNAME": name,
        "MLFLOW_TRACKING_PASSWORD": password,
    }


# ---- the door, before anything starts -----------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serving_other_machines_without_auth_or_no_auth_is_refused(tmp_path, host):
    with (
        in_project(tmp_path),
        pytest.raises(
            PetlocError,
            match=re.escape(f"--host {host} lets other machines in: add --auth") + ".*or --no-auth",
        ),
    ):
        invoke("tracking-server", "--host", host, "--port", free_port())
    assert not (tmp_path / "mlruns").exists()  # refused before the store is made


def test_no_auth_said_out_loud_opens_the_door(tmp_path):
    with socket.create_server(("0.0.0.0", 0)) as taken, in_project(tmp_path):
        port = taken.getsockname()[1]
        # past the door: the next check
        with pytest.raises(PetlocError, match=f"port {port} on 0.0.0.0 is taken"):
            invoke("tracking-server", "--host", "0.0.0.0", "--no-auth", "--port", port)


@pytest.mark.slow  # a new store and auth database, migrated
def test_auth_without_the_admins_first_password_is_refused(tmp_path, no_credentials, monkeypatch):
    backend = f"sqlite:///{tmp_path}/mlflow.db"
    # A temporary folder of its own: servers of other tests write and remove their own files
    # in the shared one meanwhile.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with pytest.raises(
        PetlocError,
        match="--auth: the admin user 'admin' does not exist yet: give its first password "
        "in MLFLOW_AUTH_ADMIN_PASSWORD or with --admin-password-file FILE",
    ):
        invoke("tracking-server", "--auth", "--backend", backend, "--port", free_port())
    # petloc's basic_auth.ini removed
    assert list(private.glob("petloc-auth-*.ini")) == []


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda path: path.write_text(""), "empty"),
        (
            lambda path: os.mkfifo(path),
            "not a regular file",
        ),  # read, it would wait for a writer forever
        (lambda path: path.mkdir(), "not a regular file"),
        (lambda path: path.write_text("x" * 5000), "over 4096 bytes"),
        (lambda path: None, "No such file"),
    ],
)
def test_a_bad_admin_password_file_is_one_line(tmp_path, no_credentials, make, says):
    path = tmp_path / "admin-password"
    make(path)
    with pytest.raises(PetlocError, match=f"--admin-password-file {path}: {says}"):
        invoke(
            "tracking-server",
            "--auth",
            "--admin-password-file",
            path,
            "--backend",
            f"sqlite:///{tmp_path}/m.db",
        )


@pytest.mark.slow  # a new store and auth database, migrated
def test_a_short_admin_password_is_one_line_naming_petlocs_ways(
    tmp_path, no_credentials, monkeypatch
):
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "short")
    with pytest.raises(
        PetlocError,
        match=r"--auth: .*at least 12 characters.*MLFLOW_AUTH_ADMIN_PASSWORD or "
        "--admin-password-file",
    ) as err:
        invoke(
            "tracking-server",
            "--auth",
            "--backend",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--port",
            free_port(),
        )
    assert "short" not in str(err.value)  # the password is never said


def test_auth_options_without_auth_are_refused(tmp_path):
    with pytest.raises(PetlocError, match="go with --auth"):
        invoke(
            "tracking-server",
            "--default-permission",
            "EDIT",
            "--backend",
            f"sqlite:///{tmp_path}/mlflow.db",
        )


# ---- on the real server -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/mlflow.db"
    return request.getfixturevalue("postgres").new_database()


API = "/api/2.0/mlflow"


@pytest.mark.slow  # a tracking server (SQLite, then PostgreSQL)
def test_nobody_without_a_password_gets_in_and_a_read_user_deletes_nothing(
    backend, tmp_path, no_credentials
):
    with auth_server(backend, tmp_path) as uri:
        # Without credentials: every API call is refused, reads, writes, deletes and uploads alike.
        anonymous = [
            requests.get(f"{uri}{API}/experiments/search", params={"max_results": 1}),
            requests.post(f"{uri}{API}/experiments/create", json={"name": "intruder"}),
            requests.post(f"{uri}{API}/experiments/delete", json={"experiment_id": "0"}),
            requests.delete(f"{uri}{API}/registered-models/delete", json={"name": "petloc"}),
            requests.put(f"{uri}/api/2.0/mlflow-artifacts/artifacts/0/x/big.bin", data=b"x" * 1024),
        ]
        assert [answer.status_code for answer in anonymous] == [401] * 5
        wrong = requests.get(
            f"{uri}{API}/experiments/search", params={"max_results": 1}, auth=("admin", "guess")
        )
        assert wrong.status_code == 401

        # The admin (its first password from the environment) makes a user, an experiment and a model.
        admin_env = {
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
        }
        with pytest.MonkeyPatch.context() as mp:
            for name, value in admin_env.items():
                mp.setenv(name, value)
            get_app_client("basic-auth", tracking_uri=uri).create_user(READER, READER_PASSWORD)
            admin = MlflowClient(uri, registry_uri=uri)
            experiment_id = admin.create_experiment("team")
            admin.create_registered_model("team-model")

        with pytest.MonkeyPatch.context() as mp:
            as_user(mp, READER, READER_PASSWORD)
            reader = MlflowClient(uri, registry_uri=uri)
            # READ: sees what others made...
            assert reader.get_experiment(experiment_id).name == "team"
            assert reader.get_registered_model("team-model").name == "team-model"
            for delete in (
                lambda: reader.delete_experiment(experiment_id),
                lambda: reader.delete_registered_model("team-model"),
                lambda: reader.create_run(experiment_id),
            ):
                # ...and changes none of it
                with pytest.raises(MlflowException, match="error code 403"):
                    delete()
        with pytest.MonkeyPatch.context() as mp:
            for name, value in admin_env.items():
                mp.setenv(name, value)
            assert admin.get_experiment(experiment_id).lifecycle_stage == "active"
            assert admin.get_registered_model("team-model").name == "team-model"
            assert admin.get_experiment_by_name("intruder") is None
            # The README's grant: EDIT on one experiment lets the user log there, and still not delete.
            get_app_client("basic-auth", tracking_uri=uri).grant_user_permission(
                READER, "experiment", experiment_id, "EDIT"
            )
        with pytest.MonkeyPatch.context() as mp:
            as_user(mp, READER, READER_PASSWORD)
            assert reader.create_run(experiment_id).info.experiment_id == experiment_id
            with pytest.raises(MlflowException, match="error code 403"):
                reader.delete_experiment(experiment_id)


@pytest.mark.slow  # a tracking server and petloc processes
def test_a_refused_client_is_one_line_before_anything_is_created(tmp_path, no_credentials):
    data = tiny_dataset(tmp_path / "data", count=16)
    exp = tiny_experiment(tmp_path, data, tracking={"experiment": "refused"})
    with auth_server(f"sqlite:///{tmp_path}/store/mlflow.db", tmp_path) as uri:
        wrong = petloc_process(
            "sweep",
            exp,
            "--workers",
            "2",
            cwd=tmp_path,
            env=user_env(uri, "admin", "not-the-password"),
        )
        anonymous = petloc_process(
            "train", exp, cwd=tmp_path, env={**petloc_env(), "MLFLOW_TRACKING_URI": uri}
        )
        with pytest.MonkeyPatch.context() as mp:
            as_user(mp, "admin", ADMIN_PASSWORD)
            # nothing made on the server
            assert MlflowClient(uri).get_experiment_by_name("refused") is None
    assert (wrong.returncode, anonymous.returncode) == (2, 2)
    assert wrong.stderr.strip().splitlines() == [
        f"petloc: error: the tracking server at {uri} refused the credentials of admin "
        "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD): wrong password, or no such user"
    ]
    assert anonymous.stderr.strip().splitlines() == [
        f"petloc: error: the tracking server at {uri} needs a user: set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (its admin creates users)"
    ]
    assert "sweep with 2 worker" not in wrong.stdout  # refused before any process started
    assert not (tmp_path / "mlruns").exists()  # no sweep folder, no local store instead


@pytest.mark.slow  # a tracking server and a petloc process
def test_a_user_without_edit_permission_is_told_which_permission_is_missing(
    tmp_path, no_credentials
):
    data = tiny_dataset(tmp_path / "data", count=16)
    exp = tiny_experiment(tmp_path, data, tracking={"experiment": "theirs"})
    with auth_server(f"sqlite:///{tmp_path}/store/mlflow.db", tmp_path) as uri:
        with pytest.MonkeyPatch.context() as mp:
            as_user(mp, "admin", ADMIN_PASSWORD)
            get_app_client("basic-auth", tracking_uri=uri).create_user(READER, READER_PASSWORD)
            MlflowClient(uri).create_experiment("theirs")  # the admin's: the reader has READ on it
        done = petloc_process(
            "train", exp, cwd=tmp_path, env=user_env(uri, READER, READER_PASSWORD)
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"petloc: error: the tracking server {uri} refused /api/2.0/mlflow/runs/create to user {READER}: it needs "
        "EDIT permission on the experiment, which an admin or the experiment's manager grants"
    ]


@pytest.mark.slow  # PostgreSQL, a tracking server and a sweep of three processes
def test_a_sweep_with_two_workers_logs_through_the_door_with_a_users_credentials(
    postgres, tmp_path, no_credentials
):
    data = tiny_dataset(tmp_path / "photos", count=40)
    exp = tiny_experiment(
        tmp_path,
        data,
        space={"head_units": [8, 16]},
        tuner={"max_trials": 2},
        tracking={"experiment": "alices-sweep"},
        registry={"name": "alices-model"},
    )
    with auth_server(postgres.new_database(), tmp_path, workers=2) as uri:
        with pytest.MonkeyPatch.context() as mp:
            as_user(mp, "admin", ADMIN_PASSWORD)
            get_app_client("basic-auth", tracking_uri=uri).create_user("alice", "alice-secret-123")
        done = subprocess.run(
            [*PETLOC, "sweep", str(exp), "--workers", "2"],
            cwd=tmp_path,
            env=user_env(uri, "alice", "alice-secret-123"),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with pytest.MonkeyPatch.context() as mp:
            as_user(mp, "alice", "alice-secret-123")
            client = MlflowClient(uri, registry_uri=uri)
            found = client.get_experiment_by_name("alices-sweep")
            trials = client.search_runs([found.experiment_id], "tags.trial_id != ''")
            champion = client.get_model_version_by_alias("alices-model", "champion")
    assert Counter(run.data.tags["trial_id"] for run in trials) == {"0": 1, "1": 1}
    assert {run.info.status for run in trials} == {"FINISHED"}
    assert {run.data.tags["petloc.worker"] for run in trials} <= {"1", "2"}
    assert champion.version == "1"
    assert "Leaderboard of sweep 'tiny' (2 finished, 0 failed" in done.stdout


# ---- one line, not a URL clients cannot parse or a wrong hint -------------------------------


@pytest.mark.slow  # a tracking server
def test_an_ipv6_host_is_printed_in_brackets_and_clients_use_it(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            *PETLOC,
            "tracking-server",
            "--host",
            "::1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--artifacts",
            str(tmp_path / "a"),
        ],
        cwd=tmp_path,
        env=petloc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    uri = f"http://[::1]:{port}"
    printed: list[str] = []
    try:
        # petloc's own "ready" line, not our /health poll: ours can win the race and stop the
        # server before petloc's poll has seen it up
        printed = lines_until(server.stdout, "ready at", seconds=180)
        store.configure(uri)  # the start check, through the printed URI
        assert MlflowClient(uri).create_experiment("over-ipv6")
    finally:
        stop_process_group(server)
    out = "".join(printed)
    assert f"export MLFLOW_TRACKING_URI={uri} " in out
    assert f"ready at {uri} " in out


def lines_until(stream, text: str, seconds: float) -> list[str]:
    """The lines of `stream` up to the first holding `text`; fails after `seconds` or at its end."""
    lines: list[str] = []

    def read() -> None:
        for line in stream:
            lines.append(line)
            if text in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    assert lines and text in lines[-1], f"no line with {text!r} in {seconds} s: {''.join(lines)}"
    return lines


def test_ui_on_a_taken_port_is_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken, in_project(tmp_path):
        port = taken.getsockname()[1]
        with pytest.raises(PetlocError, match=f"port {port} on 127.0.0.1 is taken"):
            invoke("ui", "--port", port)


def test_ui_beyond_this_machine_needs_no_auth_said_out_loud(tmp_path):
    with in_project(tmp_path):
        with pytest.raises(
            PetlocError,
            match=re.escape(
                "--host 0.0.0.0 lets other machines change and delete every run and model: "
                "share the store with petloc tracking-server --auth, or say --no-auth"
            ),
        ):
            invoke("ui", "--host", "0.0.0.0", "--port", free_port())
        assert not (tmp_path / "mlruns").exists()
        # said: past the door, to the next check
        with socket.create_server(("0.0.0.0", 0)) as taken:
            port = taken.getsockname()[1]
            with pytest.raises(PetlocError, match=f"port {port} on 0.0.0.0 is taken"):
                invoke("ui", "--host", "0.0.0.0", "--no-auth", "--port", port)
