"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class PetlocError(Exception):
    """A problem with the user's input (file, key, value): shown as one line, no traceback."""
