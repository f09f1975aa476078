"""`batching-lab simulate`: a trace or a generated workload on simulated GPUs, summary at the end.

`add_simulate_args(parser)` declares the options, `simulate_main(args) -> int` runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import Counter

from lab._checks import is_finite
from lab.cli_args import (
    check_output_path,
    in_flag_terms,
    leading_flag,
    number_arg,
    positive_int_arg,
    seed_arg,
)
from lab.metrics import check_slos, format_summary, json_ready
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


# the library's parameter names, as the flags a user typed, for its messages (lab.cli_args.in_flag_terms)
_FLAGS = {"tensor_parallel": "--tensor-parallel", "ModelShape.heads": "--heads",
          "gpu_memory_utilization": "--gpu-memory-utilization", "block_size": "--block-size",
          "start_s/end_s": "--trace-start/--trace-end", "rate_scale": "--rate-scale", "n": "--num-prompts",
          "prompt_lens": "--input-len", "output_lens": "--output-len", "rate": "--rate", "burstiness": "--burstiness"}


def _source_options(args) -> dict:
    """The workload options with their defaults filled in; an option of the other source is an error."""
    mine, other = (TRACE_DEFAULTS, GENERATED_DEFAULTS) if args.trace else (GENERATED_DEFAULTS, TRACE_DEFAULTS)
    stray = [name for name in other if getattr(args, name) is not None]
    if stray:
        flag = "--" + stray[0].replace("_", "-")
        raise ValueError(f"{flag}: applies to {'generated workloads' if args.trace else '--trace'} only; "
                         f"{'drop it or drop --trace' if args.trace else 'add --trace code|conv or drop it'}")
    return {name: default if getattr(args, name) is None else getattr(args, name)
            for name, default in mine.items()}


def _workload(args):
    from lab.workload import Uniform, azure_trace, synthetic

    o = _source_options(args)
    if args.trace:
        if o["trace_end"] is not None and o["trace_end"] <= o["trace_start"]:
            raise ValueError(f"--trace-end: must be > --trace-start ({o['trace_start']:g}), got {o['trace_end']:g}")
        try:
            return azure_trace(args.trace, start_s=o["trace_start"], end_s=o["trace_end"],
                               rate_scale=o["rate_scale"], max_requests=o["max_requests"])
        except ValueError as e:  # named the function's parameters: "start_s/end_s: the window ... holds no requests"
            raise ValueError(in_flag_terms(str(e), _FLAGS)) from None
    if not 0 <= o["range_ratio"] < 1:
        raise ValueError(f"--range-ratio: must be in [0, 1), got {o['range_ratio']}")

    def dist(n):
        lo, hi = max(1, round(n * (1 - o["range_ratio"]))), max(1, round(n * (1 + o["range_ratio"])))
        return Uniform(lo, hi) if hi > lo else lo

    try:
        return synthetic(o["num_prompts"], rate=o["rate"], prompt_lens=dist(o["input_len"]),
                         output_lens=dist(o["output_len"]), burstiness=o["burstiness"], seed=o["seed"], name="random")
    except ValueError as e:  # "rate: 1e-308 requests/s ... is too low": the flags are what to change here
        raise ValueError(in_flag_terms(str(e), _FLAGS)) from None


def _slos(pairs: list[str]) -> dict[str, float]:
    slos = {}
    for pair in pairs:
        key, _, value = pair.partition(":")
        if key not in ("ttft", "tpot", "e2el") or not value:
            raise ValueError(f"--goodput: {pair!r} should be KEY:MS with KEY one of ttft, tpot, e2el")
        try:
            slos[key] = float(value)
        except ValueError:
            slos[key] = None
        # named the library's parameter: "slo_ms['ttft']: must be a finite number ..."
        if not is_finite(slos[key]):
            raise ValueError(f"--goodput: {pair!r}: the limit must be a finite number of milliseconds > 0")
    check_slos(slos)  # before the run, not after it
    return slos


def _model(args) -> ModelShape:
    """The named --model, or a ModelShape from the custom-shape options; --dtype-bytes and
    --max-model-len apply to either."""
    given = [opt for opt, field in SHAPE_OPTIONS.items() if getattr(args, field) is not None]
    extra = {k: v for k, v in (("dtype_bytes", args.dtype_bytes), ("max_model_len", args.max_model_len)) if v}
    if not given:
        if args.heads is not None:
            raise ValueError(f"--heads: only with a custom model shape ({', '.join(SHAPE_OPTIONS)})")
        named = get_model(args.model or DEFAULT_MODEL)
        if args.max_model_len and args.max_model_len > named.max_model_len:  # as the engine and serve refuse it
            raise ValueError(f"--max-model-len: {named.name}'s context is {named.max_model_len} tokens, got "
                             f"{args.max_model_len}; give at most that, or a custom shape for a longer one")
        return dataclasses.replace(named, **extra)
    if args.model is not None:
        raise ValueError(f"--model: give a named model or a custom shape ({', '.join(given)}), not both")
    missing = [opt for opt, field in SHAPE_OPTIONS.items() if getattr(args, field) is None]
    if missing:
        raise ValueError(
            f"{missing[0]}: a custom model shape needs all of {', '.join(SHAPE_OPTIONS)}; "
            f"missing {', '.join(missing)}"
        )
    fields = {field: getattr(args, field) for field in SHAPE_OPTIONS.values()}
    if args.heads is not None:
        extra["heads"] = args.heads
    _check_heads(args)
    return ModelShape(f"custom-{args.params / 1e9:.3g}B", **fields, **extra)


def _check_heads(args) -> None:
    """ModelShape's checks of the attention heads, naming the flags given: its message started
    "ModelShape.heads:", shown as "--heads:" to a user who had typed --kv-heads and no --heads."""
    if args.heads is None:
        if args.hidden % args.head_dim:
            raise ValueError(f"--hidden/--head-dim: --hidden {args.hidden} is not a multiple of --head-dim "
                             f"{args.head_dim}; check both, or give --heads (num_attention_heads in config.json)")
        heads, source = args.hidden // args.head_dim, f"--hidden {args.hidden} / --head-dim {args.head_dim}"
        at_fault, hint = "--kv-heads", f"use a divisor of {heads}, or give --heads where the model's differ"
    else:
        heads, source = args.heads, f"--heads {args.heads}"
        at_fault, hint = "--heads/--kv-heads", "check both (num_attention_heads, num_key_value_heads in config.json)"
    if heads % args.kv_heads:  # grouped-query attention shares each KV head by a whole group
        raise ValueError(f"{at_fault}: {heads} attention heads ({source}) cannot share --kv-heads "
                         f"{args.kv_heads} evenly; {hint}")


def _check_cache_holds_a_request(workload, max_model_len: int, num_blocks: int, block_size: int) -> None:
    """Refuse a --num-blocks too small for even the smallest request: each would fail (the engine's
    admission_error), after a run that printed a table of nan. A request keeps KV for its prompt and
    output but the last token, up to the context; one whose prompt fills the context fails anyway."""
    stored = [min(spec.prompt_len + spec.output_len, max_model_len) - 1
              for spec in workload if spec.prompt_len < max_model_len]
    needed = -(-min(stored) // block_size) if stored else 0  # blocks, rounded up
    if needed > num_blocks:
        raise ValueError(f"--num-blocks: {num_blocks} block{'s' if num_blocks > 1 else ''} of {block_size} tokens "
                         f"cannot hold any request: the smallest needs {needed} ({min(stored)} tokens of KV "
                         f"cache: prompt + output - 1); give --num-blocks {needed} or more")


def simulate_main(args) -> int:
    from lab.engine.config import EngineConfig
    from lab.sim.simulate import simulate
    from lab.sim.step_models import RooflineStepModel

    check_output_path("--result-json", args.result_json)  # before the run, not after it
    if args.router is not None and args.replicas == 1:  # was ignored: one replica takes every request
        raise ValueError("--router: applies to --replicas 2 or more only; one replica takes every request")
    if args.max_num_batched_tokens < args.max_num_seqs:
        # EngineConfig's message named its fields: "max_num_batched_tokens (8192) must be >= max_num_seqs (10000)"
        raise ValueError(f"--max-num-batched-tokens ({args.max_num_batched_tokens}) must be >= --max-num-seqs "
                         f"({args.max_num_seqs}): every running request decodes a token each step")
    workload = _workload(args)
    slos = _slos(args.goodput)
    try:
        model = RooflineStepModel(args.gpu, _model(args), tensor_parallel=args.tensor_parallel)
    except ValueError as e:  # the library names its argument; on the command line the flag is what to fix
        raise ValueError(in_flag_terms(str(e), _FLAGS)) from None
    shortest = min((spec.prompt_len for spec in workload), default=0)
    if not args.trace and shortest >= model.max_model_len:  # every request would fail, after the run
        raise ValueError(f"--input-len: every prompt ({shortest} tokens or more) leaves no room to generate "
                         f"within {model.model.name}'s context of {model.max_model_len} tokens (--max-model-len)")
    num_blocks = args.num_blocks
    if num_blocks is None:
        utilization = 0.9 if args.gpu_memory_utilization is None else args.gpu_memory_utilization
        try:
            num_blocks = model.kv_cache_blocks(args.block_size, utilization)
        except ValueError as e:  # the library names its parameters; the flags are what to change here
            # "model: llama-3.1-70b ... leaves no room": the named model, or the custom shape's --params
            model_flag = {"model": "--params" if args.params is not None else "--model"}
            raise ValueError(leading_flag(in_flag_terms(str(e), _FLAGS), model_flag)) from None
    elif args.gpu_memory_utilization is not None:  # it only sizes the cache --num-blocks fixes: was ignored
        raise ValueError("--gpu-memory-utilization: sizes the KV cache from GPU memory, which --num-blocks "
                         "sets; drop one of them")
    else:  # a cache sized from memory that holds no request takes lengths no GPU has: each fails and says why
        _check_cache_holds_a_request(workload, model.max_model_len, num_blocks, args.block_size)
    config = EngineConfig(
        policy=args.policy,
        block_size=args.block_size,
        num_blocks=num_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching,
        enable_chunked_prefill=not args.no_chunked_prefill,
    )
    tp = args.tensor_parallel
    where = f"{args.replicas} x {args.gpu}" if tp == 1 else f"{tp} x {args.gpu} (TP {tp})"
    if tp > 1 and args.replicas > 1:
        where = f"{args.replicas} replicas of {where}"
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
        router=args.router or "round_robin",
        progress=not args.no_progress,
        record_steps=False,
    )
    wall = time.perf_counter() - t0
    summary = result.summary(slos or None)
    if args.result_json is not None:  # written before printing: a closed pipe (| head) must not lose it
        with open(args.result_json, "w", encoding="utf-8") as f:
            # standard JSON: an infinite option is saved as "inf", the string the flag takes (as vllm bench
            # serve saves request_rate), and a summary's NaN (one-token outputs have no TPOT) as null;
            # json.dump wrote bare Infinity and NaN, which JavaScript's and jq's parsers refuse
            options = {k: "inf" if isinstance(v, float) and v == math.inf else v for k, v in vars(args).items()}
            json.dump(
                json_ready({"args": options | {"run": None}, "summary": summary, "wall_s": wall}),
                f,
                indent=2,
                default=str,
            )
    print(format_summary(summary, "Simulated Serving Result"))
    print(f"simulated in {wall:.1f} s of wall time ({len(workload) / wall:,.0f} requests/s)")
    # a failed count alone leaves the user guessing which limit refused them
    reasons = Counter(r.error for r in result.requests if r.error)
    for reason, count in reasons.most_common(5):
        print(f"error ({count} request{'s' if count > 1 else ''}): {reason}", file=sys.stderr)
    # as in the engine, generation stops at the model's context: say so, or the output tokens look short
    wanted = {spec.id: spec.output_len for spec in workload}
    cut = sum(1 for r in result.requests if r.ok and r.output_tokens < wanted[r.request_id])
    if cut:
        print(f"note: {cut} request{'s' if cut > 1 else ''} stopped at the model's context ({model.max_model_len} "
              "tokens, --max-model-len) before their output length", file=sys.stderr)
    return 0 if summary["failed"] == 0 else 1
