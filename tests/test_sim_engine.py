"""The simulator and the engine, given the same workload and config, schedule the same batches.

Requests arrive at t=0, or in groups on a virtual clock (a fixed time per step), so wall-clock
jitter cannot change what the engine schedules; compositions (request id, tokens) are compared
step by step.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from lab.engine import LLM
from lab.engine.config import EngineConfig
from lab.sim import ConstantStepModel, simulate
from lab.workload import RequestSpec, Workload, synthetic

STEP_S = 0.01
STEP = ConstantStepModel(STEP_S)


def _both(folder, workload, clock_on=None, **kw):
    """The engine's and the simulator's Result; `clock_on=monkeypatch` runs the engine on a VirtualClock."""
    llm = LLM(model=folder, device="cpu", dtype="float32", **kw)
    if clock_on is not None:
        VirtualClock().install(clock_on, llm)
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


GAP_S = 1.2


class VirtualClock:
    """The engine's clock in a test: it moves only by STEP_S per model step and by the idle waits
    `run_workload` sleeps, so arrivals land between the same steps on any machine, however slow."""

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def install(self, monkeypatch, llm) -> None:
        execute = llm.engine.runner.execute

        def timed_execute(batch):
            out = execute(batch)
            self.t += STEP_S
            return out

        monkeypatch.setattr(llm.engine, "now", self.now)
        monkeypatch.setattr(llm.engine.runner, "execute", timed_execute)
        # run_workload sleeps while idle: on the virtual clock that moves time instead of waiting
        monkeypatch.setattr("lab.engine.llm.time", SimpleNamespace(sleep=self.sleep))


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_same_batches_with_staggered_arrivals(tiny_llama, policy, monkeypatch):
    """Three groups of 4 requests, GAP_S apart, replayed on a virtual clock (STEP_S a step, as the
    simulator's step model), so the result does not depend on the machine's speed. Within a group,
    2 slots for 4 requests make the scheduler queue, chunk and (static) batch as the simulator must;
    each group finishes before the next arrives, and the engine idles until it does."""
    rng = np.random.default_rng(5)
    reqs = [
        RequestSpec(f"g{g}-{i}", GAP_S * g, prompt_len=int(rng.integers(3, 30)), output_len=int(rng.integers(2, 7)))
        for g in range(3)
        for i in range(4)
    ]
    kw = dict(policy=policy, block_size=4, num_blocks=64, max_num_seqs=2, max_num_batched_tokens=16)
    engine, sim = _both(tiny_llama, Workload(reqs), clock_on=monkeypatch, **kw)
    finish = {r.request_id: r.finish_s for r in engine.requests}
    for g in (1, 2):
        assert max(finish[f"g{g - 1}-{i}"] for i in range(4)) < GAP_S * g, "groups must not overlap"
    for r, spec in zip(engine.requests, reqs, strict=True):
        assert r.first_scheduled_s >= spec.arrival_s
    assert [s.batch for s in sim.steps] == [s.batch for s in engine.steps]
    # some prompts are longer than the 16-token step budget: they are prefilled in chunks
    assert any(r.prompt_len > 16 for r in reqs) and max(s.num_tokens for s in engine.steps) <= 16
    for field in ("prefill_tokens", "decode_seqs", "num_running", "num_waiting", "kv_blocks_used", "num_finished"):
        assert [getattr(s, field) for s in sim.steps] == [getattr(s, field) for s in engine.steps], field
    # on the same clock, the steps also run at the same times: each group starts on its arrival
    assert [s.start_s for s in engine.steps] == pytest.approx([s.start_s for s in sim.steps], abs=1e-9)
    sim_start = {r.request_id: r.first_scheduled_s for r in sim.requests}
    assert all(sim_start[f"g{g}-0"] == pytest.approx(GAP_S * g) for g in range(3)), "each group starts on arrival"


def test_static_batch_starts_on_its_timeout_as_in_the_simulator(tiny_llama, monkeypatch):
    """Groups of 3 requests for 4 static slots: the batch never fills, so each one starts when its
    oldest request has waited `static_batch_timeout_s` (the last group: when no more can arrive).
    Both wake at the timeout exactly (Scheduler.static_timeout_at): the engine polled every 5 ms, and a
    request arriving in between joined its batch but not the simulator's."""
    reqs = [RequestSpec(f"g{g}-{i}", 2.0 * g + 0.05 * i, prompt_len=5 + 3 * i, output_len=3 + i)
            for g in range(3) for i in range(3)]
    kw = dict(policy="static", block_size=4, num_blocks=64, max_num_seqs=4, max_num_batched_tokens=32,
              static_batch_timeout_s=0.5)
    engine, sim = _both(tiny_llama, Workload(reqs), clock_on=monkeypatch, **kw)
    assert [s.batch for s in sim.steps] == [s.batch for s in engine.steps]
    for result in (engine, sim):
        start = {r.request_id: r.first_scheduled_s for r in result.requests}
        for g in range(2):  # a group's whole batch starts together, on the timeout of its first arrival
            assert [start[f"g{g}-{i}"] for i in range(3)] == pytest.approx([2.0 * g + 0.5] * 3, abs=1e-9)
        # the last group is flushed as soon as its last request arrives: nobody else can come
        assert [start[f"g2-{i}"] for i in range(3)] == pytest.approx([4.1] * 3, abs=1e-9)
    assert [s.start_s for s in engine.steps] == pytest.approx([s.start_s for s in sim.steps], abs=1e-9)


def test_a_request_arriving_just_after_a_static_timeout_waits_for_the_next_batch(tiny_llama, monkeypatch):
    # A's partial batch starts at 0.053 s; B, at 0.0545 s, arrived before the engine's next 5 ms poll and
    # joined it in the engine, not in the simulator (found by fuzzing the two against each other)
    reqs = [RequestSpec("A", 0.0, prompt_token_ids=[1, 2, 3], output_len=2),
            RequestSpec("B", 0.0545, prompt_token_ids=[4, 5, 6], output_len=2)]
    kw = dict(policy="static", block_size=4, num_blocks=16, max_num_seqs=2, max_num_batched_tokens=16,
              static_batch_timeout_s=0.053)
    engine, sim = _both(tiny_llama, Workload(reqs), clock_on=monkeypatch, **kw)
    assert [s.batch for s in engine.steps] == [s.batch for s in sim.steps]
    assert engine.steps[0].batch == [("A", 3)] and engine.steps[0].start_s == pytest.approx(0.053, abs=1e-9)


def test_a_recompute_longer_than_the_budget_runs_whole_with_chunking_off(tiny_llama):
    # preempted, a request comes back as prompt + output (up to 12 + 24 tokens) against a budget of 16:
    # with chunked prefill off it used to wait forever; now it runs alone in a step, in both
    reqs = [RequestSpec(f"r{i}", 0.0, prompt_token_ids=list(range(1 + i, 13 + i)), output_len=24) for i in range(2)]
    kw = dict(block_size=4, num_blocks=10, max_num_seqs=2, max_num_batched_tokens=16,
              enable_chunked_prefill=False, enable_prefix_caching=False)
    engine, sim = _both(tiny_llama, Workload(reqs), **kw)
    assert sum(s.num_preempted for s in engine.steps) >= 1
    assert all(r.ok and r.output_tokens == 24 for r in engine.requests)
    assert max(s.prefill_tokens for s in engine.steps) > 16  # the recompute, whole, over budget
    assert [s.batch for s in sim.steps] == [s.batch for s in engine.steps]
