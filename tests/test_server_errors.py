"""Bad input gets a 4xx in OpenAI's error shape naming the field, and the server keeps serving;
also 413 (body too large), 429 (queue full), 404 routes, and 503 while shutting down."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from helpers_server import tiny_llm, tiny_model_dir, wait_until

from lab.server import serve, start_server
from lab.server.ratelimit import RateLimiter

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMP = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def server():
    with serve(llm=tiny_llm(), max_body_bytes=20_000) as s:
        yield s


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _error(r: httpx.Response, status: int, param: str | None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"].startswith(("req-", "cmpl-", "chatcmpl-"))  # for the client's error
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    if param:
        assert param.split("[")[0].split(".")[0] in err["message"]
    return err


BAD = [
    ("chat", b'{"model": "tiny-llama", "messages": [', None),  # malformed JSON
    ("chat", b"[1, 2]", None),  # JSON, not an object
    ("chat", {**CHAT, "max_tokens": "lots"}, "max_tokens"),
    ("chat", {**CHAT, "max_tokens": -5}, "max_tokens"),
    ("chat", {**CHAT, "max_tokens": 0}, "max_tokens"),
    ("chat", {**CHAT, "max_tokens": 10**12}, "max_tokens"),  # beyond the context
    ("chat", {**CHAT, "max_completion_tokens": 10**6}, "max_completion_tokens"),
    ("chat", {**CHAT, "temperature": "hot"}, "temperature"),
    ("chat", {**CHAT, "temperature": -1}, "temperature"),
    ("chat", {**CHAT, "top_p": 0}, "top_p"),
    ("chat", {**CHAT, "stream": "yes"}, "stream"),
    ("chat", {**CHAT, "messages": []}, "messages"),
    ("chat", {**CHAT, "messages": "Hi"}, "messages"),
    ("chat", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ("chat", {k: v for k, v in CHAT.items() if k != "model"}, "model"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": "x" * 300}]}, "messages"),  # beyond context
    ("completion", {**COMP, "prompt": "x" * 300}, "prompt"),
    ("completion", {**COMP, "prompt": ""}, "prompt"),
    ("completion", {**COMP, "prompt": []}, "prompt"),
    ("completion", {**COMP, "prompt": [1, 2, 10**6]}, "prompt"),  # token id outside the vocabulary
    ("completion", {**COMP, "prompt": "snow \u2603 man"}, "prompt"),  # a character the vocabulary lacks
    ("chat", {**CHAT, "messages": [{"role": "user", "content": "caf\u00e9"}]}, "messages"),
    ("completion", {**COMP, "prompt": {"text": "x"}}, "prompt"),
    ("completion", {**COMP, "n": 3}, "n"),
    ("completion", {**COMP, "stop": 5}, "stop"),
    ("completion", {**COMP, "stop": ""}, "stop"),  # was dropped: the request ran on as if sent no stop
    ("completion", {**COMP, "seed": 2**64}, "seed"),  # torch's overflow message, under `messages`, before
    # known OpenAI fields this server does not implement: refused by name, not ignored
    ("chat", {**CHAT, "logprobs": True, "top_logprobs": 3}, "logprobs"),
    ("chat", {**CHAT, "presence_penalty": 2}, "presence_penalty"),
    # vLLM's tokenizer options were ignored: special tokens left out, a BOS added, whatever was asked
    ("completion", {**COMP, "skip_special_tokens": False}, "skip_special_tokens"),
    ("completion", {**COMP, "add_special_tokens": False}, "add_special_tokens"),
    ("chat", {**CHAT, "add_special_tokens": True}, "add_special_tokens"),
    ("chat", {**CHAT, "response_format": {"type": "json_object"}}, "response_format"),
    ("completion", {**COMP, "echo": True}, "echo"),
    ("completion", {**COMP, "best_of": 3}, "best_of"),
    ("completion", {**COMP, "stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    # a part this server cannot read: named, not "content: Input should be a valid string"
    ("chat", {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages[0].content[1].type"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ("completion", {**COMP, "prompt": ["a", "b"]}, "prompt"),  # a batch
    # vLLM's extras that change the answer, and a chat field on /v1/completions: refused, not ignored
    ("chat", {**CHAT, "include_stop_str_in_output": True}, "include_stop_str_in_output"),
    ("chat", {**CHAT, "use_beam_search": True}, "use_beam_search"),
    ("chat", {**CHAT, "add_generation_prompt": False}, "add_generation_prompt"),
    ("chat", {**CHAT, "guided_choice": ["yes", "no"]}, "guided_choice"),
    ("completion", {**COMP, "max_completion_tokens": 3}, "max_completion_tokens"),
    # a tool call's arguments are parsed for the template, as vLLM does: a broken one is named
    ("chat", {**CHAT, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{city: Paris}"}}]}]},
     "messages[1].tool_calls"),
]


@pytest.mark.parametrize(("kind", "body", "param"), BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_is_400_naming_the_field_then_serves(http, kind, body, param):
    path = "/chat/completions" if kind == "chat" else "/completions"
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    err = _error(r, 400, param)
    assert err["type"] == "invalid_request_error"
    ok = http.post(path, json=CHAT if kind == "chat" else COMP)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_body_too_large_is_413(http):
    r = http.post("/completions", json={**COMP, "prompt": "x" * 30_000})
    _error(r, 413, None)
    assert http.post("/completions", json=COMP).status_code == 200


def test_unknown_model_and_route(http):
    assert _error(http.post("/completions", json={**COMP, "model": "gpt-4o"}), 404, "model")["code"] == "model_not_found"
    assert _error(http.get("/nope"), 404, None)


@contextmanager
def _queue_full(c: httpx.Client, url: str):
    """One request running in the one slot, one waiting: the queue (max_queued_requests=1) is full until
    the first of them finishes (~200 steps) or this block hangs up on both."""
    long = {**COMP, "max_tokens": 200, "ignore_eos": True, "stream": True}
    with c.stream("POST", url + "/completions", json=long) as first:  # running
        lines = first.iter_lines()  # kept: a discarded, half-read iterator closes the connection when
        next(lines)  # collected (httpcore closes on GeneratorExit), and the server aborts the request
        with c.stream("POST", url + "/completions", json=long) as second:  # waiting for the slot
            assert second.status_code == 200
            yield


def test_queue_full_is_429(monkeypatch):
    monkeypatch.setattr(tiny_llm("aux").engine.config, "max_num_seqs", 1)  # one slot: the second request waits
    rpm, tpm = 100, 10_000
    with serve(llm=tiny_llm("aux"), max_queued_requests=1, requests_per_minute=rpm, tokens_per_minute=tpm) as s, \
            httpx.Client(timeout=30) as c:
        s.state.limiter.clock = lambda: 0.0  # stopped before the first request: no refill, exact counts
        with _queue_full(c, s.url):
            r = c.post(s.url + "/completions", json=COMP)
        err = _error(r, 429, None)
        assert err["code"] == "queue_full" and r.headers["retry-after"] == "1"
        # this key's budget after the two admitted requests (2 prompt + 200 tokens each)
        assert r.headers["x-ratelimit-limit-requests"] == str(rpm)
        assert r.headers["x-ratelimit-remaining-requests"] == str(rpm - 2)
        assert r.headers["x-ratelimit-limit-tokens"] == str(tpm)
        assert r.headers["x-ratelimit-remaining-tokens"] == str(tpm - 2 * 202)
        assert r.headers["x-ratelimit-reset-requests"] and r.headers["x-ratelimit-reset-tokens"]
        assert wait_until(lambda: s.engine.stats.num_waiting == 0, 5.0)  # hang-ups noticed, queue drained
        ok = c.post(s.url + "/completions", json=COMP)
        assert ok.status_code == 200  # the 429 took nothing from the budget: this is the third request
        assert ok.headers["x-ratelimit-remaining-requests"] == str(rpm - 3)
        assert ok.headers["x-ratelimit-remaining-tokens"] == str(tpm - 2 * 202 - (2 + COMP["max_tokens"]))

        s.state.limiter = RateLimiter()  # no per-key limits: no budget to report, so no x-ratelimit-* at all
        with _queue_full(c, s.url):
            r = c.post(s.url + "/completions", json=COMP)
        assert _error(r, 429, None)["code"] == "queue_full" and r.headers["retry-after"] == "1"
        assert not [h for h in r.headers if h.startswith("x-ratelimit-")]
        assert wait_until(lambda: s.engine.stats.num_waiting == 0, 5.0)
        assert c.post(s.url + "/completions", json=COMP).status_code == 200


def test_rate_limiter_peek_takes_nothing():
    now = [0.0]
    limiter = RateLimiter(requests_per_minute=10, tokens_per_minute=1000, clock=lambda: now[0])
    fresh = limiter.peek("k")
    assert fresh["x-ratelimit-remaining-requests"] == "10" and fresh["x-ratelimit-remaining-tokens"] == "1000"
    assert limiter.buckets == {}  # a key only looked at gets no bucket
    taken = limiter.check("k", 100)
    assert limiter.peek("k") == limiter.peek("k") == taken  # looking twice changes nothing
    assert taken["x-ratelimit-remaining-requests"] == "9" and taken["x-ratelimit-remaining-tokens"] == "900"
    now[0] = 6.0  # a tenth of a minute: one request and 100 tokens back
    assert limiter.peek("k")["x-ratelimit-remaining-requests"] == "10"
    assert limiter.peek("k")["x-ratelimit-remaining-tokens"] == "1000"
    assert RateLimiter().peek("k") == {}


def test_a_429_says_the_longest_wait_of_the_short_budgets():
    """Both budgets short: the wait said was the requests', and the retry met a second 429 for the tokens."""
    from lab.server.errors import APIError

    now = [0.0]
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=100, clock=lambda: now[0])
    limiter.check("k", 50), limiter.check("k", 50)
    now[0] = 15.0  # a quarter of a minute: half a request and 25 tokens back
    with pytest.raises(APIError) as info:
        limiter.check("k", 100)
    # the request is back at 30 s, the 100 tokens at 60 s: retry then, once
    assert info.value.type == "tokens" and info.value.headers["retry-after"] == "45"
    now[0] = 60.0
    assert limiter.check("k", 100)["x-ratelimit-remaining-tokens"] == "0"


