"""Figures built from per-request measurements: the timeline of each request's phases, latency CDFs,
and retries and errors over time.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import plotly.graph_objects as go

from lab.metrics import RequestMetrics, Result
from lab.viz._common import (
    PHASE_COLORS,
    as_runs,
    check_choice,
    check_positive,
    check_times,
    empty_figure,
    label_color,
    nice_step,
    note,
    outcome_colors,
    styled,
)

# The duration comes from customdata: on a bar placed with base=, %{x} is where the bar ends.
_PHASE_HOVER = (
    "<b>%{customdata[0]}</b> · %{fullData.name}<br>"
    "%{customdata[1]:.3f} s → %{customdata[2]:.3f} s (%{customdata[6]:.3f} s)<br>"
    "prompt %{customdata[3]} tok · output %{customdata[4]} tok · %{customdata[5]}<extra></extra>"
)


WAITING = "waiting for first token"  # the phase of a request timed from outside the server (HTTP)
_PHASE_ORDER = ("queued", "prefill", WAITING, "decode")


def _phases(r: RequestMetrics) -> dict[str, tuple[float, float]]:
    """Start and end of each phase we can tell from the request's timestamps."""
    out = {}
    end = r.first_token_s if r.first_token_s is not None else r.finish_s  # failed before its first token
    if r.first_scheduled_s is not None:
        out["queued"] = (r.arrival_s, r.first_scheduled_s)
        if end is not None:
            out["prefill"] = (r.first_scheduled_s, end)
    elif end is not None:
        # Over HTTP the server's queue is invisible, and so is where prefill starts: the client sees
        # only the wait from sending to the first token. It holds the network, the server's queue and
        # prefill, and a retried request's failed attempts and back-off waits: calling it "prefill"
        # drew seconds of back-off as prompt processing.
        out[WAITING] = (r.arrival_s, end)
    if r.first_token_s is not None and r.finish_s is not None:
        out["decode"] = (r.first_token_s, r.finish_s)
    return out


def _last_known_s(r: RequestMetrics) -> float:
    for t in (r.finish_s, r.first_token_s, r.first_scheduled_s):
        if t is not None:
            return t
    return r.arrival_s


def request_timeline(result: Result, *, title: str | None = None) -> go.Figure:
    """One horizontal bar per request, split into queued / prefill / decode; failures marked with ✕.

    A run timed from outside the server (over HTTP) has no queued or prefill time: its bars run from
    sending the request to its first token ("waiting for first token", retries and their back-off
    included), then decode. Retried requests are marked with their retry count at the start of their row.
    Requests are ordered by arrival, first at the top. One trace per phase (bars placed with `base=`),
    so thousands of requests still render quickly.
    """
    if not isinstance(result, Result):
        raise ValueError(f"result: expected a Result, got {type(result).__name__}")
    check_times(result.requests, "result")
    title = title or f"Request timeline{' · ' + result.label if result.label else ''}"
    if not result.requests:
        return empty_figure(title, "No requests in this result.")
    ordered = sorted(result.requests, key=lambda r: r.arrival_s)
    fig = go.Figure()
    phases = [_phases(r) for r in ordered]
    for phase in _PHASE_ORDER:
        ys, starts, lengths, data = [], [], [], []
        for i, (r, spans) in enumerate(zip(ordered, phases, strict=True)):
            span = spans.get(phase)
            if span is None:
                continue
            ys.append(i)
            starts.append(span[0])
            lengths.append(span[1] - span[0])
            data.append((r.request_id, span[0], span[1], r.prompt_tokens, r.output_tokens, _status_text(r),
                         lengths[-1]))
        if not ys:  # no legend entry for a phase no request has (queued and prefill over HTTP)
            continue
        fig.add_trace(
            go.Bar(
                name=phase, orientation="h", y=ys, x=lengths, base=starts, customdata=data,
                marker=dict(color=PHASE_COLORS[phase], line=dict(width=0)), hovertemplate=_PHASE_HOVER,
            )
        )
    failed = [(i, r) for i, r in enumerate(ordered) if not r.ok]
    fig.add_trace(
        go.Scatter(
            name="failed", mode="markers", y=[i for i, _ in failed], x=[_last_known_s(r) for _, r in failed],
            marker=dict(symbol="x", size=9, color=PHASE_COLORS["failed"]),
            customdata=[(r.request_id, _status_text(r)) for _, r in failed],
            hovertemplate="<b>%{customdata[0]}</b> at %{x:.3f} s<br>%{customdata[1]}<extra></extra>",
        )
    )
    retried = [(i, r) for i, r in enumerate(ordered) if r.retries]
    if retried:  # the back-off waits sit inside the bars; say which rows hold them
        fig.add_trace(
            go.Scatter(
                name="retried (↻ retries)", mode="markers+text", y=[i for i, _ in retried],
                x=[r.arrival_s for _, r in retried], text=[f"↻{r.retries}" for _, r in retried],
                textposition="middle right", textfont=dict(size=10, color="#333"),
                marker=dict(symbol="circle-open", size=7, color="#333"),
                customdata=[(r.request_id, r.retries, _status_text(r)) for _, r in retried],
                hovertemplate=("<b>%{customdata[0]}</b> retried %{customdata[1]} time(s): its bar holds the "
                               "failed attempts and the wait before each retry<br>"
                               "%{customdata[2]}<extra></extra>"),
            )
        )
    yaxis = dict(title="request (by arrival)", autorange="reversed", showgrid=False)
    if len(ordered) <= 40:  # few enough to name each row
        yaxis.update(tickvals=list(range(len(ordered))), ticktext=[r.request_id for r in ordered])
    styled(
        fig, title, barmode="overlay", bargap=0.15, xaxis_title="time since start (s)", yaxis=yaxis,
        height=min(900, 180 + 14 * len(ordered)), legend=dict(orientation="h", y=-0.15),
    )
    if not result.completed:
        note(fig, "No request completed.")
    return fig


