"""Child processes petloc starts (servers, a sweep's chief and workers): how they are stopped."""

from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 30.0) -> None:
    """Send `sig` to `process` if it still runs, give it `grace` seconds to end (closing its
    MLflow runs, stopping its own children), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
