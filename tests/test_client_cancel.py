"""Cancelling AsyncClient work against lab.server: what a cancelled or closed stream gives back.

The slot, the pool counter and the server's request are covered elsewhere (tests/test_client_stream.py);
these are the leaks that only a real connection shows: a connection left checked out of httpx's pool
and open (the server is checked to hear the hang-up too).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers_server import tiny_llm, wait_until

from lab.client import AsyncClient
from lab.server import serve

KEY = "sk-test-0123456789abcdef"
MODEL = "tiny-llama"


class HangUps:
    """ASGI middleware: when the handler of each request carrying `x-test-id` ended. A stalled one (`stall:30`)
    ends early only when its client hangs up."""

    def __init__(self, app, ended: dict):
        self.app, self.ended = app, ended

    async def __call__(self, scope, receive, send):
        test_id = dict(scope.get("headers") or ()).get(b"x-test-id") if scope["type"] == "http" else None
        try:
            await self.app(scope, receive, send)
        finally:
            if test_id is not None:
                self.ended[test_id.decode()] = time.monotonic()


@pytest.fixture(scope="module")
def ended():
    return {}


@pytest.fixture(scope="module")
def server(ended):
    with serve(llm=tiny_llm(), api_keys=[KEY]) as s:
        s.app.add_middleware(HangUps, ended=ended)
        yield s


def checked_out(client: AsyncClient) -> list:
    """What httpcore still counts as in flight, over the client's pools: requests not given back, and
    connections neither idle nor closed."""
    out = []
    for http in client._pools.pools:
        pool = http._transport._pool
        out += list(pool._requests) + [c for c in pool.connections if not (c.is_idle() or c.is_closed())]
    return out


async def open_stalled_stream(client: AsyncClient, test_id: str):
    # a completion's first chunk carries text, so create() returns; then the server goes quiet for 30 s
    return await client.completions.create(model=MODEL, prompt="to be", max_tokens=50, stream=True,
                                           extra_headers={"x-test-id": test_id, "x-lab-fault": "stall:30"})


@pytest.mark.parametrize("steps", [1, 2])
async def test_a_stream_close_cut_short_by_a_cancel_still_hangs_up(server, ended, steps):
    # httpcore's close awaits (its connection's lock, the socket's shutdown): a cancel landing there (a
    # wait_for timing out round `async with stream`) left the connection checked out of the pool and
    # open for the client's lifetime
    async with AsyncClient(base_url=server.url, api_key=KEY, max_retries=0, max_concurrency=1) as client:
        test_id = f"cut-close-{steps}"
        stream = await open_stalled_stream(client, test_id)
        closing = asyncio.ensure_future(stream.aclose())
        for _ in range(steps):  # the close has begun, and waits somewhere inside httpcore
            await asyncio.sleep(0)
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        assert stream.closed and client._limiter._slots._value == 1
        assert await asyncio.to_thread(wait_until, lambda: test_id in ended, 2.0), "the server was never told"
        assert await asyncio.to_thread(wait_until, lambda: not checked_out(client), 2.0), checked_out(client)


async def test_an_async_stream_closes_with_close_as_in_openai_python(server, ended):
    # openai-python's AsyncStream has `await stream.close()`; here it raised AttributeError, and the
    # stream kept its slot and its connection until garbage collection
    async with AsyncClient(base_url=server.url, api_key=KEY, max_retries=0, max_concurrency=1) as client:
        stream = await open_stalled_stream(client, "close")
        await stream.close()
        assert stream.closed and client._limiter._slots._value == 1
        assert await asyncio.to_thread(wait_until, lambda: "close" in ended, 2.0)
        assert not checked_out(client)
