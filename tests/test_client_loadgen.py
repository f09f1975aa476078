"""lab.client.run_workload on a mock streaming server, and the bench/batch CLI verbs."""

from __future__ import annotations

import argparse
import asyncio
import json
import re

import httpx
import pytest

from lab.client import AsyncClient, Client, run_workload
from lab.client.cli_commands import add_batch_args, add_bench_args, batch_main, bench_main
from lab.client.loadgen import arun_workload, synthetic_prompt
from lab.metrics import Result, format_summary
from lab.workload import RequestSpec, Workload

KEY = "sk-test-0123456789abcdef"


class StreamingServer:
    """/models lists one model; /completions and /chat/completions stream one chunk per token
    (max_tokens of them) and usage. `paths` records where each request went."""

    def __init__(self, fail_ids=()):
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.fail_ids = set(fail_ids)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "tiny-model"}]})
        body = json.loads(request.content)
        self.bodies.append(body)
        self.paths.append(request.url.path)
        chat = request.url.path.endswith("/chat/completions")
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        if str(prompt) in self.fail_ids:
            return httpx.Response(400, json={"error": {"message": "refused"}})
        n = body["max_tokens"]
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())

        def choice(i):
            finish = "length" if i == n - 1 else None
            if chat:
                return {"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": finish}
            return {"index": 0, "text": f" t{i}", "finish_reason": finish}

        async def events():
            if chat:  # chat streams open with a role-only delta, which carries no token
                c = {"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
                yield f"data: {json.dumps(c)}\n\n".encode()
            for i in range(n):
                await asyncio.sleep(0.001)
                c = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                     "model": body["model"], "choices": [choice(i)]}
                yield f"data: {json.dumps(c)}\n\n".encode()
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, content=events(), headers={"content-type": "text/event-stream"})


def client_for(server, cls=AsyncClient, provider=None):
    return cls(base_url="http://test/v1", api_key=KEY, provider=provider, transport=httpx.MockTransport(server))


async def test_run_workload_measures_like_vllm_bench():
    server = StreamingServer()
    workload = Workload([
        RequestSpec(id="a", arrival_s=0.0, prompt_len=12, output_len=5),
        RequestSpec(id="b", arrival_s=0.01, prompt="hello there", output_len=3, ignore_eos=False, seed=7),
        RequestSpec(id="c", arrival_s=0.02, prompt_token_ids=[5, 6, 7], output_len=1),
    ])
    async with client_for(server) as client:
        result = await arun_workload(client, workload)
    assert isinstance(result, Result) and [r.request_id for r in result.requests] == ["a", "b", "c"]
    a, b, c = result.requests
    assert all(r.ok for r in result.requests)
    assert (a.prompt_tokens, a.output_tokens) == (12, 5) and len(a.token_times_s) == 5
    assert (b.prompt_tokens, b.output_tokens) == (2, 3) and (c.prompt_tokens, c.output_tokens) == (3, 1)
    for r in (a, b, c):
        assert r.arrival_s <= r.first_token_s <= r.finish_s
        assert r.token_times_s == sorted(r.token_times_s) and r.token_times_s[0] == r.first_token_s
        assert r.finish_reason == "length"
    assert a.tpot_s is not None and len(a.itls_s) == 4 and c.tpot_s is None
    assert b.arrival_s >= 0.01 and c.arrival_s >= 0.02  # sent at their arrival times, not before
    body_a, body_b, body_c = sorted(server.bodies, key=lambda body: body["max_tokens"], reverse=True)
    assert body_a["model"] == "tiny-model" and body_a["stream"] is True and body_a["ignore_eos"] is True
    assert len(body_a["prompt"].split()) == 12  # prompt_len only: a synthesized prompt of that many words
    assert body_b["prompt"] == "hello there" and "ignore_eos" not in body_b and body_b["seed"] == 7
    assert body_c["prompt"] == [5, 6, 7]
    s = result.summary()
    assert s["completed"] == 3 and s["total_output_tokens"] == 9 and s["total_input_tokens"] == 17
    assert s["mean_ttft_ms"] > 0 and s["mean_itl_ms"] > 0


