"""The FastAPI app: OpenAI's routes, and the checks every generation request passes in order:
shutting down (503), API key (401), injected faults, body size (413), body (400), model (404),
context (400), queue (429), rate limit (429); then the engine. Every answer carries `x-request-id`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from lab.engine.async_engine import AsyncEngine
from lab.engine.chat import turn_end
from lab.engine.engine import RequestIdInFlight
from lab.server.auth import authenticate
from lab.server.config import ServerConfig
from lab.server.errors import APIError, bad_request, from_validation, install_handlers
from lab.server.faults import HEADER, FaultConfig, FaultInjector
from lab.server.metrics import ErrorCounter, ServerMetrics
from lab.server.openapi import add_nested_schemas, request_body
from lab.server.protocol import ChatCompletionRequest, CompletionRequest
from lab.server.ratelimit import RateLimiter
from lab.server.request_id import STATE_KEY, RequestIdMiddleware, new_request_id, unique_request_id
from lab.server.responses import PAUSE_POLL_S, Admitted, full_response, pause, stream_events

FAULT_FIELDS = tuple(f.name for f in fields(FaultConfig))


@dataclass(slots=True)
class ServerState:
    engine: AsyncEngine
    config: ServerConfig
    model_name: str
    faults: FaultInjector
    limiter: RateLimiter
    metrics: ServerMetrics
    created: int
    shutting_down: bool = False
    sampling_defaults: dict = field(default_factory=dict)  # generation_config.json's, as vLLM applies them


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="batching-lab", summary="OpenAI-compatible server on the batching-lab engine")
    app.state.lab = state
    install_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(ErrorCounter, metrics=state.metrics)  # last added: outermost, sees every answer
    add_nested_schemas(app, [ChatCompletionRequest, CompletionRequest])

    @app.get("/health")
    async def health():
        if state.shutting_down or not state.engine.is_running:
            raise _unavailable(state)
        return {"status": "ok"}

    # HEAD too: load balancers and uptime checks probe with it (GET alone answered 405); one route per
    # method, or the OpenAPI document gets a duplicate operation id
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request):
        authenticate(request.headers.get("authorization"), state.config.api_keys)
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request):
        authenticate(request.headers.get("authorization"), state.config.api_keys)
        _check_model(state, model)
        return _model_card(state)

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
    async def chat_completions(request: Request):
        return await _generate(state, request, "chat")

    @app.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
    async def completions(request: Request):
        return await _generate(state, request, "completion")

    @app.get("/admin/faults")
    async def get_faults(request: Request):
        authenticate(request.headers.get("authorization"), state.config.api_keys)
        cfg = state.faults.config
        return {"faults": None if cfg is None else asdict(cfg)}

    @app.put("/admin/faults")
    async def put_faults(request: Request):
        """Body: FaultConfig fields as JSON, or `null` to turn faults off."""
        authenticate(request.headers.get("authorization"), state.config.api_keys)
        raw = await _read_body(request, state.config.max_body_bytes, state)
        try:
            try:
                body = json.loads(raw) if raw.strip() else None  # an empty body, like `null`: faults off
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                raise ValueError(f"faults: the body is not valid JSON ({exc})") from None
            if body is not None and not isinstance(body, dict):
                raise ValueError(f"faults: the body must be a JSON object of FaultConfig fields or null, "
                                 f"got {type(body).__name__}")
            unknown = next((k for k in body or {} if k not in FAULT_FIELDS), None)
            if unknown is not None:  # else FaultConfig's TypeError, "__init__() got an unexpected keyword"
                raise ValueError(f"{unknown}: not a fault setting; allowed: {', '.join(FAULT_FIELDS)}")
            cfg = None if body is None else FaultConfig(**body)
        except (TypeError, ValueError) as exc:
            raise bad_request(ValueError(str(exc)), default_param="faults") from None
        state.faults = FaultInjector(cfg)
        return {"faults": None if cfg is None else asdict(cfg)}

    return app


def _model_card(state: ServerState) -> dict:
    # root and parent as vLLM's card has them: `vllm bench serve` without --model reads data[0]["root"]
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "batching-lab",
            "root": state.model_name, "parent": None, "max_model_len": state.engine.engine.config.max_model_len}


def _check_model(state: ServerState, model: str) -> None:
    if model != state.model_name:
        raise APIError(404, f"The model `{model}` does not exist; this server serves `{state.model_name}`.",
                       param="model", code="model_not_found")


async def _generate(state: ServerState, request: Request, kind: str):
    arrival = time.perf_counter()
    admitted, streaming = await _admit(state, request, kind, arrival)  # an error is counted by ErrorCounter
    if streaming:
        return StreamingResponse(stream_events(admitted, state.engine, state.metrics),
                                 media_type="text/event-stream", headers=admitted.headers)
    return await full_response(admitted, state.engine, state.metrics, request)


async def _admit(state: ServerState, request: Request, kind: str, arrival: float) -> tuple[Admitted, bool]:
    cfg, engine = state.config, state.engine
    if state.shutting_down:
        raise _unavailable(state)
    key = authenticate(request.headers.get("authorization"), cfg.api_keys)
    fault = state.faults.draw(request.headers.get(HEADER) if cfg.allow_fault_header else None)
    if fault.latency_s:
        await pause(fault.latency_s, engine)
        if state.shutting_down or not engine.is_running:  # a shutdown ended the pause: say so now, not
            raise _unavailable(state)  # after the checks below (a 429 "retry in 60 s", a spent rate budget)
    if fault.status is not None:
        raise fault.error()
    body = await _read_body(request, cfg.max_body_bytes, state)
    model_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
    try:
        req = model_cls.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation(exc) from None
    _check_model(state, req.model)
    unsupported = req.unsupported_field()
    if unsupported == "stream_options":
        raise APIError(400, "stream_options: only allowed when stream is true", param="stream_options",
                       code="invalid_value")
    if unsupported is not None:
        raise APIError(400, f"{unsupported}: not supported by this server; leave it out (or at its default)",
                       param=unsupported, code="unsupported_parameter")
    prompt_field = "messages" if kind == "chat" else "prompt"
    # on a worker thread: a long prompt through a real tokenizer takes milliseconds to seconds, and on
    # the event loop that would stall every other stream's chunks and /health (vLLM tokenizes off-loop too)
    ids = await asyncio.to_thread(_tokenize, engine, req, prompt_field)
    max_tokens = _max_tokens(engine.engine, len(ids), req, prompt_field)
    chat_turn_end = _chat_turn_end(engine.engine) if kind == "chat" else None
    try:
        params = req.sampling_params(max_tokens, state.sampling_defaults, chat_turn_end)
        # everything the engine would refuse, refused before this request takes any rate budget
        engine.engine.check_request(ids, params)
    except ValueError as exc:
        raise bad_request(_in_request_terms(exc, prompt_field, _max_tokens_name(req)), default_param=prompt_field) from None
    client = request.client.host if request.client else "unknown"
    bucket = key or f"address:{client}"
    if engine.stats.num_waiting >= cfg.max_queued_requests:
        # x-ratelimit-* describe this key's own budget, untouched by a full queue: peek() shows it
        # without taking from it. With no per-key limits there is no budget to show, so none are sent:
        # the queue is shared by every client, and dressing its depth up as "remaining requests" would
        # tell a client's rate limiter that its own budget ran out.
        raise APIError(429, f"The server's queue is full ({cfg.max_queued_requests} requests waiting); "
                       "retry shortly.", code="queue_full", type="server_overloaded",
                       headers={"retry-after": "1", "retry-after-ms": "1000"} | state.limiter.peek(bucket))
    headers = state.limiter.check(bucket, len(ids) + max_tokens)
    client_id = request.headers.get("x-request-id")
    request_id = new_request_id("chatcmpl-" if kind == "chat" else "cmpl-", client_id)
    setattr(request.state, STATE_KEY, request_id)  # the x-request-id of this answer, error or not
    try:
        try:
            stream = await engine.add_request(ids, params, request_id)
        except RequestIdInFlight:
            if client_id is None:
                raise
            # the client's id is taken by a request in flight: this one gets it with a suffix
            request_id = unique_request_id(request_id)
            setattr(request.state, STATE_KEY, request_id)
            stream = await engine.add_request(ids, params, request_id)
    except ValueError as exc:
        raise bad_request(exc, default_param=prompt_field) from None
    except RuntimeError:
        raise _unavailable(state) from None
    admitted = Admitted(kind, request_id, state.model_name, stream, fault, req.include_usage, arrival, headers,
                        continuous_usage=req.continuous_usage)
    return admitted, req.stream


def _unavailable(state: ServerState) -> APIError:
    if state.shutting_down or state.engine.is_running:
        return APIError(503, "server is shutting down", code="shutting_down", headers={"retry-after": "5"})
    # the engine thread died (its traceback is in the log): "shutting down" sent operators the wrong way,
    # and no retry-after, as waiting will not bring it back; only a restart does
    return APIError(503, "the engine is not running: it failed (see the server log); restart the server",
                    code="engine_dead")


async def _read_body(request: Request, limit: int, state: ServerState) -> bytes:
    declared = request.headers.get("content-length", "")
    too_large = APIError(413, f"body: larger than this server's limit of {limit} bytes (max_body_bytes)",
                         code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body, size = [], 0
    chunks = aiter(request.stream())
    while True:  # counted as it arrives: a chunked body has no declared size
        try:
            chunk = await _unless_shutdown(anext(chunks), state)
        except StopAsyncIteration:
            break
        size += len(chunk)
        if size > limit:
            raise too_large
        body.append(chunk)
    return b"".join(body)


async def _unless_shutdown(awaitable, state: ServerState):
    """Its result, or a 503 once the server shuts down: a client still sending its body held close() for
    the whole graceful timeout, and then got uvicorn's bare text 500."""
    task = asyncio.ensure_future(awaitable)
    while True:
        done, _ = await asyncio.wait({task}, timeout=PAUSE_POLL_S)
        if done:
            return task.result()
        if state.shutting_down:
            task.cancel()
            raise _unavailable(state)


