"""`batching-lab simulate`: a trace or a generated workload on simulated GPUs, summary at the end.

`add_simulate_args(parser)` (lab.sim.cli_options) declares the options, `simulate_main(args) -> int`
runs them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections import Counter

from lab._checks import is_finite
from lab.cli_args import check_output_path, in_flag_terms, leading_flag
from lab.metrics import check_slos, format_summary, json_ready
from lab.sim.cli_options import DEFAULT_MODEL, GENERATED_DEFAULTS, SHAPE_OPTIONS, TRACE_DEFAULTS
from lab.sim.gpus import ModelShape, get_model

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
