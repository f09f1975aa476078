"""The API price table (data/prices.csv): loading, validation and the cost of one usage.

Prices are USD per million tokens. Reseller rows carry no prices of their own: they name the list
they resell and the CNY paid per credit dollar, and `lab.cost.reseller` turns that into USD.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from lab._checks import is_finite, is_int
from lab.cost.csv_checks import PriceTableError, check_seen, check_url, csv_records

CURRENCIES = ("USD", "CNY")  # USD: direct prices; CNY: reseller credit paid for in yuan
VERIFICATIONS = ("cross_checked", "single_source", "provider_claim")
PRICE_FIELDS = (
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
    "batch_input_per_mtok",
    "batch_output_per_mtok",
)
COLUMNS = (
    "provider",
    "model",
    *PRICE_FIELDS,
    "currency",
    "credit_cny_per_usd",
    "list_price_of",
    "source_url",
    "seen",
    "verification",
    "notes",
)
# Columns a table may leave out: no cached or batch column means no cache discount or batch API, as a
# blank field does. The required ones are those every table fills (a direct row needs input and output).
REQUIRED_COLUMNS = (
    "provider", "model", "input_per_mtok", "output_per_mtok", "currency", "source_url", "seen", "verification"
)
# What a reseller row takes from the list it resells. Not the batch prices: a batch API is a separate
# service, and no reseller row's source says the reseller offers one.
RESELLER_INHERITS = ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok")
# The rate HolySheep's own pages compare against (CNY 7.3 per USD); not a live market rate.
DEFAULT_MARKET_CNY_PER_USD = 7.3
_DATED_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")  # gpt-4.1-2025-04-14 -> gpt-4.1
_HYPHEN_VERSION = re.compile(r"-(\d+)-(\d+)$")  # Anthropic's API ids: claude-sonnet-4-5 -> claude-sonnet-4.5


class UnknownModelError(ValueError):
    """A model name that is not in the price table; the message lists the closest known names."""


@dataclass(slots=True)
class PriceRow:
    provider: str
    model: str
    input_per_mtok: float | None
    cached_input_per_mtok: float | None  # None: no cache discount, cached tokens cost the input price
    output_per_mtok: float | None
    batch_input_per_mtok: float | None  # None: no batch API
    batch_output_per_mtok: float | None
    currency: str
    credit_cny_per_usd: float | None  # resellers only: CNY paid for one USD of list price
    list_price_of: str | None  # resellers only: the provider whose list price the credit buys
    source_url: str
    seen: date
    verification: str
    notes: str = ""
    line: int = 0

    @property
    def is_reseller(self) -> bool:
        return self.credit_cny_per_usd is not None

    @property
    def offers_batch(self) -> bool:
        return self.batch_input_per_mtok is not None and self.batch_output_per_mtok is not None

    def usd_factor(self, market_cny_per_usd: float = DEFAULT_MARKET_CNY_PER_USD) -> float:
        """What one USD of this row's listed price costs in real USD (1 for direct providers)."""
        if not is_finite(market_cny_per_usd):
            raise ValueError(f"market_cny_per_usd must be a finite number > 0, got {market_cny_per_usd!r}")
        if not self.is_reseller:
            return 1.0
        return self.credit_cny_per_usd / market_cny_per_usd


