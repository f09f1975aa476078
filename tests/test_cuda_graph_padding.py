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
    llm = LLM(folder, device="cpu", dtype="float32", **kw)
    llm.engine.runner.use_decode_graphs(max_batch, max_width, capture=False)
    return llm


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
    assert sum(s.num_preempted for s in llm.engine.trace) > 0
    assert llm.engine.block_manager.num_used == 0


def test_padding_rows_write_only_into_the_scratch_block(tiny_llama):
    llm = padded_llm(tiny_llama, num_blocks=32, block_size=4)
    llm.generate(prompts()[:3], GREEDY, use_tqdm=False)  # 3 decodes pad to 4: one padding row a step
    runner = llm.engine.runner
    cache = runner.model.attention_layers[0].k_cache
    assert cache.shape[0] == llm.engine.block_manager.num_blocks + 1  # the scratch block is never handed out
    assert runner.decode_graphs.scratch_slot == 32 * 4
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


def test_cuda_graphs_must_be_a_bool():
    with pytest.raises(ValueError, match="cuda_graphs: must be True or False, got 'yes'"):
        EngineConfig(cuda_graphs="yes")


def test_a_cpu_engine_records_no_graphs_even_when_asked(tiny_llama):
    assert LLM(tiny_llama, device="cpu", cuda_graphs=True).engine.runner.decode_graphs is None


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
