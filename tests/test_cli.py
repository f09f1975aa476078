"""The `batching-lab` command: every subcommand is wired, and `demo` writes its report."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from lab.cli import build_parser, main
from lab.client.client import Client as RealClient
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


def _one_request_result(label: str, e2e_s: float):
    from lab.metrics import RequestMetrics, Result

    return Result([RequestMetrics("r", 0.0, 4, 2, 0.0, e2e_s / 2, e2e_s, [e2e_s / 2, e2e_s])], label=label,
                  duration_s=e2e_s)


def _demo_output(static, continuous, monkeypatch, tmp_path, capsys) -> str:
    """What `batching-lab demo` prints when its two runs give these results."""
    monkeypatch.setattr("lab.demo.run_demo", lambda *a, **k: {"static": static, "continuous": continuous})
    monkeypatch.setattr("lab.demo.summary_table", lambda r: "the table")  # it needs step traces
    monkeypatch.setattr("lab.demo.write_report", lambda r, path, n: Path(path))
    assert main(["demo", "--report", str(tmp_path / "r.html")]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("continuous_e2e_s, note", [(2.0, True), (0.5, False)])
def test_demo_says_why_when_continuous_does_not_win(continuous_e2e_s, note, monkeypatch, tmp_path, capsys):
    # on a busy CPU the wall-clock runs can invert the lesson: the demo must say so, not leave it there
    out = _demo_output(_one_request_result("static", 1.0), _one_request_result("continuous", continuous_e2e_s),
                       monkeypatch, tmp_path, capsys)
    assert ("continuous batching did not win this run" in out) is note
    ratio = 1.0 / continuous_e2e_s  # the same 2 tokens, in each run's duration
    assert f"mean E2E 1000 -> {continuous_e2e_s * 1000:.0f} ms, {ratio:.2f}x the output tokens/s" in out
    assert "tokens/s follow the arrival rate" not in out


def test_demo_says_why_tokens_per_second_tie(monkeypatch, tmp_path, capsys):
    # an arrival-bound run: both policies finish when the last arrival is served, so tokens/s tie
    static, continuous = _one_request_result("static", 1.0), _one_request_result("continuous", 0.5)
    continuous.duration_s = static.duration_s
    out = _demo_output(static, continuous, monkeypatch, tmp_path, capsys)
    assert "mean E2E 1000 -> 500 ms, 1.00x the output tokens/s" in out and "follow the arrival rate" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--trace", "conv", "--trace-start", "100", "--trace-end", "50", "--no-progress"],
         "error: --trace-end: must be > --trace-start"),  # --range-ratio 1.5, here before, is the parser's now
        (["simulate", "--num-prompts", "2", "--params", "8B", "--no-progress"], "error: --layers: a custom model"),
        (["serve", "--fault", "429=0.6", "--fault", "500=0.6"], "error: "),  # serve said 1 for its bad options
        (["serve", "--max-num-seqs", "5000"], "error: --max-num-batched-tokens (2048) must be >= --max-num-seqs (5000)"),
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--model", "/nonexistent/model", "--num-requests", "1"], "batching-lab demo: "),
        (["bench", "--base-url", "http://127.0.0.1:{port}/v1", "--max-retries", "0", "--num-prompts", "1"],
         "batching-lab bench: "),
        # with --model, models.list() is skipped: every request failed, and it printed a table of nan
        (["bench", "--base-url", "http://127.0.0.1:{port}/v1", "--model", "m", "--num-prompts", "2",
          "--no-progress"], "batching-lab bench: connection error"),
    ],
)
def test_failures_of_the_world_exit_1_with_one_line(argv, message, capsys):
    # a missing folder or a server that does not answer is not a usage error, and not a traceback either
    import socket

    with socket.socket() as held:  # bound for the whole run, never listening: no one else can take the
        held.bind(("127.0.0.1", 0))  # port, and every connection to it is refused
        port = held.getsockname()[1]
        assert main([a.format(port=port) for a in argv]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(message) and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "nan" not in captured.out


def test_debug_shows_the_traceback_for_serve_too(monkeypatch):
    monkeypatch.setenv("BATCHING_LAB_DEBUG", "1")
    with pytest.raises(ValueError, match="--fault: the probabilities sum"):  # serve used to print one line regardless
        main(["serve", "--fault", "429=0.6", "--fault", "500=0.6"])


def test_every_option_is_explained_and_examples_are_given():
    # most options had no help at all (so no default shown either), and no command had an example
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("demo", "serve", "bench", "batch", "simulate"):
        sub = commands[name]
        unexplained = [a.option_strings or a.dest for a in sub._actions if not a.help]
        assert not unexplained, f"{name}: {unexplained}"
        assert sub.epilog and "examples" in sub.epilog and f"batching-lab {name}" in sub.epilog
        assert f"batching-lab {name}" in sub.format_help().split("examples")[-1]  # kept, lines intact


@pytest.mark.parametrize("argv", [
    ["demo", "--rate", "nan"], ["demo", "--seed", "-1"], ["bench", "--timeout", "0"],
    ["bench", "--max-retries", "-1"], ["bench", "--burstiness", "nan"], ["batch", "i", "o", "--rpm", "nan"],
    ["batch", "i", "o", "--tpm", "-5"], ["simulate", "--trace-start", "nan"], ["serve", "--max-num-seqs", "0"],
])
def test_bad_numbers_exit_2_from_the_parser_naming_the_flag(argv, capsys):
    # they used to pass the parser: demo printed its banner first, others named a Python parameter
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {argv[-2]}: must be " in err and "Traceback" not in err


def _main_uninterrupted(argv):
    try:
        return main(argv)
    except KeyboardInterrupt:  # a failure of this test, not the end of the test session
        pytest.fail("KeyboardInterrupt escaped main(): a traceback wall on Ctrl-C")


def test_ctrl_c_ends_with_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("lab.sim.simulate"), "simulate", interrupted)  # as Ctrl-C mid-run
    assert _main_uninterrupted(["simulate", "--num-prompts", "2", "--no-progress"]) == 130  # was a traceback wall
    assert capsys.readouterr().err.strip() == "batching-lab simulate: interrupted"
    monkeypatch.setenv("BATCHING_LAB_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        main(["simulate", "--num-prompts", "2", "--no-progress"])


def _mock_client(monkeypatch, handler):
    """The CLI's clients answered by `handler` (httpx.MockTransport); callable again to swap it."""
    import httpx

    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: RealClient(transport=httpx.MockTransport(handler), **kw))


