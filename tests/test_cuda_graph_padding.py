"""Decode steps padded to recorded shapes (lab.engine.cuda_graph), checked on the CPU with
`capture=False`: the same padded forward a CUDA graph records, run eagerly. The replay itself needs a
GPU; those tests skip without one.
"""

from __future__ import annotations

import pytest
import torch

from lab.engine import LLM, SamplingParams
from lab.engine.config import EngineConfig
from lab.engine.cuda_graph import bucket
from tests.conftest import make_hf_model

GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
PROMPT_LENS = (1, 3, 7, 12, 20, 33, 41, 58, 64)  # 9 sequences: a batch of 9 pads to 16


def prompts(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (n,), generator=g).tolist() for n in PROMPT_LENS]


def padded_llm(folder, max_batch=16, max_width=64, **kw):
    llm = LLM(folder, device="cpu", dtype="float32", cuda_graphs=True, **kw)  # the scratch block, no graphs
    llm.engine.runner.use_decode_graphs(max_batch, max_width, capture=False)
    return llm


def recorded_shapes_are_buckets(llm) -> bool:
    """Every recorded (batch, width) is a power of two or the cap: shapes are shared, not one per step."""
    graphs = llm.engine.runner.decode_graphs

    def ok(n, cap):
        return n == cap or (n & (n - 1) == 0 and n < cap)
    return all(ok(b, graphs.max_batch) and ok(w, graphs.max_width) for b, w in graphs.graphs)


