"""Every registered backbone learns from scratch on the embedded synthetic pets in a short
run: val mIoU (and, where the run is long enough, val accuracy) clearly above what knowing
nothing gives (the training boxes' mean box, the majority class of the val split), and the
model's figures on its own training images close to val's. The last one holds the
batch-norm fix: with Keras's momentum 0.99/0.999 the moving statistics never settled in a
short run and the inference-mode MobileNetV2 predicted one constant (val mIoU 0.055,
training-mode 0.26)."""

from dataclasses import dataclass

import numpy as np
import pytest

from petloc.data.pipeline import load_arrays, split_train_val
from petloc.data.synth import generate
from petloc.model import BACKBONES
from petloc.model.metrics import box_iou
from petloc.training.evaluate import quality
from petloc.training.fit import fit_localiser

SIZE = 64
MARGIN = 0.05  # "clearly above the floor"
MAX_GAP = 0.12  # train minus val, mIoU and accuracy


@dataclass(frozen=True)
class ShortRun:
    epochs: int
    learns_class: bool  # within these epochs; the box is learnt by every backbone in a few
    learning_rate: float = 2e-3


# Measured on these 850 training images (1000 synthetic pets at 64 px), batch 16, Adam 2e-3
# (3e-4 for the two deep ImageNet networks, which stay at the mean box at 2e-3): the box is
# found within 4 epochs by every backbone, the class takes far more images seen.
RUNS = {
    "simple": ShortRun(6, learns_class=True),
    "simple_context": ShortRun(10, learns_class=True),
    "small_resnet": ShortRun(18, learns_class=True),
    "mobilenetv2": ShortRun(4, learns_class=False),
    "efficientnetb0": ShortRun(4, learns_class=False),
    # VGG16 and ResNet50 from scratch take inputs in -1..1 (Caffe's +-128 only with ImageNet
    # weights: VGG16's first class loss was 305). At 2e-3 both stayed at the mean box (val mIoU
    # 0.08-0.10 for 3 epochs, with or without batch norm in VGG16); at 3e-4, 4 epochs on 2 busy
    # cores: VGG16 val mIoU 0.57, train 0.54 (128 s); ResNet50 0.22 and 0.22 (115 s); floor 0.08;
    # both at the majority share of the class. 2 epochs here (both still pass): on 2 AVX2 cores
    # their 4-epoch runs took 14 and 11.5 min of the slow tier, 2 epochs 7.5 min each.
    "vgg16": ShortRun(2, learns_class=False, learning_rate=3e-4),
    "resnet50": ShortRun(2, learns_class=False, learning_rate=3e-4),
}


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("pets"), count=1000, seed=0, size=SIZE)
    return split_train_val(load_arrays(folder, SIZE, cache_dir=None), 0.15, seed=0)


def floors(train, val) -> dict[str, float]:
    """What a model that learnt nothing scores on val: the mean training box, the majority class."""
    mean_box = np.tile(train.boxes.mean(axis=0), (len(val), 1))
    return {
        "miou": float(box_iou(val.boxes, mean_box).mean()),
        "accuracy": float(np.bincount(val.labels).max() / len(val)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_learns_from_scratch_in_a_short_run(name, pets):
    run = RUNS[name]  # a new backbone needs its short run here
    train, val = pets
    values = {
        "backbone": name,
        "width": 0.5,
        "image_size": SIZE,
        "aug_strength": 0.2,
        "head_units": 64,
        "dropout": 0.0,
        "box_loss": "smooth_l1",
        "box_loss_weight": 5.0,
        "learning_rate": run.learning_rate,
        "batch_size": 16,
    }
    model, _ = fit_localiser(values, train, val, run.epochs)
    on_train, on_val = quality(model, train)[0], quality(model, val)[0]
    floor = floors(train, val)
    print(f"{name}: val {on_val}, train {on_train}, floor {floor}")
    checked = ["miou", "accuracy"] if run.learns_class else ["miou"]
    for figure in checked:
        assert on_val[figure] > floor[figure] + MARGIN, (
            f"val {figure} {on_val[figure]:.3f}, floor {floor[figure]:.3f}"
        )
        assert on_train[figure] - on_val[figure] < MAX_GAP, (
            f"train {figure} {on_train[figure]:.3f}, val {on_val[figure]:.3f}"
        )
    if not run.learns_class:  # not learnt yet, but never worse than the majority
        assert on_val["accuracy"] >= floor["accuracy"] - MARGIN
