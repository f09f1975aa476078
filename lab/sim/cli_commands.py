"""`batching-lab simulate`: a trace or a generated workload on simulated GPUs, summary at the end.

`add_simulate_args(parser)` declares the options, `simulate_main(args) -> int` runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

from lab.metrics import format_summary
from lab.sim.cluster import ROUTERS
from lab.sim.gpus import GPUS, MODELS, ModelShape, get_model

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_simulate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    src = p.add_argument_group("workload: an Azure trace, or generated (vllm bench serve's random dataset)")
    src.add_argument("--trace", choices=["code", "conv"], help="Azure LLM inference trace 2023")
    src.add_argument("--trace-start", type=float, default=0.0, help="seconds into the trace")
    src.add_argument(
        "--trace-end", type=float, default=None, help="seconds into the trace (default: its end)"
    )
    src.add_argument("--rate-scale", type=float, default=1.0, help="2.0 replays the trace at twice its rate")
    src.add_argument("--max-requests", type=int, default=None)
    src.add_argument("--num-prompts", type=int, default=1000)
    src.add_argument("--rate", type=float, default=math.inf, help="requests per second (default: inf)")
    src.add_argument("--burstiness", type=float, default=1.0, help="1 = Poisson; < 1 burstier")
    src.add_argument("--input-len", type=int, default=1024)
    src.add_argument("--output-len", type=int, default=128)
    src.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in len x [1-r, 1+r]")
    src.add_argument("--seed", type=int, default=0)
    hw = p.add_argument_group("hardware and engine")
    hw.add_argument("--gpu", choices=list(GPUS), default="H100-SXM")
    hw.add_argument(
        "--model", choices=list(MODELS), default=None, help=f"a named shape (default: {DEFAULT_MODEL})"
    )
    hw.add_argument("--tensor-parallel", type=int, default=1)
    hw.add_argument("--replicas", type=int, default=1)
    hw.add_argument("--router", choices=list(ROUTERS), default="round_robin")
    hw.add_argument("--policy", choices=["continuous", "static"], default="continuous")
    hw.add_argument("--max-num-seqs", type=int, default=256)
    hw.add_argument("--max-num-batched-tokens", type=int, default=8192)
    hw.add_argument("--block-size", type=int, default=16)
    hw.add_argument("--num-blocks", type=int, default=None, help="default: what fits on the GPU")
    hw.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    hw.add_argument("--no-prefix-caching", action="store_true")
    hw.add_argument("--no-chunked-prefill", action="store_true")
    shape = p.add_argument_group(
        "custom model shape, instead of --model (from the model's config.json; all of the first five)"
    )
    shape.add_argument("--params", type=_count, help="parameter count: 8.03e9, 8.03B, 494M")
    shape.add_argument("--layers", type=_positive_int, help="num_hidden_layers")
    shape.add_argument("--hidden", type=_positive_int, help="hidden_size (query heads x head size)")
    shape.add_argument("--kv-heads", type=_positive_int, help="num_key_value_heads")
    shape.add_argument("--head-dim", type=_positive_int, help="head size (hidden_size / num_attention_heads)")
    # these two also adjust a named --model (fp8 weights and cache: --dtype-bytes 1)
    shape.add_argument(
        "--dtype-bytes", type=_positive_int, help="bytes per weight and KV value (default 2: bf16)"
    )
    shape.add_argument(
        "--max-model-len", type=_positive_int, help="longest context allowed (custom default 8192)"
    )
    out = p.add_argument_group("output")
    out.add_argument("--goodput", nargs="*", default=[], metavar="KEY:MS", help="SLOs, e.g. ttft:500 tpot:50")
    out.add_argument("--result-json", help="also write the summary here")
    out.add_argument("--no-progress", action="store_true")
    return p


def _workload(args):
    from lab.workload import Uniform, azure_trace, synthetic

    if args.trace:
        return azure_trace(
            args.trace,
            start_s=args.trace_start,
            end_s=args.trace_end,
            rate_scale=args.rate_scale,
            max_requests=args.max_requests,
        )
    if not 0 <= args.range_ratio < 1:
        raise ValueError(f"--range-ratio: must be in [0, 1), got {args.range_ratio}")

    def dist(n):
        lo, hi = max(1, round(n * (1 - args.range_ratio))), max(1, round(n * (1 + args.range_ratio)))
        return Uniform(lo, hi) if hi > lo else lo

    return synthetic(
        args.num_prompts,
        rate=args.rate,
        prompt_lens=dist(args.input_len),
        output_lens=dist(args.output_len),
        burstiness=args.burstiness,
        seed=args.seed,
        name="random",
    )


def _slos(pairs: list[str]) -> dict[str, float]:
    slos = {}
    for pair in pairs:
        key, _, value = pair.partition(":")
        if key not in ("ttft", "tpot", "e2el") or not value:
            raise ValueError(f"--goodput: {pair!r} should be KEY:MS with KEY one of ttft, tpot, e2el")
        slos[key] = float(value)
    return slos


def _model(args) -> ModelShape:
    """The named --model, or a ModelShape from the custom-shape options; --dtype-bytes and
    --max-model-len apply to either."""
    given = [opt for opt, field in SHAPE_OPTIONS.items() if getattr(args, field) is not None]
    extra = {k: v for k, v in (("dtype_bytes", args.dtype_bytes), ("max_model_len", args.max_model_len)) if v}
    if not given:
        return dataclasses.replace(get_model(args.model or DEFAULT_MODEL), **extra)
    if args.model is not None:
        raise ValueError(f"--model: give a named model or a custom shape ({', '.join(given)}), not both")
    missing = [opt for opt, field in SHAPE_OPTIONS.items() if getattr(args, field) is None]
    if missing:
        raise ValueError(
            f"{missing[0]}: a custom model shape needs all of {', '.join(SHAPE_OPTIONS)}; "
            f"missing {', '.join(missing)}"
        )
    fields = {field: getattr(args, field) for field in SHAPE_OPTIONS.values()}
    return ModelShape(f"custom-{args.params / 1e9:.3g}B", **fields, **extra)


def simulate_main(args) -> int:
    from lab.engine.config import EngineConfig
    from lab.sim.simulate import simulate
    from lab.sim.step_models import RooflineStepModel

    workload = _workload(args)
    model = RooflineStepModel(args.gpu, _model(args), tensor_parallel=args.tensor_parallel)
    num_blocks = args.num_blocks or model.kv_cache_blocks(args.block_size, args.gpu_memory_utilization)
    config = EngineConfig(
        policy=args.policy,
        block_size=args.block_size,
        num_blocks=num_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching,
        enable_chunked_prefill=not args.no_chunked_prefill,
    )
    slos = _slos(args.goodput)
    where = f"{args.replicas} x {args.gpu}" + (
        f" (TP {args.tensor_parallel})" if args.tensor_parallel > 1 else ""
    )
    print(
        f"{workload.name}: {len(workload)} requests over {workload.duration_s:.0f} s on {where}, "
        f"{model.model.name}, {args.policy}, {num_blocks} KV blocks of {args.block_size} per replica"
    )
    t0 = time.perf_counter()
    result = simulate(
        workload,
        config,
        model,
        replicas=args.replicas,
        router=args.router,
        progress=not args.no_progress,
        record_steps=False,
    )
    wall = time.perf_counter() - t0
    summary = result.summary(slos or None)
    print(format_summary(summary, "Simulated Serving Result"))
    print(f"simulated in {wall:.1f} s of wall time ({len(workload) / wall:,.0f} requests/s)")
    if args.result_json:
        with open(args.result_json, "w", encoding="utf-8") as f:
            json.dump(
                {"args": vars(args) | {"run": None}, "summary": summary, "wall_s": wall},
                f,
                indent=2,
                default=str,
            )
    return 0 if summary["failed"] == 0 else 1
