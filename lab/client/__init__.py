"""An httpx client for any OpenAI-compatible API: this project's server, vLLM, OpenAI, DeepSeek, HolySheep.

Streaming, openai-python's retry policy and error names, client-side rate limits, cost per response,
resumable batch runs (`run_batch`) and a load generator that returns a `lab.metrics.Result`.

A stream holds its connection and its concurrency slot until it is read to the end or closed: one you
may leave early, open as `with client.chat.completions.create(..., stream=True) as stream:` (`async with`
on an `AsyncClient`), or call `stream.close()` (`await stream.close()` on an `AsyncClient`).
"""

from lab.client.batch import arun_batch, run_batch
from lab.client.client import AsyncClient, Client
from lab.client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    MissingAPIKeyError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
    UnprocessableEntityError,
)
from lab.client.limits import RateLimits
from lab.client.loadgen import arun_workload, run_workload
from lab.client.providers import PROVIDERS, Provider, mask_key
from lab.client.retry import RetryPolicy
from lab.client.streaming import AsyncStream, Stream
from lab.client.types import ChatCompletion, ChatMessage, Choice, Chunk, Completion, Model, ModelPage, Usage

__all__ = [
    "APIConnectionError", "APIError", "APIStatusError", "APITimeoutError", "AsyncClient", "AsyncStream",
    "AuthenticationError", "BadRequestError", "ChatCompletion", "ChatMessage", "Choice", "Chunk", "Client",
    "Completion", "ConflictError", "InternalServerError", "InvalidRequestError", "MissingAPIKeyError", "Model", "ModelPage",
    "NotFoundError", "PROVIDERS", "PermissionDeniedError", "Provider", "RateLimitError", "RateLimits",
    "RetryPolicy", "Stream", "StreamInterruptedError", "UnprocessableEntityError", "Usage", "arun_batch",
    "arun_workload", "mask_key", "run_batch", "run_workload",
]
