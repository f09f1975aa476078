"""Simulator benchmark: accuracy against the engine, and speed on an hour of real traffic.

Accuracy: fit a FittedStepModel on one engine run (a small random Llama on this CPU), then
simulate four other workloads (other rates, length mixes, both policies) and compare with the
engine's measured runs, in rounds (fit run, then the workloads, back to back; median errors over
rounds). Speed: the full Azure conv trace on a simulated H100 serving Llama 3.1 8B.
Prints a table and writes bench/results/sim.json.

    python bench/sim.py                  # about 8 minutes: 3 rounds of 5 engine runs, then the trace
    python bench/sim.py --rounds 1       # one round (about 3 minutes)
    python bench/sim.py --skip-engine    # the trace timing only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _cli import check_out, stop_on_sigterm
from _machine import cpu_name  # bench/ is on sys.path when a bench runs as a script

from lab.cli_args import number_arg, positive_int_arg
from lab.engine import LLM
from lab.engine.config import EngineConfig
from lab.sim import FittedStepModel, RooflineStepModel, simulate
from lab.sim.step_models import shapes_from_trace
from lab.workload import LogNormal, RequestSpec, Uniform, Workload, azure_trace, synthetic

ENGINE = dict(block_size=16, num_blocks=1024, max_num_seqs=16, max_num_batched_tokens=256)
SHAPE = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=1024,
)
METRICS = ("output_throughput", "request_throughput", "mean_e2el_ms", "mean_ttft_ms", "mean_tpot_ms")


def concat(parts: list[Workload], gap_s: float, name: str) -> Workload:
    """One run made of phases, each starting `gap_s` after the previous one's last arrival."""
    reqs, t0 = [], 0.0
    for k, w in enumerate(parts):
        reqs += [
            RequestSpec(f"{k}-{r.id}", t0 + r.arrival_s, prompt_len=r.prompt_len, output_len=r.output_len)
            for r in w
        ]
        t0 += w.duration_s + gap_s
    return Workload(reqs, name=name, meta={"rate": len(reqs) / t0, "burstiness": float("nan")})


def workloads():
    """The fit run is a profile in four phases (short contexts, long contexts, a bursty mix, then a
    burst that fills every slot), so decode context varies apart from batch size and full batches
    are seen; a single Poisson mix left them collinear, and the fit then misjudged long-context and
    full-batch decodes by 10-30%."""
    fit = (
        "fit",
        "continuous",
        concat(
            [
                synthetic(
                    90,
                    rate=10,
                    burstiness=0.5,
                    prompt_lens=LogNormal(40, 0.5, low=4),
                    output_lens=Uniform(8, 48),
                    seed=11,
                ),
                synthetic(45, rate=5, prompt_lens=Uniform(200, 450), output_lens=Uniform(32, 128), seed=12),
                synthetic(
                    110,
                    rate=12,
                    burstiness=0.3,
                    prompt_lens=LogNormal(100, 1.0, low=4, high=480),
                    output_lens=Uniform(8, 128),
                    seed=13,
                ),
                synthetic(48, prompt_lens=Uniform(32, 320), output_lens=Uniform(16, 96), seed=14),
            ],
            gap_s=1.0,
            name="fit",
        ),
    )
    tests = [
        (
            "A",
            "continuous",
            synthetic(
                240,
                rate=12,
                prompt_lens=LogNormal(64, 0.6, high=400),
                output_lens=Uniform(16, 48),
                seed=2,
                name="A",
            ),
        ),
        (
            "B",
            "static",
            synthetic(160, rate=6, prompt_lens=Uniform(16, 96), output_lens=Uniform(8, 64), seed=3, name="B"),
        ),
        (
            "C",
            "continuous",
            synthetic(
                120, rate=4, prompt_lens=Uniform(128, 384), output_lens=Uniform(32, 96), seed=4, name="C"
            ),
        ),
        (
            "D",
            "static",
            synthetic(200, prompt_lens=Uniform(16, 256), output_lens=Uniform(8, 96), seed=5, name="D"),
        ),
    ]
    return fit, tests


def describe(w) -> str:
    rate, k = w.meta["rate"], w.meta["burstiness"]
    p = [r.prompt_len for r in w]
    o = [r.output_len for r in w]
    arrivals = (
        "all at t=0"
        if np.isinf(rate)
        else f"{rate:.3g}/s" + (" in phases" if np.isnan(k) else f" gamma {k:g}" if k != 1 else " Poisson")
    )
    return (
        f"{len(w)} req, {arrivals}, prompt {min(p)}-{max(p)} (mean {np.mean(p):.0f}), out {min(o)}-{max(o)}"
    )


