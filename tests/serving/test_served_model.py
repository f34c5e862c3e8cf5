"""The registered model served by the real `mlflow models serve`, asked over HTTP with a JPEG."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from petloc.cli import cli
from tests.helpers import (
    blank_png,
    free_port,
    in_project,
    invoke,
    jpeg,
    jpeg_with_orientation,
    marked_photo,
    photo,
    run_id_of,
    tiny_dataset,
    tiny_experiment,
    with_extraneous_bytes,
)


def post(port: int, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    with in_project(root):
        data = tiny_dataset(root / "photos", count=40)
        result = invoke("train", tiny_experiment(root, data))
        promoted = invoke("promote", run_id_of(result.output))
        assert "petloc@champion is now version 1" in promoted.output, promoted.output
        yield root, data


def training_state(keras_file: Path) -> list[str]:
    """What of the training state a `.keras` file holds, at any depth: optimizer variables in
    its weights, and compile configs (a wrapper's inner network has its own)."""
    import io
    import zipfile

    import h5py

    def compile_configs(node) -> list[str]:
        if isinstance(node, dict):
            found = ["compile_config"] if node.get("compile_config") else []
            return found + [c for value in node.values() for c in compile_configs(value)]
        return (
            [c for value in node for c in compile_configs(value)] if isinstance(node, list) else []
        )

    with zipfile.ZipFile(keras_file) as archive:
        config = json.loads(archive.read("config.json"))
        weights = io.BytesIO(archive.read("model.weights.h5"))
    paths = []
    with h5py.File(weights) as h5:
        h5.visit(lambda name: paths.append(name) if "optimizer" in name.split("/") else None)
    return paths + compile_configs(config)


def test_the_logged_model_carries_its_weights_without_the_training_state(champion, tmp_path):
    """Adam's two slots a weight made every trial's model file about 3x as large, and loading
    it compiled losses and metrics that nobody who predicts uses."""
    import mlflow

    root, _ = champion
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    folder = Path(
        mlflow.artifacts.download_artifacts(
            "models:/petloc@champion", dst_path=str(tmp_path / "model"), tracking_uri=uri
        )
    )
    [keras_file] = folder.rglob("*.keras")
    assert training_state(keras_file) == []
    model = mlflow.keras.load_model(str(folder))
    assert not model.compiled and model.output["box"].shape[-1] == 4


def test_a_network_inside_test_time_augmentation_is_saved_without_its_training_state(tmp_path):
    from petloc import serving
    from petloc.model import TTA, Hyperparameters, build_model, compile_model

    spec = Hyperparameters(width=0.25, head_units=8)
    trained = compile_model(build_model(spec, 32), spec)
    trained.optimizer.build(trained.trainable_variables)  # its slots exist, as after a fit
    serving.save_model(TTA["flip"](trained), str(tmp_path / "model"))
    [keras_file] = (tmp_path / "model").rglob("*.keras")
    assert training_state(keras_file) == []
    # the training process's model is left as it was
    assert trained.compiled and trained.optimizer.built


@pytest.fixture(scope="module")
def server(champion):
    root, data = champion
    port = free_port()
    # `mlflow models serve` starts `uvicorn` by name: the venv's bin must be on PATH, as it is
    # for a user whose venv is active (make test runs .venv/bin/python without activating).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db"}
    mlflow_cli = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/petloc@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with open(root / "serve.log", "w") as log:  # the server writes to its own copy
        proc = subprocess.Popen(
            mlflow_cli,
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(
                        f"mlflow models serve exited: {(root / 'serve.log').read_text()[-2000:]}"
                    )
                time.sleep(1)
        else:
            pytest.fail(
                f"server did not answer in 120 s: {(root / 'serve.log').read_text()[-2000:]}"
            )
        yield port, data
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_rest_request_with_a_jpeg_gets_label_score_and_pixel_box(server):
    port, data = server
    photo = sorted(Path(data).glob("*.jpg"))[0]
    image = base64.b64encode(photo.read_bytes()).decode()
    answer = post(
        port,
        {
            "dataframe_records": [
                {"image": image},
                {"image": base64.b64encode(b"no photo").decode()},
            ]
        },
    )
    good, bad = answer["predictions"]
    assert good["label"] in ("cat", "dog") and 0 <= good["score"] <= 1
    x1, y1, x2, y2 = good["box"]
    assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64  # pixels of the 64 px photo
    assert "not an image" in bad["error"]


# ---- limits: one request must not take the server's memory -------------------------------

HUGE_PNG_REQUEST = """
import base64, json, resource, sys
import cv2, numpy as np, pandas as pd
from petloc.model import Hyperparameters, build_model
from petloc.training.predict import Predictor
from petloc.serving import ImagePyfunc

pyfunc = ImagePyfunc(Predictor(build_model(Hyperparameters(width=0.25, head_units=8), 32)))
small = base64.b64encode(cv2.imencode(".png", np.zeros((40, 30, 3), np.uint8))[1].tobytes()).decode()
pyfunc.predict(pd.DataFrame({"image": [small]}))  # warm up: the model's first call costs memory of its own
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux reports kB)
before = peak()
huge = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
rows = pyfunc.predict(pd.DataFrame({"image": [huge, small]}))
print(json.dumps({"growth_mb": peak() - before, "rows": rows}))
"""


@pytest.mark.slow
def test_a_huge_png_costs_the_pyfunc_little_memory_and_gets_its_own_error(tmp_path):
    # 0.5 MB of base64; decoded in RGB, 1.2 GB
    (tmp_path / "huge.png").write_bytes(blank_png(20000, 20000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", HUGE_PNG_REQUEST, str(tmp_path / "huge.png")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    huge, small = answer["rows"]
    assert huge == {
        "error": "image is 400000000 pixels, over the limit of 50000000 pixels (PETLOC_MAX_IMAGE_PIXELS)"
    }
    assert small["label"] in ("cat", "dog")
    assert answer["growth_mb"] < 100, answer  # peak RSS growth; decoding it costs 1.5 GB


@pytest.fixture(scope="module")
def tiny_pyfunc():
    """The pyfunc `mlflow models serve` loads, around an untrained localiser."""
    from petloc.model import Hyperparameters, build_model
    from petloc.serving import ImagePyfunc
    from petloc.training.predict import Predictor

    return ImagePyfunc(Predictor(build_model(Hyperparameters(width=0.25, head_units=8), 32)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_rows_and_images_over_the_limits_get_their_own_error(tiny_pyfunc, monkeypatch):
    import pandas as pd

    small, large = jpeg(photo()), jpeg(photo(w=400, h=300))
    monkeypatch.setenv("PETLOC_MAX_ROWS", "3")
    monkeypatch.setenv("PETLOC_MAX_IMAGE_BYTES", str(len(small) + 100))
    monkeypatch.setenv("PETLOC_MAX_IMAGE_PIXELS", str(200 * 200))
    rows = tiny_pyfunc.predict(
        pd.DataFrame({"image": [b64(small), b64(large), b64(small), b64(small)]})
    )
    assert [("label" in row) for row in rows] == [True, False, True, False]
    assert rows[1]["error"].startswith(
        f"image is over the limit of {len(small) + 100} bytes (PETLOC_MAX_IMAGE_BYTES)"
    )
    assert (
        rows[3]["error"]
        == "over the limit of 3 rows per request (PETLOC_MAX_ROWS): send this image in another request"
    )
    monkeypatch.setenv("PETLOC_MAX_IMAGE_BYTES", str(len(large)))
    [too_many_pixels] = tiny_pyfunc.predict(pd.DataFrame({"image": [b64(large)]}))
    assert too_many_pixels == {
        "error": "image is 400x300 pixels, over the limit of 40000 pixels (PETLOC_MAX_IMAGE_PIXELS)"
    }


def test_a_large_photo_is_shrunk_but_boxed_in_its_own_pixels(tiny_pyfunc):
    import cv2
    import pandas as pd

    big = cv2.resize(photo(), (3000, 2000), interpolation=cv2.INTER_LINEAR)
    data = jpeg(big)
    [served] = tiny_pyfunc.predict(pd.DataFrame({"image": [b64(data)]}))
    from petloc.data.images import decode_rgb

    [direct] = tiny_pyfunc.predictor.predict([decode_rgb(data)])
    # 0.5% of 3000 px: resampling only
    assert served["box"] == pytest.approx(direct.to_dict()["box"], abs=15)


def test_served_phone_photo_is_upright_and_a_repaired_jpeg_is_answered_with_a_warning(tiny_pyfunc):
    import cv2
    import pandas as pd

    phone = jpeg_with_orientation(marked_photo(), 6)
    stored = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(phone, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB
    )
    [upright] = tiny_pyfunc.predictor.predict([cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE)])
    served, repaired = tiny_pyfunc.predict(
        pd.DataFrame({"image": [b64(phone), b64(with_extraneous_bytes(phone))]})
    )
    assert served == upright.to_dict()
    assert (
        repaired["warning"].startswith("the JPEG decoder skipped")
        and repaired["box"] == served["box"]
    )


# ---- petloc serve, and a model served far from the project -----------------------------


def serve_until_answering(
    cmd: list, cwd: Path, env: dict, log_path: Path, seconds: float = 180
) -> subprocess.Popen:
    """Starts `cmd` in its own process group and waits for /ping on the port after `--port`."""
    port = cmd[cmd.index("--port") + 1]
    with open(log_path, "w") as log:  # the server writes to its own copy
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[:4]} exited: {log_path.read_text()[-3000:]}")
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"{cmd[:4]} did not answer in {seconds:.0f} s: {log_path.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


def test_petloc_serve_refuses_an_unknown_model_in_one_line(tmp_path):
    from petloc.errors import PetlocError

    with in_project(tmp_path), pytest.raises(PetlocError) as refused:
        CliRunner().invoke(cli, ["serve", "petloc@nope"], catch_exceptions=False)
    assert (
        str(refused.value)
        == "models:/petloc@nope: no such registered model version; registered: nothing yet"
    )
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_petloc_serve_answers_from_the_project_folder_and_stops_on_sigterm(champion):
    root, data = champion
    port = free_port()
    # the project's own store
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    petloc = str(Path(sys.executable).with_name("petloc"))
    proc = serve_until_answering(
        [petloc, "serve", "petloc@champion", "--port", str(port)],
        root,
        env,
        root / "petloc-serve.log",
    )
    try:
        image = base64.b64encode(sorted(Path(data).glob("*.jpg"))[0].read_bytes()).decode()
        split = post(port, {"dataframe_split": {"columns": ["image"], "data": [[image]]}})[
            "predictions"
        ]
        inputs = post(port, {"inputs": [{"image": image}]})["predictions"]
        assert split == inputs and split[0]["label"] in ("cat", "dog")
        assert not (root / "mlflow.db").exists()  # MLflow's default store was never made
        proc.send_signal(signal.SIGTERM)  # to petloc alone, as `kill PID` sends it
        proc.wait(timeout=60)
        # its worker ends on its own signal, after finishing requests
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
            except OSError:  # refused: nothing listens any more
                return
            time.sleep(1)
        pytest.fail(f"the server still answers on port {port} after petloc serve was terminated")
    finally:
        stop_group(proc)


# Run before anything else in the server's Python processes (site imports it after the .pth
# files): drops the venv's editable-install finder, so petloc is importable only from the
# model's own copy of its code.
NO_PETLOC_SOURCE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != {source!r}]
"""


@pytest.mark.slow
def test_a_downloaded_model_serves_outside_the_project_without_petlocs_source(champion, tmp_path):
    import mlflow

    root, data = champion
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    model = Path(
        mlflow.artifacts.download_artifacts(
            "models:/petloc@champion", dst_path=str(tmp_path / "model")
        )
    )
    blocker = tmp_path / "no-petloc"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        NO_PETLOC_SOURCE.format(source=str(Path(__file__).parents[2]))
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env.update(
        PYTHONPATH=str(blocker),
        PYTHONNOUSERSITE="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    cannot = subprocess.run(
        [sys.executable, "-c", "import petloc"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    # the isolation holds: no petloc but the model's
    assert "No module named 'petloc'" in cannot.stderr
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        str(model),
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = serve_until_answering(cmd, elsewhere, env, tmp_path / "serve.log")
    try:
        image = base64.b64encode(sorted(Path(data).glob("*.jpg"))[0].read_bytes()).decode()
        [answer] = post(port, {"dataframe_records": [{"image": image}]})["predictions"]
        assert answer["label"] in ("cat", "dog") and len(answer["box"]) == 4
    finally:
        stop_group(proc)
