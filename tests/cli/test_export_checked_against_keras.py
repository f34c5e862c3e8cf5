"""`petloc export` and `petloc.export`: each format is written, run beside the Keras model on
photo files and kept only within the tolerance; a TFLite export answers `petloc predict` as
the Keras model does; mistakes are one line."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

import petloc
from petloc.errors import PetlocError
from petloc.model import Hyperparameters, build_model
from petloc.training import export as exporting
from tests.helpers import (
    in_project,
    invoke,
    petloc_process,
    run_id_of,
    tiny_dataset,
    tiny_experiment,
)

SIZE = 32
TOLERANCE = 1e-3
CHECKED = re.compile(
    r"checked on (\d+) (?:synthetic photos|photos from \S+|validation photos of \S+): "
    r"largest difference from the Keras model (\S+) in boxes \(normalised to the image side\), "
    r"(\S+) in class scores; tolerance 0.001"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny untrained localiser (an export must match it, trained or not) and a few photos."""
    folder = tmp_path_factory.mktemp("export")
    build_model(Hyperparameters(width=0.25, head_units=8), SIZE).save(folder / "tiny.keras")
    tiny_dataset(folder / "photos", count=6)
    return folder


@pytest.fixture(scope="module")
def tflite(project):
    """`petloc export tiny.keras --format tflite`, checked on the dataset's photos."""
    out = project / "tflite"
    result = invoke(
        "export", project / "tiny.keras", "--format", "tflite", "--out", out,
        "--data", project / "photos",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output


def differences(output: str) -> tuple[int, float, float]:
    found = CHECKED.search(output)
    assert found, output
    photos, box, score = found.groups()
    return int(photos), float(box), float(score)


def predictions(model, images) -> list[dict]:
    result = invoke("predict", model, *images, "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_a_tflite_export_is_checked_on_the_photos_and_says_what_it_holds(project, tflite):
    out, output = tflite
    photos, box, score = differences(output)
    assert photos == 6 and box <= TOLERANCE and score <= TOLERANCE
    assert sorted(p.name for p in out.iterdir()) == ["model.tflite", "petloc.json"]
    meta = json.loads((out / "petloc.json").read_text())
    assert meta["format"] == "tflite" and meta["file"] == "model.tflite"
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == SIZE
    assert meta["check"]["max_box_difference"] == pytest.approx(box, rel=0.1, abs=1e-9)
    # nothing left beside it from the writing
    assert sorted(p.name for p in project.iterdir()) == ["photos", "tflite", "tiny.keras"]


@pytest.mark.parametrize("given", ["folder", "file"])
def test_predict_with_the_tflite_export_answers_as_with_the_keras_model(project, tflite, given):
    images = sorted((project / "photos").glob("*.jpg"))
    model = tflite[0] if given == "folder" else tflite[0] / "model.tflite"
    keras_rows, tflite_rows = (
        predictions(project / "tiny.keras", images),
        predictions(model, images),
    )
    assert len(tflite_rows) == len(images)
    for want, got in zip(keras_rows, tflite_rows, strict=True):
        assert got["image"] == want["image"] and got["label"] == want["label"]
        assert got["score"] == pytest.approx(want["score"], abs=2e-4)  # printed to 4 places
        assert got["box"] == pytest.approx(want["box"], abs=0.11)  # printed to 0.1 px


def test_a_savedmodel_export_from_python_loads_in_tensorflow(project):
    heard: list[str] = []
    result = petloc.export(
        project / "tiny.keras", "savedmodel", project / "savedmodel", say=heard.append
    )
    assert result.folder == result.file == project / "savedmodel"
    assert result.check["photos"] == exporting.CHECK_PHOTOS  # synthetic photos when no data
    assert result.check["max_box_difference"] <= TOLERANCE
    assert result.check["max_score_difference"] <= TOLERANCE
    assert differences(heard[0])[0] == exporting.CHECK_PHOTOS
    assert heard[0].endswith("(--data DIR checks on your own photos)")
    serve = tf.saved_model.load(str(result.folder)).signatures["serving_default"]
    out = serve(pixels=tf.zeros((2, SIZE, SIZE, 3)))
    assert out["cls"].shape == (2, 2) and out["box"].shape == (2, 4)
    labels = {
        p.label
        for p in petloc.load_model(str(result.folder)).predict([np.zeros((40, 50, 3), np.uint8)])
    }
    assert labels <= {"cat", "dog"}


def test_an_onnx_export_answers_as_the_keras_model(project):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    result = petloc.export(
        project / "tiny.keras", "onnx", project / "onnx", data=project / "photos", say=None
    )
    assert result.file == project / "onnx" / "model.onnx"
    assert result.check["max_box_difference"] <= TOLERANCE
    image = np.full((48, 64, 3), 120, np.uint8)
    keras_answer = petloc.load_model(str(project / "tiny.keras")).predict([image])[0]
    onnx_answer = petloc.load_model(str(result.file)).predict([image])[0]
    assert onnx_answer.label == keras_answer.label
    assert onnx_answer.box == pytest.approx(keras_answer.box, abs=1e-3)


def test_an_export_that_answers_differently_is_not_kept(project, monkeypatch):
    """A converter that wrote another network (here: other weights) fails the check."""
    other = build_model(Hyperparameters(width=0.25, head_units=8), SIZE)
    for weights in other.weights:
        weights.assign(weights + 0.3)
    real = exporting.FORMATS["tflite"]
    monkeypatch.setitem(
        exporting.FORMATS,
        "tflite",
        exporting.Format(lambda model, folder: real.write(other, folder), real.run, real.suffix),
    )
    with pytest.raises(PetlocError) as err:
        petloc.export(project / "tiny.keras", "tflite", project / "corrupt", say=None)
    assert "differs from the Keras model by more than the tolerance 0.001" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (project / "corrupt").exists()
    assert not [p for p in project.iterdir() if p.name.startswith(".corrupt")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--format", "tflit"],
            "--format: 'tflit' is not one of savedmodel, tflite, onnx; did you mean tflite?",
        ),
        (["--format", "tflite", "--out", "photos"], "is a folder that is not empty"),
        (["--format", "tflite", "--out", "tiny.keras"], "is a file; give a new or empty folder"),
        (["--format", "tflite", "--data", "nowhere"], "--data nowhere: no such folder"),
    ],
)
def test_bad_export_options_are_one_line(project, monkeypatch, args, message):
    monkeypatch.chdir(project)
    options = args if "--out" in args else [*args, "--out", "new"]
    with pytest.raises(PetlocError, match=re.escape(message)) as err:
        invoke("export", "tiny.keras", *options)
    assert "\n" not in str(err.value)
    assert not (project / "new").exists()


