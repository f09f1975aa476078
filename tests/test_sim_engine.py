"""The simulator and the engine, given the same workload and config, schedule the same batches.

Every request arrives at t=0, so wall-clock jitter cannot change what the engine schedules;
compositions (request id, tokens) are compared step by step, not times.
"""

import numpy as np
import pytest

from lab.engine import LLM
from lab.engine.config import EngineConfig
from lab.sim import ConstantStepModel, simulate
from lab.workload import RequestSpec, Workload, synthetic

STEP = ConstantStepModel(0.01)


def _both(folder, workload, **kw):
    llm = LLM(model=folder, device="cpu", dtype="float32", **kw)
    engine = llm.run_workload(workload, progress=False)
    sim = simulate(workload, EngineConfig(**kw), STEP)
    return engine, sim


def _mixed_workload(seed):
    rng = np.random.default_rng(seed)
    return synthetic(12, prompt_lens=rng.integers(3, 40, 12), output_lens=rng.integers(2, 20, 12), seed=seed)


@pytest.mark.parametrize("policy", ["continuous", "static"])
@pytest.mark.parametrize("prefix", [True, False])
def test_same_batches_with_preemption(tiny_llama, policy, prefix):
    # 30 blocks of 4 tokens for 4 sequences of up to 58 tokens: the engine must preempt
    kw = dict(
        policy=policy,
        block_size=4,
        num_blocks=30,
        max_num_seqs=4,
        max_num_batched_tokens=32,
        enable_prefix_caching=prefix,
    )
    engine, sim = _both(tiny_llama, _mixed_workload(1), **kw)
    assert [s.batch for s in sim.steps] == [s.batch for s in engine.steps]
    assert sum(s.num_preempted for s in engine.steps) > 0
    for field in (
        "step",
        "prefill_tokens",
        "decode_seqs",
        "num_running",
        "num_waiting",
        "kv_blocks_used",
        "num_preempted",
        "num_finished",
        "context_tokens",
        "idle_slots",
    ):
        assert [getattr(s, field) for s in sim.steps] == [getattr(s, field) for s in engine.steps], field
    assert [r.output_tokens for r in sim.requests] == [r.output_tokens for r in engine.requests]


def test_same_batches_without_chunked_prefill(tiny_llama):
    kw = dict(
        block_size=4, num_blocks=64, max_num_seqs=3, max_num_batched_tokens=48, enable_chunked_prefill=False
    )
    engine, sim = _both(tiny_llama, _mixed_workload(2), **kw)
    assert [s.batch for s in sim.steps] == [s.batch for s in engine.steps]


def test_same_prefix_cache_hits_on_shared_prompts(tiny_llama):
    shared = list(range(1, 30))
    reqs = [RequestSpec(f"s{i}", 0.0, prompt_token_ids=shared + [40 + i], output_len=4) for i in range(5)]
    reqs += [RequestSpec(f"same{i}", 0.0, prompt_token_ids=shared, output_len=3) for i in range(3)]
    kw = dict(
        block_size=4, num_blocks=64, max_num_seqs=2, max_num_batched_tokens=40, enable_prefix_caching=True
    )
    engine, sim = _both(tiny_llama, Workload(reqs), **kw)
    batches = [s.batch for s in engine.steps]
    assert [s.batch for s in sim.steps] == batches
    first = {}
    for b in batches:
        for rid, n in b:
            first.setdefault(rid, n)
    assert first["s2"] == 2 and first["same0"] == 1  # 28 tokens (7 full blocks) came from the cache
