"""Client-side limits: how many requests in flight, requests per minute, tokens per minute.

Two token buckets (requests, estimated tokens) refill continuously; the server's
`x-ratelimit-remaining-*` / `-reset-*` headers pull them down, and a 429 pauses every new request.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lab._checks import is_finite, is_int
from lab.client.retry import MAX_RETRY_AFTER, parse_retry_after


@dataclass(slots=True)
class RateLimits:
    max_concurrency: int | None = None
    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute: prompt (estimated) + max_tokens, as OpenAI counts
    pause_after_429_s: float = 1.0  # when a 429 names no retry-after

    def __post_init__(self):
        if self.max_concurrency is not None and (not is_int(self.max_concurrency) or self.max_concurrency < 1):
            # a fractional semaphore never reaches 0: 2.5 would mean no limit at all
            raise ValueError(f"max_concurrency must be an integer >= 1 or None (no limit), got {self.max_concurrency!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not is_finite(value):
                raise ValueError(f"{name} must be a finite number > 0 or None (no limit), got {value!r}")
        if not is_finite(self.pause_after_429_s, inclusive=True):
            raise ValueError(f"pause_after_429_s must be a finite number >= 0, got {self.pause_after_429_s!r}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_concurrency, self.rpm, self.tpm))


@dataclass(slots=True)
class TokenBucket:
    """Holds one second's worth (so no minute-long bursts that a provider enforcing the limit over shorter
    windows would 429) and refills the rest of the minute: at most `per_minute` in any 60 s window."""

    per_minute: float
    level: float = 0.0
    updated: float | None = None  # the first refill starts the clock, so tests can use any time origin

    def __post_init__(self):
        self.level = self.capacity

    @property
    def capacity(self) -> float:
        # below 60 a minute this is less than one request: that request goes once the bucket is full (wait_s)
        return self.per_minute / 60.0

    @property
    def rate(self) -> float:
        # per second. A full bucket plus 60 s of refill is what a minute can admit: refilling at
        # per_minute / 60 let a sliding minute take capacity + per_minute (6099 at rpm 6000)
        return (self.per_minute - self.capacity) / 60.0

    def refill(self, now: float) -> None:
        if self.updated is None:
            self.updated = now
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, amount: float) -> float:
        # a request bigger than the bucket goes once the bucket is full, and leaves it in debt
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate


# µ: the micro sign Go writes, and the Greek mu it also reads
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|\u00b5s|\u03bcs|ns|h|m|s)")
_UNIT_S = {"ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """OpenAI writes resets as Go durations ("1s", "6m0s", "20ms", "834.208µs"); others as plain seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return -seconds if value.lstrip().startswith("-") else seconds  # Go writes "-1.5s" for a past reset


@dataclass(slots=True)
class RateLimiter:
    """The bookkeeping, without any waiting: `reserve` says how long to wait, the caller sleeps."""

    limits: RateLimits
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    paused_until: float = 0.0

    def __post_init__(self):
        if self.limits.rpm:
            self.requests = TokenBucket(self.limits.rpm)
        if self.limits.tpm:
            self.tokens = TokenBucket(self.limits.tpm)

    def reserve(self, est_tokens: int, now: float) -> float:
        """0.0 and the budget is taken, or the seconds to wait before asking again."""
        wait = self.paused_until - now
        for bucket, amount in ((self.requests, 1), (self.tokens, est_tokens)):
            if bucket is not None:
                bucket.refill(now)
                wait = max(wait, bucket.wait_s(amount))
        if wait > 0:
            return wait
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= est_tokens
        return 0.0

    def settle(self, est_tokens: int, used_tokens: int) -> None:
        """Give back (or charge) the difference between the estimate and the usage the server reported."""
        if self.tokens is not None:
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + est_tokens - used_tokens)

    def observe(self, status: int, headers, now: float) -> None:
        """Learn from a response: adopt the server's limits, follow its remaining counts, pause after 429."""
        for kind in ("requests", "tokens"):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            bucket = getattr(self, kind)
            # the server told us its limit; respect it from now on ("-5" or "nan" is none: such a bucket
            # admitted everything)
            if bucket is None and limit is not None and 0 < limit < math.inf:
                bucket = TokenBucket(limit)
                setattr(self, kind, bucket)
            if remaining is None:
                continue
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)
            if remaining <= 0:
                # Azure OpenAI spells it x-rate-limit-reset-tokens (and sends no retry-after on its 429)
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}") or headers.get(f"x-rate-limit-reset-{kind}"))
                if reset is None or not 0 < reset < math.inf:  # "inf", "nan", a past reset: unknown
                    reset = 1.0
                # a Unix timestamp or "1e9" read as seconds would stop every request for years (and
                # overflow the blocking client's wait): no longer than a 429's pause
                self.paused_until = max(self.paused_until, now + min(reset, MAX_RETRY_AFTER))
        if status == 429:
            wait = parse_retry_after(headers)
            if wait is None or not wait > 0:
                wait = self.limits.pause_after_429_s
            # a wait beyond the cap is not retried (RetryPolicy), but the next requests must not walk
            # into the same 429 a second later: hold them for the cap
            wait = min(wait, MAX_RETRY_AFTER)
            self.paused_until = max(self.paused_until, now + wait)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def no_slot() -> None:
    """The release of a slot never taken (no max_concurrency)."""


