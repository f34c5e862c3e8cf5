"""Every tag, param and metric key petloc writes to or reads from MLflow, each with one spelling.

petloc's own tags carry the `petloc.` prefix; the older plain names (trial_id, model_uri, ...)
stay as users' queries know them. Stores written by older petloc versions keep working:
the readers below (`kind_of`, `is_ensemble`) also read the spellings those
wrote (`petloc_kind`, an ensemble's `backbone` param "ensemble"); the old `petloc_version`
tag is only information, and nothing reads it.
Free of MLflow, so that `petloc --help` and the search's light modules may import it.
"""

from __future__ import annotations

from collections.abc import Mapping

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

# ---- metrics (names unchanged in this step) -----------------------------------------------
# The latencies are measured and named by petloc.training.evaluate.latencies, below tracking.
BEST_VAL_MIOU, VAL_ACCURACY, VAL_IOU50 = "best_val_miou", "val_accuracy", "val_iou50"
LATENCY_MS_B1, LATENCY_MS_B32 = "latency_ms_b1", "latency_ms_b32"
PARAMS_COUNT, TRAIN_SECONDS, EPOCH_SECONDS, EPOCHS_TRAINED = (
    "params_count",
    "train_seconds",
    "epoch_seconds",
    "epochs_trained",
)
TRIALS_FINISHED, TRIALS_FAILED = "trials_finished", "trials_failed"
VAL_TOP5_ACCURACY, VAL_MACRO_ACCURACY, VAL_SPECIES_ACCURACY = (
    "val_top5_accuracy",
    "val_macro_accuracy",
    "val_species_accuracy",
)
# The class figures of petloc.training.evaluate.quality, as `petloc evaluate` and the
# leaderboard name them -> a run's metric (on the validation photos). Each only where it
# applies: top-5 for more than 5 classes, species for classes with species.
CLASS_FIGURES = {
    "top5_accuracy": VAL_TOP5_ACCURACY,
    "macro_accuracy": VAL_MACRO_ACCURACY,
    "species_accuracy": VAL_SPECIES_ACCURACY,
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
