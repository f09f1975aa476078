"""Chat templates: render a list of {role, content} messages into one prompt string with jinja2,
the way transformers' `apply_chat_template` does, plus the speaker-line format of the bundled model.
"""

from __future__ import annotations

from functools import lru_cache

# The bundled model only knows play text, where each speech is a speaker in capitals, a colon,
# the lines, then a blank line. So a chat is rendered as a scene: "USER:\n...\n\nASSISTANT:\n".
SPEAKER_LINES_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | upper }}:\n{{ message['content'] | trim }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)

ROLES = ("system", "user", "assistant")

# Where an assistant's turn ends in a template whose vocabulary has no end-of-turn token: real chat
# models end a turn with one (<|im_end|>, <|eot_id|>) and stop there; a speech here ends with a blank
# line, and without this stop the answer runs on into the next speakers' lines until max_tokens.
TURN_ENDS = {SPEAKER_LINES_TEMPLATE: "\n\n"}


def turn_end(template: str | None) -> str | None:
    """The text that ends an assistant turn in `template`, for templates with no end-of-turn token."""
    return TURN_ENDS.get(template)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
    if not isinstance(messages, (list, tuple)):
        # a string or a lone message dict would be walked item by item, and blamed on its first character or key
        raise ValueError(f"messages: must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}]: must be a dict with 'role' and 'content', got {m!r}")
    # transformers passes tools and documents as None when there are none: a template testing
    # `tools is not none` (true for an undefined name) must not render an empty tool section
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **{"tools": None, "documents": None} | extra)


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering
        it is rendering its body (transformers' AssistantTracker, without the tracking)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    # the same environment transformers builds, so a template renders identically in both
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined,
                                        extensions=[Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat_template: not valid jinja2 ({e.message}, line {e.lineno})") from e


def _raise(message: str):
    raise ValueError(f"chat template: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja2's own tojson escapes HTML characters and non-ASCII text; transformers' does not
    import json

    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    from datetime import datetime

    return datetime.now().strftime(fmt)
