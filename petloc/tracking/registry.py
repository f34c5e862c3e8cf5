"""The MLflow Model Registry: promotion (only when better than the current champion) and
loading by name (`petloc@champion`, `petloc/3`, `models:/petloc@champion`)."""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.keras
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc import report, serving
from petloc.config import RegistryConfig
from petloc.errors import PetlocError, closest
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, read_bounded
from petloc.model import Pretrained
from petloc.model.backbones import CaffePreprocess
from petloc.registry_names import Ref, check_alias, check_name, parse_ref, printable
from petloc.tracking import ties
from petloc.tracking import vocabulary as vocab
from petloc.tracking.store import configure, tracking_uri
from petloc.training.export import PREDICT_TAKES, RunData, exported_predictor, is_export
from petloc.training.predict import ForwardPredictor, Predictor, checked_localiser, load_keras_file

# Version tags copied from the source run's metrics and tags.
METRIC_LABELS = {vocab.BEST_VAL_MIOU: "val mIoU", vocab.VAL_ACCURACY: "val accuracy"}
METRIC_TAGS = (
    vocab.BEST_VAL_MIOU,
    vocab.VAL_ACCURACY,
    vocab.VAL_IOU50,
    *vocab.CLASS_FIGURES.values(),  # those the run has
    vocab.LATENCY_MS_B1,
    vocab.LATENCY_MS_B32,
    vocab.PARAMS_COUNT,
)
LISTED_FIGURES = (vocab.BEST_VAL_MIOU, vocab.VAL_ACCURACY, vocab.LATENCY_MS_B1)  # petloc models
RUN_TAGS = (vocab.DATASET_DIGEST, vocab.VAL_DATA, vocab.SWEEP_RUN_ID, vocab.TRIAL_ID)
MIN_IMPROVEMENT = RegistryConfig().min_improvement  # the experiment file's default


def model_uri(ref: str) -> str | None:
    """An MLflow URI for `ref`, or None when `ref` is not a registry or MLflow reference."""
    if ref.startswith(("models:/", "runs:/")):
        return ref
    if parse_ref(ref):
        return f"models:/{ref}"
    return None


def load_localiser(source: str | Path) -> keras.Model:
    """A petloc localiser from a `.keras` file, a registered name (`petloc@champion`,
    `petloc/3`) or an MLflow model URI (`models:/petloc@champion`, `runs:/RUN/model`)."""
    text = str(source)
    if is_export(text):  # scoring needs the Keras model's layers and figures, not a runtime's
        raise PetlocError(
            f"{text}: is what petloc export wrote; evaluate and export take the Keras model "
            "it came from (a .keras file or an MLflow URI); predict takes exports"
        )
    uri = None if _is_path(text) else model_uri(text)
    if uri is None:
        return load_keras_file(text)
    return checked_localiser(text, lambda: _load_logged(uri))


def _is_path(text: str) -> bool:
    """Whether `text` names something on disk; a name too long to be a path (OSError) is not."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def _run_model_uri(uri: str) -> str:
    """`runs:/RUN/model` as the run's logged model (its `model_uri` tag), whatever its name:
    older petloc named every model `model`, and users' scripts and notes still say so."""
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    if path.strip("/") != vocab.OLD_MODEL_NAME:
        return uri
    try:
        logged = MlflowClient().get_run(run_id).data.tags.get(vocab.MODEL_URI, "")
    except MlflowException:  # MLflow's own error, on loading, says what is wrong
        return uri
    return logged if logged.startswith("models:/m-") else uri


def loadable_uri(uri: str) -> str:
    """The URI MLflow loads for `uri`: `runs:/RUN/model` as the run's logged model
    (`_run_model_uri`); a registered version (NAME@ALIAS, NAME/N) as its logged model's own
    id, found by exact name, since MLflow's URI parser cuts some names MLflow allows (at
    '?'); a one-line error when there is no such version."""
    if uri.startswith("runs:/"):
        return _run_model_uri(uri)
    version = registered_version(uri)
    if version is None:
        return uri
    if version.model_id:
        return f"models:/{version.model_id}"
    # a logged model's id (a SQL store keeps no model_id)
    if (version.source or "").startswith("models:/m-"):
        return version.source
    return f"models:/{version.name}/{version.version}"


def load_predictor(source: str | Path) -> ForwardPredictor:
    """A predictor for what `load_localiser` loads, or for a model `petloc export` wrote."""
    exported = exported_predictor(source)
    if exported is not None:
        return exported
    text = str(source)
    if not _is_path(text) and model_uri(text) is None:  # the message names exports too
        raise PetlocError(f"{text}: no such model file ({PREDICT_TAKES})")
    return Predictor(load_localiser(source))


