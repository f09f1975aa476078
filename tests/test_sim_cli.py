"""`batching-lab simulate`: options parse, a trace window runs, the summary table prints."""

import argparse
import json

import pytest

from lab.sim.cli_commands import add_simulate_args, simulate_main


def _args(*argv):
    return add_simulate_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_trace_window_on_two_replicas(capsys, tmp_path):
    out = tmp_path / "s.json"
    code = simulate_main(
        _args(
            "--trace",
            "code",
            "--trace-end",
            "30",
            "--replicas",
            "2",
            "--router",
            "least_outstanding",
            "--goodput",
            "ttft:2000",
            "--no-progress",
            "--result-json",
            str(out),
        )
    )
    text = capsys.readouterr().out
    assert code == 0 and "2 x H100-SXM" in text and "Request goodput (req/s):" in text
    summary = json.loads(out.read_text())["summary"]
    assert summary["completed"] > 0 and summary["failed"] == 0


def test_generated_workload_static_on_l4(capsys):
    code = simulate_main(
        _args(
            "--num-prompts",
            "20",
            "--rate",
            "4",
            "--input-len",
            "200",
            "--output-len",
            "20",
            "--range-ratio",
            "0.5",
            "--gpu",
            "L4",
            "--model",
            "qwen2.5-0.5b",
            "--policy",
            "static",
            "--max-num-seqs",
            "8",
            "--no-progress",
        )
    )
    assert code == 0 and "Successful requests:                            20" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match", [(("--goodput", "itl:5"), "--goodput"), (("--range-ratio", "1.5"), "--range-ratio")]
)
def test_bad_options(argv, match):
    with pytest.raises(ValueError, match=match):
        simulate_main(_args("--num-prompts", "2", "--no-progress", *argv))