def _tokenize(engine: AsyncEngine, req, field: str) -> list[int]:
    """Token ids up front, for the context and token-rate checks; runs on a worker thread (see _admit)."""
    tokenizer = engine.engine.tokenizer
    if isinstance(req, CompletionRequest) and isinstance(req.prompt, list):
        if not req.prompt:
            raise APIError(400, "prompt: must not be empty", param="prompt", code="invalid_value")
        return req.prompt
    if tokenizer is None:
        raise APIError(400, f"{field}: this model folder has no tokenizer; send `prompt` as token ids to "
                       "/v1/completions", param=field, code="invalid_value")
    try:
        if isinstance(req, ChatCompletionRequest):
            text = tokenizer.apply_chat_template([m.for_template() for m in req.messages])
        else:
            text = req.prompt
    except ValueError as exc:
        raise bad_request(exc, default_param=field) from None
    except Exception as exc:  # a template error from jinja2
        raise APIError(400, f"{field}: the chat template failed: {exc}", param=field, code="invalid_value") from None
    if not text:
        raise APIError(400, f"{field}: must not be empty", param=field, code="invalid_value")
    at_least = tokenizer.min_tokens(text)
    if at_least >= engine.engine.config.max_model_len:  # refused without tokenizing it: see min_tokens
        _max_tokens(engine.engine, at_least, req, field, at_least=True)
    try:
        # a rendered chat template carries its own BOS; adding one doubles it (vLLM's chat default)
        return tokenizer.encode(text, add_special_tokens=not isinstance(req, ChatCompletionRequest))
    except ValueError as exc:  # a character outside a character-level vocabulary, named by the tokenizer
        detail = str(exc).removeprefix("prompt: ")  # the field is ours to name: prompt or messages
        raise APIError(400, f"{field}: {detail}", param=field, code="invalid_value") from None


