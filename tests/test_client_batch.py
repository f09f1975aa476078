"""lab.client.run_batch: one record per input in input order, append+flush, resume from a checkpoint."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from lab.client import AsyncClient, Client, RetryPolicy, arun_batch, run_batch
from lab.client.batch import normalize

KEY = "sk-test-0123456789abcdef"
NO_WAIT = RetryPolicy(max_retries=2, initial_delay=0.0, max_delay=0.0)


class FlakyServer:
    """Answers chat completions; prompts name their fate: "flaky-N" fails N times with 503, "bad" is a 400,
    "limited" gets one 429, "dead" always fails with 500."""

    def __init__(self):
        self.sent = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompt = body["messages"][-1]["content"]
        self.sent[prompt] += 1
        n = self.sent[prompt]
        if prompt == "bad":
            return httpx.Response(400, json={"error": {"message": "bad prompt"}})
        if prompt == "dead":
            return httpx.Response(500, json={"error": {"message": "down"}})
        if prompt == "limited" and n == 1:
            return httpx.Response(429, json={"error": {"message": "slow down"}}, headers={"retry-after-ms": "1"})
        if prompt.startswith("flaky-") and n <= int(prompt.split("-")[1]):
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json={
            "id": f"c-{prompt}", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": prompt.upper()},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})


def batch_line(cid, prompt):
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}}


def client_for(server, cls=Client):
    return cls(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(server), retry=NO_WAIT)


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


PROMPTS = ["a", "flaky-1", "bad", "b", "flaky-2", "limited", "dead", "c", "flaky-5", "d"]


def test_every_input_gets_exactly_one_record_in_order(tmp_path):
    server = FlakyServer()
    out = tmp_path / "out.jsonl"
    requests = [batch_line(f"r{i}", p) for i, p in enumerate(PROMPTS)]
    records = run_batch(client_for(server), requests, concurrency=4, checkpoint=out, progress=False)
    assert [r["custom_id"] for r in records] == [f"r{i}" for i in range(len(PROMPTS))]
    assert [r["index"] for r in records] == list(range(len(PROMPTS)))
    lines = read_lines(out)
    assert sorted(r["custom_id"] for r in lines) == sorted(r["custom_id"] for r in records)  # each id once
    by_prompt = dict(zip(PROMPTS, records, strict=True))
    assert by_prompt["a"]["response"]["body"]["choices"][0]["message"]["content"] == "A"
    assert by_prompt["flaky-1"]["error"] is None and by_prompt["flaky-1"]["retries"] == 1
    assert by_prompt["flaky-2"]["error"] is None and by_prompt["flaky-2"]["retries"] == 2
    assert by_prompt["limited"]["error"] is None and by_prompt["limited"]["retries"] == 1
    assert by_prompt["bad"]["error"]["type"] == "BadRequestError" and by_prompt["bad"]["retries"] == 0
    assert by_prompt["bad"]["response"]["status_code"] == 400
    assert by_prompt["dead"]["error"] == {"type": "InternalServerError", "message": "down", "status_code": 500,
                                          "request_id": None}
    assert by_prompt["dead"]["retries"] == 2 and by_prompt["flaky-5"]["error"]["type"] == "InternalServerError"
    # every retryable failure was retried up to the limit, non-retryable ones sent once
    assert server.sent["bad"] == 1 and server.sent["dead"] == 3 and server.sent["flaky-2"] == 3


def test_rerun_with_checkpoint_sends_nothing_again(tmp_path):
    server = FlakyServer()
    out = tmp_path / "out.jsonl"
    requests = [batch_line(f"r{i}", p) for i, p in enumerate(PROMPTS)]
    first = run_batch(client_for(server), requests, checkpoint=out, progress=False)
    sent_before = sum(server.sent.values())
    again = run_batch(client_for(server), requests, checkpoint=out, progress=False)
    assert sum(server.sent.values()) == sent_before  # errors count as done unless retry_errors
    assert again == first and len(read_lines(out)) == len(PROMPTS)


@pytest.mark.parametrize("content", ['{"prompt": "not a record"}\n', "# notes\nplain text\n", b"\xff\xfe"])
def test_a_checkpoint_that_is_not_batch_records_is_refused_untouched(tmp_path, content):
    # run_batch rewrites its checkpoint with records only: another file given by mistake lost its lines
    out = tmp_path / "notes.jsonl"
    out.write_bytes(content if isinstance(content, bytes) else content.encode())
    server = FlakyServer()
    with pytest.raises(ValueError, match=f"checkpoint: {out}.* (is not a record of a batch run|is not UTF-8)"):
        run_batch(client_for(server), [batch_line("r0", "a")], checkpoint=out, progress=False)
    assert not server.sent and out.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_resume_after_a_killed_run_skips_finished_and_ignores_a_torn_line(tmp_path):
    server = FlakyServer()
    out = tmp_path / "out.jsonl"
    requests = [batch_line(f"r{i}", p) for i, p in enumerate(["a", "b", "c", "d", "e"])]
    run_batch(client_for(server), requests[:2], checkpoint=out, progress=False)
    with open(out, "a") as f:
        f.write('{"custom_id": "r2", "response": {"stat')  # the process died mid-write
    server.sent.clear()
    records = run_batch(client_for(server), requests, checkpoint=out, progress=False)
    assert set(server.sent) == {"c", "d", "e"} and all(n == 1 for n in server.sent.values())
    assert [r["custom_id"] for r in records] == ["r0", "r1", "r2", "r3", "r4"]
    assert all(r["error"] is None for r in records)
    lines = read_lines(out)  # rewritten: the torn line is gone, one line per id
    assert sorted(r["custom_id"] for r in lines) == ["r0", "r1", "r2", "r3", "r4"]


def test_resume_after_a_write_torn_inside_a_multibyte_character(tmp_path):
    # records are written as UTF-8 without escapes, and a kill (or a full disk) can cut a write at any
    # byte: a last line ending mid-character made the whole checkpoint "not UTF-8", so nothing resumed
    server = FlakyServer()
    out = tmp_path / "out.jsonl"
    requests = [batch_line(f"r{i}", p) for i, p in enumerate(["a", "b", "c"])]
    run_batch(client_for(server), requests[:1], checkpoint=out, progress=False)
    record = json.dumps({"custom_id": "r1", "response": {"body": "naïve café 東京"}}, ensure_ascii=False)
    raw = record.encode()
    with open(out, "ab") as f:
        f.write(raw[:raw.index("東".encode()) + 1])  # the process died one byte into a 3-byte character
    server.sent.clear()
    records = run_batch(client_for(server), requests, checkpoint=out, progress=False)
    assert set(server.sent) == {"b", "c"} and [r["custom_id"] for r in records] == ["r0", "r1", "r2"]
    assert sorted(r["custom_id"] for r in read_lines(out)) == ["r0", "r1", "r2"]  # the torn line is gone


def test_an_answer_with_a_lone_surrogate_gets_its_record_and_resumes(tmp_path):
    # "\ud83d" is half an emoji (a gateway cut the string at a UTF-16 boundary); json.loads accepts it, and
    # writing it to the UTF-8 checkpoint raised UnicodeEncodeError: the batch died with no record, every rerun too
    answer = b'{"id": "x", "object": "text_completion", "model": "m", "choices": [{"index": 0, ' \
             b'"text": "caf\xc3\xa9 \\ud83d", "finish_reason": "length"}]}'
    sent, failed = [], []

    def handler(request):
        prompt = json.loads(request.content)["prompt"]
        sent.append(prompt)
        if prompt == "3" and not failed:  # fails once: the retry_errors run rewrites the file
            failed.append(prompt)
            return httpx.Response(400, content=b'{"error": {"message": "bad \\udc80 byte"}}')
        return httpx.Response(200, content=answer, headers={"content-type": "application/json"})

    out = tmp_path / "out.jsonl"
    client = Client(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler), retry=NO_WAIT)
    requests = [{"custom_id": f"q{i}", "model": "m", "prompt": str(i)} for i in range(5)]
    records = run_batch(client, requests, concurrency=2, checkpoint=out, progress=False)
    assert [r["custom_id"] for r in records] == [f"q{i}" for i in range(5)]
    assert records[0]["response"]["body"]["choices"][0]["text"] == "café \ud83d"
    assert records[3]["error"]["message"] == "bad \udc80 byte"
    text = out.read_bytes().decode("utf-8")  # still UTF-8: non-ASCII kept as it is, the surrogate escaped
    assert "café" in text and "\\ud83d" in text and len(text.splitlines()) == 5
    assert read_lines(out) == records  # reads back as the very same records
    sent.clear()
    assert run_batch(client, requests, checkpoint=out, progress=False) == records and sent == []  # resumed
    again = run_batch(client, requests, checkpoint=out, progress=False, retry_errors=True)  # rewrites the file
    assert sent == ["3"] and all(r["error"] is None for r in again)
    assert sorted(read_lines(out), key=lambda r: r["index"]) == again and again[:3] == records[:3]


def test_load_requests_takes_a_file_with_a_byte_order_mark(tmp_path):
    # Notepad and PowerShell save UTF-8 with a BOM; json.loads refused line 1 ("Unexpected UTF-8 BOM")
    from lab.client.batch import load_requests

    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(batch_line("a", "x")) + "\n" + json.dumps(batch_line("b", "y"))).encode())
    assert load_requests(path) == [batch_line("a", "x"), batch_line("b", "y")]


def test_a_blocking_transport_is_named_before_anything_is_sent_or_written(tmp_path):
    # run_batch sends through an AsyncClient built from the Client's settings: a blocking transport
    # failed there on every request, filling the checkpoint with error records a rerun then skipped
    out = tmp_path / "out.jsonl"
    client = Client(base_url="http://test/v1", api_key=KEY, transport=httpx.HTTPTransport())
    with pytest.raises(ValueError, match="transport: HTTPTransport cannot serve this client"):
        run_batch(client, [batch_line("r0", "a")], checkpoint=out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="transport: AsyncHTTPTransport .* a blocking transport"):
        Client(base_url="http://test/v1", api_key=KEY, transport=httpx.AsyncHTTPTransport())


def test_retry_errors_reruns_only_failed_records(tmp_path):
    server = FlakyServer()
    out = tmp_path / "out.jsonl"
    requests = [batch_line("ok", "a"), batch_line("later", "flaky-3")]
    first = run_batch(client_for(server), requests, checkpoint=out, progress=False)
    assert first[1]["error"]["type"] == "InternalServerError"
    before = server.sent.copy()
    second = run_batch(client_for(server), requests, checkpoint=out, progress=False, retry_errors=True)
    assert dict(server.sent - before) == {"flaky-3": 1}
    assert second[1]["error"] is None and second[0] == first[0]
    assert [r["custom_id"] for r in read_lines(out)] == ["ok", "later"]


def test_retry_errors_keeps_other_runs_records_in_a_shared_checkpoint(tmp_path):
    server = FlakyServer()
    out = tmp_path / "out.jsonl"
    run_batch(client_for(server), [batch_line("a", "a"), batch_line("b", "dead")], checkpoint=out, progress=False)
    second = [batch_line("c", "c"), batch_line("d", "flaky-3")]
    run_batch(client_for(server), second, checkpoint=out, progress=False)
    run_batch(client_for(server), second, checkpoint=out, progress=False, retry_errors=True)
    by_id = {r["custom_id"]: r for r in read_lines(out)}
    assert sorted(by_id) == ["a", "b", "c", "d"]  # b's error is not this run's to drop
    assert by_id["b"]["error"]["type"] == "InternalServerError" and by_id["d"]["error"] is None


def test_records_are_flushed_as_they_complete(tmp_path):
    out = tmp_path / "out.jsonl"
    seen_on_disk = []
    server = FlakyServer()

    def watching(request):
        seen_on_disk.append(len(read_lines(out)) if out.exists() else 0)
        return server(request)

    requests = [batch_line(f"r{i}", p) for i, p in enumerate("abcd")]
    run_batch(client_for(watching), requests, concurrency=1, checkpoint=out, progress=False)
    assert seen_on_disk == [0, 1, 2, 3]


async def test_arun_batch_in_a_running_loop_and_run_batch_there_too(tmp_path):
    server = FlakyServer()
    async with client_for(server, AsyncClient) as client:
        records = await arun_batch(client, [{"model": "m", "messages": [{"role": "user", "content": "x"}]}],
                                   progress=False)
    assert records[0]["custom_id"] == "0" and records[0]["error"] is None
    # run_batch from inside a running loop (a notebook cell without await) runs on a helper thread
    records = run_batch(client_for(server), [batch_line("q", "y")], checkpoint=tmp_path / "o.jsonl", progress=False)
    assert records[0]["response"]["body"]["choices"][0]["message"]["content"] == "Y"


def test_no_checkpoint_and_completions_bodies():
    def handler(request):
        assert request.url.path == "/v1/completions"
        return httpx.Response(200, json={"id": "t", "object": "text_completion", "model": "m",
                                         "choices": [{"index": 0, "text": "!", "finish_reason": "stop"}]})

    records = run_batch(client_for(handler), [{"model": "m", "prompt": "hi", "stream": True}], progress=False)
    assert records[0]["response"]["body"]["choices"][0]["text"] == "!"


def test_bad_inputs_fail_before_sending():
    with pytest.raises(ValueError, match="appears twice"):
        normalize([batch_line("x", "a"), batch_line("x", "b")])
    with pytest.raises(ValueError, match="allowed: /v1/chat/completions, /v1/completions"):
        normalize([{"custom_id": "e", "url": "/v1/embeddings", "body": {}}])
    with pytest.raises(ValueError, match="concurrency"):
        run_batch(client_for(FlakyServer()), [], concurrency=0, progress=False)
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1, got 2.5"):
        run_batch(client_for(FlakyServer()), [], concurrency=2.5, progress=False)
    for not_a_list in (5, "requests.jsonl", {"model": "m"}):
        with pytest.raises(TypeError, match="requests: must be a list of request bodies"):
            normalize(not_a_list)


@pytest.mark.parametrize("line, message", [
    ({"custom_id": "a", "body": None}, r"request a: body must be a JSON object \(the request body\), got NoneType"),
    ({"custom_id": "a", "body": "hi"}, r"request a: body must be a JSON object \(the request body\), got str"),
    ({"custom_id": "a", "url": None, "body": {}}, r"request a: url None unsupported; allowed: /v1/chat"),
    ({"custom_id": "a", "method": 1, "body": {}}, r"request a: method must be POST, got 1"),
    ({"custom_id": "a", "url": ["/v1/completions"], "body": {}}, r"request a: url \[.*\] unsupported; allowed"),
    # a null id was stored as "None": a second null, or a real "None", then collided with it
    ({"custom_id": None, "body": {}}, r"request 0: custom_id must be a non-empty string .*got None"),
    ({"custom_id": None, "prompt": "hi"}, r"request 0: custom_id must be a non-empty string .*got None"),
    ({"custom_id": "", "body": {}}, r"request 0: custom_id must be a non-empty string .*got ''"),
    ({"custom_id": ["a"], "body": {}}, r"request 0: custom_id must be a non-empty string .*got \['a'\]"),
])
def test_a_batch_line_of_the_wrong_shape_names_its_field(line, message):
    # these used to fail with `'NoneType' object is not iterable` and the like, naming nothing
    with pytest.raises(ValueError, match=message):
        normalize([line])


def test_load_requests_names_the_file_line_that_is_not_json(tmp_path):
    from lab.client.batch import load_requests

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(batch_line("a", "x")) + "\n\n" + '{"custom_id": "b", "body": \n')
    with pytest.raises(ValueError, match=r"in.jsonl, line 3: not valid JSON"):
        load_requests(path)
    path.write_text(json.dumps(batch_line("a", "x")) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"in.jsonl, line 2: expected a JSON object .*, got list"):
        load_requests(path)


async def test_a_failing_checkpoint_write_stops_every_worker(tmp_path, monkeypatch):
    # a record that cannot be written (a full disk) ends the run; the other workers must not go on
    # sending requests in the background whose records can no longer be written
    import asyncio
    import types

    import lab.client.batch as batch

    release = asyncio.Event()
    sent = []

    async def handler(request):
        sent.append(request)
        if len(sent) > 1:
            await release.wait()  # the other workers are mid-request when the first write fails
        return httpx.Response(200, json={"id": "c", "object": "chat.completion", "model": "m", "choices": []})

    def full_disk(obj, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch, "json", types.SimpleNamespace(dumps=full_disk, loads=json.loads))
    client = AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler),
                         retry=NO_WAIT)
    requests = [{"model": "m", "prompt": str(i)} for i in range(6)]
    with pytest.raises(OSError, match="No space left"):
        await arun_batch(client, requests, concurrency=3, checkpoint=tmp_path / "out.jsonl", progress=False)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    release.set()
    await asyncio.sleep(0)
    await client.close()
    assert left == [] and len(sent) == 3


def _completion(request):
    body = json.loads(request.content)
    return httpx.Response(200, json={"id": "t", "object": "text_completion", "model": body.get("model"),
                                     "choices": [{"index": 0, "text": "!", "finish_reason": "stop"}]})


@pytest.mark.parametrize("body, path", [
    ({"model": "m", "prompt": "x", "max_tokens": 4}, "/completions"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "/chat/completions"),
])
def test_a_batch_line_without_url_goes_where_its_body_says_as_a_bare_body_does(body, path):
    # a Batch-API line without url went to chat whatever its body: a prompt got "messages: field required"
    assert normalize([{"custom_id": "a", "body": body}]) == [("a", path, body)]
    assert normalize([{"custom_id": "a", **body}]) == [("a", path, body)]
    sent = []

    def handler(request):
        sent.append(request.url.path)
        return _completion(request)

    records = run_batch(client_for(handler), [{"custom_id": "a", "body": body}], progress=False)
    assert sent == ["/v1" + path] and records[0]["response"]["status_code"] == 200


@pytest.mark.parametrize("key, value, message", [
    ("timeout", "abc", r"request a: body key timeout is this client's per-request timeout, not a field it "
                       r"sends; it must be seconds > 0, null \(no limit\) or an object of connect/read/write/"
                       r"pool seconds, got 'abc'"),
    ("timeout", {"total": 5}, r"request a: body key timeout .*got \{'total': 5\}"),
    ("timeout", -1, r"request a: body key timeout .*got -1"),
    ("extra_headers", 5, r"request a: body key extra_headers is the headers this client adds to the request, "
                         r"not a field it sends; it must be an object of strings, got 5"),
    ("extra_headers", {"x-n": 1}, r"request a: body key extra_headers .*got \{'x-n': 1\}"),
    ("extra_body", [1], r"request a: body key extra_body is merged into the body this client sends; it must "
                        r"be an object, got list"),
])
def test_a_client_option_in_a_body_that_the_client_cannot_use_is_refused_before_sending(key, value, message):
    # "timeout": "abc" failed every line with a TypeError, "extra_headers": 5 with "'int' object is not
    # iterable": error records naming neither the line nor the key
    sent = []
    for line in ({"custom_id": "a", "url": "/v1/completions", "body": {"model": "m", "prompt": "x", key: value}},
                 {"custom_id": "a", "model": "m", "prompt": "x", key: value}):
        with pytest.raises(ValueError, match=message):
            run_batch(client_for(lambda r: sent.append(r) or _completion(r)), [line], progress=False)
    assert sent == []


def test_client_options_in_a_body_apply_to_that_request():
    # per-line headers are how a batch injects faults (tests/test_client_server.py); extra_query is no
    # option of this client, so it goes in the JSON like any field
    seen = []

    def handler(request):
        seen.append((json.loads(request.content), request.headers))
        return _completion(request)

    body = {"model": "m", "prompt": "x", "timeout": {"read": 30}, "extra_headers": {"x-lab-fault": "none"},
            "extra_body": {"ignore_eos": True}, "extra_query": {"q": 1}}
    records = run_batch(client_for(handler), [{"custom_id": "a", "body": body}], progress=False)
    assert records[0]["error"] is None
    sent, headers = seen[0]
    assert sent == {"model": "m", "prompt": "x", "ignore_eos": True, "extra_query": {"q": 1}}
    assert headers["x-lab-fault"] == "none"


def _run_cli(argv, handler, monkeypatch, capsys):
    from lab.cli import main

    real_client = Client
    monkeypatch.setattr("lab.client.client.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    code = main(["batch", *map(str, argv), "--base-url", "http://h/v1", "--api-key", KEY, "--no-progress"])
    return code, capsys.readouterr()


def test_batch_without_model_refuses_a_body_that_names_none_before_sending(tmp_path, monkeypatch, capsys):
    # every such line became an error record ("create(): model is required (see client.models.list())",
    # the Python API's words), which a rerun with --model then skipped as done
    sent = []

    def handler(request):
        sent.append(request)
        return _completion(request)

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n" + json.dumps({"custom_id": "a", "body": {"model": "m", "prompt": "x"}}) + "\n"
                   + json.dumps({"custom_id": "b", "body": {"prompt": "y"}}) + "\n")
    code, captured = _run_cli([inp, out], handler, monkeypatch, capsys)
    assert code == 2 and sent == [] and not out.exists()
    assert captured.err == ("error: input line 3 (custom_id 'b'): its body names no model; pass --model NAME "
                            'for the bodies that name none, or add "model" to each body\n')
    inp.write_text(json.dumps({"prompt": "y", "model": None}) + "\n")  # a bare body, a null model
    code, captured = _run_cli([inp, out], handler, monkeypatch, capsys)
    assert code == 2 and captured.err.startswith("error: input line 1: its body names no model")
    code, captured = _run_cli([inp, out, "--model", "mm"], handler, monkeypatch, capsys)
    assert code == 0 and json.loads(sent[0].content)["model"] == "mm"


def test_batch_rerun_says_which_failures_it_kept_from_the_earlier_run(tmp_path, monkeypatch, capsys):
    # "0 succeeded, 2 failed" after fixing the cause read as if the fix had not worked: the errors in
    # the output file were skipped, and nothing said that --retry-errors reruns them
    fail = {"y"}

    def handler(request):
        if json.loads(request.content)["prompt"] in fail:
            return httpx.Response(400, json={"error": {"message": "no"}})
        return _completion(request)

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"custom_id": p, "body": {"model": "m", "prompt": p}}) + "\n" for p in "xy"))
    code, captured = _run_cli([inp, out], handler, monkeypatch, capsys)
    assert code == 1 and f"1 succeeded, 1 failed; records in {out}" in captured.out
    fail.clear()
    code, captured = _run_cli([inp, out], handler, monkeypatch, capsys)
    assert code == 1 and (f"1 succeeded, 1 failed (1 from an earlier run, not sent again: --retry-errors "
                          f"reruns them); records in {out}") in captured.out
    code, captured = _run_cli([inp, out, "--retry-errors"], handler, monkeypatch, capsys)
    assert code == 0 and f"2 succeeded, 0 failed; records in {out}" in captured.out


def test_batch_names_the_input_argument_it_cannot_read(tmp_path, monkeypatch, capsys):
    # "[Errno 2] No such file or directory: 'missing.jsonl'" named neither the argument nor the problem
    out = tmp_path / "out.jsonl"
    code, captured = _run_cli([tmp_path / "missing.jsonl", out], _completion, monkeypatch, capsys)
    assert code == 1 and captured.err == f"batching-lab batch: input: {tmp_path / 'missing.jsonl'} does not exist\n"
    code, captured = _run_cli([tmp_path, out], _completion, monkeypatch, capsys)
    assert code == 1 and captured.err == f"batching-lab batch: input: {tmp_path} is a folder; give the JSONL file of requests\n"
    assert not out.exists()


def test_run_sync_in_a_running_loop_cancels_on_a_ctrl_c_as_the_helper_starts(monkeypatch):
    # the task was made on the helper thread: a Ctrl-C that landed just after start() found none to
    # cancel, and the batch ran on unseen, writing records after the caller had seen KeyboardInterrupt
    import asyncio
    import threading

    from lab.client._aio import run_sync

    ran = []

    async def work():
        await asyncio.sleep(0.3)
        ran.append("finished")

    start = threading.Thread.start

    def start_then_ctrl_c(self):
        start(self)
        if self.name == "lab-client-run-sync":
            raise KeyboardInterrupt  # where a Ctrl-C could land

    monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)

    async def in_a_notebook():  # Jupyter's loop is running: run_sync takes the helper thread
        with pytest.raises(KeyboardInterrupt):
            run_sync(work)

    asyncio.run(in_a_notebook())  # run_sync joined its thread before raising
    assert ran == [] and not [t for t in threading.enumerate() if t.name == "lab-client-run-sync"]
