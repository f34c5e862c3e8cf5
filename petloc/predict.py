"""Using a trained model: load it from a file or MLflow, predict labels, scores and pixel boxes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np

import petloc.model  # noqa: F401  (registers petloc's custom layers and losses for loading)
from petloc.data.records import CLASS_NAMES
from petloc.errors import PetlocError


@dataclass(frozen=True)
class Prediction:
    label: str  # "cat" or "dog"
    score: float  # probability of that label
    box: tuple[float, float, float, float]  # pixels of the original image

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(self.score, 4), "box": [round(v, 1) for v in self.box]}


class Predictor:
    """A trained localiser that takes RGB images of any size."""

    def __init__(self, model: keras.Model, source: str = ""):
        self.model = model
        self.source = source
        self.image_size = int(model.input_shape[1])

    def predict(self, images: list[np.ndarray], batch_size: int = 32) -> list[Prediction]:
        """RGB uint8 images (H x W x 3), any sizes; boxes come back in each image's pixels."""
        if not len(images):
            return []
        batch = np.stack([cv2.resize(im, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA) for im in images])
        out = self.model.predict(batch.astype(np.float32), batch_size=batch_size, verbose=0)
        probs, boxes = np.asarray(out["cls"]), np.asarray(out["box"])
        results = []
        for image, p, b in zip(images, probs, boxes):
            h, w = image.shape[:2]
            x1, x2 = sorted((float(b[0]) * w, float(b[2]) * w))
            y1, y2 = sorted((float(b[1]) * h, float(b[3]) * h))
            label = int(p.argmax())
            results.append(Prediction(CLASS_NAMES[label], float(p[label]), (x1, y1, x2, y2)))
        return results


def load_keras(source: str | Path) -> keras.Model:
    """A `.keras` file, a registered name (`petloc@champion`, `petloc/3`) or an MLflow model
    URI (`models:/petloc@champion`, `runs:/RUN/model`)."""
    text = str(source)
    path = Path(text)
    if not path.exists():
        from petloc.registry import model_uri

        if uri := model_uri(text):
            from petloc.tracking import load_logged_model

            return load_logged_model(uri)
    if not path.is_file():
        raise PetlocError(f"{text}: no such model file (give a .keras file or an MLflow URI such as models:/petloc@champion)")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad file; all mean the same to a user
        raise PetlocError(f"{text}: not a loadable Keras model ({str(err).splitlines()[0][:200]})") from None


def load_predictor(source: str | Path) -> Predictor:
    return Predictor(load_keras(source), str(source))
