"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class PetlocError(Exception):
    """A problem with the user's input (file, key, value): shown as one line, no traceback."""


# The petloc command line that started this process (set by the CLI; runs record it).
COMMAND_ENV = "PETLOC_COMMAND"
