"""Client-side limits: how many requests in flight, requests per minute, tokens per minute.

Two token buckets (requests, estimated tokens) refill continuously; the server's
`x-ratelimit-remaining-*` / `-reset-*` headers pull them down, and a 429 pauses every new request.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
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
    """Refills at `per_minute / 60` a second, holds at most one second's worth (so no minute-long bursts
    that a provider enforcing the limit over shorter windows would 429) and at least one request."""

    per_minute: float
    level: float = 0.0
    updated: float | None = None  # the first refill starts the clock, so tests can use any time origin

    def __post_init__(self):
        self.level = self.capacity

    @property
    def capacity(self) -> float:
        return max(1.0, self.per_minute / 60.0)

    def refill(self, now: float) -> None:
        if self.updated is None:
            self.updated = now
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_minute / 60.0)
        self.updated = now

    def wait_s(self, amount: float) -> float:
        # a request bigger than the bucket goes once the bucket is full, and leaves it in debt
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 0 else need * 60.0 / self.per_minute


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """OpenAI writes resets as "1s", "6m0s", "20ms"; others as plain seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = _DURATION.findall(value)
    return sum(float(n) * scale[u] for n, u in parts) if parts else None


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
            if bucket is None and limit:
                bucket = TokenBucket(limit)  # the server told us its limit; respect it from now on
                setattr(self, kind, bucket)
            if remaining is None:
                continue
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)
            if remaining <= 0:
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}")) or 1.0
                self.paused_until = max(self.paused_until, now + reset)
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


class AsyncLimiter:
    """Concurrency slots plus the rate budget, for asyncio callers."""

    def __init__(self, limits: RateLimits):
        self.core = RateLimiter(limits)
        n = limits.max_concurrency
        self._slots = asyncio.Semaphore(n) if n else None

    async def acquire_slot(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()

    def release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def wait_budget(self, est_tokens: int) -> None:
        while (wait := self.core.reserve(est_tokens, time.monotonic())) > 0:
            await asyncio.sleep(wait)


class SyncLimiter:
    """The same for threads."""

    def __init__(self, limits: RateLimits):
        self.core = RateLimiter(limits)
        n = limits.max_concurrency
        self._slots = threading.BoundedSemaphore(n) if n else None
        self._lock = threading.Lock()

    def acquire_slot(self) -> None:
        if self._slots is not None:
            self._slots.acquire()

    def release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def wait_budget(self, est_tokens: int) -> None:
        while True:
            with self._lock:
                wait = self.core.reserve(est_tokens, time.monotonic())
            if wait <= 0:
                return
            time.sleep(wait)
