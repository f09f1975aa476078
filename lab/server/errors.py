"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so every SDK maps
them to its own exception classes (openai's AuthenticationError, RateLimitError, ...).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(exc: ValueError, default_param: str | None = None) -> APIError:
    """The engine's ValueErrors read "field: what is wrong"; the field becomes `param`."""
    message = str(exc)
    head = message.split(":", 1)[0]
    param = head if head.isidentifier() else default_param
    return APIError(400, message, param=param, code="invalid_value")


def from_validation(exc: ValidationError | RequestValidationError) -> APIError:
    """Pydantic's (and FastAPI's 422) errors -> one 400 naming the first bad field."""
    errors = exc.errors()
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(400, f"body: not valid JSON ({first.get('msg')})", code="invalid_json")
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = _param_name(loc)
    # a union whose input has a later branch's shape (content as a list of parts, an image part among
    # them): that branch's error inside the value says what is wrong; the first branch's "should be a
    # valid string" misleads
    inner = [e for e in errors if param and _param_name([p for p in e.get("loc", ()) if p != "body"])
             .startswith((param + "[", param + "."))]
    if inner:
        first = inner[0]
        param = _param_name([p for p in first.get("loc", ()) if p != "body"])
    # a union (prompt: str | list[int]) yields one error per branch: say all of them once
    same = [e["msg"].removeprefix("Value error, ") for e in errors if _param_name([p for p in e.get("loc", ()) if p != "body"]) == param]
    message = "; or ".join(dict.fromkeys(same))
    if first.get("type") == "missing":
        message = "field required"
    return APIError(400, f"{param or 'body'}: {message}", param=param or None, code="invalid_value")


def _param_name(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or "-" in part or part in ("str", "int", "float", "bool", "list", "dict"):
            continue  # pydantic's tag for a union branch, not a field
        else:
            out += f".{part}" if out else part
    return out


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        # the client hung up while we read its body (its timeout beat an injected delay, say):
        # nobody is listening, so no traceback and no body; 499 as nginx logs it
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return from_validation(exc).response()  # 400 as OpenAI, not FastAPI's 422

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.url.path}: no such route (the API is under /v1)"
        # its headers too: a 405 must say which methods the route takes (`Allow`)
        return APIError(exc.status_code, message, headers=dict(exc.headers or {})).response()
