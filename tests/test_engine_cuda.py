"""The engine on CUDA: what the CPU suite checks, repeated where the GPU could differ — the GPT-2
family, preemption and chunked prefill under pressure, prefix caching, aborts, the bundled model —
each eager and with CUDA graphs for decode steps. Skipped on machines without CUDA (CI has none);
`make gpu-check` runs them.
"""

from __future__ import annotations

import pytest
import torch

from lab.engine import LLM, SamplingParams
from tests.conftest import hf_greedy, make_hf_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; this machine has none"),
]

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
PRESSURE = dict(num_blocks=24, block_size=4, max_num_seqs=8, max_num_batched_tokens=16)


@pytest.fixture(params=[False, True], ids=["eager", "cuda_graphs"])
def graphs(request) -> bool:
    return request.param


def random_prompts(lengths, seed=0, vocab=96):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_gpt2_on_cuda_matches_transformers_on_cuda(tmp_path, policy, graphs):
    folder = make_hf_model(tmp_path / "gpt2", "gpt2")
    prompts = random_prompts((1, 5, 14, 31, 45))
    llm = LLM(folder, device="cuda", cuda_graphs=graphs, dtype="float32", policy=policy, **PRESSURE)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == hf_greedy(folder, prompts, GREEDY.max_tokens, device="cuda")
    assert sum(s.num_preempted for s in llm.engine.trace) > 0, "the pressure setting must really preempt"
    assert llm.engine.block_manager.num_used == 0


def test_preemption_and_chunked_prefill_on_cuda_give_the_cpu_tokens(tiny_models, graphs):
    prompts = random_prompts((3, 9, 17, 26, 33, 40, 47, 60), seed=1)
    cpu = LLM(tiny_models["qwen3"], device="cpu", dtype="float32").generate(prompts, GREEDY, use_tqdm=False)
    gpu = LLM(tiny_models["qwen3"], device="cuda", cuda_graphs=graphs, dtype="float32", **PRESSURE)
    outs = gpu.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in cpu]
    trace = gpu.engine.trace
    assert sum(s.num_preempted for s in trace) > 0
    assert max(s.num_tokens for s in trace) <= PRESSURE["max_num_batched_tokens"]
    assert gpu.engine.block_manager.num_used == 0


def test_prefix_cache_on_cuda_hits_and_changes_nothing(tiny_llama, graphs):
    shared = list(range(1, 33))
    prompts = [shared + [40 + i, 50 + i] for i in range(6)]
    cached = LLM(tiny_llama, device="cuda", cuda_graphs=graphs, dtype="float32", block_size=4, enable_prefix_caching=True)
    first = cached.generate(prompts[:1], GREEDY, use_tqdm=False)  # fills the cache with the shared blocks
    rest = cached.generate(prompts[1:], GREEDY, use_tqdm=False)
    assert cached.engine.block_manager.prefix_hits >= 5 * (len(shared) // 4)
    plain = LLM(tiny_llama, device="cuda", cuda_graphs=graphs, dtype="float32", block_size=4, enable_prefix_caching=False)
    expected = plain.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in first + rest] == [o.token_ids for o in expected]


def test_abort_mid_run_on_cuda_frees_every_block(tiny_llama, graphs):
    llm = LLM(tiny_llama, device="cuda", cuda_graphs=graphs, dtype="float32", num_blocks=64, block_size=4)
    engine = llm.engine
    long = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
    for i in range(4):
        engine.add_request(list(range(1, 12 + i)), long, f"r{i}")
    for _ in range(5):
        engine.step()
    assert engine.block_manager.num_used > 0
    engine.abort("r1")
    engine.abort("r3")
    while engine.has_unfinished():
        engine.step()
    assert engine.block_manager.num_used == 0


def test_the_bundled_model_gives_the_cpu_greedy_tokens_on_cuda_in_float32(graphs):
    params = SamplingParams(max_tokens=64, temperature=0)
    prompts = ["ROMEO:", "JULIET:\nO Romeo, Romeo!"]
    gpu = LLM(device="cuda", cuda_graphs=graphs, dtype="float32").generate(prompts, params, use_tqdm=False)
    cpu = LLM(device="cpu").generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in gpu] == [o.token_ids for o in cpu]


def test_auto_dtype_on_cuda_is_bfloat16_and_starts_like_float32(graphs):
    llm = LLM(device="cuda", cuda_graphs=graphs)  # dtype "auto": bfloat16 on a GPU that has it, as vLLM chooses
    assert next(llm.engine.runner.model.parameters()).dtype == torch.bfloat16
    params = SamplingParams(max_tokens=64, temperature=0)
    half = llm.generate(["ROMEO:"], params, use_tqdm=False)[0]
    full = LLM(device="cpu").generate(["ROMEO:"], params, use_tqdm=False)[0]
    assert half.text and len(half.token_ids) >= 8
    # bfloat16 rounds differently, so a near-tie can flip a later greedy pick (seen at token 49 on an
    # H100); the opening stays the same unless the half-precision path is wrong
    assert half.token_ids[:8] == full.token_ids[:8]
