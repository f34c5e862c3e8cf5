"""Start-up: `petloc --help` and a failing command's one-line error must not wait for
TensorFlow to import. Each timed as a process, side by side with `import tensorflow` alone.

    python benchmarks/startup_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import scratch, table, write_block

PETLOC = str(Path(sys.executable).with_name("petloc"))
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def seconds(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = str(scratch("startup"))
    # a typo: one line, exit 2
    (Path(folder) / "bad.yaml").write_text("name: x\ntrain:\n  epoch: 3\n")
    shutil.copy(EXPERIMENTS / "quick.yaml", folder)
    commands = {
        "`petloc --help`": [PETLOC, "--help"],
        "`petloc train bad.yaml` (mistyped key: one-line error)": [PETLOC, "train", "bad.yaml"],
        "`petloc sweep quick.yaml space.backbone=nope` (unknown backbone: one-line error)": [
            PETLOC,
            "sweep",
            "quick.yaml",
            "space.backbone=nope",
        ],
        "`petloc config quick.yaml space.box_loss=nope` (unknown box loss: one-line error)": [
            PETLOC,
            "config",
            "quick.yaml",
            "space.box_loss=nope",
        ],
        "`petloc predict model.keras x.jpg --out missing/file` (bad --out: one line before the model loads)": [
            PETLOC,
            "predict",
            "model.keras",
            "x.jpg",
            "--out",
            "bad.yaml/sub",
        ],
        "`python -c 'import tensorflow'`": [sys.executable, "-c", "import tensorflow"],
    }
    best = {
        name: min(seconds(cmd, folder) for _ in range(args.rounds))
        for name, cmd in commands.items()
    }
    tf_import = best.pop("`python -c 'import tensorflow'`")
    rows = [
        [
            f"{name} / `import tensorflow`",
            f"{t:.2f} / {tf_import:.2f} s",
            f"**{t / tf_import:.2f}x**",
            "meets (< 0.5: no TensorFlow)"
            if t / tf_import < 0.5
            else "misses (waits for TensorFlow)",
        ]
        for name, t in best.items()
    ]
    write_block(
        "startup",
        "Start-up: `python benchmarks/startup_speed.py`",
        table(["what (A / B)", "A / B", "ratio", "goal"], rows),
    )


if __name__ == "__main__":
    main()
