"""Photos for the benchmarks: the team's real photos when ../shared/datasets/cats_dogs/train
is there (read in place, never copied into the repo), else synthetic pets of 128-500 px."""

from __future__ import annotations

from pathlib import Path

from common import scratch

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared/datasets/cats_dogs/train"
SYNTH_SIZES = (128, 256, 384, 500)


def photo_files(count: int) -> tuple[list[str], str]:
    """`count` JPEG paths and a phrase saying what they are."""
    if SHARED_PHOTOS.is_dir():
        files = sorted(str(p) for p in SHARED_PHOTOS.glob("*.jpg"))[:count]
        if len(files) == count:
            return files, f"{count} real photos from {SHARED_PHOTOS.parent.name}/train"
    from petloc.data.synth import generate  # only when needed: TensorFlow-free otherwise

    root = scratch("photos")
    per_size = -(-count // len(SYNTH_SIZES))
    for size in SYNTH_SIZES:
        generate(root / str(size), count=per_size, seed=size, size=size)
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:count]
    return files, f"{count} synthetic JPEGs of {SYNTH_SIZES[0]}-{SYNTH_SIZES[-1]} px"
