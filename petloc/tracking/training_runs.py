"""Tracked training: data ready, network fitted, figures, pictures and the model in MLflow.

`petloc train` and `petloc pretrain` each make one such run; a sweep makes one per trial,
as a child of its parent run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from petloc import hyperparams, quantities
from petloc.config import Experiment
from petloc.errors import PetlocError
from petloc.model import REGISTERED, TTA, Pretrained
from petloc.tracking import log, registry, runs, store
from petloc.tracking import vocabulary as vocab
from petloc.training.dataset import PreparedData, gallery_image, prepare_data
from petloc.training.evaluate import (
    Predictions,
    TimedForward,
    forward_pass,
    latencies,
    per_class_csv,
    quality,
)
from petloc.training.fit import backed_up, fit_localiser, has_backup, resolved_precision
from petloc.training.gallery import plot_confusion, plot_curves, save_rgb
from petloc.training.pretrain import classifier_figures, fit_classifier


@dataclass
class TrackedRun:
    run_id: str
    summary: dict[str, float]
    data: PreparedData


def train_run(exp: Experiment, say: Callable[[str], None] = print) -> TrackedRun:
    """`petloc train`: one run with the experiment's fixed hyperparameters."""
    store.configure(exp.tracking.uri)  # a dead tracking server is one line before the data is read
    values = exp.fixed_hyperparameters()
    data = prepare_data(exp.data, values["image_size"], say)
    say(
        f"training on {len(data.train)} images, validating on {len(data.val)}: "
        + ", ".join(f"{name}={value}" for name, value in values.items())
    )
    run_id = runs.create_run(
        runs.experiment_id(exp.tracking.experiment), f"train-{values['backbone']}"
    )
    with runs.run_status(run_id):
        summary = train_tracked(exp, values, data, run_id, say=say)
    return TrackedRun(run_id, summary, data)


def pretrain_run(exp: Experiment, say: Callable[[str], None] = print) -> TrackedRun:
    """`petloc pretrain`: the classifier of the `pretrain:` section, tracked."""
    store.configure(exp.tracking.uri)  # a dead tracking server is one line before the data is read
    cfg = exp.pretrain
    data = prepare_data(exp.data, cfg.image_size or exp.data.image_size, say)
    crops = " and their head crops" if cfg.head_crops else ""
    say(
        f"pretraining {cfg.backbone} (width {cfg.width}) on {len(data.train)} photos{crops}, "
        f"validating on {len(data.val)}"
    )
    run_id = runs.create_run(
        runs.experiment_id(exp.tracking.experiment), f"pretrain-{cfg.backbone}"
    )
    with runs.run_status(run_id):
        summary = pretrain_tracked(exp, data, run_id)
    return TrackedRun(run_id, summary, data)


def run_settings(exp: Experiment, epochs: int, image_size: int | None = None) -> dict[str, Any]:
    """What else shapes a run besides its hyperparameters, logged alike by runs and sweeps:
    `seed` seeds the training, `data_seed` and `val_split` make the split; `precision` is
    the one used (`auto` resolved for this machine and `image_size`)."""
    precision = resolved_precision(exp.train.precision, image_size or exp.data.image_size)
    return {
        "epochs": epochs,
        "early_stopping": exp.train.early_stopping,
        "seed": exp.train.seed,
        "xla": exp.train.xla,
        "precision": precision,
        "val_split": exp.data.val_split,
        "data_seed": exp.data.seed,
    }


def modules_needed(values: dict[str, Any], pretrained: Pretrained | None) -> tuple[str, ...]:
    """The plug-in modules a model built from `values` needs (a pretrained network's own backbone's)."""
    backbone = pretrained.backbone if pretrained else values["backbone"]
    return hyperparams.plugin_modules({**values, "backbone": backbone})


def plugins_tag(needs: tuple[str, ...]) -> dict[str, str]:
    """The run tag naming the plug-in modules `needs` (none when there are none)."""
    return {vocab.PLUGINS: ",".join(needs)} if needs else {}


