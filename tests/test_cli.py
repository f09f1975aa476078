"""The `batching-lab` command: every subcommand is wired, and `demo` writes its report."""

from __future__ import annotations

import pytest

from lab.cli import build_parser, main


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
    assert f"report: {report.resolve()}" in out
    page = report.read_text()
    assert page.count("plotly-graph-div") >= 6 and "Static versus continuous batching" in page
