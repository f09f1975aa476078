"""`Client` and `AsyncClient`: `client.chat.completions.create(...)` over httpx, as in openai-python.

One attempt sends a request and turns every failure into our typed errors; the loop around it waits
for the rate limiter, retries what the policy allows, and records what the server said about limits.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from lab.client._base import DEFAULT_POOL, BaseClient, estimate_tokens
from lab.client._pool import PoolSet
from lab.client.errors import APIError, error_from_response, error_in_body, from_httpx, request_id_from
from lab.client.idle import start_watch
from lab.client.limits import AsyncLimiter, SyncLimiter, no_slot
from lab.client.stream_state import StreamState, is_whole_answer, whole_answer_lines
from lab.client.streaming import (
    AsyncStream,
    Stream,
    aclose_response,
    aiter_items,
    aopening_chunks,
    opening_chunks,
)
from lab.client.types import Completion, Model, ModelPage


def _json(content: bytes, status: int, request_id: str | None):
    try:
        return json.loads(content)
    except ValueError:
        raise APIError(f"response is not JSON: {content[:200]!r}", status_code=status,
                       request_id=request_id) from None


def _shaped(make, data, status: int, request_id: str | None):
    """`make()`, with JSON of the wrong shape (a list, a string, choices that are not objects) reported
    as a broken response of that request, not as an AttributeError from deep inside the parsing."""
    try:
        if not isinstance(data, dict):
            raise TypeError
        return make()
    except (AttributeError, TypeError):
        raise APIError(f"unexpected response shape: {json.dumps(data)[:200]}", status_code=status,
                       request_id=request_id) from None


def _model_page(data: dict) -> ModelPage:
    return ModelPage([Model.from_dict(m) for m in data.get("data") or ()])


def _answer(client: BaseClient, response, content: bytes, method: str, rid, est: int, start_t: float,
            head_t: float, retries: int):
    """A read, non-streamed response: raise its APIError, or return a ModelPage (GET) or a Completion."""
    if response.status_code >= 400:
        raise error_from_response(response.status_code, content, response.headers)
    data = _json(content, response.status_code, rid)
    if isinstance(data, dict) and data.get("error") is not None and not data.get("choices"):
        # a failure sent with a 200 (OpenRouter's, once generation has begun): an error, not an empty answer
        raise error_in_body(data, rid)
    if method == "GET":
        return _shaped(lambda: _model_page(data), data, response.status_code, rid)
    # only the parsing is guarded: a TypeError of our own (the limiter, cost) must not pass for the server's
    completion = _shaped(lambda: Completion.from_dict(data), data, response.status_code, rid)
    if client._limiter is not None:
        client._limiter.settle(est, client._used_tokens(completion.usage, est))
    return client._completion(completion, start_t=start_t, head_t=head_t, end_t=time.perf_counter(),
                              retries=retries, request_id=rid)


def _check_transport(transport, method: str, wanted: str) -> None:
    # httpx takes any transport and fails at the first request with an AttributeError; run_batch and
    # run_workload build an AsyncClient from a Client's settings, and recorded that error for every input
    if transport is not None and not hasattr(transport, method):
        raise ValueError(f"transport: {type(transport).__name__} cannot serve this client, which needs {wanted} "
                         f"(run_batch and run_workload send through an AsyncClient built from your client's "
                         f"settings); httpx.MockTransport serves both kinds")


class Client(BaseClient):
    """Blocking client. `Client(base_url=..., api_key=...)` or `Client(provider="openai")`; the settings
    (timeouts, retries, limits) are described on `BaseClient`."""

    def __init__(self, *args, http_client: httpx.Client | None = None, **kw):
        super().__init__(*args, **kw)
        _check_transport(self.transport, "handle_request", "a blocking transport such as httpx.HTTPTransport")
        self._custom_http = http_client is not None
        self._http = http_client or httpx.Client(timeout=self.timeout, limits=DEFAULT_POOL,
                                                 transport=self.transport, follow_redirects=True)
        self._http.headers.update(self.headers)  # auth and user-agent on every request
        self._limiter = SyncLimiter(self.limits) if self.limits.active else None

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _list_models(self) -> ModelPage:
        return self._call("GET", "/models", None, False, self.timeout, None, 0)

    def _create(self, path: str, params: dict):
        body, stream, timeout, headers = self._prepare(params)
        return self._call("POST", path, body, stream, timeout, headers, estimate_tokens(body))

    def _call(self, method, path, body, stream, timeout, headers, est):
        start_t = time.perf_counter()
        limiter = self._limiter
        if limiter is not None:
            limiter.acquire_slot()
        handed_to_stream = False
        try:
            retries = 0
            while True:
                if limiter is not None:
                    limiter.wait_budget(est)
                try:
                    out = self._attempt(method, path, body, stream, timeout, headers, start_t, retries, est)
                    handed_to_stream = stream
                    return out
                except APIError as e:
                    if limiter is not None:
                        limiter.observe(e.status_code or 0, e.headers)
                    if retries >= self.retry.max_retries or not self.retry.should_retry(e):
                        e.retries_taken = retries
                        raise
                    time.sleep(self.retry.delay(retries, e))
                    retries += 1
        finally:
            if limiter is not None and not handed_to_stream:
                limiter.release_slot()

    def _attempt(self, method, path, body, stream, timeout, headers, start_t, retries, est):
        request = self._http.build_request(method, self._url(path), json=body, headers=headers, timeout=timeout)
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise from_httpx(e) from e
        head_t = time.perf_counter()
        if self._limiter is not None:
            self._limiter.observe(response.status_code, response.headers)
        rid = request_id_from(response.headers)
        if stream and response.status_code < 400:
            return self._open_stream(response, start_t, retries, est, rid)
        try:
            content = response.read()
        except httpx.HTTPError as e:
            raise from_httpx(e, rid) from e
        finally:
            response.close()
        return _answer(self, response, content, method, rid, est, start_t, head_t, retries)

    def _open_stream(self, response, start_t, retries, est, rid) -> Stream:
        # read the opening chunks here, inside the retry loop: until one carries output, a failure
        # is safe to retry
        state = StreamState(self.stream_idle_timeout, time.perf_counter(), rid)
        try:
            lines = iter(whole_answer_lines(response.read())) if is_whole_answer(response) else response.iter_lines()
            opening = opening_chunks(state, lines)
        except BaseException as e:  # an error or an interrupt: the connection goes back closed
            response.close()
            if isinstance(e, httpx.HTTPError):
                raise from_httpx(e, rid) from e
            raise

        def on_close(usage):
            if self._limiter is not None:
                self._limiter.settle(est, self._used_tokens(usage, est))
                self._limiter.release_slot()

        # from here on the idle timeout applies: the request's read timeout covered the wait for this chunk
        return Stream(response, state, opening, lines=lines, start_t=start_t, retries=retries,
                      provider=self.provider, self_hosted=self.self_hosted, on_close=on_close,
                      watch=start_watch(state, response, blocking=True))


class AsyncClient(BaseClient):
    """The same API with `await`: `await client.chat.completions.create(...)`, `async for chunk in stream`."""

    def __init__(self, *args, http_client: httpx.AsyncClient | None = None, **kw):
        super().__init__(*args, **kw)
        _check_transport(self.transport, "handle_async_request", "an async transport such as httpx.AsyncHTTPTransport")
        self._custom_http = http_client is not None
        # one TLS context for every pool: building one loads the CA bundle (~80 ms of CPU), and PoolSet
        # opens pools mid-run on the event loop, where that stalled every stream in flight (and inflated
        # run_workload's TTFT several-fold at 16 req/s)
        ssl_context = httpx.create_ssl_context()

        def make_pool() -> httpx.AsyncClient:
            pool = httpx.AsyncClient(timeout=self.timeout, limits=DEFAULT_POOL, transport=self.transport,
                                     follow_redirects=True, verify=ssl_context)
            pool.headers.update(self.headers)  # auth and user-agent on every request
            return pool

        if http_client is not None:
            http_client.headers.update(self.headers)
        self._pools = PoolSet(make_pool, fixed=http_client)
        if self.transport is not None:
            self._pools.max_pools = 1  # a given transport (tests, proxies) is shared: more pools buy nothing
        self._limiter = AsyncLimiter(self.limits) if self.limits.active else None

    async def close(self) -> None:
        await self._pools.aclose()

    aclose = close

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _list_models(self) -> ModelPage:
        return await self._call("GET", "/models", None, False, self.timeout, None, 0)

    async def _create(self, path: str, params: dict):
        body, stream, timeout, headers = self._prepare(params)
        return await self._call("POST", path, body, stream, timeout, headers, estimate_tokens(body))

    async def _call(self, method, path, body, stream, timeout, headers, est):
        start_t = time.perf_counter()
        limiter = self._limiter
        release_slot = no_slot if limiter is None else await limiter.acquire_slot()
        handed_to_stream = False
        try:
            retries = 0
            while True:
                if limiter is not None:
                    await limiter.wait_budget(est)
                try:
                    out = await self._attempt(method, path, body, stream, timeout, headers, start_t, retries, est,
                                              release_slot)
                    handed_to_stream = stream
                    return out
                except APIError as e:
                    if limiter is not None:
                        limiter.observe(e.status_code or 0, e.headers)
                    if retries >= self.retry.max_retries or not self.retry.should_retry(e):
                        e.retries_taken = retries
                        raise
                    await asyncio.sleep(self.retry.delay(retries, e))
                    retries += 1
        finally:
            if not handed_to_stream:
                release_slot()

    async def _attempt(self, method, path, body, stream, timeout, headers, start_t, retries, est, release_slot):
        http, release_pool = self._pools.acquire()
        released = False
        try:
            request = http.build_request(method, self._url(path), json=body, headers=headers, timeout=timeout)
            try:
                response = await http.send(request, stream=True)
            except httpx.HTTPError as e:
                raise from_httpx(e) from e
            if stream and response.status_code < 400:
                opened = await self._open_stream(response, start_t, retries, est, release_pool, release_slot)
                released = True  # the stream gives the pool back when it closes
                return opened
            return await self._finish(response, method, start_t, retries, est)
        finally:
            if not released:
                release_pool()

    async def _finish(self, response, method, start_t, retries, est):
        head_t = time.perf_counter()
        if self._limiter is not None:
            self._limiter.observe(response.status_code, response.headers)
        rid = request_id_from(response.headers)
        try:
            content = await response.aread()
        except httpx.HTTPError as e:
            raise from_httpx(e, rid) from e
        finally:
            await aclose_response(response)
        return _answer(self, response, content, method, rid, est, start_t, head_t, retries)

    async def _open_stream(self, response, start_t, retries, est, release_pool, release_slot) -> AsyncStream:
        if self._limiter is not None:
            self._limiter.observe(response.status_code, response.headers)
        state = StreamState(self.stream_idle_timeout, time.perf_counter(), request_id_from(response.headers))
        try:
            if is_whole_answer(response):
                lines = aiter_items(whole_answer_lines(await response.aread()))
            else:
                lines = response.aiter_lines()
            opening = await aopening_chunks(state, lines)
        except BaseException as e:  # an error or a cancellation: the caller's finally gives the pool back
            await aclose_response(response)
            if isinstance(e, httpx.HTTPError):
                raise from_httpx(e, state.request_id) from e
            raise

        def on_close(usage):
            release_pool()
            if self._limiter is not None:
                self._limiter.settle(est, self._used_tokens(usage, est))
            release_slot()  # to the semaphore it came from, even when closed under another event loop

        return AsyncStream(response, state, opening, lines=lines, start_t=start_t, retries=retries,
                           provider=self.provider, self_hosted=self.self_hosted, on_close=on_close,
                           watch=start_watch(state, response, blocking=False))
