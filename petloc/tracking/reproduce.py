"""`petloc reproduce RUN_ID`: run a training run or trial again from what it logged.

A run logs its hyperparameters (params), the resolved experiment (`experiment.json`), its
data's digest and the code's git commit. Reproducing trains the same hyperparameters on
the same data with the same seeds in a new run tagged `reproduces`; it refuses when the
data or the code differ, since the figures could then not be compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc import hyperparams
from petloc.config import Experiment, parse_experiment
from petloc.errors import PetlocError
from petloc.files import SMALL_FILE_LIMIT, read_bounded
from petloc.tracking import log, runs, store
from petloc.tracking import vocabulary as vocab
from petloc.tracking.training_runs import train_tracked
from petloc.training.dataset import prepare_data

FIGURES = (
    vocab.BEST_VAL_MIOU,
    vocab.VAL_ACCURACY,
    vocab.VAL_IOU50,
    vocab.LATENCY_MS_B1,
    vocab.TRAIN_SECONDS,
)


@dataclass
class Reproduction:
    original: str
    run_id: str
    figures: list[dict]  # the original's, the reproduction's, and their difference


def reproduce(run_id: str, force: bool = False, say=print) -> Reproduction:
    store.configure()
    client = MlflowClient()
    try:
        original = client.get_run(run_id)
    except MlflowException:
        raise PetlocError(f"run {run_id}: not found in {store.tracking_uri()}") from None
    kind = vocab.kind_of(original.data.tags)
    if kind == vocab.SWEEP_KIND:
        raise PetlocError(_sweep_parent_refusal(original))
    if kind == vocab.PRETRAIN_KIND or vocab.BEST_VAL_MIOU not in original.data.metrics:
        raise PetlocError(
            f"run {run_id}: not a finished localiser training run or trial; reproduce re-runs those"
        )
    if _continued(original):
        raise PetlocError(
            f"run {run_id}: a Hyperband trial that continued another trial's weights; "
            "reproduce that trial's first bracket instead"
        )
    if vocab.is_ensemble(original.data.tags, original.data.params):
        members = original.data.params.get(vocab.MEMBERS, "?")
        raise PetlocError(
            f"run {run_id}: the ensemble of a sweep's trials {members}; reproduce its member runs (tag member_runs)"
        )
    exp = _logged_experiment(client, run_id)
    values = hyperparameters_of(original.data.params)
    data = prepare_data(exp.data, values["image_size"], say)
    _check_same(original.data.tags, data.whole.digest, force)

    experiment_id = original.info.experiment_id
    new_id = runs.create_run(
        experiment_id, f"reproduce-{original.info.run_name}", {vocab.REPRODUCES: run_id}
    )
    with runs.run_status(new_id):
        summary = train_tracked(
            exp,
            values,
            data,
            new_id,
            epochs=int(original.data.params[vocab.EPOCHS]),
            description=f"Reproduction of run {run_id}",
            say=say,
        )
    before = {k: original.data.metrics.get(k, float("nan")) for k in FIGURES}
    after = {k: summary[k] for k in FIGURES}
    rows = [
        {"run": run_id, **before},
        {"run": new_id, **after},
        {"run": "difference", **{k: after[k] - before[k] for k in FIGURES}},
    ]
    return Reproduction(run_id, new_id, rows)


def _continued(run) -> bool:
    return bool(int(run.data.tags.get(vocab.TUNER_INITIAL_EPOCH, "0") or 0))


def _reproducible(run) -> bool:
    return (
        vocab.BEST_VAL_MIOU in run.data.metrics
        and not _continued(run)
        and not vocab.is_ensemble(run.data.tags, run.data.params)
    )


def _sweep_parent_refusal(parent) -> str:
    """What to say for a sweep's parent run: it trained nothing itself; its trials did."""
    run_id = parent.info.run_id
    trials = runs.child_runs(
        run_id, "attributes.status = 'FINISHED'", order_by=[f"metrics.{vocab.BEST_VAL_MIOU} DESC"]
    )
    best = next((t for t in trials if _reproducible(t)), None)
    hint = f", such as its best, run {best.info.run_id}" if best else ""
    sweep = parent.data.tags.get(vocab.SWEEP, "?")
    return (
        f"run {run_id}: the parent run of sweep '{sweep}', which trained nothing itself; "
        f"name one of its trial runs{hint} (petloc ui lists them)"
    )


def _logged_experiment(client: MlflowClient, run_id: str) -> Experiment:
    try:
        path = client.download_artifacts(run_id, vocab.EXPERIMENT_FILE)
    except (MlflowException, OSError):
        raise PetlocError(
            f"run {run_id}: it logged no experiment.json (made by an older petloc); nothing to reproduce from"
        ) from None
    return parse_experiment(
        json.loads(read_bounded(path, SMALL_FILE_LIMIT)), f"run {run_id}: experiment.json"
    )


def hyperparameters_of(params: dict[str, str]) -> dict:
    """The run's hyperparameters as typed values (MLflow keeps params as text)."""
    values = {}
    for name in hyperparams.DECLARED:
        if name not in params:
            continue
        text, kind = params[name], hyperparams.kind(name)
        values[name] = (
            text == "True"
            if kind is bool
            else kind(text)
            if text != "none" or kind is str
            else None
        )
    return values


def _check_same(tags: dict[str, str], digest: str, force: bool) -> None:
    """Refuse (unless `force`) when the data or the code are not what the run had."""
    now = log.provenance()
    differences = []
    if tags.get(vocab.DATASET_DIGEST) != digest:
        differences.append(
            f"the data differ (digest {digest[:12]}, the run had {tags.get(vocab.DATASET_DIGEST, '?')[:12]})"
        )
    was = (tags.get(vocab.GIT_COMMIT), tags.get(vocab.GIT_DIRTY))
    if was != (now.get(vocab.GIT_COMMIT), now.get(vocab.GIT_DIRTY)):
        differences.append(
            f"the code differs (commit {_code(now.get(vocab.GIT_COMMIT), now.get(vocab.GIT_DIRTY))}, "
            f"the run had {_code(*was)})"
        )
    if differences and not force:
        raise PetlocError("; ".join(differences) + "; pass --force to reproduce anyway")


def _code(commit: str | None, dirty: str | None) -> str:
    if not commit:
        return "none"
    return commit[:12] + (" with uncommitted changes" if dirty == "true" else "")
