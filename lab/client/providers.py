"""Provider presets: where an OpenAI-compatible API lives and which environment variable holds its key.

Keys come from arguments or the environment, never files. A missing or placeholder key fails before any
request with a message naming the variable to set, and a key is never shown in full.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from lab.client.errors import MissingAPIKeyError


@dataclass(slots=True, frozen=True)
class Provider:
    name: str
    base_url: str
    env_var: str
    key_required: bool = True  # local servers (ours, vLLM) usually run without keys
    vllm_extensions: bool = False  # takes vLLM's extra request fields, such as ignore_eos


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("local", "http://127.0.0.1:8000/v1", "BATCHING_LAB_API_KEY", key_required=False,
                 vllm_extensions=True),
        Provider("vllm", "http://127.0.0.1:8000/v1", "VLLM_API_KEY", key_required=False, vllm_extensions=True),
        Provider("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        Provider("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
        Provider("holysheep", "https://api.holysheep.ai/v1", "HOLYSHEEP_API_KEY"),
        Provider("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        Provider("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
        Provider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    )
}

# What people paste from docs instead of a key: YOUR_OPENAI_API_KEY, <your-key>, sk-..., sk-xxxx, "changeme"
_PLACEHOLDER = re.compile(
    r"^(your[\w\- ]*|.*_api_key|<.*>|\{.*\}|sk-(\.{3}|x+|\*+)|x+|\*+|\.{3}|changeme|placeholder|none|null|todo)$",
    re.IGNORECASE,
)


def is_placeholder(key: str) -> bool:
    return not key.strip() or _PLACEHOLDER.match(key.strip()) is not None


def _clean_key(key, source: str) -> str:
    """A key read from a file or a copied line often ends in a newline: drop surrounding whitespace."""
    if not isinstance(key, str):
        raise ValueError(f"api_key: must be a string, got {type(key).__name__} (from the {source})")
    return key.strip()


def _check_key_chars(key: str, source: str) -> None:
    # whitespace or control characters cannot go in a header, and the HTTP library's error would
    # quote the whole header: refuse them here, without showing the key
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ValueError(f"api_key: the key from the {source} contains spaces or control characters "
                         f"({mask_key(key)}); copy it again")
    if not key.isascii():
        # HTTP headers are ASCII: httpx's UnicodeEncodeError named neither the key nor the cause (a dash
        # or quote made typographic by the editor it was copied through)
        raise ValueError(f"api_key: the key from the {source} contains non-ASCII characters "
                         f"({mask_key(key)}), often a typographic dash or quote; copy it again")


def mask_key(key: str | None) -> str:
    """`sk-ab...wxyz`: enough to tell two keys apart, never enough to use one."""
    if not key:
        return "<none>"
    if len(key) <= 8:
        return "***"  # a short key (a local server's "secret"): any character shown is a good part of it
    # about a third shows (at most 3/8): the fixed 5 + 4 showed 9 of a 13-character key; real keys (24 and up)
    # still show 5 + 4
    shown = min(9, len(key) * 3 // 8)
    head = min(5, (shown + 1) // 2)
    return f"{key[:head]}...{key[head - shown:]}"


def redact_url(url: str) -> str:
    """The URL with the password of a `user:password@host` hidden: httpx sends it as basic auth,
    and a repr or an error message must not print it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def check_base_url(base_url) -> None:
    """Refuse what httpx would fail on only at the first request: another scheme, no host, a port
    that is not a number in 0-65535, a broken IPv6 address."""
    problem = None
    if not isinstance(base_url, str):
        problem = f"got {base_url!r}"
    else:
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
            problem = f"got {_redact_unparsable(base_url)!r} ({exc})"
        else:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problem = f"got {redact_url(base_url)!r}"
    if problem:
        raise ValueError(f"base_url: must be an http:// or https:// URL such as http://localhost:8000/v1, {problem}")


def _redact_unparsable(url: str) -> str:
    # urlsplit failed, so find the credentials by hand: everything between '://' and the last '@'
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.partition("/")[0].rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{rest[len(creds) + 1:]}"


def provider_for_url(base_url: str) -> Provider | None:
    host = urlsplit(base_url).hostname or ""
    for p in PROVIDERS.values():
        if p.key_required and urlsplit(p.base_url).hostname == host:
            return p
    return None


def is_self_hosted(base_url: str, provider: str | None) -> bool:
    """A server of one's own: the local or vllm preset, or any loopback address when no preset was
    named. Its answers have no list price: a model served under an API's name (gpt-4.1-mini, to test
    an app against it) costs GPU time, not OpenAI's price per token."""
    if provider is not None:
        return not PROVIDERS[provider].key_required
    host = (urlsplit(base_url).hostname or "").rstrip(".")  # hostname is lower case already
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always this machine
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name: a provider's, a reseller's or a company proxy's
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip  # [::ffff:127.0.0.1]
    # 0.0.0.0: what `serve(host="0.0.0.0").url` says, reached on this machine
    return ip.is_loopback or ip.is_unspecified


def resolve(base_url: str | None, api_key: str | None, provider: str | None) -> tuple[str, str | None, str | None]:
    """(base_url, api_key, provider name) from what the caller gave and the environment.

    - `provider` alone: its base URL and the key from its environment variable.
    - `base_url` alone: a known provider's variable if the host is one we know, else no key.
    """
    preset: Provider | None = None
    if provider is not None:
        preset = PROVIDERS.get(provider)
        if preset is None:
            raise ValueError(f"provider={provider!r} is unknown; allowed: {', '.join(PROVIDERS)}")
    elif base_url is None:
        raise ValueError(f"give base_url=... or provider=... (one of {', '.join(PROVIDERS)})")
    if base_url is not None:
        check_base_url(base_url)
        if provider is None:
            preset = provider_for_url(base_url)
    url = (base_url or preset.base_url).rstrip("/")
    if api_key is None and preset is not None:
        api_key = os.environ.get(preset.env_var)
        source = f"environment variable {preset.env_var}"
        if api_key and preset.name == "local":
            # `batching-lab serve` reads the same variable and accepts several keys, comma-separated
            api_key = next(iter(split_keys(api_key)), "")
        if api_key is not None and not api_key.strip() and not preset.key_required:
            # a variable set but blank leaves a local server (ours, vLLM) without auth: no key to send,
            # not a placeholder to refuse
            api_key = None
    else:
        source = "api_key argument"
    if api_key is not None:
        api_key = _clean_key(api_key, source)
    if api_key is not None and is_placeholder(api_key):
        hint = f"set the environment variable {preset.env_var}" if preset else "pass your real key as api_key=..."
        raise MissingAPIKeyError(f"the API key from the {source} looks like a placeholder ({mask_key(api_key)}); {hint}")
    if api_key is None and preset is not None and preset.key_required:
        raise MissingAPIKeyError(
            f"no API key for provider {preset.name!r}: set the environment variable {preset.env_var} "
            "or pass api_key=..."
        )
    if api_key is not None:
        _check_key_chars(api_key, source)
    return url, api_key, preset.name if preset else None


def split_keys(value: str | None) -> list[str]:
    """'sk-a, sk-b,,sk-a' -> ['sk-a', 'sk-b']: the keys in a comma-separated variable, blanks dropped."""
    return list(dict.fromkeys(k.strip() for k in (value or "").split(",") if k.strip()))
