"""The options of `batching-lab simulate`: `add_simulate_args(parser)` declares them, with their
defaults and examples; lab.sim.cli_commands turns them into a run.
"""

from __future__ import annotations

import argparse
import math

from lab.cli_args import number_arg, positive_int_arg, seed_arg
from lab.sim.cluster import ROUTERS
from lab.sim.gpus import GPUS, MODELS

DEFAULT_MODEL = "llama-3.1-8b"
# custom model shape: option -> ModelShape field; all five are needed to describe a model
SHAPE_OPTIONS = {
    "--params": "params",
    "--layers": "layers",
    "--hidden": "hidden",
    "--kv-heads": "kv_heads",
    "--head-dim": "head_dim",
}
_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _count(text: str) -> float:
    """A parameter count: 8030000000, 8.03e9, 8.03B or 494M."""
    t = text.strip().lower()
    scale = _UNITS.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if t[-1:] in _UNITS else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count such as 8e9, 8B or 500M, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite count > 0, got {text!r}")
    return value


# options that describe one workload source; given with the other source they would be ignored
TRACE_DEFAULTS = {"trace_start": 0.0, "trace_end": None, "rate_scale": 1.0, "max_requests": None}
GENERATED_DEFAULTS = {"num_prompts": 1000, "rate": math.inf, "burstiness": 1.0, "input_len": 1024,
                      "output_len": 128, "range_ratio": 0.0, "seed": 0}  # a trace draws nothing at random


SIMULATE_EXAMPLES = """examples:
  batching-lab simulate --num-prompts 200 --rate 10 --input-len 512 --output-len 128
  batching-lab simulate --trace conv --trace-end 600 --replicas 2 --router least_outstanding --goodput ttft:500
  batching-lab simulate --num-prompts 100 --gpu L4 --model qwen2.5-7b --dtype-bytes 1 --result-json l4.json
  batching-lab simulate --num-prompts 100 --gpu A100-80GB \\
      --params 494M --layers 24 --hidden 896 --kv-heads 2 --head-dim 64 --max-model-len 32768
"""


