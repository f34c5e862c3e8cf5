"""`petloc sweep` end to end: real Keras Tuner oracle, real MLflow store and registry."""

import base64
import csv
import json
import re
from pathlib import Path

import pytest

from petloc.errors import PetlocError
from petloc.tracking import vocabulary as vocab
from petloc.tracking.ties import Standing, ranked
from tests.helpers import (
    children,
    in_project,
    invoke,
    parent_id_of,
    run_id_of,
    store_client,
    tiny_dataset,
    tiny_experiment,
)


def sweep_parent(client):
    """The one parent run of the sweep 'tiny'."""
    [parent] = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`petloc.kind` = 'sweep'"
    )
    return parent


def champion_of(runs):
    """The run the leaderboard puts first: val mIoU within registry.min_improvement (0.01 by
    default) is a tie, won by the lower batch-1 latency."""
    return ranked(
        runs,
        lambda r: Standing(r.data.metrics["best_val_miou"], r.data.metrics["latency_ms_b1"]),
        0.01,
    )[0]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    with in_project(root):
        data = tiny_dataset(root / "photos")
        exp = tiny_experiment(
            root, data, space={"head_units": [8, 16], "aug_strength": [0.0, 0.3]}, train={"seed": 3}
        )
        first = invoke("sweep", exp)
        assert first.exit_code == 0, first.output
        yield root, exp, store_client(root), parent_id_of(first.output), first.output


def test_one_parent_run_with_a_child_run_per_trial(swept):
    _root, _exp, client, parent_id, output = swept
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert "space.head_units" in parent.data.params and parent.data.tags["dataset_digest"]
    # train.seed, data.seed
    assert (parent.data.params["seed"], parent.data.params["data_seed"]) == ("3", "0")
    settings = ("epochs", "early_stopping", "seed", "xla", "precision", "val_split", "data_seed")
    runs = children(client, parent_id)
    assert sorted(r.data.tags["trial_id"] for r in runs) == ["0", "1"]
    tried = {(r.data.params["head_units"], r.data.params["aug_strength"]) for r in runs}
    # two points of the space
    assert len(tried) == 2 and tried <= {
        (units, aug) for units in ("8", "16") for aug in ("0.0", "0.3")
    }
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {k: r.data.params[k] for k in settings} == {
            k: parent.data.params[k] for k in settings
        }
        assert not any(k.startswith("tuner/") for k in r.data.params)
        assert {
            "best_val_miou",
            "val_accuracy",
            "latency_ms_b1",
            "latency_ms_b32",
            "params_count",
            "train_seconds",
        } <= set(r.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"leaderboard.csv", "leaderboard.md", "search_space.json"} <= artifacts
    assert parent.data.tags["best_run_id"] == champion_of(runs).info.run_id
    assert "Leaderboard of sweep 'tiny' (2 finished, 0 failed" in output


def test_best_trial_becomes_champion_with_version_tags(swept):
    _root, _exp, client, parent_id, _ = swept
    version = client.get_model_version_by_alias("petloc", "champion")
    best_run = client.get_run(parent_id).data.tags["best_run_id"]
    assert version.run_id == best_run
    for key in (
        "best_val_miou",
        "val_accuracy",
        "latency_ms_b1",
        "source_run",
        "dataset_digest",
        "sweep_run_id",
    ):
        assert key in version.tags, key


