"""petloc: find the head of a cat or dog in a photo, and the experiment framework around it.

import petloc
result = petloc.sweep("experiments/quick.yaml", {"tuner.max_trials": 2})  # as `petloc sweep`
result.leaderboard                               # a pandas DataFrame, as leaderboard.csv
model = petloc.load_model(result.champion)       # or "petloc@champion", a .keras file, ...
predictions = model.predict([rgb_image])         # label, score, box in the image's pixels

`petloc.train`, `petloc.evaluate` and `petloc.export` do what `petloc train`, `evaluate` and
`export` do (petloc.api); a mistake raises the command line's one-line `petloc.errors.PetlocError`.

@petloc.register_backbone("mynet")                # your own backbone (petloc/plugins.py)
def mynet(image_size, width, weights): ...

tuner = petloc.TrackedTuner(my_hypermodel, objective="val_accuracy", max_trials=20,
                            experiment="my-search", registry="my-model")  # any Keras Tuner search,
tuner.search(x, y, validation_data=(xv, yv), epochs=10)                   # tracked in MLflow
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Free of TensorFlow, as `import petloc` must stay.
from petloc.plugins import register_backbone

__version__ = "0.1.0"

# Loaded on first use (module __getattr__): `import petloc` (and `petloc --help`) stays free
# of TensorFlow and MLflow. Name -> the module that holds it.
API = {
    **dict.fromkeys(
        (
            "sweep",
            "train",
            "evaluate",
            "export",
            "SweepResult",
            "TrainResult",
            "EvaluationResult",
            "ExportResult",
        ),
        "petloc.api",
    ),
    "TrackedTuner": "petloc.search.tracked",
    "SearchResult": "petloc.search.tracked",
}
__all__ = [
    "EvaluationResult",
    "ExportResult",
    "SearchResult",
    "SweepResult",
    "TrackedTuner",
    "TrainResult",
    "__version__",
    "evaluate",
    "export",
    "load_model",
    "register_backbone",
    "sweep",
    "train",
]

if TYPE_CHECKING:
    from petloc.api import (
        EvaluationResult,
        ExportResult,
        SweepResult,
        TrainResult,
        evaluate,
        export,
        sweep,
        train,
    )
    from petloc.search.tracked import SearchResult, TrackedTuner


def load_model(source: str):
    """A `Predictor` for a registered name, an MLflow model URI or a `.keras` file."""
    # Imported here, not above: `import petloc` (and `petloc --help`) stays free of TensorFlow.
    from petloc.tracking.registry import load_predictor

    return load_predictor(source)


def __getattr__(name: str):
    if name in API:
        import importlib

        return getattr(importlib.import_module(API[name]), name)
    raise AttributeError(f"module 'petloc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
