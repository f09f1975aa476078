"""`batching-lab serve`: the OpenAI-compatible server in the foreground, for lab/cli.py to mount.

`add_serve_args(parser)` adds the options; `serve_main(args)` runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

# the variable the client's provider="local" preset reads, so one export serves both ends; one key or
# several separated by commas (the client sends the first). Keeps keys out of shell history.
KEYS_ENV = "BATCHING_LAB_API_KEY"


def add_serve_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=None, help="HF-format folder (default: the bundled tiny-shakespeare)")
    parser.add_argument("--served-model-name", default=None, help="name clients use (default: the folder's)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--api-key", action="append", default=[],
                        help=f"accepted Bearer key (repeatable), added to those in the environment variable "
                        f"{KEYS_ENV} (one key, or several separated by commas); none at all: open server")
    parser.add_argument("--policy", choices=("continuous", "static"), default="continuous")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--num-blocks", type=int, default=None, help="KV cache blocks (default: from memory)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-queued-requests", type=int, default=1024, help="beyond this, 429")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute, per key")
    parser.add_argument("--tpm", type=int, default=None, help="tokens (prompt + max_tokens) per minute, per key")
    parser.add_argument("--fault", action="append", default=[], metavar="STATUS=P",
                        help="inject STATUS (401/429/500/503/504) with probability P; repeatable")
    parser.add_argument("--fault-latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--fault-cut-rate", type=float, default=0.0, metavar="P",
                        help="drop the connection mid-answer with probability P (streams and whole answers)")
    parser.add_argument("--fault-cut-after", type=int, default=3, metavar="CHUNKS",
                        help="chunks a cut stream sends first (default 3)")
    parser.add_argument("--fault-stall-rate", type=float, default=0.0, metavar="P",
                        help="stall a stream (delay a whole answer) with probability P")
    parser.add_argument("--fault-stall-seconds", type=float, default=5.0, metavar="S",
                        help="how long a stall lasts (default 5)")
    parser.add_argument("--fault-stall-after", type=int, default=1, metavar="CHUNKS",
                        help="chunks a stalled stream sends before going quiet (default 1)")
    parser.add_argument("--fault-seed", type=int, default=None)
    parser.add_argument("--no-fault-header", action="store_true", help="ignore the x-lab-fault header")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's); 1 is often faster on a busy small CPU")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def _faults(args):
    from lab.server.faults import FaultConfig

    rates = {}
    for item in args.fault:
        status, sep, p = item.partition("=")
        try:
            if not sep or not status.isdigit():
                raise ValueError(item)
            rates[int(status)] = float(p)
        except ValueError:
            raise ValueError(f"--fault: expected STATUS=PROBABILITY such as 429=0.1, got {item!r}") from None
    if not (rates or args.fault_latency or args.fault_cut_rate or args.fault_stall_rate):
        return None
    try:
        return FaultConfig(error_rates=rates, latency_s=args.fault_latency, cut_rate=args.fault_cut_rate,
                           cut_after_chunks=args.fault_cut_after, stall_rate=args.fault_stall_rate,
                           stall_s=args.fault_stall_seconds, stall_after_chunks=args.fault_stall_after,
                           seed=args.fault_seed)
    except ValueError as exc:  # name the flag, not the field: the user typed the flag
        field, _, detail = str(exc).partition(": ")
        flag = FLAGS.get(field.split("[")[0])
        if flag is None or not detail:
            raise
        where = "" if field in FLAGS else f"{field}: "  # error_rates[429]: which status
        raise ValueError(f"{flag}: {where}{detail}") from None


FLAGS = {"error_rates": "--fault", "latency_s": "--fault-latency", "cut_rate": "--fault-cut-rate",
         "cut_after_chunks": "--fault-cut-after", "stall_rate": "--fault-stall-rate",
         "stall_s": "--fault-stall-seconds", "stall_after_chunks": "--fault-stall-after",
         "seed": "--fault-seed"}


def api_keys(args, environ=os.environ) -> list[str]:
    """--api-key values, then those in BATCHING_LAB_API_KEY; blanks dropped, each once."""
    keys = list(args.api_key) + [k.strip() for k in environ.get(KEYS_ENV, "").split(",")]
    return list(dict.fromkeys(k for k in keys if k))


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
    try:
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
    except (OSError, ValueError, TypeError) as exc:
        print(f"batching-lab serve: {exc}", file=sys.stderr)
        return 1
    return 0
