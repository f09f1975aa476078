"""What every playground shares: the `Playground` box, swapping figures in place, errors shown in
the status line, a summary table, and the simulator's default CPU-like step time."""

from __future__ import annotations

import html
import math

import ipywidgets as widgets
import plotly.graph_objects as go

from lab.metrics import Result

# A CPU-like step time (seconds) for the simulator: a fixed cost per step plus a little per token.
# Fitted by eye to the bundled model on a laptop core; `FittedStepModel.fit(llm.engine.trace)` gives yours.
DEFAULT_STEP_COEF = {"const": 0.004, "prefill_tokens": 2e-5, "decode_seqs": 2e-4}
SUMMARY_KEYS = {
    "completed": "completed", "failed": "failed", "output_throughput": "output tok/s",
    "mean_ttft_ms": "mean TTFT ms", "p99_e2el_ms": "p99 E2E ms", "wasted_slot_steps": "wasted slot-steps",
}


class Playground(widgets.VBox):
    """A VBox with named controls and figures; `results` holds what the last interaction computed."""

    def __init__(self, controls: dict, figures: dict, status: widgets.HTML, layout_rows: list):
        super().__init__(layout_rows)
        self.controls, self.figures, self.status = controls, figures, status
        self.results: dict = {}


def replace_figure(target: go.FigureWidget, source: go.Figure) -> None:
    """Swap a FigureWidget's traces and layout for another figure's, in place (the view stays put)."""
    # The browser merges a new layout into the one it shows (Plotly.relayout), so a key only the old
    # figure had stayed on screen: an empty figure's "No priced rows" note over the next bars, say.
    # Unset those keys first; a None in a relayout removes the key in the browser too.
    new_keys = source.layout.to_plotly_json().keys()
    stale = {key: None for key in target.layout.to_plotly_json() if key not in new_keys}
    if stale:
        target.plotly_relayout(stale)
    with target.batch_update():
        target.data = ()
        target.add_traces(list(source.data))
        target.layout = source.layout


def reporting(status: widgets.HTML, callback):
    """A button callback whose errors land in the playground's status line: ipywidgets would send
    them to the Jupyter log, where a learner never looks, and the button would seem to do nothing."""

    def run(*args):
        try:
            callback(*args)
        except Exception as exc:  # shown, not swallowed: the message names what to change
            status.value = (f"<span style='color:#b00'><b>{html.escape(type(exc).__name__)}</b>: "
                            f"{html.escape(str(exc))}</span>")

    return run


def summary_html(results: dict[str, Result], keys: dict[str, str] = SUMMARY_KEYS) -> str:
    """A small HTML table of `Result.summary()` numbers, one row per run."""
    head = "".join(f"<th style='padding:0 8px'>{html.escape(v)}</th>" for v in keys.values())
    rows = []
    for name, result in results.items():
        s = result.summary()
        cells = "".join(f"<td style='padding:0 8px;text-align:right'>{_fmt(s.get(k))}</td>" for k in keys)
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):  # mean TPOT of one-token outputs: none
        return "–"
    return f"{v:,.1f}" if isinstance(v, float) else str(v)
