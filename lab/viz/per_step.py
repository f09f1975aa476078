"""Figures built from the engine's (or simulator's) step trace: how full each batch was, and how
many KV blocks were in use over time.
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from lab.metrics import Result, StepRecord
from lab.viz._common import (
    PHASE_COLORS,
    as_runs,
    check_choice,
    check_count,
    empty_figure,
    label_color,
    note,
    styled,
)

_X_AXES = {"step": "engine step", "time": "time since start (s)"}
_DASHES = ("solid", "dot", "dash", "dashdot", "longdash")


def _steps_of(steps, arg: str = "steps") -> list[StepRecord]:
    if isinstance(steps, Result):
        return steps.steps
    if isinstance(steps, (list, tuple)) and all(isinstance(s, StepRecord) for s in steps):
        return list(steps)
    raise ValueError(f"{arg}: expected a Result or a list of StepRecord, got {type(steps).__name__}")


def _line_mode(xs) -> str:
    # a line through one point draws nothing: a one-step trace (one request, one token) needs a marker
    return "lines" if len(xs) > 1 else "lines+markers"


def _run_steps(records: list[StepRecord]) -> list[int]:
    """Step numbers counted from the trace's first step (0, 1, 2, ...).

    An engine numbers its steps from its creation, so a run after a warm-up on the same engine
    (`llm.generate(...)` then `llm.engine.trace.clear()`) started its axis at 16 or so; each run (each
    replica, which has its own counter) now starts at 0, as on a fresh engine or in the simulator."""
    return [s.step - records[0].step for s in records] if records else []


def _slots(s: StepRecord) -> tuple[int, int]:
    """(sequences that ran a prompt chunk, sequences that decoded one token) in this step."""
    used = len(s.batch) if s.batch else s.num_running
    decode = min(s.decode_seqs, used)
    return used - decode, decode


def _check_max_num_seqs(max_num_seqs: int, records: list[StepRecord]) -> None:
    """The limit line must be the engine's: every step's slots (in the batch + idle) add up to it.

    A wrong one drew a line at 8 over bars stacked to 4, telling the reader half the slots were
    missing when the trace says they never existed."""
    for n, s in zip(_run_steps(records), records, strict=True):
        used = sum(_slots(s))
        if used + s.idle_slots != max_num_seqs:
            raise ValueError(
                f"max_num_seqs: {max_num_seqs} disagrees with the step trace: step {n} has {used + s.idle_slots} "
                f"slots ({used} in the batch + {s.idle_slots} idle); pass the engine's max_num_seqs or leave it out")


def batch_occupancy(
    steps, *, max_num_seqs: int | None = None, x: str = "step", show_waiting: bool = True, title: str | None = None
) -> go.Figure:
    """Per step, the batch slots running prefill, running decode, and sitting idle (stacked bars).

    `steps`: a Result or a list of StepRecord. `x`: "step" (counted from the trace's first step, so a
    run after a warm-up starts at 0; hover also gives the engine's own number) or "time" (bars as wide
    as the step took). With `show_waiting`, a line shows the requests queued meanwhile: idle slots
    under a queue are waste. `max_num_seqs`, drawn as a dashed line, must be the engine's: every
    step's batch plus idle slots adds up to it, else a ValueError says which step disagrees.
    """
    check_choice("x", x, _X_AXES)
    check_count("max_num_seqs", max_num_seqs)
    records = _steps_of(steps)
    replicas = sorted({s.replica for s in records})
    if len(replicas) > 1:  # their bars would stack into one batch larger than any replica's
        raise ValueError(f"steps: come from {len(replicas)} replicas; plot one at a time, e.g. "
                         f"[s for s in result.steps if s.replica == {replicas[0]}]")
    title = title or "Batch occupancy per step"
    if not records:
        return empty_figure(title, "No step trace: only the engine and the simulator record one.")
    if max_num_seqs:
        _check_max_num_seqs(max_num_seqs, records)
    numbers = _run_steps(records)
    offset = records[0].step  # steps the engine took before this trace (a warm-up)
    if x == "step":
        xs, widths = numbers, None
        edges = [xs[0] - 0.5, xs[-1] + 0.5]
    else:
        xs, widths = [s.start_s + s.duration_s / 2 for s in records], [s.duration_s for s in records]
        edges = [records[0].start_s, records[-1].start_s + records[-1].duration_s]
    prefill, decode = zip(*(_slots(s) for s in records), strict=True)
    columns = {"prefill": list(prefill), "decode": list(decode), "idle": [s.idle_slots for s in records]}
    custom = [(n, s.start_s, s.duration_s * 1e3, s.prefill_tokens, s.num_waiting, s.step)
              for n, s in zip(numbers, records, strict=True)]
    engine_step = " (engine step %{customdata[5]})" if offset else ""
    fig = go.Figure()
    for name, ys in columns.items():
        fig.add_trace(
            go.Bar(
                name=f"{name} slots" if name == "idle" else f"{name} seqs", x=xs, y=ys, width=widths,
                marker=dict(color=PHASE_COLORS[name], line=dict(width=0)), customdata=custom,
                hovertemplate=(
                    f"step %{{customdata[0]}}{engine_step} at %{{customdata[1]:.3f}} s (%{{customdata[2]:.1f}} ms)<br>"
                    f"{name}: %{{y}}<br>prefill tokens %{{customdata[3]}} · waiting %{{customdata[4]}}<extra></extra>"
                ),
            )
        )
    if show_waiting:
        fig.add_trace(
            go.Scatter(
                name="waiting requests", x=xs, y=[s.num_waiting for s in records], mode=_line_mode(xs),
                line=dict(color="#555", dash="dot", shape="hv"), hovertemplate="%{y} waiting<extra></extra>",
            )
        )
    if max_num_seqs:
        fig.add_trace(
            go.Scatter(
                # edge to edge of the bars: from centre to centre it missed half of the first and last
                # bar, and all of a one-step trace's only bar
                name=f"max_num_seqs = {max_num_seqs}", x=edges, y=[max_num_seqs] * 2, mode="lines",
                line=dict(color="#000", dash="dash"), hoverinfo="skip",
            )
        )
    return styled(fig, title, barmode="stack", bargap=0, xaxis_title=_X_AXES[x], yaxis_title="sequences (slots)")


def kv_blocks(
    results,
    *,
    capacity: int | Mapping[str, int] | None = None,
    block_size: int | None = None,
    x: str = "time",
    title: str | None = None,
) -> go.Figure:
    """KV-cache blocks in use at each step, one line per run (per replica when a run has several: each
    has its own pool), with the pool's `capacity` if given.

    `results`: a Result, a list of them, or {label: Result}. `capacity`: one number for every run (one
    black line), or {label: blocks} when the runs' pools differ: each run's capacity is then drawn in
    its own colour, as far as its own line goes. With `block_size`, hover also shows how many tokens of
    context the blocks can hold. `x`: "time" or "step" (counted from each line's first step).
    Capacities and `block_size` are whole numbers; a capacity below its run's peak blocks in use is
    refused, as no pool holds more blocks than it has.
    """
    check_choice("x", x, _X_AXES)
    check_count("block_size", block_size)
    runs = as_runs(results)
    per_run = _capacities(capacity, [label for label, _ in runs])
    _check_capacities(capacity, per_run, runs)
    title = title or "KV blocks in use"
    fig = go.Figure()
    xs_all = []
    spans: dict[str, list[float]] = {}  # per run label: its lines' x extent, for its own capacity line
    lines = []  # one per run, or per replica of a run: each replica has its own pool
    for i, (label, r) in enumerate(runs):
        replicas = sorted({s.replica for s in r.steps})
        for n, k in enumerate(replicas):
            steps = [s for s in r.steps if s.replica == k]
            lines.append((label, label if len(replicas) == 1 else f"{label} · replica {k}", steps, i, n))
    for run, label, steps, i, n in lines:
        xs = _run_steps(steps) if x == "step" else [s.start_s for s in steps]
        # time: to the end of the last step, when its blocks were still in use (a one-step run has some span)
        extent = [xs[0], xs[-1] if x == "step" else steps[-1].start_s + steps[-1].duration_s]
        xs_all += extent
        spans.setdefault(run, []).extend(extent)
        blocks = [s.kv_blocks_used for s in steps]
        tokens_hover = f"<br>up to %{{customdata:,}} tokens ({block_size}/block)" if block_size else ""
        of_pool = f" of {per_run[run]}" if run in per_run else ""
        at = "step %{x}" if x == "step" else "%{x:.3f} s"  # "at 0.30000000000000004" was a float's repr
        fig.add_trace(
            go.Scatter(
                # the run's colour, as in every other figure of the same runs (numbering lines instead
                # shifted it past a run without a trace); a run's replicas differ by dash
                name=label, x=xs, y=blocks, mode=_line_mode(xs),
                line=dict(shape="hv", color=label_color(i), dash=_DASHES[n % len(_DASHES)]),
                customdata=[b * block_size for b in blocks] if block_size else None,
                hovertemplate=f"{label}<br>%{{y}}{of_pool} blocks at {at}{tokens_hover}<extra></extra>",
            )
        )
    if not fig.data:
        return empty_figure(title, "No step trace: only the engine and the simulator record one.")
    if isinstance(capacity, Mapping):
        for i, (label, _) in enumerate(runs):
            if label in per_run and label in spans:
                _capacity_line(fig, f"{label}: capacity = {per_run[label]}", per_run[label], spans[label],
                               label_color(i))
    elif capacity:
        _capacity_line(fig, f"capacity = {capacity}", capacity, xs_all, "#000")
    styled(fig, title, xaxis_title=_X_AXES[x], yaxis=dict(title="KV blocks in use", rangemode="tozero"))
    untraced = [label for label, r in runs if not r.steps]
    if untraced:  # an HTTP run has no step trace: say so rather than drop its line unseen
        note(fig, f"No step trace for: {', '.join(untraced)}")
    return fig


def _capacities(capacity, labels: list[str]) -> dict[str, int]:
    """{run label: pool size} from one number (every run) or a {label: number} mapping."""
    if not isinstance(capacity, Mapping):
        check_count("capacity", capacity)
        return {label: capacity for label in labels} if capacity else {}
    unknown = [k for k in capacity if k not in labels]
    if unknown:
        raise ValueError(f"capacity: no run labelled {unknown}; the runs are {labels}")
    for label, blocks in capacity.items():
        check_count(f"capacity[{label!r}]", blocks)
    return {label: blocks for label, blocks in capacity.items() if blocks}


def _check_capacities(capacity, per_run: dict[str, int], runs) -> None:
    """A pool cannot hold more blocks than it has: a capacity under the trace's peak is not this
    run's (a line at 3 under 6 blocks in use claimed the run overflowed its cache)."""
    for label, r in runs:
        peak = max((s.kv_blocks_used for s in r.steps), default=0)
        if label in per_run and peak > per_run[label]:
            arg = f"capacity[{label!r}]" if isinstance(capacity, Mapping) else "capacity"
            raise ValueError(f"{arg}: {per_run[label]} blocks, but run {label!r} has {peak} in use at its peak; "
                             "pass the KV pool's size in blocks, or leave it out")


def _capacity_line(fig: go.Figure, name: str, blocks: int, xs: list[float], color: str) -> None:
    fig.add_trace(
        go.Scatter(
            name=name, x=[min(xs), max(xs)], y=[blocks] * 2, mode=_line_mode(set(xs)),
            line=dict(color=color, dash="dash"), hoverinfo="skip",
        )
    )
