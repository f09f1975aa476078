"""Checks shared by the price and GPU tables (data/prices.csv, data/gpu_prices.csv): the CSV's header and
records, and the source_url and seen columns every row must carry."""

from __future__ import annotations

import csv
import difflib
import re
from datetime import date
from urllib.parse import urlsplit

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class PriceTableError(ValueError):
    """A row of a price table that fails validation; the message names the file, line and field."""


def csv_records(f, filename: str, columns: tuple[str, ...], required: tuple[str, ...]):
    """(first line, {column: text}) per CSV record after the header, with the line an editor shows.

    Counting records instead would misnumber every row after a skipped blank line or a quoted note
    that spans lines. A record must have one field per column: an unquoted comma in a note made one
    more, and zipping it with the header dropped the rest of the note.
    """
    reader = csv.reader(f)
    header = [name.strip() for name in next((fields for fields in reader if fields), [])]
    if not header:  # an empty file: the loader says "no price rows"
        return
    check_header(header, f"{filename} line {reader.line_num} (header)", columns, required)
    start = reader.line_num + 1
    for fields in reader:
        if fields:  # a blank line is no record (csv.DictReader skips it too)
            if len(fields) != len(header):
                hint = ("put a field that holds a comma in double quotes" if len(fields) > len(header)
                        else "give every column a field, an empty one too")
                raise PriceTableError(
                    f"{filename} line {start}: {len(fields)} fields, but the header has {len(header)} "
                    f"columns; {hint}"
                )
            yield start, dict(zip(header, fields, strict=True))
        start = reader.line_num + 1


def check_header(header: list[str], where: str, columns: tuple[str, ...], required: tuple[str, ...]) -> None:
    """Refuse an unknown, repeated or missing column: a misspelled one was read as blank (cached_per_mtok
    lost the cache discount) and a repeated one silently kept its last field."""
    problems = []
    for name in header:
        if name not in columns:
            close = difflib.get_close_matches(name, columns, n=1)
            problems.append(f"unknown column {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        problems.append(f"repeated column {', '.join(map(repr, repeated))}")
    missing = [name for name in required if name not in header]
    if missing:
        problems.append(f"missing column {', '.join(map(repr, missing))}")
    if problems:
        optional = [name for name in columns if name not in required]
        raise PriceTableError(
            f"{where}: {'; '.join(problems)}. Columns: {', '.join(required)} (required), "
            f"{', '.join(optional)} (optional)"
        )


def check_url(text, fail) -> str:
    """The source_url column: an http(s) URL with a host ("https://" alone, or "https:// see notes", is none)."""
    text = (text or "").strip()
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # an unclosed "[" in the host
        ok = False
    if not ok or any(c.isspace() for c in text):
        fail(f"source_url must be an http(s) URL with a host and no spaces (https://example.com/pricing), "
             f"got {text!r}")
    return text


def check_seen(text, fail) -> date:
    """The seen column: a date written YYYY-MM-DD, not after today. date.fromisoformat alone also reads
    2026-W47-1 and 20261123, and a date still to come cannot have been seen."""
    text = (text or "").strip()
    if not _ISO_DATE.fullmatch(text):
        fail(f"seen must be a date YYYY-MM-DD, got {text!r}")
    try:
        seen = date.fromisoformat(text)
    except ValueError:  # 2026-02-30
        fail(f"seen must be a real date YYYY-MM-DD, got {text!r}")
    if seen > date.today():
        fail(f"seen must not be after today ({date.today()}), got {text}")
    return seen
