"""Tokenizers: the character vocabulary round-trips the corpus (ours and transformers'), unknown
characters are named in a clear error, chat templates render speaker lines, and folders without a
tokenizer or template fail clearly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lab.engine import LLM, SamplingParams
from lab.engine.chat import SPEAKER_LINES_TEMPLATE, render_chat
from lab.engine.tokenizer import Tokenizer, build_char_tokenizer
from tests.conftest import make_hf_model

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "corpus" / "tinyshakespeare.txt"
BUNDLED = ROOT / "data" / "models" / "tiny-shakespeare"
MESSAGES = [{"role": "system", "content": "Speak in verse."}, {"role": "user", "content": "Who goes there?"},
            {"role": "assistant", "content": "A friend."}, {"role": "user", "content": "What news?"}]


@pytest.fixture(scope="module")
def corpus() -> str:
    return CORPUS.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def char_folder(tmp_path_factory, corpus) -> Path:
    folder = tmp_path_factory.mktemp("chars")
    build_char_tokenizer(sorted(set(corpus))).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": SPEAKER_LINES_TEMPLATE}))
    return folder


def test_round_trip_whole_corpus(char_folder, corpus):
    tok = Tokenizer.from_folder(char_folder)
    ids = tok.encode(corpus)
    chars = sorted(set(corpus))
    assert len(ids) == len(corpus) == 1_115_394 and tok.vocab_size == len(chars) == 65
    assert ids[:20] == [chars.index(ch) for ch in corpus[:20]]  # nanoGPT's stoi: index in sorted(set(text))
    assert tok.decode(ids) == corpus


def test_a_long_text_encodes_without_holding_the_gil(char_folder, corpus):
    """A server tokenizes off its event loop; that only helps if encoding lets other threads run.
    While the whole corpus (1.1M characters, about a second) encodes on a thread, this thread must
    get many turns: `tokenizers`' single `encode` would hold the GIL and allow it one or two."""
    import threading
    import time

    tok = Tokenizer.from_folder(char_folder)
    result: list[list[int]] = []
    worker = threading.Thread(target=lambda: result.append(tok.encode(corpus * 2)))
    turns = 0
    worker.start()
    while worker.is_alive():
        time.sleep(0.001)
        turns += 1
    worker.join()
    assert result[0] == tok.hf.encode(corpus * 2).ids  # the same ids as the single call
    assert turns >= 20, f"only {turns} turns while encoding: the GIL was held"


def test_transformers_loads_the_same_vocabulary(char_folder, corpus):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(char_folder / "tokenizer.json"), clean_up_tokenization_spaces=False)
    text = corpus[:5000]
    ids = hf(text)["input_ids"]
    assert ids == Tokenizer.from_folder(char_folder).encode(text)
    assert hf.decode(ids) == text


def test_bundled_tokenizer_is_the_corpus_alphabet(corpus):
    tok = Tokenizer.from_folder(BUNDLED)
    assert tok.alphabet == frozenset(corpus) and tok.eos_token_ids == ()
    assert tok.decode(tok.encode(corpus[-3000:])) == corpus[-3000:]


def test_unknown_character_is_named(char_folder):
    tok = Tokenizer.from_folder(char_folder)
    with pytest.raises(ValueError, match=r"character\(s\) '#é' are not in this model's vocabulary; allowed: "):
        tok.encode("Cafe #, café")
    with pytest.raises(ValueError, match="'é' are not in this model's vocabulary"):  # before the model runs
        LLM(device="cpu").generate(["ROMEO: café"], SamplingParams(max_tokens=2))


def test_speaker_line_chat_template(char_folder):
    tok = Tokenizer.from_folder(char_folder)
    prompt = tok.apply_chat_template(MESSAGES)
    assert prompt == ("SYSTEM:\nSpeak in verse.\n\nUSER:\nWho goes there?\n\nASSISTANT:\nA friend.\n\n"
                      "USER:\nWhat news?\n\nASSISTANT:\n")
    assert tok.apply_chat_template(MESSAGES[:2], add_generation_prompt=False).endswith("there?\n\n")
    assert tok.decode(tok.encode(prompt)) == prompt
    with pytest.raises(ValueError, match=r"messages\[1\]: must be a dict with 'role' and 'content'"):
        tok.apply_chat_template([MESSAGES[0], {"role": "user"}])


def test_bundled_chat_template_renders_as_in_transformers():
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(BUNDLED)
    ours = LLM(device="cpu").tokenizer
    assert ours.apply_chat_template(MESSAGES) == hf.apply_chat_template(MESSAGES, tokenize=False,
                                                                         add_generation_prompt=True)


def test_bundled_model_answers_a_chat():
    llm = LLM(device="cpu")
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Good morrow, my lord."}])
    out = llm.generate([prompt], SamplingParams(max_tokens=40, temperature=0.8, seed=1), use_tqdm=False)[0]
    assert len(out.token_ids) == 40 and out.finish_reason == "length" and out.text