def test_one_name_per_quantity_in_runs_parent_leaderboard_models_and_evaluate(swept, monkeypatch):
    """A quantity goes by the trial run's metric name on the parent, in the leaderboard (CSV,
    Markdown, terminal), `petloc models` and the version's tags; by its bare name in
    `evaluate --json`, which measures it on the photos it is given; and is rounded one way."""
    root, _exp, client, parent_id, output = swept
    monkeypatch.chdir(root)
    parent = client.get_run(parent_id)
    best = client.get_run(parent.data.tags["best_run_id"]).data.metrics
    headline = (vocab.BEST_VAL_MIOU, vocab.VAL_ACCURACY, vocab.VAL_IOU50, vocab.LATENCY_MS_B1)
    assert {k: parent.data.metrics[k] for k in headline} == {k: best[k] for k in headline}
    assert not set(vocab.OLD_BEST_FIGURES) & set(parent.data.metrics)

    with open(client.download_artifacts(parent_id, "leaderboard.csv", str(root))) as file:
        rows = list(csv.DictReader(file))
    columns = list(rows[0])
    assert [c for c in vocab.LEADERBOARD_METRICS if c in columns] == [
        *headline[:1], vocab.VAL_IOU50, vocab.VAL_ACCURACY, vocab.VAL_MACRO_ACCURACY,
        vocab.LATENCY_MS_B1, vocab.PARAMS_COUNT, vocab.TRAIN_SECONDS,
    ]  # fmt: skip
    top = rows[0]
    assert top["run_id"] == parent.data.tags["best_run_id"]
    for column in vocab.LEADERBOARD_METRICS:
        if column in columns:
            assert float(top[column]) == best[column], column
    markdown = Path(client.download_artifacts(parent_id, "leaderboard.md", str(root))).read_text()
    assert [c.strip() for c in markdown.splitlines()[0].strip("|").split("|")] == columns
    printed = output.split("Leaderboard of sweep")[1].splitlines()[1].split()
    assert printed == [c for c in columns if c != "run_id"]

    listed = invoke("models").output.splitlines()
    header = listed[0].split()
    champion = dict(zip(header, listed[1].split(), strict=True))
    assert {vocab.BEST_VAL_MIOU, vocab.VAL_ACCURACY, vocab.LATENCY_MS_B1} <= set(header)
    assert champion[vocab.BEST_VAL_MIOU] == f"{best[vocab.BEST_VAL_MIOU]:.3f}"
    assert champion[vocab.LATENCY_MS_B1] == f"{best[vocab.LATENCY_MS_B1]:.2f}"
    version = client.get_model_version_by_alias("petloc", "champion")
    assert set(headline) <= set(version.tags)

    evaluated = invoke(
        "evaluate", "petloc@champion", root / "photos", "--json", "--subset", "val",
        "--val-split", "0.25", "--seed", "0",
    )  # fmt: skip
    figures = json.loads(evaluated.stdout)
    for quantity, metric in vocab.RUN_METRICS.items():
        if metric in best and not quantity.startswith("latency"):  # timed again: other figures
            assert figures[quantity] == pytest.approx(best[metric], abs=1e-4), quantity
    assert not {vocab.BEST_VAL_MIOU, vocab.VAL_ACCURACY} & set(figures)
    table = invoke("evaluate", "petloc@champion", root / "photos").output.splitlines()
    cells = dict(zip(table[-2].split(), table[-1].split(), strict=True))
    assert re.fullmatch(r"\d\.\d{3}", cells["miou"]) and re.fullmatch(
        r"\d+\.\d{2}", cells["latency_ms_b1"]
    )


def test_predict_and_evaluate_by_registered_name(swept, monkeypatch):
    root, _exp, _client, _parent_id, _ = swept
    monkeypatch.chdir(root)
    photo = sorted((root / "photos").glob("*.jpg"))[0]
    for ref in ("petloc@champion", "models:/petloc@champion", "models:/petloc/1"):
        result = invoke("predict", ref, photo, "--json")
        assert result.exit_code == 0, result.output
        assert '"label"' in result.stdout
    with pytest.raises(
        PetlocError,
        match=r"petloc@nope: no such registered model version; registered: petloc \(versions 1-",
    ):
        invoke("predict", "petloc@nope", photo)
    for typo in ("petlco@champion", "petloc@champoin"):
        with pytest.raises(
            PetlocError, match=r"version; did you mean petloc@champion\? registered"
        ):
            invoke("predict", typo, photo)