def _status_text(r: RequestMetrics) -> str:
    text = r.status if r.ok else f"{r.status}: {r.error or 'no error message'}"
    return text + (f" · {r.retries} retries" if r.retries else "")


_METRICS = {
    "ttft": ("TTFT", lambda r: [r.ttft_s]),
    "tpot": ("TPOT", lambda r: [r.tpot_s]),
    "itl": ("inter-token latency", lambda r: r.itls_s),
    "e2e": ("end-to-end latency", lambda r: [r.e2e_s]),
    "queue": ("queueing time", lambda r: [r.queue_s]),
}


def latency_cdf(results, *, metric: str = "ttft", title: str | None = None) -> go.Figure:
    """Empirical CDF of a latency over completed requests, one line per run.

    `results`: a Result, a list of them, or {label: Result}. `metric`: ttft, tpot, itl, e2e or queue.
    The curve reaches 1 at the slowest completed request; failed requests are counted in the legend,
    which is shown even for one run. Hover gives the fraction at or below each distinct value.
    """
    check_choice("metric", metric, _METRICS)
    name, values_of = _METRICS[metric]
    runs = as_runs(results)
    for label, r in runs:
        check_times(r.requests, f"results ({label})")
    title = title or f"{name} CDF"
    fig = go.Figure()
    left_out = []
    for i, (label, r) in enumerate(runs):
        values = [v for req in r.completed for v in values_of(req) if v is not None]
        if not values:
            left_out.append(label)
            continue
        # one point per distinct value: with a point per request, tied values hovered 0%, 33% and 67%
        # "within 200 ms" when two thirds were
        ms, counts = np.unique(np.asarray(values, dtype=float) * 1e3, return_counts=True)
        frac = np.cumsum(counts) / len(values)
        # start from 0 at the fastest value: else the curve began in mid-air at 1/n, and a run of one
        # request was a single point, which a line draws as nothing. Hover reads customdata, the
        # fraction at or below x, so this extra point says the same true thing as the one above it
        # (plotly ignores a per-point hoverinfo "skip" on scatter traces).
        ms, y, at_or_below = np.r_[ms[0], ms], np.r_[0.0, frac], np.r_[frac[0], frac]
        failed = len(r.requests) - len(r.completed)
        counted = "gaps" if metric == "itl" else "requests"  # ITL: one value per gap between tokens
        legend = f"{label} (n={len(values)} {counted}{f', {failed} failed requests' if failed else ''})"
        fig.add_trace(
            go.Scatter(
                name=legend, x=ms, y=y, customdata=at_or_below, mode="lines",
                line=dict(shape="hv", color=label_color(i)),
                hovertemplate=f"{label}<br>%{{customdata:.1%}} of {counted} at or below %{{x:.1f}} ms<extra></extra>",
            )
        )
    if not fig.data:
        return empty_figure(title, f"No completed request has a {name} to plot.")
    y_title = "fraction of inter-token gaps" if metric == "itl" else "fraction of completed requests"
    # plotly hides the legend of a one-trace figure, and with it the failed-request count
    styled(fig, title, xaxis_title=f"{name} (ms)", yaxis=dict(title=y_title, range=[0, 1.02]), showlegend=True)
    if left_out:  # a run whose requests all failed would otherwise vanish from the comparison unseen
        note(fig, f"No {name} to plot for: {', '.join(left_out)}")
    return fig


