"""Request models (pydantic, strict like OpenAI) and the response and chunk bodies (plain dicts,
built per token, so no model validation on the hot path).
"""

from __future__ import annotations

import json
import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lab.engine.sequence import SamplingParams


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    # null is "not set", as vLLM's Optional[bool] takes it: false here
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False  # vLLM's extra: with include_usage, the usage so far in every chunk


# OpenAI (and vLLM) fields this server does not implement, with the values that change nothing: any
# other value is refused with a 400 naming the field, never silently ignored. Fields not listed here
# (user, metadata, store, ...) do not change the answer and are ignored.
NOT_IMPLEMENTED = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "logit_bias": (None, {}), "min_tokens": (None, 0),
    "response_format": (None, {"type": "text"}), "tools": (None, []), "functions": (None, []),
    "tool_choice": (None, "none", "auto"), "function_call": (None, "none", "auto"),
    # vLLM's extras that change the answer: a client written for vLLM must hear they are not honoured
    "include_stop_str_in_output": (None, False), "use_beam_search": (None, False), "length_penalty": (None, 1),
    "prompt_logprobs": (None,), "allowed_token_ids": (None,), "bad_words": (None, []),
    "truncate_prompt_tokens": (None,), "add_generation_prompt": (None, True),
    "continue_final_message": (None, False), "chat_template": (None,), "chat_template_kwargs": (None, {}),
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
    # a chat field; on /v1/completions it would be ignored and the answer run to the end of the context
    "max_completion_tokens": (None,),
    # vLLM's tokenizer options: special tokens stay out of the text, as in vLLM's default
    "skip_special_tokens": (None, True), "spaces_between_special_tokens": (None, True),
    # newer vLLM extras, on both of its endpoints unless noted: structured_outputs replaced guided_*;
    # request_id becomes the answer's id; prompt_embeds is a completions input, documents and
    # thinking_token_budget are chat's (refused on the other endpoint too: neither can honour them)
    "structured_outputs": (None,), "repetition_detection": (None,), "watermarking": (None,),
    "logprob_token_ids": (None,), "return_token_ids": (None, False), "prompt_embeds": (None,),
    "documents": (None,), "thinking_token_budget": (None,), "request_id": (None,), "priority": (None, 0),
    # OpenAI's chat fields for other outputs (audio, web search) and reasoning models
    "modalities": (None, ["text"]), "audio": (None,), "web_search_options": (None,), "verbosity": (None,),
    "reasoning_effort": (None,),
}


def _same(a, b) -> bool:
    # 0 and 0.0 are the same penalty, but False is not the number 0 (logprobs=0 asks for log-probs)
    return a == b and isinstance(a, bool) == isinstance(b, bool)


