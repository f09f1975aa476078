"""Decoder-only transformers in plain torch: the Llama family (Llama, Qwen2 with q/k/v bias,
Qwen3 with q/k RMSNorm). Module names match Hugging Face checkpoints, so their safetensors load as is.

One definition serves inference (flat token batch + paged KV metadata) and training (dense
[batch, time] causal attention, no cache): pass `meta=None` for the latter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.engine.attention import AttentionMetadata, dense_causal_attention, paged_attention

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GPT2LMHeadModel": "gpt2",
}


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Stretched RoPE frequencies for contexts longer than pretraining: "linear" divides every
    frequency by `factor`; "llama3" (Llama 3.1+) divides only the low ones and blends the middle."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(slots=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v bias (Qwen2: always)
    o_proj_bias: bool = False  # Llama and Qwen3 follow attention_bias here; Qwen2 never has one
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3
    hidden_act: str = "silu"
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, cfg: dict) -> ModelConfig:
        # no architectures (old GPT-2 configs): transformers goes by model_type, and so do we
        archs = cfg.get("architectures") or [a for a, family in ARCHITECTURES.items() if family == cfg.get("model_type")]
        arch = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            named = (f"architectures: {archs}" if cfg.get("architectures")
                     else f"architectures: missing, and model_type {cfg.get('model_type')!r}")
            raise ValueError(f"{named} is not supported; allowed: {', '.join(ARCHITECTURES)}")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if arch == "gpt2":
            from lab.engine.gpt2 import gpt2_config

            return gpt2_config(cfg, eos_ids)
        rope_field = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"  # before transformers 5
        rope = cfg.get(rope_field) or {}
        if cfg.get("use_sliding_window"):
            raise ValueError("use_sliding_window: sliding-window attention is not supported; allowed: false")
        heads = cfg["num_attention_heads"]
        return cls(
            arch=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            intermediate_size=cfg["intermediate_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0),
            rope_scaling=rope_scaling_from_hf(rope, cfg.get("max_position_embeddings"), rope_field),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=arch == "qwen2" or bool(cfg.get("attention_bias", False)),
            o_proj_bias=arch != "qwen2" and bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=arch == "qwen3",
            hidden_act=cfg.get("hidden_act", "silu"),
            eos_token_ids=eos_ids,
        )


def rope_scaling_from_hf(rope: dict, max_position_embeddings: int | None,
                         field: str = "rope_parameters") -> RopeScaling | None:
    """The config's `rope_parameters` (or older `rope_scaling`, named by `field` in errors) as a
    RopeScaling; None for plain RoPE."""
    type_key = "rope_type" if "rope_type" in rope or "type" not in rope else "type"  # "type": older configs
    rope_type = rope.get(type_key, "default")
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(
            f"{field}.{type_key}: {rope_type!r} is not supported; allowed: 'default', 'linear', 'llama3'"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(
            f"{field}.partial_rotary_factor: {rope['partial_rotary_factor']!r} is not supported; allowed: 1.0"
        )
    if rope_type == "default":
        return None

    def number(name: str, default=None) -> float:
        value = rope.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{field}.{name}: must be a positive number for rope_type "
                             f"{rope_type!r}, got {value!r}")
        return value

    if rope_type == "linear":
        return RopeScaling("linear", float(number("factor")))
    low, high = number("low_freq_factor"), number("high_freq_factor")
    if high <= low:
        raise ValueError(f"{field}.high_freq_factor: must be above low_freq_factor ({low}), got {high}")
    # transformers falls back to max_position_embeddings when the original length is missing
    original = number("original_max_position_embeddings", max_position_embeddings)
    return RopeScaling("llama3", float(number("factor")), float(low), float(high), int(original))


def rope_inv_freq(c: ModelConfig, device) -> torch.Tensor:
    """RoPE's inverse frequencies, computed as transformers computes them (float32)."""
    exponents = torch.arange(0, c.head_dim, 2, dtype=torch.int64, device=device).float() / c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** exponents)
    s = c.rope_scaling
    if s is None:
        return inv_freq
    if s.rope_type == "linear":
        return inv_freq / s.factor
    # llama3: wavelengths longer than the pretraining context / low_freq_factor are stretched by
    # `factor`, those shorter than context / high_freq_factor kept, the ones between blended
    wavelen = 2 * math.pi / inv_freq
    stretched = torch.where(wavelen > s.original_max_position_embeddings / s.low_freq_factor, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * stretched / s.factor + smooth * stretched
    medium = (wavelen >= s.original_max_position_embeddings / s.high_freq_factor) & (
        wavelen <= s.original_max_position_embeddings / s.low_freq_factor)
    return torch.where(medium, blended, stretched)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32 and cast back before the weight, exactly as transformers does
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., heads, head_dim]; cos/sin: [..., head_dim] (broadcast over heads)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_proj_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.qk_norm = c.qk_norm
        self.k_cache: torch.Tensor | None = None  # set by the engine: [num_blocks, block_size, KVH, D]
        self.v_cache: torch.Tensor | None = None

    def forward(self, x, cos, sin, meta: AttentionMetadata | None):
        lead = x.shape[:-1]
        q = self.q_proj(x).view(*lead, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if meta is None:
            o = dense_causal_attention(q, k, v)
        else:
            o = paged_attention(q, k, v, self.k_cache, self.v_cache, meta)
        return self.o_proj(o.reshape(*lead, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        if c.hidden_act != "silu":
            raise ValueError(f"hidden_act: {c.hidden_act!r} is not supported; allowed: 'silu'")

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, meta):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class CausalLM(nn.Module):
    """`forward(input_ids, positions, meta)` returns hidden states; `compute_logits` projects them."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        self.model = LlamaBody(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.tie_weights()
        # computed once per device; a plain attribute, not a buffer, so checkpoints load as saved
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def tie_weights(self) -> None:
        # called again after materialising from the meta device, which unties shared tensors
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.model.layers]

    def forward(self, input_ids, positions=None, meta: AttentionMetadata | None = None):
        if positions is None:  # dense mode: [B, T] from position 0
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        x = self.model.embed_tokens(input_ids)
        inv_freq = self._inv_freq.get(x.device)
        if inv_freq is None:
            inv_freq = self._inv_freq[x.device] = rope_inv_freq(self.config, x.device)
        cos, sin = rope_cos_sin(positions, inv_freq, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, meta)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def build_model(c: ModelConfig) -> nn.Module:
    if c.arch == "gpt2":
        from lab.engine.gpt2 import GPT2LM

        return GPT2LM(c)
    return CausalLM(c)
