"""GPT-2 in the engine: greedy tokens identical to transformers under both policies, with chunked
prefill and preemption forced; checkpoint names and the Conv1D layout handled by the loader.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lab.engine import LLM, SamplingParams
from lab.engine.loader import load_model
from lab.engine.model import ModelConfig
from tests.conftest import hf_greedy, make_hf_model

PROMPT_LENS = (1, 2, 5, 9, 14, 20, 31, 45, 60)
MAX_TOKENS = 20

MODES = {
    "chunked_prefill": dict(max_num_batched_tokens=16, max_num_seqs=9),  # prompts > 16 need 2-4 chunks
    "preemption": dict(num_blocks=24, block_size=4, max_num_seqs=9),  # 9 requests want ~60 blocks
    "both": dict(max_num_batched_tokens=16, max_num_seqs=9, num_blocks=24, block_size=4),
}


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return make_hf_model(tmp_path_factory.mktemp("gpt2") / "gpt2", "gpt2")


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(2)
    return [torch.randint(0, 96, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def reference(gpt2_folder, prompts):
    return hf_greedy(gpt2_folder, prompts, MAX_TOKENS)


@pytest.mark.parametrize("policy", ["continuous", "static"])
@pytest.mark.parametrize("mode", list(MODES))
def test_gpt2_greedy_matches_transformers(gpt2_folder, prompts, reference, policy, mode):
    llm = LLM(gpt2_folder, device="cpu", dtype="float32", policy=policy, **MODES[mode])
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == reference
    trace = llm.engine.trace
    if "max_num_batched_tokens" in MODES[mode]:
        assert max(s.num_tokens for s in trace) <= 16
        longest = outs[-1].request_id
        assert any(rid == longest and 1 < n < len(prompts[-1]) for s in trace for rid, n in s.batch), (
            "the longest prompt must be prefilled in chunks")
    if "num_blocks" in MODES[mode]:
        assert sum(s.num_preempted for s in trace) > 0, "the pressure setting must really preempt"
    assert llm.engine.block_manager.num_used == 0


def test_dense_logits_match_and_old_checkpoint_names(gpt2_folder, tmp_path):
    """Dense mode (meta=None) equals transformers' forward; an old-style checkpoint (no
    'transformer.' prefix, attention-mask buffers, Conv1D layout) loads to the same weights."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(gpt2_folder, dtype=torch.float32).eval()
    x = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(x).logits

    tensors = load_file(gpt2_folder / "model.safetensors")
    old = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    old["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 256, 256))  # a buffer old checkpoints carry
    (tmp_path / "config.json").write_bytes((gpt2_folder / "config.json").read_bytes())
    save_file(old, tmp_path / "model.safetensors")

    for folder in (gpt2_folder, tmp_path):
        model, config, _ = load_model(folder, torch.device("cpu"), torch.float32)
        assert config.arch == "gpt2" and config.num_kv_heads == config.num_heads == 4
        with torch.no_grad():
            got = model.compute_logits(model(x))
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_gpt2_config_fields_and_errors():
    base = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 50, "n_embd": 32, "n_layer": 2, "n_head": 4,
            "n_positions": 128, "eos_token_id": 7}
    c = ModelConfig.from_hf(base)
    assert (c.head_dim, c.intermediate_size, c.max_position_embeddings, c.eos_token_ids) == (8, 128, 128, (7,))
    assert c.tie_word_embeddings and c.hidden_act == "gelu_new"
    with pytest.raises(ValueError, match="activation_function: 'swish'.*allowed"):
        ModelConfig.from_hf(base | {"activation_function": "swish"})
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        ModelConfig.from_hf(base | {"scale_attn_by_inverse_layer_idx": True})
