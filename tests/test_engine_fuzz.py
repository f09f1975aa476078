"""Stateful fuzz of the engine core: random adds, steps and aborts under random configs.

Each seeded case builds an engine with a random policy, block size, tiny cache (preemption), small
token budget (chunked prefill), max_num_seqs and prefix caching, then interleaves requests (shared
prefixes, greedy / seeded / unseeded sampling, stop ids, EOS), steps and aborts (running, waiting,
finished and unknown ids). After every operation the block manager, the queues and the trace must
agree with each other; at the end every block is free and every request finished. A greedy or
seeded request that was not aborted must produce the tokens it produces alone on a roomy engine.

`python -m tests.test_engine_fuzz 500` (from the repository root) runs more cases than the suite does.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lab.engine.block_manager import chain_hash
from lab.engine.config import EngineConfig
from lab.engine.engine import Engine
from lab.engine.loader import load_model
from lab.engine.sequence import SamplingParams, Sequence, SequenceStatus
from tests.conftest import make_hf_model

NUM_CASES = 60  # the suite's share (~10 s); each case is a few dozen steps of a 2-layer model
MAX_PROMPT, MAX_TOKENS, VOCAB = 40, 20, 96
REASONS = ("stop", "length", "abort")


# -- the model and the reference --------------------------------------------------------------

@dataclass
class World:
    """One loaded model for the fuzzed engines and one for the references (each engine owns its cache)."""

    net: torch.nn.Module
    ref_net: torch.nn.Module
    model_config: object
    tokenizer: object
    refs: dict = field(default_factory=dict)
    ref_engine: Engine | None = None

    def engine(self, config: EngineConfig) -> Engine:
        return Engine(self.net, self.model_config, self.tokenizer, config, torch.device("cpu"), torch.float32)

    def reference(self, prompt: list[int], params: SamplingParams) -> list[int]:
        """MAX_TOKENS tokens of this prompt run alone (no stops, EOS ignored) on a roomy engine."""
        key = (tuple(prompt), None if params.greedy else (params.temperature, params.top_p, params.top_k, params.seed))
        if key not in self.refs:
            if self.ref_engine is None:
                cfg = EngineConfig(max_num_seqs=1, block_size=16, num_blocks=64, enable_prefix_caching=False)
                self.ref_engine = Engine(self.ref_net, self.model_config, self.tokenizer, cfg,
                                         torch.device("cpu"), torch.float32)
            alone = SamplingParams(max_tokens=MAX_TOKENS, temperature=params.temperature, top_p=params.top_p,
                                   top_k=params.top_k, seed=params.seed, ignore_eos=True)
            seq = self.ref_engine.add_request(prompt, alone)
            while self.ref_engine.has_unfinished():
                self.ref_engine.step(flush=True)
            assert seq.finish_reason == "length" and self.ref_engine.block_manager.num_used == 0
            self.refs[key] = list(seq.output_token_ids)
        return self.refs[key]


def make_world(folder: Path) -> World:
    cpu = torch.device("cpu")
    net, mc, tok = load_model(folder, cpu, torch.float32)
    # an EOS the model really samples (but rarely first), so EOS and ignore_eos both matter
    world = World(net, load_model(folder, cpu, torch.float32)[0], mc, tok)
    counts = Counter()
    for i in range(6):
        counts.update(world.reference([(7 * i + j) % VOCAB for j in range(3 + i)], SamplingParams(temperature=0)))
    eos = sorted(counts, key=lambda t: (-min(counts[t], 8), t))[len(counts) // 3]
    mc.eos_token_ids = (eos,)
    return world


# -- one case -----------------------------------------------------------------------------------

def random_config(rng: random.Random) -> EngineConfig:
    block_size = rng.choice([1, 2, 3, 4, 4, 8, 16])
    max_num_seqs = rng.randint(1, 8)
    largest = -(-(MAX_PROMPT + MAX_TOKENS) // block_size)  # blocks of the longest request
    return EngineConfig(
        policy=rng.choice(["static", "continuous", "continuous"]),
        block_size=block_size,
        num_blocks=rng.randint(largest // 2, largest * 2),  # often too few: preemption (or refusals)
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=rng.choice([max_num_seqs, rng.randint(max_num_seqs, 24), rng.randint(24, 48), 64]),
        max_model_len=rng.choice([None, None, rng.randint(24, 64)]),
        enable_prefix_caching=rng.random() < 0.7,
        enable_chunked_prefill=rng.random() < 0.8,
        static_batch_timeout_s=rng.choice([0.0, 1e9]),  # 1e9: a partial batch starts only on flush
    )


def random_params(rng: random.Random, world: World, prompt: list[int]) -> SamplingParams:
    kind = rng.choices(["greedy", "seeded", "unseeded"], [6, 3, 1])[0]
    sampled = dict(temperature=rng.choice([0.7, 1.0]), top_p=rng.choice([1.0, 0.9]), top_k=rng.choice([0, 20]))
    params = SamplingParams(
        max_tokens=rng.randint(1, MAX_TOKENS),
        **(dict(temperature=0) if kind == "greedy" else sampled | dict(seed=rng.randint(0, 99) if kind == "seeded" else None)),
        ignore_eos=rng.random() < 0.5,
    )
    if rng.random() < 0.4:
        # a stop id the request really reaches (taken from its own tokens), or an arbitrary one
        ref = world.reference(prompt, params) if kind != "unseeded" else []
        params.stop_token_ids = [rng.choice(ref) if ref and rng.random() < 0.7 else rng.randrange(VOCAB)]
    return params


def expected_tokens(ref: list[int], seq: Sequence, eos: tuple[int, ...], max_model_len: int) -> tuple[list[int], str]:
    """The engine's stop rules applied to the tokens the request produces alone."""
    p, out = seq.params, []
    for t in ref:
        out.append(t)
        if (t in eos and not p.ignore_eos) or t in p.stop_token_ids:
            return out, "stop"
        if len(out) >= p.max_tokens or seq.num_prompt_tokens + len(out) >= max_model_len:
            return out, "length"
    raise AssertionError("the reference is shorter than max_tokens")


