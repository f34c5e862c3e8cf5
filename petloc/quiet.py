"""Keeping the libraries' own lines (TensorFlow's start-up chatter, absl's warnings, Keras
Tuner's prints) off the terminal unless `petloc --verbose`. Free of TensorFlow itself: it runs
before TensorFlow is imported."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile

# TensorFlow's C++ start-up lines, written to file descriptor 2 while `import tensorflow` runs,
# before TF_CPP_MIN_LOG_LEVEL applies (tensorflow/tensorflow#100442): absl's notice, then
# glog-style INFO / WARNING lines (oneDNN, CUDA drivers, CPU features). Errors are kept.
TENSORFLOW_STARTUP_LOG = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d+\.\d+: [IW] \S+:\d+\] "
    r"|To enable the following instructions: .* rebuild TensorFlow"
)


# Keras Tuner prints these with print(), with no switch for the first: "Reloading Tuner from
# FILE" as a tuner resumes, and its trial banners (Oracle.verbose turns those off).
KERAS_TUNER_LINES = re.compile(r"Reloading Tuner from |Search: Running Trial #|Trial \S+ Complete ")

# Set in the environment of every process a petloc command starts (the model server, sweep
# workers), so that they stay as quiet, or as verbose, as the command.
VERBOSE_SETTING = "PETLOC_VERBOSE"


def libraries_quiet(verbose: bool) -> None:
    """Unless `verbose`: TensorFlow starts without its log lines and its and absl's Python
    loggers show errors only. Either way, processes started from this one follow suit."""
    os.environ[VERBOSE_SETTING] = "1" if verbose else "0"
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # a level the user set wins
    hide_tensorflow_startup_log()
    # TensorFlow's retracing notes; absl's warnings (such as those of SavedModel export)
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def started_verbose() -> bool:
    """True under `petloc --verbose` and in the processes it starts (VERBOSE_SETTING)."""
    return os.environ.get(VERBOSE_SETTING) == "1"


@contextlib.contextmanager
def keras_tuner_prints_hidden(hidden: bool = True):
    """Keras Tuner's prints (KERAS_TUNER_LINES) dropped from sys.stdout while `hidden`; every
    other line written meanwhile (petloc's own) goes out as it was."""
    if not hidden:
        yield
        return
    caught = io.StringIO()
    try:
        with contextlib.redirect_stdout(caught):
            yield
    finally:
        lines = caught.getvalue().splitlines(keepends=True)
        sys.stdout.write("".join(line for line in lines if not KERAS_TUNER_LINES.match(line)))
        sys.stdout.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Makes the first `import tensorflow` run with file descriptor 2 caught, and writes back
    what is not TensorFlow's start-up log. Only that import: later output goes straight out."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, its module run with the start-up log filtered out."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with native_stderr_filtered(TENSORFLOW_STARTUP_LOG):
            self.loader.exec_module(module)

    def __getattr__(self, name):  # what else the import system asks of it (resources, source)
        return getattr(self.loader, name)


def hide_tensorflow_startup_log() -> None:
    """TensorFlow, imported later by whichever command needs it, starts without its log lines."""
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


@contextlib.contextmanager
def native_stderr_filtered(hidden: re.Pattern):
    """A block's lines on file descriptor 2 that `hidden` matches, dropped.

    C++ libraries (TensorFlow, TFLite, converters) write to the process's file descriptor 2,
    not to sys.stderr, so redirecting sys.stderr misses them: while the block runs, descriptor
    2 goes to a temporary file; afterwards its lines that `hidden` does not match are written
    to stderr (`re.compile("")` drops them all). Not thread-safe: descriptor 2 is the process's."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not hidden.match(line)))
            sys.stderr.flush()
