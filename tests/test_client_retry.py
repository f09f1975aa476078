"""lab.client: error classes, the retry policy, provider presets and key checks, client-side limits."""

from __future__ import annotations

import email.utils
import json
import math
import time
from types import SimpleNamespace

import httpx
import pytest

from lab.client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    InternalServerError,
    MissingAPIKeyError,
    ModelPage,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RateLimits,
    RetryPolicy,
    UnprocessableEntityError,
    retry,
    run_batch,
)
from lab.client.limits import RateLimiter, parse_reset
from lab.client.providers import is_placeholder, mask_key, redact_url
from lab.client.retry import MAX_RETRY_AFTER, parse_retry_after

KEY = "sk-test-0123456789abcdef"
OK_BODY = {"id": "c1", "object": "chat.completion", "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
MESSAGES = [{"role": "user", "content": "hello"}]
NO_WAIT = RetryPolicy(max_retries=2, initial_delay=0.0, max_delay=0.0)


def scripted(*steps):
    """A handler answering each call with the next step (a Response, or an exception to raise)."""
    calls = []

    def handler(request: httpx.Request):
        step = steps[min(len(calls), len(steps) - 1)]
        calls.append(request)
        if isinstance(step, Exception):
            raise step
        return step

    return handler, calls


def client_for(handler, **kw) -> Client:
    kw.setdefault("retry", NO_WAIT)
    return Client(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler), **kw)


def err(status, message="nope", headers=None):
    return httpx.Response(status, json={"error": {"message": message, "type": "x", "code": None}},
                          headers={"x-request-id": "req-42", **(headers or {})})


# ---- each error class, with status, request id and the server's message


@pytest.mark.parametrize("status,cls", [
    (400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError), (404, NotFoundError),
    (409, ConflictError), (422, UnprocessableEntityError), (429, RateLimitError), (500, InternalServerError),
    (503, InternalServerError), (418, APIStatusError),
])
def test_status_maps_to_error_class(status, cls):
    handler, calls = scripted(err(status, "server says no"))
    with pytest.raises(cls) as info:
        client_for(handler, max_retries=0, retry=None).chat.completions.create(model="m", messages=MESSAGES)
    e = info.value
    assert type(e) is cls
    assert (e.status_code, e.request_id, e.message) == (status, "req-42", "server says no")
    assert "server says no" in str(e) and "req-42" in str(e)
    assert len(calls) == 1


def test_error_message_from_fastapi_detail_and_plain_text():
    handler, _ = scripted(httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(NotFoundError, match="Not Found"):
        client_for(handler).models.list()
    handler, _ = scripted(httpx.Response(400, text="bad gateway html"))
    with pytest.raises(BadRequestError, match="bad gateway html"):
        client_for(handler).models.list()


def test_rate_limit_error_carries_retry_after():
    handler, _ = scripted(err(429, headers={"retry-after": "7"}))
    with pytest.raises(RateLimitError) as info:
        client_for(handler, retry=RetryPolicy(max_retries=0)).chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize("value, expected", [
    ("0", 0.0), ("2.5", 2.5), ("-3", None), ("nan", None), ("inf", None), ("1e400", None),
    (email.utils.formatdate(1_000_000_000, usegmt=True), None),  # a date in the past: was -7e8 s
])
def test_rate_limit_error_retry_after_is_none_when_unusable(value, expected):
    # negative and non-finite values were returned as they came; the retry policy ignores them too
    assert RateLimitError("x", status_code=429, headers={"retry-after": value}).retry_after == expected


# ---- which failures are retried


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(status):
    handler, calls = scripted(err(status), err(status), httpx.Response(200, json=OK_BODY))
    resp = client_for(handler).chat.completions.create(model="m", messages=MESSAGES)
    assert resp.text == "hi" and resp.retries == 2 and len(calls) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status):
    handler, calls = scripted(err(status), httpx.Response(200, json=OK_BODY))
    with pytest.raises(APIStatusError):
        client_for(handler).chat.completions.create(model="m", messages=MESSAGES)
    assert len(calls) == 1


def test_retries_stop_after_max_retries_and_report_it():
    handler, calls = scripted(err(503))
    with pytest.raises(InternalServerError) as info:
        client_for(handler).chat.completions.create(model="m", messages=MESSAGES)
    assert len(calls) == 3 and info.value.retries_taken == 2


def test_x_should_retry_header_overrides_status():
    handler, calls = scripted(err(400, headers={"x-should-retry": "true"}), httpx.Response(200, json=OK_BODY))
    assert client_for(handler).chat.completions.create(model="m", messages=MESSAGES).retries == 1
    assert len(calls) == 2
    handler, calls = scripted(err(503, headers={"x-should-retry": "false"}))
    with pytest.raises(InternalServerError):
        client_for(handler).chat.completions.create(model="m", messages=MESSAGES)
    assert len(calls) == 1


def test_x_should_retry_is_read_loosely_but_a_retry_after_beyond_the_cap_comes_first():
    """openai-python (3.x, the SDK the dev extra installs) checks the cap before x-should-retry: a
    server asking for five minutes was hit again after a 0.5 s backoff because x-should-retry won."""
    policy = RetryPolicy()
    assert policy.should_retry(BadRequestError("x", status_code=400, headers={"x-should-retry": " True "}))
    assert not policy.should_retry(InternalServerError("x", status_code=503, headers={"x-should-retry": "FALSE"}))
    over = str(int(MAX_RETRY_AFTER) * 3)
    forced = RateLimitError("x", status_code=429, headers={"retry-after": over, "x-should-retry": "true"})
    assert not policy.should_retry(forced)
    within = RateLimitError("x", status_code=429, headers={"retry-after": "2", "x-should-retry": "true"})
    assert policy.should_retry(within) and policy.delay(0, within) == 2.0
    handler, calls = scripted(err(429, headers={"retry-after": over, "x-should-retry": "true"}),
                              httpx.Response(200, json=OK_BODY))
    with pytest.raises(RateLimitError) as info:
        client_for(handler, retry=RetryPolicy(max_retries=2)).chat.completions.create(model="m", messages=MESSAGES)
    assert len(calls) == 1 and info.value.retry_after == float(over)


