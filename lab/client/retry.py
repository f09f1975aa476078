"""When to retry a failed request and how long to wait: openai-python's policy, in a few lines.

Retry connection errors, timeouts, 408, 409, 429 and 5xx; never when `retry-after` asks for longer than
a cap; otherwise obey `x-should-retry`; honour `retry-after-ms`, then `retry-after` (seconds or an HTTP
date) up to the cap; else back off exponentially.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

from lab._checks import is_finite, is_int, is_number
from lab.client.errors import APIConnectionError, APIError, APIStatusError, StreamInterruptedError

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# Retry-After is obeyed up to this many seconds; a server asking for longer is not retried at all, even
# with `x-should-retry: true` (the cap is checked first, as in openai-python's current releases): the
# error goes to the caller (RateLimitError.retry_after says how long), and run_batch records it for a
# `retry_errors` rerun. openai-python differs by release: the 1.x series (what `openai>=1.40` allows)
# obeys the header only up to 60 s and, above that, still retries after its usual 0.5-8 s backoff (and
# lets `x-should-retry` win); newer releases (MAX_RETRY_AFTER_DELAY) cap it at 120 s and do not retry
# above it, as we do. We refuse rather
# than back off: a server asking for minutes has a spent quota, so a retry seconds later only earns another
# 429 (and counts against the limit again), and sleeping minutes inside one call would look like a hang
MAX_RETRY_AFTER = 120.0
RETRYABLE_STATUS = frozenset({408, 409, 429})


def parse_retry_after(headers, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` as seconds or an HTTP date."""
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        when = email.utils.mktime_tz(parsed)
    except (TypeError, ValueError, OverflowError):
        return None
    return float(when - (time.time() if now is None else now))


@dataclass(slots=True)
class RetryPolicy:
    max_retries: int = 2
    initial_delay: float = INITIAL_RETRY_DELAY
    max_delay: float = MAX_RETRY_DELAY
    max_retry_after: float = MAX_RETRY_AFTER

    def __post_init__(self):
        if not is_int(self.max_retries, numpy=False) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        # checked here: a bad delay surfaced only at the first retry, as a TypeError naming nothing
        for name in ("initial_delay", "max_delay"):
            if not is_finite(getattr(self, name), inclusive=True):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {getattr(self, name)!r}")
        if not is_number(self.max_retry_after) or not self.max_retry_after >= 0:  # inf: obey any Retry-After
            raise ValueError(f"max_retry_after must be a number of seconds >= 0 (inf: no cap), "
                             f"got {self.max_retry_after!r}")

    def should_retry(self, error: BaseException) -> bool:
        if isinstance(error, StreamInterruptedError):
            return False  # the caller already holds part of the answer; resending would duplicate it
        if isinstance(error, APIConnectionError):
            return True  # includes APITimeoutError
        if not isinstance(error, APIStatusError):
            return False
        # a wait beyond the cap first, then the server's explicit word, in openai-python's order: a
        # server asking for five minutes is not hit again seconds later, whatever x-should-retry says
        wait = parse_retry_after(error.headers)
        if wait is not None and wait > self.max_retry_after:  # "1e400" is inf: longer than any cap
            return False
        flag = (error.headers.get("x-should-retry") or "").strip().lower()
        if flag == "true":
            return True
        if flag == "false":
            return False
        status = error.status_code or 0
        return status in RETRYABLE_STATUS or status >= 500

    def delay(self, retries_taken: int, error: APIError | None = None, rand=random.random) -> float:
        """Seconds to sleep before retry number `retries_taken + 1`."""
        wait = parse_retry_after(error.headers) if error is not None else None
        if wait is not None and math.isfinite(wait) and 0 < wait <= self.max_retry_after:
            return wait
        base = min(self.initial_delay * 2.0 ** min(retries_taken, 1000), self.max_delay)
        # jitter takes up to 25% off, so a crowd of clients that failed together spreads out
        return max(0.0, base * (1 - 0.25 * rand()))
