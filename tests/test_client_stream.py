"""lab.client streaming: SSE parsing edge cases, chunks and final usage, idle timeout, interrupted streams."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from lab.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InternalServerError,
    RetryPolicy,
    StreamInterruptedError,
)
from lab.client.sse import SSEDecoder, iter_events

KEY = "sk-test-0123456789abcdef"
NO_WAIT = RetryPolicy(max_retries=2, initial_delay=0.0, max_delay=0.0)


def chunk(text, finish=None, **extra):
    body = {"id": "s1", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n".encode()


USAGE = b'data: {"id": "s1", "object": "text_completion", "model": "m", "choices": [], ' \
        b'"usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}}\n\n'
DONE = b"data: [DONE]\n\n"


def stream_handler(*bodies, calls=None):
    """Each call streams the next body: a list of byte pieces, with exceptions raised where they appear."""
    calls = [] if calls is None else calls

    def handler(request):
        pieces = bodies[min(len(calls), len(bodies) - 1)]
        calls.append(json.loads(request.content))

        def gen():
            for p in pieces:
                if isinstance(p, Exception):
                    raise p
                if callable(p):
                    p()
                    continue
                yield p

        return httpx.Response(200, content=gen(), headers={"content-type": "text/event-stream"})

    return handler, calls


def client_for(handler, **kw):
    kw.setdefault("retry", NO_WAIT)
    return Client(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler), **kw)


def collect(stream):
    return [c.text for c in stream]


# ---- the SSE decoder itself


def test_sse_crlf_comments_multiline_and_fields():
    lines = ["data: a", ": comment", "data:b", "", "event: error", "id: 7", "retry: 100", "data: x", "",
             "", "data", "", "field-we-ignore: 1", "event: only", ""]
    events = list(iter_events(lines))
    assert [(e.event, e.data) for e in events] == [("message", "a\nb"), ("error", "x"), ("message", "")]
    assert events[1].id == "7" and events[1].retry == 100 and events[2].id == "7"  # id persists


def test_sse_missing_final_blank_line_is_flushed():
    d = SSEDecoder()
    assert d.decode("data: [DONE]") is None
    assert d.flush().data == "[DONE]"
    assert d.flush() is None


def test_stream_over_crlf_with_comments_and_split_chunks():
    body = (b': hello\r\n\r\n' + chunk("Hel").replace(b"\n", b"\r\n") + b"data: " + json.dumps(
        {"id": "s1", "object": "text_completion", "model": "m",
         "choices": [{"index": 0, "text": "lo", "finish_reason": "length"}]}).encode() + b"\r\n\r\n"
        + USAGE + DONE)
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]  # lines (and a CRLF) split across reads
    handler, calls = stream_handler(pieces)
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["Hel", "lo", ""]
    assert stream.text == "Hello" and stream.finish_reason == "length"
    assert stream.usage.completion_tokens == 3 and stream.usage.prompt_tokens == 4
    assert stream.latency_s >= stream.ttft_s >= 0
    assert calls[0]["stream"] is True and calls[0]["stream_options"] == {"include_usage": True}


def test_multiline_data_event_is_joined_before_json_parse():
    payload = '{"id": "s1", "object": "text_completion",\ndata: "model": "m", "choices": [{"index": 0, ' \
              '"text": "ok", "finish_reason": "stop"}]}'
    handler, _ = stream_handler([f"data: {payload}\n\n".encode(), DONE])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["ok"] and stream.finish_reason == "stop"


def test_missing_done_after_finish_reason_is_fine():
    handler, _ = stream_handler([chunk("a"), chunk("b", "stop"), USAGE])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert "".join(collect(stream)) == "ab" and stream.usage.total_tokens == 7


@pytest.mark.parametrize("drop", [httpx.RemoteProtocolError("incomplete chunked read"), httpx.ReadError("reset")])
def test_a_connection_lost_after_the_finish_reason_lost_nothing(drop):
    # every token and the finish_reason had arrived; the drop before the usage chunk or [DONE] was
    # reported as a StreamInterruptedError, as if the answer were partial
    handler, calls = stream_handler([chunk("a"), chunk("b", "length"), drop])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert "".join(collect(stream)) == "ab" and stream.finish_reason == "length" and len(calls) == 1
    handler, _ = stream_handler([chunk("a"), chunk("b"), drop])  # no finish_reason yet: cut
    with pytest.raises(StreamInterruptedError):
        collect(client_for(handler).completions.create(model="m", prompt="p", stream=True))


def test_with_n_2_a_drop_before_the_second_choice_ends_is_a_cut_stream():
    # the first choice's finish_reason made the whole stream look complete
    def two(i, text, finish=None):
        body = {"id": "s1", "object": "text_completion", "model": "m",
                "choices": [{"index": i, "text": text, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    for end in (httpx.ReadError("reset"), None):  # a drop, or a clean end with no [DONE]
        handler, _ = stream_handler([two(0, "a"), two(1, "b"), two(0, "c", "stop"), two(1, "d")]
                                    + ([end] if end else []))
        with pytest.raises(StreamInterruptedError):
            collect(client_for(handler).completions.create(model="m", prompt="p", stream=True, n=2))
    # both ended, then a repeat of an ended choice (as some providers send with the usage): complete
    handler, _ = stream_handler([two(0, "a", "stop"), two(1, "b", "length"), two(0, ""), httpx.ReadError("reset")])
    assert collect(client_for(handler).completions.create(model="m", prompt="p", stream=True, n=2)) == ["a", "b", ""]


def test_missing_done_and_no_finish_reason_is_a_cut_stream():
    handler, calls = stream_handler([chunk("a"), chunk("b")])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    with pytest.raises(StreamInterruptedError, match="cut") as info:
        collect(stream)
    assert info.value.partial_text == "ab" and info.value.chunks_received == 2
    assert len(calls) == 1  # never resent behind the caller's back


def test_chat_stream_delta_content():
    def chat(delta, finish=None):
        body = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    handler, _ = stream_handler([chat({"role": "assistant"}), chat({"content": "Hi"}), chat({}, "stop"), DONE])
    stream = client_for(handler).chat.completions.create(model="m", messages=[], stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[1].choices[0].delta.content == "Hi"
    assert stream.text == "Hi"


def chat_piece(delta, finish=None, **extra):
    body = {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n".encode()


ROLE = chat_piece({"role": "assistant", "content": ""})
WHOLE_CHAT_STREAM = [ROLE, chat_piece({"content": "Hi"}), chat_piece({}, "stop"), DONE]


async def chat_stream_texts(handler, use_async):
    """The chunks' texts of one streamed chat completion over a MockTransport, and the stream."""
    if use_async:
        def ahandler(request):
            body = handler(request).stream  # the sync generator, which raises where its pieces do

            async def gen():
                for p in body:
                    yield p
            return httpx.Response(200, content=gen(), headers={"content-type": "text/event-stream"})
        async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(ahandler),
                               retry=NO_WAIT) as c:
            stream = await c.chat.completions.create(model="m", messages=[], stream=True)
            return [ch.text async for ch in stream], stream
    stream = client_for(handler).chat.completions.create(model="m", messages=[], stream=True)
    return collect(stream), stream


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("cut", [httpx.ReadError("reset"), None], ids=["reset", "clean-end"])
async def test_a_chat_stream_cut_after_its_role_chunk_is_retried(use_async, cut):
    # the role-only chunk carries nothing generated (our server sends it while the request is still
    # queued): a stream cut right after it was raised as interrupted, with "" as its partial text
    handler, calls = stream_handler([ROLE, ROLE] + ([cut] if cut else []), WHOLE_CHAT_STREAM)
    texts, stream = await chat_stream_texts(handler, use_async)
    assert texts == ["", "Hi", ""] and stream.text == "Hi" and stream.retries == 1 and len(calls) == 2


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
async def test_a_chat_stream_cut_after_its_first_token_is_not_retried(use_async):
    handler, calls = stream_handler([ROLE, chat_piece({"content": "H"}), httpx.ReadError("reset")],
                                    WHOLE_CHAT_STREAM)
    with pytest.raises(StreamInterruptedError) as info:
        await chat_stream_texts(handler, use_async)
    assert info.value.partial_text == "H" and info.value.chunks_received == 2 and len(calls) == 1