def add_simulate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    src = p.add_argument_group("workload: an Azure trace, or generated (vllm bench serve's random dataset)")
    src.add_argument("--trace", choices=["code", "conv"],
                     help="replay the bundled Azure LLM inference trace 2023 of this service: an hour, "
                          "8.8k (code) or 19k (conv) requests (default: a generated workload)")
    src.add_argument("--trace-start", type=number_arg(0, low_ok=True),
                     help="with --trace: seconds into the trace (default 0)")
    src.add_argument("--trace-end", type=number_arg(),
                     help="with --trace: seconds into the trace (default: its end)")
    src.add_argument("--rate-scale", type=number_arg(),
                     help="with --trace: 2.0 replays it at twice its rate (default 1)")
    src.add_argument("--max-requests", type=positive_int_arg, help="with --trace: keep the first N requests (default: all)")
    src.add_argument("--num-prompts", type=positive_int_arg, help="generated: requests (default 1000)")
    src.add_argument("--rate", type=number_arg(inf_ok=True),
                     help="generated: requests per second; inf: all at once (default inf)")
    src.add_argument("--burstiness", type=number_arg(inf_ok=True),
                     help="generated: 1 = Poisson (default); < 1 burstier, > 1 more even")
    src.add_argument("--input-len", type=positive_int_arg, help="generated: prompt tokens (default 1024)")
    src.add_argument("--output-len", type=positive_int_arg, help="generated: output tokens (default 128)")
    src.add_argument("--range-ratio", type=number_arg(0, low_ok=True, high=1),
                     help="generated: lengths uniform in len x [1-r, 1+r], 0 <= r < 1 (default 0)")
    src.add_argument("--seed", type=seed_arg, help="generated: arrivals and lengths (default 0)")
    hw = p.add_argument_group("hardware and engine")
    hw.add_argument("--gpu", choices=list(GPUS), default="H100-SXM", help="the GPU of each replica (default: %(default)s)")
    hw.add_argument(
        "--model", choices=list(MODELS), default=None, help=f"a named shape (default: {DEFAULT_MODEL})"
    )
    hw.add_argument("--tensor-parallel", type=positive_int_arg, default=1,
                    help="GPUs per replica, splitting the model; two all-reduces per layer each step go "
                         "over the GPU's link (default: %(default)s)")
    hw.add_argument("--replicas", type=positive_int_arg, default=1,
                    help="copies of the model, each on its own GPUs (default: %(default)s)")
    hw.add_argument("--router", choices=list(ROUTERS), default=None,
                    help="how requests are spread over the replicas (default: round_robin)")
    hw.add_argument("--policy", choices=["continuous", "static"], default="continuous",
                    help="continuous batching, or static: a batch runs until its last request ends "
                         "(default: %(default)s)")
    hw.add_argument("--max-num-seqs", type=positive_int_arg, default=256,
                    help="most requests in a batch (default: %(default)s)")
    hw.add_argument("--max-num-batched-tokens", type=positive_int_arg, default=8192,
                    help="most tokens in one step, >= --max-num-seqs (default: %(default)s)")
    hw.add_argument("--block-size", type=positive_int_arg, default=16,
                    help="tokens per KV-cache block (default: %(default)s)")
    hw.add_argument("--num-blocks", type=positive_int_arg, default=None,
                    help="KV-cache blocks per replica (default: what fits on the GPU)")
    hw.add_argument("--gpu-memory-utilization", type=number_arg(high=1, high_ok=True), default=None,
                    help="share of GPU memory for weights and KV cache, in (0, 1] (default 0.9); "
                         "not with --num-blocks")
    hw.add_argument("--no-prefix-caching", action="store_true",
                    help="do not reuse the KV cache of a shared prompt prefix (default: reuse it)")
    hw.add_argument("--no-chunked-prefill", action="store_true",
                    help="prefill a prompt in one step rather than in chunks (default: chunks)")
    shape = p.add_argument_group(
        "custom model shape, instead of --model (from the model's config.json; all of the first five)"
    )
    shape.add_argument("--params", type=_count, help="parameter count: 8.03e9, 8.03B, 494M (default: none: a named --model)")
    shape.add_argument("--layers", type=positive_int_arg, help="num_hidden_layers (default: none)")
    shape.add_argument("--hidden", type=positive_int_arg, help="hidden_size (default: none)")
    shape.add_argument("--kv-heads", type=positive_int_arg, help="num_key_value_heads (default: none)")
    shape.add_argument(
        "--head-dim", type=positive_int_arg, help="head_dim (hidden_size / num_attention_heads where config.json has none) (default: none)"
    )
    shape.add_argument(
        "--heads", type=positive_int_arg, help="num_attention_heads, where it is not hidden / head size (Qwen3) (default: --hidden / --head-dim)"
    )
    # these two also adjust a named --model (fp8 weights and cache: --dtype-bytes 1)
    shape.add_argument(
        "--dtype-bytes", type=positive_int_arg, help="bytes per weight and KV value (default 2: bf16)"
    )
    shape.add_argument(
        "--max-model-len", type=positive_int_arg, help="longest context allowed (custom default 8192)"
    )
    out = p.add_argument_group("output")
    out.add_argument("--goodput", nargs="*", default=[], metavar="KEY:MS",
                     help="SLOs in milliseconds, KEY one of ttft, tpot, e2el, e.g. ttft:500 tpot:50; the "
                          "summary then counts the requests that meet them all (default: none)")
    out.add_argument("--result-json", help="also write the options and summary to this JSON file (default: none)")
    out.add_argument("--no-progress", action="store_true",
                     help="no progress bar, for scripts and CI logs (default: a bar on stderr)")
    p.epilog = SIMULATE_EXAMPLES
    return p
