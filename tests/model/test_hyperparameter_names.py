"""The hyperparameter declaration is plain data: it names what the Keras-side registries
hold, and a mistyped name in an experiment is answered before TensorFlow loads."""

import subprocess

import pytest

from petloc import hyperparams, model
from tests.helpers import PETLOC, petloc_env


@pytest.mark.parametrize(
    "declared, registry",
    [
        (hyperparams.BACKBONE_NAMES, model.BACKBONES),
        (hyperparams.BOX_HEAD_NAMES, model.BOX_HEADS),
        (hyperparams.SECOND_STAGE_NAMES, model.SECOND_STAGES),
        (hyperparams.BOX_LOSS_NAMES, model.BOX_LOSSES),
        (hyperparams.CLASS_WEIGHT_NAMES, model.CLASS_WEIGHTS),
        (hyperparams.TTA_NAMES, model.TTA),
    ],
)
def test_declared_names_are_the_registries_names(declared, registry):
    assert sorted(declared) == sorted(registry)


def test_the_registered_backbone_prefix_is_the_model_s():
    assert hyperparams.REGISTERED == model.REGISTERED


TENSORFLOW_LOADED = (
    "import sys\nfrom petloc.cli import main\nsys.argv = ['petloc', *sys.argv[1:]]\ntry:\n    main()\n"
    "except SystemExit as end:\n    print(end.code, 'tensorflow' in sys.modules)"
)


@pytest.mark.slow  # new processes
@pytest.mark.parametrize(
    "command, override, message",
    [
        (
            "sweep",
            "space.backbone=nope",
            "space: backbone: unknown backbone 'nope'; choose from efficientnetb0, ",
        ),
        (
            "train",
            "space.box_head=[dense, nope]",
            "space: box_head: unknown box head 'nope'; choose from centre, dense",
        ),
        (
            "config",
            "space.box_loss=nope",
            "space: box_loss: unknown box loss 'nope'; choose from giou, l1, ",
        ),
        (
            "pretrain",
            "pretrain.backbone=nope",
            "pretrain.backbone: unknown backbone 'nope'; choose from efficientnetb0, ",
        ),
    ],
)
def test_a_mistyped_name_is_one_line_without_tensorflow(tmp_path, command, override, message):
    experiment = tmp_path / "x.yaml"
    experiment.write_text("name: x\n")
    done = subprocess.run(
        [PETLOC[0], "-c", TENSORFLOW_LOADED, command, str(experiment), override],
        capture_output=True,
        text=True,
        timeout=120,
        env=petloc_env(),
        cwd=tmp_path,
    )
    assert done.stdout.split() == ["2", "False"], done.stderr  # exit 2, TensorFlow never imported
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"petloc: error: {experiment}: {message}")
