"""The bundled model's chat turns end at the blank line that ends a speech, as a chat model's end at
its end-of-turn token: the model has none, and its answers used to run on into other speakers' lines
until max_tokens. `ignore_eos` turns the stop off, as it does an end-of-turn token; plain completions
never get it."""

from __future__ import annotations

import json

import httpx
import pytest

from lab.engine import LLM, SamplingParams
from lab.engine.chat import SPEAKER_LINES_TEMPLATE, turn_end
from lab.server import serve

MESSAGES = [{"role": "user", "content": "Who goes there?"}]
BODY = {"model": "tiny-shakespeare", "messages": MESSAGES, "max_tokens": 200, "temperature": 0.8, "seed": 0}


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu")


@pytest.fixture(scope="module")
def server():
    with serve(llm=LLM(device="cpu")) as s:  # an engine of its own: a server drives it from its thread
        yield s


@pytest.fixture(scope="module")
def free_text(llm) -> str:
    """What the model writes after the rendered chat prompt when nothing stops it."""
    prompt = llm.tokenizer.apply_chat_template(MESSAGES)
    params = SamplingParams(max_tokens=200, temperature=0.8, seed=0)
    text = llm.generate([prompt], params, use_tqdm=False)[0].text
    assert "\n\n" in text  # the seed was picked for a speech that ends inside max_tokens
    return text


def post(server, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_bundled_template_ends_a_turn_at_a_blank_line(llm):
    assert llm.tokenizer.chat_template == SPEAKER_LINES_TEMPLATE and turn_end(SPEAKER_LINES_TEMPLATE) == "\n\n"
    assert turn_end("{{ messages }}") is None  # other templates end turns with their own token


def test_a_chat_answer_is_one_speech(server, free_text):
    speech = free_text.split("\n\n")[0]
    r = post(server, "/chat/completions", BODY)
    assert r["choices"][0]["message"]["content"] == speech
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == len(speech) + 2  # one token a character; the blank line counted


def test_a_streamed_chat_answer_is_the_same_speech(server, free_text):
    text, reasons = "", []
    with httpx.stream("POST", f"{server.url}/chat/completions", json=BODY | {"stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text += choice["delta"].get("content") or ""
                reasons.append(choice["finish_reason"])
    assert text == free_text.split("\n\n")[0] and reasons[-1] == "stop"


@pytest.mark.parametrize("stop", ["zzz", ["zzz"], None, []])
def test_the_request_stops_do_not_replace_it(server, free_text, stop):
    r = post(server, "/chat/completions", BODY | {"stop": stop})  # "zzz" never comes
    assert r["choices"][0]["message"]["content"] == free_text.split("\n\n")[0]
    assert r["choices"][0]["finish_reason"] == "stop"


def test_the_request_stops_are_kept_beside_it(server, free_text):
    word = free_text.split()[1]  # a word inside the first speech
    r = post(server, "/chat/completions", BODY | {"stop": [word]})
    assert r["choices"][0]["message"]["content"] == free_text.split(word)[0]


def test_a_model_with_its_own_template_gets_no_turn_end(monkeypatch):
    """Only the speaker-line template of a model without an end-of-turn token: a chat model stops at its
    own token, and a blank line in its answer is text."""
    from helpers_server import tiny_llm

    seen = []
    llm = tiny_llm("aux")
    check = llm.engine.check_request
    monkeypatch.setattr(llm.engine, "check_request", lambda ids, params: seen.append(params.stop) or check(ids, params))
    with serve(llm=llm) as s:
        for stop in (None, "x"):
            post(s, "/chat/completions", {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": 2, "stop": stop})
    assert llm.tokenizer.chat_template != SPEAKER_LINES_TEMPLATE
    assert {tuple(stop) for stop in seen} == {(), ("x",)}  # each request checked twice: app, then engine


def test_ignore_eos_runs_on_to_max_tokens(server, free_text):
    r = post(server, "/chat/completions", BODY | {"ignore_eos": True})
    assert r["choices"][0]["message"]["content"] == free_text
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 200


def test_plain_completions_are_not_cut(server, llm, free_text):
    prompt = llm.tokenizer.apply_chat_template(MESSAGES)
    r = post(server, "/completions", {k: v for k, v in BODY.items() if k != "messages"} | {"prompt": prompt})
    assert r["choices"][0]["text"] == free_text and r["choices"][0]["finish_reason"] == "length"
