"""The engine's public API under misuse and interleaving: LLM calls that share one engine each get
every event of their own requests; numpy and Fraction sampling values work; a failing step leaves no
request behind; AsyncEngine ids, restarts and a dead thread; bad input names its field."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest

from lab.engine import LLM, SamplingParams
from lab.engine.async_engine import AsyncEngine
from lab.workload import RequestSpec, Workload

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def make_llm(folder, **kw) -> LLM:
    return LLM(folder, device="cpu", dtype="float32", **kw)


def by_request(events) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in events:
        out.setdefault(e.request_id, []).append(e)
    return out


def assert_complete(events, expected_text: str, n_tokens: int) -> None:
    """One request's events: every token, its text, and exactly one finished event, the last."""
    assert [e.finished for e in events] == [False] * (n_tokens - 1) + [True]
    assert "".join(e.text for e in events) == expected_text
    assert events[-1].finish_reason == "length"


def round_robin(*streams) -> list:
    """One event from each open stream in turn (zip would drop the event it took before another ended)."""
    out, open_ = [], list(streams)
    while open_:
        for it in list(open_):
            try:
                out.append(next(it))
            except StopIteration:
                open_.remove(it)
    return out


def assert_idle(llm: LLM) -> None:
    engine = llm.engine
    while engine.has_unfinished():  # an abort not yet reported; no request left to run
        assert not engine.scheduler.running and not engine.scheduler.waiting
        engine.step()
    assert engine.block_manager.num_used == 0


# -- 1. calls sharing one engine ------------------------------------------------------------------

def test_two_interleaved_streams_each_get_every_token_and_one_finish(tiny_llama):
    llm = make_llm(tiny_llama)
    short = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    ref_a, ref_b = llm.generate(["abc"], GREEDY, use_tqdm=False)[0], llm.generate(["xyz"], short, use_tqdm=False)[0]
    # each next() may step the engine; the other stream's events must wait for it
    got = by_request(round_robin(llm.stream("abc", GREEDY), llm.stream("xyz", short)))
    got_a, got_b = got.values()
    assert_complete(got_a, ref_a.text, 8)
    assert_complete(got_b, ref_b.text, 5)
    assert_idle(llm)


def test_generate_inside_an_open_stream_takes_none_of_its_events(tiny_llama):
    llm = make_llm(tiny_llama)
    ref = llm.generate(["abc", "hello"], GREEDY, use_tqdm=False)
    stream = llm.stream(["abc"], GREEDY)
    events = [next(stream)]
    out = llm.generate(["hello"], GREEDY, use_tqdm=False)  # runs the stream's request along
    events += list(stream)
    assert_complete(events, ref[0].text, 8)
    assert out[0].text == ref[1].text and out[0].finish_reason == "length"
    assert_idle(llm)


def test_two_prompt_streams_interleaved_keep_each_requests_events(tiny_llama):
    llm = make_llm(tiny_llama)
    prompts = ["abc", "hello there", "xy"]
    ref = llm.generate(prompts, GREEDY, use_tqdm=False)
    per_request = list(by_request(round_robin(llm.stream(prompts[:2], GREEDY), llm.stream(prompts[2:], GREEDY))).values())
    assert len(per_request) == 3
    for evs, r in zip(sorted(per_request, key=lambda evs: evs[0].request_id), sorted(ref, key=lambda r: r.request_id), strict=True):
        assert_complete(evs, r.text, 8)
    assert_idle(llm)


def test_run_workload_inside_an_open_stream_takes_none_of_its_events(tiny_llama):
    llm = make_llm(tiny_llama)
    ref = llm.generate(["abc"], GREEDY, use_tqdm=False)[0]
    stream = llm.stream(["abc"], GREEDY)
    events = [next(stream)]
    result = llm.run_workload(Workload([RequestSpec("w", prompt_len=4, output_len=3)]), progress=False)
    events += list(stream)
    assert_complete(events, ref.text, 8)
    assert [r.output_tokens for r in result.requests] == [3]
    assert_idle(llm)