def test_a_missing_model_is_one_line_and_exit_code_2(tmp_path):
    result = petloc_process(
        "export", tmp_path / "missing.keras", "--format", "tflite", "--out", tmp_path / "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"petloc: error: {tmp_path / 'missing.keras'}: no such model file "
        "(give a .keras file or an MLflow URI such as models:/petloc@champion)"
    ]
    assert not (tmp_path / "out").exists()


def test_predict_on_an_export_without_its_metadata_is_one_line(project, tflite, tmp_path):
    alone = tmp_path / "model.tflite"
    alone.write_bytes((tflite[0] / "model.tflite").read_bytes())
    with pytest.raises(
        PetlocError, match=r"petloc.json: cannot be read .*export the model with petloc export"
    ):
        invoke("predict", alone, next((project / "photos").glob("*.jpg")))


def test_export_is_part_of_the_python_api():
    from petloc import api

    assert "export" in petloc.__all__ and petloc.export is api.export
    assert petloc.ExportResult is api.ExportResult


def test_a_model_tflite_has_no_op_for_is_one_line_and_leaves_nothing(tmp_path):
    head_crop = build_model(
        Hyperparameters(width=0.25, head_units=8, second_stage="head_crop"), SIZE
    )
    head_crop.save(tmp_path / "crop.keras")
    with pytest.raises(PetlocError) as err:
        petloc.export(tmp_path / "crop.keras", "tflite", tmp_path / "out", say=None)
    assert "TFLite has no built-in op for CropAndResize" in str(err.value)
    assert "export it as savedmodel or onnx" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crop.keras"]


@pytest.mark.parametrize("tolerance", [True, -0.1, float("nan"), float("inf"), "0.1", None])
def test_a_tolerance_that_is_not_a_finite_number_from_0_is_one_line(project, tolerance):
    with pytest.raises(PetlocError) as err:
        petloc.export(project / "tiny.keras", "tflite", project / "never", tolerance=tolerance)
    assert str(err.value) == f"tolerance: {tolerance!r} is not a finite number from 0 up"
    assert not (project / "never").exists()


def test_evaluate_on_an_export_says_it_takes_the_keras_model(project, tflite):
    for given in (tflite[0], tflite[0] / "model.tflite"):
        with pytest.raises(PetlocError) as err:
            invoke("evaluate", given, project / "photos")
        assert str(err.value) == (
            f"{given}: is what petloc export wrote; evaluate and export take the Keras model it "
            "came from (a .keras file or an MLflow URI); predict takes exports"
        )


@pytest.mark.parametrize("missing", ["nonexist.tflite", "nonexist.onnx", "nonexist.keras"])
def test_predict_on_a_missing_model_names_exports_too(project, tflite, missing):
    with pytest.raises(PetlocError) as err:
        invoke("predict", tflite[0] / missing, next((project / "photos").glob("*.jpg")))
    assert str(err.value) == (
        f"{tflite[0] / missing}: no such model file (give a .keras file, an MLflow URI such as "
        "models:/petloc@champion, or what petloc export wrote: its folder or its .tflite/.onnx file)"
    )


@pytest.mark.slow  # a tracked training run first
def test_a_registered_model_with_flip_tta_exports_and_answers_by_name(tmp_path):
    """Without --data, a model from the registry is checked on its run's validation photos;
    petloc.json says which version and run the alias named."""
    with in_project(tmp_path):
        data = tiny_dataset(tmp_path / "photos", count=40)
        trained = invoke("train", tiny_experiment(tmp_path, data), "space.tta=flip")
        assert trained.exit_code == 0, trained.output
        run_id = run_id_of(trained.output)
        promoted = invoke("promote", run_id, "--name", "tiny")
        assert "tiny@champion is now version 1" in promoted.output
        exported = invoke("export", "tiny@champion", "--format", "tflite", "--out", "out")
        assert exported.exit_code == 0, exported.output
        # val_split 0.25 of 40 photos: 10 validation photos, of which the check takes 8
        assert f"checked on {exporting.CHECK_PHOTOS} validation photos of {data}:" in (
            exported.output
        )
        assert "synthetic" not in exported.output
        meta = json.loads((tmp_path / "out" / "petloc.json").read_text())
        assert meta["source"] == "tiny@champion"  # as typed
        assert (meta["registered_name"], meta["registered_version"]) == ("tiny", "1")
        assert meta["run_id"] == run_id
        assert meta["check"]["source"] == f"validation photos of {data}"
        images = sorted(data.glob("*.jpg"))[:6]
        by_name, exported_rows = predictions("tiny@champion", images), predictions("out", images)
    for want, got in zip(by_name, exported_rows, strict=True):
        assert got["label"] == want["label"]
        assert got["box"] == pytest.approx(want["box"], abs=0.11)
