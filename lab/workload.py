"""Workloads: what requests arrive when, how long their prompts are, how much they generate.

A `Workload` is a list of `RequestSpec`s sorted by arrival time. Every runner (simulator,
in-process engine, HTTP client) consumes the same `Workload` and returns a `lab.metrics.Result`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from lab._checks import is_finite, is_int, is_number
from lab.engine.sequence import SEED_MAX, SEED_MIN  # torch-free, as the simulator imports it

# re-exported: lengths are part of describing a workload
from lab.lengths import LENGTH_KINDS, Empirical, Exponential, Fixed, LogNormal, Uniform, lengths  # noqa: F401
from lab.trace_file import read_trace

# a workload is a list in memory, about 0.3 KB and 15 us a request: 10**8 is some 30 GB and half an
# hour to build. Far past it (10**22) numpy failed with "Maximum allowed dimension exceeded", naming nothing
MAX_REQUESTS = 10**8


@dataclass(slots=True)
class RequestSpec:
    """One request. Give the prompt as `prompt` (text), `prompt_token_ids`, or only `prompt_len`
    (with `prompt_token_ids`, `prompt_len` is set to their count)."""

    id: str
    arrival_s: float = 0.0
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    prompt_len: int | None = None
    output_len: int = 16  # max_tokens
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = True  # benchmarks fix the output length (`vllm bench serve --ignore-eos`)

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"id: must be a non-empty string, got {self.id!r}")
        if self.prompt is None and self.prompt_token_ids is None and self.prompt_len is None:
            raise ValueError(f"request {self.id}: give prompt, prompt_token_ids or prompt_len")
        if self.prompt_token_ids is not None:
            self.prompt_token_ids = self._token_id_list()
            # their count, whatever prompt_len said: dataclasses.replace(spec, prompt_token_ids=...)
            # carries the old prompt_len along, and refusing the mismatch broke it
            self.prompt_len = len(self.prompt_token_ids)
        if self.prompt_len is not None and (not is_int(self.prompt_len) or self.prompt_len < 1):
            raise ValueError(f"request {self.id}: prompt_len must be an integer >= 1, got {self.prompt_len!r}")
        if not is_int(self.output_len) or self.output_len < 1:
            raise ValueError(f"request {self.id}: output_len must be an integer >= 1, got {self.output_len!r}")
        # a NaN arrival would sort anywhere and never arrive
        if not is_finite(self.arrival_s, inclusive=True):
            raise ValueError(f"request {self.id}: arrival_s must be a finite number >= 0, got {self.arrival_s!r}")
        self._check_prompt()
        self._check_sampling()

    def _token_id_list(self) -> list:
        ids = self.prompt_token_ids
        # an array or tensor of ids (what tokenizers return), as the engine takes it: `ids or ()` on an
        # array raised numpy's "truth value ... is ambiguous", and over HTTP numpy ints are not JSON
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
            raise ValueError(f"request {self.id}: prompt_token_ids must be a list of integers, got {type(ids).__name__}")
        if len(ids) == 0:  # else the error named prompt_len, which the caller never gave
            raise ValueError(f"request {self.id}: prompt_token_ids must not be empty")
        return ids if isinstance(ids, list) else list(ids)  # a list as given: no copy per spec

    def _check_prompt(self):
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"request {self.id}: prompt must be a string, got {type(self.prompt).__name__}")
        if self.prompt == "":  # engine and server refuse it too, but per request (HTTP 400s mid-run)
            raise ValueError(f"request {self.id}: prompt must not be empty")
        ids = self.prompt_token_ids or ()
        # the cheap test first: long prompts of plain ints are the common case
        plain = all(type(t) is int for t in ids)
        bad = None if plain else next((t for t in ids if not is_int(t)), None)
        if bad is not None:
            raise ValueError(f"request {self.id}: prompt_token_ids must be a list of integers, got {bad!r}")
        if not plain:  # numpy ints: json (the HTTP runner) refuses them
            self.prompt_token_ids = [int(t) for t in ids]

    def _check_sampling(self):
        # the runners' checks, made here so a bad spec fails at once, not once per request mid-run
        if not is_finite(self.temperature, inclusive=True):
            raise ValueError(f"request {self.id}: temperature must be a finite number >= 0, got {self.temperature!r}")
        if not is_finite(self.top_p) or self.top_p > 1:
            raise ValueError(f"request {self.id}: top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"request {self.id}: seed must be an integer or None, got {self.seed!r}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:  # SamplingParams' range
            raise ValueError(f"request {self.id}: seed must be in [-2**63, 2**63 - 1], got {self.seed!r}")
        if not isinstance(self.ignore_eos, (bool, np.bool_)):
            raise ValueError(f"request {self.id}: ignore_eos must be True or False, got {self.ignore_eos!r}")
        # plain Python values: SamplingParams refuses np.True_, and json (the HTTP runner) both
        self.ignore_eos = bool(self.ignore_eos)
        if self.seed is not None:
            self.seed = int(self.seed)


@dataclass(slots=True)
class Workload:
    requests: list[RequestSpec]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.requests, (str, bytes)) or not hasattr(self.requests, "__iter__"):
            raise ValueError(f"requests: must be a list of RequestSpec, got {type(self.requests).__name__}")
        self.requests = list(self.requests)
        bad = next((r for r in self.requests if not isinstance(r, RequestSpec)), None)
        if bad is not None:
            raise ValueError(f"requests: must be a list of RequestSpec, got an item of type {type(bad).__name__}")
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

    @property
    def total_prompt_tokens(self) -> int:
        return sum(r.prompt_len or 0 for r in self.requests)


# -- arrivals ----------------------------------------------------------------------------------
def poisson_arrivals(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Arrival times for `n` requests at `rate` per second; inf rate means all at t=0.

    Gaps are gamma-distributed with shape `burstiness` and mean 1/rate, as in `vllm bench serve
    --burstiness`: 1.0 is Poisson, below 1 burstier, above 1 more regular, inf evenly spaced.
    The first request arrives at t=0.
    """
    _check_arrivals(n, rate, burstiness, seed)
    return _arrivals(n, rate, burstiness, np.random.default_rng(seed))


