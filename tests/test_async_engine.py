"""AsyncEngine: tokens reach asyncio consumers as steps produce them; aborts free blocks; bad input
raises in the caller; an idle engine thread blocks instead of spinning."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
from helpers_server import tiny_llm, wait_until

from lab.engine import SamplingParams
from lab.engine.async_engine import AsyncEngine


@pytest.fixture
def aengine():
    engine = AsyncEngine(tiny_llm().engine, trace_limit=8).start()
    yield engine
    engine.stop()
    assert tiny_llm().engine.block_manager.num_used == 0


async def test_tokens_stream_and_match_generate(aengine):
    params = SamplingParams(max_tokens=12, temperature=0.0)
    stream = await aengine.add_request("To be or", params, "a-1")
    events = [ev async for ev in stream]
    assert [ev.num_output_tokens for ev in events] == list(range(1, 13))
    assert events[-1].finished and events[-1].finish_reason == "length"
    assert events[-1].metrics is not None and events[-1].metrics.output_tokens == 12
    assert "a-1" not in aengine.engine.seqs  # released: a long-running server does not grow
    aengine.stop()
    expected = tiny_llm().generate("To be or", params, use_tqdm=False)[0].text
    assert "".join(ev.text for ev in events) == expected


async def test_bad_input_raises_in_caller(aengine):
    with pytest.raises(ValueError, match="prompt"):
        await aengine.add_request([], SamplingParams(max_tokens=4), "bad-1")
    with pytest.raises(ValueError, match="prompt"):
        await aengine.add_request("x" * 300, SamplingParams(max_tokens=4), "bad-2")
    stream = await aengine.add_request("fine", SamplingParams(max_tokens=2), "ok-1")
    assert [ev async for ev in stream][-1].finish_reason == "length"


async def test_abort_frees_blocks_before_next_step(aengine):
    streams = [await aengine.add_request(f"request {i}", SamplingParams(max_tokens=200, ignore_eos=True),
                                         f"ab-{i}") for i in range(8)]
    for s in streams:
        await s.__anext__()
    assert aengine.stats.kv_blocks_used > 0
    for s in streams:
        aengine.abort(s.request_id)
    reasons = []
    for s in streams:
        reasons.append([ev async for ev in s][-1].finish_reason)
    assert reasons == ["abort"] * 8
    assert aengine.engine.block_manager.num_used == 0


def _waiting_without_timeout(thread: threading.Thread) -> bool:
    """`thread` is inside threading.Condition.wait() with no timeout, called from the engine's serve
    loop: asleep until another thread notifies it, neither spinning nor polling on a timer."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None and frame.f_code is not threading.Condition.wait.__code__:
        frame = frame.f_back
    return (frame is not None and frame.f_locals.get("timeout") is None
            and frame.f_back is not None and frame.f_back.f_code.co_name == "_serve")


async def test_idle_thread_blocks_and_trace_is_trimmed(aengine):
    stream = await aengine.add_request("trace me", SamplingParams(max_tokens=30), "tr-1")
    _ = [ev async for ev in stream]
    assert len(aengine.engine.trace) <= 2 * aengine.trace_limit
    steps = aengine.stats.num_steps
    # nothing to do: the engine thread goes to sleep on its condition, burning no CPU on polling
    assert await asyncio.to_thread(wait_until, lambda: _waiting_without_timeout(aengine._thread), 30)
    assert aengine.stats.num_steps == steps  # and took no step
    # a new request wakes it: the wait is a real wait for work, not a stuck thread
    stream = await aengine.add_request("wake", SamplingParams(max_tokens=2), "tr-2")
    assert [ev.num_output_tokens async for ev in stream] == [1, 2] and aengine.stats.num_steps > steps


async def test_stop_ends_open_streams():
    engine = AsyncEngine(tiny_llm().engine).start()
    stream = await engine.add_request("long", SamplingParams(max_tokens=200, ignore_eos=True), "st-1")
    await stream.__anext__()
    await asyncio.to_thread(engine.stop)
    last = [ev async for ev in stream][-1]
    assert last.finished and last.finish_reason == "abort" and last.error
    assert tiny_llm().engine.block_manager.num_used == 0
    with pytest.raises(RuntimeError, match="not running"):
        await engine.add_request("late", SamplingParams(max_tokens=2), "st-2")


def test_one_engine_thread_per_engine(aengine):
    with pytest.raises(RuntimeError, match="already drives it"):
        AsyncEngine(aengine.engine).start()


