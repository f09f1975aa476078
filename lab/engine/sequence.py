"""SamplingParams (as in vLLM) and Sequence: one request's tokens, KV blocks and progress.

A sequence's KV is in cache for its first `num_computed_tokens` tokens; each step computes the
next chunk of the rest. When every token is computed, the step samples one new token.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from lab._checks import is_int, is_number

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
MIN_TEMPERATURE = 1e-5  # a lower temperature samples as greedy


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 (or below 1e-5) means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) means off
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (0: off), as vLLM's
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (HF's, vLLM's)

    def __post_init__(self):
        # types first: a wrong type would otherwise surface as a TypeError deep in a comparison. What passes
        # is stored as a plain int or float: a numpy integer overflowed the admission check (np.int64(2**63 - 1)
        # plus the prompt length wrapped negative, "fitting" a request that was then never admitted), and a
        # Fraction passed here but failed the sampler's step
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an integer >= 1, got {self.max_tokens!r}")
        self.max_tokens = int(self.max_tokens)
        temperature = _as_float(self.temperature)
        if temperature is None or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature: must be a finite number >= 0 (0: greedy), got {self.temperature!r}")
        self.temperature = temperature
        top_p = _as_float(self.top_p)
        if top_p is None or not 0 < top_p <= 1:
            raise ValueError(f"top_p: must be a number in (0, 1], got {self.top_p!r}")
        self.top_p = top_p
        if is_int(self.top_k) and self.top_k == -1:  # not -1.0: a float is refused as for any other value
            self.top_k = 0
        if not is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k: must be an integer >= 0 (0 or -1: off), got {self.top_k!r}")
        self.top_k = int(self.top_k)
        min_p = _as_float(self.min_p)
        if min_p is None or not 0 <= min_p <= 1:
            raise ValueError(f"min_p: must be a number in [0, 1] (0: off), got {self.min_p!r}")
        self.min_p = min_p
        if self.seed is not None and (not is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX):
            # torch.Generator takes a 64-bit seed; a bigger one would fail only when queued
            raise ValueError(f"seed: must be an integer in [-2**63, 2**63 - 1] or None, got {self.seed!r}")
        if self.seed is not None:
            self.seed = int(self.seed)  # torch.Generator.manual_seed rejects numpy integers
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None and (not isinstance(self.stop, (list, tuple))
                                      or not all(isinstance(s, str) for s in self.stop)):
            raise ValueError(f"stop: must be a string or a list of strings, got {self.stop!r}")
        if any(not s for s in self.stop or []):  # as vLLM: "" would match everywhere, or be dropped unseen
            raise ValueError("stop: must not contain an empty string")
        self.stop = list(self.stop or [])
        if self.stop_token_ids is not None and (not isinstance(self.stop_token_ids, (list, tuple))
                                                or not all(is_int(t) for t in self.stop_token_ids)):
            raise ValueError(f"stop_token_ids: must be a list of integers, got {self.stop_token_ids!r}")
        self.stop_token_ids = [int(t) for t in self.stop_token_ids or []]
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos: must be true or false, got {self.ignore_eos!r}")
        penalty = _as_float(self.repetition_penalty)
        if penalty is None or not math.isfinite(penalty) or penalty <= 0:
            raise ValueError(f"repetition_penalty: must be a finite number > 0 (1: off), got {self.repetition_penalty!r}")
        self.repetition_penalty = penalty

    @property
    def greedy(self) -> bool:
        # below this, logits / temperature overflow to inf; the limit is greedy in all but name (vLLM's rule)
        return self.temperature < MIN_TEMPERATURE


def _as_float(x) -> float | None:
    """A real number as a Python float (inf when too large for one), or None for anything else."""
    if not is_number(x):
        return None
    try:
        return float(x)
    except OverflowError:  # 10**400, or a Fraction as large: math.isfinite raised this, not a ValueError
        return math.inf


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_s: float
    prompt: str | None = None
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V is in the cache
    num_cached_tokens: int = 0  # prompt tokens the prefix cache held at its first admission
    block_table: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0  # full blocks already registered in the prefix cache
    finish_reason: str | None = None
    error: str | None = None  # why, when finish_reason is "error" (this request alone failed)
    text: str = ""
    stream_offset: int = 0  # chars of `text` already handed to stream consumers
    # the detokenizer's window: the prompt's last few tokens, then every output token. Starting in the
    # prompt keeps what depends on the neighbour right for the first output token (its leading space)
    detok_ids: list[int] = field(default_factory=list)
    detok_prefix: int = 0  # detok_ids[detok_prefix:detok_read] are the context of the next decode
    detok_read: int = 0  # detok_ids before this one are in `text` (or are prompt)
    num_preemptions: int = 0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    generator: object = None  # torch.Generator for seeded sampling
    # a repetition penalty's distinct prompt and output ids (a tensor on the model's device, its set, and
    # how many of the sequence's tokens are in it), extended by each new token: see sampler.seen_token_ids
    seen_ids: object = None
    seen_set: set | None = None
    seen_upto: int = 0

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def token_at(self, i: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < n else self.output_token_ids[i - n]
