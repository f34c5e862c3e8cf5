"""Your own backbone: plug-in modules that register backbones beside petloc's built-in ones.

    # mypackage/nets.py
    import keras
    import petloc

    @petloc.register_backbone("mynet")
    def mynet(image_size: int, width: float, weights: str | None) -> keras.Model:
        ...  # a keras.Model from RGB pixels in 0..255 to a feature map

An experiment file names its plug-in modules (`plugins: [mypackage.nets]`); they are imported
before the rest of the file is checked, so `space.backbone: [simple, mynet]` is valid. An
installed package registers through the entry-point group `petloc.backbones`
(`mynet = mypackage.nets`, or `mynet = mypackage.nets:build` for an undecorated builder),
imported the first time petloc consults its backbones. A broken one is a warning, not an
error, until its name is asked for: one bad package must not stop the models that never use it.

Plug-in modules are imported the way `python -m` finds them: installed, or under the current
directory (appended to sys.path, after the installed packages, so a local folder never shadows
one). The experiment file's own folder is not searched: an experiment in `experiments/` names
`mypackage.nets` as seen from where petloc runs, as every other path in it is.

Free of TensorFlow: `import petloc` and a mistyped experiment stay fast; a plug-in module
imports Keras itself.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from petloc import hyperparams
from petloc.errors import PetlocError

ENTRY_POINT_GROUP = "petloc.backbones"
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# Backbone name -> builder(image_size, width, weights) -> keras.Model, of the plug-ins.
BUILDERS: dict[str, Callable[..., Any]] = {}
# Entry-point name -> why it did not load (one line naming the entry point and its distribution).
BROKEN: dict[str, str] = {}
_entry_points_loaded = False
LOGGER = logging.getLogger("petloc")


def register_backbone(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registers the decorated builder as backbone `name`. A builder takes `(image_size: int,
    width: float, weights: str | None)` (weights: None = random init, "imagenet", or a
    weights file) and returns a `keras.Model` mapping RGB pixels in 0..255 of
    `image_size` x `image_size` to a feature map, with its own scaling inside. Its custom
    layers, if any, must be registered Keras serializables (saved models load in safe mode).
    A name that is taken, built in, or not distinct from another in its first 10 characters
    is a one-line error."""

    def add(builder: Callable[..., Any]) -> Callable[..., Any]:
        module = getattr(builder, "__module__", None) or "?"
        if not callable(builder):
            raise PetlocError(
                f"register_backbone({name!r}) in {module}: {builder!r} is not callable"
            )
        try:
            hyperparams.add_choice("backbone", name, module)
        except ValueError as err:
            raise PetlocError(f"register_backbone({name!r}) in {module}: {err}") from None
        if module == "__main__" and name not in BUILDERS:
            # No other process can import a script's or a notebook's code by name.
            LOGGER.warning(
                "petloc: backbone %r is registered in __main__ (a script or a notebook): "
                "a model on it loads only where that code runs again first",
                name,
            )
        BUILDERS[name] = builder
        return builder

    return add


def import_plugins(modules: Iterable[str], where: str) -> None:
    """Imports each plug-in module (after the installed entry points); `where` starts each
    error's line (e.g. "experiments/x.yaml: plugins")."""
    load_entry_points()
    for module in modules:
        import_module(module, where)


def import_module(module: str, where: str) -> None:
    """Imports `module` as a plug-in, from the installed packages or the current directory;
    whatever goes wrong is one line naming `where` and the module."""
    if not isinstance(module, str) or not MODULE_NAME.fullmatch(module):
        raise PetlocError(f"{where}: {module!r} is not a module name such as mypackage.nets")
    _current_directory_importable()
    try:
        importlib.import_module(module)
    except PetlocError as err:  # a register_backbone refused inside it
        raise PetlocError(f"{where}: {module}: {err}") from None
    except ModuleNotFoundError as err:
        missing = f" (no module named {err.name!r})" if err.name and err.name != module else ""
        raise PetlocError(
            f"{where}: cannot import {module!r}{missing}: it is not installed here "
            "and not under the current directory"
        ) from None
    except Exception as err:  # noqa: BLE001  (the user's module may raise anything: one line)
        raise PetlocError(f"{where}: cannot import {module!r}: {_one_line(err)}") from None


def load_entry_points() -> None:
    """Loads the installed plug-ins (entry-point group `petloc.backbones`) once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # a broken one is reported once, not at every look-up
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(entry)


def _load_entry_point(entry: importlib.metadata.EntryPoint) -> None:
    dist = getattr(entry, "dist", None)
    owner = f"{dist.name} {dist.version}" if dist is not None else "an installed package"
    where = f"entry point {entry.name} = {entry.value} of {owner} (group {ENTRY_POINT_GROUP})"
    _current_directory_importable()
    try:
        loaded = entry.load()
    except PetlocError as err:
        _broken(entry.name, f"{where}: {err}")
        return
    except Exception as err:  # noqa: BLE001  (an installed package may raise anything: one line)
        _broken(entry.name, f"{where}: cannot load it: {_one_line(err)}")
        return
    # `name = package.module:builder` names an undecorated builder: register it by the entry's name.
    if callable(loaded) and entry.name not in BUILDERS:
        register_backbone(entry.name)(loaded)


def _broken(name: str, problem: str) -> None:
    """Reports a broken entry point once and keeps its problem for when its name is asked for."""
    BROKEN[name] = problem
    LOGGER.warning("petloc: skipped %s", problem)


def broken(name: str) -> str | None:
    """Why the installed entry point named `name` did not load; None when it did or is none."""
    load_entry_points()
    return BROKEN.get(name)


def builder(name: str) -> Callable[..., Any] | None:
    """The plug-in builder of backbone `name`, None when no plug-in registered it."""
    load_entry_points()
    return BUILDERS.get(name)


def origin(name: str) -> str | None:
    """The module that registered plug-in backbone `name`."""
    return hyperparams.PLUGIN_CHOICES["backbone"].get(name)


def _current_directory_importable() -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
