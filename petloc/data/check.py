"""`petloc data check`: what a dataset folder holds, how its boxes look, what is unusable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from petloc.data.classes import dataset_classes
from petloc.data.readers import detect_layout, scan
from petloc.data.records import Sample, Skipped
from petloc.report import table

NO_SPLIT = "all"  # the counts' key when the layout has no train/valid/test split
MAX_SKIPPED_SHOWN = 20
# Up to this many classes the counts table has a column per class; past it (breeds) a row
# per class and a column per split, which stays readable for dozens of classes.
MAX_CLASS_COLUMNS = 3


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
    counts: dict[str, dict[str, int]]  # split -> {class: n} for every class, in class order
    box_width: Spread | None  # box width / image width
    box_height: Spread | None  # box height / image height
    box_area: Spread | None  # box area / image area
    image_width: Spread | None  # pixels
    image_height: Spread | None  # pixels
    skipped: list[Skipped] = field(default_factory=list)
    labels: str = "species"  # how the photos were labelled
    species: dict[str, str] = field(default_factory=dict)  # class -> species, where the data says

    @property
    def classes(self) -> list[str]:
        """The class names in the model's order (sorted)."""
        return list(next(iter(self.counts.values()), {}))

    @property
    def usable(self) -> int:
        return sum(sum(by_class.values()) for by_class in self.counts.values())

    def to_dict(self) -> dict:
        """JSON-ready: plain numbers and strings, skipped files as {"path", "reason"}."""
        out = asdict(self)
        out["usable"] = self.usable
        out["classes"] = self.classes
        out["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in self.skipped]
        return out


def check_dataset(
    root: str | Path, *, on_bad: str = "skip", labels: str = "species"
) -> DatasetReport:
    """Decode every image of the dataset at `root` and summarise it, its photos labelled by
    `labels` (species or breed)."""
    layout = detect_layout(root)
    samples, skipped = [], []
    for item in scan(root, decode=True, on_bad=on_bad, labels=labels):
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
        labels,
        {s.label: s.species for s in samples if s.species},
    )


def _counts(samples: list[Sample]) -> dict[str, dict[str, int]]:
    """split -> {class: photos} with every class of the dataset in each split (0 where none)."""
    species_of = {s.label: s.species for s in samples}
    names = dataset_classes(species_of).names
    counts: dict[str, dict[str, int]] = {}
    for sample in samples:
        counts.setdefault(sample.split or NO_SPLIT, dict.fromkeys(names, 0))[sample.label] += 1
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
    lines += [table(_count_rows(report)), ""]
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


def _count_rows(report: DatasetReport) -> list[dict]:
    """A row per split and a column per class, or for many classes a row per class (with
    its species where known) and a column per split; totals last either way."""
    counts, classes = report.counts, report.classes
    if len(classes) <= MAX_CLASS_COLUMNS:
        rows = [{"split": split, **by_class} for split, by_class in counts.items()]
        if len(counts) > 1:
            rows.append({"split": "total", **_totals(counts, classes)})
    else:
        rows = [
            {"class": name, **_species_cell(report, name), **_by_split(counts, name)}
            for name in classes
        ]
        rows.append({"class": "total", **_species_cell(report, ""), **_by_split(counts, None)})
    return [{**row, "total": sum(v for k, v in row.items() if isinstance(v, int))} for row in rows]


def _totals(counts: dict[str, dict[str, int]], classes: list[str]) -> dict[str, int]:
    return {name: sum(by_class[name] for by_class in counts.values()) for name in classes}


def _by_split(counts: dict[str, dict[str, int]], name: str | None) -> dict[str, int]:
    """One class's photos per split (every class's when `name` is None)."""
    return {
        split: by_class[name] if name is not None else sum(by_class.values())
        for split, by_class in counts.items()
    }


def _species_cell(report: DatasetReport, name: str) -> dict[str, str]:
    return {"species": report.species.get(name, "")} if report.species else {}