@dataclass(frozen=True)
class Origin:
    """Where a model loaded by name or URI came from: its run, and its registered version
    when it was loaded as one."""

    run: Any  # mlflow.entities.Run
    name: str | None = None
    version: str | None = None

    def provenance(self) -> dict[str, object]:
        """petloc.json's entries for it: what an alias or `latest` resolved to."""
        named = {"registered_name": self.name, "registered_version": self.version}
        return {**{k: v for k, v in named.items() if v is not None}, "run_id": self.run.info.run_id}

    def run_data(self) -> RunData | None:
        """The run's dataset folder and split, or None when it logged none (not a training run)."""
        folder = self.run.data.tags.get(vocab.DATASET_PATH)
        params = self.run.data.params
        if not folder:
            return None
        try:
            return RunData(folder, float(params[vocab.VAL_SPLIT]), int(params[vocab.DATA_SEED]))
        except (KeyError, TypeError, ValueError):
            return None


def model_origin(source: str) -> Origin | None:
    """The run (and registered version) behind a registered name or an MLflow URI; None for
    a file, or a URI whose run MLflow does not say (models:/NAME/latest)."""
    uri = None if _is_path(source) else model_uri(source)
    if uri is None:
        return None
    configure()
    client = MlflowClient()
    if uri.startswith("runs:/"):
        return Origin(client.get_run(uri.removeprefix("runs:/").partition("/")[0]))
    if uri.startswith("models:/m-"):  # a logged model by its id
        logged = client.get_logged_model(uri.removeprefix("models:/").partition("/")[0])
        return Origin(client.get_run(logged.source_run_id)) if logged.source_run_id else None
    version = registered_version(uri)
    if version is None or not version.run_id:
        return None
    return Origin(client.get_run(version.run_id), version.name, str(version.version))


def _load_logged(uri: str) -> keras.Model:
    """A Keras model logged by petloc, by MLflow URI."""
    configure()
    try:
        return load_logged_keras(uri, uri)
    except MlflowException as err:
        raise PetlocError(f"{uri}: {err.message.splitlines()[0]}") from None
    except OSError as err:
        raise PetlocError(f"{uri}: cannot read the model ({err})") from None


def load_logged_keras(uri: str, source: str) -> keras.Model:
    """The Keras model logged at `uri`, fetched first so that the plug-in modules it needs
    are imported before Keras reads it (`serving.import_logged_needs`)."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=loadable_uri(uri))
    serving.import_logged_needs(local, source)
    return mlflow.keras.load_model(local)


def pretrained_backbone(ref: str) -> Pretrained:
    """The backbone of a classifier that `petloc pretrain` registered (`petloc-backbone@champion`):
    its architecture, width and weights, for a localiser to start from."""
    run = source_run(ref)
    if vocab.kind_of(run.data.tags) != vocab.PRETRAIN_KIND:
        raise PetlocError(f"backbone: registered:{ref} is not a network from petloc pretrain")
    try:
        classifier = load_logged_keras(model_uri(ref) or ref, f"backbone: registered:{ref}")
    except (MlflowException, OSError) as err:
        raise PetlocError(
            f"backbone: cannot load registered:{ref} ({str(err).splitlines()[0][:200]})"
        ) from None
    net = next((layer for layer in classifier.layers if isinstance(layer, keras.Model)), None)
    if net is None:
        raise PetlocError(f"backbone: registered:{ref} holds no backbone network")
    # pretraining starts from scratch: -1..1
    if any(isinstance(layer, CaffePreprocess) for layer in net.layers):
        raise PetlocError(
            f"backbone: registered:{ref} was pretrained by an older petloc on Caffe's inputs, which "
            "localisers no longer build; pretrain it again"
        )
    return Pretrained(
        ref,
        run.data.params[vocab.BACKBONE],
        float(run.data.params[vocab.WIDTH]),
        net.get_weights(),
        run.data.tags.get(vocab.VAL_DATA),
    )


def registered_version(uri: str):
    """The registered version `uri` names, or None for a URI MLflow resolves itself (such as
    models:/petloc/latest); a one-line error listing what is registered when there is none."""
    ref = parse_ref(uri) if uri.startswith("models:/") else None
    if ref is None:
        return None
    client = MlflowClient()
    try:
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        assert ref.version is not None  # a Ref names an alias or a version
        return client.get_model_version(ref.name, ref.version)
    except MlflowException as err:
        if err.error_code not in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
            "NOT_FOUND",
        ):
            # Not "no such version" (a refused password, a server error): say what it was.
            raise PetlocError(
                f"models:/{printable(str(ref))}: {err.message.splitlines()[0][:300]}"
            ) from None
        raise PetlocError(
            f"models:/{printable(str(ref))}: no such registered model version;{_meant(ref)} "
            f"registered: {describe_registry() or 'nothing yet'}"
        ) from None


def _meant(ref: Ref) -> str:
    """` did you mean NAME@ALIAS?` when `ref`'s name mistypes a registered model's, or its
    alias one of the model's aliases; else ""."""
    models = {model.name: model for model in _every(MlflowClient().search_registered_models)}
    meant = None
    if ref.name not in models:
        name = closest(ref.name, models)
        meant = replace(ref, name=name) if name else None
    elif ref.alias is not None:
        alias = closest(ref.alias, models[ref.name].aliases)
        meant = replace(ref, alias=alias) if alias else None
    return f" did you mean {printable(str(meant))}?" if meant else ""


