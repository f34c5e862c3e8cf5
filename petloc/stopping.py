"""How a petloc process is stopped: Ctrl+C (SIGINT) and SIGTERM both raise KeyboardInterrupt
in the main thread, so the MLflow runs in progress end KILLED instead of staying RUNNING.

Python runs a signal's handler wherever the main thread happens to be, and the interrupt it
raises can be lost; a stopped sweep worker then trained its next trial to the end:
- inside a weakref callback or a `__del__` (garbage collection, e.g. SQLAlchemy's class
  registry), Python prints it as "Exception ignored" and drops it: it is raised again a
  moment later, once the collection is over;
- library code may turn it into an error of its own (TensorFlow, tracing a model, raised a
  TypeError), or swallow it: `interrupt_behind` and `raise_if_stopped` give back the stop
  this process was asked for, where petloc ends a run or starts the next piece of work;
- inside a call whose answer must not be lost (the store creating a run: the run exists,
  but its ID never reaches the code that would end it, and it stays RUNNING): `held_back`
  holds the stop until the call returns, and `pending` gives it back.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

RAISE_AGAIN_AFTER_SECONDS = 0.05  # out of the hook, where anything raised is dropped too

_stopped_by: int | None = None  # the first stop signal this process received
_held = 0  # > 0 inside `held_back`: a stop is recorded, not raised
_earlier_hook = sys.unraisablehook


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl+C is."""


def install() -> None:
    global _earlier_hook
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A shell without job control starts background commands with SIGINT ignored: leave that be.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGALRM, _on_alarm)
    # installed twice, it would call itself
    if sys.unraisablehook is not _raise_dropped_interrupt_again:
        _earlier_hook, sys.unraisablehook = sys.unraisablehook, _raise_dropped_interrupt_again


@contextmanager
def handled():
    """`install` for the block (a library call, such as a tracked search from a notebook):
    in the main thread only, as Python allows, and the earlier handlers back after it. A stop
    left over from an earlier block does not stop this one."""
    global _stopped_by
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    earlier = {
        number: signal.getsignal(number)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
    }
    _stopped_by = None
    install()
    try:
        yield
    finally:
        for number, handler in earlier.items():
            signal.signal(number, handler)


def interrupt_behind(err: BaseException) -> BaseException:
    """The interrupt this process was sent, where a library turned it into `err`; else `err`."""
    if isinstance(err, KeyboardInterrupt) or _stopped_by is None:
        return err
    reason = str(err).strip().splitlines()
    stop = _interrupt(f" (surfaced as {type(err).__name__}{': ' + reason[0] if reason else ''})")
    stop.__cause__ = err
    return stop


def raise_stop_behind(err: Exception) -> None:
    """In an `except Exception`: raise the stop behind `err`, where a library turned it into `err`."""
    stop = interrupt_behind(err)
    if stop is not err:
        raise stop


def raise_if_stopped() -> None:
    """Before the next piece of work (a trial): the stop this process was sent, if some
    library swallowed it."""
    if _stopped_by is not None:
        raise _interrupt(" (it had been swallowed)")


@contextmanager
def held_back():
    """A stop signal that arrives inside is recorded, not raised: the block's call completes,
    and the caller asks `pending()` after it."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1


def pending() -> KeyboardInterrupt | None:
    """The stop this process was sent (held back, or swallowed by a library), as what to raise; else None."""
    return None if _stopped_by is None else _interrupt()


def _interrupt(detail: str = "") -> KeyboardInterrupt:
    return (
        Terminated(f"signal {_stopped_by}{detail}")
        if _stopped_by == signal.SIGTERM
        else KeyboardInterrupt(detail.strip())
    )


def _on_sigterm(signum, frame):
    # `kill`, a CI timeout or a container stop sends SIGTERM. A second SIGTERM must not cut
    # the clean-up of the first short.
    global _stopped_by
    _stopped_by = _stopped_by or signum
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not _held:
        raise Terminated(f"signal {signum}")


def _on_sigint(signum, frame):
    global _stopped_by
    again = _stopped_by is not None
    _stopped_by = _stopped_by or signum
    # a second Ctrl+C does not wait for a held call (a tracking server retrying for a minute)
    if not _held or again:
        raise KeyboardInterrupt


def _on_alarm(signum, frame):
    if not _held:  # held: `pending()` gives it back once the call is over
        raise _interrupt()


def _raise_dropped_interrupt_again(unraisable) -> None:
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        _earlier_hook(unraisable)
        return
    # A timer of the kernel's: no lock to take while the garbage collector runs.
    signal.setitimer(signal.ITIMER_REAL, RAISE_AGAIN_AFTER_SECONDS)