def test_what_counts_as_output_in_a_stream():
    from lab.client.streaming import carries_output
    from lab.client.types import Chunk

    def parsed(piece):
        return Chunk.from_dict(json.loads(piece.decode()[len("data: "):]))

    call = {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert not carries_output(parsed(ROLE))
    assert carries_output(parsed(chat_piece({"tool_calls": [call]})))
    assert carries_output(parsed(chat_piece({}, "stop"))) and carries_output(parsed(chat_piece({"content": "x"})))
    # vLLM's continuous_usage_stats: the opening carries a usage of 0 completion tokens, still an opening
    # (it closed the window in which a cut stream is retried); the final usage-only chunk is the end
    opening_usage = {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    assert not carries_output(parsed(chat_piece({"role": "assistant", "content": ""}, usage=opening_usage)))
    assert carries_output(parsed(chat_piece({"content": "x"}, usage=dict(opening_usage, completion_tokens=1))))
    final = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [], "usage": opening_usage}
    assert carries_output(Chunk.from_dict(final))


# ---- failures


@pytest.mark.parametrize(("error", "status"), [
    ({"message": "shutting down", "code": "shutting_down", "status": 503}, 503),  # ours: the code is a name
    ({"message": "overloaded", "type": "ServiceUnavailableError", "code": 503}, 503),  # vLLM's: the status
    ({"message": "odd", "code": "weird", "status": 200}, 500),  # no error status anywhere: the server failed
])
def test_an_error_event_keeps_the_status_it_names(error, status):
    """Our server's shutdown event (code "shutting_down") was raised as a 500, not the 503 it is."""
    event = f"data: {json.dumps({'error': error})}\n\n".encode()
    handler, _ = stream_handler([chunk("par"), event, DONE])
    with pytest.raises(StreamInterruptedError) as info:
        collect(client_for(handler).completions.create(model="m", prompt="p", stream=True))
    assert info.value.status_code == status and info.value.partial_text == "par"


def test_error_event_mid_stream_raises_with_partial_text():
    error = b'event: error\ndata: {"error": {"message": "engine crashed", "code": 500}}\n\n'
    handler, calls = stream_handler([chunk("par"), chunk("tial"), error, DONE])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    got = []
    with pytest.raises(StreamInterruptedError, match="engine crashed") as info:
        for c in stream:
            got.append(c.text)
    assert got == ["par", "tial"] and info.value.partial_text == "partial"
    assert isinstance(info.value.cause, InternalServerError) and info.value.status_code == 500
    assert len(calls) == 1


def test_an_interrupted_stream_names_its_status_and_request_id_once():
    error = b'event: error\ndata: {"error": {"message": "engine crashed", "code": 503}}\n\n'
    handler, _ = stream_handler([chunk("par"), error])

    def with_request_id(request):
        response = handler(request)
        response.headers["x-request-id"] = "req-7"
        return response

    with pytest.raises(StreamInterruptedError) as info:
        collect(client_for(with_request_id).completions.create(model="m", prompt="p", stream=True))
    # the cause's str was embedded whole: "HTTP 503: ... HTTP 503: engine crashed (request id req-7) (request id req-7)"
    assert str(info.value) == "HTTP 503: stream failed after 1 chunk(s): engine crashed (request id req-7)"
    assert info.value.request_id == "req-7" and info.value.partial_text == "par"


def test_error_event_before_any_chunk_is_a_normal_error():
    bad = b'data: {"error": {"message": "prompt too long", "code": 400}}\n\n'
    handler, calls = stream_handler([bad])
    with pytest.raises(BadRequestError, match="prompt too long"):
        client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert len(calls) == 1
    busy = b"event: error\ndata: overloaded\n\n"  # plain-text error event, no code: a server failure, retried
    handler, calls = stream_handler([busy], [chunk("ok", "stop"), DONE])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["ok"] and stream.retries == 1 and len(calls) == 2


def test_a_chunk_with_a_null_error_field_is_a_chunk():
    handler, calls = stream_handler([chunk("fine", error=None), chunk("", "stop", error=None), DONE])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["fine", ""] and stream.finish_reason == "stop" and len(calls) == 1


def test_connection_lost_after_first_chunk_is_not_retried():
    handler, calls = stream_handler([chunk("Once upon"), httpx.ReadError("connection reset")])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    with pytest.raises(StreamInterruptedError) as info:
        collect(stream)
    assert info.value.partial_text == "Once upon" and "ReadError" in str(info.value)
    assert len(calls) == 1


def test_connection_lost_before_first_chunk_is_retried():
    handler, calls = stream_handler([httpx.RemoteProtocolError("peer closed")], [chunk("fine", "stop"), DONE])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["fine"] and len(calls) == 2 and stream.retries == 1


def test_a_stream_cut_after_a_retry_reports_that_retry():
    # retries_taken was 0 on a stream that had needed a retry to open: the retry loop had already returned
    handler, calls = stream_handler([httpx.ConnectError("refused")], [chunk("Once"), httpx.ReadError("reset")])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    with pytest.raises(StreamInterruptedError) as info:
        collect(stream)
    assert info.value.retries_taken == 1 == stream.retries and len(calls) == 2


def test_idle_timeout_fires_while_only_keepalives_arrive():
    stall = lambda: time.sleep(0.02)  # noqa: E731
    pieces = [chunk("a")] + [p for _ in range(20) for p in (stall, b": keep-alive\n\n")] + [chunk("b", "stop")]
    handler, calls = stream_handler(pieces)
    stream = client_for(handler, stream_idle_timeout=0.05).completions.create(model="m", prompt="p", stream=True)
    with pytest.raises(StreamInterruptedError) as info:
        collect(stream)
    assert isinstance(info.value.cause, APITimeoutError) and "idle" in str(info.value)
    assert info.value.partial_text == "a" and len(calls) == 1


def test_a_stream_is_sent_with_the_request_timeout_not_the_idle_one():
    # the read timeout was capped at stream_idle_timeout for a stream: the wait for its headers and first
    # chunk (queue, prefill) failed at 60 s whatever timeout= said; the idle timeout starts at the first chunk
    seen = []

    def handler(request):
        seen.append(request.extensions["timeout"])
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, content=chunk("x", "stop") + DONE)
        return httpx.Response(200, json={"id": "t", "object": "text_completion", "model": "m", "choices": []})

    c = client_for(handler, timeout=30.0, stream_idle_timeout=2.0)
    list(c.completions.create(model="m", prompt="p", stream=True))
    c.completions.create(model="m", prompt="p")
    list(c.completions.create(model="m", prompt="p", stream=True, timeout={"read": 300}))
    assert [t["read"] for t in seen] == [30.0, 30.0, 300]


