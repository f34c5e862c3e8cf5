import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def no_tracking_server(monkeypatch):
    """A test's petloc uses the mlruns/ of its folder, whatever MLFLOW_TRACKING_URI the shell has."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the whole test session (initdb once)."""
    from tests.servers import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_uri(postgres) -> str:
    """A new, empty database of the session's cluster: postgresql://postgres@127.0.0.1:PORT/NAME."""
    return postgres.new_database()
