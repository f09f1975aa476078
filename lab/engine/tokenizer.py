"""Tokenizers for model folders: `tokenizer.json` through the `tokenizers` library, plus the
chat template from `tokenizer_config.json` (jinja2) when the folder has one. Also builds the
character vocabulary of the bundled model, in the same format, so transformers loads it too.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lab.engine.chat import render_chat

# past this length encoding goes through `encode_batch`, which releases the GIL (see Tokenizer.encode);
# below it the single call is cheaper and too short to stall anyone
_LONG_TEXT_CHARS = 16_384


def build_char_tokenizer(chars: list[str] | str) -> HFTokenizer:
    """One token per character, id = index in `chars` (nanoGPT's sorted(set(text)) order).

    WordLevel over single characters: a Split pre-tokenizer isolates every character (newlines
    included) and the Fuse decoder joins them back without spaces, so decode(encode(t)) == t.
    No unk token on purpose: `Tokenizer.encode` rejects unknown characters by name instead.
    """
    chars = list(chars)
    if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
        raise ValueError("chars: must be distinct single characters")
    tok = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tok.decoder = decoders.Fuse()
    return tok


def _spell_themselves(hf: HFTokenizer, chars: set[str]) -> bool:
    """Each one-character token decodes to its own character: a character vocabulary. A byte-level
    BPE with no merges has one-character tokens too, but they stand for bytes ("Ġ" is a space), so it
    can spell any text and must not be held to its symbols."""
    vocab = hf.get_vocab()
    ordered = sorted(chars)
    return hf.decode_batch([[vocab[c]] for c in ordered]) == ordered


class Tokenizer:
    def __init__(self, hf: HFTokenizer, eos_token_ids: tuple[int, ...] = (), chat_template: str | None = None,
                 special_tokens: dict[str, str] | None = None):
        self.hf = hf
        self.eos_token_ids = eos_token_ids
        self.chat_template = chat_template
        self.special_tokens = special_tokens or {}
        # a character vocabulary (special tokens such as an end marker aside) cannot spell an unseen
        # character, and tokenizers without an unk token drop it silently: name it instead
        chars = set(hf.get_vocab()) - set(self.special_tokens.values())
        self.alphabet = frozenset(chars) if chars and all(len(t) == 1 for t in chars) and _spell_themselves(
            hf, chars) else None
        # a character vocabulary spells at most this many characters with one token (1, or a special
        # token's length): what lets min_tokens bound a prompt's length without tokenizing it
        self._chars_per_token = (max(map(len, hf.get_vocab(with_added_tokens=True)))
                                 if self.alphabet is not None else None)

    @classmethod
    def from_folder(cls, folder: str | Path, eos_token_ids: tuple[int, ...] = ()) -> Tokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{folder}: no tokenizer.json; a model folder needs one (the `tokenizers` format), "
                "or pass prompts as token ids"
            )
        hf = HFTokenizer.from_file(str(path))
        cfg = read_json_object(folder / "tokenizer_config.json")
        # every special token the template may name (bos_token, eos_token, pad_token, ...); older
        # folders keep them in special_tokens_map.json, and tokenizer_config.json wins, as in transformers
        specials = {k: _token_text(v) for k, v in read_json_object(folder / "special_tokens_map.json").items()
                    if k.endswith("_token") and v}
        specials |= {k: _token_text(v) for k, v in cfg.items() if k.endswith("_token") and v}
        eos_id = hf.token_to_id(specials["eos_token"]) if "eos_token" in specials else None
        if eos_id is not None:
            eos_token_ids = tuple(dict.fromkeys((*eos_token_ids, eos_id)))
        # chat_template.jinja first: transformers saves templates there now, and reads it first
        jinja = folder / "chat_template.jinja"
        template = jinja.read_text() if jinja.exists() else _default_template(cfg.get("chat_template"))
        return cls(hf, eos_token_ids, template, specials)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`add_special_tokens=False` for text a chat template rendered: it carries its own BOS."""
        if self.alphabet is not None:
            unknown = sorted(set(text) - self.alphabet)
            if unknown:
                raise ValueError(
                    f"prompt: character(s) {''.join(unknown)!r} are not in this model's vocabulary; "
                    f"allowed: {''.join(sorted(self.alphabet))!r}"
                )
        if len(text) > _LONG_TEXT_CHARS:
            # `encode` holds the GIL for its whole run (about 1 s per million characters), stalling every
            # other thread (a server's event loop, its engine); `encode_batch` releases it while it works
            return self.hf.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)), computed without tokenizing: exact enough for a character
        vocabulary, 0 (no bound) for others, whose tokens may spell any number of characters. Encoding
        takes about 1 s per million characters here, so a server refuses a prompt that cannot
        fit its context by this bound instead of spending a second or more of CPU on it."""
        return len(text) // self._chars_per_token if self._chars_per_token else 0

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def decode_next(self, ids: list[int], prefix: int, read: int, final: bool = False) -> tuple[str, int, int]:
        """Text that `ids[read:]` adds, decoding only a short window instead of all of `ids`.

        `ids[prefix:read]` were already turned into text; decoding them again together with the new
        tokens keeps what depends on the neighbour (a leading space, bytes of one character split
        over tokens) right. Returns (new text, next prefix, next read). While the new tokens end in
        half a character nothing is returned, unless `final`. Same scheme as vLLM's detokenizer.
        """
        before = self.decode(ids[prefix:read])
        after = self.decode(ids[prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            return after[len(before):], read, len(ids)
        return "", prefix, read

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise ValueError(
                "messages: this model has no chat template (tokenizer_config.json `chat_template`); "
                "use the completions endpoint with a plain prompt"
            )
        return render_chat(self.chat_template, messages, add_generation_prompt, **self.special_tokens)


def _token_text(tok) -> str:
    return tok["content"] if isinstance(tok, dict) else tok


def read_json_object(path: Path) -> dict:
    """A model folder's JSON file as a dict ({} when it is missing); a broken one names the file."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"model: {path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"model: {path} must hold a JSON object, got {type(value).__name__}")
    return value


def _default_template(template) -> str | None:
    """Some folders store several named templates ([{"name": "default", "template": ...}, ...]);
    plain chat uses the one named "default", as transformers does."""
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        return named.get("default")
    return template
