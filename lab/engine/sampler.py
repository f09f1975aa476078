"""Token sampling: repetition penalty, then greedy or temperature, min-p, top-k, top-p, with per-request seeds.

A seeded request draws from its own torch.Generator, so its tokens do not depend on which other
requests share its batch; unseeded requests share the engine's generator. Generators live on the
model's device (a seed gives the same tokens run after run on one device, not across devices).
"""

from __future__ import annotations

import math

import torch

from lab.engine.sequence import SamplingParams, Sequence


def seeded_generator(device, seed: int) -> torch.Generator:
    """A generator for a 64-bit seed. torch's CPU generator keeps only a seed's low 32 bits (1 and
    1 + 2**32, -1 and 2**32 - 1 drew the same tokens), so a seed outside [0, 2**32) is mixed down to 32
    bits first (splitmix64's finaliser); seeds inside it are used as they are."""
    if not 0 <= seed < 2**32:
        mask = 2**64 - 1
        z = (seed + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        seed = (z ^ (z >> 31)) & 0xFFFFFFFF
    return torch.Generator(device).manual_seed(seed)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float, min_p: float = 0.0) -> torch.Tensor:
    """Mask (to -inf) the tokens below min_p x the top token's probability, then those outside the top-k
    and outside the top-p nucleus, for one row (vLLM's order: min_p before top-k and top-p)."""
    if min_p > 0:
        # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p): no softmax needed; the top token stays
        logits = logits.masked_fill(logits < logits.max() + math.log(min_p), float("-inf"))
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token once the mass before it already reaches top_p; the top token always stays
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        # explicitly: a top_p below float32's smallest number (1e-46) becomes 0 in the comparison,
        # which dropped the top token too, left no token at all, and failed the whole batch's step
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def seen_token_ids(seq: Sequence, device) -> torch.Tensor:
    """The distinct ids of a sequence's prompt and output, as a tensor on `device`, kept on the sequence
    and extended by the tokens added since the last call: rebuilt from the whole history each step, a
    penalty cost 36 ms a step for 64 sequences of 2,048 tokens (a CPU, a 152k vocabulary)."""
    if seq.seen_set is None:
        seq.seen_set, seq.seen_upto = set(), 0
        seq.seen_ids = torch.empty(0, dtype=torch.long, device=device)
    n_prompt = len(seq.prompt_token_ids)
    if seq.seen_upto < n_prompt:
        new = seq.prompt_token_ids[seq.seen_upto:] + seq.output_token_ids
    else:
        new = seq.output_token_ids[seq.seen_upto - n_prompt:]
    fresh = [t for t in dict.fromkeys(new) if t not in seq.seen_set]
    if fresh:
        seq.seen_set.update(fresh)
        seq.seen_ids = torch.cat([seq.seen_ids, torch.tensor(fresh, dtype=torch.long, device=device)])
    seq.seen_upto = seq.num_tokens
    return seq.seen_ids


def apply_repetition_penalty(logits: torch.Tensor, params: list[SamplingParams],
                             seen: list[torch.Tensor | None]) -> torch.Tensor:
    """Every token already in a row's prompt or output (`seen`, distinct ids) has its logit divided by
    the penalty when positive and multiplied by it when negative (HF's RepetitionPenaltyLogitsProcessor,
    vLLM's rule), before temperature and the filters. In place, on the rows with a penalty only."""
    for i, p in enumerate(params):
        if p.repetition_penalty != 1.0:
            scores = logits[i, seen[i]]
            logits[i, seen[i]] = torch.where(scores > 0, scores / p.repetition_penalty, scores * p.repetition_penalty)
    return logits


class SamplingError(ValueError):
    """One row's logits could not be sampled from; that request fails, the others go on."""


def sample(
    logits: torch.Tensor,  # [N, V] float32
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    default_generator: torch.Generator,
    seen: list[torch.Tensor | None] | None = None,  # each penalised row's prompt and output ids (seen_token_ids)
) -> list[int | SamplingError]:
    """One token per row, or a SamplingError for a row whose logits hold NaN or inf. A repetition penalty
    changes its rows of `logits` in place."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, params, seen)
    # greedy rows are done; sampled rows are overwritten below. torch's max picks a NaN (or +inf) over
    # any number, so one look at each row's maximum tells whether that row's logits are usable
    best, out = logits.max(-1)
    finite, out = torch.isfinite(best).tolist(), out.tolist()
    for i, p in enumerate(params):
        if p.greedy:
            if not finite[i]:  # argmax would have "chosen" the NaN's index and gone on with garbage
                out[i] = SamplingError("sampling: the model's logits hold NaN or inf (greedy)")
            continue
        row = filter_top_k_top_p(logits[i] / p.temperature, p.top_k, p.top_p, p.min_p)
        probs = row.softmax(-1)
        if not bool(torch.isfinite(probs).all()):
            # NaN or inf logits (a float16 overflow, say): multinomial raised and failed the whole batch's
            # step (and on a GPU may trip a device-side assert); checked first, it fails this row alone
            out[i] = SamplingError(f"sampling: the model's logits hold NaN or inf (temperature {p.temperature})")
            continue
        gen = generators[i] or default_generator
        out[i] = int(torch.multinomial(probs, 1, generator=gen))
    return out
