"""The classes a dataset names: their order is the model's class index.

Readers give each photo a class name; a dataset's `Classes` are its names in sorted order,
so the same photos give the same indices on every machine (the species task: cat = 0,
dog = 1). Where the data says which species a class belongs to (a breed), that travels
beside it, so a breed model can also be scored on species.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from petloc.errors import PetlocError


@dataclass(frozen=True)
class Classes:
    names: tuple[str, ...]
    # the species of each class, in the order of `names`; None where the data does not say
    species: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.names:
            raise PetlocError("no classes")
        if len(set(self.names)) != len(self.names):
            raise PetlocError(f"class names repeat: {list(self.names)}")
        if self.species is not None and len(self.species) != len(self.names):
            raise PetlocError("one species per class expected")

    @classmethod
    def of(cls, species_of: Mapping[str, str | None]) -> Classes:
        """The classes of a dataset from {class name: its species or None}, in sorted order;
        species are kept only when every class has one."""
        names = tuple(sorted(species_of))
        species = tuple(species_of[n] or "" for n in names)
        return cls(names, species if all(species) else None)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise PetlocError(
                f"class {name!r} is not one of the model's {len(self)} classes ({_listed(self.names)})"
            ) from None

    @property
    def species_names(self) -> tuple[str, ...]:
        """The species these classes fall into, sorted (empty when unknown)."""
        return tuple(sorted(set(self.species))) if self.species else ()

    def species_index(self) -> list[int]:
        """For each class, the index of its species in `species_names`."""
        if not self.species:
            raise PetlocError("these classes have no species")
        order = self.species_names
        return [order.index(s) for s in self.species]

    def to_json(self) -> str:
        return json.dumps(
            {"names": list(self.names), "species": self.species and list(self.species)}
        )

    @classmethod
    def from_json(cls, text: str) -> Classes:
        data = json.loads(text)
        species = data.get("species")
        return cls(tuple(data["names"]), tuple(species) if species else None)

    @classmethod
    def from_names(cls, names: Iterable[str], species: Iterable[str] | None = None) -> Classes:
        return cls(tuple(names), tuple(species) if species is not None else None)


SPECIES = Classes(("cat", "dog"))


def dataset_classes(species_of: Mapping[str, str | None]) -> Classes:
    """A dataset's classes from {class: its species or None}: cat and dog without species are
    the species task (cat = 0, dog = 1, whichever of them the photos hold), else the names
    sorted. A folder of one class makes one class: a model is scored on it, not trained."""
    if set(species_of) <= set(SPECIES.names) and not any(species_of.values()):
        return SPECIES
    return Classes.of(species_of)


def at_least_two(classes: Classes, where: object) -> Classes:
    """`classes`, or a one-line PetlocError when they are too few to train a model on."""
    if len(classes) < 2:
        raise PetlocError(
            f"{where}: every usable photo is class {classes.names[0]!r}; a model needs at least 2 classes"
        )
    return classes


def _listed(names: tuple[str, ...], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... {len(names) - most} more" if len(names) > most else "")