def test_a_request_larger_than_the_token_budget_is_told_not_to_retry():
    from lab.server.errors import APIError

    limiter = RateLimiter(tokens_per_minute=100, clock=lambda: 0.0)
    with pytest.raises(APIError, match=r"^Request too large: 150 tokens .* lower max_tokens \(a request without "
                                       r"it is counted at the rest of the model's context\)") as info:
        limiter.check("k", 150)
    assert info.value.status == 429 and info.value.headers["x-should-retry"] == "false"  # no wait makes it fit
    assert limiter.check("k", 100)["x-ratelimit-remaining-tokens"] == "0"  # and it took nothing


def test_a_full_bucket_table_still_counts_a_new_keys_first_request(monkeypatch):
    """Past the table's limit, making a new key's tokens bucket dropped its requests bucket made a
    moment before (full, so forgettable), and that request was never counted."""
    from lab.server import ratelimit
    from lab.server.errors import APIError

    monkeypatch.setattr(ratelimit, "MAX_IDLE_BUCKETS", 4)
    limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=1000, clock=lambda: 0.0)
    for key in ("a", "b", "c"):
        limiter.check(key, 1)
    limiter.check("new", 1)
    with pytest.raises(APIError, match="Rate limit reached for requests per minute"):
        limiter.check("new", 1)


