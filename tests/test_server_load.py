"""Load over loopback: 64 concurrent streaming clients finish cleanly and leave every KV block free;
16 clients that hang up mid-stream get their requests aborted and their blocks freed."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from helpers_server import tiny_llm, wait_until

from lab.server import serve


@pytest.fixture(scope="module")
def server():
    with serve(llm=tiny_llm()) as s:
        yield s


def _body(i: int, max_tokens: int) -> dict:
    return {"model": "tiny-llama", "prompt": f"Client {i} says", "max_tokens": max_tokens, "stream": True,
            "temperature": 0.8, "seed": i, "ignore_eos": True, "stream_options": {"include_usage": True}}


async def _stream(http: httpx.AsyncClient, url: str, i: int, max_tokens: int) -> tuple[str, dict, bool]:
    text, usage, done = "", None, False
    async with http.stream("POST", url + "/completions", json=_body(i, max_tokens)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                text += chunk["choices"][0]["text"]
            usage = chunk.get("usage") or usage
    return text, usage, done


def _blocks_used(server) -> float:
    for line in httpx.get(server.base + "/metrics").text.splitlines():
        if line.startswith("lab_kv_blocks_used "):
            return float(line.split()[1])
    raise AssertionError("lab_kv_blocks_used missing from /metrics")


async def test_64_concurrent_streams(server):
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        results = await asyncio.gather(*(_stream(http, server.url, i, 12) for i in range(64)))
    assert all(done for _, _, done in results)
    assert all(u["completion_tokens"] == 12 and len(t) == 12 for t, u, _ in results)
    assert tiny_llm().engine.block_manager.num_used == 0
    assert _blocks_used(server) == 0
    assert server.engine.stats.num_running == 0 and server.engine.stats.num_waiting == 0


async def test_disconnects_free_blocks(server, monkeypatch):
    # When an abort is asked for (the server noticed the hang-up) and when the engine thread applies it,
    # in engine steps. The engine thread drains its command queue before every step, so an abort waits
    # at most for the one step already running when it arrives: applied - asked <= 1. How long uvicorn
    # takes to notice a closed socket is the event loop's business, not the engine's, so it is not bounded.
    asked, applied = {}, {}
    engine = tiny_llm().engine
    ask, apply = server.engine.abort, engine.abort

    def asking(request_id, stream=None):
        # Read the counter and queue the abort under the lock the engine thread drains its queue with
        # (a Condition's default RLock, so ask() may take it again): read first and queue after, and the
        # engine thread could start more steps in between, counting them against the abort.
        with server.engine._cond:
            asked.setdefault(request_id, engine.num_steps)
            ask(request_id, stream)

    def applying(request_id):
        steps = engine.num_steps  # read on the engine thread, between steps
        applied[request_id] = (steps, apply(request_id))  # True: it was still running, now cut short
        return applied[request_id][1]

    monkeypatch.setattr(server.engine, "abort", asking)
    monkeypatch.setattr(engine, "abort", applying)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as http:

        async def hang_up(i: int) -> int:
            async with http.stream("POST", server.url + "/completions", json=_body(i, 240)) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen == 3:
                        return seen  # leaving the block closes the connection mid-stream
            return seen

        assert await asyncio.gather(*(hang_up(i) for i in range(16))) == [3] * 16
    assert await asyncio.to_thread(wait_until, lambda: engine.block_manager.num_used == 0, 5.0)
    assert len(asked) == 16 and set(applied) == set(asked)
    assert all(ran for _, ran in applied.values())  # every one was still generating when aborted
    late = {rid: applied[rid][0] - asked[rid] for rid in asked if applied[rid][0] - asked[rid] > 1}
    assert late == {}, f"aborts applied more than one engine step after they were asked for: {late}"
    assert _blocks_used(server) == 0
    metrics = httpx.get(server.base + "/metrics").text
    assert 'lab_requests_total{finish_reason="client_gone"} 16.0' in metrics


async def test_a_slow_tokenization_leaves_the_event_loop_free(server, monkeypatch):
    """A long prompt through a real tokenizer can take a second; on the event loop it would stall
    every stream and /health. The encode below blocks until /health has answered: it only can if
    tokenization runs off the loop."""
    import threading

    tokenizer = server.engine.engine.tokenizer
    entered, release = threading.Event(), threading.Event()
    real_encode = tokenizer.encode

    def blocking_encode(*args, **kwargs):
        entered.set()
        release.wait(timeout=20)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", blocking_encode)
    body = {"model": "tiny-llama", "prompt": "Slow to tokenize", "max_tokens": 4}
    async with httpx.AsyncClient(timeout=30) as http:
        completion = asyncio.create_task(http.post(server.url + "/completions", json=body))
        try:
            assert await asyncio.to_thread(entered.wait, 10), "the completion never reached the tokenizer"
            health = await http.get(server.base + "/health", timeout=5)  # times out while the loop is held
            assert health.status_code == 200
        finally:
            release.set()
        response = await completion
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4
