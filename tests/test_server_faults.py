"""Fault injection: the `x-lab-fault` header provokes one exact failure (429, 504, a cut or stalled
stream, a whole answer cut half-way); seeded random faults repeat; faults switch on and off at run time;
FaultConfig names a bad field."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import openai
import pytest
from helpers_server import tiny_llm, wait_until

import lab.server.app as server_app
import lab.server.responses as responses
from lab.server import FaultConfig, serve, start_server

COMP = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def server():
    with serve(llm=tiny_llm()) as s:
        yield s


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.mark.parametrize("status", [401, 429, 500, 503, 504])
def test_header_provokes_status(http, status):
    r = http.post("/completions", json=COMP, headers={"x-lab-fault": str(status)})
    assert r.status_code == status and "injected" in r.json()["error"]["message"]
    if status == 429:
        assert r.headers["retry-after"] == "1" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert http.post("/completions", json=COMP).status_code == 200  # one request only


def test_sdk_sees_injected_errors(server):
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model="tiny-llama", prompt="x", max_tokens=1, extra_headers={"x-lab-fault": "429"})
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model="tiny-llama", prompt="x", max_tokens=1, extra_headers={"x-lab-fault": "504"})
        assert e.value.status_code == 504


def _stream_lines(http: httpx.Client, headers: dict) -> tuple[list[str], Exception | None]:
    lines = []
    try:
        with http.stream("POST", "/completions", json={**COMP, "stream": True}, headers=headers) as r:
            assert r.status_code == 200
            lines.extend(line for line in r.iter_lines() if line)
    except httpx.HTTPError as exc:
        return lines, exc
    return lines, None


def test_cut_stream_closes_without_done(server, http):
    lines, exc = _stream_lines(http, {"x-lab-fault": "cut:3"})
    assert len(lines) == 3 and "data: [DONE]" not in lines
    assert isinstance(exc, httpx.RemoteProtocolError)  # the connection dropped mid-body
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.APIError):
            list(c.completions.create(model="tiny-llama", prompt="x", max_tokens=8, stream=True,
                                      extra_headers={"x-lab-fault": "cut"}))
    assert _stream_lines(http, {})[0][-1] == "data: [DONE]"  # the next stream is whole


def test_stalled_stream_pauses_then_finishes(http):
    t0 = time.monotonic()
    lines, exc = _stream_lines(http, {"x-lab-fault": "stall:0.6"})
    assert exc is None and lines[-1] == "data: [DONE]" and time.monotonic() - t0 >= 0.6
    with pytest.raises(httpx.ReadTimeout):  # a client with a short read timeout gives up
        http.post("/completions", json={**COMP, "stream": True}, headers={"x-lab-fault": "stall:2"},
                  timeout=httpx.Timeout(30, read=0.3)).read()


def _metric(server, line_start: str) -> float:
    """The sum of the /metrics samples whose line starts with `line_start` (0 if none)."""
    lines = httpx.get(server.base + "/metrics").text.splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith(line_start))


def _finished_count(server) -> float:
    return _metric(server, "lab_requests_total{")


def test_stalled_answer_ends_when_the_client_leaves(server, http):
    before = _finished_count(server)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/completions", json=COMP, headers={"x-lab-fault": "stall:60"}, timeout=httpx.Timeout(30, read=0.3))
    # the handler stops waiting as soon as the client is gone and the request is counted as
    # finished within seconds, not after the 60 s stall
    assert wait_until(lambda: _finished_count(server) > before, timeout_s=10)


def test_a_stream_cut_at_any_chunk_is_counted_once(server, http):
    # before: a cut (or a hang-up) on the chunk carrying the last token found the stream finished, so
    # it was not counted as client_gone, and not yet as finished either: it went uncounted
    for cut in range(COMP["max_tokens"] + 3):  # every chunk: 8 tokens, the finish chunk, [DONE]
        before = _finished_count(server)
        _stream_lines(http, {"x-lab-fault": f"cut:{cut}"})
        assert wait_until(lambda want=before + 1: _finished_count(server) == want), f"cut:{cut}"
        time.sleep(0.05)
        assert _finished_count(server) == before + 1, f"cut:{cut} counted twice"


def test_a_cut_stream_counts_its_tokens(server, http):
    # before: a streamed hang-up or cut counted only as client_gone, so lab_prompt_tokens and
    # lab_generation_tokens missed what it had computed (a non-streamed hang-up's were counted)
    # the server's own cut is fault_cut (it was client_gone, as if the client had left)
    cut, length = 'lab_requests_total{finish_reason="fault_cut"}', 'lab_requests_total{finish_reason="length"}'
    gone = 'lab_requests_total{finish_reason="client_gone"}'
    names = ("lab_prompt_tokens_total", "lab_generation_tokens_total", cut, length, gone)
    before = [_metric(server, n) for n in names]
    lines, _ = _stream_lines(http, {"x-lab-fault": "cut:4"})
    assert len(lines) == 4  # four tokens of text reached the client before the cut
    # counted once: fault_cut, or length when the engine had finished all 8 tokens before the cut
    assert wait_until(lambda: _metric(server, cut) + _metric(server, length) == before[2] + before[3] + 1)
    assert _metric(server, gone) == before[4]
    assert _metric(server, "lab_prompt_tokens_total") - before[0] == len("Hi")
    generated = _metric(server, "lab_generation_tokens_total") - before[1]
    assert 4 <= generated <= COMP["max_tokens"]
    if _metric(server, length) > before[3]:
        assert generated == COMP["max_tokens"]  # every token the engine made, not the 4 that were sent


def test_a_request_held_by_injected_latency_at_shutdown_is_told_503(monkeypatch):
    # before: after its pause the request ran on through the later checks and was told what they said,
    # here a 429 "retry in 60 s" from a spent rate budget, instead of the server's shutdown
    s = start_server(llm=tiny_llm("aux"), requests_per_minute=1)
    answer = {}
    try:
        assert httpx.post(s.url + "/completions", json=COMP, timeout=30).status_code == 200  # the budget is spent
        drawn, draw = [], s.state.faults.draw
        monkeypatch.setattr(s.state.faults, "draw", lambda header: (drawn.append(header), draw(header))[1])

        def held():
            try:
                answer["r"] = httpx.post(s.url + "/completions", json=COMP, headers={"x-lab-fault": "latency:60"},
                                         timeout=30)
            except httpx.HTTPError as exc:
                answer["exc"] = exc

        client = threading.Thread(target=held)
        client.start()
        # its fault is drawn: the handler is past the shutdown check at admission and goes straight into
        # (or is in) the 60 s pause, with no await in between
        assert wait_until(lambda: drawn == ["latency:60"], timeout_s=30), drawn
    finally:
        s.close()
    client.join(30)
    assert not client.is_alive() and "exc" not in answer, answer
    r = answer["r"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down" and r.headers["retry-after"] == "5"


def test_shutdown_ends_injected_delays(monkeypatch):
    # before: a latency or stall in flight held the server's exit until uvicorn's graceful timeout
    # (5 s) cancelled the handler, and its client got a bare text 500 instead of OpenAI's 503
    s = start_server(llm=tiny_llm("aux"))
    drawn, draw = [], s.state.faults.draw
    monkeypatch.setattr(s.state.faults, "draw", lambda header: (drawn.append(header), draw(header))[1])
    paused, pause = [], responses.pause  # the injected delays begun: the latency, and each stall

    def counted_pause(seconds, *args):
        paused.append(seconds)
        return pause(seconds, *args)

    monkeypatch.setattr(responses, "pause", counted_pause)
    monkeypatch.setattr(server_app, "pause", counted_pause)
    answers = {}

    def post(fault: str, stream: bool) -> None:
        try:
            r = httpx.post(s.url + "/completions", json={**COMP, "stream": stream}, headers={"x-lab-fault": fault},
                           timeout=30)
            answers[fault, stream] = (r.status_code, r.text)
        except httpx.HTTPError as exc:
            answers[fault, stream] = (None, repr(exc))

    cases = [("latency:60", False), ("stall:60", False), ("stall:60", True)]
    clients = [threading.Thread(target=post, args=case) for case in cases]
    for t in clients:
        t.start()
    cancelled = []  # what uvicorn logs when its graceful timeout (5 s) has to cancel handlers still running
    watch = logging.Handler(logging.ERROR)
    watch.emit = lambda record: cancelled.append(record.getMessage())
    logging.getLogger("uvicorn.error").addHandler(watch)
    try:
        assert wait_until(lambda: len(drawn) == 3, timeout_s=30)  # every request is in its handler
        assert wait_until(lambda: paused == [60.0] * 3, timeout_s=30), paused  # and inside its 60 s delay
    finally:  # the shutdown under test, and never a server left running if the waits above failed
        try:
            s.close()
        finally:
            logging.getLogger("uvicorn.error").removeHandler(watch)
    # the delays ended themselves at the shutdown: uvicorn stopped (close() waits for it) without cancelling
    assert not s._thread.is_alive() and cancelled == []
    for t in clients:
        t.join(30)
    assert not any(t.is_alive() for t in clients) and len(answers) == 3, answers
    status, text = answers["latency:60", False]
    assert status == 503 and '"code":"shutting_down"' in text  # never admitted: the engine had stopped
    # admitted: the whole answer if the engine finished it before the shutdown, else a 503 in OpenAI's shape
    status, text = answers["stall:60", False]
    assert (status == 200 and '"finish_reason":"length"' in text) or (status == 503 and '"shutting_down"' in text)
    status, text = answers["stall:60", True]
    assert status == 200 and (text.rstrip().endswith("data: [DONE]") or '"code":"shutting_down"' in text)


@pytest.mark.parametrize("header", ["explode", "cut:1_0", "cut:+3", "latency:-0", "stall:inf", "latency:1_0"])
def test_bad_fault_header_is_400(http, header):
    # int() and float() took "1_0" as ten, "+3" and "-0": only plain digits are a count or seconds
    r = http.post("/completions", json=COMP, headers={"x-lab-fault": header})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-lab-fault"


def test_the_header_provokes_exactly_its_fault_while_random_faults_are_on(server, http):
    """Laid over the random draw, `x-lab-fault: cut` could come back as a drawn 500; the header's request
    now gets only what it names, and the others' draws stay where they were."""
    config = FaultConfig(error_rates={500: 0.5}, seed=11)
    server.faults = config
    asked = [_stream_lines(http, {"x-lab-fault": "cut"}) for _ in range(12)]
    after = _statuses(http, 12)
    server.faults = config  # again from the seed, with no header this time
    drawn = _statuses(http, 24)
    server.faults = None
    assert all(isinstance(exc, httpx.RemoteProtocolError) for _, exc in asked)  # each cut (a 500 fails above)
    assert 500 in drawn[:12] and after == drawn[12:]  # the header's requests took their draws all the same


