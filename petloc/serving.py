"""petloc's MLflow model flavour: the Keras flavour, plus a pyfunc that takes JPEG images.

`mlflow models serve -m models:/petloc@champion` then answers requests whose rows carry a
base64-encoded image (`{"dataframe_records": [{"image": "<base64>"}]}`) with the label, score
and head box in pixels of that image. Keras's own pyfunc would want a tensor of the exact
input size; users of a localiser have photos.
"""

from __future__ import annotations

import base64
import os


import petloc
from petloc.data.images import BadImage, decode_rgb

PIP_REQUIREMENTS = [f"petloc=={petloc.__version__}", "tensorflow", "keras", "opencv-python-headless"]


def save_model(keras_model, path, mlflow_model=None, **kwargs):
    """Called by `mlflow.models.Model.log`: writes the Keras flavour, then our pyfunc entry."""
    import mlflow.keras
    from mlflow import pyfunc
    from mlflow.models import Model

    mlflow_model = mlflow_model or Model()
    mlflow.keras.save_model(keras_model, path, mlflow_model=mlflow_model, pip_requirements=PIP_REQUIREMENTS, **kwargs)
    pyfunc.add_to_model(mlflow_model, loader_module="petloc.serving", conda_env="conda.yaml", python_env="python_env.yaml")
    mlflow_model.save(os.path.join(path, "MLmodel"))


def _load_pyfunc(path):
    """Called by `mlflow.pyfunc.load_model` with the local model folder."""
    from mlflow.keras.load import _load_keras_model
    from mlflow.models import Model

    from petloc.predict import Predictor

    conf = Model.load(os.path.join(path, "MLmodel"))
    return ImagePyfunc(Predictor(_load_keras_model(path, conf)))


class ImagePyfunc:
    """pyfunc rows: an `image` column of base64 JPEG/PNG (or raw bytes) -> label, score, box."""

    def __init__(self, predictor):
        self.predictor = predictor

    def predict(self, model_input, params=None) -> list[dict]:
        """One dict per row: label, score, box (pixels), or `error` for an unreadable image."""
        import pandas as pd

        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        results, images, where = [None] * len(rows), [], []
        for i, row in enumerate(rows):
            try:
                images.append(decode_rgb(_image_bytes(row)))
                where.append(i)
            except (BadImage, ValueError) as err:
                results[i] = {"error": str(err)}
        for i, pred in zip(where, self.predictor.predict(images)):
            results[i] = pred.to_dict()
        return results


def _image_bytes(row) -> bytes:
    value = row.get("image") if isinstance(row, dict) else row
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value, validate=False)
    raise ValueError("each row needs an 'image' field holding a base64-encoded JPEG or PNG")