def test_the_served_pyfunc_answers_as_the_python_api(swept, monkeypatch):
    """What `mlflow models serve` loads (the pyfunc taking JPEGs) answers as petloc.load_model does."""
    import mlflow.pyfunc
    import pandas as pd

    import petloc
    from petloc.data.images import read_rgb

    root = swept[0]
    monkeypatch.chdir(root)
    photo = sorted((root / "photos").glob("*.jpg"))[0]
    # also points MLflow at root's store
    direct = petloc.load_model("petloc@champion").predict([read_rgb(photo)])[0].to_dict()
    served = mlflow.pyfunc.load_model("models:/petloc@champion").predict(
        pd.DataFrame({"image": [base64.b64encode(photo.read_bytes()).decode()]})
    )
    assert served == [direct]


def test_rerun_continues_without_rerunning_or_relogging(swept, monkeypatch):
    root, exp, client, parent_id, _ = swept
    monkeypatch.chdir(root)
    before = {r.info.run_id for r in children(client, parent_id)}
    versions = len(client.search_model_versions("name='petloc'"))
    again = invoke("sweep", exp)
    assert again.exit_code == 0, again.output
    assert f"parent run {parent_id}\n" in again.output
    assert {r.info.run_id for r in children(client, parent_id)} == before
    assert len(client.search_model_versions("name='petloc'")) == versions
    # A bigger budget runs only the new trial.
    more = invoke("sweep", exp, "tuner.max_trials=3")
    assert more.exit_code == 0, more.output
    after = children(client, parent_id)
    assert len(after) == 3 and before < {r.info.run_id for r in after}
    # The parent shows the settings it last ran with, not those of its first start.
    parent = client.get_run(parent_id)
    assert (
        parent.data.tags["tuner.max_trials"] == "3"
        and "up to 3 trials" in parent.data.tags["mlflow.note.content"]
    )
    space = json.loads(
        Path(client.download_artifacts(parent_id, "search_space.json", str(root))).read_text()
    )
    assert space["experiment"]["tuner"]["max_trials"] == 3


def test_the_champion_s_logged_model_is_named_after_its_trial_and_lists_its_version(swept):
    _root, _exp, client, _parent_id, _ = swept
    champion = client.get_model_version_by_alias("petloc", "champion")
    run = client.get_run(champion.run_id)
    trial, backbone = run.data.tags["trial_id"], run.data.params["backbone"]
    logged = client.get_logged_model(run.data.tags["model_uri"].removeprefix("models:/"))
    assert logged.name == f"trial-{trial}-{backbone}"
    assert {"name": "petloc", "version": str(champion.version)} in json.loads(
        logged.tags["mlflow.modelVersions"]
    )
    assert champion.description.startswith(f"Trial {trial} ({backbone}) of sweep 'tiny'")


def test_changed_settings_need_fresh(swept, monkeypatch):
    root, exp, _client, _parent_id, _ = swept
    monkeypatch.chdir(root)
    with pytest.raises(PetlocError, match="started with different settings; run it with --fresh"):
        invoke("sweep", exp, "train.epochs=2")


def test_manual_promotion_respects_the_champion_unless_forced(swept, monkeypatch):
    root, _exp, client, parent_id, _ = swept
    monkeypatch.chdir(root)
    champion = client.get_model_version_by_alias("petloc", "champion")
    worst = min(children(client, parent_id), key=lambda r: r.data.metrics["best_val_miou"])
    if worst.info.run_id == champion.run_id:
        pytest.skip("all trials scored the same")
    # no ties: a faster worst trial could tie with the champion
    result = invoke("promote", worst.info.run_id, "--min-improvement", "0")
    assert "does not beat" in result.output
    assert client.get_model_version_by_alias("petloc", "champion").version == champion.version
    forced = invoke("promote", worst.info.run_id, "--force")
    assert "forced" in forced.output
    assert client.get_model_version_by_alias("petloc", "champion").run_id == worst.info.run_id
    listing = invoke("models")
    assert "champion" in listing.output


