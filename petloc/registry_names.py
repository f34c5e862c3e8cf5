"""What a registered model's name and alias may be, and how `NAME@ALIAS` / `NAME/VERSION` read.

MLflow's rules, mirrored here so the experiment file is checked when it is read (without
importing MLflow): a name is not blank, has no '/' or ':' and is not a path that resolves
elsewhere (`..`, `a/./b`); an alias is letters, digits, '_' and '-', and `latest` and `v<N>`
are reserved. tests/tracking/test_registry_names.py holds the mirror to MLflow's own validators.

petloc adds a few rules of its own for the names it creates: every character printable (a
newline or escape sequence would forge lines in tables and errors), no surrounding spaces,
no '@' (`NAME@ALIAS` would read two ways) and no '?' (MLflow's `models:/` URIs cut the
name there), and at most 256 characters (MLflow's registry columns; PostgreSQL
refuses more). Names other tools made are still listed and loaded; only creating is refused.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from petloc.errors import PetlocError

MAX_NAME_LENGTH = 256  # MLflow's registered_models.name is VARCHAR(256)
MAX_ALIAS_LENGTH = 255  # MLflow's MAX_REGISTERED_MODEL_ALIAS_LENGTH
# MLflow's rule; fullmatch, as its `$` lets a final newline through
ALIAS_CHARACTERS = re.compile(r"[\w-]+")
RESERVED_VERSION_ALIAS = re.compile(r"[vV]\d+")
NOT_IN_NAMES = {
    "/": "MLflow forbids '/' in a name",
    ":": "MLflow forbids ':' in a name",
    "@": "no '@' in a name: NAME@ALIAS would read two ways",
    "?": "no '?' in a name: MLflow's models:/ URIs end the name there",
}


def printable(text: str) -> str:
    """`text` for a message or table, any control character escaped: a stored name cannot
    forge a line of petloc's output."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def name_problem(name: str) -> str | None:
    """Why petloc will not create a registered model called `name`, or None."""
    if not isinstance(name, str) or not name.strip():
        return "a name cannot be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"{len(name)} characters, MLflow keeps at most {MAX_NAME_LENGTH}"
    if bad := next((c for c in name if not c.isprintable()), None):
        return f"it holds the unprintable character {bad.encode('unicode_escape').decode()}"
    if name != name.strip():
        return "it begins or ends with a space"
    if bad := next((c for c in NOT_IN_NAMES if c in name), None):
        return NOT_IN_NAMES[bad]
    if _path_not_unique(name):  # MLflow's path_not_unique
        return "MLflow refuses a name that resolves to another as a path (such as '.' or '..')"
    return None


def alias_problem(alias: str) -> str | None:
    """Why `alias` cannot be set on a registered model, or None."""
    if not isinstance(alias, str) or not alias:
        return "an alias cannot be empty"
    if len(alias) > MAX_ALIAS_LENGTH:
        return f"{len(alias)} characters, MLflow keeps at most {MAX_ALIAS_LENGTH}"
    if not ALIAS_CHARACTERS.fullmatch(alias):
        return "an alias is letters, digits, '_' and '-' only"
    if alias.lower() == "latest":
        return "MLflow reserves 'latest' (the newest version)"
    if RESERVED_VERSION_ALIAS.fullmatch(alias):
        return f"MLflow reserves v<N> ({alias} is version {alias[1:]})"
    return None


def check_name(name: str, what: str = "model name") -> str:
    if problem := name_problem(name):
        raise PetlocError(f"{what} '{described(str(name))}': {problem}")
    return name


def check_alias(alias: str, what: str = "alias") -> str:
    if problem := alias_problem(alias):
        raise PetlocError(f"{what} '{described(str(alias))}': {problem}")
    return alias


def described(text: str, keep: int = 80) -> str:
    """`text` printable and at most about `keep` characters, for an error message."""
    text = printable(text)
    return text if len(text) <= keep else f"{text[:keep]}..."


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


@dataclass(frozen=True)
class Ref:
    """A registered version by name: `NAME@ALIAS` or `NAME/VERSION`."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.name}@{self.alias}" if self.alias is not None else f"{self.name}/{self.version}"
        )


def parse_ref(text: str) -> Ref | None:
    """`NAME@ALIAS` or `NAME/VERSION` (also after `models:/`), else None. As MLflow reads them:
    the alias follows the last '@'; a name never holds '/' or ':'. Names other tools made
    (quotes, '%', spaces, any letters) read too; whether such a version exists is the store's
    to say."""
    ref = text.removeprefix("models:/")
    name, slash, version = ref.partition("/")
    if slash:
        numbered = version.isdecimal() and version.isascii()
        return Ref(name, version=version) if numbered and _stored_name(name) else None
    name, at, alias = ref.rpartition("@")
    return (
        Ref(name, alias=alias) if at and alias and _stored_name(name) and "/" not in alias else None
    )


def _stored_name(name: str) -> bool:
    """Could MLflow hold a registered model of this name (whoever made it)?"""
    return bool(name.strip()) and ":" not in name and "/" not in name