def test_keepalives_before_the_first_chunk_are_not_an_idle_stream():
    # comments while a request queues or prefills: the server is there, the first token is not yet;
    # the idle check counted them from the headers and ended the stream before it had begun
    stall = lambda: time.sleep(0.02)  # noqa: E731
    pieces = [p for _ in range(10) for p in (stall, b": keep-alive\n\n")] + [chunk("a"), chunk("b", "stop"), DONE]
    handler, calls = stream_handler(pieces)
    stream = client_for(handler, stream_idle_timeout=0.05).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["a", "b"] and len(calls) == 1


def test_data_that_arrives_after_an_idle_gap_is_kept():
    # the per-line check judged the late data line itself and threw away a chunk, its finish_reason and
    # [DONE] that had arrived; only keep-alive comments tell of a stuck generation (where no watch runs,
    # as here or over HTTP/2, the read timeout bounds a silent wait)
    pieces = [chunk("a"), lambda: time.sleep(0.15), chunk("b", "stop"), DONE]
    handler, calls = stream_handler(pieces)
    stream = client_for(handler, stream_idle_timeout=0.05).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["a", "b"] and stream.finish_reason == "stop" and len(calls) == 1


def test_read_timeout_mid_stream_is_a_timeout_with_partial_text():
    handler, _ = stream_handler([chunk("abc"), httpx.ReadTimeout("no bytes")])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    with pytest.raises(StreamInterruptedError) as info:
        collect(stream)
    assert isinstance(info.value.cause, APITimeoutError) and info.value.partial_text == "abc"


