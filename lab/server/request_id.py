"""`x-request-id` on every answer, as OpenAI sends it: clients put it in their errors and logs, so one
line is enough to find the request on the server. The completion id (`chatcmpl-...`, `cmpl-...`) where
the route made one, else a fresh `req-...`. A client's own `x-request-id` names its completion, as in
vLLM (`cmpl-` plus it): `vllm bench serve` sends one per request, and a caller's logs then find it.

A plain ASGI middleware, not starlette's BaseHTTPMiddleware: that one runs the app in a separate task
and pipes the body through a memory stream, which delays streamed chunks and hides a client's
disconnect from the route (the server aborts requests on disconnect to free their KV blocks).
"""

from __future__ import annotations

import logging
import re
import uuid

from lab.server.errors import APIError

log = logging.getLogger("lab.server")
HEADER = b"x-request-id"
STATE_KEY = "request_id"  # request.state.request_id, set by a route that made a completion id


CLIENT_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe in a header and a log line


def new_request_id(prefix: str = "req-", client_id: str | None = None) -> str:
    """`prefix` and the client's id where it sent a usable one (else a fresh one, and a log line says why)."""
    if client_id is not None:
        if CLIENT_ID.fullmatch(client_id):
            return prefix + client_id
        log.info("x-request-id %r not used: want 1 to 128 printable ASCII characters, no spaces", client_id[:64])
    return prefix + uuid.uuid4().hex


def unique_request_id(request_id: str) -> str:
    """`request_id` with a short random suffix: for a client id already in flight (the engine keys its
    requests by id, and two clients, or one retrying, may send the same)."""
    return f"{request_id}-{uuid.uuid4().hex[:8]}"


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # request.state is this dict: created here, so the route and this middleware share it
        state = scope.setdefault("state", {})
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                rid = state.get(STATE_KEY) or new_request_id()
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if started:  # mid-answer (an injected cut, say): uvicorn must drop the connection
                raise
            # a bug escaped every handler: starlette's outer ServerErrorMiddleware would answer a bare
            # text 500 without the id, and uvicorn would then close the connection; answer in OpenAI's
            # shape with the id instead, log it here, and keep the connection
            rid = state.setdefault(STATE_KEY, new_request_id())  # the same id in the log and the answer
            log.exception("unhandled error in %s %s (request id %s)", scope.get("method"), scope.get("path"), rid)
            error = APIError(500, "The server had an error while processing your request.", code="internal_error")
            await error.response()(scope, receive, send_with_id)
