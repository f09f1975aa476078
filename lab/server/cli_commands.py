"""`batching-lab serve`: the OpenAI-compatible server in the foreground, for lab/cli.py to mount.

`add_serve_args(parser)` adds the options; `serve_main(args)` runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from lab.cli_args import in_flag_error, in_flag_terms, leading_flag, number_arg, positive_int_arg
from lab.client.providers import PROVIDERS, is_placeholder, mask_key, split_keys
from lab.server.config import HEADER_SAFE_RULE, is_header_safe
from lab.server.faults import STATUSES

# the variable the client's provider="local" preset reads, so one export serves both ends; one key or
# several separated by commas (the client sends the first). Keeps keys out of shell history.
KEYS_ENV = PROVIDERS["local"].env_var
OLD_KEYS_ENV = "LAB_API_KEYS"  # its name before; still set, it would leave a server silently open


# argparse types: a bad value exits 2 with "argument --flag: must be ..., got 'x'" before the model loads
_probability = number_arg(0, low_ok=True, high=1, high_ok=True)
_seconds = number_arg(0, low_ok=True)  # finite: an infinite latency or stall would hang every answer
_chunks = number_arg(0, low_ok=True, integer=True)
_port = number_arg(0, low_ok=True, high=65535, high_ok=True, integer=True)


def _status_rate(text: str) -> tuple[int, float]:
    status, _, p = text.partition("=")
    try:
        status_code, _ = int(status), float(p)  # no "=": float("") fails too
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STATUS=PROBABILITY such as 429=0.1, got {text!r}") from None
    if status_code not in STATUSES:
        raise argparse.ArgumentTypeError(f"unsupported status {status_code}; allowed: {', '.join(map(str, STATUSES))}")
    try:
        return status_code, _probability(p)
    except argparse.ArgumentTypeError as e:  # "must be a number >= 0 and <= 1, got '1.5'", for that status
        raise argparse.ArgumentTypeError(f"{status_code}: the probability {e}") from None


SERVE_EXAMPLES = f"""examples:
  batching-lab serve                                  # the bundled model on http://127.0.0.1:8000/v1, no key
  batching-lab serve --port 8000 --api-key sk-test --policy static
  {KEYS_ENV}=sk-a,sk-b batching-lab serve --rpm 60 --max-queued-requests 32
  batching-lab serve --fault 429=0.2 --fault 504=0.1 --fault-seed 0   # faults for the error-handling lesson
  batching-lab serve --model path/to/Qwen2.5-0.5B-Instruct --served-model-name qwen --port 8001
