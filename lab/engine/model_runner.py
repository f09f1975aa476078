"""ModelRunner: owns the model and its KV cache; turns a ScheduledBatch into one forward pass.

It packs every scheduled token into one flat batch, builds the paged-attention metadata, runs the
model, and samples one token for each sequence whose chunk reached its last token.
"""

from __future__ import annotations

import logging

import torch

from lab.engine.attention import AttentionMetadata, DecodeGroup, PrefillSpan, build_decode_mask
from lab.engine.cuda_graph import DecodeGraphs, GraphCaptureError
from lab.engine.model import ModelConfig
from lab.engine.sampler import sample, seeded_generator, seen_token_ids
from lab.engine.scheduler import ScheduledBatch
from lab.engine.sequence import Sequence

# On the CPU, decodes attend in groups of at most this many sequences, similar contexts together.
# One SDPA call over 64 decodes' gathered (strided) K/V falls out of the CPU caches: 2.1 ms for 64
# contexts of 128 tokens against 0.16 ms for each group of 16 (bundled model's heads, one thread).
# A GPU wants one call for all of them.
CPU_DECODE_GROUP = 16

log = logging.getLogger(__name__)


def kv_bytes_per_block(mc: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """K and V, every layer, one block of tokens."""
    return 2 * mc.num_layers * block_size * mc.num_kv_heads * mc.head_dim * torch.finfo(dtype).bits // 8


class ModelRunner:
    def __init__(self, model, model_config: ModelConfig, num_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, seed: int = 0, graph_batch: int = 0,
                 graph_width: int = 0):
        """graph_batch > 0: decode steps of up to that many sequences, whose block tables are at most
        graph_width blocks long, replay CUDA graphs on a GPU (lab.engine.cuda_graph)."""
        self.model = model
        self.mc = model_config
        self.block_size = block_size
        self.device = device
        self.num_blocks = num_blocks
        # with graphs, one block more than the block manager hands out: the scratch block of padding rows
        shape = (num_blocks + (graph_batch > 0), block_size, model_config.num_kv_heads, model_config.head_dim)
        for layer in model.attention_layers:
            layer.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.generator = seeded_generator(device, seed)
        self.decode_graphs: DecodeGraphs | None = None
        if graph_batch > 0 and device.type == "cuda":
            self.use_decode_graphs(graph_batch, graph_width)

    def use_decode_graphs(self, max_batch: int, max_width: int, capture: bool = True) -> None:
        """Pad decode steps to recorded shapes; capture=False pads without recording (tests, CPUs)."""
        if self.model.attention_layers[0].k_cache.shape[0] == self.num_blocks:
            raise ValueError("cuda_graphs: the KV cache has no scratch block for padding rows; "
                             "build the engine with cuda_graphs=True")
        self.decode_graphs = DecodeGraphs(self.model, self.block_size, self.num_blocks * self.block_size,
                                          max_batch, max_width, self.device, capture)

    def _decode_groups(self, decodes: list[tuple[Sequence, int]]) -> list[DecodeGroup]:
        """(sequence, row) pairs -> attention groups, shortest contexts first (less padding)."""
        dev, bs = self.device, self.block_size
        decodes = sorted(decodes, key=lambda d: d[0].num_computed_tokens)
        size = CPU_DECODE_GROUP if dev.type == "cpu" else max(len(decodes), 1)
        groups = []
        for first in range(0, len(decodes), size):
            seqs, rows = zip(*decodes[first:first + size], strict=True)
            width = max(len(s.block_table) for s in seqs)
            tables = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
            lens = torch.tensor([s.num_computed_tokens + 1 for s in seqs], dtype=torch.long, device=dev)
            groups.append(DecodeGroup(rows=torch.tensor(rows, dtype=torch.long, device=dev),
                                      block_tables=torch.tensor(tables, dtype=torch.long, device=dev),
                                      mask=build_decode_mask(lens, width * bs)))
        return groups

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[tuple[Sequence, int]]:
        """Run one step; return (sequence, sampled token) for sequences that finished their chunk."""
        ids, positions, slots = [], [], []
        prefills, decodes, sample_rows, sample_seqs = [], [], [], []
        bs = self.block_size
        for seq, n, is_decode in zip(batch.seqs, batch.num_new_tokens, batch.is_decode, strict=True):
            start, first = len(ids), seq.num_computed_tokens
            for pos in range(first, first + n):
                ids.append(seq.token_at(pos))
                positions.append(pos)
                slots.append(seq.block_table[pos // bs] * bs + pos % bs)
            if is_decode or (n == 1 and first > 0):  # one token on top of a cached context
                decodes.append((seq, start))
            else:
                table = torch.tensor(seq.block_table, dtype=torch.long, device=self.device)
                prefills.append(PrefillSpan(start, n, first, table))
            if first + n == seq.num_tokens:
                sample_rows.append(start + n - 1)
                sample_seqs.append(seq)

        dev = self.device
        hidden = self._replay_decodes(ids, positions, slots, decodes) if not prefills else None
        if hidden is None:
            meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
                                     prefills=prefills, decodes=self._decode_groups(decodes))
            input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
            pos = torch.tensor(positions, dtype=torch.long, device=dev)
            hidden = self.model(input_ids, pos, meta)
        if not sample_seqs:
            return []
        logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=dev)]).float()
        params = [s.params for s in sample_seqs]
        # the ids a repetition penalty looks at, only for the rows that have one
        seen = [seen_token_ids(s, dev) if p.repetition_penalty != 1.0 else None
                for s, p in zip(sample_seqs, params, strict=True)]
        tokens = sample(logits, params, [s.generator for s in sample_seqs], self.generator, seen)
        return list(zip(sample_seqs, tokens, strict=True))

    def _replay_decodes(self, ids, positions, slots, decodes) -> torch.Tensor | None:
        """A decode-only step through a CUDA graph; None where none applies (the step runs eagerly)."""
        graphs = self.decode_graphs
        if graphs is None or not decodes:
            return None
        tables = [seq.block_table for seq, _ in decodes]  # one token per sequence: row i is decodes[i]
        if not graphs.fits(len(ids), max(len(t) for t in tables)):
            return None
        try:
            return graphs.run(ids, positions, slots, tables, [seq.num_computed_tokens + 1 for seq, _ in decodes])
        except GraphCaptureError as e:  # an operation that cannot be recorded: stay correct, lose the speed-up
            log.warning("%s; decode steps run eagerly from now on", e)
            self.decode_graphs = None
            return None