@dataclass(slots=True)
class PriceTable:
    rows: list[PriceRow]
    path: Path | None = None

    def models(self) -> list[str]:
        return sorted({r.model for r in self.rows})

    def find(self, model: str, provider: str | None = None) -> PriceRow:
        """The row for `model`; with no provider, the one direct provider that sells it."""
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a non-empty string (e.g. 'gpt-4.1'), got {model!r}")
        if provider is not None and not isinstance(provider, str):
            raise ValueError(f"provider must be a string (e.g. 'openai') or None, got {provider!r}")
        # The name as given first: a table may price a snapshot on its own (gpt-4o-2024-05-13 cost more
        # than gpt-4o), and stripping its date would price it as the base model, or not find it at all.
        base = _normalise(model)
        names = (model.strip().lower(), base, _HYPHEN_VERSION.sub(r"-\1.\2", base))
        found = [(n, rows) for n in names if (rows := [r for r in self.rows if r.model == n])]
        if not found:
            if not self.rows:  # a table built by hand with no rows: "closest known: " named nothing
                raise UnknownModelError(f"unknown model {model!r}: the price table{table_location(self)} has no rows")
            close = difflib.get_close_matches(names[-1], self.models(), n=3, cutoff=0.4)
            hint = ", ".join(close) if close else ", ".join(self.models())
            raise UnknownModelError(f"unknown model {model!r}; closest known: {hint}")
        # with a provider, the first name it sells: an openai row for a dated snapshot hid a reseller's
        # row for the base model, and the reseller's price was refused
        wanted = provider.strip().lower() if provider is not None else None
        name, rows = next(((n, rows) for n, rows in found if any(r.provider == wanted for r in rows)), found[0])
        if provider is not None:
            chosen = [r for r in rows if r.provider == wanted]
            if not chosen:
                sellers = ", ".join(sorted(r.provider for r in rows))
                raise ValueError(f"provider {provider!r} has no price for {name!r}; sold by: {sellers}")
            return chosen[0]
        direct = [r for r in rows if not r.is_reseller] or rows
        if len(direct) > 1:
            sellers = ", ".join(sorted(r.provider for r in direct))
            raise ValueError(f"model {name!r} is sold by several providers ({sellers}); pass provider=")
        return direct[0]


def table_location(table: PriceTable) -> str:
    """' (path)' of a table loaded from a file, '' for one built by hand."""
    return f" ({table.path})" if table.path is not None else ""


def _normalise(model: str) -> str:
    return _DATED_SUFFIX.sub("", model.strip().lower())


def default_prices_path(name: str = "prices.csv") -> Path:
    """data/<name> in a source checkout, or lab/_data/<name> in an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "data" / name, here / "_data" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} not found in {here.parent / 'data'} or {here / '_data'}")


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read and validate a price table; reseller rows are filled in from the list they resell."""
    path = Path(path) if path is not None else default_prices_path()
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets save "CSV UTF-8" with a BOM
        records = csv_records(f, path.name, COLUMNS, REQUIRED_COLUMNS)
        rows = [_parse_row(raw, path.name, line) for line, raw in records]
    if not rows:  # a header alone loaded as a table that priced nothing: cost_table raised KeyError('cost_usd')
        raise PriceTableError(f"{path}: no price rows; a price table needs a header line and at least one row")
    seen_keys: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row.provider, row.model)
        if key in seen_keys:
            raise PriceTableError(
                f"{path.name} line {row.line}: duplicate {row.provider}/{row.model}, "
                f"first on line {seen_keys[key]}"
            )
        seen_keys[key] = row.line
    by_key = {(r.provider, r.model): r for r in rows}
    for row in rows:
        if row.is_reseller:
            listed = by_key.get((row.list_price_of, row.model))
            if listed is None or listed.is_reseller:
                raise PriceTableError(
                    f"{path.name} line {row.line} ({row.provider}/{row.model}): "
                    f"list_price_of={row.list_price_of!r} has no direct row for {row.model!r}"
                )
            for name in RESELLER_INHERITS:
                setattr(row, name, getattr(listed, name))
    return PriceTable(rows, path)