def test_a_request_queued_by_hand_runs_along_and_its_events_reach_no_call(tiny_llama):
    # the documented behaviour: its Sequence holds what it produced; no generate or stream reports it
    llm = make_llm(tiny_llama)
    ref = llm.generate(["abc"], GREEDY, use_tqdm=False)[0]
    hand = llm.engine.add_request([7, 8, 9], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True), "hand")
    events = list(llm.stream(["abc"], GREEDY))
    assert {e.request_id for e in events} == {events[0].request_id} != "hand"
    assert_complete(events, ref.text, 8)
    # it ran in those steps (and was not aborted: it is not the stream's), and is still there to finish
    assert len(hand.output_token_ids) == 8 and not hand.is_finished
    while llm.engine.has_unfinished():
        llm.engine.step()
    assert hand.finish_reason == "length" and len(hand.output_token_ids) == 50


# -- 2. AsyncEngine request ids ---------------------------------------------------------------------

async def test_async_add_request_without_an_id_streams_under_the_engines_id(tiny_llama):
    llm = make_llm(tiny_llama)
    aengine = AsyncEngine(llm.engine).start()
    try:
        stream = await aengine.add_request("abc", SamplingParams(max_tokens=5, temperature=0), None)
        assert isinstance(stream.request_id, str)
        # before: the stream was kept under None, heard nothing, and the consumer waited forever
        events = await asyncio.wait_for(_collect(stream), 10)
        assert [e.num_output_tokens for e in events] == [1, 2, 3, 4, 5] and events[-1].finish_reason == "length"
        assert stream.request_id not in llm.engine.seqs  # released once finished
    finally:
        await asyncio.to_thread(aengine.stop)
    assert llm.engine.block_manager.num_used == 0


async def test_async_add_request_with_a_non_string_id_raises_in_the_caller(tiny_llama):
    llm = make_llm(tiny_llama)
    aengine = AsyncEngine(llm.engine).start()
    try:
        for bad in (["a"], 5):  # a list failed on the engine thread before any answer: the caller hung
            with pytest.raises(ValueError, match="request_id: must be a string or None, got"):
                await asyncio.wait_for(aengine.add_request("abc", GREEDY, bad), 5)
        with pytest.raises(ValueError, match="request_id: must be a string, got list"):
            aengine.abort(["a"])
        assert not llm.engine.seqs
    finally:
        await asyncio.to_thread(aengine.stop)


async def _collect(stream):
    return [e async for e in stream]


# -- 3, 4. numpy and Fraction sampling values -------------------------------------------------------

@pytest.mark.parametrize("max_tokens", [np.uint8(254), np.int64(2**63 - 1)])
def test_a_numpy_max_tokens_too_large_for_the_cache_is_refused(tiny_llama, max_tokens):
    # before: prompt + max_tokens overflowed in numpy, the check passed, and the request was never admitted
    engine = make_llm(tiny_llama, num_blocks=2, block_size=4).engine
    with pytest.raises(ValueError, match="max_tokens: prompt . max_tokens = .* cannot fit in the KV cache"):
        engine.add_request([1, 2, 3], SamplingParams(max_tokens=max_tokens))
    assert not engine.has_unfinished()


def test_sampling_params_stores_plain_python_numbers():
    p = SamplingParams(max_tokens=np.int64(3), temperature=Fraction(1, 2), top_p=np.float32(0.5),
                       top_k=np.int32(4), seed=np.uint8(7), stop_token_ids=[np.int64(2)])
    values = (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop_token_ids[0])
    assert values == (3, 0.5, 0.5, 4, 7, 2)
    assert [type(v) for v in values] == [int, float, float, int, int, int]
    with pytest.raises(ValueError, match="temperature: must be a finite number >= 0"):
        SamplingParams(temperature=10**400)  # was an OverflowError from math.isfinite


