"""petloc against a real tracking server on a real PostgreSQL: a training run logged through
it, its model promoted and pulled back by name, and a dead server refused before anything
is made. The same commands as on the local store; only MLFLOW_TRACKING_URI differs."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    encode,
    free_port,
    in_project,
    invoke,
    petloc_env,
    petloc_process,
    photo,
    run_id_of,
    tiny_dataset,
)
from tests.servers import tracking_server

QUICK = Path(__file__).resolve().parents[2] / "experiments" / "quick.yaml"
TINY = [
    "data.image_size=32",
    "train.epochs=1",
    "space.width=0.25",
    "space.head_units=16",
    "tracking.gallery_images=4",
]


@pytest.mark.slow  # PostgreSQL, a tracking server, a training run and a predict process
def test_train_promote_predict_through_the_server(postgres_uri, tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "data")
    with tracking_server(postgres_uri, tmp_path / "server-artifacts") as uri, in_project(tmp_path):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        run_id = run_id_of(invoke("train", QUICK, f"data.path={data}", *TINY).output)
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        listed = {a.path for a in client.list_artifacts(run_id)}
        assert {"curves.png", "experiment.json"} <= listed
        curves = Path(client.download_artifacts(run_id, "curves.png", str(tmp_path)))
        assert curves.read_bytes().startswith(b"\x89PNG")  # read back through the server
        # kept by the server, not by us
        assert list((tmp_path / "server-artifacts").rglob("curves.png"))

        assert "petloc-quick@champion" in invoke("promote", run_id).output
        picture = tmp_path / "photo.png"
        picture.write_bytes(encode(photo(seed=3, w=80, h=60), ".png"))
        env = {**petloc_env(), "MLFLOW_TRACKING_URI": uri}
        predicted = petloc_process(
            "predict", "petloc-quick@champion", picture, "--json", cwd=tmp_path, env=env
        )
    assert predicted.returncode == 0, predicted.stderr
    [row] = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert row["image"] == str(picture) and row["label"] in ("cat", "dog") and len(row["box"]) == 4
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store on the way


@pytest.mark.slow  # petloc processes
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_server_down_at_start_is_one_line_exit_2_nothing_created(tmp_path, command):
    data = tiny_dataset(tmp_path / "data")
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**petloc_env(), "MLFLOW_TRACKING_URI": uri}
    done = petloc_process(command, QUICK, f"data.path={data}", *TINY, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"petloc: error: tracking server {uri} does not answer (Failed to establish a new "
        "connection: [Errno 111] Connection refused): start it (petloc tracking-server), or fix "
        "tracking.uri in the experiment file / MLFLOW_TRACKING_URI"
    ]
    assert not (tmp_path / "mlruns").exists()  # no sweep folder, no run, no local store
