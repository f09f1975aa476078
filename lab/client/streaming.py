"""Streams: SSE lines in, typed chunks out, with an idle timeout between chunks and honest failures.

`StreamState` (lab/client/stream_state.py) is the I/O-free part (parse, account, detect errors and
truncation) that `Stream` and `AsyncStream` share. The client reads a stream's opening chunks inside its
retry loop, up to the first that carries output (`opening_chunks`): a chat stream that breaks after its
role-only chunk lost nothing and is retried. One that breaks later raises `StreamInterruptedError`
carrying the partial text; it is never retried behind the caller's back. The
idle timeout counts only once tokens arrive: until then the request's read timeout governs
(lab/client/idle.py).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import httpx

from lab.client.errors import APIError, StreamInterruptedError, from_httpx
from lab.client.stream_state import StreamState
from lab.client.types import Chunk, cost_of


async def aiter_items(items):
    for item in items:
        yield item


_closing: set[asyncio.Task] = set()  # closes that outlived their cancelled caller, held until they end


async def aclose_response(response: httpx.Response) -> None:
    """`await response.aclose()`, which a cancellation cannot cut short. httpcore's close awaits (the
    connection's lock, the socket's shutdown); cancelled there, it left the connection checked out of
    its pool and open for the client's lifetime."""
    if response.is_closed:  # read to the end, httpx closed it: the usual case, spared a task (~15 µs)
        return
    loop = asyncio.get_running_loop()  # raises where there is none (a coroutine closed with its loop)
    closing = loop.create_task(response.aclose())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        # the caller's cancellation goes on at once; the close finishes on its own
        _closing.add(closing)
        closing.add_done_callback(_closed_late)
        raise


def _closed_late(task: asyncio.Task) -> None:
    _closing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: nobody is left to tell, and asyncio would log it as never retrieved


