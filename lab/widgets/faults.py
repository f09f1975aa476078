"""`faults_playground(server)`: fault probabilities on a running `lab.server`, retries on the client,
and what happened to every request."""

from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from lab import viz
from lab.widgets._common import (
    Playground,
    replace_figure,
    reporting,
)
from lab.workload import Fixed, Uniform, synthetic


def faults_playground(server, *, api_key: str | None = None, n: int = 16, max_tokens: int = 12,
                      seed: int = 0) -> Playground:
    """Fault probabilities on a running `lab.server` (`with serve(...) as server`), retries on the
    client; the button sends `n` streaming requests and shows what happened to every one of them."""
    from lab.client import Client, run_workload
    from lab.server import FaultConfig

    slow = dict(continuous_update=False, style={"description_width": "initial"}, readout_format=".0%")
    controls = {
        # at most 0.5 each: the probabilities of the two statuses must not add up past 1
        "p429": widgets.FloatSlider(value=0.2, min=0, max=0.5, step=0.05, description="429 rate limit", **slow),
        "p504": widgets.FloatSlider(value=0.1, min=0, max=0.5, step=0.05, description="504 timeout", **slow),
        "cut": widgets.FloatSlider(value=0.0, min=0, max=0.5, step=0.05, description="cut stream", **slow),
        "max_retries": widgets.IntSlider(value=3, min=0, max=6, description="client max_retries",
                                         continuous_update=False, style={"description_width": "initial"}),
        "send": widgets.Button(description=f"Send {n} requests", icon="paper-plane",
                               layout=widgets.Layout(width="220px")),
    }
    figures = {"outcomes": go.FigureWidget(), "latency": go.FigureWidget()}
    status = widgets.HTML("Set the fault rates, then send.")
    work = synthetic(n, rate=50.0, prompt_lens=Uniform(8, 32), output_lens=Fixed(max_tokens), seed=seed,
                     text_prompts=True, chars_per_token=1.0, name="faults")

    def on_send(_=None):
        c = controls
        if server.state.shutting_down:
            status.value = ("This server has been closed (a later cell closes it); run the cell that starts "
                            "it again, then this one.")
            return
        c["send"].disabled = True
        previous = server.faults
        try:
            rates = {s: p for s, p in ((429, c["p429"].value), (504, c["p504"].value)) if p > 0}
            server.faults = FaultConfig(error_rates=rates, cut_rate=c["cut"].value, cut_after_chunks=2, seed=seed)
            retries = c["max_retries"].value
            with Client(base_url=server.url, api_key=api_key) as client:
                result = run_workload(client, work, max_retries=retries, label=f"max_retries={retries}")
            pg.results["http"] = result
            replace_figure(figures["outcomes"], viz.retries_and_errors(result))
            replace_figure(figures["latency"], viz.latency_cdf(result, metric="e2e"))
            ok = len(result.completed)
            # lost: a request with no final record, or one that failed without saying why
            accounted = {r.request_id for r in result.requests if r.ok or r.error}
            lost = len({spec.id for spec in work} - accounted)
            tried = sum(r.retries for r in result.requests)
            status.value = (f"<b>{ok}</b> ok · <b>{len(result.requests) - ok}</b> failed (each with its error) · "
                            f"<b>{tried}</b> retries · <b>{lost}</b> lost")
        finally:
            server.faults = previous  # as the playground found it
            c["send"].disabled = False

    controls["send"].on_click(reporting(status, on_send))
    rows = [widgets.HBox([controls["p429"], controls["p504"], controls["cut"]]),
            widgets.HBox([controls["max_retries"], controls["send"]]), status,
            figures["outcomes"], figures["latency"]]
    pg = Playground(controls, figures, status, rows)
    return pg
