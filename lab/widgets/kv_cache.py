"""`kv_cache_playground()`: KV cache size, a prefix every prompt shares, and prefix caching, in the
simulator; preemptions, prefill work and blocks in use follow."""

from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from lab import viz
from lab.widgets._common import (
    DEFAULT_STEP_COEF,
    SUMMARY_KEYS,
    Playground,
    replace_figure,
    summary_html,
)
from lab.workload import RequestSpec, Uniform, Workload, synthetic

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
