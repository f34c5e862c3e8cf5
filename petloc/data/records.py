"""What the dataset readers hand to the rest of petloc.

Boxes here are in pixels of the original image, `(x1, y1, x2, y2)`, top-left and
bottom-right corners. A sample's label is its class NAME; a dataset's classes (and so the
model's indices) come from its samples (`petloc.data.classes`). How photos are labelled is
one of `LABELLINGS`: `species` (cat / dog, the default) or `breed` where the data names one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from petloc.errors import PetlocError

LABELLINGS = ("species", "breed")
# the cats_dogs layout's CLASS on disk for each species
SPECIES_IDS = {"cat": 1, "dog": 2}
# Boxes may overshoot the image by rounding (scaled or 1-based boxes): clip up to this.
OVERSHOOT_TOLERANCE_PX = 2.0


@dataclass(frozen=True)
class Sample:
    """One usable image with its head box."""

    path: Path
    label: str  # the class name: "cat" / "dog", or a breed
    box: tuple[float, float, float, float]  # pixels of the original image
    width: int
    height: int
    split: str | None = None  # "train" / "valid" / "test" when the layout says so
    species: str | None = None  # the class's species where the data says it (a breed's)


@dataclass(frozen=True)
class Skipped:
    """One file that could not be used, and why (one line, for users)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def checked_labelling(labels: str) -> str:
    if labels not in LABELLINGS:
        raise PetlocError(f"labels is {labels!r}, expected one of {', '.join(LABELLINGS)}")
    return labels


def annotation_line(species: str, box: tuple[float, float, float, float]) -> str:
    """The cats_dogs `.txt` line for a sample: `CLASS x1 y1 x2 y2` with 1 = cat, 2 = dog."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return f"{SPECIES_IDS[species]} {x1} {y1} {x2} {y2}\n"


def box_problem(box: tuple[float, ...], width: int, height: int) -> str | None:
    """Why a pixel box cannot be used for a width x height image, or None."""
    x1, y1, x2, y2 = box
    text = format_box(box)
    if not all(math.isfinite(v) for v in box):
        return f"box {text} has a coordinate that is not a number"
    if x2 < x1 or y2 < y1:
        return f"box {text} is inverted (x2 < x1 or y2 < y1)"
    if x2 == x1 or y2 == y1:
        return f"box {text} has zero area"
    overshoot = max(-x1, -y1, x2 - width, y2 - height)
    if overshoot > OVERSHOOT_TOLERANCE_PX:
        return f"box {text} lies outside the {width}x{height} image by {overshoot:g} px"
    return None


def format_box(box: tuple[float, ...]) -> str:
    """(10, 5, 3, 40): whole numbers without decimals, as users wrote them."""
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"
