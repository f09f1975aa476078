"""Server benchmark over HTTP: TTFT, TPOT and output tokens/s at several request rates, for this
server (static and continuous policy) and, on the same model folder and workload, for
`transformers serve --continuous-batching`. Prints a table; writes bench/results/server.json.

    .venv/bin/python bench/server.py [--rates 4,16,32,inf] [--num-requests 64] [--repeat 3] [--skip-transformers]

With --repeat N the three servers run N rounds, interleaved, and the table shows each cell's median
(the output tok/s range across rounds alongside): on a small shared CPU one round can be off by 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _cli import check_out, stop_on_sigterm
from _machine import cpu_name  # bench/ is on sys.path when a bench runs as a script

from lab.cli_args import number_arg, positive_int_arg
from lab.engine.loader import bundled_model_dir
from lab.metrics import RequestMetrics, Result
from lab.workload import RequestSpec, Workload, poisson_arrivals

ROOT = Path(__file__).resolve().parents[1]
RANDOM_MODEL = Path("/tmp/lab-bench-llama")
COLUMNS = ("output_throughput", "request_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
           "p99_tpot_ms", "completed", "failed")


def model_folder() -> tuple[Path, str]:
    """The bundled model if it has been trained by now, else a random Llama (same shape class)."""
    bundled = bundled_model_dir()
    if (bundled / "config.json").exists():
        return bundled, "bundled tiny-shakespeare"
    if not (RANDOM_MODEL / "config.json").exists():
        build_random_llama(RANDOM_MODEL)
    return RANDOM_MODEL, "random Llama: hidden 256, 4 layers, 8 heads (4 KV), vocab 101 (characters), about 3M params"


def build_random_llama(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<eos>": 0} | {c: i + 1 for i, c in enumerate(string.printable)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))  # one token per character
    tok.add_special_tokens(["<eos>"])
    tok.decoder = decoders.Fuse()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<eos>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)


def workload(n: int, rate: float, input_len: int, output_len: int, seed: int = 0) -> Workload:
    """Greedy, EOS honoured (transformers serve has no ignore_eos): both servers do the same work."""
    rng = random.Random(seed)
    letters = string.ascii_letters + " " * 10 + ".,\n"
    arrivals = poisson_arrivals(n, rate, seed=seed)
    return Workload([RequestSpec(id=f"r{i}", arrival_s=float(arrivals[i]), output_len=output_len,
                                 prompt="".join(rng.choice(letters) for _ in range(input_len)),
                                 temperature=0.0, ignore_eos=False) for i in range(n)],
                    name=f"rate {rate}", meta={"rate": "inf" if rate == float("inf") else f"{rate:g}"})


async def _one(http: httpx.AsyncClient, url: str, model: str, spec: RequestSpec, t0: float) -> RequestMetrics:
    await asyncio.sleep(max(0.0, t0 + spec.arrival_s - time.perf_counter()))
    m = RequestMetrics(spec.id, arrival_s=time.perf_counter() - t0)  # latencies start when it is sent
    body = {"model": model, "prompt": spec.prompt, "max_tokens": spec.output_len, "temperature": spec.temperature,
            "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with http.stream("POST", url + "/completions", json=body) as r:
            if r.status_code != 200:
                m.status, m.error = "error", f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            finished = False
            async for line in r.aiter_lines():
                if line.strip() == "data: [DONE]":
                    finished = True
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:  # a server's mid-stream error event: not a completed request
                    m.status, m.error = "error", f"stream error: {chunk['error']}"
                    break
                choices = chunk.get("choices") or ()
                # timed as run_workload times them: chunks with text, and the one that ends the choice
                if any(c.get("text") or c.get("finish_reason") for c in choices):
                    m.token_times_s.append(time.perf_counter() - t0)
                if chunk.get("usage"):
                    m.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    m.output_tokens = chunk["usage"]["completion_tokens"]
            if m.status == "ok" and (not finished or not m.token_times_s):
                m.status, m.error = "error", "the stream ended without [DONE] or without a token"
    except httpx.HTTPError as exc:
        m.status, m.error = "error", f"{type(exc).__name__}: {exc}"
    # E2E ends at the last token, as in run_workload and vllm bench serve (not after usage and [DONE])
    m.finish_s = m.token_times_s[-1] if m.status == "ok" else time.perf_counter() - t0
    m.first_token_s = m.token_times_s[0] if m.token_times_s else None
    m.output_tokens = m.output_tokens or len(m.token_times_s)
    return m


def run_http(url: str, model: str, wl: Workload, label: str) -> Result:
    """A bare streaming loop over one shared httpx client (`--loadgen loop`): the yardstick for the
    load generator's own cost. An early lab.client.run_workload measured TTFT 10x higher than this at
    16 req/s; since its pool fixes the two agree (docs/benchmarks.md), and run_workload is the default."""

    async def go() -> Result:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            t0 = time.perf_counter()
            metrics = await asyncio.gather(*(_one(http, url, model, spec, t0) for spec in wl))
            return Result(list(metrics), duration_s=time.perf_counter() - t0, label=label)

    return asyncio.run(go())


def run_lab_client(url: str, model: str, wl: Workload, label: str) -> Result:
    """The same requests through lab.client.run_workload (single attempts, like vllm bench serve)."""
    from lab.client import Client, run_workload

    with Client(base_url=url, api_key="unused", max_retries=0) as client:
        return run_workload(client, wl, model=model, label=label)


LOADGENS = {"loop": run_http, "lab": run_lab_client}


def run_rates(url: str, model: str, workloads: list[Workload], label: str, loadgen: str = "loop") -> list[dict]:
    send = LOADGENS[loadgen]
    send(url, model, workload(4, float("inf"), 16, 4, seed=99), label)  # warm up
    rows = []
    for wl in workloads:
        result = send(url, model, wl, label)
        s = result.summary()
        errors = sorted({r.error for r in result.requests if r.error})[:3]
        rows.append({"system": label, "rate": wl.meta["rate"], **{k: s[k] for k in COLUMNS}, "errors": errors})
        print(f"  {label:<24} rate {wl.meta['rate']:>5}: {s['output_throughput']:8.1f} tok/s, "
              f"p99 TTFT {s['p99_ttft_ms']:8.1f} ms, failed {s['failed']}", flush=True)
    return rows


def rates_arg(text: str) -> list[float]:
    """argparse type for --rates: comma-separated request rates, each > 0 or inf, each once."""
    rate = number_arg(0, inf_ok=True)
    rates = [rate(r.strip()) for r in text.split(",")]
    if len(set(rates)) < len(rates):
        raise argparse.ArgumentTypeError(f"each rate once, got {text!r}")
    return rates


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# our server through its CLI entry point, in its own process like the peer (no GIL shared with the client)
SERVE = ("import argparse, sys; from lab.server.cli_commands import add_serve_args, serve_main; "
         "sys.exit(serve_main(add_serve_args(argparse.ArgumentParser()).parse_args(sys.argv[1:])))")


def serve_process(label: str, cmd: list[str], port: int, model: str, workloads: list[Workload],
                  threads: int, loadgen: str = "loop") -> list[dict]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(threads)}
    # stderr to a file, not a pipe: nobody reads a pipe during the run, and a server whose warnings
    # filled its 64 KB would block mid-benchmark
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{label} exited: {log.read()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not come up within 180 s")
            time.sleep(0.5)
        return run_rates(f"http://127.0.0.1:{port}/v1", model, workloads, label, loadgen)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_ours(folder: Path, policy: str, workloads: list[Workload], args) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, "-c", SERVE, "--model", str(folder), "--port", str(port), "--policy", policy,
           "--device", "cpu", "--dtype", "float32", "--max-num-seqs", str(args.max_num_seqs),
           "--served-model-name", "bench", "--log-level", "error", "--torch-threads", str(args.threads)]
    return serve_process(f"batching-lab {policy}", cmd, port, "bench", workloads, args.threads, args.loadgen)


def run_transformers(folder: Path, workloads: list[Workload], args) -> list[dict]:
    port = free_port()
    # --dtype float32 as ours: 'auto' would load the bundled bf16 checkpoint in bf16
    cmd = [str(Path(sys.executable).with_name("transformers")), "serve", "--continuous-batching", "--device", "cpu",
           "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", str(folder)]
    return serve_process("transformers serve --cb", cmd, port, str(folder), workloads, args.threads, args.loadgen)


def medians(rounds: list[list[dict]]) -> list[dict]:
    """One row per (system, rate): the median of each figure over the rounds, counts summed."""
    rows = []
    for same in zip(*rounds, strict=True):
        row = {"system": same[0]["system"], "rate": same[0]["rate"], "rounds": len(same),
               "errors": sorted({e for r in same for e in r["errors"]})[:3]}
        for k in COLUMNS:
            values = [r[k] for r in same]
            row[k] = sum(values) if k in ("completed", "failed") else statistics.median(values)
        tput = [r["output_throughput"] for r in same]
        row["output_throughput_range"] = [min(tput), max(tput)]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    ranged = any(r.get("rounds", 1) > 1 for r in rows)
    head = ("| system | rate (req/s) | output tok/s | " + ("tok/s range | " if ranged else "")
            + "req/s | mean TTFT ms | p99 TTFT ms | mean TPOT ms | p99 TPOT ms | ok/failed |")
    lines = [head, "|" + "---|" * (10 if ranged else 9)]
    for r in rows:
        spread = f"{r['output_throughput_range'][0]:.0f}-{r['output_throughput_range'][1]:.0f} | " if ranged else ""
        lines.append(f"| {r['system']} | {r['rate']} | {r['output_throughput']:.1f} | {spread}"
                     f"{r['request_throughput']:.2f} | {r['mean_ttft_ms']:.1f} | {r['p99_ttft_ms']:.1f} "
                     f"| {r['mean_tpot_ms']:.1f} | {r['p99_tpot_ms']:.1f} | {r['completed']}/{r['failed']} |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Python and the packages the two servers run on (transformers is the peer)."""
    from importlib.metadata import version

    return {"python": platform.python_version(), **{name: version(name) for name in ("torch", "transformers")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=rates_arg, default="4,16,32,inf",
                   help="request rates, comma-separated (inf: all at once)")
    p.add_argument("--num-requests", type=positive_int_arg, default=64)
    p.add_argument("--input-len", type=positive_int_arg, default=64, help="prompt characters")
    p.add_argument("--output-len", type=positive_int_arg, default=64, help="max_tokens")
    p.add_argument("--max-num-seqs", type=positive_int_arg, default=64, help="this server's (transformers serve has none)")
    p.add_argument("--threads", type=positive_int_arg, default=1,
                   help="torch CPU threads for both servers (OMP_NUM_THREADS); on a shared 2-core CPU 1 is steadiest")
    p.add_argument("--repeat", type=positive_int_arg, default=1,
                   help="rounds of every server, interleaved; the table shows medians")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--skip-static", action="store_true")
    p.add_argument("--loadgen", choices=sorted(LOADGENS), default="lab",
                   help="lab: lab.client.run_workload (default); loop: a bare httpx loop, to check the client's cost")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "server.json"))
    args = p.parse_args(argv)
    check_out(p, args.out)
    stop_on_sigterm()  # the servers must not outlive this process
    folder, model_desc = model_folder()

    def workloads_of(round_index: int) -> list[Workload]:
        # new prompts for every rate and round, the same for every server within a round: one set reused
        # at every rate gave ours prefix-cache hits from the rate before (its blocks are 16 tokens;
        # transformers serve shares only whole 256-token pages, so a 64-token prompt never hit)
        return [workload(args.num_requests, rate, args.input_len, args.output_len, seed=1000 * round_index + i)
                for i, rate in enumerate(args.rates)]

    workloads = workloads_of(0)
    print(f"model: {folder} ({model_desc}); {args.num_requests} requests per rate, "
          f"{args.input_len} prompt chars, max_tokens {args.output_len}", flush=True)
    rounds = []
    started = time.monotonic()
    for n in range(args.repeat):
        if args.repeat > 1:
            print(f"round {n + 1} of {args.repeat}", flush=True)
        rows, workloads = [], workloads_of(n)
        for policy in ("continuous",) if args.skip_static else ("continuous", "static"):
            rows += run_ours(folder, policy, workloads, args)
        if not args.skip_transformers:
            rows += run_transformers(folder, workloads, args)
        rounds.append(rows)
    rows = medians(rounds) if args.repeat > 1 else rounds[0]
    print()
    print(table(rows))
    out = {"machine": f"{os.cpu_count()}-core {cpu_name()} CPU, no GPU",
           "versions": versions(), "model": model_desc, "model_folder": str(folder),
           "rates": [wl.meta["rate"] for wl in workloads], "num_requests": args.num_requests,
           "input_len_chars": args.input_len, "output_len": args.output_len, "max_num_seqs": args.max_num_seqs,
           "torch_threads": args.threads, "repeat": args.repeat, "loadgen": args.loadgen,
           "wall_s": round(time.monotonic() - started, 1), "rows": rows, "rounds": rounds}
    ours = {r["rate"]: r for r in rows if r["system"] == "batching-lab continuous"}
    peer = {r["rate"]: r for r in rows if r["system"].startswith("transformers")}
    if peer:
        out["vs_transformers"] = {
            rate: {"throughput_ratio": ours[rate]["output_throughput"] / max(peer[rate]["output_throughput"], 1e-9),
                   "p99_ttft_ms": [ours[rate]["p99_ttft_ms"], peer[rate]["p99_ttft_ms"]]}
            for rate in ours if rate in peer}
        for rate, v in out["vs_transformers"].items():
            print(f"rate {rate}: {v['throughput_ratio']:.2f}x transformers' output tok/s; p99 TTFT "
                  f"{v['p99_ttft_ms'][0]:.0f} ms vs {v['p99_ttft_ms'][1]:.0f} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
