"""Where MLflow data lives. Kept free of TensorFlow so `petloc ui` and `petloc models` start fast.

The local store is `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts/`;
`MLFLOW_TRACKING_URI` (or `tracking.uri` in the experiment file) points elsewhere.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from petloc.files import waiting_lock

STORE_DIR = Path("mlruns")


def default_uri() -> str:
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def configure(uri: str | None = None) -> str:
    """Points MLflow at `uri` (an experiment's tracking.uri), else $MLFLOW_TRACKING_URI, else
    the project's local store."""
    # Download progress bars would land in `predict --json` output; petloc prints its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # quiet the store's migrations
    if uri.startswith("sqlite:///") and uri not in _OPENED:
        _open_sqlite_store(uri)
        _OPENED.add(uri)
    return uri


_OPENED: set[str] = set()  # SQLite stores this process has created or checked already


def _open_sqlite_store(uri: str) -> None:
    """Create or migrate the SQLite store one process at a time.

    Two processes opening a new store at once both run MLflow's schema migration, and one
    of them crashes ("Online migration expected to match one row"). MLflow keeps the opened
    stores for the life of the process, so later calls here cost no lock.
    """
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with waiting_lock(db.with_name(db.name + ".lock")):
        client = MlflowClient(uri, uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
