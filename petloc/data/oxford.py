"""The Oxford-IIIT Pet layout: `images/NAME.jpg` + `annotations/xmls/NAME.xml` (head box).

Only images with an xml have a head box, so the xmls drive the reading. The list files
`annotations/list.txt`, `trainval.txt` and `test.txt` (`NAME CLASS_ID SPECIES BREED_ID`,
SPECIES 1 = cat, 2 = dog) give the split and a second word on the species. With
labels="breed" the class is the breed, NAME without its trailing `_number` (37 breeds),
with its species; a photo no list file names has no breed and is skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from petloc.data.cats_dogs import BREED_NAME
from petloc.data.classes import SPECIES
from petloc.data.images import IMAGE_SUFFIXES, BadImage, SizeOf
from petloc.data.records import Sample, Skipped
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, read_bounded

# Oxford's trainval becomes "train": a validation split is carved from it downstream;
# list.txt names every photo (breeds), without a split.
LIST_FILES = {"list.txt": None, "trainval.txt": "train", "test.txt": "test"}
SPECIES_IDS = {"1": "cat", "2": "dog"}  # list file's SPECIES
LIST_FILE_LIMIT = 16_000_000  # bytes: Oxford's own are 0.1 MB (3,700 lines of ~25 bytes)


class BadXml(Exception):
    """A VOC xml that cannot be used; the message is the reason."""


def looks_like(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "annotations" / "xmls").is_dir()


@dataclass(frozen=True)
class Listed:
    """What the list files say of one photo."""

    species: str
    breed: str
    split: str | None


def read(root: Path, size_of: SizeOf, labels: str = "species") -> Iterator[Sample | Skipped]:
    """One Sample (or Skipped) per head-box xml, in sorted order."""
    listed = read_lists(root / "annotations")
    for xml in sorted((root / "annotations" / "xmls").glob("*.xml")):
        yield _read_one(root / "images", xml, listed.get(xml.stem), size_of, labels)


def read_lists(annotations: Path) -> dict[str, Listed]:
    """NAME -> what the list files that exist say of it; malformed lines are ignored."""
    listed: dict[str, Listed] = {}
    for filename, split in LIST_FILES.items():
        path = annotations / filename
        if not path.exists():
            continue
        text = read_bounded(path, LIST_FILE_LIMIT).decode("utf-8", errors="replace")
        for line in text.splitlines():
            fields = line.split()
            breed = BREED_NAME.fullmatch(fields[0]) if fields else None
            if len(fields) == 4 and not line.startswith("#") and fields[2] in SPECIES_IDS and breed:
                # list.txt is read first: the split files' lines then add the split
                listed[fields[0]] = Listed(SPECIES_IDS[fields[2]], breed[1], split)
    return listed


def _read_one(
    images: Path, xml: Path, listed: Listed | None, size_of: SizeOf, labels: str
) -> Sample | Skipped:
    image = _image_for(images, xml.stem)
    if image is None:
        return Skipped(xml, f"no image {xml.stem}.jpg in {images}")
    if labels == "breed" and listed is None:
        return Skipped(image, f"no list file names {xml.stem}: its breed is unknown")
    try:
        species, box, declared = parse_xml(xml)
    except BadXml as err:
        return Skipped(image, f"{xml.name}: {err}")
    if listed is not None and listed.species != species:
        return Skipped(image, f"{xml.name} says {species}, the list file says {listed.species}")
    try:
        width, height = size_of(image)
    except BadImage as err:
        return Skipped(image, str(err))
    if (width, height) != declared:
        return Skipped(
            image, f"image is {width}x{height} but {xml.name} says {declared[0]}x{declared[1]}"
        )
    split = listed.split if listed else None
    if labels == "breed" and listed is not None:
        return Sample(image, listed.breed, box, width, height, split, species)
    return Sample(image, species, box, width, height, split)


def _image_for(images: Path, stem: str) -> Path | None:
    # Anything but a folder: a FIFO or a device named NAME.jpg is reported when read.
    return next(
        (p for p in (images / (stem + s) for s in IMAGE_SUFFIXES) if p.exists() and not p.is_dir()),
        None,
    )


def parse_xml(xml: Path) -> tuple[str, tuple[float, float, float, float], tuple[int, int]]:
    """(species, box, (width, height)) from a VOC xml with exactly one cat or dog; raises `BadXml`."""
    try:
        root = ET.fromstring(read_bounded(xml, SMALL_FILE_LIMIT))
    except UnreadableFile as err:
        raise BadXml(err.reason) from None
    except ET.ParseError as err:
        raise BadXml(f"malformed XML ({err})") from None
    except OSError as err:
        raise BadXml(f"cannot read it ({err.strerror or err})") from None
    objects = root.findall("object")
    if len(objects) != 1:
        raise BadXml(f"{len(objects)} <object> elements, expected one")
    name = (objects[0].findtext("name") or "").strip().lower()
    if name not in SPECIES.names:
        raise BadXml(f"object name {name!r} is not cat or dog")
    width, height = (int(_number(root, f"size/{tag}")) for tag in ("width", "height"))
    xmin, ymin, xmax, ymax = (
        _number(objects[0], f"bndbox/{tag}") for tag in ("xmin", "ymin", "xmax", "ymax")
    )
    # VOC counts pixels from 1 and includes both ends: pixel i spans [i-1, i] in
    # continuous corner coordinates, so the box is (xmin-1, ymin-1, xmax, ymax).
    return name, (xmin - 1, ymin - 1, xmax, ymax), (width, height)


def _number(element: ET.Element, path: str) -> float:
    text = element.findtext(path)
    if text is None:
        raise BadXml(f"<{path}> is missing, expected a number")
    try:
        return float(text)
    except ValueError:
        raise BadXml(f"<{path}> is {text!r}, expected a number") from None
