"""The `batching-lab` command: demo | serve | bench | batch | simulate.

Each subcommand's options live next to the code it drives (lab.server, lab.client, lab.sim);
this file only assembles them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from lab.cli_args import (
    check_output_path,
    in_flag_error,
    leading_flag,
    number_arg,
    positive_int_arg,
    seed_arg,
)


def demo_main(args: argparse.Namespace) -> int:
    import dataclasses

    from lab.demo import arrival_span_error, demo_workload, run_demo, summary_table, write_report
    from lab.engine.config import EngineConfig

    # the demo keeps the engine's default max_num_batched_tokens, which caps the batch
    limit = next(f.default for f in dataclasses.fields(EngineConfig) if f.name == "max_num_batched_tokens")
    if args.max_num_seqs > limit:  # the engine's message named max_num_batched_tokens, not an option of demo
        raise ValueError(f"--max-num-seqs: must be <= {limit} (the tokens an engine step takes), "
                         f"got {args.max_num_seqs}")
    if error := arrival_span_error(demo_workload(args.num_requests, args.rate, args.seed), args.rate):
        raise ValueError(f"--rate: {error}")
    if args.model is not None:  # before the banner, which named a folder that then failed to load
        _check_model_folder(args.model)
    check_output_path("--report", args.report, create_parent=True)  # before the run, not after it
    where = f"the model in {args.model}" if args.model else "the bundled model"
    print(f"Serving {args.num_requests} requests at {args.rate}/s on {where}, "
          f"first with static, then with continuous batching (max_num_seqs={args.max_num_seqs}) ...")
    try:
        results = run_demo(args.model, args.num_requests, args.rate, args.max_num_seqs, args.seed)
    except (ValueError, OSError) as e:  # a folder with no weights, found as it loads
        _raise_as_model_flag(e)
    print()
    print(summary_table(results))
    static, continuous = (results[p].summary() for p in ("static", "continuous"))
    ratio = continuous["output_throughput"] / static["output_throughput"]
    print(f"\ncontinuous batching: mean TTFT {static['mean_ttft_ms']:.0f} -> {continuous['mean_ttft_ms']:.0f} ms, "
          f"mean E2E {static['mean_e2el_ms']:.0f} -> {continuous['mean_e2el_ms']:.0f} ms, "
          f"{ratio:.2f}x the output tokens/s of static")
    if 0.9 <= ratio <= 1.1:
        # a learner expects the throughput lesson here too: say why this run cannot show it
        print("(both served the same arrivals, below what either can take, so tokens/s follow the "
              "arrival rate; --rate inf queues every request at once, a batch job, where throughput "
              "differs too, as in notebook 01)")
    if continuous["mean_e2el_ms"] >= static["mean_e2el_ms"]:
        # both runs are timed on the wall clock: a busy CPU (another program, a second engine) can turn
        # the lesson upside down, and a learner deserves to hear why rather than a wrong conclusion
        print("note: continuous batching did not win this run. Both policies run on the wall clock, so a "
              "busy CPU decides them (another program, a second engine; see the README), and with it which "
              "requests have arrived when a batch forms. Rerun on a quiet machine.")
    path = write_report(results, args.report, args.max_num_seqs)
    print(f"report: {path.resolve()}")
    return 0


def _check_model_folder(folder: str) -> None:
    """The engine's checks of a model folder that cost no loading (a folder, with a config.json that
    reads), its messages naming --model, as serve's do for the same folder."""
    from pathlib import Path

    from lab.engine.loader import read_config

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--model: {folder} is not a folder")
    try:
        read_config(Path(folder))
    except (ValueError, OSError) as e:
        _raise_as_model_flag(e)


def _raise_as_model_flag(e: Exception) -> NoReturn:
    """Raise `e` again, naming --model where lab.engine's message named its parameter ("model: ...")."""
    error = in_flag_error(e, leading_flag(str(e), {"model": "--model"}))
    if error is e:
        raise e
    raise error from e


DEMO_EXAMPLES = """examples:
  batching-lab demo                                   # 48 requests at 16/s: about half a minute on 2 cores
  batching-lab demo --num-requests 16 --rate 8 --report small-demo.html
  batching-lab demo --max-num-seqs 4 --report demo-4.html
  batching-lab demo --rate inf                        # a batch job: every request queued at once
"""


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="Hugging Face-format model folder (default: the bundled tiny-shakespeare)")
    p.add_argument("--num-requests", type=positive_int_arg, default=48,
                   help="requests in the workload, served once per policy (default: %(default)s)")
    p.add_argument("--rate", type=number_arg(inf_ok=True), default=16.0,
                   help="mean arrivals per second, Poisson; inf sends them all at once; the arrivals must "
                        "fit in an hour (default: %(default)s)")
    p.add_argument("--max-num-seqs", type=positive_int_arg, default=16,
                   help="most requests in a batch, for both policies; at most 2048 (default: %(default)s)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the workload (arrivals, prompts, lengths) and of sampling (default: %(default)s)")
    p.add_argument("--report", default="reports/demo.html",
                   help="HTML report to write; its folder is created if missing (default: %(default)s)")
    p.epilog = DEMO_EXAMPLES


def build_parser() -> argparse.ArgumentParser:
    from lab.client.cli_commands import add_batch_args, add_bench_args, batch_main, bench_main
    from lab.server.cli_commands import add_serve_args, serve_main
    from lab.sim.cli_commands import simulate_main
    from lab.sim.cli_options import add_simulate_args

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
        # raw: the examples in each epilog keep their lines
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
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
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # here, not at exit: a buffered stdout meets a closed pipe only when flushed
        return code
    except BrokenPipeError:  # `| head` closed stdout: what the reader wanted was printed, files were written
        _silence_stdout()
        return 141  # as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever the run was
        if os.environ.get("BATCHING_LAB_DEBUG"):
            raise
        print(f"\nbatching-lab {args.command}: interrupted{getattr(args, 'interrupt_hint', '')}", file=sys.stderr)
        return 130  # as a shell reports a process ended by SIGINT
    except (ValueError, MissingAPIKeyError, OSError, APIError) as e:
        if os.environ.get("BATCHING_LAB_DEBUG"):
            raise  # the full traceback, for an error that is a bug rather than a bad option
        if isinstance(e, (ValueError, MissingAPIKeyError)):  # how the subcommands report bad options and keys
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"batching-lab {args.command}: {e}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at devnull, so the interpreter's own flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (pytest's capture, a notebook)
        pass


if __name__ == "__main__":
    sys.exit(main())
