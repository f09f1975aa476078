"""`x-request-id` on every answer of the generation routes: the completion's id on a success (plain or
streamed), a fresh id on an error before admission; lab.client's errors and results carry it."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from helpers_server import tiny_llm

from lab.client import AuthenticationError, BadRequestError, Client, InternalServerError, NotFoundError
from lab.server import serve

KEY = "sk-test-request-id-0000"
COMP = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 3}
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
ID = re.compile(r"^(req|cmpl|chatcmpl)-[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def server():
    with serve(llm=tiny_llm(), api_keys=[KEY], max_body_bytes=10_000) as s:
        yield s


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30, headers={"authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.mark.parametrize(("path", "body", "prefix"), [("/completions", COMP, "cmpl-"),
                                                      ("/chat/completions", CHAT, "chatcmpl-")])
def test_success_id_is_the_completion_id(http, path, body, prefix):
    r = http.post(path, json=body)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == r.json()["id"] and r.json()["id"].startswith(prefix)
    with http.stream("POST", path, json={**body, "stream": True}) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
        header = s.headers["x-request-id"]
    assert chunks and {c["id"] for c in chunks} == {header} and header.startswith(prefix)
    assert http.post(path, json=body).headers["x-request-id"] != r.headers["x-request-id"]  # one per request


@pytest.mark.parametrize(("status", "send"), [
    (401, lambda c: c.post("/completions", json=COMP, headers={"authorization": "Bearer sk-wrong"})),
    (400, lambda c: c.post("/completions", json={**COMP, "max_tokens": -1})),
    (404, lambda c: c.post("/completions", json={**COMP, "model": "gpt-4o"})),
    (413, lambda c: c.post("/completions", json={**COMP, "prompt": "x" * 20_000})),
    (429, lambda c: c.post("/completions", json=COMP, headers={"x-lab-fault": "429"})),
    (500, lambda c: c.post("/chat/completions", json=CHAT, headers={"x-lab-fault": "500"})),
    (503, lambda c: c.post("/completions", json=COMP, headers={"x-lab-fault": "503"})),
    (504, lambda c: c.post("/completions", json=COMP, headers={"x-lab-fault": "504"})),
])
def test_errors_carry_a_fresh_id(http, status, send):
    first, second = send(http), send(http)
    assert first.status_code == second.status_code == status and "error" in first.json()
    assert ID.match(first.headers["x-request-id"]) and first.headers["x-request-id"].startswith("req-")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_lab_client_errors_and_results_carry_the_id(server):
    seen = []  # the header as it came over the wire, to compare with
    wire = httpx.Client(timeout=30, event_hooks={"response": [lambda r: seen.append(r.headers.get("x-request-id"))]})
    with Client(base_url=server.url, api_key=KEY, max_retries=0, http_client=wire) as client:
        cases = [(NotFoundError, dict(model="gpt-4o", prompt="x", max_tokens=1), {}),
                 (BadRequestError, dict(model="tiny-llama", prompt="x", max_tokens=-1), {}),
                 (InternalServerError, dict(model="tiny-llama", prompt="x", max_tokens=1), {"x-lab-fault": "504"})]
        for cls, params, headers in cases:
            with pytest.raises(cls) as e:
                client.completions.create(**params, extra_headers=headers)
            assert e.value.request_id and e.value.request_id == seen[-1]
            assert f"(request id {seen[-1]})" in str(e.value)  # in the log line
        ok = client.completions.create(model="tiny-llama", prompt="x", max_tokens=2)
        assert ok.request_id == seen[-1] == ok.id
        with client.completions.create(model="tiny-llama", prompt="x", max_tokens=2, stream=True) as stream:
            list(stream)
        assert stream.request_id == seen[-1] and stream.request_id.startswith("cmpl-")
    with Client(base_url=server.url, api_key="sk-wrong-key-1234", max_retries=0) as bad:
        with pytest.raises(AuthenticationError) as e:
            bad.chat.completions.create(**CHAT)
        assert ID.match(e.value.request_id or "")


def test_unexpected_exception_is_a_500_with_an_id(http, monkeypatch, caplog):
    def broken(*_):
        raise RuntimeError("a bug")

    monkeypatch.setattr("lab.server.app._check_model", broken)
    with caplog.at_level("ERROR", logger="lab.server"):
        r = http.post("/completions", json=COMP)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert ID.match(r.headers["x-request-id"])
    assert r.headers["x-request-id"] in caplog.text and "a bug" in caplog.text  # findable in the log
    monkeypatch.undo()
    assert http.post("/completions", json=COMP).status_code == 200  # still serving


@pytest.mark.parametrize(("path", "body", "prefix"), [("/completions", COMP, "cmpl-"),
                                                      ("/chat/completions", CHAT, "chatcmpl-")])
def test_a_clients_own_request_id_names_its_completion_as_in_vllm(http, path, body, prefix):
    # vllm bench serve sends x-request-id per request (and vLLM names the completion by it): ours threw
    # it away, so neither its ids nor a caller's logs found the request on the server
    r = http.post(path, json=body, headers={"x-request-id": "bench-0"})
    assert r.status_code == 200 and r.json()["id"] == r.headers["x-request-id"] == prefix + "bench-0"
    with http.stream("POST", path, json={**body, "stream": True}, headers={"x-request-id": "bench-1"}) as s:
        first = json.loads(next(line for line in s.iter_lines() if line.startswith("data: {"))[6:])
    assert first["id"] == s.headers["x-request-id"] == prefix + "bench-1"
    # an id with a space (or too long, or not ASCII) is not echoed: a fresh one, as without the header
    r = http.post(path, json=body, headers={"x-request-id": "has space"})
    assert ID.match(r.headers["x-request-id"]) and r.json()["id"] == r.headers["x-request-id"]


def test_two_requests_in_flight_under_one_client_id_are_both_served(server, http):
    import threading

    body = {**COMP, "max_tokens": 200, "ignore_eos": True}  # long enough to overlap
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(http.post("/completions", json=body,
                                                                        headers={"x-request-id": "same"})))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in answers] == [200] * 4
    ids = [r.json()["id"] for r in answers]
    assert len(set(ids)) == 4 and all(i.startswith("cmpl-same") for i in ids)  # suffixed where taken