@pytest.mark.parametrize("exc,cls", [
    (httpx.ConnectError("refused"), APIConnectionError),
    (httpx.RemoteProtocolError("peer closed"), APIConnectionError),
    (httpx.ConnectTimeout("slow"), APITimeoutError),
    (httpx.ReadTimeout("slow"), APITimeoutError),
    (httpx.WriteTimeout("slow"), APITimeoutError),
    (httpx.PoolTimeout("busy"), APITimeoutError),
])
def test_connection_errors_and_timeouts_are_retried_then_typed(exc, cls):
    handler, calls = scripted(exc)
    with pytest.raises(cls) as info:
        client_for(handler).chat.completions.create(model="m", messages=MESSAGES)
    assert type(info.value) is cls and info.value.status_code is None
    assert len(calls) == 3
    handler, calls = scripted(exc, httpx.Response(200, json=OK_BODY))
    assert client_for(handler).chat.completions.create(model="m", messages=MESSAGES).retries == 1


async def test_async_client_retries_the_same_way():
    handler, calls = scripted(err(429, headers={"retry-after-ms": "1"}), httpx.ConnectError("x"),
                              httpx.Response(200, json=OK_BODY))
    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler),
                           retry=NO_WAIT) as client:
        resp = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert resp.text == "hi" and resp.retries == 2 and len(calls) == 3


def test_retry_after_header_is_waited_for(monkeypatch):
    slept = []
    monkeypatch.setattr("lab.client.client.time.sleep", slept.append)
    handler, _ = scripted(err(429, headers={"retry-after": "3"}), err(429, headers={"retry-after-ms": "250"}),
                          httpx.Response(200, json=OK_BODY))
    client_for(handler, retry=RetryPolicy(max_retries=2)).chat.completions.create(model="m", messages=MESSAGES)
    assert slept == [3.0, 0.25]


# ---- the delay itself


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5  # ms wins
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_delay_honours_retry_after_in_both_forms(monkeypatch):
    policy = RetryPolicy()
    assert policy.delay(0, RateLimitError("x", headers={"retry-after": "4"})) == 4.0
    assert policy.delay(0, RateLimitError("x", headers={"retry-after-ms": "40"})) == 0.04
    now = 1_700_000_000.0  # the clock frozen: a date 20 s ahead is 20 s, however slow this machine is
    monkeypatch.setattr(retry, "time", SimpleNamespace(time=lambda: now))
    future = email.utils.formatdate(now + 20, usegmt=True)
    assert policy.delay(0, RateLimitError("x", headers={"retry-after": future})) == 20


@pytest.mark.parametrize("field, value", [("initial_delay", "x"), ("initial_delay", -1), ("max_delay", math.nan),
                                          ("max_delay", math.inf), ("max_retry_after", math.nan),
                                          ("max_retry_after", True), ("initial_delay", None)])
def test_retry_policy_names_a_bad_delay(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be a"):
        RetryPolicy(**{field: value})
    assert RetryPolicy(max_retry_after=math.inf).max_retry_after == math.inf  # no cap: allowed


def test_retry_after_over_the_cap_is_not_retried():
    over = str(int(MAX_RETRY_AFTER) + 1)
    handler, calls = scripted(err(429, headers={"retry-after": over}), httpx.Response(200, json=OK_BODY))
    with pytest.raises(RateLimitError) as info:
        client_for(handler).chat.completions.create(model="m", messages=MESSAGES)
    assert len(calls) == 1 and info.value.retry_after == MAX_RETRY_AFTER + 1
    # and the delay ignores it, falling back to backoff, should anyone ask
    assert RetryPolicy().delay(0, RateLimitError("x", headers={"retry-after": over})) <= 0.5
    # a number too big for a float is inf, still over the cap (it was retried with backoff)
    for huge in ("1e400", "inf"):
        assert not RetryPolicy().should_retry(RateLimitError("x", status_code=429, headers={"retry-after": huge}))
    assert RetryPolicy().should_retry(RateLimitError("x", status_code=429, headers={"retry-after": "nan"}))


def test_backoff_bounds_exponential_capped_with_jitter():
    policy = RetryPolicy(max_retries=10)
    for n, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (50, 8.0)]:
        assert policy.delay(n, rand=lambda: 0.0) == base  # no jitter: the full step
        assert policy.delay(n, rand=lambda: 1.0) == 0.75 * base  # most jitter: a quarter off
        assert 0.75 * base <= policy.delay(n) <= base
    # a zero or negative retry-after falls back to backoff too
    assert policy.delay(0, RateLimitError("x", headers={"retry-after": "0"}), rand=lambda: 0.0) == 0.5


def test_retry_policy_validates():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


# ---- providers and keys


def test_placeholder_key_refused_before_any_request(monkeypatch):
    handler, calls = scripted(httpx.Response(200, json=OK_BODY))
    monkeypatch.setenv("OPENAI_API_KEY", "YOUR_OPENAI_API_KEY")
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        Client(provider="openai", transport=httpx.MockTransport(handler))
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MissingAPIKeyError, match="set the environment variable OPENAI_API_KEY"):
        Client(provider="openai", transport=httpx.MockTransport(handler))
    monkeypatch.setenv("HOLYSHEEP_API_KEY", "<your key>")
    with pytest.raises(MissingAPIKeyError, match="HOLYSHEEP_API_KEY"):
        AsyncClient(provider="holysheep")
    with pytest.raises(MissingAPIKeyError, match="api_key"):
        Client(base_url="http://test/v1", api_key="sk-...")
    assert calls == []


