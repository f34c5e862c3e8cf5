"""Where MLflow data lives. Kept free of TensorFlow so `petloc ui` and `petloc models` start fast.

The local store is `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts/`;
`MLFLOW_TRACKING_URI` (or `tracking.uri` in the experiment file) points elsewhere.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow

STORE_DIR = Path("mlruns")


def default_uri() -> str:
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def configure(uri: str | None = None) -> str:
    """Points MLflow at `uri` (an experiment's tracking.uri), else $MLFLOW_TRACKING_URI, else
    the project's local store."""
    # Download progress bars would land in `predict --json` output; petloc prints its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # quiet the store's migrations
    return uri
