"""ServerConfig: the HTTP server's own knobs (auth, limits, fault header); the engine's are
`EngineConfig`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lab._checks import is_int, is_number

HEADER_SAFE_RULE = "a key must be printable ASCII without spaces, as an HTTP header carries it"


def is_header_safe(key: str) -> bool:
    """A key that `Authorization: Bearer <key>` can carry and authenticate() can match."""
    return key.isascii() and key.isprintable() and " " not in key


@dataclass(slots=True)
class ServerConfig:
    # empty: open server. Left out of repr: a config shown in a notebook must not print the keys
    # (serve() logs them masked at start)
    api_keys: list[str] = field(default_factory=list, repr=False)
    served_model_name: str | None = None  # None: the model folder's name
    max_queued_requests: int = 1024  # waiting for a batch slot; beyond this a 429
    requests_per_minute: int | None = None  # per key (per client address on an open server)
    tokens_per_minute: int | None = None  # prompt + max_tokens, counted at admission as OpenAI does
    max_body_bytes: int = 4 * 2**20
    allow_fault_header: bool = True  # honour `x-lab-fault`; a teaching server, so on by default
    trace_limit: int = 4096  # engine steps kept in engine.trace
    shutdown_timeout_s: float = 5.0

    def __post_init__(self):
        if isinstance(self.api_keys, str):
            self.api_keys = [self.api_keys]
        bad = next((k for k in self.api_keys or [] if not isinstance(k, str)), None)
        if bad is not None:  # name the type only: the list holds secrets
            raise ValueError(f"api_keys: must be a string or a list of strings, got an item of type {type(bad).__name__}")
        # as a header carries it: authenticate() strips the token it gets, and a header is latin-1,
        # so a key with spaces around it or a non-ASCII character could never match
        self.api_keys = [k.strip() for k in (self.api_keys or [])]
        if any(not k for k in self.api_keys):  # dropped, it left the server open to anyone
            raise ValueError("api_keys: a blank key (an unset variable?); give a key, or no api_keys for an "
                             "open server")
        if not all(map(is_header_safe, self.api_keys)):
            raise ValueError(f"api_keys: {HEADER_SAFE_RULE} (the key is not shown)")
        for name in ("max_queued_requests", "max_body_bytes", "trace_limit"):
            value = getattr(self, name)
            if not is_int(value, numpy=False) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        # checked here, before serve() starts an engine thread: a bad value found later left that
        # thread driving the engine, and the LLM could not be served again in this process
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (not is_int(value, numpy=False) or value < 1):
                raise ValueError(f"{name}: must be an integer >= 1 or None (no limit), got {value!r}")
        if not is_number(self.shutdown_timeout_s, numpy=False) or not math.isfinite(self.shutdown_timeout_s) \
                or self.shutdown_timeout_s < 0:
            raise ValueError(f"shutdown_timeout_s: must be a finite number of seconds >= 0, got {self.shutdown_timeout_s!r}")
