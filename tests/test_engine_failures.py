"""The engine failing inside the server: every affected client gets a prompt error (a 500 in OpenAI's
shape, or an error event then [DONE] on a stream), KV blocks and /metrics gauges return to zero, and
the server either goes on serving or, if the engine thread died, says so at once (503) and in its log.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
from helpers_server import tiny_llm, tiny_model_dir, wait_until

from lab.engine import LLM, SamplingParams
from lab.server import serve

COMP = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 20, "ignore_eos": True, "temperature": 0.0}
GAUGES = ("lab_num_requests_running", "lab_num_requests_waiting", "lab_kv_blocks_used")


@pytest.fixture(scope="module")
def server():
    with serve(llm=tiny_llm()) as s:
        yield s


def _metric(server, name: str) -> float:
    lines = httpx.get(server.base + "/metrics").text.splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith(name + " "))


def _stream(server, body: dict) -> list[str]:
    with httpx.stream("POST", server.url + "/completions", json={**body, "stream": True}, timeout=20) as r:
        assert r.status_code == 200
        return [line.removeprefix("data: ") for line in r.iter_lines() if line]


def test_a_broken_model_fails_every_request_promptly_and_the_server_goes_on(server, monkeypatch, caplog):
    # a guard for the chosen behaviour: a step that raises fails every request in flight (streamed or
    # not), frees their blocks, logs once per failed step, and the next request is served normally
    runner = server.llm.engine.runner
    monkeypatch.setattr(runner, "execute", lambda batch: (_ for _ in ()).throw(RuntimeError("model is broken")))
    answers = {}

    def send(i):
        if i % 2:
            answers[i] = _stream(server, COMP)[-2:]
        else:
            r = httpx.post(server.url + "/completions", json=COMP, timeout=20)
            answers[i] = (r.status_code, r.json())

    with caplog.at_level(logging.ERROR, logger="lab.engine.async_engine"):
        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert len(answers) == 4
    for i, answer in answers.items():
        if i % 2:
            error, done = answer
            assert done == "[DONE]" and "model is broken" in json.loads(error)["error"]["message"]
        else:
            assert answer[0] == 500 and answer[1]["error"]["code"] == "internal_error"
    failed_steps = [r for r in caplog.records if r.getMessage() == "engine step failed"]
    assert 1 <= len(failed_steps) <= 4  # not a flood: at most one per failed step
    assert wait_until(lambda: [_metric(server, g) for g in GAUGES] == [0, 0, 0], 3.0)
    assert server.llm.engine.block_manager.num_used == 0
    monkeypatch.undo()
    assert httpx.post(server.url + "/completions", json=COMP, timeout=20).status_code == 200


def test_a_detokenizer_failure_fails_only_its_request(server, monkeypatch):
    engine = server.llm.engine
    tokenizer, runner = engine.tokenizer, engine.runner
    victim = tokenizer.encode("zzzzz")[-5:]  # a request's detok_ids open with its last 5 prompt tokens
    decode_next, execute, seen_running = tokenizer.decode_next, runner.execute, []

    def broken_decode(ids, prefix, read, final=False):
        if ids[:5] == victim and len(ids) == 5 + 3:  # the victim's 3rd token
            seen_running.append(len(engine.scheduler.running))
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return decode_next(ids, prefix, read, final)

    def slow_execute(batch):  # the bystander must still be running when the victim fails
        time.sleep(0.005)
        return execute(batch)

    monkeypatch.setattr(tokenizer, "decode_next", broken_decode)
    monkeypatch.setattr(runner, "execute", slow_execute)
    with httpx.stream("POST", server.url + "/completions", timeout=20,
                      json={**COMP, "max_tokens": 150, "stream": True}) as bystander:
        lines = bystander.iter_lines()
        first = next(line for line in lines if line)
        r = httpx.post(server.url + "/completions", json={**COMP, "prompt": "zzzzz"}, timeout=20)
        rest = [line.removeprefix("data: ") for line in lines if line]
    assert seen_running == [2]  # the two shared the step that failed
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "UnicodeDecodeError" in r.json()["error"]["message"]
    # before: the whole step failed, and the bystander's stream ended with the victim's error
    assert first.startswith("data: {") and rest[-1] == "[DONE]"
    chunks = [json.loads(e) for e in rest[:-1]]
    assert not any("error" in c for c in chunks), chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert wait_until(lambda: engine.block_manager.num_used == 0, 3.0)


def test_an_engine_thread_that_dies_fails_fast_says_why_and_clears_the_gauges(monkeypatch, caplog):
    # an engine of its own, not a shared one: its thread dies mid-step
    llm = LLM(model=tiny_model_dir(), device="cpu", dtype="float32", num_blocks=64)
    execute, calls = llm.engine.runner.execute, []

    def dies_on_the_fourth(batch):
        calls.append(1)
        if len(calls) == 4:  # not an Exception: the loop's handler does not catch it, the thread ends
            raise SystemExit("the engine thread ends")
        return execute(batch)

    monkeypatch.setattr(llm.engine.runner, "execute", dies_on_the_fourth)
    with caplog.at_level(logging.ERROR, logger="lab.engine.async_engine"), serve(llm=llm) as s:
        error, done = _stream(s, COMP)[-2:]
        assert done == "[DONE]" and "engine thread died" in json.loads(error)["error"]["message"]
        # before: nothing in the log (threading drops a SystemExit silently), though the error says "see the log"
        assert any("engine thread died" in r.getMessage() for r in caplog.records)
        health = httpx.get(s.base + "/health")
        r = httpx.post(s.url + "/completions", json=COMP, timeout=5)
        assert health.status_code == 503 and r.status_code == 503
        # before: "server is shutting down", which it was not
        assert "engine" in r.json()["error"]["message"] and "shutting down" not in r.json()["error"]["message"]
        # before: the gauges kept the last step's snapshot (a request running, its blocks used) forever
        assert [_metric(s, g) for g in GAUGES] == [0, 0, 0]
    assert not s._thread.is_alive()  # close() returned with uvicorn ended, not after its join timed out
    assert llm.engine.block_manager.num_used == 0 and llm.engine.driver is None


def test_generate_returns_the_others_and_says_why_one_failed(monkeypatch):
    llm = LLM(model=tiny_model_dir(), device="cpu", dtype="float32", num_blocks=64)
    decode_next = llm.tokenizer.decode_next
    victim = llm.tokenizer.encode("zzzzz")[-5:]

    def broken_decode(ids, prefix, read, final=False):
        if ids[:5] == victim:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return decode_next(ids, prefix, read, final)

    monkeypatch.setattr(llm.tokenizer, "decode_next", broken_decode)
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    ok, failed = llm.generate(["Hello", "zzzzz"], params, use_tqdm=False)
    assert ok.finish_reason == "length" and len(ok.token_ids) == 4 and ok.metrics.status == "ok"
    assert failed.finish_reason == "error" and failed.metrics.status == "error"
    assert failed.metrics.error.startswith("UnicodeDecodeError")  # the reason is kept, not only logged
    assert llm.engine.block_manager.num_used == 0


def test_nan_logits_fail_only_their_request(monkeypatch, caplog):
    """A float16 overflow gives NaN logits; torch.multinomial raised on them and failed every request
    sharing the step. Now that row's request ends with an error and the batch goes on."""
    from lab.engine import model_runner

    real_sample = model_runner.sample

    def poisoned(logits, params, *rest):
        logits = logits.clone()
        for i, p in enumerate(params):
            if p.seed == 666:
                logits[i] = float("nan")
        return real_sample(logits, params, *rest)

    monkeypatch.setattr(model_runner, "sample", poisoned)
    llm = LLM(model=tiny_model_dir(), device="cpu", dtype="float32", num_blocks=64)
    good = SamplingParams(max_tokens=4, temperature=0.8, seed=1, ignore_eos=True)
    bad = SamplingParams(max_tokens=4, temperature=0.8, seed=666, ignore_eos=True)
    with caplog.at_level("ERROR", logger="lab.engine.engine"):
        ok, failed = llm.generate(["Hello", "World"], [good, bad], use_tqdm=False)
    assert ok.finish_reason == "length" and len(ok.token_ids) == 4 and ok.metrics.status == "ok"
    assert failed.finish_reason == "error" and failed.token_ids == []
    assert failed.metrics.error.startswith("SamplingError: sampling: the model's logits hold NaN or inf")
    assert "the other requests go on" in caplog.text
    assert llm.engine.block_manager.num_used == 0


