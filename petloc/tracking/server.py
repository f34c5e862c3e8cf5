"""`petloc tracking-server`: a thin launcher of `mlflow server` for teams without one yet.

Runs and the registry live in a database (`--backend`: the project's SQLite store by
default, PostgreSQL for many workers); artifacts are proxied by the server
(`--artifacts-destination`), so clients log to `mlflow-artifacts:/` and need no access to
the server's disk. Kept free of TensorFlow so it starts in seconds.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from petloc import processes
from petloc.errors import PetlocError
from petloc.tracking import auth as door
from petloc.tracking import store
from petloc.tracking.auth import Auth

DEFAULT_ARTIFACTS = store.STORE_DIR / "artifacts"
STOP_SECONDS = 30  # uvicorn finishes the requests in flight, then exits


def serve(
    backend: str | None,
    artifacts: str | None,
    host: str,
    port: int,
    workers: int,
    allowed_hosts: Sequence[str] = (),
    auth: Auth | Literal[False] | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Check the inputs, start `mlflow server`, tell clients where it is, and run it until
    Ctrl+C or SIGTERM (passed on to the server); returns once the server has stopped.

    `auth`: an Auth for MLflow's basic-auth app, False for none (said out loud: --no-auth), None
    for none on loopback only."""
    door.check_door(host, None if auth is None else bool(auth))
    backend = backend or store.default_uri()
    destination = artifacts_destination(artifacts)
    # a bad password file is one line before anything starts
    password = door.admin_password(auth) if auth else None
    check_port_free(host, port)
    check_backend(backend)
    client_uri = client_uri_of(host, port)
    say(f"MLflow tracking server: runs in {store.shown_uri(backend)}, artifacts in {destination}")
    cmd = mlflow_server_command(backend, destination, host, port, workers) + _allowed_hosts_flag(
        host, allowed_hosts
    )
    env = _server_env(backend)
    config, written = door.config_file(backend, auth) if auth else (None, False)
    try:
        if config:
            settings = door.bootstrap(config, password)
            say(
                "users and permissions: MLflow's basic-auth app in "
                f"{store.shown_uri(settings.database_uri)}, admin user '{settings.admin_username}'; "
                f"a user gets {settings.default_permission} on what others made"
            )
            cmd += ["--app-name", "basic-auth"]
            env = door.server_env(env, config)
        say(
            f"clients: export MLFLOW_TRACKING_URI={client_uri}   (or tracking.uri: {client_uri} in the experiment file)"
        )
        if config:
            say("  and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD of their user")
        _run(subprocess.Popen(cmd, env=env), _local_uri(host, port), client_uri, say)
    finally:
        if written and config:
            config.unlink(missing_ok=True)


def _run(
    server: subprocess.Popen, local_uri: str, client_uri: str, say: Callable[[str], None]
) -> None:
    try:
        _wait_until_ready(server, local_uri)
        say(f"ready at {client_uri}  (Ctrl+C to stop)")
        code = server.wait()
    except KeyboardInterrupt:  # Ctrl+C reaches the server too; SIGTERM reaches only us: pass it on
        _stop(server)
        say("tracking server stopped")
        return
    raise PetlocError(f"mlflow server exited with code {code}; its messages are above")


