"""The Azure LLM inference trace's CSV file, read with every cell checked: an error names the file,
the row (as a spreadsheet numbers it) and the column. `lab.workload.azure_trace` turns it into a Workload.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lab.lengths import MAX_LENGTH

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Timestamps (datetime64[ns]), prompt and output token counts (int64) of every data row."""
    if not path.exists():
        raise FileNotFoundError(f"path: trace file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM before TIMESTAMP
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in TRACE_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path.name}: missing column(s) {missing}; expected columns {list(TRACE_COLUMNS)}"
            )
        cols = [header.index(c) for c in TRACE_COLUMNS]
        stamps, prompt, output = [], [], []
        for row in reader:
            if not row:
                continue
            # row numbers as a spreadsheet or an editor shows them: the header is row 1
            where = f"{path.name}: row {reader.line_num}"
            short = [name for name, c in zip(TRACE_COLUMNS, cols, strict=True) if c >= len(row)]
            if short:
                raise ValueError(f"{where}, column {short[0]}: missing (the row has {len(row)} cells)")
            stamp, context, generated = (row[c] for c in cols)
            stamps.append(_timestamp(stamp, where))
            prompt.append(_token_count(context, where, "ContextTokens"))
            output.append(_token_count(generated, where, "GeneratedTokens"))
    if not stamps:
        raise ValueError(f"{path.name}: no data rows")
    stamps = np.array(stamps, dtype="datetime64[ns]")
    if (np.diff(stamps).astype("int64") < 0).any():
        raise ValueError(f"{path.name}: column TIMESTAMP is not sorted")
    return stamps, np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64)


def _timestamp(cell: str, where: str) -> np.datetime64:
    try:
        t = np.datetime64(cell.strip(), "ns")
    except ValueError:
        t = np.datetime64("NaT", "ns")  # a unit: numpy 2.5 deprecates the generic one
    if np.isnat(t):  # an empty cell parses as NaT rather than failing
        raise ValueError(f"{where}, column TIMESTAMP: {cell!r} is not a timestamp like 2023-11-16 18:15:46.6805900")
    return t


def _token_count(cell: str, where: str, column: str) -> int:
    try:
        n = int(cell)
    except ValueError:
        raise ValueError(f"{where}, column {column}: {cell!r} is not a whole number") from None
    if n < 1:
        raise ValueError(f"{where}, column {column} must be >= 1, found {n}")
    if n > MAX_LENGTH:  # the counts go into int64 arrays: "Python int too large to convert to C long"
        raise ValueError(f"{where}, column {column} must be <= 2**62, found {n}")
    return n
