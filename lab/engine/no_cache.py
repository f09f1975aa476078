"""Greedy generation with no KV cache: the baseline that the cache is measured against.

Each new token runs the model's plain (dense) forward over the whole prefix again, as a transformer
without a cache must, so the work per token grows with the text. Notebook 02 times it against the
engine; being greedy, both must give the same tokens.
"""

from __future__ import annotations

import torch

from lab.engine.llm import LLM
from lab.engine.sequence import SamplingParams


def generate_without_cache(llm: LLM, prompt: str | list[int], max_tokens: int) -> tuple[list[int], int]:
    """Greedy tokens for `prompt`, recomputing every position at every step.

    Returns (token ids, token positions computed). Stops at the model's EOS, and at its context
    (max_model_len), as the engine does.
    """
    _, ids = llm.engine.check_request(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    model, device = llm.engine.runner.model, llm.engine.runner.device
    eos = set(llm.engine.model_config.eos_token_ids)
    tokens: list[int] = []
    computed = 0
    with torch.inference_mode():
        for _ in range(max_tokens):
            input_ids = torch.tensor([ids + tokens], device=device)
            hidden = model(input_ids)  # every position of the prefix, again
            tokens.append(int(model.compute_logits(hidden[0, -1]).argmax()))
            computed += input_ids.shape[1]
            # the engine's own limits: past the context GPT-2's learned positions have no row at all
            if tokens[-1] in eos or len(ids) + len(tokens) >= llm.engine.config.max_model_len:
                break
    return tokens, computed