def test_bucket_rounds_up_to_a_power_of_two_within_the_cap():
    assert [bucket(n, 64) for n in (1, 2, 3, 5, 16, 17, 64)] == [1, 2, 4, 8, 16, 32, 64]
    assert bucket(40, 48) == 48  # the cap (max_num_seqs) is a shape of its own


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gpt2"])
@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_padded_decode_steps_give_the_plain_tokens(tiny_models, tmp_path, family, policy):
    folder = make_hf_model(tmp_path / "gpt2", "gpt2") if family == "gpt2" else tiny_models[family]
    # chunked prefill (a 16-token budget) and preemption (24 blocks of 4) mix eager and padded steps
    kw = dict(policy=policy, max_num_seqs=9, max_num_batched_tokens=16, num_blocks=24, block_size=4)
    plain = LLM(folder, device="cpu", dtype="float32", **kw).generate(prompts(), GREEDY, use_tqdm=False)
    llm = padded_llm(folder, **kw)
    outs = llm.generate(prompts(), GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    shapes = llm.engine.runner.decode_graphs.graphs
    assert shapes, "no decode step took the padded path"
    assert any(s.prefill_tokens == 0 and s.decode_seqs & (s.decode_seqs - 1) for s in llm.engine.trace), (
        "no decode-only step of a batch size that needs padding (3, 5, 6, 7 or 9)")
    assert recorded_shapes_are_buckets(llm)
    assert sum(s.num_preempted for s in llm.engine.trace) > 0
    assert llm.engine.block_manager.num_used == 0


def test_padding_rows_write_only_into_the_scratch_block(tiny_llama):
    llm = padded_llm(tiny_llama, num_blocks=32, block_size=4)
    llm.generate(prompts()[:3], GREEDY, use_tqdm=False)  # 3 decodes pad to 4: one padding row a step
    runner = llm.engine.runner
    cache = runner.model.attention_layers[0].k_cache
    assert cache.shape[0] == llm.engine.block_manager.num_blocks + 1  # the scratch block is never handed out
    assert runner.decode_graphs.scratch_slot == 32 * 4
    plain = LLM(tiny_llama, device="cpu", num_blocks=32, block_size=4).engine.runner.model.attention_layers[0]
    assert plain.k_cache.shape[0] == 32  # without graphs, no scratch block
    assert cache[-1, 0].abs().sum() > 0, "padding rows must have written their K into the scratch slot"
    assert any(batch == 4 for batch, _ in runner.decode_graphs.graphs)


def test_steps_wider_than_the_largest_shape_run_eagerly(tiny_llama):
    short = prompts()[:2]  # 1 and 3 tokens, 20 more each: contexts pass 16 tokens halfway through
    plain = LLM(tiny_llama, device="cpu", dtype="float32", block_size=4).generate(short, GREEDY, use_tqdm=False)
    llm = padded_llm(tiny_llama, max_batch=4, max_width=4, block_size=4)  # 4 blocks: 16 tokens of context
    outs = llm.generate(short, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    shapes = llm.engine.runner.decode_graphs.graphs
    assert shapes and all(batch <= 4 and width <= 4 for batch, width in shapes)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_shapes_at_caps_that_are_not_powers_of_two(tiny_models, tmp_path, family):
    folder = make_hf_model(tmp_path / "gpt2", "gpt2") if family == "gpt2" else tiny_models[family]
    # 6 sequences at most, and 20 tokens of context in blocks of 4: a width cap of 5 blocks
    kw = dict(max_num_seqs=6, block_size=4, max_model_len=20, num_blocks=40)
    short = prompts()[:1] + [p[:6] for p in prompts()[1:6]]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    plain = LLM(folder, device="cpu", dtype="float32", **kw).generate(short, params, use_tqdm=False)
    llm = padded_llm(folder, max_batch=6, max_width=5, **kw)
    outs = llm.generate(short, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    shapes = llm.engine.runner.decode_graphs.graphs
    assert any(b == 6 for b, _ in shapes) and any(w == 5 for _, w in shapes)  # each cap is a shape of its own
    assert recorded_shapes_are_buckets(llm)


def test_a_one_token_chunk_on_a_cached_prefix_pads_like_a_decode(tiny_llama):
    """A prompt that is a cached prefix plus one token enters as a 1-token step beside the decodes."""
    base, others = prompts(3)[3], prompts(4)[1:3]  # base: 12 tokens, 3 full blocks of 4
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    def run(llm):
        engine, out = llm.engine, {}
        llm.generate([base], params, use_tqdm=False)  # its full blocks go into the prefix cache
        engine.add_request(others[0], params, "a")
        engine.add_request(others[1], params, "b")
        engine.step()
        engine.step()
        engine.add_request(base + [7], params, "c")
        while engine.has_unfinished():
            for event in engine.step():
                out.setdefault(event.request_id, []).append(event.token_id)
        return out

    kw = dict(block_size=4, num_blocks=64, max_num_seqs=4, enable_prefix_caching=True)
    padded = padded_llm(tiny_llama, max_batch=4, **kw)
    graphs, calls = padded.engine.runner.decode_graphs, []
    real_run = graphs.run
    graphs.run = lambda *a: calls.append(len(a[0])) or real_run(*a)
    assert run(padded) == run(LLM(tiny_llama, device="cpu", dtype="float32", **kw))
    assert padded.engine.block_manager.prefix_hits >= len(base) // 4
    trace = padded.engine.trace
    entered = [s for s in trace if ("c", 1) in s.batch and s.prefill_tokens == 1]
    assert len(entered) == 1 and len(entered[0].batch) == 3, "c's last prompt token must join two decodes"
    # every step of one token per sequence on top of a cache went through the padded path, c's included
    one_token = [s for s in trace if all(n == 1 for _, n in s.batch) and all(c > 0 for c in s.computed)]
    assert entered[0] in one_token and len(calls) == len(one_token)


def test_cuda_graphs_must_be_a_bool():
    with pytest.raises(ValueError, match="cuda_graphs: must be True or False, got 'yes'"):
        EngineConfig(cuda_graphs="yes")


def test_a_cpu_engine_records_no_graphs_even_when_asked(tiny_llama, caplog):
    with caplog.at_level("WARNING", logger="lab.engine.engine"):
        llm = LLM(tiny_llama, device="cpu", cuda_graphs=True)
    assert llm.engine.runner.decode_graphs is None
    assert "cuda_graphs: CUDA graphs need a GPU; on cpu every step runs eagerly" in caplog.text


def test_padding_needs_the_scratch_block(tiny_llama):
    with pytest.raises(ValueError, match="cuda_graphs: the KV cache has no scratch block"):
        LLM(tiny_llama, device="cpu").engine.runner.use_decode_graphs(4, 8, capture=False)


def test_a_memory_budget_holds_the_scratch_block_too(tiny_llama):
    per_block = 2 * 2 * 16 * 2 * 16 * 4  # K and V x 2 layers x 16 tokens x 2 KV heads x 16 dims x float32
    gib = 0.001
    llm = LLM(tiny_llama, device="cpu", dtype="float32", kv_cache_memory_gib=gib, cuda_graphs=True)
    assert llm.engine.runner.model.attention_layers[0].k_cache.shape[0] == int(gib * 2**30 // per_block)
    assert llm.engine.block_manager.num_blocks == int(gib * 2**30 // per_block) - 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; this machine has none")
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cuda_graph_replay_gives_the_eager_tokens(tiny_models, family):
    kw = dict(device="cuda", dtype="float32", max_num_seqs=9, max_num_batched_tokens=16, num_blocks=24, block_size=4)
    eager = LLM(tiny_models[family], **kw)
    assert eager.engine.runner.decode_graphs is None  # off unless asked for
    graphed = LLM(tiny_models[family], cuda_graphs=True, **kw)
    outs = graphed.generate(prompts(), GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in eager.generate(prompts(), GREEDY, use_tqdm=False)]
    graphs = graphed.engine.runner.decode_graphs
    assert graphs is not None, "capture failed and the runner fell back to eager steps"
    assert graphs.graphs and all(g.graph is not None for g in graphs.graphs.values())
    assert graphed.engine.block_manager.num_used == 0


def test_the_simulator_counts_the_scratch_block_as_the_engine_does():
    from lab.sim import RooflineStepModel
    from lab.sim.simulate import _num_blocks

    step_model = RooflineStepModel(gpu="H100-SXM", model="qwen2.5-0.5b")
    plain = _num_blocks(EngineConfig(kv_cache_memory_gib=1.0), step_model, 4096)
    assert _num_blocks(EngineConfig(kv_cache_memory_gib=1.0, cuda_graphs=True), step_model, 4096) == plain - 1
