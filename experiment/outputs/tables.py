"""Table text: values formatted the same way in every TSV/CSV output (pure).

Missing values (None, NaN, infinities) are written `n/a`, never an empty cell or `NaN`.
Floats get a fixed number of decimals per column; times default to 4 (0.1 ms).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping, Sequence

MISSING = "n/a"
TIME_DECIMALS = 4
PRESSURE_DECIMALS = 3


def format_value(value: Any, decimals: int = TIME_DECIMALS) -> str:
    """One cell: `n/a` for missing, fixed decimals for floats, no tabs or newlines."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        text = f"{value:.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    text = str(value)
    return " ".join(text.split()) if any(c in text for c in "\t\r\n") else text


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]],
                decimals: Mapping[str, int] | None = None) -> list[list[str]]:
    """Every cell as text, with per-column decimals (default TIME_DECIMALS)."""
    decimals = decimals or {}
    return [[format_value(v, decimals.get(c, TIME_DECIMALS)) for c, v in zip(columns, row)] for row in rows]


def tsv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
             decimals: Mapping[str, int] | None = None, header: bool = True) -> str:
    """Tab-separated text with '\\n' line ends (BIDS tabular file rules)."""
    lines = ["\t".join(columns)] if header else []
    lines += ["\t".join(cells) for cells in format_rows(columns, rows, decimals)]
    return "".join(line + "\n" for line in lines)


def csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
             decimals: Mapping[str, int] | None = None) -> str:
    """Comma-separated text with a header line; quoting only where a value needs it."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(format_rows(columns, rows, decimals))
    return buf.getvalue()