def test_provider_presets_and_key_from_env(monkeypatch):
    monkeypatch.setenv("HOLYSHEEP_API_KEY", "hs-real-key-0123456789")
    c = Client(provider="holysheep")
    assert c.base_url == "https://api.holysheep.ai/v1" and c.api_key == "hs-real-key-0123456789"
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-0123456789")
    c = Client(base_url="https://api.deepseek.com/v1")  # a known host finds its variable
    assert c.provider == "deepseek" and c.api_key == "sk-deepseek-0123456789"
    monkeypatch.delenv("BATCHING_LAB_API_KEY", raising=False)
    assert Client(provider="local").api_key is None  # local servers need no key
    with pytest.raises(ValueError, match="allowed: local, vllm, openai"):
        Client(provider="nope")
    with pytest.raises(ValueError, match="base_url"):
        Client()


def test_a_password_in_base_url_is_not_shown():
    # httpx sends user:password@ as basic auth (a proxy in front of a server); repr printed it whole
    c = Client(base_url="http://alice:s3cret@proxy.example:8080/v1")
    assert "s3cret" not in repr(c) and "'http://alice:***@proxy.example:8080/v1'" in repr(c)
    assert c.base_url == "http://alice:s3cret@proxy.example:8080/v1"  # still used as given
    assert redact_url("https://api.example/v1") == "https://api.example/v1"
    assert redact_url("http://bob@host/v1") == "http://bob@host/v1"  # no password, nothing to hide
    with pytest.raises(ValueError, match=r"base_url: .* got 'ftp://alice:\*\*\*@proxy.example/v1'") as info:
        Client(base_url="ftp://alice:s3cret@proxy.example/v1")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError, match=r"got 'http://alice:\*\*\*@\[::1/v1' \(Invalid IPv6") as info:
        Client(base_url="http://alice:s3cret@[::1/v1")  # unparsable: the password is found by hand
    assert "s3cret" not in str(info.value)


def test_key_never_shown_in_full():
    c = Client(base_url="http://test/v1", api_key=KEY)
    assert KEY not in repr(c) and mask_key(KEY) in repr(c)
    assert mask_key(KEY) == "sk-te...cdef" and mask_key("short") == "***" and mask_key(None) == "<none>"
    sent = []
    handler = lambda r: (sent.append(r.headers["authorization"]), httpx.Response(200, json=OK_BODY))[1]  # noqa: E731
    client_for(handler).chat.completions.create(model="m", messages=MESSAGES)
    assert sent == [f"Bearer {KEY}"]


def test_a_short_key_is_masked_in_proportion():
    # the fixed 5 + 4 showed 9 of a 13-character key's characters
    assert mask_key("sk-abcdefghij") == "sk...ij"
    assert mask_key("12345678") == "***"  # nothing of a key this short
    for n in range(9, 41):
        key = "k" * n
        shown = len(mask_key(key).replace("...", ""))
        assert 3 <= shown <= 9 and shown <= n * 3 / 8


@pytest.mark.parametrize("kwargs, message", [
    (dict(base_url="localhost:8000/v1"), "base_url: must be an http:// or https:// URL"),
    (dict(base_url=8000), "base_url: must be an http:// or https:// URL .* got 8000"),
    # urllib's errors at construction (a broken IPv6 address) or httpx's at the first request (a bad
    # port) before; now named at construction
    (dict(base_url="http://[::1/v1"), r"base_url: .* got 'http://\[::1/v1' \(Invalid IPv6 URL\)"),
    (dict(base_url="http://localhost:80000/v1"), r"base_url: .* \(Port out of range 0-65535\)"),
    (dict(base_url="http://localhost:port/v1"), r"base_url: .* \(Port could not be cast to integer"),
    (dict(base_url="http://x/v1", timeout=0), r"timeout: must be a number of seconds > 0 or None"),
    (dict(base_url="http://x/v1", timeout={"read": -1}), r"timeout.read: must be a number of seconds > 0"),
    (dict(base_url="http://x/v1", stream_idle_timeout=0), r"stream_idle_timeout: must be a number of seconds > 0"),
])
def test_bad_client_settings_named_before_any_request(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Client(**kwargs)


def test_key_whitespace_stripped_and_inner_spaces_refused_without_showing_it():
    secret = "sk-proj-SECRETSECRETSECRET1234"
    sent = []
    handler = lambda r: (sent.append(r.headers["authorization"]), httpx.Response(200, json=OK_BODY))[1]  # noqa: E731
    c = Client(base_url="http://test/v1", api_key=secret + "\n", transport=httpx.MockTransport(handler))
    c.chat.completions.create(model="m", messages=MESSAGES)
    assert sent == [f"Bearer {secret}"]  # a newline from a key file is not part of the key
    with pytest.raises(ValueError, match="api_key: .* contains spaces or control characters") as err:
        Client(base_url="http://test/v1", api_key="sk-proj-SECRET SECRET1234")
    assert "SECRET SECRET" not in str(err.value)


def test_a_header_httpx_cannot_send_is_not_retried_and_not_quoted():
    from lab.client import InvalidRequestError

    def handler(request):
        raise httpx.LocalProtocolError("Illegal header value b'Bearer sk-very-secret'")

    c = Client(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler), retry=NO_WAIT)
    with pytest.raises(InvalidRequestError) as err:
        c.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.retries_taken == 0 and "sk-very-secret" not in str(err.value)


