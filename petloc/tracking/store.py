"""Where MLflow data lives. Kept free of TensorFlow so `petloc ui` and `petloc models` start fast.

The local store is `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts/`;
`MLFLOW_TRACKING_URI` (or `tracking.uri` in the experiment file) points elsewhere, for
instance at a tracking server (`petloc tracking-server`): checked to answer before use, its
calls retried through short outages.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.files import waiting_lock

STORE_DIR = Path("mlruns")

# MLflow's client retries for a tracking server, as petloc sets them unless the user has:
# a refused or failed call (server restarting, 5xx) is tried again after 0, 2, 4, 8, 16 and
# 32 s (+ up to 1 s jitter each), so an outage of up to about a minute mid-trial is ridden
# out and a longer one fails the call after about 62-67 s. A server that accepts but does
# not answer costs up to 30 s per attempt (the slowest answer under 64 clients logging flat
# out, on the server's own 2 busy cores, took 6 s: benchmarks/tracking_load.py). MLflow's
# own defaults (7 retries, factor 2, 120 s) wait about 4 minutes on a dead server and 18 on
# a hung one.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
SERVER_CHECK_SECONDS = 5


def default_uri() -> str:
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def configure(uri: str | None = None, label: str | None = None) -> str:
    """Points MLflow at `uri` (an experiment's tracking.uri), else $MLFLOW_TRACKING_URI, else
    the project's local store. `label` names where the URI came from in errors."""
    # Download progress bars would land in `predict --json` output; petloc prints its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if label is None:
        label = "tracking.uri" if uri else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "store"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # quiet the store's migrations
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if uri not in _OPENED:
        check_store(uri, label)
        _OPENED.add(uri)
    return uri


_OPENED: set[str] = set()  # stores this process has created or checked already
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # with or without a driver: postgresql+psycopg


def check_store(uri: str, label: str) -> None:
    """One line naming `label` and the URI, before anything is created, when petloc cannot use
    the store: an unknown scheme (MLflow 3's file store has no registry), a SQLite file that
    cannot be made, a database or a tracking server that does not answer."""
    scheme = uri.partition(":")[0].partition("+")[0].lower() if ":" in uri else ""
    if scheme == "sqlite" and uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        _open_sqlite_store(uri, label)
    elif scheme in ("http", "https"):
        _check_server(uri)
    elif scheme in DATABASE_SCHEMES:
        _check_database(uri, label)
    else:
        raise PetlocError(f"{label} {shown_uri(uri)}: not a store petloc can use; give sqlite:///PATH/mlflow.db, "
                          "postgresql://USER@HOST:5432/DB or http://HOST:PORT (a tracking server)")


def is_database_uri(uri: str) -> bool:
    scheme = uri.partition(":")[0].partition("+")[0].lower()
    return ":" in uri and (scheme in DATABASE_SCHEMES or scheme == "sqlite")


def _check_database(uri: str, label: str) -> None:
    """Connect once; one line when the driver is missing or the database does not answer
    (MLflow's own store would retry for minutes)."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = shown_uri(uri)
    # A host that drops packets would otherwise hold the check for minutes.
    timeout = {"connect_timeout": 10} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool)
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise PetlocError(f"{label} {shown}: not a database URI; use sqlite:///PATH/mlflow.db or "
                          "postgresql://USER@HOST:5432/DB") from None
    except ImportError as err:
        raise PetlocError(f"{label} {shown}: its database driver is not installed ({err.name}): pip install it") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as err:
        raise PetlocError(f"{label} {shown}: cannot connect ({first_line(getattr(err, 'orig', None) or err)})") from None
    finally:
        engine.dispose()


def shown_uri(uri: str) -> str:
    """The URI with any password hidden, for messages."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_server(uri: str) -> None:
    """One line, before anything is created, when the tracking server does not answer."""
    import requests

    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1")
    verify = False if insecure else os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", True)  # as MLflow's client
    base = uri.rstrip("/")
    try:
        answer = requests.get(f"{base}/health", timeout=SERVER_CHECK_SECONDS, verify=verify)
        if answer.status_code < 500:  # it answers (a login page is an answer too)
            _check_host_accepted(base, verify)
            return
        reason = f"HTTP {answer.status_code}"
    except requests.RequestException as err:
        reason = _reason(err)
    raise PetlocError(f"tracking server {uri} does not answer ({reason}): start it (petloc tracking-server), "
                      "or fix tracking.uri in the experiment file / MLFLOW_TRACKING_URI")


def _check_host_accepted(base: str, verify) -> None:
    """MLflow's server answers /health to anyone but refuses API calls (403) whose Host is a
    name it was not told about: every later call would fail, so say so now."""
    import requests

    answer = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                          timeout=SERVER_CHECK_SECONDS, verify=verify)
    if answer.status_code == 403 and "Host header" in answer.text:
        host = urlparse(base).hostname
        raise PetlocError(f"tracking server {base} refuses the host name {host}: start it with "
                          f"petloc tracking-server --allowed-hosts {host} (or mlflow server --allowed-hosts), or use its IP address")


def _reason(err: Exception) -> str:
    """The cause a user acts on, without requests' and urllib3's wrapping."""
    import requests

    if isinstance(err, requests.Timeout):
        return f"no answer within {SERVER_CHECK_SECONDS} s"
    cause = err.args[0] if err.args else err
    cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError holds the real one
    text = str(cause)
    if text.startswith("HTTP"):  # "HTTPConnection(host=..., port=...): Failed to ..."
        text = text.split("): ", 1)[-1]
    return text.splitlines()[0] if text else type(err).__name__


def _open_sqlite_store(uri: str, label: str) -> None:
    """Create or migrate the SQLite store one process at a time.

    Two processes opening a new store at once both run MLflow's schema migration, and one
    of them crashes ("Online migration expected to match one row"). MLflow keeps the opened
    stores for the life of the process, so later calls here cost no lock.
    """
    db = Path(uri.removeprefix("sqlite:///").partition("?")[0])
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with waiting_lock(db.with_name(db.name + ".lock")):
            client = MlflowClient(uri, uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
    except Exception as err:  # MLflow wraps the database's errors (locked, read-only, not a database) in its own
        raise PetlocError(f"{label} {uri}: cannot open the store ({first_line(err)})") from None
