"""The `batching-lab` command: every subcommand is wired, and `demo` writes its report."""

from __future__ import annotations

import pytest

from lab.cli import build_parser, main
from lab.client.errors import MissingAPIKeyError


def test_every_subcommand_has_help(capsys):
    for command in ("demo", "serve", "bench", "batch", "simulate"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: batching-lab " + command in capsys.readouterr().out


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_demo_prints_table_and_writes_report(tiny_llama, tmp_path, capsys):
    report = tmp_path / "demo.html"
    code = main(["demo", "--model", str(tiny_llama), "--num-requests", "10", "--rate", "100",
                 "--max-num-seqs", "4", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert "static" in out and "continuous" in out and "output tok/s" in out
    assert f"on the model in {tiny_llama}," in out and "bundled" not in out  # the banner names the model run
    assert f"report: {report.resolve()}" in out
    page = report.read_text()
    assert page.count("plotly-graph-div") >= 6 and "Static versus continuous batching" in page


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--num-prompts", "2", "--range-ratio", "1.5", "--no-progress"], "error: --range-ratio: "),
        (["simulate", "--num-prompts", "2", "--params", "8B", "--no-progress"], "error: --layers: a custom model"),
        (["serve", "--fault", "429=0.6", "--fault", "500=0.6"], "error: "),  # serve said 1 for its bad options
        (["serve", "--max-num-seqs", "0"], "error: max_num_seqs"),
    ],
)
def test_bad_option_values_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_api_key_exits_2_before_any_request(monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["bench", "--provider", "openai", "--num-prompts", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: no API key for provider 'openai': set the environment")
    monkeypatch.setenv("BATCHING_LAB_DEBUG", "1")  # the traceback instead of the one line
    with pytest.raises(MissingAPIKeyError, match="no API key for provider 'openai'"):
        main(["bench", "--provider", "openai", "--num-prompts", "1"])


def test_demo_refuses_zero_requests(capsys):
    with pytest.raises(SystemExit) as info:  # it crashed with a KeyError after running nothing
        main(["demo", "--num-requests", "0"])
    assert info.value.code == 2 and "argument --num-requests: must be an integer >= 1" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--model", "/nonexistent/model", "--num-requests", "1"], "batching-lab demo: "),
        (["bench", "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--max-retries", "0", "--num-prompts", "1"],
         "batching-lab bench: "),
    ],
)
def test_failures_of_the_world_exit_1_with_one_line(argv, message, capsys):
    # a missing folder or a server that does not answer is not a usage error, and not a traceback either
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback_for_serve_too(monkeypatch):
    monkeypatch.setenv("BATCHING_LAB_DEBUG", "1")
    with pytest.raises(ValueError, match="--fault: the probabilities sum"):  # serve used to print one line regardless
        main(["serve", "--fault", "429=0.6", "--fault", "500=0.6"])
