"""From a dataset folder to tf.data batches.

Images are decoded and resized once into uint8 arrays and cached on disk (keyed by the
files' content digest and the size), so later runs and every trial of a sweep start in
seconds. Augmentation runs per batch inside tf.data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from petloc.data.augment import augment
from petloc.data.classes import SPECIES, Classes, dataset_classes
from petloc.data.images import IMAGE_SUFFIXES, max_image_bytes
from petloc.data.readers import scan
from petloc.data.records import Skipped, checked_labelling
from petloc.errors import PetlocError
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, atomic_write, open_regular

DEFAULT_CACHE = Path("data/.cache")
# bump when decoding, box conversion or what a cache holds changes, so old caches are not
# reused (3: EXIF orientation; 4: class names, labels by species or breed)
CACHE_VERSION = 4
# what the digest covers: photos and their annotations
DATASET_FILES = {*IMAGE_SUFFIXES, ".txt", ".xml", ".csv"}
TEXT_DIGEST_LIMIT = (
    16_000_000  # bytes of a .txt or .xml the digest reads: past any limit a read of it applies
)
DIGEST_CHUNK = 1 << 20


@dataclass
class ImageSet:
    """A whole dataset in memory, boxes normalised to the image."""

    images: np.ndarray  # [N, S, S, 3] uint8 RGB
    labels: np.ndarray  # [N] int32, indices into `classes.names`
    boxes: np.ndarray  # [N, 4] float32, normalised [x1, y1, x2, y2]
    paths: list[str]
    splits: list[str]  # "" where the layout does not say
    skipped: list[Skipped] = field(default_factory=list)
    digest: str = ""
    classes: Classes = SPECIES

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(
            self.images[index],
            self.labels[index],
            self.boxes[index],
            [self.paths[i] for i in index],
            [self.splits[i] for i in index],
            [],
            self.digest,
            self.classes,
        )

    def relabelled(self, classes: Classes) -> ImageSet:
        """The same photos with labels as indices into `classes` (a model's), by class name;
        a class the model does not know is a one-line PetlocError naming its first photo."""
        known = [classes.names.index(n) if n in classes.names else -1 for n in self.classes.names]
        mapping = np.array(known, np.int32)
        unknown = np.flatnonzero(mapping[self.labels] < 0)
        if len(unknown):
            first = unknown[0]
            try:
                classes.index(self.classes.names[self.labels[first]])
            except PetlocError as err:
                raise PetlocError(f"{self.paths[first]}: {err}") from None
        return replace(
            self, labels=mapping[self.labels], skipped=list(self.skipped), classes=classes
        )


def dataset_digest(root: Path) -> str:
    """sha256 over every image and annotation file's relative path and bytes."""
    h = hashlib.sha256()
    for path in sorted(
        p for p in root.rglob("*") if p.suffix.lower() in DATASET_FILES and not p.is_dir()
    ):
        h.update(str(path.relative_to(root)).encode())
        _hash_file(
            h,
            path,
            max_image_bytes() if path.suffix.lower() in IMAGE_SUFFIXES else TEXT_DIGEST_LIMIT,
        )
    return h.hexdigest()


def _hash_file(h, path: Path, limit: int) -> None:
    """The file's size and its bytes up to one past `limit` (a read refuses a larger file,
    naming its size), a chunk at a time; a FIFO or device as the reason it is not read."""
    try:
        with open_regular(path) as file:
            h.update(str(os.fstat(file.fileno()).st_size).encode())
            left = limit + 1
            while left > 0 and (chunk := file.read(min(DIGEST_CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
    except UnreadableFile as err:
        h.update(err.reason.encode())


def _photo_count(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _cache_limit(photos: int, image_size: int) -> int:
    """Bytes a cache petloc wrote for this dataset holds at most: the pixels, a box, a label,
    a path and a reason per photo."""
    return photos * (image_size * image_size * 3 + 4096) + SMALL_FILE_LIMIT


def _decode_all(root: Path, image_size: int, on_bad: str, strict: bool, labels: str) -> ImageSet:
    images, names, boxes, paths, splits, skipped = [], [], [], [], [], []
    species_of: dict[str, str | None] = {}
    photos = _photo_count(root)
    # Once per dataset and size (then cached); a bar on a terminal, nothing in logs and pipes.
    bar = tqdm(
        total=photos, desc=f"decoding {root.name} at {image_size} px", unit="photo", disable=None
    )
    for item in scan(root, on_bad=on_bad, strict=strict, labels=labels):
        bar.update()
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        sample, pixels = item
        assert pixels is not None  # scan decodes unless told not to
        images.append(cv2.resize(pixels, (image_size, image_size), interpolation=cv2.INTER_AREA))
        names.append(sample.label)
        species_of[sample.label] = sample.species
        boxes.append(
            np.array(sample.box, np.float32)
            / np.array([sample.width, sample.height] * 2, np.float32)
        )
        paths.append(str(sample.path))
        splits.append(sample.split or "")
    bar.close()
    if not images:
        raise PetlocError(f"{root}: no usable images ({len(skipped)} skipped)")
    classes = dataset_classes(species_of)
    return ImageSet(
        np.stack(images),
        np.array([classes.index(name) for name in names], np.int32),
        np.stack(boxes).astype(np.float32),
        paths,
        splits,
        skipped,
        classes=classes,
    )


def load_arrays(
    root: str | Path,
    image_size: int,
    on_bad: str = "skip",
    cache_dir: Path | None = DEFAULT_CACHE,
    strict: bool = True,
    labels: str = "species",
) -> ImageSet:
    """Decoded, resized dataset; read from the cache when the files have not changed.
    strict=False keeps JPEGs the decoder repaired (see `scan`); `labels` is how photos are
    labelled (species or breed), and the same folder labelled otherwise is another cache."""
    root = Path(root)
    if not root.is_dir():
        raise PetlocError(f"{root}: data folder does not exist")
    checked_labelling(labels)
    digest = dataset_digest(root)
    kind = ("" if strict else "-lenient") + ("" if labels == "species" else f"-{labels}")
    cache = (
        cache_dir / f"{digest[:16]}-{image_size}{kind}-v{CACHE_VERSION}.npz" if cache_dir else None
    )
    if cache and cache.exists():
        with (
            _open_cache(cache, _cache_limit(_photo_count(root), image_size)) as file,
            np.load(file) as npz,
        ):
            meta = json.loads(str(npz["meta"]))
            skipped = [Skipped(Path(p), r) for p, r in meta["skipped"]]
            if on_bad == "fail" and skipped:
                raise PetlocError(str(skipped[0]))
            return ImageSet(
                npz["images"],
                npz["labels"],
                npz["boxes"],
                meta["paths"],
                meta["splits"],
                skipped,
                digest,
                Classes.from_json(meta["classes"]),
            )
    arrays = _decode_all(root, image_size, on_bad, strict, labels)
    arrays.digest = digest
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "paths": arrays.paths,
            "splits": arrays.splits,
            "skipped": [[str(s.path), s.reason] for s in arrays.skipped],
            "classes": arrays.classes.to_json(),
        }
        _write_cache(
            cache,
            images=arrays.images,
            labels=arrays.labels,
            boxes=arrays.boxes,
            meta=json.dumps(meta),
        )
    return arrays


def _open_cache(cache: Path, limit: int):
    try:
        return open_regular(cache, limit)
    except UnreadableFile as err:
        raise PetlocError(
            f"{err}: not a cache petloc wrote; remove it and the dataset is decoded afresh"
        ) from None


def _write_cache(cache: Path, **arrays) -> None:
    """Through a temp file of this process's own, renamed when whole: a crash never leaves a
    half cache, and two processes preparing the same dataset never write one file."""
    atomic_write(cache, lambda file: np.savez(file, **arrays))


def split_train_val(arrays: ImageSet, val_share: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """The layout's own train/valid folders when it has them, else a split stratified by class."""
    splits = np.array(arrays.splits)
    if (splits == "valid").any():
        # photos whose split the layout leaves unsaid (a manifest's empty cell) are trained on
        train = np.flatnonzero((splits == "train") | (splits == ""))
        val = np.flatnonzero(splits == "valid")
    else:
        # a layout's test photos are never trained or tuned on
        pool = np.flatnonzero(splits != "test")
        labels = arrays.labels[pool]
        _refuse_too_few(arrays, labels)
        stratify = labels if len(np.unique(labels)) > 1 else None
        try:
            train, val = train_test_split(
                pool, test_size=val_share, random_state=seed, stratify=stratify
            )
        except ValueError as err:
            raise PetlocError(
                f"cannot split {len(pool)} images into train and validation: {err}"
            ) from None
    if not len(train) or not len(val):
        raise PetlocError(
            f"train/validation split left {len(train)} training and {len(val)} validation images"
        )
    return arrays.subset(np.sort(train)), arrays.subset(np.sort(val))


def _refuse_too_few(arrays: ImageSet, pool_labels: np.ndarray) -> None:
    """A class the photos hold must have 2 outside the test split: one to train on, one to
    validate with."""
    counts = np.bincount(pool_labels, minlength=len(arrays.classes))
    for index in np.unique(arrays.labels):
        if counts[index] < 2:
            folder = os.path.commonpath([os.path.dirname(p) for p in arrays.paths])
            raise PetlocError(
                f"{folder}: class {arrays.classes.names[index]!r} has {counts[index]} photo(s) "
                "outside the test split, too few to split into train and validation (2 at least)"
            )


def _targets(images, labels, boxes):
    return tf.cast(images, tf.float32), {"cls": labels, "box": boxes}


def _weighted(class_weights: np.ndarray):
    """Targets plus a per-output sample weight: the class loss weighted by the true class,
    the box loss left as it is (a cat's head is no harder to find for being rarer)."""
    table = tf.constant(class_weights, tf.float32)

    def targets(images, labels, boxes):
        images, y = _targets(images, labels, boxes)
        return images, y, {"cls": tf.gather(table, labels), "box": tf.ones_like(boxes[:, 0])}

    return targets


def train_batches(
    arrays: ImageSet,
    batch_size: int,
    aug_strength: float,
    seed: int,
    class_weights: np.ndarray | None = None,
    erase: float = 0.0,
) -> tf.data.Dataset:
    """Shuffled, augmented batches; a new augmentation draw every epoch.
    `class_weights` (one per class) weight each image's class loss; `erase` is the share of
    images with a random patch outside the head erased."""
    targets = _targets if class_weights is None else _weighted(class_weights)
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels, arrays.boxes))
    ds = ds.shuffle(len(arrays), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if aug_strength > 0 or erase > 0:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = (
            tf.data.Dataset.zip(ds, seeds)
            .map(
                lambda batch, s: (
                    *augment(tf.cast(batch[0], tf.float32), batch[2], aug_strength, s, erase),
                    batch[1],
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
            .map(lambda images, boxes, labels: targets(images, labels, boxes))
        )
    else:
        ds = ds.map(targets)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_batches(arrays: ImageSet, batch_size: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels, arrays.boxes)).batch(
        batch_size
    )
    return ds.map(_targets).prefetch(tf.data.AUTOTUNE)