def recorded_plugins(tags: list[dict[str, str]]) -> tuple[str, ...]:
    """The plug-in modules the runs with `tags` recorded, each once, in order."""
    listed = (tag.get(vocab.PLUGINS, "").split(",") for tag in tags)
    return tuple(dict.fromkeys(module for modules in listed for module in modules if module))


def pretrained_for(backbone: str, val_key: str) -> Pretrained | None:
    """The registered network a `registered:` backbone names, checked not to have trained on
    this run's validation photos; None for a built-in backbone."""
    if not backbone.startswith(REGISTERED):
        return None
    pretrained = registry.pretrained_backbone(backbone.removeprefix(REGISTERED))
    if pretrained.val_data != val_key:
        raise PetlocError(
            f"backbone: {backbone} was pretrained on another split ({pretrained.val_data}, "
            f"this run {val_key}), so its training photos may be in this run's validation set; "
            "pretrain with the same data.path, val_split and seed"
        )
    return pretrained


def train_tracked(
    exp: Experiment,
    values: dict[str, Any],
    data: PreparedData,
    run_id: str,
    epochs: int | None = None,
    initial_epoch: int = 0,
    initial_weights: Path | None = None,
    save_weights: Path | None = None,
    description: str = "",
    pace: Callable[[int, float], None] | None = None,
    backup: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, float]:
    """Fits `values` on `data` inside MLflow run `run_id` and logs everything; returns the summary
    metrics. `pace(epoch, seconds)` hears the steady epoch time as the training goes.
    `backup`: a folder where the training state is kept after each epoch (`fit.fit`); when it
    holds one, the fit resumes from it, in the same run, and the curves and `epochs_trained`
    count the epochs before the interruption too, and `train_seconds` the training before it.
    `say` hears the epoch lines."""
    epochs = epochs or exp.train.epochs
    resumed = bool(backup and has_backup(backup))
    # the training before a stop counts too
    seconds_before = backed_up(backup).seconds if backup and resumed else 0.0
    pretrained = pretrained_for(values["backbone"], data.val_key)
    description = description or f"Training run of experiment '{exp.name}'"
    description += (
        f": {values['backbone']} at {values['image_size']} px, {epochs} epochs, "
        f"on {len(data.train)} photos of {data.source}, validated on {len(data.val)}"
    )
    needs = modules_needed(values, pretrained)
    log.log_run_inputs(
        run_id,
        {**values, **run_settings(exp, epochs, int(values["image_size"]))},
        data,
        exp.train.seed,
        description,
        **plugins_tag(needs),
    )
    log.log_experiment(run_id, exp)

    start = time.perf_counter()
    epochs_logged = log.EpochLogger(run_id, pace)
    model, history = fit_localiser(
        values,
        data.train,
        data.val,
        epochs,
        seed=exp.train.seed,
        early_stopping=exp.train.early_stopping,
        callbacks=[epochs_logged],
        initial_epoch=initial_epoch,
        backup=str(backup) if backup else None,
        initial_weights=str(initial_weights) if initial_weights else None,
        xla=exp.train.xla,
        precision=exp.train.precision,
        pretrained=pretrained,
        say=say,
    )
    if save_weights:
        save_weights.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(save_weights)
    train_seconds = seconds_before + time.perf_counter() - start
    curves = log.epoch_history(run_id) if resumed else history.history
    lever = {}
    # what test-time augmentation was worth, on the same weights
    if values.get("tta", "none") != "none":
        plain, _ = quality(model, data.val)
        lever = {
            vocab.VAL_MIOU_WITHOUT_TTA: plain[quantities.MIOU],
            vocab.VAL_ACCURACY_WITHOUT_TTA: plain[quantities.ACCURACY],
        }
    model = TTA[values.get("tta", "none")](model)  # what is measured and logged is what users get
    # none when resumed with none left
    timed = {vocab.EPOCH_SECONDS: epochs_logged.epoch_seconds()} if epochs_logged.seconds else {}
    return score_and_log(
        exp,
        model,
        data,
        run_id,
        curves,
        {
            **lever,
            vocab.TRAIN_SECONDS: train_seconds,
            vocab.EPOCHS_TRAINED: float(len(curves.get("loss", []))),
            **timed,
        },
        plugins=needs,
    )


