"""Class weighting: the rarer class weighs more in the class loss, the box loss is untouched,
and a model trains with it."""

import numpy as np
import pytest

from petloc.data.pipeline import ImageSet, train_batches
from petloc.model import CLASS_WEIGHTS
from petloc.training.fit import fit_localiser


def arrays(labels):
    n = len(labels)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    boxes = np.tile([[0.2, 0.2, 0.7, 0.8]], (n, 1)).astype(np.float32)
    return ImageSet(
        images, np.asarray(labels, np.int32), boxes, [f"{i}.jpg" for i in range(n)], [""] * n
    )


def test_balanced_weights_make_both_classes_count_the_same():
    labels = np.array([0] * 3 + [1] * 9)
    weights = CLASS_WEIGHTS["balanced"](labels, 2)
    assert weights == pytest.approx([2.0, 2 / 3])
    assert (weights[labels]).sum() == pytest.approx(len(labels))  # the loss keeps its scale
    assert weights[0] * 3 == pytest.approx(weights[1] * 9)
    assert CLASS_WEIGHTS["none"](labels, 2) is None


def test_batches_carry_class_weights_for_the_class_loss_only():
    data = arrays([0, 1, 1, 1, 0, 1, 1, 1])
    weights = CLASS_WEIGHTS["balanced"](data.labels, 2)
    for strength in (0.0, 0.3):
        for _images, y, sw in train_batches(data, 4, strength, seed=0, class_weights=weights):
            np.testing.assert_allclose(sw["cls"].numpy(), weights[y["cls"].numpy()])
            np.testing.assert_array_equal(sw["box"].numpy(), 1.0)


@pytest.mark.slow  # three trainings
def test_balanced_class_weights_change_what_the_class_head_learns():
    data = arrays([0, 1, 1, 1] * 4)
    hp = {
        "backbone": "simple",
        "width": 0.25,
        "head_units": 8,
        "image_size": 32,
        "aug_strength": 0.0,
        "batch_size": 8,
        "box_loss": "l1",
    }
    kernels = []
    for weighting in ("none", "none", "balanced"):  # same seed and data; only the weighting differs
        model, history = fit_localiser({**hp, "class_weight": weighting}, data, data, epochs=1)
        assert np.isfinite(history.history["loss"][0])
        kernels.append(np.asarray(model.get_layer("cls").kernel))
    rerun_noise = np.abs(kernels[1] - kernels[0]).max()
    assert np.abs(kernels[2] - kernels[0]).max() > 10 * rerun_noise + 1e-6