# ---- over a real socket: what the idle timeout leaves to the request's timeout, and what it ends


def sse_bytes(text, finish=None):
    return chunk(text, finish)


def http_chunk(data: bytes) -> bytes:  # chunked transfer encoding, as uvicorn and vLLM send a stream
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
SSE_REST = http_chunk(chunk("a")) + http_chunk(chunk("b", "stop")) + http_chunk(DONE) + b"0\r\n\r\n"
ROLE_ONLY = b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [
    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}).encode() + b"\n\n"
WHOLE = json.dumps({"id": "w", "object": "text_completion", "model": "m",
                    "choices": [{"index": 0, "text": "ab", "finish_reason": "stop"}]}).encode()
WHOLE_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(WHOLE), WHOLE)


@pytest.fixture
def raw_server():
    """`start([(delay_s, bytes), ...])` -> base URL of a server that reads a request, then sends each
    piece after its delay: slow headers, a slow first chunk, a stall, which MockTransport cannot time."""
    import socketserver
    import threading

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            data = b""
            while b"\r\n\r\n" not in data:
                got = self.request.recv(65536)
                if not got:
                    return
                data += got
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += self.request.recv(65536)
            try:
                for delay, piece in self.server.script:
                    time.sleep(delay)
                    self.request.sendall(piece)
            except OSError:  # the client hung up (it gave up on a stall)
                pass

    servers = []

    def start(script):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.script = script
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


