"""How a petloc process is stopped: Ctrl+C (SIGINT) and SIGTERM both raise KeyboardInterrupt
in the main thread, so the MLflow runs in progress end KILLED instead of staying RUNNING.

Python runs a signal's handler wherever the main thread happens to be, and two places lose
what it raises; both let a stopped sweep worker train its next trial to the end:
- inside a weakref callback or a `__del__` (garbage collection, e.g. SQLAlchemy's class
  registry), Python prints it as "Exception ignored" and drops it: the signal is sent again
  once that callback has returned;
- some library code turns it into an error of its own (TensorFlow, tracing a model, raised
  a TypeError): `interrupt_behind` gives back the stop this process was asked for.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

REDELIVER_AFTER_SECONDS = 0.05  # long enough for the callback that dropped it to return

_stopped_by: int | None = None  # the first stop signal this process received


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl+C is."""


def install() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A shell without job control starts background commands with SIGINT ignored: leave that be.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _redeliver_dropped_interrupt


def interrupt_behind(err: BaseException) -> BaseException:
    """The interrupt this process was sent, where a library turned it into `err`; else `err`."""
    if isinstance(err, KeyboardInterrupt) or _stopped_by is None:
        return err
    stop = Terminated(f"signal {_stopped_by}") if _stopped_by == signal.SIGTERM else KeyboardInterrupt()
    stop.__cause__ = err
    return stop


def _on_sigterm(signum, frame):
    # `kill`, a CI timeout or a container stop sends SIGTERM. A second SIGTERM must not cut
    # the clean-up of the first short.
    global _stopped_by
    _stopped_by = _stopped_by or signum
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"signal {signum}")


def _on_sigint(signum, frame):
    global _stopped_by
    _stopped_by = _stopped_by or signum
    raise KeyboardInterrupt


def _redeliver_dropped_interrupt(unraisable) -> None:
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    if isinstance(unraisable.exc_value, Terminated):
        again = signal.SIGTERM
        signal.signal(signal.SIGTERM, _on_sigterm)  # the dropped one had set SIG_IGN
    else:
        again = signal.SIGINT
    timer = threading.Timer(REDELIVER_AFTER_SECONDS, os.kill, (os.getpid(), again))
    timer.daemon = True
    timer.start()
