"""lab.client against lab.server: batches through injected faults, a killed batch resumed, and load-generator
measurements (where TTFT is taken, and that opening pools mid-run does not stall the event loop).

The faults are the server's own (FaultConfig: error statuses and dropped connections, seeded). A small
ASGI middleware around the server app logs every attempt per request (by an `x-test-id` header) and its
outcome, and can hold requests, so the tests know exactly what the server saw.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import ssl
import subprocess
import sys
import threading
import time
import types
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest
from helpers_server import tiny_llm

from lab.client import AsyncClient, AuthenticationError, Client, RetryPolicy, loadgen, run_batch, streaming
from lab.client import client as client_module
from lab.client.batch import read_checkpoint
from lab.client.loadgen import arun_workload
from lab.server import FaultConfig, serve
from lab.workload import RequestSpec, Workload

KEY = "sk-test-0123456789abcdef"
MODEL = "tiny-llama"
CHAT = "/v1/chat/completions"
MAX_RETRIES = 3
# fast retries so hundreds of faults cost little; 429 and 503 still wait the server's retry-after (1 s)
FAST_RETRY = RetryPolicy(max_retries=MAX_RETRIES, initial_delay=0.01, max_delay=0.05)
ERROR_RATES = {429: 0.06, 500: 0.06, 503: 0.06, 504: 0.06}
CUT_RATE = 0.08  # of the answers no error status took: dropped half-way through the body
# an attempt fails with an error status, or else, if its cut draw hits, with a dropped connection: ~30%
P_FAIL = sum(ERROR_RATES.values()) + (1 - sum(ERROR_RATES.values())) * CUT_RATE
ERROR_TYPES = {"429": "RateLimitError", "401": "AuthenticationError", "500": "InternalServerError",
               "503": "InternalServerError", "504": "InternalServerError", "cut": "APIConnectionError"}


class AttemptBook:
    """What the middleware saw: per test id, the outcome of each attempt ("200", "503", "cut", ...)
    and the test phase it arrived in. Written on the server's thread, read by the test afterwards."""

    def __init__(self):
        self.attempts: dict[str, list[str]] = defaultdict(list)
        self.phases: dict[str, list[int]] = defaultdict(list)
        self.phase = 1
        self.hold_after: int | None = None  # requests beyond this many wait for `released`
        self.released = threading.Event()
        self.arrived = 0

    def reset(self, phase: int = 1) -> None:
        self.attempts.clear()
        self.phases.clear()
        self.phase, self.arrived, self.hold_after = phase, 0, None


class AttemptLog:
    """ASGI middleware: logs and holds chat completion requests that carry `x-test-id`."""

    def __init__(self, app, book: AttemptBook):
        self.app, self.book = app, book

    async def __call__(self, scope, receive, send):
        test_id = dict(scope.get("headers") or ()).get(b"x-test-id") if scope["type"] == "http" else None
        if test_id is None or scope["path"] != CHAT:
            return await self.app(scope, receive, send)
        book, test_id = self.book, test_id.decode()
        book.arrived += 1
        if book.hold_after is not None and book.arrived > book.hold_after:
            while not book.released.is_set():  # hold this request until the test lets it go
                await asyncio.sleep(0.01)
        slot = len(book.attempts[test_id])
        book.attempts[test_id].append("sent")
        book.phases[test_id].append(book.phase)
        state = {"status": 0, "complete": False}

        async def watched_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # book the outcome before the last byte leaves: the client may finish (and the test
                # read the book) before this coroutine runs again
                state["complete"] = True
                book.attempts[test_id][slot] = str(state["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except BaseException:
            if state["status"] and not state["complete"]:  # the server's injected cut: the head went,
                book.attempts[test_id][slot] = "cut"  # the body stopped; booked before uvicorn closes
            raise
        book.attempts[test_id][slot] = str(state["status"])


@pytest.fixture(scope="module")
def book():
    return AttemptBook()


@pytest.fixture(scope="module")
def server(book):
    with serve(llm=tiny_llm(), api_keys=[KEY]) as s:
        s.app.add_middleware(AttemptLog, book=book)  # before the first request builds the stack
        yield s


@pytest.fixture
def fresh_book(book):
    book.reset()
    book.released.clear()
    yield book
    book.released.set()  # never leave a request held for the next test
    book.reset()


def batch_lines(n: int, forced: dict[str, str] | None = None) -> list[dict]:
    """Batch API lines with distinct prompts; `forced` maps custom ids to an `x-lab-fault` sent on every
    attempt."""
    lines = []
    for i in range(n):
        cid = f"req-{i:03d}"
        headers = {"x-test-id": cid}
        if forced and cid in forced:
            headers["x-lab-fault"] = forced[cid]
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"line {i}: to be"}],
                "max_tokens": 4, "temperature": 0.0, "extra_headers": headers}
        lines.append({"custom_id": cid, "method": "POST", "url": CHAT, "body": body})
    return lines


def checkpoint_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines() if line.strip()]


