"""Training, evaluation and pictures for a dataset of any number of classes: the model scores
the data's classes, evaluation matches the data's classes to the model's by name, and the
per-class table and confusion matrix say how each class fares."""

import csv
import io

import cv2
import keras
import numpy as np
import pytest

from petloc.data.classes import Classes
from petloc.errors import PetlocError
from petloc.model import model_classes
from petloc.training.evaluate import Predictions, per_class_csv, quality
from petloc.training.fit import fit_localiser
from petloc.training.gallery import plot_confusion
from petloc.training.pretrain import build_classifier, classifier_figures
from tests.helpers import relabelled_images

THREE = Classes(("ant", "bee", "cow"), species=("insect", "insect", "mammal"))
HP = {
    "backbone": "simple",
    "width": 0.25,
    "head_units": 8,
    "image_size": 32,
    "aug_strength": 0.0,
    "batch_size": 8,
    "class_weight": "balanced",
}


def test_a_three_class_localiser_trains_and_is_scored_on_its_classes():
    data = relabelled_images(THREE, count=18)
    model, history = fit_localiser(HP, data, data, epochs=1)
    assert np.isfinite(history.history["loss"][0])
    assert model_classes(model) == THREE
    figures, pred = quality(model, data)
    assert pred.probs.shape == (18, 3)
    assert {"accuracy", "macro_accuracy", "species_accuracy", "miou"} <= set(figures)
    assert "top5_accuracy" not in figures  # only for more than 5 classes


def test_evaluation_matches_the_data_classes_to_the_model_classes_by_name():
    data = relabelled_images(Classes(("cow", "ant")), count=4)  # cow = 0, ant = 1 in the data
    mapped = data.relabelled(THREE)
    assert mapped.classes == THREE
    assert [THREE.names[i] for i in mapped.labels] == [data.classes.names[i] for i in data.labels]
    with pytest.raises(PetlocError, match="yak"):
        relabelled_images(Classes(("ant", "yak")), count=2).relabelled(THREE)


def test_per_class_table_counts_accuracy_and_miou_of_each_class():
    data = relabelled_images(THREE, count=6)  # labels 0 1 2 0 1 2
    boxes = data.boxes.copy()
    boxes[1] = [0.0, 0.0, 0.01, 0.01]  # a bee far off: IoU 0
    pred_labels = np.array([0, 1, 2, 1, 1, 0])  # ant 1/2 right, bee 2/2, cow 1/2
    pred = Predictions(pred_labels, np.ones(6), boxes, np.eye(3)[pred_labels])
    rows = {r["class"]: r for r in csv.DictReader(io.StringIO(per_class_csv(data, pred)))}
    assert list(rows) == ["ant", "bee", "cow"]
    assert rows["cow"]["species"] == "mammal" and rows["ant"]["count"] == "2"
    assert float(rows["ant"]["accuracy"]) == pytest.approx(0.5)
    assert float(rows["bee"]["accuracy"]) == pytest.approx(1.0)
    assert float(rows["bee"]["miou"]) == pytest.approx(0.5)  # one exact box, one missed
    assert float(rows["ant"]["miou"]) == pytest.approx(1.0)


def test_confusion_matrix_of_37_classes_is_a_picture_big_enough_to_read(tmp_path):
    names = [f"breed_name_{i:02d}" for i in range(37)]
    rng = np.random.default_rng(0)
    true = rng.integers(0, 37, 300)
    path = plot_confusion(true, np.where(rng.random(300) < 0.7, true, 0), names, tmp_path / "c.png")
    image = cv2.imread(str(path))
    assert image is not None and min(image.shape[:2]) >= 37 * 16  # a row per class, each legible


def test_a_pretrained_classifier_scores_and_names_the_data_classes(tmp_path):
    data = relabelled_images(THREE, count=6)
    model = build_classifier("simple", 0.25, 32, 0.0, THREE)
    model.save(tmp_path / "classifier.keras")
    loaded = keras.saving.load_model(tmp_path / "classifier.keras", safe_mode=True)
    assert model_classes(loaded) == THREE
    figures = classifier_figures(loaded, data)
    assert {"val_accuracy", "val_macro_accuracy", "val_species_accuracy"} <= set(figures)
