"""Attention over the paged KV cache, for steps that mix prefill chunks and decodes.

All tokens of a step are packed into one flat batch. Each layer writes the new K/V into their
cache slots, then attends: each prefill chunk on its own (its cached prefix gathered from its
blocks), decodes in groups (their blocks gathered, padding masked). Without metadata the same
layer does plain causal attention over [batch, time], which is what training and scoring use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillSpan:
    start: int  # offset in the flat token batch
    length: int  # tokens computed this step
    num_cached: int  # tokens of this sequence already in the cache before this step
    block_table: torch.Tensor  # [num_blocks] block ids (long)


@dataclass(slots=True)
class DecodeGroup:
    rows: torch.Tensor  # [D] positions in the flat batch of these decode tokens
    block_tables: torch.Tensor  # [D, max_blocks], padded with block 0
    mask: torch.Tensor  # [D, 1, 1, S] True for the keys each decode attends to


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot (block * block_size + offset) of each new token
    prefills: list[PrefillSpan] = field(default_factory=list)
    decodes: list[DecodeGroup] = field(default_factory=list)  # one attention call per group


def build_decode_mask(context_lens: torch.Tensor, num_slots: int) -> torch.Tensor:
    return (torch.arange(num_slots, device=context_lens.device)[None, :] < context_lens[:, None])[:, None, None, :]


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)

    for span in meta.prefills:
        rows = slice(span.start, span.start + span.length)
        qs = q[rows].transpose(0, 1)[None]  # [1, H, L, D]
        if span.num_cached == 0:  # the whole context is in this chunk: no gather needed
            ks, vs = k[rows].transpose(0, 1)[None], v[rows].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        else:
            total = span.num_cached + span.length
            ks = _gather(k_cache, span.block_table[None], total)
            vs = _gather(v_cache, span.block_table[None], total)
            # query i sits at position num_cached + i and sees keys 0 .. num_cached + i
            q_pos = torch.arange(span.num_cached, total, device=q.device)
            mask = torch.arange(total, device=q.device)[None, :] <= q_pos[:, None]
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
        out[rows] = o[0].transpose(0, 1)

    for group in meta.decodes:
        num_slots = group.block_tables.shape[1] * k_cache.shape[1]
        ks = _gather(k_cache, group.block_tables, num_slots)
        vs = _gather(v_cache, group.block_tables, num_slots)
        qd = q[group.rows][:, :, None, :]  # [D, H, 1, D]
        o = F.scaled_dot_product_attention(qd, ks, vs, attn_mask=group.mask, enable_gqa=True)
        out[group.rows] = o[:, :, 0, :]
    return out


def _gather(cache: torch.Tensor, block_tables: torch.Tensor, num_slots: int) -> torch.Tensor:
    """[B, max_blocks] block ids -> [B, KVH, num_slots, D] keys or values."""
    b = block_tables.shape[0]
    # index_select on the flattened table, not cache[block_tables]: the same copy, but advanced
    # indexing takes a slower general path on the CPU (5x slower for a batch of 16 decodes)
    kv = cache.index_select(0, block_tables.reshape(-1)).view(b, -1, cache.shape[2], cache.shape[3])
    return kv[:, :num_slots].transpose(1, 2)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] causal attention without a cache (training, scoring)."""
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )
    return o.transpose(1, 2)