def wait_for_quiet(limit: float | None, max_wait_s: float = 180) -> None:
    """Optionally wait (up to 3 min) for the shared CPU's 1-minute load to fall below `limit`."""
    t0 = time.time()
    while limit is not None and os.getloadavg()[0] > limit and time.time() - t0 < max_wait_s:
        time.sleep(5)


def run_engine(folder: Path, policy: str, workload, quiet: float | None):
    wait_for_quiet(quiet)
    llm = LLM(model=folder, device="cpu", dtype="float32", policy=policy, **ENGINE)
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = llm.run_workload(workload, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result, {
        "wall_s": wall,
        "cpu_share": cpu / wall,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "steps": len(result.steps),
        "one_row_decode_ms": one_row_decode_ms(result.steps),
    }


def one_row_decode_ms(steps) -> float:
    """Median time of the run's steps that decode one sequence and nothing else: a probe of the
    machine's speed during the run, much the same work in every run (contexts differ a little)."""
    shapes = shapes_from_trace(steps)
    times = [
        b.start_s - a.start_s
        for a, b, s in zip(steps, steps[1:], shapes, strict=False)
        if a.num_running > 0 and s.decode_seqs == 1 and s.prefill_seqs == 0
    ]
    return 1e3 * float(np.median(times)) if times else float("nan")


def compare(name: str, policy: str, w, engine, info, model) -> dict:
    """The simulator's figures for `w` with `model` against the engine's run of it. Beside them, the
    error of a model fitted on that very run ("own fit"): what the model's form cannot express, apart
    from how far the machine's speed moved between the fit run and this one."""
    config = EngineConfig(policy=policy, **ENGINE)
    sim = simulate(w, config, model)
    own = simulate(w, config, FittedStepModel.fit(engine.steps)).summary()
    e, s = engine.summary(), sim.summary()
    return {
        "workload": name,
        "policy": policy,
        "description": describe(w),
        "engine_run": info,
        "sim_steps": len(sim.steps),
        "engine": {k: e[k] for k in METRICS},
        "sim": {k: s[k] for k in METRICS},
        "error_pct": {k: 100 * (s[k] - e[k]) / e[k] for k in METRICS},
        "own_fit_error_pct": {k: 100 * (own[k] - e[k]) / e[k] for k in METRICS},
    }


def accuracy(quiet: float | None, rounds: int) -> dict:
    """`rounds` rounds, each: the fit run and the four workloads on the engine, back to back, then a
    model fitted on that round's fit run predicts that round's workloads. This VM's speed drifts by up
    to 2x between minutes, so a model fitted in one minute and judged against a run made ten minutes
    later measures the drift as much as the model; within a round the runs are a minute or two
    apart. The median error over rounds is the figure to read, the rounds' spread beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as tmp:
        folder = Path(tmp)
        LlamaForCausalLM(
            LlamaConfig(**SHAPE, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        ).save_pretrained(folder)
        run_engine(folder, "continuous", synthetic(16, prompt_lens=64, output_lens=16), None)  # warm-up
        fit, tests = workloads()
        out = []
        for r in range(rounds):
            print(f"round {r + 1} of {rounds}: fit run", flush=True)
            fit_result, fit_info = run_engine(folder, fit[1], fit[2], quiet)
            runs = []
            for name, policy, w in tests:
                print(f"round {r + 1} of {rounds}: workload {name}", flush=True)
                runs.append(run_engine(folder, policy, w, quiet))
            model = FittedStepModel.fit(fit_result.steps)
            rows = [compare(*fit, fit_result, fit_info, model)]
            rows += [compare(*t, res, info, model) for t, (res, info) in zip(tests, runs, strict=True)]
            out.append({"coef": model.coef, "rows": rows})
    return {"rounds": out, "median": medians(out)}


def medians(rounds: list[dict]) -> dict:
    """Per workload and metric: the median error over rounds, its range, and how far the engine's
    own figure moved between rounds (max - min over the median: the noise floor the sim is judged on)."""
    out = {}
    for i, row in enumerate(rounds[0]["rows"]):
        per = [rd["rows"][i] for rd in rounds]
        out[row["workload"]] = {
            k: {
                "error_pct": float(np.median([p["error_pct"][k] for p in per])),
                "error_range_pct": [min(p["error_pct"][k] for p in per), max(p["error_pct"][k] for p in per)],
                "own_fit_error_pct": float(np.median([p["own_fit_error_pct"][k] for p in per])),
                "engine_spread_pct": float(
                    100
                    * (max(p["engine"][k] for p in per) - min(p["engine"][k] for p in per))
                    / np.median([p["engine"][k] for p in per])
                ),
            }
            for k in METRICS
        }
    return out


def trace_speed() -> dict:
    w = azure_trace("conv")
    step_model = RooflineStepModel("H100-SXM", "llama-3.1-8b")
    config = EngineConfig(max_num_seqs=256, max_num_batched_tokens=8192)
    out = {"requests": len(w), "trace_s": w.duration_s, "kv_blocks": step_model.kv_cache_blocks()}
    for record in (False, True):
        wall, cpu = time.perf_counter(), time.process_time()
        result = simulate(w, config, step_model, record_steps=record)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        s = result.summary()
        key = "with_steps" if record else "no_steps"
        out[key] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "requests_per_s": len(w) / wall,
            "steps": len(result.steps),
            "completed": s["completed"],
            "mean_ttft_ms": s["mean_ttft_ms"],
            "mean_tpot_ms": s["mean_tpot_ms"],
            "mean_e2el_ms": s["mean_e2el_ms"],
        }
    return out


def print_tables(report: dict) -> None:
    acc = report.get("accuracy")
    if acc:
        for n, rd in enumerate(acc["rounds"], 1):
            print(
                f"round {n}: {'workload':<9}{'policy':<11}{'metric':<20}{'engine':>10}{'sim':>10}{'error':>9}"
            )
            for row in rd["rows"]:
                for k in METRICS:
                    print(
                        f"{'':<9}{row['workload']:<9}{row['policy']:<11}{k:<20}{row['engine'][k]:>10.2f}"
                        f"{row['sim'][k]:>10.2f}{row['error_pct'][k]:>8.1f}%  (own fit "
                        f"{row['own_fit_error_pct'][k]:+.1f}%)"
                    )
                info = row["engine_run"]
                print(
                    f"{'':<29}engine {info['wall_s']:.1f} s, CPU share {info['cpu_share']:.2f}, "
                    f"load {info['load_before']:.1f} -> {info['load_after']:.1f}, "
                    f"1-row decode step {info['one_row_decode_ms']:.2f} ms"
                )
            print(f"{'':<9}coefficients:", {k: f"{v:.3g}" for k, v in rd["coef"].items()})
        print(f"median over {len(acc['rounds'])} rounds: error (range) | engine's own spread between rounds")
        for name, per in acc["median"].items():
            for k in ("output_throughput", "mean_e2el_ms"):
                m = per[k]
                lo, hi = m["error_range_pct"]
                print(
                    f"  {name:<4}{k:<20}{m['error_pct']:+7.1f}% ({lo:+.1f} .. {hi:+.1f}) | "
                    f"engine spread {m['engine_spread_pct']:.1f}% | own fit {m['own_fit_error_pct']:+.1f}%"
                )
    t = report["trace"]
    for key in ("no_steps", "with_steps"):
        r = t[key]
        print(
            f"azure conv, {t['requests']} requests / {t['trace_s']:.0f} s on H100 + Llama 3.1 8B ({key}): "
            f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, {r['requests_per_s']:.0f} requests/s"
        )


DEFAULT_ROUNDS = 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-engine", action="store_true", help="only the Azure trace timing")
    ap.add_argument(
        "--rounds", type=positive_int_arg, default=None,
        help=f"rounds of fit run + workloads; median errors reported (default {DEFAULT_ROUNDS})"
    )
    ap.add_argument(
        "--quiet-load", type=number_arg(0), default=None,
        help="before each engine run, wait (up to 3 min) for the 1-min load average to fall below this",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim.json"))
    args = ap.parse_args()
    check_out(ap, args.out)
    for flag, value in (("--rounds", args.rounds), ("--quiet-load", args.quiet_load)):
        if args.skip_engine and value is not None:
            ap.error(f"{flag}: it sets the engine runs, which --skip-engine leaves out")
    if not args.skip_engine:  # after the check above, so the JSON records the rounds that ran
        args.rounds = args.rounds or DEFAULT_ROUNDS
    stop_on_sigterm()  # the engine's temporary model folder must not outlive a `timeout`
    torch.set_num_threads(1)  # two torch threads on a shared 2-core CPU make step times erratic
    report = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "args": vars(args),
        "engine_config": ENGINE,
        "model_shape": SHAPE,
    }
    if not args.skip_engine:
        report["accuracy"] = accuracy(args.quiet_load, args.rounds)
    report["trace"] = trace_speed()
    print_tables(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
