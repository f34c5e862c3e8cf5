"""What training prints: one compact line per epoch by default; Keras's own progress bars,
with every metric it keeps, when petloc runs with --verbose."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import keras

from petloc.report import figure

# `petloc --verbose` sets this logger to DEBUG; the logging level is a switch every layer can
# read without importing the command line.
LOGGER = logging.getLogger("petloc")

# The figures of an epoch line, in the names ShortMetricNames gives them.
SHOWN = ("loss", "miou", "accuracy")


def detailed() -> bool:
    """True under `petloc --verbose`: show the libraries' own output too."""
    return LOGGER.isEnabledFor(logging.DEBUG)


def keras_verbose() -> int:
    """Keras's `verbose` for fit: its progress only in detail (a bar on a terminal, a line per
    epoch in a log file), else silent and EpochLine speaks."""
    if not detailed():
        return 0
    return 1 if sys.stdout.isatty() else 2


class EpochLine(keras.callbacks.Callback):
    """`  epoch 3/8  loss 0.912  miou 0.412  accuracy 0.81 | val loss 0.95  miou 0.398  accuracy 0.79  (12 s)`:
    the short metric names only (Keras also keeps `box_miou`, `cls_accuracy`, ... under
    their output's names). Put it after ShortMetricNames."""

    def __init__(self, say: Callable[[str], None] = print):
        super().__init__()
        self.say, self.started = say, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = "  ".join(f"{name} {figure(name, logs[name])}" for name in SHOWN if name in logs)
        val = "  ".join(
            f"{name} {figure(name, logs['val_' + name])}" for name in SHOWN if "val_" + name in logs
        )
        seconds = time.perf_counter() - self.started
        self.say(
            f"  epoch {epoch + 1}/{self.params.get('epochs', '?')}  {train} | val {val}  ({seconds:.0f} s)"
        )
