"""What a saved model needs imported before Keras can load it: the plug-in modules it was
trained with (petloc/plugins.py), as the run recorded them, and the module of each custom
Keras object in its file that nothing imported has registered yet.

Keras records each custom object's module in the `.keras` file but, in safe mode, imports
none outside Keras: a model whose plug-in backbone has its own layers would fail with a
page about `register_keras_serializable`. Importing the named module first is what the
user would do by hand; a module that is not installed is one line naming it.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import keras

from petloc import plugins

CONFIG_MEMBER = "config.json"  # the model's architecture inside a .keras zip
MAX_CONFIG_BYTES = 64_000_000  # far above any localiser's; a bigger member is not a model
KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras")


def import_needed(
    keras_files: Iterable[str | Path], source: str, recorded: Iterable[str] = ()
) -> None:
    """Imports the `recorded` plug-in modules and the modules of the unregistered custom
    objects in `keras_files`; `source` names the model in the one-line error."""
    modules = [*recorded, *(module for f in keras_files for module in unregistered_modules(f))]
    plugins.import_plugins(dict.fromkeys(modules), f"{source}: the model needs a plug-in")


def unregistered_modules(keras_file: str | Path) -> list[str]:
    """The modules of the custom objects in `keras_file` that Keras does not know yet."""
    config = _config(keras_file)
    if config is None:
        return []  # not a readable .keras: Keras's loading says so
    known = keras.saving.get_custom_objects()
    return list(
        dict.fromkeys(
            module
            for module, registered in _custom_objects(config)
            if registered not in known and module.split(".")[0] not in KERAS_PACKAGES
        )
    )


def _config(keras_file: str | Path) -> dict | None:
    try:
        with zipfile.ZipFile(keras_file) as archive:
            info = archive.getinfo(CONFIG_MEMBER)
            if info.file_size > MAX_CONFIG_BYTES:
                return None
            config = json.loads(archive.read(info))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return config if isinstance(config, dict) else None


def _custom_objects(node) -> Iterator[tuple[str, str]]:
    """(module, registered name) of every serialized object in a Keras config that names both."""
    if isinstance(node, dict):
        module, registered = node.get("module"), node.get("registered_name")
        if isinstance(module, str) and isinstance(registered, str) and ">" in registered:
            yield module, registered
        for value in node.values():
            yield from _custom_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _custom_objects(value)