def test_the_header_keeps_the_configured_latency_unless_it_names_one():
    from lab.server.faults import FaultInjector

    injector = FaultInjector(FaultConfig(latency_s=0.5, error_rates={500: 1.0}, seed=1))
    cut = injector.draw("cut")
    assert (cut.status, cut.latency_s, cut.cut_after) == (None, 0.5, 2)  # "added before every answer"
    assert injector.draw("latency:0.1").latency_s == 0.1 and FaultInjector().draw("429").latency_s == 0.0


def _statuses(http: httpx.Client, n: int) -> list[int]:
    return [http.post("/completions", json={**COMP, "max_tokens": 1}).status_code for _ in range(n)]


def test_seeded_faults_repeat_and_switch_off(server, http):
    config = FaultConfig(error_rates={429: 0.25, 500: 0.15, 503: 0.1}, seed=7)
    server.faults = config
    first = _statuses(http, 24)
    server.faults = config  # a fresh generator from the same seed
    assert _statuses(http, 24) == first
    assert {200, 429, 500, 503} <= set(first)
    server.faults = FaultConfig(error_rates={429: 0.25, 500: 0.15, 503: 0.1}, seed=8)
    assert _statuses(http, 24) != first
    server.faults = None
    assert set(_statuses(http, 10)) == {200}