def mlflow_server_command(
    backend: str, destination: str, host: str, port: int, workers: int
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def _allowed_hosts_flag(host: str, names: Sequence[str]) -> list[str]:
    """MLflow answers API calls only for Host headers of localhost and private IPs (a guard
    against DNS rebinding; /health answers anyone): clients that use a name or a public
    address, as the printed URI does when serving other machines, are refused with a 403.
    Those names (this machine's, or the one bound) are added to MLflow's defaults; a user's
    own MLFLOW_SERVER_ALLOWED_HOSTS is left alone."""
    if host in ("0.0.0.0", "::"):
        names = [*names, socket.gethostname(), socket.getfqdn()]
    elif not door.is_loopback(host):
        names = [*names, host]
    if not names or os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        return []
    from mlflow.server.security_utils import get_default_allowed_hosts

    extra = [pattern for name in dict.fromkeys(names) for pattern in _host_patterns(name)]
    return ["--allowed-hosts", ",".join([*get_default_allowed_hosts(), *extra])]


def _host_patterns(name: str) -> list[str]:
    """Host headers of `name`, without and with a port; an IPv6 address is bracketed, its
    bracket escaped for MLflow's fnmatch."""
    if ":" in name.strip("[]"):
        bare = name.strip("[]")
        return [f"[{bare}]", f"[[]{bare}]:*"]
    return [name, f"{name}:*"]


def artifacts_destination(artifacts: str | None) -> str:
    """Where the server keeps artifacts: a folder (made absolute, so the server's working
    folder does not matter) or a storage URI such as s3://bucket/path, passed as it is."""
    if artifacts and "://" in artifacts:
        return artifacts
    folder = Path(artifacts) if artifacts else DEFAULT_ARTIFACTS
    if folder.exists() and not folder.is_dir():
        raise PetlocError(f"--artifacts {folder}: not a folder")
    return str(folder.resolve())


def check_port_free(host: str, port: int) -> None:
    """Fail in one line before MLflow spends seconds migrating, only for uvicorn to find the port taken."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # as uvicorn binds: TIME_WAIT is no obstacle
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise PetlocError(
                f"port {port} on {host} is taken: is a server already running there? choose another --port"
            ) from None
        raise PetlocError(
            f"--host {host} --port {port}: cannot listen there ({err.strerror or err})"
        ) from None


def check_backend(uri: str) -> None:
    """One line when the backend is no database URI or cannot be used; a SQLite store is
    created (and migrated) under the project's lock, as every petloc command opens it."""
    if not store.is_database_uri(uri):
        raise PetlocError(
            f"--backend {store.shown_uri(uri)}: not a database URI; use sqlite:///PATH/mlflow.db or "
            "postgresql://USER@HOST:5432/DB"
        )
    if uri.startswith("sqlite:///"):
        store.configure(uri, "--backend")
    else:
        store.check_store(uri, "--backend")


def _client_host(host: str) -> str:
    """The host name clients use: bound to every interface, this machine's name; an IPv6
    address in brackets, as URLs write it (http://[::1]:5000)."""
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def client_uri_of(host: str, port: int) -> str:
    return f"http://{_client_host(host)}:{port}"


def _local_uri(host: str, port: int) -> str:
    """Where this machine reaches the server to see it is up."""
    if host in ("0.0.0.0", "::"):
        return f"http://127.0.0.1:{port}"
    return client_uri_of(host, port)


# Each web worker serves up to 40 requests at once (Starlette runs MLflow's Flask app on
# anyio's 40 threads), but SQLAlchemy's default pool opens 15 connections (5 + 10 overflow):
# under many busy clients, requests waited for a connection until they failed with a 400,
# which clients do not retry (benchmarks/tracking_load.py). 5 kept + 35 on demand = one per
# thread; only as many are opened as requests run at once.
DATABASE_POOL = {
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "35",
}


def _server_env(backend: str) -> dict:
    env = {**os.environ}
    if not backend.startswith("sqlite:"):  # SQLite takes no pool settings
        for name, value in DATABASE_POOL.items():
            env.setdefault(name, value)
    # MLflow's job queues serve its GenAI features, which petloc does not use; off, the server
    # starts sooner and leaves nothing behind in /dev/shm.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.pop("MLFLOW_TRACKING_URI", None)  # the server is the store, not a client of one
    # Each web worker would print Starlette's deprecation notes about MLflow's own code.
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return env


def _wait_until_ready(server: subprocess.Popen, uri: str) -> None:
    """Until /health answers (a new database is migrated first: seconds to a minute), or the
    server ends, which `serve` then reports."""
    while server.poll() is None:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut the shutdown short
    processes.stop(server, signal.SIGTERM, STOP_SECONDS)
