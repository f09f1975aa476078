"""Engine benchmark: one offline workload, four runners, same weights, one process.

Rows: ours static, ours continuous, transformers `generate` in padded static batches, and
transformers' own continuous batching (its ContinuousBatchingManager, the engine behind
`generate_batch`) where it runs. Prints a table and writes bench/results/engine.json.

    python bench/engine.py                      # small random Llama, 64 requests; CUDA when present
    python bench/engine.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16
    python bench/engine.py --compile            # experiment: our forward through torch.compile
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

from lab.cli_args import number_arg, positive_int_arg
from lab.engine import LLM
from lab.engine.loader import data_dir
from lab.metrics import RequestMetrics, Result
from lab.sim import GPUS
from lab.workload import RequestSpec, Workload

SHAPES = {
    # a small Llama-shaped model: big enough that the forward pass is real work on a CPU
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=4096, max_position_embeddings=1024),
    # the test suite's shape: almost no compute per token (checks whether model size moves the ratios)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024),
    # the bundled model's shape (random weights)
    "bundled": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=6, num_attention_heads=6,
                    num_key_value_heads=6, vocab_size=65, max_position_embeddings=1024),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                         tie_word_embeddings=True),
}


def build_model(shape: str, folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cls, cfg_cls = (Qwen2ForCausalLM, Qwen2Config) if shape.startswith("qwen") else (LlamaForCausalLM, LlamaConfig)
    cfg = cfg_cls(**SHAPES[shape], bos_token_id=None, eos_token_id=None, pad_token_id=None, rope_theta=10000.0)
    cls(cfg).save_pretrained(folder)
    return folder


def azure_output_lens(n: int, max_len: int, seed: int) -> np.ndarray:
    """Output lengths drawn from the Azure conv trace's GeneratedTokens, scaled so 1000 -> max_len."""
    import pandas as pd

    path = data_dir() / "traces" / "AzureLLMInferenceTrace_conv.csv"
    generated = pd.read_csv(path)["GeneratedTokens"].to_numpy()
    draw = np.random.default_rng(seed).choice(generated, n)
    return np.maximum(1, np.round(draw * max_len / generated.max())).astype(int)