def test_latency_and_admin_endpoint(server, http):
    r = http.put(server.base + "/admin/faults", json={"latency_s": 0.3, "seed": 1})
    assert r.status_code == 200 and server.faults.latency_s == 0.3
    t0 = time.monotonic()
    assert http.post("/completions", json=COMP).status_code == 200 and time.monotonic() - t0 >= 0.3
    bad = http.put(server.base + "/admin/faults", json={"error_rates": {"418": 0.5}})
    assert bad.status_code == 400 and "418" in bad.json()["error"]["message"]
    assert http.put(server.base + "/admin/faults", json=None).json() == {"faults": None}
    assert server.faults is None


def test_random_cuts_are_seeded(server, http):
    server.faults = FaultConfig(cut_rate=0.5, cut_after_chunks=2, seed=3)
    first = [_stream_lines(http, {})[1] is None for _ in range(12)]
    server.faults = FaultConfig(cut_rate=0.5, cut_after_chunks=2, seed=3)
    assert [_stream_lines(http, {})[1] is None for _ in range(12)] == first
    assert True in first and False in first
    server.faults = None
    assert wait_until(lambda: tiny_llm().engine.block_manager.num_used == 0, 3.0)  # cut requests aborted


@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_cut_whole_answer_drops_the_connection(server, http, path):
    body = COMP if path == "/completions" else {**COMP, "messages": [{"role": "user", "content": "Hi"}]}
    with http.stream("POST", path, json=body, headers={"x-lab-fault": "cut"}) as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) > 0  # the head promised a body
        received = b""
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete|without sending complete"):
            for part in r.iter_raw():
                received += part
    assert 0 < len(received) < int(r.headers["content-length"])  # part of it came, then nothing
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(path, json=body, headers={"x-lab-fault": "cut"})
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.APIConnectionError):
            c.completions.create(model="tiny-llama", prompt="x", max_tokens=4, extra_headers={"x-lab-fault": "cut"})
    assert http.post(path, json=body).json()["usage"]["completion_tokens"] == 8  # the next answer is whole


