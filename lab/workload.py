"""Workloads: what requests arrive when, how long their prompts are, how much they generate.

A `Workload` is a list of `RequestSpec`s sorted by arrival time. Every runner (simulator,
in-process engine, HTTP client) consumes the same `Workload` and returns a `lab.metrics.Result`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class RequestSpec:
    """One request. Give the prompt as `prompt` (text), `prompt_token_ids`, or only `prompt_len`."""

    id: str
    arrival_s: float = 0.0
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    prompt_len: int | None = None
    output_len: int = 16  # max_tokens
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = True  # benchmarks fix the output length, as `vllm bench serve` does

    def __post_init__(self):
        if self.prompt is None and self.prompt_token_ids is None and self.prompt_len is None:
            raise ValueError(f"request {self.id}: give prompt, prompt_token_ids or prompt_len")
        if self.prompt_token_ids is not None:
            self.prompt_len = len(self.prompt_token_ids)
        if self.prompt_len is not None and self.prompt_len < 1:
            raise ValueError(f"request {self.id}: prompt_len must be >= 1, got {self.prompt_len}")
        if self.output_len < 1:
            raise ValueError(f"request {self.id}: output_len must be >= 1, got {self.output_len}")
        if self.arrival_s < 0:
            raise ValueError(f"request {self.id}: arrival_s must be >= 0, got {self.arrival_s}")


@dataclass(slots=True)
class Workload:
    requests: list[RequestSpec]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.requests = sorted(self.requests, key=lambda r: r.arrival_s)
        ids = [r.id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError("workload: request ids must be unique")

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[RequestSpec]:
        return iter(self.requests)

    def __getitem__(self, i):
        return self.requests[i]

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def total_output_tokens(self) -> int:
        return sum(r.output_len for r in self.requests)


def poisson_arrivals(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Arrival times for `n` requests at `rate` per second; inf rate means all at t=0.

    Gaps are gamma-distributed with shape `burstiness` and mean 1/rate, as in `vllm bench serve
    --burstiness`: 1.0 is Poisson, below 1 burstier, above 1 more regular.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s (or inf), got {rate}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if np.isinf(rate):
        return np.zeros(n)
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    return np.cumsum(gaps) - gaps[0] if n else gaps


def synthetic(
    n: int,
    rate: float = float("inf"),
    prompt_lens: Sequence[int] | int = 32,
    output_lens: Sequence[int] | int = 32,
    burstiness: float = 1.0,
    seed: int = 0,
    name: str = "synthetic",
) -> Workload:
    """Prompts given by length only; lengths are fixed (an int) or one per request (a sequence)."""

    def per_request(v, field_name):
        arr = np.full(n, v) if np.isscalar(v) else np.asarray(v)
        if len(arr) != n:
            raise ValueError(f"{field_name}: need {n} values, got {len(arr)}")
        return arr

    arrivals = poisson_arrivals(n, rate, burstiness, seed)
    p = per_request(prompt_lens, "prompt_lens")
    o = per_request(output_lens, "output_lens")
    reqs = [
        RequestSpec(id=f"req-{i}", arrival_s=float(arrivals[i]), prompt_len=int(p[i]), output_len=int(o[i]))
        for i in range(n)
    ]
    return Workload(reqs, name=name)