def test_folder_without_tokenizer_or_template(tmp_path):
    folder = make_hf_model(tmp_path / "bare", "llama", with_tokenizer=False)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_folder(folder)
    llm = LLM(folder, device="cpu")
    with pytest.raises(ValueError, match="no tokenizer; pass token ids"):
        llm.generate(["hello"], SamplingParams(max_tokens=2))
    assert len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2, ignore_eos=True))[0].token_ids) == 2
    with pytest.raises(ValueError, match="stop: this model folder has no tokenizer"):  # was silently ignored
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2, stop=["a"]))

    folder = make_hf_model(tmp_path / "no-template", "llama")  # tokenizer.json but no chat template
    with pytest.raises(ValueError, match="no chat template"):
        LLM(folder, device="cpu").tokenizer.apply_chat_template(MESSAGES)


@pytest.mark.parametrize("messages, got", [
    ("Who goes there?", "str"),
    ({"role": "user", "content": "Who goes there?"}, "dict"),  # one message, not a list of them
    (None, "NoneType"),
])
def test_messages_that_are_not_a_list_are_named(messages, got):
    # a string or a lone dict was walked item by item: "messages[0]: ... got 'W'" (or 'role'); None a TypeError
    with pytest.raises(ValueError, match=rf"^messages: must be a list of {{'role', 'content'}} dicts, got {got}$"):
        render_chat(SPEAKER_LINES_TEMPLATE, messages)


def test_bad_template_is_a_clear_error():
    with pytest.raises(ValueError, match="chat_template: not valid jinja2"):
        render_chat("{% for m in messages %}", MESSAGES)
    with pytest.raises(ValueError, match="chat template: only user"):
        render_chat("{{ raise_exception('only user') }}", MESSAGES)


def _byte_level_bpe(vocab_size: int = 300) -> Tokenizer:
    """A byte-level BPE (GPT-2 / Qwen style) trained here: characters outside ASCII span several tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["the cat sat on the mat", "café au lait", "a b c d e"], trainer)
    return Tokenizer(hf)


def test_a_byte_level_vocabulary_without_merges_is_not_a_character_vocabulary():
    # its 256 one-character tokens stand for bytes ("Ġ" is a space): held to them as an alphabet, a
    # space or 中 was refused as "not in this model's vocabulary"
    tok = _byte_level_bpe(vocab_size=256)
    assert all(len(t) == 1 for t in tok.hf.get_vocab())  # no merges: it looks like a character vocabulary
    assert tok.alphabet is None and tok.min_tokens("x" * 100) == 0
    assert tok.decode(tok.encode("café 中 🐈")) == "café 中 🐈"
    assert _char_tokenizer_alphabet() is not None  # a real character vocabulary still is one


def _char_tokenizer_alphabet():
    return Tokenizer(build_char_tokenizer("abc ")).alphabet


@pytest.mark.parametrize("text", ["the cat sat on the mat", "naïve café, 東京 🐈 ok", "🐈🐈 é"])
def test_incremental_decode_matches_full_decode(text):
    tok = _byte_level_bpe()
    ids = tok.encode(text)
    if not text.isascii():  # the case that matters: a character really is split over tokens
        assert any("\ufffd" in tok.decode([i]) for i in ids)
    out, prefix, read = "", 0, 0
    for n in range(1, len(ids) + 1):
        new, prefix, read = tok.decode_next(ids[:n], prefix, read)
        assert "\ufffd" not in new  # half a character is held back, never emitted
        out += new
    assert out == tok.decode(ids) == text
    assert read - prefix < 8  # the decode window stays short, whatever the length


def test_engine_text_is_the_full_decode_cut_at_the_stop_string(tmp_path):
    """Random weights, sampled: the output wanders through split multi-byte characters."""
    tok = _byte_level_bpe()
    folder = make_hf_model(tmp_path / "bpe", "llama", vocab_size=tok.vocab_size, with_tokenizer=False)
    tok.hf.save(str(folder / "tokenizer.json"))
    llm = LLM(folder)
    params = SamplingParams(max_tokens=60, temperature=1.0, seed=3, ignore_eos=True)
    plain = llm.generate(["the cat"], params, use_tqdm=False)[0]
    assert plain.text == tok.decode(plain.token_ids)
    stop = plain.text[10:12]  # a string the same seeded run is known to produce
    cut = llm.generate(["the cat"], dataclasses.replace(params, stop=[stop]), use_tqdm=False)[0]
    assert cut.finish_reason == "stop"
    assert cut.text == plain.text[: plain.text.find(stop)]
    streamed = "".join(ev.text for ev in llm.stream("the cat", params))
    assert streamed == plain.text


def test_min_tokens_bounds_the_count_without_encoding():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    hf = build_char_tokenizer("abc <>eos")
    hf.add_special_tokens(["<eos>"])
    chars = Tokenizer(hf, special_tokens={"eos_token": "<eos>"})
    for text in ("abc", "a" * 1000, "<eos>" * 10, "ab<eos>c" * 7):
        assert chars.min_tokens(text) <= len(chars.encode(text))  # a bound, special tokens included
    assert chars.min_tokens("a" * 1000) == 1000 // 5  # 5: the longest token, "<eos>"
    merged = HFTokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    assert Tokenizer(merged).min_tokens("ab" * 1000) == 0  # tokens of any length: no bound claimed
