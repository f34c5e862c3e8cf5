"""One spelling per MLflow name: petloc writes the new ones and still reads what older
versions wrote (petloc_kind, petloc_version, an ensemble's backbone=ensemble), in a real store."""

from __future__ import annotations

import keras
import pytest
from keras import layers
from mlflow.tracking import MlflowClient

from petloc import quantities
from petloc.errors import PetlocError
from petloc.tracking import log, registry, vocabulary
from petloc.tracking.reproduce import reproduce
from petloc.tracking.store import configure
from petloc.tracking.sweep_record import LEADERBOARD_COLUMNS, SweepRecord
from tests.helpers import in_project


@pytest.fixture
def client(tmp_path):
    with in_project(tmp_path):
        uri = configure()
        yield MlflowClient(uri, registry_uri=uri)


def classifier() -> keras.Model:
    """A cat / dog classifier around a backbone network, as `petloc pretrain` logs one (tiny)."""
    net = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(2, 3)], name="net")
    return keras.Sequential(
        [keras.Input((8, 8, 3)), net, layers.GlobalAveragePooling2D(), layers.Dense(2)]
    )


# an older petloc's spelling, and today's
@pytest.mark.parametrize("kind_tag", ["petloc_kind", "petloc.kind"])
def test_a_pretrained_classifier_is_promoted_and_used_as_a_backbone_under_either_spelling(
    client, kind_tag
):
    experiment_id = client.create_experiment("pretrain")
    run_id = client.create_run(
        experiment_id, tags={kind_tag: "pretrain", "val_data": "digest/0.2/0"}
    ).info.run_id
    client.log_param(run_id, "backbone", "mobilenet_v3_small")
    client.log_param(run_id, "width", "0.25")
    client.log_metric(run_id, "val_accuracy", 0.8)
    log.log_model(classifier(), run_id, localiser=False)
    client.set_terminated(run_id)

    promotion = registry.promote(run_id, "backbones")  # ranked by val accuracy, as a classifier is
    assert (
        promotion.champion
        and promotion.reason
        == "backbones@champion is now version 1 (val accuracy 0.800, first champion)"
    )
    assert client.get_registered_model("backbones").description.startswith(
        "petloc: cat/dog classifier"
    )
    pretrained = registry.pretrained_backbone("backbones@champion")
    assert (pretrained.backbone, pretrained.width, pretrained.val_data) == (
        "mobilenet_v3_small",
        0.25,
        "digest/0.2/0",
    )


def test_a_run_of_no_kind_is_no_pretrained_backbone(client):
    experiment_id = client.create_experiment("train")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "best_val_miou", 0.5)
    log.log_model(classifier(), run_id, localiser=False)
    client.set_terminated(run_id)
    registry.promote(run_id, "localisers")
    with pytest.raises(
        PetlocError, match="registered:localisers@champion is not a network from petloc pretrain"
    ):
        registry.pretrained_backbone("localisers@champion")


def test_reproduce_tells_ensembles_and_classifiers_apart_under_either_spelling(client):
    experiment_id = client.create_experiment("sweep")
    parent = client.create_run(
        experiment_id, tags={"petloc.kind": "sweep", "petloc.sweep": "tiny"}
    ).info.run_id

    def child(miou: float, tags: dict, params: dict, nested: bool = True) -> str:
        tags = {"mlflow.parentRunId": parent, **tags} if nested else tags
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        for key, value in params.items():
            client.log_param(run_id, key, value)
        client.log_metric(run_id, "best_val_miou", miou)
        client.set_terminated(run_id)
        return run_id

    old_ensemble = child(0.9, {"trial_id": "ensemble"}, {"backbone": "ensemble", "members": "0, 1"})
    new_ensemble = child(
        0.8,
        {"trial_id": "ensemble", "petloc.kind": "ensemble"},
        {"backbone": "resnet50", "members": "0, 1"},
    )
    old_classifier = child(0.7, {"petloc_kind": "pretrain"}, {"backbone": "resnet50"}, nested=False)
    trial = child(0.6, {"trial_id": "0"}, {"backbone": "resnet50"})
    for ensemble in (old_ensemble, new_ensemble):
        with pytest.raises(
            PetlocError,
            match=rf"^run {ensemble}: the ensemble of a sweep's trials 0, 1; reproduce its member runs",
        ):
            reproduce(ensemble)
    with pytest.raises(
        PetlocError, match=rf"^run {old_classifier}: not a finished localiser training run or trial"
    ):
        reproduce(old_classifier)
    # The parent's hint names its best reproducible run: neither ensemble, whatever its spelling.
    with pytest.raises(PetlocError, match=rf"such as its best, run {trial} "):
        reproduce(parent)


