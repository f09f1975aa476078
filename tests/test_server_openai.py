"""The official openai SDK against `serve()`: models, chat, completions, streaming with usage, its
exception classes for our 401/400/404/429; greedy output over HTTP equal to `LLM.generate`; sampling
parameters (stop, seed, max_tokens) over HTTP; /metrics counting what the answers said; the OpenAPI
document describing the request bodies."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from helpers_server import build_tiny_llama, tiny_llm, tiny_model_dir
from prometheus_client.parser import text_string_to_metric_families

from lab.engine import LLM, SamplingParams
from lab.server import serve

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def server():
    with serve(llm=tiny_llm(), api_keys=[KEY], requests_per_minute=1000) as s:
        yield s


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def test_url_and_models(server, client):
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-llama"]
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"


def test_chat_completion(client):
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len("user: Hi\nassistant:") and 1 <= r.usage.completion_tokens <= 6
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}],
                                       max_completion_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_content_parts_are_joined_by_newlines_as_vllm_does(client):
    parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": parts}],
                                       max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens == len("user: Hi\nthere\nassistant:")  # one token per character


def test_completion_text_and_token_ids(client):
    r = client.completions.create(model="tiny-llama", prompt="To be", max_tokens=5, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.usage.completion_tokens == 5 and len(r.choices[0].text) == 5
    ids = tiny_llm().tokenizer.encode("To be")
    r2 = client.completions.create(model="tiny-llama", prompt=ids, max_tokens=5, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert r2.choices[0].text == r.choices[0].text and r2.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_streaming_with_usage(client, kind):
    args = dict(model="tiny-llama", max_tokens=8, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    if kind == "chat":
        chunks = list(client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **args))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        chunks = list(client.completions.create(prompt="Once upon", **args))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "length"
    assert len(text) == 8  # one character per token


def test_sdk_exception_classes(server, client):
    with openai.OpenAI(base_url=server.url, api_key="sk-wrong-key-000000", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
    assert e.value.status_code == 401 and "sk-wrong-key-000000" not in str(e.value)  # key masked
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=-1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}], n=2)
    assert e.value.body["param"] == "n" and "n=1" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-5", prompt="x", max_tokens=1)
    assert e.value.body["param"] == "model" and e.value.code == "model_not_found"
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=1, extra_headers={"x-lab-fault": "429"})
    assert e.value.response.headers["retry-after"] == "1"


def test_null_n_and_stream_are_the_defaults(client):
    # OpenAI and vLLM take null for these (the SDK sends it for n=None); before: a 400 "valid integer"
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=2, n=None, stream=None)
    assert r.object == "chat.completion" and len(r.choices) == 1
    r = client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=2, n=None, stream=None)
    assert r.object == "text_completion" and r.usage.completion_tokens >= 1


def test_prompt_as_a_batch_of_one(client):
    # OpenAI takes a list of prompts (LangChain always sends one); before: "prompt: Input should be a
    # valid string", for a value OpenAI accepts
    args = dict(model="tiny-llama", max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    text = client.completions.create(prompt="To be", **args).choices[0].text
    assert client.completions.create(prompt=["To be"], **args).choices[0].text == text
    ids = tiny_llm().tokenizer.encode("To be")
    assert client.completions.create(prompt=[ids], **args).choices[0].text == text
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(prompt=["To be", "or not"], **args)
    assert e.value.body["param"] == "prompt" and "one prompt per request" in e.value.message


def test_completions_default_to_16_tokens(client):
    # OpenAI's and vLLM's default for /v1/completions; before: the whole rest of the context
    r = client.completions.create(model="tiny-llama", prompt="To be", extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}],
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 256 - r.usage.prompt_tokens  # chat: what the context leaves


def test_rate_limit_per_key_with_headers():
    with serve(llm=tiny_llm("aux"), api_keys=[KEY, "sk-other-key-0000"], requests_per_minute=2,
               tokens_per_minute=100) as s:
        with openai.OpenAI(base_url=s.url, api_key=KEY, max_retries=0) as c:
            ok = c.completions.with_raw_response.create(model="tiny-llama", prompt="abc", max_tokens=4)
            assert ok.headers["x-ratelimit-limit-requests"] == "2"
            assert ok.headers["x-ratelimit-remaining-requests"] == "1"
            assert ok.headers["x-ratelimit-remaining-tokens"] == str(100 - 3 - 4)
            assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
            c.completions.create(model="tiny-llama", prompt="abc", max_tokens=4)
            with pytest.raises(openai.RateLimitError) as e:
                c.completions.create(model="tiny-llama", prompt="abc", max_tokens=4)
            h = e.value.response.headers
            assert int(h["retry-after"]) >= 1 and h["x-ratelimit-remaining-requests"] == "0"
            assert e.value.code == "rate_limit_exceeded"
            # larger than the bucket: no wait helps, so the SDK must not retry it, even when allowed to
            seen = []
            counting = httpx.Client(event_hooks={"response": [seen.append]})
            with openai.OpenAI(base_url=s.url, api_key="sk-other-key-0000", max_retries=3,
                               http_client=counting) as retrying:
                with pytest.raises(openai.RateLimitError, match="tokens per minute") as e:
                    retrying.completions.create(model="tiny-llama", prompt="abc", max_tokens=200)
            assert len(seen) == 1 and e.value.response.headers["x-should-retry"] == "false"
            assert "retry-after" not in e.value.response.headers
        with openai.OpenAI(base_url=s.url, api_key="sk-other-key-0000", max_retries=0) as other:
            assert other.completions.create(model="tiny-llama", prompt="abc", max_tokens=2).usage


def test_greedy_http_equals_generate(client):
    prompts = ["ROMEO:", "To be, or not to be", "Once upon a time there"]
    reference = LLM(model=tiny_model_dir(), device="cpu", num_blocks=64)
    expected = reference.generate(prompts, SamplingParams(max_tokens=24, temperature=0.0), use_tqdm=False)
    assert len(expected) == len(prompts)
    for prompt, want in zip(prompts, expected, strict=True):
        got = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=24, temperature=0)
        assert got.choices[0].text == want.text and got.choices[0].finish_reason == want.finish_reason
    chat = [{"role": "user", "content": "Speak"}]
    text = tiny_llm().tokenizer.apply_chat_template(chat)
    want = reference.generate(text, SamplingParams(max_tokens=16, temperature=0.0), use_tqdm=False)[0]
    got = client.chat.completions.create(model="tiny-llama", messages=chat, max_tokens=16, temperature=0)
    assert got.choices[0].message.content == want.text


def test_health_metrics_and_open_server_log(server, caplog):
    assert httpx.get(server.base + "/health").json() == {"status": "ok"}
    head = httpx.head(server.base + "/health")
    assert head.status_code == 200 and head.content == b""  # a probe's HEAD: the status, no body
    text = httpx.get(server.base + "/metrics").text
    for name in ("lab_num_requests_running", "lab_num_requests_waiting", "lab_kv_blocks_used",
                 "lab_generation_tokens_total", "lab_time_to_first_token_seconds_bucket",
                 "lab_e2e_request_latency_seconds_bucket"):
        assert name in text
    with caplog.at_level("WARNING", logger="lab.server"):
        with serve(llm=tiny_llm("aux")) as s:
            assert httpx.post(s.url + "/completions", json={"model": "tiny-llama", "prompt": "a", "max_tokens": 1}
                              ).status_code == 200
    assert "no API keys" in caplog.text


def test_stop_cuts_the_text(client):
    args = dict(model="tiny-llama", prompt="To be", max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**args).choices[0].text
    stop = whole[6:8]
    cut = whole.find(stop)
    assert cut > 0, f"pick another stop for {whole!r}"
    r = client.completions.create(**args, stop=["never-seen", stop])
    assert r.choices[0].text == whole[:cut] and r.choices[0].finish_reason == "stop"  # the stop text excluded
    assert r.usage.completion_tokens < 16
    chunks = list(client.completions.create(**args, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole[:cut]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_seed_repeats_sampling(client):
    def sample(seed: int) -> str:
        return client.completions.create(model="tiny-llama", prompt="To be", max_tokens=16, temperature=1.0,
                                          seed=seed, extra_body={"ignore_eos": True}).choices[0].text

    first = sample(1)
    assert sample(1) == first  # same seed, same text, though sampled
    others = [sample(seed) for seed in (2, 3, 4)]
    assert any(text != first for text in others)  # 16 tokens from ~100: all equal would be a fixed seed


def test_a_top_p_below_float32_is_served_as_greedy(client):
    # top_p=1e-46 is valid JSON and in (0, 1]; it once emptied the nucleus and answered 500
    def complete(**kw) -> str:
        return client.completions.create(model="tiny-llama", prompt="To be", max_tokens=12,
                                          extra_body={"ignore_eos": True}, **kw).choices[0].text

    assert complete(temperature=1.0, top_p=1e-46, seed=5) == complete(temperature=0)


@pytest.mark.parametrize("max_tokens", [1, 7])
def test_max_tokens_is_honoured(client, max_tokens):
    exact = client.completions.create(model="tiny-llama", prompt="To be", max_tokens=max_tokens,
                                      extra_body={"ignore_eos": True})
    assert exact.usage.completion_tokens == max_tokens and len(exact.choices[0].text) == max_tokens
    assert exact.choices[0].finish_reason == "length"
    free = client.completions.create(model="tiny-llama", prompt="To be", max_tokens=max_tokens, temperature=0)
    assert 1 <= free.usage.completion_tokens <= max_tokens
    assert (free.choices[0].finish_reason == "length") == (free.usage.completion_tokens == max_tokens)


def _counters(server) -> dict[str, float]:
    text = httpx.get(server.base + "/metrics").text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


def test_metrics_count_what_the_answers_said(server, client):
    before = _counters(server)
    answers = [client.completions.create(model="tiny-llama", prompt=f"Line {i}", max_tokens=3 + i, temperature=0)
               for i in range(4)]
    answers.append(client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=5, extra_body={"ignore_eos": True}))
    chunks = list(client.completions.create(model="tiny-llama", prompt="Go", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}))
    usages = [a.usage for a in answers] + [chunks[-1].usage]
    after = _counters(server)
    assert after["lab_generation_tokens_total"] - before["lab_generation_tokens_total"] == \
        sum(u.completion_tokens for u in usages)
    assert after["lab_prompt_tokens_total"] - before["lab_prompt_tokens_total"] == sum(u.prompt_tokens for u in usages)
    assert after["lab_e2e_request_latency_seconds_count"] - before["lab_e2e_request_latency_seconds_count"] == 6


def test_openapi_describes_request_bodies(server):
    doc = server.app.openapi()
    for path, field in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")):
        body = doc["paths"][path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] and field in schema["properties"] and {"model", field} <= set(schema["required"])
        assert "max_tokens" in schema["properties"] and "stream" in schema["properties"]
    refs = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    schemas = doc["components"]["schemas"]
    assert {"ChatMessage", "StreamOptions"} <= set(schemas)
    assert all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs), refs  # none dangle
    assert httpx.get(server.base + "/openapi.json").json()["paths"] == doc["paths"]  # served as built


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_continuous_usage_stats_put_the_usage_so_far_in_every_chunk(client, kind):
    # vLLM's stream_options extra: it was accepted and ignored, every chunk said usage null
    options = {"include_usage": True, "continuous_usage_stats": True}
    common = dict(model="tiny-llama", max_tokens=6, temperature=0, stream=True, stream_options=options,
                  extra_body={"ignore_eos": True})
    if kind == "chat":
        chunks = list(client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **common))
    else:
        chunks = list(client.completions.create(prompt="Go", **common))
    *per_token, final = chunks
    assert final.choices == [] and final.usage.completion_tokens == 6
    counts = [c.usage.completion_tokens for c in per_token]
    assert all(c.usage.prompt_tokens == final.usage.prompt_tokens for c in per_token)
    assert counts == sorted(counts) and counts[-1] == 6 and counts[0] <= 1  # grows to the final count
    plain = list(client.completions.create(model="tiny-llama", prompt="Go", max_tokens=3, stream=True,
                                           stream_options={"include_usage": True}))
    assert all(c.usage is None for c in plain[:-1])  # without the extra: OpenAI's null in each chunk
    # null is "not set" (vLLM's Optional[bool]): no usage chunk, no usage per chunk; it was a 400
    unset = list(client.completions.create(model="tiny-llama", prompt="Go", max_tokens=3, stream=True,
                                           stream_options={"include_usage": None, "continuous_usage_stats": None}))
    assert unset[-1].choices and all(c.usage is None for c in unset)


def test_a_function_message_goes_to_the_template(client):
    # deprecated (role "tool" replaced it) but in OpenAI's types, and vLLM renders any role: was a 400
    r = client.chat.completions.create(model="tiny-llama", max_tokens=1, messages=[
        {"role": "user", "content": "Hi"}, {"role": "function", "name": "f", "content": "22"}])
    assert r.usage.prompt_tokens == len("user: Hi\nfunction: 22\nassistant:")


# renders what Qwen's and Llama's templates render besides role and content: a speaker's name, the
# assistant's tool calls (their arguments as an object, `| tojson`) and the call a tool result answers
TOOL_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}{% if m.name %}({{ m.name }}){% endif %}: {{ m.content }}"
    "{% for t in m.tool_calls or [] %}call {{ t.function.name }} {{ t.function.arguments | tojson }}{% endfor %}"
    "{% if m.tool_call_id %} for {{ m.tool_call_id }}{% endif %}{{ '\\n' }}{% endfor %}assistant:"
)


def test_names_tool_calls_and_tool_call_ids_reach_the_template(tmp_path):
    # before: only role and content were passed, so a template never saw the tool calls it renders
    folder = build_tiny_llama(tmp_path / "tools")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": TOOL_TEMPLATE}))
    messages = [
        {"role": "user", "content": "Weather in Paris?", "name": "bob"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    rendered = ('user(bob): Weather in Paris?\nassistant: call get_weather {"city": "Paris"}\n'
                "tool: sunny for c1\nassistant:")
    with serve(llm=LLM(folder, device="cpu", num_blocks=32)) as server:
        r = httpx.post(server.url + "/chat/completions", timeout=30,
                       json={"model": server.model_name, "messages": messages, "max_tokens": 1})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(rendered)  # one token per character


def test_models_carry_root_as_vllms_do(server):
    # `vllm bench serve` without --model reads data[0]["root"]; without it the benchmark died on a KeyError
    card = httpx.get(server.url + "/models", headers={"authorization": f"Bearer {KEY}"}).json()["data"][0]
    assert card["root"] == card["id"] == "tiny-llama" and card["parent"] is None


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_the_finish_reason_rides_on_the_last_text_chunk(client, kind):
    # a chunk of its own added a ~0 ms gap to every stream: clients that time chunks counted one ITL too many
    args = dict(model="tiny-llama", max_tokens=5, temperature=0, stream=True, extra_body={"ignore_eos": True})
    if kind == "chat":
        chunks = list(client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **args))
        texts = [c.choices[0].delta.content for c in chunks[1:]]  # after the role chunk
    else:
        chunks = list(client.completions.create(prompt="Once", **args))
        texts = [c.choices[0].text for c in chunks]
    assert len(texts) == 5 and all(len(t) == 1 for t in texts)  # one chunk per token, no empty finish chunk
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_a_queued_chat_stream_sends_its_role_chunk_with_the_first_token():
    # sent on admission, the role chunk reached the client while the request still waited in the queue,
    # and `vllm bench serve` (first chunk = first token) measured that as its TTFT
    import threading

    from helpers_server import wait_until

    llm = LLM(model=tiny_model_dir(), device="cpu", dtype="float32", num_blocks=64, max_num_seqs=1)
    with serve(llm=llm) as s:
        long = threading.Thread(target=httpx.post, args=(s.url + "/completions",),
                                kwargs={"json": {"model": "tiny-llama", "prompt": "A", "max_tokens": 250,
                                                 "ignore_eos": True}, "timeout": 60})
        long.start()
        assert wait_until(lambda: s.engine.stats.num_running == 1)
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                "stream": True}
        with httpx.stream("POST", s.url + "/chat/completions", json=body, timeout=60) as r:
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            first = next(lines)
            waiting_then = s.engine.stats.num_waiting
            rest = list(lines)
        long.join()
    assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    assert waiting_then == 0  # it had left the queue: the long request had finished, this one had a token
    assert rest[-1] == "data: [DONE]"


def test_a_one_token_chat_stream_cut_at_its_role_chunk_is_still_counted(server):
    # the role chunk, sent with the first event, went out before that (finished) request was counted: a
    # cut there left it out of /metrics, its prompt and its token with it
    before = _counters(server)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            "stream": True, "ignore_eos": True}
    with pytest.raises(httpx.HTTPError):  # the connection is dropped before the first chunk
        with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {KEY}", "x-lab-fault": "cut:0"}) as r:
            for _ in r.iter_lines():
                pass
    from helpers_server import wait_until

    assert wait_until(lambda: _counters(server)["lab_e2e_request_latency_seconds_count"]
                      == before["lab_e2e_request_latency_seconds_count"] + 1)
    assert _counters(server)["lab_generation_tokens_total"] - before["lab_generation_tokens_total"] == 1


def test_usage_reports_the_prompt_tokens_the_prefix_cache_held(client):
    # OpenAI's prompt_tokens_details.cached_tokens: what prefix caching saved, in the usage a client prices
    prompt = "A prompt seen twice, long enough to fill a few KV blocks of the cache: " * 2
    first = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=2, temperature=0)
    block = tiny_llm().engine.config.block_size
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached == (len(prompt) - 1) // block * block > 0  # every full block but the one with the last token
    chunks = list(client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=2, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == cached