def test_promotion_never_compares_figures_from_other_validation_data(swept, monkeypatch):
    root, exp, client, _parent_id, _ = swept
    monkeypatch.chdir(root)
    champion = client.get_model_version_by_alias("petloc", "champion")
    trained = invoke("train", exp, "data.seed=1")  # another split: another validation set
    result = invoke("promote", run_id_of(trained.output))
    assert "measured on other validation data" in result.output
    assert client.get_model_version_by_alias("petloc", "champion").version == champion.version
    with pytest.raises(PetlocError, match="run 0123456789abcdef: not found"):
        invoke("promote", "0123456789abcdef")


def test_failed_trials_are_failed_runs_and_stop_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tiny_dataset(tmp_path / "photos", count=24)
    exp = tiny_experiment(
        tmp_path,
        data,
        space={"weights": str(tmp_path / "missing.weights.h5"), "head_units": [8, 16, 32]},
        tuner={"max_consecutive_failures": 2, "max_trials": 5},
    )
    with pytest.raises(PetlocError, match="no trial finished"):
        invoke("sweep", exp)
    client = store_client(tmp_path)
    parent = sweep_parent(client)
    runs = children(client, parent.info.run_id)
    assert len(runs) == 2
    assert all(
        r.info.status == "FAILED" and "missing.weights.h5" in r.data.tags["error"] for r in runs
    )
    assert client.get_run(parent.info.run_id).info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bayesian", "grid", "hyperband"])
