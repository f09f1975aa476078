"""CUDA graphs for decode steps: one replay launches a whole step's kernels.

In eager PyTorch a decode step of a small model is bound by dispatch, not by the GPU: each of its
~1,700 operations (Qwen2.5-0.5B's shape) is issued from Python after the last, ~21 ms a step on an
H100 whose roofline says 1.4 ms. vLLM and nano-vllm record the step once as a CUDA graph and replay
it. Steps made only of decodes are padded to a recorded shape — batch size and block-table width,
each rounded up to a power of two — and replayed; prefill steps, and every step on a CPU, run eagerly.

Padding rows write their K/V into a scratch block that no sequence owns and attend to one key; their
outputs are dropped. A graph is recorded the first time its shape is needed, into one shared memory
pool; if recording fails (an operation that cannot be captured), the runner goes back to eager steps.

Off unless asked for (`cuda_graphs=True`): on an H100 it made decode steps 5-7x faster, but only
decode-only steps replay, and continuous batching mixes prefill chunks into many more of its steps
(43 of 283 against static's 7 of 470 in bench/engine.py's workload), so it sped static batching up
more than continuous and reversed the lesson the notebooks teach. vLLM also graphs mixed steps
(piecewise: everything but attention), which this engine leaves out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lab.engine.attention import AttentionMetadata, DecodeGroup, build_decode_mask


class GraphCaptureError(RuntimeError):
    """Recording a decode step failed; the runner falls back to eager steps."""


def bucket(n: int, cap: int) -> int:
    """The smallest power of two >= n, but no more than cap (n <= cap)."""
    return min(1 << (n - 1).bit_length(), cap)


@dataclass
class _Graph:
    input_ids: torch.Tensor  # [B]
    positions: torch.Tensor  # [B]
    slots: torch.Tensor  # [B] cache slot of each new token
    tables: torch.Tensor  # [B, W] block tables, padded with block 0 (masked out)
    context_lens: torch.Tensor  # [B]
    hidden: torch.Tensor | None = None  # [B, hidden] the forward's output, read after each replay
    graph: torch.cuda.CUDAGraph | None = None  # None: run the forward eagerly on these buffers


class DecodeGraphs:
    """Padded, replayable decode steps for one model and its KV cache.

    `capture=False` runs the same padded forward without recording a graph: the padding can then be
    tested on a CPU, where graphs do not exist.
    """

    def __init__(self, model, block_size: int, scratch_slot: int, max_batch: int, max_width: int,
                 device: torch.device, capture: bool = True):
        self.model = model
        self.block_size = block_size
        self.scratch_slot = scratch_slot
        self.max_batch = max_batch
        self.max_width = max_width
        self.device = device
        self.capture = capture
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.pool = None  # one memory pool for every graph: only one replays at a time

    def fits(self, batch: int, width: int) -> bool:
        return batch <= self.max_batch and width <= self.max_width

    def run(self, input_ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]],
            context_lens: list[int]) -> torch.Tensor:
        """One decode token per sequence, in batch order -> their hidden states [n, hidden]."""
        # record and replay on the engine's own GPU: torch.cuda.graph records on the current device's
        # stream, and with another device current it records nothing (pytorch/pytorch#87894)
        with torch.cuda.device(self.device) if self.capture else contextlib.nullcontext():
            return self._run(input_ids, positions, slots, tables, context_lens)

    def _run(self, input_ids, positions, slots, tables, context_lens) -> torch.Tensor:
        n, width = len(input_ids), max(len(t) for t in tables)
        batch, width = bucket(n, self.max_batch), bucket(width, self.max_width)
        g = self.graphs.get((batch, width)) or self._record(batch, width)
        pad = batch - n
        g.input_ids.copy_(torch.tensor(input_ids + [0] * pad))
        g.positions.copy_(torch.tensor(positions + [0] * pad))
        g.slots.copy_(torch.tensor(slots + [self.scratch_slot] * pad))
        g.context_lens.copy_(torch.tensor(context_lens + [1] * pad))
        g.tables.copy_(torch.tensor([t + [0] * (width - len(t)) for t in tables] + [[0] * width] * pad))
        if g.graph is None:
            g.hidden = self._forward(g)
        else:
            g.graph.replay()
        return g.hidden[:n]

    def _forward(self, g: _Graph) -> torch.Tensor:
        rows = torch.arange(g.input_ids.shape[0], device=self.device)
        mask = build_decode_mask(g.context_lens, g.tables.shape[1] * self.block_size)
        meta = AttentionMetadata(slot_mapping=g.slots, decodes=[DecodeGroup(rows, g.tables, mask)])
        return self.model(g.input_ids, g.positions, meta)

    def _record(self, batch: int, width: int) -> _Graph:
        def buffer(*shape, fill):
            return torch.full(shape, fill, dtype=torch.long, device=self.device)

        # until filled, every row is padding: recording writes only into the scratch slot
        g = _Graph(input_ids=buffer(batch, fill=0), positions=buffer(batch, fill=0),
                   slots=buffer(batch, fill=self.scratch_slot), tables=buffer(batch, width, fill=0),
                   context_lens=buffer(batch, fill=1))
        if self.capture:
            # warm up on a side stream first (cuBLAS and cuDNN choose their kernels outside the capture),
            # as PyTorch's CUDA graph notes advise
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._forward(g)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self.pool):
                    g.hidden = self._forward(g)
            except RuntimeError as e:  # only recording is caught: errors of eager work propagate
                raise GraphCaptureError(f"recording a CUDA graph of a {batch}-sequence decode step failed: {e}") from e
            g.graph, self.pool = graph, graph.pool()
        self.graphs[(batch, width)] = g
        return g
