"""Bad input gets a 4xx in OpenAI's error shape naming the field, and the server keeps serving;
also 413 (body too large), 429 (queue full), 404 routes, and 503 while shutting down."""

from __future__ import annotations

import threading

import httpx
import pytest
from helpers_server import tiny_llm, wait_until

from lab.server import serve, start_server

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


def test_queue_full_is_429(monkeypatch):
    monkeypatch.setattr(tiny_llm("aux").engine.config, "max_num_seqs", 1)  # one slot: the second request waits
    with serve(llm=tiny_llm("aux"), max_queued_requests=1) as s, httpx.Client(timeout=30) as c:
        long = {**COMP, "max_tokens": 200, "ignore_eos": True, "stream": True}
        with c.stream("POST", s.url + "/completions", json=long) as first:  # running
            next(first.iter_lines())
            with c.stream("POST", s.url + "/completions", json=long) as second:  # waiting for the slot
                assert second.status_code == 200
                r = c.post(s.url + "/completions", json=COMP)
                err = _error(r, 429, None)
                assert err["code"] == "queue_full" and r.headers["retry-after"] == "1"
        assert wait_until(lambda: s.engine.stats.num_waiting == 0, 5.0)  # hang-ups noticed, queue drained
        assert c.post(s.url + "/completions", json=COMP).status_code == 200


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
        closer = threading.Thread(target=s.close)
        closer.start()
        rest = [line for line in lines if line]
    closer.join(15)
    assert not closer.is_alive()
    assert "data: [DONE]" not in rest and '"code":"shutting_down"' in rest[-1]
    assert tiny_llm("aux").engine.block_manager.num_used == 0
    with pytest.raises(httpx.ConnectError):  # the port is released
        c.get(s.base + "/health")
