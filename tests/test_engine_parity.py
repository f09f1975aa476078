"""Greedy tokens identical to transformers' generate, under both policies and under pressure."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lab.engine import LLM, SamplingParams
from tests.conftest import hf_greedy, make_hf_model

PROMPT_LENS = (1, 3, 7, 12, 17, 26, 33, 40, 58)
MAX_TOKENS = 24

MODES = {
    "default": {},
    "chunked_prefill": dict(max_num_batched_tokens=16, max_num_seqs=8),  # long prompts need 2-4 chunks
    "preemption": dict(num_blocks=30, block_size=4, max_num_seqs=9),  # 9 requests want ~60 blocks
}


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 96, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def references(tiny_models, prompts):
    return {arch: hf_greedy(folder, prompts, MAX_TOKENS) for arch, folder in tiny_models.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("policy", ["continuous", "static"])
@pytest.mark.parametrize("mode", list(MODES))
def test_greedy_matches_transformers(tiny_models, prompts, references, arch, policy, mode):
    llm = LLM(tiny_models[arch], device="cpu", dtype="float32", policy=policy, **MODES[mode])
    outs = llm.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True), use_tqdm=False)
    assert [o.token_ids for o in outs] == references[arch]  # one output per prompt, in order
    trace = llm.engine.trace
    if mode == "chunked_prefill":
        assert max(s.num_tokens for s in trace) <= 16
        longest = outs[PROMPT_LENS.index(max(PROMPT_LENS))]
        chunks = [n for s in trace for rid, n in s.batch if rid == longest.request_id]
        prefill, done = [], 0
        for n in chunks:  # its chunks up to the whole prompt; the 1-token decodes follow
            if done >= len(longest.prompt_token_ids):
                break
            prefill.append(n)
            done += n
        assert sum(prefill) == max(PROMPT_LENS) and len(prefill) >= -(-max(PROMPT_LENS) // 16), (
            f"the longest prompt must be prefilled in several chunks of <= 16, got {prefill}")
    if mode == "preemption":
        assert sum(s.num_preempted for s in trace) > 0, "the pressure setting must really preempt"
    assert llm.engine.block_manager.num_used == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_decodes_attending_in_groups_match_transformers(tiny_models, prompts, references, arch, monkeypatch):
    """Groups of 4 decodes (the CPU default is 16): 9 sequences of different lengths, 3 groups a step."""
    from lab.engine import model_runner

    group_sizes = []

    class CountedGroup(model_runner.DecodeGroup):
        __slots__ = ()

        def __init__(self, rows, block_tables, mask):
            super().__init__(rows, block_tables, mask)
            group_sizes.append(len(rows))

    monkeypatch.setattr(model_runner, "CPU_DECODE_GROUP", 4)
    monkeypatch.setattr(model_runner, "DecodeGroup", CountedGroup)
    llm = LLM(tiny_models[arch], device="cpu", dtype="float32")
    outs = llm.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True), use_tqdm=False)
    assert [o.token_ids for o in outs] == references[arch]
    assert max(group_sizes) == 4 and group_sizes.count(1) > 0  # 9 decodes: groups of 4, 4 and 1


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_attention_bias_with_o_proj_bias_matches_transformers(tmp_path, prompts, arch):
    """Llama and Qwen3 with attention_bias=True give q/k/v *and* o_proj a bias. transformers
    initialises biases to zero, so they are set to random values here: a dropped bias must show."""
    folder = make_hf_model(tmp_path / arch, arch, seed=3, attention_bias=True)
    tensors = load_file(folder / "model.safetensors")
    g = torch.Generator().manual_seed(4)
    biases = [k for k in tensors if k.endswith("_proj.bias")]
    assert {k.split(".")[-2] for k in biases} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    for k in biases:
        tensors[k] = torch.randn(tensors[k].shape, generator=g) * 0.5
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    reference = hf_greedy(folder, prompts[:5], MAX_TOKENS)
    for policy in ("continuous", "static"):
        llm = LLM(folder, device="cpu", dtype="float32", policy=policy, max_num_batched_tokens=16, max_num_seqs=8)
        outs = llm.generate(prompts[:5], SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
                            use_tqdm=False)
        assert [o.token_ids for o in outs] == reference, policy
    layer = llm.engine.runner.model.model.layers[0].self_attn
    torch.testing.assert_close(layer.o_proj.bias, tensors["model.layers.0.self_attn.o_proj.bias"])


def test_llamafied_qwen_without_o_proj_bias_matches_transformers(tmp_path, prompts):
    """Llama-format copies of Qwen set attention_bias for their q/k/v biases but store no o_proj
    bias; transformers starts the missing bias at zero, and so must we (not refuse the folder)."""
    folder = make_hf_model(tmp_path / "llamafied", "llama", seed=5, attention_bias=True)
    tensors = load_file(folder / "model.safetensors")
    g = torch.Generator().manual_seed(6)
    for k in [k for k in tensors if k.endswith("_proj.bias")]:
        if k.endswith("o_proj.bias"):
            del tensors[k]
        else:
            tensors[k] = torch.randn(tensors[k].shape, generator=g) * 0.5
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    reference = hf_greedy(folder, prompts[:4], MAX_TOKENS)
    llm = LLM(folder, device="cpu", dtype="float32", max_num_batched_tokens=16, max_num_seqs=8)
    outs = llm.generate(prompts[:4], SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
                        use_tqdm=False)
    assert [o.token_ids for o in outs] == reference
    assert not llm.engine.runner.model.model.layers[0].self_attn.o_proj.bias.any()


@pytest.mark.parametrize("policy, mode", [("continuous", "default"), ("continuous", "preemption"), ("static", "default")])
def test_a_repetition_penalty_matches_transformers(tiny_models, prompts, references, policy, mode):
    # generation_config.json of Qwen2.5 models sets 1.05, which transformers applies even to greedy
    # decoding: dropped unseen, our tokens parted from theirs after a few
    folder = tiny_models["llama"]
    expected = hf_greedy(folder, prompts, MAX_TOKENS, repetition_penalty=1.5)
    assert expected != references["llama"]  # the penalty changes these outputs: the check below means something
    llm = LLM(folder, device="cpu", dtype="float32", policy=policy, **MODES[mode])
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True, repetition_penalty=1.5)
    assert [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == expected


def test_a_repetition_penalty_on_hand_made_logits():
    from lab.engine.sampler import apply_repetition_penalty, seen_token_ids
    from lab.engine.sequence import Sequence

    params = [SamplingParams(repetition_penalty=2.0), SamplingParams()]
    seq = Sequence("r", [0, 1, 1], params[0], 0.0)
    seen = seen_token_ids(seq, "cpu")
    assert sorted(seen.tolist()) == [0, 1]
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, params, [seen, None])
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]]  # seen: 2 / 2 and -1 * 2
    seq.output_token_ids += [3, 1]  # the ids kept on the sequence grow with its output, once each
    assert sorted(seen_token_ids(seq, "cpu").tolist()) == [0, 1, 3] and seq.seen_upto == 5


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1.2", None])
def test_a_repetition_penalty_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="repetition_penalty: must be a finite number > 0"):
        SamplingParams(repetition_penalty=bad)