def make_workload(n: int, vocab: int, max_out: int, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(16, 257, n)
    outs = azure_output_lens(n, max_out, seed)
    return Workload([
        RequestSpec(f"r{i}", 0.0, prompt_token_ids=rng.integers(0, vocab, int(p)).tolist(), output_len=int(o))
        for i, (p, o) in enumerate(zip(prompt_lens, outs, strict=True))
    ], name="bench-engine")


def run_ours(folder, workload, policy, args) -> Result:
    llm = LLM(folder, device=args.device, dtype=args.dtype, policy=policy, max_num_seqs=args.batch,
              max_num_batched_tokens=args.token_budget, enable_prefix_caching=False,
              cuda_graphs=args.cuda_graphs)
    llm.generate([[1, 2, 3]] * 2, use_tqdm=False)  # warm up kernels outside the timed run
    if args.compile:
        compile_forward(llm)
    if args.compile or llm.engine.runner.decode_graphs is not None:
        # every batch shape compiled, or its CUDA graph recorded, before the clock starts (vLLM records
        # its graphs at start-up; ours are recorded when a shape is first needed)
        llm.run_workload(workload, progress=False)
    llm.engine.trace.clear()
    return llm.run_workload(workload, progress=False, label=f"ours {policy}")


def compile_forward(llm: LLM) -> None:
    """An experiment, not an engine option: the model's forward through torch.compile (inductor).

    The paged-attention metadata (Python lists of decode groups) is part of what dynamo guards on, so
    each new mix of prefills and decode groups compiles again; the limit is raised so that the warm-up
    pass compiles them all rather than falling back to eager after eight.
    """
    torch._dynamo.config.cache_size_limit = 256  # recompile_limit since torch 2.7; this name works in both
    model = llm.engine.runner.model
    model.forward = torch.compile(model.forward, dynamic=True)


class _StepClock:
    """A logits processor that only records when each decoding step happened."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        if scores.is_cuda:  # the forward is still queued on the GPU: stamp when it is done
            torch.cuda.synchronize(scores.device)
        self.times.append(time.perf_counter())
        return scores


def run_hf_generate(folder, workload, args) -> Result:
    """transformers `generate` over padded static batches of `--batch` requests, in arrival order.

    Each request is credited with the time its own last token was computed, as if streamed;
    `generate` itself returns the whole batch only when the longest member ends.
    """
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=_dtype(args)).to(args.device).eval()
    with torch.no_grad():  # warm up outside the timed run, as every runner does
        model.generate(torch.ones(2, 3, dtype=torch.long, device=args.device), max_new_tokens=2, do_sample=False,
                       pad_token_id=0)
    reqs, t0, wasted, steps, computed = [], time.perf_counter(), 0, 0, 0
    for start in range(0, len(workload), args.batch):
        batch = workload.requests[start:start + args.batch]
        width = max(r.prompt_len for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):  # left padding, as decoder-only generation needs
            ids[i, width - r.prompt_len:] = torch.tensor(r.prompt_token_ids)
            mask[i, width - r.prompt_len:] = 1
        longest = max(r.output_len for r in batch)
        clock, begin = _StepClock(), time.perf_counter()
        with torch.no_grad():
            model.generate(ids.to(args.device), attention_mask=mask.to(args.device), max_new_tokens=longest,
                           min_new_tokens=longest, do_sample=False, pad_token_id=0,
                           logits_processor=LogitsProcessorList([clock]))
        # one padded prefill of the whole batch, then a decode of every row per further token
        steps += longest
        computed += len(batch) * (width + longest - 1)
        # same definition as the engine's trace: a slot idle while a request waits for one
        still_waiting = len(workload) - start - len(batch)
        for step in range(1, longest + 1):
            idle = args.batch - sum(1 for r in batch if r.output_len >= step)
            wasted += min(idle, still_waiting)
        for r in batch:
            times = [t - t0 for t in clock.times[: r.output_len]]
            reqs.append(RequestMetrics(r.id, 0.0, r.prompt_len, r.output_len, begin - t0, times[0], times[-1], times))
    result = Result(reqs, label="transformers generate (static)", duration_s=time.perf_counter() - t0)
    return result, {"wasted_slot_steps": wasted, "steps": steps, "tokens_computed": computed}


def hf_continuous_config(workload, args):
    """transformers' continuous batching under our limits: `--batch` sequences, `--token-budget` tokens a step.

    Its defaults size the KV cache to 60% of RAM on a CPU and an SDPA mask buffer of max_batch_tokens x
    every cached token (~11 GB here), allocated and filled in the timed run. Blocks for a full batch of
    the longest requests, twice over: like ours, it never has to preempt.
    """
    from transformers import ContinuousBatchingConfig

    defaults = ContinuousBatchingConfig()
    page = getattr(defaults, "page_size", None) or defaults.block_size  # block_size in older releases
    longest = max(r.prompt_len + r.output_len for r in workload)
    return ContinuousBatchingConfig(num_blocks=2 * args.batch * -(-longest // page), max_batch_tokens=args.token_budget,
                                    max_requests_per_batch=args.batch, allow_block_sharing=False)


def run_hf_continuous(folder, workload, args):
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=_dtype(args)).to(args.device).eval()
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(r.output_len for r in workload), eos_token_id=-1)
    manager = model.init_continuous_batching(generation_config=gen,
                                             continuous_batching_config=hf_continuous_config(workload, args))
    manager.warmup()  # builds the cache and runs dummy batches outside the timed run, as generate_batch does
    manager.start()
    try:
        t0 = time.perf_counter()
        for r in workload:
            manager.add_request(r.prompt_token_ids, request_id=r.id, max_new_tokens=r.output_len, record_timestamps=True)
        done = {}
        deadline = time.time() + 900
        while len(done) < len(workload) and time.time() < deadline:
            out = manager.get_result(timeout=1)
            if out is not None and out.is_finished():
                done[out.request_id] = out
    finally:
        manager.stop(block=True)
    reqs = []
    for r in workload:
        out = done.get(r.id)
        if out is None or out.error:
            reqs.append(RequestMetrics(r.id, 0.0, r.prompt_len, status="error", error=str(out and out.error)))
            continue
        times = [t - t0 for t in (out.timestamps or [])]
        reqs.append(RequestMetrics(r.id, 0.0, r.prompt_len, len(out.generated_tokens), out.lifespan[0] - t0,
                                   times[0], times[-1], times))
    return Result(reqs, label="transformers continuous batching")


def predict_gpu(workload, args) -> list[dict]:
    """The simulator's prediction for the same workload on a GPU (a roofline step model for a
    Qwen2.5-0.5B-shaped model in bf16): labelled a prediction, not a measurement, in the table and JSON."""
    from lab.engine.config import EngineConfig
    from lab.sim import RooflineStepModel, simulate

    step_model = RooflineStepModel(gpu=args.predict_gpu, model="qwen2.5-0.5b")
    rows = []
    for policy in ("static", "continuous"):
        config = EngineConfig(policy=policy, max_num_seqs=args.batch, max_num_batched_tokens=args.token_budget,
                              enable_prefix_caching=False)
        result = simulate(workload, config, step_model, label=f"predicted {args.predict_gpu}, sim {policy}")
        rows.append(row(result))
    return rows


def _dtype(args):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]


def row(result: Result, counts: dict | None = None) -> dict:
    """One table row. `counts` (steps, tokens computed, wasted slot-steps) for runners without a trace."""
    s = result.summary()
    if result.steps:  # our engine and the simulator: count from the step trace
        counts = {"wasted_slot_steps": s["wasted_slot_steps"], "steps": len(result.steps),
                  "tokens_computed": sum(st.num_tokens for st in result.steps)}
    counts = counts or {}
    steps = counts.get("steps")
    return {
        "runner": result.label, "completed": s["completed"], "output_tok_s": s["output_throughput"],
        "req_s": s["request_throughput"], "mean_ttft_ms": s["mean_ttft_ms"], "mean_e2el_ms": s["mean_e2el_ms"],
        "p99_e2el_ms": s["p99_e2el_ms"], "wasted_slot_steps": counts.get("wasted_slot_steps"),
        "steps": steps, "tokens_computed": counts.get("tokens_computed"),
        "ms_per_step": s["duration_s"] * 1e3 / steps if steps else None, "duration_s": s["duration_s"],
    }


def print_table(rows: list[dict]) -> None:
    cols = ["runner", "completed", "output_tok_s", "req_s", "mean_ttft_ms", "mean_e2el_ms", "p99_e2el_ms",
            "wasted_slot_steps", "steps", "tokens_computed", "ms_per_step"]
    if any("output_tok_s_range" in r for r in rows):  # medians of several rounds: show their spread
        cols.insert(3, "output_tok_s_range")

    def cell(value) -> str:
        if isinstance(value, list):
            return "-".join(f"{v:.1f}" for v in value)
        return f"{value:.1f}" if isinstance(value, float) else "-" if value is None else str(value)

    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(cell(r.get(c)) for c in cols))


def run_round(folder, workload, args) -> list[dict]:
    rows = []
    for policy in ("static", "continuous"):
        rows.append(row(run_ours(folder, workload, policy, args)))
        print_table(rows[-1:])
    if "hf-generate" not in args.skip:
        result, counts = run_hf_generate(folder, workload, args)
        rows.append(row(result, counts))
    if "hf-continuous" not in args.skip:
        try:
            rows.append(row(run_hf_continuous(folder, workload, args)))
        except Exception as e:  # report, don't hide: the row says why it is missing
            rows.append({"runner": "transformers continuous batching", "error": f"{type(e).__name__}: {e}"})
            print(rows[-1])
    return rows


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """One row per runner: each figure's median over the rounds, and the output tok/s range."""
    if len(rounds) == 1:
        return rounds[0]
    rows = []
    for same in zip(*rounds, strict=True):
        if any("error" in r for r in same):
            rows.append(next(r for r in same if "error" in r))
            continue
        med = {k: (statistics.median(r[k] for r in same) if isinstance(v, float) else v) for k, v in same[0].items()}
        # the counts: the fewest completed (a request lost in a later round must show), and the step and
        # token counts of every round (the same each round, or the table says they moved)
        med["completed"] = min(r["completed"] for r in same)
        for k in ("wasted_slot_steps", "steps", "tokens_computed"):
            if len({r[k] for r in same}) > 1:
                med[k] = sorted(r[k] for r in same)
        med["output_tok_s_range"] = [min(r["output_tok_s"] for r in same), max(r["output_tok_s"] for r in same)]
        rows.append(med)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--device", type=device_arg, default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--num-requests", type=positive_int_arg, default=64)
    ap.add_argument("--batch", type=positive_int_arg, default=16, help="max_num_seqs, and the static batch size")
    ap.add_argument("--token-budget", type=positive_int_arg, default=2048, help="max_num_batched_tokens")
    ap.add_argument("--max-output", type=positive_int_arg, default=256,
                    help="Azure output lengths are scaled to this maximum")
    ap.add_argument("--skip", nargs="*", default=[], choices=["hf-generate", "hf-continuous"])
    ap.add_argument("--predict-gpu", default="H100-SXM", choices=[*GPUS, "none"],
                    help="also print the simulator's prediction for this GPU (lab.sim.GPUS), or 'none'")
    ap.add_argument("--repeat", type=positive_int_arg, default=1,
                    help="rounds of every runner, interleaved; medians reported")
    ap.add_argument("--warmup-rounds", type=number_arg(0, low_ok=True, integer=True), default=0,
                    help="untimed rounds first (use 1 on a GPU: the first run of each new shape builds "
                         "cuBLAS and cuDNN plans, which slowed the first runner of a round by half on an H100)")
    ap.add_argument("--compile", action="store_true",
                    help="experiment: our model's forward through torch.compile, warmed up on the whole workload")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="on a GPU: our decode-only steps replay CUDA graphs (EngineConfig.cuda_graphs)")
    ap.add_argument("--out", default="bench/results/engine.json")
    args = ap.parse_args()
    check_out(ap, args.out)
    stop_on_sigterm()  # the model's temporary folder must not outlive a `timeout`

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(args.shape, Path(tmp) / args.shape)
        workload = make_workload(args.num_requests, SHAPES[args.shape]["vocab_size"], args.max_output)
        for n in range(args.warmup_rounds):
            print(f"warm-up round {n + 1} of {args.warmup_rounds} (not counted)", flush=True)
            run_round(folder, workload, args)
        rounds = []
        for n in range(args.repeat):  # rounds interleave the runners, so a slow spell hits all of them
            if args.repeat > 1:
                print(f"round {n + 1} of {args.repeat}", flush=True)
            rounds.append(run_round(folder, workload, args))
    rows = median_rows(rounds)
    print()
    print_table([r for r in rows if "error" not in r])
    by = {r["runner"]: r for r in rows if "error" not in r}
    ratios = {"continuous_over_static": by["ours continuous"]["output_tok_s"] / by["ours static"]["output_tok_s"]}
    if "transformers generate (static)" in by:
        ratios["ours_over_hf_generate"] = (
            by["ours continuous"]["output_tok_s"] / by["transformers generate (static)"]["output_tok_s"])
    if "transformers continuous batching" in by:
        ratios["ours_over_hf_continuous"] = (
            by["ours continuous"]["output_tok_s"] / by["transformers continuous batching"]["output_tok_s"])
    print({k: round(v, 2) for k, v in ratios.items()})
    predicted = []
    if args.predict_gpu != "none":
        predicted = predict_gpu(workload, args)
        print("\nPredicted by lab.sim (a roofline step model, not a measurement):")
        print_table(predicted)
        ratios["predicted_continuous_over_static"] = predicted[1]["output_tok_s"] / predicted[0]["output_tok_s"]
        print({"predicted_continuous_over_static": round(ratios["predicted_continuous_over_static"], 2)})
    machine = {"platform": platform.platform(), "processor": cpu_name(), "cpu_threads": torch.get_num_threads(),
               "device": device_name(args.device),
               "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows, "ratios": ratios,
                                         "predicted": predicted, "rounds": rounds},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