async def test_a_password_in_base_url_stays_out_of_labels_and_errors():
    url = "http://alice:s3cret@test/v1"
    workload = Workload([RequestSpec(id="a", prompt_len=3, output_len=2)])
    async with AsyncClient(base_url=url, transport=httpx.MockTransport(StreamingServer())) as client:
        result = await arun_workload(client, workload)
    assert result.label == "http http://alice:***@test/v1 (tiny-model)"

    async def no_models(request):
        return httpx.Response(200, json={"object": "list", "data": []})

    async with AsyncClient(base_url=url, transport=httpx.MockTransport(no_models)) as client:
        with pytest.raises(ValueError, match=r"^http://alice:\*\*\*@test/v1/models lists no model") as info:
            await arun_workload(client, workload)
    assert "s3cret" not in str(info.value)


async def test_chat_endpoint_sends_one_user_message_to_chat_completions():
    server = StreamingServer()
    workload = Workload([
        RequestSpec(id="a", prompt_len=6, output_len=4),
        RequestSpec(id="b", arrival_s=0.01, prompt="hello there", output_len=2, ignore_eos=False),
    ])
    async with client_for(server) as client:
        result = await arun_workload(client, workload, endpoint="chat")
    assert server.paths == ["/v1/chat/completions"] * 2
    body_a, body_b = sorted(server.bodies, key=lambda body: body["max_tokens"], reverse=True)
    assert "prompt" not in body_a and body_a["messages"][0]["role"] == "user"
    assert len(body_a["messages"]) == 1 and len(body_a["messages"][0]["content"].split()) == 6
    assert body_a["max_tokens"] == 4 and body_a["stream"] is True and body_a["stream_options"] == {"include_usage": True}
    assert body_a["ignore_eos"] is True  # no known provider behind http://test/v1: a vLLM-like server
    assert body_b["messages"] == [{"role": "user", "content": "hello there"}] and "ignore_eos" not in body_b
    a, b = result.requests
    assert a.ok and (a.prompt_tokens, a.output_tokens) == (6, 4)
    assert len(a.token_times_s) == 4 and a.first_token_s == a.token_times_s[0]  # the role-only chunk is no token
    assert b.ok and b.output_tokens == 2 and b.finish_reason == "length"


@pytest.mark.parametrize("provider, sends_ignore_eos", [
    ("openai", False), ("deepseek", False), ("local", True), ("vllm", True), (None, True)])
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_ignore_eos_only_where_the_provider_accepts_it(provider, sends_ignore_eos, endpoint):
    server = StreamingServer()
    workload = Workload([RequestSpec(id="a", prompt_len=3, output_len=2)])  # ignore_eos=True by default
    async with client_for(server, provider=provider) as client:
        result = await arun_workload(client, workload, model="m", endpoint=endpoint)
    assert result.requests[0].ok
    assert server.paths == ["/v1/chat/completions" if endpoint == "chat" else "/v1/completions"]
    assert ("ignore_eos" in server.bodies[0]) is sends_ignore_eos
    assert ("messages" in server.bodies[0]) is (endpoint == "chat")


async def test_endpoint_is_validated_before_any_request():
    server = StreamingServer()
    async with client_for(server) as client:
        with pytest.raises(ValueError, match="endpoint: must be one of completions, chat, got 'embeddings'"):
            await arun_workload(client, Workload([RequestSpec(id="a", prompt_len=2)]), endpoint="embeddings")
        with pytest.raises(ValueError, match="endpoint: chat takes text prompts; request 'ids'"):
            await arun_workload(client, Workload([RequestSpec(id="ids", prompt_token_ids=[1, 2])]), model="m",
                                endpoint="chat")
    assert server.bodies == []


async def test_run_workload_records_failures_and_caps_concurrency():
    server = StreamingServer(fail_ids={"boom"})
    specs = [RequestSpec(id=f"r{i}", prompt="x y", output_len=2) for i in range(6)]
    specs.append(RequestSpec(id="bad", prompt="boom", output_len=2))
    async with client_for(server) as client:
        result = await arun_workload(client, Workload(specs), max_concurrency=2, model="m")
    bad = next(r for r in result.requests if r.request_id == "bad")
    assert bad.status == "error" and "BadRequestError" in bad.error and bad.finish_s is not None
    assert result.summary()["completed"] == 6 and result.summary()["failed"] == 1
    assert server.bodies[0]["model"] == "m"