def assert_record_matches_attempts(rec: dict, attempts: list[str]) -> None:
    """The record tells the truth about what the server saw, and the retry policy was followed."""
    cid, last = rec["custom_id"], attempts[-1]
    assert "sent" not in attempts, f"{cid}: an attempt never got an answer: {attempts}"
    assert rec["retries"] == len(attempts) - 1, f"{cid}: {rec['retries']} retries, server saw {attempts}"
    assert all(a != "200" for a in attempts[:-1]), f"{cid}: a success was sent again: {attempts}"
    if last == "200":
        assert rec["error"] is None and rec["response"]["status_code"] == 200, cid
        assert rec["response"]["body"]["choices"][0]["message"]["content"] is not None
        return
    assert rec["error"]["type"] == ERROR_TYPES[last], f"{cid}: {rec['error']} after {attempts}"
    if last == "401":  # not retryable: sent once
        assert len(attempts) == 1, f"{cid}: a 401 was retried: {attempts}"
    else:  # retryable: it failed only because the retries ran out
        assert len(attempts) == MAX_RETRIES + 1, f"{cid}: gave up early: {attempts}"


def test_batch_through_injected_faults_retries_every_retryable_failure(server, fresh_book, tmp_path):
    forced = {"req-010": "500", "req-020": "500", "req-030": "504", "req-040": "401", "req-050": "401"}
    requests = batch_lines(300, forced)
    out = tmp_path / "out.jsonl"
    server.faults = FaultConfig(error_rates=ERROR_RATES, cut_rate=CUT_RATE, seed=11)
    try:
        client = Client(base_url=server.url, api_key=KEY, retry=FAST_RETRY)
        records = run_batch(client, requests, concurrency=16, checkpoint=out, progress=False)
    finally:
        server.faults = None

    ids = [r["custom_id"] for r in requests]
    assert [r["custom_id"] for r in records] == ids  # one record per input, in input order
    assert Counter(checkpoint_ids(out)) == Counter(ids)  # each id once on disk
    assert set(fresh_book.attempts) == set(ids)
    for rec in records:
        assert_record_matches_attempts(rec, fresh_book.attempts[rec["custom_id"]])

    # the faults really happened, of every kind, and their requests were retried
    random_ids = [i for i in ids if i not in forced]
    first_faulted = [i for i in random_ids if fresh_book.attempts[i][0] != "200"]
    # each first attempt fails independently with P_FAIL (the faults are drawn in arrival order, but which
    # request gets a draw never depends on its value): binomial. 4 standard deviations either side, a
    # false alarm about once in 16,000 runs, catches a rate more than ~35% off the configured one; that
    # every kind of fault fired is checked below
    n = len(random_ids)
    mean, sd = n * P_FAIL, math.sqrt(n * P_FAIL * (1 - P_FAIL))
    low, high = math.floor(mean - 4 * sd), math.ceil(mean + 4 * sd)
    assert low <= len(first_faulted) <= high, f"{len(first_faulted)} of {n} first attempts failed, expected {low}-{high}"
    outcomes = Counter(a for i in ids for a in fresh_book.attempts[i])
    assert {"429", "500", "503", "504", "cut", "401"} <= set(outcomes), outcomes
    assert all(rec["retries"] >= 1 for rec in records if rec["custom_id"] in first_faulted)
    recovered = [i for i in first_faulted if fresh_book.attempts[i][-1] == "200"]
    assert len(recovered) >= 0.9 * len(first_faulted)  # with 3 retries, nearly all of them succeed
    by_id = {r["custom_id"]: r for r in records}
    assert by_id["req-010"]["error"]["type"] == "InternalServerError" and by_id["req-010"]["retries"] == 3
    assert by_id["req-040"]["error"]["type"] == "AuthenticationError" and by_id["req-040"]["retries"] == 0


BATCH_SCRIPT = """
import sys
from lab.client import Client, RetryPolicy, run_batch
from lab.client.batch import load_requests

url, key, inp, out = sys.argv[1:5]
retry = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05)
client = Client(base_url=url, api_key=key, retry=retry)
run_batch(client, load_requests(inp), concurrency=8, checkpoint=out, progress=False)
"""


