"""Shared pieces of the figures: colours, units, argument checks and the empty-figure fallback.

Colours are fixed per phase and assigned per label in order, so the same run keeps its colour
across every figure built from the same list of results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from lab._checks import is_finite, is_int, is_number
from lab.metrics import RequestMetrics, Result

TEMPLATE = "plotly_white"

PHASE_COLORS = {
    "queued": "#B0B0B0",  # grey: nothing is happening for the request yet
    "prefill": "#F58518",
    # over HTTP: queue, prefill, network and any retries' back-off, which the client cannot tell apart
    "waiting for first token": "#FDBF6F",
    "decode": "#4C78A8",
    "idle": "#EAEAEA",
    "failed": "#D62728",
}
# Outcome colours are fixed per kind, not per rank: RateLimitError is the same orange in every figure,
# whatever else failed in the run. Aborted kinds are shades of purple, errors warm colours.
OUTCOME_COLORS = {
    "ok": "#54A24B",
    "error: InternalServerError": "#D62728",
    "error: RateLimitError": "#FF7F0E",
    "error: APITimeoutError": "#8C564B",
    "error: APIConnectionError": "#E377C2",
    "error: StreamInterruptedError": "#BCBD22",
    "error: EmptyStream": "#7F7F7F",
    "aborted": "#9467BD",
    "aborted: cancelled": "#C5B0D5",
    "aborted: shutdown": "#6A3D9A",
}
# Kinds not named above take, in name order, the first of these the figure does not use yet.
SPARE_ERROR_COLORS = ["#17BECF", "#FF9DA7", "#9C755F", "#EDC948", "#BAB0AC", "#76B7B2"]
SPARE_ABORTED_COLORS = ["#B07AA1", "#D4A6C8", "#7B4173", "#A55194"]
# Kept apart from the phase colours so a run's line is never mistaken for a phase.
LABEL_COLORS = ["#1B9E77", "#7570B3", "#D95F02", "#E7298A", "#66A61E", "#E6AB02", "#A6761D", "#666666"]


def label_color(index: int) -> str:
    return LABEL_COLORS[index % len(LABEL_COLORS)]


def outcome_colors(kinds) -> dict[str, str]:
    """{kind: colour} for outcome kinds ("ok", "error: RateLimitError", "aborted: cancelled", ...).

    Known kinds keep their own colour; the others get spare ones in name order, each distinct from
    the rest of the figure until the spares run out."""
    colors = {k: OUTCOME_COLORS[k] for k in kinds if k in OUTCOME_COLORS}
    for kind in sorted(k for k in kinds if k not in colors):
        spares = SPARE_ABORTED_COLORS if kind.startswith("aborted") else SPARE_ERROR_COLORS
        free = [c for c in spares if c not in colors.values()]
        colors[kind] = free[0] if free else spares[len(colors) % len(spares)]
    return colors


def as_runs(results, arg: str = "results") -> list[tuple[str, Result]]:
    """Normalise one Result, a sequence of them, or a {label: Result} mapping to (label, Result) pairs."""
    if isinstance(results, Result):
        results = [results]
    if isinstance(results, Mapping):
        pairs = [(str(k), v) for k, v in results.items()]
    elif isinstance(results, Sequence) and not isinstance(results, str):
        pairs = [(r.label if isinstance(r, Result) else "", r) for r in results]
    else:
        raise ValueError(f"{arg}: expected a Result, a list of Results or a dict of them; got {type(results).__name__}")
    seen: dict[str, int] = {}
    runs = []
    for i, (label, r) in enumerate(pairs):
        if not isinstance(r, Result):
            raise ValueError(f"{arg}: item {i} is a {type(r).__name__}, not a Result")
        label = label or f"run {i + 1}"
        seen[label] = seen.get(label, 0) + 1
        # Two runs with the same label would otherwise share a legend entry and hide each other.
        runs.append((label if seen[label] == 1 else f"{label} ({seen[label]})", r))
    return runs


def check_choice(arg: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{arg}: {value!r} is not one of {sorted(allowed)}")


def check_positive(arg: str, value) -> None:
    if value is not None and not is_finite(value):
        raise ValueError(f"{arg}: expected a positive number or None, got {value!r}")


def check_count(arg: str, value) -> None:
    """None, or a whole number >= 1: batch slots and KV blocks come in whole units (2.5 drew a line
    no engine can have)."""
    if value is not None and not (is_int(value) and value >= 1):
        raise ValueError(f"{arg}: expected a whole number >= 1 or None, got {value!r}")


_TIMES = ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s")


def _finite(value) -> bool:
    return is_number(value) and math.isfinite(value)


def check_times(requests: Sequence[RequestMetrics], arg: str) -> None:
    """Raise on a NaN, infinite or non-numeric time, naming the request and the field.

    One such time ended a CDF at NaN, made a timeline bar vanish, or raised OverflowError deep in
    the bucketing, none of which said which request held it. `None` (not reached) is fine, except
    for `arrival_s`, which every request has."""
    for r in requests:
        for name in _TIMES:
            value = getattr(r, name)
            if not (_finite(value) or (value is None and name != "arrival_s")):
                raise ValueError(f"{arg}: request {r.request_id!r} has {name} = {value!r}; "
                                 "times must be finite numbers of seconds")
        try:  # the fast check: a sum of finite times is finite, and NaN or inf carry through it
            fine = math.isfinite(sum(r.token_times_s))
        except TypeError:
            fine = False
        if not fine:
            bad = next(((k, v) for k, v in enumerate(r.token_times_s) if not _finite(v)), None)
            if bad is not None:  # else the sum only overflowed: every time is finite
                raise ValueError(f"{arg}: request {r.request_id!r} has token_times_s[{bad[0]}] = {bad[1]!r}; "
                                 "times must be finite numbers of seconds")


def unit_of(key: str) -> str:
    """Unit of a `Result.summary()` key, for axis titles."""
    if key.endswith("_ms"):
        return "ms"
    if key in ("request_throughput", "goodput", "request_goodput"):  # summary() gives both goodput names
        return "req/s"
    if key.endswith("throughput"):
        return "tok/s"
    if key.endswith("_s"):
        return "s"
    if key.endswith("_tokens"):
        return "tokens"
    if key in ("completed", "failed"):
        return "requests"
    if key == "wasted_slot_steps":
        return "slot-steps"
    return ""


def with_unit(key: str) -> str:
    unit = unit_of(key)
    return f"{key} ({unit})" if unit else key


def styled(fig: go.Figure, title: str, **layout) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title=dict(text=title), **layout)
    return fig


def note(fig: go.Figure, text: str) -> go.Figure:
    """A visible remark in the corner, for data we could not plot (so nothing disappears silently)."""
    fig.add_annotation(
        text=text, showarrow=False, xref="paper", yref="paper", x=1, y=1.02,
        xanchor="right", yanchor="bottom", font=dict(size=11, color="#888"),
    )
    return fig


def empty_figure(title: str, message: str) -> go.Figure:
    """A figure that says why it is empty, instead of an exception in the middle of a notebook."""
    fig = styled(go.Figure(), title, xaxis=dict(visible=False), yaxis=dict(visible=False))
    fig.add_annotation(
        text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(size=14, color="#666")
    )
    return fig


def nice_step(span: float, buckets: int = 20) -> float:
    """A round bucket width (1, 2 or 5 times a power of ten) giving about `buckets` buckets."""
    if not span > 0:
        return 1.0
    raw = span / buckets
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
