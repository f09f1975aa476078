"""`cost_playground()`: requests, tokens per request, cached share and batch API against every
provider's prices."""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from lab import viz
from lab.widgets._common import (
    Playground,
    replace_figure,
)


def cost_playground(*, prices=None) -> Playground:
    """Requests per month, tokens per request, cached share and batch API against every provider's
    prices; the bars and the table update at once."""
    from lab.cost import TokenCounts, cost_table, load_prices

    prices = prices or load_prices()
    providers = sorted({r.provider for r in prices.rows})
    style = {"description_width": "initial"}
    controls = {
        "requests": widgets.IntText(value=100_000, description="requests", style=style),
        # continuous_update=False: each value rebuilds the whole table and figure (~30 ms), so a drag
        # queued dozens of redraws; the other playgrounds' sliders wait for the release too
        "prompt_tokens": widgets.IntSlider(value=800, min=50, max=8000, step=50, description="prompt tokens",
                                           style=style, continuous_update=False),
        "output_tokens": widgets.IntSlider(value=300, min=50, max=4000, step=50, description="output tokens",
                                           style=style, continuous_update=False),
        "cached_fraction": widgets.FloatSlider(value=0.0, min=0, max=1, step=0.05, description="cached share",
                                               readout_format=".0%", style=style, continuous_update=False),
        "batch": widgets.Checkbox(value=False, description="batch API (24 h)"),
        "providers": widgets.SelectMultiple(options=providers, value=tuple(providers), description="providers",
                                            rows=min(6, len(providers)), style=style),
    }
    # sliders start at 50 in steps of 50 (from 1 their maximum was out of reach); the exact count goes
    # through code: pg.controls["prompt_tokens"].value = 123
    figures = {"cost": go.FigureWidget()}
    status = widgets.HTML()

    def on_change(_=None):
        c = controls
        requests = c["requests"].value
        if requests < 1:  # was priced as 1 request, silently; the bars and table keep the last valid count
            status.value = (f"<span style='color:#b00'><b>requests</b>: expected a whole number of requests "
                            f"≥ 1, got {html.escape(str(requests))}; the bars still show the last valid count</span>")
            return
        counts = TokenCounts(requests, requests * c["prompt_tokens"].value, requests * c["output_tokens"].value)
        frame = cost_table(counts, cached_fraction=c["cached_fraction"].value, batch=c["batch"].value, prices=prices)
        frame = frame[frame["provider"].isin(c["providers"].value)]
        pg.results["frame"] = frame
        replace_figure(figures["cost"], viz.cost_bars(frame, title=f"Cost of {requests:,} requests (USD)"))
        cheapest = frame.dropna(subset=["cost_usd"]).head(3)
        if cheapest.empty:  # said why: the status read "cheapest: " and the chart "No priced rows to plot."
            why = ("none of the selected providers offers a batch API: turn batch off or select another provider"
                   if c["batch"].value and len(frame) else "no provider selected")
            status.value = f"<span style='color:#b00'>nothing to price: {why}</span>"
            return
        status.value = "cheapest: " + ", ".join(
            f"{html.escape(r.provider)} {html.escape(r.model)} {_dollars(r.cost_usd)}" for r in cheapest.itertuples())

    for control in controls.values():
        control.observe(on_change, names="value")
    rows = [widgets.HBox([controls["requests"], controls["prompt_tokens"], controls["output_tokens"]]),
            widgets.HBox([controls["cached_fraction"], controls["batch"], controls["providers"]]), status,
            figures["cost"]]
    pg = Playground(controls, figures, status, rows)
    on_change()
    return pg


def _dollars(amount: float) -> str:
    """$1,234.50 for a dollar or more; below that three significant digits ($0.00421), so the cheapest
    providers of a small workload can still be told apart (two decimals showed each as $0.00)."""
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    return "$" + np.format_float_positional(amount, precision=3, fractional=False, trim="-")