def test_run_workload_sync_from_a_sync_client():
    result = run_workload(client_for(StreamingServer(), Client),
                          Workload([RequestSpec(id="only", prompt_len=4, output_len=3)]))
    assert result.requests[0].ok and result.requests[0].output_tokens == 3


def test_synthetic_prompt_is_deterministic():
    assert synthetic_prompt(20, "x") == synthetic_prompt(20, "x") != synthetic_prompt(20, "y")
    assert len(synthetic_prompt(20, "x").split()) == 20


def test_cli_parsers_and_batch_main(tmp_path, monkeypatch, capsys):
    bench = add_bench_args(argparse.ArgumentParser())
    args = bench.parse_args(["--base-url", "http://h/v1", "--rate", "4", "--num-prompts", "9"])
    assert (args.rate, args.num_prompts, args.input_len, args.max_concurrency) == (4.0, 9, 32, None)

    calls = []

    def handler(request):
        body = json.loads(request.content)
        calls.append(body)
        return httpx.Response(200, json={"id": "c", "object": "chat.completion", "model": body["model"],
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                      "finish_reason": "stop"}]})

    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                                         "body": {"messages": [{"role": "user", "content": str(i)}]}})
                             for i in range(3)) + "\n")
    parser = add_batch_args(argparse.ArgumentParser())
    code = batch_main(parser.parse_args([str(inp), str(out), "--base-url", "http://h/v1", "--model", "mm",
                                         "--no-progress"]))
    assert code == 0 and len(calls) == 3 and all(c["model"] == "mm" for c in calls)
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()].count("q1") == 1
    assert "3 succeeded, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, flag", [
    (["--num-prompts", "0"], "--num-prompts"), (["--num-prompts", "-3"], "--num-prompts"),
    (["--input-len", "0"], "--input-len"), (["--output-len", "x"], "--output-len"),
    (["--max-concurrency", "0"], "--max-concurrency"),
])
def test_bench_counts_are_checked_by_the_parser_naming_the_flag(argv, flag, capsys):
    # they used to pass the parser and fail later naming a Python parameter ("n: must be ...") or,
    # for --num-prompts 0, not at all
    with pytest.raises(SystemExit) as info:
        add_bench_args(argparse.ArgumentParser()).parse_args(["--base-url", "http://h/v1", *argv])
    assert info.value.code == 2 and f"argument {flag}: must be an integer >= 1" in capsys.readouterr().err


def test_bench_main_prints_the_summary(monkeypatch, capsys):
    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(StreamingServer()), **kw))
    args = add_bench_args(argparse.ArgumentParser()).parse_args(
        ["--base-url", "http://h/v1", "--num-prompts", "4", "--input-len", "3", "--output-len", "2"])
    assert bench_main(args) == 0
    printed = capsys.readouterr().out
    assert "Successful requests:" in printed and "Mean TTFT (ms):" in printed and "P99 ITL (ms):" in printed
    assert "goodput" not in printed  # no SLOs given


