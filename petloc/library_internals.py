"""The private parts of Keras Tuner, Keras and MLflow that petloc still uses, each where no
public API serves, and nowhere else: tests/package/test_library_internals.py checks each one and
fails naming it when an upgrade moves it. Imports no petloc module; the libraries are
imported inside the functions, so the served model and `petloc --help` load none they do not need.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from typing import Any

# ---- Keras Tuner ------------------------------------------------------------------------------


class TunerHooks:
    """Mixed in before `keras_tuner.Tuner`: three private methods of its BaseTuner, overridden
    once here, behind public names a tuner may override."""

    # BaseTuner's, which this class is mixed into (declared for the type checker only)
    _run_and_update_trial: Callable[..., Any]

    def state_file(self) -> str | None:
        """The tuner's own state file; None: Keras Tuner's, named by KERASTUNER_TUNER_ID."""
        return None

    def _get_tuner_fname(self):
        # BaseTuner names the file by the tuner ID; no argument or public hook changes it.
        # BaseTuner, which comes after this mixin in the class, defines it
        return self.state_file() or super()._get_tuner_fname()  # type: ignore[misc]

    def populate_initial_space(self) -> None:
        """Declares the search space in the oracle before the first trial (Keras Tuner's
        default builds the model to discover conditional hyperparameters)."""
        super()._populate_initial_space()  # type: ignore[misc]  # BaseTuner's, after this mixin

    def _populate_initial_space(self):
        # Documented in Keras Tuner's source as "a subroutine for AutoKeras to override"; not public.
        self.populate_initial_space()

    def show_failed_trial_traceback(self) -> bool:
        """Whether a failed trial's traceback is printed (Keras Tuner always prints it)."""
        return True

    def trial_tracked(self, trial) -> contextlib.AbstractContextManager:
        """A context around one attempt of a trial: its training and the oracle's update,
        whatever `run_trial` the tuner has (a user's own too); it sees the trial's error."""
        return contextlib.nullcontext()

    def _try_run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        # BaseTuner's own, but for its print, which only the module global
        # keras_tuner.src.config.DEBUG turns off: a copy, checked against Keras Tuner's source.
        import keras_tuner as kt

        try:
            with self.trial_tracked(trial):
                self._run_and_update_trial(trial, *fit_args, **fit_kwargs)
            trial.status = kt.engine.trial.TrialStatus.COMPLETED
            return
        except Exception as err:
            if isinstance(err, kt.errors.FatalError):
                raise
            if self.show_failed_trial_traceback():
                traceback.print_exc()
            if isinstance(err, kt.errors.FailedTrialError):
                trial.status = kt.engine.trial.TrialStatus.FAILED
            else:
                trial.status = kt.engine.trial.TrialStatus.INVALID
            trial.message = traceback.format_exc()


def retry_queue(oracle) -> list[str]:
    """The trial IDs the oracle will hand out again first (those a stopped process left
    running). Keras Tuner keeps them in `Oracle._retry_queue`, with no public view."""
    return list(oracle._retry_queue)


def take_from_retry_queue(oracle, trial_id: str) -> bool:
    """Takes `trial_id` out of the oracle's retry queue; False when it is not in it."""
    if trial_id not in oracle._retry_queue:
        return False
    oracle._retry_queue.remove(trial_id)
    return True


def hyperband_iteration_trials(oracle) -> int:
    """The trials of one Hyperband iteration: every round of every bracket. Keras Tuner
    keeps this schedule in private methods of its HyperbandOracle."""
    return sum(
        oracle._get_size(bracket, round_)
        for bracket in range(oracle._get_num_brackets())
        for round_ in range(oracle._get_num_rounds(bracket))
    )


def oracle_servicer() -> Any:
    """Keras Tuner's gRPC service of a chief's oracle (keras_tuner.src.distribute.oracle_chief),
    for the chief to extend: its `start_server` neither returns nor takes another service."""
    from keras_tuner.src.distribute import oracle_chief

    return oracle_chief.OracleServicer