def _batch_lines(n):
    import json

    return "".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}}) + "\n"
                   for i in range(n))


def _chat_answer(request):
    import httpx

    return httpx.Response(200, json={"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})


def test_ctrl_c_in_a_batch_leaves_a_checkpoint_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    import asyncio
    import json
    import signal

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(_batch_lines(6))
    argv = ["batch", str(inp), str(out), "--base-url", "http://h/v1", "--concurrency", "1", "--no-progress"]
    sent = []

    async def handler(request):
        sent.append(json.loads(request.content)["messages"][0]["content"])
        if len(sent) == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while the third request is in flight
        await asyncio.sleep(0.01)  # as a network would: the run can be cancelled here
        return _chat_answer(request)

    _mock_client(monkeypatch, handler)
    assert _main_uninterrupted(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"batching-lab batch: interrupted; the records so far are in {out}: the same command resumes the run"
    kept = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert 2 <= len(kept) <= 3 and kept == [f"q{i}" for i in range(len(kept))]
    sent.clear()
    _mock_client(monkeypatch, lambda request: (sent.append(1), _chat_answer(request))[1])
    assert main(argv) == 0 and len(sent) == 6 - len(kept)
    assert sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines()) == [f"q{i}" for i in range(6)]


@pytest.mark.parametrize("output, message", [
    ("in.jsonl", "error: output: {d}/in.jsonl is the input file"),
    ("other.jsonl", "error: output: {d}/other.jsonl, line 1 is not a record of a batch run"),
    ("binary.jsonl", "error: output: {d}/binary.jsonl is not UTF-8 text"),
])
def test_batch_refuses_an_output_file_that_is_not_its_records(output, message, tmp_path, monkeypatch, capsys):
    # the input file given twice got result records appended to it, then a KeyError traceback; any JSONL
    # whose lines had no custom_id would have been rewritten without them
    (tmp_path / "in.jsonl").write_text(_batch_lines(2))
    (tmp_path / "other.jsonl").write_text(_batch_lines(3))
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _mock_client(monkeypatch, _chat_answer)
    assert main(["batch", str(tmp_path / "in.jsonl"), str(tmp_path / output), "--base-url", "http://h/v1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(d=tmp_path)) and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_batch_input_that_is_not_utf8_is_named(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"custom_id": "\xff"}\n')
    assert main(["batch", str(inp), str(tmp_path / "out.jsonl"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: input: {inp} is not UTF-8 text; JSONL files are UTF-8\n"


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_batch_refuses_an_input_with_no_requests(content, tmp_path, monkeypatch, capsys):
    # it exited 0 having sent nothing, as if an empty (or wrong) file were a finished batch
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(content)
    calls = []
    _mock_client(monkeypatch, lambda request: calls.append(request) or _chat_answer(request))
    assert main(["batch", str(inp), str(out), "--base-url", "http://h/v1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: input: {inp} holds no requests (it is empty or has only blank lines); "
                   f"give a JSONL file with one request a line\n")
    assert not calls and not out.exists()


def test_bench_max_retries_is_used(monkeypatch):
    import httpx

    calls = []

    def busy(request):
        calls.append(request.url.path)
        return httpx.Response(503, headers={"retry-after": "0.01"}, json={"error": {"message": "busy"}})

    _mock_client(monkeypatch, busy)
    argv = ["bench", "--base-url", "http://h/v1", "--model", "m", "--num-prompts", "1", "--max-retries", "2"]
    assert main(argv) == 1
    assert calls == ["/v1/completions"] * 3  # one attempt and two retries: the flag was ignored (one attempt)
    calls.clear()
    assert main(argv[:-2]) == 1 and len(calls) == 1  # bench's default: single attempts, as vllm bench serve


def _one_token_stream(request):
    import httpx

    body = {"id": "s", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}
    return httpx.Response(200, content=f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode(),
                          headers={"content-type": "text/event-stream"})


def test_bench_result_json_is_standard_json(tmp_path, monkeypatch):
    # one token per answer: no TPOT or ITL to average, NaN in the summary, written as a bare NaN that
    # strict parsers (jq, JavaScript's JSON.parse) refuse
    def refuse(name):
        raise ValueError(f"not standard JSON: {name}")

    _mock_client(monkeypatch, _one_token_stream)
    out = tmp_path / "b.json"
    assert main(["bench", "--base-url", "http://h/v1", "--model", "m", "--num-prompts", "2", "--no-progress",
                 "--result-json", str(out)]) == 0
    saved = json.loads(out.read_text(), parse_constant=refuse)
    assert saved["summary"]["completed"] == 2 and saved["summary"]["mean_tpot_ms"] is None


def test_bench_that_reaches_the_server_still_prints_its_table(monkeypatch, capsys):
    # only a server that answered nothing ends in one line: refusals (here a 500 each) are measurements
    import httpx

    _mock_client(monkeypatch, lambda request: httpx.Response(500, json={"error": {"message": "down"}}))
    assert main(["bench", "--base-url", "http://h/v1", "--model", "m", "--num-prompts", "2", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "Failed requests:" in captured.out and "error: InternalServerError: HTTP 500: down" in captured.err


def test_bench_refused_for_its_key_ends_in_one_line(monkeypatch, capsys, tmp_path):
    # a wrong key printed a table of NaN and the same 401 as an error line: one line says it all
    import httpx

    _mock_client(monkeypatch, lambda request: httpx.Response(401, json={"error": {"message": "Incorrect API key"}}))
    out = tmp_path / "b.json"
    assert main(["bench", "--base-url", "http://h/v1", "--model", "m", "--num-prompts", "3", "--no-progress",
                 "--result-json", str(out)]) == 1
    assert json.loads(out.read_text())["summary"]["failed"] == 3  # the file still says how the run went
    captured = capsys.readouterr()
    assert "Failed requests:" not in captured.out
    assert captured.err.strip() == ("batching-lab bench: AuthenticationError: HTTP 401: Incorrect API key "
                                    "(all 3 requests refused alike)")


def test_batch_keeps_an_answer_with_a_lone_surrogate(tmp_path, monkeypatch, capsys):
    # "\ud83d" (half an emoji) passes json.loads but not a UTF-8 write: the batch died with no record and
    # exit 2, as if an option were bad, and every rerun died the same way
    import httpx

    answer = (b'{"id": "x", "object": "chat.completion", "model": "m", "choices": [{"index": 0, '
              b'"message": {"role": "assistant", "content": "hi \\ud83d"}, "finish_reason": "length"}]}')
    sent = []
    _mock_client(monkeypatch, lambda request: (sent.append(1), httpx.Response(200, content=answer))[1])
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(_batch_lines(4))
    argv = ["batch", str(inp), str(out), "--base-url", "http://h/v1", "--no-progress", "--concurrency", "2"]
    assert main(argv) == 0 and len(sent) == 4
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["custom_id"] for r in records) == [f"q{i}" for i in range(4)]
    assert {r["response"]["body"]["choices"][0]["message"]["content"] for r in records} == {"hi \ud83d"}
    assert main(argv) == 0 and len(sent) == 4  # resumed: nothing sent again
    assert capsys.readouterr().out.splitlines()[-1] == f"4 succeeded, 0 failed; records in {out}"


def test_batch_reads_an_input_saved_with_a_byte_order_mark(tmp_path, monkeypatch, capsys):
    # Notepad and PowerShell write UTF-8 with a BOM: line 1 was "not valid JSON", exit 2
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b"\xef\xbb\xbf" + _batch_lines(2).encode())
    _mock_client(monkeypatch, _chat_answer)
    assert main(["batch", str(inp), str(out), "--base-url", "http://h/v1", "--no-progress"]) == 0
    assert capsys.readouterr().out == f"2 succeeded, 0 failed; records in {out}\n"


NO_PROC = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc, a folder that takes no files")


@pytest.mark.parametrize("argv, message", [
    (["bench", "--base-url", "http://h/v1", "--num-prompts", "1", "--result-json", "{d}/missing/b.json"],
     "error: --result-json: the folder '{d}/missing' does not exist"),
    (["bench", "--base-url", "http://h/v1", "--num-prompts", "1", "--result-json", "{d}"],
     "error: --result-json: '{d}' is a folder"),
    pytest.param(["bench", "--base-url", "http://h/v1", "--num-prompts", "1", "--result-json", "/proc/b.json"],
                 "error: --result-json: cannot write '/proc/b.json': ", marks=NO_PROC),
    (["batch", "{d}/in.jsonl", "{d}/missing/out.jsonl", "--base-url", "http://h/v1"],
     "error: output: the folder '{d}/missing' does not exist"),
    (["simulate", "--num-prompts", "2", "--no-progress", "--result-json", "/nonexistent/x.json"],
     "error: --result-json: the folder '/nonexistent' does not exist"),
])
def test_an_output_that_cannot_be_written_fails_before_any_request(argv, message, tmp_path, monkeypatch, capsys):
    # bench ran the whole benchmark, then lost it: "[Errno 2] No such file or directory"; then these
    # exited 1, as a failure of the world, for what is a bad option (the README: exit 2, `error: ...`)
    (tmp_path / "in.jsonl").write_text(_batch_lines(1))
    calls = []
    _mock_client(monkeypatch, lambda request: calls.append(request) or _chat_answer(request))
    monkeypatch.setattr(importlib.import_module("lab.sim.simulate"), "simulate", lambda *a, **k: calls.append(a))
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert not calls and len(err.strip().splitlines()) == 1
    assert err.startswith(message.format(d=tmp_path))


@pytest.mark.parametrize("argv, code, message", [
    # it ran the whole demo (half a minute or more on 2 cores), then failed to write the report; then
    # it exited 1, as for a failure of the world, for what is a bad option
    (["--report", "{d}"], 2, "error: --report: '{d}' is a folder; give a file name inside it"),
    (["--report", "{d}/file/r.html"], 2, "error: --report: cannot create the folder '{d}/file': "),
    # a folder that exists but takes no files: checked after both runs, "[Errno 2] ..." naming no option
    pytest.param(["--report", "/proc/x.html"], 2, "error: --report: cannot write '/proc/x.html': ", marks=NO_PROC),
    # the engine's message named max_num_batched_tokens, which demo has no option for
    (["--max-num-seqs", "4096"], 2, "error: --max-num-seqs: must be <= 2048"),
])
def test_demo_options_it_cannot_use_fail_before_the_run(argv, code, message, tmp_path, monkeypatch, capsys):
    def never(*a, **k):
        raise AssertionError("the demo ran")

    monkeypatch.setattr("lab.demo.run_demo", never)
    (tmp_path / "file").write_text("")
    assert main(["demo", *(a.format(d=tmp_path) for a in argv)]) == code
    err = capsys.readouterr().err
    assert err.startswith(message.format(d=tmp_path)) and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("folder, message", [
    ("{d}/missing", "--model: {d}/missing is not a folder"),
    ("{d}", "--model: {d} has no config.json; expected a Hugging Face-format folder"),
])
def test_demo_checks_its_model_folder_before_the_banner(folder, message, tmp_path, monkeypatch, capsys):
    # it printed "Serving 48 requests ... on the model in /nonexistent" first, then "model: ... is not a
    # folder", naming no option; exit 1 and the flag, as serve says it
    def never(*a, **k):
        raise AssertionError("the demo ran")

    monkeypatch.setattr("lab.demo.run_demo", never)
    assert main(["demo", "--model", folder.format(d=tmp_path), "--report", str(tmp_path / "r.html")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"batching-lab demo: {message.format(d=tmp_path)}\n"


def test_bench_names_its_flags_in_the_servers_refusals(monkeypatch, capsys):
    # the server's words are for an API caller ("Lower max_tokens", "Shorten the prompt"); a user of bench
    # sets them with --output-len and --input-len, which no line named
    import httpx

    sent = []

    def refuse(request):  # lab.server's two refusals, in turn
        sent.append(request)
        text = ("prompt: the prompt has 5000 tokens; this model's context is 256 tokens, which leaves no "
                "room to generate. Shorten the prompt." if len(sent) % 2 else
                "max_tokens: this model's maximum context length is 256 tokens; you requested 100136 (136 in "
                "the prompt, 100000 in the completion). Lower max_tokens to at most 120.")
        return httpx.Response(400, json={"error": {"message": text}})

    _mock_client(monkeypatch, refuse)
    assert main(["bench", "--base-url", "http://h/v1", "--model", "m", "--num-prompts", "4", "--no-progress"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: BadRequestError: HTTP 400: ") for line in lines)
    assert lines[0].endswith("Lower max_tokens to at most 120. (max_tokens is bench's --output-len)")
    assert lines[1].endswith("Shorten the prompt. (the prompt's length is bench's --input-len)")


def test_other_errors_get_no_flag_hint():
    from lab.client.cli_commands import _flag_hint

    assert _flag_hint("InternalServerError: HTTP 500: down") == ""
    assert _flag_hint("BadRequestError: HTTP 400: max_tokens_x is not a field") == ""
    assert _flag_hint("BadRequestError: HTTP 400: Please reduce the length of the messages.") == (
        " (the prompt's length is bench's --input-len)")  # OpenAI's and vLLM's wording


def test_every_option_states_its_default():
    # the README: `--help` lists every option with its default; flags (--no-fault-header, --retry-errors,
    # --no-progress) gave none, and serve's --log-level had no description, only its default
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    missing = [f"{name} {a.option_strings[-1]}" for name, sub in commands.items() for a in sub._actions
               if a.option_strings and a.dest != "help" and "default" not in (a.help or "")]
    assert missing == []
    undescribed = [f"{name} {a.option_strings[-1]}" for name, sub in commands.items() for a in sub._actions
                   if a.option_strings and (a.help or "").startswith("(default")]
    assert undescribed == []


def test_in_flag_terms_renames_names_not_paths_or_longer_words():
    from lab.cli_args import in_flag_terms

    flags = {"max_num_seqs": "--max-num-seqs", "block_size": "--block-size"}
    assert in_flag_terms("max_num_seqs (5000) must be <= 2048; lower max_num_seqs.", flags) == (
        "--max-num-seqs (5000) must be <= 2048; lower --max-num-seqs.")
    assert in_flag_terms("block_size: 0 (a block_size_hint, /m/block_size-4, block_size.json)", flags) == (
        "--block-size: 0 (a block_size_hint, /m/block_size-4, block_size.json)")
