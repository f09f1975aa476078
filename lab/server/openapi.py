"""Request-body schemas in the OpenAPI document for routes that read the raw body themselves.

The generation routes take a `Request` and parse it with the pydantic models by hand (size limit first,
then OpenAI-shaped 400s), so FastAPI cannot see a body parameter and /docs would show none. The schema
goes in through `openapi_extra`, which changes the document only, never how a body is parsed.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def request_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` for a route whose JSON body is `model`; nested models are `$ref`s into the
    document's components, added by `add_nested_schemas`."""
    schema = model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def add_nested_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put the nested models (ChatMessage, StreamOptions, ...) where `request_body`'s refs point."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()  # FastAPI caches it in app.openapi_schema; we add to that copy once
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schemas.update(model.model_json_schema(ref_template=REF).get("$defs", {}))
        return app.openapi_schema

    app.openapi = openapi