def test_bench_goodput_takes_slos_as_vllm_bench_serve_does(monkeypatch, capsys, tmp_path):
    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(StreamingServer()), **kw))
    out = tmp_path / "b.json"
    common = ["--base-url", "http://h/v1", "--num-prompts", "4", "--output-len", "2", "--no-progress",
              "--result-json", str(out)]
    parser = add_bench_args(argparse.ArgumentParser())
    assert bench_main(parser.parse_args([*common, "--goodput", "ttft:60000", "e2el:60000"])) == 0
    assert "Request goodput (req/s):" in capsys.readouterr().out
    written = json.loads(out.read_text())
    summary = written["summary"]
    assert summary["goodput"] == pytest.approx(summary["request_throughput"])  # every request within a minute
    assert written["slo_ms"] == {"ttft": 60000, "e2el": 60000}  # the SLOs behind the figure
    # several flags add up (the last one replaced the others), and a key given twice is refused
    assert bench_main(parser.parse_args([*common, "--goodput", "ttft:60000", "--goodput", "e2el:60000"])) == 0
    assert json.loads(out.read_text())["slo_ms"] == {"ttft": 60000, "e2el": 60000}
    with pytest.raises(ValueError, match="--goodput: ttft given more than once"):
        bench_main(parser.parse_args([*common, "--goodput", "ttft:100", "ttft:50"]))
    assert bench_main(parser.parse_args([*common, "--goodput", "ttft:0.000001"])) == 0
    assert json.loads(out.read_text())["summary"]["goodput"] == 0  # none within a nanosecond
    for bad in ("ttft", "itl:50", "tpot:-1", "tpot:x"):
        with pytest.raises(SystemExit):
            parser.parse_args([*common, "--goodput", bad])
        assert "argument --goodput" in capsys.readouterr().err


@pytest.mark.parametrize("flags, shown", [([], True), (["--no-progress"], False)])
def test_bench_shows_a_progress_bar_unless_told_not_to(flags, shown, monkeypatch, capsys):
    # a long run against a real server printed nothing until the end, and looked hung
    from lab.cli import main

    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(StreamingServer()), **kw))
    assert main(["bench", "--base-url", "http://h/v1", "--num-prompts", "5", "--input-len", "2",
                 "--output-len", "2", *flags]) == 0
    captured = capsys.readouterr()
    assert ("requests: 100%" in captured.err and "5/5" in captured.err) is shown
    assert captured.err == "" or shown  # with --no-progress nothing at all on stderr
    assert "Successful requests:" in captured.out and "5/5" not in captured.out  # the bar stays off stdout


async def test_run_workload_progress_counts_failures_and_is_off_by_default(capsys):
    server = StreamingServer(fail_ids={"boom"})
    specs = [RequestSpec(id="ok", prompt="x y", output_len=2), RequestSpec(id="bad", prompt="boom", output_len=2)]
    async with client_for(server) as client:
        await arun_workload(client, Workload(specs), model="m")
        assert capsys.readouterr().err == ""  # notebooks call it: no bars in their saved outputs
        await arun_workload(client, Workload(specs), model="m", progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "failed=1" in err


def test_bench_main_endpoint_chat(monkeypatch, capsys):
    server = StreamingServer()
    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(server), **kw))
    parser = add_bench_args(argparse.ArgumentParser())
    assert parser.parse_args([]).endpoint == "completions"
    args = parser.parse_args(["--base-url", "http://h/v1", "--num-prompts", "3", "--input-len", "2",
                              "--output-len", "2", "--endpoint", "chat"])
    assert bench_main(args) == 0
    assert server.paths == ["/v1/chat/completions"] * 3 and all("messages" in b for b in server.bodies)
    assert re.search(r"Successful requests: +3\n", capsys.readouterr().out)


def test_format_summary_layout():
    text = format_summary(Result(requests=[]).summary())
    assert text.splitlines()[0].startswith("=") and "Benchmark duration (s):" in text


@pytest.mark.parametrize("bad", [0, -1])
async def test_run_workload_validates(bad):
    with pytest.raises(ValueError, match="max_concurrency"):
        await arun_workload(client_for(StreamingServer()), Workload([]), max_concurrency=bad)


