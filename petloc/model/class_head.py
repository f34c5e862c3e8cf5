"""The class head, which carries the names of the classes it scores.

The head is a Dense softmax (float32 under mixed precision) whose saved config also holds
the class names and, where the data says them, each class's species: a `.keras` file (and
the MLflow model made from it) answers with the dataset's names wherever it is loaded, with
no side file to lose. Wrapped models (test-time augmentation, ensembles) keep their inner
head, so `model_classes` finds the names in any of them.
"""

from __future__ import annotations

import keras
from keras import layers

from petloc import library_internals
from petloc.data.classes import SPECIES, Classes


@keras.saving.register_keras_serializable(package="petloc")
class ClassHead(layers.Dense):
    """Softmax scores over `class_names`, in their order."""

    def __init__(
        self,
        class_names: list[str] | tuple[str, ...],
        species: list[str] | tuple[str, ...] | None = None,
        units: int | None = None,  # in a saved config; always the number of names
        **kwargs,
    ):
        kwargs.setdefault("activation", "softmax")
        kwargs.setdefault("name", "cls")
        kwargs.setdefault("dtype", "float32")
        self.classes = Classes.from_names(class_names, species)  # checks names and species
        super().__init__(len(self.classes), **kwargs)

    @classmethod
    def of(cls, classes: Classes, **kwargs) -> ClassHead:
        return cls(
            list(classes.names), list(classes.species) if classes.species else None, **kwargs
        )

    def get_config(self):
        species = self.classes.species
        return {
            **super().get_config(),
            "class_names": list(self.classes.names),
            "species": list(species) if species else None,
        }


def model_classes(model: keras.Model) -> Classes:
    """The classes `model` scores, in the order of its "cls" output (or its only output): those
    its class head carries. A model without them (saved before heads carried names) is of
    the species task when it scores 2 classes or its output is not yet defined, and numbered
    0..N-1 when it scores N others."""
    for layer in library_internals.all_layers(model):
        if isinstance(layer, ClassHead):
            return layer.classes
    width = _class_scores(model)
    if width in (0, len(SPECIES)):
        return SPECIES
    return Classes(tuple(str(i) for i in range(width)))


def _class_scores(model: keras.Model) -> int:
    """How many class scores `model` gives; 0 when its output is not defined."""
    try:
        output = model.output
    except (AttributeError, ValueError):  # a Sequential model never called
        return 0
    scores = output.get("cls") if isinstance(output, dict) else output
    return int(scores.shape[-1] or 0) if scores is not None else 0