async def test_the_llm_of_a_running_engine_thread_refuses_direct_calls():
    # LLM.generate beside a serve() of the same LLM stepped the engine from two threads at once:
    # generate raised IndexError and the server's steps failed ("engine step failed")
    llm = tiny_llm("driven")
    aengine = AsyncEngine(llm.engine).start()
    stream = await aengine.add_request("To be", SamplingParams(max_tokens=30, ignore_eos=True), "served")
    calls = [("add_request", lambda: llm.generate(["Hi"], SamplingParams(max_tokens=4), use_tqdm=False)),
             ("add_request", lambda: list(llm.stream(["Hi"], SamplingParams(max_tokens=4)))),
             ("step", llm.engine.step), ("abort", lambda: llm.engine.abort("served"))]
    for method, call in calls:
        with pytest.raises(RuntimeError, match=f"{method}: a server .AsyncEngine. drives this engine from its own"):
            await asyncio.to_thread(call)
    events = [ev async for ev in stream]
    assert events[-1].finish_reason == "length" and events[-1].num_output_tokens == 30  # untouched
    assert set(llm.engine.seqs) <= {"served"}  # nothing was queued behind the server's back
    await asyncio.to_thread(aengine.stop)
    assert llm.generate(["Hi"], SamplingParams(max_tokens=4), use_tqdm=False)[0].finish_reason == "length"
    assert llm.engine.block_manager.num_used == 0 and not llm.engine.has_unfinished()


async def test_an_add_queued_when_the_engine_stops_fails_at_once():
    aengine = AsyncEngine(tiny_llm("stop").engine).start()
    step = aengine._step

    def slow_step():  # widen the window: the add is queued while a step runs
        time.sleep(0.3)
        return step()

    aengine._step = slow_step
    first = await aengine.add_request([1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True), "first")
    late = asyncio.ensure_future(aengine.add_request([4, 5], SamplingParams(max_tokens=5), "late"))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(aengine.stop)
    with pytest.raises(RuntimeError, match="engine is not running"):
        await asyncio.wait_for(late, 2)  # before: it waited forever (a server's shutdown timeout)
    assert [e async for e in first][-1].finish_reason == "abort"
    with pytest.raises(RuntimeError, match="engine is not running"):
        await aengine.add_request([1], SamplingParams(max_tokens=1), "after")


async def test_an_id_whose_abort_is_unreported_is_refused_not_orphaned():
    aengine = AsyncEngine(tiny_llm("reuse").engine).start()
    step = aengine._step

    def slow_step():  # the abort and the new add are then drained together, before the next step
        time.sleep(0.2)
        return step()

    aengine._step = slow_step
    try:
        old = await aengine.add_request([1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True), "x")
        await old.__anext__()
        aengine.abort("x")
        # the engine takes the id (its request is finished), and the new stream replaced the old one,
        # whose consumer then waited forever for its end
        with pytest.raises(ValueError, match="request_id: 'x' is already in flight"):
            await aengine.add_request([4, 5], SamplingParams(max_tokens=2), "x")
        last = await asyncio.wait_for(_last(old), 5)
        assert last.finished and last.finish_reason == "abort"
        again = await aengine.add_request([4, 5], SamplingParams(max_tokens=2), "x")  # reported: free again
        assert (await asyncio.wait_for(_last(again), 5)).finish_reason == "length"
    finally:
        await asyncio.to_thread(aengine.stop)
    assert aengine.engine.block_manager.num_used == 0


async def _last(stream):
    return [ev async for ev in stream][-1]


async def test_an_add_cancelled_while_queued_leaves_the_engine_serving():
    aengine = AsyncEngine(tiny_llm("cancel").engine).start()
    in_step, gate = threading.Event(), threading.Event()
    step = aengine._step

    def gated_step():  # holds the engine thread inside a step, so the next add stays queued
        in_step.set()
        gate.wait(5)
        return step()

    aengine._step = gated_step
    try:
        first = await aengine.add_request([1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True), "first")
        assert await asyncio.to_thread(in_step.wait, 5)
        # the same id as the running request: a retry that gave up, say
        late = asyncio.ensure_future(aengine.add_request([4, 5], SamplingParams(max_tokens=2), "first"))
        await asyncio.sleep(0)  # it runs up to its wait for the engine thread
        late.cancel()  # asyncio.wait_for's timeout, a cancelled handler: the future it waits on is cancelled
        with pytest.raises(asyncio.CancelledError):
            await late
        gate.set()
        # before: the engine thread died on InvalidStateError (set_result on the cancelled future) when it
        # ran that add, and every stream, this one too, waited forever; and later the cancel aborted by id,
        # which ended the running "first" that the cancelled add never made
        assert (await asyncio.wait_for(_last(first), 5)).finish_reason == "length"
        assert not aengine.engine.has_unfinished()  # the late add, its caller gone first, was never admitted
        again = await asyncio.wait_for(aengine.add_request([4, 5], SamplingParams(max_tokens=2), "again"), 5)
        assert (await asyncio.wait_for(_last(again), 5)).finish_reason == "length"
    finally:
        gate.set()
        await asyncio.to_thread(aengine.stop)
    assert aengine.engine.block_manager.num_used == 0