class Case:
    def __init__(self, world: World, seed: int):
        self.rng = rng = random.Random(seed)
        self.world = world
        self.cfg = random_config(rng)
        self.engine = world.engine(self.cfg)
        self.max_model_len = self.engine.config.max_model_len
        self.bases = [[rng.randrange(VOCAB) for _ in range(MAX_PROMPT)] for _ in range(3)]
        self.seqs: list[Sequence] = []  # every request queued, in order
        self.events: dict[int, list] = {}  # id(seq) -> its events
        self.silenced: set[int] = set()  # aborted, and the id reused before the abort was reported
        self.aborted: set[int] = set()
        self.static_members: list[Sequence] = []  # the current static batch
        self.num_refused = self.num_chunks = 0
        self.log: list[str] = []  # the operations so far, for a failure's message

    # -- operations --------------------------------------------------------------------------
    def add(self) -> None:
        rng, n = self.rng, self.rng.randint(1, MAX_PROMPT)
        if self.seqs and rng.random() < 0.15:  # a prompt again: every full block of it may hit
            prompt = list(rng.choice(self.seqs).prompt_token_ids)
        elif rng.random() < 0.6:  # a shared prefix, whole blocks or not, so prefix caching hits
            base = rng.choice(self.bases)
            k = rng.randint(1, n)
            prompt = base[:k] + [rng.randrange(VOCAB) for _ in range(n - k)]
        else:
            prompt = [rng.randrange(VOCAB) for _ in range(n)]
        params = random_params(rng, self.world, prompt)
        # now and then the id of a request that ended (a released one included): it may be used again
        ended = [s.request_id for s in self.seqs if s.request_id not in self.engine.seqs
                 or self.engine.seqs[s.request_id].is_finished]
        request_id = rng.choice(ended) if ended and rng.random() < 0.1 else f"r{len(self.seqs)}"
        try:
            seq = self.engine.add_request(prompt, params, request_id)
        except ValueError as exc:  # a request the limits can never serve is refused up front
            assert any(k in str(exc) for k in ("prompt:", "max_tokens:")), exc
            self.num_refused += 1
            self.log.append(f"refused {len(prompt)} tokens, max_tokens={params.max_tokens}")
            return
        old = next((s for s in reversed(self.seqs) if s.request_id == request_id), None)
        if old is not None:
            self.silence(old)
        self.seqs.append(seq)
        self.events[id(seq)] = []
        self.log.append(f"add {request_id}: {len(prompt)} tokens, {params}")
        live = [s for s in self.seqs if not s.is_finished]
        if live and rng.random() < 0.2:  # an id in flight is refused and changes nothing
            with pytest.raises(ValueError, match="already in flight"):
                self.engine.add_request([1], SamplingParams(), rng.choice(live).request_id)

    def silence(self, seq: Sequence) -> None:
        """`seq` no longer owns its id: an abort the next step has yet to report is not reported."""
        if id(seq) in self.aborted and not any(e.finished for e in self.events[id(seq)]):
            self.silenced.add(id(seq))

    def release(self) -> None:
        """Forget a request (as a server does): only a finished one goes."""
        seq = self.rng.choice(self.seqs)
        if self.engine.seqs.get(seq.request_id) is not seq:
            return
        self.log.append(f"release {seq.request_id} ({seq.status.value})")
        self.engine.release(seq.request_id)
        assert (seq.request_id in self.engine.seqs) != seq.is_finished
        if seq.is_finished:
            self.silence(seq)
            assert self.engine.abort(seq.request_id) is False

    def abort(self) -> None:
        rng, sched = self.rng, self.engine.scheduler
        pools = [list(sched.running), list(sched.waiting), [s for s in self.seqs if s.is_finished]]
        pool = rng.choice([p for p in pools if p] or [[]])
        if not pool or rng.random() < 0.15:
            self.log.append("abort unknown")
            assert self.engine.abort(f"unknown-{rng.randrange(9)}") is False
            return
        seq = rng.choice(pool)
        if self.engine.seqs.get(seq.request_id) is not seq:
            return  # its id now belongs to a newer request
        was_finished = seq.is_finished
        self.log.append(f"abort {seq.request_id} ({seq.status.value})")
        assert self.engine.abort(seq.request_id) is not was_finished
        assert seq.is_finished and not seq.block_table
        if not was_finished:
            assert seq.finish_reason == "abort"
            self.aborted.add(id(seq))

    def step(self, flush: bool) -> None:
        engine, sched = self.engine, self.engine.scheduler
        waiting_before = list(sched.waiting)
        num_tokens = {id(s): s.num_tokens for s in self.seqs}
        statuses = {id(s): s.status for s in self.seqs}
        preemptions = {id(s): s.num_preemptions for s in self.seqs}
        if self.cfg.policy == "static" and all(s.is_finished for s in self.static_members):
            candidates = waiting_before[: self.cfg.max_num_seqs]  # who a new batch would be
        else:
            candidates = None
        num_records = len(engine.trace)
        self.log.append(f"step flush={flush}")
        events = engine.step(flush)
        for e in events:
            seq = engine.seqs[e.request_id]
            assert id(seq) not in self.silenced
            self.events[id(seq)].append(e)
        num_preempted = sum(s.num_preemptions - preemptions[id(s)] for s in self.seqs)
        if len(engine.trace) == num_records:
            assert not [e for e in events if e.token_id is not None], "tokens without a step record"
            assert num_preempted == 0, "a step preempted but left no record"
            return
        record = engine.trace[-1]
        assert record.step == len(engine.trace) - 1 and record.num_preempted == num_preempted, record
        assert record.num_finished == sum(e.finished and e.token_id is not None for e in events), record
        assert record.idle_slots == self.cfg.max_num_seqs - len(record.batch), record
        assert record.prefill_tokens + record.decode_seqs == record.num_tokens, record
        assert record.context_tokens == sum(c + n for c, (_, n) in zip(record.computed, record.batch, strict=True))
        batch = [engine.seqs[rid] for rid, _ in record.batch]
        assert len(batch) == len(set(map(id, batch))) <= self.cfg.max_num_seqs
        if self.cfg.enable_chunked_prefill or len(batch) > 1:
            assert record.num_tokens <= self.cfg.max_num_batched_tokens, record
        for seq, (_, n), computed in zip(batch, record.batch, record.computed, strict=True):
            assert n >= 1 and computed + n <= num_tokens[id(seq)], f"{seq.request_id} computed past its tokens"
            # chunks only with chunked prefill: without it a sequence computes all it has in one step
            assert self.cfg.enable_chunked_prefill or computed + n == num_tokens[id(seq)], record
            self.num_chunks += computed + n < seq.num_prompt_tokens
        # state at the end of the step, as the record says
        assert record.num_running == len(sched.running), record
        assert record.num_waiting == len(sched.waiting), record
        assert record.kv_blocks_used == engine.block_manager.num_used, record
        # first come, first served: the requests admitted from the queue are its head
        admitted = [s for s in batch if statuses[id(s)] is SequenceStatus.WAITING]
        admitted_ids = set(map(id, admitted))
        head = waiting_before[: len(admitted)]
        assert set(map(id, head)) == admitted_ids, "a waiting request overtook the head of the queue"
        if self.cfg.policy == "static":
            if candidates is not None:
                self.static_members = candidates
            members = set(map(id, self.static_members))
            outsiders = [s.request_id for s in batch if id(s) not in members]
            assert not outsiders, f"static batch admitted {outsiders} while its batch ran"

    # -- invariants --------------------------------------------------------------------------
    def check(self) -> None:
        engine, sched, bm = self.engine, self.engine.scheduler, self.engine.block_manager
        running, waiting = sched.running, list(sched.waiting)
        assert len(running) <= self.cfg.max_num_seqs
        assert len(set(map(id, running))) == len(running) and len(set(map(id, waiting))) == len(waiting)
        assert not set(map(id, running)) & set(map(id, waiting)), "a sequence both running and waiting"
        assert all(s.status is SequenceStatus.RUNNING for s in running)
        assert all(s.status is SequenceStatus.WAITING for s in waiting)
        for s in self.seqs:
            if s.is_finished:
                assert s.finish_reason in REASONS and not s.block_table
            else:
                assert engine.seqs[s.request_id] is s
                assert (s in running) != (s in waiting), f"{s.request_id} is {s.status} but not queued"
            assert len(s.output_token_ids) <= s.params.max_tokens
            assert s.num_tokens <= self.max_model_len
        for s in waiting:
            assert not s.block_table and s.num_computed_tokens == 0, f"waiting {s.request_id} holds KV"
        # blocks: reference counts, the free queue and the prefix cache
        holders = Counter(b for s in running for b in s.block_table)
        bs = bm.block_size
        for block in bm.blocks:
            assert block.ref_count == holders[block.id], f"block {block.id}: ref_count {block.ref_count}, " \
                                                         f"held by {holders[block.id]} sequences"
            assert (block.ref_count == 0) == (block.id in bm.free)
        assert len(bm.blocks) <= bm.num_blocks
        assert bm.num_free + bm.num_used == bm.num_blocks and bm.num_used == len(holders)
        assert not set(holders) - {b.id for b in bm.blocks}
        for h, b in bm.hash_to_block.items():
            assert bm.blocks[b].hash == h
        for s in running:
            assert s.num_computed_tokens < s.num_tokens, f"{s.request_id} computed past its tokens"
            assert bm.blocks_for(s.num_computed_tokens) <= len(s.block_table) <= bm.blocks_for(s.num_tokens)
            assert len(set(s.block_table)) == len(s.block_table), f"{s.request_id} holds a block twice"
            assert s.num_hashed_blocks <= s.num_computed_tokens // bs
            parent = None
            for i, b in enumerate(s.block_table):
                block, tokens = bm.blocks[b], tuple(s.token_ids[i * bs:(i + 1) * bs])
                if i < s.num_hashed_blocks:  # a cached block holds exactly this prefix's K/V
                    assert block.token_ids == tokens and block.hash == chain_hash(parent, tokens)
                    parent = block.hash
                else:  # written by this sequence alone
                    assert holders[b] == 1, f"block {b} shared but not a cached prefix of {s.request_id}"
        if not bm.enable_prefix_caching:
            assert not bm.hash_to_block and bm.prefix_hits == 0

    def check_events(self, seq: Sequence) -> None:
        events = self.events[id(seq)]
        tokens = [e.token_id for e in events if e.token_id is not None]
        assert tokens == seq.output_token_ids, f"{seq.request_id}: events disagree with its tokens"
        ends = [e for e in events if e.finished]
        if id(seq) in self.silenced:
            assert not ends
            return
        assert len(ends) == 1 and events[-1] is ends[0] and ends[0].finish_reason == seq.finish_reason, \
            f"{seq.request_id}: finish events {ends}"

    # -- the whole case ----------------------------------------------------------------------
    def run(self, num_ops: int) -> None:
        rng = self.rng
        for _ in range(num_ops):
            op = rng.choices(["add", "step", "abort", "release"], [4, 5, 1, 0.3 if self.seqs else 0])[0]
            if op == "add":
                self.add()
            elif op == "abort":
                self.abort()
            elif op == "release":
                self.release()
            else:
                for _ in range(rng.randint(1, 4)):
                    self.step(flush=rng.random() < 0.5)
                    self.check()
            self.check()
        for _ in range(10_000):  # drain: no more arrivals
            if not self.engine.has_unfinished():
                break
            self.step(flush=True)
            self.check()
        else:
            raise AssertionError("the engine never finished its requests")
        self.check_end()

    def check_end(self) -> None:
        engine, bm = self.engine, self.engine.block_manager
        assert not engine.scheduler.running and not engine.scheduler.waiting and not engine._aborted
        assert bm.num_used == 0 and bm.num_free == bm.num_blocks
        assert all(b.ref_count == 0 for b in bm.blocks)
        eos = self.world.model_config.eos_token_ids
        for seq in self.seqs:
            assert seq.is_finished and seq.finish_reason in REASONS
            self.check_events(seq)
            assert (seq.finish_reason == "abort") == (id(seq) in self.aborted)
            assert len(seq.token_times_s) == len(seq.output_token_ids)
            times = [seq.arrival_s, seq.first_scheduled_s, seq.first_token_s, *seq.token_times_s, seq.finish_s]
            times = [t for t in times if t is not None]
            assert times == sorted(times), f"{seq.request_id}: times out of order {times}"
            if seq.params.greedy or seq.params.seed is not None:
                ref = self.world.reference(seq.prompt_token_ids, seq.params)
                want, reason = expected_tokens(ref, seq, eos, self.max_model_len)
                if seq.finish_reason == "abort":  # what it produced before the abort is still right
                    assert seq.output_token_ids == want[: len(seq.output_token_ids)], seq.request_id
                else:
                    assert (seq.output_token_ids, seq.finish_reason) == (want, reason), \
                        f"{seq.request_id} ({seq.num_preemptions} preemptions, {seq.num_cached_tokens} cached)"
        # the cache is whole again: one request as large as the cache fits and runs
        n = min(bm.num_blocks * bm.block_size, self.max_model_len - 1)
        if not self.cfg.enable_chunked_prefill:
            n = min(n, self.cfg.max_num_batched_tokens)
        seq = engine.add_request([1] * n, SamplingParams(max_tokens=1, temperature=0))
        while engine.has_unfinished():
            engine.step(flush=True)
        assert seq.finish_reason in ("stop", "length") and bm.num_used == 0


