"""What `Client` and `AsyncClient` share: configuration, request bodies, token estimates, resources.

Only the sending differs between the two (blocking or awaited), so everything else lives here once.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import httpx

from lab._checks import is_number
from lab.client.limits import RateLimits
from lab.client.providers import is_self_hosted, mask_key, redact_url, resolve
from lab.client.retry import RetryPolicy
from lab.client.types import Completion, Usage, cost_of

# openai-python's: read generously (a long non-streaming generation: a reasoning model can think for
# minutes, and a read timeout below that turns one answer into three aborted ones, each retried from
# the start), connect quickly (a dead host should fail fast). A stream's silence has its own limit.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_STREAM_IDLE_TIMEOUT = 60.0
# as openai-python: enough keep-alive connections that high concurrency does not reconnect per request
DEFAULT_POOL = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
NOT_GIVEN = object()  # an argument left out, where None means "no limit" (openai-python's NOT_GIVEN)


def make_timeout(timeout, base: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.Timeout:
    """A float (every phase), None (no limit), an httpx.Timeout, or a dict with connect/read/write/pool
    (the phases it leaves out come from `base`)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is None or is_number(timeout):
        _check_seconds("timeout", timeout)
        return httpx.Timeout(timeout)
    if isinstance(timeout, dict):
        unknown = set(timeout) - set(_TIMEOUT_KEYS)
        if unknown:
            raise ValueError(f"timeout: unknown keys {sorted(unknown)}; allowed: {', '.join(_TIMEOUT_KEYS)}")
        for key, value in timeout.items():
            _check_seconds(f"timeout.{key}", value)
        return httpx.Timeout(**{k: timeout.get(k, getattr(base, k)) for k in _TIMEOUT_KEYS})
    raise TypeError(f"timeout must be a number, None, a dict or httpx.Timeout, got {type(timeout).__name__}")


def _check_seconds(name: str, value) -> None:
    # httpx takes 0 or a negative number and then fails every request with a confusing timeout
    if value is not None and (not is_number(value) or not value > 0):
        raise ValueError(f"{name}: must be a number of seconds > 0 or None (no limit), got {value!r}")


def estimate_tokens(body: dict) -> int:
    """Tokens a request may count against a TPM limit: ~4 characters per prompt token plus max_tokens.

    Only an estimate for the client's own budget: odd values count as 0 here and reach the server,
    whose 400 names the field.
    """
    prompt = body.get("prompt")
    chars = 0
    if isinstance(prompt, str):
        chars = len(prompt)
    elif isinstance(prompt, list):
        # token ids count one each; a list of strings, or of id lists, is a batch of prompts
        return sum(_prompt_tokens(p) for p in prompt) + _max_tokens(body)
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):  # content parts
            chars += sum(len(part.get("text") or "") for part in content
                         if isinstance(part, dict) and isinstance(part.get("text") or "", str))
    return chars // 4 + 4 * len(body.get("messages") or ()) + _max_tokens(body)


_JSON_SCALARS = (str, int, float, bool, type(None))


