"""Every searchable hyperparameter, declared once: its type, default, bounds or choices, and
what it does. The experiment schema (`petloc.config`), the model builder and
`petloc hyperparameters` all read this declaration.

Plain data, free of TensorFlow: a mistyped name in an experiment file is answered before
Keras loads. The choices are the names in `petloc.model`'s registries (backbones, box heads,
losses, ...), declared here too; tests/model/test_hyperparameter_names.py checks that the two agree, so a new
registry entry needs its name added here to be a valid choice.

Plug-ins (`petloc.register_backbone`, petloc/plugins.py) add choices at run time:
`PLUGIN_CHOICES` holds each added name with the module that added it, so a plug-in's name is
valid wherever a declared one is, and `petloc hyperparameters` says where it comes from.
"""

import re
from dataclasses import dataclass, field, fields
from typing import Any

REGISTERED = "registered:"  # backbone: registered:NAME@ALIAS, a pretrained backbone by name

# The names of petloc.model's registries, in the order `petloc hyperparameters` lists them.
BACKBONE_NAMES = (
    "simple",
    "simple_context",
    "small_resnet",
    "mobilenetv2",
    "efficientnetb0",
    "resnet50",
    "vgg16",
)
BOX_HEAD_NAMES = ("dense", "centre")
SECOND_STAGE_NAMES = ("none", "head_crop")
BOX_LOSS_NAMES = ("mse", "l1", "smooth_l1", "giou", "l1_giou")
CLASS_WEIGHT_NAMES = ("none", "balanced")
TTA_NAMES = ("none", "flip")


# Hyperparameter -> {plug-in choice: the module that registered it}; filled by petloc.plugins.
PLUGIN_CHOICES: dict[str, dict[str, str]] = {"backbone": {}}
# A choice becomes an MLflow param value and a run name: plain characters, MLflow-friendly.
CHOICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,49}")
DISTINCT_PREFIX = 10  # categorical values are told apart by their first 10 characters


def _hp(default, doc: str, bounds: tuple | None = None, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"doc": doc, "bounds": bounds, "choices": choices})


@dataclass(frozen=True)
class Hyperparameters:
    backbone: str = _hp(
        "simple",
        "feature extractor (or registered:NAME@ALIAS from petloc pretrain)",
        choices=BACKBONE_NAMES,
    )
    width: float = _hp(1.0, "width multiplier (filters; alpha for mobilenetv2)", bounds=(0.1, 4.0))
    weights: str = _hp("none", "none (random init), imagenet, or a local weights file")
    image_size: int | None = _hp(
        None, "input side in pixels (default: data.image_size)", bounds=(32, 512)
    )
    aug_strength: float = _hp(
        0.3, "strength of box-aware augmentation, 0 = none", bounds=(0.0, 1.0)
    )
    aug_erase: float = _hp(
        0.0,
        "share of training images with a random patch outside the head box erased (random erasing), 0 = none",
        bounds=(0.0, 1.0),
    )
    head_units: int = _hp(128, "units of each dense layer in the heads", bounds=(1, 4096))
    head_depth: int = _hp(1, "dense layers in each head", bounds=(0, 8))
    dropout: float = _hp(0.2, "dropout after each dense head layer", bounds=(0.0, 0.9))
    box_loss: str = _hp("giou", "box loss", choices=BOX_LOSS_NAMES)
    box_loss_weight: float = _hp(
        1.0, "weight of the box loss against the class loss", bounds=(0.0, 1000.0)
    )
    learning_rate: float = _hp(
        1e-3, "Adam's learning rate, cosine-decayed over the run", bounds=(1e-7, 1.0)
    )
    lr_warmup: float = _hp(
        0.0,
        "epochs of linear warm-up from 5% of learning_rate to it, before the cosine decay; 0 = none",
        bounds=(0.0, 100.0),
    )
    ema: float = _hp(
        0.0,
        "weight averaging: momentum of a moving average of the weights, which is validated "
        "and kept (e.g. 0.99); 0 = off",
        bounds=(0.0, 0.9999),
    )
    batch_size: int = _hp(32, "images per training step", bounds=(1, 1024))
    label_smoothing: float = _hp(
        0.0,
        "label smoothing of the class loss: targets 1 - s/2 and s/2, so the class head stops "
        "pushing photos it already gets right to 0 and 1 (e.g. 0.1); 0 = off",
        bounds=(0.0, 0.5),
    )
    class_weight: str = _hp(
        "none",
        "balanced: cats and dogs weigh the same in the class loss",
        choices=CLASS_WEIGHT_NAMES,
    )
    tta: str = _hp(
        "none",
        "test-time augmentation baked into the logged model (flip: average with the mirror image)",
        choices=TTA_NAMES,
    )
    box_head: str = _hp(
        "dense",
        "dense: corners from the flattened map; centre: heat-map centre + size",
        choices=BOX_HEAD_NAMES,
    )
    second_stage: str = _hp(
        "none",
        "head_crop: the class head also sees the crop around the predicted head",
        choices=SECOND_STAGE_NAMES,
    )
    freeze_backbone: bool = _hp(False, "train only the heads (for a pretrained backbone)")

    @classmethod
    def of(cls, values: dict[str, Any]) -> "Hyperparameters":
        """From a run's values (a tuner trial, the config's fixed values); other keys are ignored."""
        return cls(**{name: values[name] for name in DECLARED if name in values})


