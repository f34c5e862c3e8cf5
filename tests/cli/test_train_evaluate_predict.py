"""`petloc train`, `evaluate` and `predict` end to end on a real (tiny) MLflow store."""

import json
import re

import numpy as np
import pytest

from petloc.errors import PetlocError
from tests.helpers import (
    in_project,
    invoke,
    petloc_process,
    run_id_of,
    store_client,
    tiny_dataset,
    tiny_experiment,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tracked training run in a fresh project folder, shared by the tests below."""
    root = tmp_path_factory.mktemp("project")
    with in_project(root):
        data = tiny_dataset(root / "photos")
        exp = tiny_experiment(root, data)
        result = invoke(
            "train", exp, "train.epochs=2", "space.tta=flip", "train.precision=mixed_bfloat16"
        )
        assert result.exit_code == 0, result.output
        yield root, data, run_id_of(result.output)


def test_train_logs_params_curves_summary_and_artifacts(trained, monkeypatch):
    root, _data, run_id = trained
    monkeypatch.chdir(root)
    client = store_client(root)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["backbone"] == "simple" and float(r.data.params["learning_rate"]) == 0.003
    assert r.data.params["image_size"] == "32" and r.data.params["seed"] == "0"
    for key in ("best_val_miou", "val_accuracy", "latency_ms_b1", "latency_ms_b32", "params_count"):
        assert key in r.data.metrics, key
    assert 0 <= r.data.metrics["best_val_miou"] <= 1
    assert r.data.params["tta"] == "flip" and 0 <= r.data.metrics["val_miou_without_tta"] <= 1
    assert r.data.params["xla"] == "False" and r.data.params["precision"] == "mixed_bfloat16"
    assert [m.step for m in client.get_metric_history(run_id, "val/miou")] == [1, 2]
    assert len(client.get_metric_history(run_id, "train/loss")) == 2
    assert r.data.tags["dataset_digest"]  # provenance tags: tests/tracking/test_run_records.py
    files = {f.path for f in client.list_artifacts(run_id)} | {
        f.path for f in client.list_artifacts(run_id, "gallery")
    }
    assert {"curves.png", "gallery/val_gallery.png"} <= files
    assert (root / "mlruns" / "mlflow.db").is_file() and (root / "mlruns" / "artifacts").is_dir()


@pytest.mark.slow  # XLA compiles the training step: 30 s on 2 shared cores
def test_training_with_xla_finishes_and_is_logged_as_such(tmp_path):
    with in_project(tmp_path):
        exp = tiny_experiment(tmp_path, tiny_dataset(tmp_path / "photos", count=24))
        result = invoke("train", exp, "train.xla=true")
    assert result.exit_code == 0, result.output
    r = store_client(tmp_path).get_run(run_id_of(result.output))
    assert r.info.status == "FINISHED" and r.data.params["xla"] == "True"


def test_evaluate_json_has_the_figures(trained, monkeypatch):
    root, data, run_id = trained
    monkeypatch.chdir(root)
    result = invoke("evaluate", f"runs:/{run_id}/model", data, "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["images"] == 60 and 0 <= figures["miou"] <= 1 and 0 <= figures["accuracy"] <= 1
    assert figures["latency_ms_b1"] > 0 and "iou50" in figures


def test_evaluate_on_the_runs_validation_split_reproduces_its_figures(trained, monkeypatch):
    root, data, run_id = trained
    monkeypatch.chdir(root)
    result = invoke(
        "evaluate",
        f"runs:/{run_id}/model",
        data,
        "--json",
        "--subset",
        "val",
        "--val-split",
        "0.25",
        "--seed",
        "0",
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    logged = store_client(root).get_run(run_id).data.metrics
    assert figures["images"] == 15 and figures["subset"] == "val"
    assert figures["miou"] == pytest.approx(logged["best_val_miou"], abs=1e-4)
    # the logged model has the TTA in it
    assert figures["accuracy"] == pytest.approx(logged["val_accuracy"], abs=1e-4)
    flipped = json.loads(
        invoke("evaluate", f"runs:/{run_id}/model", data, "--json", "--tta", "flip").stdout
    )
    assert flipped["tta"] == "flip" and flipped["images"] == 60 and 0 <= flipped["miou"] <= 1


def test_predict_json_lines_with_pixel_boxes_and_errors(trained, monkeypatch, tmp_path):
    root, data, run_id = trained
    monkeypatch.chdir(root)
    photo = sorted(data.glob("*.jpg"))[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    twin = tmp_path / "elsewhere" / photo.name  # the same file name in another folder
    twin.parent.mkdir()
    twin.write_bytes(photo.read_bytes())
    result = invoke(
        "predict", f"runs:/{run_id}/model", photo, broken, twin, "--json", "--out", tmp_path / "out"
    )
    assert result.exit_code == 1, result.output  # one image failed
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert lines[0]["image"] == str(photo) and lines[0]["label"] in ("cat", "dog")
    assert 0 <= lines[0]["score"] <= 1
    x1, y1, x2, y2 = lines[0]["box"]
    assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64  # pixels of the 64 px photo, not 0..1
    assert lines[1]["image"] == str(broken) and "error" in lines[1]
    assert lines[2]["image"] == str(twin) and lines[2]["box"] == lines[0]["box"]
    # none overwritten
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{photo.stem}-2.png",
        f"{photo.stem}.png",
    ]


def test_python_api_loads_by_uri(trained, monkeypatch):
    import petloc

    root, data, run_id = trained
    monkeypatch.chdir(root)
    import cv2

    predictor = petloc.load_model(f"runs:/{run_id}/model")
    photo = cv2.imread(str(sorted(data.glob("*.jpg"))[0]))[:, :, ::-1]
    wide = cv2.resize(photo, (300, 150))  # not square, not the model's size
    [pred] = predictor.predict([wide])
    size = predictor.image_size
    normalised = np.asarray(
        predictor.model.predict(
            cv2.resize(wide, (size, size), interpolation=cv2.INTER_AREA)[None].astype(np.float32)
        )["box"]
    )[0]
    x1, x2 = sorted(normalised[[0, 2]] * 300)
    y1, y2 = sorted(normalised[[1, 3]] * 150)
    assert pred.box == pytest.approx((x1, y1, x2, y2), abs=0.01)  # pixels of the 300 x 150 photo
    assert pred.label in ("cat", "dog")
    # Trained in mixed_bfloat16, logged in float32: it computes in float32 wherever it is loaded.
    assert dtype_policies(predictor.model) == {"float32"}


def dtype_policies(model) -> set[str]:
    found = set()
    for layer in model.layers:
        found |= dtype_policies(layer) if hasattr(layer, "layers") else {layer.dtype_policy.name}
    return found


@pytest.mark.parametrize(
    "args, message",
    [
        (["space.backbone=resnet18"], "unknown backbone 'resnet18'"),
        (["data.path=/nonexistent/photos"], "/nonexistent/photos: data folder does not exist"),
        (["train.epoks=2"], "train.epoks: not a key; did you mean train.epochs?"),
    ],
)
def test_bad_configuration_is_a_one_line_error(tmp_path, args, message):
    exp = tiny_experiment(tmp_path, tmp_path / "photos")
    (tmp_path / "photos").mkdir()
    with in_project(tmp_path), pytest.raises(PetlocError, match=re.escape(message)) as err:
        invoke("train", exp, *args)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # loading an experiment imports TensorFlow: 5-20 s for a new process
def test_bad_configuration_from_the_shell_is_exit_2_without_traceback(tmp_path):
    exp = tiny_experiment(tmp_path, tmp_path / "photos")
    (tmp_path / "photos").mkdir()
    proc = petloc_process("train", exp, "train.epoks=2", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("petloc: error: ")
    assert (
        "train.epoks: not a key; did you mean train.epochs?" in proc.stderr
        and "Traceback" not in proc.stderr
    )
