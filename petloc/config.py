"""The experiment file: its schema, `key=value` overrides, and one-line errors.

An experiment file says everything about a run or a sweep: the data, the training
settings, the search space (each hyperparameter fixed, a list of choices, or a range),
the tuner, tracking and the registry. Unknown or mistyped keys are errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from petloc import hyperparams, plugins
from petloc.errors import PetlocError, closest, did_you_mean
from petloc.files import SMALL_FILE_LIMIT, read_text_bounded
from petloc.hyperparams import REGISTERED
from petloc.registry_names import alias_problem, described, name_problem, parse_ref, printable

Scalar = bool | int | float | str | None


class Strict(BaseModel):
    # No NaN or infinity: a NaN passes every `ge`/`le` check and an infinite budget is no budget.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Upper bounds on counts: a typo of many digits is an error when the file is read, not an
# overflow deep inside Keras, NumPy or the database.
MAX_EPOCHS = 100_000
MAX_SEED = 2**31 - 1  # NumPy, TensorFlow and Keras Tuner all take it
Seed = Field(0, ge=0, le=MAX_SEED)
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class Range(Strict):
    """A numeric range: `{min: 1e-4, max: 3e-3, sampling: log}` or `{min: 0, max: 0.6, step: 0.2}`."""

    min: float
    max: float
    step: float | None = None
    sampling: Literal["linear", "log"] = "linear"
    default: float | None = None

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.sampling == "log" and self.min <= 0:
            raise ValueError("log sampling needs min > 0")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        return self


Param = Range | list[Scalar] | Scalar

TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _check_type(name: str, value: Any) -> Any:
    kind = hyperparams.kind(name)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not true or false")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{name}: {value!r} is not {TYPE_NAMES[kind]}")
    if kind in (int, float):
        _check_bounds(name, value)
    if name == "backbone" and isinstance(value, str) and value.startswith(REGISTERED):
        # Any name MLflow may hold, whoever made it (the store says whether it exists).
        ref = value.removeprefix(REGISTERED)
        if parse_ref(ref) is None or ref.startswith("models:/"):
            raise ValueError(
                f"backbone: {printable(value)!r} should be {REGISTERED}NAME@ALIAS or {REGISTERED}NAME/VERSION"
            )
        return value  # resolved when the model is built: the registry may be elsewhere
    if problem := _not_a_choice(name, value):
        raise ValueError(f"{name}: {problem}")
    return value


def _not_a_choice(name: str, value: Any) -> str | None:
    """Why `value` is not one of the choices of hyperparameter `name`; None when it is (or
    `name` has no fixed choices). A backbone of a broken installed entry point says so."""
    registry = hyperparams.choices(name) if name in hyperparams.DECLARED else None
    if registry is None or value in registry:
        return None
    if name == "backbone" and isinstance(value, str) and (broken := plugins.broken(value)):
        return broken
    hint = did_you_mean(value, registry) if isinstance(value, str) else ""
    return f"unknown {name.replace('_', ' ')} {value!r};{hint} choose from {', '.join(sorted(registry))}"


def _check_range(name: str, r: Range) -> None:
    kind = hyperparams.kind(name)
    if kind not in (int, float):
        raise ValueError(f"{name}: a range needs a numeric hyperparameter")
    if kind is int and r.step is not None and (r.step < 1 or r.step != int(r.step)):
        raise ValueError(f"{name}: step {r.step} must be a whole number >= 1")
    if r.sampling == "log" and r.step is not None and r.step <= 1:
        raise ValueError(f"{name}: with log sampling, step is a factor and must be > 1")
    for bound in (r.min, r.max):
        _check_bounds(name, bound)


def _check_bounds(name: str, value) -> None:
    low, high = hyperparams.bounds(name) or (None, None)
    if low is not None and not low <= value <= high:
        raise ValueError(f"{name}: {value} is outside {low}..{high}")


class DataConfig(Strict):
    path: str = "synthetic"  # "synthetic" = the embedded generator, else a dataset folder
    image_size: int = Field(64, ge=32, le=512)
    val_split: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = Seed
    on_bad: Literal["skip", "fail"] = "skip"
    synthetic_count: int = Field(1500, ge=20, le=1_000_000)
    # what a photo's class is: its species (cat / dog), or its breed where the data names one
    # (cats_dogs file names, Oxford's list files, a manifest's label column)
    labels: Literal["species", "breed"] = "species"


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    early_stopping: int = Field(0, ge=0, le=MAX_EPOCHS)  # patience in epochs on val_miou; 0 = off
    seed: int = Seed
    # XLA-compiled training steps, which Keras leaves off on CPUs: faster on some CPUs,
    # slower on others (measure with benchmarks/training_step.py). Not with a head crop.
    xla: bool = False
    # mixed_bfloat16: bfloat16 maths with float32 weights; pays only on CPUs with bf16
    # units (benchmarks/training_step.py). auto: mixed_bfloat16 where /proc/cpuinfo lists
    # them (AVX512_BF16 or AMX) and images are 128 px or more, float32 elsewhere; runs log
    # the one used. The logged model is float32 either way.
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"


class TunerConfig(Strict):
    kind: Literal["random", "bayesian", "grid", "hyperband"] = "random"
    max_trials: int = Field(6, ge=1, le=100_000)
    seed: int = Seed
    max_consecutive_failures: int = Field(3, ge=1, le=100_000)
    # After the search: the best trial's configuration trained again from scratch for this
    # many epochs, as one more child run ("final"); 0 = none.
    final_epochs: int = Field(0, ge=0, le=MAX_EPOCHS)
    # A time budget for each start of the sweep, data preparation and final run included: no
    # trial starts that might, with the final run after it, end past it (petloc.search.time_budget).
    max_minutes: float | None = Field(None, gt=0, le=366 * 24 * 60)
    # With max_minutes and final_epochs (else it does nothing): the final run trains more than
    # final_epochs when the search left time, as many epochs as the rest of the budget holds.
    fill_budget: bool = False


class TrackingConfig(Strict):
    # MLflow's experiments table holds 256 characters; a newline or tab would break its UI and filters.
    experiment: str = Field("petloc", min_length=1, max_length=256)
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db
    gallery_images: int = Field(16, ge=0, le=64)

    @field_validator("experiment")
    @classmethod
    def _printable(cls, value: str) -> str:
        if CONTROL_CHARACTER.search(value):
            raise ValueError(f"{value!r} holds a control character (a newline, tab, ...)")
        return value


def _registry_name(value: str) -> str:
    if problem := name_problem(value):
        raise ValueError(f"'{described(value)}': {problem}")
    return value


def _registry_alias(value: str) -> str:
    if problem := alias_problem(value):
        raise ValueError(f"'{described(value)}': {problem}")
    return value


# MLflow's rules and reserved aliases, with petloc's own (petloc/registry_names.py).
RegistryName = Annotated[str, AfterValidator(_registry_name)]
RegistryAlias = Annotated[str, AfterValidator(_registry_alias)]


class RegistryConfig(Strict):
    # Checked when the file is read: a sweep must not run for hours to fail at its promotion.
    name: RegistryName = "petloc"
    alias: RegistryAlias = "champion"
    register_when_not_better: bool = True
    # The champion is the best val mIoU among trials whose batch-1 latency (latency_ms_b1,
    # measured on the machine that trained them) fits this budget; None: no budget.
    max_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    # Val mIoU differences at or below this are ties, in the champion's choice, the
    # leaderboard's order and the promotion; a tie goes to the lower batch-1 latency. The
    # default is what two runs of one setting differ by (benchmarks/RESULTS.md, run-to-run noise).
    min_improvement: float = Field(0.01, ge=0, allow_inf_nan=False)
    # After a sweep: the N best trials averaged as one model, logged as one more trial
    # ("ensemble"), so it is promoted only when it beats them all; 0 or 1 = none. Like the final
    # run, it runs where the sweep ends: on a chief, which then needs data.path too.
    ensemble: int = Field(0, ge=0, le=8)


def declared(name: str, default: Any) -> Any:
    """A field of hyperparameter `name` with `default` and the bounds petloc.hyperparams
    declares for it (its choices: `PretrainConfig._declared_choice`)."""
    low, high = hyperparams.bounds(name) or (None, None)
    return Field(default, ge=low, le=high)


class PretrainConfig(Strict):
    """`petloc pretrain`: a cat / dog classifier whose backbone a localiser can start from.
    Its hyperparameters take the declaration's bounds and choices (tests/config/
    test_pretrain_declared.py checks the types too); some defaults are pretraining's own."""

    backbone: str = declared("backbone", "small_resnet")
    width: float = declared("width", 0.5)
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    aug_strength: float = declared("aug_strength", 0.6)
    dropout: float = declared("dropout", 0.3)
    learning_rate: float = declared("learning_rate", 2e-3)
    batch_size: int = declared("batch_size", hyperparams.default("batch_size"))
    head_crops: bool = True  # also learn from a crop around each head
    # None: data.image_size; smaller pretrains faster
    image_size: int | None = declared("image_size", hyperparams.default("image_size"))
    xla: bool = False  # XLA-compiled training steps, as train.xla
    register_as: RegistryName = "petloc-backbone"
    alias: RegistryAlias = "champion"

    @field_validator("*")
    @classmethod
    def _declared_choice(cls, value: Any, info: ValidationInfo) -> Any:
        if problem := _not_a_choice(info.field_name or "", value):
            raise ValueError(problem)
        return value