def test_fraction_temperature_and_top_p_sample_like_floats(tiny_llama):
    llm = make_llm(tiny_llama)
    as_float = SamplingParams(max_tokens=6, temperature=0.5, top_p=0.5, seed=3, ignore_eos=True)
    expected = llm.generate([[1, 2, 3]], as_float, use_tqdm=False)[0].token_ids
    # before: the sampler's step raised TypeError, and the request stayed running for every later call
    as_fraction = SamplingParams(max_tokens=6, temperature=Fraction(1, 2), top_p=Fraction(1, 2), seed=3, ignore_eos=True)
    assert llm.generate([[1, 2, 3]], as_fraction, use_tqdm=False)[0].token_ids == expected
    assert_idle(llm)


# -- 5. a step that fails ---------------------------------------------------------------------------

def _fail_on_call(engine, n: int, exc: BaseException):
    execute, calls = engine.runner.execute, []

    def failing(batch):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return execute(batch)

    engine.runner.execute = failing


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("out of memory")])
def test_generate_interrupted_in_a_step_leaves_no_request_behind(tiny_llama, exc):
    llm = make_llm(tiny_llama)
    engine = llm.engine
    _fail_on_call(engine, 2, exc)
    with pytest.raises(type(exc)):
        llm.generate([[1, 2, 3]] * 4, SamplingParams(max_tokens=100, temperature=0, ignore_eos=True), use_tqdm=False)
    # before: all four stayed running with their blocks, and the next generate ran them to the end first
    assert not engine.scheduler.running and not engine.scheduler.waiting and engine.block_manager.num_used == 0
    steps = engine.num_steps
    out = llm.generate([[4, 5]], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True), use_tqdm=False)
    assert out[0].finish_reason == "length" and engine.num_steps - steps == 2
    assert_idle(llm)


def test_a_failing_generate_aborts_only_its_own_requests(tiny_llama):
    llm = make_llm(tiny_llama)
    ref = llm.generate(["abc"], GREEDY, use_tqdm=False)[0]
    stream = llm.stream(["abc"], GREEDY)
    events = [next(stream)]
    _fail_on_call(llm.engine, 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        llm.generate(["hello"], GREEDY, use_tqdm=False)
    events += list(stream)  # the open stream's request survives the other call's failure
    assert_complete(events, ref.text, 8)
    [failed] = [s for s in llm.engine.seqs.values() if s.prompt == "hello"]
    assert failed.finish_reason == "abort" and not failed.output_token_ids  # not run on inside the stream
    assert_idle(llm)


def test_run_workload_interrupted_in_a_step_leaves_no_request_behind(tiny_llama):
    llm = make_llm(tiny_llama)
    engine = llm.engine
    _fail_on_call(engine, 3, KeyboardInterrupt())
    wl = Workload([RequestSpec(f"r{i}", prompt_len=5, output_len=50) for i in range(3)])
    with pytest.raises(KeyboardInterrupt):
        llm.run_workload(wl, progress=False)
    assert not engine.scheduler.running and engine.block_manager.num_used == 0
    assert all(engine.seqs[f"r{i}"].finish_reason == "abort" for i in range(3))
    assert_idle(llm)


# -- 6. AsyncEngine lifecycle ---------------------------------------------------------------------

def test_an_async_engine_refuses_a_second_start_and_frees_the_engine(tiny_llama):
    llm = make_llm(tiny_llama)
    aengine = AsyncEngine(llm.engine).start()
    aengine.stop()
    # before: a thread that exited at once, and the engine kept pointing at it
    with pytest.raises(RuntimeError, match=r"start: this AsyncEngine was already started or stopped; .*"
                                           r"make a new AsyncEngine\(engine\)"):
        aengine.start()
    assert llm.engine.driver is None
    assert llm.generate(["abc"], GREEDY, use_tqdm=False)[0].finish_reason == "length"
    never_started = AsyncEngine(llm.engine)
    never_started.stop()
    with pytest.raises(RuntimeError, match="already started or stopped"):
        never_started.start()
    AsyncEngine(llm.engine).start().stop()  # a new one serves


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_an_engine_thread_that_dies_gives_the_engine_back(tiny_llama):
    llm = make_llm(tiny_llama)
    aengine = AsyncEngine(llm.engine)

    def dies():
        raise SystemExit("the engine thread ends")

    aengine._serve = dies
    aengine.start()
    aengine._thread.join(5)
    assert not aengine._thread.is_alive()
    # before: engine.driver still named the dead thread, and generate said a server drove the engine
    assert llm.engine.driver is None
    assert llm.generate(["abc"], GREEDY, use_tqdm=False)[0].finish_reason == "length"


# -- 7. minor ----------------------------------------------------------------------------------------

def test_a_sampling_params_field_set_after_construction_is_checked_again(tiny_llama):
    llm = make_llm(tiny_llama)
    free = llm.generate(["abc"], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True), use_tqdm=False)[0]
    stop = free.text[10:12]
    expected = llm.generate(["abc"], SamplingParams(max_tokens=30, temperature=0, stop=[stop]), use_tqdm=False)[0]
    assert expected.finish_reason == "stop"
    sp = SamplingParams(max_tokens=30, temperature=0)
    sp.stop = stop  # a string: it was matched letter by letter
    assert llm.generate(["abc"], sp, use_tqdm=False)[0].text == expected.text
    sp.max_tokens = 0
    with pytest.raises(ValueError, match="max_tokens: must be an integer >= 1, got 0"):
        llm.generate(["abc", "xyz"], [GREEDY, sp], use_tqdm=False)
    assert not llm.engine.has_unfinished()  # checked before any prompt was queued, as any bad field is
    sp.max_tokens = 30
    sp.temperature = -1.0
    with pytest.raises(ValueError, match="temperature: must be a finite number >= 0"):
        llm.engine.add_request("abc", sp)
    assert_idle(llm)


