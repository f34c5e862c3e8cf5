"""An ensemble of a sweep's best trials: their models in one Keras model that averages
their class scores and boxes, scored on the same validation photos and logged as one more
child run of the sweep (`trial_id` "ensemble", `petloc.kind` "ensemble"). The leaderboard and the promotion then
weigh it like any trial: it becomes the champion only when it beats the best single trial
on val mIoU (and fits the latency budget, which it costs about N times a member's)."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from petloc.config import Experiment
from petloc.search.progress import headline
from petloc.tracking import log, registry, runs
from petloc.tracking import vocabulary as vocab
from petloc.tracking.sweep_record import SweepRecord
from petloc.tracking.training_runs import plugins_tag, recorded_plugins, score_and_log
from petloc.training.dataset import prepare_data


def members_of(rows: list[dict], size: int) -> list[dict]:
    """The `size` best models (rows come best first; trials and the final run) that take the
    best one's image size."""
    trials = [row for row in rows if row["trial"] != vocab.ENSEMBLE_TRIAL]
    if not trials:
        return []
    return [row for row in trials if row["image_size"] == trials[0]["image_size"]][:size]


def average_of(models: list[keras.Model]) -> keras.Model:
    """One model whose class scores and box are the mean of the `models`' (same input size)."""
    inputs = keras.Input(models[0].input_shape[1:], name="pixels")
    outputs = []
    for i, model in enumerate(models):
        model.name = f"member_{i}"  # nested models need names of their own
        outputs.append(model(inputs))
    cls = layers.Average(name="cls", dtype="float32")([out["cls"] for out in outputs])
    box = layers.Average(name="box", dtype="float32")([out["box"] for out in outputs])
    return keras.Model(inputs, {"cls": cls, "box": box}, name="petloc_ensemble")


def log_ensemble(
    exp: Experiment, record: SweepRecord, rows: list[dict], say: Callable[[str], None]
) -> str | None:
    """Builds, scores and logs the ensemble of the `exp.registry.ensemble` best trials as a
    child run of the sweep; returns its run ID, or None when there is nothing to ensemble or
    the same members were ensembled already (a sweep run again)."""
    members = members_of(rows, exp.registry.ensemble)
    if len(members) < 2:
        return None
    member_runs = ",".join(row["run_id"] for row in members)
    earlier = record.runs_of(vocab.ENSEMBLE_TRIAL, "FINISHED")
    if any(
        set(run.data.tags.get(vocab.MEMBER_RUNS, "").split(",")) == set(member_runs.split(","))
        for run in earlier
    ):
        return None
    trials = ", ".join(str(row["trial"]) for row in members)
    say(f"ensemble of trials {trials}: scoring their averaged answers on the validation photos")
    member_tags = [record.run(row["run_id"]).data.tags for row in members]
    models = [registry.load_localiser(tags[vocab.MODEL_URI]) for tags in member_tags]
    # What the members' runs recorded they need (a pretrained backbone's plug-in included).
    needs = recorded_plugins(member_tags)
    model = average_of(models)
    size = int(members[0]["image_size"])
    data = prepare_data(exp.data, size, say=lambda _: None)
    tags = {vocab.KIND: vocab.ENSEMBLE_KIND, vocab.MEMBER_RUNS: member_runs}
    run_id = record.child_run(vocab.ENSEMBLE_TRIAL, f"ensemble-of-{len(members)}", tags)
    with runs.run_status(run_id):
        # The members' backbones, "+"-joined when they differ: the kind tag, not this param, marks an ensemble.
        backbones = "+".join(dict.fromkeys(str(row["backbone"]) for row in members))
        params = {
            vocab.BACKBONE: backbones,
            vocab.IMAGE_SIZE: size,
            vocab.MEMBERS: trials,
            "member_count": len(members),
        }
        description = (
            f"Ensemble of trials {trials} of sweep '{exp.name}': their class scores and boxes averaged, "
            f"validated on {len(data.val)} photos of {data.source}"
        )
        log.log_run_inputs(run_id, params, data, exp.train.seed, description, **plugins_tag(needs))
        log.log_experiment(run_id, exp)  # what `petloc promote` reads its default --name from
        summary = score_and_log(exp, model, data, run_id, history=None, extra={}, plugins=needs)
    say(f"ensemble of trials {trials}: {headline(summary)}")
    return run_id
