"""The bundled tiny-shakespeare model: it loads in transformers and generates the same greedy tokens
there, its card's validation loss holds on a slice of the held-out text, and it writes play-shaped text.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from lab.engine import LLM, SamplingParams
from lab.engine.loader import bundled_model_dir, data_dir, load_model

FOLDER = bundled_model_dir()
PROMPTS = ["ROMEO:", "First Citizen:\nWe are accounted poor", "KING RICHARD III:\nNow is the", "O"]
# frequent words of the plays; a random or barely trained model almost never spells them
COMMON = set("""a about all am an and any are art as at away be but by come did do done doth for from give go
good grace had hath have he hear heart her here him his how i if in is it king know let life like lord love
made make man may me more my myself no nor not now o of on one or our out queen say see shall she sir so
some speak such sweet take than that the thee their them then there these they this those thou thus thy
till to too tell upon us was we well what when where which while who why will with would yet you your
death blood heaven father son brother god fair night day time great noble""".split())


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def record():
    return json.loads((FOLDER / "training.json").read_text())


def test_folder_is_complete_and_small(record):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (FOLDER / name).stat().st_size < 10 * 2**20, name
    cfg = json.loads((FOLDER / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["max_position_embeddings"] >= 256
    assert record["val_loss"] <= 1.50
    card = (FOLDER / "README.md").read_text()
    assert f"{record['val_loss']:.4f} nats/char" in card and record["command"] in card
    assert f"{record['parameters']:,}" in card


def test_folder_total_size_is_at_most_10_mb():
    sizes = {p.name: p.stat().st_size for p in FOLDER.rglob("*") if p.is_file()}
    assert "model.safetensors" in sizes
    assert sum(sizes.values()) <= 10_000_000, sizes


def test_card_names_its_data_and_context_length():
    card = (FOLDER / "README.md").read_text()
    context = json.loads((FOLDER / "config.json").read_text())["max_position_embeddings"]
    assert "tinyshakespeare" in card and "data/corpus/tinyshakespeare.txt" in card
    rows = [line for line in card.splitlines() if "context length" in line.lower()]
    assert rows, "the card has no context-length line"
    assert any(re.search(rf"\b({context}|{context:,})\b", r) for r in rows), (context, rows)


def test_bundled_tokenizer_round_trips_the_whole_corpus():
    from lab.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(FOLDER)  # the bundled tokenizer.json
    files = sorted((data_dir() / "corpus").glob("*.txt"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        ids = tok.encode(text)
        assert len(ids) == len(text), path.name  # one token per character
        assert tok.decode(ids) == text, path.name


def test_greedy_matches_transformers(llm):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(FOLDER / "tokenizer.json"), clean_up_tokenization_spaces=False)
    hf = LlamaForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=50, temperature=0), use_tqdm=False)
    assert len(outs) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == out.prompt_token_ids
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=50, do_sample=False)
        assert out.token_ids == ref[0, ids.shape[1]:].tolist(), prompt
        assert out.text == hf_tok.decode(out.token_ids)


def test_card_validation_loss_on_a_held_out_slice(record):
    """80 windows of 256 characters (~20k of the 111,540 held-out ones), spread evenly over the
    last 10% of the corpus, scored with the engine's model in dense mode."""
    text = (data_dir() / "corpus" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    model, _, tok = load_model(FOLDER, torch.device("cpu"), torch.float32)
    val = torch.tensor(tok.encode(text[int(0.9 * len(text)):]))
    assert len(val) == record["val_chars"] == 111_540
    ctx = 256
    starts = torch.linspace(0, len(val) - ctx - 1, 80).long().tolist()
    rows = torch.stack([val[s : s + ctx + 1] for s in starts])
    total = 0.0
    with torch.no_grad():
        for chunk in rows.split(20):
            logits = model.compute_logits(model(chunk[:, :-1])).float()
            total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
    loss = total / rows[:, 1:].numel()
    assert abs(loss - record["val_loss"]) <= 0.05, (loss, record["val_loss"])


def test_romeo_sample_is_play_shaped(llm):
    out = llm.generate(["ROMEO:"], SamplingParams(max_tokens=200, temperature=0.8, seed=0), use_tqdm=False)[0]
    text = out.text
    assert len(out.token_ids) == 200 and "\n" in text
    letters = sum(ch.isalpha() or ch in " \n" for ch in text)
    assert letters / len(text) > 0.85, text  # mostly words, not punctuation soup
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 25 and 2.5 <= sum(map(len, words)) / len(words) <= 6.5, text
    common = sum(w in COMMON for w in words) / len(words)
    speaker = re.search(r"^[A-Z][A-Za-z ]+:$", text, flags=re.M)
    assert common >= 0.3 and (speaker or common >= 0.45), (common, text)
