"""Engine behaviour: block accounting, aborts, prefix caching, seeds, stop strings, static batching,
workload replay, streaming, and clear errors for bad input."""

from __future__ import annotations

import inspect
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lab.engine import LLM, SamplingParams
from lab.engine import loader as loader_module
from lab.engine.config import EngineConfig
from lab.engine.model_runner import kv_bytes_per_block
from lab.engine.no_cache import generate_without_cache
from lab.engine.sampler import filter_top_k_top_p
from lab.workload import RequestSpec, Workload, synthetic

ROOT = Path(__file__).resolve().parents[1]

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


def make_llm(folder, **kw):
    return LLM(folder, device="cpu", dtype="float32", **kw)


def test_all_blocks_free_after_finish_and_abort(tiny_llama):
    llm = make_llm(tiny_llama, num_blocks=64, block_size=4, max_num_seqs=4)
    engine = llm.engine
    for i in range(8):
        engine.add_request(list(range(1, 10 + i)), SamplingParams(max_tokens=40, temperature=0, ignore_eos=True), f"r{i}")
    for _ in range(5):
        engine.step()
    assert engine.block_manager.num_used > 0
    assert engine.abort("r1") and engine.abort("r6")  # one running, one still waiting
    assert not engine.abort("r1"), "aborting twice reports that it already ended"
    events = engine.step()
    assert {e.request_id for e in events if e.finish_reason == "abort"} == {"r1", "r6"}
    while engine.has_unfinished():
        engine.step()
    assert engine.block_manager.num_used == 0
    assert engine.seqs["r1"].finish_reason == "abort"
    assert engine.metrics(engine.seqs["r6"]).status == "aborted"
    assert all(engine.seqs[f"r{i}"].finish_reason == "length" for i in (0, 2, 3, 4, 5, 7))


def test_block_queue_hands_out_never_used_blocks_first_then_least_recently_freed():
    from lab.engine.block_manager import BlockManager
    from lab.engine.sequence import Sequence

    def seq(n: int) -> Sequence:
        return Sequence("r", list(range(1, n + 1)), GREEDY, 0.0)

    bm = BlockManager(10**7, block_size=4, enable_prefix_caching=False)
    assert (bm.num_free, bm.num_used, len(bm.blocks)) == (10**7, 0, 0)  # blocks made when first handed out
    a, b = seq(8), seq(4)
    bm.admit(a, []), bm.admit(b, [])
    assert (a.block_table, b.block_table, bm.num_used) == ([0, 1], [2], 3)
    bm.release(a)  # freed tail first: 1, then 0
    assert bm.num_free == 10**7 - 1 and bm.num_used == 1
    c = seq(4)
    bm.admit(c, [])
    assert c.block_table == [3]  # never-used blocks stand before freed ones in the queue
    small = BlockManager(4, block_size=4)
    x, y = seq(8), seq(8)
    small.admit(x, []), small.admit(y, [])
    assert small.num_free == 0 and not small.can_admit(seq(1), [])
    small.release(y), small.release(x)
    z = seq(12)
    small.admit(z, [])
    assert z.block_table == [3, 2, 1] and small.num_free == 1  # least recently freed first


def test_prefix_cache_hits_reuse_blocks_and_change_nothing(tiny_llama):
    shared = list(range(5, 45))  # 40 tokens = 10 full blocks of 4
    prompts = [shared + [i, i + 1] for i in range(6)]
    cached = make_llm(tiny_llama, block_size=4, enable_prefix_caching=True)
    first = cached.generate(prompts[:1], GREEDY, use_tqdm=False)
    rest = cached.generate(prompts[1:], GREEDY, use_tqdm=False)
    assert cached.engine.block_manager.prefix_hits >= 10 * 5
    assert all(s.num_cached_tokens == 40 for s in cached.engine.seqs.values() if s.request_id != first[0].request_id)
    plain = make_llm(tiny_llama, block_size=4, enable_prefix_caching=False)
    expected = plain.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in first + rest] == [o.token_ids for o in expected]
    assert plain.engine.block_manager.prefix_hits == 0
    assert cached.engine.block_manager.num_used == 0


def test_prefill_computes_only_uncached_tokens(tiny_llama):
    llm = make_llm(tiny_llama, block_size=4)
    llm.generate([list(range(1, 30))], GREEDY, use_tqdm=False)
    steps_before = len(llm.engine.trace)
    llm.generate([list(range(1, 30))], GREEDY, use_tqdm=False)
    # 29 tokens: 7 full blocks hit; only the 29th token is prefilled again
    assert llm.engine.trace[steps_before].prefill_tokens == 1


def test_seeded_sampling_repeats_regardless_of_batch(tiny_llama):
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, top_k=40, seed=7)
    alone = make_llm(tiny_llama).generate([[3, 4, 5]], params, use_tqdm=False)[0].token_ids
    batched = make_llm(tiny_llama).generate([[9, 9], [3, 4, 5], [1]], [GREEDY, params, GREEDY], use_tqdm=False)[1]
    assert batched.token_ids == alone
    other_seed = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, top_k=40, seed=8)
    assert make_llm(tiny_llama).generate([[3, 4, 5]], other_seed, use_tqdm=False)[0].token_ids != alone


def test_seeds_that_differ_above_32_bits_sample_differently(tiny_llama):
    # torch's CPU generator keeps a seed's low 32 bits: 1 and 1 + 2**32, -1 and 2**32 - 1 drew the same tokens
    llm = make_llm(tiny_llama)

    def tokens(seed):
        params = SamplingParams(max_tokens=16, temperature=1.0, seed=seed, ignore_eos=True)
        return tuple(llm.generate([[3, 4, 5]], params, use_tqdm=False)[0].token_ids)

    assert tokens(1) != tokens(1 + 2**32) and tokens(-1) != tokens(2**32 - 1) != tokens(2**63 - 1)
    assert tokens(1 + 2**32) == tokens(1 + 2**32)  # still repeatable


