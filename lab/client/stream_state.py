"""What a stream has received so far, without I/O: SSE lines in, typed chunks out, errors and truncation
detected. `Stream` and `AsyncStream` (lab/client/streaming.py) feed it lines from the network.
"""

from __future__ import annotations

import json

import httpx

from lab.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    StreamInterruptedError,
    error_in_body,
)
from lab.client.sse import SSEDecoder
from lab.client.types import Chunk, Usage


class StreamState:
    """Everything a stream learned so far. Times are `time.perf_counter()` values."""

    __slots__ = ("decoder", "idle_timeout", "last_event_t", "done", "chunks", "text_parts", "usage",
                 "finish_reason", "unfinished", "ended", "model", "first_chunk_t", "token_times", "request_id",
                 "waiting", "idle_expired")

    def __init__(self, idle_timeout: float | None, now: float, request_id: str | None = None):
        self.decoder = SSEDecoder()
        self.idle_timeout = idle_timeout
        self.last_event_t = now
        self.done = False
        self.chunks = 0
        self.text_parts: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.unfinished: set[int] = set()  # choices seen without their finish_reason yet (n > 1)
        self.ended: set[int] = set()  # choices that had theirs
        self.model = ""
        self.first_chunk_t: float | None = None
        self.token_times: list[float] = []  # when each chunk with text, or ending a choice, arrived (ITL)
        self.request_id = request_id
        self.waiting = False  # the caller is waiting on the server (the idle clock runs only then)
        self.idle_expired = False  # the idle watch shut the socket: whatever the read says next, it was that

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def finished(self) -> bool:
        """Every choice seen has its finish_reason: what is still to come (usage, [DONE]) is no generation."""
        return self.finish_reason is not None and not self.unfinished

    @property
    def generating(self) -> bool:
        """Tokens have started to arrive: from here on the idle timeout applies. Not from the first chunk:
        a chat stream's first one often only announces the assistant's role, and some servers send it
        before the request has left their queue (ours did: a queued chat request was ended as idle)."""
        return bool(self.token_times) or self.finish_reason is not None

    def feed_line(self, line: str, now: float) -> Chunk | None:
        event = self.decoder.decode(line)
        if event is not None:
            return self._on_event(event.event, event.data, now)
        # keep-alive comments arrive, but no data: the generation is stuck. Only comments are judged:
        # data that did arrive late is kept (no watch cuts an HTTP/2 stream; its read timeout governs)
        if line.startswith(":") and self.idle_timeout is not None and self.generating \
                and now - self.last_event_t > self.idle_timeout:
            raise self.idle_error()
        return None

    def idle_error(self) -> APITimeoutError:
        return APITimeoutError(f"stream idle: no chunk for more than {self.idle_timeout:g} s")

    def feed_eof(self, now: float) -> Chunk | None:
        event = self.decoder.flush()
        chunk = None if event is None else self._on_event(event.event, event.data, now)
        if not self.done and not self.finished:
            raise APIConnectionError("stream ended without [DONE] and without a finish_reason: it was cut")
        self.done = True  # a missing [DONE] after every finish_reason is tolerated: nothing was lost
        return chunk

    def _on_event(self, name: str, data: str, now: float) -> Chunk | None:
        self.last_event_t = now
        if data.strip() == "[DONE]":
            self.done = True
            return None
        try:
            payload = json.loads(data)
        except ValueError:
            if name != "error":
                raise APIConnectionError(f"malformed stream chunk: {data[:200]!r}") from None
            payload = {"error": {"message": data}}  # an error event in plain text
        # `"error": null` on a healthy chunk is no error event (some gateways send the key always)
        if name == "error" or (isinstance(payload, dict) and payload.get("error") is not None):
            raise error_in_body(payload, self.request_id)
        choice_error = _choice_error(payload)
        if choice_error is not None:  # OpenRouter's failure mid-answer: inside a choice, finish_reason "error"
            raise error_in_body({"error": choice_error}, self.request_id)
        chunk = _chunk(payload, data)
        self.chunks += 1
        self.model = chunk.model or self.model
        if self.first_chunk_t is None:
            self.first_chunk_t = now
        text = chunk.text
        if text:
            self.text_parts.append(text)
        # the chunk that ends a choice carries its last token even without text (an EOS, which usage
        # counts), so it is timed as one, as `vllm bench serve` times it: E2EL and TPOT end there
        ends_here = any(c.finish_reason and c.index not in self.ended for c in chunk.choices)
        # reasoning, tool-call and refusal deltas are generated tokens too (usage counts them)
        if text or chunk.reasoning or chunk.other_output or ends_here:
            self.token_times.append(now)
        for choice in chunk.choices:
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
                self.ended.add(choice.index)
                self.unfinished.discard(choice.index)
            elif choice.index not in self.ended:  # some providers repeat an ended choice, empty, with the usage
                self.unfinished.add(choice.index)
        if chunk.usage is not None:
            self.usage = chunk.usage
        return chunk

    def interrupted(self, error: APIError) -> StreamInterruptedError:
        if isinstance(error, StreamInterruptedError):
            return error
        return StreamInterruptedError(
            # the cause's message, not str(cause): this error's own str adds the status and request id
            f"stream failed after {self.chunks} chunk(s): {error.message}",
            partial_text=self.text,
            chunks_received=self.chunks,
            cause=error,
            status_code=error.status_code,
            request_id=error.request_id or self.request_id,
            body=error.body,
            headers=error.headers,
        )


def is_whole_answer(response: httpx.Response) -> bool:
    """A provider or proxy that ignores stream=True answers with one JSON body, not an event stream."""
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def whole_answer_lines(content: bytes) -> list[str]:
    """That body as the lines of a one-event stream and [DONE], so the caller still gets its text, usage
    and finish_reason; the SSE parser found no `data:` line in it and reported a cut stream (retried)."""
    try:
        payload = json.loads(content)
    except ValueError:
        raise APIConnectionError(f"expected an event stream (stream=True), got a body that is not JSON: "
                                 f"{content[:200]!r}") from None
    return [f"data: {json.dumps(payload)}", "", "data: [DONE]", ""]


def _chunk(payload: object, data: str) -> Chunk:
    # JSON of the wrong shape (`42`, `null`, choices that are not objects) is as malformed as broken
    # JSON: it must surface as our error (closing the stream, keeping the partial text), not AttributeError
    try:
        if not isinstance(payload, dict):
            raise TypeError
        return Chunk.from_dict(payload)
    except (AttributeError, TypeError):
        raise APIConnectionError(f"malformed stream chunk: {data[:200]!r}") from None


def _choice_error(payload: object) -> object:
    """The error object a choice carries (OpenRouter sends a failure after its 200 so), or None."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and choice.get("error") is not None:
            return choice["error"]
    return None
