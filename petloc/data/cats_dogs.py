"""The cats_dogs layout: `NAME.jpg` + `NAME.txt` holding one line `CLASS x1 y1 x2 y2`.

CLASS is 1 = cat, 2 = dog; the box is the head's top-left and bottom-right corners in
pixels of the image. The pairs sit in one folder, or in `train/ valid/ test/` subfolders
(which then give `Sample.split`). The box is checked against the image by `readers.scan`.

With labels="species" the class is CLASS's species. With labels="breed" it is the file
name's breed, the part before the last `_NUMBER` (`Abyssinian_12.jpg` -> `Abyssinian`,
`great_pyrenees_157.jpg` -> `great_pyrenees`), and CLASS gives the breed's species (in
Oxford's names cat breeds are the capitalised ones).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from petloc.data.images import IMAGE_SUFFIXES, BadImage, SizeOf
from petloc.data.records import SPECIES_IDS, Sample, Skipped
from petloc.errors import PetlocError
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, read_text_bounded

SPLITS = ("train", "valid", "test")
CLASS_IDS = {number: species for species, number in SPECIES_IDS.items()}  # file's CLASS -> species
BREED_NAME = re.compile(r"(.+)_\d+")  # Abyssinian_12 -> Abyssinian


class BadAnnotation(Exception):
    """An annotation file that cannot be used; the message is the reason."""


def looks_like(root: Path) -> bool:
    """True when the folder or one of its split subfolders holds an image with its .txt."""
    return any(_has_pair(folder) for folder in [root, *_split_folders(root).values()])


def _has_pair(folder: Path) -> bool:
    images, texts = _pairs(folder)
    return any(image.stem in texts for image in images)


def read(root: Path, size_of: SizeOf, labels: str = "species") -> Iterator[Sample | Skipped]:
    """Every image under `root` in sorted order, as a Sample or the reason it is skipped."""
    splits = _split_folders(root)
    if not splits:
        yield from _read_folder(root, None, size_of, labels)
        return
    for split, folder in splits.items():
        yield from _read_folder(folder, split, size_of, labels)
    for image in _pairs(root)[0]:
        yield Skipped(image, "outside the train/, valid/ and test/ folders: not used")


def _split_folders(root: Path) -> dict[str, Path]:
    """The split subfolders; two that are one folder (valid a link to train) are refused:
    each photo would be in both, and validation would score the training photos."""
    splits = {split: root / split for split in SPLITS if (root / split).is_dir()}
    seen = {root.resolve(): root}
    for folder in splits.values():
        same = seen.setdefault(folder.resolve(), folder)
        if same is not folder:
            raise PetlocError(
                f"{folder}: is the same folder as {same} (a link): a photo cannot be in two splits; "
                f"make {folder.name}/ a folder of its own"
            )
    return splits


def _pairs(folder: Path) -> tuple[list[Path], dict[str, Path]]:
    """The folder's images (sorted) and its .txt files by stem; suffixes in any case. Anything
    but a folder counts (a FIFO named x.jpg is reported when read, not silently left out)."""
    files = sorted(p for p in folder.iterdir() if not p.is_dir())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    texts = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    return images, texts


def _read_folder(
    folder: Path, split: str | None, size_of: SizeOf, labels: str
) -> Iterator[Sample | Skipped]:
    images, texts = _pairs(folder)
    for image in images:
        yield _read_pair(image, texts.get(image.stem), split, size_of, labels)
    image_stems = {image.stem for image in images}
    for stem, text in texts.items():
        if stem not in image_stems:
            yield Skipped(text, "annotation without an image")


def _read_pair(
    image: Path, text: Path | None, split: str | None, size_of: SizeOf, labels: str
) -> Sample | Skipped:
    if text is None:
        return Skipped(image, f"no annotation file {image.stem}.txt")
    breed = BREED_NAME.fullmatch(image.stem)
    if labels == "breed" and breed is None:
        return Skipped(
            image, "the file name is not BREED_NUMBER (labels=breed takes the breed from it)"
        )
    try:
        species, box = parse_annotation(text)
    except BadAnnotation as err:
        return Skipped(image, f"{text.name}: {err}")
    try:
        width, height = size_of(image)
    except BadImage as err:
        return Skipped(image, str(err))
    if breed is not None and labels == "breed":
        return Sample(image, breed[1], box, width, height, split, species)
    return Sample(image, species, box, width, height, split)


def parse_annotation(text: Path) -> tuple[str, tuple[float, float, float, float]]:
    """(species, box) from a `CLASS x1 y1 x2 y2` file; raises `BadAnnotation`."""
    try:
        content = read_text_bounded(text, SMALL_FILE_LIMIT, encoding="utf-8-sig")
    except UnreadableFile as err:
        raise BadAnnotation(err.reason) from None
    except OSError as err:
        raise BadAnnotation(f"cannot read it ({err.strerror or err})") from None
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        raise BadAnnotation("empty annotation file")
    if len(lines) > 1:
        raise BadAnnotation(f"{len(lines)} lines, expected one 'CLASS x1 y1 x2 y2' line")
    return _parse_line(lines[0])


def _parse_line(line: str) -> tuple[str, tuple[float, float, float, float]]:
    fields = line.split()
    try:
        if len(fields) != 5:
            raise ValueError
        class_id = int(fields[0])
        x1, y1, x2, y2 = (float(v) for v in fields[1:])
    except ValueError:
        raise BadAnnotation(
            f"expected 'CLASS x1 y1 x2 y2' with numbers, got {line.strip()[:40]!r}"
        ) from None
    if class_id not in CLASS_IDS:
        raise BadAnnotation(f"class {class_id} is not 1 (cat) or 2 (dog)")
    return CLASS_IDS[class_id], (x1, y1, x2, y2)
