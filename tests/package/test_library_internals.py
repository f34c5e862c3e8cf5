"""Each private API of Keras Tuner, Keras and MLflow that petloc uses, checked with the shape
petloc relies on: a test fails naming the API, its library's version and what of petloc
needs it, when an upgrade moves it (petloc/library_internals.py). MLflow's private name
validators are mirrored on purpose by petloc/registry_names.py;
tests/tracking/test_registry_names.py compares against them."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import time

import grpc
import keras
import keras_tuner as kt
import numpy as np
import pytest

from petloc import library_internals

SEE = "see petloc/library_internals.py"


def needed(ok: bool, api: str, package: str, why: str, where: str = SEE) -> None:
    """Fails, naming the API, the installed version and what petloc needs it for, unless `ok`."""
    if not ok:
        pytest.fail(
            f"{api} is gone or changed in {package} {importlib.metadata.version(package)}: "
            f"petloc's {why} needs it; {where}",
            pytrace=False,
        )


def source(function) -> str:
    return inspect.getsource(function)


def an_oracle(tmp_path, oracle_class=kt.oracles.RandomSearchOracle, **kwargs):
    oracle = oracle_class(kt.Objective("val_miou", "max"), seed=1, **kwargs)
    oracle._set_project_dir(str(tmp_path), "internals")  # what a Tuner does for it
    hp = oracle.get_space()
    hp.Choice("head_units", [8, 16, 32])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    oracle.update_space(hp)
    return oracle


def end(oracle, trial) -> None:
    oracle.update_trial(trial.trial_id, {"val_miou": 0.5})
    trial.status = kt.engine.trial.TrialStatus.COMPLETED
    oracle.end_trial(trial)


# ---- Keras Tuner ------------------------------------------------------------------------------


def base_tuner():
    from keras_tuner.src.engine.base_tuner import BaseTuner

    return BaseTuner


def test_the_tuner_state_file_hook():
    init = source(base_tuner().__init__)
    needed(
        hasattr(base_tuner(), "_get_tuner_fname") and "self._get_tuner_fname()" in init,
        "keras_tuner BaseTuner._get_tuner_fname (read when a tuner is made)",
        "keras-tuner",
        "one state file for a sweep's oracle holder (SweepTuner.state_file)",
    )


def test_the_initial_space_hook():
    needed(
        "self._populate_initial_space()" in source(base_tuner().__init__),
        "keras_tuner BaseTuner._populate_initial_space (called when a tuner is made)",
        "keras-tuner",
        "space declared without building a model (SweepTuner.populate_initial_space)",
    )


# BaseTuner._try_run_and_update_trial as TunerHooks copies it; a change to it needs the copy looked at.
TRY_RUN_SOURCE = "0d84027daa2ad26e"


def test_the_copy_of_the_trial_runner_matches_keras_tuner():
    method = getattr(base_tuner(), "_try_run_and_update_trial", None)
    digest = hashlib.sha256(source(method).encode()).hexdigest()[:16] if method else None
    needed(
        digest == TRY_RUN_SOURCE
        and "self._try_run_and_update_trial(" in source(base_tuner().search),
        "keras_tuner BaseTuner._try_run_and_update_trial (as TunerHooks copies it)",
        "keras-tuner",
        "failed trials' tracebacks only with --verbose (TunerHooks.show_failed_trial_traceback)",
    )
    needed(
        hasattr(base_tuner(), "_run_and_update_trial"),
        "keras_tuner BaseTuner._run_and_update_trial",
        "keras-tuner",
        "trial runner (TunerHooks._try_run_and_update_trial calls it)",
    )


def test_a_failed_trial_is_failed_and_its_traceback_printed_only_when_asked(tmp_path, capsys):
    class Failing(library_internals.TunerHooks, kt.Tuner):
        shown = False

        def show_failed_trial_traceback(self):
            return self.shown

        def run_trial(self, trial, *args, **kwargs):
            raise kt.errors.FailedTrialError("no such backbone")

    tuner = Failing(
        oracle=an_oracle(tmp_path, max_trials=2), directory=str(tmp_path), project_name="failing"
    )
    tuner.search()
    failed = list(tuner.oracle.trials.values())
    assert [trial.status for trial in failed] == ["FAILED", "FAILED"]
    assert "FailedTrialError: no such backbone" in failed[0].message
    assert "Traceback" not in capsys.readouterr().err
    Failing.shown = True
    Failing(
        oracle=an_oracle(tmp_path / "shown", max_trials=1),
        directory=str(tmp_path),
        project_name="shown",
    ).search()
    assert "Traceback" in capsys.readouterr().err


def test_the_retry_queue(tmp_path):
    oracle = an_oracle(tmp_path)
    needed(
        isinstance(getattr(oracle, "_retry_queue", None), list),
        "keras_tuner Oracle._retry_queue (a list)",
        "keras-tuner",
        "resume, which counts trials a killed process finished (count_finished_runs, the chief's _adopt)",
    )
    cut_short = oracle.create_trial("tuner0")
    oracle.save()
    again = an_oracle(tmp_path)
    again.reload()  # Keras Tuner queues the trials that were out
    assert library_internals.retry_queue(again) == [cut_short.trial_id]
    assert library_internals.take_from_retry_queue(again, cut_short.trial_id)
    assert not library_internals.take_from_retry_queue(again, cut_short.trial_id)
    assert again.create_trial("tuner0").trial_id != cut_short.trial_id  # not handed out again


def test_hyperbands_schedule(tmp_path):
    oracle = an_oracle(
        tmp_path, kt.oracles.HyperbandOracle, max_epochs=9, factor=3, hyperband_iterations=1
    )
    private = ("_get_size", "_get_num_brackets", "_get_num_rounds")
    needed(
        all(hasattr(oracle, name) for name in private),
        "keras_tuner HyperbandOracle._get_size/_get_num_brackets/_get_num_rounds",
        "keras-tuner",
        "sweep progress lines (k of N trials)",
    )
    planned = library_internals.hyperband_iteration_trials(oracle)
    ran = 0
    while (trial := oracle.create_trial("tuner0")).status != "STOPPED":
        end(oracle, trial)
        ran += 1
    needed(
        planned == ran,
        "keras_tuner HyperbandOracle's schedule methods",
        "keras-tuner",
        f"sweep progress lines (k of N trials: {planned} planned, {ran} ran)",
    )


def test_the_chiefs_service():
    try:
        servicer = library_internals.oracle_servicer()
    except ImportError:
        servicer = None
    methods = ("CreateTrial", "GetTrial", "UpdateTrial", "EndTrial", "GetSpace", "UpdateSpace")
    needed(
        servicer is not None
        and all(hasattr(servicer, name) for name in methods)
        and list(inspect.signature(servicer.__init__).parameters) == ["self", "oracle"]
        and "self.stop_triggered" in source(servicer),
        "keras_tuner.src.distribute.oracle_chief.OracleServicer",
        "keras-tuner",
        "distributed sweep's chief (ChiefServicer)",
    )


def test_the_oracle_service_messages():
    messages = library_internals.oracle_messages()
    names = ("GetTrialRequest", "UpdateTrialRequest", "CreateTrialResponse", "EndTrialResponse")
    needed(
        all(hasattr(messages, name) for name in names),
        "keras_tuner.src.protos.get_service()'s messages",
        "keras-tuner",
        "worker heartbeat and pace reports, and the chief's answers",
    )
    request = messages.UpdateTrialRequest(
        trial_id="3", metrics={"epoch_seconds_so_far": 2.5}, step=1
    )
    assert request.metrics["epoch_seconds_so_far"] == 2.5
    from keras_tuner.src import protos

    needed(
        hasattr(protos.get_service_grpc(), "add_OracleServicer_to_server"),
        "keras_tuner.src.protos.get_service_grpc().add_OracleServicer_to_server",
        "keras-tuner",
        "distributed sweep's chief (run_chief serves ChiefServicer)",
    )


def test_a_workers_calls_to_the_chief_wait_no_longer_than_asked(monkeypatch, tmp_path):
    from keras_tuner.src.distribute import oracle_client

    needed(
        "oracle_client.OracleClient(self.oracle)" in source(base_tuner().__init__),
        "keras_tuner BaseTuner's OracleClient for a worker",
        "keras-tuner",
        "worker's patience with its chief",
    )
    needed(
        all(
            "timeout=TIMEOUT" in source(getattr(oracle_client.OracleClient, name))
            for name in ("get_space", "create_trial", "update_trial", "end_trial", "get_trial")
        ),
        "keras_tuner.src.distribute.oracle_client.OracleClient (its calls through self.stub with a timeout)",
        "keras-tuner",
        "worker's patience with its chief (library_internals.limit_chief_calls)",
    )
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")  # nothing listens on port 1
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "worker-a")
    client = oracle_client.OracleClient(an_oracle(tmp_path))
    needed(
        client.tuner_id == "worker-a" and hasattr(client.stub, "GetTrial"),
        "keras_tuner OracleClient.stub and .tuner_id",
        "keras-tuner",
        "worker heartbeat",
    )
    library_internals.limit_chief_calls(client, 0.5)
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        client.get_space()  # waits for the chief to be ready, an hour by Keras Tuner's own
    assert (
        caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - began < 10
    )


# ---- Keras -------------------------------------------------------------------------------------


def test_keras_walk_of_a_models_layers():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    class Wrapped(keras.Model):  # as test-time augmentation wraps the network
        def __init__(self):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return self.inner(x)

    outer = Wrapped()
    needed(
        hasattr(outer, "_flatten_layers"),
        "keras Layer._flatten_layers",
        "keras",
        "models saved without their training state (serving._as_served)",
    )
    walked = library_internals.all_layers(outer)
    assert walked[0] is outer and inner in walked


FIT = (
    "see petloc/library_internals.py (BackupHooks, start_with_averaged_weights, build_symbolically)"
)


def test_keras_backup_and_restore_internals(tmp_path):
    callback = keras.callbacks.BackupAndRestore(str(tmp_path))
    for name in ("_weights_path", "_training_metadata_path", "_current_epoch", "_last_batch_seen"):
        needed(
            hasattr(callback, name),
            f"keras BackupAndRestore.{name}",
            "keras",
            "whole backup files (WholeBackup)",
            FIT,
        )
    needed(
        callable(getattr(callback, "_save_model", None))
        and "self._save_model()" in source(type(callback)),
        "keras BackupAndRestore._save_model",
        "keras",
        "whole backup files (WholeBackup)",
        FIT,
    )


def test_keras_ema_swap_flag_and_symbolic_build():
    needed(
        "self._ema_weights_in_model" in source(keras.callbacks.SwapEMAWeights),
        "keras SwapEMAWeights._ema_weights_in_model",
        "keras",
        "resumed EMA training (ResumedSwapEMAWeights)",
        FIT,
    )
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    needed(
        callable(getattr(model, "_symbolic_build", None)),
        "keras Trainer._symbolic_build",
        "keras",
        "one trace of the training step (build_training_state)",
        FIT,
    )
    model.compile(optimizer="adam", loss="mse")
    assert library_internals.build_symbolically(
        model, (np.zeros((2, 4), "float32"), np.zeros((2, 1), "float32"))
    )
    assert model.optimizer.built


# ---- MLflow ------------------------------------------------------------------------------------


def test_mlflows_input_example_saver(tmp_path):
    import pandas as pd
    from mlflow.models import Model

    try:
        from mlflow.models.utils import _save_example
    except ImportError:
        _save_example = None
    needed(
        _save_example is not None,
        "mlflow.models.utils._save_example",
        "mlflow",
        "logged model's input example",
    )
    model = Model()
    library_internals.save_input_example(model, pd.DataFrame({"image": ["abc"]}), str(tmp_path))
    assert (
        model.saved_input_example_info
        and (tmp_path / model.saved_input_example_info["artifact_path"]).is_file()
    )


def test_mlflows_code_path_copier(tmp_path):
    try:
        from mlflow.utils.model_utils import _validate_and_copy_code_paths
    except ImportError:
        _validate_and_copy_code_paths = None
    needed(
        _validate_and_copy_code_paths is not None,
        "mlflow.utils.model_utils._validate_and_copy_code_paths",
        "mlflow",
        "logged model's copy of petloc's code",
    )
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text("X = 1\n")
    (tmp_path / "model").mkdir()
    code = library_internals.copy_code_paths([str(package)], str(tmp_path / "model"))
    assert (tmp_path / "model" / code / "pkg" / "mod.py").is_file()
