"""`petloc data check`: what a dataset folder holds, how its boxes look, what is unusable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from petloc.data.readers import detect_layout, scan
from petloc.data.records import CLASS_NAMES, Sample, Skipped
from petloc.report import table

NO_SPLIT = "all"  # the counts' key when the layout has no train/valid/test split
MAX_SKIPPED_SHOWN = 20


@dataclass(frozen=True)
class Spread:
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        return (
            cls(float(np.min(values)), float(np.median(values)), float(np.max(values)))
            if values
            else None
        )


@dataclass
class DatasetReport:
    root: str
    layout: str
    counts: dict[str, dict[str, int]]  # split -> {"cat": n, "dog": n}
    box_width: Spread | None  # box width / image width
    box_height: Spread | None  # box height / image height
    box_area: Spread | None  # box area / image area
    image_width: Spread | None  # pixels
    image_height: Spread | None  # pixels
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return sum(sum(by_class.values()) for by_class in self.counts.values())

    def to_dict(self) -> dict:
        """JSON-ready: plain numbers and strings, skipped files as {"path", "reason"}."""
        out = asdict(self)
        out["usable"] = self.usable
        out["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in self.skipped]
        return out


def check_dataset(root: str | Path, *, on_bad: str = "skip") -> DatasetReport:
    """Decode every image of the dataset at `root` and summarise it."""
    layout = detect_layout(root)
    samples, skipped = [], []
    for item in scan(root, decode=True, on_bad=on_bad):
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            samples.append(item[0])
    return DatasetReport(
        str(root),
        layout,
        _counts(samples),
        *_box_spreads(samples),
        *_size_spreads(samples),
        skipped,
    )


def _counts(samples: list[Sample]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for sample in samples:
        by_class = counts.setdefault(sample.split or NO_SPLIT, dict.fromkeys(CLASS_NAMES, 0))
        by_class[CLASS_NAMES[sample.label]] += 1
    return counts


def _box_spreads(samples: list[Sample]) -> tuple[Spread | None, Spread | None, Spread | None]:
    widths = [(s.box[2] - s.box[0]) / s.width for s in samples]
    heights = [(s.box[3] - s.box[1]) / s.height for s in samples]
    return (
        Spread.of(widths),
        Spread.of(heights),
        Spread.of([w * h for w, h in zip(widths, heights, strict=True)]),
    )


def _size_spreads(samples: list[Sample]) -> tuple[Spread | None, Spread | None]:
    return Spread.of([s.width for s in samples]), Spread.of([s.height for s in samples])


def format_report(report: DatasetReport) -> str:
    """A compact table for people: counts, sizes, box spreads, then the skipped files."""
    lines = [
        f"{report.root}  (layout {report.layout}): {report.usable} usable, {len(report.skipped)} skipped",
        "",
    ]
    lines += [table(_count_rows(report.counts)), ""]
    spreads = {
        "image width px": report.image_width,
        "image height px": report.image_height,
        "box width / image": report.box_width,
        "box height / image": report.box_height,
        "box area / image": report.box_area,
    }
    lines.append(
        table([{"": name, **asdict(spread)} for name, spread in spreads.items() if spread])
    )
    if report.skipped:
        lines += ["", "skipped:"] + [f"  {s}" for s in report.skipped[:MAX_SKIPPED_SHOWN]]
        if len(report.skipped) > MAX_SKIPPED_SHOWN:
            lines.append(
                f"  ... and {len(report.skipped) - MAX_SKIPPED_SHOWN} more (--json lists all)"
            )
    return "\n".join(lines)


def _count_rows(counts: dict[str, dict[str, int]]) -> list[dict]:
    rows = [
        {"split": split, **by_class, "total": sum(by_class.values())}
        for split, by_class in counts.items()
    ]
    if len(counts) > 1:
        totals = {name: sum(by_class[name] for by_class in counts.values()) for name in CLASS_NAMES}
        rows.append({"split": "total", **totals, "total": sum(totals.values())})
    return rows