def score_and_log(
    exp: Experiment,
    model,
    data: PreparedData,
    run_id: str,
    history: dict | None,
    extra: dict[str, float],
    plugins: tuple[str, ...] = (),
) -> dict[str, float]:
    """A localiser as users get it, scored on the validation photos (mIoU, accuracy and the
    class figures that apply, IoU >= 0.5, latency) and logged in run `run_id` with its curves
    (when trained here), a gallery of its answers, a per-class table and confusion matrix,
    and the model itself; returns the summary metrics."""
    # One trace for the quality pass and the latencies; the quality pass's batches of 32 are
    # also the batch-32 latency's calls.
    forward = TimedForward(forward_pass(model))
    figures, pred = quality(model, data.val, forward)
    measured = {
        **figures,
        **latencies(model, int(model.input_shape[1]), forward),
        quantities.PARAMS_COUNT: model.count_params(),
    }
    summary = {
        **{
            metric: measured[name] for name, metric in vocab.RUN_METRICS.items() if name in measured
        },
        vocab.SKIPPED_IMAGES: float(len(data.whole.skipped)),  # the tag's count, as a metric
        **extra,
    }
    mlflow.log_metrics(summary, run_id=run_id)
    with log.scratch_dir() as tmp:
        files: dict[str, Path | list[Path]] = {
            "gallery": save_rgb(
                gallery_image(data.val, pred, exp.tracking.gallery_images),
                Path(tmp) / "val_gallery.png",
            )
        }
        top = class_files(data, pred, Path(tmp))
        if history:
            top.append(plot_curves(history, Path(tmp) / "curves.png"))
        files[""] = top
        if data.whole.skipped:
            skipped = Path(tmp) / "skipped.txt"
            skipped.write_text("".join(f"{s}\n" for s in data.whole.skipped), encoding="utf-8")
            files["data"] = skipped
        log.log_files(run_id, files)
    log.log_model(model, run_id, localiser=True, plugins=plugins)
    return summary


def class_files(data: PreparedData, pred: Predictions, folder: Path) -> list[Path]:
    """The per-class table and the confusion matrix of the validation photos, to log at the
    run's top level."""
    table = folder / vocab.PER_CLASS_FILE
    table.write_text(per_class_csv(data.val, pred), encoding="utf-8")
    confusion = plot_confusion(
        data.val.labels, pred.labels, data.val.classes.names, folder / vocab.CONFUSION_FILE
    )
    return [table, confusion]


def pretrain_tracked(exp: Experiment, data: PreparedData, run_id: str) -> dict[str, float]:
    """Trains the classifier inside MLflow run `run_id`; logs and returns its figures."""
    cfg = exp.pretrain
    params: dict[str, Any] = {
        **cfg.model_dump(exclude={"register_as", "alias"}),
        "image_size": int(data.train.images.shape[1]),
        "seed": exp.train.seed,
        "val_split": exp.data.val_split,
    }
    description = (
        f"Pretraining of experiment '{exp.name}': a {cfg.backbone} classifier of "
        f"{len(data.whole.classes)} classes for localisers to start from, "
        f"on {len(data.train)} photos of {data.source}"
    )
    needs = modules_needed({"backbone": cfg.backbone}, None)
    log.log_run_inputs(
        run_id,
        params,
        data,
        exp.train.seed,
        description,
        **{vocab.KIND: vocab.PRETRAIN_KIND, **plugins_tag(needs)},
    )
    log.log_experiment(run_id, exp)
    start = time.perf_counter()
    model, history = fit_classifier(cfg, data, exp.train.seed, callbacks=[log.EpochLogger(run_id)])
    summary = {
        **classifier_figures(model, data.val),
        "train_images": float(len(data.train) * (2 if cfg.head_crops else 1)),
        vocab.TRAIN_SECONDS: time.perf_counter() - start,
        vocab.EPOCHS_TRAINED: float(len(history.history.get("loss", []))),
    }
    mlflow.log_metrics(summary, run_id=run_id)
    log.log_model(model, run_id, localiser=False, plugins=needs)
    return summary