async def stream_texts(url, use_async, **kw):
    """The chunks' texts of one streamed completion, through Client or AsyncClient."""
    kw = dict(base_url=url, retry=RetryPolicy(max_retries=0), **kw)
    if use_async:
        async with AsyncClient(**kw) as c:
            return [ch.text async for ch in await c.completions.create(model="m", prompt="p", stream=True)]
    with Client(**kw) as c:
        return collect(c.completions.create(model="m", prompt="p", stream=True))


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("script, texts", [
    ([(0.6, SSE_HEAD + SSE_REST)], ["a", "b"]),  # the headers come late (a queue in front of them)
    ([(0.0, SSE_HEAD), (0.6, SSE_REST)], ["a", "b"]),  # the headers at once, the first chunk late (vLLM's prefill)
    ([(0.6, WHOLE_ANSWER)], ["ab"]),  # a provider that ignores stream=True: one JSON body, late
    # a chat stream's role chunk at once, its first token late (our server, queued): the role chunk
    # started the idle clock, and a queued chat request ended as idle, with nothing retried
    ([(0.0, SSE_HEAD + http_chunk(ROLE_ONLY)), (0.6, SSE_REST)], ["", "a", "b"]),
], ids=["late-headers", "late-first-chunk", "late-whole-answer", "role-chunk-then-late-token"])
async def test_the_wait_for_the_first_chunk_is_governed_by_the_request_timeout(raw_server, script, texts, use_async):
    # Client(timeout=300) still failed at stream_idle_timeout (60 s by default): the read timeout of a stream
    # was capped at it, headers and first chunk included. Here 0.6 s of waiting, idle 0.2 s, timeout 10 s
    url = raw_server(script)
    assert await stream_texts(url, use_async, timeout=10.0, stream_idle_timeout=0.2) == texts


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
async def test_a_silent_server_after_the_first_chunk_ends_at_the_idle_timeout(raw_server, use_async):
    # no keep-alives, no bytes at all: the idle timeout, not the longer read timeout, ends the stream
    url = raw_server([(0.0, SSE_HEAD + http_chunk(chunk("a"))), (5.0, SSE_REST)])
    with pytest.raises(StreamInterruptedError) as info:
        await stream_texts(url, use_async, timeout=3.0, stream_idle_timeout=0.2)
    assert isinstance(info.value.cause, APITimeoutError) and "stream idle: no chunk for more than 0.2 s" in str(info.value)
    assert info.value.partial_text == "a" and info.value.chunks_received == 1


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
async def test_a_slow_reader_over_a_socket_is_not_ended_as_idle(raw_server, use_async):
    # the answer arrived at once and waits in the buffers while the caller takes its time per chunk
    url = raw_server([(0.0, SSE_HEAD + SSE_REST)])
    kw = dict(base_url=url, retry=RetryPolicy(max_retries=0), stream_idle_timeout=0.1)
    texts = []
    if use_async:
        import asyncio

        async with AsyncClient(**kw) as c:
            async for ch in await c.completions.create(model="m", prompt="p", stream=True):
                texts.append(ch.text)
                await asyncio.sleep(0.3)
    else:
        with Client(**kw) as c:
            for ch in c.completions.create(model="m", prompt="p", stream=True):
                texts.append(ch.text)
                time.sleep(0.3)
    assert texts == ["a", "b"]


# ---- async streams


async def test_async_stream_and_interruption():
    def async_handler(pieces):
        async def gen():
            for p in pieces:
                if isinstance(p, Exception):
                    raise p
                yield p

        return lambda request: httpx.Response(200, content=gen())

    transport = httpx.MockTransport(async_handler([chunk("x"), chunk("y", "stop"), USAGE, DONE]))
    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=transport, retry=NO_WAIT) as c:
        stream = await c.completions.create(model="m", prompt="p", stream=True)
        texts = [ch.text async for ch in stream]
    assert texts == ["x", "y", ""] and stream.text == "xy" and stream.usage.total_tokens == 7

    transport = httpx.MockTransport(async_handler([chunk("x"), httpx.ReadError("reset")]))
    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=transport, retry=NO_WAIT) as c:
        stream = await c.completions.create(model="m", prompt="p", stream=True)
        with pytest.raises(StreamInterruptedError) as info:
            async for _ in stream:
                pass
    assert info.value.partial_text == "x"