@pytest.mark.parametrize("key", ["YOUR_OPENAI_API_KEY", "your-api-key", "<API_KEY>", "sk-xxxx", "sk-...", "  ",
                                 "DEEPSEEK_API_KEY", "changeme"])
def test_placeholder_patterns(key):
    assert is_placeholder(key)


@pytest.mark.parametrize("key", ["sk-proj-Ab12Cd34", "EMPTY", "sk-test", "hs-abcdef0123"])
def test_real_looking_keys_pass(key):
    assert not is_placeholder(key)


# ---- limits


def test_rpm_bucket_spaces_requests():
    lim = RateLimiter(RateLimits(rpm=60))  # holds one request, refills the other 59 of the minute
    gap = 60 / 59
    assert lim.reserve(0, now=100.0) == 0.0
    assert lim.reserve(0, now=100.0) == pytest.approx(gap)
    assert lim.reserve(0, now=100.5) == pytest.approx(gap - 0.5)
    assert lim.reserve(0, now=101.02) == 0.0  # 100 + gap, but no float rounding to trip over


def test_tpm_bucket_weights_by_tokens_and_allows_one_big_request():
    lim = RateLimiter(RateLimits(tpm=6000))  # holds 100 tokens, refills the other 5900 of the minute
    rate = 5900 / 60
    assert lim.reserve(60, now=0.0) == 0.0
    assert lim.reserve(60, now=0.0) == pytest.approx(20 / rate)  # 20 missing
    full = 60 / rate  # 60 missing
    assert lim.reserve(500, now=0.4) == pytest.approx(full - 0.4)  # bigger than the bucket: waits until it is full
    assert lim.reserve(500, now=full + 1e-9) == 0.0  # ... then goes, leaving the bucket in debt
    assert lim.reserve(10, now=full + 1e-9) == pytest.approx((10 + 400) / rate)
    lim.settle(est_tokens=500, used_tokens=100)  # the server counted less: refund
    assert lim.reserve(10, now=full + 1e-9) == pytest.approx(10 / rate)


def _most_in_a_minute(limits: RateLimits, amount: int, seconds: float) -> tuple[int, int]:
    """A greedy caller of `reserve`: (the most it got in any closed 60 s window, all it got in `seconds`)."""
    import bisect

    lim, t, admitted = RateLimiter(limits), 0.0, []
    while t < seconds:
        wait = lim.reserve(amount, now=t)
        if wait == 0:
            admitted.append(t)
        t += max(wait, 1e-9)
    most = max(bisect.bisect_right(admitted, a + 60) - i for i, a in enumerate(admitted))
    return most * amount, len(admitted) * amount


@pytest.mark.parametrize("rpm", [1, 7, 60, 90, 600, 6000])
def test_no_minute_admits_more_than_rpm(rpm):
    # a bucket of one second's worth refilling at rpm / 60 a second let a minute admit 6099 at rpm 6000
    most, total = _most_in_a_minute(RateLimits(rpm=rpm), 1, 600)
    assert most <= rpm
    assert total >= 0.98 * rpm * 10  # ... and the limit is still used, over ten minutes


def test_no_minute_admits_more_than_tpm():
    most, total = _most_in_a_minute(RateLimits(tpm=6000), 40, 600)  # requests that fit the bucket of 100
    assert most <= 6000 and total >= 0.98 * 6000 * 10


def test_limiter_adapts_to_headers_and_429():
    lim = RateLimiter(RateLimits())
    lim.observe(200, {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0",
                      "x-ratelimit-reset-requests": "1.5s"}, now=10.0)
    assert lim.requests is not None and lim.requests.per_minute == 120  # adopted the server's limit
    assert lim.reserve(0, now=10.0) == pytest.approx(1.5)
    assert lim.reserve(0, now=11.5) == 0.0
    lim.observe(429, {"retry-after": "3"}, now=20.0)
    assert lim.reserve(0, now=20.0) == pytest.approx(3.0)
    lim.observe(429, {}, now=30.0)  # no retry-after: the default pause
    assert lim.reserve(0, now=30.0) == pytest.approx(1.0)
    assert parse_reset("6m0s") == 360 and parse_reset("20ms") == 0.02 and parse_reset("1h2m3.5s") == 3723.5
    assert parse_reset("2") == 2.0 and parse_reset("") is None
    # Go writes durations under a millisecond in µs (micro sign; it reads the Greek mu and "us" too) or ns
    assert parse_reset("834.208\u00b5s") == pytest.approx(834.208e-6) and parse_reset("12ns") == pytest.approx(12e-9)
    assert parse_reset("5\u03bcs") == pytest.approx(5e-6) and parse_reset("5us") == pytest.approx(5e-6)
    assert parse_reset("-1.5s") == -1.5


@pytest.mark.parametrize("reset, pause", [
    ("834.208\u00b5s", 834.208e-6), ("2s", 2.0),
    ("inf", 1.0), ("nan", 1.0), ("-5", 1.0), ("-1s", 1.0), ("0s", 1.0), ("soon", 1.0),  # unknown: 1 s
    ("1e9", MAX_RETRY_AFTER), ("1767225600", MAX_RETRY_AFTER),  # a Unix timestamp is no duration: the cap
])
def test_remaining_zero_pauses_for_the_reset_within_bounds(reset, pause):
    # "inf" or a timestamp paused every later request for years (async) or overflowed time.sleep (sync);
    # a negative reset did not pause at all
    lim = RateLimiter(RateLimits(rpm=6000))
    lim.observe(200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset}, now=50.0)
    assert lim.paused_until - 50.0 == pytest.approx(pause)