def add_oracle_servicer(servicer, server) -> None:
    """Serves `servicer` on the gRPC `server` under Keras Tuner's service name."""
    from keras_tuner.src import protos

    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)


def oracle_messages():
    """Keras Tuner's gRPC messages (GetTrialRequest, CreateTrialResponse, ...), for the calls
    petloc makes beside its OracleClient's (the heartbeat, a running trial's pace)."""
    from keras_tuner.src import protos

    return protos.get_service()


class _PatientStub:
    """A gRPC stub whose every call waits at most `seconds`, whatever its caller asks."""

    def __init__(self, stub, seconds: float):
        self.stub, self.seconds = stub, seconds

    def __getattr__(self, name: str):
        method = getattr(self.stub, name)

        def call(request, **kwargs):
            asked = kwargs.get("timeout")
            kwargs["timeout"] = self.seconds if asked is None else min(asked, self.seconds)
            return method(request, **kwargs)

        return call


def limit_chief_calls(client, seconds: float) -> None:
    """Each call of a worker's OracleClient (which BaseTuner makes itself, for a worker)
    waits for the chief at most `seconds`: Keras Tuner waits a module-global TIMEOUT, an hour.
    Its `stub` is the one thing of it that is per client."""
    client.stub = _PatientStub(client.stub, seconds)


# ---- Keras -------------------------------------------------------------------------------------


class BackupHooks:
    """Mixed in before `keras.callbacks.BackupAndRestore`: its private `_save_model`, which
    writes the weights and then the training state, each in place, overridden once here
    behind a public name (the callback has no hook for how its files are written)."""

    # BackupAndRestore's, which this class is mixed into (declared for the type checker only)
    _current_epoch: int
    _last_batch_seen: int
    _weights_path: str
    _training_metadata_path: str

    def write_backup(self, weights_path: str, state_path: str, state: dict[str, int]) -> None:
        """Writes the model's weights to `weights_path`, then `state` (Keras's epoch and batch)
        as JSON to `state_path`, where BackupAndRestore reads them when a fit resumes."""
        raise NotImplementedError

    def _save_model(self):
        state = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        self.write_backup(self._weights_path, self._training_metadata_path, state)


def start_with_averaged_weights(callback) -> None:
    """Tells a `keras.callbacks.SwapEMAWeights` that the model holds the averaged weights
    now (as a fit resumed from a backup written at an epoch's end does): its own flag, with
    no public setter."""
    callback._ema_weights_in_model = True


def build_symbolically(model, batch_spec) -> bool:
    """Keras's own symbolic build of a compiled model's training state (optimizer slots,
    metric totals) from the batches' spec, which it runs itself only under a distribution
    strategy; False when this Keras has none."""
    symbolic_build = getattr(model, "_symbolic_build", None)
    if symbolic_build is None:
        return False
    symbolic_build(data_batch=batch_spec)
    return True


def all_layers(model) -> list[Any]:
    """Keras's own walk of a model's layers, the model first and tracked attributes included
    (a wrapped network); `model.layers` lists only the top level."""
    return list(model._flatten_layers())


# ---- MLflow ------------------------------------------------------------------------------------


def save_input_example(mlflow_model, example, path) -> None:
    """Stores `example` in the model folder `path` and names it in `mlflow_model`, as every
    MLflow flavour does; MLflow's public `log_model(input_example=...)` is not the flavour's
    own `save_model`, which petloc's is."""
    from mlflow.models.utils import _save_example

    _save_example(mlflow_model, example, path)


def copy_code_paths(paths: list[str], path) -> str:
    """Copies `paths` into the model folder `path` (MLflow's `code_paths`); returns the
    folder's name in it, for `pyfunc.add_to_model(code=...)`."""
    from mlflow.utils.model_utils import _validate_and_copy_code_paths

    return _validate_and_copy_code_paths(paths, path)