WHOLE_CHAT = {"id": "c1", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole answer"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}


async def test_a_provider_that_ignores_stream_true_still_gives_its_answer():
    # one JSON body instead of an event stream: the SSE parser saw no `data:` line and called the
    # stream cut (retried, then an APIConnectionError); it is one chunk with the whole answer
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(200, json=WHOLE_CHAT)

    with client_for(handler) as c:
        stream = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        texts = collect(stream)
    assert texts == ["whole answer"] and len(calls) == 1
    assert stream.finish_reason == "stop" and stream.usage.total_tokens == 6 and stream.ttft_s is not None
    transport = httpx.MockTransport(handler)
    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=transport, retry=NO_WAIT) as c:
        stream = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True)
        assert [ch.text async for ch in stream] == ["whole answer"] and stream.usage.total_tokens == 6
    broken = lambda r: httpx.Response(200, content=b"<html>", headers={"content-type": "application/json"})  # noqa: E731
    with pytest.raises(APIConnectionError, match="expected an event stream .* not JSON: b'<html>'") as info:
        client_for(broken).completions.create(model="m", prompt="p", stream=True)
    assert type(info.value) is APIConnectionError  # not a timeout, not a cut stream: the body was wrong


def test_status_error_on_stream_request_is_raised_at_create():
    handler = lambda r: httpx.Response(401, json={"error": {"message": "bad key"}})  # noqa: E731
    with pytest.raises(AuthenticationError, match="bad key") as info:
        client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert info.value.status_code == 401


async def test_pools_are_given_back_after_streams_and_failures():
    from lab.client._pool import PoolSet

    made = []
    pools = PoolSet(lambda: made.append(object()) or made[-1], per_pool=2, max_pools=3)
    got = [pools.acquire() for _ in range(7)]
    assert [made.index(pool) for pool, _ in got] == [0, 0, 1, 1, 2, 2, 0] and pools.loads == [3, 2, 2]
    for _, release in got:  # full: the least busy took more
        release()
    got[0][1]()  # a second call gives back nothing more
    assert pools.loads == [0, 0, 0] and len(made) == 3
    # held across a second asyncio.run: its pools start afresh, and the late releases touch only the old
    held = [pools.acquire() for _ in range(3)]
    pools._loop = asyncio.new_event_loop()
    pools._loop.close()
    fresh = pools.acquire()
    for _, release in held:
        release()
    assert pools.loads == [1] and fresh[0] is made[-1] and len(made) == 4

    calls = []

    def handler(request):
        calls.append(request)

        async def gen():
            if len(calls) > 1:
                raise httpx.ReadError("boom")
            yield chunk("x", "stop") + DONE

        return httpx.Response(200, content=gen())

    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler),
                           retry=RetryPolicy(max_retries=0)) as c:
        stream = await c.completions.create(model="m", prompt="p", stream=True)
        assert c._pools.loads == [1]  # held while the stream is open
        [ch async for ch in stream]
        with pytest.raises(APIConnectionError, match=r"^connection error \(ReadError: boom\)$") as info:
            await c.completions.create(model="m", prompt="p", stream=True)
        assert type(info.value) is APIConnectionError and isinstance(info.value.__cause__, httpx.ReadError)
        assert c._pools.loads == [0]


def test_a_stream_left_early_without_close_gives_back_its_slot():
    import gc
    import threading

    handler, calls = stream_handler([chunk("a"), chunk("b"), DONE])
    client = client_for(handler, max_concurrency=1)

    def first_text():
        for c in client.completions.create(model="m", prompt="p", stream=True):
            return c.text  # leaves the loop; the stream is dropped unclosed

    assert first_text() == "a"
    gc.collect()
    second = threading.Thread(target=first_text, daemon=True)
    second.start()
    second.join(5)
    assert not second.is_alive() and len(calls) == 2  # the one slot came back


async def test_an_async_stream_left_early_gives_back_its_slot():
    import asyncio
    import gc

    calls = []

    def handler(request):
        calls.append(request)

        async def body():
            for piece in (chunk("a"), chunk("b"), DONE):
                yield piece

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    client = AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler),
                         retry=NO_WAIT, max_concurrency=1)

    async def first_text():
        async for c in await client.completions.create(model="m", prompt="p", stream=True):
            return c.text

    assert await first_text() == "a"
    gc.collect()
    assert await asyncio.wait_for(first_text(), 5) == "a" and len(calls) == 2
    await client.close()


def test_a_stream_interrupted_by_ctrl_c_gives_back_its_slot_at_once():
    # the exception, kept (as IPython keeps the last one), held the stream and its slot: the next
    # request of a max_concurrency=1 client waited for ever
    import threading

    def ctrl_c():
        raise KeyboardInterrupt

    handler, calls = stream_handler([chunk("a"), ctrl_c, DONE], [chunk("b"), DONE])
    client = client_for(handler, max_concurrency=1)
    stream = client.completions.create(model="m", prompt="p", stream=True)
    with pytest.raises(KeyboardInterrupt) as kept:
        collect(stream)
    assert stream.closed and kept.value is not None
    second = threading.Thread(target=lambda: collect(client.completions.create(model="m", prompt="p", stream=True)),
                              daemon=True)
    second.start()
    second.join(5)
    assert not second.is_alive() and len(calls) == 2


