"""`batching-lab simulate`: options parse, a trace window runs, the summary table prints."""

import argparse
import importlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lab.sim.cli_commands import simulate_main
from lab.sim.cli_options import add_simulate_args

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"


def _args(*argv):
    return add_simulate_args(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.fixture
def routed(monkeypatch):
    """What the simulator's router really saw, one list per simulate() run: (request id, number of
    replicas, replica picked, the replicas' outstanding requests at the arrival). The banner and the
    result JSON echo the flags; this shows they reached the simulation."""
    sim = importlib.import_module("lab.sim.simulate")
    real, runs = sim.make_router, []

    def spy(router):
        route, calls = real(router), []
        runs.append(calls)

        def recorded(replicas, spec, now):
            loads = [r.outstanding_at(now) for r in replicas]
            k = route(replicas, spec, now)
            calls.append((spec.id, len(replicas), k, loads))
            return k

        return recorded

    monkeypatch.setattr(sim, "make_router", spy)
    return runs


def test_trace_window_on_two_replicas(capsys, tmp_path, routed):
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
    # the requests of the trace's first 30 s, counted from the file itself
    stamps = pd.to_datetime(pd.read_csv(TRACES / "AzureLLMInferenceTrace_code.csv")["TIMESTAMP"])
    in_window = int(((stamps - stamps.min()).dt.total_seconds() < 30).sum())
    assert 0 < in_window < len(stamps)
    assert summary["completed"] == in_window and summary["failed"] == 0
    [calls] = routed  # one simulation, every request routed over two replicas
    assert len(calls) == in_window and {n for _, n, _, _ in calls} == {2}
    picks = [k for _, _, k, _ in calls]
    assert set(picks) == {0, 1} and picks != [i % 2 for i in range(len(picks))]  # not round robin
    # least outstanding: each request went to a replica with the fewest requests in flight
    assert all(loads[k] == min(loads) for _, _, k, loads in calls)


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
    "argv, match", [
        (("--goodput", "itl:5"), "--goodput"),
        # before the run, not after; they named the library's parameter: "slo_ms['ttft']: must be ..."
        (("--goodput", "ttft:-5"), r"^--goodput: 'ttft:-5': the limit must be a finite number of milliseconds > 0$"),
        (("--goodput", "ttft:abc"), r"^--goodput: 'ttft:abc': the limit must be a finite number"),
        # EngineConfig's fields were named instead: "max_num_batched_tokens (8192) must be >= max_num_seqs (10000)"
        (("--max-num-seqs", "10000"), r"^--max-num-batched-tokens \(8192\) must be >= --max-num-seqs \(10000\)"),
        (("--max-num-batched-tokens", "100"), r"^--max-num-batched-tokens \(100\) must be >= --max-num-seqs \(256\)"),
        # both read "model: llama-3.1-8b (16 GB of weights) leaves no room for a KV cache ...": the 8B fits
        (("--gpu-memory-utilization", "0.2"), r"^--gpu-memory-utilization: 0.2 x 85.5 GB of H100-SXM = 17.1 GB "
                                              r"is below the 16.1 GB of weights"),
        (("--block-size", "1000000"), r"^--block-size: one block of 1000000 tokens takes 131 GB of KV cache"),
        (("--max-requests", "5"), "--max-requests: applies to --trace only"),  # was ignored
        (("--trace", "conv", "--rate", "3"), "--rate: applies to generated workloads only"),  # was ignored
        (("--trace", "conv", "--seed", "3"), "--seed: applies to generated workloads only"),  # was ignored
        (("--router", "least_outstanding"), "--router: applies to --replicas 2 or more only"),  # was ignored
        (("--model", "llama-3.1-8b", "--tensor-parallel", "3"), "--tensor-parallel: llama-3.1-8b's 32 attention"),
        # were accepted: a context the model does not have, and prompts that fill it (a table of failures after the run)
        (("--model", "llama-3.1-8b", "--max-model-len", "10000000"),
         r"^--max-model-len: llama-3.1-8b's context is 131072 tokens, got 10000000"),
        (("--model", "qwen2.5-0.5b", "--input-len", "40000"),
         r"^--input-len: every prompt \(40000 tokens or more\) leaves no room to generate within qwen2.5-0.5b's "
         r"context of 32768"),
        # a cache that holds no request: it ran, printed a table of nan, then an error line per reason
        (("--num-blocks", "1"), r"^--num-blocks: 1 block of 16 tokens cannot hold any request: the smallest needs "
                                r"72 \(1151 tokens of KV cache: prompt \+ output - 1\); give --num-blocks 72 or more$"),
        (("--num-blocks", "71"), r"^--num-blocks: 71 blocks of 16 tokens cannot hold any request"),
        # it read "model: llama-3.1-70b ...", naming no flag
        (("--model", "llama-3.1-70b"), r"^--model: llama-3.1-70b \(141 GB of weights\) leaves no room for a KV "
                                       r"cache on 1 x H100-SXM"),
    ]
)
def test_bad_options(argv, match):
    argv = argv if "--trace" in argv else ("--num-prompts", "2", *argv)
    with pytest.raises(ValueError, match=match):
        simulate_main(_args("--no-progress", *argv))


