"""Reading a dataset folder: find its layout, read it, decode and check every image.

`scan` is the one entry point: each layout reader turns its annotation files into
`Sample`s, asking `scan` for the image size, which decodes the image (once) so a damaged
file becomes a `Skipped` and the pixels go out with the sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from petloc.data import cats_dogs, oxford
from petloc.data.images import SizeOf, header_size, read_rgb
from petloc.data.records import Sample, Skipped
from petloc.errors import PetlocError

# Boxes may overshoot the image by rounding (scaled or 1-based boxes): clip up to this.
OVERSHOOT_TOLERANCE_PX = 2.0
ON_BAD = ("skip", "fail")

Item = tuple[Sample, np.ndarray | None] | Skipped


@dataclass(frozen=True)
class Layout:
    looks_like: Callable[[Path], bool]
    read: Callable[[Path, SizeOf], Iterator[Sample | Skipped]]


# Checked in this order: the most specific layout first.
LAYOUTS = {
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
        "or Oxford-IIIT Pet images/ + annotations/xmls/)"
    )


def scan(
    root: str | Path, *, decode: bool = True, on_bad: str = "skip", strict: bool = True
) -> Iterator[Item]:
    """(Sample, RGB pixels or None when decode=False) per usable image, else a Skipped.

    Layout errors raise at once; with on_bad="fail" the first problem raises
    `PetlocError` naming the file and the reason. strict=False keeps JPEGs the decoder
    repaired (extraneous bytes before a marker), which training skips by default.
    """
    if on_bad not in ON_BAD:
        raise PetlocError(f"on_bad is {on_bad!r}, expected one of {', '.join(ON_BAD)}")
    root = Path(root)
    return _scan(root, LAYOUTS[detect_layout(root)], decode, on_bad == "fail", strict)


def _scan(root: Path, layout: Layout, decode: bool, fail: bool, strict: bool) -> Iterator[Item]:
    images = _DecodeOnce(strict) if decode else None
    first_of: dict[Path, Path] = {}  # resolved photo -> the path it was used under
    for item in layout.read(root, images.size_of if images else header_size):
        pixels = images.take(item.path) if images else None
        if isinstance(item, Sample):
            item = _once(checked_box(item), first_of)
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
