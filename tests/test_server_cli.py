"""`batching-lab serve` options: parsed into the server's and the engine's settings; and the command
itself, run as a process, serving until SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

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
    assert "argument --fault: 429: the probability must be a number >= 0 and <= 1, got '2'" in _parse_error(
        capsys, "--fault", "429=2")
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
    for argv, expected in ((("--fault-cut-rate", "1.5"), "argument --fault-cut-rate: must be a number >= 0 and <= 1"),
                           (("--fault-stall-seconds", "-1"), "argument --fault-stall-seconds: must be a finite number >= 0"),
                           (("--fault-cut-after", "-2"), "argument --fault-cut-after: must be an integer >= 0"),
                           (("--fault-latency", "nan"), "argument --fault-latency: must be a finite number >= 0")):
        assert expected in _parse_error(capsys, *argv)


@pytest.mark.parametrize("flag, value, rule", [
    # before: a traceback (torch.set_num_threads raised a RuntimeError)
    ("--torch-threads", "0", "an integer >= 1"),
    ("--torch-threads", "-1", "an integer >= 1"),
    # before: refused after the imports by serve(), as "requests_per_minute: ...", "num_blocks: ..."
    ("--rpm", "0", "an integer >= 1"),
    ("--tpm", "-5", "an integer >= 1"),
    ("--num-blocks", "0", "an integer >= 1"),
    ("--max-num-seqs", "0", "an integer >= 1"),
    ("--max-num-batched-tokens", "x", "an integer >= 1"),
    ("--max-model-len", "0", "an integer >= 1"),
    ("--max-queued-requests", "0", "an integer >= 1"),
    ("--port", "70000", "an integer >= 0 and <= 65535"),
    # before: "invalid _seconds value: 'abc'", "invalid _probability value", "invalid _chunks value"
    ("--fault-latency", "abc", "a finite number >= 0"),
    ("--fault-latency", "inf", "a finite number >= 0"),  # before: "must be a number of seconds >= 0, got inf"
    ("--fault-stall-seconds", "inf", "a finite number >= 0"),
    ("--fault-cut-rate", "x", "a number >= 0 and <= 1"),
    ("--fault-stall-rate", "2", "a number >= 0 and <= 1"),
    ("--fault-cut-after", "x", "an integer >= 0"),
    ("--fault-stall-after", "1.5", "an integer >= 0"),
])
def test_a_bad_option_value_names_the_flag_and_what_is_allowed(capsys, flag, value, rule):
    from lab.cli import main

    with pytest.raises(SystemExit) as exc:  # the command as a user runs it: argparse, before anything loads
        main(["serve", flag, value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"batching-lab serve: error: argument {flag}: must be {rule}, got {value!r}"


def test_help_shows_every_default():
    # the README: `--help` lists every option with its default; --rpm, --tpm and three fault rates showed none
    parser = add_serve_args(argparse.ArgumentParser())
    # flags too: --no-fault-header said nothing of its default, and --log-level had no description at all
    missing = [a.option_strings[-1] for a in parser._actions if a.dest != "help" and "default" not in (a.help or "")]
    assert missing == []
    log_level = next(a for a in parser._actions if a.dest == "log_level")
    assert not log_level.help.startswith("(default")
    text = " ".join(parser.format_help().split())
    assert "per key (default: none, no limit)" in text and "every answer (default: 0)" in text


def test_api_keys_from_flags_and_environment():
    args = _parse("--api-key", "sk-flag")
    assert api_keys(args, {KEYS_ENV: ""}) == ["sk-flag"]  # a blank variable beside a flag's key opens nothing
    assert KEYS_ENV == "BATCHING_LAB_API_KEY"  # the variable the client's provider="local" reads
    assert api_keys(args, {KEYS_ENV: "sk-env"}) == ["sk-flag", "sk-env"]
    assert api_keys(args, {KEYS_ENV: " sk-a, sk-b,,sk-flag "}) == ["sk-flag", "sk-a", "sk-b"]
    assert api_keys(_parse(), {}) == []  # neither a flag nor the variable: an open server, as before
    # the old name, still exported, would otherwise leave the server open without a word
    with pytest.raises(ValueError, match="^LAB_API_KEYS: this variable was renamed BATCHING_LAB_API_KEY"):
        api_keys(_parse(), {"LAB_API_KEYS": "sk-old"})
    assert KEYS_ENV in add_serve_args(argparse.ArgumentParser()).format_help()


@pytest.mark.parametrize("argv, env, expected", [
    (["--api-key", ""], None, "--api-key: an empty key"),  # `--api-key "$UNSET_VAR"`
    (["--api-key", " , "], None, "--api-key: an empty key"),
    (["--api-key", "sk-a", "--api-key", ""], None, "--api-key: an empty key"),
    ([], " , ", f"{KEYS_ENV}: set, but holds no key"),
    ([], "", f"{KEYS_ENV}: set, but holds no key"),
])
def test_an_empty_api_key_is_refused_not_an_open_server(monkeypatch, capsys, argv, env, expected):
    # before: blanks were dropped, and the server started open to anyone, with only a log line to say so
    err = _refused_before_serving(monkeypatch, capsys, argv, env)
    assert err.startswith(f"error: {expected}") and "for an open server" in err


@pytest.mark.parametrize("argv, env, source", [
    (["--api-key", "sk-..."], None, "--api-key"),
    (["--api-key", "sk-real", "--api-key", "YOUR_KEY"], None, "--api-key"),
    (["--api-key", "sk-real,<your-key>"], None, "--api-key"),
    (["--api-key", "sk-real"], "sk-env, changeme", KEYS_ENV),
])
def test_a_placeholder_api_key_is_refused(monkeypatch, capsys, argv, env, source):
    # it served with a key the package's own client refuses to send (lab.client.providers.is_placeholder)
    err = _refused_before_serving(monkeypatch, capsys, argv, env)
    assert err.startswith(f"error: {source}: the key looks like a placeholder (") and "); give a real key" in err
    assert len(err.splitlines()) == 1 and "sk-real" not in err and "your-key" not in err  # masked, as the client does


@pytest.mark.parametrize(("argv", "env", "source"), [
    (["--api-key", "sk-café-0123456789"], None, "--api-key"),
    ([], "sk-ok-0123456789, sk-zwölf-0123456789", KEYS_ENV),
])
def test_a_key_no_header_can_carry_is_refused_naming_its_source(monkeypatch, capsys, argv, env, source):
    # it was refused as "api_keys: ...", the library's name, not what the user typed
    err = _refused_before_serving(monkeypatch, capsys, argv, env)
    assert err == f"error: {source}: a key must be printable ASCII without spaces, as an HTTP header carries it " \
                  "(the key is not shown)"


def _refused_before_serving(monkeypatch, capsys, argv, env) -> str:
    """`batching-lab serve ARGV` with BATCHING_LAB_API_KEY=env (None: unset), which must exit 2 before
    any server starts; its stderr."""
    from lab.cli import main

    if env is None:
        monkeypatch.delenv(KEYS_ENV, raising=False)
    else:
        monkeypatch.setenv(KEYS_ENV, env)
    monkeypatch.delenv("LAB_API_KEYS", raising=False)

    def must_not_start(*args, **kwargs):  # the bug itself: it would serve (open, or on a placeholder) until SIGTERM
        raise AssertionError("an open server was started")

    serve_module = importlib.import_module("lab.server.background")
    monkeypatch.setattr(serve_module, "start_server", must_not_start)
    monkeypatch.setattr(serve_module, "serve", must_not_start)
    assert main(["serve", *argv]) == 2  # refused before the model loads
    return capsys.readouterr().err.strip()


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """`batching-lab serve` on the tiny model, for a run that stops before serving: (exit code, stderr)."""
    from lab.cli import main

    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.delenv("LAB_API_KEYS", raising=False)
    code = main(["serve", "--model", str(tiny_model_dir()), "--device", "cpu", "--dtype", "float32",
                 "--log-level", "error", *argv])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, code, expected", [
    # the engine's own checks, which only it can make: before, they named its fields
    (["--max-num-seqs", "5000"], 2, "error: --max-num-batched-tokens (2048) must be >= --max-num-seqs (5000)"),
    (["--max-model-len", "100000"], 2, "error: --max-model-len: 100000 exceeds this model's context "
     "(max_position_embeddings=256); allowed: at most 256, or leave --max-model-len out for the model's own"),
    (["--device", "tpu"], 2, "error: --device: 'tpu' is not supported"),
    # before: "port: cannot listen on 999.1.1.1:8012 (Name or service not known); pick another or 0"
    (["--num-blocks", "8", "--host", "999.1.1.1", "--port", "8012"], 1,
     "batching-lab serve: --host: cannot listen on 999.1.1.1 ("),
])
def test_a_refused_setting_names_the_flag(monkeypatch, capsys, argv, code, expected):
    got, err = _main(monkeypatch, capsys, *argv)
    assert (got, err[:len(expected)]) == (code, expected)


def test_a_port_in_use_is_still_the_ports_fault(monkeypatch, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _main(monkeypatch, capsys, "--num-blocks", "8", "--port", str(port))
    assert code == 1 and err.startswith(f"batching-lab serve: --port: cannot listen on 127.0.0.1:{port} (")
    assert err.endswith("pick another or 0")


@pytest.mark.parametrize("argv, policy, header_fault, graphs", [
    ([], "continuous", 503, False),  # the defaults: continuous batching, x-lab-fault honoured, no CUDA graphs
    (["--policy", "static", "--no-fault-header", "--cuda-graphs"], "static", None, True),
])
def test_policy_and_fault_header_flags_reach_the_served_engine(monkeypatch, capsys, argv, policy, header_fault,
                                                               graphs):
    """`serve_main` in-process: the server it starts is checked while it serves, then its own SIGTERM
    handler is called, as a SIGTERM would, and the command ends."""
    background = importlib.import_module("lab.server.background")
    cli_commands = importlib.import_module("lab.server.cli_commands")
    real_start, started, seen = background.start_server, [], {}

    def start_server(*args, **kwargs):
        started.append(real_start(*args, **kwargs))
        return started[-1]

    def on_signal(signum, handler):  # installed once the server serves: look at it, then stop it
        try:
            server = started[-1]
            seen["policy"] = server.llm.engine.scheduler.config.policy  # what the engine's scheduler runs
            seen["graphs"] = server.llm.engine.config.cuda_graphs  # asked for; recorded only on a GPU
            body = {"model": server.model_name, "prompt": "Hi", "max_tokens": 2}
            r = httpx.post(server.url + "/completions", json=body, headers={"x-lab-fault": "503"}, timeout=60)
            seen["status"] = r.status_code
            seen["code"] = r.json()["error"]["code"] if r.status_code != 200 else None
        finally:  # whatever failed above, the command stops and closes its server
            handler(signum, None)

    monkeypatch.setattr(background, "start_server", start_server)
    monkeypatch.setattr(cli_commands, "signal", SimpleNamespace(SIGTERM=signal.SIGTERM, signal=on_signal))
    code, _ = _main(monkeypatch, capsys, "--num-blocks", "64", "--port", "0", *argv)
    assert code == 0 and len(started) == 1
    assert seen["policy"] == policy and seen["graphs"] is graphs
    if header_fault is None:  # --no-fault-header: the header is ignored, the request served
        assert (seen["status"], seen["code"]) == (200, None)
    else:
        assert (seen["status"], seen["code"]) == (header_fault, "service_unavailable")


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


def test_flag_names_rename_field_names_not_paths():
    from lab.server.cli_commands import _flag_names

    assert _flag_names("max_num_batched_tokens (2048) must be >= max_num_seqs (5000)") == (
        "--max-num-batched-tokens (2048) must be >= --max-num-seqs (5000)")
    assert _flag_names("model: /data/max_model_len-4k is not a folder") == "--model: /data/max_model_len-4k is not a folder"
