"""The two batching policies. Each step the scheduler decides which sequences compute how many tokens.

continuous: running sequences first (one decode token each, or the next prefill chunk), then
  waiting requests are admitted under `max_num_batched_tokens` and `max_num_seqs`. When KV blocks
  run out, the newest running sequence is preempted (recompute) and goes back to the queue's front.
static: the baseline. Wait until `max_num_seqs` requests are queued (or the oldest waited
  `static_batch_timeout_s`), run that batch until every member is done, admit nothing else; slots
  of finished members sit idle until the batch ends.

The simulator drives this same class in virtual time, so its policy is the engine's by construction.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from lab.engine.block_manager import BlockManager
from lab.engine.config import EngineConfig
from lab.engine.sequence import Sequence, SequenceStatus


def admission_error(prompt_len: int, max_tokens: int, config: EngineConfig, max_model_len: int,
                    block_manager: BlockManager, length_field: str = "max_tokens") -> str | None:
    """Why a request could never finish under these limits (naming the field), or None.

    The engine raises it; the simulator records it as the request's failure, naming the workload's
    `length_field` (output_len). KV is stored for every token but the last sampled one.
    """
    if prompt_len >= max_model_len:
        return (f"prompt: {prompt_len} tokens leaves no room to generate within the model's context "
                f"(max_model_len={max_model_len}); allowed: at most {max_model_len - 1} tokens")
    stored = min(prompt_len + max_tokens, max_model_len) - 1
    budget = config.max_num_batched_tokens
    if not config.enable_chunked_prefill and prompt_len > budget:
        return (f"prompt: {prompt_len} tokens exceed max_num_batched_tokens={budget} with chunked prefill "
                "off; shorten it, raise the budget or enable_chunked_prefill")
    cache = f"num_blocks={block_manager.num_blocks} x block_size={config.block_size}"
    if block_manager.blocks_for(prompt_len) > block_manager.num_blocks:  # a shorter output cannot help
        return (f"prompt: {prompt_len} tokens cannot fit in the KV cache ({cache}); shorten it or give "
                "the cache more blocks")
    if block_manager.blocks_for(stored) > block_manager.num_blocks:
        return (f"{length_field}: prompt + {length_field} = {stored + 1} tokens cannot fit in the KV cache "
                f"({cache}, the last token needs no slot); lower {length_field} or give the cache more blocks")
    return None


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    is_decode: list[bool] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def num_decode_seqs(self) -> int:
        return sum(self.is_decode)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(n for n, d in zip(self.num_new_tokens, self.is_decode, strict=True) if not d)

    @property
    def context_tokens(self) -> int:
        """Attended context after this step, summed over the batch (before num_computed advances)."""
        return sum(s.num_computed_tokens + n for s, n in zip(self.seqs, self.num_new_tokens, strict=True))


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config = config
        self.bm = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.static_batch: set[str] = set()  # request ids of the current static batch

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step --------------------------------------------------------------------------
    def schedule(self, now: float, flush: bool = False) -> ScheduledBatch:
        """Pick this step's work. `flush`: no more requests will arrive (static stops waiting)."""
        if self.config.policy == "static" and not self.static_batch and not self._form_static_batch(now, flush):
            return ScheduledBatch()
        batch = ScheduledBatch()
        budget = self._schedule_running(batch, self.config.max_num_batched_tokens)
        self._admit_waiting(batch, budget, now)
        return batch

    def static_timeout_at(self) -> float:
        """When a partial static batch may start: the first float time at which its first request has
        waited static_batch_timeout_s (the check below), or inf when no batch is waiting to form. The
        engine's idle loop and the simulator both wake at exactly this time."""
        cfg = self.config
        if cfg.policy != "static" or self.static_batch or not self.waiting:
            return math.inf
        head = self.waiting[0].arrival_s
        t = head + cfg.static_batch_timeout_s
        while t - head < cfg.static_batch_timeout_s:  # rounding must not leave the timeout unmet
            t = math.nextafter(t, math.inf)
        return t

    def _form_static_batch(self, now: float, flush: bool) -> bool:
        cfg = self.config
        if not self.waiting:
            return False
        full = len(self.waiting) >= cfg.max_num_seqs
        timed_out = now - self.waiting[0].arrival_s >= cfg.static_batch_timeout_s
        if not (full or timed_out or flush):
            return False
        self.static_batch = {s.request_id for s in list(self.waiting)[: cfg.max_num_seqs]}
        return True

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        queue = deque(self.running)  # popleft is O(1); list.pop(0) made a step O(running^2)
        kept: list[Sequence] = []
        while queue:
            seq = queue.popleft()
            n = min(seq.num_uncomputed_tokens, budget)
            if n == 0:  # budget spent: stays running, computes next step
                kept.append(seq)
                continue
            # make room for this sequence's new tokens, preempting the newest running ones
            while not self.bm.can_grow(seq, seq.num_computed_tokens + n):
                victim = queue.pop() if queue else seq
                self._preempt(victim, batch)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self.bm.grow(seq, seq.num_computed_tokens + n)
            self._add_to_batch(batch, seq, n)
            kept.append(seq)
            budget -= n
        self.running = kept
        return budget

    def _admit_waiting(self, batch: ScheduledBatch, budget: int, now: float) -> None:
        cfg = self.config
        while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting[0]
            if cfg.policy == "static" and seq.request_id not in self.static_batch:
                break
            hits = self.bm.lookup_prefix(seq)
            to_compute = seq.num_tokens - len(hits) * self.bm.block_size
            whole = not cfg.enable_chunked_prefill
            # a request preempted by recompute comes back as prompt + output, which can outgrow the
            # budget; with chunking off it would then wait forever, so it runs whole in a step of its own
            if whole and to_compute > budget and (batch.seqs or to_compute <= cfg.max_num_batched_tokens):
                break
            if not self.bm.can_admit(seq, hits):
                break  # first come, first served: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.bm.admit(seq, hits)
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_s is None:
                seq.first_scheduled_s = now
            self.running.append(seq)
            n = to_compute if whole else min(to_compute, budget)
            self._add_to_batch(batch, seq, n)
            budget -= n

    def _add_to_batch(self, batch: ScheduledBatch, seq: Sequence, n: int) -> None:
        batch.seqs.append(seq)
        batch.num_new_tokens.append(n)
        batch.is_decode.append(n == 1 and bool(seq.output_token_ids) and seq.num_uncomputed_tokens == 1)

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Recompute preemption: drop the KV, requeue at the front; full blocks may still hit the cache."""
        self.bm.release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    # -- after the forward pass ------------------------------------------------------------
    def on_computed(self, batch: ScheduledBatch) -> list[Sequence]:
        """Advance progress; return the sequences that reached their end and get a sampled token."""
        sampled = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += n
            self.bm.register_full_blocks(seq)
            if seq.num_computed_tokens == seq.num_tokens:
                sampled.append(seq)
        return sampled

    def finish(self, seq: Sequence, reason: str, now: float) -> None:
        """Finish (or abort) a sequence wherever it is and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.bm.release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.finish_s = now
        self.static_batch.discard(seq.request_id)
