"""Stop strings in a sequence's text: where the first one begins, and how much of the text's end must
wait before it is streamed, in case the next tokens complete one (the stop text is never shown).
"""

from __future__ import annotations


def first_stop(text: str, stops: list[str], search_from: int) -> int:
    """Where the earliest stop string begins in `text[search_from:]` (a match must take in a new
    character: the caller starts the search that far back), or -1."""
    return min((i for i in (text.find(s, search_from) for s in stops) if i >= 0), default=-1)


def partial_stop_length(text: str, stops: list[str], longest_stop: int) -> int:
    """How many characters at the end of `text` could be the start of a stop string: those are held
    back from the stream, in case the next tokens complete it. vLLM holds back len(stop) - 1 characters
    always; only a tail that begins some stop string needs it, so the rest streams a token earlier
    (a chat on the bundled model, which stops at a blank line, showed each character one token late)."""
    tail = text[len(text) - min(longest_stop - 1, len(text)):]
    n, held = len(tail), 0
    for s in stops:
        # only where the stop's first character occurs: trying every tail length sliced the text per
        # length, which cost milliseconds a token with stop strings thousands of characters long
        i = tail.find(s[0], max(0, n - len(s) + 1))
        while i != -1 and n - i > held:
            if s.startswith(tail[i:]):
                held = n - i
                break
            i = tail.find(s[0], i + 1)
    return held
