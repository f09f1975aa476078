"""The `batching-lab` command: demo | serve | bench | batch | simulate.

Each subcommand's options live next to the code it drives (lab.server, lab.client, lab.sim);
this file only assembles them.
"""

from __future__ import annotations

import argparse
import os
import sys

from lab._checks import positive_int_arg


def demo_main(args: argparse.Namespace) -> int:
    from lab.demo import run_demo, summary_table, write_report

    where = f"the model in {args.model}" if args.model else "the bundled model"
    print(f"Serving {args.num_requests} requests at {args.rate}/s on {where}, "
          f"first with static, then with continuous batching (max_num_seqs={args.max_num_seqs}) ...")
    results = run_demo(args.model, args.num_requests, args.rate, args.max_num_seqs, args.seed)
    print()
    print(summary_table(results))
    static, continuous = (results[p].summary() for p in ("static", "continuous"))
    print(f"\ncontinuous batching: {continuous['output_throughput'] / static['output_throughput']:.2f}x the output "
          f"tokens/s of static, mean TTFT {static['mean_ttft_ms']:.0f} -> {continuous['mean_ttft_ms']:.0f} ms")
    path = write_report(results, args.report, args.max_num_seqs)
    print(f"report: {path.resolve()}")
    return 0


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF-format folder (default: the bundled tiny-shakespeare)")
    p.add_argument("--num-requests", type=positive_int_arg, default=48)
    p.add_argument("--rate", type=float, default=16.0, help="mean arrivals per second (Poisson)")
    p.add_argument("--max-num-seqs", type=positive_int_arg, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", default="reports/demo.html", help="where to write the HTML report")


def build_parser() -> argparse.ArgumentParser:
    from lab.client.cli_commands import add_batch_args, add_bench_args, batch_main, bench_main
    from lab.server.cli_commands import add_serve_args, serve_main
    from lab.sim.cli_commands import add_simulate_args, simulate_main

    parser = argparse.ArgumentParser(prog="batching-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "demo": (add_demo_args, demo_main, "static vs continuous batching on the bundled model, with an HTML report"),
        "serve": (add_serve_args, serve_main, "OpenAI-compatible server on the engine"),
        "bench": (add_bench_args, bench_main, "load-test any OpenAI-compatible endpoint (like vllm bench serve)"),
        "batch": (add_batch_args, batch_main, "run an OpenAI Batch-API jsonl file, resumable"),
        "simulate": (add_simulate_args, simulate_main, "simulate a workload on a GPU in virtual time"),
    }
    for name, (add_args, run, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A bad option value or a missing key exits 2 with one line on stderr, as
    argparse's own errors do; a failure of the world (a missing folder, a port in use, a server that
    does not answer) exits 1 with one line. BATCHING_LAB_DEBUG=1 shows the traceback instead."""
    from lab.client.errors import APIError, MissingAPIKeyError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, MissingAPIKeyError, OSError, APIError) as e:
        if os.environ.get("BATCHING_LAB_DEBUG"):
            raise  # the full traceback, for an error that is a bug rather than a bad option
        if isinstance(e, (ValueError, MissingAPIKeyError)):  # how the subcommands report bad options and keys
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"batching-lab {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
