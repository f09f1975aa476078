"""Typed results: completions, stream chunks, usage and models, shaped like openai-python's objects.

Each keeps the server's JSON in `raw`, so fields we do not model (logprobs, tool calls, ...) are not lost,
and completions add what we measured: `latency_s`, `ttft_s`, `cost_usd`, `retries`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("lab.client")

@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the provider's prompt cache (priced lower)
    reasoning_tokens: int = 0  # of completion_tokens, those a reasoning model spent thinking

    @classmethod
    def from_dict(cls, d: dict | None) -> Usage | None:
        if not d:
            return None
        details = d.get("prompt_tokens_details") or {}
        # OpenAI reports cached tokens in prompt_tokens_details, DeepSeek as prompt_cache_hit_tokens
        cached = details.get("cached_tokens") or d.get("prompt_cache_hit_tokens") or 0
        reasoning = (d.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        prompt, completion = d.get("prompt_tokens") or 0, d.get("completion_tokens") or 0
        return cls(prompt, completion, d.get("total_tokens") or prompt + completion, cached, reasoning)


@dataclass(slots=True)
class ChatMessage:
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None  # DeepSeek's reasoner and others stream their thinking here
    tool_calls: list | None = None
    refusal: str | None = None  # OpenAI's: why the model declined, in place of content

    @classmethod
    def from_dict(cls, d: dict | None) -> ChatMessage | None:
        if d is None:
            return None
        return cls(d.get("role"), d.get("content"), d.get("reasoning_content"), d.get("tool_calls"), d.get("refusal"))


@dataclass(slots=True)
class Choice:
    """One choice of any of the four shapes: chat (`message`), chat chunk (`delta`), text (`text`)."""

    index: int = 0
    finish_reason: str | None = None
    message: ChatMessage | None = None
    delta: ChatMessage | None = None
    text: str | None = None

    @property
    def content(self) -> str:
        for m in (self.message, self.delta):
            if m is not None:
                return m.content or ""
        return self.text or ""

    @classmethod
    def from_dict(cls, d: dict) -> Choice:
        return cls(
            d.get("index", 0),
            d.get("finish_reason"),
            ChatMessage.from_dict(d.get("message")),
            ChatMessage.from_dict(d.get("delta")),
            d.get("text"),
        )


@dataclass(slots=True)
class Completion:
    """A finished chat or text completion (`object` says which), plus what the client measured."""

    id: str
    object: str
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    created: int | None = None
    latency_s: float | None = None  # whole call, retries and rate-limit waits included
    ttft_s: float | None = None  # streams: first chunk; non-streaming: first response byte
    cost_usd: float | None = None  # from lab.cost when the model is known, else None
    retries: int = 0
    request_id: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        return self.choices[0].content if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    @classmethod
    def from_dict(cls, d: dict) -> Completion:
        return cls(
            id=d.get("id", ""),
            object=d.get("object", ""),
            model=d.get("model", ""),
            choices=[Choice.from_dict(c) for c in d.get("choices") or ()],
            usage=Usage.from_dict(d.get("usage")),
            created=d.get("created"),
            raw=d,
        )


ChatCompletion = Completion  # one type serves both endpoints; `object` tells them apart


@dataclass(slots=True)
class Chunk:
    """One streamed event: `choices[i].delta.content` (chat) or `choices[i].text` (completions)."""

    id: str
    object: str
    model: str
    choices: list[Choice]
    usage: Usage | None = None  # only on the last chunk, when stream_options.include_usage is set
    created: int | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        return "".join(c.content for c in self.choices)

    @property
    def reasoning(self) -> str:
        """Streamed thinking (`delta.reasoning_content`, DeepSeek's reasoner and others), apart from the text."""
        return "".join(c.delta.reasoning_content or "" for c in self.choices if c.delta is not None)

    @property
    def other_output(self) -> bool:
        """A tool-call or refusal delta: output that is neither text nor thinking."""
        return any(c.delta is not None and (c.delta.tool_calls or c.delta.refusal) for c in self.choices)

    @classmethod
    def from_dict(cls, d: dict) -> Chunk:
        return cls(
            id=d.get("id", ""),
            object=d.get("object", ""),
            model=d.get("model", ""),
            choices=[Choice.from_dict(c) for c in d.get("choices") or ()],
            usage=Usage.from_dict(d.get("usage")),
            created=d.get("created"),
            raw=d,
        )


@dataclass(slots=True)
class Model:
    id: str
    owned_by: str | None = None
    created: int | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> Model:
        return cls(d.get("id", ""), d.get("owned_by"), d.get("created"), d)


@dataclass(slots=True)
class ModelPage:
    """What `client.models.list()` returns: `.data` as openai-python's page has, and also usable as
    the plain list it used to be (`for m in page`, `page[0]`, `len(page)`)."""

    data: list[Model] = field(default_factory=list)
    object: str = "list"

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def cost_of(model: str, usage: Usage | None, provider: str | None, self_hosted: bool = False) -> float | None:
    """Price of a usage via lab.cost, or None when that module or the model's price is unknown, or the
    server is one's own (`self_hosted`: see lab.client.providers.is_self_hosted).

    A model missing from the price table is the common case (a local model) and passes quietly; any other
    refusal (a broken price table, a usage the server got wrong) is logged as a warning: the answer is
    still returned, without its price, and nobody is left guessing why."""
    if usage is None or not model or self_hosted:
        return None
    usage_cost = _usage_cost()
    if usage_cost is None:
        return None
    try:
        return usage_cost(model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, provider=provider)
    except ValueError as exc:
        from lab.cost import UnknownModelError  # importable: usage_cost came from lab.cost

        if not isinstance(exc, UnknownModelError):
            log.warning("cost_usd left out for model %r: %s", model, exc)
        return None


_COST_FN: list = []  # the lazily imported lab.cost.usage_cost (or None), looked up once


def _usage_cost():
    if not _COST_FN:
        try:
            from lab.cost import usage_cost
        except ImportError:
            usage_cost = None
        _COST_FN.append(usage_cost)
    return _COST_FN[0]
