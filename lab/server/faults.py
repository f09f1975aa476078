"""Fault injection for teaching, off by default: random error statuses, added latency, cut and stalled
streams (seeded, so a run repeats), or one exact failure per request with the `x-lab-fault` header.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lab._checks import is_finite, is_int, is_number
from lab.server.errors import APIError

STATUSES = (401, 429, 500, 503, 504)
HEADER = "x-lab-fault"
HEADER_CUT_AFTER = 2  # `cut`: drop the connection after this many chunks
HEADER_STALL_AFTER = 1  # `stall`: go quiet after the first chunk, mid-stream as real stalls are
MAX_HEADER_SECONDS = 600.0  # `latency:` and `stall:` longer than this would outlast any client
MESSAGES = {
    401: ("Incorrect API key provided (injected fault).", "invalid_api_key"),
    429: ("Rate limit reached (injected fault). Please try again in 1s.", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (injected fault).", "internal_error"),
    503: ("The server is overloaded or not ready yet (injected fault).", "service_unavailable"),
    504: ("The upstream model timed out (injected fault).", "timeout"),
}


@dataclass(slots=True)
class FaultConfig:
    """`error_rates`: status -> probability per request (their sum at most 1). With probability
    `cut_rate` the connection drops mid-answer: a stream after `cut_after_chunks` chunks (no `[DONE]`),
    a non-streamed answer half-way through its body (the client sees an incomplete read). With
    probability `stall_rate` a stream goes quiet for `stall_s` after `stall_after_chunks` chunks (a
    non-streamed answer is `stall_s` late)."""

    error_rates: dict[int, float] = field(default_factory=dict)
    latency_s: float = 0.0  # added before every answer
    cut_rate: float = 0.0
    cut_after_chunks: int = 3
    stall_rate: float = 0.0
    stall_s: float = 5.0
    stall_after_chunks: int = 1
    seed: int | None = None

    def __post_init__(self):
        # fields arrive from JSON (PUT /admin/faults) and the command line as well as from Python:
        # every wrong type is a ValueError naming the field, never an AttributeError from deep inside
        allowed = ", ".join(map(str, STATUSES))
        if not isinstance(self.error_rates, Mapping):
            raise ValueError(f"error_rates: must be a mapping of HTTP status to probability such as "
                             f"{{429: 0.1}}, got {self.error_rates!r}")
        rates = {}
        for status, p in self.error_rates.items():
            if isinstance(status, bool) or str(status).strip() not in {str(s) for s in STATUSES}:
                raise ValueError(f"error_rates: unsupported status {status!r}; allowed: {allowed}")
            if int(status) in rates:  # "429" and 429 (or " 429"): one overwrote the other, past the sum check
                raise ValueError(f"error_rates: status {int(status)} given twice")
            rates[int(status)] = _number(f"error_rates[{status}]", p)
        self.error_rates = rates
        for name in ("cut_rate", "stall_rate", "latency_s", "stall_s"):
            setattr(self, name, _number(name, getattr(self, name)))
        for name, p in {"cut_rate": self.cut_rate, "stall_rate": self.stall_rate,
                        **{f"error_rates[{k}]": v for k, v in rates.items()}}.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: a probability must be in [0, 1], got {p}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"error_rates: probabilities sum to {sum(rates.values()):g}, more than 1")
        for name in ("latency_s", "stall_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0 seconds, got {getattr(self, name)}")
        for name in ("cut_after_chunks", "stall_after_chunks"):
            value = getattr(self, name)
            if not is_int(value, numpy=False) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0 (chunks), got {value!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed: must be an integer or None, got {self.seed!r}")
        if self.seed is not None:
            self.seed = int(self.seed)  # a numpy int: random.Random and the JSON of /faults need a Python int


def _number(name: str, value) -> float:
    """A finite int or float (a bool or a numeric string is a mistake, not a number)."""
    # is_finite, not math.isfinite: a 400-digit JSON integer raised OverflowError there (a 500)
    if not is_number(value, numpy=False) or not is_finite(value, above=-math.inf):
        text = repr(value)
        raise ValueError(f"{name}: must be a finite number, got {text if len(text) <= 40 else text[:37] + '...'}")
    return float(value)


@dataclass(slots=True)
class Fault:
    """What happens to one request."""

    status: int | None = None
    latency_s: float = 0.0
    cut_after: int | None = None  # chunks sent before the connection is dropped
    stall_after: int | None = None
    stall_s: float = 0.0

    def error(self) -> APIError:
        message, code = MESSAGES[self.status]
        retry = {"retry-after": "1", "retry-after-ms": "1000"} if self.status in (429, 503) else {}
        if self.status == 429:
            retry |= {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}
        return APIError(self.status, message, code=code, headers=retry)


class FaultInjector:
    """Draws faults in request order from one seeded generator: the same seed, the same faults."""

    def __init__(self, config: FaultConfig | None = None):
        self.config = config
        self.rng = random.Random(config.seed if config else None)

    def draw(self, header: str | None) -> Fault:
        fault = Fault()
        cfg = self.config
        if cfg is not None:
            # always three draws per request, so one outcome never shifts the next request's dice
            u_status, u_cut, u_stall = self.rng.random(), self.rng.random(), self.rng.random()
            fault.latency_s = cfg.latency_s
            edge = 0.0
            for status in sorted(cfg.error_rates):
                edge += cfg.error_rates[status]
                if u_status < edge:
                    fault.status = status
                    break
            if u_cut < cfg.cut_rate:
                fault.cut_after = cfg.cut_after_chunks
            if u_stall < cfg.stall_rate:
                fault.stall_after, fault.stall_s = cfg.stall_after_chunks, cfg.stall_s
        if header:
            # exactly the fault asked for: laid over the random draw, `cut` could come back as a drawn
            # 500. The draws above were still taken, so the other requests' faults stay the same.
            # the configured latency stays ("added before every answer"); the header's own overrides it
            fault = Fault(latency_s=cfg.latency_s if cfg is not None else 0.0)
            _apply_header(fault, header)
        return fault


def _apply_header(fault: Fault, header: str) -> None:
    """`429`, `504`, `cut` (after 2 chunks), `cut:5`, `stall`, `stall:2.5`, `latency:0.3`; comma-separated for several."""
    for item in header.split(","):
        name, _, arg = item.strip().lower().partition(":")
        try:
            if name.isdigit() and int(name) in STATUSES and not arg:
                fault.status = int(name)
            elif name == "cut":
                fault.cut_after = _header_count(arg) if arg else HEADER_CUT_AFTER
            elif name == "stall":
                fault.stall_after, fault.stall_s = HEADER_STALL_AFTER, _header_seconds(arg) if arg else 5.0
            elif name == "latency" and arg:
                fault.latency_s = _header_seconds(arg)
            else:
                raise ValueError(name)
        except ValueError:
            raise APIError(400, f"{HEADER}: unknown fault {item.strip()!r}; allowed: "
                           f"{', '.join(map(str, STATUSES))}, cut[:N], stall[:SECONDS], latency:SECONDS "
                           f"(N >= 0; 0 <= SECONDS <= {MAX_HEADER_SECONDS:g})",
                           param=HEADER, code="invalid_value") from None


def _header_count(arg: str) -> int:
    # digits only: int() also takes "1_0" (ten), "+3" and " 3"
    if not (arg.isascii() and arg.isdigit()):
        raise ValueError(arg)
    return int(arg)


def _header_seconds(arg: str) -> float:
    # plain decimals only: float() also takes "inf", "nan" (which would hold the request, and a server's
    # shutdown, forever), "1_0" and "-0"
    if not _SECONDS.fullmatch(arg):
        raise ValueError(arg)
    seconds = float(arg)
    if seconds > MAX_HEADER_SECONDS:
        raise ValueError(arg)
    return seconds


_SECONDS = re.compile(r"\d+(\.\d*)?|\.\d+")


class StreamCut(Exception):
    """Raised inside a response stream to drop the connection without `[DONE]`."""


class _QuietCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:  # anyio may wrap it in an exception group
            if isinstance(exc, StreamCut):
                return False
            group = getattr(exc, "exceptions", None)
            exc = group[0] if group else exc.__cause__
        return True


def quiet_injected_cuts() -> None:
    """uvicorn logs an exception that ends a response as an error; an injected cut is not one."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCut) for f in logger.filters):
        logger.addFilter(_QuietCut())
