"""What a logged localiser tells MLflow about itself: signature, input example, requirements
and its own code, read back from a real store; and the request forms its pyfunc answers."""

import base64
import importlib.metadata
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import infer_and_parse_data

from tests.helpers import in_project


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """An untrained localiser logged by petloc into a fresh store, downloaded back."""
    from petloc.model import Hyperparameters, build_model
    from petloc.tracking import log, store

    root = tmp_path_factory.mktemp("signature")
    keras_save_log, captured = logging.getLogger("mlflow.keras.save"), Captured()
    keras_save_log.addHandler(captured)
    try:
        with in_project(root):
            store.configure()
            mlflow.set_experiment("signature")
            with mlflow.start_run() as run:
                uri = log.log_model(
                    build_model(Hyperparameters(width=0.25, head_units=8), 32), run.info.run_id
                )
            folder = Path(
                mlflow.artifacts.download_artifacts(uri, dst_path=str(root / "downloaded"))
            )
            yield SimpleNamespace(
                uri=uri, folder=folder, pyfunc=mlflow.pyfunc.load_model(uri), log=captured.messages
            )
    finally:
        keras_save_log.removeHandler(captured)


def tiny_jpeg_b64() -> str:
    import cv2
    import numpy as np

    return base64.b64encode(
        cv2.imencode(".jpg", np.full((40, 30, 3), 200, np.uint8))[1].tobytes()
    ).decode()


def test_mlmodel_holds_the_signature_and_a_jpeg_input_example(logged):
    mlmodel = yaml.safe_load((logged.folder / "MLmodel").read_text())
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "string", "name": "image", "required": True}
    ]
    outputs = {col["name"]: col["type"] for col in json.loads(mlmodel["signature"]["outputs"])}
    assert outputs == {
        "label": "string",
        "score": "double",
        "box": "array",
        "warning": "string",
        "error": "string",
    }
    example = json.loads(
        (logged.folder / mlmodel["saved_input_example_info"]["serving_input_path"]).read_text()
    )
    [[image]] = example["dataframe_split"]["data"]
    assert base64.b64decode(image)[:2] == b"\xff\xd8"  # a JPEG
    assert not [m for m in logged.log if "without specifying model signature" in m]


def test_requirements_pin_the_training_versions_and_petloc_travels_as_code(logged):
    requirements = (logged.folder / "requirements.txt").read_text().split()
    for package in ("tensorflow", "keras", "opencv-python-headless", "Pillow"):
        assert f"{package}=={importlib.metadata.version(package)}" in requirements
    # not on PyPI: it could not install
    assert not [r for r in requirements if r.startswith("petloc")]
    mlmodel = yaml.safe_load((logged.folder / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["code"] == "code"
    assert (logged.folder / "code" / "petloc" / "serving.py").is_file()
    assert mlmodel["metadata"]["petloc_version"] == importlib.metadata.version("petloc")


REQUEST_FORMS = {
    "dataframe_records": lambda image: {"dataframe_records": [{"image": image}]},
    "dataframe_split": lambda image: {"dataframe_split": {"columns": ["image"], "data": [[image]]}},
    "inputs as rows": lambda image: {"inputs": [{"image": image}]},
    "inputs as columns": lambda image: {"inputs": {"image": [image]}},
}


@pytest.mark.parametrize("form", REQUEST_FORMS)
def test_each_documented_request_form_is_answered(logged, form):
    body = REQUEST_FORMS[form](tiny_jpeg_b64())
    [answer] = logged.pyfunc.predict(
        infer_and_parse_data(body, logged.pyfunc.metadata.get_input_schema())
    )
    assert answer["label"] in ("cat", "dog") and 0 <= answer["score"] <= 1
    x1, y1, x2, y2 = answer["box"]
    assert 0 <= x1 <= x2 <= 30 and 0 <= y1 <= y2 <= 40  # pixels of the 30 x 40 photo


def test_a_row_without_an_image_gets_a_clear_error(logged):
    schema = logged.pyfunc.metadata.get_input_schema()
    good, bad = logged.pyfunc.predict(
        infer_and_parse_data(
            {"dataframe_records": [{"image": tiny_jpeg_b64()}, {"photo": "x"}]}, schema
        )
    )
    assert "label" in good
    assert bad == {"error": "each row needs an 'image' field holding a base64-encoded JPEG or PNG"}
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['image'\]"):
        logged.pyfunc.predict(infer_and_parse_data({"dataframe_records": [{"photo": "x"}]}, schema))


def test_an_undocumented_request_form_is_refused_naming_the_forms(logged):
    with pytest.raises(MlflowException, match="exactly one of the input fields") as refused:
        infer_and_parse_data(
            {"records": [{"image": tiny_jpeg_b64()}]}, logged.pyfunc.metadata.get_input_schema()
        )
    assert all(
        form in str(refused.value) for form in ("dataframe_records", "dataframe_split", "inputs")
    )