def run_case(world: World, seed: int, num_ops: int = 30) -> Case:
    case = Case(world, seed)
    try:
        case.run(num_ops)
    except AssertionError as exc:
        raise AssertionError(f"fuzz case {seed}, {case.cfg}:\n  " + "\n  ".join(case.log[-25:])) from exc
    return case


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return make_world(make_hf_model(tmp_path_factory.mktemp("fuzz") / "llama", "llama"))


def coverage_of(case: Case, coverage: Counter) -> None:
    trace = case.engine.trace
    coverage["preempted"] += sum(r.num_preempted for r in trace)
    coverage["prefix_hits"] += case.engine.block_manager.prefix_hits
    coverage["chunked"] += case.num_chunks
    coverage["aborted"] += len(case.aborted)
    coverage["over_budget"] += sum(r.num_tokens > case.cfg.max_num_batched_tokens for r in trace)
    coverage["preempted_static"] += sum(r.num_preempted for r in trace) * (case.cfg.policy == "static")
    coverage["hit_after_preemption"] += sum(s.num_preemptions > 0 and s.num_cached_tokens > 0 for s in case.seqs)
    coverage["aborted_after_preemption"] += sum(id(s) in case.aborted and s.num_preemptions > 0 for s in case.seqs)
    coverage["reused_ids"] += len(case.seqs) - len({s.request_id for s in case.seqs})
    coverage["refused"] += case.num_refused
    coverage[case.cfg.policy] += 1
    coverage.update(s.finish_reason for s in case.seqs)


def test_fuzzed_interleavings_keep_every_invariant(world):
    coverage = Counter()
    for seed in range(NUM_CASES):
        coverage_of(run_case(world, seed), coverage)
    # the cases really exercise what they are meant to
    wanted = ("preempted", "preempted_static", "prefix_hits", "hit_after_preemption", "chunked", "aborted",
              "reused_ids", "refused", "static", "stop", "length")
    assert all(coverage[k] > 0 for k in wanted), coverage


if __name__ == "__main__":  # python -m tests.test_engine_fuzz [cases] [first seed] [operations per case]
    import tempfile

    cases, first, num_ops = ([int(a) for a in sys.argv[1:4]] + [200, 0, 30][len(sys.argv) - 1:])[:3]
    with tempfile.TemporaryDirectory() as tmp:
        w = make_world(make_hf_model(Path(tmp) / "llama", "llama"))
        failed, cov = [], Counter()
        for seed in range(first, first + cases):
            try:
                coverage_of(run_case(w, seed, num_ops), cov)
            except AssertionError as exc:
                failed.append(seed)
                print(f"--- seed {seed}: {exc.__cause__!r}\n{exc}")
        print(f"{cases} cases, failed: {failed}, {dict(cov)}")
