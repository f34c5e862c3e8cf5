"""The CSV manifest layout, for anyone's data: `labels.csv` in the dataset folder.

One row per photo, under a header naming the columns (any order; others are ignored):

    path,label,x1,y1,x2,y2,split,species
    photos/rex.jpg,beagle,12,8,60,50,train,dog

- path: the photo, relative to the folder holding labels.csv (and inside it)
- label: the photo's class, any name (`cat`, `Abyssinian`, `rabbit`)
- x1 y1 x2 y2: the head box in pixels of the photo, top-left and bottom-right corners
- split (optional column): `train`, `valid` or `test`; empty = not said
- species (optional column): the class's species; empty = not said

With labels="species" and a species column, the class is the species; otherwise it is the
label, with its species beside it. A row that cannot be used is skipped with its row number
(the header is row 1); a manifest without the columns above is refused at once.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from petloc.data.cats_dogs import SPLITS
from petloc.data.images import BadImage, SizeOf
from petloc.data.records import Sample, Skipped, box_problem
from petloc.errors import PetlocError
from petloc.files import UnreadableFile, read_text_bounded

MANIFEST = "labels.csv"
REQUIRED = ("path", "label", "x1", "y1", "x2", "y2")
OPTIONAL = ("split", "species")
BOX = REQUIRED[2:]
MANIFEST_LIMIT = 64_000_000  # bytes: a million photos at ~60 bytes a row


class BadRow(Exception):
    """A manifest row that cannot be used; the message is the reason."""


def looks_like(root: Path) -> bool:
    return (root / MANIFEST).is_file()


def read(root: Path, size_of: SizeOf, labels: str = "species") -> Iterator[Sample | Skipped]:
    """One Sample (or Skipped) per row, in the manifest's order."""
    manifest = root / MANIFEST
    rows, columns = _rows(manifest)
    by_species = labels == "species" and "species" in columns
    first_row: dict[str, int] = {}  # photo (as written, normalised) -> its first row
    for number, row in rows:
        yield _read_row(root, number, row, size_of, by_species, first_row)


def _rows(manifest: Path) -> tuple[Iterator[tuple[int, dict[str, str]]], set[str]]:
    """(row number, {column: stripped text}) per row, and the header's columns; raises a
    one-line PetlocError for a manifest that cannot be read or lacks a column."""
    try:
        text = read_text_bounded(manifest, MANIFEST_LIMIT, encoding="utf-8-sig")
    except UnreadableFile as err:
        raise PetlocError(str(err)) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in _next(reader, manifest) or []]
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise PetlocError(
            f"{manifest} row 1: missing column(s) {', '.join(missing)} "
            f"(expected the header {','.join(REQUIRED)}, optionally {' and '.join(OPTIONAL)})"
        )

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        while (fields := _next(reader, manifest)) is not None:
            if any(field.strip() for field in fields):  # blank lines are not rows
                values = [field.strip() for field in fields]
                yield reader.line_num, dict(zip(header, values + [""] * len(header), strict=False))

    return rows(), set(header)


def _next(reader, manifest: Path) -> list[str] | None:
    try:
        return next(reader, None)
    except csv.Error as err:
        raise PetlocError(f"{manifest} row {reader.line_num + 1}: not CSV ({err})") from None


def _read_row(
    root: Path,
    number: int,
    row: dict[str, str],
    size_of: SizeOf,
    by_species: bool,
    first_row: dict[str, int],
) -> Sample | Skipped:
    where = f"{MANIFEST} row {number}"
    try:
        name = _photo(row["path"])
    except BadRow as err:
        return Skipped(root / MANIFEST, f"row {number}: {err}")
    image = root / name
    first = first_row.setdefault(name, number)
    if first != number:
        return Skipped(image, f"{where}: the photo is also on row {first}; one head box per photo")
    try:
        label, species, box, split = _fields(row, by_species)
        width, height = size_of(image)
        problem = box_problem(box, width, height)
        if problem:
            raise BadRow(problem)
    except (BadRow, BadImage) as err:
        return Skipped(image, f"{where}: {err}")
    return Sample(image, label, box, width, height, split, species)


def _photo(path: str) -> str:
    """The row's path, normalised; one that leaves the manifest's folder is refused (the
    dataset's digest, which keys the cache, covers that folder only)."""
    if not path:
        raise BadRow("empty path")
    name = os.path.normpath(path.replace("\\", "/"))
    if Path(name).is_absolute() or name.split(os.sep)[0] == "..":
        raise BadRow(f"path {path!r} is not inside the manifest's folder")
    return name


def _fields(
    row: dict[str, str], by_species: bool
) -> tuple[str, str | None, tuple[float, float, float, float], str | None]:
    """(class, its species or None, box, split or None) from a row; raises BadRow."""
    species = row.get("species") or None
    label = species if by_species else row["label"]
    if not label:
        raise BadRow(
            "empty species (labels=species takes the class from it)"
            if by_species
            else "empty label"
        )
    split = row.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        raise BadRow(f"split {row['split']!r} is not {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
    return label, None if by_species else species, _box(row), split


def _box(row: dict[str, str]) -> tuple[float, float, float, float]:
    values = []
    for column in BOX:
        try:
            values.append(float(row[column]))
        except ValueError:
            raise BadRow(f"{column} is {row[column][:40]!r}, expected a number") from None
    x1, y1, x2, y2 = values
    return x1, y1, x2, y2
