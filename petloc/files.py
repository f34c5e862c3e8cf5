"""File-system steps that must not lose data: atomic writes, deletes confined to the folder
petloc owns, and OS locks that a killed process releases by itself."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from petloc.errors import PetlocError


def atomic_write_text(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, whenever the process dies."""
    atomic_write(path, lambda file: file.write(str.encode(text, "utf-8")))  # not text: a TypeError, as a text file gives


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`path` holds either its old content or all that `write(file)` wrote, whenever the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: two processes writing the same file never share a temp file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp's is 0600: others sharing the project could not read the file
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The permissions a file written at `path` gets: those of the file it replaces, else what
    open() would give a new file under the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux says it without changing it
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def inside(path: Path, root: Path) -> Path:
    """`path` resolved (a final link kept as the link itself); a PetlocError unless it lies
    strictly inside `root`."""
    path = Path(path)
    target = path.parent.resolve() / path.name if path.is_symlink() else path.resolve()
    if Path(root).resolve() not in target.parents:
        raise PetlocError(f"{path}: refusing to touch it, it is not inside {root}, the folder petloc owns here")
    return target


def remove_tree(path: Path, root: Path) -> None:
    """Delete the file, link or folder at `path`, which must lie inside `root`; absent is fine."""
    target = inside(path, root)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)  # a link goes, never what it points to


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str):
    """Hold an OS lock on `path` for the block, or raise PetlocError(`busy`) at once when
    another process holds it. The lock dies with its process, so a kill -9 frees it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            raise PetlocError(f"{busy} (process {holder or '?'} holds {path})") from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        try:
            yield
        finally:
            file.truncate(0)
            fcntl.flock(file, fcntl.LOCK_UN)


@contextlib.contextmanager
def waiting_lock(path: Path):
    """Hold an OS lock on `path` for the block, waiting for any other holder to finish."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
