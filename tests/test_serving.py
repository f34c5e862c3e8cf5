"""The registered model served by the real `mlflow models serve`, asked over HTTP with a JPEG."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from petloc.cli import cli
from tests.helpers import in_project, tiny_dataset, tiny_experiment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    with in_project(root):
        data = tiny_dataset(root / "photos", count=40)
        result = CliRunner().invoke(cli, ["train", str(tiny_experiment(root, data))], catch_exceptions=False)
        run_id = result.output.split("MLflow run ")[1].split()[0]
        promoted = CliRunner().invoke(cli, ["promote", run_id], catch_exceptions=False)
        assert "petloc@champion is now version 1" in promoted.output, promoted.output
        yield root, data


@pytest.fixture(scope="module")
def server(champion):
    root, data = champion
    port = free_port()
    # `mlflow models serve` starts `uvicorn` by name: the venv's bin must be on PATH, as it is
    # for a user whose venv is active (make test runs .venv/bin/python without activating).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db"}
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/petloc@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(mlflow_cli, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow models serve exited: {(root / 'serve.log').read_text()[-2000:]}")
                time.sleep(1)
        else:
            pytest.fail(f"server did not answer in 120 s: {(root / 'serve.log').read_text()[-2000:]}")
        yield port, data
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


def test_rest_request_with_a_jpeg_gets_label_score_and_pixel_box(server):
    port, data = server
    photo = sorted(Path(data).glob("*.jpg"))[0]
    image = base64.b64encode(photo.read_bytes()).decode()
    answer = post(port, {"dataframe_records": [{"image": image}, {"image": base64.b64encode(b"no photo").decode()}]})
    good, bad = answer["predictions"]
    assert good["label"] in ("cat", "dog") and 0 <= good["score"] <= 1
    x1, y1, x2, y2 = good["box"]
    assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64  # pixels of the 64 px photo
    assert "not an image" in bad["error"]


def test_pyfunc_in_process_matches_the_cli(champion, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    root, data = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlruns/mlflow.db")
    from petloc import load_model

    photo = sorted(Path(data).glob("*.jpg"))[0]
    served = mlflow.pyfunc.load_model("models:/petloc@champion").predict(pd.DataFrame({"image": [base64.b64encode(photo.read_bytes()).decode()]}))
    from petloc.data.images import read_rgb

    direct = load_model("petloc@champion").predict([read_rgb(photo)])[0].to_dict()
    assert served[0] == direct
