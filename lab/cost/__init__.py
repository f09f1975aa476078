"""Cost tools: API prices (data/prices.csv), the cost of a usage, a Result or a Workload per provider,
reseller exchange-rate deals, and self-hosted cost per token on a rented GPU (data/gpu_prices.csv).
"""

from lab.cost.compare import TokenCounts, cost_table, token_counts
from lab.cost.prices import (
    DEFAULT_MARKET_CNY_PER_USD,
    PriceRow,
    PriceTable,
    PriceTableError,
    UnknownModelError,
    load_prices,
    row_cost,
    usage_cost,
)
from lab.cost.reseller import (
    effective_usd_price,
    exchange_deal_savings,
    explain_exchange_deal,
    market_rate_for_savings,
)
from lab.cost.self_hosted import (
    HOURS_PER_MONTH,
    BreakEven,
    GpuPrice,
    UnknownGpuError,
    break_even,
    gpu_price,
    load_gpu_prices,
    self_hosted_usd_per_mtok,
    tokens_per_second,
)

__all__ = [
    "DEFAULT_MARKET_CNY_PER_USD",
    "HOURS_PER_MONTH",
    "BreakEven",
    "GpuPrice",
    "PriceRow",
    "PriceTable",
    "PriceTableError",
    "TokenCounts",
    "UnknownGpuError",
    "UnknownModelError",
    "break_even",
    "cost_table",
    "effective_usd_price",
    "exchange_deal_savings",
    "explain_exchange_deal",
    "gpu_price",
    "load_gpu_prices",
    "load_prices",
    "market_rate_for_savings",
    "row_cost",
    "self_hosted_usd_per_mtok",
    "token_counts",
    "tokens_per_second",
    "usage_cost",
]
