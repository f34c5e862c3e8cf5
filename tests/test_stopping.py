"""A stop signal is never lost: Python drops what a signal handler raises inside a weakref
callback or a `__del__` (garbage collection), and petloc sends that signal again."""

import signal
import subprocess
import sys

import pytest

from tests.helpers import petloc_env, store_client

# A stop that arrives while garbage collection runs a weakref callback, as SQLAlchemy's
# registry does in a sweep worker (the case that let a stopped worker finish its trial).
STOPPED_DURING_A_CALLBACK = """
import os, signal, sys, time, weakref
from petloc import stopping

stopping.install()

class Thing:
    pass

def on_collected(_ref):
    os.kill(os.getpid(), signal.{signal})
    for _ in range(200_000):  # the handler runs here, where Python drops what it raises
        pass

try:
    thing = Thing()
    ref = weakref.ref(thing, on_collected)
    del thing
    print("went on", flush=True)
    time.sleep(10)
    print("never stopped", flush=True)
except KeyboardInterrupt as err:
    print("stopped by", type(err).__name__, flush=True)
"""


@pytest.mark.parametrize("sig, raised", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")])
def test_a_stop_dropped_inside_a_callback_is_sent_again(sig, raised):
    done = subprocess.run([sys.executable, "-c", STOPPED_DURING_A_CALLBACK.format(signal=sig)], capture_output=True,
                          text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    assert done.stdout.splitlines() == ["went on", f"stopped by {raised}"], done.stdout + done.stderr
    assert "Traceback" not in done.stderr  # an interrupt is no bug: no "Exception ignored" trace


# A stop that library code turns into an error of its own (TensorFlow, tracing a model when
# SIGTERM came, raised "TypeError: Failed to convert elements of (None,) to Tensor").
STOPPED_INSIDE_A_LIBRARY = """
import os, signal
from petloc import stopping
from petloc.tracking import runs, store

stopping.install()
store.configure()
run_id = runs.create_run(runs.experiment_id("stops"), "trial")

def library_call():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200_000):
            pass
    except KeyboardInterrupt:
        raise TypeError("Failed to convert elements of (None,) to Tensor") from None

try:
    with runs.run_status(run_id):
        library_call()
except Exception as err:
    print("went on after", type(err).__name__)
except KeyboardInterrupt as err:
    print("stopped by", type(err).__name__, "after", type(err.__cause__).__name__)
print(run_id)
"""


def test_a_stop_turned_into_another_error_still_stops_and_ends_the_run_killed(tmp_path):
    done = subprocess.run([sys.executable, "-c", STOPPED_INSIDE_A_LIBRARY], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=petloc_env())
    said, run_id = done.stdout.splitlines()[-2:]
    assert said == "stopped by Terminated after TypeError", done.stdout + done.stderr
    run = store_client(tmp_path).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "Terminated: signal 15"
