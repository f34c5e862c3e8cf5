"""One tracked training run: data ready, model fitted, figures and pictures in MLflow.

`petloc train` runs this once; a sweep runs it once per trial inside a child run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petloc import tracking
from petloc.config import REGISTERED, DataConfig, Experiment
from petloc.errors import PetlocError
from petloc.files import waiting_lock
from petloc.data.pipeline import Arrays, load_arrays, split_train_val
from petloc.evaluate import latencies, per_image_iou, quality
from petloc.gallery import draw_prediction, gallery, plot_curves, save_rgb
from petloc.model import TTA
from petloc.train import fit_model

SYNTHETIC_DIR = Path("data/synthetic")


@dataclass
class PreparedData:
    source: Path
    all: Arrays
    train: Arrays
    val: Arrays

    val_key: str = ""  # what validation data this is: same key, comparable figures

    def tags(self) -> dict[str, Any]:
        return {
            "dataset_path": str(self.source),
            "dataset_digest": self.all.digest,
            "val_data": self.val_key,
            "skipped_images": len(self.all.skipped),
        }


def data_folder(cfg: DataConfig, log=print) -> Path:
    """The dataset folder; for `synthetic`, the embedded generator's set, made on first use."""
    if cfg.path != "synthetic":
        return Path(cfg.path).expanduser()
    from petloc.data.synth import generate, is_generated

    # Two sweeps started together on a new checkout: one makes the set, the other waits for it.
    with waiting_lock(SYNTHETIC_DIR.with_name(SYNTHETIC_DIR.name + ".lock")):
        if not is_generated(SYNTHETIC_DIR, cfg.synthetic_count, cfg.seed):
            log(f"making {cfg.synthetic_count} synthetic images in {SYNTHETIC_DIR} (seed {cfg.seed}) ...")
            generate(SYNTHETIC_DIR, count=cfg.synthetic_count, seed=cfg.seed)
    return SYNTHETIC_DIR


def prepare_data(cfg: DataConfig, image_size: int | None = None, log=print) -> PreparedData:
    source = data_folder(cfg, log)
    arrays = load_arrays(source, image_size or cfg.image_size, on_bad=cfg.on_bad)
    for skipped in arrays.skipped:
        log(f"skipped {skipped}")
    if arrays.skipped:
        log(f"{len(arrays.skipped)} file(s) skipped, {len(arrays)} images used")
    train, val = split_train_val(arrays, cfg.val_split, cfg.seed)
    return PreparedData(source, arrays, train, val, f"{arrays.digest[:16]}/val{cfg.val_split}/seed{cfg.seed}")


def gallery_image(arrays: Arrays, pred, count: int) -> np.ndarray:
    """`count` validation images spread over the set (files are sorted by class), with the
    true box in green and the predicted one in magenta."""
    ious = per_image_iou(arrays, pred)
    picks = np.unique(np.linspace(0, len(arrays) - 1, min(count, len(arrays))).round().astype(int))
    tiles = [
        draw_prediction(arrays.images[i], arrays.boxes[i], pred.boxes[i], int(arrays.labels[i]), int(pred.labels[i]), float(pred.scores[i]), float(ious[i]))
        for i in picks
    ]
    return gallery(tiles)


def _check_transfer(backbone: str, val_key: str) -> None:
    """A pretrained backbone must not have trained on this run's validation photos."""
    if not backbone.startswith(REGISTERED):
        return
    from petloc.registry import source_run

    pretrained_on = source_run(backbone.removeprefix(REGISTERED)).data.tags.get("val_data")
    if pretrained_on != val_key:
        raise PetlocError(f"backbone: {backbone} was pretrained on another split ({pretrained_on}, this run {val_key}), "
                          "so its training photos may be in this run's validation set; pretrain with the same data.path, val_split and seed")


def run_settings(exp: Experiment, epochs: int) -> dict[str, Any]:
    """What else shapes a run besides its hyperparameters, logged alike by runs and sweeps:
    `seed` seeds the training, `data_seed` and `val_split` make the split."""
    return {"epochs": epochs, "early_stopping": exp.train.early_stopping, "seed": exp.train.seed, "xla": exp.train.xla,
            "precision": exp.train.precision, "val_split": exp.data.val_split, "data_seed": exp.data.seed}


def train_tracked(
    exp: Experiment, hp: dict[str, Any], data: PreparedData, run_id: str, verbose: int | None = None,
    epochs: int | None = None, initial_epoch: int = 0, initial_weights: Path | None = None, save_weights: Path | None = None,
) -> dict[str, float]:
    """Fits `hp` on `data` inside MLflow run `run_id` and logs everything; returns the summary metrics."""
    import mlflow

    epochs = epochs or exp.train.epochs
    _check_transfer(hp["backbone"], data.val_key)
    params = {**hp, **run_settings(exp, epochs)}
    tracking.log_run_inputs(run_id, params, data.tags(), exp.train.seed)

    start = time.perf_counter()
    model, history = fit_model(
        hp, data.train, data.val, epochs, seed=exp.train.seed, early_stopping=exp.train.early_stopping,
        callbacks=[tracking.EpochLogger(run_id)], verbose=verbose, initial_epoch=initial_epoch,
        initial_weights=str(initial_weights) if initial_weights else None, xla=exp.train.xla,
        precision=exp.train.precision,
    )
    if save_weights:
        save_weights.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(save_weights)
    train_seconds = time.perf_counter() - start
    lever = {}
    if hp.get("tta", "none") != "none":  # what test-time augmentation was worth, on the same weights
        plain, _ = quality(model, data.val)
        lever = {"val_miou_without_tta": plain["miou"], "val_accuracy_without_tta": plain["accuracy"]}
    model = TTA[hp.get("tta", "none")](model)  # what is measured and logged is what users get
    figures, pred = quality(model, data.val)
    summary = {
        "best_val_miou": figures["miou"],
        "val_accuracy": figures["accuracy"],
        "val_iou50": figures["iou50"],
        **lever,
        **latencies(model, int(hp["image_size"])),
        "params_count": float(model.count_params()),
        "train_seconds": train_seconds,
        "epochs_trained": float(len(history.history.get("loss", []))),
        "skipped_images": float(len(data.all.skipped)),
    }
    mlflow.log_metrics(summary, run_id=run_id)

    with tracking.scratch_dir() as tmp:
        files = {
            "": plot_curves(history.history, Path(tmp) / "curves.png"),
            "gallery": save_rgb(gallery_image(data.val, pred, exp.tracking.gallery_images), Path(tmp) / "val_gallery.png"),
        }
        if data.all.skipped:
            skipped = Path(tmp) / "skipped.txt"
            skipped.write_text("".join(f"{s}\n" for s in data.all.skipped), encoding="utf-8")
            files["data"] = skipped
        tracking.log_files(run_id, files)
    mlflow.MlflowClient().set_tag(run_id, "model_uri", tracking.log_model(model, run_id))
    return summary
