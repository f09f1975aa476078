"""GPU memory, checked on the CPU with torch.cuda's memory queries replaced: an engine sizes its KV
cache from what is free, the allocator's idle cache included, and the demo drops one engine before it
builds the next."""

from __future__ import annotations

import weakref
from dataclasses import replace
from types import SimpleNamespace

import torch

from lab.engine import LLM
from lab.engine.engine import GPU_KV_FRACTION, Engine
from lab.engine.model_runner import kv_bytes_per_block
from lab.metrics import Result

GIB = 2**30


def test_a_gpu_budget_counts_the_allocators_idle_cache_as_free(tiny_llama, monkeypatch):
    engine = LLM(tiny_llama, device="cpu").engine
    # 1 GiB free as the driver sees it; torch holds 3 GiB of which 1 GiB is in use (the weights, say)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * GIB)
    config = replace(engine.config, max_num_seqs=10**7, max_num_batched_tokens=10**7)  # no cap by length
    on_gpu = SimpleNamespace(config=config, model_config=engine.model_config, device=torch.device("cuda"))
    per_block = kv_bytes_per_block(engine.model_config, config.block_size, torch.float32)
    # before: the 2 GiB an earlier engine left in torch's cache were not counted, and each new engine
    # (a widget's button pressed again) got a smaller KV cache than the last
    assert Engine._blocks_from_budget(on_gpu, torch.float32) == int(3 * GIB * GPU_KV_FRACTION // per_block)


def test_the_demo_holds_one_engine_at_a_time(monkeypatch):
    from lab import demo

    class CountingLLM:
        alive: weakref.WeakSet = weakref.WeakSet()
        most = 0

        def __init__(self, *args, **kwargs):
            CountingLLM.alive.add(self)
            CountingLLM.most = max(CountingLLM.most, len(CountingLLM.alive))
            self.engine = SimpleNamespace(trace=[])

        def generate(self, *args, **kwargs):
            return []

        def run_workload(self, workload, progress, label):
            return Result([], label=label)

    monkeypatch.setattr("lab.engine.LLM", CountingLLM)
    results = demo.run_demo(n=4, rate=64.0, progress=False)
    assert list(results) == ["static", "continuous"]
    assert CountingLLM.most == 1  # the static engine was gone before the continuous one was built
