"""A request that fails after admission: a stream, after its 200 (a bug, the engine failing the request), ends with an error event
in OpenAI's shape and [DONE], as vLLM's do, frees its KV blocks and counts as an error; the server
keeps serving, and lab.client raises the error with the text that had arrived."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers_server import tiny_llm, wait_until

from lab.client import Client, InternalServerError, StreamInterruptedError
from lab.engine.async_engine import RequestStream
from lab.server import serve

COMP = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 20, "ignore_eos": True, "temperature": 0.0}
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20,
        "ignore_eos": True, "temperature": 0.0}
FAIL_AFTER = 3  # tokens


@pytest.fixture(scope="module")
def server():
    with serve(llm=tiny_llm()) as s:
        yield s


@pytest.fixture
def fail_one_stream(monkeypatch):
    """The next request's stream raises after FAIL_AFTER tokens, as a bug between the engine and the
    response would; later requests run normally."""
    real, failed = RequestStream.__anext__, []

    async def broken(self):
        if not failed and self.num_output_tokens >= FAIL_AFTER:
            failed.append(self.request_id)
            raise RuntimeError("detokenizer exploded")
        return await real(self)

    monkeypatch.setattr(RequestStream, "__anext__", broken)
    return failed


def _metric(server, name: str) -> float:
    lines = httpx.get(server.base + "/metrics").text.splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith(name + " "))


def _events(server, route: str, body: dict) -> list[str]:
    with httpx.stream("POST", server.url + route, json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        return [line.removeprefix("data: ") for line in r.iter_lines() if line]


@pytest.mark.parametrize("route, body", [("/completions", COMP), ("/chat/completions", CHAT)])
def test_a_stream_failing_mid_way_ends_with_an_error_event_then_done(server, fail_one_stream, route, body):
    # before: the exception escaped into uvicorn, which dropped the connection (httpx: incomplete chunked
    # read), counted the request as client_gone and told the client nothing
    counters = ('lab_requests_total{finish_reason="error"}', 'lab_http_errors_total{status="500"}')
    before = [_metric(server, name) for name in counters]
    events = _events(server, route, body)
    assert fail_one_stream and events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error == {"message": "generation failed: RuntimeError: detokenizer exploded", "type": "server_error",
                     "param": None, "code": "internal_error", "status": 500}  # status: what a client retries by
    chunks = [json.loads(e) for e in events[:-2]]
    assert len(chunks) == FAIL_AFTER + (route == "/chat/completions")  # chat opens with the role chunk
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert wait_until(lambda: tiny_llm().engine.block_manager.num_used == 0, 3.0)  # aborted, blocks freed
    assert [_metric(server, name) for name in counters] == [before[0] + 1, before[1] + 1]
    assert _events(server, route, body)[-1] == "[DONE]"  # the next request on the same server is whole


def test_lab_client_raises_a_mid_stream_failure_with_the_partial_text(server, fail_one_stream):
    with Client(base_url=server.url, api_key="sk-unused") as client:
        stream = client.completions.create(**COMP, stream=True)
        with pytest.raises(StreamInterruptedError, match="detokenizer exploded") as info:
            for _ in stream:
                pass
        whole = client.completions.create(**COMP).choices[0].text  # the failure was one-shot
    assert isinstance(info.value.cause, InternalServerError) and info.value.status_code == 500
    assert info.value.partial_text == stream.text and whole.startswith(stream.text)
    assert len(stream.text) == FAIL_AFTER  # one character a token: every token that arrived is kept


@pytest.mark.parametrize("route, body", [("/completions", COMP), ("/chat/completions", CHAT)])
def test_a_non_streamed_failure_is_a_500_in_openais_shape(server, fail_one_stream, route, body):
    # before: the request-id middleware's generic 500 ("The server had an error ..."), which said
    # nothing of the cause, and the request went uncounted
    counters = ('lab_requests_total{finish_reason="error"}', 'lab_http_errors_total{status="500"}')
    before = [_metric(server, name) for name in counters]
    r = httpx.post(server.url + route, json=body, timeout=30)
    assert r.status_code == 500 and fail_one_stream
    assert r.json() == {"error": {"message": "generation failed: RuntimeError: detokenizer exploded",
                                  "type": "server_error", "param": None, "code": "internal_error"}}
    assert wait_until(lambda: tiny_llm().engine.block_manager.num_used == 0, 3.0)
    assert [_metric(server, name) for name in counters] == [before[0] + 1, before[1] + 1]
    assert httpx.post(server.url + route, json=body, timeout=30).status_code == 200