def test_runs_are_written_with_the_new_spellings_and_read_with_both():
    tags = log.provenance()
    assert (
        vocabulary.VERSION == "petloc.version"
        and vocabulary.VERSION in tags
        and "petloc_version" not in tags
    )
    assert (
        vocabulary.kind_of({"petloc_kind": "pretrain"})
        == vocabulary.kind_of({"petloc.kind": "pretrain"})
        == "pretrain"
    )
    assert vocabulary.kind_of({}) is None
    assert vocabulary.is_ensemble({}, {"backbone": "ensemble"}) and vocabulary.is_ensemble(
        {"petloc.kind": "ensemble"}, {}
    )
    assert not vocabulary.is_ensemble({"petloc.kind": "sweep"}, {"backbone": "resnet50"})


def test_every_petloc_tag_carries_the_dotted_prefix():
    own = [
        vocabulary.KIND,
        vocabulary.VERSION,
        vocabulary.OWNER,
        vocabulary.SWEEP,
        vocabulary.FINGERPRINT,
        vocabulary.CHIEF,
        vocabulary.CHIEF_HEARTBEAT,
        vocabulary.WORKER,
    ]
    assert all(name.startswith("petloc.") for name in own) and len(set(own)) == len(own)


def test_a_run_metric_is_val_and_its_quantity_and_is_shown_as_the_quantity():
    """The documented rule (vocabulary.py): measured on the validation photos, `val_` + the
    quantity (mIoU: the design contract's best_val_miou); measured on no photos, the
    quantity's own name. Every name of a quantity rounds alike."""
    on_photos = {quantities.MIOU, quantities.IOU50, quantities.ACCURACY, *quantities.CLASS_FIGURES}
    for quantity, metric in vocabulary.RUN_METRICS.items():
        rule = f"val_{quantity}" if quantity in on_photos else quantity
        assert metric == ("best_val_miou" if quantity == quantities.MIOU else rule)
        assert quantities.decimals_of(metric) == quantities.DECIMALS[quantity] is not None
    # the leaderboard's figure columns are the runs' metric names
    metric_columns = [(c, k) for c, k in LEADERBOARD_COLUMNS if k.startswith("metrics.")]
    assert [c for c, _ in metric_columns] == list(vocabulary.LEADERBOARD_METRICS)
    assert all(k == f"metrics.{c}" for c, k in metric_columns)
    assert set(vocabulary.BEST_FIGURES) <= set(vocabulary.LEADERBOARD_METRICS)


def test_a_sweep_of_an_older_petloc_resumes_and_its_parent_gets_the_new_names(client):
    """An older petloc logged the best trial's figures on the parent as best_accuracy, ...:
    the leaderboard is rebuilt from the trial runs, and the parent gets the new names."""
    experiment_id = client.create_experiment("old")
    parent = client.create_run(experiment_id, tags={"petloc.kind": "sweep"}).info.run_id
    client.log_metric(parent, "best_accuracy", 0.5)
    trial = client.create_run(
        experiment_id, tags={"mlflow.parentRunId": parent, "trial_id": "0"}
    ).info.run_id
    for name, value in (("best_val_miou", 0.6), ("val_accuracy", 0.75), ("val_iou50", 0.5)):
        client.log_metric(trial, name, value)
    client.set_terminated(trial)
    record = SweepRecord(parent)
    rows = record.leaderboard()
    record.log_outcome(rows[0], vocabulary.BEST_FIGURES, len(rows), failed=0)
    metrics = client.get_run(parent).data.metrics
    assert rows[0][vocabulary.VAL_ACCURACY] == 0.75
    assert (metrics["best_val_miou"], metrics["val_accuracy"], metrics["val_iou50"]) == (
        0.6,
        0.75,
        0.5,
    )