def test_shutdown_answers_503_and_ends_streams():
    s = start_server(llm=tiny_llm("aux"))
    c = httpx.Client(timeout=30)
    with c.stream("POST", s.url + "/completions", json={**COMP, "max_tokens": 200, "stream": True,
                                                        "ignore_eos": True}) as r:
        lines = r.iter_lines()
        next(lines)
        s.state.shutting_down = True
        assert c.post(s.url + "/completions", json=COMP).status_code == 503
        assert c.get(s.base + "/health").status_code == 503
        assert c.head(s.base + "/health").status_code == 503
        closer = threading.Thread(target=s.close)
        closer.start()
        rest = [line for line in lines if line]
    closer.join(15)
    assert not closer.is_alive()
    assert rest[-1] == "data: [DONE]" and '"code":"shutting_down"' in rest[-2]  # an error event, then [DONE]
    assert '"status":503' in rest[-2]  # what a client retries by: the status the answer would have had
    assert tiny_llm("aux").engine.block_manager.num_used == 0
    with pytest.raises(httpx.ConnectError):  # the port is released
        c.get(s.base + "/health")


def test_one_api_key_given_as_a_string_stays_one_key():
    # list("sk-...") would have made every character a valid key
    with serve(llm=tiny_llm("keys"), api_keys="sk-one-0123456789") as server:
        assert server.config.api_keys == ["sk-one-0123456789"]
        assert "0123456789" not in repr(server.config)  # a config shown in a notebook keeps the key to itself
        assert httpx.get(server.url + "/models", headers={"Authorization": "Bearer s"}).status_code == 401
        ok = httpx.get(server.url + "/models", headers={"Authorization": "Bearer sk-one-0123456789"})
        assert ok.status_code == 200


