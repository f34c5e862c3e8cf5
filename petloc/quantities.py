"""The quantities petloc measures a model by: one name each, and one way to show it.

A quantity's bare name is what `petloc evaluate` reports on the photos it is given, as
Keras's `model.evaluate` names its figures against `fit`'s `val_` ones. A run logs those it
measures on its validation photos under their run metric names
(petloc/tracking/vocabulary.py RUN_METRICS: `val_` + the quantity, mIoU `best_val_miou`).
Tables and progress lines show each quantity with one count of decimals (DECIMALS), whatever
the name it goes by; JSON and CSV keep full floats, and counts (COUNTS) as whole numbers.
"""

from __future__ import annotations

MIOU, IOU50, ACCURACY = "miou", "iou50", "accuracy"
TOP5_ACCURACY, MACRO_ACCURACY, SPECIES_ACCURACY = (
    "top5_accuracy",
    "macro_accuracy",
    "species_accuracy",
)
LATENCY_MS_B1, LATENCY_MS_B32 = "latency_ms_b1", "latency_ms_b32"
PARAMS_COUNT = "params_count"
TRAIN_SECONDS, EPOCH_SECONDS, EPOCHS_TRAINED = "train_seconds", "epoch_seconds", "epochs_trained"
LOSS = "loss"  # the training loss, in the epoch lines (train and `val_`)
SCORE = "score"  # a prediction's probability of its class

# The class figures (petloc.model.metrics.class_figures), each only where it applies:
# top-5 for more than 5 classes, species for classes with species.
CLASS_FIGURES = (TOP5_ACCURACY, MACRO_ACCURACY, SPECIES_ACCURACY)

# Shares (0..1) to 3 decimals: two runs of one setting differ in the second or third.
DECIMALS = {
    MIOU: 3,
    IOU50: 3,
    ACCURACY: 3,
    **dict.fromkeys(CLASS_FIGURES, 3),
    LATENCY_MS_B1: 2,
    LATENCY_MS_B32: 2,
    PARAMS_COUNT: 0,
    TRAIN_SECONDS: 0,
    EPOCH_SECONDS: 1,
    EPOCHS_TRAINED: 0,
    LOSS: 3,
    SCORE: 2,
}

# Whole numbers by nature: MLflow keeps every metric as a float, but no output says 75958.0.
COUNTS = (PARAMS_COUNT, EPOCHS_TRAINED)


def decimals_of(name: str) -> int | None:
    """The decimals a figure named `name` is shown with: those of the quantity its name is or
    ends with (`miou`, `best_val_miou`, `val_top5_accuracy`); None for other names."""
    found = [q for q in DECIMALS if name == q or name.endswith("_" + q)]
    return DECIMALS[max(found, key=len)] if found else None


def is_count(name: str) -> bool:
    """Whether a figure named `name` counts something (`params_count`, `val_params_count`)."""
    return any(name == q or name.endswith("_" + q) for q in COUNTS)


def typed(name: str, value):
    """`value` as a figure named `name` is written: a count as an int, anything else as is."""
    if is_count(name) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
