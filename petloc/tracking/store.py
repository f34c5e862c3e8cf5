"""Where MLflow data lives. Kept free of TensorFlow so `petloc ui` and `petloc models` start fast.

The local store is `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts/`;
`MLFLOW_TRACKING_URI` (or `tracking.uri` in the experiment file) points elsewhere, for
instance at a tracking server (`petloc tracking-server`): checked to answer before use, its
calls retried through short outages.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc.errors import PetlocError
from petloc.files import waiting_lock

STORE_DIR = Path("mlruns")

# MLflow's client retries for a tracking server, as petloc sets them unless the user has:
# a refused or failed call (server restarting, 5xx) is tried again after 0, 2, 4, 8, 16 and
# 32 s (+ up to 1 s jitter each), so an outage of up to about a minute mid-trial is ridden
# out and a longer one fails the call after about a minute. A server that accepts but does
# not answer costs up to 30 s per attempt, well above its slowest answers under load
# (benchmarks/tracking_load.py). MLflow's own defaults (7 retries, factor 2, 120 s) wait
# minutes on a dead server and far longer on a hung one.
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
        label = (
            "tracking.uri"
            if uri
            else "MLFLOW_TRACKING_URI"
            if os.environ.get("MLFLOW_TRACKING_URI")
            else "store"
        )
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
# Drivers petloc offers as an extra (pyproject's optional dependencies), by the module SQLAlchemy imports.
DRIVER_EXTRAS = {"psycopg": "pip install 'petloc[postgres]'"}


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
        raise PetlocError(
            f"{label} {shown_uri(uri)}: not a store petloc can use; give sqlite:///PATH/mlflow.db, "
            "postgresql://USER@HOST:5432/DB or http://HOST:PORT (a tracking server)"
        )


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
        engine = sqlalchemy.create_engine(
            uri, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool
        )
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise PetlocError(
            f"{label} {shown}: not a database URI; use sqlite:///PATH/mlflow.db or "
            "postgresql://USER@HOST:5432/DB"
        ) from None
    except ImportError as err:
        hint = DRIVER_EXTRAS.get(err.name or "", "pip install it")
        raise PetlocError(
            f"{label} {shown}: its database driver is not installed ({err.name}): {hint}"
        ) from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as err:
        raise PetlocError(
            f"{label} {shown}: cannot connect ({first_line(getattr(err, 'orig', None) or err)})"
        ) from None
    finally:
        engine.dispose()


def tracking_uri() -> str:
    """The tracking URI MLflow uses now, password hidden, for messages."""
    return shown_uri(mlflow.get_tracking_uri())


def shown_uri(uri: str) -> str:
    """The URI with any password hidden, for messages."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # not a URL it parses (a bad port)
        return uri


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_server(uri: str) -> None:
    """One line, before anything is created, when the tracking server does not answer, or
    refuses this client's host name or credentials."""
    import requests

    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1")
    # as MLflow's client
    verify = False if insecure else os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", True)
    base = uri.rstrip("/")
    try:
        answer = requests.get(f"{base}/health", timeout=SERVER_CHECK_SECONDS, verify=verify)
        if answer.status_code < 500:  # it answers (a login page is an answer too)
            _check_api_call(base)
            return
        reason = f"HTTP {answer.status_code}"
    except requests.RequestException as err:
        reason = _reason(err)
    # the API call, made by MLflow's client, found no server after all
    except MlflowException as err:
        reason = str(err).splitlines()[0][:200]
    raise PetlocError(
        f"tracking server {shown_uri(uri)} does not answer ({reason}): start it (petloc tracking-server), "
        "or fix tracking.uri in the experiment file / MLFLOW_TRACKING_URI"
    )


def _check_api_call(base: str) -> None:
    """/health answers anyone; an API call is where MLflow's server checks the Host header (a
    guard against DNS rebinding) and, with basic auth, the user. Made as MLflow's client makes
    every later call (its credentials, token, certificates), so a refusal is found now."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    answer = http_request(
        get_default_host_creds(base),
        "/api/2.0/mlflow/experiments/search",
        "GET",
        max_retries=0,
        timeout=SERVER_CHECK_SECONDS,
        params={"max_results": 1},
    )
    if answer.status_code == 401:
        raise PetlocError(_credentials_refused(base))
    if answer.status_code == 403 and "Host header" in answer.text:
        raise PetlocError(_host_refused(base))


def _credentials_refused(base: str) -> str:
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(base)
    if creds.username:
        return (
            f"the tracking server at {base} refused the credentials of {creds.username} "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD): wrong password, or no such user"
        )
    if creds.token:
        return f"the tracking server at {base} refused the token in MLFLOW_TRACKING_TOKEN"
    return (
        f"the tracking server at {base} needs a user: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
        "(its admin creates users)"
    )


def _host_refused(base: str) -> str:
    """MLflow accepts only localhost, private addresses and the names it was given: a name, or a
    public address, must be on the server's allowed-hosts list."""
    host = urlparse(base).hostname or ""  # none: not an address either
    try:
        ipaddress.ip_address(host)
        what = "the address"
    except ValueError:
        what = "the host name"
    return (
        f"tracking server {base} refuses {what} {host} (not on its allowed-hosts list): start it with "
        f"petloc tracking-server --allowed-hosts {host} (or mlflow server --allowed-hosts)"
    )


def refusal(err: BaseException) -> str | None:
    """One line for a call the tracking server refused after the start: the credentials (401),
    or a permission the user lacks on an experiment or registered model (403); else None."""
    status, endpoint = _refused_call(err)
    if status == 401:
        return _credentials_refused(mlflow.get_tracking_uri().rstrip("/"))
    if status != 403 or endpoint is None or "Host header" in str(err):
        return None
    from mlflow.utils.credentials import get_default_host_creds

    user = get_default_host_creds(mlflow.get_tracking_uri()).username or "this client"
    permission, resource = _permission_needed(endpoint)
    return (
        f"the tracking server {tracking_uri()} refused {endpoint} to user {user}: it needs "
        f"{permission} permission on the {resource}, which an admin or the {resource}'s manager grants"
    )


def _refused_call(err: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and API path of a refused call, from MLflow's REST client or its artifact uploads."""
    import requests

    if isinstance(err, requests.HTTPError) and err.response is not None:
        return err.response.status_code, urlparse(err.response.url).path
    found = (
        re.search(r"endpoint (\S+) failed with error code (\d+)", str(err))
        if isinstance(err, MlflowException)
        else None
    )
    return (int(found[2]), found[1]) if found else (None, None)


def _permission_needed(endpoint: str) -> tuple[str, str]:
    """MLflow's levels: READ reads, EDIT logs and updates, MANAGE also deletes and grants."""
    resource = (
        "registered model"
        if re.search(r"registered-models|model-versions", endpoint)
        else "experiment"
    )
    if "mlflow-artifacts" in endpoint:
        return "EDIT", "experiment"  # an artifact's upload
    action = endpoint.rstrip("/").rsplit("/", 1)[-1]
    if "delete" in action:
        return "MANAGE", resource
    if action.startswith(("get", "search", "list")):
        return "READ", resource
    return "EDIT", resource


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
    # MLflow wraps the database's errors (locked, read-only, not a database) in its own; the
    # folder and the lock add OSError and UnreadableFile.
    except Exception as err:  # noqa: BLE001  (see above)
        raise PetlocError(
            f"{label} {shown_uri(uri)}: cannot open the store ({first_line(err)})"
        ) from None