def _stream_of(events, gap_s=0.0):
    import asyncio
    import json as _json

    import httpx

    def handler(request):
        async def body():
            for event in events:
                await asyncio.sleep(gap_s)
                yield f"data: {_json.dumps(event) if isinstance(event, dict) else event}\n\n".encode()

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def _chat_chunk(**delta):
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_reasoning_tokens_are_timed_and_an_empty_stream_is_a_failure():
    from lab.client import AsyncClient
    from lab.client.loadgen import arun_workload
    from lab.workload import RequestSpec, Workload

    work = Workload([RequestSpec("r0", 0.0, prompt="hi", output_len=4)])
    usage = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
             "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}}
    thinking = [_chat_chunk(role="assistant", content=""), _chat_chunk(reasoning_content="hm"),
                _chat_chunk(reasoning_content="m"), _chat_chunk(content="A"), _chat_chunk(content="B"),
                usage, "[DONE]"]

    async def run(events):
        client = AsyncClient(base_url="http://test/v1", api_key="sk-test-123456", transport=_stream_of(events, 0.01))
        try:
            return await arun_workload(client, work, model="m", endpoint="chat")
        finally:
            await client.close()

    import asyncio

    r = asyncio.run(run(thinking)).requests[0]
    # 2 reasoning + 2 content, all timed: TTFT is the first reasoning token, not the first content one
    assert r.ok and len(r.token_times_s) == 4 and r.output_tokens == 4
    empty = asyncio.run(run([_chat_chunk(role="assistant", content=""), "[DONE]"])).requests[0]
    assert empty.status == "error" and "without a single token" in empty.error  # not a 0-token success


def test_a_stream_cut_after_a_retry_records_the_retry():
    import asyncio

    from lab.client import AsyncClient, RetryPolicy
    from lab.client.loadgen import arun_workload
    from lab.workload import RequestSpec, Workload

    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, json={"error": {"message": "busy"}})  # retried: nothing streamed yet

        async def body():
            yield f"data: {json.dumps(_chat_chunk(content='A'))}\n\n".encode()
            raise httpx.ReadError("connection lost")  # then cut: not retried, the caller has a part

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    async def run():
        client = AsyncClient(base_url="http://test/v1", api_key="sk-test-123456", transport=httpx.MockTransport(handler),
                             retry=RetryPolicy(max_retries=0, initial_delay=0.0, max_delay=0.0))
        try:
            work = Workload([RequestSpec("r0", 0.0, prompt="hi", output_len=4)])
            return await arun_workload(client, work, model="m", endpoint="chat", max_retries=2)
        finally:
            await client.close()

    r = asyncio.run(run()).requests[0]
    assert r.status == "error" and "StreamInterruptedError" in r.error and len(calls) == 2
    assert r.retries == 1, "the retry before the first chunk happened and is counted"


def test_run_workload_refuses_a_client_whose_own_limits_would_queue_inside_the_clock():
    from lab.client import Client, run_workload
    from lab.workload import synthetic

    with pytest.raises(ValueError, match="client: has client-side limits"):
        run_workload(Client(base_url="http://test/v1", api_key="sk-test-123456", max_concurrency=2), synthetic(2))


def test_batch_main_with_model_names_a_line_whose_body_is_not_an_object(tmp_path):
    # filling in --model used to hit the null body first: AttributeError, a traceback instead of the message
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"custom_id": "q0", "method": "POST", "url": "/v1/chat/completions", "body": None}) + "\n")
    parser = add_batch_args(argparse.ArgumentParser())
    with pytest.raises(ValueError, match="request q0: body must be a JSON object"):
        batch_main(parser.parse_args([str(inp), str(out), "--base-url", "http://h/v1", "--model", "mm",
                                      "--no-progress"]))


def test_e2e_ends_at_the_last_token_and_a_usage_without_completion_tokens_is_counted():
    """vllm bench serve's E2EL stops at the last chunk with text: a server that waits before [DONE]
    adds nothing to E2EL or TPOT; a usage chunk that leaves out completion_tokens is not 0 tokens."""
    import asyncio
    import json as _json

    def handler(request):
        async def body():
            for text in ("A", "B", "C"):
                await asyncio.sleep(0.01)
                yield f"data: {_json.dumps(_chat_chunk(content=text))}\n\n".encode()
            partial_usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 2}}
            yield f"data: {_json.dumps(partial_usage)}\n\n".encode()
            await asyncio.sleep(0.4)  # slow to close the stream
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    async def run():
        async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler)) as c:
            return await arun_workload(c, Workload([RequestSpec("r0", 0.0, prompt="hi", output_len=3)]),
                                       model="m", endpoint="chat")

    r = asyncio.run(run()).requests[0]
    assert r.ok and r.finish_s == r.token_times_s[-1]  # the 0.4 s wait before [DONE] is not in E2E
    assert r.output_tokens == 3 and r.prompt_tokens == 2
    assert r.tpot_s == pytest.approx((r.token_times_s[-1] - r.token_times_s[0]) / 2)