def test_top_k_one_is_greedy(tiny_llama):
    llm = make_llm(tiny_llama)
    greedy = llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].token_ids
    top1 = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=16, temperature=1.5, top_k=1, seed=3, ignore_eos=True),
                        use_tqdm=False)[0].token_ids
    assert top1 == greedy


def test_stop_strings_cut_text_and_set_finish_reason(tiny_llama):
    llm = make_llm(tiny_llama)
    free = llm.generate(["Hello"], SamplingParams(max_tokens=30, temperature=0), use_tqdm=False)[0]
    assert free.finish_reason == "length" and len(free.text) == 30
    stop = free.text[10:13]
    first = free.text.find(stop)
    cut = llm.generate(["Hello"], SamplingParams(max_tokens=30, temperature=0, stop=[stop]), use_tqdm=False)[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[:first]
    assert stop not in cut.text
    streamed = "".join(e.text for e in llm.stream(["Hello"], SamplingParams(max_tokens=30, temperature=0, stop=stop)))
    assert streamed == cut.text, "streaming never leaks the start of a stop string"


def test_stop_token_ids_and_max_tokens(tiny_llama):
    llm = make_llm(tiny_llama)
    free = llm.generate([[1, 2]], GREEDY, use_tqdm=False)[0]
    stop_id = free.token_ids[5]
    out = llm.generate([[1, 2]], SamplingParams(max_tokens=16, temperature=0, stop_token_ids=[stop_id]), use_tqdm=False)[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[: free.token_ids.index(stop_id) + 1]
    # the stop token's own text is left out of the answer (vLLM, OpenAI), streamed or not
    assert out.text == llm.tokenizer.decode(out.token_ids[:-1]) != llm.tokenizer.decode(out.token_ids)
    params = SamplingParams(max_tokens=16, temperature=0, stop_token_ids=[stop_id])
    assert "".join(e.text for e in llm.stream([[1, 2]], params)) == out.text


@pytest.mark.parametrize("bad", [-1, 96, 10**6])
def test_a_stop_token_id_outside_the_vocabulary_rejected(tiny_llama, bad):
    llm = make_llm(tiny_llama)  # vocab_size = 96
    # it can never be sampled: the request ran to max_tokens as if the stop were not there
    with pytest.raises(ValueError, match=re.escape(f"stop_token_ids: token id {bad} is outside the vocabulary [0, 96)")):
        llm.generate([[1, 2]], SamplingParams(max_tokens=4, stop_token_ids=[3, bad]), use_tqdm=False)
    assert not llm.engine.has_unfinished()


def copy_model(src: Path, dst: Path, **config_changes) -> Path:
    """A copy of a model folder with some config.json fields changed."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config | config_changes))
    return dst


def test_eos_stops_unless_ignored(tiny_llama, tmp_path):
    free = make_llm(tiny_llama).generate([[1, 2]], GREEDY, use_tqdm=False)[0].token_ids
    # a token greedy decoding produces early, but not first and not before
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    llm = make_llm(copy_model(tiny_llama, tmp_path / "eos", eos_token_id=free[k]))
    assert llm.engine.model_config.eos_token_ids == (free[k],)
    stopped = llm.generate([[1, 2]], SamplingParams(max_tokens=16, temperature=0), use_tqdm=False)[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == free[: k + 1]
    ignored = llm.generate([[1, 2]], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True), use_tqdm=False)[0]
    assert ignored.finish_reason == "length" and ignored.token_ids == free
    assert llm.engine.block_manager.num_used == 0


def test_min_p_on_hand_made_logits_and_near_one_it_is_greedy(tiny_llama):
    from lab.engine.sampler import filter_top_k_top_p

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = filter_top_k_top_p(logits, 0, 1.0, min_p=0.25)  # below 0.25 x 0.5 = 0.125: the 0.05 token goes
    assert torch.isfinite(kept).tolist() == [True, True, True, False]
    llm = make_llm(tiny_llama)
    greedy = llm.generate(["abc"], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True), use_tqdm=False)[0]
    for seed in range(3):  # only the top token is within 0.999999 of itself: every seed draws it
        drawn = llm.generate(["abc"], SamplingParams(max_tokens=8, temperature=1.0, min_p=0.999999, seed=seed,
                                                     ignore_eos=True), use_tqdm=False)[0]
        assert drawn.token_ids == greedy.token_ids
    with pytest.raises(ValueError, match=r"min_p: must be a number in \[0, 1\]"):
        SamplingParams(min_p=1.5)


def test_top_k_and_top_p_filters_on_hand_made_logits():
    # probabilities 0.05, 0.5, 0.15, 0.3 (shuffled, so the sort really has to be undone)
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()

    def kept(top_k, top_p):
        return torch.isfinite(filter_top_k_top_p(logits, top_k, top_p)).nonzero().flatten().tolist()

    assert kept(0, 1.0) == [0, 1, 2, 3]
    assert kept(0, 0.4) == [1]  # the top token alone reaches 0.4
    assert kept(0, 0.75) == [1, 3]  # 0.5 < 0.75 <= 0.5 + 0.3
    assert kept(0, 0.9) == [1, 2, 3]  # 0.8 < 0.9 <= 0.95
    assert kept(0, 0.99) == [0, 1, 2, 3]
    assert kept(2, 1.0) == [1, 3]
    assert kept(3, 1.0) == [1, 2, 3]
    assert kept(1, 1.0) == [1]
    assert kept(3, 0.75) == [1, 3]  # both filters apply
    out = filter_top_k_top_p(logits, 2, 1.0)
    assert torch.equal(out[[1, 3]], logits[[1, 3]]), "kept tokens keep their logits"


def test_a_top_p_too_small_for_float32_keeps_the_top_token(tiny_llama):
    # 1e-46 is a valid top_p but rounds to 0 in float32; the top token used to be dropped with the
    # rest, the row had no token left, and the sampling error failed every request in the batch
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()
    assert torch.isfinite(filter_top_k_top_p(logits, 0, 1e-46)).nonzero().flatten().tolist() == [1]
    llm = make_llm(tiny_llama)
    greedy = llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].token_ids
    tiny_p = SamplingParams(max_tokens=16, temperature=1.0, top_p=1e-46, seed=1)
    outs = llm.generate([[1, 2, 3], [4, 5]], [tiny_p, GREEDY], use_tqdm=False)
    assert outs[0].token_ids == greedy  # the nucleus is the top token alone: greedy
    assert outs[1].finish_reason == "length"  # and its neighbour in the batch was not failed


def test_temperature_near_zero_is_greedy_and_high_is_not(tiny_llama):
    llm = make_llm(tiny_llama)
    greedy = llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].token_ids
    cold = SamplingParams(max_tokens=16, temperature=1e-4, seed=1, ignore_eos=True)
    hot = SamplingParams(max_tokens=16, temperature=5.0, seed=1, ignore_eos=True)
    assert llm.generate([[1, 2, 3]], cold, use_tqdm=False)[0].token_ids == greedy
    hot_ids = llm.generate([[1, 2, 3]], hot, use_tqdm=False)[0].token_ids
    assert hot_ids != greedy
    assert llm.generate([[1, 2, 3]], hot, use_tqdm=False)[0].token_ids == hot_ids, "a seed repeats"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cpu_runs_and_frees_every_block(tiny_llama, dtype):
    llm = LLM(tiny_llama, device="cpu", dtype=str(dtype).removeprefix("torch."),
              max_num_batched_tokens=16, max_num_seqs=4)
    assert next(llm.engine.runner.model.parameters()).dtype == dtype
    assert llm.engine.runner.model.attention_layers[0].k_cache.dtype == dtype
    outs = llm.generate([[1, 2, 3], list(range(4, 40))], GREEDY, use_tqdm=False)  # a chunked prefill too
    assert [len(o.token_ids) for o in outs] == [GREEDY.max_tokens] * 2
    assert all(0 <= t < 96 for o in outs for t in o.token_ids)
    assert llm.engine.block_manager.num_used == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kv_cache_memory_gib_sets_the_number_of_blocks(tiny_llama, dtype):
    torch_dtype = getattr(torch, dtype)
    # K and V x 2 layers x 16 tokens x 2 KV heads x 16 dims (64 hidden / 4 heads) x bytes per value
    per_block = kv_bytes_per_block(make_llm(tiny_llama).engine.model_config, 16, torch_dtype)
    assert per_block == 2 * 2 * 16 * 2 * 16 * torch_dtype.itemsize
    gib = 0.001
    llm = LLM(tiny_llama, device="cpu", dtype=dtype, kv_cache_memory_gib=gib)
    assert llm.engine.block_manager.num_blocks == int(gib * 2**30 // per_block)
    assert llm.engine.runner.model.attention_layers[0].k_cache.shape[0] == int(gib * 2**30 // per_block)
    # a budget beyond every slot at full length is capped there: 4 seqs x 256 tokens / 16 per block
    big = LLM(tiny_llama, device="cpu", dtype=dtype, kv_cache_memory_gib=1.0, max_num_seqs=4)
    assert 2**30 // per_block > 64 and big.engine.block_manager.num_blocks == 4 * math.ceil(256 / 16)
    # a budget below one block was rounded up to one, using memory nobody gave
    with pytest.raises(ValueError, match=r"^kv_cache_memory_gib: 1e-09 GiB holds no KV block \(.* bytes for 16 "
                                         r"tokens\); allowed: at least "):
        LLM(tiny_llama, device="cpu", dtype=dtype, kv_cache_memory_gib=1e-9)


def test_static_batch_admits_nothing_until_it_ends(tiny_llama):
    llm = make_llm(tiny_llama, policy="static", max_num_seqs=4)
    lens = [4, 12, 4, 4, 2, 2, 2, 2]
    outs = llm.generate([[i + 1, 2, 3] for i in range(8)],
                        [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lens], use_tqdm=False)
    first_batch = {o.request_id for o in outs[:4]}
    second_batch = {o.request_id for o in outs[4:]}
    trace = llm.engine.trace
    first_second = min(i for i, s in enumerate(trace) if {r for r, _ in s.batch} & second_batch)
    last_first = max(i for i, s in enumerate(trace) if {r for r, _ in s.batch} & first_batch)
    assert first_second > last_first, "static batching admitted a request while its batch was running"
    assert last_first == 11, "the batch lasts as long as its longest member (12 tokens)"
    assert any(s.idle_slots == 3 for s in trace[:12]), "finished members leave their slots idle"
    continuous = make_llm(tiny_llama, policy="continuous", max_num_seqs=4)
    continuous.generate([[i + 1, 2, 3] for i in range(8)],
                        [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lens], use_tqdm=False)
    assert len(continuous.engine.trace) < len(trace)


def test_static_waits_for_a_full_batch_or_timeout(tiny_llama):
    llm = make_llm(tiny_llama, policy="static", max_num_seqs=4, static_batch_timeout_s=60)
    llm.engine.add_request([1, 2, 3], GREEDY)
    assert llm.engine.step() == [] and not llm.engine.trace, "one request must wait for the batch to fill"
    llm.engine.step(flush=True)
    assert len(llm.engine.trace) == 1, "flush (no more arrivals) starts the partial batch"


def test_run_workload_respects_arrivals(tiny_llama):
    llm = make_llm(tiny_llama, max_num_seqs=8)
    wl = synthetic(12, rate=40.0, prompt_lens=[5, 9, 14] * 4, output_lens=8, seed=3)
    result = llm.run_workload(wl, progress=False)
    assert [r.request_id for r in result.requests] == [r.id for r in wl]
    assert wl.duration_s > 0.1, "arrivals must really be staggered"
    for spec, m in zip(wl, result.requests, strict=True):
        assert m.ok and m.output_tokens == 8 and m.prompt_tokens == spec.prompt_len
        # the engine's own clock: nothing is scheduled before the workload says it arrives
        assert m.first_scheduled_s >= spec.arrival_s
        assert m.first_scheduled_s <= m.first_token_s <= m.finish_s
        assert len(m.token_times_s) == 8
    s = result.summary()
    assert s["completed"] == 12 and s["total_output_tokens"] == 96
    assert s["duration_s"] > wl.duration_s, "the run lasts at least until the last arrival"
    assert result.steps and result.steps[0].start_s >= 0 and result.steps[-1].start_s >= wl[-1].arrival_s


def test_run_workload_text_prompts(tiny_llama):
    llm = make_llm(tiny_llama)
    wl = Workload([RequestSpec("a", prompt="To be", output_len=5), RequestSpec("b", prompt_token_ids=[1, 2], output_len=3)])
    result = llm.run_workload(wl, progress=False)
    assert [r.output_tokens for r in result.requests] == [5, 3]
    assert result.requests[0].prompt_tokens == 5


def test_run_workload_function_is_the_spine_runner(tiny_llama):
    from lab.engine import run_workload

    wl = Workload([RequestSpec("a", prompt="To be", output_len=4), RequestSpec("b", prompt_token_ids=[1, 2], output_len=6)])
    result = run_workload(make_llm(tiny_llama), wl, progress=False, label="spine")
    assert result.label == "spine"
    assert [(r.request_id, r.output_tokens) for r in result.requests] == [("a", 4), ("b", 6)]


def test_import_lab_is_light_and_reexports_lazily():
    import subprocess
    import sys

    code = ("import sys, lab; assert 'torch' not in sys.modules, 'import lab pulled torch'; "
            "from lab.engine import LLM; assert lab.LLM is LLM; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    # the simulator and the command line's parser (bench and batch are HTTP only) need no torch either
    code = ("import sys, lab.sim; from lab.cli import build_parser; build_parser(); lab.simulate; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('lab')); "
            "from lab.server import serve; assert 'torch' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_lazy_names_are_not_shadowed_by_submodules():
    # lab.server re-exported serve() while lab/server/serve.py existed: once that module was imported
    # (by start_server, by the CLI), `from lab.server import serve` gave the module, not the function
    import importlib
    import pkgutil

    for package in ("lab", "lab.engine", "lab.server"):
        module = importlib.import_module(package)
        submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
        assert not submodules & set(module._LAZY), package
        for name in module._LAZY:
            importlib.import_module(module._LAZY[name])  # every source module loaded, then the names
        assert all(not inspect.ismodule(getattr(module, name)) for name in module._LAZY), package
    import lab.engine

    assert lab.engine.llm.LLM is lab.engine.LLM  # submodules are still reachable as attributes
    with pytest.raises(AttributeError, match="module 'lab.engine' has no attribute 'nope'"):
        lab.engine.nope  # noqa: B018


def test_stream_events_rebuild_generate_output(tiny_llama):
    llm = make_llm(tiny_llama)
    params = SamplingParams(max_tokens=12, temperature=0)
    expected = llm.generate(["abc", "hello there"], params, use_tqdm=False)
    events = list(llm.stream(["abc", "hello there"], params))
    by_request: dict[str, list] = {}
    for e in events:
        by_request.setdefault(e.request_id, []).append(e)
    texts = ["".join(e.text for e in evs) for evs in by_request.values()]
    assert texts == [o.text for o in expected]
    assert all(evs[-1].finished and evs[-1].finish_reason == "length" for evs in by_request.values())


def test_a_stream_reports_the_abort_of_its_last_request_itself(tiny_llama):
    llm = make_llm(tiny_llama)
    first = []
    for e in llm.stream([[1, 2, 3]], GREEDY):
        first.append(e)
        if len(first) == 2:
            llm.engine.abort(e.request_id)
    assert first[-1].finished and first[-1].finish_reason == "abort"
    # the old abort must not leak into the next stream
    second = list(llm.stream([[4, 5]], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)))
    assert {e.request_id for e in second} == {second[-1].request_id} != first[0].request_id


def test_a_stream_left_early_aborts_its_requests(tiny_llama):
    llm = make_llm(tiny_llama)
    long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    for n, _ in enumerate(llm.stream([[1, 2, 3], [4, 5, 6, 7]], long)):
        if n == 3:
            break  # the consumer leaves; the loop closes the generator
    assert llm.engine.block_manager.num_used == 0, "its requests gave their blocks back"
    left = [s for s in llm.engine.seqs.values()]
    assert len(left) == 2 and all(s.finish_reason == "abort" and len(s.output_token_ids) < 5 for s in left)
    steps = llm.engine.num_steps
    out = llm.generate([[8, 9]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True), use_tqdm=False)
    assert out[0].finish_reason == "length" and llm.engine.num_steps - steps == 3, "no step ran the old requests"


def test_a_stream_yields_only_its_own_requests_events(tiny_llama):
    llm = make_llm(tiny_llama)
    long = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
    for n, _ in enumerate(llm.stream([[1, 2, 3], [4, 5, 6]], long)):
        if n == 3:
            break  # its two requests are aborted; their abort events wait for the next step
    llm.engine.add_request([7, 8, 9], GREEDY, "direct")  # queued by hand, not by the stream below
    events = list(llm.stream([[1, 2]], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)))
    # the old stream's aborts and the hand-queued request showed up here as if they were this stream's
    assert len({e.request_id for e in events}) == 1
    assert [e.finished for e in events] == [False, True] and events[-1].finish_reason == "length"


def test_trace_records_every_step(tiny_llama):
    llm = make_llm(tiny_llama, max_num_seqs=4)
    llm.generate([[1] * 10] * 6, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True), use_tqdm=False)
    trace = llm.engine.trace
    assert [s.step for s in trace] == list(range(len(trace)))
    assert sum(s.num_finished for s in trace) == 6
    assert sum(n for s in trace for _, n in s.batch) == sum(s.prefill_tokens + s.decode_seqs for s in trace)
    assert all(s.num_running <= 4 for s in trace)
    total = len(trace)
    del trace[:-2]  # a server trims its trace; step numbers must not restart
    llm.generate([[1] * 3], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True), use_tqdm=False)
    assert [s.step for s in trace] == list(range(total - 2, total + 2))


# -- bad input -------------------------------------------------------------------------------

def test_empty_prompt_rejected(tiny_llama):
    llm = make_llm(tiny_llama)
    with pytest.raises(ValueError, match="prompt: must not be empty"):
        llm.generate([""], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt: must not be empty"):
        llm.generate([[]], GREEDY, use_tqdm=False)


@pytest.mark.parametrize("call, message", [
    (lambda llm: llm.generate(123), "prompts: must be a prompt"),
    (lambda llm: llm.generate([None]), "prompt: must be text .* got NoneType"),
    (lambda llm: llm.generate([["a", "b"]]), r"prompt: must be text .* got list \['a', 'b'\]"),
    (lambda llm: llm.generate(["a"], {"max_tokens": 3}), "params: must be a SamplingParams or a list of them, got dict"),
    (lambda llm: llm.engine.add_request("a", {"max_tokens": 3}), "params: must be a SamplingParams, got dict"),
    (lambda llm: llm.engine.add_request("a", GREEDY, request_id=5), "request_id: must be a string or None, got int"),
    (lambda llm: llm.run_workload([1, 2], progress=False), "workload: must be a lab.workload.Workload, got list"),
])
def test_wrong_types_rejected_with_the_field_named(tiny_llama, call, message):
    llm = make_llm(tiny_llama)
    with pytest.raises(ValueError, match=message):
        call(llm)


def test_a_bad_prompt_queues_none_of_its_batch(tiny_llama):
    llm = make_llm(tiny_llama)
    with pytest.raises(ValueError, match="prompt: must not be empty"):
        llm.generate([[1, 2, 3], [4, 5], ""], GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished()  # the two good prompts were not left behind in the queue
    with pytest.raises(ValueError, match="prompt: token id 999"):
        list(llm.stream([[1, 2], [1, 999]], GREEDY))
    assert not llm.engine.has_unfinished()


def test_token_ids_as_tensor_or_array_equal_a_list(tiny_llama):
    import numpy as np

    llm = make_llm(tiny_llama)
    expected = llm.generate([[5, 6, 7]], GREEDY, use_tqdm=False)[0].token_ids
    assert llm.generate(torch.tensor([5, 6, 7]), GREEDY, use_tqdm=False)[0].token_ids == expected
    assert llm.generate([np.array([5, 6, 7])], GREEDY, use_tqdm=False)[0].token_ids == expected


def test_max_tokens_below_one_rejected():
    with pytest.raises(ValueError, match="max_tokens: must be an integer >= 1"):
        SamplingParams(max_tokens=0)


def test_prompt_longer_than_context_rejected(tiny_llama):
    llm = make_llm(tiny_llama)  # max_position_embeddings = 256
    with pytest.raises(ValueError, match=r"prompt: 300 tokens .*max_model_len=256"):
        llm.generate([[1] * 300], GREEDY, use_tqdm=False)


def test_token_id_outside_vocabulary_rejected(tiny_llama):
    with pytest.raises(ValueError, match=r"prompt: token id 999 is outside the vocabulary \[0, 96\)"):
        make_llm(tiny_llama).generate([[1, 999]], GREEDY, use_tqdm=False)


def test_unknown_policy_rejected():
    with pytest.raises(ValueError, match="policy: unknown value 'fifo'; allowed: static, continuous"):
        EngineConfig(policy="fifo")


def test_max_model_len_beyond_the_models_context_rejected(tiny_llama):
    context = make_llm(tiny_llama).engine.model_config.max_position_embeddings
    # it used to be cut to the model's context without a word
    with pytest.raises(ValueError, match=rf"max_model_len: {context + 1} exceeds .*allowed: at most {context}"):
        make_llm(tiny_llama, max_model_len=context + 1)
    assert make_llm(tiny_llama, max_model_len=context // 2).engine.config.max_model_len == context // 2


def test_unknown_engine_argument_rejected(tiny_llama):
    with pytest.raises(TypeError, match="unknown argument"):
        make_llm(tiny_llama, max_batch=3)


def test_unsupported_architecture_rejected(tmp_path, tiny_llama):
    config = json.loads((tiny_llama / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"architectures: \['MambaForCausalLM'\] is not supported; allowed: LlamaForCausalLM"):
        make_llm(tmp_path)
    del config["architectures"]
    config["model_type"] = "qwen2_moe"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"architectures: missing, and model_type 'qwen2_moe' is not supported"):
        make_llm(tmp_path)


def test_a_config_missing_a_field_names_it(tmp_path, tiny_llama):
    config = json.loads((tiny_llama / "config.json").read_text())
    del config["num_attention_heads"]  # a KeyError traceback before
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"^model: .*config.json has no 'num_attention_heads', which this architecture needs$"):
        make_llm(tmp_path)


def test_request_that_cannot_fit_the_cache_rejected(tiny_llama):
    llm = make_llm(tiny_llama, num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="max_tokens: prompt \\+ max_tokens = 26 tokens cannot fit"):
        llm.generate([[1] * 10], SamplingParams(max_tokens=16), use_tqdm=False)


def test_bad_dtype_and_device_rejected(tiny_llama):
    with pytest.raises(ValueError, match="dtype: unknown value 'float8'"):
        LLM(tiny_llama, device="cpu", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' requested but CUDA is not available"):
            LLM(tiny_llama, device="cuda")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu", ""])
def test_unsupported_device_rejected(tiny_llama, device):
    with pytest.raises(ValueError, match=re.escape(
            f"device: {device!r} is not supported; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'")):
        LLM(tiny_llama, device=device)


@pytest.mark.parametrize("kwargs, message", [
    (dict(stop=5), "stop: must be a string or a list of strings, got 5"),
    (dict(stop=["ok", 3]), "stop: must be a string or a list of strings"),
    (dict(stop=""), "stop: must not contain an empty string"),  # was dropped unseen (vLLM refuses it too)
    (dict(stop=["ok", ""]), "stop: must not contain an empty string"),
    (dict(temperature="hot"), "temperature: must be a finite number >= 0 (0: greedy), got 'hot'"),
    (dict(temperature=float("nan")), "temperature: must be a finite number >= 0"),
    (dict(temperature=-1), "temperature: must be a finite number >= 0"),
    (dict(top_p="0.9"), "top_p: must be a number in (0, 1], got '0.9'"),
    (dict(top_p=0), "top_p: must be a number in (0, 1]"),
    (dict(top_k=2.5), "top_k: must be an integer >= 0 (0 or -1: off), got 2.5"),
    (dict(top_k=-1.0), "top_k: must be an integer >= 0 (0 or -1: off), got -1.0"),  # was taken as off
    (dict(max_tokens="8"), "max_tokens: must be an integer >= 1, got '8'"),
    (dict(seed="1"), "seed: must be an integer in [-2**63, 2**63 - 1] or None, got '1'"),
    (dict(seed=2**64), "or None, got 18446744073709551616"),  # torch.Generator would overflow when queued
    (dict(stop_token_ids=5), "stop_token_ids: must be a list of integers, got 5"),
    (dict(stop_token_ids=[1.5]), "stop_token_ids: must be a list of integers"),
    (dict(ignore_eos="yes"), "ignore_eos: must be true or false, got 'yes'"),
])
def test_sampling_params_types_rejected(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplingParams(**kwargs)


def test_sampling_params_accepts_what_it_should():
    p = SamplingParams(temperature=1, top_p=1, top_k=-1, stop="\n\n", stop_token_ids=(3,), seed=2)
    assert (p.stop, p.stop_token_ids, p.top_k, p.greedy) == (["\n\n"], [3], 0, False)
    assert SamplingParams(temperature=0, stop=("x",)).stop == ["x"] and SamplingParams(temperature=0).greedy


def test_unexpected_checkpoint_tensor_rejected_and_named(tiny_models, tmp_path):
    extra = copy_model(tiny_models["llama"], tmp_path / "extra")
    tensors = load_file(extra / "model.safetensors")
    tensors["model.layers.0.self_attn.sinks"] = torch.zeros(4)
    save_file(tensors, extra / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(
            f"model: {extra} has weights this model does not use: ['model.layers.0.self_attn.sinks']")):
        make_llm(extra)


def test_legitimately_unused_checkpoint_tensors_load(tiny_models, tmp_path):
    # old Llama checkpoints carry rotary inverse frequencies; a tied model may still store its head
    llama = copy_model(tiny_models["llama"], tmp_path / "llama")
    tensors = load_file(llama / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(tensors, llama / "model.safetensors", metadata={"format": "pt"})
    qwen2 = copy_model(tiny_models["qwen2"], tmp_path / "qwen2")
    tensors = load_file(qwen2 / "model.safetensors")
    assert "lm_head.weight" not in tensors and json.loads((qwen2 / "config.json").read_text())["tie_word_embeddings"]
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, qwen2 / "model.safetensors", metadata={"format": "pt"})
    for original, copy in ((tiny_models["llama"], llama), (tiny_models["qwen2"], qwen2)):
        assert make_llm(copy).generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].token_ids == \
            make_llm(original).generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].token_ids


def test_missing_bundled_model_hint_names_files_that_exist(monkeypatch, tmp_path):
    monkeypatch.setattr(loader_module, "bundled_model_dir", lambda: tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="is not a folder") as err:
        LLM(device="cpu")
    named = re.findall(r"data/[\w./-]*\w", str(err.value))
    assert named, str(err.value)
    for path in named:
        assert (ROOT / path).is_file(), f"the hint points to {path}, which does not exist"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; this machine has none")
def test_cuda_matches_cpu_greedy(tiny_llama):
    prompts = [[1, 2, 3], list(range(4, 40)), [7] * 17]
    cpu = make_llm(tiny_llama).generate(prompts, GREEDY, use_tqdm=False)
    gpu = LLM(tiny_llama, device="cuda", dtype="float32").generate(prompts, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in gpu] == [o.token_ids for o in cpu]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; this machine has none")
@pytest.mark.parametrize("policy", ["static", "continuous"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_cuda_matches_transformers_on_cuda(tiny_models, family, policy):
    from tests.conftest import hf_greedy

    prompts = [list(range(1, 1 + n)) for n in (3, 9, 17, 33)]
    ours = LLM(tiny_models[family], device="cuda", dtype="float32", policy=policy, max_num_seqs=4,
               max_num_batched_tokens=16).generate(prompts, GREEDY, use_tqdm=False)  # chunked prefill too
    assert [o.token_ids for o in ours] == hf_greedy(tiny_models[family], prompts, GREEDY.max_tokens, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; this machine has none")
def test_cuda_bfloat16_runs_and_frees_every_block(tiny_llama):
    llm = LLM(tiny_llama, device="cuda", dtype="bfloat16")
    outs = llm.generate([[1, 2, 3], list(range(4, 40))], GREEDY, use_tqdm=False)
    assert [len(o.token_ids) for o in outs] == [GREEDY.max_tokens] * 2
    assert llm.engine.block_manager.num_used == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; this machine has none")
def test_cuda_seeded_sampling_repeats_and_stays_on_the_device(tiny_llama):
    params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=3, ignore_eos=True)
    llm = LLM(tiny_llama, device="cuda")
    assert llm.engine.runner.generator.device.type == "cuda"
    runs = [llm.generate([[1, 2, 3], [4, 5]], params, use_tqdm=False) for _ in range(2)]
    assert [o.token_ids for o in runs[0]] == [o.token_ids for o in runs[1]]
    alone = llm.generate([[1, 2, 3]], params, use_tqdm=False)[0].token_ids
    assert alone == runs[0][0].token_ids  # its own generator: the batch it shares does not matter


def test_preempted_recompute_over_the_budget_with_chunking_off_finishes_with_the_same_tokens(tiny_llama):
    prompts = [list(range(1, 13)), list(range(20, 30))]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    tight = make_llm(tiny_llama, num_blocks=10, block_size=4, max_num_seqs=2, max_num_batched_tokens=16,
                     enable_chunked_prefill=False, enable_prefix_caching=False)
    outs = tight.generate(prompts, params, use_tqdm=False)  # used to loop forever
    roomy = make_llm(tiny_llama, block_size=4).generate(prompts, params, use_tqdm=False)
    assert sum(s.num_preempted for s in tight.engine.trace) >= 1
    assert [o.token_ids for o in outs] == [o.token_ids for o in roomy]
    assert tight.engine.block_manager.num_used == 0


def test_a_tiny_temperature_is_greedy_and_breaks_nothing(tiny_llama):
    llm = make_llm(tiny_llama)
    greedy = llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].token_ids
    tiny = SamplingParams(max_tokens=GREEDY.max_tokens, temperature=1e-40, ignore_eos=True)
    # logits / 1e-40 overflowed to inf and failed the whole batch; below 1e-5 it is greedy (vLLM's rule)
    assert llm.generate([[1, 2, 3]], tiny, use_tqdm=False)[0].token_ids == greedy
    assert llm.engine.block_manager.num_used == 0


def test_the_last_token_needs_no_kv_slot(tiny_llama):
    # 4 prompt + 5 output tokens: KV for 8 of them, exactly 2 blocks of 4
    llm = make_llm(tiny_llama, num_blocks=2, block_size=4)
    out = llm.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True), use_tqdm=False)
    assert len(out[0].token_ids) == 5 and llm.engine.block_manager.num_used == 0
    with pytest.raises(ValueError, match=r"max_tokens: prompt \+ max_tokens = 10 tokens cannot fit"):
        llm.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=6), use_tqdm=False)


def test_an_id_reused_after_an_abort_does_not_receive_the_old_abort(tiny_llama):
    engine = make_llm(tiny_llama).engine
    engine.add_request([1, 2, 3], GREEDY, "x")
    engine.abort("x")
    engine.add_request([4, 5], GREEDY, "x")  # before its abort was reported
    events = engine.step()
    assert [(e.request_id, e.finished) for e in events] == [("x", False)]  # the new one's first token
    while engine.has_unfinished():
        events = engine.step()
    assert events[-1].finish_reason == "length" and engine.block_manager.num_used == 0


def test_a_generated_id_skips_one_the_caller_already_uses(tiny_llama):
    engine = make_llm(tiny_llama, policy="static", max_num_seqs=2).engine
    mine = engine.add_request([1, 2, 3], GREEDY, "req-0")
    auto = engine.add_request([4, 5, 6], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    assert auto.request_id != "req-0" and engine.seqs["req-0"] is mine
    late = engine.add_request([7, 8, 9], GREEDY, "late")
    while engine.has_unfinished():
        engine.step(flush=True)
    # with one id for two requests, the first to finish ended the static batch: "late" joined it
    assert late.first_scheduled_s >= mine.finish_s
    assert engine.block_manager.num_used == 0


def test_a_generated_id_skips_a_just_aborted_one(tiny_llama):
    engine = make_llm(tiny_llama).engine
    engine.add_request([1, 2, 3], GREEDY, "req-0")
    engine.abort("req-0")
    assert engine.add_request([4, 5]).request_id != "req-0"
    assert ("req-0", "abort") in [(e.request_id, e.finish_reason) for e in engine.step()]


@pytest.mark.parametrize("kwargs, message", [
    (dict(enable_prefix_caching="false"), "enable_prefix_caching: must be True or False, got 'false'"),
    (dict(enable_chunked_prefill=1), "enable_chunked_prefill: must be True or False, got 1"),
    (dict(static_batch_timeout_s=float("nan")), "static_batch_timeout_s: must be a finite number >= 0, got nan"),
    (dict(static_batch_timeout_s="1"), "static_batch_timeout_s: must be a finite number >= 0, got '1'"),
    (dict(kv_cache_memory_gib=float("inf")), "kv_cache_memory_gib: must be a finite number > 0, got inf"),
])
def test_engine_config_rejects_wrong_types_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EngineConfig(**kwargs)


def test_engine_config_takes_numpy_integers_as_plain_ints():
    import numpy as np

    # a sweep over np.arange used to fail with "must be an integer >= 1, got np.int64(8)"
    config = EngineConfig(max_num_seqs=np.int64(8), block_size=np.int32(4), num_blocks=np.int64(64),
                          max_model_len=np.int64(128), max_num_batched_tokens=np.int64(256))
    values = (config.max_num_seqs, config.block_size, config.num_blocks, config.max_model_len,
              config.max_num_batched_tokens)
    assert values == (8, 4, 64, 128, 256) and all(type(v) is int for v in values)
    with pytest.raises(ValueError, match=re.escape("max_num_seqs: must be an integer >= 1, got np.int64(0)")):
        EngineConfig(max_num_seqs=np.int64(0))
    with pytest.raises(ValueError, match="block_size: must be an integer >= 1, got True"):
        EngineConfig(block_size=True)


def test_engine_leaves_the_callers_config_alone(tiny_llama):
    from lab.engine.config import EngineConfig
    from lab.engine.engine import Engine

    llm = make_llm(tiny_llama)
    shared = EngineConfig(max_num_seqs=2)  # max_model_len None: the engine fills in the model's limit
    engine = Engine(llm.engine.runner.model, llm.engine.model_config, llm.tokenizer, shared,
                    llm.engine.device, torch.float32)
    assert engine.config.max_model_len == llm.engine.model_config.max_position_embeddings
    assert shared.max_model_len is None  # a simulation given the same config keeps its own default


def test_a_numpy_seed_samples_like_the_same_int_and_queues_all_or_none(tiny_llama):
    import numpy as np

    llm = make_llm(tiny_llama)
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=np.int64(7), ignore_eos=True)
    expected = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True),
                            use_tqdm=False)[0].token_ids
    # torch.Generator.manual_seed rejects numpy ints: the request failed when queued, after the batch's
    # earlier prompts were already in the engine
    outs = llm.generate([[4, 5], [1, 2, 3]], [GREEDY, params], use_tqdm=False)
    assert outs[1].token_ids == expected
    assert not llm.engine.has_unfinished() and llm.engine.block_manager.num_used == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed="x"), "seed: must be an integer in [-2**63, 2**63 - 1], got 'x'"),
    (dict(seed=2**64), "seed: must be an integer in [-2**63, 2**63 - 1], got 18446744073709551616"),
    (dict(model=123), "model: must be a model folder (str or Path) or None for the bundled model, got int"),
])
def test_llm_seed_and_model_rejected_with_the_field_named(tiny_llama, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LLM(**({"model": tiny_llama} | kwargs), device="cpu")


def test_a_non_finite_arrival_rejected(tiny_llama):
    # a NaN arrival never reaches the static batch timeout: a server (which never flushes) would hang
    engine = make_llm(tiny_llama, policy="static").engine
    for bad in (float("nan"), "0"):
        with pytest.raises(ValueError, match="arrival_s: must be a finite number"):
            engine.add_request([1, 2], GREEDY, arrival_s=bad)
    assert not engine.has_unfinished()


def test_run_workload_checks_every_request_before_the_first_arrives(tiny_llama):
    llm = make_llm(tiny_llama)  # max_position_embeddings = 256
    wl = Workload([RequestSpec("ok", prompt_len=5, output_len=4),
                   RequestSpec("too-long", arrival_s=0.05, prompt_len=300, output_len=4)])
    with pytest.raises(ValueError, match=r"request too-long: prompt: 300 tokens .*max_model_len=256"):
        llm.run_workload(wl, progress=False)
    # before: the error came at its arrival, with "ok" already running and left in the engine
    assert not llm.engine.has_unfinished() and not llm.engine.trace
    llm.engine.add_request([1, 2], GREEDY, "busy")
    with pytest.raises(ValueError, match="request busy: request_id: 'busy' is already in flight"):
        llm.run_workload(Workload([RequestSpec("busy", prompt_len=3, output_len=2)]), progress=False)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_generation_without_a_cache_gives_the_cached_tokens_for_quadratic_work(tiny_models, arch):
    llm = make_llm(tiny_models[arch])
    prompt, n = [5, 6, 7, 8, 9], 12
    tokens, computed = generate_without_cache(llm, prompt, n)
    cached = llm.generate([prompt], SamplingParams(max_tokens=n, temperature=0), use_tqdm=False)[0]
    assert tokens == cached.token_ids
    assert computed == sum(len(prompt) + i for i in range(n))  # the whole prefix at every step
    with pytest.raises(ValueError, match="max_tokens"):
        generate_without_cache(llm, prompt, 0)


def test_generation_without_a_cache_stops_at_the_context_as_the_engine(tiny_models):
    """It ran on to max_tokens, past the context the engine stops at (for GPT-2, whose positions are a
    learned table, an index beyond it); at max_model_len=16 the engine makes 6 tokens after 10."""
    llm = make_llm(tiny_models["llama"], max_model_len=16)
    prompt = list(range(1, 11))
    tokens, _ = generate_without_cache(llm, prompt, 50)
    cached = llm.generate([prompt], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True), use_tqdm=False)[0]
    assert len(tokens) == len(cached.token_ids) == 6 and cached.finish_reason == "length"
    assert tokens == cached.token_ids
