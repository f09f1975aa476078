"""The client's command-line verbs, for lab/cli.py to mount: `batching-lab bench` and `batching-lab batch`.

Each verb has `add_*_args(parser)` (argparse) and `*_main(args) -> int` (an exit code).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from lab.cli_args import check_output_path, number_arg, positive_int_arg, seed_arg
from lab.client._base import DEFAULT_STREAM_IDLE_TIMEOUT
from lab.client.batch import read_checkpoint
from lab.client.loadgen import ENDPOINTS
from lab.client.providers import PROVIDERS
from lab.metrics import format_summary, json_ready

BENCH_EXAMPLES = """examples (a server first, in another terminal: batching-lab serve --port 8000):
  batching-lab bench --base-url http://127.0.0.1:8000/v1 --num-prompts 20 --rate 4
  batching-lab bench --base-url http://127.0.0.1:8000/v1 --num-prompts 50 --max-concurrency 8 \\
      --input-len 16 --output-len 64 --goodput ttft:500 tpot:50 --result-json bench.json
  batching-lab bench --base-url http://127.0.0.1:8000/v1 --num-prompts 10 --endpoint chat
"""

SLO_KEYS = ("ttft", "tpot", "e2el")  # Result.summary's slo_ms keys, as vllm bench serve's --goodput names them

BATCH_EXAMPLES = """examples (a server first, in another terminal: batching-lab serve --port 8000):
  printf '%s\\n' '{"custom_id": "q1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "To be", "max_tokens": 16}}' > requests.jsonl
  batching-lab batch requests.jsonl results.jsonl --base-url http://127.0.0.1:8000/v1 --model tiny-shakespeare
  batching-lab batch requests.jsonl results.jsonl --base-url http://127.0.0.1:8000/v1 --model tiny-shakespeare --retry-errors

