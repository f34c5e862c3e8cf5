"""File-system steps that must not lose data or take the machine: atomic writes, deletes
confined to the folder petloc owns, OS locks that a killed process releases by itself, and
bounded reads.

Every file petloc reads goes through `read_bounded` or `open_regular`: the path must be a
regular file (a FIFO would block the read forever, /dev/zero never ends) under a size
limit, checked before a byte is read, and the read stops one byte past the limit however
big the file grows meanwhile (or however small /proc says its files are).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from petloc.errors import PetlocError

SMALL_FILE_LIMIT = (
    1_000_000  # bytes: annotations, experiment files, petloc's own state (each a few KB)
)
_KINDS = (  # what a path that is not a regular file is, as users name it
    (stat.S_ISDIR, "is a folder, not a file"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a device, not a regular file"),
    (stat.S_ISBLK, "is a device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


class UnreadableFile(PetlocError):
    """A file petloc will not read: not there, not a regular file, or over its size limit.
    `reason` is the one-line why, without the path (a prediction's row names it already)."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def read_bounded(path: Path | str, limit: int, setting: str = "") -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them, else `UnreadableFile`.
    `setting` names the environment variable that sets `limit`, for the error."""
    with open_regular(path, limit, setting) as file:
        data = file.read(limit + 1)
    if len(data) > limit:  # grew since it was opened, or a /proc file (whose size says 0)
        raise UnreadableFile(path, _over(None, limit, setting))
    return data


def read_text_bounded(
    path: Path | str, limit: int = SMALL_FILE_LIMIT, encoding: str = "utf-8"
) -> str:
    """`read_bounded` decoded; undecodable bytes are `UnreadableFile` too."""
    data = read_bounded(path, limit)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise UnreadableFile(
            path, f"not {encoding.removesuffix('-sig')} text (byte {err.start})"
        ) from None


def open_regular(path: Path | str, limit: int | None = None, setting: str = "") -> BinaryIO:
    """The regular file at `path` opened for reading (binary), else `UnreadableFile`: the path
    is looked at before it is opened (opening a tape rewinds it), opened without blocking (a
    FIFO swapped in meanwhile opens at once) and looked at again through the opened file.
    With `limit`, a file over `limit` bytes is refused; the caller reads at most that much."""
    check_regular(path, limit, setting, os.stat)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise UnreadableFile(path, _os_reason(err)) from None
    try:
        check_regular(path, limit, setting, lambda _: os.fstat(fd))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(
    path: Path | str,
    limit: int | None = None,
    setting: str = "",
    look: Callable[[Any], os.stat_result] = os.stat,
) -> os.stat_result:
    """`UnreadableFile` unless `path` (a link followed) is a regular file of at most `limit` bytes."""
    try:
        info = look(path)
    except OSError as err:
        raise UnreadableFile(path, _os_reason(err)) from None
    for is_kind, reason in _KINDS:
        if is_kind(info.st_mode):
            raise UnreadableFile(path, reason)
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableFile(path, "is not a regular file")
    if limit is not None and info.st_size > limit:
        raise UnreadableFile(path, _over(info.st_size, limit, setting))
    return info


def _over(size: int | None, limit: int, setting: str) -> str:
    where = f" ({setting})" if setting else ""
    if size is None:  # the read found more than the size said
        return f"is over the limit of {limit} bytes{where}"
    return f"is {size} bytes, over the limit of {limit} bytes{where}"


def _os_reason(err: OSError) -> str:
    return f"cannot read file: {err.strerror or err}"


def atomic_write_text(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, whenever the process dies."""
    # not text: a TypeError, as a text file gives
    atomic_write(path, lambda file: file.write(str.encode(text, "utf-8")))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`path` holds either its old content or all that `write(file)` wrote, whenever the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: two processes writing the same file never share a temp file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp's is 0600: others sharing the project could not read the file
        os.fchmod(fd, _mode_for(path))
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
        line = next(
            line
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("Umask:")
        )
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
        raise PetlocError(
            f"{path}: refusing to touch it, it is not inside {root}, the folder petloc owns here"
        )
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
    with _lock_file(path) as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            # a process id; whatever else is there, a few bytes of it
            holder = file.read(64).strip()
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
    with _lock_file(path) as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _lock_file(path: Path):
    """The lock file at `path`, created if absent; a FIFO or device there is `UnreadableFile`
    (opening a FIFO to write would wait for a reader)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o666
        )
    except OSError as err:
        raise UnreadableFile(path, _os_reason(err)) from None
    try:
        check_regular(path, None, "", lambda _: os.fstat(fd))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+")
    except BaseException:
        os.close(fd)
        raise
