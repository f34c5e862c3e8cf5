"""A run's data, ready: the dataset folder (the synthetic set made on first use), decoded,
split into training and validation, and a picture of predictions on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petloc.config import DataConfig
from petloc.data.classes import at_least_two
from petloc.data.pipeline import ImageSet, load_arrays, split_train_val
from petloc.data.synth import generate, is_generated
from petloc.files import waiting_lock
from petloc.training.evaluate import per_image_iou
from petloc.training.gallery import Answers, figure_rgb, gallery_figure, pick_for_gallery

SYNTHETIC_DIR = Path("data/synthetic")


@dataclass
class PreparedData:
    source: Path
    whole: ImageSet  # every usable image, before the split
    train: ImageSet
    val: ImageSet

    val_key: str = ""  # what validation data this is: same key, comparable figures

    def tags(self) -> dict[str, Any]:
        return {
            "dataset_path": str(self.source),
            "dataset_digest": self.whole.digest,
            "val_data": self.val_key,
            "skipped_images": len(self.whole.skipped),
        }


def data_folder(cfg: DataConfig, say=print) -> Path:
    """The dataset folder; for `synthetic`, the embedded generator's set, made on first use."""
    if cfg.path != "synthetic":
        return Path(cfg.path).expanduser()
    # Two sweeps started together on a new checkout: one makes the set, the other waits for it.
    with waiting_lock(SYNTHETIC_DIR.with_name(SYNTHETIC_DIR.name + ".lock")):
        if not is_generated(SYNTHETIC_DIR, cfg.synthetic_count, cfg.seed):
            say(
                f"making {cfg.synthetic_count} synthetic images in {SYNTHETIC_DIR} (seed {cfg.seed}) ..."
            )
            generate(SYNTHETIC_DIR, count=cfg.synthetic_count, seed=cfg.seed)
    return SYNTHETIC_DIR


def prepare_data(cfg: DataConfig, image_size: int | None = None, say=print) -> PreparedData:
    source = data_folder(cfg, say)
    arrays = load_arrays(source, image_size or cfg.image_size, on_bad=cfg.on_bad, labels=cfg.labels)
    at_least_two(arrays.classes, source)
    for skipped in arrays.skipped:
        say(f"skipped {skipped}")
    if arrays.skipped:
        say(f"{len(arrays.skipped)} file(s) skipped, {len(arrays)} images used")
    train, val = split_train_val(arrays, cfg.val_split, cfg.seed)
    # breed and species of one folder are different validation data
    labelled = "" if cfg.labels == "species" else f"/{cfg.labels}"
    return PreparedData(
        source,
        arrays,
        train,
        val,
        f"{arrays.digest[:16]}/val{cfg.val_split}/seed{cfg.seed}{labelled}",
    )


def gallery_image(arrays: ImageSet, pred, count: int, seed: int = 0) -> np.ndarray:
    """`count` validation photos, half of them the worst answers and the others spread over the
    classes (`pick_for_gallery`), each with its true and predicted box under a legend."""
    ious = per_image_iou(arrays, pred)
    pick = pick_for_gallery(arrays.labels, pred.labels, ious, count, seed)
    answers = Answers(
        arrays.images,
        arrays.boxes,
        pred.boxes,
        arrays.labels,
        pred.labels,
        pred.scores,
        ious,
        arrays.classes.names,
    )
    return figure_rgb(gallery_figure(answers, pick))