class AsyncLimiter:
    """Concurrency slots plus the rate budget, for asyncio callers."""

    def __init__(self, limits: RateLimits):
        self.core = RateLimiter(limits)
        self._max_concurrency = limits.max_concurrency
        self._loop = None  # the event loop the slots and the line below belong to
        self._slots: asyncio.Semaphore | None = None
        self._turn: asyncio.Lock | None = None
        self.clock, self.sleep = time.monotonic, asyncio.sleep  # tests set fake ones

    def _bind_loop(self) -> None:
        # asyncio's Semaphore and Lock belong to the first loop that waits on them; a client reused in a
        # second asyncio.run() gets fresh ones (the buckets, plain numbers, carry over)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            n = self._max_concurrency
            self._slots = asyncio.Semaphore(n) if n else None
            # one waiter at a time, in arrival order (asyncio.Lock is first come, first served): a large
            # request waits for its budget at the head of the line instead of behind every small one that
            # fits the refill first
            self._turn = asyncio.Lock()

    async def acquire_slot(self) -> Callable[[], None]:
        """Wait for a slot; returns its release, bound to the semaphore it came from: a stream opened in
        one asyncio.run() and closed in the next gave its slot to the new loop's semaphore, which then
        let one request more than max_concurrency through. Calling the release twice frees one slot."""
        self._bind_loop()
        slots = self._slots
        if slots is None:
            return no_slot
        await slots.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                slots.release()

        return release

    async def wait_budget(self, est_tokens: int) -> None:
        self._bind_loop()
        async with self._turn:
            while (wait := self.core.reserve(est_tokens, self.clock())) > 0:
                await self.sleep(wait)

    def settle(self, est_tokens: int, used_tokens: int) -> None:
        self.core.settle(est_tokens, used_tokens)

    def observe(self, status: int, headers) -> None:
        self.core.observe(status, headers, self.clock())


class SyncLimiter:
    """The same for threads: every change to the buckets happens under one lock."""

    def __init__(self, limits: RateLimits):
        self.core = RateLimiter(limits)
        n = limits.max_concurrency
        self._slots = threading.BoundedSemaphore(n) if n else None
        # reentrant: a stream dropped unclosed settles from __del__, which the garbage collector may run
        # in a thread that holds the lock already
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._line: deque = deque()  # the threads waiting for budget, first come first served
        self.clock = time.monotonic  # tests set a fake clock

    def acquire_slot(self) -> None:
        if self._slots is not None:
            self._slots.acquire()

    def release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def wait_budget(self, est_tokens: int) -> None:
        me = object()
        with self._lock:
            self._line.append(me)
            try:
                while True:
                    wait = None  # behind someone: until the line moves
                    if self._line[0] is me:
                        wait = self.core.reserve(est_tokens, self.clock())
                        if wait <= 0:
                            return
                    self._changed.wait(wait)  # lets go of the lock meanwhile
            finally:  # served, or interrupted: either way the next in line goes
                self._line.remove(me)
                self._changed.notify_all()

    def settle(self, est_tokens: int, used_tokens: int) -> None:
        with self._lock:
            self.core.settle(est_tokens, used_tokens)

    def observe(self, status: int, headers) -> None:
        with self._lock:
            self.core.observe(status, headers, self.clock())