Ctrl-C stops a run; the records written so far stay in the output file, and the same command resumes it.
"""


def _add_connection_args(parser: argparse.ArgumentParser, model_help: str, retries_help: str) -> None:
    parser.add_argument("--base-url", help="the API's URL, e.g. http://127.0.0.1:8000/v1 (default: the "
                        "--provider's; with neither, the local server at http://127.0.0.1:8000/v1)")
    parser.add_argument("--provider", choices=sorted(PROVIDERS),
                        help="a preset base URL and API-key environment variable (default: local, "
                        "unless --base-url is given: then none)")
    parser.add_argument("--api-key", help="the API key (default: the provider's environment variable, which "
                        "is better: shell history keeps this; a --base-url of no known provider has none)")
    parser.add_argument("--model", help=model_help)
    parser.add_argument("--max-retries", type=number_arg(0, low_ok=True, integer=True), default=None,
                        help=retries_help)
    parser.add_argument("--timeout", type=number_arg(), default=None,
                        help="seconds each phase of a request may take: connecting, sending, and each wait "
                             "for the server, the wait for the first token (queue and prefill) included "
                             "(default: 5 to connect, 120 for the others); once a streamed answer has begun, "
                             f"{DEFAULT_STREAM_IDLE_TIMEOUT:g} s without a chunk ends it")


# the library's messages name its parameters; on the command line they are flags
_AS_FLAGS = (("pass model=...", "pass --model NAME"), ("base_url:", "--base-url:"),
             ("api_key: the key from the api_key argument", "--api-key: the key"),
             ("api_key: the key from the environment", "the key from the environment"),
             ("api_key argument", "--api-key option"), ("api_key=...", "--api-key KEY"))


def _as_flags(exc: Exception) -> Exception:
    """`exc` again, its message naming flags (--model) where it named Python parameters (model=...)."""
    text = str(exc)
    for param, flag in _AS_FLAGS:
        text = text.replace(param, flag)
    return exc if text == str(exc) else type(exc)(text)


def _client_from(args, **kw):
    from lab.client.client import Client
    from lab.client.errors import MissingAPIKeyError

    if args.base_url is None and args.provider is None:
        args.provider = "local"
    if args.timeout is not None:
        kw["timeout"] = args.timeout
    if args.max_retries is not None:
        kw["max_retries"] = args.max_retries
    try:
        return Client(base_url=args.base_url, api_key=args.api_key, provider=args.provider, **kw)
    except (ValueError, MissingAPIKeyError) as e:  # "pass your real key as api_key=..."
        raise _as_flags(e) from None


def add_bench_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_connection_args(parser, "model name (default: the first model the server lists)",
                         "retries of a failed request (default: 0, single attempts, as vllm bench serve)")
    parser.add_argument("--num-prompts", type=positive_int_arg, default=100,
                        help="requests to send (default: %(default)s)")
    parser.add_argument("--rate", type=number_arg(inf_ok=True), default=math.inf,
                        help="requests per second; inf sends them all at once (default: %(default)s)")
    parser.add_argument("--burstiness", type=number_arg(inf_ok=True), default=1.0,
                        help="shape of the gaps between arrivals: 1 = Poisson, < 1 burstier, > 1 more even, "
                             "inf evenly spaced (default: %(default)s)")
    parser.add_argument("--input-len", type=positive_int_arg, default=32,
                        help="prompt length in words of synthetic text, about one token each in BPE "
                             "vocabularies (default: %(default)s)")
    parser.add_argument("--output-len", type=positive_int_arg, default=32,
                        help="max_tokens per request (with ignore_eos where the server accepts it: local, vllm "
                             "or a base URL of no known provider) (default: %(default)s)")
    parser.add_argument("--endpoint", choices=list(ENDPOINTS), default="completions",
                        help="completions: /completions with a text prompt; chat: /chat/completions with one "
                             "user message (for chat-only APIs such as OpenAI's and DeepSeek's) "
                             "(default: %(default)s)")
    parser.add_argument("--max-concurrency", type=positive_int_arg, default=None,
                        help="most requests in flight; later arrivals wait (default: no limit)")
    parser.add_argument("--seed", type=seed_arg, default=0,
                        help="seed of the arrivals and prompts (default: %(default)s)")
    parser.add_argument("--goodput", nargs="+", action="extend", type=slo_arg, metavar="KEY:MS", default=None,
                        help="SLOs for goodput, as vllm bench serve takes them: ttft, tpot or e2el with a limit "
                             "in ms, e.g. --goodput ttft:200 tpot:50; goodput counts the requests that meet "
                             "them all (default: none)")
    parser.add_argument("--result-json", help="also write the summary to this JSON file (default: none)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar, for scripts and CI logs (default: a bar on stderr, one tick per "
                             "finished request)")
    parser.epilog = BENCH_EXAMPLES
    return parser


def slo_arg(text: str) -> tuple[str, float]:
    """`ttft:200` as ("ttft", 200.0), for --goodput."""
    key, sep, value = text.partition(":")
    try:
        ms = float(value)
    except ValueError:
        ms = None
    if not sep or key not in SLO_KEYS or ms is None or not math.isfinite(ms) or ms <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: want KEY:MS with KEY one of {', '.join(SLO_KEYS)} and a "
                                         "limit in milliseconds > 0, e.g. ttft:200")
    return key, ms


def slos_from(pairs: list[tuple[str, float]] | None) -> dict[str, float] | None:
    """--goodput's KEY:MS pairs (from one flag or several) as Result.summary's slo_ms; a key given twice
    is refused: the last limit silently won, and goodput was computed against an SLO nobody chose."""
    if not pairs:
        return None
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise ValueError(f"--goodput: {twice} given more than once; give each of ttft, tpot, e2el once")
    return dict(pairs)


def add_batch_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("input", help="JSONL in OpenAI Batch API format (custom_id, method, url, body), or "
                        "one request body a line; a line with no url goes to /v1/chat/completions if its body "
                        "has messages, else /v1/completions; a body's timeout, extra_headers and extra_body "
                        "are per-request options of the client, as in create(), not fields it sends")
    parser.add_argument("output", help="JSONL of results, one record a line, appended as requests complete; "
                        "rerunning with the same file resumes")
    _add_connection_args(parser, "model for the lines whose body names none (default: none: then every body must "
                         "name its model)",
                         "retries of a failed request (default: 2)")
    parser.add_argument("--concurrency", type=positive_int_arg, default=16,
                        help="requests in flight at once (default: %(default)s)")
    parser.add_argument("--rpm", type=number_arg(), default=None,
                        help="requests per minute limit (default: no limit)")
    parser.add_argument("--tpm", type=number_arg(), default=None,
                        help="tokens per minute limit, estimated from prompt and max_tokens (default: no limit)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="also rerun the inputs whose record in the output file is an error (default: "
                        "off: a rerun keeps them and sends only the inputs with no record)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar, for scripts and CI logs (default: a bar on stderr, one tick per "
                             "finished request)")
    parser.epilog = BATCH_EXAMPLES
    return parser


def bench_main(args) -> int:
    from lab.client.loadgen import run_workload
    from lab.workload import synthetic

    slo_ms = slos_from(args.goodput)
    workload = synthetic(args.num_prompts, rate=args.rate, prompt_lens=args.input_len,
                         output_lens=args.output_len, burstiness=args.burstiness, seed=args.seed, name="bench")
    check_output_path("--result-json", args.result_json)  # before the run, not after it
    with _client_from(args) as client:
        try:
            # run_workload makes single attempts unless told otherwise: --max-retries was ignored
            result = run_workload(client, workload, args.max_concurrency, model=args.model, endpoint=args.endpoint,
                                  max_retries=args.max_retries or 0, progress=not args.no_progress)
        except ValueError as e:  # "/models lists no model; pass model=...": here it is --model
            raise _as_flags(e) from None
    summary = result.summary(slo_ms)
    # the file before the printing: `bench ... | head -1` closes stdout early, and the print that
    # failed on the broken pipe ended the command before the file was written; also for a run that
    # ends below in one line, which a script reading the file must see failed
    if args.result_json is not None:
        with open(args.result_json, "w", encoding="utf-8") as f:
            # json_ready: None for the NaN of a metric with nothing to average, which plain json.dump
            # writes as a bare NaN that strict parsers (jq, JavaScript) refuse
            record = {"summary": summary, "label": result.label} | ({"slo_ms": slo_ms} if slo_ms else {})
            json.dump(json_ready(record), f, indent=2)
    unanswered = _no_answer(result)
    if unanswered is not None:  # a table of nan says less than the reason
        raise unanswered
    print(format_summary(summary))
    errors = sorted({r.error for r in result.requests if r.error})
    for err in errors[:5]:
        print(f"error: {err}{_flag_hint(err)}", file=sys.stderr)
    return 0 if summary["failed"] == 0 else 1


# a server's refusal names the request's fields ("Lower max_tokens", "Shorten the prompt"), which bench
# fills from its flags: the flag is what a user of bench can change
_FIELD_FLAGS = ((re.compile(r"\bmax_(completion_)?tokens\b"), "max_tokens is bench's --output-len"),
                (re.compile(r"\b(shorten|reduce the length of) the (prompt|messages)\b", re.IGNORECASE),
                 "the prompt's length is bench's --input-len"))


def _flag_hint(error: str) -> str:
    """' (max_tokens is bench's --output-len)' for an error that asks for a field bench sets, else ''."""
    hints = [hint for pattern, hint in _FIELD_FLAGS if pattern.search(error)]
    return f" ({'; '.join(hints)})" if hints else ""