def test_a_request_keeps_its_params_when_the_caller_changes_them(tiny_llama):
    engine = make_llm(tiny_llama).engine
    sp = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    seq = engine.add_request([1, 2, 3], sp)
    sp.max_tokens = 1  # the request in flight was made with 4
    while engine.has_unfinished():
        engine.step()
    assert len(seq.output_token_ids) == 4


def test_a_stop_string_outside_a_character_vocabulary_is_refused(tiny_llama):
    llm = make_llm(tiny_llama)
    with pytest.raises(ValueError, match="stop: character.s. 'é' are not in this model's vocabulary, so the stop "
                                         "string can never match; allowed: "):
        llm.generate(["abc"], SamplingParams(max_tokens=4, stop=["ok", "été"]), use_tqdm=False)
    assert not llm.engine.has_unfinished()


def test_add_request_refuses_params_of_the_wrong_type_even_when_falsy(tiny_llama):
    engine = make_llm(tiny_llama).engine
    for bad in ({}, [], 0):  # `params or SamplingParams()` turned these into the defaults
        with pytest.raises(ValueError, match="params: must be a SamplingParams, got"):
            engine.add_request("abc", bad)
    assert not engine.has_unfinished()
    assert engine.add_request("abc").params.max_tokens == SamplingParams().max_tokens  # None: the defaults


def test_abort_takes_one_string_id(tiny_llama):
    engine = make_llm(tiny_llama).engine
    seq = engine.add_request([1, 2, 3], GREEDY, "a")
    for bad in (("a",), ["a"], None):  # a tuple was looked up as one id and "already ended"; a list raised TypeError
        with pytest.raises(ValueError, match="request_id: must be a string .one request per call., got"):
            engine.abort(bad)
    assert not seq.is_finished and engine.abort("a")