def test_random_cuts_reach_whole_answers(server, http):
    server.faults = FaultConfig(cut_rate=1.0, seed=0)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/completions", json=COMP)
    finally:
        server.faults = None
    assert http.post("/completions", json=COMP).status_code == 200


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"error_rates": "x"}, "error_rates"),
    ({"error_rates": [429]}, "error_rates"),
    ({"error_rates": {"teapot": 0.1}}, "error_rates"),
    ({"error_rates": {418: 0.1}}, "error_rates"),
    ({"error_rates": {429: "often"}}, "error_rates[429]"),
    ({"error_rates": {429: 1.5}}, "error_rates[429]"),
    ({"error_rates": {429: 0.7, 500: 0.7}}, "error_rates"),
    ({"error_rates": {"429": 0.7, " 429": 0.7}}, "error_rates"),  # merged into one 0.7, past the sum check
    ({"latency_s": 10**400}, "latency_s"),  # math.isfinite raised OverflowError: a 500 from PUT /admin/faults
    ({"error_rates": {429: 10**400}}, "error_rates[429]"),
    ({"cut_rate": "0.5"}, "cut_rate"),
    ({"cut_rate": float("nan")}, "cut_rate"),
    ({"stall_rate": -0.1}, "stall_rate"),
    ({"latency_s": None}, "latency_s"),
    ({"stall_s": -1}, "stall_s"),
    ({"cut_after_chunks": 2.5}, "cut_after_chunks"),
    ({"stall_after_chunks": -1}, "stall_after_chunks"),
    ({"seed": "seven"}, "seed"),
])
def test_fault_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError) as e:
        FaultConfig(**kwargs)
    assert str(e.value).startswith(field + ":")


def test_fault_config_accepts_json_shapes():
    cfg = FaultConfig(error_rates={"429": 0.25, 503: 0}, cut_rate=1, latency_s=0)  # JSON keys are strings
    assert cfg.error_rates == {429: 0.25, 503: 0.0} and cfg.cut_rate == 1.0