# what loadgen records for a request that got no answer at all: no connection, or none in time
_NO_ANSWER_ERRORS = ("APIConnectionError: ", "APITimeoutError: ")
# refusals of the run itself, not of its load: a wrong key, or a model the server does not have
_SETUP_ERRORS = ("AuthenticationError: ", "PermissionDeniedError: ", "NotFoundError: ")


def _no_answer(result):
    """A server that answered none of the requests (it is not there, or said nothing in time), or
    refused every one for the same reason a load cannot change (a wrong key, an unknown model), as
    the error the command ends with: the same one line as when `models.list()` fails without
    --model. A table of NaN would say less than the reason."""
    from lab.client.errors import APIConnectionError, APIError

    errors = [r.error for r in result.requests]
    if errors and all(e and e.startswith(_NO_ANSWER_ERRORS) for e in errors):
        detail = errors[0].split(": ", 1)[1]
        return APIConnectionError(f"{detail}; no request got an answer ({len(errors)} sent)")
    reasons = {re.sub(r" \(request id [^)]*\)$", "", e or "") for e in errors}  # each answer has its own id
    if len(reasons) == 1 and errors[0] and errors[0].startswith(_SETUP_ERRORS):
        return APIError(f"{reasons.pop()} (all {len(errors)} requests refused alike)")
    return None


