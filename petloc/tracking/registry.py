"""The MLflow Model Registry: promotion (only when better than the current champion) and
loading by name (`petloc@champion`, `petloc/3`, `models:/petloc@champion`)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import mlflow
import mlflow.keras
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc import serving
from petloc.errors import PetlocError, closest
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, read_bounded
from petloc.model import Pretrained
from petloc.model.backbones import CaffePreprocess
from petloc.registry_names import Ref, check_alias, check_name, parse_ref, printable
from petloc.tracking import vocabulary as vocab
from petloc.tracking.store import configure, tracking_uri
from petloc.training.export import exported_predictor
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


def loadable_uri(uri: str) -> str:
    """The URI MLflow loads for `uri`: a registered version (NAME@ALIAS, NAME/N) as its logged
    model's own id, found by exact name, since MLflow's URI parser cuts some names MLflow
    allows (at '?'); a one-line error when there is no such version."""
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
    return exported_predictor(source) or Predictor(load_localiser(source))


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
) -> Promotion:
    """Registers run `run_id`'s model and moves `alias` to it when it beats the current holder.

    Figures compare only when measured on the same validation photos: the holder's `val_data`
    tag (dataset digest, val split and seed) equals the run's. A holder from other data (the
    synthetic set against photos, another split, or unknown) is never re-scored here: it
    may have trained on this run's validation photos, and its figures answer another
    question. The run is then registered without moving the alias, saying why; `force`
    moves it. The input image size does not matter: the same photos are scored at any size.
    """
    check_name(name)
    check_alias(alias)
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PetlocError(f"run {printable(run_id)}: not found in {tracking_uri()}") from None
    # A localiser is ranked by val mIoU; a pretrained classifier by val accuracy.
    metric = (
        vocab.VAL_ACCURACY
        if vocab.kind_of(run.data.tags) == vocab.PRETRAIN_KIND
        else vocab.BEST_VAL_MIOU
    )
    label = METRIC_LABELS.get(metric, metric)
    score = run.data.metrics.get(metric)
    model_source = run.data.tags.get(vocab.MODEL_URI)
    if score is None or not model_source:
        raise PetlocError(
            f"run {run_id}: has no logged model with {metric}; promote a finished petloc run"
        )
    latency = run.data.metrics.get(vocab.LATENCY_MS_B1)
    if max_latency_ms is not None and not force and (latency is None or latency > max_latency_ms):
        why = f"its batch-1 latency {_ms(latency)} is over the budget of {max_latency_ms:g} ms"
        return Promotion(
            name,
            None,
            False,
            f"run {run_id} not promoted: {why} (--force moves {name}@{alias} anyway)",
        )
    holder = champion_version(name, alias)
    if holder is not None and holder.run_id == run_id:
        return Promotion(
            name, holder.version, True, f"already {name}@{alias} (version {holder.version})"
        )
    val_data = run.data.tags.get(vocab.VAL_DATA)
    if (
        holder is not None
        and not force
        and (holder.tags.get(vocab.VAL_DATA) != val_data or holder.tags.get(metric) is None)
    ):
        why = (
            f"{name}@{alias} (version {holder.version}) was measured on other validation data "
            f"({holder.tags.get('val_data', 'unknown')}; this run: {val_data}), so their figures do not compare; "
            f"petloc promote {run_id} --name {shlex.quote(name)} --force moves it"
        )
        if not register_when_not_better:
            return Promotion(name, None, False, why + "; not registered")
        version = _existing_version(name, run_id) or _register(run, model_source, name)
        return Promotion(name, version, False, f"registered as version {version}; {why}")
    holder_score = (
        float(holder.tags[metric]) if holder is not None and metric in holder.tags else None
    )
    better = holder is None or (holder_score is not None and score > holder_score)
    if not (better or force or register_when_not_better):
        return Promotion(
            name,
            None,
            False,
            f"{label} {score:.4f} does not beat {name}@{alias}'s {holder_score:.4f}; not registered",
        )
    version = _existing_version(name, run_id) or _register(run, model_source, name)
    if better or force:
        _claim(name, alias, version, only=force)
        _set_alias(name, alias, version)
        settled = _settle(name, alias, metric)
        if settled is not None and settled.version != version:
            return Promotion(
                name,
                version,
                False,
                f"registered as version {version}; {name}@{alias} is version {settled.version}, "
                f"promoted at the same time ({label} {settled.tags.get(metric, 'unknown')})",
            )
        why = (
            "forced"
            if not better
            else ("first champion" if holder is None else f"beats {holder_score:.4f}")
        )
        return Promotion(
            name,
            version,
            True,
            f"{name}@{alias} is now version {version} ({label} {score:.4f}, {why})",
        )
    return Promotion(
        name,
        version,
        False,
        f"registered as version {version}; {label} {score:.4f} does not beat {name}@{alias}'s {holder_score:.4f}",
    )


# Promotions racing against one registry (two sweeps ending at once, maybe on two machines)
# can each read the old holder and move the alias in any order. Each winner first records
# its win on its version; after moving the alias, every writer re-reads those records and
# settles on the best, so whoever writes last leaves the alias right.
SETTLE_ROUNDS = 20


def _claim_tag(alias: str) -> str:
    return f"promoted_to_{alias}"


def _claim(name: str, alias: str, version: str, only: bool) -> None:
    """Records on `version` that it won `alias`; `only` (a forced move) withdraws the other
    versions' records, so that settling never brings back a model the user moved away from."""
    client = MlflowClient()
    client.set_model_version_tag(name, version, _claim_tag(alias), "true")
    if only:
        for other in versions_of(name):
            if other.version != version and _claim_tag(alias) in other.tags:
                client.delete_model_version_tag(name, other.version, _claim_tag(alias))