@pytest.mark.parametrize("kwargs, message", [
    (dict(port="8000"), r"port: must be an integer in 0..65535"),
    (dict(port=70000), r"port: must be an integer in 0..65535"),
    (dict(api_keys=[123]), r"api_keys: must be a string or a list of strings, got an item of type int"),
    # a header is latin-1 and authenticate() strips the token: such a key could never match
    (dict(api_keys=["sk-café-0123"]), r"api_keys: a key must be printable ASCII without spaces"),
    (dict(api_keys=["sk one"]), r"api_keys: a key must be printable ASCII without spaces"),
    # dropped, a blank key left the server open to anyone
    (dict(api_keys=["  "]), r"api_keys: a blank key \(an unset variable\?\); give a key, or no api_keys"),
    (dict(api_keys=["sk-real-0123456789", "\n"]), r"api_keys: a blank key"),
])
def test_bad_serve_arguments_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        serve(llm=tiny_llm(), **kwargs).__enter__()


def test_a_key_with_spaces_around_it_is_the_key_without_them():
    with serve(llm=tiny_llm("aux"), api_keys=[" sk-padded-0123 \n"]) as s:
        ok = httpx.get(s.url + "/models", headers={"Authorization": "Bearer sk-padded-0123"})
        assert ok.status_code == 200


def test_a_host_that_cannot_be_used_is_named_not_the_port():
    # before: "port: cannot listen on 999.1.1.1:8012 (Name or service not known); pick another or 0"
    llm = tiny_llm("refused")
    with pytest.raises(OSError, match=r"^host: cannot listen on 999\.1\.1\.1 \(.*\); give an address of this machine"):
        serve(llm=llm, host="999.1.1.1", port=8012).__enter__()
    with socket.socket() as taken:  # a port in use stays the port's fault
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"^port: cannot listen on 127\.0\.0\.1:{port} \(.*\); pick another or 0$"):
            serve(llm=llm, port=port).__enter__()
    with serve(llm=llm) as server:  # neither left the engine driven
        assert httpx.post(server.url + "/completions", json=COMP, timeout=30).status_code == 200


