"""A run on a dataset of other classes than the species records them: the `classes` param,
`classes.json`, the class figures, a per-class table, a confusion matrix, and a logged model
whose pyfunc answers with the class names and whose metadata names them."""

import base64
import csv
import io
import json
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from petloc.config import load_experiment
from petloc.data.classes import Classes
from petloc.tracking import runs, store
from petloc.tracking import vocabulary as vocab
from petloc.tracking.training_runs import train_tracked
from petloc.training.dataset import PreparedData
from tests.helpers import in_project, relabelled_images, tiny_dataset, tiny_experiment

BREEDS = Classes(
    ("abyssinian", "beagle", "bengal", "boxer", "persian", "pug"),
    species=("cat", "dog", "cat", "dog", "cat", "dog"),
)


@pytest.fixture(scope="module")
def breed_run(tmp_path_factory):
    """A one-epoch tracked run on an in-memory 6-breed set (no reader needed for it)."""
    root = tmp_path_factory.mktemp("classes")
    exp = load_experiment(tiny_experiment(root, tiny_dataset(root / "data", count=8)))
    whole = relabelled_images(BREEDS, count=24)
    train, val = whole.subset(np.arange(12)), whole.subset(np.arange(12, 24))
    data = PreparedData(root / "data", whole, train, val, "relabelled/val0.5/seed0")
    values = {**exp.fixed_hyperparameters(), "batch_size": 8}
    with in_project(root):
        store.configure(exp.tracking.uri)
        run_id = runs.create_run(runs.experiment_id(exp.tracking.experiment), "breeds")
        with runs.run_status(run_id):
            summary = train_tracked(exp, values, data, run_id)
        client = MlflowClient()
        artifacts = Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(root / "a"))
        )
        run = client.get_run(run_id)
        pyfunc = mlflow.pyfunc.load_model(run.data.tags[vocab.MODEL_URI])
        image = np.full((40, 30, 3), 180, np.uint8)
        jpeg = base64.b64encode(cv2.imencode(".jpg", image)[1].tobytes()).decode()
        answers = pyfunc.predict(pd.DataFrame({"image": [jpeg]}))
        yield run, summary, artifacts, pyfunc, answers


def test_run_logs_the_classes_param_and_classes_json(breed_run):
    run, _, artifacts, _, _ = breed_run
    assert run.data.params[vocab.CLASSES] == "6"
    assert Classes.from_json((artifacts / vocab.CLASSES_FILE).read_text()) == BREEDS


def test_run_logs_macro_species_and_top5_accuracy(breed_run):
    run, summary, _, _, _ = breed_run
    for name in (vocab.VAL_MACRO_ACCURACY, vocab.VAL_SPECIES_ACCURACY, vocab.VAL_TOP5_ACCURACY):
        assert 0.0 <= run.data.metrics[name] <= 1.0 and summary[name] == run.data.metrics[name]
    # a right breed is a right species, and the true class is among the top 5 whenever top 1
    assert run.data.metrics[vocab.VAL_SPECIES_ACCURACY] >= run.data.metrics[vocab.VAL_ACCURACY]
    assert run.data.metrics[vocab.VAL_TOP5_ACCURACY] >= run.data.metrics[vocab.VAL_ACCURACY]


def test_run_logs_a_per_class_table_and_a_confusion_matrix(breed_run):
    _, _, artifacts, _, _ = breed_run
    rows = list(csv.DictReader(io.StringIO((artifacts / vocab.PER_CLASS_FILE).read_text())))
    assert [r["class"] for r in rows] == list(BREEDS.names)
    assert [r["species"] for r in rows] == list(BREEDS.species)
    assert sum(int(r["count"]) for r in rows) == 12
    assert set(rows[0]) == {"class", "species", "count", "accuracy", "miou"}
    assert cv2.imread(str(artifacts / vocab.CONFUSION_FILE)) is not None
    assert (artifacts / "curves.png").is_file()  # still at the top level beside them


def test_logged_model_names_its_classes_and_its_pyfunc_answers_with_them(breed_run):
    _, _, _, pyfunc, answers = breed_run
    assert pyfunc.metadata.metadata[vocab.MODEL_CLASSES] == json.loads(BREEDS.to_json())
    assert answers[0]["label"] in BREEDS.names and 0 <= answers[0]["score"] <= 1
