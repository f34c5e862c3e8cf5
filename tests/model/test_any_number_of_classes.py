"""A model of any number of classes: its class names travel inside the .keras file, the class
loss and the balanced weights follow the number of classes, and the class figures (top-5,
macro, species accuracy) are computed as their definitions say."""

import keras
import numpy as np
import pytest

from petloc.data.classes import SPECIES, Classes
from petloc.model import TTA, ClassHead, Hyperparameters, build_model, model_classes
from petloc.model.losses import CLASS_WEIGHTS, SmoothedClassLoss
from petloc.model.metrics import class_figures, macro_accuracy, species_accuracy, top_k_accuracy
from petloc.training.predict import Predictor, load_keras_file, localiser_problem

BREEDS = Classes(("abyssinian", "beagle", "bengal", "boxer"), species=("cat", "dog", "cat", "dog"))


def tiny(classes: Classes) -> keras.Model:
    return build_model(Hyperparameters(width=0.25, head_units=8), 32, classes=classes)


def test_class_names_and_species_round_trip_through_a_keras_file_in_safe_mode(tmp_path):
    model = tiny(BREEDS)
    assert model.output["cls"].shape[-1] == 4
    path = tmp_path / "breeds.keras"
    model.save(path)
    loaded = load_keras_file(path)  # safe_mode=True
    assert model_classes(loaded) == BREEDS
    assert localiser_problem(loaded) is None
    images = [np.full((40, 50, 3), v, np.uint8) for v in (0, 120, 250)]
    labels = {p.label for p in Predictor(loaded).predict(images)}
    assert labels <= set(BREEDS.names)


def test_wrapped_models_keep_their_classes_and_old_two_class_heads_are_the_species():
    assert model_classes(TTA["flip"](tiny(BREEDS))) == BREEDS
    inputs = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()(inputs)
    old = keras.Model(
        inputs,
        {
            "cls": keras.layers.Dense(2, activation="softmax", name="cls")(flat),
            "box": keras.layers.Dense(4, activation="sigmoid", name="box")(flat),
        },
    )
    assert model_classes(old) == SPECIES
    assert model_classes(tiny(SPECIES)) == SPECIES


def test_class_head_config_carries_names_without_species():
    head = ClassHead.of(Classes(("a", "b", "c")))
    again = ClassHead.from_config(head.get_config())
    assert again.classes == Classes(("a", "b", "c")) and again.units == 3


def test_smoothed_class_loss_uses_as_many_classes_as_the_head_scores():
    probs = np.array([[0.1, 0.2, 0.3, 0.15, 0.25], [0.6, 0.1, 0.1, 0.1, 0.1]], np.float32)
    labels = np.array([2, 0])
    smoothing = 0.1
    target = np.full((2, 5), smoothing / 5) + np.eye(5)[labels] * (1 - smoothing)
    expected = -(target * np.log(probs)).sum(axis=1).mean()
    assert float(SmoothedClassLoss(smoothing)(labels, probs)) == pytest.approx(expected, rel=1e-4)


def test_balanced_weights_for_four_classes_make_each_class_weigh_the_same():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 2 + [3] * 1)
    weights = CLASS_WEIGHTS["balanced"](labels, 4)
    assert weights == pytest.approx([12 / 24, 12 / 12, 12 / 8, 12 / 4])
    assert weights[labels].sum() == pytest.approx(len(labels))
    # a class missing from the training labels still has a weight
    assert len(CLASS_WEIGHTS["balanced"](np.array([0, 1]), 5)) == 5


def test_top5_accuracy_counts_the_true_class_among_the_five_highest_scores():
    probs = np.array(
        [
            [0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05],  # true 4: 5th highest -> in
            [0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05],  # true 5: 6th highest -> out
            [0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30],  # true 6: highest -> in
            [0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30],  # true 0: lowest -> out
        ]
    )
    assert top_k_accuracy(np.array([4, 5, 6, 0]), probs) == pytest.approx(0.5)
    assert top_k_accuracy(np.array([4, 5, 6, 0]), probs, k=1) == pytest.approx(0.25)


def test_macro_accuracy_is_the_mean_of_each_class_accuracy_not_of_images():
    # class 0: 8 images, all right; class 1: 2 images, none right; class 2: none present
    true = np.array([0] * 8 + [1] * 2)
    pred = np.array([0] * 8 + [0] * 2)
    assert macro_accuracy(true, pred, 3) == pytest.approx(0.5)  # (1 + 0) / 2, class 2 left out
    assert (true == pred).mean() == pytest.approx(0.8)  # top-1 differs


def test_species_accuracy_scores_a_breed_model_on_the_species_scale():
    # abyssinian (cat) taken for bengal (cat): wrong breed, right species
    true = np.array([0, 1, 2, 3])
    pred = np.array([2, 3, 1, 3])  # cat->cat, dog->dog, cat->dog, dog->dog
    assert species_accuracy(true, pred, BREEDS) == pytest.approx(0.75)
    assert (true == pred).mean() == pytest.approx(0.25)


def test_class_figures_give_each_figure_only_where_it_applies():
    two = class_figures(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), SPECIES)
    assert set(two) == {"macro_accuracy"}
    breeds = class_figures(np.array([0, 1]), np.eye(4)[[0, 3]], BREEDS)
    assert breeds == {"macro_accuracy": 0.5, "species_accuracy": 1.0}
    seven = Classes(tuple("abcdefg"))
    assert set(class_figures(np.array([0]), np.eye(7)[[0]], seven)) == {
        "macro_accuracy",
        "top5_accuracy",
    }
