"""One sweep, many processes: Keras Tuner's own distributed mode and one tracking server.

The chief (`chief.py`) holds the sweep as `petloc sweep` alone does (its folder, lock,
sweep.json and Keras Tuner's oracle) and answers the workers over gRPC with Keras Tuner's
oracle service, plus one method of petloc's own on the same port that tells a worker which
sweep and which parent run it serves. Each worker (`worker.py`) asks it for a trial, trains it
in a child run of that parent run, and reports back. This module holds what both sides share:
the address, the names on the wire and the heartbeat's rhythm.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable

from petloc.errors import PetlocError
from petloc.search import DEFAULT_CHIEF_ADDRESS

HEARTBEAT_SECONDS = 5.0
# A worker's patience with a chief that does not answer (gone, restarting, or never there).
CHIEF_PATIENCE_SECONDS = 30.0
# petloc's own method beside Keras Tuner's: the sweep a chief serves (JSON).
DESCRIBE_SERVICE, DESCRIBE_METHOD = "petloc.Sweep", "Describe"
TUNER_ID_METADATA = "petloc-tuner-id"  # a worker's heartbeat says whose it is
_ADDRESS = re.compile(r"(?P<host>[^\s:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})")


def parse_address(text: str, option: str) -> tuple[str, int]:
    """HOST:PORT, or a one-line error naming the option."""
    match = _ADDRESS.fullmatch(text or "")
    if not match or not 0 < int(match["port"]) < 65536:
        raise PetlocError(
            f"{option} {text!r}: not HOST:PORT (such as {DEFAULT_CHIEF_ADDRESS}); overrides go before the options"
        )
    return match["host"], int(match["port"])


def use_chief(host: str, port: int, tuner_id: str) -> None:
    # Keras Tuner reads its distributed settings from these variables when a tuner is made.
    os.environ.update(
        KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=str(port)
    )


@contextlib.contextmanager
def repeating(action: Callable[[], None], every: float, name: str):
    """Calls `action` every `every` seconds, on a thread of its own, while the block runs."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every):
            action()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * every)
