"""What a token costs on a GPU you rent, and how much traffic it takes before renting beats an API.

USD per million tokens = hourly price / (tokens per second x 3600 x utilisation) x 1e6. Throughput
comes from a number or a measured/simulated `Result`; utilisation (the share of paid hours the GPU
runs at that throughput) is always given explicitly.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from lab._checks import is_finite, is_int, is_number
from lab.cost.csv_checks import PriceTableError, check_seen, check_url, csv_records
from lab.cost.prices import default_prices_path
from lab.metrics import Result

THROUGHPUT_KINDS = ("output", "total")  # output tokens/s, or prompt + output tokens/s
HOURS_PER_MONTH = 730.0  # 365 x 24 / 12


class UnknownGpuError(ValueError):
    """A GPU name that is not in the GPU price table; the message lists the closest known names."""


@dataclass(slots=True)
class GpuPrice:
    gpu: str
    memory_gb: float
    provider: str
    offering: str
    usd_per_gpu_hour: float
    source_url: str
    seen: date
    notes: str = ""
    line: int = 0


COLUMNS = ("gpu", "memory_gb", "provider", "offering", "usd_per_gpu_hour", "source_url", "seen", "notes")
REQUIRED_COLUMNS = ("gpu", "memory_gb", "provider", "usd_per_gpu_hour", "source_url", "seen")


def load_gpu_prices(path: str | Path | None = None) -> list[GpuPrice]:
    """Read and validate data/gpu_prices.csv (USD per GPU-hour, source and date per row).

    Rows are on-demand hourly prices, or where `offering` says so (the shipped L4 row) an always-on
    price per second x 3600.
    """
    path = Path(path) if path is not None else default_prices_path("gpu_prices.csv")
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets save "CSV UTF-8" with a BOM
        records = csv_records(f, path.name, COLUMNS, REQUIRED_COLUMNS)
        rows = [_parse_gpu_row(raw, path.name, line) for line, raw in records]
    if not rows:  # a header alone: gpu_price then said "known: " and named nothing
        raise PriceTableError(f"{path}: no price rows; a GPU price table needs a header line and at least one row")
    first_line: dict[tuple[str, str, str], int] = {}
    for row in rows:
        # gpu_price picks the cheapest row: a second "h100-sxm" row of the same offering silently won
        key = (gpu_key(row.gpu), row.provider, " ".join(row.offering.lower().split()))
        if key in first_line:
            raise PriceTableError(
                f"{path.name} line {row.line}: duplicate {row.provider}/{row.gpu} (offering {row.offering!r}), "
                f"first on line {first_line[key]}"
            )
        first_line[key] = row.line
    return rows


def _parse_gpu_row(raw: dict, filename: str, line: int) -> GpuPrice:
    provider, gpu = (raw.get("provider") or "").strip(), (raw.get("gpu") or "").strip()
    where = f"{filename} line {line} ({provider or '?'}/{gpu or '?'})"

    def fail(msg: str):
        raise PriceTableError(f"{where}: {msg}")

    if not provider or not gpu:
        fail("gpu and provider are required")
    price, memory = (_positive_number(raw, name, fail) for name in ("usd_per_gpu_hour", "memory_gb"))
    return GpuPrice(
        gpu,
        memory,
        provider.lower(),
        (raw.get("offering") or "").strip(),
        price,
        check_url(raw.get("source_url"), fail),
        check_seen(raw.get("seen"), fail),
        (raw.get("notes") or "").strip(),
        line,
    )


def _positive_number(raw: dict, name: str, fail) -> float:
    """One numeric field, its error naming it and what it held."""
    text = (raw.get(name) or "").strip()
    try:
        value = float(text)
    except ValueError:
        fail(f"{name} must be a number, got {text!r}")
    if not is_finite(value):  # float() reads "inf" and "nan" too
        fail(f"{name} must be a finite number > 0, got {text!r}")
    return value


def gpu_key(name: str) -> str:
    """A GPU name without case, spaces, hyphens or underscores: lab.sim says "H100-SXM" and "A100-80GB",
    the price table "H100 SXM" and "A100 80GB"; both become "h100sxm" and "a10080gb"."""
    return re.sub(r"[\s\-_]+", "", name).lower()


def gpu_price(gpu: str, provider: str | None = None, path: str | Path | None = None) -> GpuPrice:
    """The cheapest listed row for `gpu` (optionally from one provider); "H100-SXM" finds "H100 SXM".
    Rows at the same price go to the first in the table (give `provider` to choose)."""
    if not isinstance(gpu, str) or (provider is not None and not isinstance(provider, str)):
        raise ValueError(f"gpu (e.g. 'H100 SXM') and provider must be strings, got {gpu!r}, {provider!r}")
    rows = load_gpu_prices(path)
    key = gpu_key(gpu)
    matches = [
        r
        for r in rows
        if gpu_key(r.gpu) == key and (provider is None or r.provider == provider.strip().lower())
    ]
    if not matches:
        names = sorted({r.gpu for r in rows})
        by_key = {gpu_key(n): n for n in names}
        close = difflib.get_close_matches(key, sorted(by_key), n=3, cutoff=0.3)
        known = sorted({f"{r.gpu} ({r.provider})" for r in rows})
        raise UnknownGpuError(
            f"gpu: no price for {gpu!r} (provider={provider!r}); closest GPUs: "
            f"{', '.join(by_key[k] for k in close) or '-'}; known: {', '.join(known)}"
        )
    return min(matches, key=lambda r: r.usd_per_gpu_hour)


def tokens_per_second(throughput: float | Result, kind: str = "output") -> float:
    """A throughput given as a number, or read from a Result's summary (`output` or `total` tokens)."""
    if kind not in THROUGHPUT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(THROUGHPUT_KINDS)}, got {kind!r}")
    if isinstance(throughput, Result):
        summary = throughput.summary()
        if not summary["completed"]:  # its throughput is 0, and "got 0.0 tokens/s" hid why
            raise ValueError(f"throughput: the Result has no completed request (of {len(throughput.requests)}); "
                             "a run whose requests all failed has no throughput to price")
        value = summary["output_throughput" if kind == "output" else "total_token_throughput"]
    elif is_number(throughput):
        value = float(throughput)
    else:
        raise ValueError(f"throughput must be tokens/s (a number) or a lab.metrics.Result, got {type(throughput).__name__}")
    if not is_finite(value):  # inf tokens/s would make every token free
        raise ValueError(f"throughput must be a finite number > 0 tokens/s, got {value}")
    return value


