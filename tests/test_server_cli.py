"""`batching-lab serve` options: parsed into the server's and the engine's settings."""

from __future__ import annotations

import argparse

import pytest

from lab.server.cli_commands import _faults, add_serve_args


def _parse(*argv: str):
    return add_serve_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_defaults_and_repeatable_keys():
    args = _parse("--api-key", "sk-a", "--api-key", "sk-b", "--policy", "static")
    assert args.api_key == ["sk-a", "sk-b"] and args.policy == "static" and args.port == 8000
    assert _faults(args) is None


def test_fault_options():
    cfg = _faults(_parse("--fault", "429=0.2", "--fault", "503=0.1", "--fault-seed", "3"))
    assert cfg.error_rates == {429: 0.2, 503: 0.1} and cfg.seed == 3
    with pytest.raises(ValueError, match="--fault"):
        _faults(_parse("--fault", "429"))
    with pytest.raises(ValueError, match="error_rates"):
        _faults(_parse("--fault", "418=0.5"))
