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

from lab._checks import is_number
from lab.metrics import Result
from lab.viz._common import as_runs, empty_figure, label_color, note, styled, unit_of, with_unit

DEFAULT_COMPARE = (
    "request_throughput", "output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_e2el_ms", "p99_e2el_ms",
)


def _check_columns(frame: pd.DataFrame, **named: str | None) -> None:
    for arg, column in named.items():
        if column is not None and column not in frame.columns:
            raise ValueError(f"{arg}: no column {column!r}; the frame has {list(frame.columns)}")


def _is_rate(value) -> bool:
    """Requests per second: a real number > 0, or inf (all at once). NaN and -3 were drawn as "nan/s"
    and "-3/s"."""
    return is_number(value) and value > 0


def _rate_frame(data) -> pd.DataFrame:
    rows = []
    for i, item in enumerate(data):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Result)):
            raise ValueError(f"data: item {i} should be a (request_rate, Result) pair, got {item!r:.80}")
        rate, result = item
        if not _is_rate(rate):
            raise ValueError(f"data: item {i} has request rate {rate!r}; expected a number of requests per "
                             "second > 0, or float('inf') for all at once")
        rows.append({"request_rate": float(rate), "label": result.label or ""} | result.summary())
    return pd.DataFrame(rows)


def _check_rate_column(frame: pd.DataFrame, rate: str) -> None:
    for row, value in frame[rate].items():
        if not _is_rate(value):
            raise ValueError(f"rate: column {rate!r} has {value!r} in row {row!r}; expected a number of requests "
                             "per second > 0, or inf for all at once")


def _check_one_point_per_rate(frame: pd.DataFrame, keys: list[str], rate: str, rows: str) -> None:
    """Two runs at one rate in one line drew a zigzag no sweep can have: refuse, naming the first pair."""
    twice = frame[frame.duplicated(keys, keep=False)]
    if twice.empty:
        return
    first = twice.iloc[0]
    same = [i for i, row in twice.iterrows() if all(_same(row[k], first[k]) for k in keys)]
    values = " and ".join(f"{k} {_plain(first[k])}" for k in keys)
    hint = ("give each sweep's Results its own label (simulate(..., label=...)) or pass label= a column "
            "that tells them apart" if len(keys) > 1 else "add a label column that tells the sweeps apart")
    raise ValueError(f"data: {rows} {', '.join(map(str, same))} share {values}; a line needs one point "
                     f"per {rate}: {hint}")


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def _plain(value) -> str:
    return f"{value:g}" if is_number(value) else repr(value)


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
    A rate column holds numbers > 0 (inf: all at once). Each line has one point per rate: runs that
    share a rate and a label are refused, as they would be joined into a zigzag. A point without a
    value in either column is not drawn, and a note says which.
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
    # only the default label may be missing (a frame of one sweep); a named one that is not there was
    # a typo, silently drawn as one line through every sweep
    _check_columns(frame, throughput=throughput, latency=latency, rate=rate,
                   label=label if label != "label" else None)
    if is_rate:
        _check_rate_column(frame, rate)
    grouped = label is not None and label in frame.columns
    _check_one_point_per_rate(frame, list(dict.fromkeys([label, rate] if grouped else [rate])), rate,
                              "rows" if isinstance(data, pd.DataFrame) else "items")
    # dropna=False: rows without a label (a frame concatenated with one that had none) were dropped unseen
    groups = frame.groupby(label, sort=False, dropna=False) if grouped else [("", frame)]
    fig = go.Figure()
    for i, (name, group) in enumerate(groups):
        name = "" if pd.isna(name) else name
        group = group.sort_values(rate, kind="stable")
        fig.add_trace(
            go.Scatter(
                name=_line_name(name), x=group[throughput], y=group[latency], mode="lines+markers+text",
                text=[_rate_text(v) if is_rate else _param_text(rate, v) for v in group[rate]],
                textposition="top left", line=dict(color=label_color(i)), customdata=group[rate],
                hovertemplate=(
                    f"{name}<br>{'rate %{customdata} req/s' if is_rate else rate + ' %{customdata}'}"
                    f"<br>{throughput} %{{x:.1f}} {unit_of(throughput)}"
                    f"<br>{latency} %{{y:.1f}} {unit_of(latency)}<extra></extra>"
                ),
            )
        )
    gaps = [_missing_points(frame, column, rate, label if grouped else None, is_rate)
            for column in dict.fromkeys((throughput, latency))]
    if any(gaps):
        note(fig, " · ".join(g for g in gaps if g))
    return styled(fig, title, xaxis_title=with_unit(throughput), yaxis_title=with_unit(latency))


