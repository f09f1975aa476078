"""What every benchmark script checks and sets up before its run."""

from __future__ import annotations

import argparse
import signal
import sys

from lab.cli_args import check_output_path


def check_out(parser: argparse.ArgumentParser, path: str) -> None:
    """Exit 2 now, naming --out, where the JSON could not be written after the run (a folder, a file
    in the folder's place), instead of losing the results at the end."""
    try:
        check_output_path("--out", path, create_parent=True)
    except (OSError, ValueError) as e:
        parser.error(str(e))


def stop_on_sigterm() -> None:
    """`timeout` and `kill` send SIGTERM, which ends Python without running `finally` blocks, so a
    server or stub the benchmark started would outlive it. As SystemExit it stops them, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
