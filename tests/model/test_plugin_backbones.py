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


def _takes_two(image_size, width):
    return None


def _gives_a_tensor(image_size, width, weights):
    return np.zeros((image_size, image_size, 3))


def _gives_a_layer(image_size, width, weights):
    import keras

    return keras.layers.Conv2D(8, 3)


@pytest.mark.parametrize(
    "builder, problem",
    [
        (_takes_two, "its builder does not take (image_size, width, weights)"),
        (_gives_a_tensor, "its builder returned a ndarray, not a keras.Model"),
        (_gives_a_layer, "its builder returned a Conv2D, not a keras.Model"),
    ],
)
def test_a_plugin_builder_of_the_wrong_shape_is_one_line(tmp_path, builder, problem):
    import petloc

    with forgetting_plugins(tmp_path):
        petloc.register_backbone("wrongnet")(builder)
        with pytest.raises(PetlocError) as err:
            build_backbone("wrongnet", SIZE)
    assert str(err.value).startswith(f"backbone 'wrongnet' (plug-in {__name__}): {problem}")
    assert "\n" not in str(err.value)


def test_a_type_error_inside_a_builder_that_takes_the_arguments_keeps_its_traceback(tmp_path):
    import petloc

    def build(image_size, width, weights):
        return len(image_size)  # the plug-in's own bug, for its author to see

    with forgetting_plugins(tmp_path):
        petloc.register_backbone("buggynet")(build)
        with pytest.raises(TypeError, match="has no len"):
            build_backbone("buggynet", SIZE)


def test_building_the_backbone_of_a_broken_entry_point_names_it(tmp_path, monkeypatch):
    from petloc import plugins

    with forgetting_plugins(tmp_path):
        monkeypatch.setattr(plugins, "_entry_points_loaded", True)
        plugins.BROKEN["gonenet"] = "entry point gonenet = gone of demo 1.0: cannot load it"
        with pytest.raises(PetlocError) as err:
            build_backbone("gonenet", SIZE)
    assert (
        str(err.value)
        == "backbone 'gonenet': entry point gonenet = gone of demo 1.0: cannot load it"
    )