def _check_gpus(gpus, throughput) -> None:
    """A Result from several replicas reports their combined throughput: priced on one GPU's rent it
    came out cheaper per token than one replica at full load."""
    if not is_int(gpus) or gpus < 1:
        raise ValueError(f"gpus must be an integer >= 1, got {gpus!r}")
    if isinstance(throughput, Result):
        replicas = len({step.replica for step in throughput.steps})
        if gpus < replicas:
            raise ValueError(f"gpus: the Result ran on {replicas} replicas, whose throughput is their sum; give "
                             f"gpus={replicas} (times the tensor-parallel GPUs of each), got {gpus}")


def self_hosted_usd_per_mtok(
    gpu_usd_per_hour: float,
    throughput: float | Result,
    *,
    utilization: float,
    kind: str = "output",
    gpus: int = 1,
) -> float:
    """USD per million tokens on `gpus` rented GPUs that produce `throughput` tokens/s while busy.

    `utilization` is the share of paid hours spent at that throughput (1.0: busy every hour you pay for).
    `gpus` counts every GPU the throughput took: replicas times tensor-parallel GPUs each.
    A Result's throughput is already held down by its arrivals when the run was lightly loaded: take
    it from a saturated run (requests waiting) for the rate "while busy", or count its idle time once,
    in the Result or in `utilization`, not in both.
    """
    if not is_finite(gpu_usd_per_hour):
        raise ValueError(f"gpu_usd_per_hour must be a finite number > 0, got {gpu_usd_per_hour!r}")
    if not is_number(utilization) or not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization!r}")
    _check_gpus(gpus, throughput)
    tokens_per_paid_hour = tokens_per_second(throughput, kind) * 3600 * utilization
    return gpu_usd_per_hour * gpus / tokens_per_paid_hour * 1e6


@dataclass(slots=True)
class BreakEven:
    api_usd_per_mtok: float
    gpu_usd_per_month: float
    break_even_mtok_per_month: float  # API spend equals the rent at this volume
    capacity_mtok_per_month: float  # what the rented GPUs can do at full utilisation
    break_even_utilization: float  # break-even volume / capacity; > 1 means renting never pays

    @property
    def renting_can_pay(self) -> bool:
        return self.break_even_utilization <= 1.0


def break_even(
    api_usd_per_mtok: float,
    gpu_usd_per_hour: float,
    throughput: float | Result,
    *,
    kind: str = "output",
    gpus: int = 1,
    hours_per_month: float = HOURS_PER_MONTH,
) -> BreakEven:
    """Monthly volume at which an API (priced per million tokens of `kind`) costs as much as renting.

    Price the API on the same token basis as the throughput: for `kind="output"` use what the API
    charges per million output tokens of your workload, prompts included (see docs/costs.md).
    """
    for name, value in (("api_usd_per_mtok", api_usd_per_mtok), ("gpu_usd_per_hour", gpu_usd_per_hour),
                        ("hours_per_month", hours_per_month)):
        if not is_finite(value):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    _check_gpus(gpus, throughput)
    rent = gpu_usd_per_hour * gpus * hours_per_month
    capacity = tokens_per_second(throughput, kind) * 3600 * hours_per_month / 1e6
    volume = rent / api_usd_per_mtok
    return BreakEven(api_usd_per_mtok, rent, volume, capacity, volume / capacity)