async def test_a_failing_command_does_not_end_the_engine_thread():
    aengine = AsyncEngine(tiny_llm("command").engine).start()
    engine_abort = aengine.engine.abort

    def abort(request_id):  # a bug in one abort
        if request_id == "bad":
            raise RuntimeError("a bug in abort")
        return engine_abort(request_id)

    aengine.engine.abort = abort
    try:
        other = await aengine.add_request([1, 2, 3], SamplingParams(max_tokens=40, ignore_eos=True), "other")
        bad = await aengine.add_request([4, 5], SamplingParams(max_tokens=40, ignore_eos=True), "bad")
        await other.__anext__()
        aengine.abort("bad")
        # before: the exception ended the engine thread, and both streams waited forever
        assert (await asyncio.wait_for(_last(other), 5)).finish_reason == "length"
        assert (await asyncio.wait_for(_last(bad), 5)).finish_reason == "length"
        assert aengine.is_running
    finally:
        del aengine.engine.abort
        await asyncio.to_thread(aengine.stop)
    assert aengine.engine.block_manager.num_used == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
async def test_an_engine_thread_that_dies_ends_every_stream_and_refuses_new_requests():
    aengine = AsyncEngine(tiny_llm("dies").engine).start()
    step, calls = aengine._step, []

    def dying_step():
        calls.append(1)
        if len(calls) == 2:  # not an Exception, so the loop's handler does not catch it
            raise SystemExit("the engine thread ends")
        return step()

    aengine._step = dying_step
    try:
        stream = await aengine.add_request([1, 2, 3], SamplingParams(max_tokens=40, ignore_eos=True), "d-1")
        # before: the stream waited forever for its next token
        last = await asyncio.wait_for(_last(stream), 5)
        assert last.finished and last.finish_reason == "error" and "engine thread died" in last.error
        assert not aengine.is_running
        with pytest.raises(RuntimeError, match="engine is not running"):
            await asyncio.wait_for(aengine.add_request([1], SamplingParams(max_tokens=1), "d-2"), 5)
    finally:
        await asyncio.to_thread(aengine.stop)
    assert aengine.engine.block_manager.num_used == 0


def test_a_request_whose_event_loop_closed_is_aborted():
    # a notebook's asyncio.run() that returned mid-stream without an abort: nobody can read the tokens
    aengine = AsyncEngine(tiny_llm("closed").engine).start()
    step, calls, gate = aengine._step, [], threading.Event()
    release, reasons = aengine.engine.release, {}

    def gated_step():  # the first token, then wait for the loop to be closed
        calls.append(1)
        if len(calls) > 1:
            gate.wait(5)
        return step()

    def recording_release(request_id):
        reasons[request_id] = aengine.engine.seqs[request_id].finish_reason
        release(request_id)

    aengine._step, aengine.engine.release = gated_step, recording_release
    loop = asyncio.new_event_loop()
    try:
        params = SamplingParams(max_tokens=200, ignore_eos=True)
        stream = loop.run_until_complete(aengine.add_request([1, 2, 3], params, "c-1"))
        assert loop.run_until_complete(stream.__anext__()).num_output_tokens == 1
        loop.close()
        gate.set()
        assert wait_until(lambda: "c-1" in reasons, 10)
        # before: it ran on to max_tokens ("length") for nobody, holding its blocks and a batch slot
        assert reasons["c-1"] == "abort"
    finally:
        gate.set()
        del aengine.engine.release
        aengine.stop()
    assert aengine.engine.block_manager.num_used == 0


async def test_an_abort_for_a_finished_request_spares_a_later_one_of_the_same_id(aengine):
    # a server names a completion by the client's x-request-id: request A finished, B came in under its
    # id, and A's consumer, leaving late, aborted "the request of that id", which was B by then
    first = await aengine.add_request("To be", SamplingParams(max_tokens=2, ignore_eos=True), "x-1")
    assert [ev async for ev in first][-1].finish_reason == "length"
    second = await aengine.add_request("To be", SamplingParams(max_tokens=20, ignore_eos=True), "x-1")
    aengine.abort("x-1", first)  # the first one's late abort: not the second's
    assert [ev async for ev in second][-1].finish_reason == "length"
    third = await aengine.add_request("To be", SamplingParams(max_tokens=200, ignore_eos=True), "x-1")
    aengine.abort("x-1", third)  # its own stream: aborted
    assert [ev async for ev in third][-1].finish_reason == "abort"