async def test_a_cancelled_async_stream_gives_back_its_slot_at_once():
    # a cancelled task kept in a list (asyncio.wait's, gather's results) held the stream and its slot
    import asyncio

    calls = []

    def handler(request):
        calls.append(request)

        async def body():
            yield chunk("a")
            if len(calls) == 1:
                await asyncio.sleep(60)  # a stalled server, until the consumer is cancelled
            yield DONE

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    client = AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler),
                         retry=NO_WAIT, max_concurrency=1)

    async def consume():
        return [c.text async for c in await client.completions.create(model="m", prompt="p", stream=True)]

    tasks = [asyncio.create_task(consume())]
    while not calls:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    tasks[0].cancel()
    await asyncio.wait(tasks)  # done, cancelled, and still held by the list
    assert tasks[0].cancelled()
    assert await asyncio.wait_for(consume(), 5) == ["a"] and len(calls) == 2
    await client.close()


@pytest.mark.parametrize("bad", [b"data: 42\n\n", b"data: null\n\n", b'data: {"choices": [5]}\n\n',
                                 b'data: {"choices": 5}\n\n'])
def test_a_chunk_that_is_json_but_not_a_chunk_is_a_malformed_stream(bad):
    # valid JSON of the wrong shape used to escape as AttributeError: the stream stayed open (its
    # concurrency slot held) and the caller lost the partial text
    handler, calls = stream_handler([chunk("par"), bad, chunk("tial", "stop"), DONE])
    client = client_for(handler, max_concurrency=1)
    stream = client.completions.create(model="m", prompt="p", stream=True)
    with pytest.raises(StreamInterruptedError, match="malformed stream chunk") as info:
        collect(stream)
    assert info.value.partial_text == "par" and stream.closed
    handler, calls = stream_handler([bad], [chunk("ok", "stop"), DONE])  # before the first chunk: retried
    assert collect(client_for(handler).completions.create(model="m", prompt="p", stream=True)) == ["ok"]
    assert len(calls) == 2


def test_a_slow_reader_is_not_an_idle_server(monkeypatch):
    # the idle timeout is about the server: time the caller spends between chunks (a notebook cell
    # run a minute later, slow per-chunk work) must not count, when the rest is already buffered
    class Clock:
        t = 1000.0

        def perf_counter(self):
            return self.t

        def __getattr__(self, name):
            return getattr(time, name)

    clock = Clock()
    monkeypatch.setattr("lab.client.streaming.time", clock)
    monkeypatch.setattr("lab.client.client.time", clock)
    handler, _ = stream_handler([chunk("a"), chunk("b"), chunk("c", "stop"), DONE])
    stream = client_for(handler, stream_idle_timeout=5.0).completions.create(model="m", prompt="p", stream=True)
    got = []
    for c in stream:
        got.append(c.text)
        clock.t += 60.0  # the caller works (or waits) a minute per chunk
    assert got == ["a", "b", "c"] and stream.finish_reason == "stop"


def test_a_byte_order_mark_at_the_start_of_the_stream_is_ignored():
    # the SSE spec drops one leading U+FEFF; kept, it turned the first field name into "\ufeffdata"
    # and the first chunk (the first token) vanished without an error
    handler, _ = stream_handler([b"\xef\xbb\xbf" + chunk("first"), chunk(" second", "stop"), DONE])
    stream = client_for(handler).completions.create(model="m", prompt="p", stream=True)
    assert collect(stream) == ["first", " second"] and stream.text == "first second"
    assert [e.data for e in iter_events(["\ufeffdata: a", "", "\ufeffdata: b", ""])] == ["a"]  # only at the start


def test_sse_retry_field_takes_ascii_digits_only():
    # "²".isdigit() is True but int("²") raises: the ValueError escaped the stream, which stayed open
    events = list(iter_events(["retry: ²", "data: a", "", "retry: 30", "data: b", ""]))
    assert [(e.data, e.retry) for e in events] == [("a", None), ("b", 30)]


