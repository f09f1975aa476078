"""`batching_playground()`: arrival rate, batch size, output-length spread and policy; the simulator
answers at once, a button replays the same workload on the real engine."""

from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from lab import viz
from lab.metrics import Result
from lab.widgets._common import (
    DEFAULT_STEP_COEF,
    Playground,
    replace_figure,
    reporting,
    summary_html,
)
from lab.workload import Fixed, LogNormal, Uniform, Workload, synthetic


def playground_workload(n: int, rate: float, spread: float, seed: int = 0) -> Workload:
    """Corpus prompts of 16-64 characters; outputs log-normal around 32 tokens, `spread` = sigma."""
    return synthetic(n, rate=rate, prompt_lens=Uniform(16, 64),
                     output_lens=LogNormal(32, spread, low=1, high=160) if spread > 0 else Fixed(32),
                     seed=seed, text_prompts=True, chars_per_token=1.0, name="playground")


def batching_playground(model=None, *, n: int = 40, seed: int = 0, step_model=None) -> Playground:
    """Arrival rate, batch size, output-length spread and policy. The simulator (virtual time,
    `step_model`, default a CPU-like `FittedStepModel`) answers as soon as a control moves; the
    button replays the same workload on the real engine (`LLM(model, ...)`, the bundled one by default).
    """
    from lab.engine import EngineConfig
    from lab.sim import FittedStepModel, simulate

    step_model = step_model or FittedStepModel(DEFAULT_STEP_COEF)
    slow = dict(continuous_update=False, style={"description_width": "initial"})
    controls = {
        "rate": widgets.FloatLogSlider(value=20, base=10, min=0, max=2.5, step=0.05,
                                       description="arrivals / s", **slow),
        "max_num_seqs": widgets.IntSlider(value=8, min=1, max=32, description="batch size", **slow),
        "spread": widgets.FloatSlider(value=0.8, min=0.0, max=1.5, step=0.1,
                                      description="output-length spread (σ)", **slow),
        "policy": widgets.ToggleButtons(options=["static", "continuous"], value="static"),
        "run_engine": widgets.Button(description="Run on the real engine", icon="play",
                                     layout=widgets.Layout(width="220px")),
    }
    figures = {"timeline": go.FigureWidget(), "occupancy": go.FigureWidget()}
    status = widgets.HTML()

    def current():
        c = controls
        work = playground_workload(n, c["rate"].value, c["spread"].value, seed)
        return work, c["policy"].value, c["max_num_seqs"].value

    def show(results: dict[str, Result], shown: Result, max_num_seqs: int) -> None:
        replace_figure(figures["timeline"], viz.request_timeline(shown, title=f"Request timeline · {shown.label}"))
        replace_figure(figures["occupancy"], viz.batch_occupancy(
            shown, max_num_seqs=max_num_seqs, title=f"Batch occupancy · {shown.label}"))
        status.value = summary_html(results)

    def on_change(_=None):
        work, policy, seqs = current()
        config = EngineConfig(policy=policy, max_num_seqs=seqs, num_blocks=4096)
        pg.results = {"simulator": simulate(work, config, step_model, label=f"simulator · {policy}")}
        show(pg.results, pg.results["simulator"], seqs)

    def on_engine(_=None):
        from lab.engine import LLM

        work, policy, seqs = current()
        button = controls["run_engine"]
        button.disabled, button.description = True, "running…"
        try:
            # a fresh engine each time, as the simulator starts fresh: a reused one would serve the same
            # prompts from its prefix cache and number its steps on from the last run
            llm = LLM(model, policy=policy, max_num_seqs=seqs, seed=seed)
            result = llm.run_workload(work, progress=False, label=f"engine · {policy}")
            pg.results["engine"] = result
            show(pg.results, result, seqs)
        finally:
            button.disabled, button.description = False, "Run on the real engine"

    for name in ("rate", "max_num_seqs", "spread", "policy"):
        controls[name].observe(on_change, names="value")
    controls["run_engine"].on_click(reporting(status, on_engine))
    rows = [widgets.HBox([controls["rate"], controls["max_num_seqs"], controls["spread"]]),
            widgets.HBox([controls["policy"], controls["run_engine"]]), status,
            figures["timeline"], figures["occupancy"]]
    pg = Playground(controls, figures, status, rows)
    on_change()
    return pg