def test_neutral_values_of_unimplemented_fields_are_accepted(http):
    # what SDKs and frameworks send by default must not be refused
    body = {**CHAT, "presence_penalty": 0.0, "frequency_penalty": 0, "logit_bias": {}, "logprobs": False,
            "user": "someone", "tool_choice": "none", "include_stop_str_in_output": False,
            "add_generation_prompt": True, "use_beam_search": False}
    assert http.post("/chat/completions", json=body).status_code == 200
    assert http.post("/completions", json={**COMP, "best_of": 1, "logprobs": None, "echo": False}).status_code == 200


# vLLM's and OpenAI's fields that change the answer, each with a value that would: they were accepted
# and silently ignored (200), now refused by name on either endpoint; their neutral values still pass
UNIMPLEMENTED = [
    ("structured_outputs", {"choice": ["yes", "no"]}, [None]),
    ("repetition_detection", {"max_pattern_size": 2, "min_count": 2}, [None]),
    ("watermarking", True, [None]),
    ("logprob_token_ids", [1, 2], [None]),
    ("return_token_ids", True, [None, False]),
    ("prompt_embeds", "AAAA", [None]),
    ("documents", [{"title": "a", "text": "b"}], [None]),
    ("thinking_token_budget", 10, [None]),
    ("request_id", "my-id-1", [None]),
    ("priority", 5, [None, 0]),
    ("modalities", ["text", "audio"], [None, ["text"]]),
    ("audio", {"voice": "alloy", "format": "wav"}, [None]),
    ("web_search_options", {"search_context_size": "low"}, [None]),
    ("verbosity", "high", [None]),
    ("reasoning_effort", "high", [None]),
]


@pytest.mark.parametrize(("name", "value", "neutral"), UNIMPLEMENTED, ids=[u[0] for u in UNIMPLEMENTED])
@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_unimplemented_fields_that_change_the_answer_are_refused(http, kind, name, value, neutral):
    path, body = ("/chat/completions", CHAT) if kind == "chat" else ("/completions", COMP)
    err = _error(http.post(path, json={**body, name: value}), 400, name)
    assert err["code"] == "unsupported_parameter"
    for v in neutral:
        assert http.post(path, json={**body, name: v}).status_code == 200, (name, v)


def test_a_request_the_engine_refuses_takes_no_rate_budget():
    with serve(llm=tiny_llm("rate-budget"), requests_per_minute=2) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        for _ in range(3):  # each refused: a token id outside the vocabulary
            assert http.post("/completions", json={**COMP, "prompt": [1, 2, 10**6]}).status_code == 400
        assert http.post("/completions", json=COMP).status_code == 200  # the budget of 2 is untouched