def _missing_points(frame: pd.DataFrame, column: str, rate: str, label: str | None, is_rate: bool) -> str:
    """Which points have no value in `column` (and so are not drawn), or "" if none.

    The cause varies (no completed request; p99_tpot_ms of one-token outputs; no span to divide by),
    so the note names the column and the points, not a cause."""
    empty = frame[frame[column].isna()]
    if empty.empty:
        return ""
    points = [(_rate_text(v) if is_rate else _param_text(rate, v)) for v in empty[rate]]
    if label is not None and frame[label].nunique(dropna=False) > 1:  # say which line each point is missing from
        points = [f"{p} ({_line_name(name)})" for p, name in zip(points, empty[label], strict=True)]
    return f"No {column} at {', '.join(points)}: not drawn"


def _line_name(name) -> str:
    return "run" if pd.isna(name) or name == "" else str(name)


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
    # a value that is there but NaN (mean_tpot_ms of one-token outputs) left an empty slot unexplained;
    # a run with no completed request is already named above
    nan = [f"{m} for {label}" for m in metrics for (label, r), s in zip(runs, summaries, strict=True)
           if m in s and _is_nan(s[m]) and r.completed]
    remarks = ([f"No completed request in: {', '.join(idle)}"] if idle else []) + (
        [f"No value (no step trace?): {', '.join(missing)}"] if missing else []) + (
        [f"No value: {', '.join(nan)}"] if nan else [])
    if remarks:
        note(fig, " · ".join(remarks))
    return fig


def _is_nan(value) -> bool:
    return is_number(value) and math.isnan(value)


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

    `cost` defaults to the frame's "cost_usd" column, else "cost", and must hold numbers; `currency`, the
    unit shown on the axis and in hover, defaults to what the column name says (cost_usd -> USD,
    usd_per_1k_requests -> USD per 1k requests; none when it names no currency). Rows with the same
    provider and model are summed; rows without a provider or model are drawn as "(no provider)" or
    "(no model)", and a note says how many.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    if cost is None:
        cost = next((c for c in ("cost_usd", "cost") if c in frame.columns), "cost_usd")
    _check_columns(frame, cost=cost, provider=provider, model=model)
    _check_numeric(frame, cost)
    currency = currency or _cost_unit(cost)
    title = title or "Cost per provider and model"
    keys = [provider] + ([model] if model else [])
    frame, unnamed = _name_missing_keys(frame, keys)
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
    remarks = []
    if not unpriced.empty:
        missing = unpriced[keys].astype(str).agg(" · ".join, axis=1).tolist()
        remarks.append(f"No cost for: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    # cost_table(Result) prices completed requests only: a run where most failed looked cheap and whole
    not_costed = frame["requests_not_costed"].max() if "requests_not_costed" in frame.columns else 0
    if not_costed > 0:
        remarks.append(f"{int(not_costed):,} failed or aborted request(s) not costed")
    if unnamed:
        remarks.append(f"{unnamed} row(s) without {' or '.join(keys)}: drawn as {' / '.join(_NO_KEY.format(k) for k in keys)}")
    if remarks:
        note(fig, " · ".join(remarks))
    return fig


_NO_KEY = "(no {})"


def _check_numeric(frame: pd.DataFrame, cost: str) -> None:
    """A cost column of text ("1.0") raised TypeError from abs() in the bar labels, naming nothing."""
    column = frame[cost]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return
    bad = next((v for v in column.dropna() if not is_number(v)), None)  # an object column may hold numbers
    if bad is not None:
        raise ValueError(f"cost: column {cost!r} must hold numbers (NaN for unpriced rows); it has {bad!r}")


def _name_missing_keys(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, int]:
    """The frame with missing provider / model values named "(no provider)" / "(no model)", and how
    many rows had one: groupby dropped those rows, and their cost, without a word."""
    blank = frame[keys].isna()
    if not blank.any().any():
        return frame, 0
    frame = frame.copy()
    for k in keys:
        frame[k] = frame[k].astype(object).where(~blank[k], _NO_KEY.format(k))
    return frame, int(blank.any(axis=1).sum())


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
    # "5.5e-05" and "1.23e+03" for a learner. No value, no label: the figure's note names it.
    if math.isnan(value):
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return np.format_float_positional(value, precision=3, fractional=False, trim="-")
