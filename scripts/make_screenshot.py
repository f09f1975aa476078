"""Rebuild the README picture docs/screenshots/static_vs_continuous_occupancy.png.

    python scripts/make_screenshot.py [--out PATH]

The same workload as notebooks/01_static_vs_continuous.ipynb (32 requests, all queued at the start, 8
batch slots), served on the real engine with the bundled model under each policy, drawn with the
notebook's figure function (`lab.viz.batch_occupancy`), one panel per policy on a shared step axis.
Engine steps do not depend on the machine, so the picture is the same anywhere (about 393 steps for
static batching and 192 for continuous). The runs take seconds on a CPU.

Writing a PNG needs plotly's image export: the `kaleido` package (not in the project's extras), and
for kaleido >= 1 a Chrome or Chromium it can find (a system one, or `plotly_get_chrome`; the picture
in the repo: kaleido 1.5.0 with Debian's chromium, `BROWSER_PATH=/usr/bin/chromium`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plotly.subplots import make_subplots

from lab import viz
from lab.engine import LLM
from lab.workload import Exponential, Uniform, synthetic

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots" / "static_vs_continuous_occupancy.png"
SLOTS = 8
POLICIES = ("static", "continuous")


def workload():
    # notebooks/01_static_vs_continuous.ipynb, cell 01-01: keep the two in step
    return synthetic(32, prompt_lens=Uniform(16, 64), output_lens=Exponential(40, low=4, high=150),
                     seed=0, text_prompts=True, chars_per_token=1.0, name="mixed lengths")


def run(policy: str, work):
    # notebooks/01_static_vs_continuous.ipynb, cell 01-03
    llm = LLM(policy=policy, max_num_seqs=SLOTS)
    llm.generate(["To be"], use_tqdm=False)  # warm-up
    llm.engine.trace.clear()
    return llm.run_workload(work, progress=False, label=policy)


def figure(results: dict):
    work_size = len(next(iter(results.values())).requests)
    titles = [f"{policy} batching: {len(r.steps)} steps, {r.summary()['wasted_slot_steps']:,} wasted slot-steps"
              for policy, r in results.items()]
    fig = make_subplots(rows=len(results), cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=titles)
    for row, result in enumerate(results.values(), start=1):
        panel = viz.batch_occupancy(result, max_num_seqs=SLOTS)
        for trace in panel.data:
            trace.showlegend = row == 1
            trace.legendgroup = trace.name
            fig.add_trace(trace, row=row, col=1)
        fig.update_yaxes(title_text="sequences", row=row, col=1)
    fig.update_xaxes(title_text="engine step", row=len(results), col=1)
    fig.update_layout(
        template=panel.layout.template, barmode="stack", bargap=0, width=1000, height=640,
        title=f"Same {work_size} requests, same {SLOTS} slots: batch occupancy per engine step (bundled model, CPU)",
        legend=dict(orientation="h", x=0, y=-0.16), margin=dict(l=60, r=40, t=80, b=100),
    )
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    work = workload()
    results = {policy: run(policy, work) for policy in POLICIES}
    for policy, r in results.items():
        print(f"{policy:10s}: {len(r.steps)} steps, {r.summary()['wasted_slot_steps']} wasted slot-steps")
    fig = figure(results)
    try:
        import kaleido  # noqa: F401
    except ImportError:
        print("cannot write a PNG: plotly's image export needs the kaleido package "
              "(pip install kaleido; kaleido >= 1 also needs Chrome or Chromium)", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_image(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