def _settle(name: str, alias: str, metric: str):
    """Moves `alias` to the best version that won it, until a re-read finds it there; the holder."""
    for _ in range(SETTLE_ROUNDS):
        holder = champion_version(name, alias)
        if holder is None:  # the alias was removed meanwhile
            return None
        best = _best_claim(name, alias, metric, holder)
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


def _best_claim(name: str, alias: str, metric: str, holder):
    """The holder, or a better version that won `alias` on the holder's validation data; ties
    go to the older version, as a promotion needs to beat the holder strictly."""
    if holder.tags.get(metric) is None:
        return holder
    rivals = [
        v
        for v in versions_of(name)
        if _claim_tag(alias) in v.tags
        and v.tags.get(vocab.VAL_DATA) == holder.tags.get(vocab.VAL_DATA)
        and v.tags.get(metric) is not None
    ]
    return max([holder, *rivals], key=lambda v: (float(v.tags[metric]), -int(v.version)))


def registered_name_of(run_id: str) -> str:
    """The registered model name the run's experiment file gives (`registry.name`), else "petloc"."""
    client = MlflowClient()
    try:
        logged = json.loads(
            read_bounded(client.download_artifacts(run_id, vocab.EXPERIMENT_FILE), SMALL_FILE_LIMIT)
        )
        return logged.get("registry", {}).get("name") or "petloc"
    except (MlflowException, OSError, ValueError, UnreadableFile):
        return "petloc"


def _ms(latency: float | None) -> str:
    return "unknown" if latency is None else f"{latency:.2f} ms"


def _existing_version(name: str, run_id: str) -> str | None:
    """A version already registered from this run: promotion never registers a run twice."""
    try:
        found = [v for v in versions_of(name) if v.run_id == run_id]
    except MlflowException:
        return None
    return found[0].version if found else None


def _register(run, model_source: str, name: str) -> str:
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        kind = (
            "cat/dog classifier whose backbone localisers start from"
            if vocab.kind_of(run.data.tags) == vocab.PRETRAIN_KIND
            else "cat/dog head localiser (class + head box)"
        )
        try:
            client.create_registered_model(name, description=f"petloc: {kind}")
        except MlflowException as err:
            # another promotion created it meanwhile
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    tags = {key: str(run.data.metrics[key]) for key in METRIC_TAGS if key in run.data.metrics}
    tags.update({key: run.data.tags[key] for key in RUN_TAGS if key in run.data.tags})
    if vocab.CLASSES in run.data.params:  # how many classes the version answers with
        tags[vocab.CLASSES] = run.data.params[vocab.CLASSES]
    tags[vocab.SOURCE_RUN] = run.info.run_id
    # A logged model (models:/m-...) is named as such: a tracking server refuses the source without it.
    model_id = (
        model_source.removeprefix("models:/") if model_source.startswith("models:/m-") else None
    )
    version = client.create_model_version(
        name, model_source, run_id=run.info.run_id, tags=tags, model_id=model_id
    )
    return version.version


def list_versions() -> list[dict]:
    """Every registered version with its aliases and headline figures, for `petloc models`."""
    rows = []
    versions = _versions_by_name()
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
                    "source_run": v.run_id or v.tags.get(vocab.SOURCE_RUN, "-"),
                }
            )
    return rows


def _float(text: str | None):
    return float(text) if text not in (None, "") else "-"
