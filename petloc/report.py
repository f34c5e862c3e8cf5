"""Tables for people: the terminal and the Markdown/CSV artifacts format numbers alike."""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING

from petloc.quantities import decimals_of, is_count, typed

if TYPE_CHECKING:
    import pandas

SIGNIFICANT = 4  # digits a column's largest number keeps: 0.7281 mIoU, 16.60 ms, 123.4 s
MAX_DECIMALS = 8


def number(value) -> str:
    """A cell: whole numbers without decimals (837900, not 8.379e+05), others to 4
    significant digits (0.001885, not 0.0018852184173460574)."""
    if not _is_number(value):
        return str(value)
    if isinstance(value, int) or value.is_integer() or abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.{_decimals(value)}f}"


def figure(name: str, value) -> str:
    """A figure as every table shows quantity `name` (`miou`, `best_val_miou`: 0.734;
    `latency_ms_b1`: 4.47), one count of decimals per quantity; other names as `number`."""
    decimals = decimals_of(name)
    if decimals is None or not _is_number(value):
        return number(value)
    return f"{value:.{decimals}f}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_numeric(value) -> bool:
    """A number or NaN / infinity: a cell right-aligned with the numbers."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _decimals(value: float) -> int:
    """Decimals that show `value` to SIGNIFICANT digits, trailing zeros dropped."""
    if value == 0 or float(value).is_integer():
        return 0
    wanted = SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))
    text = f"{value:.{max(0, min(wanted, MAX_DECIMALS))}f}".rstrip("0")
    return len(text.partition(".")[2])


def column(values: list) -> list[str]:
    """One column's cells. Numbers share one count of decimals so that they line up: as
    many as the most precise value needs, at most SIGNIFICANT digits of the largest."""
    numbers = [v for v in values if _is_number(v)]
    if not numbers:
        return [str(v) for v in values]
    largest = max(abs(v) for v in numbers)
    cap = SIGNIFICANT - 1 - math.floor(math.log10(largest)) if largest else 0
    decimals = max(0, min(max(_decimals(v) for v in numbers), cap, MAX_DECIMALS))
    return [f"{v:.{decimals}f}" if _is_number(v) else str(v) for v in values]


def _numeric(values: list) -> bool:
    return any(_is_numeric(v) for v in values) and all(
        _is_numeric(v) for v in values if v not in ("", None)
    )


def table(
    rows: list[dict],
    columns: list[str] | None = None,
    markdown: bool = False,
    same_decimals: bool = False,
) -> str:
    """`rows` aligned under their keys: numbers right, text left; Markdown when asked.
    A column named for a quantity (petloc.quantities: `best_val_miou`, `latency_ms_b1`, ...)
    shows it with that quantity's decimals, in every table. Other columns: `same_decimals`
    gives each one's numbers one count of decimals, for tables whose columns each hold one
    quantity (a leaderboard); else each cell keeps 4 significant digits."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def cells_of(name: str, values: list) -> list[str]:
        if decimals_of(name) is not None:
            return [figure(name, v) for v in values]
        return column(values) if same_decimals else [number(v) for v in values]

    by_column = [cells_of(c, [row.get(c, "") for row in rows]) for c in columns]
    cells = [list(row) for row in zip(*by_column, strict=True)]
    right = [_numeric([row.get(c, "") for row in rows]) for c in columns]
    if markdown:
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" if r else "---" for r in right) + "|",
        ]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(columns), *(line(row) for row in cells)])


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """The rows as CSV, numbers at full precision (a CSV is read by programs), counts whole."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows([[typed(c, row.get(c, "")) for c in columns] for row in rows])
    return out.getvalue()


def frame(rows: list[dict], columns: list[str]) -> pandas.DataFrame:
    """The rows as a DataFrame (the Python API's leaderboard, the MLflow table's JSON): a
    figure a row lacks ('' in the CSV) is missing, numbers at full precision, counts whole
    (pandas' nullable Int64, so a missing count does not turn the column's numbers to floats)."""
    import pandas

    cells = [
        {c: (None if row.get(c, "") == "" else typed(c, row[c])) for c in columns} for row in rows
    ]
    found = pandas.DataFrame(cells, columns=columns)
    for c in columns:
        if is_count(c) and all(cell[c] is None or isinstance(cell[c], int) for cell in cells):
            found[c] = found[c].astype("Int64")
    return found