@pytest.mark.parametrize("limit", ["-5", "nan", "0"])
def test_a_server_limit_that_is_no_limit_is_not_adopted(limit):
    lim = RateLimiter(RateLimits(max_concurrency=4))
    lim.observe(200, {"x-ratelimit-limit-requests": limit}, now=0.0)
    assert lim.requests is None


async def test_max_concurrency_caps_requests_in_flight():
    import asyncio

    inflight, peak = 0, 0

    async def handler(request):
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.005)
        inflight -= 1
        return httpx.Response(200, json=OK_BODY)

    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler),
                           max_concurrency=3) as client:
        await asyncio.gather(*(client.chat.completions.create(model="m", messages=MESSAGES) for _ in range(12)))
    assert peak == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(rpm=0), "rpm must be a finite number > 0 or None"),
    (dict(rpm=float("nan")), "rpm must be a finite number > 0 or None"),
    (dict(tpm="1000"), "tpm must be a finite number > 0 or None"),
    (dict(max_concurrency=2.5), "max_concurrency must be an integer >= 1 or None"),  # 2.5 never blocked
    (dict(max_concurrency=True), "max_concurrency must be an integer >= 1 or None"),
    (dict(pause_after_429_s=-3), "pause_after_429_s must be a finite number >= 0"),
])
def test_limits_validate(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RateLimits(**kwargs)


def test_with_options_checks_what_it_is_given_and_none_means_no_limit():
    c = Client(base_url="http://test/v1", api_key=KEY)
    for bad in (-1, "3", 2.5, True):
        with pytest.raises(ValueError, match="max_retries must be an int >= 0"):
            c.with_options(max_retries=bad)
    with pytest.raises(ValueError, match="stream_idle_timeout: must be a number of seconds > 0"):
        c.with_options(stream_idle_timeout=-5)
    assert c.with_options(timeout=None).timeout.read is None  # None: no limit, as in openai-python
    assert c.with_options(max_retries=0).timeout == c.timeout  # left out: unchanged
    sent = []
    handler = lambda r: (sent.append(r.extensions["timeout"]), httpx.Response(200, json=OK_BODY))[1]  # noqa: E731
    client_for(handler).chat.completions.create(model="m", messages=MESSAGES, timeout=None)
    assert sent[0]["read"] is None


def test_a_long_retry_after_pauses_the_limiter_for_the_cap():
    limiter = RateLimiter(RateLimits(rpm=6000))
    limiter.observe(429, {"retry-after": "300"}, now=0.0)  # too long to retry, not too long to respect
    assert limiter.reserve(1, now=1.0) == pytest.approx(MAX_RETRY_AFTER - 1.0)


def test_the_blocking_client_changes_its_limiter_only_under_the_lock():
    # settle and observe ran without the lock that reserve takes: threads lost each other's updates
    # (a limiter that undercounted 800,000 tokens by 84,000 in the reviewer's run)
    limits_headers = {"x-ratelimit-limit-tokens": "600000", "x-ratelimit-remaining-tokens": "599000"}
    sse = 'data: {"id": "s", "choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'
    handler, _ = scripted(httpx.Response(200, json=OK_BODY, headers=limits_headers),
                          err(503, headers=limits_headers), httpx.Response(200, json=OK_BODY),
                          httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"}))
    c = client_for(handler, rpm=6000)
    lock, held = c._limiter._lock, []

    class Watched(RateLimiter):
        def settle(self, *args):
            held.append(("settle", lock._is_owned()))
            super().settle(*args)

        def observe(self, *args):
            held.append(("observe", lock._is_owned()))
            super().observe(*args)

    c._limiter.core = core = Watched(c.limits)
    c.chat.completions.create(model="m", messages=MESSAGES)  # observe, settle
    c.chat.completions.create(model="m", messages=MESSAGES)  # observe the 503 (twice: response, retry loop)
    assert {name for name, _ in held} == {"settle", "observe"}
    held.clear()  # a stream settles when it closes
    assert "".join(ch.text for ch in c.chat.completions.create(model="m", messages=MESSAGES, stream=True)) == "hi"
    assert {name for name, _ in held} == {"settle", "observe"} and all(owned for _, owned in held)
    assert core.tokens is not None  # and the server's token limit was learnt


class FakeClock:
    def __init__(self):
        self.t, self.reads = 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t


async def test_the_async_budget_serves_waiters_in_arrival_order():
    # a request wanting more tokens than the refill gave waited for ever while smaller ones, arriving
    # after it, kept taking what came in
    import asyncio

    from lab.client.limits import AsyncLimiter

    real_sleep = asyncio.sleep

    async def spin():  # let every waiter look at the (frozen) clock a few times
        for _ in range(10):
            await real_sleep(0)

    lim = AsyncLimiter(RateLimits(tpm=6000))  # holds 100 tokens
    rate = lim.core.tokens.rate
    clock = lim.clock = FakeClock()
    lim.sleep = lambda s: real_sleep(0)  # time moves only when the test moves it
    assert lim.core.reserve(100, clock()) == 0.0  # the bucket is empty
    big = asyncio.create_task(lim.wait_budget(60))
    await spin()
    gone = asyncio.create_task(lim.wait_budget(60))  # cancelled while waiting: must not block the line
    small = asyncio.create_task(lim.wait_budget(10))
    await spin()
    clock.t = 30 / rate  # enough for the small one, not for the big one at the head
    await spin()
    assert not big.done() and not small.done()
    gone.cancel()
    clock.t = 60 / rate + 1e-9
    await spin()
    assert big.done() and gone.cancelled() and not small.done()  # the big one took what there was
    lim.observe(429, {"retry-after": "5"})  # a 429 holds the line too
    clock.t += 1.0  # the 10 tokens are back, the pause is not over
    await spin()
    assert not small.done()
    clock.t += 4.0
    await spin()
    assert small.done()


def test_the_blocking_budget_serves_waiters_in_arrival_order():
    import threading

    from lab.client.limits import SyncLimiter

    lim = SyncLimiter(RateLimits(tpm=6000))
    rate = lim.core.tokens.rate
    clock = lim.clock = FakeClock()
    assert lim.core.reserve(100, clock()) == 0.0  # the bucket is empty
    served = []

    def wait_for(tokens):
        lim.wait_budget(tokens)
        served.append(tokens)

    def until(condition):  # the threads run on their own: wait for them to get where the test needs them
        give_up = time.monotonic() + 60  # only so that a broken limiter fails instead of hanging the run
        while not condition():
            assert time.monotonic() < give_up
            time.sleep(0.001)

    def move_clock(t):
        clock.t = t
        with lim._changed:
            lim._changed.notify_all()  # a waiter sleeps until its budget is due: wake it to read the clock

    big = threading.Thread(target=wait_for, args=(60,), daemon=True)
    big.start()
    until(lambda: clock.reads > 0)  # the big one has asked for its budget: it waits at the head
    move_clock(30 / rate)  # enough for a small one, not for the big one
    small = threading.Thread(target=wait_for, args=(10,), daemon=True)
    small.start()
    until(lambda: len(lim._line) == 2 or served)  # queued behind it (or, unfairly, served at once)
    move_clock(60 / rate + 1e-9)
    until(lambda: served)
    move_clock(70 / rate + 1e-9)
    big.join(10)
    small.join(10)
    assert served == [60, 10]


def test_run_batch_refuses_to_drop_a_custom_http_client():
    c = Client(base_url="http://test/v1", api_key=KEY, http_client=httpx.Client(proxy=None))
    with pytest.raises(ValueError, match="http_client: this client was built on your own httpx client"):
        run_batch(c, [{"model": "m", "prompt": "p"}], progress=False)


def test_a_failed_body_read_keeps_the_request_id():
    def handler(request):
        def body():
            yield b'{"id": '
            raise httpx.ReadTimeout("timed out")

        return httpx.Response(200, content=body(), headers={"x-request-id": "req_abc"})

    c = Client(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler),
               retry=RetryPolicy(max_retries=0))
    with pytest.raises(APITimeoutError) as err:
        c.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.request_id == "req_abc"


# ---- results, cost, options


def test_completion_fields_and_cost(monkeypatch):
    import lab.client.types as types

    def fake_cost(model, prompt, completion, cached=0, provider=None):
        if model != "m":
            raise ValueError("unknown model")
        return prompt * 0.01 + completion * 0.1

    monkeypatch.setattr(types, "_COST_FN", [fake_cost])
    handler, calls = scripted(httpx.Response(200, json=OK_BODY, headers={"x-request-id": "abc"}))
    r = client_for(handler).chat.completions.create(model="m", messages=MESSAGES, max_tokens=5,
                                                    extra_body={"ignore_eos": True},
                                                    extra_headers={"x-trace": "1"})
    assert r.text == "hi" and r.finish_reason == "stop" and r.request_id == "abc"
    assert r.usage.total_tokens == 4 and r.cost_usd == pytest.approx(0.13)
    assert r.latency_s >= r.ttft_s >= 0
    sent = json.loads(calls[0].content)
    assert sent["ignore_eos"] is True and sent["max_tokens"] == 5 and calls[0].headers["x-trace"] == "1"
    other = dict(OK_BODY, model="who-knows")
    handler, _ = scripted(httpx.Response(200, json=other))
    assert client_for(handler).chat.completions.create(model="x", messages=MESSAGES).cost_usd is None


# usage for a dated OpenAI snapshot, 1,000 of the 1,200 prompt tokens from the prompt cache
DATED_MODEL = "gpt-4.1-2025-04-14"
CACHED_USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1000}}


