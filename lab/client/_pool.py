"""Several small httpx connection pools instead of one big one, for high concurrency.

httpcore 1.x rescans every connection of a pool on each request (quadratic in open connections), so at 64
requests in flight one pool spends more time bookkeeping than sending. We hand each request to the
least-busy of several tiny pools, opening another once every pool has `per_pool` requests in flight
(bench/client.py: 2 per pool ran ~4x faster than one pool at 64 in flight, and on par with 1 or 4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx


class PoolSet:
    __slots__ = ("_make", "_fixed", "_loop", "pools", "loads", "per_pool", "max_pools")

    def __init__(self, make, *, per_pool: int = 2, max_pools: int = 64, fixed: httpx.AsyncClient | None = None):
        self._make = make  # () -> httpx.AsyncClient
        self._fixed = fixed is not None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pools' connections belong to
        self.pools: list[httpx.AsyncClient] = [fixed or make()]
        self.loads = [0]
        self.per_pool = per_pool
        self.max_pools = 1 if fixed is not None else max_pools  # a caller's own client is used as given

    def _bind_loop(self) -> None:
        """A client reused in a second asyncio.run(): the first loop closed with its connections, and
        httpx then failed every request with a bare "Event loop is closed". Our own pools start afresh;
        a caller's own httpx client cannot be rebuilt here, so that says what to do instead."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None and self._loop.is_closed():
            if self._fixed:
                raise RuntimeError("http_client: your httpx.AsyncClient was used on an event loop that has "
                                   "closed (an earlier asyncio.run), and its connections closed with it; make "
                                   "the clients inside each asyncio.run, or keep one loop (a notebook's await)")
            self.pools, self.loads = [self._make()], [0]  # the old ones hold only dead connections
        self._loop = loop

    def acquire(self) -> tuple[httpx.AsyncClient, Callable[[], None]]:
        """The pool for the next request, and the call that gives its place back once the response is
        closed. That call counts on the pools of its own loop: a stream from an earlier asyncio.run
        closed late leaves the fresh pools' counts alone."""
        self._bind_loop()
        loads = self.loads
        i = 0 if len(loads) == 1 else loads.index(min(loads))
        if loads[i] >= self.per_pool and len(loads) < self.max_pools:
            self.pools.append(self._make())
            loads.append(0)
            i = len(loads) - 1
        loads[i] += 1

        given_back = False

        def release() -> None:
            nonlocal given_back
            if not given_back:  # once: a second call would free a place another request holds
                given_back = True
                loads[i] -= 1

        return self.pools[i], release

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()
