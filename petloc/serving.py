"""petloc's MLflow model flavour: the Keras flavour, plus a pyfunc that takes JPEG images.

`mlflow models serve -m models:/petloc@champion` then answers requests whose rows carry a
base64-encoded image (`{"dataframe_records": [{"image": "<base64>"}]}`) with the label, score
and head box in pixels of that image. Keras's own pyfunc would want a tensor of the exact
input size; users of a localiser have photos.

One request must not be able to take the server's memory: a request answers at most
PETLOC_MAX_ROWS rows, each image at most PETLOC_MAX_IMAGE_BYTES encoded and
PETLOC_MAX_IMAGE_PIXELS (width x height, read from its header before decoding), and each
image is shrunk to WORKING_SIDE right after decoding (the model looks at 128-224 px). A row
over a limit gets its own error; the others are answered.

A logged model carries what a server elsewhere needs: its signature (an `image` string in;
label, score, box, warning, error out), the classes its labels name (metadata `classes`),
a tiny JPEG as input example, petloc's own code (petloc is not on PyPI, so the package
folder is copied into the model and put first on sys.path when MLflow loads it), and
petloc's dependencies pinned to the versions it was trained with.
"""

from __future__ import annotations

import base64
import functools
import importlib.metadata
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import petloc
from petloc import library_internals
from petloc.data.images import (
    DEFAULT_MAX_ROWS,
    MAX_BYTES_SETTING,
    MAX_ROWS_SETTING,
    BadImage,
    decode_image,
    max_image_bytes,
    max_image_pixels,
    positive_setting,
)
from petloc.errors import PetlocError
from petloc.model import model_classes
from petloc.tracking import vocabulary as vocab
from petloc.training.model_needs import import_needed
from petloc.training.predict import Predictor

WORKING_SIDE = 1024  # px; boxes still come back in the original image's pixels

PACKAGE_DIR = Path(petloc.__file__).parent


def save_model(keras_model, path, mlflow_model=None, **kwargs):
    """Called by `mlflow.models.Model.log`: the Keras flavour, then petloc's code, the pyfunc
    entry, its signature and input example."""
    import mlflow.keras
    from mlflow import pyfunc
    from mlflow.models import Model

    kwargs.pop("validate_serving_input", None)  # read by Model.log itself, not a save setting
    mlflow_model = mlflow_model or Model()
    mlflow_model.signature = signature()
    mlflow_model.metadata = {
        **(mlflow_model.metadata or {}),
        "petloc_version": petloc.__version__,
        # the names `label` answers with, in the model's order (a signature has no descriptions)
        vocab.MODEL_CLASSES: json.loads(model_classes(keras_model).to_json()),
    }
    with _quiet_keras_signature_warning(), _as_served(keras_model):
        mlflow.keras.save_model(
            keras_model,
            path,
            mlflow_model=mlflow_model,
            pip_requirements=pip_requirements(),
            **kwargs,
        )
    library_internals.save_input_example(mlflow_model, input_example(), path)
    code = library_internals.copy_code_paths([str(PACKAGE_DIR)], path)
    pyfunc.add_to_model(
        mlflow_model,
        loader_module="petloc.serving",
        code=code,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


def signature():
    """What the pyfunc takes and answers, as the MLflow UI and `mlflow models serve` read it."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

    answer: list[ColSpec | TensorSpec] = [
        ColSpec(DataType.string, "label", required=False),
        ColSpec(DataType.double, "score", required=False),
        # [x1, y1, x2, y2] in pixels of the image
        ColSpec(Array(DataType.double), "box", required=False),
        ColSpec(DataType.string, "warning", required=False),
        ColSpec(DataType.string, "error", required=False),  # instead of label, score and box
    ]
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "image")]), outputs=Schema(answer)
    )


def input_example():
    """One row with a tiny grey JPEG, made here so the example needs no file."""
    import cv2
    import numpy as np
    import pandas as pd

    jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    return pd.DataFrame({"image": [base64.b64encode(jpeg).decode()]})


def pip_requirements() -> list[str]:
    """petloc's own dependencies, each pinned to the version installed now (the one the model
    was trained with). petloc itself travels as code in the model, not as a requirement."""
    return list(_pinned_requirements())


# The installed packages do not change in a process; reading their metadata slowed every
# trial's model logging.
@functools.cache
def _pinned_requirements() -> tuple[str, ...]:
    from packaging.requirements import Requirement

    try:
        declared = [Requirement(text) for text in importlib.metadata.requires("petloc") or []]
    except importlib.metadata.PackageNotFoundError:
        raise PetlocError(
            "cannot log a model: petloc is not installed (pip install -e .), so its dependencies are unknown"
        ) from None
    runtime = [req for req in declared if req.marker is None or req.marker.evaluate({"extra": ""})]
    return tuple(f"{req.name}=={importlib.metadata.version(req.name)}" for req in runtime)


@contextmanager
def _as_served(model):
    """`model` without its training state while it is saved: Adam's two slots a weight made
    every trial's model file several times larger, and loading it compiled losses and
    metrics nobody who predicts uses. A logged model loads uncompiled.
    Every compiled network inside goes too: Keras saves a wrapped one's (test-time augmentation)."""
    import keras

    # Keras's own walk of the layers (tracked attributes included), the model first.
    compiled = [
        m
        for m in library_internals.all_layers(model)
        if isinstance(m, keras.Model) and getattr(m, "compiled", False)
    ]
    optimizers = [m.optimizer for m in compiled]
    for m in compiled:
        m.optimizer, m.compiled = None, False  # what Keras's saving reads (keras==3.15.* is pinned)
    try:
        yield
    finally:
        for m, optimizer in zip(compiled, optimizers, strict=True):
            m.optimizer, m.compiled = optimizer, True


