"""What a measured `Result` or a planned `Workload` costs under every provider in the price table.

Tokens come from the run (completed requests only; the frame counts the others in
`requests_not_costed`) or from the workload's prompt and output lengths; the answer is a pandas
DataFrame, cheapest first.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab._checks import is_int, is_number
from lab.cost.prices import DEFAULT_MARKET_CNY_PER_USD, PriceTable, default_prices, row_cost, table_location
from lab.metrics import Result
from lab.workload import Workload


@dataclass(slots=True)
class TokenCounts:
    requests: int
    prompt_tokens: int
    completion_tokens: int

    def __post_init__(self):
        for name in ("requests", "prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            # -5 requests priced to a negative cost, True was counted as 1 and "1000" failed in the arithmetic
            if not is_int(value) or value < 0:
                raise ValueError(f"TokenCounts.{name} must be an integer >= 0, got {value!r}")


def token_counts(run: Result | Workload | TokenCounts) -> TokenCounts:
    """Tokens a run used (completed requests of a Result) or will use (every request of a Workload)."""
    if isinstance(run, TokenCounts):  # counts planned by hand: a month of traffic, a widget's sliders
        return run
    if isinstance(run, Result):
        done = run.completed
        return TokenCounts(len(done), sum(r.prompt_tokens for r in done), sum(r.output_tokens for r in done))
    if isinstance(run, Workload):
        missing = [r.id for r in run.requests if r.prompt_len is None]
        if missing:
            raise ValueError(
                f"workload requests {missing[:5]} have no prompt_len; give prompt_len or "
                "prompt_token_ids (text prompts have no token count until tokenized)"
            )
        return TokenCounts(len(run), sum(r.prompt_len for r in run), sum(r.output_len for r in run))
    raise TypeError(f"run must be a lab.metrics.Result, a lab.workload.Workload or a TokenCounts, "
                    f"got {type(run).__name__}")


def cost_table(
    run: Result | Workload | TokenCounts,
    cached_fraction: float = 0.0,
    batch: bool = False,
    market_cny_per_usd: float = DEFAULT_MARKET_CNY_PER_USD,
    prices: PriceTable | None = None,
):
    """One row per (provider, model): the USD the run costs there, cheapest first.

    `cached_fraction` of the prompt tokens is billed at the cached-input price. With `batch=True`, rows
    without a batch API get NaN and say so in `note`. Reseller rows use `market_cny_per_usd`. A Result
    is costed on its completed requests: `requests_not_costed` counts the failed and aborted ones it
    leaves out (0 for a Workload or a TokenCounts).
    """
    import pandas as pd

    if not is_number(cached_fraction) or not 0.0 <= cached_fraction <= 1.0:
        raise ValueError(f"cached_fraction must be a number in [0, 1], got {cached_fraction!r}")
    if not isinstance(batch, bool):  # checked here too: rows without a batch API never reach row_cost
        raise ValueError(f"batch must be True or False, got {batch!r}")
    counts = token_counts(run)
    not_costed = len(run.requests) - counts.requests if isinstance(run, Result) else 0
    cached = round(counts.prompt_tokens * cached_fraction)
    table = prices or default_prices()
    if not table.rows:  # a table built by hand with no rows: sorting the empty frame raised KeyError('cost_usd')
        raise ValueError(f"prices: the price table{table_location(table)} has no rows; nothing to compare")
    records = []
    for row in table.rows:
        notes = ["provider's claim, not verified"] if row.verification == "provider_claim" else []
        if batch and not row.offers_batch:
            cost = float("nan")
            notes.append("no batch API")  # added to the claim note: replacing it hid that a row is a claim
        else:
            cost = row_cost(
                row, counts.prompt_tokens, counts.completion_tokens, cached, batch, market_cny_per_usd
            )
        records.append(
            {
                "provider": row.provider,
                "model": row.model,
                "requests": counts.requests,
                "requests_not_costed": not_costed,
                "prompt_tokens": counts.prompt_tokens,
                "cached_tokens": cached,
                "completion_tokens": counts.completion_tokens,
                "cost_usd": cost,
                "usd_per_1k_requests": cost / counts.requests * 1000 if counts.requests else float("nan"),
                "verification": row.verification,
                "note": "; ".join(notes),
            }
        )
    frame = pd.DataFrame.from_records(records)
    return frame.sort_values(["cost_usd", "provider", "model"], na_position="last").reset_index(drop=True)