def test_admin_faults_bad_body_is_400_naming_the_field(server, http):
    for body, param in (({"error_rates": "x"}, "error_rates"), ([1, 2], "faults"), ({"cut_rate": 2}, "cut_rate"),
                        ({"stall_s": 10**400}, "stall_s")):
        r = http.put(server.base + "/admin/faults", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert r.json()["error"]["message"].startswith(param + ":")
    assert server.faults is None


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_failure_after_admission_is_counted(server, http, monkeypatch, stream):
    errors, failed = 'lab_http_errors_total{status="500"}', 'lab_requests_total{finish_reason="error"}'
    before = _metric(server, errors), _metric(server, failed)

    def broken_step(*_, **__):
        raise RuntimeError("a bug in a step")

    monkeypatch.setattr(server.engine.engine, "step", broken_step)
    r = http.post("/completions", json={**COMP, "stream": stream})
    monkeypatch.undo()
    if stream:  # the 200 is out: one error event in OpenAI's shape, then [DONE], as vLLM ends a failed stream
        *_, error, done = [line for line in r.text.splitlines() if line]
        assert '"code":"internal_error"' in error and "engine step failed" in error and done == "data: [DONE]"
    else:
        assert r.status_code == 500
    # the failed request shows in /metrics as an error and as a finished request, like any other
    assert (_metric(server, errors), _metric(server, failed)) == (before[0] + 1, before[1] + 1)
    assert http.post("/completions", json=COMP).status_code == 200  # still serving


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_failure_mid_way_counts_the_tokens_computed(server, http, monkeypatch, stream):
    # the prompt and three tokens were computed before the 4th step failed: counted as a hang-up's
    # are (they were not: lab_prompt_tokens and lab_generation_tokens missed every failed request)
    prompt_tokens = http.post("/completions", json=COMP).json()["usage"]["prompt_tokens"]
    before = _metric(server, "lab_prompt_tokens_total"), _metric(server, "lab_generation_tokens_total")
    engine, calls = server.engine.engine, []
    real_step = engine.step

    def fails_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("a bug in a step")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "step", fails_on_the_fourth)
    r = http.post("/completions", json={**COMP, "stream": stream})
    monkeypatch.undo()
    assert (r.status_code == 200) if stream else (r.status_code == 500)
    after = _metric(server, "lab_prompt_tokens_total"), _metric(server, "lab_generation_tokens_total")
    assert (after[0] - before[0], after[1] - before[1]) == (prompt_tokens, 3)


def test_a_non_streamed_hang_up_is_counted_as_client_gone(server, http, monkeypatch):
    gone = 'lab_requests_total{finish_reason="client_gone"}'
    before = _metric(server, gone)
    engine = server.engine.engine
    real_step = engine.step

    def slow_step(*args, **kwargs):  # 50 ms a step: the request still runs when its client leaves
        time.sleep(0.05)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "step", slow_step)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/completions", json={**COMP, "max_tokens": 100}, timeout=httpx.Timeout(30, read=0.3))
    assert wait_until(lambda: _metric(server, gone) == before + 1, timeout_s=10)


def test_admin_faults_names_an_unknown_setting(server, http):
    # before: FaultConfig's TypeError, "FaultConfig.__init__() got an unexpected keyword argument ...",
    # under param "faults", with no word of the settings there are
    r = http.put(server.base + "/admin/faults", json={"latency_s": 0.1, "cut_chunks": 2})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "cut_chunks", r.text
    assert err["message"].startswith("cut_chunks: not a fault setting; allowed: error_rates, latency_s, cut_rate")
    r = http.put(server.base + "/admin/faults", content=b"{latency_s: 1}")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("faults: the body is not valid JSON")
    assert server.faults is None


def test_a_stalled_stream_ends_when_the_client_leaves(server, http):
    before = _finished_count(server)
    with pytest.raises(httpx.ReadTimeout):
        with http.stream("POST", "/completions", json={**COMP, "max_tokens": 200, "stream": True},
                         headers={"x-lab-fault": "stall:60"}, timeout=httpx.Timeout(30, read=0.3)) as r:
            for _ in r.iter_lines():
                pass
    # the handler stops at once, not after the 60 s stall: counted once (client_gone, or length if the
    # engine finished the 200 tokens before the client left), its blocks freed
    assert wait_until(lambda: _finished_count(server) == before + 1, timeout_s=5)
    assert wait_until(lambda: tiny_llm().engine.block_manager.num_used == 0, 3.0)


def test_a_stream_left_after_the_engine_finished_counts_every_token_and_its_own_end(server, http):
    # before: the counter took the tokens this stream had sent (2 of 50) and called the request
    # client_gone, though the engine had generated all 50 and ended it with length
    names = ("lab_generation_tokens_total", 'lab_requests_total{finish_reason="length"}')
    before = [_metric(server, n) for n in names]
    with http.stream("POST", "/completions", json={**COMP, "max_tokens": 50, "stream": True},
                     headers={"x-lab-fault": "stall:1"}) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator closes the response at once
        next(lines)  # the first chunk; the stream then stalls while the engine runs on
        assert wait_until(lambda: not tiny_llm().engine.has_unfinished(), timeout_s=10)
    # hung up: after its stall the handler finds the client gone and the finished request's events unread
    assert wait_until(lambda: _metric(server, names[1]) == before[1] + 1, timeout_s=10)
    assert _metric(server, names[0]) - before[0] == 50
