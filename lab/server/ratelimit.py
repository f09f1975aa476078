"""Per-key rate limits, requests and tokens per minute, as token buckets that refill continuously;
answers carry OpenAI's `x-ratelimit-*` headers and a 429 carries `Retry-After`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from lab._checks import is_int
from lab.server.errors import APIError

MAX_IDLE_BUCKETS = 10_000  # an open server keys buckets by client address: forget idle ones


@dataclass(slots=True)
class Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)

    def reset_s(self) -> float:
        return (self.capacity - self.level) * 60.0 / self.capacity


def duration(seconds: float) -> str:
    """OpenAI's reset format: '120ms', '1s', '6m0s'."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    s = math.ceil(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class RateLimiter:
    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
                 clock=time.monotonic):
        for name, v in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if v is not None and (not is_int(v, numpy=False) or v < 1):  # True is an int, not a limit
                raise ValueError(f"{name}: must be an integer >= 1 or None (no limit), got {v!r}")
        self.rpm, self.tpm, self.clock = requests_per_minute, tokens_per_minute, clock
        self.buckets: dict[tuple[str, str], Bucket] = {}

    def _bucket(self, key: str, kind: str, capacity: int, now: float, keep: bool = True) -> Bucket:
        """`key`'s bucket refilled to `now`; a new full one if it has none (kept only if `keep`)."""
        b = self.buckets.get((key, kind))
        if b is None:
            b = Bucket(capacity, capacity, now)
            if keep:
                if len(self.buckets) > MAX_IDLE_BUCKETS:
                    self._forget_full(now, key)
                self.buckets[(key, kind)] = b
        b.refill(now)
        return b

    def _forget_full(self, now: float, keep_key: str) -> None:
        """Drop the full buckets, but not `keep_key`'s: its requests bucket, made a moment ago for this
        very check, was dropped when its tokens bucket was made, and the request was never counted."""
        for k, b in list(self.buckets.items()):
            b.refill(now)
            if b.level >= b.capacity and k[0] != keep_key:
                del self.buckets[k]

    def check(self, key: str, tokens: int) -> dict[str, str]:
        """Take one request and `tokens` from `key`'s buckets; the headers to send, or raise a 429."""
        if self.rpm is None and self.tpm is None:
            return {}
        now = self.clock()
        req = self._bucket(key, "requests", self.rpm, now) if self.rpm else None
        tok = self._bucket(key, "tokens", self.tpm, now) if self.tpm else None
        if tok is not None and tokens > tok.capacity:
            raise APIError(429, f"Request too large: {tokens} tokens (prompt + max_tokens) exceed this key's "
                           f"limit of {self.tpm} tokens per minute; lower max_tokens (a request without it "
                           "is counted at the rest of the model's context).",
                           code="rate_limit_exceeded", type="tokens",
                           # no wait makes it fit: tell clients (the OpenAI SDK, ours) not to retry
                           headers=self._headers(req, tok) | {"x-should-retry": "false"})
        # every short budget's wait, and the longest one said: a client retrying when the requests were
        # back got a second 429 for the tokens
        short = [(bucket.wait_for(amount), kind, limit)
                 for bucket, amount, kind, limit in ((req, 1, "requests", self.rpm), (tok, tokens, "tokens", self.tpm))
                 if bucket is not None and bucket.level < amount]
        if short:
            wait, kind, limit = max(short)
            headers = self._headers(req, tok) | {"retry-after": str(max(1, math.ceil(wait))),
                                                 "retry-after-ms": str(math.ceil(wait * 1000))}
            raise APIError(429, f"Rate limit reached for {kind} per minute: limit {limit}. "
                           f"Please try again in {duration(wait)}.",
                           code="rate_limit_exceeded", type=kind, headers=headers)
        for bucket, amount in ((req, 1), (tok, tokens)):
            if bucket is not None:
                bucket.level -= amount
        return self._headers(req, tok)

    def peek(self, key: str) -> dict[str, str]:
        """`key`'s x-ratelimit-* headers as they stand, taking nothing: for answers refused for another
        reason (a full queue). {} when no limits are configured. A key never seen shows a full budget,
        and no bucket is made for it."""
        if self.rpm is None and self.tpm is None:
            return {}
        now = self.clock()
        return self._headers(*(self._bucket(key, kind, capacity, now, keep=False) if capacity else None
                               for kind, capacity in (("requests", self.rpm), ("tokens", self.tpm))))

    @staticmethod
    def _headers(req: Bucket | None, tok: Bucket | None) -> dict[str, str]:
        out = {}
        for bucket, kind in ((req, "requests"), (tok, "tokens")):
            if bucket is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
                out[f"x-ratelimit-reset-{kind}"] = duration(bucket.reset_s())
        return out