def _parse_row(raw: dict, filename: str, line: int) -> PriceRow:
    provider = (raw.get("provider") or "").strip().lower()
    model = (raw.get("model") or "").strip().lower()
    where = f"{filename} line {line} ({provider or '?'}/{model or '?'})"

    def fail(msg: str):
        raise PriceTableError(f"{where}: {msg}")

    if not provider or not model:
        fail("provider and model are required")
    currency = (raw.get("currency") or "").strip().upper()
    if currency not in CURRENCIES:
        fail(
            f"currency must be one of {', '.join(CURRENCIES)} (USD for direct prices, CNY for reseller "
            f"credit), got {raw.get('currency')!r}"
        )
    source_url = check_url(raw.get("source_url"), fail)
    seen = check_seen(raw.get("seen"), fail)
    verification = (raw.get("verification") or "").strip()
    if verification not in VERIFICATIONS:
        fail(f"verification must be one of {', '.join(VERIFICATIONS)}, got {verification!r}")
    prices = {name: _number(raw.get(name), name, fail) for name in PRICE_FIELDS}
    credit = _number(raw.get("credit_cny_per_usd"), "credit_cny_per_usd", fail)
    list_of = (raw.get("list_price_of") or "").strip().lower() or None
    if credit is not None or list_of is not None or currency == "CNY":
        if credit is None or credit == 0 or list_of is None or currency != "CNY":
            fail("a reseller row needs currency=CNY, credit_cny_per_usd > 0 and list_price_of")
        if any(v is not None for v in prices.values()):
            fail("a reseller row takes its prices from list_price_of; leave the price columns empty")
        if verification != "provider_claim":  # an exchange-rate deal is the reseller's word, never checked
            fail(f"verification must be provider_claim for a reseller row, got {verification!r}")
    else:
        for name in ("input_per_mtok", "output_per_mtok"):
            if prices[name] is None:
                fail(f"{name} is required")
        if (prices["batch_input_per_mtok"] is None) != (prices["batch_output_per_mtok"] is None):
            fail("give both batch_input_per_mtok and batch_output_per_mtok, or neither")
        _check_discounts(prices, fail)
    return PriceRow(
        provider,
        model,
        **prices,
        currency=currency,
        credit_cny_per_usd=credit,
        list_price_of=list_of,
        source_url=source_url,
        seen=seen,
        verification=verification,
        notes=(raw.get("notes") or "").strip(),
        line=line,
    )


def _check_discounts(prices: dict, fail) -> None:
    """Cached and batch prices are discounts: one above its list price is a typo in the table."""
    for discounted, full in (("cached_input_per_mtok", "input_per_mtok"), ("batch_input_per_mtok", "input_per_mtok"),
                             ("batch_output_per_mtok", "output_per_mtok")):
        if prices[discounted] is not None and prices[discounted] > prices[full]:
            fail(f"{discounted} ({prices[discounted]:g}) must not exceed {full} ({prices[full]:g})")


def _number(text, field: str, fail) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        fail(f"{field} must be a number, got {text!r}")
    if not (math.isfinite(value) and value >= 0):  # float() reads "nan" and "inf" too
        fail(f"{field} must be a finite number >= 0, got {text}")
    return value


@functools.lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    return load_prices()


def row_cost(
    row: PriceRow,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    batch: bool = False,
    market_cny_per_usd: float = DEFAULT_MARKET_CNY_PER_USD,
) -> float:
    """USD for one usage under one price row (see `usage_cost`)."""
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("cached_tokens", cached_tokens),
    ):
        # Whole tokens only: no API bills part of one, so 1000.5 is a mean or a typo (and inf priced to an
        # inf cost). numpy integers pass; a whole float from a pandas sum needs int() where it is made.
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not isinstance(batch, bool):  # a truthy "no" would silently price at the batch discount
        raise ValueError(f"batch must be True or False, got {batch!r}")
    if cached_tokens > prompt_tokens:
        raise ValueError(f"cached_tokens ({cached_tokens}) cannot exceed prompt_tokens ({prompt_tokens})")
    input_price, output_price = row.input_per_mtok, row.output_per_mtok
    cached_price = row.cached_input_per_mtok if row.cached_input_per_mtok is not None else input_price
    if batch:
        if not row.offers_batch:
            raise ValueError(f"{row.provider}/{row.model} has no batch prices; use batch=False")
        # The batch discount is applied to cached tokens too (Anthropic documents this stacking).
        cached_price *= row.batch_input_per_mtok / input_price if input_price else 1.0
        input_price, output_price = row.batch_input_per_mtok, row.batch_output_per_mtok
    listed = (
        (prompt_tokens - cached_tokens) * input_price
        + cached_tokens * cached_price
        + completion_tokens * output_price
    ) / 1e6
    return listed * row.usd_factor(market_cny_per_usd)


def usage_cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    provider: str | None = None,
    batch: bool = False,
    *,
    market_cny_per_usd: float = DEFAULT_MARKET_CNY_PER_USD,
    prices: PriceTable | None = None,
) -> float:
    """USD for one request: `cached_tokens` is the part of `prompt_tokens` billed at the cached price.

    A dated snapshot name (gpt-4.1-2025-04-14) with no row of its own is priced as its base model.
    Raises UnknownModelError (listing the closest names) for a model not in the table.
    """
    row = (prices or default_prices()).find(model, provider)
    return row_cost(row, prompt_tokens, completion_tokens, cached_tokens, batch, market_cny_per_usd)
