"""A plug-in backbone builds like a built-in one, and a `.keras` file with the plug-in's own
layer loads once petloc has imported the module the file names."""

import subprocess
import sys

import numpy as np
import pytest

from petloc.errors import PetlocError
from petloc.model import Hyperparameters, build_backbone, build_model
from petloc.training.model_needs import unregistered_modules
from petloc.training.predict import load_keras_file
from tests.helpers import forgetting_plugins, petloc_env, write_plugin

SIZE = 32


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    write_plugin(tmp_path, "model_nets", "modelnet", custom_layer=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    with forgetting_plugins(tmp_path):
        from petloc import plugins

        plugins.import_plugins(["model_nets"], "test")
        yield tmp_path


def test_a_plugin_backbone_builds_into_a_localiser(plugin):
    net = build_backbone("modelnet", SIZE)
    assert net.output_shape == (None, 8, 8, 8)
    model = build_model(Hyperparameters(backbone="modelnet", head_units=8), SIZE)
    out = model(np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert out["box"].shape == (1, 4)
    with pytest.raises(PetlocError, match=r"unknown backbone 'nope'; choose from .*modelnet"):
        build_backbone("nope", SIZE)


def test_a_saved_model_names_the_plugin_module_its_layer_needs(plugin):
    model = build_model(Hyperparameters(backbone="modelnet", head_units=8), SIZE)
    path = plugin / "model.keras"
    model.save(path)
    assert unregistered_modules(path) == []  # registered here: nothing to import
    assert load_keras_file(path).count_params() == model.count_params()

    # a process where the module was never imported loads it by the name the file holds
    script = (
        "import sys\nfrom petloc.training.model_needs import unregistered_modules\n"
        "from petloc.training.predict import load_keras_file\n"
        "print(unregistered_modules(sys.argv[1]))\nload_keras_file(sys.argv[1])\n"
        "print('model_nets' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=plugin,
        env=petloc_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["['model_nets']", "True"]
