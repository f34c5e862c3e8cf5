"""What every benchmark shares: the machine it ran on, side-by-side timing, and writing its
table into benchmarks/RESULTS.md (each benchmark owns one marked block there; the history
around the blocks is kept)."""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).with_name("RESULTS.md")
STARTED = time.monotonic()  # each benchmark imports this first: its block says how long it took
BENCH_HEADING = "## `make bench`: ratios measured side by side"


def scratch(prefix: str) -> Path:
    """A temporary folder removed when the benchmark exits (photos, caches, stores)."""
    folder = Path(tempfile.mkdtemp(prefix=f"petloc-bench-{prefix}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )


def bf16_units() -> list[str]:
    return sorted(f for f in cpu_flags() if f in ("avx512_bf16", "amx_bf16", "amx_tile"))


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return f"{model}, {os.cpu_count()} cores, bf16 units: {', '.join(bf16_units()) or 'none'}"


def alternate(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each runner over `rounds`, the runners taking turns, so a change in
    the machine's load hits all of them alike."""
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def command() -> str:
    return "python " + " ".join(
        [
            str(Path(sys.argv[0]).relative_to(Path.cwd()))
            if Path(sys.argv[0]).is_absolute()
            else sys.argv[0],
            *sys.argv[1:],
        ]
    )


def write_block(name: str, title: str, body: str) -> None:
    """Replaces (or adds) benchmark `name`'s block in RESULTS.md: its title, the machine, the
    date and the command, then `body` (a markdown table and notes)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    took = round(time.monotonic() - STARTED)
    block = (
        f"<!-- bench:{name} -->\n### {title}\n\n"
        f"{stamp}, {machine()}, `{command()}`, {took // 60} min {took % 60:02d} s\n\n"
        f"{body.strip()}\n"
        f"<!-- /bench:{name} -->"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Measured results and their history\n"
    if BENCH_HEADING not in text:
        text = (
            text.rstrip()
            + f"\n\n{BENCH_HEADING}\n\nWritten by `make bench` (each script replaces its own block).\n"
        )
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    RESULTS.write_text(text)
    print(block)


def table(header: list[str], rows: list[list]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ratio: float, goal: float, at_most: bool = True) -> str:
    ok = ratio <= goal if at_most else ratio >= goal
    return f"{'meets' if ok else 'misses'} ({'<=' if at_most else '>='} {goal:g})"