@contextmanager
def _quiet_keras_signature_warning():
    """MLflow's Keras flavour warns when not given a signature, yet only accepts one of tensors;
    the signature users need is the pyfunc's (set on the model above), so that warning is wrong here."""
    keras_save_logger = logging.getLogger("mlflow.keras.save")

    def keep(record: logging.LogRecord) -> bool:
        return "without specifying model signature" not in record.getMessage()

    keras_save_logger.addFilter(keep)
    try:
        yield
    finally:
        keras_save_logger.removeFilter(keep)


def _load_pyfunc(path):
    """Called by `mlflow.pyfunc.load_model` with the local model folder."""
    import mlflow.keras

    RequestLimits.from_environment()  # a mistyped setting stops the server at start, not at a request
    max_image_pixels()
    import_logged_needs(path, str(path))
    # a local folder: loaded in place, not copied
    return ImagePyfunc(Predictor(mlflow.keras.load_model(path)))


def import_logged_needs(folder: str | Path, source: str) -> None:
    """Imports what the logged model in local `folder` needs to load: the plug-in modules
    its metadata records and its file's unregistered custom layers' (petloc/plugins.py);
    one line naming the module where one is missing."""
    from mlflow.models import Model

    recorded = (Model.load(str(folder)).metadata or {}).get(vocab.MODEL_PLUGINS) or []
    import_needed(sorted(Path(folder).rglob("*.keras")), source, recorded)


@dataclass(frozen=True)
class RequestLimits:
    """Read at each request, so a changed setting needs no new model load."""

    rows: int
    image_bytes: int

    @classmethod
    def from_environment(cls) -> RequestLimits:
        return cls(positive_setting(MAX_ROWS_SETTING, DEFAULT_MAX_ROWS), max_image_bytes())


class ImagePyfunc:
    """pyfunc rows: an `image` column of base64 JPEG/PNG (or raw bytes) -> label, score, box."""

    def __init__(self, predictor):
        self.predictor = predictor

    def predict(self, model_input, params=None) -> list[dict]:
        """One dict per row: label, score, box (pixels) and maybe a decoder `warning`, or
        `error` for an unreadable or over-limit image."""
        limits = RequestLimits.from_environment()
        rows = _rows(model_input, limits.rows)
        results: list[dict] = [{} for _ in rows]  # each filled below
        decoded, where = [], []
        for i, row in enumerate(rows):
            if i >= limits.rows:
                results[i] = _over_row_limit(limits.rows)
                continue
            try:
                decoded.append(
                    decode_image(_image_bytes(row, limits.image_bytes), max_side=WORKING_SIDE)
                )
                where.append(i)
            except (BadImage, ValueError) as err:
                results[i] = {"error": str(err)}
        predictions = self.predictor.predict(
            [d.pixels for d in decoded], sizes=[(d.width, d.height) for d in decoded]
        )
        for i, image, pred in zip(where, decoded, predictions, strict=True):
            results[i] = pred.to_dict(image.warnings)
        return results


def _rows(model_input, limit: int) -> list:
    """The request's rows; only the first `limit` are turned into dicts (the rest get an error)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return model_input.iloc[:limit].to_dict("records") + [None] * max(
            0, len(model_input) - limit
        )
    return list(model_input)


def _over_row_limit(limit: int) -> dict:
    return {
        "error": f"over the limit of {limit} rows per request ({MAX_ROWS_SETTING}): send this image in another request"
    }


def _image_bytes(row, max_bytes: int) -> bytes:
    value = row.get("image") if isinstance(row, dict) else row
    if isinstance(value, str):
        if len(value.rstrip("=\r\n ")) * 3 // 4 > max_bytes:  # checked before the base64 is decoded
            raise ValueError(
                f"image is over the limit of {max_bytes} bytes ({MAX_BYTES_SETTING}): {len(value)} characters of base64"
            )
        value = base64.b64decode(value, validate=False)
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError("each row needs an 'image' field holding a base64-encoded JPEG or PNG")
    if len(value) > max_bytes:
        raise ValueError(
            f"image is {len(value)} bytes, over the limit of {max_bytes} bytes ({MAX_BYTES_SETTING})"
        )
    return bytes(value)
