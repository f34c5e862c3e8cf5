"""Reading a dataset folder: find its layout, read it, decode and check every image.

`scan` is the one entry point: each layout reader turns its annotation files into
`Sample`s, asking `scan` for the image size, which decodes the image (once) so a damaged
file becomes a `Skipped` and the pixels go out with the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from petloc.data import cats_dogs, manifest, oxford
from petloc.data.images import SizeOf, header_size, read_rgb
from petloc.data.records import (
    OVERSHOOT_TOLERANCE_PX,
    Sample,
    Skipped,
    box_problem,
    checked_labelling,
    format_box,
)
from petloc.errors import PetlocError

__all__ = ["OVERSHOOT_TOLERANCE_PX", "box_problem", "format_box"]  # here for older imports
ON_BAD = ("skip", "fail")

Item = tuple[Sample, np.ndarray | None] | Skipped


@dataclass(frozen=True)
class Layout:
    looks_like: Callable[[Path], bool]
    read: Callable[[Path, SizeOf, str], Iterator[Sample | Skipped]]  # (root, size_of, labels)


# Checked in this order: the most specific layout first (a manifest says outright what is what).
LAYOUTS = {
    "csv": Layout(manifest.looks_like, manifest.read),
    "oxford": Layout(oxford.looks_like, oxford.read),
    "cats_dogs": Layout(cats_dogs.looks_like, cats_dogs.read),
}


def detect_layout(root: str | Path) -> str:
    """The name of the layout at `root`; raises a one-line `PetlocError` when there is none."""
    root = Path(root)
    if not root.exists():
        raise PetlocError(f"{root}: no such folder")
    if not root.is_dir():
        raise PetlocError(f"{root}: is a file, expected a dataset folder")
    for name, layout in LAYOUTS.items():
        if layout.looks_like(root):
            return name
    raise PetlocError(
        f"{root}: no dataset found (expected NAME.jpg + NAME.txt pairs, maybe in train/ valid/ test/, "
        f"Oxford-IIIT Pet images/ + annotations/xmls/, or a {manifest.MANIFEST} manifest)"
    )


def scan(
    root: str | Path,
    *,
    decode: bool = True,
    on_bad: str = "skip",
    strict: bool = True,
    labels: str = "species",
) -> Iterator[Item]:
    """(Sample, RGB pixels or None when decode=False) per usable image, else a Skipped.

    Layout errors raise at once; with on_bad="fail" the first problem raises
    `PetlocError` naming the file and the reason. strict=False keeps JPEGs the decoder
    repaired (extraneous bytes before a marker), which training skips by default.
    `labels` is how photos are labelled (`records.LABELLINGS`): by species or by breed.
    """
    if on_bad not in ON_BAD:
        raise PetlocError(f"on_bad is {on_bad!r}, expected one of {', '.join(ON_BAD)}")
    checked_labelling(labels)
    root = Path(root)
    layout = LAYOUTS[detect_layout(root)]
    images = _DecodeOnce(strict) if decode else None
    read = layout.read(root, images.size_of if images else header_size, labels)
    return _scan(read, images, on_bad == "fail")


def _scan(
    read: Iterator[Sample | Skipped], images: _DecodeOnce | None, fail: bool
) -> Iterator[Item]:
    first_of: dict[Path, Path] = {}  # resolved photo -> the path it was used under
    species_of: dict[str, tuple[str | None, Path]] = {}  # class -> its species, where first said
    for item in read:
        pixels = images.take(item.path) if images else None
        if isinstance(item, Sample):
            item = _one_species(_once(checked_box(item), first_of), species_of)
        if isinstance(item, Skipped):
            if fail:
                raise PetlocError(str(item))
            yield item
        else:
            yield item, pixels


def _once(item: Sample | Skipped, first_of: dict[Path, Path]) -> Sample | Skipped:
    """A photo linked under a second name (valid/x.jpg -> ../train/x.jpg) is used once: in
    two splits it would be scored on what the model trained on."""
    if isinstance(item, Skipped):
        return item
    first = first_of.setdefault(item.path.resolve(), item.path)
    return (
        item
        if first == item.path
        else Skipped(item.path, f"the same file as {first} (a link): used once")
    )


def _one_species(
    item: Sample | Skipped, species_of: dict[str, tuple[str | None, Path]]
) -> Sample | Skipped:
    """A class belongs to one species: a photo saying otherwise than the first is skipped."""
    if isinstance(item, Skipped):
        return item
    species, first = species_of.setdefault(item.label, (item.species, item.path))
    if species == item.species:
        return item
    return Skipped(
        item.path,
        f"class {item.label!r} is species {item.species or 'unsaid'} here "
        f"but {species or 'unsaid'} in {first}",
    )


class _DecodeOnce:
    """The layout asks for an image's size; the pixels wait here until `scan` takes them."""

    def __init__(self, strict: bool) -> None:
        self._last: tuple[Path, np.ndarray] | None = None
        self._strict = strict

    def size_of(self, path: Path) -> tuple[int, int]:
        self._last = None
        pixels = read_rgb(path, strict=self._strict)
        self._last = (path, pixels)
        return pixels.shape[1], pixels.shape[0]

    def take(self, path: Path) -> np.ndarray | None:
        last, self._last = self._last, None
        return last[1] if last is not None and last[0] == path else None


def checked_box(sample: Sample) -> Sample | Skipped:
    """The sample with its box clipped to the image, or Skipped saying what is wrong."""
    problem = box_problem(sample.box, sample.width, sample.height)
    if problem:
        return Skipped(sample.path, problem)
    x1, y1, x2, y2 = sample.box
    w, h = sample.width, sample.height
    clipped = (
        min(max(x1, 0.0), w),
        min(max(y1, 0.0), h),
        min(max(x2, 0.0), w),
        min(max(y2, 0.0), h),
    )
    if clipped[0] == clipped[2] or clipped[1] == clipped[3]:
        return Skipped(
            sample.path, f"box {format_box(sample.box)} has zero area inside the {w}x{h} image"
        )
    return replace(sample, box=clipped)
