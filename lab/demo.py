"""`batching-lab demo`: static versus continuous batching on the bundled model, side by side.

Both policies serve the same Poisson workload of Shakespeare prompts in real time; the terminal
gets a summary table, and an HTML report holds the timelines, occupancy and latency figures.
"""

from __future__ import annotations

import gc
import html
from pathlib import Path

from lab.metrics import Result
from lab.workload import Exponential, Uniform, Workload, synthetic

TABLE_COLUMNS = {
    "output_throughput": "output tok/s",
    "request_throughput": "req/s",
    "mean_ttft_ms": "mean TTFT ms",
    "p99_ttft_ms": "p99 TTFT ms",
    "mean_e2el_ms": "mean E2E ms",
    "p99_e2el_ms": "p99 E2E ms",
    "wasted_slot_steps": "wasted slot-steps",
}
MAX_ARRIVAL_SPAN_S = 3600.0  # each policy replays the arrivals on the wall clock


def demo_workload(n: int = 48, rate: float = 16.0, seed: int = 0) -> Workload:
    """Prompts of 16-96 characters from the corpus; most answers short, a few long (as in real traffic)."""
    return synthetic(n, rate=rate, prompt_lens=Uniform(16, 96), output_lens=Exponential(48, low=4, high=150),
                     seed=seed, text_prompts=True, chars_per_token=1.0, name="demo")


def arrival_span_error(workload: Workload, rate: float) -> str | None:
    """Why `rate` is too low for the demo, or None. Its runs sleep until each arrival, so a rate of 1e-9
    would wait for years (and 1e-300 overflowed time.sleep after the warm-up): say so before the run."""
    span = max(r.arrival_s for r in workload.requests)
    if span <= MAX_ARRIVAL_SPAN_S:
        return None
    return (f"must let the {len(workload.requests)} requests arrive within {MAX_ARRIVAL_SPAN_S:.0f} s "
            f"(the demo waits for each on the wall clock, once per policy), got {rate:g}: they would take {span:.3g} s")


def run_demo(model=None, n: int = 48, rate: float = 16.0, max_num_seqs: int = 16, seed: int = 0,
             progress: bool = True, device: str = "auto") -> dict[str, Result]:
    from lab.engine import LLM

    workload = demo_workload(n, rate, seed)
    if error := arrival_span_error(workload, rate):
        raise ValueError(f"rate: {error}")
    results = {}
    for policy in ("static", "continuous"):
        llm = LLM(model, device=device, policy=policy, max_num_seqs=max_num_seqs, seed=seed)
        llm.generate(["To be"], use_tqdm=False)  # warm-up, outside the measured run
        llm.engine.trace.clear()
        results[policy] = llm.run_workload(workload, progress=progress, label=policy)
        # gone before the next policy's engine is built: on a GPU that engine sizes its KV cache from
        # the memory left, and with this one still held a large model's second engine would not fit
        del llm
        gc.collect()
    return results


def summary_table(results: dict[str, Result]) -> str:
    rows = [["policy", *TABLE_COLUMNS.values()]]
    for name, result in results.items():
        s = result.summary()
        rows.append([name, *(f"{s[k]:.1f}" if isinstance(s[k], float) else str(s[k]) for k in TABLE_COLUMNS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report_figures(results: dict[str, Result], max_num_seqs: int) -> list:
    """The report's figures, in order. Step axes count each run's steps from 0: the warm-up in
    `run_demo` leaves the engine's own step counter at 16 or so (lab.viz renumbers them)."""
    from lab import viz

    figures = [viz.compare(results)]
    for name, result in results.items():
        figures.append(viz.request_timeline(result, title=f"{name}: request timeline"))
        figures.append(viz.batch_occupancy(result, max_num_seqs=max_num_seqs, title=f"{name}: batch occupancy"))
    figures += [viz.latency_cdf(results, metric="ttft"), viz.latency_cdf(results, metric="e2e"),
                viz.kv_blocks(results)]
    return figures


def write_report(results: dict[str, Result], path: str | Path, max_num_seqs: int) -> Path:
    figures = report_figures(results, max_num_seqs)
    # plotly.js inlined once, so the report opens offline (classrooms, no CDN)
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures)]
    body = "\n".join(parts)
    table = html.escape(summary_table(results))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>batching-lab demo</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'>"
            f"<h1>Static versus continuous batching</h1><pre>{table}</pre>{body}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