def source_run(ref: str):
    """The run that registered version `ref` (NAME@ALIAS, NAME/N or models:/...) came from."""
    uri = model_uri(ref) or ref
    version = registered_version(uri)
    if version is None:
        raise PetlocError(f"{ref}: name a registered version as NAME@ALIAS or NAME/VERSION")
    return MlflowClient().get_run(version.run_id)


def describe_registry() -> str:
    """`petloc (versions 1-3, champion=2); other (versions 1-1)` for error messages."""
    parts = []
    versions = _versions_by_name()
    for model in _every(MlflowClient().search_registered_models):
        numbers = sorted(int(v.version) for v in versions.get(model.name, []))
        aliases = ", ".join(f"{printable(a)}={v}" for a, v in sorted(model.aliases.items()))
        span = f"versions {numbers[0]}-{numbers[-1]}" if numbers else "no versions"
        parts.append(f"{printable(model.name)} ({span}{', ' + aliases if aliases else ''})")
    return "; ".join(parts)


# MLflow's filter language has no escapes, and every registry name is a user's string: petloc
# never pastes one into a filter unquoted. A name is quoted with a quote mark it does not hold
# (MLflow's parser takes both); one it cannot quote is looked for among all versions. Only
# exact matches are kept, as a case-insensitive database (MySQL) would match others.
def versions_of(name: str) -> list:
    """Every version of registered model `name`."""
    quote = next((q for q in ("'", '"') if q not in name), None)
    # a final backslash would escape the quote
    quotable = quote is not None and not name.endswith("\\")
    query = f"name = {quote}{name}{quote}" if quotable else None
    return [
        v
        for v in _every(MlflowClient().search_model_versions, filter_string=query)
        if v.name == name
    ]


def _versions_by_name() -> dict[str, list]:
    """Every registered version, by model name: one pass however many models there are."""
    by_name: dict[str, list] = {}
    for version in _every(MlflowClient().search_model_versions):
        by_name.setdefault(version.name, []).append(version)
    return by_name


def _every(search, **kwargs) -> list:
    """All pages of an MLflow search (one page stops at 100 registered models)."""
    page = search(**kwargs)
    found = list(page)
    while page.token:
        page = search(**kwargs, page_token=page.token)
        found += page
    return found


@dataclass
class Promotion:
    name: str
    version: str | None  # None when nothing was registered
    champion: bool
    reason: str


def champion_version(name: str, alias: str):
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(
    run_id: str,
    name: str = "petloc",
    alias: str = "champion",
    force: bool = False,
    register_when_not_better: bool = True,
    max_latency_ms: float | None = None,
    min_improvement: float = MIN_IMPROVEMENT,
) -> Promotion:
    """Registers run `run_id`'s model and moves `alias` to it when it beats the current holder.

    Figures compare only when measured on the same validation photos: the holder's `val_data`
    tag (dataset digest, val split and seed) equals the run's. A holder from other data (the
    synthetic set against photos, another split, or unknown) is never re-scored here: it
    may have trained on this run's validation photos, and its figures answer another
    question. The run is then registered without moving the alias, saying why; `force`
    moves it. The input image size does not matter: the same photos are scored at any size.

    A run is ranked by its objective (`Objective`): a tracked search's trial by the metric
    and direction its tags name (vocab.OBJECTIVE, vocab.OBJECTIVE_DIRECTION), a localiser by
    val mIoU, a pretrained classifier by val accuracy. Better means a score better by more
    than `min_improvement`, or one within it (a tie) with a lower batch-1 latency
    (`petloc.tracking.ties`); a pretrained classifier's val accuracy ties only when equal. A
    tie wins only when the run is also within `min_improvement` of the best version of `name`
    measured on the same validation data, so that tie after tie cannot walk the champion
    down. A holder ranked by another objective is not compared either, as other data.
    """
    check_name(name)
    check_alias(alias)
    candidate = _candidate(run_id)
    if not force and (refused := _over_budget(candidate, name, alias, max_latency_ms)):
        return refused
    holder = champion_version(name, alias)
    if holder is not None and holder.run_id == run_id:
        return Promotion(
            name, holder.version, True, f"already {name}@{alias} (version {holder.version})"
        )
    if holder is not None and not force and (apart := _apart(candidate, holder, name, alias)):
        return _not_compared(candidate, name, apart, register_when_not_better)
    threshold = 0.0 if candidate.exact else min_improvement
    verdict = _verdict(candidate, holder, name, alias, threshold)
    if not (verdict.better or force or register_when_not_better):
        return Promotion(name, None, False, f"{verdict.loses}; not registered")
    version = _registered(candidate, name)
    if verdict.better or force:
        why = verdict.why if verdict.better else "forced"
        return _win(candidate, version, name, alias, threshold, force, why)
    return Promotion(name, version, False, f"registered as version {version}; {verdict.loses}")