def wait_for_lines(path: Path, proc: subprocess.Popen, at_least: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail(f"the batch process ended early (rc {proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"{path} did not reach {at_least} lines in {timeout_s} s")


def test_killed_batch_resumes_without_resending_finished_requests(server, fresh_book, tmp_path):
    requests = batch_lines(300)
    inp, out, script = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "batch.py"
    inp.write_text("".join(json.dumps(line) + "\n" for line in requests))
    script.write_text(BATCH_SCRIPT)
    # the server answers 160 requests, then holds the rest: the kill lands half-way whatever the CPU speed
    fresh_book.hold_after = 160
    proc = subprocess.Popen([sys.executable, str(script), server.url, KEY, str(inp), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(out, proc, at_least=100)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()

    finished_before, _ = read_checkpoint(out)
    assert 100 <= len(finished_before) < 300
    fresh_book.phase = 2
    fresh_book.hold_after = None
    fresh_book.released.set()  # the held requests now run, into closed connections

    client = Client(base_url=server.url, api_key=KEY, retry=FAST_RETRY)
    records = run_batch(client, requests, concurrency=16, checkpoint=out, progress=False)

    resent = [cid for cid in finished_before if 2 in fresh_book.phases[cid]]
    assert resent == [], f"finished before the kill, yet sent again: {resent}"
    ids = [r["custom_id"] for r in requests]
    assert [r["custom_id"] for r in records] == ids and all(r["error"] is None for r in records)
    assert Counter(checkpoint_ids(out)) == Counter(ids)  # each id once on disk
    unfinished = [cid for cid in ids if cid not in finished_before]
    assert all(2 in fresh_book.phases[cid] for cid in unfinished)  # the rest was sent on the rerun
    for cid in finished_before:  # the records kept are the first run's
        assert records[ids.index(cid)]["id"] == finished_before[cid]["id"]


async def test_new_pools_mid_run_do_not_reload_certificates(server, monkeypatch):
    """Regression: each pool PoolSet opened mid-run built its own TLS context, loading the CA bundle
    (~80 ms of CPU) on the event loop while streams were in flight, which inflated TTFT several-fold."""
    loads = []
    real = ssl.create_default_context
    async with AsyncClient(base_url=server.url, api_key=KEY) as client:
        monkeypatch.setattr(ssl, "create_default_context", lambda *a, **kw: loads.append(1) or real(*a, **kw))
        specs = [RequestSpec(id=f"w{i}", prompt="to be or not", output_len=8) for i in range(12)]
        result = await arun_workload(client, Workload(specs), model=MODEL)
        pools = len(client._pools.pools)
    assert all(r.ok for r in result.requests)
    assert pools > 1  # the run did open pools while streams were in flight...
    assert loads == []  # ...and none of them loaded certificates again


class FakeClock:
    """`perf_counter` for the client modules; only the mock server moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_ttft_runs_from_send_to_first_content_chunk(monkeypatch):
    clock = FakeClock()
    fake_time = types.SimpleNamespace(perf_counter=clock, monotonic=time.monotonic, sleep=time.sleep)
    for module in (loadgen, streaming, client_module):
        monkeypatch.setattr(module, "time", fake_time)
    head_s, first_s, gap_s, n = 0.125, 0.25, 0.0625, 5  # binary fractions: sums are exact

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": MODEL}]})
        clock.now += head_s  # queueing before the response head

        async def events():
            yield b": keep-alive\n\n"  # a comment is not a token
            for i in range(n):
                clock.now += first_s if i == 0 else gap_s
                choice = {"index": 0, "text": f" t{i}", "finish_reason": "length" if i == n - 1 else None}
                chunk = {"id": "c", "object": "text_completion", "model": MODEL, "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, content=events(), headers={"content-type": "text/event-stream"})

    mock = httpx.MockTransport(handler)
    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=mock) as c:
        clock.now = 10.0  # t0 is whatever the clock says when the run starts
        result = await arun_workload(c, Workload([RequestSpec(id="only", prompt="hi", output_len=n)]))
    (m,) = result.requests
    assert m.arrival_s == 0.0
    assert m.ttft_s == head_s + first_s
    assert m.itls_s == [gap_s] * (n - 1) and m.tpot_s == gap_s
    assert m.e2e_s == head_s + first_s + (n - 1) * gap_s


def test_local_provider_sends_the_first_key_of_the_servers_variable(server, monkeypatch):
    """`batching-lab serve` and provider="local" read the same BATCHING_LAB_API_KEY; it may hold several
    keys for the server, and the client sends the first."""
    monkeypatch.setenv("BATCHING_LAB_API_KEY", f" {KEY} ,sk-second-key-0000")
    with Client(base_url=server.url, provider="local") as client:
        assert client.api_key == KEY
        assert [m.id for m in client.models.list()] == [MODEL]
    monkeypatch.setenv("BATCHING_LAB_API_KEY", f"sk-second-key-0000,{KEY}")
    with Client(base_url=server.url, provider="local", max_retries=0) as client:
        with pytest.raises(AuthenticationError):  # the first key, which this server does not accept
            client.models.list()
    monkeypatch.setenv("BATCHING_LAB_API_KEY", KEY)
    with Client(base_url=server.url, provider="local") as client:
        assert client.api_key == KEY  # one key: as it is


def test_an_async_client_reused_in_a_second_asyncio_run(server, fresh_book):
    """The first loop closed with the pool's connections, and httpx failed every later request with a
    bare "Event loop is closed". Our pools start afresh; a caller's own httpx client is named."""
    client = AsyncClient(base_url=server.url, api_key=KEY, max_retries=0)

    async def one() -> str:
        r = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, extra_body={"ignore_eos": True})
        return r.text

    first, second = asyncio.run(one()), asyncio.run(one())
    assert len(first) == len(second) == 3

    own = AsyncClient(base_url=server.url, api_key=KEY, max_retries=0, http_client=httpx.AsyncClient())

    async def with_own() -> str:
        return (await own.completions.create(model=MODEL, prompt="Hello", max_tokens=3)).text

    asyncio.run(with_own())
    with pytest.raises(RuntimeError, match=r"^http_client: your httpx.AsyncClient was used on an event loop that has closed"):
        asyncio.run(with_own())
