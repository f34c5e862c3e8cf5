"""`petloc pretrain` registers a classifier; a localiser starts from its backbone by name,
frozen or fine-tuned; head crops keep the head box right."""

import re

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from petloc.data.pipeline import ImageSet
from petloc.errors import PetlocError
from petloc.training.pretrain import with_head_crops
from tests.helpers import in_project, invoke, run_id_of, tiny_dataset, tiny_experiment

# Pretrained at 40 px; the localisers below take its weights at the experiment's 32 px.
PRETRAIN = {
    "backbone": "simple",
    "width": 0.25,
    "epochs": 1,
    "batch_size": 16,
    "aug_strength": 0.3,
    "image_size": 40,
}


def test_head_crop_box_still_frames_the_head():
    images = np.zeros((2, 40, 40, 3), np.uint8)
    boxes = np.array([[0.25, 0.5, 0.5, 0.75], [0.5, 0.0, 1.0, 0.5]], np.float32)
    for img, (x1, y1, x2, y2) in zip(images, boxes * 40, strict=True):
        img[int(y1) : int(y2), int(x1) : int(x2)] = 255
    both = with_head_crops(ImageSet(images, np.array([0, 1]), boxes, ["a.jpg", "b.jpg"], ["", ""]))
    assert len(both) == 4 and list(both.labels) == [0, 1, 0, 1] and both.paths[2] == "a.jpg#head"
    for img, (x1, y1, x2, y2) in zip(both.images[2:], both.boxes[2:] * 40, strict=True):
        painted = np.argwhere(img[..., 0] > 127)
        (top, left), (bottom, right) = painted.min(0), painted.max(0) + 1
        assert (left, top, right, bottom) == pytest.approx((x1, y1, x2, y2), abs=1.5)
        assert (x2 - x1) * (y2 - y1) > 0.3 * 40 * 40  # the head fills much more of the crop


# Everything below needs a pretrained network: slow.


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    with in_project(root):
        # The experiment's own tracking.uri, not the default store: the backbone is looked up there.
        exp = tiny_experiment(
            root,
            tiny_dataset(root / "photos"),
            pretrain=PRETRAIN,
            tracking={"uri": f"sqlite:///{root}/elsewhere/mlflow.db"},
        )
        result = invoke("pretrain", exp)
        assert result.exit_code == 0, result.output
        yield root, exp, result.output


@pytest.mark.slow
def test_pretrain_is_tracked_and_registered(pretrained, monkeypatch):
    root, _exp, output = pretrained
    monkeypatch.chdir(root)
    mlflow.set_tracking_uri(f"sqlite:///{root}/elsewhere/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{root}/elsewhere/mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias("petloc-backbone", "champion")
    r = client.get_run(version.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["petloc.kind"] == "pretrain"
    assert r.data.params["backbone"] == "simple" and r.data.params["head_crops"] == "True"
    assert r.data.params["image_size"] == "40"
    assert r.data.metrics["train_images"] == 2 * 45  # 45 training photos and their head crops
    assert 0 <= r.data.metrics["val_accuracy"] <= 1 and "val_head_accuracy" in r.data.metrics
    assert len(client.get_metric_history(r.info.run_id, "val/accuracy")) == 1
    assert "petloc-backbone@champion is now version 1" in output


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [True, False])
def test_localiser_starts_from_the_registered_backbone(pretrained, monkeypatch, freeze):
    root, exp, _ = pretrained
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = invoke(
        "train",
        exp,
        "space.backbone=registered:petloc-backbone@champion",
        f"space.freeze_backbone={str(freeze).lower()}",
    )
    assert result.exit_code == 0, result.output
    run_id = run_id_of(result.output)
    mlflow.set_tracking_uri(f"sqlite:///{root}/elsewhere/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{root}/elsewhere/mlflow.db")
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    localiser = mlflow.keras.load_model(MlflowClient().get_run(run_id).data.tags["model_uri"])
    classifier = mlflow.keras.load_model("models:/petloc-backbone@champion")
    (source,) = (layer for layer in classifier.layers if isinstance(layer, keras.Model))
    (target,) = (layer for layer in localiser.layers if isinstance(layer, keras.Model))
    same = [
        np.array_equal(a, b)
        for a, b in zip(source.get_weights(), target.get_weights(), strict=True)
    ]
    assert len(same) == len(source.get_weights()) > 0
    # Frozen, the backbone is exactly the pretrained one; fine-tuned, training moved it.
    assert all(same) if freeze else not all(same)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["space.backbone=registered:nothing@champion"],
            "models:/nothing@champion: no such registered model version; registered: petloc-backbone",
        ),
        (
            ["space.backbone=registered:petloc-backbone"],
            "should be registered:NAME@ALIAS or registered:NAME/VERSION",
        ),
        # Another split: the backbone may have trained on this run's validation photos.
        (
            ["space.backbone=registered:petloc-backbone@champion", "data.seed=1"],
            "was pretrained on another split",
        ),
    ],
)
def test_bad_registered_backbone_is_one_line(pretrained, monkeypatch, args, message):
    root, exp, _ = pretrained
    monkeypatch.chdir(root)
    with pytest.raises(PetlocError, match=re.escape(message)):
        invoke("train", exp, *args)


@pytest.mark.slow
def test_a_localiser_is_not_a_backbone(pretrained, monkeypatch):
    root, exp, _ = pretrained
    monkeypatch.chdir(root)
    # for petloc promote
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/elsewhere/mlflow.db")
    trained = invoke("train", exp)
    # petloc@champion, a localiser
    assert invoke("promote", run_id_of(trained.output)).exit_code == 0
    with pytest.raises(
        PetlocError, match="registered:petloc@champion is not a network from petloc pretrain"
    ):
        invoke("train", exp, "space.backbone=registered:petloc@champion")


def test_a_backbone_pretrained_on_caffe_inputs_is_refused_in_one_line(tmp_path):
    """Older petlocs pretrained resnet50 / vgg16 on Caffe's inputs; localisers now build
    them for -1..1, so such a backbone would see the wrong scaling: refused, not used."""
    from keras import layers

    from petloc.model.backbones import CaffePreprocess
    from petloc.tracking import registry, runs, store

    with in_project(tmp_path):
        store.configure()
        inner = keras.Sequential(
            [keras.Input((32, 32, 3)), CaffePreprocess(), layers.Conv2D(2, 3)], name="vgg16"
        )
        classifier = keras.Sequential(
            [keras.Input((32, 32, 3)), inner, layers.GlobalAveragePooling2D(), layers.Dense(2)]
        )
        run_id = runs.create_run(
            runs.experiment_id("old"), "pretrain-vgg16", {"petloc_kind": "pretrain"}
        )
        mlflow.log_params({"backbone": "vgg16", "width": 1.0}, run_id=run_id)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.keras.log_model(classifier, name="model")
        client = MlflowClient()
        client.create_registered_model("old-backbone")
        version = client.create_model_version(
            "old-backbone", info.model_uri, run_id=run_id, model_id=info.model_id
        )
        client.set_registered_model_alias("old-backbone", "champion", version.version)
        with pytest.raises(
            PetlocError,
            match=r"^backbone: registered:old-backbone@champion was pretrained by an "
            r"older petloc on Caffe's inputs.*pretrain it again$",
        ):
            registry.pretrained_backbone("old-backbone@champion")
