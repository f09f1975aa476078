"""Plotly figures for batching-lab: a Result (or a few) in, a `go.Figure` out, no state kept.

Per request: `request_timeline`, `latency_cdf`, `retries_and_errors`. Per engine step: `batch_occupancy`,
`kv_blocks`. Across runs: `throughput_vs_latency`, `compare`, `cost_bars`.
"""

from lab.viz._common import LABEL_COLORS, PHASE_COLORS
from lab.viz.across_runs import compare, cost_bars, throughput_vs_latency
from lab.viz.per_request import latency_cdf, request_timeline, retries_and_errors
from lab.viz.per_step import batch_occupancy, kv_blocks

__all__ = [
    "LABEL_COLORS",
    "PHASE_COLORS",
    "batch_occupancy",
    "compare",
    "cost_bars",
    "kv_blocks",
    "latency_cdf",
    "request_timeline",
    "retries_and_errors",
    "throughput_vs_latency",
]
