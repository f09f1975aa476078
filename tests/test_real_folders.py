"""What real Hugging Face folders carry beyond weights, read as transformers and vLLM read it: every
end-of-sequence id, chat templates in all their forms and jinja features, special tokens from either
file, a BOS the template already wrote, the first output token's leading space (SentencePiece)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lab.engine import LLM, SamplingParams
from lab.engine.loader import resolve_dtype
from lab.engine.tokenizer import Tokenizer
from lab.server import serve
from tests.conftest import hf_greedy, make_hf_model

WORDS = ["Hello", "world", "the", "cat", "sat", "on", "mat", "and", "dog", "ran"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
MESSAGES = [{"role": "user", "content": "Hello <b>café</b>"}]


def sentencepiece_like(folder: Path) -> Path:
    """A word vocabulary in SentencePiece's style: every token starts with ▁, the decoder drops the
    space of the first token it decodes, and a BOS is added to every encoding."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS + [f"▁{w}" for w in WORDS])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    hf.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf.add_special_tokens(SPECIALS)
    hf.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory) -> Path:
    folder = make_hf_model(tmp_path_factory.mktemp("sp") / "m", "llama", vocab_size=len(SPECIALS) + len(WORDS),
                           with_tokenizer=False)
    return sentencepiece_like(folder)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def test_first_output_token_keeps_its_leading_space(sp_folder):
    llm = LLM(sp_folder, device="cpu")
    tok = llm.tokenizer
    prompts = ["Hello world", "the cat sat"]
    outs = llm.generate(prompts, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True), use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == [tok.encode(p) for p in prompts]  # one output per prompt
    for out in outs:
        prompt = out.prompt_token_ids
        in_context = tok.decode(prompt + out.token_ids)[len(tok.decode(prompt)):]
        assert out.text == in_context and out.text.startswith(" ")  # " cat sat", not "cat sat"


def test_every_end_of_sequence_id_stops(tmp_path):
    folder = make_hf_model(tmp_path / "m", "llama", vocab_size=len(SPECIALS) + len(WORDS), with_tokenizer=False)
    sentencepiece_like(folder)
    write_json(folder / "config.json", json.loads((folder / "config.json").read_text()) | {"eos_token_id": 2})
    write_json(folder / "generation_config.json", {"eos_token_id": [2, 7]})  # an end-of-turn id too
    write_json(folder / "tokenizer_config.json", {"eos_token": "<pad>"})  # and the tokenizer's own (id 3)
    assert LLM(folder, device="cpu").engine.model_config.eos_token_ids == (2, 7, 3)


def _llama_with_generation_config(tmp_path: Path, tiny_models, generation_config: dict) -> Path:
    """A copy of the tiny Llama folder with this generation_config.json."""
    folder = tmp_path / "m"
    folder.mkdir()
    for f in tiny_models["llama"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    write_json(folder / "generation_config.json", generation_config)
    return folder


def test_generation_config_sampling_defaults_apply_where_a_request_is_silent(tmp_path, tiny_models):
    # vLLM's --generation-config auto: the folder's temperature / top_p / top_k fill what a request
    # leaves out; values equal to transformers' own defaults (top_k 50) recommend nothing
    folder = _llama_with_generation_config(tmp_path, tiny_models, {"temperature": 0.0, "top_k": 50, "top_p": 1.0})
    llm = LLM(folder, device="cpu")
    assert llm.sampling_defaults == {"temperature": 0.0}
    greedy = llm.generate(["Hello"], SamplingParams(max_tokens=16, temperature=0), use_tqdm=False)[0].text
    assert llm.generate(["Hello"], use_tqdm=False)[0].text == greedy  # no params: the folder's
    with serve(llm=llm) as server:
        def complete(**kw) -> str:
            r = httpx.post(server.url + "/completions", timeout=60,
                           json={"model": server.model_name, "prompt": "Hello", "max_tokens": 16, **kw})
            return r.json()["choices"][0]["text"]

        assert complete(seed=1) == complete(seed=2) == greedy  # silent on temperature: greedy
        assert {complete(temperature=1.0, seed=s) for s in (1, 2, 3)} != {greedy}  # said: honoured
    write_json(folder / "generation_config.json", {"temperature": -1})
    with pytest.raises(ValueError, match="model: generation_config.json: temperature: must be"):
        LLM(folder, device="cpu")
    # the config loader read the file first and failed with json's bare error, naming no file
    (folder / "generation_config.json").write_text('{"temperature": 0.7,}')
    with pytest.raises(ValueError, match=r"model: .*generation_config.json is not valid JSON"):
        LLM(folder, device="cpu")
    write_json(folder / "generation_config.json", [{"temperature": 0.7}])
    with pytest.raises(ValueError, match=r"model: .*generation_config.json must hold a JSON object, got list"):
        LLM(folder, device="cpu")
    (folder / "generation_config.json").unlink()
    assert (folder / "tokenizer.json").exists()
    for name in ("config.json", "tokenizer_config.json"):  # every JSON file of the folder alike
        good = (folder / name).read_text() if (folder / name).exists() else None
        (folder / name).write_text('{"a": 1')
        with pytest.raises(ValueError, match=rf"model: .*{name} is not valid JSON"):
            LLM(folder, device="cpu")
        if good is None:
            (folder / name).unlink()
        else:
            (folder / name).write_text(good)


@pytest.mark.parametrize("name, template, files", [
    ("bos in the template", "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}", {}),
    ("named templates", [{"name": "default", "template": "{% for m in messages %}D {{ m.content }}{% endfor %}"},
                         {"name": "tool_use", "template": "T"}], {}),
    ("tojson", "{{ messages[0].content | tojson }}", {}),
    ("loop controls", "{% for m in messages %}{{ m.content }}{% break %}{% endfor %}", {}),
    ("generation block", "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
     {}),
    ("pad and unk tokens", "{{ messages[0].content }}{{ pad_token }}{{ unk_token }}", {}),
    ("bos only in special_tokens_map", "{{ bos_token }}{{ messages[0].content }}",
     {"special_tokens_map.json": {"bos_token": "<s>"}}),
    ("chat_template.jinja wins", "OLD {{ messages[0].content }}", {"chat_template.jinja": "NEW {{ messages[0].content }}"}),
    ("tools and documents are none", "{% if tools is not none %}TOOLS {% endif %}{% if documents is not none %}DOCS "
     "{% endif %}{{ messages[0].content }}", {}),
])
def test_chat_templates_render_as_transformers_renders_them(tmp_path, sp_folder, name, template, files):
    from transformers import AutoTokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((sp_folder / "tokenizer.json").read_bytes())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "eos_token": "</s>",
              "pad_token": "<pad>", "unk_token": "<unk>"}
    if name != "bos only in special_tokens_map":
        config["bos_token"] = "<s>"
    write_json(folder / "tokenizer_config.json", config)
    for filename, content in files.items():
        if filename.endswith(".json"):
            write_json(folder / filename, content)
        else:
            (folder / filename).write_text(content)
    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(MESSAGES, tokenize=False,
                                                                         add_generation_prompt=True)
    assert Tokenizer.from_folder(folder).apply_chat_template(MESSAGES) == expected


