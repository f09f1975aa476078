"""A tiny random Llama with a character-level tokenizer and a chat template, for server tests
(the bundled model may still be training); built once per session into a temp folder.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CHARS = string.printable  # digits, letters, punctuation, whitespace: 100 characters
EOS = "<eos>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_llama(folder: Path, max_position_embeddings: int = 256, seed: int = 0) -> Path:
    """HF Llama layout written directly (config.json + model.safetensors): no transformers import,
    which alone costs seconds here; transformers loads the folder as a LlamaForCausalLM."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {EOS: 0} | {c: i + 1 for i, c in enumerate(CHARS)}
    # BPE without merges = one token per character; Fuse joins them back on decode
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.add_special_tokens([EOS])
    tok.decoder = decoders.Fuse()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": EOS, "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    hidden, inter, layers, heads, kv_heads = 64, 128, 2, 4, 2
    head_dim = hidden // heads
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(vocab),
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
              "max_position_embeddings": max_position_embeddings, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False,
              "torch_dtype": "float32", "attention_bias": False, "mlp_bias": False}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    weights = {"model.embed_tokens.weight": rand(len(vocab), hidden, scale=1.0),
               "model.norm.weight": torch.ones(hidden),
               # large logits: few near-ties, so greedy decoding does not flip on rounding noise
               "lm_head.weight": rand(len(vocab), hidden, scale=2.0)}
    for i in range(layers):
        p = f"model.layers.{i}."
        weights |= {p + "self_attn.q_proj.weight": rand(hidden, hidden), p + "self_attn.o_proj.weight": rand(hidden, hidden),
                    p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "mlp.gate_proj.weight": rand(inter, hidden), p + "mlp.up_proj.weight": rand(inter, hidden),
                    p + "mlp.down_proj.weight": rand(hidden, inter),
                    p + "input_layernorm.weight": torch.ones(hidden), p + "post_attention_layernorm.weight": torch.ones(hidden)}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


_cache: dict[str, object] = {}


def tiny_model_dir() -> Path:
    """Built once per test session (a plain cache: a fixture imported into several modules would
    run once per module)."""
    if "dir" not in _cache:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="lab-server-test-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _cache["dir"] = build_tiny_llama(root / "tiny-llama")
    return _cache["dir"]


def tiny_llm(name: str = "main"):
    """Engines for the whole session, by name: a server owns its engine while it runs, so a test that
    starts a second server while a module's server is up uses another one ("aux")."""
    if name not in _cache:
        from lab.engine import LLM

        _cache[name] = LLM(model=tiny_model_dir(), device="cpu", dtype="float32", num_blocks=512,
                            max_num_seqs=64, max_num_batched_tokens=2048)
    return _cache[name]


def wait_until(predicate, timeout_s: float = 5.0, interval_s: float = 0.01) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