def test_bench_writes_result_json_before_printing(tmp_path, monkeypatch):
    # `bench ... --result-json r.json | head -1`: the print failed on the closed pipe first, and the
    # file was never written
    import sys

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(StreamingServer()), **kw))
    path = tmp_path / "r.json"
    args = add_bench_args(argparse.ArgumentParser()).parse_args(
        ["--base-url", "http://h/v1", "--num-prompts", "2", "--input-len", "2", "--output-len", "2",
         "--no-progress", "--result-json", str(path)])
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    with pytest.raises(BrokenPipeError):
        bench_main(args)
    assert json.loads(path.read_text())["summary"]["completed"] == 2


def test_bench_against_a_server_listing_no_model_names_the_flag(monkeypatch, capsys):
    # the command said "pass model=...", the Python API's words; the library keeps them
    from lab.cli import main

    def no_models(request):
        return httpx.Response(200, json={"object": "list", "data": []})

    with pytest.raises(ValueError, match=r"/models lists no model; pass model=\.\.\.$"):
        run_workload(client_for(no_models, Client), Workload([RequestSpec(id="a", prompt="x", output_len=1)]))
    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(no_models), **kw))
    assert main(["bench", "--base-url", "http://h/v1", "--num-prompts", "2", "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: http://h/v1/models lists no model; pass --model NAME\n"


@pytest.mark.parametrize("key, message", [
    ("sk-...", "error: the API key from the --api-key option looks like a placeholder (***); "
               "pass your real key as --api-key KEY\n"),
    ("sk bad", "error: --api-key: the key contains spaces or control characters"),
])
def test_bench_key_errors_name_the_flag(key, message, monkeypatch, capsys):
    # they said "api_key argument" and "pass your real key as api_key=...", the Python API's words
    from lab.cli import main

    assert main(["bench", "--base-url", "http://h/v1", "--api-key", key, "--num-prompts", "1"]) == 2
    assert capsys.readouterr().err.startswith(message)
    monkeypatch.setenv("OPENAI_API_KEY", "sk bad")  # from the provider's variable: no flag to name
    assert main(["bench", "--provider", "openai", "--num-prompts", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: the key from the environment variable OPENAI_API_KEY "
                                              "contains spaces")


def test_the_chunk_that_ends_a_choice_is_timed_as_its_last_token():
    """An EOS ends a stream with an empty chunk carrying finish_reason, and usage counts that token: its
    time was left out, so E2EL and TPOT stopped a token early (vllm bench serve times it); a stream whose
    first token is an EOS was an EmptyStream failure where vLLM reports a completed request."""
    import asyncio

    def finish():
        chunk = _chat_chunk(content="")
        chunk["choices"][0]["finish_reason"] = "stop"
        return chunk

    usage = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
             "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}

    async def run(events):
        client = AsyncClient(base_url="http://test/v1", api_key=KEY, transport=_stream_of(events, 0.02))
        try:
            return await arun_workload(client, Workload([RequestSpec("r0", 0.0, prompt="hi", output_len=8)]),
                                       model="m", endpoint="chat")
        finally:
            await client.close()

    r = asyncio.run(run([_chat_chunk(role="assistant", content=""), _chat_chunk(content="A"),
                         _chat_chunk(content="B"), finish(), usage, "[DONE]"])).requests[0]
    assert r.ok and len(r.token_times_s) == 3 and r.output_tokens == 3
    assert r.finish_s == r.token_times_s[-1] > r.token_times_s[1]  # E2E ends at the EOS chunk, after "B"
    assert r.tpot_s == pytest.approx((r.token_times_s[-1] - r.token_times_s[0]) / 2)
    eos_first = asyncio.run(run([_chat_chunk(role="assistant", content=""), finish(), "[DONE]"])).requests[0]
    assert eos_first.ok and eos_first.output_tokens == 1 and eos_first.finish_reason == "stop"