# A sweep's name becomes a folder (mlruns/tuner/NAME): one plain path component, never a path.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class Experiment(Strict):
    name: str = "experiment"
    # Modules that register users' own backbones (petloc/plugins.py), imported before the rest
    # of the file is checked (`parse_experiment`), so the space may name their backbones.
    plugins: list[str] = []
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    space: dict[str, Param] = {}
    tuner: TunerConfig = TunerConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a usable sweep name: letters, digits, '_', '.' and '-' only, "
                "starting with a letter, digit or '_', at most 100 characters"
            )
        return value

    @field_validator("space")
    @classmethod
    def _known_and_typed(cls, space: dict[str, Param]) -> dict[str, Param]:
        checked = {}
        for name, value in space.items():
            if name not in hyperparams.DECLARED:
                hint = did_you_mean(name, hyperparams.DECLARED, "space.")
                known = f" known: {', '.join(hyperparams.DECLARED)}"
                raise ValueError(f"unknown hyperparameter {name!r};{hint or known}")
            if isinstance(value, list):
                if not value:
                    raise ValueError(f"{name}: empty list of choices")
                value = [_check_type(name, v) for v in value]
            elif isinstance(value, Range):
                _check_range(name, value)
            else:
                value = _check_type(name, value)
            checked[name] = value
        return checked

    @model_validator(mode="after")
    def _xla_can_compile(self) -> Experiment:
        stages = self.space.get("second_stage", [])
        if self.train.xla and "head_crop" in (stages if isinstance(stages, list) else [stages]):
            raise ValueError(
                "train.xla: XLA cannot compile second_stage head_crop (tf.image.crop_and_resize); set train.xla=false"
            )
        return self

    def fixed_hyperparameters(self) -> dict[str, Any]:
        """One value per hyperparameter for a single run: first choice, range default or min."""
        values = {name: hyperparams.default(name) for name in hyperparams.DECLARED}
        for name, param in self.space.items():
            if isinstance(param, list):
                values[name] = param[0]
            elif isinstance(param, Range):
                value = param.default if param.default is not None else param.min
                values[name] = int(value) if hyperparams.kind(name) is int else value
            else:
                values[name] = param
        if values["image_size"] is None:
            values["image_size"] = self.data.image_size
        return values

    def as_yaml(self, source: str, overrides: Sequence[str] = ()) -> list[str]:
        """`petloc config`'s lines: this experiment as an experiment file, every default filled
        in, and the hyperparameters `petloc train` uses as comments."""
        given = " with " + " ".join(overrides) if overrides else ""
        lines = [
            f"# {source}{given}, every default filled in",
            yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False).rstrip(),
            "# petloc train uses these hyperparameters (the first choice of each list, "
            "the default or min of each range):",
        ]
        return lines + [
            f"#   {line}"
            for line in yaml.safe_dump(self.fixed_hyperparameters(), sort_keys=False).splitlines()
        ]


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-3` is a string; users mean a number (YAML 1.2)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b=value` sets raw["a"]["b"] = value, the value read as YAML (so 3 is an int)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise PetlocError(f"override {item!r}: expected key=value, e.g. tuner.max_trials=4")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PetlocError(f"override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[leaf] = _yaml(text)
        except yaml.YAMLError as err:
            raise PetlocError(
                f"override {item!r}: value is not valid YAML ({err.__class__.__name__})"
            ) from None
    return raw


def _first_error(source: str, err: ValidationError) -> str:
    errors = _users_errors(err.errors())
    first = errors[0]
    key = ".".join(str(p) for p in first["loc"] if not _is_branch(p))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = _not_a_key(first["loc"], key)
    elif first["type"] == "literal_error" and isinstance(first["input"], str):
        hint = did_you_mean(first["input"], re.findall(r"'([^']*)'", first["ctx"]["expected"]))
        msg += f";{hint}" if hint else ""
    others = [e for e in errors[1:] if not _is_alternative(e)]
    more = f" (and {len(others)} more)" if others else ""
    return f"{source}: {key + ': ' if key else ''}{msg}{more}"


def _is_branch(part: Any) -> bool:
    """A union's branch in an error's location (pydantic names it by its type), not a key."""
    return isinstance(part, str) and (
        part.startswith(("function-", "list[")) or part in ("bool", "int", "float", "str")
    )


def _users_errors(errors: list) -> list:
    """The user's own mistakes among pydantic's errors, a typo first. A value of a union
    (a range, a list or one value) gets one error per branch; the branch whose type the value
    has is the one the user meant, so the other branches' "should be a list/number/..." go.
    A field reported missing next to a typo of its name is that typo, not a second mistake."""
    meant = [e for e in errors if not _is_alternative(e)]
    if meant:
        errors = [e for e in errors if not (_is_alternative(e) and _under_union(e, meant))]
    else:  # every branch refused the value's type: the one that looked inside it fits best
        errors = sorted(errors, key=lambda e: -len(e["loc"]))
    typos = [e for e in errors if e["type"] == "extra_forbidden"]
    mistyped = {
        (e["loc"][:-1], closest(str(e["loc"][-1]), list(_section_at(e["loc"][:-1]).model_fields)))
        for e in typos
    }
    rest = [
        e
        for e in errors
        if e["type"] != "extra_forbidden"
        and not (e["type"] == "missing" and (e["loc"][:-1], e["loc"][-1]) in mistyped)
    ]
    return typos + rest


def _is_alternative(error: dict) -> bool:
    """A union branch's "should be a list/number/..." error: pydantic's alternative, not a
    mistake of its own."""
    return error["type"].endswith("_type") and bool(error["loc"]) and _is_branch(error["loc"][-1])


def _under_union(error: dict, others: list) -> bool:
    """Whether `error` is a branch of the union value some error of `others` is about."""
    value = error["loc"][:-1]
    return any(o["loc"][: len(value)] == value and o is not error for o in others)


def _not_a_key(loc: tuple, key: str) -> str:
    """Why `key` (at `loc`) is refused: not a key, and the key it likely mistypes, else the
    keys there are."""
    section, _, typed = key.rpartition(".")
    keys = list(_section_at(loc[:-1]).model_fields)
    hint = did_you_mean(typed, keys, section + "." if section else "")
    return f"not a key;{hint}" if hint else f"not a key; known: {', '.join(keys)}"


def _section_at(path: tuple) -> type[BaseModel]:
    """The schema class of the section at `path` in an experiment: a range's within `space`."""
    if any(str(part).startswith("function-") for part in path):
        return Range
    model: type[BaseModel] = Experiment
    for part in path:
        model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
    return model


def parse_experiment(raw: dict, source: str = "<experiment>") -> Experiment:
    """The experiment in `raw`, its plug-in modules imported first."""
    import_experiment_plugins(raw.get("plugins", []), source)
    try:
        return Experiment.model_validate(raw)
    except ValidationError as err:
        raise PetlocError(_first_error(source, err)) from None


def import_experiment_plugins(modules: Any, source: str) -> None:
    """Imports an experiment's `plugins:` (and the installed ones): their backbones are then
    valid choices. Module names are found as `python -m` finds them: installed, or under the
    current directory (not the experiment file's folder; see petloc/plugins.py)."""
    if modules is None:
        modules = []
    if not isinstance(modules, list):
        raise PetlocError(
            f"{source}: plugins: expected a list of module names, e.g. [mypackage.nets]"
        )
    plugins.import_plugins(modules, f"{source}: plugins")


# petloc's own example experiments: `experiments/` in a checkout, installed as package data
# (petloc/experiments/, pyproject's package-dir) so they work from any folder after `pip install .`.
BUNDLED_FOLDERS = (
    Path(__file__).resolve().parent / "experiments",
    Path(__file__).resolve().parent.parent / "experiments",
)


def bundled_experiment_name(path: Path) -> bool:
    """Whether `path` may name one of petloc's own experiments: `NAME.yaml` or
    `experiments/NAME.yaml`."""
    return path.parts[:-1] in ((), ("experiments",))


def bundled_experiment(path: Path) -> Path | None:
    """petloc's own experiment named by `path` when it is `NAME.yaml` or `experiments/NAME.yaml`
    and no such file is here (a folder other than the checkout, after `pip install .`)."""
    if path.exists() or not bundled_experiment_name(path):
        return None
    return next(
        (folder / path.name for folder in BUNDLED_FOLDERS if (folder / path.name).is_file()), None
    )


def _nearby_experiment(path: Path) -> str:
    """` did you mean FILE?` for the experiment file `path` likely mistypes: one in its folder,
    or (for a bare or `experiments/` name) one of petloc's own."""
    folders = [path.parent] + (list(BUNDLED_FOLDERS) if bundled_experiment_name(path) else [])
    names = {p.name for folder in folders if folder.is_dir() for p in folder.glob("*.y*ml")}
    prefix = "" if str(path.parent) == "." else f"{path.parent}/"
    return did_you_mean(path.name, sorted(names), prefix)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    path = Path(path)
    path = bundled_experiment(path) or path
    if not path.exists():
        raise PetlocError(f"{path}: no such experiment file;{_nearby_experiment(path)}".rstrip(";"))
    text = read_text_bounded(path, SMALL_FILE_LIMIT)  # a FIFO, device or huge file: one line
    try:
        raw = _yaml(text) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise PetlocError(f"{path}: not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise PetlocError(f"{path}: expected a mapping of sections (data, train, space, ...)")
    return parse_experiment(apply_overrides(raw, list(overrides)), str(path))
