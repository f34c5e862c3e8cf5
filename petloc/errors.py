"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PetlocError(Exception):
    """A problem with the user's input (file, key, value): shown as one line, no traceback."""


# The petloc command line that started this process (set by the CLI; runs record it).
COMMAND_ENV = "PETLOC_COMMAND"


def closest(given: str, choices: Iterable[str]) -> str | None:
    """The choice `given` most likely mistypes (difflib's ratio, 0.6 or more), or None."""
    found = difflib.get_close_matches(str(given), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(given: str, choices: Iterable[str], prefix: str = "") -> str:
    """` did you mean PREFIX+CHOICE?` for the choice `given` most likely mistypes, else "":
    every error that rejects a name the user typed ends the same way."""
    choice = closest(given, choices)
    return f" did you mean {prefix}{choice}?" if choice is not None else ""
