"""`petloc predict` and `evaluate` on tiny untrained models: what is written, what is refused,
and the exit codes a script can rely on."""

import json
import re

import cv2
import keras
import numpy as np
import pytest

from petloc.errors import PetlocError
from petloc.model import Hyperparameters, build_model
from petloc.tracking.registry import load_predictor
from tests.helpers import (
    in_project,
    invoke,
    jpeg,
    jpeg_with_orientation,
    petloc_process,
    photo,
    tiny_dataset,
    with_extraneous_bytes,
)

SIZE = 32


def json_lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A petloc localiser (untrained: plumbing needs no training) and a plain Keras model."""
    folder = tmp_path_factory.mktemp("models")
    build_model(Hyperparameters(width=0.25, head_units=8), SIZE).save(folder / "tiny.keras")
    inputs = keras.Input((SIZE, SIZE, 3))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(
        folder / "plain.keras"
    )
    return folder


# ---- item 4: --out never overwrites; a failed write is a failure; a bad --out is one line --


def test_out_into_the_photos_own_folder_never_overwrites_it(models, tmp_path):
    original = cv2.imencode(".png", photo())[1].tobytes()
    (tmp_path / "photo.png").write_bytes(original)
    for _ in range(2):  # a second run adds copies too, it does not replace the first
        assert (
            invoke(
                "predict", models / "tiny.keras", tmp_path / "photo.png", "--out", tmp_path
            ).exit_code
            == 0
        )
    assert (tmp_path / "photo.png").read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo-2.png", "photo-3.png", "photo.png"]


def test_an_annotated_copy_that_cannot_be_written_is_an_error_line_and_a_failure(models, tmp_path):
    # readable, but "ppp...p.png" is over the 255-byte name limit
    long_name = tmp_path / ("p" * 255)
    long_name.write_bytes(jpeg(photo()))
    (tmp_path / "good.jpg").write_bytes(jpeg(photo()))
    result = invoke(
        "predict",
        models / "tiny.keras",
        tmp_path / "good.jpg",
        long_name,
        "--json",
        "--out",
        tmp_path / "out",
    )
    good, failed = json_lines(result)
    assert "label" in good
    assert failed == {
        "image": str(long_name),
        "error": "cannot write the annotated copy: File name too long",
    }
    assert result.exit_code == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]


def test_save_rgb_raises_when_opencv_could_not_write(tmp_path):
    from petloc.training.gallery import save_rgb

    with pytest.raises(OSError, match="cannot write the image"):
        save_rgb(photo(), tmp_path / "no such folder" / "x.png")


@pytest.mark.parametrize(
    "where, reason",
    [
        ("a_file", "is a file, expected a folder"),
        ("a_file/sub", "cannot write annotated copies there (Not a directory)"),
        ("/sys/petloc-test-out", "cannot write annotated copies there"),
    ],
)
def test_a_bad_out_is_one_line_before_the_model_is_loaded(tmp_path, where, reason):
    (tmp_path / "a_file").write_text("not a folder")
    out = where if where.startswith("/") else tmp_path / where
    # The model does not exist: the error names --out, so --out was checked first.
    with pytest.raises(
        PetlocError, match=rf"^{out}: .*{reason}".replace("(", r"\(").replace(")", r"\)")
    ):
        invoke("predict", tmp_path / "missing.keras", tmp_path / "a_file", "--out", out)


def test_bad_out_from_the_shell_is_exit_2_without_traceback(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    proc = petloc_process("predict", "missing.keras", "x.jpg", "--out", "a_file/sub", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "petloc: error: a_file/sub: cannot write annotated copies there (Not a directory)"
    )
    assert "Traceback" not in proc.stderr


# ---- item 6: a model that is not a petloc localiser ------------------------------------


def test_a_plain_keras_model_is_refused_in_one_line_by_predict_and_evaluate(models, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(jpeg(photo()))
    message = (
        r"plain.keras: not a petloc localiser \(its output is shape \(None, 2\); expected 'cls'"
    )
    with pytest.raises(PetlocError, match=message):
        invoke("predict", models / "plain.keras", tmp_path / "photo.jpg")
    with pytest.raises(PetlocError, match=message):
        invoke("evaluate", models / "plain.keras", tmp_path)


def test_a_logged_model_with_a_lambda_layer_is_refused_in_one_line(tmp_path):
    import mlflow
    import mlflow.keras

    from petloc.tracking import store

    inputs = keras.Input((SIZE, SIZE, 3))
    # arbitrary code: safe_mode refuses to load it
    doubled = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    model = keras.Model(
        inputs,
        {
            "cls": keras.layers.Dense(2)(keras.layers.Flatten()(doubled)),
            "box": keras.layers.Dense(4)(keras.layers.Flatten()(doubled)),
        },
    )
    with in_project(tmp_path):
        store.configure()
        # An experiment of this store: the one fluent MLflow remembers may be another test's.
        with mlflow.start_run(experiment_id=mlflow.create_experiment("lambda")) as active:
            mlflow.keras.log_model(model, name="model", pip_requirements=[])
        with pytest.raises(
            PetlocError,
            match=rf"^runs:/{active.info.run_id}/model: not a loadable Keras model \(.*Lambda",
        ):
            invoke("predict", f"runs:/{active.info.run_id}/model", tmp_path / "x.jpg")


# ---- item 10: exit codes -------------------------------------------------------------


def test_exit_code_is_1_when_any_image_failed_and_0_when_all_were_answered(models, tmp_path):
    (tmp_path / "good.jpg").write_bytes(jpeg(photo()))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    mixed = invoke(
        "predict", models / "tiny.keras", tmp_path / "good.jpg", tmp_path / "broken.jpg", "--json"
    )
    # every line still printed
    assert [("error" in row) for row in json_lines(mixed)] == [False, True]
    assert mixed.exit_code == 1
    assert invoke("predict", models / "tiny.keras", tmp_path / "good.jpg").exit_code == 0
    assert "Exit code 0 when every image was answered, 1 when any failed" in " ".join(
        invoke("predict", "--help").stdout.split()
    )


# ---- item 14: a photo the decoder repairs is answered, with a warning ---------------------


def test_predict_answers_a_jpeg_with_extraneous_bytes_and_warns(models, tmp_path):
    good = jpeg(photo())
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "padded.jpg").write_bytes(with_extraneous_bytes(good))
    # truncated data, end marker glued on
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) * 2 // 3] + b"\xff\xd9")
    result = invoke(
        "predict",
        models / "tiny.keras",
        tmp_path / "good.jpg",
        tmp_path / "padded.jpg",
        tmp_path / "cut.jpg",
        "--json",
    )
    clean, padded, cut = json_lines(result)
    assert {k: v for k, v in padded.items() if k not in ("image", "warning")} == {
        k: v for k, v in clean.items() if k != "image"
    }
    # libjpeg counts a few of the bytes as read ahead with the last scan data: 235 of 240 here
    assert re.fullmatch(
        r"the JPEG decoder skipped 2\d\d extraneous bytes before marker 0xd9; the image decoded in full",
        padded["warning"],
    )
    assert "warning" not in clean
    assert cut["error"] == "corrupt JPEG data (premature end of data segment)"
    assert result.exit_code == 1


def test_evaluate_keeps_a_jpeg_with_extraneous_bytes(models, tmp_path):
    data = tiny_dataset(tmp_path / "photos", count=8)
    first = sorted(data.glob("*.jpg"))[0]
    first.write_bytes(with_extraneous_bytes(first.read_bytes()))
    with in_project(tmp_path):
        figures = json.loads(invoke("evaluate", models / "tiny.keras", data, "--json").stdout)
    assert (figures["images"], figures["skipped"]) == (8, 0)


# ---- item 15: EXIF orientation --------------------------------------------------------


def test_predict_reads_a_phone_photo_upright_and_boxes_it_in_that_frame(models, tmp_path):
    # the camera was turned: show the stored pixels rotated 90 degrees clockwise
    phone = jpeg_with_orientation(photo(), 6)
    (tmp_path / "phone.jpg").write_bytes(phone)
    decoded_as_stored = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(phone, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB
    )
    [upright] = load_predictor(models / "tiny.keras").predict(
        [cv2.rotate(decoded_as_stored, cv2.ROTATE_90_CLOCKWISE)]
    )
    [row] = json_lines(invoke("predict", models / "tiny.keras", tmp_path / "phone.jpg", "--json"))
    assert row["box"] == upright.to_dict()["box"] and row["score"] == upright.to_dict()["score"]
