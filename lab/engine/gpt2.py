"""The GPT-2 family (`GPT2LMHeadModel`): learned positions, LayerNorm, GELU (tanh) MLP, fused qkv and a
tied head, on the same attention path as the Llama family (paged KV when serving, dense when scoring).

Checkpoints store projections as Conv1D, [in, out]; we use `nn.Linear`, so the loader transposes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.engine.attention import AttentionMetadata, dense_causal_attention, paged_attention
from lab.engine.model import ModelConfig

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}
CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


def gpt2_config(cfg: dict, eos_ids: tuple[int, ...]) -> ModelConfig:
    act = cfg.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"activation_function: {act!r} is not supported; allowed: {', '.join(ACTIVATIONS)}")
    # variants that change the attention arithmetic; the released GPT-2 checkpoints use none of them
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        if bool(cfg.get(key, ok)) != ok:
            raise ValueError(f"{key}: {cfg[key]!r} is not supported; allowed: {str(ok).lower()}")
    hidden, heads = cfg["n_embd"], cfg["n_head"]
    if hidden % heads:
        raise ValueError(f"n_embd: {hidden} is not divisible by n_head={heads}")
    return ModelConfig(
        arch="gpt2",
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        num_layers=cfg["n_layer"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=cfg.get("n_inner") or 4 * hidden,
        max_position_embeddings=cfg.get("n_positions", 1024),
        rms_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),  # LayerNorm's epsilon here
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        attention_bias=True,
        mlp_bias=True,
        hidden_act=act,
        eos_token_ids=eos_ids,
    )


class GPT2Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.c_attn = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.c_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.k_cache: torch.Tensor | None = None  # set by the engine: [num_blocks, block_size, H, D]
        self.v_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, meta: AttentionMetadata | None) -> torch.Tensor:
        lead = x.shape[:-1]
        q, k, v = (t.view(*lead, self.num_heads, self.head_dim) for t in self.c_attn(x).chunk(3, dim=-1))
        if meta is None:
            o = dense_causal_attention(q, k, v)
        else:
            o = paged_attention(q, k, v, self.k_cache, self.v_cache, meta)
        return self.c_proj(o.reshape(*lead, self.num_heads * self.head_dim))


class GPT2MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.hidden_size, c.intermediate_size)
        self.c_proj = nn.Linear(c.intermediate_size, c.hidden_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.attn = GPT2Attention(c)
        self.ln_2 = nn.LayerNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.mlp = GPT2MLP(c)

    def forward(self, x, meta):
        x = x + self.attn(self.ln_1(x), meta)
        return x + self.mlp(self.ln_2(x))


class GPT2LM(nn.Module):
    """Same interface as `CausalLM`: `forward(input_ids, positions, meta)` -> hidden, `compute_logits`."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.hidden_size)
        self.wpe = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.h = nn.ModuleList(GPT2Block(c) for _ in range(c.num_layers))
        self.ln_f = nn.LayerNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        # called again by the loader after materialising from the meta device, which unties them
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight

    @property
    def attention_layers(self) -> list[GPT2Attention]:
        return [block.attn for block in self.h]

    def forward(self, input_ids, positions=None, meta: AttentionMetadata | None = None):
        if positions is None:  # dense mode: [B, T] from position 0
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x, meta)
        return self.ln_f(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # -- loading Hugging Face checkpoints (see lab.engine.loader.load_weights) -----------------
    @staticmethod
    def checkpoint_name_map(name: str) -> str | None:
        """'transformer.h.0.attn.c_attn.weight' (or, in old checkpoints, 'h.0...') -> 'h.0.attn.c_attn.weight'."""
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            return None  # the causal-mask buffers of old checkpoints, not weights
        return name

    @staticmethod
    def convert_checkpoint_tensor(target: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t() if target.endswith(CONV1D) else tensor
