"""petloc from Python: what `petloc sweep`, `train`, `evaluate` and `export` do, as functions that
return results instead of printing them. The command line calls these same functions.

    import petloc
    result = petloc.sweep("experiments/quick.yaml", {"train.epochs": 1, "tuner.max_trials": 2})
    result.leaderboard                       # pandas DataFrame, the columns of leaderboard.csv
    model = petloc.load_model(result.champion)

Bad input raises the command line's one-line `petloc.errors.PetlocError` (the message is
what `petloc` prints after "petloc: error:").

Progress: `say` hears petloc's own lines (a trial starts, an epoch ends, ...); the default
`print` shows them in a terminal and in a notebook's cell output alike; `say=None` silences
them. Keras's own progress stays off unless the `petloc` logger is at DEBUG (what
`petloc --verbose` sets). Progress bars (decoding a dataset the first time) appear only when
stderr is a terminal, as tqdm decides: never in a notebook, a log file or a pipe.

Importing this module loads neither TensorFlow nor MLflow; the functions do, when called.
When they load TensorFlow, its C++ log stays quiet as under `petloc` (TF_CPP_MIN_LOG_LEVEL=3,
unless set already or the `petloc` logger is at DEBUG).
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from petloc.config import Experiment, apply_overrides, load_experiment, parse_experiment
from petloc.errors import PetlocError, did_you_mean
from petloc.quiet import hide_tensorflow_startup_log

if TYPE_CHECKING:
    import pandas

Say = Callable[[str], None]
Overrides = Sequence[str] | Mapping[str, Any] | str | None

EVALUATE_CHOICES = {
    "on_bad": ("skip", "fail"),
    "subset": ("all", "train", "val"),
    "tta": ("none", "flip"),
}


# ---- results ----------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep ended with.

    `leaderboard`: the finished trials in the leaderboard's order (the champion first: val mIoU
    within `registry.min_improvement` of the best by batch-1 latency, then by val mIoU), with
    the columns of the parent run's `leaderboard.csv`, its figures under the runs' metric names (`best_val_miou`,
    `val_accuracy`, `latency_ms_b1`, ...; a missing figure is NaN). `champion`: the registered model that
    holds the registry alias when the sweep ended, pinned by version (`models:/NAME/VERSION`),
    whether or not this sweep's best took it (`promoted` says); None when no version holds it.
    `summary`: the lines `petloc sweep` prints at the end; `str(result)` joins them.
    `urls`: the MLflow UI's pages of the parent run, the best run and its registered version,
    label -> URL (on the tracking server, or where `petloc ui` serves them)."""

    name: str
    parent_run_id: str
    leaderboard: pandas.DataFrame
    champion: str | None
    promoted: bool
    registry: str  # the promotion's one-line reason
    failed: int
    summary: list[str] = field(repr=False)
    urls: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join(self.summary)


@dataclass
class TrainResult:
    """One training run: its MLflow `run_id`, its summary `metrics` under the names the run
    logged them (`best_val_miou`, `val_accuracy`, `latency_ms_b1`, ...) and its logged model's
    URI (`runs:/RUN_ID/train-BACKBONE`, for `petloc.load_model`, `evaluate` or MLflow)."""

    run_id: str
    metrics: dict[str, float]
    model_uri: str
    summary: list[str] = field(repr=False)

    def __str__(self) -> str:
        return "\n".join(self.summary)


@dataclass
class EvaluationResult:
    """`figures`: what `petloc evaluate --json` prints (model, data, subset, tta, images,
    classes, skipped, and the figures under the quantities' bare names, measured on these
    photos: miou, iou50, accuracy, the class figures that apply (top5_accuracy,
    macro_accuracy, species_accuracy), latency_ms_b1, latency_ms_b32, params_count; a
    training run logs the same as best_val_miou, val_iou50, val_accuracy, ...); `skipped`:
    the files left out and why."""

    figures: dict[str, Any]
    skipped: list = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.figures[name]


# ---- the experiment and its overrides ---------------------------------------------------