def test_no_max_tokens_fits_a_small_kv_cache():
    from lab.engine import LLM

    llm = LLM(tiny_model_dir(), device="cpu", num_blocks=8, block_size=16)  # 128 slots, context 256
    with serve(llm=llm) as server:
        # max_tokens null: the rest of the context (left out, /v1/completions defaults to 16, as OpenAI)
        r = httpx.post(server.url + "/completions", json={"model": server.model_name, "prompt": [1, 2, 3],
                                                           "max_tokens": None, "ignore_eos": True}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 126  # 128 + 1 - 3


def test_a_prompt_far_over_the_context_is_refused_without_tokenizing_it(monkeypatch):
    # encoding holds the GIL (~1 s per million characters): a 4 MB prompt stalled every other stream
    # for seconds before its 400; a character vocabulary bounds its token count without encoding
    llm = tiny_llm("huge-prompt")
    encoded = []
    encode = llm.engine.tokenizer.encode
    monkeypatch.setattr(llm.engine.tokenizer, "encode", lambda text, **kw: (encoded.append(len(text)), encode(text, **kw))[1])
    with serve(llm=llm) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        huge = "To be, or not to be: " * 50_000  # 1,050,000 characters; the context is 256 tokens
        r = http.post("/completions", json={**COMP, "prompt": huge})
        err = _error(r, 400, "prompt")
        assert err["code"] == "context_length_exceeded"
        assert err["message"].startswith(f"prompt: the prompt has at least {len(huge) // len('<eos>')} tokens")
        r = http.post("/chat/completions", json={"model": server.model_name, "messages": [{"role": "user", "content": huge}]})
        assert _error(r, 400, "messages")["code"] == "context_length_exceeded"
        assert encoded == []  # neither was tokenized
        r = http.post("/completions", json={**COMP, "prompt": "x" * 300})  # within reach of the bound: counted
        assert _error(r, 400, "prompt")["message"].startswith("prompt: the prompt has 300 tokens")
        assert encoded == [300]


def test_a_chat_request_the_kv_cache_cannot_hold_is_refused_in_its_own_terms():
    # the engine names prompt and max_tokens; a chat request sent messages and max_completion_tokens
    from lab.engine import LLM

    llm = LLM(tiny_model_dir(), device="cpu", num_blocks=2, block_size=16)  # 32 slots, context 256
    with serve(llm=llm) as server:
        chat = {"model": server.model_name, "messages": [{"role": "user", "content": "Speak now, good sir, speak."}]}
        r = httpx.post(server.url + "/chat/completions", json={**chat, "max_completion_tokens": 1}, timeout=30)
        error = _error(r, 400, "messages")
        assert error["message"].startswith("messages: ") and "cannot fit in the KV cache" in error["message"]
        short = {**chat, "messages": [{"role": "user", "content": "Hi"}]}
        r = httpx.post(server.url + "/chat/completions", json={**short, "max_completion_tokens": 20}, timeout=30)
        error = _error(r, 400, "max_completion_tokens")
        assert error["message"].startswith("max_completion_tokens: prompt + max_completion_tokens = ")
        assert "max_tokens" not in error["message"].replace("max_completion_tokens", "")
        r = httpx.post(server.url + "/chat/completions", json={**short, "max_tokens": 20}, timeout=30)
        assert _error(r, 400, "max_tokens")["message"].startswith("max_tokens: prompt + max_tokens = ")
        r = httpx.post(server.url + "/completions", json={"model": server.model_name, "prompt": "x" * 40,
                                                          "max_tokens": 1}, timeout=30)
        assert _error(r, 400, "prompt")["message"].startswith("prompt: 4")  # completions keep the engine's names


@pytest.mark.parametrize("value", ["latency:inf", "latency:-5", "latency:nan", "stall:nan", "stall:1e9", "cut:-1"])
def test_fault_header_values_are_checked(http, value):
    r = http.post("/completions", json=COMP, headers={"x-lab-fault": value})
    assert _error(r, 400, "x-lab-fault")["message"].startswith("x-lab-fault: unknown fault")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(requests_per_minute=0), ValueError, r"^requests_per_minute: must be an integer >= 1 or None"),
    (dict(tokens_per_minute="100"), ValueError, r"^tokens_per_minute: must be an integer >= 1 or None"),
    (dict(requests_per_minute=True), ValueError, r"^requests_per_minute: must be an integer >= 1 or None"),
    (dict(shutdown_timeout_s=-1), ValueError, r"^shutdown_timeout_s: must be a finite number of seconds >= 0"),
    (dict(faults={"error_rates": {429: 0.1}}), TypeError, r"^faults: must be a FaultConfig or None, got dict"),
    (dict(log_level="loud"), ValueError, r"^log_level: 'loud' is not a level; allowed: critical, error, warning"),
    (dict(host=123), ValueError, r"^host: must be an address or a name of this machine"),
    (dict(host=""), ValueError, r"^host: must be an address"),
])
def test_a_refused_serve_argument_leaves_the_engine_free(kwargs, error, message):
    # before: these were refused after serve() had started the engine thread, which kept driving the
    # engine, so every later serve() of that LLM failed with "another AsyncEngine already drives it"
    llm = tiny_llm("refused")
    with pytest.raises(error, match=message):
        serve(llm=llm, **kwargs).__enter__()
    with serve(llm=llm) as server:
        assert httpx.post(server.url + "/completions", json=COMP, timeout=30).status_code == 200


