"""Every tag, param and metric key petloc writes to or reads from MLflow, each with one spelling.

petloc's own tags carry the `petloc.` prefix; the older plain names (trial_id, model_uri, ...)
stay as users' queries know them. Stores written by older petloc versions keep working:
the readers below (`kind_of`, `is_ensemble`) also read the spellings those
wrote (`petloc_kind`, an ensemble's `backbone` param "ensemble"); the old `petloc_version`
tag is only information, and nothing reads it.
Free of MLflow, so that `petloc --help` and the search's light modules may import it.

Metric names: one name per quantity (petloc.quantities: miou, accuracy, latency_ms_b1, ...).
- A run's summary metric is `val_` + the quantity when the run measures it on its validation
  photos (`val_accuracy`, `val_iou50`, `val_top5_accuracy`), as Keras's `fit` names them;
  mIoU is the exception the design contract fixes, `best_val_miou` (the kept epoch's
  weights). What a run measures on no photos keeps the quantity's name (`latency_ms_b1`,
  `params_count`, `train_seconds`). RUN_METRICS maps each quantity to its run metric.
- The leaderboard's columns, the sweep's parent run (the best trial's figures), `petloc
  models` and registered versions' tags use the run metric names: one quantity, one column.
- `petloc evaluate` measures on the photos it is given and reports the bare quantity names
  (`miou`, `accuracy`), as Keras's `model.evaluate` does against `fit`'s `val_` names.
- Per-epoch curves are `train/<name>` and `val/<name>` (EPOCH_METRICS), step = the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping

from petloc import quantities

# ---- petloc's own tags --------------------------------------------------------------------
KIND = "petloc.kind"  # what a run is: one of the kinds below; plain training runs and trials carry none
SWEEP_KIND, PRETRAIN_KIND, ENSEMBLE_KIND = "sweep", "pretrain", "ensemble"
VERSION = "petloc.version"  # the petloc version that made the run
OWNER = "petloc.owner"  # host:pid:start time of the process that runs it
SWEEP = "petloc.sweep"  # a sweep's name, on its parent run
FINGERPRINT = "petloc.sweep_fingerprint"  # a sweep's settings, on its parent run
CHIEF = "petloc.chief"  # HOST:PORT of a distributed sweep's chief, on its parent run
CHIEF_HEARTBEAT = "petloc.chief_heartbeat"  # the chief's last sign of life (wall-clock seconds)
WORKER = "petloc.worker"  # the worker that ran a trial, on its run
# What a tracked search's runs are ranked by (petloc.TrackedTuner): a metric of the run and
# "max" or "min"; on its runs and registered versions. A run without them is a localiser's
# (best_val_miou, max) or a pretrained classifier's (val_accuracy, max).
OBJECTIVE, OBJECTIVE_DIRECTION = "petloc.objective", "petloc.objective_direction"
MAX, MIN = "max", "min"  # OBJECTIVE_DIRECTION's values, as Keras Tuner spells them
# The plug-in modules a run's model needs (petloc/plugins.py), comma-separated, on its run;
# the logged model carries them as a list under its MLmodel metadata key MODEL_PLUGINS.
PLUGINS = "petloc.plugins"
MODEL_PLUGINS = "petloc_plugins"

# Spellings older petloc versions wrote: read, never written.
OLD_KIND = "petloc_kind"
OLD_ENSEMBLE_BACKBONE = "ensemble"  # the `backbone` param that marked an ensemble's run

# ---- tags of runs --------------------------------------------------------------------------
ERROR = "error"  # why a run ended FAILED or KILLED
MODEL_URI = "model_uri"  # the logged model
TRIAL_ID = "trial_id"  # a sweep's child run: its Keras Tuner trial, or one of the end runs below
SWEEP_RUN_ID = "sweep_run_id"  # a sweep's child run: its parent
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own nesting
NOTE = "mlflow.note.content"  # the description the MLflow UI shows
SOURCE_RUN = "source_run"  # a final run's (and a registered version's) source run
SOURCE_TRIAL = "source_trial"  # a final run's source trial
MEMBER_RUNS = "member_runs"  # an ensemble's member runs, comma-separated
REPRODUCES = "reproduces"  # a reproduction's original run
# A run's data, written by PreparedData.tags() (the training layer, below tracking: the same spelling there).
DATASET_PATH, DATASET_DIGEST, SKIPPED_IMAGES = "dataset_path", "dataset_digest", "skipped_images"
VAL_DATA = "val_data"  # what the validation photos were (digest, split, seed): figures compare only on the same
VAL_SPLIT, DATA_SEED = "val_split", "data_seed"  # a run's params that made its split (run_settings)
COMMAND, GIT_COMMIT, GIT_DIRTY, SEED = "command", "git_commit", "git_dirty", "seed"
TUNER_INITIAL_EPOCH = (
    "tuner/initial_epoch"  # Keras Tuner's own `tuner/*` values, as tags of a trial's run
)

# On a sweep's parent run.
BEST_TRIAL_ID, BEST_RUN_ID = "best_trial_id", "best_run_id"
PROMOTION = "promotion"  # what the registry did with the sweep's best
TIME_BUDGET = "time_budget"  # why the time budget ended the search

# The trial_id of a sweep's child runs besides its trials (and their leaderboard rows): the
# best configuration trained at full length and the average of the best.
FINAL_TRIAL, ENSEMBLE_TRIAL = "final", "ensemble"

# On a logged model: the registered versions made from it, as MLflow's own registration
# writes them (a JSON list of {"name", "version"}); the UI's logged model page reads it.
LOGGED_MODEL_VERSIONS = "mlflow.modelVersions"

# ---- params -------------------------------------------------------------------------------
# A run's hyperparameters are params under their own names (petloc.hyperparams.DECLARED).
BACKBONE, IMAGE_SIZE, EPOCHS, PRECISION = "backbone", "image_size", "epochs", "precision"
WIDTH, MEMBERS = "width", "members"
CLASSES = "classes"  # how many classes the run's data (and model) has; their names: CLASSES_FILE

# ---- metrics ------------------------------------------------------------------------------
# One name per quantity, by the rule in this module's docstring.
BEST_VAL_MIOU, VAL_ACCURACY, VAL_IOU50 = "best_val_miou", "val_accuracy", "val_iou50"
VAL_TOP5_ACCURACY, VAL_MACRO_ACCURACY, VAL_SPECIES_ACCURACY = (
    "val_top5_accuracy",
    "val_macro_accuracy",
    "val_species_accuracy",
)
# The latencies are measured and named by petloc.training.evaluate.latencies, below tracking.
LATENCY_MS_B1, LATENCY_MS_B32 = quantities.LATENCY_MS_B1, quantities.LATENCY_MS_B32
PARAMS_COUNT, TRAIN_SECONDS, EPOCH_SECONDS, EPOCHS_TRAINED = (
    quantities.PARAMS_COUNT,
    quantities.TRAIN_SECONDS,
    quantities.EPOCH_SECONDS,
    quantities.EPOCHS_TRAINED,
)
TRIALS_FINISHED, TRIALS_FAILED = "trials_finished", "trials_failed"
# What test-time augmentation was worth: the same weights' figures without it.
VAL_MIOU_WITHOUT_TTA, VAL_ACCURACY_WITHOUT_TTA = "val_miou_without_tta", "val_accuracy_without_tta"

# Quantity (as `petloc evaluate` and petloc.training.evaluate.quality name it) -> a run's metric.
RUN_METRICS = {
    quantities.MIOU: BEST_VAL_MIOU,
    quantities.ACCURACY: VAL_ACCURACY,
    quantities.IOU50: VAL_IOU50,
    quantities.TOP5_ACCURACY: VAL_TOP5_ACCURACY,
    quantities.MACRO_ACCURACY: VAL_MACRO_ACCURACY,
    quantities.SPECIES_ACCURACY: VAL_SPECIES_ACCURACY,
    quantities.LATENCY_MS_B1: LATENCY_MS_B1,
    quantities.LATENCY_MS_B32: LATENCY_MS_B32,
    quantities.PARAMS_COUNT: PARAMS_COUNT,
}
# The class figures, each only where it applies (top-5 for more than 5 classes, species for
# classes with species): quantity -> run metric.
CLASS_FIGURES = {name: RUN_METRICS[name] for name in quantities.CLASS_FIGURES}
# The leaderboard's figures: its columns under these same names, val mIoU first.
LEADERBOARD_METRICS = (
    BEST_VAL_MIOU,
    VAL_IOU50,
    VAL_ACCURACY,
    *CLASS_FIGURES.values(),
    LATENCY_MS_B1,
    PARAMS_COUNT,
    TRAIN_SECONDS,
)
# The best trial's figures, on the sweep's parent run under the same names.
BEST_FIGURES = (BEST_VAL_MIOU, VAL_ACCURACY, VAL_IOU50, *CLASS_FIGURES.values(), LATENCY_MS_B1)
# What older petloc versions logged on a sweep's parent for them: never written now, and
# nothing reads them (the leaderboard is rebuilt from the trial runs, whose names are unchanged).
OLD_BEST_FIGURES = {
    "best_accuracy": VAL_ACCURACY,
    "best_iou50": VAL_IOU50,
    "best_latency_ms_b1": LATENCY_MS_B1,
    **{f"best_{name}": metric for name, metric in CLASS_FIGURES.items()},
}
EPOCH_METRICS = {  # Keras log name -> MLflow metric name, step = epoch
    "loss": "train/loss",
    "miou": "train/miou",
    "accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_miou": "val/miou",
    "val_accuracy": "val/accuracy",
}

# ---- artifacts ----------------------------------------------------------------------------
EXPERIMENT_FILE = "experiment.json"
CLASSES_FILE = "classes.json"  # the run's Classes (names in the model's order, species)
PER_CLASS_FILE = "per_class.csv"  # class, species, count, accuracy, miou on the validation photos
CONFUSION_FILE = "confusion.png"  # the validation photos' confusion matrix
# In a logged model's MLmodel metadata: the classes it answers with ({"names", "species"}).
MODEL_CLASSES = "classes"
# The name older petloc gave every logged model (`runs:/RUN/model`); models are now named
# after their run (petloc.tracking.log.logged_model_name).
OLD_MODEL_NAME = "model"
CHECKPOINT_FOLDER = "checkpoint"  # a Hyperband trial's weights, for the round that continues it


def kind_of(tags: Mapping[str, str]) -> str | None:
    """A run's kind, also as older petloc versions spelled its tag."""
    return tags.get(KIND) or tags.get(OLD_KIND)


def is_ensemble(tags: Mapping[str, str], params: Mapping[str, str]) -> bool:
    """An ensemble's run: its kind tag, or the `backbone` param older versions marked it by."""
    return kind_of(tags) == ENSEMBLE_KIND or params.get(BACKBONE) == OLD_ENSEMBLE_BACKBONE


def trial_rows(rows: list[dict]) -> list[dict]:
    """The leaderboard's rows of the search's own trials (not the final run or the ensemble)."""
    return [row for row in rows if row["trial"] not in (FINAL_TRIAL, ENSEMBLE_TRIAL)]
