"""The exception family, named as in openai-python so `except RateLimitError:` reads the same.

Every error carries the HTTP status (None for connection problems), the request id the server gave,
and the server's own message, so a log line is enough to file a ticket with the provider.
"""

from __future__ import annotations

import json
import math


class APIError(Exception):
    """Base of every error the client raises about a request."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        body: object = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.request_id = request_id
        self.body = body
        self.headers = headers or {}
        self.retries_taken = 0  # set by the retry loop, so batch records can say how hard we tried
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        self.code = err.get("code")
        self.type = err.get("type")
        self.param = err.get("param")

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.insert(0, f"HTTP {self.status_code}:")
        if self.request_id:
            parts.append(f"(request id {self.request_id})")
        return " ".join(parts)


class MissingAPIKeyError(APIError):
    """No usable API key: raised before any request is sent."""


class APIConnectionError(APIError):
    """The request never got an HTTP answer: DNS, refused connection, reset, cut stream."""


class InvalidRequestError(APIError):
    """The client could not put the request on the wire (an illegal header value, say). Not retried."""


class APITimeoutError(APIConnectionError):
    """Connect, read, write or pool timeout, or a stream idle for too long."""


class StreamInterruptedError(APIError):
    """A stream failed after it had delivered chunks. Not retried: the caller has already
    seen part of the answer. `partial_text` holds what arrived, `cause` the underlying error."""

    def __init__(self, message: str, *, partial_text: str, chunks_received: int, cause: Exception | None = None,
                 **kw):
        super().__init__(message, **kw)
        self.partial_text = partial_text
        self.chunks_received = chunks_received
        self.cause = cause


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""


class BadRequestError(APIStatusError):  # 400
    pass


class AuthenticationError(APIStatusError):  # 401
    pass


class PermissionDeniedError(APIStatusError):  # 403
    pass


class NotFoundError(APIStatusError):  # 404
    pass


class ConflictError(APIStatusError):  # 409
    pass


class UnprocessableEntityError(APIStatusError):  # 422
    pass


class RateLimitError(APIStatusError):  # 429
    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait (retry-after-ms or retry-after), if it said; None also for
        what the retry policy ignores too: a date in the past (negative), "nan", "inf"."""
        from lab.client.retry import parse_retry_after

        wait = parse_retry_after(self.headers)
        return wait if wait is not None and 0 <= wait < math.inf else None


class InternalServerError(APIStatusError):  # 5xx
    pass


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


# OpenAI's x-request-id first; then the names other providers give theirs (Azure's API gateway,
# DeepSeek's trace id, OpenRouter's generation id): the id their support asks for
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "apim-request-id", "x-ds-trace-id", "x-generation-id")


def request_id_from(headers) -> str | None:
    return next((headers[name] for name in REQUEST_ID_HEADERS if headers.get(name)), None)


def error_body(body: object) -> object:
    """An error body as one object: Gemini's OpenAI-compatible endpoint wraps it in a list,
    `[{"error": {...}}]`, which lost the server's message, code and status."""
    if isinstance(body, list) and body and isinstance(body[0], dict) and "error" in body[0]:
        return body[0]
    return body


def server_message(body: object, fallback: str) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or text."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def make_status_error(status_code: int, body: object, headers=None, request_id: str | None = None) -> APIStatusError:
    """The right APIStatusError subclass for a status code, with the server's message."""
    headers = dict(headers or {})
    body = error_body(body)
    cls = _BY_STATUS.get(status_code) or (InternalServerError if status_code >= 500 else APIStatusError)
    message = server_message(body, fallback=f"{cls.__name__} with no message from the server")
    rid = request_id or request_id_from(headers)
    return cls(message, status_code=status_code, request_id=rid, body=body, headers=headers)


def error_in_body(payload: object, request_id: str | None) -> APIStatusError:
    """An error sent inside a 200 (a stream's error event, or a body that is only `{"error": ...}`): its
    `status` (our server's) or its `code` (vLLM's, OpenRouter's) when that is an HTTP status, else a 500
    (the server failed mid-way)."""
    err = payload.get("error") if isinstance(payload, dict) else None
    status = 500
    for field in ("status", "code"):
        value = err.get(field) if isinstance(err, dict) else None
        if isinstance(value, int | str) and str(value).isdigit() and 400 <= int(value) <= 599:
            status = int(value)
            break
    return make_status_error(status, payload if isinstance(payload, dict) else {"error": payload},
                             request_id=request_id)


def error_from_response(status_code: int, content: bytes, headers) -> APIStatusError:
    try:
        body: object = json.loads(content) if content else None
    except ValueError:
        body = content.decode("utf-8", "replace")
    # httpx.Headers is case-insensitive; a plain dict copy keeps its lower-cased keys
    return make_status_error(status_code, body, {k.lower(): v for k, v in headers.items()})


def from_httpx(exc: Exception, request_id: str | None = None) -> APIError:
    """httpx's transport errors as ours: timeouts (connect, read, write, pool) and everything else.
    `request_id`: when the response's headers had arrived before the failure."""
    import httpx

    kind = type(exc).__name__
    detail = str(exc) or "no detail"
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out ({kind}: {detail})", request_id=request_id)
    if isinstance(exc, httpx.LocalProtocolError):
        # our own request could not be written (an illegal header value): sending it again cannot help,
        # and httpx's message quotes the header, which may be the API key
        return InvalidRequestError(f"the request could not be sent ({kind}); check header values")
    return APIConnectionError(f"connection error ({kind}: {detail})", request_id=request_id)