class _StreamBase:
    """What a finished (or failed) stream reports, like a non-streaming result."""

    def __init__(self, response: httpx.Response, state: StreamState, opening: list[Chunk], *, start_t: float,
                 retries: int, provider: str | None, on_close, watch=None, self_hosted: bool = False):
        self.response = response
        self.state = state
        self._pending = list(opening)  # read inside the retry loop, handed out first
        self.start_t = start_t
        self.retries = retries
        self.provider = provider
        self.self_hosted = self_hosted
        self._on_close = on_close  # releases the concurrency slot and settles the token estimate
        self._watch = watch  # enforces the idle timeout on a silent socket (lab/client/idle.py)
        self.end_t: float | None = None
        self.closed = False

    text = property(lambda self: self.state.text)
    usage = property(lambda self: self.state.usage)
    finish_reason = property(lambda self: self.state.finish_reason)
    request_id = property(lambda self: self.state.request_id)

    @property
    def ttft_s(self) -> float | None:
        t = self.state.token_times[0] if self.state.token_times else self.state.first_chunk_t
        return None if t is None else t - self.start_t

    @property
    def latency_s(self) -> float | None:
        return None if self.end_t is None else self.end_t - self.start_t

    @property
    def cost_usd(self) -> float | None:
        return cost_of(self.state.model, self.state.usage, self.provider, self.self_hosted)

    def _finish(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        if not self.closed:
            self.closed = True
            self.end_t = time.perf_counter()
            self._on_close(self.state.usage)

    def __del__(self):
        # a stream dropped unfinished without close() (a `break` out of the loop, no `with`) must
        # still give back its concurrency slot: otherwise a client with max_concurrency hangs
        if not getattr(self, "closed", True):
            try:
                self._abandon()
            except Exception:  # noqa: S110 (interpreter shutdown, a closed loop: nothing left to free)
                pass

    def _abandon(self) -> None:
        self._finish()

    def _fail(self, exc: Exception) -> StreamInterruptedError:
        error = exc if isinstance(exc, APIError) else from_httpx(exc)
        interrupted = self.state.interrupted(error)
        # raised outside the retry loop, which sets retries_taken on the errors it raises
        interrupted.retries_taken = self.retries
        return interrupted


class Stream(_StreamBase):
    """Iterate for `Chunk`s; afterwards `.text`, `.usage`, `.ttft_s`, `.latency_s`, `.cost_usd`."""

    def __init__(self, *args, lines, **kw):
        super().__init__(*args, **kw)
        self._lines = lines

    def __iter__(self):
        return self

    def __next__(self) -> Chunk:
        if self._pending:
            return self._pending.pop(0)
        if self.closed:
            raise StopIteration
        try:
            chunk = next_chunk(self.state, self._lines)
        except (APIError, httpx.HTTPError) as exc:
            self.close()
            raise self._fail(exc) from exc
        except BaseException:  # Ctrl-C: the slot and the connection go back now, not when the caller
            self.close()  # drops the stream (IPython keeps the last exception, and with it this stream)
            raise
        if chunk is None:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        try:
            self.response.close()
        finally:  # the slot goes back even if closing the connection is interrupted
            self._finish()

    _abandon = close  # a sync stream can also hand its connection back

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncStream(_StreamBase):
    """`async for chunk in stream`; the same summary attributes as `Stream`."""

    def __init__(self, *args, lines, **kw):
        super().__init__(*args, **kw)
        self._lines = lines

    def __aiter__(self):
        return self

    async def __anext__(self) -> Chunk:
        if self._pending:
            return self._pending.pop(0)
        if self.closed:
            raise StopAsyncIteration
        try:
            chunk = await anext_chunk(self.state, self._lines)
        except (APIError, httpx.HTTPError) as exc:
            await self.aclose()
            raise self._fail(exc) from exc
        except GeneratorExit:  # the consumer coroutine closed outside any loop: nothing to await
            self._finish()
            raise
        except BaseException:  # cancelled: a cancelled task kept in a list (asyncio.wait, gather's
            await self.aclose()  # results) holds this stream, and with it a slot the next request waits for
            raise
        if chunk is None:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        try:
            await aclose_response(self.response)
        finally:  # the slot goes back at once, even while a cancelled close ends in the background
            self._finish()

    close = aclose  # openai-python's AsyncStream closes with `await stream.close()`

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


@contextmanager
def _waiting_on_server(state: StreamState):
    """While the caller waits for the next chunk: the idle clock runs (from now, not from the last chunk:
    a caller that took a minute over it, or a notebook cell run later, finds the rest buffered, and that
    is no stall), and an error after the idle watch shut the socket is reported as the stall it was."""
    state.last_event_t = max(state.last_event_t, time.perf_counter())
    state.waiting = True
    try:
        yield
    except (APIError, httpx.HTTPError) as e:
        # the watch's shutdown ends the read as a cut stream or a read error
        if state.idle_expired:
            raise state.idle_error() from e
        raise
    finally:
        state.waiting = False


def next_chunk(state: StreamState, lines) -> Chunk | None:
    """The next chunk from a line iterator, or None at the end. Raises our errors and httpx's."""
    now = time.perf_counter
    with _waiting_on_server(state), _dropped_after_the_end(state):
        while not state.done:
            line = next(lines, None)
            if line is None:
                return state.feed_eof(now())
            chunk = state.feed_line(line, now())
            if chunk is not None:
                return chunk
    return None


async def anext_chunk(state: StreamState, lines) -> Chunk | None:
    now = time.perf_counter
    with _waiting_on_server(state), _dropped_after_the_end(state):
        while not state.done:
            try:
                line = await lines.__anext__()
            except StopAsyncIteration:
                return state.feed_eof(now())
            chunk = state.feed_line(line, now())
            if chunk is not None:
                return chunk
    return None


def opening_chunks(state: StreamState, lines) -> list[Chunk]:
    """The chunks up to and including the first that carries output (or to the end). Until that one,
    nothing the caller would keep has arrived: a chat stream opens with a role-only delta, which some
    servers send before the request has left their queue, so a failure here is as safe to retry as a
    failed request."""
    chunks: list[Chunk] = []
    while (chunk := next_chunk(state, lines)) is not None:
        chunks.append(chunk)
        if carries_output(chunk):
            break
    return chunks


async def aopening_chunks(state: StreamState, lines) -> list[Chunk]:
    chunks: list[Chunk] = []
    while (chunk := await anext_chunk(state, lines)) is not None:
        chunks.append(chunk)
        if carries_output(chunk):
            break
    return chunks


def carries_output(chunk: Chunk) -> bool:
    """Text, thinking, a tool-call or refusal delta, a finish_reason or the final usage: anything but a bare
    opening. vLLM's `continuous_usage_stats` puts a usage of 0 completion tokens on the opening
    chunk too; that one is still an opening, safe to retry."""
    if chunk.text or chunk.reasoning:
        return True
    if chunk.usage is not None and (not chunk.choices or chunk.usage.completion_tokens):
        return True
    return chunk.other_output or any(c.finish_reason for c in chunk.choices)


@contextmanager
def _dropped_after_the_end(state: StreamState):
    """A connection lost after the finish_reason (before [DONE], or the usage chunk) lost nothing that
    was generated: the stream ends as at a missing [DONE] (StreamState.feed_eof), not as a cut one."""
    try:
        yield
    except httpx.TransportError:
        if not state.finished:
            raise
        state.done = True