def _check_arrivals(n, rate, burstiness, seed) -> None:
    if not is_int(n) or n < 0:
        raise ValueError(f"n: must be an integer >= 0, got {n!r}")
    if n > MAX_REQUESTS:
        raise ValueError(f"n: must be <= {MAX_REQUESTS:,} requests (each is held in memory), got {n!r}")
    # is_finite rather than `> 0`: an int past the float range (10**400) passed that, then failed np.isinf
    if not is_number(rate) or not (rate == np.inf or is_finite(rate)):
        raise ValueError(f"rate: must be > 0 requests/s (or inf), got {rate!r}")
    if not is_number(burstiness) or not (burstiness == np.inf or is_finite(burstiness)):
        raise ValueError(f"burstiness: must be > 0 (or inf), got {burstiness!r}")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"seed: must be an integer >= 0 or None, got {seed!r}")


def _arrivals(n: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    if np.isinf(rate):
        return np.zeros(n)
    # a tiny rate (1e-308) pushes arrivals past the largest float: checked below, by name, where they
    # were inf or NaN (inf - inf) and failed as "request req-0: arrival_s must be a finite number"
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if np.isinf(burstiness):  # vLLM: the gamma tends to a constant gap of 1/rate
            arrivals = np.arange(n) / rate
        else:
            # np.float64: a Python float `rate * burstiness` that underflows to 0 raised ZeroDivisionError
            gaps = rng.gamma(shape=burstiness, scale=np.float64(1.0) / (rate * burstiness), size=n)
            arrivals = np.cumsum(gaps) - gaps[0] if n else gaps
    if not np.isfinite(arrivals).all():
        raise ValueError(f"rate: {rate:g} requests/s (burstiness {burstiness:g}) is too low for {n} requests: "
                         f"their arrival times pass the largest float ({np.finfo(float).max:.3g} s); "
                         "give a higher rate")
    return arrivals


def gamma_arrivals(n: int, rate: float, burstiness: float, seed: int = 0) -> np.ndarray:
    """`poisson_arrivals` under the name of what it draws when burstiness != 1."""
    return poisson_arrivals(n, rate, burstiness, seed)


# -- prompts as text ---------------------------------------------------------------------------
def _data_dir() -> Path:
    # the same rule as lab.engine.loader.data_dir, without importing the engine (and torch)
    here = Path(__file__).resolve().parent
    return here / "_data" if (here / "_data").exists() else here.parent / "data"


@lru_cache(maxsize=4)
def corpus_text(path: str | Path | None = None) -> str:
    """The prompt corpus (data/corpus/tinyshakespeare.txt unless `path` is given)."""
    p = Path(path) if path is not None else _data_dir() / "corpus" / "tinyshakespeare.txt"
    if not p.exists():
        raise FileNotFoundError(f"corpus: {p} not found; pass corpus_path= to a text file")
    text = p.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"corpus: {p} is empty")
    return text


def _text_prompts(n_chars: np.ndarray, rng: np.random.Generator, corpus_path) -> list[str]:
    text = corpus_text(corpus_path)
    if len(n_chars) and n_chars.max() > len(text):  # a clipped prompt would no longer be prompt_len long
        raise ValueError(f"prompt_lens: a text prompt of {int(n_chars.max())} characters (prompt_len x "
                         f"chars_per_token) is longer than the whole corpus ({len(text)} characters); draw "
                         "shorter prompts, or lengths only (text_prompts=False)")
    out = []
    for k in n_chars:
        k = int(max(k, 1))
        start = int(rng.integers(0, len(text) - k + 1))
        out.append(text[start : start + k])
    return out


