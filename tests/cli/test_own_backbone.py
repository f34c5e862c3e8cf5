"""Your own backbone end to end: an experiment names its plug-in module, trains on the
plug-in's backbone (with a Keras layer of its own), and the logged model loads for
`predict` and the served pyfunc wherever the module is importable; where it is not, one
line names it. `petloc hyperparameters` lists the plug-in's backbone."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import (
    forgetting_plugins,
    in_project,
    invoke,
    petloc_env,
    petloc_process,
    run_id_of,
    store_client,
    tiny_dataset,
    tiny_experiment,
    write_plugin,
)

MODULE, NAME = "e2e_nets", "e2enet"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run on the plug-in's backbone, in a project folder holding the plug-in."""
    root = tmp_path_factory.mktemp("project")
    write_plugin(root, MODULE, NAME, custom_layer=True)
    with in_project(root), forgetting_plugins(root):
        exp = tiny_experiment(root, tiny_dataset(root / "photos", count=40))
        body = yaml.safe_load(exp.read_text())
        body["plugins"] = [MODULE]
        body["space"]["backbone"] = NAME
        exp.write_text(yaml.safe_dump(body, sort_keys=False))
        result = invoke("train", exp)
        assert result.exit_code == 0, result.output
        yield root, run_id_of(result.output)
        sys.path[:] = [p for p in sys.path if p != str(root)]


def test_the_run_and_its_model_record_the_plugin_module(trained):
    root, run_id = trained
    run = store_client(root).get_run(run_id)
    assert run.data.params["backbone"] == NAME
    assert run.data.tags["petloc.plugins"] == MODULE
    [mlmodel] = (root / "mlruns").rglob("MLmodel")
    assert yaml.safe_load(mlmodel.read_text())["metadata"]["petloc_plugins"] == [MODULE]


@pytest.mark.slow  # three new processes, each loading TensorFlow
def test_the_model_loads_where_the_plugin_is_importable_and_names_it_where_not(trained, tmp_path):
    root, run_id = trained
    photo = next((root / "photos").rglob("*.jpg"))
    env = {**petloc_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db"}

    # the project folder: the plug-in is importable, as `petloc train` found it
    done = petloc_process("predict", f"runs:/{run_id}/model", photo, "--json", cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[0])
    assert answer["label"] in ("cat", "dog") and len(answer["box"]) == 4

    # elsewhere: neither the logged model nor its .keras file loads, and one line says why
    [keras_file] = (root / "mlruns").rglob("model.keras")
    for model in (f"runs:/{run_id}/model", keras_file):
        done = petloc_process("predict", model, photo, cwd=tmp_path, env=env)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert f"cannot import '{MODULE}'" in line and "the model needs a plug-in" in line, line


@pytest.mark.slow  # a new process loading TensorFlow and MLflow
def test_the_served_pyfunc_loads_where_the_plugin_is_importable(trained):
    root, run_id = trained
    photo = next((root / "photos").rglob("*.jpg"))
    script = (
        "import base64, sys, mlflow.pyfunc, pandas as pd\n"
        f"mlflow.set_tracking_uri('sqlite:///{root}/mlruns/mlflow.db')\n"
        f"model = mlflow.pyfunc.load_model('runs:/{run_id}/train-{NAME}')\n"
        "image = base64.b64encode(open(sys.argv[1], 'rb').read()).decode()\n"
        "print(model.predict(pd.DataFrame({'image': [image]}))[0]['label'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(photo)],
        cwd=root,
        env=petloc_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] in ("cat", "dog")


def test_hyperparameters_lists_the_plugin_s_backbone_and_where_it_comes_from(tmp_path, monkeypatch):
    write_plugin(tmp_path, "listed_nets", "listednet", keras_free=True)
    monkeypatch.chdir(tmp_path)
    with forgetting_plugins(tmp_path):
        result = invoke("hyperparameters", "--plugin", "listed_nets")
        assert result.exit_code == 0, result.output
        [row] = [line for line in result.output.splitlines() if line.startswith("backbone ")]
        assert "simple, " in row and "listednet (plug-in: listed_nets)" in row

        experiment = tmp_path / "x.yaml"
        experiment.write_text("name: x\nplugins: [listed_nets]\n")
        assert "listednet (plug-in: listed_nets)" in invoke("hyperparameters", experiment).output


def test_a_bad_plugin_option_is_one_line(tmp_path):
    done = petloc_process(
        "hyperparameters", "--plugin", "no_such_plugin_here", cwd=tmp_path, env=petloc_env()
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("petloc: error: --plugin: cannot import 'no_such_plugin_here'")
