"""petloc from Python (`petloc.sweep`, `train`, `evaluate`): what the command line does, as
results instead of printed lines, with the same one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import petloc
from petloc.api import experiment_of, override_strings
from petloc.config import load_experiment
from petloc.errors import PetlocError
from tests.helpers import in_project, invoke, petloc_env, tiny_dataset, tiny_experiment

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sweep_and_predict.py"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    with in_project(root):
        data = tiny_dataset(root / "photos", count=40)
        yield root, data, tiny_experiment(root, data)


@pytest.fixture(scope="module")
def swept(project):
    """A one-trial sweep from Python with say=None, and what it printed meanwhile."""
    root, data, experiment = project
    printed = io.StringIO()
    with in_project(root), contextlib.redirect_stdout(printed):
        result = petloc.sweep(experiment, {"tuner": {"max_trials": 1}}, say=None)
    return root, data, result, printed.getvalue()


def leaderboard_csv(root: Path, parent_run_id: str) -> list[list[str]]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    local = MlflowClient(uri).download_artifacts(parent_run_id, "leaderboard.csv", str(root))
    with open(local, newline="") as text:
        return list(csv.reader(text))


def test_the_sweep_leaderboard_is_the_csv_as_a_dataframe(swept):
    root, _data, result, _printed = swept
    header, *rows = leaderboard_csv(root, result.parent_run_id)
    assert list(result.leaderboard.columns) == header
    assert list(result.leaderboard["run_id"]) == [row[header.index("run_id")] for row in rows]
    assert len(result.leaderboard) == 1 and 0 <= result.leaderboard["best_val_miou"][0] <= 1
    assert result.failed == 0 and result.name == "tiny"
    # a count is a whole number in the CSV and in the DataFrame, as in every output
    count = rows[0][header.index("params_count")]
    assert count.isdigit() and result.leaderboard["params_count"][0] == int(count)
    assert str(result.leaderboard["params_count"].dtype) == "Int64"


def test_the_sweep_champion_loads_and_predicts(swept):
    root, _data, result, _printed = swept
    assert result.promoted and result.champion == "models:/petloc/1"
    assert "petloc@champion is now version 1" in result.registry
    with in_project(root):
        [answer] = petloc.load_model(result.champion).predict([np.zeros((40, 50, 3), np.uint8)])
    assert answer.label in ("cat", "dog") and len(answer.box) == 4
    # what the command line prints at the end, ready to print
    assert (
        f"parent run {result.parent_run_id}\nopen in the MLflow UI once `petloc ui` runs:"
        in str(result)
    )
    # the sweep's pages in the UI, where `petloc ui` serves a local store
    assert result.urls["model version"] == "http://127.0.0.1:5000/#/models/petloc/versions/1"
    assert set(result.urls) == {"sweep (parent run)", "champion's run", "model version"}


def test_say_none_prints_nothing(swept):
    assert swept[3] == ""


def test_train_and_evaluate_give_the_run_s_and_the_cli_s_names(project, capsys):
    root, data, experiment = project
    with in_project(root):
        trained = petloc.train(experiment, ["train.epochs=1"], say=None)
        evaluated = petloc.evaluate(trained.model_uri, data, say=None)
        assert capsys.readouterr().out == ""
        cli = invoke("evaluate", trained.model_uri, data, "--json")
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db").get_run(trained.run_id)
    # the model is named after its run (train-BACKBONE)
    assert trained.model_uri == f"runs:/{trained.run_id}/{logged.info.run_name}"
    assert trained.metrics == {k: logged.data.metrics[k] for k in trained.metrics}
    assert {"best_val_miou", "val_accuracy", "latency_ms_b1"} <= set(trained.metrics)
    printed = json.loads(cli.stdout)
    assert list(evaluated.figures) == list(printed)
    assert evaluated["miou"] == pytest.approx(printed["miou"]) and evaluated["images"] == 40


def test_overrides_as_a_dict_or_strings_give_the_same_experiment(project):
    _root, _data, experiment = project
    strings = [
        "train.epochs=3",
        "space.backbone=[simple, simple_context]",
        "space.learning_rate={min: 1.0e-4, max: 1.0e-2, sampling: log}",
        "data.path=my photos",
    ]
    nested = {
        "train": {"epochs": 3},
        "space": {
            "backbone": ["simple", "simple_context"],
            "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
        },
        "data.path": Path("my photos"),
    }
    expected = load_experiment(experiment, strings)
    assert experiment_of(experiment, nested) == expected
    assert experiment_of(str(experiment), {"train.epochs": np.int64(3), **nested}) == expected
    # a loaded experiment takes overrides too
    assert experiment_of(load_experiment(experiment), strings) == expected
    assert expected.train.epochs == 3 and expected.data.path == "my photos"


def test_dict_values_stay_what_they_are(project):
    assert override_strings(
        {"name": "3", "train.epochs": 3, "x": None, "space": {"lr": {"min": 1, "max": 2}}}
    ) == ["name='3'", "train.epochs=3", "x=null", "space.lr={min: 1, max: 2}"]
    assert experiment_of(project[2], {"name": "3"}).name == "3"  # text, not the number 3


@pytest.mark.parametrize(
    "cli_args, api_overrides",
    [
        (["train.epochs.x=1"], {"train.epochs.x": 1}),
        (["train.epochz=1"], {"train.epochz": 1}),
        (["train.epochs=-1"], {"train": {"epochs": -1}}),
        (["space.backbone=nope"], {"space.backbone": "nope"}),
        (["epochs"], ["epochs"]),
    ],
)
def test_a_bad_override_is_the_cli_s_one_line_error(project, cli_args, api_overrides):
    _root, _data, experiment = project
    with pytest.raises(PetlocError) as cli:
        invoke("sweep", experiment, *cli_args)
    for call in (petloc.sweep, petloc.train):
        with pytest.raises(PetlocError) as api:
            call(experiment, api_overrides)
        assert str(api.value) == str(cli.value) and "\n" not in str(api.value)


def test_a_missing_experiment_file_is_the_cli_s_one_line_error(tmp_path):
    with pytest.raises(PetlocError) as cli:
        invoke("train", tmp_path / "nope.yaml")
    with pytest.raises(PetlocError) as api:
        petloc.train(tmp_path / "nope.yaml")
    assert str(api.value) == str(cli.value) == f"{tmp_path / 'nope.yaml'}: no such experiment file"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"subset": "test"}, "subset: 'test' is not one of all, train, val"),
        ({"tta": "mirror"}, "tta: 'mirror' is not one of none, flip"),
        ({"subset": "vall"}, r"subset: 'vall' is not one of all, train, val; did you mean val\?"),
        ({"val_split": 1.5}, "val_split: 1.5 is not between 0 and 1"),
        ({"seed": -1}, "seed: -1 is not a whole number from 0 to 2147483647"),
    ],
)
def test_a_bad_evaluate_option_is_one_line(options, message):
    with pytest.raises(PetlocError, match=f"^{message}$"):
        petloc.evaluate("petloc@champion", "photos", **options)


def test_a_value_yaml_cannot_hold_is_one_line():
    with pytest.raises(PetlocError, match=r"^override 'train.epochs': object .* is not a number"):
        override_strings({"train.epochs": object()})


@pytest.mark.slow  # a new process
def test_import_petloc_loads_neither_tensorflow_nor_mlflow():
    code = (
        "import sys, petloc\n"
        "assert callable(petloc.sweep) and callable(petloc.train) and callable(petloc.evaluate)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.slow  # a whole (tiny) sweep in a new process: about 20 s
def test_the_example_sweeps_shows_the_leaderboard_and_predicts(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,  # a user's own folder: its own mlruns/
        env={**petloc_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "leaderboard" in out and "best_val_miou" in out and "backbone" in out
    assert "champion: models:/petloc-quick/1" in out
    answers = [line for line in out.splitlines() if line.startswith("synth_")]
    assert len(answers) == 2 and all(" box [" in line for line in answers)
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