def synthetic(
    n: int,
    rate: float = float("inf"),
    prompt_lens=32,
    output_lens=32,
    burstiness: float = 1.0,
    seed: int = 0,
    name: str = "synthetic",
    text_prompts: bool = False,
    chars_per_token: float = 4.0,
    corpus_path: str | Path | None = None,
) -> Workload:
    """`n` requests arriving at `rate`/s with the given lengths.

    Lengths: an int (fixed), a sequence (one per request) or a distribution (`Uniform(8, 64)`, ...).
    `text_prompts`: draw each prompt as a slice of the corpus of about prompt_len * chars_per_token
    characters (for real runs; 1.0 for a character-level tokenizer); otherwise lengths only.
    """
    if not is_finite(chars_per_token):
        raise ValueError(f"chars_per_token: must be a finite number > 0, got {chars_per_token!r}")
    _check_arrivals(n, rate, burstiness, seed)
    rng = np.random.default_rng(seed)  # lengths and prompts
    # arrivals from a child stream: drawn from the same stream as the lengths, Exponential lengths
    # came out exactly proportional to the Poisson gaps before them
    arrivals = _arrivals(n, rate, burstiness, np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]))
    p = lengths(prompt_lens, n, rng, "prompt_lens")
    o = lengths(output_lens, n, rng, "output_lens")
    texts = _text_prompts(np.round(p * chars_per_token), rng, corpus_path) if text_prompts else [None] * n
    reqs = [
        RequestSpec(
            id=f"req-{i}",
            arrival_s=float(arrivals[i]),
            prompt=texts[i],
            prompt_len=int(p[i]),
            output_len=int(o[i]),
        )
        for i in range(n)
    ]
    return Workload(reqs, name=name, meta={"rate": rate, "burstiness": burstiness, "seed": seed})


# -- Azure LLM inference traces 2023 -----------------------------------------------------------
TRACE_KINDS = ("code", "conv")


def azure_trace(
    kind: str = "conv",
    path: str | Path | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
    rate_scale: float = 1.0,
    max_requests: int | None = None,
) -> Workload:
    """The Azure LLM inference trace 2023 (Patel et al., Splitwise, ISCA 2024; CC BY 4.0).

    Arrivals are seconds from the first row. `start_s`/`end_s` keep the rows in [start_s, end_s)
    of the original clock, rebased to 0; `rate_scale` > 1 compresses time (2.0: twice the rate).
    """
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind: unknown trace {kind!r}; allowed: {', '.join(TRACE_KINDS)}")
    # is_finite: an int past the float range (10**400) passed `> 0`, then failed np.isinf
    if not is_finite(rate_scale):
        raise ValueError(f"rate_scale: must be a finite number > 0, got {rate_scale!r}")
    if not is_number(start_s) or (end_s is not None and not is_number(end_s)):
        raise ValueError(f"start_s/end_s: must be numbers (end_s may be None), got {start_s!r}, {end_s!r}")
    # `not (a <= b)` rather than `b < a`: NaN fails every comparison, and must fail here, not as "no requests";
    # is_finite: an int past the float range (10**400) overflowed numpy's `t >= start_s`
    if not is_finite(start_s, inclusive=True) or (end_s is not None and not (
            start_s < end_s and (end_s == np.inf or is_finite(end_s)))):
        raise ValueError(f"start_s/end_s: need 0 <= start_s < end_s, got {start_s}, {end_s}; "
                         "numbers a float holds, end_s may be inf")
    if max_requests is not None and (not is_int(max_requests) or max_requests < 1):
        # a negative slice bound would silently drop rows from the end
        raise ValueError(f"max_requests: must be an integer >= 1 or None, got {max_requests!r}")
    path = Path(path) if path is not None else _data_dir() / "traces" / f"AzureLLMInferenceTrace_{kind}.csv"
    stamps, prompt, output = read_trace(path)
    t = (stamps - stamps[0]).astype("int64") / 1e9
    keep = (t >= start_s) & (t < (np.inf if end_s is None else end_s))
    idx = np.flatnonzero(keep)[:max_requests]
    if idx.size == 0:
        raise ValueError(
            f"start_s/end_s: the window [{start_s}, {end_s}) of {path.name} holds no requests "
            f"(the trace spans 0 .. {t[-1]:.1f} s)"
        )
    with np.errstate(over="ignore"):  # checked next, by name: inf failed as "request conv-1: arrival_s ..."
        arrivals = (t[idx] - t[idx[0]]) / rate_scale
    if not np.isfinite(arrivals).all():
        raise ValueError(f"rate_scale: {rate_scale:g} is too small: it stretches {t[idx[-1]] - t[idx[0]]:.1f} s of "
                         f"trace past the largest float ({np.finfo(float).max:.3g} s); give a larger rate_scale")
    reqs = [
        RequestSpec(
            id=f"{kind}-{i}", arrival_s=float(a), prompt_len=int(prompt[i]), output_len=int(output[i])
        )
        for i, a in zip(idx, arrivals, strict=True)
    ]
    meta = {"source": path.name, "start_s": start_s, "end_s": end_s, "rate_scale": rate_scale}
    return Workload(reqs, name=f"azure-{kind}", meta=meta)