def _plain(value):
    """`value` with every iterable JSON cannot encode (a generator of messages, a map of token ids)
    made a list, once: openai-python takes any iterable, and a generator read by the token estimate
    or the first attempt would leave nothing for the next one."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and all(isinstance(v, _JSON_SCALARS) for v in value):
        return value  # the common case, token ids included: nothing to copy
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return [_plain(v) for v in value]
    return value  # anything else reaches json.dumps, whose TypeError names it


def _prompt_tokens(p) -> int:
    if isinstance(p, str):
        return len(p) // 4
    if isinstance(p, list):
        return len(p)
    return 1


def _max_tokens(body: dict) -> int:
    value = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    n = body.get("n") or 1
    if not is_number(value) or not is_number(n):
        return 0
    return int(value) * int(n)


class _Endpoint:
    __slots__ = ("_client", "_path")

    def __init__(self, client, path: str):
        self._client, self._path = client, path

    def create(self, **params):
        """POST the body; `stream=True` gives a stream. Extra: timeout, extra_headers, extra_body."""
        return self._client._create(self._path, params)


class _Chat:
    __slots__ = ("completions",)

    def __init__(self, client):
        self.completions = _Endpoint(client, "/chat/completions")


class _Models:
    __slots__ = ("_client",)

    def __init__(self, client):
        self._client = client

    def list(self):
        """The models the server offers: a `ModelPage` (`.data`, iterable, indexable); awaitable on AsyncClient."""
        return self._client._list_models()


class BaseClient:
    """Settings `Client` and `AsyncClient` share.

    `base_url` / `api_key` / `provider`: where to send and with which key (a provider preset fills both
    from its environment variable). `timeout`: seconds for each phase (a number, an httpx.Timeout or a
    dict of connect/read/write/pool; None: no limit); it covers a stream until its first token too
    (the server's queue and prefill). `stream_idle_timeout`: once tokens arrive, a stream with no
    chunk for this long is ended. `max_retries` / `retry`: openai-python's retry policy.
    `max_concurrency`, `rpm`, `tpm` (or `limits`): client-side limits, adapted to the server's
    x-ratelimit-* headers. `transport`: an httpx transport (tests use httpx.MockTransport).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        provider: str | None = None,
        *,
        timeout=DEFAULT_TIMEOUT,
        stream_idle_timeout: float | None = DEFAULT_STREAM_IDLE_TIMEOUT,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
        max_concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        limits: RateLimits | None = None,
        default_headers: dict[str, str] | None = None,
        transport=None,
    ):
        self.base_url, self.api_key, self.provider = resolve(base_url, api_key, provider)
        # no cost_usd from a server of one's own, even for a model that has an API's name
        self.self_hosted = is_self_hosted(self.base_url, self.provider)
        self.timeout = make_timeout(timeout)
        _check_seconds("stream_idle_timeout", stream_idle_timeout)
        self.stream_idle_timeout = stream_idle_timeout
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.limits = limits or RateLimits(max_concurrency=max_concurrency, rpm=rpm, tpm=tpm)
        self.headers = {"user-agent": "batching-lab-client/0.1", **(default_headers or {})}
        if self.api_key:
            self.headers["authorization"] = f"Bearer {self.api_key}"
        self.transport = transport
        self._init_resources()

    def _init_resources(self) -> None:
        self.chat = _Chat(self)
        self.completions = _Endpoint(self, "/completions")
        self.models = _Models(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_url={redact_url(self.base_url)!r}, provider={self.provider!r}, "
                f"api_key={mask_key(self.api_key)!r}, max_retries={self.retry.max_retries})")

    def config(self) -> dict:
        """Keyword arguments that build an equivalent client (for `AsyncClient(**c.config())` and back)."""
        if self._custom_http:
            # its proxies, TLS settings and transport live in an httpx client of the other kind (or of
            # another event loop): dropping them silently would send requests some other way
            raise ValueError(
                "http_client: this client was built on your own httpx client, whose settings cannot be "
                "carried to the new async client that run_batch / run_workload need; build an AsyncClient "
                "on an httpx.AsyncClient and call `await arun_batch(...)` / `await arun_workload(...)`")
        return dict(base_url=self.base_url, api_key=self.api_key or None, provider=self.provider,
                    timeout=self.timeout, stream_idle_timeout=self.stream_idle_timeout,
                    retry=copy.copy(self.retry), limits=copy.copy(self.limits),
                    default_headers={k: v for k, v in self.headers.items() if k != "authorization"},
                    transport=self.transport)

    def with_options(self, *, max_retries: int | None = None, timeout=NOT_GIVEN, stream_idle_timeout=NOT_GIVEN):
        """A copy sharing the connection pool and limiter, with other retry or timeout settings
        (`timeout=None`: no limit, as in openai-python; leave an argument out to keep the setting)."""
        other = copy.copy(self)
        if max_retries is not None:
            other.retry = dataclasses.replace(self.retry, max_retries=max_retries)  # checked again
        if timeout is not NOT_GIVEN:
            other.timeout = make_timeout(timeout, self.timeout)
        if stream_idle_timeout is not NOT_GIVEN:
            _check_seconds("stream_idle_timeout", stream_idle_timeout)
            other.stream_idle_timeout = stream_idle_timeout
        other._init_resources()
        return other

    def _prepare(self, params: dict):
        """(body, stream, timeout, headers) from `create(**params)`."""
        params = dict(params)
        timeout = params.pop("timeout", NOT_GIVEN)
        extra_headers = params.pop("extra_headers", None)
        extra_body = params.pop("extra_body", None)
        stream = bool(params.get("stream"))
        if "model" not in params:
            raise ValueError("create(): model is required (see client.models.list())")
        if stream:
            # ask for the final usage chunk: token counts and cost need it
            params.setdefault("stream_options", {"include_usage": True})
        if extra_body:
            params.update(extra_body)
        params = {k: _plain(v) for k, v in params.items()}
        # None: no limit; a dict overrides the phases it names, keeping the client's other ones. A stream
        # gets the same timeout: the wait for its headers and first token (queue, prefill) is the request's,
        # as in openai-python; stream_idle_timeout takes over between chunks (lab/client/idle.py). Capping
        # the read timeout at the idle one also cut that wait, and a provider's one-JSON-body answer, short
        timeout = self.timeout if timeout is NOT_GIVEN else make_timeout(timeout, self.timeout)
        return params, stream, timeout, extra_headers

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _completion(self, result: Completion, *, start_t: float, head_t: float, end_t: float, retries: int,
                    request_id: str | None) -> Completion:
        """A parsed completion, with what the client measured and what it cost."""
        result.latency_s = end_t - start_t
        result.ttft_s = head_t - start_t
        result.retries = retries
        result.request_id = request_id
        result.cost_usd = cost_of(result.model, result.usage, self.provider, self.self_hosted)
        return result

    @staticmethod
    def _used_tokens(usage: Usage | None, estimate: int) -> int:
        return usage.total_tokens if usage is not None else estimate
