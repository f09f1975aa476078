"""The engine on its own thread, feeding asyncio consumers: the bridge the HTTP server stands on.

`Engine` is not thread-safe, so every call to it (add, abort, step) runs on one engine thread that
drains a command queue between steps; token events go back to each request's asyncio queue.

Failures: a step that raises (the forward pass, the sampler, out of memory) fails every request in
flight, not only that step's batch: the engine's state after an exception mid-step is not known to be
sound, and an empty engine is, so the thread goes on serving. A request whose own token cannot become
text fails alone (the engine ends it). If the thread itself dies, every stream ends and adds are refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass

from lab.engine.engine import Engine, RequestIdInFlight
from lab.engine.sequence import SamplingParams
from lab.metrics import RequestMetrics

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.002  # static policy waiting for a batch to fill: how often to re-check its timeout


@dataclass(slots=True)
class StreamEvent:
    """New text for one request; the last one has `finished` set and the request's metrics."""

    text: str
    token_id: int | None
    finished: bool = False
    finish_reason: str | None = None  # stop, length, abort, or error (an engine failure)
    num_output_tokens: int = 0
    metrics: RequestMetrics | None = None
    error: str | None = None


@dataclass(slots=True)
class EngineStats:
    """A snapshot taken after each step, readable from any thread (for /metrics and queue limits)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    num_steps: int = 0


class RequestStream:
    """One request's events, consumed with `async for`. Leaving the loop early does not abort: call
    `AsyncEngine.abort` in a `finally` (the server does)."""

    def __init__(self, request_id: str, prompt_tokens: int, loop: asyncio.AbstractEventLoop):
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.loop = loop
        self.queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.finished = False
        self.num_output_tokens = 0  # as seen by the consumer
        self.cached_tokens = 0  # prompt tokens the prefix cache held, set with the first event
        self._produced = 0  # engine thread only

    def __aiter__(self):
        return self

    async def __anext__(self) -> StreamEvent:
        if self.finished:
            raise StopAsyncIteration
        return self._take(await self.queue.get())

    def drain(self) -> StreamEvent | None:
        """Take the events that arrived but were not read (a consumer that leaves early): the last one,
        or None. Afterwards `finished` and `num_output_tokens` say how far the engine had got."""
        last = None
        while not self.finished and not self.queue.empty():
            last = self._take(self.queue.get_nowait())
        return last

    def _take(self, event: StreamEvent) -> StreamEvent:
        self.finished = event.finished
        self.num_output_tokens = event.num_output_tokens
        return event


class AsyncEngine:
    def __init__(self, engine: Engine, trace_limit: int = 4096):
        self.engine = engine
        self.trace_limit = trace_limit  # steps kept in engine.trace; a server runs for days
        self._commands: list = []
        self._cond = threading.Condition()
        self._streams: dict[str, RequestStream] = {}  # engine thread only
        self._stopping = False
        self._pending_adds = 0  # submitted, not yet drained by the engine thread
        self._stats = EngineStats(kv_blocks_total=engine.block_manager.num_blocks)
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> AsyncEngine:
        if self._thread is not None or self._stopping:
            # a stopped AsyncEngine refuses every add, so a new thread would exit at once: say so instead
            raise RuntimeError("start: this AsyncEngine was already started or stopped; it runs once, so "
                               "make a new AsyncEngine(engine) to serve again")
        if self.engine.driver is not None:
            raise RuntimeError("engine: another AsyncEngine (a running server?) already drives it; stop that one first")
        self._thread = threading.Thread(target=self._run, name="lab-engine", daemon=True)
        self.engine.driver = self._thread  # from now on only this thread may add, abort or step
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Abort every request in flight (their streams end with finish_reason 'abort') and join."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"engine thread did not stop within {timeout}s (a step is stuck?)")

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def stats(self) -> EngineStats:
        with self._cond:
            s = self._stats
            return EngineStats(s.num_running, s.num_waiting + self._pending_adds, s.kv_blocks_used,
                               s.kv_blocks_total, s.num_steps)

    # -- requests (any thread) ----------------------------------------------------------------
    async def add_request(self, prompt: str | list[int], params: SamplingParams,
                          request_id: str | None) -> RequestStream:
        """Queue a request; returns once the engine accepted it. Bad input raises the engine's ValueError.
        `request_id` None: the engine names it (the stream's `request_id`)."""
        if request_id is not None and not isinstance(request_id, str):
            # checked here: on the engine thread an unhashable id failed before any answer, and the caller hung
            raise ValueError(f"request_id: must be a string or None, got {type(request_id).__name__}")
        if not self.is_running:
            raise RuntimeError("engine is not running")
        loop = asyncio.get_running_loop()
        done: concurrent.futures.Future = concurrent.futures.Future()

        def add():
            # claims the future: a cancelled caller wants no request (and set_result on its cancelled
            # future raised InvalidStateError here, which ended the engine thread and hung every stream)
            if not done.set_running_or_notify_cancel():
                return
            if request_id in self._streams:
                # an id whose abort is not yet reported: the engine would take it (its request is finished),
                # and the new stream would replace the old one, whose consumer then waits forever for its end
                done.set_exception(RequestIdInFlight(request_id))
                return
            try:
                seq = self.engine.add_request(prompt, params, request_id)
            except Exception as exc:  # ValueError for bad input; reported to the caller, not the thread
                done.set_exception(exc)
                return
            # under the engine's id: with request_id None the engine names the request, and its events
            # come under that name (a stream kept under None heard nothing and was never released)
            stream = RequestStream(seq.request_id, seq.num_prompt_tokens, loop)
            self._streams[seq.request_id] = stream
            self._stats.num_waiting += 1  # until the next step's snapshot counts it
            done.set_result(stream)

        def refuse():  # the engine stopped before it ran this add: end the wait, do not hang it
            if not done.done():
                done.set_exception(RuntimeError("engine is not running"))

        self._submit(add, is_add=True, on_drop=refuse)
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            # the caller went away while we queued it. Commands run in order, so this runs after the add:
            # it aborts the request the add made, under the engine's id, and nothing if the add made none
            # (aborting `request_id` then would end another request of that id, or fail on None)
            def abort_added():
                if done.done() and not done.cancelled() and done.exception() is None:
                    self._abort(done.result().request_id, done.result())

            self._submit(abort_added)
            raise

    def abort(self, request_id: str, stream: RequestStream | None = None) -> None:
        """Cancel a request; its KV blocks are freed before the engine's next step. With `stream`, only
        if that stream's request is still the one of this id: a request that has finished gives its id
        back, and a later request of the same id (a client's own x-request-id) must not be aborted by
        the first one's consumer going away."""
        if not isinstance(request_id, str):  # on the engine thread the error would reach only the log
            raise ValueError(f"request_id: must be a string, got {type(request_id).__name__}")
        self._submit(lambda: self._abort(request_id, stream))

    def _abort(self, request_id: str, stream: RequestStream | None) -> None:
        if stream is None or self._streams.get(request_id) is stream:
            self.engine.abort(request_id)

    def _submit(self, command, is_add: bool = False, on_drop=None) -> None:
        with self._cond:
            if self._stopping:  # nobody will run it
                if on_drop is not None:
                    on_drop()
                return
            self._commands.append((command, is_add, on_drop))
            self._pending_adds += is_add
            self._cond.notify()

    # -- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # not re-raised: threading prints to stderr, and drops a SystemExit unseen
            log.critical("the engine thread died; every request fails from now on", exc_info=True)
        finally:  # a stop, or the thread dying: no caller and no consumer may be left waiting forever
            with self._cond:
                died = not self._stopping
                self._stopping = True  # adds from now on are refused at once, not queued for nobody
                dropped, self._commands, self._pending_adds = self._commands, [], 0
            for _, _, on_drop in dropped:  # queued, never run: their callers must hear so
                if on_drop is not None:
                    on_drop()
            if died:
                self._fail_all("error", "the engine thread died (see the server log)")
            else:
                self._fail_all("abort", "server shutting down")
            # no step follows to take a snapshot: else /metrics showed the last one's requests forever
            self._take_stats(False)
            # last: _fail_all's aborts needed it. Left set, LLM.generate said a server drove the engine
            # after the server had stopped, or its thread had died
            if self.engine.driver is threading.current_thread():
                self.engine.driver = None

    def _serve(self) -> None:
        engine = self.engine
        while True:
            with self._cond:
                while not (self._commands or self._stopping or engine.has_unfinished()):
                    self._cond.wait()  # nothing to do: block, do not spin
                if self._stopping:
                    break
                commands, self._commands = self._commands, []
                for _, is_add, _ in commands:
                    self._pending_adds -= is_add
            for command, _, _ in commands:
                try:
                    command()
                except Exception:  # a bug in one abort must not end the thread that serves everyone
                    log.exception("engine command failed")
            try:
                ran = self._step()
            except Exception as exc:  # a bug or out of memory: fail them all (see the docstring), keep serving
                log.exception("engine step failed")
                self._fail_all("error", f"engine step failed: {exc!r}")
                continue
            if not ran and engine.has_unfinished():  # static policy: a batch is still filling
                # until its timeout, exactly when that comes sooner than the next look (an add wakes it too)
                wait = min(IDLE_POLL_S, engine.scheduler.static_timeout_at() - engine.now())
                with self._cond:
                    if not self._commands and not self._stopping:
                        self._cond.wait(max(wait, 0.0))

    def _step(self) -> bool:
        engine = self.engine
        before = engine.num_steps
        # flush=False: a server never knows that no more requests are coming
        events = engine.step(flush=False)
        ran = engine.num_steps != before
        out: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for ev in events:
            stream = self._streams.get(ev.request_id)
            if stream is None:
                continue
            if not stream._produced:  # its first event: it has been admitted, its prefix-cache hits known
                seq = engine.seqs.get(ev.request_id)
                stream.cached_tokens = seq.num_cached_tokens if seq is not None else 0
            stream._produced += ev.token_id is not None
            item = StreamEvent(ev.text, ev.token_id, ev.finished, ev.finish_reason, stream._produced)
            if ev.error is not None:  # this request alone failed (the engine logged why)
                item.error = f"generation failed: {ev.error}"
            if ev.finished:
                item.metrics = engine.metrics(engine.seqs[ev.request_id])
                engine.release(ev.request_id)
                del self._streams[ev.request_id]
            out[stream.loop].append((stream, item))
        self._take_stats(ran)  # before delivery: a consumer seeing its last token sees its blocks freed
        for loop, items in out.items():
            if not _deliver_threadsafe(loop, items):
                # its consumer's event loop is closed and nobody can read these tokens: stop making them
                # (else the request ran on to max_tokens, holding its KV blocks and a batch slot)
                for stream, item in items:
                    if not item.finished:
                        engine.abort(stream.request_id)
        if len(engine.trace) > 2 * self.trace_limit:
            del engine.trace[: len(engine.trace) - self.trace_limit]
        return ran

    def _take_stats(self, ran: bool) -> None:
        sched, bm = self.engine.scheduler, self.engine.block_manager
        with self._cond:
            self._stats = EngineStats(len(sched.running), len(sched.waiting), bm.num_used, bm.num_blocks,
                                      self._stats.num_steps + ran)

    def _fail_all(self, reason: str, message: str) -> None:
        out: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for request_id, stream in list(self._streams.items()):
            try:
                self.engine.abort(request_id)
                self.engine.release(request_id)
            except Exception:  # the engine is already broken; still end the consumer's stream
                log.exception("abort of %s failed", request_id)
            item = StreamEvent("", None, True, reason, stream._produced, error=message)
            out[stream.loop].append((stream, item))
        self._streams.clear()
        for loop, items in out.items():
            _deliver_threadsafe(loop, items)


def _deliver(items) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)


def _deliver_threadsafe(loop: asyncio.AbstractEventLoop, items) -> bool:
    """False if that event loop is closed: nobody is listening any more."""
    try:
        loop.call_soon_threadsafe(_deliver, items)  # one wake-up per loop per step, not per token
    except RuntimeError:
        return False
    return True
