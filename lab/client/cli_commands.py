"""The client's command-line verbs, for lab/cli.py to mount: `batching-lab bench` and `batching-lab batch`.

Each verb has `add_*_args(parser)` (argparse) and `*_main(args) -> int` (an exit code).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from lab._checks import positive_int_arg
from lab.client.loadgen import ENDPOINTS
from lab.client.providers import PROVIDERS
from lab.metrics import format_summary


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="e.g. http://127.0.0.1:8000/v1 (default: the provider's)")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), help="preset base URL and key variable")
    parser.add_argument("--api-key", help="prefer the provider's environment variable (shell history keeps this)")
    parser.add_argument("--model", help="model name (bench default: the server's first model)")
    parser.add_argument("--max-retries", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=None, help="seconds for each phase (connect/read/...)")


def _client_from(args, **kw):
    from lab.client.client import Client

    if args.base_url is None and args.provider is None:
        args.provider = "local"
    if args.timeout is not None:
        kw["timeout"] = args.timeout
    if args.max_retries is not None:
        kw["max_retries"] = args.max_retries
    return Client(base_url=args.base_url, api_key=args.api_key, provider=args.provider, **kw)


def add_bench_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_connection_args(parser)
    parser.add_argument("--num-prompts", type=positive_int_arg, default=100)
    parser.add_argument("--rate", type=float, default=math.inf, help="requests per second (default: inf)")
    parser.add_argument("--burstiness", type=float, default=1.0, help="1 = Poisson; < 1 burstier")
    parser.add_argument("--input-len", type=positive_int_arg, default=32, help="prompt tokens per request (synthetic text)")
    parser.add_argument("--output-len", type=positive_int_arg, default=32,
                        help="max_tokens per request (with ignore_eos where the server accepts it: local, vllm "
                             "or a base URL of no known provider)")
    parser.add_argument("--endpoint", choices=list(ENDPOINTS), default="completions",
                        help="completions: /completions with a text prompt; chat: /chat/completions with one "
                             "user message (for chat-only APIs such as OpenAI's and DeepSeek's)")
    parser.add_argument("--max-concurrency", type=positive_int_arg, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-json", help="also write the summary here")
    return parser


def add_batch_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("input", help="JSONL in OpenAI Batch API format (custom_id, method, url, body)")
    parser.add_argument("output", help="JSONL of results; rerunning with the same file resumes")
    _add_connection_args(parser)
    parser.add_argument("--concurrency", type=positive_int_arg, default=16)
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute limit")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute limit (estimated)")
    parser.add_argument("--retry-errors", action="store_true", help="rerun inputs whose record is an error")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def bench_main(args) -> int:
    from lab.client.loadgen import run_workload
    from lab.workload import synthetic

    workload = synthetic(args.num_prompts, rate=args.rate, prompt_lens=args.input_len,
                         output_lens=args.output_len, burstiness=args.burstiness, seed=args.seed, name="bench")
    with _client_from(args) as client:
        result = run_workload(client, workload, args.max_concurrency, model=args.model, endpoint=args.endpoint)
    summary = result.summary()
    print(format_summary(summary))
    errors = sorted({r.error for r in result.requests if r.error})
    for err in errors[:5]:
        print(f"error: {err}", file=sys.stderr)
    if args.result_json:
        with open(args.result_json, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "label": result.label}, f, indent=2)
    return 0 if summary["failed"] == 0 else 1


def batch_main(args) -> int:
    from lab.client.batch import load_requests, run_batch

    requests = load_requests(args.input)
    if args.model:  # fill in the model where a line leaves it out
        for item in requests:
            body = item.get("body", item)
            if isinstance(body, dict):  # a body of another type is left for run_batch to name
                body.setdefault("model", args.model)
    with _client_from(args, rpm=args.rpm, tpm=args.tpm) as client:
        records = run_batch(client, requests, concurrency=args.concurrency, checkpoint=args.output,
                            progress=not args.no_progress, retry_errors=args.retry_errors)
    failed = [r for r in records if r["error"] is not None]
    print(f"{len(records) - len(failed)} succeeded, {len(failed)} failed; records in {args.output}")
    by_type: dict[str, int] = {}
    for r in failed:
        by_type[r["error"]["type"]] = by_type.get(r["error"]["type"], 0) + 1
    for name, n in sorted(by_type.items()):
        print(f"  {name}: {n}")
    return 0 if not failed else 1
