"""ipywidgets playgrounds built from the runners and `lab.viz`: move a control, watch the figures change.

`batching_playground()` (simulator at once, the real engine on a button), `kv_cache_playground()`
(KV cache size, a shared prompt prefix and prefix caching, simulated at once), `faults_playground(server)`
(fault probabilities against a local server, retries, nothing lost) and `cost_playground()`.
Each returns a `Playground`: a VBox with `.controls`, `.figures` (FigureWidgets updated in place)
and `.results`, so code (and tests) can drive it as a user would.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go

from lab import viz
from lab.metrics import Result
from lab.workload import Fixed, LogNormal, RequestSpec, Uniform, Workload, synthetic

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
    if v is None:
        return "–"
    return f"{v:,.1f}" if isinstance(v, float) else str(v)


# -- batching ------------------------------------------------------------------------------------
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


# -- KV cache -------------------------------------------------------------------------------------
KV_SUMMARY_KEYS = {k: v for k, v in SUMMARY_KEYS.items() if k != "wasted_slot_steps"}


def shared_prefix_workload(n: int, prefix_len: int, rate: float, seed: int = 0) -> Workload:
    """Requests whose prompts start with the same `prefix_len` token ids (a system prompt), then 16-64
    tokens of their own; outputs of 16-96 tokens. Token ids, not text: the simulator has no tokenizer,
    so only equal ids can share cached blocks (see `lab.sim.replica._token_ids`)."""
    base = synthetic(n, rate=rate, prompt_lens=Uniform(16, 64), output_lens=Uniform(16, 96), seed=seed,
                     name="shared prefix")
    system = list(range(1, prefix_len + 1))
    return Workload([RequestSpec(spec.id, spec.arrival_s, prompt_token_ids=system + [10_000 + i] * spec.prompt_len,
                                 output_len=spec.output_len) for i, spec in enumerate(base)],
                    name=f"{prefix_len}-token shared prefix")


def kv_cache_playground(*, n: int = 32, rate: float = 50.0, max_num_seqs: int = 16, seed: int = 0,
                        step_model=None) -> Playground:
    """KV cache size (blocks of 16 tokens), the length of a prefix every prompt shares, and prefix
    caching on or off; the simulator (`step_model`, default a CPU-like `FittedStepModel`) answers at once.
    Too few blocks and running requests are preempted (their KV freed, recomputed later); prefix
    caching stores the shared blocks once, which saves both prefill work and room in the cache."""
    from lab.engine import EngineConfig
    from lab.sim import FittedStepModel, simulate

    step_model = step_model or FittedStepModel(DEFAULT_STEP_COEF)
    slow = dict(continuous_update=False, style={"description_width": "initial"})
    controls = {
        # from 48: the longest request (512 + 64 prompt + 96 output tokens) needs 42 blocks to run at all
        "num_blocks": widgets.IntSlider(value=128, min=48, max=1024, step=16, description="KV cache blocks", **slow),
        "prefix_len": widgets.IntSlider(value=256, min=0, max=512, step=16, description="shared prefix tokens",
                                        **slow),
        "prefix_caching": widgets.Checkbox(value=True, description="prefix caching"),
    }
    figures = {"kv": go.FigureWidget(), "timeline": go.FigureWidget()}
    status = widgets.HTML()

    def on_change(_=None):
        c = controls
        blocks, caching = c["num_blocks"].value, c["prefix_caching"].value
        config = EngineConfig(block_size=16, num_blocks=blocks, max_num_seqs=max_num_seqs,
                              enable_prefix_caching=caching)
        work = shared_prefix_workload(n, c["prefix_len"].value, rate, seed)
        label = f"{blocks} blocks · prefix caching {'on' if caching else 'off'}"
        result = simulate(work, config, step_model, label=label)
        pg.results = {"simulator": result}
        replace_figure(figures["kv"], viz.kv_blocks(result, capacity=blocks, block_size=16,
                                                    title=f"KV blocks in use · {label}"))
        replace_figure(figures["timeline"], viz.request_timeline(result, title=f"Request timeline · {label}"))
        preempted = sum(s.num_preempted for s in result.steps)
        prefill = sum(s.prefill_tokens for s in result.steps)
        peak = max((s.kv_blocks_used for s in result.steps), default=0)
        status.value = summary_html(pg.results, KV_SUMMARY_KEYS) + (
            f"<b>{preempted}</b> preemptions · <b>{prefill:,}</b> prefill tokens computed for "
            f"{work.total_prompt_tokens:,} prompt tokens · peak <b>{peak}</b> of {blocks} blocks")

    for control in controls.values():
        control.observe(on_change, names="value")
    rows = [widgets.HBox([controls["num_blocks"], controls["prefix_len"], controls["prefix_caching"]]), status,
            figures["kv"], figures["timeline"]]
    pg = Playground(controls, figures, status, rows)
    on_change()
    return pg


# -- faults and retries ------------------------------------------------------------------------
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


# -- costs ----------------------------------------------------------------------------------------
def cost_playground(*, prices=None) -> Playground:
    """Requests per month, tokens per request, cached share and batch API against every provider's
    prices; the bars and the table update at once."""
    from lab.cost import TokenCounts, cost_table, load_prices

    prices = prices or load_prices()
    providers = sorted({r.provider for r in prices.rows})
    style = {"description_width": "initial"}
    controls = {
        "requests": widgets.IntText(value=100_000, description="requests", style=style),
        "prompt_tokens": widgets.IntSlider(value=800, min=50, max=8000, step=50, description="prompt tokens",
                                           style=style),
        "output_tokens": widgets.IntSlider(value=300, min=50, max=4000, step=50, description="output tokens",
                                           style=style),
        "cached_fraction": widgets.FloatSlider(value=0.0, min=0, max=1, step=0.05, description="cached share",
                                               readout_format=".0%", style=style),
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
        requests = max(1, int(c["requests"].value))
        counts = TokenCounts(requests, requests * c["prompt_tokens"].value, requests * c["output_tokens"].value)
        frame = cost_table(counts, cached_fraction=c["cached_fraction"].value, batch=c["batch"].value, prices=prices)
        frame = frame[frame["provider"].isin(c["providers"].value)]
        pg.results["frame"] = frame
        replace_figure(figures["cost"], viz.cost_bars(frame, title=f"Cost of {requests:,} requests (USD)"))
        cheapest = frame.dropna(subset=["cost_usd"]).head(3)
        status.value = "cheapest: " + ", ".join(
            f"{html.escape(r.provider)} {html.escape(r.model)} ${r.cost_usd:,.2f}" for r in cheapest.itertuples())

    for control in controls.values():
        control.observe(on_change, names="value")
    rows = [widgets.HBox([controls["requests"], controls["prompt_tokens"], controls["output_tokens"]]),
            widgets.HBox([controls["cached_fraction"], controls["batch"], controls["providers"]]), status,
            figures["cost"]]
    pg = Playground(controls, figures, status, rows)
    on_change()
    return pg