def test_num_blocks_that_hold_the_smallest_request_run(capsys):
    # the bound refused above is exact: 72 blocks of 16 hold the 1024 + 128 - 1 tokens of KV a request keeps
    assert simulate_main(_args("--num-prompts", "2", "--num-blocks", "72", "--no-progress")) == 0
    assert "Failed requests:                                 0" in capsys.readouterr().out


# qwen2.5-0.5b of lab.sim.gpus.MODELS, spelled as command-line flags
QWEN_05B_SHAPE = tuple(
    "--params 494M --layers 24 --hidden 896 --kv-heads 2 --head-dim 64 --max-model-len 32768".split()
)
SMALL_RUN = tuple("--num-prompts 12 --rate 6 --input-len 100 --output-len 10 --gpu L4 --no-progress".split())


def _summary(tmp_path, capsys, *argv):
    out = tmp_path / "s.json"
    assert simulate_main(_args(*SMALL_RUN, "--result-json", str(out), *argv)) == 0
    return capsys.readouterr().out, json.loads(out.read_text())["summary"]


def test_custom_model_shape_matches_the_named_one(tmp_path, capsys):
    named_text, named = _summary(tmp_path, capsys, "--model", "qwen2.5-0.5b")
    custom_text, custom = _summary(tmp_path, capsys, *QWEN_05B_SHAPE)
    assert "custom-0.494B" in custom_text and "qwen2.5-0.5b" in named_text
    blocks = [line.split(", ")[-1] for line in (named_text.splitlines()[0], custom_text.splitlines()[0])]
    assert blocks[0] == blocks[1] and "KV blocks" in blocks[0]
    assert custom == named


def test_heads_flag_sets_the_attention_heads_of_a_custom_shape(tmp_path, capsys):
    # Qwen3-0.6B's heads are not hidden / head_dim: 16 heads of 128 on a width of 1024
    qwen3 = "--params 0.6B --layers 28 --hidden 1024 --kv-heads 8 --head-dim 128".split()
    _, derived = _summary(tmp_path, capsys, *qwen3, "--input-len", "4000", "--max-model-len", "8192")
    _, given = _summary(tmp_path, capsys, *qwen3, "--heads", "16", "--input-len", "4000", "--max-model-len", "8192")
    # twice the heads, twice the attention FLOPs of a 4,000-token prefill: a slower first token
    assert given["mean_ttft_ms"] > derived["mean_ttft_ms"]
    with pytest.raises(ValueError, match="^--tensor-parallel: custom-0.6B's 16 attention heads cannot be split"):
        simulate_main(_args(*SMALL_RUN, *qwen3, "--heads", "16", "--tensor-parallel", "3"))


