"""`batching-lab serve` options: parsed into the server's and the engine's settings; and the command
itself, run as a process, serving until SIGTERM."""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from helpers_server import tiny_model_dir

from lab.server.cli_commands import KEYS_ENV, _faults, add_serve_args, api_keys


def _parse(*argv: str):
    return add_serve_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_defaults_and_repeatable_keys():
    args = _parse("--api-key", "sk-a", "--api-key", "sk-b", "--policy", "static")
    assert args.api_key == ["sk-a", "sk-b"] and args.policy == "static" and args.port == 8000
    assert _faults(args) is None


def _parse_error(capsys, *argv: str) -> str:
    """argparse's own error for bad flag values: exit 2 and one line naming the flag."""
    with pytest.raises(SystemExit) as exc:
        _parse(*argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_fault_options(capsys):
    cfg = _faults(_parse("--fault", "429=0.2", "--fault", "503=0.1", "--fault-seed", "3"))
    assert cfg.error_rates == {429: 0.2, 503: 0.1} and cfg.seed == 3
    assert "argument --fault: expected STATUS=PROBABILITY such as 429=0.1, got '429'" in _parse_error(capsys, "--fault", "429")
    assert "argument --fault: unsupported status 418; allowed: 401, 429, 500, 503, 504" in \
        _parse_error(capsys, "--fault", "418=0.5")
    assert "argument --fault: expected STATUS=PROBABILITY" in _parse_error(capsys, "--fault", "429=often")
    assert "argument --fault: a probability must be in [0, 1], got 2" in _parse_error(capsys, "--fault", "429=2")
    with pytest.raises(ValueError, match="^--fault: the probabilities sum to 1.2, more than 1"):
        _faults(_parse("--fault", "429=0.6", "--fault", "503=0.6"))
    # before: refused as "the probabilities sum to 1, more than 1" (0.34 + 0.56 + 0.1 is 1.0000000000000002
    # in floating point), though FaultConfig and PUT /admin/faults take the same rates
    cfg = _faults(_parse("--fault", "429=0.34", "--fault", "500=0.56", "--fault", "503=0.1"))
    assert cfg.error_rates == {429: 0.34, 500: 0.56, 503: 0.1}


def test_cut_and_stall_options(capsys):
    args = _parse("--fault-cut-rate", "0.2", "--fault-cut-after", "5", "--fault-stall-rate", "0.1",
                  "--fault-stall-seconds", "2.5", "--fault-stall-after", "0", "--fault-seed", "4")
    cfg = _faults(args)
    assert (cfg.cut_rate, cfg.cut_after_chunks, cfg.stall_rate, cfg.stall_s, cfg.stall_after_chunks) == \
        (0.2, 5, 0.1, 2.5, 0) and cfg.error_rates == {} and cfg.seed == 4
    assert _faults(_parse("--fault-stall-rate", "0.3")).stall_rate == 0.3  # either alone turns faults on
    assert _faults(_parse("--fault-cut-after", "5")) is None  # a shape without a rate injects nothing
    for argv, expected in ((("--fault-cut-rate", "1.5"), "argument --fault-cut-rate: a probability must be in [0, 1]"),
                           (("--fault-stall-seconds", "-1"), "argument --fault-stall-seconds: must be a number of seconds >= 0"),
                           (("--fault-cut-after", "-2"), "argument --fault-cut-after: must be an integer >= 0"),
                           (("--fault-latency", "nan"), "argument --fault-latency: must be a number of seconds >= 0")):
        assert expected in _parse_error(capsys, *argv)


def test_api_keys_from_flags_and_environment():
    args = _parse("--api-key", "sk-flag")
    assert KEYS_ENV == "BATCHING_LAB_API_KEY"  # the variable the client's provider="local" reads
    assert api_keys(args, {KEYS_ENV: "sk-env"}) == ["sk-flag", "sk-env"]
    assert api_keys(args, {KEYS_ENV: " sk-a, sk-b,,sk-flag "}) == ["sk-flag", "sk-a", "sk-b"]
    assert api_keys(_parse(), {}) == [] and api_keys(_parse(), {KEYS_ENV: " , "}) == []
    # the old name, still exported, would otherwise leave the server open without a word
    with pytest.raises(ValueError, match="^LAB_API_KEYS: this variable was renamed BATCHING_LAB_API_KEY"):
        api_keys(_parse(), {"LAB_API_KEYS": "sk-old"})
    assert KEYS_ENV in add_serve_args(argparse.ArgumentParser()).format_help()


START_TIMEOUT_S = 120  # a cold process imports torch and loads the model; a loaded 2-core CPU is slow


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def test_serve_command_serves_until_sigterm():
    """`batching-lab serve --port 0` as a user runs it: prints its URL, serves, stops on SIGTERM."""
    env = {**os.environ, KEYS_ENV: "sk-cli-one,sk-cli-two", "PYTHONUNBUFFERED": "1"}
    # `-m lab.cli` runs the console script's entry point (pyproject: batching-lab = "lab.cli:main")
    cmd = [sys.executable, "-m", "lab.cli", "serve", "--port", "0", "--model", str(tiny_model_dir()),
           "--device", "cpu", "--dtype", "float32", "--num-blocks", "64", "--torch-threads", "1",
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    seen = []
    try:
        url, deadline = None, time.monotonic() + START_TIMEOUT_S
        while url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no URL within {START_TIMEOUT_S} s; output: {''.join(seen)}")
            if line is None:
                pytest.fail(f"serve exited (rc {proc.wait(10)}) before serving; output: {''.join(seen)}")
            seen.append(line)
            match = re.search(r" at (http://127\.0\.0\.1:(\d+)/v1)\b", line)
            url = match and match.group(1)
        assert int(re.search(r":(\d+)/v1", url).group(1)) > 0  # port 0 became a real port
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/models").status_code == 401  # keys from the environment: not open
            r = http.get("/models", headers={"authorization": "Bearer sk-cli-two"})
            assert r.status_code == 200 and r.json()["data"][0]["id"] == tiny_model_dir().name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        while (line := lines.get(timeout=10)) is not None:
            seen.append(line)
        assert "shutting down" in "".join(seen)
        with pytest.raises(httpx.ConnectError):  # the port is released
            httpx.get(url + "/models", timeout=5)
    finally:
        if proc.poll() is None:  # never leave it running, whatever failed above
            proc.kill()
            proc.wait(timeout=30)
        reader.join(10)  # the pipe is at EOF once the process is gone
        proc.stdout.close()