def experiment_of(
    experiment: str | os.PathLike | Experiment, overrides: Overrides = None
) -> Experiment:
    """The experiment a path or a loaded `Experiment` names, with `overrides` applied as the
    command line applies its `key=value` arguments (so the same mistakes give the same errors)."""
    given = override_strings(overrides)
    if isinstance(experiment, Experiment):
        if not given:
            return experiment
        raw = experiment.model_dump(mode="json")
        return parse_experiment(apply_overrides(raw, given), f"<experiment {experiment.name}>")
    return load_experiment(os.fspath(experiment), given)


def override_strings(overrides: Overrides) -> list[str]:
    """`overrides` as the command line's `key=value` strings.

    A sequence of strings is taken as it is (values read as YAML, as on the command line). A
    mapping uses dotted keys (`{"train.epochs": 1}`) or sections: a mapping at its top level
    holds a section's entries (`{"train": {"epochs": 1}}` is `train.epochs=1`, the file's
    other entries of `train` stay). Anywhere else a mapping is a value, such as a range:
    `{"space": {"learning_rate": {"min": 1e-4, "max": 1e-2}}}`. Values are Python values and
    stay what they are (the text "3" stays text, a list stays a list)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return list(_flattened(overrides))
    return [str(item) for item in overrides]


def _flattened(overrides: Mapping) -> Iterator[str]:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value and "." not in str(key):  # a section's entries
            for entry, inner in value.items():
                yield f"{key}.{entry}={_as_yaml(f'{key}.{entry}', inner)}"
        else:
            yield f"{key}={_as_yaml(str(key), value)}"


def _as_yaml(key: str, value: Any) -> str:
    """`value` as YAML text that reads back as the same value."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    elif hasattr(value, "tolist"):  # NumPy numbers and arrays
        value = value.tolist()
    try:
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=float("inf"))
    except yaml.YAMLError:
        raise PetlocError(
            f"override {key!r}: {type(value).__name__} {value!r} is not a number, text, list or mapping"
        ) from None
    return text.removesuffix("\n...\n").strip()  # a lone scalar's end-of-document marker


def _say(say: Say | None) -> Say:
    return say if say is not None else _silent


def _silent(_line: str) -> None:
    """Where petloc's lines go when the caller passed say=None."""


def _prepare() -> None:
    """TensorFlow, when these functions load it first, keeps its C++ log (start-up lines, "failed
    call to cuInit" on a machine without a GPU) to itself, as under `petloc` without
    --verbose; a TF_CPP_MIN_LOG_LEVEL the user set wins, and a TensorFlow already loaded is
    left as it is."""
    if "tensorflow" in sys.modules:
        return
    verbose = logging.getLogger("petloc").isEnabledFor(logging.DEBUG)  # as petloc --verbose
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose else "3")
    if not verbose:
        hide_tensorflow_startup_log()


# ---- sweep, train, evaluate -------------------------------------------------------------


def sweep(
    experiment: str | os.PathLike | Experiment,
    overrides: Overrides = None,
    *,
    fresh: bool = False,
    say: Say | None = print,
) -> SweepResult:
    """`petloc sweep EXPERIMENT OVERRIDES` in this process: a Keras Tuner search, every trial
    an MLflow run under one parent run, the leaderboard, and the best offered to the registry.

    Running the same sweep again continues it; `fresh=True` forgets its earlier trials.
    `say` hears the progress lines (None: silent). Raises PetlocError on bad input, and when
    no trial finished. A sweep over several processes or machines (a chief and workers) is
    started with `petloc sweep --workers/--chief/--worker`; its runs are the same."""
    exp = experiment_of(experiment, overrides)
    _prepare()
    start = time.perf_counter()
    return _tracking_errors_as_one_line(lambda: _sweep(exp, fresh, _say(say), start))


def _sweep(exp: Experiment, fresh: bool, say: Say, start: float) -> SweepResult:
    from petloc.search.summary import sweep_summary
    from petloc.search.sweep import run_sweep

    outcome = run_sweep(exp, fresh=fresh, say=say)
    ref = f"{exp.registry.name}@{exp.registry.alias}"
    promotion = outcome.promotion
    return SweepResult(
        name=exp.name,
        parent_run_id=outcome.parent_run_id,
        leaderboard=leaderboard_frame(outcome.leaderboard),
        champion=_champion(exp.registry.name, exp.registry.alias),
        promoted=bool(promotion and promotion.champion),
        registry=promotion.reason if promotion else "",
        failed=outcome.failed,
        summary=sweep_summary(exp.name, outcome, time.perf_counter() - start, ref),
        urls=dict(outcome.links.urls) if outcome.links else {},
    )


