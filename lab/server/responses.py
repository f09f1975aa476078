"""Turn a request's engine events into an answer: SSE chunks as tokens arrive, or one JSON body.
Either way a client that goes away has its request aborted, freeing its KV blocks before the next step;
a stream that fails after its 200 ends with an error event and [DONE], as vLLM's do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from lab.engine.async_engine import AsyncEngine, RequestStream
from lab.server.errors import APIError
from lab.server.faults import Fault, StreamCut
from lab.server.metrics import ServerMetrics
from lab.server.protocol import ChunkMaker, completion_body, usage

log = logging.getLogger("lab.server")


@dataclass(slots=True)
class Admitted:
    """A request that passed every check and is in the engine."""

    kind: str  # "chat" or "completion"
    request_id: str
    model: str
    stream: RequestStream
    fault: Fault
    include_usage: bool
    arrival_s: float  # time.perf_counter() when it reached the server
    headers: dict[str, str]
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats


PAUSE_POLL_S = 0.05  # how often an injected delay looks for a shutdown


async def pause(seconds: float, engine: AsyncEngine, watcher: asyncio.Task | None = None) -> None:
    """An injected delay (latency, stall) that ends early when the server shuts down, or when `watcher`
    (a client hang-up) is done. Without this a `stall:60` held serve()'s exit until uvicorn's graceful
    timeout cancelled the handler, and its client got a bare text 500 instead of a 503."""
    deadline = time.monotonic() + seconds
    while engine.is_running and not (watcher is not None and watcher.done()):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if watcher is None:
            await asyncio.sleep(min(PAUSE_POLL_S, left))
        else:
            await asyncio.wait({watcher}, timeout=min(PAUSE_POLL_S, left))


def _data(payload: dict | str) -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {body}\n\n"


def _error_end(error: APIError) -> list[str]:
    """How a stream ends once its 200 is out and the status can no longer say it failed: the error in
    OpenAI's shape as one last event, then [DONE], as vLLM ends one; openai-python and lab.client raise it.
    The event also carries the status the answer would have had (vLLM puts it in `code`, where ours
    keeps its name, such as shutting_down): a client tells a retryable 503 from a 500 by it."""
    body = error.body()
    body["error"]["status"] = error.status
    return [_data(body), _data("[DONE]")]


def _engine_error(a: Admitted, ev, metrics: ServerMetrics) -> APIError:
    """The error for a request the engine failed or dropped after admission, counted as finished like the
    others: its prompt and the tokens it had generated were computed all the same. As an error answer it
    is counted by the caller: in a stream by stream_events, a raised one by ErrorCounter on its way out."""
    if ev.finish_reason == "abort":
        error = APIError(503, ev.error or "request aborted: the server is shutting down", code="shutting_down")
    else:
        error = APIError(500, ev.error or "engine failure", code="internal_error")
    metrics.finished(a.stream.prompt_tokens, ev.num_output_tokens, ev.finish_reason or "error",
                     time.perf_counter() - a.arrival_s)
    return error


async def stream_events(a: Admitted, engine: AsyncEngine, metrics: ServerMetrics) -> AsyncIterator[str]:
    maker = ChunkMaker(a.kind, a.request_id, a.model, a.include_usage, a.continuous_usage)
    sent = 0

    async def emit(payload: dict | str) -> str:
        nonlocal sent
        if a.fault.cut_after is not None and sent >= a.fault.cut_after:
            raise StreamCut(f"{a.request_id}: injected cut after {sent} chunks")
        if a.fault.stall_after is not None and sent == a.fault.stall_after:
            await pause(a.fault.stall_s, engine)
        sent += 1
        return _data(payload)

    stream, failure, reason = a.stream, None, "client_gone"
    role_sent = a.kind != "chat"
    try:
        async for ev in stream:
            if ev.error is not None:  # engine failure or shutdown: say so
                error = _engine_error(a, ev, metrics)
                metrics.errors.labels(str(error.status)).inc()  # after the 200: ErrorCounter saw a success
                for event in _error_end(error):
                    yield event
                return
            if ev.token_id is not None and ev.num_output_tokens == 1:
                metrics.ttft.observe(time.perf_counter() - a.arrival_s)
            if ev.finished:
                # counted before its last text goes out: a cut or a hang-up on that chunk finds the stream
                # finished, so the `finally` below does not count it as client_gone either
                metrics.finished(stream.prompt_tokens, ev.num_output_tokens, ev.finish_reason,
                                 time.perf_counter() - a.arrival_s)
            if not role_sent:
                # the role chunk goes out with the first token, as vLLM's and OpenAI's do: sent on
                # admission it reached the client before the queue wait and the prefill, and clients
                # that time the first chunk (vllm bench serve) measured a TTFT of a few milliseconds.
                # After the counting above: a cut or a hang-up on it finds a one-token answer counted
                role_sent = True
                yield await emit(maker.chunk(None, role=True, use=usage(stream.prompt_tokens, 0, stream.cached_tokens)))
            # a usage dict per token only for those who asked for it (the hot path of every stream)
            so_far = (usage(stream.prompt_tokens, ev.num_output_tokens, stream.cached_tokens)
                      if maker.continuous_usage else None)
            if ev.text or ev.finished:
                # the finish reason rides on the last text, as vLLM sends it: a chunk of its own added
                # an inter-token gap of ~0 ms to every stream that clients timing chunks would count
                yield await emit(maker.chunk(ev.text or None, ev.finish_reason if ev.finished else None,
                                             use=so_far))
        if a.include_usage:
            yield await emit(maker.usage_chunk(usage(stream.prompt_tokens, stream.num_output_tokens, stream.cached_tokens)))
        yield await emit("[DONE]")
    except StreamCut:
        reason = "fault_cut"  # the server dropped it on purpose: not a client that left
        raise  # an injected cut must drop the connection: what a client does then is the lesson
    except Exception as exc:
        # a bug after the 200: dropping the connection would look like a cut and tell nobody why
        log.exception("%s: stream failed after %d chunk(s)", a.request_id, sent)
        failure = APIError(500, f"generation failed: {type(exc).__name__}: {exc}", code="internal_error")
        metrics.errors.labels("500").inc()
        reason = "error"
    finally:
        if not stream.finished:
            # tokens the engine produced but this generator never sent (the client left first) were
            # computed all the same; and a request the engine had finished ends with its own reason
            last = stream.drain()
            if stream.finished and last.error is not None:
                # counted as the failure it was; nobody is left to tell
                metrics.errors.labels(str(_engine_error(a, last, metrics).status)).inc()
            elif stream.finished:
                metrics.finished(stream.prompt_tokens, last.num_output_tokens, last.finish_reason,
                                 time.perf_counter() - a.arrival_s)
        if not stream.finished:  # failed, client gone, cut, or cancelled: free the blocks now
            engine.abort(a.request_id, stream)
            # its prompt and the tokens generated so far were computed all the same: counted, as a
            # non-streamed hang-up's are, or lab_generation_tokens misses every cut stream's tokens
            # (those produced after this abort is queued, within one step, are not seen here)
            metrics.finished(stream.prompt_tokens, stream.num_output_tokens, reason,
                             time.perf_counter() - a.arrival_s)
    if failure is not None:  # after the abort above: a client that sees the error finds the blocks freed
        for event in _error_end(failure):
            yield event


async def full_response(a: Admitted, engine: AsyncEngine, metrics: ServerMetrics,
                        request: Request) -> JSONResponse | StreamingResponse:
    watcher = asyncio.create_task(_abort_on_disconnect(request, engine, a.request_id, a.stream))
    stream, parts, last = a.stream, [], None
    try:
        if a.fault.stall_after is not None:
            # a stalled non-streamed answer is a slow one; a client that leaves ends the wait (the
            # watcher has aborted its request), so the handler does not sleep on for nobody
            await pause(a.fault.stall_s, engine, watcher)
        async for ev in stream:
            if ev.token_id is not None and ev.num_output_tokens == 1:
                metrics.ttft.observe(time.perf_counter() - a.arrival_s)
            parts.append(ev.text)
            last = ev
    except APIError:
        raise
    except Exception as exc:  # a bug: a 500 that names it (the middleware's generic one did not)
        log.exception("%s: generation failed", a.request_id)
        metrics.finished(stream.prompt_tokens, stream.num_output_tokens, "error", time.perf_counter() - a.arrival_s)
        raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", code="internal_error") from exc
    finally:
        client_gone = watcher.done()  # it ends on its own only when the client hangs up
        watcher.cancel()
        if not stream.finished:
            engine.abort(a.request_id, stream)
    if last.error is not None:
        raise _engine_error(a, last, metrics)
    # a hang-up aborts the request: counted as client_gone, as a stream's is
    reason = "client_gone" if client_gone and last.finish_reason == "abort" else last.finish_reason
    metrics.finished(stream.prompt_tokens, last.num_output_tokens, reason, time.perf_counter() - a.arrival_s)
    body = completion_body(a.kind, a.request_id, a.model, "".join(parts), last.finish_reason,
                           usage(stream.prompt_tokens, last.num_output_tokens, stream.cached_tokens))
    if a.fault.cut_after is not None:
        return _cut_response(JSONResponse(body, headers=a.headers), a.request_id)
    return JSONResponse(body, headers=a.headers)


def _cut_response(whole: JSONResponse, request_id: str) -> StreamingResponse:
    """A dropped connection, as the client sees one: the head promises the whole body (Content-Length),
    half of it arrives, then the exception makes uvicorn close the socket. httpx raises
    RemoteProtocolError (incomplete body); the chunk count of a stream cut means nothing here."""
    body = whole.body

    async def half_then_cut():
        yield body[: len(body) // 2]
        raise StreamCut(f"{request_id}: injected cut after {len(body) // 2} of {len(body)} bytes")

    # whole.headers carries the full content-length and content-type; StreamingResponse keeps them
    return StreamingResponse(half_then_cut(), headers=dict(whole.headers))


async def _abort_on_disconnect(request: Request, engine: AsyncEngine, request_id: str,
                               stream: RequestStream) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            engine.abort(request_id, stream)  # this request's: not a later one under the same client id
            return
