"""`x-request-id` on every answer, as OpenAI sends it: clients put it in their errors and logs, so one
line is enough to find the request on the server. The completion id (`chatcmpl-...`, `cmpl-...`) where
the route made one, else a fresh `req-...`.

A plain ASGI middleware, not starlette's BaseHTTPMiddleware: that one runs the app in a separate task
and pipes the body through a memory stream, which delays streamed chunks and hides a client's
disconnect from the route (the server aborts requests on disconnect to free their KV blocks).
"""

from __future__ import annotations

import logging
import uuid

from lab.server.errors import APIError

log = logging.getLogger("lab.server")
HEADER = b"x-request-id"
STATE_KEY = "request_id"  # request.state.request_id, set by a route that made a completion id


def new_request_id(prefix: str = "req-") -> str:
    return prefix + uuid.uuid4().hex


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