def _check_batch_output(output: str, input: str) -> set[str]:
    """Before any request: the output must be writable, not the input, and new or a file of batch
    records (read_checkpoint refuses anything else; its messages name `checkpoint`, ours the argument).
    Returns the custom_ids of its error records, for the summary to say which it kept."""
    check_output_path("output", output)
    if not os.path.exists(output):
        return set()
    if os.path.exists(input) and os.path.samefile(input, output):
        raise ValueError(f"output: {output} is the input file; give another file for the results")
    try:
        records, _ = read_checkpoint(Path(output))
    except ValueError as exc:
        raise ValueError(str(exc).replace("checkpoint: ", "output: ", 1)) from None
    return {cid for cid, rec in records.items() if rec["error"] is not None}


def _read_batch_input(path: str) -> list[tuple[int, dict]]:
    """The input's lines with their line numbers; a file that cannot be read is named as the `input`
    argument ("[Errno 2] No such file or directory" named neither), exit 1 as a missing folder is."""
    from lab.client.batch import numbered_requests

    try:
        lines = numbered_requests(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"input: {path} does not exist") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"input: {path} is a folder; give the JSONL file of requests") from None
    except UnicodeDecodeError:  # its message named neither the file nor the problem
        raise ValueError(f"input: {path} is not UTF-8 text; JSONL files are UTF-8") from None
    except OSError as e:
        raise type(e)(f"input: cannot read {path}: {e.strerror or e}") from None
    if not lines:  # it exited 0 having sent nothing: most likely the wrong file
        raise ValueError(f"input: {path} holds no requests (it is empty or has only blank lines); "
                         f"give a JSONL file with one request a line")
    return lines


def _fill_models(lines: list[tuple[int, dict]], model: str | None) -> None:
    """--model for the bodies that name none; without it, such a body is refused before anything is
    sent. The client refuses a request with no model, so every such line became an error record, which
    a rerun with --model then skipped as done."""
    for n, item in lines:
        body = item.get("body", item)
        if not isinstance(body, dict) or body.get("model") is not None:
            continue  # a body of another type is left for run_batch to name
        if not model:  # --model "" names none either
            cid = f" (custom_id {item['custom_id']!r})" if "custom_id" in item else ""
            raise ValueError(f"input line {n}{cid}: its body names no model; pass --model NAME for the "
                             f"bodies that name none, or add \"model\" to each body")
        body["model"] = model


def batch_main(args) -> int:
    from lab.client.batch import run_batch

    lines = _read_batch_input(args.input)
    _fill_models(lines, args.model)
    earlier_errors = _check_batch_output(args.output, args.input)
    requests = [item for _, item in lines]
    # each record is flushed as it completes: after Ctrl-C the file holds those that did
    args.interrupt_hint = f"; the records so far are in {args.output}: the same command resumes the run"
    with _client_from(args, rpm=args.rpm, tpm=args.tpm) as client:
        records = run_batch(client, requests, concurrency=args.concurrency, checkpoint=args.output,
                            progress=not args.no_progress, retry_errors=args.retry_errors)
    failed = [r for r in records if r["error"] is not None]
    # a rerun skips the errors already in the output: say so, or "0 succeeded, 2 failed" after fixing
    # the cause (a rerun with --model) reads as if the fix did not work
    kept = 0 if args.retry_errors else sum(r["custom_id"] in earlier_errors for r in failed)
    note = f" ({kept} from an earlier run, not sent again: --retry-errors reruns them)" if kept else ""
    print(f"{len(records) - len(failed)} succeeded, {len(failed)} failed{note}; records in {args.output}")
    by_type: dict[str, int] = {}
    for r in failed:
        kind = r["error"].get("type", "error")
        by_type[kind] = by_type.get(kind, 0) + 1
    for name, n in sorted(by_type.items()):
        print(f"  {name}: {n}")
    return 0 if not failed else 1