def test_tensor_parallel_runs_say_how_many_gpus_and_cut_the_time_per_token(tmp_path, capsys, routed):
    one_text, one = _summary(tmp_path, capsys, "--gpu", "H100-SXM", "--replicas", "2")
    two_text, two = _summary(tmp_path, capsys, "--gpu", "H100-SXM", "--tensor-parallel", "2", "--replicas", "2")
    four_text, single = _summary(tmp_path, capsys, "--gpu", "H100-SXM", "--tensor-parallel", "4")
    # the replicas the simulations really ran: 2, 2 and 1, each taking all 12 requests
    assert [sorted({n for _, n, _, _ in calls}) for calls in routed] == [[2], [2], [1]]
    assert [len(calls) for calls in routed] == [12, 12, 12]
    assert [sorted({k for _, _, k, _ in calls}) for calls in routed] == [[0, 1], [0, 1], [0]]
    assert "on 2 x H100-SXM," in one_text and "on 2 replicas of 2 x H100-SXM (TP 2)," in two_text
    assert "on 4 x H100-SXM (TP 4)," in four_text
    assert two["mean_tpot_ms"] < one["mean_tpot_ms"]  # the same replicas, each split over 2 GPUs
    assert single["mean_tpot_ms"] < two["mean_tpot_ms"]


def test_a_bigger_custom_model_is_slower_and_fp8_holds_more_blocks(tmp_path, capsys):
    _, small = _summary(tmp_path, capsys, *QWEN_05B_SHAPE)
    bigger = [("4B" if a == "494M" else a) for a in QWEN_05B_SHAPE]  # 8x the weights to read every step
    _, big = _summary(tmp_path, capsys, *bigger)
    assert big["mean_tpot_ms"] > small["mean_tpot_ms"]

    def blocks(*argv):
        simulate_main(_args("--num-prompts", "1", "--no-progress", *argv))
        return int(capsys.readouterr().out.splitlines()[0].split(", ")[-1].split()[0])

    assert blocks("--model", "llama-3.1-8b", "--dtype-bytes", "1") > blocks("--model", "llama-3.1-8b")


@pytest.mark.parametrize(
    "argv, match",
    [
        (("--params", "8B", "--layers", "32"), r"^--hidden: a custom model shape needs all of --params, "),
        (("--model", "qwen2.5-7b", *QWEN_05B_SHAPE), r"^--model: give a named model or a custom shape"),
        (("--params", "900B", *QWEN_05B_SHAPE[2:]),
         r"^--params: custom-900B .* leaves no room .* more of them \(--tensor-parallel\)$"),
        (("--model", "qwen2.5-7b", "--heads", "28"), r"^--heads: only with a custom model shape"),
        # the next three said "--heads: ...", an option the user had not given
        ((*QWEN_05B_SHAPE, "--head-dim", "96"),
         r"^--hidden/--head-dim: --hidden 896 is not a multiple of --head-dim 96; check both, or give --heads"),
        ((*QWEN_05B_SHAPE, "--kv-heads", "3"),
         r"^--kv-heads: 14 attention heads \(--hidden 896 / --head-dim 64\) cannot share --kv-heads 3 evenly"),
        ((*QWEN_05B_SHAPE, "--heads", "15"),
         r"^--heads/--kv-heads: 15 attention heads \(--heads 15\) cannot share --kv-heads 2 evenly"),
    ],
)
def test_bad_custom_shapes(argv, match):
    with pytest.raises(ValueError, match=match):
        simulate_main(_args("--num-prompts", "2", "--no-progress", *argv))