@dataclass(frozen=True)
class Objective:
    """What runs and versions are ranked by: a run metric and its direction. Standings hold
    its value with the direction's sign folded in, so that higher is better for
    `petloc.tracking.ties` whatever the direction; what people read has the sign undone."""

    metric: str
    direction: str = vocab.MAX

    @property
    def sign(self) -> float:
        return -1.0 if self.direction == vocab.MIN else 1.0

    def standing(self, value: float, latency_ms: float | None) -> ties.Standing:
        return ties.Standing(self.sign * value, latency_ms)

    def value(self, score: float) -> str:
        """A standing's score as the metric's value, as every table rounds it (`report.figure`)."""
        return report.figure(self.metric, self.sign * score)

    def gap(self, difference: float) -> str:
        """A difference of two scores, as the metric's values round."""
        return report.figure(self.metric, abs(difference))

    @property
    def worse(self) -> str:
        """How a worse score stands to a better one: `below` it, or `above` for a min."""
        return "above" if self.direction == vocab.MIN else "below"

    @property
    def label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    @property
    def shown(self) -> str:
        """`val_loss (min)`."""
        return f"{self.metric} ({self.direction})"


@dataclass(frozen=True)
class _Candidate:
    """A run offered to the registry: its model and the figures it is ranked by."""

    run: Any
    objective: Objective
    standing: ties.Standing  # the objective's sign folded in
    model_source: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def exact(self) -> bool:
        """Whether only equal scores tie: a pretrained classifier's val accuracy."""
        return not _tracked(self.run.data.tags) and _is_pretrain(self.run.data.tags)

    @property
    def val_data(self) -> str | None:
        return self.run.data.tags.get(vocab.VAL_DATA)

    @property
    def label(self) -> str:
        return self.objective.label

    def score(self, value: float) -> str:
        """A standing's score as every table rounds the metric, its sign undone."""
        return self.objective.value(value)

    @property
    def shown(self) -> str:
        """`val mIoU 0.545`: the run's own score."""
        return f"{self.label} {self.score(self.standing.score)}"


@dataclass(frozen=True)
class _Verdict:
    """Whether a run beats the holder, and the words for either answer."""

    better: bool
    why: str  # why it wins: "first champion", "beats 0.549", a tie its latency decided
    loses: str  # why it does not: "val mIoU 0.530 does not beat petloc@champion's 0.549"


def _candidate(run_id: str) -> _Candidate:
    """Run `run_id` as a promotion weighs it; a one-line error unless it is a finished petloc
    run with a logged model and its score."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise PetlocError(f"run {printable(run_id)}: not found in {tracking_uri()}") from None
    objective = run_objective(run)
    score = run.data.metrics.get(objective.metric)
    model_source = run.data.tags.get(vocab.MODEL_URI)
    if score is None or not model_source:
        raise PetlocError(
            f"run {run_id}: has no logged model with {objective.metric}; promote a finished "
            "petloc run"
        )
    latency = run.data.metrics.get(vocab.LATENCY_MS_B1)
    return _Candidate(run, objective, objective.standing(score, latency), model_source)


def _tracked(tags: dict) -> bool:
    """Whether a run or version names its objective: a tracked search's (petloc.TrackedTuner)."""
    return bool(tags.get(vocab.OBJECTIVE))


def _is_pretrain(tags: dict) -> bool:
    return vocab.kind_of(tags) == vocab.PRETRAIN_KIND


def run_objective(run) -> Objective:
    """What run `run` is ranked by: the objective its tags name (a tracked search's trial),
    else a pretrained classifier's val accuracy or a localiser's val mIoU; a one-line error
    for a direction that is neither max nor min."""
    tags = run.data.tags
    if not _tracked(tags):
        return Objective(vocab.VAL_ACCURACY if _is_pretrain(tags) else vocab.BEST_VAL_MIOU)
    direction = tags.get(vocab.OBJECTIVE_DIRECTION)
    if direction not in (vocab.MAX, vocab.MIN):
        raise PetlocError(
            f"run {run.info.run_id}: its tag {vocab.OBJECTIVE_DIRECTION} is "
            f"{printable(str(direction))!r}, not {vocab.MAX} or {vocab.MIN}"
        )
    return Objective(tags[vocab.OBJECTIVE], direction)


def _version_objective(tags: dict, metric: str) -> Objective:
    """What a version was ranked by: the objective its tags name, or (petloc's own versions
    name none) `metric`, higher is better."""
    if not _tracked(tags):
        return Objective(metric)
    return Objective(tags[vocab.OBJECTIVE], tags.get(vocab.OBJECTIVE_DIRECTION, ""))