def _chat_turn_end(engine) -> str | None:
    """The text that ends an assistant turn, as a stop string, for a chat template whose model has no
    end-of-turn token (the bundled model); a model with one stops at that token instead."""
    if engine.model_config.eos_token_ids:
        return None
    return turn_end(engine.tokenizer.chat_template)  # a chat request got here: the tokenizer exists


def _max_tokens_name(req) -> str:
    return "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"


def _in_request_terms(exc: ValueError, prompt_field: str, max_tokens_name: str) -> ValueError:
    """The engine names its own fields (prompt, max_tokens); a chat request sent messages, and maybe
    max_completion_tokens: the error names what the client sent."""
    head, sep, rest = str(exc).partition(":")
    if sep and head == "prompt":
        head = prompt_field
    message = re.sub(r"\bmax_tokens\b", max_tokens_name, head + sep + rest)
    return ValueError(message)


def _max_tokens(engine, prompt_tokens: int, req, field: str, at_least: bool = False) -> int:
    max_model_len = engine.config.max_model_len
    room = max_model_len - prompt_tokens
    if room < 1:
        count = f"at least {prompt_tokens}" if at_least else prompt_tokens
        raise APIError(400, f"{field}: the prompt has {count} tokens; this model's context is "
                       f"{max_model_len} tokens, which leaves no room to generate. Shorten the prompt.",
                       param=field, code="context_length_exceeded")
    requested = req.requested_max_tokens()
    if requested is None:
        # as vLLM: whatever the context leaves, and here also what the KV cache can hold (the last
        # token needs no slot), so a small cache does not refuse every request that names no max_tokens
        capacity = engine.block_manager.num_blocks * engine.config.block_size
        if prompt_tokens >= capacity + 1:
            raise APIError(400, f"{field}: the prompt has {prompt_tokens} tokens; this server's KV cache holds "
                           f"{capacity} tokens, which leaves no room to generate. Shorten the prompt.",
                           param=field, code="context_length_exceeded")
        return min(room, capacity + 1 - prompt_tokens)
    if requested > room:
        name = _max_tokens_name(req)
        raise APIError(400, f"{name}: this model's maximum context length is {max_model_len} tokens; you "
                       f"requested {prompt_tokens + requested} ({prompt_tokens} in the {field}, {requested} "
                       f"in the completion). Lower {name} to at most {room}.", param=name,
                       code="context_length_exceeded")
    return requested
