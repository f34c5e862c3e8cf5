"""A tracking URI petloc cannot use is one line naming where it came from, before anything is made."""

import importlib.abc
import sys

import pytest

from petloc.errors import PetlocError
from petloc.tracking import store
from tests.helpers import free_port, in_project, invoke, tiny_experiment


@pytest.mark.parametrize(
    "uri, message",
    [
        # MLflow 3's file store has no Model Registry: MLflow itself raised a traceback.
        (
            "file:///tmp/mlruns",
            "tracking.uri file:///tmp/mlruns: not a store petloc can use; give sqlite:///",
        ),
        ("ftp://x", "tracking.uri ftp://x: not a store petloc can use"),
        ("mlruns", "tracking.uri mlruns: not a store petloc can use"),
        ("sqlite:///", "tracking.uri sqlite:///: not a store petloc can use"),
        (
            "postgresql+nodriver://u@h/db",
            r"tracking.uri postgresql\+nodriver://u@h/db: not a database URI",
        ),
        (
            "sqlite:////proc/petloc-test/mlflow.db",
            r"tracking.uri sqlite:////proc/petloc-test/mlflow.db: cannot open the store",
        ),
    ],
)
def test_unusable_store_uris_are_one_line(uri, message):
    with pytest.raises(PetlocError, match=message) as err:
        store.check_store(uri, "tracking.uri")
    assert "\n" not in str(err.value)


class NoPsycopg(importlib.abc.MetaPathFinder):
    """An environment where `pip install petloc` left out the `postgres` extra."""

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "psycopg":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_a_postgresql_uri_without_psycopg_names_the_extra_to_install(monkeypatch):
    for name in [m for m in sys.modules if m.partition(".")[0] == "psycopg"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoPsycopg(), *sys.meta_path])
    uri = f"postgresql://someone@127.0.0.1:{free_port()}/runs"
    with pytest.raises(PetlocError) as err:
        store.check_store(uri, "tracking.uri")
    assert str(err.value) == (
        f"tracking.uri {uri}: its database driver is not installed (psycopg): "
        "pip install 'petloc[postgres]'"
    )


def test_a_database_that_does_not_answer_is_one_line_with_its_password_hidden():
    uri = f"postgresql://someone:secret@127.0.0.1:{free_port()}/runs"
    with pytest.raises(
        PetlocError,
        match=r"tracking.uri postgresql://someone:\*\*\*@127.0.0.1:\d+/runs: cannot connect",
    ) as err:
        store.check_store(uri, "tracking.uri")
    assert "secret" not in str(err.value)


def test_train_with_an_unusable_tracking_uri_names_the_key_and_creates_nothing(
    tmp_path, monkeypatch
):
    exp = tiny_experiment(tmp_path, tmp_path / "no-data", tracking={"uri": "file:///tmp/somewhere"})
    with (
        in_project(tmp_path),
        pytest.raises(PetlocError, match=r"^tracking\.uri file:///tmp/somewhere: not a store"),
    ):
        invoke("train", exp)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "no-data").exists()


def test_a_bad_mlflow_tracking_uri_is_named_as_the_variable(tmp_path, monkeypatch):
    with in_project(tmp_path):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/somewhere")
        with pytest.raises(
            PetlocError, match=r"^MLFLOW_TRACKING_URI file:///tmp/somewhere: not a store"
        ):
            invoke("models")


@pytest.mark.parametrize(
    "uri", ["postgresql://u:secret@127.0.0.1:1/db", "http://u:secret@127.0.0.1:1"]
)
def test_a_store_that_does_not_answer_is_named_without_its_password(uri):
    with pytest.raises(PetlocError, match=r"u:\*\*\*@127\.0\.0\.1") as refused:
        store.configure(uri, "tracking.uri")
    assert "secret" not in str(refused.value)