def _error_kind(r: RequestMetrics) -> str:
    if r.ok:
        return "ok"
    # "RateLimitError: 429 ..." -> "RateLimitError": one bar colour per kind, not per message.
    kind = (r.error or "").split(":", 1)[0].strip()[:40]
    return f"{r.status}: {kind}" if kind else r.status


MAX_BUCKETS = 10_000


def retries_and_errors(result: Result, *, bucket_s: float | None = None, title: str | None = None) -> go.Figure:
    """Outcomes per time bucket (stacked: ok and each error kind) with the retries they needed.

    A request counts in the bucket where it finished (or was last seen); `bucket_s` defaults to a
    round width giving about 20 buckets; a width giving more than 10,000 is refused (one bar each).
    """
    if not isinstance(result, Result):
        raise ValueError(f"result: expected a Result, got {type(result).__name__}")
    check_positive("bucket_s", bucket_s)
    check_times(result.requests, "result")
    title = title or "Outcomes and retries over time"
    if not result.requests:
        return empty_figure(title, "No requests in this result.")
    times = [_last_known_s(r) for r in result.requests]
    # a time before every arrival (a request timed on another clock) would make a negative bucket
    start = min(min(r.arrival_s for r in result.requests), min(times))
    span = max(times) - start
    bucket_s = bucket_s or nice_step(span)
    if span / bucket_s > MAX_BUCKETS:  # one bar per bucket: 1e-5 s over 100 s built ten million
        raise ValueError(f"bucket_s: {bucket_s:g} s makes {span / bucket_s:,.0f} buckets over this {span:g} s run; "
                         f"at most {MAX_BUCKETS:,} are allowed, so use bucket_s >= {span / MAX_BUCKETS:.3g}")
    counts: dict[str, Counter] = defaultdict(Counter)
    retries: Counter = Counter()
    for r, t in zip(result.requests, times, strict=True):
        b = int((t - start) // bucket_s)
        counts[_error_kind(r)][b] += 1
        retries[b] += r.retries
    buckets = range(max(b for c in counts.values() for b in c) + 1)
    x = [start + (b + 0.5) * bucket_s for b in buckets]
    fig = go.Figure()
    kinds = sorted(counts, key=lambda k: (k != "ok", k.startswith("aborted"), -sum(counts[k].values())))
    colors = outcome_colors(kinds)
    for kind in kinds:
        fig.add_trace(
            go.Bar(
                name=kind, x=x, y=[counts[kind][b] for b in buckets], width=bucket_s * 0.9,
                marker_color=colors[kind],
                hovertemplate=f"{kind}<br>%{{y}} requests finished around %{{x:.2f}} s<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            name="retries", x=x, y=[retries[b] for b in buckets], mode="lines+markers",
            line=dict(color="#333", dash="dot"),
            hovertemplate="%{y} retries by requests finishing around %{x:.2f} s<extra></extra>",
        )
    )
    return styled(
        fig, title, barmode="stack", xaxis_title=f"time since start (s), {bucket_s:g} s buckets",
        yaxis_title="requests / retries",
    )
