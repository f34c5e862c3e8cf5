"""What this CPU can do, from the flags /proc/cpuinfo lists: some speed choices depend on it."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512f, avx512_bf16, ...); none where the file cannot be read."""
    try:
        return frozenset(cpuinfo.read_text().split())
    except OSError:
        return frozenset()