def test_chat_prompt_gets_one_bos_over_http(tmp_path, sp_folder):
    from transformers import AutoTokenizer

    folder = tmp_path / "m"
    folder.mkdir()
    for f in sp_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                                  "eos_token": "</s>", "chat_template": template})
    messages = [{"role": "user", "content": "the cat sat"}]
    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, tokenize=True,
                                                                         add_generation_prompt=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected  # a BatchEncoding in v5
    with serve(llm=LLM(folder, device="cpu")) as server:
        r = httpx.post(server.url + "/chat/completions", timeout=60,
                       json={"model": server.model_name, "messages": messages, "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == len(expected)  # <s> once, not twice


def test_sharded_index_ignores_stray_weight_files(tmp_path, tiny_models):
    import shutil

    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    write_json(folder / "model.safetensors.index.json",
               {"weight_map": {"x": "model-00001-of-00001.safetensors"}})
    save_file({"stray.weight": torch.zeros(1)}, folder / "old-export.safetensors")  # not in the index
    prompts = [[1, 2, 3]]
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    assert (LLM(folder, device="cpu").generate(prompts, params, use_tqdm=False)[0].token_ids
            == LLM(tiny_models["llama"], device="cpu").generate(prompts, params, use_tqdm=False)[0].token_ids)


def test_config_without_architectures_goes_by_model_type(tmp_path):
    folder = make_hf_model(tmp_path / "g", "gpt2")
    config = json.loads((folder / "config.json").read_text())
    config.pop("architectures")
    write_json(folder / "config.json", config)
    assert LLM(folder, device="cpu").engine.model_config.arch == "gpt2"


def test_auto_dtype_keeps_a_float16_checkpoint_on_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda, "float16") == torch.float16  # as vLLM: not converted to bfloat16
    assert resolve_dtype("auto", cuda, "bfloat16") == torch.bfloat16
    assert resolve_dtype("auto", cuda, "float32") == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu"), "float16") == torch.float32


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_tied_checkpoint_that_stores_only_the_head_loads(tmp_path, arch):
    """safetensors' save_model keeps one name per shared tensor, and for a tied model that name is
    lm_head.weight; transformers loads such a folder into the embedding, and so must we."""
    from safetensors.torch import load_file, save_model
    from transformers import AutoModelForCausalLM

    folder = make_hf_model(tmp_path / "m", arch)
    save_model(AutoModelForCausalLM.from_pretrained(folder), str(folder / "model.safetensors"))
    assert "lm_head.weight" in load_file(folder / "model.safetensors")
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    outs = LLM(folder, device="cpu").generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == hf_greedy(folder, prompts, 6)


@pytest.mark.parametrize("name, rows", [("model.layers.0.self_attn.q_proj.weight", 32), ("model.norm.weight", 1)])
def test_weight_of_the_wrong_shape_is_named(tmp_path, tiny_models, name, rows):
    """A [1] norm weight would broadcast into [64] and load silently; transformers refuses both."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], folder)
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = tensors[name][:rows].clone()
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{name}.*shape"):
        LLM(folder, device="cpu")


ROPE_SCALINGS = {  # original context 64 puts this head size's frequencies in all three llama3 bands
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "linear": {"rope_type": "linear", "factor": 4.0},
}


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_scaled_rope_matches_transformers(tmp_path, kind, key):
    """Llama 3.x checkpoints stretch RoPE's frequencies ("llama3"); older long-context ones divide
    them ("linear"). Both config spellings: `rope_scaling` (before transformers 5) and `rope_parameters`."""
    import torch

    folder = make_hf_model(tmp_path / "m", "llama", rope_scaling=ROPE_SCALINGS[kind])
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_scaling", None), config.pop("rope_parameters", None)
    config[key] = ROPE_SCALINGS[kind] | ({"rope_theta": 5000.0} if key == "rope_parameters" else {})
    write_json(folder / "config.json", config)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 96, (n,), generator=g).tolist() for n in (5, 40, 90)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ours = [o.token_ids for o in LLM(folder, device="cpu").generate(prompts, params, use_tqdm=False)]
    assert ours == hf_greedy(folder, prompts, 12)
    config.pop(key)  # the same weights with plain RoPE must answer differently, or this test proves nothing
    write_json(folder / "config.json", config | {"rope_theta": 5000.0})
    plain = [o.token_ids for o in LLM(folder, device="cpu").generate(prompts, params, use_tqdm=False)]
    assert plain != ours


@pytest.mark.parametrize("rope, message", [
    # the field the config holds is named: rope_scaling (before transformers 5), and its older "type"
    ({"rope_type": "yarn", "factor": 4.0}, r"rope_scaling.rope_type: 'yarn' is not supported; allowed: 'default', 'linear', 'llama3'"),
    ({"type": "dynamic", "factor": 2.0}, r"rope_scaling.type: 'dynamic' is not supported"),
    ({"rope_type": "linear"}, r"rope_scaling.factor: must be a positive number"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 64}, r"rope_scaling.high_freq_factor: must be above low_freq_factor"),
    ({"rope_type": "default", "partial_rotary_factor": 0.5}, r"rope_scaling.partial_rotary_factor: 0.5"),
])
def test_unsupported_rope_settings_are_named(tmp_path, tiny_models, rope, message):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters", None)
    write_json(folder / "config.json", config | {"rope_scaling": rope})
    with pytest.raises(ValueError, match=message):
        LLM(folder, device="cpu")


def test_a_folders_repetition_penalty_and_min_p_apply(tmp_path, tiny_models):
    # Qwen2.5's generation_config.json: repetition_penalty was dropped unseen, and min_p would have been too
    folder = _llama_with_generation_config(tmp_path, tiny_models,
                                           {"temperature": 0.0, "repetition_penalty": 1.5, "min_p": 0.05})
    llm = LLM(folder, device="cpu")
    assert llm.sampling_defaults == {"temperature": 0.0, "repetition_penalty": 1.5, "min_p": 0.05}
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]

    def tokens(params=None) -> list[int]:  # 16 tokens: generate's default max_tokens
        return llm.generate([prompt], params, use_tqdm=False)[0].token_ids

    penalised = tokens(SamplingParams(max_tokens=16, temperature=0, repetition_penalty=1.5))
    assert penalised != tokens(SamplingParams(max_tokens=16, temperature=0))
    assert tokens() == penalised  # no params: the folder's
    with serve(llm=llm) as server:
        def complete(**kw) -> str:
            r = httpx.post(server.url + "/completions", timeout=60,
                           json={"model": server.model_name, "prompt": prompt, "max_tokens": 16, **kw})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        assert complete() == complete(repetition_penalty=1.5) != complete(repetition_penalty=1.0)
        for name, bad in (("repetition_penalty", 0), ("min_p", 1.5)):
            r = httpx.post(server.url + "/completions", timeout=60,
                           json={"model": server.model_name, "prompt": prompt, name: bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == name
        # min_p near 1 keeps only the top token: a sampled request answers as greedy (it was refused)
        assert complete(temperature=1.0, seed=3, min_p=0.999999) == complete()


def test_generation_configs_eos_ids_replace_config_jsons(tmp_path):
    # as transformers and vLLM read them: config.json's id stopped generation where theirs ran on
    folder = make_hf_model(tmp_path / "m", "llama", vocab_size=len(SPECIALS) + len(WORDS), with_tokenizer=False)
    write_json(folder / "config.json", json.loads((folder / "config.json").read_text()) | {"eos_token_id": 9})
    write_json(folder / "generation_config.json", {"eos_token_id": [2, 7]})
    assert LLM(folder, device="cpu").engine.model_config.eos_token_ids == (2, 7)
    (folder / "generation_config.json").unlink()
    assert LLM(folder, device="cpu").engine.model_config.eos_token_ids == (9,)