def leaderboard_frame(rows: list[dict]) -> pandas.DataFrame:
    """The leaderboard's rows as a DataFrame with `leaderboard.csv`'s columns, in its order;
    a figure a run lacks (an empty cell in the CSV) is missing (NaN or None), not ''."""
    from petloc.report import frame
    from petloc.tracking.sweep_record import leaderboard_columns

    return frame(rows, leaderboard_columns(rows))


def _champion(name: str, alias: str) -> str | None:
    from petloc.tracking import registry

    holder = registry.champion_version(name, alias)
    return f"models:/{name}/{holder.version}" if holder is not None else None


def train(
    experiment: str | os.PathLike | Experiment,
    overrides: Overrides = None,
    *,
    say: Say | None = print,
) -> TrainResult:
    """`petloc train EXPERIMENT OVERRIDES`: one tracked training run with the experiment's fixed
    hyperparameters (the first choice of each list, the default or min of each range).
    `say` hears the progress lines (None: silent)."""
    exp = experiment_of(experiment, overrides)
    _prepare()
    return _tracking_errors_as_one_line(lambda: _train(exp, _say(say)))


def _train(exp: Experiment, say: Say) -> TrainResult:
    from petloc.report import table
    from petloc.tracking import store
    from petloc.tracking.log import run_model_uri
    from petloc.tracking.training_runs import train_run

    run = train_run(exp, say)
    shown = store.shown_uri(store.configure(exp.tracking.uri))
    model_uri = run_model_uri(run.run_id)
    summary = [
        table([run.summary]),
        f"MLflow run {run.run_id} in experiment '{exp.tracking.experiment}' ({shown})",
        f"model: {model_uri}   browse: petloc ui",
    ]
    return TrainResult(run.run_id, dict(run.summary), model_uri, summary)


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    *,
    on_bad: str = "skip",
    subset: str = "all",
    val_split: float = 0.15,
    seed: int = 0,
    tta: str = "none",
    say: Say | None = print,
) -> EvaluationResult:
    """`petloc evaluate MODEL DATA`: mIoU, IoU >= 0.5 share, accuracy and latency of `model`
    (a registered name such as `petloc@champion`, an MLflow model URI or a `.keras` file) on
    the dataset at `data`.

    `subset` "train" or "val": only that side of the split a run made of `data` with the same
    `val_split` and `seed` (data.seed). `tta="flip"` also averages each photo with its mirror
    image. `on_bad="fail"` stops at the first unreadable file instead of skipping it. `say`
    hears a line per skipped file (None: silent)."""
    _check_evaluate_options(on_bad=on_bad, subset=subset, tta=tta)
    if not 0 < val_split < 1:
        raise PetlocError(f"val_split: {val_split!r} is not between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise PetlocError(f"seed: {seed!r} is not a whole number from 0 to {2**31 - 1}")
    _prepare()
    return _tracking_errors_as_one_line(
        lambda: _evaluate(str(model), data, on_bad, subset, val_split, seed, tta, _say(say))
    )


def _check_evaluate_options(**given: str) -> None:
    for name, value in given.items():
        if value not in EVALUATE_CHOICES[name]:
            choices = EVALUATE_CHOICES[name]
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            raise PetlocError(
                f"{name}: {value!r} is not one of {', '.join(choices)}{';' + hint if hint else ''}"
            )


def _evaluate(
    model: str,
    data: str | os.PathLike,
    on_bad: str,
    subset: str,
    val_split: float,
    seed: int,
    tta: str,
    say: Say,
) -> EvaluationResult:
    from petloc.model import TTA
    from petloc.tracking.registry import load_localiser
    from petloc.training.evaluate import evaluate_dataset

    figures, skipped = evaluate_dataset(
        TTA[tta](load_localiser(model)), os.fspath(data), on_bad, subset, val_split, seed
    )
    for bad in skipped:
        say(f"skipped {bad}")
    result = {"model": model, "data": str(data), "subset": subset, "tta": tta, **figures}
    return EvaluationResult(result, list(skipped))


# ---- export -------------------------------------------------------------------------------

# Above it an export is not kept. float32 exports compute what Keras computes, in another
# order of operations: they agree far closer than this; a real fault differs by far more.
EXPORT_TOLERANCE = 1e-3


@dataclass
class ExportResult:
    """What `petloc export` wrote: `folder` (with its petloc.json), `file` (the model; the
    folder itself for a SavedModel), `format`, and `check`: the photos the export was run on
    beside the Keras model and the largest differences found (`max_box_difference` in box
    corners normalised to the image side, `max_score_difference` in class probability)."""

    folder: Path
    file: Path
    format: str
    check: dict[str, Any]
    summary: list[str] = field(repr=False)

    def __str__(self) -> str:
        return "\n".join(self.summary)


def export(
    model: str | os.PathLike,
    format: str,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    tolerance: float = EXPORT_TOLERANCE,
    tta: str = "none",
    say: Say | None = print,
) -> ExportResult:
    """`petloc export MODEL --format FORMAT --out OUT`: `model` (a registered name such as
    `petloc@champion`, an MLflow model URI or a `.keras` file) written for another runtime:
    "savedmodel" (TensorFlow), "tflite" or "onnx" (with the `onnx` extra), into the new or
    empty folder `out` with a petloc.json naming its classes and input size.

    The export is run beside the Keras model on a few photos (the image files under `data`;
    else, for a model from MLflow, the validation photos of its run when their folder is
    readable here; else synthetic ones) and kept only when its boxes and class scores differ
    from the Keras model's by at most `tolerance` (a finite number from 0 up); `say` hears
    the differences. `tta="flip"` bakes mirror-image averaging into the export. petloc.json
    records `model` as given and, for a model from MLflow, the registered name, version and
    run it resolved to. `petloc predict` answers with a TFLite, ONNX or SavedModel export as
    with the Keras model."""
    _check_evaluate_options(tta=tta)
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not 0 <= tolerance < float("inf")  # NaN fails too
    ):
        raise PetlocError(f"tolerance: {tolerance!r} is not a finite number from 0 up")
    _prepare()
    return _tracking_errors_as_one_line(
        lambda: _export(str(model), format, out, data, float(tolerance), tta, _say(say))
    )