def _over_budget(
    candidate: _Candidate, name: str, alias: str, max_latency_ms: float | None
) -> Promotion | None:
    """The refusal of a run whose batch-1 latency is over `max_latency_ms` or unknown; None
    when it fits, or without a budget."""
    latency = candidate.standing.latency_ms
    if max_latency_ms is None or (latency is not None and latency <= max_latency_ms):
        return None
    why = f"its batch-1 latency {_ms(latency)} is over the budget of {max_latency_ms:g} ms"
    return Promotion(
        name,
        None,
        False,
        f"run {candidate.run_id} not promoted: {why} (--force moves {name}@{alias} anyway)",
    )


def _apart(candidate: _Candidate, holder, name: str, alias: str) -> str | None:
    """Why the holder's score does not compare with the run's: ranked by another objective,
    or not measured on the run's validation data (`val_data`); None when it compares."""
    theirs = _version_objective(holder.tags, candidate.metric)
    held = f"{name}@{alias} (version {holder.version})"
    if theirs != candidate.objective:
        return (
            f"{held} is ranked by {theirs.shown} and this run by {candidate.objective.shown}, "
            "so their figures do not compare"
        )
    if (
        holder.tags.get(vocab.VAL_DATA) == candidate.val_data
        and holder.tags.get(candidate.metric) is not None
    ):
        return None
    return (
        f"{held} was measured on other validation data "
        f"({holder.tags.get(vocab.VAL_DATA, 'unknown')}; this run: {candidate.val_data}), so "
        "their figures do not compare"
    )


def _not_compared(candidate: _Candidate, name: str, apart: str, register: bool) -> Promotion:
    """A holder whose figures do not compare keeps the alias; the run is registered (when
    `register`), saying why."""
    why = f"{apart}; petloc promote {candidate.run_id} --name {shlex.quote(name)} --force moves it"
    if not register:
        return Promotion(name, None, False, why + "; not registered")
    version = _registered(candidate, name)
    return Promotion(name, version, False, f"registered as version {version}; {why}")


def _verdict(candidate: _Candidate, holder, name: str, alias: str, threshold: float) -> _Verdict:
    """Whether the run beats `holder`, the version `name@alias` names (None: no holder yet),
    by the rule of `petloc.tracking.ties`."""
    if holder is None:
        return _Verdict(True, "first champion", "")
    theirs = _standing(holder.tags, candidate.objective)
    if theirs is None:  # a holder whose score tag is no number: only a forced move passes it
        return _Verdict(
            False, "", f"{candidate.shown}; {name}@{alias}'s {candidate.label} is unknown"
        )
    verdict = ties.compare(candidate.standing, theirs, threshold)
    if verdict.tie:
        return _tie_verdict(candidate, theirs, verdict.better, name, alias, threshold)
    held = candidate.score(theirs.score)
    loses = f"{candidate.shown} does not beat {name}@{alias}'s {held}"
    return _Verdict(verdict.better, f"beats {held}", loses)


def _tie_verdict(
    candidate: _Candidate,
    theirs: ties.Standing,
    faster: bool,
    name: str,
    alias: str,
    threshold: float,
) -> _Verdict:
    """A tie with the holder of `name@alias`: won by the faster run, when it is also within
    `threshold` of the best version of `name` on its validation data."""
    held = candidate.score(theirs.score)
    times = f"{_ms(candidate.standing.latency_ms)} against {_ms(theirs.latency_ms)}"
    loses = f"{candidate.shown} does not beat {name}@{alias}'s {held}: a tie within {threshold:g}"
    if not faster:
        return _Verdict(False, "", f"{loses}, and not faster ({times})")
    best = _best_version(candidate, name)
    gap = 0.0 if best is None else best[1].score - candidate.standing.score
    if best is not None and gap > 0 and not ties.within(gap, threshold):
        return _Verdict(
            False,
            "",
            f"{loses} and faster ({times}), but {candidate.objective.gap(gap)} "
            f"{candidate.objective.worse} version {best[0]}'s "
            f"{candidate.score(best[1].score)} (a tie wins only within {threshold:g} of the "
            "best version)",
        )
    return _Verdict(True, f"ties {held} within {threshold:g} and is faster: {times}", "")


def _best_version(candidate: _Candidate, name: str) -> tuple[str, ties.Standing] | None:
    """The version of `name` with the best score measured on the run's validation data
    (the run's own aside), with its figures; among equals the oldest; None when none is."""
    measured = [
        (v.version, standing)
        for v in versions_of(name)
        if v.run_id != candidate.run_id
        and v.tags.get(vocab.VAL_DATA) == candidate.val_data
        and (standing := _standing(v.tags, candidate.objective)) is not None
    ]
    return max(measured, key=lambda m: (m[1].score, -int(m[0])), default=None)