class _Common(BaseModel):
    # extra="allow": fields we do not know pass through; those we know and do not implement are
    # checked by `unsupported_field`
    model_config = ConfigDict(extra="allow", strict=True)
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    # null is OpenAI's (and vLLM's) default too: an SDK call with n=None or stream=None sends it
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extra: generate exactly max_tokens (load generators use it)
    repetition_penalty: float | None = Field(None, gt=0)  # vLLM's extra, as transformers applies it
    min_p: float | None = Field(None, ge=0, le=1)  # vLLM's extra

    @field_validator("n")
    @classmethod
    def _only_one(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError(f"only n=1 is supported, got {n}")
        return n

    # fields whose neutral value depends on the endpoint (vLLM's add_special_tokens: a BOS for a raw
    # prompt, none for a rendered chat template, which carries its own)
    ENDPOINT_NEUTRAL: ClassVar[dict[str, tuple]] = {}

    def unsupported_field(self) -> str | None:
        """The first field set to something this server would otherwise ignore, or None."""
        for name, value in (self.model_extra or {}).items():
            neutral = NOT_IMPLEMENTED.get(name) or self.ENDPOINT_NEUTRAL.get(name)
            if neutral is not None and not any(_same(value, v) for v in neutral):
                return name
        if self.stream_options is not None and not self.stream:
            return "stream_options"
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and bool(self.stream_options.continuous_usage_stats)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_params(self, max_tokens: int, defaults: dict | None = None, turn_end: str | None = None
                        ) -> SamplingParams:
        """Raises ValueError("field: ...") for values the engine rejects. `defaults` (the model folder's
        generation_config.json) fill temperature, top_p, top_k, repetition_penalty and min_p where the
        request leaves them out.
        `turn_end`: the chat template's end of a turn, a stop beside the request's own unless
        `ignore_eos` (it stands in for an end-of-turn token, which `ignore_eos` also ignores)."""
        defaults = defaults or {}
        stop = self.stop
        if turn_end is not None and not self.ignore_eos:
            stop = [*([stop] if isinstance(stop, str) else stop or []), turn_end]

        def pick(name: str, neutral):
            value = getattr(self, name)
            return value if value is not None else defaults.get(name, neutral)

        return SamplingParams(
            max_tokens=max_tokens, temperature=pick("temperature", 1.0), top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0), seed=self.seed, stop=stop, stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos, repetition_penalty=pick("repetition_penalty", 1.0), min_p=pick("min_p", 0.0),
        )


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    # extra="allow": name, tool_call_id and the rest are kept, for the template (see for_template)
    model_config = ConfigDict(extra="allow", strict=True)
    # "function" is deprecated (role "tool" replaced it), but OpenAI's types still allow it, and vLLM
    # hands any role to the template, which renders it or raises
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict] | None = None

    @field_validator("tool_calls")
    @classmethod
    def _arguments_as_objects(cls, calls: list[dict] | None) -> list[dict] | None:
        # as vLLM: OpenAI sends a call's arguments as a JSON string, templates (Llama 3.1's, Qwen2.5's
        # `arguments | tojson`) expect the object and would render the string quoted once more
        for i, call in enumerate(calls or ()):
            function = call.get("function")
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                try:
                    function["arguments"] = json.loads(function["arguments"] or "{}")
                except ValueError as exc:
                    raise ValueError(f"call {i}: function.arguments is not valid JSON ({exc}); send a "
                                     "JSON object, in a string (as OpenAI sends it) or as is") from None
        return calls or None  # an empty list, dropped as vLLM does: the template's plain assistant path

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)  # as vLLM joins text parts
        return self.content or ""

    def for_template(self) -> dict:
        """What the chat template sees: every field the client sent (name, tool_calls, tool_call_id: vLLM
        passes them, and Qwen's and Llama's templates render them), the content as one string."""
        return self.model_dump(exclude_none=True) | {"content": self.text()}


class ChatCompletionRequest(_Common):
    ENDPOINT_NEUTRAL: ClassVar[dict[str, tuple]] = {"add_special_tokens": (None, False)}
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    ENDPOINT_NEUTRAL: ClassVar[dict[str, tuple]] = {"add_special_tokens": (None, True)}
    prompt: str | list[int]
    # OpenAI's and vLLM's default for the legacy endpoint; chat's is whatever the context leaves.
    # An explicit null still means the rest of the context, as in vLLM
    max_tokens: int | None = Field(16, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, prompt):
        # OpenAI also takes a batch, a list of texts or of token-id lists (LangChain always sends one):
        # a batch of one is that prompt; more would need one choice each, so they are refused by name
        # instead of failing as "Input should be a valid string"
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            if len(prompt) > 1:
                raise ValueError(f"only one prompt per request is supported, got a batch of {len(prompt)}; "
                                 "send one request per prompt")
            return prompt[0]
        return prompt


# -- response bodies --------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage, with the prompt tokens the prefix cache held as its `cached_tokens` (vLLM reports
    them so with --enable-prompt-tokens-details; a hosted API prices them lower)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_body(kind: str, rid: str, model: str, text: str, finish_reason: str | None,
                    use: dict) -> dict:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice],
            "usage": use}


class ChunkMaker:
    """Builds a stream's `data:` chunks; `usage: null` in each when include_usage, as OpenAI sends, or the
    usage so far with vLLM's `continuous_usage_stats`."""

    def __init__(self, kind: str, rid: str, model: str, include_usage: bool, continuous_usage: bool = False):
        self.kind, self.include_usage, self.continuous_usage = kind, include_usage, continuous_usage
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.head = {"id": rid, "object": obj, "created": int(time.time()), "model": model}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False,
              use: dict | None = None) -> dict:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        out = {**self.head, "choices": [choice]}
        if self.include_usage:
            out["usage"] = use if self.continuous_usage else None
        return out

    def usage_chunk(self, use: dict) -> dict:
        return {**self.head, "choices": [], "usage": use}
