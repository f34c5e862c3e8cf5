"""What the dataset readers hand to the rest of petloc.

Boxes here are in pixels of the original image, `(x1, y1, x2, y2)`, top-left and
bottom-right corners. Labels are the model's: cat = 0, dog = 1 (on disk the cats_dogs
layout writes 1 = cat, 2 = dog).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLASS_NAMES = ("cat", "dog")


@dataclass(frozen=True)
class Sample:
    """One usable image with its head box."""

    path: Path
    label: int  # 0 = cat, 1 = dog
    box: tuple[float, float, float, float]  # pixels of the original image
    width: int
    height: int
    split: str | None = None  # "train" / "valid" / "test" when the layout says so


@dataclass(frozen=True)
class Skipped:
    """One file that could not be used, and why (one line, for users)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def annotation_line(label: int, box: tuple[float, float, float, float]) -> str:
    """The cats_dogs `.txt` line for a sample: `CLASS x1 y1 x2 y2` with 1 = cat, 2 = dog."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return f"{label + 1} {x1} {y1} {x2} {y2}\n"
