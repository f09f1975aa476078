"""What one decode step costs against how many sequences it carries: a + b * rows.

The split decides what continuous batching can win. Static and continuous batching compute the same
tokens; static takes more steps, each carrying fewer sequences. If a step cost only its rows (b),
the two would tie; if it cost only its fixed part (a: reading the weights, launching the layers),
they would differ by their step ratio. Prints a table, the least-squares fit and writes JSON.

    python bench/engine_steps.py                      # small random Llama (bench/engine.py's), CPU
    python bench/engine_steps.py --context 300 --rows 1 4 16 64
    python bench/engine_steps.py --profile            # also: where a step's CPU time goes (torch.profiler)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _cli import check_out, device_arg, device_name, stop_on_sigterm
from _machine import cpu_name  # bench/ is on sys.path when a bench runs as a script
from engine import SHAPES, build_model

from lab.cli_args import positive_int_arg
from lab.engine import LLM, SamplingParams


def decoding_engine(folder: Path, rows: int, context: int, args):
    """An engine whose next steps are pure decodes of `rows` sequences at about `context` tokens."""
    llm = LLM(folder, device=args.device, dtype=args.dtype, max_num_seqs=rows,
              max_num_batched_tokens=max(2048, rows * context), enable_prefix_caching=False,
              cuda_graphs=args.cuda_graphs)
    rng = np.random.default_rng(rows)
    vocab = SHAPES[args.shape]["vocab_size"]
    params = SamplingParams(max_tokens=10_000, temperature=0, ignore_eos=True)
    for i in range(rows):
        llm.engine.add_request(rng.integers(0, vocab, context).tolist(), params, f"r{i}")
    for _ in range(3):  # the prefill, then two warm decode steps (on a GPU the first records its graph)
        llm.engine.step()
    return llm.engine


def profile_steps(engine, steps: int) -> dict[str, float]:
    """Self CPU time (us) per operator over `steps` steps, largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--device", type=device_arg, default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--rows", type=positive_int_arg, nargs="+", default=[1, 2, 4, 8, 12, 16],
                    help="row counts to time, at least two (the fit is a line through them)")
    ap.add_argument("--context", type=positive_int_arg, default=170,
                    help="tokens per sequence (bench/engine.py's mean is ~170)")
    ap.add_argument("--steps", type=positive_int_arg, default=10, help="decode steps timed per round")
    ap.add_argument("--repeat", type=positive_int_arg, default=7,
                    help="rounds, interleaving the row counts; medians reported")
    ap.add_argument("--profile", action="store_true", help="also profile --steps steps at the fewest and most rows")
    ap.add_argument("--cuda-graphs", action="store_true", help="on a GPU: decode steps replay CUDA graphs")
    ap.add_argument("--out", default="bench/results/engine_steps.json")
    args = ap.parse_args()
    args.rows = list(dict.fromkeys(args.rows))
    if len(args.rows) < 2:
        ap.error(f"--rows: give at least two different row counts for the fit, got {args.rows}")
    # each timed step adds a token to every sequence; one that reaches the model's context finishes, and
    # the steps after it would time fewer rows (or none) than the table says
    steps = 3 + args.steps * (args.repeat + args.profile)  # 3: the prefill and two warm-up steps
    room = SHAPES[args.shape]["max_position_embeddings"]
    if args.context + steps > room:
        ap.error(f"--context: {args.context} tokens + {steps} steps exceed shape {args.shape}'s context of {room} "
                 f"tokens; allowed: at most {room - steps} with these --steps, --repeat and --profile")
    check_out(ap, args.out)
    stop_on_sigterm()  # the model's temporary folder must not outlive a `timeout`

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(args.shape, Path(tmp) / args.shape)
        engines = {n: decoding_engine(folder, n, args.context, args) for n in args.rows}
        times = {n: [] for n in args.rows}
        for _ in range(args.repeat):  # contexts grow by `steps` a round, alike for every row count
            for n, engine in engines.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    engine.step()
                times[n].append((time.perf_counter() - start) / args.steps * 1e3)

        profiles = {n: profile_steps(engines[n], args.steps) for n in {min(args.rows), max(args.rows)}} \
            if args.profile else {}

    median = {n: statistics.median(t) for n, t in times.items()}
    b, a = np.polyfit(list(median), list(median.values()), 1)
    print(f"decode steps, shape {args.shape}, context ~{args.context} tokens, {args.dtype} on {args.device}, "
          f"medians of {args.repeat} rounds x {args.steps} steps")
    print("rows | ms/step (median) | range | ms per row | fit a + b*rows")
    for n in args.rows:
        print(f"{n:4d} | {median[n]:8.2f} | {min(times[n]):.2f}-{max(times[n]):.2f} | {median[n] / n:6.2f} | "
              f"{a + b * n:6.2f}")
    print(f"fit: a = {a:.2f} ms per step, b = {b:.3f} ms per row; a full step of {max(args.rows)} rows is "
          f"{a / (a + b * max(args.rows)):.0%} fixed")
    for n, ops in sorted(profiles.items()):
        total = sum(ops.values())
        print(f"{n} rows, CPU time per step by operator (self time): " + ", ".join(
            f"{name} {us / args.steps / 1e3:.2f} ms ({us / total:.0%})" for name, us in list(ops.items())[:6]))
    machine = {"platform": platform.platform(), "processor": cpu_name(), "cpu_threads": torch.get_num_threads(),
               "device": device_name(args.device),
               "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "machine": machine, "ms_per_step": times,
                                         "median_ms": median, "fit": {"a_ms": a, "b_ms_per_row": b},
                                         "profile_self_cpu_us": profiles}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