def test_a_request_spec_agrees_with_sampling_params(tiny_llama):
    spec = RequestSpec("n", prompt_len=4, output_len=2, ignore_eos=np.True_, seed=np.int64(5))
    assert (spec.ignore_eos, spec.seed) == (True, 5) and type(spec.ignore_eos) is bool and type(spec.seed) is int
    # before: the workload validated, then failed to run ("ignore_eos: must be true or false, got np.True_")
    result = make_llm(tiny_llama).run_workload(Workload([spec]), progress=False)
    assert [r.output_tokens for r in result.requests] == [2]
    for seed in (2**63, -(2**63) - 1):  # SamplingParams refuses these: a workload holding one could not run
        with pytest.raises(ValueError, match=r"request n: seed must be in \[-2\*\*63, 2\*\*63 - 1\], got"):
            RequestSpec("n", prompt_len=4, seed=seed)


def test_vllm_prompt_dicts_are_taken_as_vllm_takes_them(tiny_llama):
    llm = make_llm(tiny_llama)
    text = llm.generate(["Hello"], GREEDY, use_tqdm=False)[0]
    as_dicts = llm.generate([{"prompt": "Hello"}, {"prompt_token_ids": text.prompt_token_ids}], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in as_dicts] == [text.token_ids] * 2
    assert [o.prompt for o in as_dicts] == ["Hello", None]
    assert llm.generate({"prompt": "Hello"}, GREEDY, use_tqdm=False)[0].token_ids == text.token_ids  # one, bare
    assert "".join(e.text for e in llm.stream({"prompt": "Hello"}, GREEDY)) == text.text


@pytest.mark.parametrize(("prompt", "message"), [
    ({}, "one key, 'prompt' (text) or 'prompt_token_ids'"),
    ({"prompt": "Hi", "multi_modal_data": {}}, "got keys ['multi_modal_data', 'prompt']"),
    ({"prompt_token_ids": "Hi"}, "'prompt_token_ids' must be a list of ints, got str"),  # not taken as text
    ({"prompt": [1, 2]}, "'prompt' must be text (str), got list"),
    ({"prompt_token_ids": []}, "prompt: must not be empty"),
])
def test_a_bad_prompt_dict_is_refused_naming_what_is_allowed(tiny_llama, prompt, message):
    with pytest.raises(ValueError, match="^prompt: ") as exc:
        make_llm(tiny_llama).generate([prompt], GREEDY, use_tqdm=False)
    assert message in str(exc.value)


def test_length_only_prompts_hold_no_end_of_sequence_token(tiny_llama, monkeypatch):
    """Random prompt tokens used to shift an EOS id by one, onto the next id, itself an EOS where two
    are neighbours (Llama 3's 128008 and 128009): half of such prompts held an end-of-turn token."""
    from dataclasses import replace

    llm = make_llm(tiny_llama)
    monkeypatch.setattr(llm.engine, "model_config", replace(llm.engine.model_config, eos_token_ids=(5, 6)))
    seen: list[list[int]] = []
    real_check = llm.engine.check_request

    def recording_check(prompt, params):
        seen.append(list(prompt))
        return real_check(prompt, params)

    monkeypatch.setattr(llm.engine, "check_request", recording_check)
    specs = [RequestSpec(f"r{i}", prompt_len=48, output_len=1) for i in range(40)]
    result = llm.run_workload(Workload(specs), progress=False)
    assert all(r.ok for r in result.requests) and len(seen) == 40
    assert all(len(ids) == 48 for ids in seen)
    assert not any({5, 6} & set(ids) for ids in seen)
    assert len({t for ids in seen for t in ids}) > 20  # still spread over the vocabulary


def test_run_workload_names_output_len_in_a_requests_refusal(tiny_llama):
    """A workload sets output_len; the refusal spoke of max_tokens, which the workload has nowhere."""
    llm = make_llm(tiny_llama, num_blocks=2, block_size=4)
    spec = RequestSpec("long", prompt_len=3, output_len=20)
    with pytest.raises(ValueError, match=r"^request long: output_len: prompt \+ output_len = 23 tokens cannot fit "
                                         r".*; lower output_len or give the cache more blocks$"):
        llm.run_workload(Workload([spec]), progress=False)
    assert not llm.engine.has_unfinished()