"""


def add_serve_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=None, help="HF-format folder (default: the bundled tiny-shakespeare)")
    parser.add_argument("--served-model-name", default=None, help="name clients use (default: the folder's)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="0.0.0.0 to listen on every interface (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8000, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--api-key", action="append", default=[],
                        help=f"accepted Bearer key (repeatable), added to those in the environment variable "
                        f"{KEYS_ENV}, which holds one key or several separated by commas (default: none; with "
                        f"neither, an open server)")
    parser.add_argument("--policy", choices=("continuous", "static"), default="continuous",
                        help="batching policy (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N "
                        "(default: %(default)s)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--max-num-seqs", type=positive_int_arg, default=64,
                        help="most requests in a batch (default: %(default)s)")
    parser.add_argument("--max-num-batched-tokens", type=positive_int_arg, default=2048,
                        help="most tokens an engine step computes; at least --max-num-seqs (default: %(default)s)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="on a GPU, decode-only steps replay CUDA graphs: several times faster (default: off)")
    parser.add_argument("--num-blocks", type=positive_int_arg, default=None,
                        help="KV cache blocks (default: from memory)")
    parser.add_argument("--max-model-len", type=positive_int_arg, default=None,
                        help="longest prompt + output; at most the model's context (default: the model's context)")
    parser.add_argument("--max-queued-requests", type=positive_int_arg, default=1024,
                        help="waiting requests; beyond this, 429 (default: %(default)s)")
    parser.add_argument("--rpm", type=positive_int_arg, default=None,
                        help="requests per minute, per key (default: none, no limit)")
    parser.add_argument("--tpm", type=positive_int_arg, default=None,
                        help="tokens (prompt + max_tokens) per minute, per key (default: none, no limit)")
    parser.add_argument("--fault", action="append", default=[], metavar="STATUS=P", type=_status_rate,
                        help="inject STATUS (401/429/500/503/504) with probability P; repeatable (default: none)")
    parser.add_argument("--fault-latency", type=_seconds, default=0.0, metavar="S",
                        help="seconds added to every answer (default: 0)")
    parser.add_argument("--fault-cut-rate", type=_probability, default=0.0, metavar="P",
                        help="drop the connection mid-answer with probability P (streams and whole answers) "
                        "(default: 0)")
    parser.add_argument("--fault-cut-after", type=_chunks, default=3, metavar="CHUNKS",
                        help="chunks a cut stream sends first (default: %(default)s)")
    parser.add_argument("--fault-stall-rate", type=_probability, default=0.0, metavar="P",
                        help="stall a stream (delay a whole answer) with probability P (default: 0)")
    parser.add_argument("--fault-stall-seconds", type=_seconds, default=5.0, metavar="S",
                        help="how long a stall lasts (default: 5)")
    parser.add_argument("--fault-stall-after", type=_chunks, default=1, metavar="CHUNKS",
                        help="chunks a stalled stream sends before going quiet (default: %(default)s)")
    parser.add_argument("--fault-seed", type=int, default=None, help="seed of the fault draws, for repeatable "
                        "runs (default: a fresh one)")
    parser.add_argument("--no-fault-header", action="store_true",
                        help="ignore the x-lab-fault header, with which a request asks for one exact fault "
                        "(default: off: the header is honoured)")
    # checked here: torch.set_num_threads(0) raised a RuntimeError, shown as a traceback
    parser.add_argument("--torch-threads", type=positive_int_arg, default=None,
                        help="CPU threads for torch; 1 is often faster on a busy small CPU (default: torch's)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="least severe messages logged, the server's and uvicorn's (its access lines at "
                        "info) (default: %(default)s)")
    parser.epilog = SERVE_EXAMPLES
    return parser


def _faults(args):
    """FaultConfig from the flags (each already checked by its argparse type), or None if none is set."""
    from lab.server.faults import FaultConfig

    rates = dict(args.fault)
    if not (rates or args.fault_latency or args.fault_cut_rate or args.fault_stall_rate):
        return None
    if sum(rates.values()) > 1.0 + 1e-9:  # FaultConfig's tolerance: 0.34 + 0.56 + 0.1 is 1.0000000000000002
        raise ValueError(f"--fault: the probabilities sum to {sum(rates.values()):g}, more than 1")
    return FaultConfig(error_rates=rates, latency_s=args.fault_latency, cut_rate=args.fault_cut_rate,
                       cut_after_chunks=args.fault_cut_after, stall_rate=args.fault_stall_rate,
                       stall_s=args.fault_stall_seconds, stall_after_chunks=args.fault_stall_after,
                       seed=args.fault_seed)


def api_keys(args, environ=os.environ) -> list[str]:
    """--api-key values, then those in BATCHING_LAB_API_KEY, each once. A key given empty, as
    `--api-key "$UNSET_VAR"` gives it, is refused: dropped, it left the server open to anyone."""
    if environ.get(OLD_KEYS_ENV):
        raise ValueError(f"{OLD_KEYS_ENV}: this variable was renamed {KEYS_ENV} (the one the client reads "
                         f"too); set that instead, or unset {OLD_KEYS_ENV}")
    if any(not split_keys(value) for value in args.api_key):
        raise ValueError("--api-key: an empty key (an unset shell variable?); give a key, or leave "
                         "--api-key out for an open server")
    from_env = environ.get(KEYS_ENV)
    # a blank variable beside a key given as a flag leaves no server open: only alone is it refused
    if from_env is not None and not split_keys(from_env) and not args.api_key:
        raise ValueError(f"{KEYS_ENV}: set, but holds no key; give a key, or unset {KEYS_ENV} for an "
                         f"open server")
    # a key pasted from the docs (sk-..., YOUR_KEY) guards nothing, and the package's own client
    # refuses to send it: a server that accepted it served no client of ours
    for source, values, fix in (("--api-key", args.api_key, "leave --api-key out"),
                                (KEYS_ENV, [from_env or ""], f"unset {KEYS_ENV}")):
        for key in split_keys(",".join(values)):
            if is_placeholder(key):
                raise ValueError(f"{source}: the key looks like a placeholder ({mask_key(key)}); give a real "
                                 f"key (clients refuse to send a placeholder), or {fix} for an open server")
            if not is_header_safe(key):
                raise ValueError(f"{source}: {HEADER_SAFE_RULE} (the key is not shown)")
    return split_keys(",".join([*args.api_key, from_env or ""]))


# serve() and the configs behind it name their parameters in messages; the user typed flags.
# Names with an underscore are renamed wherever they stand as names (EngineConfig's cross-field check
# names two), single words only as the leading "name:" ("this model's context" must stay as it is).
_FLAGS = {"max_num_seqs": "--max-num-seqs", "max_num_batched_tokens": "--max-num-batched-tokens",
          "num_blocks": "--num-blocks", "max_model_len": "--max-model-len",
          "max_queued_requests": "--max-queued-requests", "served_model_name": "--served-model-name",
          "requests_per_minute": "--rpm", "tokens_per_minute": "--tpm"}
_LEADING = {"model": "--model", "device": "--device", "dtype": "--dtype", "host": "--host", "port": "--port"}


def _flag_names(message: str) -> str:
    """'max_num_batched_tokens (2048) must be >= max_num_seqs (5000)' -> the same with the flags."""
    message = message.replace("or None for the model's own", "or leave --max-model-len out for the model's own")
    return in_flag_terms(leading_flag(message, _LEADING), _FLAGS)


def serve_main(args) -> int:
    import logging

    from lab.server.background import start_server

    keys = api_keys(args)
    faults = _faults(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    engine = {"policy": args.policy, "max_num_seqs": args.max_num_seqs,
              "max_num_batched_tokens": args.max_num_batched_tokens, "num_blocks": args.num_blocks,
              "max_model_len": args.max_model_len, "cuda_graphs": args.cuda_graphs}
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        server = start_server(args.model, args.port, keys, faults, args.host, device=args.device,
                              dtype=args.dtype, served_model_name=args.served_model_name,
                              max_queued_requests=args.max_queued_requests, requests_per_minute=args.rpm,
                              tokens_per_minute=args.tpm, allow_fault_header=not args.no_fault_header,
                              log_level=args.log_level, **engine)
    except (ValueError, OSError) as e:  # the base type: lab.cli's exit code (2 or 1) stays the same
        error = in_flag_error(e, _flag_names(str(e)))
        if error is e:
            raise
        raise error from e
    # only now: a SIGTERM during the load ends the process at once, as a user stopping it expects
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"batching-lab: serving {server.model_name!r} ({args.policy}) at {server.url}", flush=True)
        print("  try: curl " + server.url + "/models" + ("  -H 'Authorization: Bearer ...'" if keys else ""),
              flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("batching-lab: shutting down", flush=True)
    finally:
        server.close()
    return 0
