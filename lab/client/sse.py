"""Server-sent events, parsed line by line as the WHATWG spec says (the part OpenAI streams use).

Lines come from httpx's `iter_lines`, which already splits on LF, CRLF and lone CR (even across
network chunks). Comments (": keep-alive") are dropped; several `data:` lines join with newlines.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


@dataclass(slots=True)
class SSEDecoder:
    _data: list[str] | None = None
    _event: str = ""
    _id: str | None = None
    _retry: int | None = None
    _started: bool = False

    def decode(self, line: str) -> ServerSentEvent | None:
        """Feed one line (without its line ending); returns an event when a blank line ends one."""
        if not self._started:
            # the spec ignores one byte order mark at the start of the stream; httpx's decoder keeps it,
            # and "\ufeffdata" is no field name: the first chunk would vanish
            self._started = True
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment: servers send these as keep-alives
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            if self._data is None:
                self._data = []
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():  # the spec: ASCII digits; int("²") fails
                self._retry = int(value)
        # other field names are ignored, as the spec says
        return None

    def flush(self) -> ServerSentEvent | None:
        """At end of stream: hand over an event whose closing blank line never came.

        The spec would drop it; we keep it because some servers end with `data: [DONE]` and no blank
        line, and a truncated JSON payload fails loudly later anyway.
        """
        return self._dispatch()

    def _dispatch(self) -> ServerSentEvent | None:
        if self._data is None:
            self._event = ""
            return None
        event = ServerSentEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data, self._event = None, ""  # `id` persists across events, per the spec
        return event


def iter_events(lines):
    """Events from an iterable of lines."""
    decoder = SSEDecoder()
    for line in lines:
        event = decoder.decode(line)
        if event is not None:
            yield event
    event = decoder.flush()
    if event is not None:
        yield event
