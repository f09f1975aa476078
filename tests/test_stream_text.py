"""Streamed text against final text, end to end, with the model's tokens scripted: a byte-level BPE
spells a character over several tokens, so stop strings, EOS and max_tokens can fall inside one. Pins
vLLM's conventions: the stop text is cut (and never streamed), a stop or EOS token is counted in
completion tokens but its text is not shown, and half a character is never streamed.
"""

from __future__ import annotations

import json

import pytest

from lab.engine import LLM, SamplingParams
from tests.conftest import make_hf_model

TEXT = "café 東京 🐈 ok"
EOS = "<|eos|>"


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[EOS])
    hf.train_from_iterator(["the cat sat on the mat", "café au lait", "a b c d e"], trainer)
    folder = make_hf_model(tmp_path_factory.mktemp("bpe") / "m", "llama", vocab_size=hf.get_vocab_size(),
                           with_tokenizer=False)
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    return LLM(folder, device="cpu")


def _script(monkeypatch, llm: LLM, tokens: list[int]) -> None:
    """The model 'samples' `tokens` in order, whatever its logits say."""
    execute = llm.engine.runner.execute
    monkeypatch.setattr(llm.engine.runner, "execute",
                        lambda batch: [(s, tokens[len(s.output_token_ids)]) for s, _ in execute(batch)])


def _tokens_until(llm: LLM, ids: list[int], stop: str) -> int:
    """How many tokens it takes for the text to contain `stop`: the one that completes it is counted."""
    return next(k for k in range(1, len(ids) + 1) if stop in llm.tokenizer.decode(ids[:k]))


@pytest.mark.parametrize("case", ["eos", "stop token", "stop across characters", "length mid-character"])
def test_streamed_text_is_the_final_text(llm, monkeypatch, case):
    tok = llm.tokenizer
    ids = tok.encode(TEXT)
    half_cat = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("京 \ufffd"))  # 🐈 begun
    eos = llm.engine.model_config.eos_token_ids[0]
    if case == "eos":
        script, params = ids + [eos], SamplingParams(max_tokens=50, temperature=0)
        want_text, want_tokens, want_reason = TEXT, len(ids) + 1, "stop"  # EOS counted, its text not shown
    elif case == "stop token":  # an ordinary token, whose text would show if it were decoded
        bang = tok.encode("!")[0]
        script, params = ids + [bang], SamplingParams(max_tokens=50, temperature=0, stop_token_ids=[bang])
        want_text, want_tokens, want_reason = TEXT, len(ids) + 1, "stop"
    elif case == "stop across characters":
        script, params = ids + [eos], SamplingParams(max_tokens=50, temperature=0, stop=["never", "京 🐈"])
        want_text, want_tokens, want_reason = "café 東", _tokens_until(llm, ids, "京 🐈"), "stop"
    else:
        script, params = ids, SamplingParams(max_tokens=half_cat, temperature=0)
        # the last half character is shown as U+FFFD, as transformers' decode of these tokens shows it
        want_text, want_tokens, want_reason = "café 東京 \ufffd", half_cat, "length"
    _script(monkeypatch, llm, script)
    events = list(llm.stream("the", params))
    final = llm.generate(["the"], params, use_tqdm=False)[0]
    assert (final.text, len(final.token_ids), final.finish_reason) == (want_text, want_tokens, want_reason)
    assert "".join(e.text for e in events) == final.text
    assert sum(e.token_id is not None for e in events) == want_tokens and events[-1].finish_reason == want_reason
    assert not any("\ufffd" in e.text for e in events[:-1])  # half a character is never streamed
    assert EOS not in final.text


def test_only_a_tail_that_could_begin_a_stop_string_is_held_back(llm, monkeypatch):
    # every character used to wait len(stop) - 1 characters (vLLM's rule): a chat on the bundled model,
    # which stops at "\n\n", showed each character one token late, and its TTFT one decode step late
    from lab.engine.stop_strings import partial_stop_length

    assert partial_stop_length("the cat", ["\n\n"], 2) == 0
    assert partial_stop_length("the cat\n", ["\n\n"], 2) == 1
    assert partial_stop_length("ab", ["abc", "bx"], 3) == 2  # "ab" begins "abc"
    assert partial_stop_length("xb", ["abc", "bx"], 3) == 1  # "b" begins "bx"
    ids = llm.tokenizer.encode("the cat sat on the mat")
    _script(monkeypatch, llm, ids)
    events = list(llm.stream("the", SamplingParams(max_tokens=len(ids), temperature=0, stop=["mat!"])))
    shown = ""
    for k, e in enumerate(events, 1):
        shown += e.text
        text_so_far = llm.tokenizer.decode(ids[:k])
        held = len(text_so_far) - len(shown)
        # held back only while the tail could begin "mat!" ("m", "ma", "mat"), and not once it has ended
        want = 0 if e.finish_reason else partial_stop_length(text_so_far, ["mat!"], 4)
        assert held == want, (k, text_so_far, shown)
    assert shown == "the cat sat on the mat" and events[0].text  # the first token's text went out at once
