"""`petloc predict --json` names the classes a model of any number of classes was trained on,
read from the .keras file itself."""

import json

import cv2
import numpy as np

from petloc.data.classes import Classes
from petloc.model import Hyperparameters, build_model
from tests.helpers import invoke

BIRDS = Classes(("crow", "finch", "gull", "owl", "robin", "swan", "wren"))


def test_predict_json_answers_with_the_class_names_in_the_model_file(tmp_path):
    path = tmp_path / "birds.keras"
    build_model(Hyperparameters(width=0.25, head_units=8), 32, classes=BIRDS).save(path)
    photos = []
    for i, value in enumerate((30, 200)):
        photos.append(tmp_path / f"p{i}.jpg")
        cv2.imwrite(str(photos[-1]), np.full((48, 64, 3), value, np.uint8))
    result = invoke("predict", path, *photos, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 2 and all(row["label"] in BIRDS.names for row in rows)
