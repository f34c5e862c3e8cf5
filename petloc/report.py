"""Tables for people: the terminal and the Markdown/CSV artifacts format numbers alike."""

from __future__ import annotations

import csv
import io


def number(value) -> str:
    """A cell: whole numbers without decimals (837900, not 8.379e+05), others to 4
    significant digits (0.001885, not 0.0018852184173460574)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) >= 1):
        return f"{value:.0f}"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.4g}"


def _numeric(values: list) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v not in ("", None))


def table(rows: list[dict], columns: list[str] | None = None, markdown: bool = False) -> str:
    """`rows` aligned under their keys: numbers right, text left; Markdown when asked."""
    if not rows:
        return ""
    columns = columns or list(rows[0])
    cells = [[number(row.get(c, "")) for c in columns] for row in rows]
    right = [_numeric([row.get(c, "") for row in rows]) for c in columns]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    return "\n".join([line(columns), *(line(row) for row in cells)])


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """The rows as CSV, numbers at full precision: a CSV is read by programs."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows([[row.get(c, "") for c in columns] for row in rows])
    return out.getvalue()
