"""Paged KV cache bookkeeping: a free list, reference counts and a prefix cache of full blocks.

Blocks hold `block_size` tokens of K/V. A full block is registered under a chained hash of its
tokens and every token before it, so a later request with the same prefix reuses it. A freed
block keeps its hash until it is handed out again, so recently finished prefixes still hit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from lab.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    # Python's hash of a tuple of ints is deterministic across runs (no hash randomisation). A hit is
    # checked against the block's own token ids; a wrong hit would also need two different prefixes
    # to collide in this 64-bit chain, a risk accepted here as in vLLM's hash-based cache.
    return hash((parent, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.num_blocks = num_blocks
        # The free queue is the blocks never handed out (ids len(blocks) .. num_blocks - 1, in order)
        # followed by `free`, the blocks given back, least recently freed first. Blocks are created
        # the first time they are handed out: a simulated H100 has ~28,000 blocks per replica, and
        # creating them all up front cost 6.5 MB and a few ms per replica whatever the workload.
        self.blocks: list[Block] = []
        self.free: OrderedDict[int, None] = OrderedDict()
        self.hash_to_block: dict[int, int] = {}
        self.prefix_hits = 0  # blocks reused from the prefix cache, for the notebooks

    @property
    def num_free(self) -> int:
        return self.num_blocks - len(self.blocks) + len(self.free)

    @property
    def num_used(self) -> int:
        return len(self.blocks) - len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- admission -------------------------------------------------------------------------
    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Blocks of the prefix cache matching the sequence's leading full blocks.

        At least one token is always left to compute, since the step must produce its logits.
        """
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        parent = None
        bs = self.block_size
        ids = seq.token_ids  # one list, sliced per block: token_at per token dominated long prompts
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(ids[i * bs:(i + 1) * bs])
            h = chain_hash(parent, tokens)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
            parent = h
        return hits

    def can_admit(self, seq: Sequence, hits: list[int]) -> bool:
        new_blocks = self.blocks_for(seq.num_tokens) - len(hits)
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)  # cached but on the free list
        return new_blocks + revived <= self.num_free

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Give `seq` its prefix hits plus fresh blocks for the rest of its current tokens."""
        assert not seq.block_table, "sequence already holds blocks"
        for b in hits:
            block = self.blocks[b]
            if block.ref_count == 0:
                del self.free[b]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_hashed_blocks = len(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        if not seq.num_preemptions:  # the prompt's share, as vLLM reports it: not a recompute's own blocks
            seq.num_cached_tokens = seq.num_computed_tokens
        self.prefix_hits += len(hits)
        self._grow(seq, seq.num_tokens)

    # -- running ---------------------------------------------------------------------------
    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_free

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        self._grow(seq, num_tokens)

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take_free_block())

    def _take_free_block(self) -> int:
        if len(self.blocks) < self.num_blocks:  # never-used blocks head the queue
            self.blocks.append(Block(len(self.blocks), ref_count=1))
            return len(self.blocks) - 1
        block_id, _ = self.free.popitem(last=False)  # least recently freed first
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish blocks that became full (all their tokens computed) to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        if seq.num_hashed_blocks >= seq.num_computed_tokens // bs:
            return  # the common case (a decode inside a block): skip building the token list
        ids = seq.token_ids
        while seq.num_hashed_blocks < seq.num_computed_tokens // bs:
            i = seq.num_hashed_blocks
            parent = self.blocks[seq.block_table[i - 1]].hash if i else None
            tokens = tuple(ids[i * bs:(i + 1) * bs])
            block = self.blocks[seq.block_table[i]]
            block.hash, block.token_ids = chain_hash(parent, tokens), tokens
            self.hash_to_block.setdefault(block.hash, block.id)
            seq.num_hashed_blocks += 1

    def release(self, seq: Sequence) -> None:
        # tail blocks first, so they are reused before the (more shareable) head of the prefix
        for b in reversed(seq.block_table):
            block = self.blocks[b]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is None:
                    block.token_ids = ()
                self.free[b] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0