def test_result_json_is_standard_json(tmp_path, capsys):
    # --rate inf was saved as a bare Infinity and one-token outputs' TPOT as NaN: not JSON (RFC 8259),
    # and JavaScript's JSON.parse or jq refused the file
    out = tmp_path / "s.json"
    argv = ["--num-prompts", "4", "--rate", "inf", "--burstiness", "inf", "--output-len", "1", "--no-progress"]
    assert simulate_main(_args(*argv, "--result-json", str(out))) == 0

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    saved = json.loads(out.read_text(), parse_constant=refuse)
    assert saved["args"]["rate"] == "inf" and saved["args"]["burstiness"] == "inf"  # what the flags take
    assert saved["summary"]["completed"] == 4 and saved["summary"]["mean_tpot_ms"] is None
    assert saved["summary"]["mean_ttft_ms"] > 0


@pytest.mark.parametrize("argv", [("--layers", "0"), ("--params", "lots"), ("--head-dim", "1.5"),
                                  ("--block-size", "0"), ("--num-blocks", "0"), ("--input-len", "0"),
                                  ("--replicas", "0"), ("--max-num-seqs", "-1"), ("--range-ratio", "1.5")])
def test_custom_shape_flags_are_checked_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _args(*argv)
    assert info.value.code == 2 and f"argument {argv[0]}:" in capsys.readouterr().err


def test_gpu_memory_utilization_with_num_blocks_is_an_error_not_ignored(capsys):
    # --num-blocks fixes the cache size, so a --gpu-memory-utilization beside it changed nothing
    with pytest.raises(ValueError, match="--gpu-memory-utilization: .* drop one of them"):
        simulate_main(_args("--num-prompts", "2", "--no-progress", "--num-blocks", "100",
                            "--gpu-memory-utilization", "0.5"))

    def blocks(*argv):
        simulate_main(_args("--num-prompts", "1", "--no-progress", *argv))
        return int(capsys.readouterr().out.splitlines()[0].split(", ")[-1].split()[0])

    assert blocks("--gpu-memory-utilization", "0.5") < blocks() == blocks("--gpu-memory-utilization", "0.9")


def test_seed_changes_a_generated_workload(tmp_path, capsys):
    _, default = _summary(tmp_path, capsys)
    _, zero = _summary(tmp_path, capsys, "--seed", "0")
    _, other = _summary(tmp_path, capsys, "--seed", "5")
    assert default == zero and other["mean_e2el_ms"] != zero["mean_e2el_ms"]


def test_failed_requests_say_why(capsys):
    # lengths spread over 10-190 + 20-380 tokens: a cache of 8 blocks of 16 holds a few requests, not
    # most (one it holds none of is refused before the run: test_bad_options), and the run exits 1
    argv = ["--num-prompts", "20", "--input-len", "100", "--output-len", "200", "--range-ratio", "0.9",
            "--num-blocks", "8", "--no-progress"]
    code = simulate_main(_args(*argv))
    captured = capsys.readouterr()
    failed = int(re.search(r"Failed requests:\s+(\d+)\n", captured.out)[1])
    assert code == 1 and 0 < failed < 20
    # named as a workload names it (a RequestSpec's output_len): the engine's max_tokens is no field here
    assert "): output_len: prompt + output_len = " in captured.err and "num_blocks=8" in captured.err


def test_outputs_cut_by_the_context_are_reported(capsys):
    # the engine (and so the simulator) stops a request at the model's context: 1000 + 2000 tokens in a
    # context of 2048 makes 1048 of the 2000, which the summary alone showed without a word
    argv = ["--num-prompts", "3", "--input-len", "1000", "--output-len", "2000", "--max-model-len", "2048", "--no-progress"]
    assert simulate_main(_args(*argv)) == 0
    captured = capsys.readouterr()
    assert re.search(r"Total generated tokens:\s+3144\n", captured.out)
    assert "note: 3 requests stopped at the model's context (2048 tokens, --max-model-len)" in captured.err