def test_405_names_the_allowed_methods(http):
    r = http.get("/completions")
    assert _error(r, 405, None) and r.headers["allow"] == "POST"  # before: the Allow header was dropped


def test_a_fractional_shutdown_timeout_is_not_cut_to_zero():
    # before: int(0.5) gave uvicorn no grace at all: every close logged "timeout graceful shutdown
    # exceeded" as an error and cancelled the handlers still writing their answers
    with serve(llm=tiny_llm("refused"), shutdown_timeout_s=0.5) as server:
        assert server._uvicorn.config.timeout_graceful_shutdown >= 0.5


def _errors_counted(server) -> dict[str, float]:
    prefix = "lab_http_errors_total{status=\""
    return {line[len(prefix):].split('"')[0]: float(line.split()[-1])
            for line in httpx.get(server.base + "/metrics").text.splitlines() if line.startswith(prefix)}


def test_every_error_answer_is_counted_once(server, http):
    # before: only the generation routes counted theirs; an unknown route or model, a wrong method
    # and a bad admin body went unseen in lab_http_errors_total
    before = _errors_counted(server)
    assert http.get("/nope").status_code == 404
    assert http.get("/models/gpt-4o").status_code == 404
    assert http.get("/completions").status_code == 405
    assert http.put(server.base + "/admin/faults", json=[1, 2]).status_code == 400
    assert http.post("/completions", json={**COMP, "n": 3}).status_code == 400  # counted once, not twice
    after = _errors_counted(server)
    assert {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)} == {"404": 2, "405": 1, "400": 2}


@pytest.mark.parametrize("key, shown", [("sk-test-0123456789abcdef", "sk-te***cdef"), ("secret-13char", "se***ar"),
                                        ("short", "***")])
def test_a_wrong_key_is_echoed_masked(key, shown):
    """The 401 names the key it got as OpenAI does, never in full: a 13-character key showed 9 characters."""
    from lab.server.auth import mask

    assert mask(key) == shown and key not in mask(key)


def test_a_stuck_engine_step_still_lets_the_port_go(monkeypatch):
    # close() raised on the engine's timeout before telling uvicorn to exit: the port answered 503 for the
    # rest of the process
    import lab.server.background as background
    from lab.engine import LLM

    monkeypatch.setattr(background, "ENGINE_STOP_S", 0.2)
    llm = LLM(model=tiny_model_dir(), device="cpu", dtype="float32", num_blocks=64)
    step, release = llm.engine.step, threading.Event()

    def stuck_step(*args, **kwargs):
        release.wait(10)  # held until the test has seen close() give up on the engine
        return step(*args, **kwargs)

    llm.engine.step = stuck_step
    s = start_server(llm=llm, shutdown_timeout_s=0.1)
    sender = threading.Thread(target=httpx.post, args=(s.url + "/completions",), kwargs={"json": COMP, "timeout": 30})
    sender.start()
    assert wait_until(lambda: s.engine.stats.num_waiting == 1)  # its step is held
    time.sleep(0.05)
    with pytest.raises(RuntimeError, match="did not stop"):
        s.close()
    try:
        assert not s._thread.is_alive()
        with pytest.raises(httpx.ConnectError):  # the port is released
            httpx.get(s.base + "/health")
    finally:
        release.set()
        sender.join(15)


def test_a_body_still_arriving_at_shutdown_gets_a_503():
    # the body read waited on the client: close() sat out the whole graceful timeout, then uvicorn
    # cancelled the handler and the client got a bare text 500
    s = start_server(llm=tiny_llm("aux"), shutdown_timeout_s=5)
    sock = socket.create_connection((s.host, s.port))
    sock.settimeout(15)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 1000\r\n\r\n{\"model\": ")  # and the rest never comes
    time.sleep(0.3)  # the handler is past its shutdown check, waiting for the body
    closer = threading.Thread(target=s.close)
    closer.start()
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        part = sock.recv(4096)
        if not part:
            break
        answer += part
    closer.join(15)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b'"code":"shutting_down"' in body
