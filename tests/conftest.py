import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def no_tracking_server(monkeypatch):
    """A test's petloc uses the mlruns/ of its folder, whatever MLFLOW_TRACKING_URI the shell has."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
