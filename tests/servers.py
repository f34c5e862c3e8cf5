"""Real servers for the tests and benchmarks, started and stopped by context managers:
a throwaway PostgreSQL cluster and a `petloc tracking-server` process, both on 127.0.0.1.

    with postgres_cluster() as backend, tracking_server(backend, tmp / "artifacts") as uri:
        ...  # MLFLOW_TRACKING_URI=uri

Each cleans up after itself, also when the block fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

SERVER_START_SECONDS = 180  # a first start migrates a new database: 10-40 s on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- PostgreSQL ---------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder of Debian's initdb and pg_ctl (newest version), installing PostgreSQL as
    root when it is missing; skips the test when it is missing and we are not root."""
    found = _postgres_bin()
    if found is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
        found = _postgres_bin()
    if found is None:
        pytest.skip(
            "PostgreSQL is not installed (initdb not found) and installing it needs root: apt-get install postgresql"
        )
    return found


def _postgres_bin() -> Path | None:
    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class Postgres:
    """A running cluster on 127.0.0.1:port; `new_database()` gives a fresh database's URI."""

    def __init__(self, port: int, data: Path):
        self.port = port
        self.data = data  # its data folder: postmaster.pid names the server process

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def new_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"petloc_{uuid.uuid4().hex[:12]}"
        # autocommit: CREATE DATABASE refuses to run inside a transaction
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextmanager
def postgres_server(durable: bool = False):
    """A throwaway PostgreSQL cluster in a temp folder, trust auth, listening on a free port of
    127.0.0.1 only (its socket inside the folder). `durable=False` turns fsync off: the tests
    do not survive power cuts, and initdb and commits are much quicker."""
    bindir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="petloc-pg-"))  # in /tmp: the postgres user must reach it
    data, log = folder / "data", folder / "server.log"
    as_owner = _as_postgres_user(folder)
    port = free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    started = False
    try:
        _run(
            [
                *as_owner,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        _run(
            [
                *as_owner,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            "pg_ctl start",
            log,
        )
        started = True
        yield Postgres(port, data)
    finally:
        if started:
            subprocess.run(
                [*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_cluster(durable: bool = False):
    """A throwaway cluster, as `postgres_server`; yields the SQLAlchemy URI of a new database in it."""
    with postgres_server(durable) as server:
        yield server.new_database()


def _as_postgres_user(folder: Path) -> list[str]:
    """initdb refuses to run as root: as root, the `postgres` user owns `folder` and runs the
    binaries; any other user runs them as itself."""
    if os.geteuid() != 0:
        return []
    shutil.chown(folder, "postgres", "postgres")
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        extra = log.read_text() if log and log.exists() else ""
        pytest.fail(
            f"{what} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n{extra}",
            pytrace=False,
        )


# ---- petloc tracking-server ---------------------------------------------------------------


@contextmanager
def tracking_server(
    backend_uri: str,
    artifacts_dir: Path,
    port: int | None = None,
    workers: int = 1,
    env: dict | None = None,
    options: tuple[str, ...] = (),
):
    """`petloc tracking-server` on `backend_uri`, artifacts proxied to `artifacts_dir`, on a
    free (or the given) port of 127.0.0.1; yields its http URI once /health answers.
    One web worker by default: it starts in half the time of 4, and a test is one client."""
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "petloc",
        "tracking-server",
        "--backend",
        backend_uri,
        "--artifacts",
        str(artifacts_dir),
        "--port",
        str(port),
        "--workers",
        str(workers),
        *options,
    ]
    logs = Path(tempfile.mkdtemp(prefix="petloc-server-"))
    env = {k: v for k, v in (env or os.environ).items() if k != "MLFLOW_TRACKING_URI"}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves this machine
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        # A session of its own: the server's uvicorn workers are stopped with it, never left behind.
        server = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
    try:
        _wait_until_healthy(uri, server, logs)
        yield uri
    finally:
        stop_process_group(server)
        shutil.rmtree(logs, ignore_errors=True)


def healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


def _wait_until_healthy(uri: str, server: subprocess.Popen, logs: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if healthy(uri):
            return
        if server.poll() is not None:
            break
        time.sleep(0.5)
    state = (
        f"exited with code {server.returncode}"
        if server.poll() is not None
        else f"no answer after {SERVER_START_SECONDS} s"
    )
    stop_process_group(server)
    tail = (logs / "stderr").read_text()[-4000:]
    pytest.fail(f"petloc tracking-server at {uri}: {state}. Its stderr:\n{tail}", pytrace=False)


def stop_process_group(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the process (it passes it on to its server), SIGKILL to its group if it lingers."""
    if process.poll() is None:
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, 9)  # what is left of the group we started (uvicorn workers)
    process.wait()
