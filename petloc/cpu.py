"""What this CPU can do, from the flags /proc/cpuinfo lists: some speed choices depend on it."""

from __future__ import annotations

from pathlib import Path

from petloc.files import UnreadableFile, read_bounded

CPUINFO = Path("/proc/cpuinfo")
CPUINFO_LIMIT = 16_000_000  # bytes: about 1.5 KB a core


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512f, avx512_bf16, ...); none where the file cannot be read."""
    try:
        return frozenset(read_bounded(cpuinfo, CPUINFO_LIMIT).decode("utf-8", "replace").split())
    except (OSError, UnreadableFile):
        return frozenset()
