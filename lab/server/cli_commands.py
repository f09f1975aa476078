"""`batching-lab serve`: the OpenAI-compatible server in the foreground, for lab/cli.py to mount.

`add_serve_args(parser)` adds the options; `serve_main(args)` runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from lab.client.providers import PROVIDERS, split_keys
from lab.server.faults import STATUSES

# the variable the client's provider="local" preset reads, so one export serves both ends; one key or
# several separated by commas (the client sends the first). Keeps keys out of shell history.
KEYS_ENV = PROVIDERS["local"].env_var
OLD_KEYS_ENV = "LAB_API_KEYS"  # its name before; still set, it would leave a server silently open


def _probability(text: str) -> float:
    return _unit(float(text))  # argparse turns a ValueError into "invalid _probability value: ..."


def _unit(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be in [0, 1], got {p:g}")
    return p


def _seconds(text: str) -> float:
    s = float(text)
    if not 0.0 <= s < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return s


def _chunks(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return n


def _status_rate(text: str) -> tuple[int, float]:
    status, _, p = text.partition("=")
    try:
        status_code, rate = int(status), float(p)  # no "=": float("") fails too
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STATUS=PROBABILITY such as 429=0.1, got {text!r}") from None
    if status_code not in STATUSES:
        raise argparse.ArgumentTypeError(f"unsupported status {status_code}; allowed: {', '.join(map(str, STATUSES))}")
    return status_code, _unit(rate)


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
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--api-key", action="append", default=[],
                        help=f"accepted Bearer key (repeatable), added to those in the environment variable "
                        f"{KEYS_ENV} (one key, or several separated by commas); none at all: open server")
    parser.add_argument("--policy", choices=("continuous", "static"), default="continuous",
                        help="batching policy (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N "
                        "(default: %(default)s)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="most requests in a batch (default: %(default)s)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048,
                        help="most tokens an engine step computes (default: %(default)s)")
    parser.add_argument("--num-blocks", type=int, default=None, help="KV cache blocks (default: from memory)")
    parser.add_argument("--max-model-len", type=int, default=None, help="longest prompt + output (default: the "
                        "model's context)")
    parser.add_argument("--max-queued-requests", type=int, default=1024,
                        help="waiting requests; beyond this, 429 (default: %(default)s)")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute, per key")
    parser.add_argument("--tpm", type=int, default=None, help="tokens (prompt + max_tokens) per minute, per key")
    parser.add_argument("--fault", action="append", default=[], metavar="STATUS=P", type=_status_rate,
                        help="inject STATUS (401/429/500/503/504) with probability P; repeatable")
    parser.add_argument("--fault-latency", type=_seconds, default=0.0, help="seconds added to every answer")
    parser.add_argument("--fault-cut-rate", type=_probability, default=0.0, metavar="P",
                        help="drop the connection mid-answer with probability P (streams and whole answers)")
    parser.add_argument("--fault-cut-after", type=_chunks, default=3, metavar="CHUNKS",
                        help="chunks a cut stream sends first (default 3)")
    parser.add_argument("--fault-stall-rate", type=_probability, default=0.0, metavar="P",
                        help="stall a stream (delay a whole answer) with probability P")
    parser.add_argument("--fault-stall-seconds", type=_seconds, default=5.0, metavar="S",
                        help="how long a stall lasts (default 5)")
    parser.add_argument("--fault-stall-after", type=_chunks, default=1, metavar="CHUNKS",
                        help="chunks a stalled stream sends before going quiet (default 1)")
    parser.add_argument("--fault-seed", type=int, default=None, help="seed of the fault draws, for repeatable "
                        "runs (default: a fresh one)")
    parser.add_argument("--no-fault-header", action="store_true", help="ignore the x-lab-fault header")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's); 1 is often faster on a busy small CPU")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="(default: %(default)s)")
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
    """--api-key values, then those in BATCHING_LAB_API_KEY; blanks dropped, each once."""
    if environ.get(OLD_KEYS_ENV):
        raise ValueError(f"{OLD_KEYS_ENV}: this variable was renamed {KEYS_ENV} (the one the client reads "
                         f"too); set that instead, or unset {OLD_KEYS_ENV}")
    return split_keys(",".join([*args.api_key, environ.get(KEYS_ENV, "")]))


def serve_main(args) -> int:
    import logging

    from lab.server.serve import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    keys = api_keys(args)
    engine = {"policy": args.policy, "max_num_seqs": args.max_num_seqs,
              "max_num_batched_tokens": args.max_num_batched_tokens, "num_blocks": args.num_blocks,
              "max_model_len": args.max_model_len}
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    faults = _faults(args)
    with serve(args.model, args.port, keys, faults, args.host, device=args.device, dtype=args.dtype,
               served_model_name=args.served_model_name, max_queued_requests=args.max_queued_requests,
               requests_per_minute=args.rpm, tokens_per_minute=args.tpm,
               allow_fault_header=not args.no_fault_header, log_level=args.log_level, **engine) as server:
        print(f"batching-lab: serving {server.model_name!r} ({args.policy}) at {server.url}", flush=True)
        print("  try: curl " + server.url + "/models" + ("  -H 'Authorization: Bearer ...'" if keys else ""),
              flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("batching-lab: shutting down", flush=True)
    return 0