def test_prompts_of_which_some_fill_the_context_run_and_say_why_those_failed(capsys):
    # --range-ratio spreads the prompts: refusing the whole run for its longest ones was a false alarm
    argv = ["--model", "qwen2.5-0.5b", "--max-model-len", "1400", "--input-len", "1000", "--range-ratio", "0.5",
            "--output-len", "16", "--num-prompts", "30", "--no-progress"]
    assert simulate_main(_args(*argv)) == 1
    captured = capsys.readouterr()
    failed = int(re.search(r"Failed requests:\s+(\d+)", captured.out)[1])
    assert 0 < failed < 30 and "leaves no room to generate" in captured.err


def test_a_closed_pipe_keeps_the_result_json(tmp_path, monkeypatch):
    # `| head -1` closed stdout before the summary was printed, and the JSON, written after it, was lost
    class ClosedAfterFirstLine(io.StringIO):
        def write(self, text):
            if "\n" in self.getvalue():  # the first line is out; print writes its text and "\n" apart
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    out = tmp_path / "s.json"
    monkeypatch.setattr(sys, "stdout", ClosedAfterFirstLine())
    with pytest.raises(BrokenPipeError):
        simulate_main(_args("--num-prompts", "4", "--no-progress", "--result-json", str(out)))
    assert json.loads(out.read_text())["summary"]["completed"] == 4


def test_a_closed_pipe_ends_the_command_quietly():
    # it printed "batching-lab simulate: [Errno 32] Broken pipe" and exited 1, as if the run had failed
    cmd = [sys.executable, "-m", "lab.cli", "simulate", "--num-prompts", "4", "--no-progress"]
    # buffered stdout, as on most machines: the write then fails at the flush, not at the print
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and not err, err


@pytest.mark.parametrize("argv, match", [
    # the workload function's parameters were named instead: "start_s/end_s: ..."
    (("--trace-start", "1e9"), r"^--trace-start/--trace-end: the window \[1000000000.0, None\) .* holds no requests"),
    (("--trace-start", "100", "--trace-end", "50"), r"^--trace-end: must be > --trace-start \(100\), got 50$"),
])
def test_trace_window_errors_name_the_options(argv, match):
    with pytest.raises(ValueError, match=match):
        simulate_main(_args("--trace", "conv", "--no-progress", *argv))


@pytest.mark.parametrize("argv", [("--trace-start", "nan"), ("--trace-end", "-1"), ("--rate-scale", "inf"),
                                  ("--rate", "nan"), ("--rate", "0"), ("--burstiness", "-1"), ("--seed", "-1"),
                                  ("--range-ratio", "nan"), ("--gpu-memory-utilization", "0"),
                                  ("--gpu-memory-utilization", "1.5")])
def test_number_flags_are_checked_by_the_parser(argv, capsys):
    # they passed the parser and failed later naming a Python parameter (start_s/end_s, rate_scale, ...)
    with pytest.raises(SystemExit) as info:
        _args(*argv)
    assert info.value.code == 2 and f"argument {argv[0]}: must be " in capsys.readouterr().err


@pytest.mark.parametrize("where", [
    "missing/s.json", ".",
    # a folder that takes no files: the run failed at its end with a bare "[Errno 2]"
    pytest.param("/proc/s.json", marks=pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc")),
])
def test_result_json_that_cannot_be_written_fails_before_the_run(where, tmp_path, monkeypatch, capsys):
    # a missing folder (or a folder in the file's place) failed after the whole simulation, losing it
    from lab.cli import main

    def never(*a, **k):
        raise AssertionError("the simulation ran")

    monkeypatch.setattr(importlib.import_module("lab.sim.simulate"), "simulate", never)
    with pytest.raises(ValueError, match="^--result-json: "):  # a bad option: exit 2, as the README has it
        simulate_main(_args("--num-prompts", "2", "--no-progress", "--result-json", str(tmp_path / where)))
    assert main(["simulate", "--num-prompts", "2", "--no-progress", "--result-json", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --result-json: ") and len(err.strip().splitlines()) == 1