def _real_cost(monkeypatch):
    """lab.cost.usage_cost for the dated model and CACHED_USAGE, with the client's cost hook reset to it."""
    import lab.client.types as types
    from lab.cost import usage_cost

    monkeypatch.setattr(types, "_COST_FN", [])  # look lab.cost up afresh, not whatever another test left
    expected = usage_cost(DATED_MODEL, 1200, 300, 1000)
    assert expected != usage_cost(DATED_MODEL, 1200, 300)  # the cached share is priced differently
    return expected


def test_cost_of_a_dated_model_comes_from_lab_cost(monkeypatch):
    expected = _real_cost(monkeypatch)
    body = dict(OK_BODY, model=DATED_MODEL, usage=CACHED_USAGE)
    handler, _ = scripted(httpx.Response(200, json=body))
    r = client_for(handler).chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert r.usage.cached_tokens == 1000 and r.cost_usd == pytest.approx(expected)


def _cached_usage_stream() -> httpx.Response:
    """A streamed "hi" from DATED_MODEL whose last chunk carries CACHED_USAGE."""
    def event(choices, **extra):
        chunk = {"id": "s", "object": "chat.completion.chunk", "model": DATED_MODEL, "choices": choices, **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    sse = (event([{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}])
           + event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
           + event([], usage=CACHED_USAGE) + "data: [DONE]\n\n")
    return httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})


def test_cost_of_a_streamed_response_comes_from_its_usage_chunk(monkeypatch):
    expected = _real_cost(monkeypatch)
    handler, calls = scripted(_cached_usage_stream())
    stream = client_for(handler).chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    assert stream.usage is None and stream.cost_usd is None  # the usage comes in the last chunk
    assert "".join(c.text for c in stream) == "hi"
    assert json.loads(calls[0].content)["stream_options"] == {"include_usage": True}
    assert stream.usage.cached_tokens == 1000 and stream.cost_usd == pytest.approx(expected)