def _win(
    candidate: _Candidate,
    version: str,
    name: str,
    alias: str,
    threshold: float,
    force: bool,
    why: str,
) -> Promotion:
    """Moves `alias` to `version`, recording the win and settling a race (`_claim`,
    `_settle`), and says so; or says which version a racing promotion left it on."""
    _claim(name, alias, version, only=force, beats=_beaten_by(candidate, threshold))
    _set_alias(name, alias, version)
    settled = _settle(name, alias, candidate.objective, threshold)
    if settled is not None and settled.version != version:
        theirs = _standing(settled.tags, candidate.objective)
        held = "unknown" if theirs is None else candidate.score(theirs.score)
        return Promotion(
            name,
            version,
            False,
            f"registered as version {version}; {name}@{alias} is version {settled.version}, "
            f"promoted at the same time ({candidate.label} {held})",
        )
    return Promotion(
        name, version, True, f"{name}@{alias} is now version {version} ({candidate.shown}, {why})"
    )


def _beaten_by(candidate: _Candidate, threshold: float) -> Callable[[Any], bool]:
    """Whether the run beats a version measured on the same validation data."""

    def beats(other) -> bool:
        theirs = _standing(other.tags, candidate.objective)
        return (
            other.tags.get(vocab.VAL_DATA) == candidate.val_data
            and theirs is not None
            and ties.compare(candidate.standing, theirs, threshold).better
        )

    return beats


def _standing(tags: dict, objective: Objective) -> ties.Standing | None:
    """A registered version's figures, as its tags hold them, the sign of the objective's
    direction folded in; None without its score, or when the version was ranked by another
    objective (its tags say so)."""
    score = _number(tags.get(objective.metric))
    if score is None or _version_objective(tags, objective.metric) != objective:
        return None
    return objective.standing(score, _number(tags.get(vocab.LATENCY_MS_B1)))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


# Promotions racing against one registry (two sweeps ending at once, maybe on two machines)
# can each read the old holder and move the alias in any order. Each winner first records
# its win on its version; after moving the alias, every writer re-reads those records and
# settles on the best, so whoever writes last leaves the alias right. A record holds the time
# of the win (UTC): only recent ones race (an older petloc's records, "true", never do).
SETTLE_ROUNDS = 20
CLAIM_SECONDS = 600.0  # how long a win counts as racing; settling takes seconds


def _claim_tag(alias: str) -> str:
    return f"promoted_to_{alias}"


def _claim(
    name: str, alias: str, version: str, only: bool, beats: Callable[[Any], bool] | None = None
) -> None:
    """Records on `version` that it won `alias`; `only` (a forced move) withdraws the other
    versions' records, so that settling never brings back a model the user moved away from.
    Otherwise the versions it `beats` lose theirs: with ties, a better model is not always a
    higher score, so settling must not weigh a beaten champion of the past against it."""
    client = MlflowClient()
    client.set_model_version_tag(
        name, version, _claim_tag(alias), datetime.now(UTC).isoformat(timespec="seconds")
    )
    for other in versions_of(name):
        if other.version == version or _claim_tag(alias) not in other.tags:
            continue
        if only or (beats is not None and beats(other)):
            # withdrawn by a racer meanwhile: nothing left to do
            with contextlib.suppress(MlflowException):
                client.delete_model_version_tag(name, other.version, _claim_tag(alias))


def _settle(name: str, alias: str, objective: Objective, threshold: float):
    """Moves `alias` to the best version that won it, until a re-read finds it there; the holder."""
    for _ in range(SETTLE_ROUNDS):
        holder = champion_version(name, alias)
        if holder is None:  # the alias was removed meanwhile
            return None
        best = _best_claim(name, alias, objective, holder, threshold)
        if best.version == holder.version:
            return holder
        _set_alias(name, alias, best.version)
    return champion_version(name, alias)


def _set_alias(name: str, alias: str, version: str, attempts: int = 3) -> None:
    # MLflow's SQL store sets an alias by a read, then an insert or an update: two first
    # settings at once collide on the alias's unique key. Tried again, the row is there.
    for attempt in range(attempts):
        try:
            MlflowClient().set_registered_model_alias(name, alias, version)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise


def _best_claim(name: str, alias: str, objective: Objective, holder, threshold: float):
    """The holder, or a better version that won `alias` on the holder's validation data, by
    the ranking of `petloc.tracking.ties` (the same answer whichever version holds the alias,
    so racing writers agree); among equals the older version, as a promotion needs to beat
    the holder."""
    if _standing(holder.tags, objective) is None:  # ranked otherwise: nothing races it here
        return holder
    rivals = {
        v.version: v
        for v in versions_of(name)
        if _racing(v.tags.get(_claim_tag(alias)))
        and v.tags.get(vocab.VAL_DATA) == holder.tags.get(vocab.VAL_DATA)
        and _standing(v.tags, objective) is not None
    }
    candidates = sorted({**rivals, holder.version: holder}.values(), key=lambda v: int(v.version))
    return ties.ranked(candidates, lambda v: _standing(v.tags, objective), threshold)[0]


