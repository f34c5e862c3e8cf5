"""The tracking side under load, without TensorFlow: benchmarks/tracking_load.py in small,
16 worker processes logging trial-sized runs at once to petloc tracking-server on PostgreSQL."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import petloc_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tracking_load.py"


@pytest.mark.slow  # PostgreSQL, a tracking server and 16 client processes: about a minute
def test_sixteen_workers_at_once_lose_and_double_nothing():
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--workers",
            "16",
            "--runs",
            "32",
            "--rounds",
            "1",
            "--no-write",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=petloc_env(),
    )
    # exit 1 on any error, loss or double
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| 16 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 32 runs, 0 errors, none lost or doubled
    assert cells[:2] == ["16", "32"] and cells[4:6] == ["0", "none"]