@pytest.mark.parametrize(("base_url", "provider", "priced"), [
    ("http://127.0.0.1:8000/v1", None, False),  # a server of one's own, serving a model under an API name
    ("http://localhost:8000/v1", None, False),
    ("http://[::1]:8000/v1", None, False),
    ("http://0.0.0.0:8000/v1", None, False),  # serve(host="0.0.0.0").url
    ("http://[::ffff:127.0.0.1]:8000/v1", None, False),
    ("http://api.localhost:8000/v1", None, False),
    ("http://localhost.:8000/v1", None, False),
    ("http://gpu-box:8000/v1", "vllm", False),  # the self-hosted presets, wherever they run
    ("http://gpu-box:8000/v1", "local", False),
    ("http://proxy.example/v1", None, True),  # an unknown host: priced as the model's direct seller
    ("http://proxy.example/v1", "openai", True),
])
def test_a_self_hosted_server_gets_no_list_price(monkeypatch, caplog, base_url, provider, priced):
    """A local server answering as gpt-4.1 was billed at OpenAI's price (with no provider), or logged a
    warning on every response (provider local or vllm, which the price table does not know)."""
    expected = _real_cost(monkeypatch)
    body = dict(OK_BODY, model=DATED_MODEL, usage=CACHED_USAGE)
    handler, _ = scripted(httpx.Response(200, json=body))
    client = Client(base_url=base_url, provider=provider, api_key=KEY, transport=httpx.MockTransport(handler),
                    retry=NO_WAIT)
    assert client.self_hosted is not priced
    r = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert r.cost_usd == (pytest.approx(expected) if priced else None)
    client.transport = httpx.MockTransport(scripted(_cached_usage_stream())[0])
    with client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True) as stream:
        assert "".join(c.text for c in stream) == "hi" and stream.usage.cached_tokens == 1000
    assert stream.cost_usd == (pytest.approx(expected) if priced else None)
    assert "cost_usd left out" not in caplog.text  # a quiet None, not a warning per response


def test_models_list_is_a_page_and_a_list():
    handler, _ = scripted(httpx.Response(200, json={"object": "list", "data": [{"id": "a"}, {"id": "b"}]}))
    page = client_for(handler).models.list()
    assert isinstance(page, ModelPage) and [m.id for m in page.data] == ["a", "b"]  # openai-python's shape
    assert [m.id for m in page] == ["a", "b"] and len(page) == 2 and page[0].id == "a" and page[-1].id == "b"


async def test_async_models_list_is_a_page():
    handler, _ = scripted(httpx.Response(200, json={"object": "list", "data": [{"id": "a"}]}))
    async with AsyncClient(base_url="http://test/v1", api_key=KEY, transport=httpx.MockTransport(handler)) as c:
        page = await c.models.list()
    assert isinstance(page, ModelPage) and page.data[0].id == "a" and page[0].id == "a" and len(page) == 1


def test_models_list_and_timeouts():
    handler, calls = scripted(httpx.Response(200, json={"object": "list", "data": [{"id": "tiny", "owned_by": "lab"}]}))
    c = client_for(handler, timeout={"connect": 1.0, "read": 9.0})
    assert [m.id for m in c.models.list()] == ["tiny"]
    t = calls[0].extensions["timeout"]
    assert t["connect"] == 1.0 and t["read"] == 9.0
    with pytest.raises(ValueError, match="allowed: connect, read, write, pool"):
        client_for(handler, timeout={"total": 3})
    with pytest.raises(ValueError, match="model is required"):
        c.chat.completions.create(messages=MESSAGES)


def test_with_options_overrides_retries():
    handler, calls = scripted(err(503))
    with pytest.raises(InternalServerError):
        client_for(handler).with_options(max_retries=0).chat.completions.create(model="m", messages=MESSAGES)
    assert len(calls) == 1


def test_token_estimate_counts_batched_id_prompts_and_tolerates_odd_fields():
    from lab.client._base import estimate_tokens

    assert estimate_tokens({"prompt": [[1] * 4000]}) == estimate_tokens({"prompt": [1] * 4000}) == 4000
    # odd values are the server's to reject (its 400 names the field); the estimate must not crash first
    assert estimate_tokens({"prompt": "x", "max_tokens": "abc"}) == 0
    assert estimate_tokens({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}) == 4


@pytest.mark.parametrize("body", [b"[]", b'"ok"', b"null", b'{"choices": [1]}', b'{"data": 5}'])
def test_json_of_the_wrong_shape_is_an_api_error_not_an_attribute_error(body):
    # a proxy or a broken server answering 200 with a JSON that is no completion: the caller (and a
    # batch record) must get our error naming the response, not `'list' object has no attribute 'get'`
    handler, _ = scripted(httpx.Response(200, content=body, headers={"x-request-id": "req-7"}))
    c = client_for(handler)
    with pytest.raises(APIError, match="unexpected response") as info:
        c.models.list() if b"data" in body else c.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.request_id == "req-7" and info.value.status_code == 200


@pytest.mark.parametrize("provider, var, value", [
    ("local", "BATCHING_LAB_API_KEY", ""), ("local", "BATCHING_LAB_API_KEY", " , "),  # the server splits on commas
    ("vllm", "VLLM_API_KEY", ""), ("vllm", "VLLM_API_KEY", "  "),
])
def test_a_blank_key_variable_means_no_key_where_none_is_needed(monkeypatch, provider, var, value):
    # `export BATCHING_LAB_API_KEY=` leaves `batching-lab serve` (and vLLM) without auth; the client used
    # to refuse it as a placeholder and ask for a key the server does not want
    monkeypatch.setenv(var, value)
    assert Client(provider=provider).api_key is None
    monkeypatch.setenv("OPENAI_API_KEY", "")  # where a key is required, a blank one is still refused
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        Client(provider="openai")