def _racing(claim: str | None) -> bool:
    """Whether a version's record of a win is recent enough to race the holder."""
    try:
        won = datetime.fromisoformat(claim or "")
    except ValueError:
        return False
    return won.tzinfo is not None and (datetime.now(UTC) - won).total_seconds() < CLAIM_SECONDS


@dataclass
class LoggedRegistry:
    name: str
    min_improvement: float


def registry_settings_of(run_id: str) -> LoggedRegistry:
    """The registry settings of the run's experiment file (`registry.name`,
    `registry.min_improvement`), each at its default where the file has none or is unreadable."""
    default = RegistryConfig()
    try:
        logged = json.loads(
            read_bounded(
                MlflowClient().download_artifacts(run_id, vocab.EXPERIMENT_FILE), SMALL_FILE_LIMIT
            )
        )
        section = logged.get("registry") or {}
    except (MlflowException, OSError, ValueError, UnreadableFile, AttributeError):
        section = {}
    threshold = section.get("min_improvement") if isinstance(section, dict) else None
    return LoggedRegistry(
        (section.get("name") if isinstance(section, dict) else None) or default.name,
        threshold
        if isinstance(threshold, (int, float)) and 0 <= threshold < float("inf")
        else default.min_improvement,
    )


def _ms(latency: float | None) -> str:
    """A batch-1 latency as every table rounds it."""
    return "unknown" if latency is None else f"{report.figure(vocab.LATENCY_MS_B1, latency)} ms"


def _registered(candidate: _Candidate, name: str) -> str:
    """The version of `name` registered from this run: the one it already has (promotion never
    registers a run twice), else a new one; either way linked from its logged model."""
    version = _existing_version(name, candidate.run_id) or _register(candidate, name)
    if model_id := _logged_model_id(candidate.model_source):
        _link(model_id, name, version)
    return version


def _existing_version(name: str, run_id: str) -> str | None:
    """A version already registered from this run."""
    try:
        found = [v for v in versions_of(name) if v.run_id == run_id]
    except MlflowException:
        return None
    return found[0].version if found else None


def _logged_model_id(model_source: str) -> str | None:
    """The logged model's id of a `models:/m-...` URI (MLflow 3); None for an older URI."""
    return model_source.removeprefix("models:/") if model_source.startswith("models:/m-") else None


# Registration as `mlflow.register_model` does it for a logged model (models:/m-...): the
# version from the registry's create call, with the run and the model id, then the logged
# model's tag listing its versions, which its page in the UI reads. Done here rather than by
# that function: it takes no description, prints to the terminal, and adds its entry even when
# a tracking server's create call has already written it (listing the version twice).
def _register(candidate: _Candidate, name: str) -> str:
    run, model_source = candidate.run, candidate.model_source
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=f"petloc: {_kind(candidate)}")
        except MlflowException as err:
            # another promotion created it meanwhile
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    tags = {key: str(run.data.metrics[key]) for key in METRIC_TAGS if key in run.data.metrics}
    tags.update({key: run.data.tags[key] for key in RUN_TAGS if key in run.data.tags})
    if _tracked(run.data.tags):  # what later promotions compare the holder by
        objective = candidate.objective
        tags[objective.metric] = str(run.data.metrics[objective.metric])
        tags[vocab.OBJECTIVE], tags[vocab.OBJECTIVE_DIRECTION] = (
            objective.metric,
            objective.direction,
        )
    if vocab.CLASSES in run.data.params:  # how many classes the version answers with
        tags[vocab.CLASSES] = run.data.params[vocab.CLASSES]
    tags[vocab.SOURCE_RUN] = run.info.run_id
    # A logged model is named as such: a tracking server refuses the source without it.
    version = client.create_model_version(
        name,
        model_source,
        run_id=run.info.run_id,
        tags=tags,
        description=version_description(run, _sweep_name(run)),
        model_id=_logged_model_id(model_source),
    )
    return version.version


def _kind(candidate: _Candidate) -> str:
    """What a registered model holds, for its description when the first version makes it."""
    tags = candidate.run.data.tags
    if _tracked(tags):
        objective = candidate.objective
        return (
            "Keras model tuned by petloc.TrackedTuner "
            f"(objective: {objective.metric}, {objective.direction})"
        )
    if _is_pretrain(tags):
        return "cat/dog classifier whose backbone localisers start from"
    return "cat/dog head localiser (class + head box)"


def _link(model_id: str, name: str, version: str) -> None:
    """Lists `name` version `version` on its logged model (vocab.LOGGED_MODEL_VERSIONS), once."""
    client = MlflowClient()
    try:
        model = client.get_logged_model(model_id)
    except MlflowException:  # a store without logged models, or the model deleted
        return
    entry = {"name": name, "version": str(version)}
    try:
        listed = json.loads(model.tags.get(vocab.LOGGED_MODEL_VERSIONS) or "[]")
    except ValueError:
        listed = []
    listed = listed if isinstance(listed, list) else []
    if any(isinstance(e, dict) and {k: str(v) for k, v in e.items()} == entry for e in listed):
        return
    client.set_logged_model_tags(
        model_id, {vocab.LOGGED_MODEL_VERSIONS: json.dumps([*listed, entry])}
    )


