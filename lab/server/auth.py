"""Bearer API keys, compared in constant time; no keys configured means an open server."""

from __future__ import annotations

import hmac

from lab.client.providers import mask_key
from lab.server.errors import APIError


def mask(key: str) -> str:
    """Never print a key in full: the client's rule for how much shows, in OpenAI's shape ('sk-te***cdef')."""
    return mask_key(key).replace("...", "***")


def authenticate(authorization: str | None, keys: list[str]) -> str | None:
    """The matching key (the rate-limit bucket), None on an open server; raises a 401 otherwise."""
    if not keys:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "You didn't provide an API key: send the header 'Authorization: Bearer YOUR_KEY'.",
                       code="invalid_api_key")
    token = token.strip()
    found = None
    for key in keys:  # check every key, so the time taken does not tell which one nearly matched
        if hmac.compare_digest(token.encode(), key.encode()):
            found = key
    if found is None:
        raise APIError(401, f"Incorrect API key provided: {mask(token)}.", code="invalid_api_key")
    return found