def _export(
    model: str,
    format: str,
    out: str | os.PathLike,
    data: str | os.PathLike | None,
    tolerance: float,
    tta: str,
    say: Say,
) -> ExportResult:
    from petloc.model import TTA
    from petloc.tracking.registry import load_localiser, model_origin
    from petloc.training import export as exporting

    # the cheap mistakes before the model loads
    exporting.check_format(format)
    exporting.check_runtime(format)
    exporting.check_out(out)
    localiser = TTA[tta](load_localiser(model))
    origin = model_origin(model)
    written = exporting.export_model(
        localiser,
        format,
        out,
        source=model,
        data=data,
        run_data=origin.run_data() if origin else None,
        provenance=origin.provenance() if origin else None,
        tolerance=tolerance,
        say=say,
    )
    summary = [f"{format}: {written.file} (classes and input size in {exporting.METADATA})"]
    say(summary[0])
    return ExportResult(
        written.folder, written.file, format, dataclasses.asdict(written.check), summary
    )


# ---- errors -------------------------------------------------------------------------------


def _tracking_errors_as_one_line(call: Callable[[], Any]) -> Any:
    """`call()`, with a tracking server's refusal (credentials, a missing permission) met on
    the way raised as the one-line PetlocError the command line prints."""
    try:
        return call()
    except PetlocError:
        raise
    except Exception as err:
        refused = tracking_refusal(err)
        if refused:
            raise PetlocError(refused) from None
        raise


def tracking_refusal(err: BaseException) -> str | None:
    """One line for a tracking server's refusal (credentials, a missing permission) met after
    the start check, else None."""
    if not type(err).__module__.startswith(("mlflow", "requests")):
        return None
    from petloc.tracking.store import refusal

    return refusal(err)
