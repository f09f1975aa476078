"""Shared fixtures: tiny random Hugging Face models built locally (nothing is downloaded)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

VOCAB_CHARS = string.printable[:95] + "\n"  # digits, letters, punctuation, space, newline: 96


def char_tokenizer_json(path: Path, chars: str = VOCAB_CHARS) -> None:
    """A character-level tokenizer.json (one token per character), as the bundled model has."""
    from lab.engine.tokenizer import build_char_tokenizer

    build_char_tokenizer(chars).save(str(path))


def make_hf_model(folder: Path, arch: str, vocab_size: int = len(VOCAB_CHARS), seed: int = 0,
                  with_tokenizer: bool = True, **overrides) -> Path:
    """Save a tiny random model of the given family to `folder`, with a char tokenizer."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, rope_theta=5000.0)
    families = {
        "llama": (LlamaConfig, LlamaForCausalLM, llama_like),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, llama_like | {"tie_word_embeddings": True}),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, llama_like | {"head_dim": 16}),
        "gpt2": (GPT2Config, GPT2LMHeadModel, dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    }
    config_cls, model_cls, shape = families[arch]
    torch.manual_seed(seed)
    # a larger init spread than the default 0.02 makes logits less flat, so float32 argmax ties
    # between two implementations are practically impossible
    model = model_cls(config_cls(**common, **shape, initializer_range=0.2, **overrides)).eval()
    model.save_pretrained(folder)
    if with_tokenizer:
        char_tokenizer_json(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: make_hf_model(root / arch, arch) for arch in ("llama", "qwen2", "qwen3")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


def hf_greedy(folder: Path, prompts: list[list[int]], max_new_tokens: int, device: str = "cpu",
              **generate_kwargs) -> list[list[int]]:
    """Reference: transformers' own greedy `generate`, one prompt at a time (no padding effects)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            # an explicit mask: with a pad id set, generate would mask every prompt token equal to it
            x = torch.tensor([p], device=device)
            ids = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
            out.append(ids[0, len(p):].tolist())
    return out


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))
