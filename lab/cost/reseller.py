"""Resellers priced by an exchange-rate deal: credit bought in CNY, spent at a provider's USD list price.

HolySheep advertises CNY 1 = USD 1 of list price. If the market rate is CNY 7.3 per USD, one USD of
list price costs 1 / 7.3 = 0.137 USD: that is where "85%+ savings" comes from. Rows are the
reseller's claim, not a verified price.
"""

from __future__ import annotations

from lab._checks import is_finite, is_number
from lab.cost.prices import DEFAULT_MARKET_CNY_PER_USD


def _check_rates(cny_paid_per_credit_usd: float, market_cny_per_usd: float) -> None:
    for name, value in (("cny_paid_per_credit_usd", cny_paid_per_credit_usd),
                        ("market_cny_per_usd", market_cny_per_usd)):
        if not is_finite(value):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def effective_usd_price(
    list_usd_price: float,
    cny_paid_per_credit_usd: float = 1.0,
    market_cny_per_usd: float = DEFAULT_MARKET_CNY_PER_USD,
) -> float:
    """Real USD paid for `list_usd_price` of credit.

    list price x (CNY paid per credit USD / market CNY per USD).
    """
    if not is_finite(list_usd_price, inclusive=True):
        raise ValueError(f"list_usd_price must be a finite number >= 0, got {list_usd_price!r}")
    _check_rates(cny_paid_per_credit_usd, market_cny_per_usd)
    return list_usd_price * cny_paid_per_credit_usd / market_cny_per_usd


def exchange_deal_savings(
    market_cny_per_usd: float = DEFAULT_MARKET_CNY_PER_USD, cny_paid_per_credit_usd: float = 1.0
) -> float:
    """Fraction saved against paying list price directly: 1 - paid / market (0.863 at CNY 7.3)."""
    _check_rates(cny_paid_per_credit_usd, market_cny_per_usd)
    return 1.0 - cny_paid_per_credit_usd / market_cny_per_usd


def market_rate_for_savings(savings: float, cny_paid_per_credit_usd: float = 1.0) -> float:
    """The market CNY per USD at which the deal saves exactly `savings` (0.85 -> CNY 6.67)."""
    if not is_number(savings) or not 0 <= savings < 1:
        raise ValueError(f"savings must be a number in [0, 1), got {savings!r}")
    _check_rates(cny_paid_per_credit_usd, 1.0)
    return cny_paid_per_credit_usd / (1.0 - savings)


def explain_exchange_deal(
    market_cny_per_usd: float = DEFAULT_MARKET_CNY_PER_USD,
    cny_paid_per_credit_usd: float = 1.0,
    list_usd_price: float = 8.00,
) -> str:
    """A worked example, in words and numbers, of what the deal saves at a given market rate."""
    needed = market_rate_for_savings(0.85, cny_paid_per_credit_usd)
    real = effective_usd_price(list_usd_price, cny_paid_per_credit_usd, market_cny_per_usd)
    saved = exchange_deal_savings(market_cny_per_usd, cny_paid_per_credit_usd)
    return "\n".join(
        [
            f"market rate:          CNY {market_cny_per_usd:.2f} per USD",
            f"reseller credit:      CNY {cny_paid_per_credit_usd:.2f} per USD 1.00 of list price",
            f"list price:           USD {list_usd_price:.2f}  (e.g. per million output tokens)",
            f"you pay:              CNY {list_usd_price * cny_paid_per_credit_usd:.2f}"
            f" = USD {real:.4f} at the market rate",
            f"saving vs list:       1 - {cny_paid_per_credit_usd:.2f}/{market_cny_per_usd:.2f} = {saved:.1%}",
            # the threshold is arithmetic; what is unverified is the reseller's claim and its deal
            f"'85%' (the reseller's claim, not verified) needs a market rate of at least CNY {needed:.2f}"
            " per USD",
        ]
    )
