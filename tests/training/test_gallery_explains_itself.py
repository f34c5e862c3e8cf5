"""The validation gallery logged with every run: it shows every class and the worst answers
(not the first photos of a set sorted by class), picks the same photos for the same answers,
and carries a legend and a title per tile that say what the boxes and colours mean."""

import cv2
import numpy as np

from petloc.data.classes import SPECIES, Classes
from petloc.training.dataset import gallery_image
from petloc.training.evaluate import Predictions, per_image_iou
from petloc.training.gallery import (
    LABEL_CHARS,
    Answers,
    figure_rgb,
    gallery_figure,
    pick_for_gallery,
    save_rgb,
)
from tests.helpers import relabelled_images

CAT, DOG = SPECIES.index("cat"), SPECIES.index("dog")


def sorted_by_class(classes, count):
    """A set ordered as files sorted by class are: every photo of the first class first."""
    data = relabelled_images(classes, count=count)
    return data.subset(np.argsort(data.labels, kind="stable"))


def always(label: int, data, seed: int = 0) -> Predictions:
    """The answers of a model that names one class for every photo, its boxes a little off."""
    n = len(data)
    shift = np.random.default_rng(seed).uniform(0, 0.2, (n, 1)).astype(np.float32)
    boxes = np.clip(data.boxes + shift, 0, 1)
    probs = np.zeros((n, len(data.classes)), np.float32)
    probs[:, label] = 0.9
    return Predictions(np.full(n, label), np.full(n, 0.9), boxes, probs)


def answers_of(data, pred: Predictions, ious, names) -> Answers:
    """What the gallery draws: the photos, their true and predicted boxes and classes."""
    return Answers(
        data.images, data.boxes, pred.boxes, data.labels, pred.labels, pred.scores, ious, names
    )


def test_a_model_that_always_says_dog_is_shown_on_both_classes_and_its_errors_first():
    data = sorted_by_class(SPECIES, 24)  # 12 cats, then 12 dogs
    pred = always(DOG, data)
    ious = per_image_iou(data, pred)
    pick = pick_for_gallery(data.labels, pred.labels, ious, 8)
    chosen = pick.indices
    assert len(chosen) == len(set(chosen)) == 8
    assert {int(data.labels[i]) for i in chosen} == {CAT, DOG}
    # the worst half: the wrong answers (every cat), lowest IoU first
    assert len(pick.worst) == 4 and all(data.labels[i] == CAT for i in pick.worst)
    assert list(ious[pick.worst]) == sorted(ious[pick.worst])
    assert min(ious[pick.worst]) == min(ious[data.labels == CAT])
    assert pick_for_gallery(data.labels, pred.labels, ious, 8) == pick  # seeded: the same photos


def test_with_many_classes_the_spread_half_shows_as_many_classes_as_fit():
    breeds = Classes.of({f"breed_{i:02d}": None for i in range(37)})
    data = sorted_by_class(breeds, 74)
    pred = always(0, data)
    pick = pick_for_gallery(data.labels, pred.labels, per_image_iou(data, pred), 16)
    assert len(pick.indices) == 16
    shown = [int(data.labels[i]) for i in pick.indices]
    assert len(set(shown)) == 16  # no class twice while others are not shown


def test_a_gallery_asks_for_more_photos_than_there_are_shows_them_all():
    data = sorted_by_class(SPECIES, 6)
    pred = always(CAT, data)
    pick = pick_for_gallery(data.labels, pred.labels, per_image_iou(data, pred), 16)
    assert sorted(pick.indices) == list(range(6))
    assert pick_for_gallery(data.labels, pred.labels, per_image_iou(data, pred), 0).indices == []


def test_the_gallery_has_a_legend_and_each_tile_says_true_and_predicted_class_score_and_iou():
    data = sorted_by_class(SPECIES, 12)
    pred = always(DOG, data)
    ious = per_image_iou(data, pred)
    pick = pick_for_gallery(data.labels, pred.labels, ious, 4)
    answers = answers_of(data, pred, ious, SPECIES.names)
    fig = gallery_figure(answers, pick)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert {"true box", "predicted box"} <= set(labels)
    assert any("right class" in t for t in labels) and any("wrong class" in t for t in labels)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4
    first = pick.indices[0]  # a cat called a dog
    assert titles[0] == f"true cat\npred dog\nscore 0.90   IoU {ious[first]:.2f}"
    red, green = fig.axes[0].title.get_color(), fig.axes[-1].title.get_color()
    assert red != green  # wrong and right answers are told apart by colour


def test_long_class_names_stay_inside_their_tile():
    long_names = Classes.of({f"staffordshire_bull_terrier_{i:02d}": None for i in range(37)})
    data = sorted_by_class(long_names, 37)
    pred = always(5, data)
    ious = per_image_iou(data, pred)
    pick = pick_for_gallery(data.labels, pred.labels, ious, 16)
    answers = answers_of(data, pred, ious, long_names.names)
    fig = gallery_figure(answers, pick)
    figure_rgb(fig)  # drawn: the texts have their sizes
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width
        assert all(len(line) <= len("pred ") + LABEL_CHARS for line in ax.get_title().splitlines())


def test_the_gallery_is_written_as_a_png_of_four_tiles_a_row(tmp_path):
    data = sorted_by_class(SPECIES, 24)
    path = save_rgb(gallery_image(data, always(DOG, data), 8), tmp_path / "val_gallery.png")
    image = cv2.imread(str(path))
    assert image is not None
    height, width = image.shape[:2]
    assert width == 4 * 192  # 4 tiles of 192 px, as before the legend
    assert height > 2 * 192  # two rows of tiles under the legend