# A version's figures in its description: the run's metric (its name, as the version's tags
# and `petloc models` say it, and its rounding, petloc.report.figure) and what it means.
DESCRIBED = {
    vocab.BEST_VAL_MIOU: "val mIoU",
    vocab.VAL_ACCURACY: "val accuracy",
    vocab.VAL_IOU50: "share of val boxes with IoU >= 0.5",
    vocab.LATENCY_MS_B1: "batch-1 latency, ms",
}


def version_description(run, sweep: str | None) -> str:
    """A registered version's description in Markdown: where it comes from (its trial and
    sweep or search, or the run) and its figures on the validation data; a tracked search's
    objective first."""
    tags, metrics = run.data.tags, run.data.metrics
    described = dict(DESCRIBED)
    if _tracked(tags):
        objective = run_objective(run)
        better = "lower" if objective.direction == vocab.MIN else "higher"
        what = DESCRIBED.get(objective.metric, "")
        described = {
            objective.metric: f"{what}{', ' if what else ''}the objective ({better} is better)",
            **{k: v for k, v in DESCRIBED.items() if k != objective.metric},
        }
    rows = [
        (f"`{key}`", label, report.figure(key, metrics[key]))
        for key, label in described.items()
        if key in metrics
    ]
    if vocab.CLASSES in run.data.params:
        rows.append((f"`{vocab.CLASSES}`", "classes", run.data.params[vocab.CLASSES]))
    table = "\n".join(
        [
            "| figure | what | value |",
            "|---|---|---:|",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        ]
    )
    return f"{_origin(tags, run.data.params, sweep)}, run `{run.info.run_id}`.\n\n{table}\n"


def _origin(tags: dict, params: dict, sweep: str | None) -> str:
    """`Trial 0003 (simple) of sweep 'quick'`, `The final run ...`, `A petloc train run`,
    `Trial 2 of search 'digits'` (petloc.TrackedTuner's)."""
    trial = tags.get(vocab.TRIAL_ID)
    if _tracked(tags):
        of_search = f"search '{sweep}'" if sweep else "a Keras Tuner search"
        return f"Trial {trial} of {of_search}" if trial else "A run of a Keras Tuner search"
    of_sweep = f" of sweep '{sweep}'" if sweep else ""
    if trial == vocab.FINAL_TRIAL:
        source = tags.get(vocab.SOURCE_TRIAL)
        return f"The final run{of_sweep}" + (f" (trial {source}'s configuration)" if source else "")
    if trial == vocab.ENSEMBLE_TRIAL or vocab.is_ensemble(tags, params):
        return f"The ensemble{of_sweep}"
    if trial:
        return f"Trial {trial} ({params.get(vocab.BACKBONE, '?')}){of_sweep}"
    what = "petloc pretrain" if vocab.kind_of(tags) == vocab.PRETRAIN_KIND else "petloc train"
    return f"A `{what}` run ({params.get(vocab.BACKBONE, '?')})"


def _sweep_name(run) -> str | None:
    """The name of the sweep whose trial `run` is, from its parent run; None outside a sweep."""
    parent = run.data.tags.get(vocab.SWEEP_RUN_ID)
    if not parent:
        return None
    try:
        return MlflowClient().get_run(parent).data.tags.get(vocab.SWEEP)
    except MlflowException:
        return None


def list_versions() -> list[dict]:
    """Every registered version with its aliases and headline figures, for `petloc models`;
    an `objective` column too when a version comes from a tracked search."""
    rows = []
    versions = _versions_by_name()
    objectives = any(_tracked(v.tags) for found in versions.values() for v in found)
    for model in _every(MlflowClient().search_registered_models):
        by_version: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            by_version.setdefault(str(version), []).append(printable(alias))
        for v in sorted(versions.get(model.name, []), key=lambda v: int(v.version)):
            rows.append(
                {
                    "name": printable(model.name),
                    "version": v.version,
                    "aliases": ",".join(sorted(by_version.get(str(v.version), []))) or "-",
                    # the figures under the runs' metric names, as the versions' tags hold them
                    **{name: _float(v.tags.get(name)) for name in LISTED_FIGURES},
                    **({"objective": _listed_objective(v.tags)} if objectives else {}),
                    "source_run": v.run_id or v.tags.get(vocab.SOURCE_RUN, "-"),
                }
            )
    return rows


def _listed_objective(tags: dict) -> str:
    """`val_loss 0.1234 (min)`: a tracked version's objective and its value; else `-`."""
    if not _tracked(tags):
        return "-"
    objective = _version_objective(tags, "")
    value = _number(tags.get(objective.metric))
    shown = "?" if value is None else report.figure(objective.metric, value)
    return f"{objective.metric} {shown} ({objective.direction})"


def _float(text: str | None):
    return float(text) if text not in (None, "") else "-"