def test_the_sampler_marks_rows_it_cannot_sample_from():
    import torch

    from lab.engine.sampler import SamplingError, sample

    logits = torch.zeros(3, 8)
    logits[1, 2] = float("inf")  # softmax of an inf is NaN
    logits[2, 5] = float("nan")
    params = [SamplingParams(temperature=1.0, seed=0)] * 3
    out = sample(logits, params, [torch.Generator().manual_seed(0)] * 3, torch.Generator())
    assert isinstance(out[0], int) and 0 <= out[0] < 8
    assert all(isinstance(o, SamplingError) for o in out[1:])


def test_greedy_rows_with_nan_or_inf_logits_fail_too():
    """argmax "chose" the NaN's index (token 0) and the request went on with garbage, finishing ok;
    only sampled rows were checked."""
    import torch

    from lab.engine.sampler import SamplingError, sample

    logits = torch.zeros(4, 8)
    logits[0, 3] = 2.0
    logits[1, 2] = float("inf")
    logits[2, 5] = float("nan")
    logits[3, :] = float("-inf")  # every token masked: nothing to choose
    out = sample(logits, [SamplingParams(temperature=0.0)] * 4, [None] * 4, torch.Generator())
    assert out[0] == 3
    assert all(isinstance(o, SamplingError) for o in out[1:])