DECLARED = {f.name: f for f in fields(Hyperparameters)}


def kind(name: str) -> type:
    """The Python type a hyperparameter's values have (int for `int | None`)."""
    declared = DECLARED[name].type
    return next(
        t
        for t in (bool, int, float, str)
        if declared is t or t in getattr(declared, "__args__", ())
    )


def default(name: str):
    return DECLARED[name].default


def bounds(name: str) -> tuple | None:
    return DECLARED[name].metadata["bounds"]


def choices(name: str) -> tuple[str, ...] | None:
    """The declared choices of `name`, then those plug-ins added."""
    declared = DECLARED[name].metadata["choices"]
    added = tuple(PLUGIN_CHOICES.get(name, {}))
    return declared + added if declared is not None else None


def choice_problem(name: str, value: str, origin: str) -> str | None:
    """Why plug-in module `origin` cannot add `value` to the choices of `name`; None if it can.
    The same module may add its value again (a module imported twice)."""
    if not isinstance(value, str) or not CHOICE_NAME.fullmatch(value):
        return (
            f"{value!r} is not a usable {name} name: letters, digits, '_' and '-', "
            "starting with a letter, at most 50 characters"
        )
    added = PLUGIN_CHOICES[name]
    if value in DECLARED[name].metadata["choices"]:
        return f"{value!r} is a built-in {name}"
    if value in added and added[value] != origin:
        return f"{value!r} is already registered by {added[value]}"
    clash = next(
        (
            other
            for other in (choices(name) or ())
            if other != value and other[:DISTINCT_PREFIX] == value[:DISTINCT_PREFIX]
        ),
        None,
    )
    if clash:
        return (
            f"{value!r} and {clash!r} share their first {DISTINCT_PREFIX} characters "
            "(run names and MLflow's columns tell choices apart by them)"
        )
    return None


def add_choice(name: str, value: str, origin: str) -> None:
    """Plug-in module `origin` adds `value` to the choices of `name` (checked first)."""
    if problem := choice_problem(name, value, origin):
        raise ValueError(problem)
    PLUGIN_CHOICES[name][value] = origin


def plugin_modules(values: dict[str, Any]) -> tuple[str, ...]:
    """The plug-in modules the choices in `values` come from (what a model built from them needs).
    `__main__` (a script or a notebook) is left out: importing it elsewhere finds that
    process's own script, never the plug-in, so recording it would only hide its absence."""
    found = (PLUGIN_CHOICES[name].get(values.get(name)) for name in PLUGIN_CHOICES)  # type: ignore[arg-type]
    return tuple(dict.fromkeys(module for module in found if module and module != "__main__"))


def _shown_choices(name: str) -> str:
    added = PLUGIN_CHOICES.get(name, {})
    return ", ".join(
        f"{choice} (plug-in: {added[choice]})" if choice in added else choice
        for choice in choices(name) or ()
    )


def doc(name: str) -> str:
    return DECLARED[name].metadata["doc"]


def rows() -> list[dict[str, Any]]:
    """The declaration as `petloc hyperparameters` shows it: one row per hyperparameter."""
    listed = []
    for name in DECLARED:
        options, limits = choices(name), bounds(name)
        values = (
            _shown_choices(name) if options else (f"{limits[0]} .. {limits[1]}" if limits else "")
        )
        listed.append(
            {
                "name": name,
                "type": kind(name).__name__,
                "default": "data.image_size" if default(name) is None else default(name),
                "values": values,
                "what": doc(name),
            }
        )
    return listed