# httpcore's own read coroutine, closed with no loop, reports itself as unraisable: not ours to mend
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_async_stream_whose_consumer_is_closed_outside_a_loop_gives_back_its_slot(raw_server):
    # a task dropped with its loop: coro.close() throws GeneratorExit into the waiting read, and
    # awaiting the connection's close there, with no loop running, raised instead of ending quietly
    import asyncio

    url = raw_server([(0.0, SSE_HEAD + http_chunk(chunk("a"))), (30.0, b"")])
    client = AsyncClient(base_url=url, api_key=KEY, retry=NO_WAIT, max_concurrency=1, stream_idle_timeout=None)

    async def consume():
        async for _ in await client.completions.create(model="m", prompt="p", stream=True):
            pass

    loop = asyncio.new_event_loop()
    task = loop.create_task(consume())
    loop.run_until_complete(asyncio.sleep(0.5))  # the stream waits for its second chunk
    coro = task.get_coro()
    del task
    coro.close()  # raised AsyncLibraryNotFoundError
    assert client._limiter._slots._value == 1  # the slot came back
    loop.close()


# ---- formats of real providers, as they send them


def _chat(delta, finish=None, **choice_extra):
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice_extra}]}
    return f"data: {json.dumps(body)}\n\n".encode()


def test_gemini_error_bodies_in_a_list_keep_their_message():
    # Gemini's OpenAI-compatible endpoint: [{"error": {...}}]; the client said "no message from the server"
    body = [{"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}}]
    c = client_for(lambda request: httpx.Response(400, json=body))
    with pytest.raises(BadRequestError) as e:
        c.completions.create(model="m", prompt="x")
    assert e.value.message == "Invalid JSON payload received." and e.value.code == 400


def test_an_error_sent_with_a_200_is_an_error():
    # OpenRouter, once generation has begun: status 200 and {"error": ...} (a body) or an error inside
    # the choice with finish_reason "error" (a stream); both were returned as successes
    calls = []

    def whole(request):
        calls.append(request)
        return httpx.Response(200, json={"error": {"code": 502, "message": "upstream provider failed"}},
                              headers={"x-generation-id": "gen-1"})

    with pytest.raises(InternalServerError) as e:
        client_for(whole).completions.create(model="m", prompt="x")
    assert e.value.status_code == 502 and "upstream provider failed" in e.value.message
    assert e.value.request_id == "gen-1" and len(calls) == 3  # retried as a 502 is
    failing = _chat({"content": ""}, "error", error={"code": 502, "message": "provider disconnected"})
    handler, _ = stream_handler([_chat({"role": "assistant", "content": "The answer is"}), failing, DONE])
    with pytest.raises(StreamInterruptedError) as e:
        collect(client_for(handler).chat.completions.create(model="m", messages=[], stream=True))
    assert e.value.partial_text == "The answer is" and "provider disconnected" in str(e.value)


def test_tool_call_and_refusal_deltas_are_timed_as_output():
    # a stream of tool-call deltas had no "first token": ttft_s was its latency, and the idle timeout
    # never applied to it
    tool = {"tool_calls": [{"index": 0, "id": "t1", "type": "function",
                            "function": {"name": "f", "arguments": ""}}], "content": None}
    for delta in (tool, {"refusal": "I can't help with that.", "content": None}):
        late = [_chat({"role": "assistant", "content": ""}), _chat(delta), lambda: time.sleep(0.2),
                _chat({}, "stop"), DONE]
        handler, _ = stream_handler(late)
        with client_for(handler).chat.completions.create(model="m", messages=[], stream=True) as s:
            chunks = list(s)
        assert s.ttft_s < s.latency_s - 0.15  # the delta, not the end
        if "refusal" in delta:
            assert chunks[1].choices[0].delta.refusal == "I can't help with that."


def test_other_providers_request_ids_usage_details_and_reset_spellings():
    from lab.client.errors import request_id_from
    from lab.client.limits import RateLimiter, RateLimits
    from lab.client.types import Usage

    assert request_id_from(httpx.Headers({"apim-request-id": "az-1"})) == "az-1"  # Azure's gateway
    assert request_id_from(httpx.Headers({"x-ds-trace-id": "ds-1"})) == "ds-1"  # DeepSeek's
    assert request_id_from(httpx.Headers({"x-request-id": "oa-1", "apim-request-id": "az-1"})) == "oa-1"
    usage = Usage.from_dict({"prompt_tokens": 5, "completion_tokens": 9,
                             "completion_tokens_details": {"reasoning_tokens": 7}})
    assert usage.reasoning_tokens == 7 and usage.completion_tokens == 9
    limiter = RateLimiter(RateLimits(tpm=1000))
    # Azure spells the reset x-rate-limit-reset-tokens and sends no retry-after: the pause was 1 s
    limiter.observe(200, {"x-ratelimit-remaining-tokens": "0", "x-rate-limit-reset-tokens": "55"}, now=100.0)
    assert limiter.paused_until == pytest.approx(155.0)