def test_other_oracles_run_tracked_trials(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tiny_dataset(tmp_path / "photos", count=24)
    space = (
        {"head_units": [8, 16]}
        if kind != "grid"
        else {"head_units": [8, 16], "dropout": [0.0, 0.1]}
    )
    exp = tiny_experiment(
        tmp_path,
        data,
        space=space,
        tuner={"kind": kind, "max_trials": 2 if kind != "grid" else 6},
        train={"epochs": 2 if kind == "hyperband" else 1},
    )
    result = invoke("sweep", exp)
    assert result.exit_code == 0, result.output
    client = store_client(tmp_path)
    runs = children(client, sweep_parent(client).info.run_id)
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    # each combination once, the last-listed hyperparameter turning fastest, then it stops
    if kind == "grid":
        order = sorted(runs, key=lambda r: int(r.data.tags["trial_id"]))
        assert [(r.data.params["head_units"], r.data.params["dropout"]) for r in order] == [
            ("8", "0.0"),
            ("8", "0.1"),
            ("16", "0.0"),
            ("16", "0.1"),
        ]
        header = result.output.split("Leaderboard of sweep")[1].splitlines()[1]
        # what the space varies is shown
        assert "dropout" in header.split() and "head_units" in header.split()
    if kind == "hyperband":
        # Hyperband's bookkeeping stays in tags; each trial trains the epochs its bracket gives it.
        assert all(
            "tuner/epochs" in r.data.tags and "tuner/epochs" not in r.data.params for r in runs
        )
        assert {r.data.params["epochs"] for r in runs} <= {"1", "2"}


def test_an_ensemble_of_the_best_trials_is_weighed_like_a_trial(tmp_path, monkeypatch):
    """registry.ensemble: 2 averages the two best trials in one model, logged as one more
    child run; the champion is the best of trials and ensemble, and a rerun adds nothing."""
    import numpy as np

    from petloc.tracking.registry import load_localiser

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tiny_dataset(tmp_path / "photos")
    exp = tiny_experiment(tmp_path, data, space={"head_units": [8, 16]})
    first = invoke("sweep", exp)
    assert first.exit_code == 0, first.output
    client = store_client(tmp_path)
    parent = sweep_parent(client)
    assert len(children(client, parent.info.run_id)) == 2 and "ensemble" not in first.output
    # A finished sweep gets its ensemble by running it again with registry.ensemble: the registry
    # section only decides what the end promotes, so the trials stand.
    result = invoke("sweep", exp, "registry.ensemble=2")
    assert result.exit_code == 0, result.output
    runs = children(client, parent.info.run_id)
    [ensemble] = [r for r in runs if r.data.tags["trial_id"] == "ensemble"]
    trials = [r for r in runs if r.data.tags["trial_id"] != "ensemble"]
    assert ensemble.info.status == "FINISHED" and len(trials) == 2
    assert set(ensemble.data.tags["member_runs"].split(",")) == {r.info.run_id for r in trials}
    assert (
        ensemble.data.tags["petloc.kind"] == "ensemble"
        and ensemble.data.params["backbone"] == trials[0].data.params["backbone"]
    )
    assert ensemble.data.tags["val_data"] == trials[0].data.tags["val_data"]
    for key in ("best_val_miou", "val_accuracy", "latency_ms_b1"):
        assert key in ensemble.data.metrics
    # the members in the leaderboard's order (ties go to the faster)
    members = ensemble.data.params["members"]
    assert members in ("0, 1", "1, 0")
    assert (
        f"ensemble of trials {members}: val mIoU" in result.output
        and "(2 finished, 0 failed, their ensemble" in result.output
    )
    backbone = trials[0].data.params["backbone"]  # the members' backbone, not a made-up "ensemble"
    # a leaderboard row
    assert any(line.startswith(f"ensemble  {backbone}") for line in result.output.splitlines())

    # Its answers are the mean of its members' answers.
    models = [load_localiser(r.data.tags["model_uri"]) for r in (ensemble, *trials)]
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    outs = [m(images, training=False) for m in models]
    for key in ("cls", "box"):
        np.testing.assert_allclose(
            np.asarray(outs[0][key]),
            (np.asarray(outs[1][key]) + np.asarray(outs[2][key])) / 2,
            atol=1e-5,
        )

    best = champion_of(runs)
    assert client.get_model_version_by_alias("petloc", "champion").run_id == best.info.run_id
    with pytest.raises(
        PetlocError, match=f"the ensemble of a sweep's trials {members}; reproduce its member runs"
    ):
        invoke("reproduce", ensemble.info.run_id)
    again = invoke("sweep", exp, "registry.ensemble=2")
    assert again.exit_code == 0, again.output
    assert (
        len(children(client, parent.info.run_id)) == 3 and "ensemble of trials" not in again.output
    )


def test_the_final_run_trains_the_best_configuration_at_full_length(tmp_path, monkeypatch):
    """tuner.final_epochs: after the search, the best trial's configuration trains again from
    scratch for that many epochs, as a child run weighed like any trial; a rerun adds nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tiny_dataset(tmp_path / "photos")
    exp = tiny_experiment(
        tmp_path,
        data,
        space={"head_units": [8, 16], "dropout": [0.0, 0.1]},
        tuner={"final_epochs": 2},
    )
    result = invoke("sweep", exp)
    assert result.exit_code == 0, result.output
    client = store_client(tmp_path)
    parent = sweep_parent(client)
    runs = children(client, parent.info.run_id)
    [final] = [r for r in runs if r.data.tags["trial_id"] == "final"]
    best = champion_of([r for r in runs if r is not final])
    assert final.info.status == "FINISHED" and final.data.tags["source_run"] == best.info.run_id
    assert final.data.params["epochs"] == "2" and final.data.metrics["epochs_trained"] == 2.0
    for name in (
        "head_units",
        "dropout",
        "backbone",
        "image_size",
        "learning_rate",
        "aug_strength",
    ):
        assert final.data.params[name] == best.data.params[name], name
    assert (
        f"final run: trial {best.data.tags['trial_id']}'s configuration from scratch for 2 epochs"
        in result.output
    )
    assert "(2 finished, 0 failed, the final run" in result.output
    top = champion_of(runs)
    assert client.get_model_version_by_alias("petloc", "champion").run_id == top.info.run_id
    again = invoke("sweep", exp)
    assert again.exit_code == 0, again.output
    assert len(children(client, parent.info.run_id)) == 3 and "final run:" not in again.output


def test_a_failed_end_step_leaves_the_leaderboard_and_the_promotion(tmp_path, monkeypatch):
    """The final run (or the ensemble) failing is one line; the trials are still ranked and promoted."""
    import petloc.search.sweep as sweep

    def diverges(*args, **kwargs):
        raise PetlocError("loss became nan in epoch 3; try a lower learning_rate")

    monkeypatch.setattr(sweep, "train_final", diverges)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tiny_experiment(
        tmp_path,
        tiny_dataset(tmp_path / "photos"),
        space={"head_units": [8, 16]},
        tuner={"final_epochs": 2},
    )
    result = invoke("sweep", exp)
    assert result.exit_code == 0, result.output
    assert (
        "the final run failed, the sweep ends without it: PetlocError: loss became nan in epoch 3"
        in result.output
    )
    assert "Leaderboard of sweep 'tiny' (2 finished, 0 failed" in result.output
    client = store_client(tmp_path)
    assert client.get_run(sweep_parent(client).info.run_id).info.status == "FINISHED"
    assert client.get_model_version_by_alias("petloc", "champion")


def test_the_leaderboard_shows_trial_ids_as_keras_tuner_wrote_them(tmp_path):
    """Hyperband numbers trials "0000", "0012": the leaderboard, the parent's best_trial_id and
    the final run's source_trial name the trial by that text, not by a number 12."""
    import mlflow

    from petloc.tracking.sweep_record import SweepRecord

    client = store_client(tmp_path)
    experiment = client.create_experiment("ids")
    parent = client.create_run(experiment).info.run_id
    for trial, miou in (("0012", 0.6), ("0003", 0.5)):
        run = client.create_run(
            experiment, tags={"trial_id": trial, "mlflow.parentRunId": parent}
        ).info.run_id
        client.log_param(run, "head_units", "64")
        client.log_metric(run, "best_val_miou", miou)
        client.set_terminated(run)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        rows = SweepRecord(parent).leaderboard()
    finally:
        mlflow.set_tracking_uri(before)
    assert [row["trial"] for row in rows] == ["0012", "0003"]
    # params and metrics still read as numbers
    assert rows[0]["head_units"] == 64 and rows[0]["best_val_miou"] == 0.6


def test_a_sweep_interrupted_in_its_final_run_resumes_that_run_from_its_last_finished_epoch(
    tmp_path, monkeypatch
):
    """Ctrl+C in the final run's third epoch: the run ends KILLED with its two epochs kept; the
    sweep run again trains epochs 3-4 only, in the same run, which ends FINISHED with the whole curve."""
    from petloc.tracking import log

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tiny_experiment(
        tmp_path,
        tiny_dataset(tmp_path / "photos"),
        space={"head_units": [8, 16]},
        tuner={"final_epochs": 4},
    )
    client = store_client(tmp_path)
    begin, trained = log.EpochLogger.on_epoch_begin, []

    def ctrl_c_in_the_final_runs_third_epoch(self, epoch, logs=None):
        if client.get_run(self.run_id).data.tags["trial_id"] == "final":
            if epoch == 2 and "stopped" not in trained:
                trained.append("stopped")
                raise KeyboardInterrupt
            trained.append(epoch)
        begin(self, epoch, logs)

    monkeypatch.setattr(log.EpochLogger, "on_epoch_begin", ctrl_c_in_the_final_runs_third_epoch)
    stopped = invoke("sweep", exp)
    assert stopped.exit_code != 0, stopped.output  # click's runner: "Aborted!"
    [killed] = [
        r
        for r in children(client, sweep_parent(client).info.run_id)
        if r.data.tags["trial_id"] == "final"
    ]
    assert killed.info.status == "KILLED" and [
        m.step for m in client.get_metric_history(killed.info.run_id, "val/miou")
    ] == [1, 2]

    from petloc.training.fit import backed_up

    backups = tmp_path / "mlruns" / "tuner" / "tiny" / "final"
    state = backups / killed.info.run_id / "training_metadata.json"
    assert backed_up(state.parent).epochs == 2 and backed_up(state.parent).seconds > 0
    # far more than this test trains
    state.write_text(json.dumps({**json.loads(state.read_text()), "seconds": 1e5}))
    # Two more backups: one of a run no longer in the store, and one of a final run stopped at
    # another length, which the sweep resumes when run again with that tuner.final_epochs.
    other = client.create_run(
        killed.info.experiment_id,
        tags={
            "mlflow.parentRunId": sweep_parent(client).info.run_id,
            "trial_id": "final",
            "source_run": killed.data.tags["source_run"],
        },
    )
    client.log_param(other.info.run_id, "epochs", "9")
    client.set_terminated(other.info.run_id, "KILLED")
    for folder in ("a-run-no-longer-in-the-store", other.info.run_id):
        (backups / folder).mkdir()
        (backups / folder / "latest.weights.h5").write_bytes(b"state")
    trained.append("resumed")
    again = invoke("sweep", exp)
    assert again.exit_code == 0, again.output
    assert f"final run: resuming run {killed.info.run_id} (4 epochs" in again.output
    assert trained[trained.index("resumed") + 1 :] == [2, 3]  # epochs 3 and 4, counted from 0
    [final] = [
        r
        for r in children(client, sweep_parent(client).info.run_id)
        if r.data.tags["trial_id"] == "final" and r.info.run_id != other.info.run_id
    ]
    assert (
        final.info.run_id == killed.info.run_id
        and final.info.status == "FINISHED"
        and "error" not in final.data.tags
    )
    assert [m.step for m in client.get_metric_history(final.info.run_id, "val/miou")] == [
        1,
        2,
        3,
        4,
    ]
    assert final.data.metrics["epochs_trained"] == 4.0 and final.data.params["epochs"] == "4"
    assert final.data.metrics["train_seconds"] > 1e5  # the training before the stop counts too
    # this run's state and the stale one are gone
    assert [p.name for p in backups.iterdir()] == [other.info.run_id]
    assert (
        "resumed from its last finished epoch after a stop"
        in final.data.tags["mlflow.note.content"]
    )
    assert "curves.png" in {a.path for a in client.list_artifacts(final.info.run_id)}


def test_the_sweep_ends_with_its_pages_and_its_parent_run_reads_as_its_report(swept):
    _root, _exp, client, parent_id, output = swept
    parent = client.get_run(parent_id)
    experiment = parent.info.experiment_id
    # The version this sweep's own output promoted: a later test in this module runs it again,
    # and its new trial may take the alias (a tie won by a faster latency).
    promoted = re.search(r"petloc@champion is now version (\d+)", output)
    assert promoted, output
    champion = client.get_model_version("petloc", promoted.group(1))
    base = "http://127.0.0.1:5000/#"  # where `petloc ui` serves a local store
    assert "open in the MLflow UI once `petloc ui` runs:" in output
    for page in (
        f"{base}/experiments/{experiment}/runs/{parent_id}",
        f"{base}/experiments/{experiment}/runs/{champion.run_id}",
        f"{base}/models/petloc/versions/{champion.version}",
    ):
        assert page in output
    note = parent.data.tags["mlflow.note.content"]
    for run in children(client, parent_id):
        assert (
            f"[{run.data.tags['trial_id']}](#/experiments/{experiment}/runs/{run.info.run_id})"
            in note
        )
    # the version the latest run of the sweep registered or left as champion
    linked = re.search(r"\[petloc version (\d+)\]\(#/models/petloc/versions/(\d+)\)", note)
    assert linked and linked.group(1) == linked.group(2), note
    client.get_model_version("petloc", linked.group(1))  # it exists
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"leaderboard.json", "parallel_coordinates.html", "best_so_far.png"} <= artifacts