def test_the_default_timeouts_are_openai_pythons():
    """The read timeout was 120 s: a non-streaming answer that took longer was aborted and retried
    twice from the start, three times the server's work for an error in the end."""
    from openai._constants import DEFAULT_TIMEOUT as OPENAI_TIMEOUT

    c = client_for(lambda r: httpx.Response(200, json=OK_BODY))
    assert c.timeout.as_dict() == OPENAI_TIMEOUT.as_dict()


def test_a_per_request_timeout_dict_changes_only_the_phases_it_names():
    # it used to fill the other phases from the library default (connect 5 s, write and pool 600 s),
    # silently dropping the client's own timeout=30
    sent = []
    handler = lambda r: (sent.append(r.extensions["timeout"]), httpx.Response(200, json=OK_BODY))[1]  # noqa: E731
    c = client_for(handler, timeout=30.0)
    c.chat.completions.create(model="m", messages=MESSAGES, timeout={"read": 300})
    c.with_options(timeout={"connect": 2}).chat.completions.create(model="m", messages=MESSAGES)
    assert sent[0] == {"connect": 30.0, "read": 300, "write": 30.0, "pool": 30.0}
    assert sent[1] == {"connect": 2, "read": 30.0, "write": 30.0, "pool": 30.0}


def test_messages_given_as_a_generator_are_sent_whole_on_every_attempt():
    # openai-python takes any iterable of messages; a generator died in the token estimate (len() of a
    # generator), and spent once it would have left a retry with no messages at all
    handler, calls = scripted(err(503), httpx.Response(200, json=OK_BODY))
    c = client_for(handler, rpm=6000)  # the limiter's token estimate reads the messages too
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    resp = c.chat.completions.create(model="m", messages=(m for m in history), stop=iter(["\n"]))
    assert resp.text == "hi" and resp.retries == 1
    assert [json.loads(r.content)["messages"] for r in calls] == [history, history]
    assert json.loads(calls[1].content)["stop"] == ["\n"]
    handler, calls = scripted(httpx.Response(200, json=OK_BODY))
    client_for(handler).completions.create(model="m", prompt=(i for i in (5, 6, 7)))  # token ids, as openai's Iterable[int]
    assert json.loads(calls[0].content)["prompt"] == [5, 6, 7]


def test_a_key_with_a_non_ascii_character_is_named_without_showing_it():
    # a key copied through a word processor picks up a typographic dash; httpx's UnicodeEncodeError
    # named neither the field nor the cause
    secret = "sk-proj\u2010SECRETSECRET1234"
    with pytest.raises(ValueError, match="api_key: .* non-ASCII") as err:
        Client(base_url="http://test/v1", api_key=secret)
    assert "SECRETSECRET" not in str(err.value)


def test_an_async_limiter_serves_a_second_event_loop():
    """asyncio's Lock and Semaphore belong to the first loop that waits on them: the same AsyncClient in a
    second asyncio.run() failed with 'bound to a different event loop' once two requests had queued."""
    import asyncio

    from lab.client.limits import AsyncLimiter

    limiter = AsyncLimiter(RateLimits(rpm=600, max_concurrency=2))
    now = [0.0]

    async def fake_sleep(seconds):  # a fake clock: only the loop binding is under test, not the waiting
        now[0] += seconds + 1e-6  # a touch more: a real clock never lands exactly on the refill's float
        await asyncio.sleep(0)

    limiter.clock, limiter.sleep = (lambda: now[0]), fake_sleep

    served, in_flight, most = [], [0], [0]

    async def burst():
        async def one(i):
            release = await limiter.acquire_slot()
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            try:
                await limiter.wait_budget(1)
                await asyncio.sleep(0)
                served.append(i)
            finally:
                in_flight[0] -= 1
                release()

        await asyncio.gather(*(one(i) for i in range(15)))

    asyncio.run(burst())
    asyncio.run(burst())  # raised RuntimeError before
    # both loops served all 15, never more than max_concurrency at once, and the rpm budget held across
    # them: the bucket starts with one second's worth (10) and refills the rest of the minute (590 / 60 s)
    assert sorted(served) == sorted(list(range(15)) * 2) and most[0] == 2
    assert now[0] >= (30 - 10) / (590 / 60)


def test_a_slot_taken_under_one_event_loop_goes_back_to_that_loops_semaphore():
    """A stream opened in one asyncio.run() and closed in the next released its slot into the new loop's
    semaphore: that loop then let max_concurrency + 1 requests through at once."""
    import asyncio

    from lab.client.limits import AsyncLimiter

    limiter = AsyncLimiter(RateLimits(max_concurrency=2))
    old_releases = []

    async def first():
        old_releases.append(await limiter.acquire_slot())

    asyncio.run(first())

    async def second():
        held = [await limiter.acquire_slot() for _ in range(2)]
        old_releases[0]()  # the first loop's stream closes now
        third = asyncio.create_task(limiter.acquire_slot())
        await asyncio.sleep(0.01)
        waited = not third.done()  # both slots of this loop are still taken
        held[0]()
        held[0]()  # a second call frees nothing more
        release_third = await third
        fourth = asyncio.create_task(limiter.acquire_slot())
        await asyncio.sleep(0.01)
        still_two = not fourth.done()
        release_third()
        (await fourth)()
        held[1]()
        return waited, still_two

    assert asyncio.run(second()) == (True, True)
