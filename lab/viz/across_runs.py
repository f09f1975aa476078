"""Figures that compare whole runs: throughput against latency across request rates, a side-by-side
summary of several runs, and cost bars per provider and model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lab.metrics import Result
from lab.viz._common import as_runs, empty_figure, label_color, note, styled, unit_of, with_unit

DEFAULT_COMPARE = (
    "request_throughput", "output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_e2el_ms", "p99_e2el_ms",
)


def _check_columns(frame: pd.DataFrame, **named: str | None) -> None:
    for arg, column in named.items():
        if column is not None and column not in frame.columns:
            raise ValueError(f"{arg}: no column {column!r}; the frame has {list(frame.columns)}")


def _rate_frame(data) -> pd.DataFrame:
    rows = []
    for i, item in enumerate(data):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Result)):
            raise ValueError(f"data: item {i} should be a (request_rate, Result) pair, got {item!r:.80}")
        rate, result = item
        rows.append({"request_rate": float(rate), "label": result.label or ""} | result.summary())
    return pd.DataFrame(rows)


def throughput_vs_latency(
    data,
    *,
    throughput: str = "output_throughput",
    latency: str = "p99_e2el_ms",
    rate: str = "request_rate",
    label: str | None = "label",
    title: str | None = None,
) -> go.Figure:
    """Throughput (x) against latency (y), one point per request rate, one line per label.

    `data`: a list of (request_rate, Result) pairs, or a DataFrame of `Result.summary()` rows with a
    `rate` column (and a `label` column, if present, to split the lines). The knee of the curve is
    where the server saturates: throughput stops growing and latency takes off.
    `rate` may name any other parameter of the sweep (client concurrency, say): a column whose name
    does not end in "rate" labels its points with the column's name ("concurrency 4"), not in req/s.
    """
    if isinstance(data, pd.DataFrame):
        frame = data
    elif isinstance(data, Sequence) and not isinstance(data, str):
        frame = _rate_frame(data)
    else:
        raise ValueError(f"data: expected a list of (rate, Result) pairs or a DataFrame, got {type(data).__name__}")
    is_rate = rate.endswith("rate")  # request_rate, rate: requests per second; anything else is not
    title = title or f"Throughput against latency across {'request rates' if is_rate else rate}"
    if frame.empty:
        return empty_figure(title, "No runs to plot.")
    _check_columns(frame, throughput=throughput, latency=latency, rate=rate)
    # dropna=False: rows without a label (a frame concatenated with one that had none) were dropped unseen
    groups = frame.groupby(label, sort=False, dropna=False) if label in frame.columns else [("", frame)]
    fig = go.Figure()
    for i, (name, group) in enumerate(groups):
        name = "" if pd.isna(name) else name
        group = group.sort_values(rate)
        fig.add_trace(
            go.Scatter(
                name=str(name) or "run", x=group[throughput], y=group[latency], mode="lines+markers+text",
                text=[_rate_text(v) if is_rate else _param_text(rate, v) for v in group[rate]],
                textposition="top left", line=dict(color=label_color(i)), customdata=group[rate],
                hovertemplate=(
                    f"{name}<br>{'rate %{customdata} req/s' if is_rate else rate + ' %{customdata}'}"
                    f"<br>{throughput} %{{x:.1f}} {unit_of(throughput)}"
                    f"<br>{latency} %{{y:.1f}} {unit_of(latency)}<extra></extra>"
                ),
            )
        )
    if frame[latency].isna().any():
        note(fig, "Some rates have no completed request: their points are missing.")
    return styled(fig, title, xaxis_title=with_unit(throughput), yaxis_title=with_unit(latency))


def _rate_text(rate: float) -> str:
    return "all at once" if math.isinf(rate) else f"{rate:g}/s"


def _param_text(column: str, value) -> str:
    # concurrency 4, not "4/s": the x-parameter of a sweep that is not a request rate
    return f"{column} {value:g}" if isinstance(value, (int, float, np.number)) else f"{column} {value}"


def compare(results, *, metrics: Sequence[str] = DEFAULT_COMPARE, title: str | None = None) -> go.Figure:
    """Side by side `Result.summary()` numbers for several runs: one small bar chart per metric.

    `results`: {label: Result}, a list of Results, or one. Each run keeps its colour in every panel.
    """
    runs = as_runs(results)
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics: expected a non-empty list of summary keys, got {metrics!r}")
    title = title or "Comparison"
    if not runs:
        return empty_figure(title, "No runs to compare.")
    summaries = [r.summary() for _, r in runs]
    # keys differ between runs (wasted_slot_steps needs a step trace): the first run's keys made a
    # traced run's metric "unknown", or raised KeyError when the traced run came first
    known = set().union(*summaries)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; allowed: {sorted(known)}")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[with_unit(m) for m in metrics])
    labels = [label for label, _ in runs]
    for k, metric in enumerate(metrics):
        values = [s.get(metric, float("nan")) for s in summaries]
        fig.add_trace(
            go.Bar(
                name=metric, x=labels, y=values, showlegend=False,
                marker_color=[label_color(i) for i in range(len(runs))],
                text=[_plain_number(v) for v in values], textposition="auto",  # 1,234 ms, not 1.23e+03
                hovertemplate=f"%{{x}}<br>{metric}: %{{y:.4g}} {unit_of(metric)}<extra></extra>",
            ),
            row=k // cols + 1, col=k % cols + 1,
        )
    styled(fig, title, height=260 * rows + 80)
    idle = [label for label, r in runs if not r.completed]
    missing = [f"{m} for {label}" for m in metrics for (label, _), s in zip(runs, summaries, strict=True)
               if m not in s]
    remarks = ([f"No completed request in: {', '.join(idle)}"] if idle else []) + (
        [f"No value (no step trace?): {', '.join(missing)}"] if missing else [])
    if remarks:
        note(fig, " · ".join(remarks))
    return fig


def cost_bars(
    frame: pd.DataFrame,
    *,
    cost: str | None = None,
    provider: str = "provider",
    model: str | None = "model",
    currency: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Cost per model, one colour per provider (the same model at two providers sits side by side).

    `cost` defaults to the frame's "cost_usd" column, else "cost"; `currency`, the unit shown on the
    axis and in hover, defaults to what the column name says (cost_usd -> USD, usd_per_1k_requests ->
    USD per 1k requests; none when it names no currency). Rows with the same provider and model are summed.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    if cost is None:
        cost = next((c for c in ("cost_usd", "cost") if c in frame.columns), "cost_usd")
    _check_columns(frame, cost=cost, provider=provider, model=model)
    currency = currency or _cost_unit(cost)
    title = title or "Cost per provider and model"
    keys = [provider] + ([model] if model else [])
    unpriced = frame[frame[cost].isna()]
    totals = frame.dropna(subset=[cost]).groupby(keys, sort=False)[cost].agg(["sum", "size"]).reset_index()
    if totals.empty:
        return empty_figure(title, "No priced rows to plot.")
    x_col = model or provider
    order = totals.groupby(x_col)["sum"].min().sort_values().index.tolist()  # cheapest model first
    fig = go.Figure()
    for i, (name, group) in enumerate(totals.groupby(provider, sort=False)):
        fig.add_trace(
            go.Bar(
                name=str(name), x=group[x_col], y=group["sum"], marker_color=label_color(i),
                text=[_plain_number(v) for v in group["sum"]], textposition="outside", customdata=group["size"],
                hovertemplate=f"{name} · %{{x}}<br>%{{y:,.6g}} {currency}<br>%{{customdata}} row(s)<extra></extra>",
            )
        )
    styled(
        fig, title, barmode="group", xaxis=dict(title=x_col, categoryorder="array", categoryarray=order),
        yaxis_title=f"cost ({currency})" if currency else cost,
    )
    if not unpriced.empty:
        missing = unpriced[keys].astype(str).agg(" · ".join, axis=1).tolist()
        note(fig, f"No cost for: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    return fig


CURRENCIES = ("usd", "eur", "gbp", "cny", "rmb", "jpy", "inr", "krw", "cad", "aud", "chf", "hkd", "sgd")


def _cost_unit(column: str) -> str:
    """The unit a cost column's name states: cost_usd -> USD, usd_per_1k_requests -> USD per 1k requests.

    The text after the last underscore is not always a currency: it turned usd_per_1k_requests into
    "REQUESTS". A name without a currency code states no unit ("")."""
    words = column.lower().split("_")
    code = next((w for w in words if w in CURRENCIES), None)
    if code is None:
        return ""
    rest = [w for w in words if w not in (code, "cost")]
    return " ".join([code.upper(), *rest])


def _plain_number(value: float) -> str:
    # Per-request costs are tiny and latencies in ms large: "0.000055" and "1,234" read better than
    # "5.5e-05" and "1.23e+03" for a learner.
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return np.format_float_positional(value, precision=3, fractional=False, trim="-")
