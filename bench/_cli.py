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


def device_arg(text: str) -> str:
    """argparse type for --device: a concrete device (auto resolved), refused before the run."""
    from lab.engine.loader import resolve_device

    try:
        return str(resolve_device(text))  # the transformers rows need a concrete device
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("device: ")) from None


def device_name(device: str) -> str:
    """The device for the JSON's machine record: the GPU's own name, or cpu."""
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def stop_on_sigterm() -> None:
    """`timeout` and `kill` send SIGTERM, which ends Python without running `finally` blocks, so a
    server or stub the benchmark started would outlive it. As SystemExit it stops them, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
