"""Load generation over HTTP: replay a `Workload`'s arrivals as streaming requests, measure like `vllm bench serve`.

Each request is sent at its arrival time (optionally capped at `max_concurrency` in flight) to
/completions (default) or /chat/completions (`endpoint="chat"`, for APIs with chat models only) with
max_tokens=output_len; TTFT, ITL, TPOT and E2EL come from chunk arrival times.

`ignore_eos` (vLLM's extension that fixes the output length) is sent only to servers that accept it:
ours, vLLM, or a base_url of no known provider (assumed self-hosted). Hosted APIs reject unknown
arguments, so there a request may stop before output_len at the model's end-of-sequence.
"""

from __future__ import annotations

import asyncio
import random
import time

from lab._checks import is_int
from lab.client._aio import run_sync
from lab.client.client import AsyncClient
from lab.client.providers import PROVIDERS, redact_url
from lab.metrics import RequestMetrics, Result
from lab.workload import RequestSpec, Workload

# Short, common English words: one token each in most BPE vocabularies, so n words ~ n tokens.
# A character-level tokenizer counts more; the server's usage.prompt_tokens is what gets recorded.
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part"
).split()


def synthetic_prompt(num_tokens: int, seed: int | str = 0) -> str:
    """About `num_tokens` tokens of plain words, the same for the same seed."""
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(num_tokens))


ENDPOINTS = {"completions": "/completions", "chat": "/chat/completions"}


def _prompt(spec: RequestSpec) -> str | list[int]:
    if spec.prompt is not None:
        return spec.prompt
    if spec.prompt_token_ids is not None:
        return list(spec.prompt_token_ids)  # OpenAI-compatible servers accept token ids as the prompt
    return synthetic_prompt(spec.prompt_len or 1, seed=spec.id)


def request_body(spec: RequestSpec, model: str, endpoint: str = "completions", ignore_eos: bool = True) -> dict:
    """The streamed request for `spec`; `ignore_eos=False` leaves vLLM's extension out whatever the spec says."""
    prompt = _prompt(spec)
    if endpoint == "chat":
        if not isinstance(prompt, str):
            raise ValueError(f"endpoint: chat takes text prompts; request {spec.id!r} has only prompt_token_ids")
        # one user message; the chat template adds a few prompt tokens, which usage.prompt_tokens counts
        body: dict = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    else:
        body = {"model": model, "prompt": prompt}
    body.update(max_tokens=spec.output_len, temperature=spec.temperature, top_p=spec.top_p, stream=True)
    if spec.seed is not None:
        body["seed"] = spec.seed
    if spec.ignore_eos and ignore_eos:
        body["extra_body"] = {"ignore_eos": True}  # vLLM's extension; fixes the output length
    return body


async def _one(client: AsyncClient, spec: RequestSpec, body: dict, path: str, t0: float) -> RequestMetrics:
    send_t = time.perf_counter()
    # like vllm bench serve, latencies start when the request leaves; run_workload's max_concurrency
    # waits before this, and clients with their own limits are refused (their queue would count here)
    m = RequestMetrics(request_id=spec.id, arrival_s=send_t - t0, prompt_tokens=spec.prompt_len or 0)
    stream = None
    try:
        stream = await client._create(path, body)
        async for _ in stream:
            pass
    except Exception as e:  # noqa: BLE001 - a failed request is a measurement, not a crash
        m.status, m.error = "error", f"{type(e).__name__}: {e}"
        # the stream, when one opened, counted the retries it took to open
        m.retries = stream.retries if stream is not None else getattr(e, "retries_taken", 0)
        m.finish_s = time.perf_counter() - t0
        return m
    state = stream.state
    m.retries = stream.retries
    if not state.token_times:  # a 200 that never streamed a token nor ended a choice is a failure
        m.status, m.error = "error", "EmptyStream: the stream ended without a single token"
        m.finish_s = (stream.end_t or time.perf_counter()) - t0
        return m
    m.token_times_s = [t - t0 for t in state.token_times]
    m.first_token_s = m.token_times_s[0]
    # E2E ends at the last token, as in vllm bench serve: the usage chunk and [DONE] after it are
    # not generation, and a server slow to close the stream would otherwise inflate E2EL and TPOT
    m.finish_s = m.token_times_s[-1]
    m.finish_reason = state.finish_reason
    usage = state.usage
    m.prompt_tokens = (usage and usage.prompt_tokens) or m.prompt_tokens
    # no usage chunk, or one without completion_tokens: count the timed chunks, one token each as
    # servers usually stream them (vllm bench serve retokenizes the text instead)
    m.output_tokens = (usage and usage.completion_tokens) or len(state.token_times)
    return m


async def arun_workload(client, workload: Workload, max_concurrency: int | None = None, *,
                        model: str | None = None, max_retries: int = 0, label: str | None = None,
                        endpoint: str = "completions", progress: bool = False) -> Result:
    """Replay `workload` against the server; one `RequestMetrics` per request, failures included.

    `model` defaults to the server's first model. Retries are off by default (`max_retries=0`) so
    latencies are those of single attempts, as in `vllm bench serve`. `endpoint="chat"` sends each
    prompt as one user message to /chat/completions (text prompts only). `progress=True` shows a bar
    that ticks as each request finishes, failed ones counted in its postfix; off by default, as in
    `simulate`, so notebooks and scripts stay quiet unless asked (the CLI turns it on).
    """
    if max_concurrency is not None and (not is_int(max_concurrency) or max_concurrency < 1):
        raise ValueError(f"max_concurrency: must be an integer >= 1 or None, got {max_concurrency!r}")
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint: must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
    if client.limits.active:
        raise ValueError("client: has client-side limits (max_concurrency, rpm or tpm), whose queue would count "
                         "as latency; pass a client without them, and max_concurrency=... to run_workload")
    # no provider: a base_url of no known hosted API, taken to be a self-hosted vLLM-compatible server
    ignore_eos = client.provider is None or PROVIDERS[client.provider].vllm_extensions
    own = not isinstance(client, AsyncClient)
    aclient = AsyncClient(**client.config()) if own else client
    try:
        aclient = aclient.with_options(max_retries=max_retries)
        if model is None:
            models = await aclient.models.list()
            if not models:
                raise ValueError(f"{redact_url(aclient.base_url)}/models lists no model; pass model=...")
            model = models[0].id
        # built before the clock starts: a bad spec fails the call, not one request in the measurement
        bodies = [request_body(spec, model, endpoint, ignore_eos) for spec in workload]
        path = ENDPOINTS[endpoint]
        gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        from tqdm.auto import tqdm  # on first use, as in batch.py: importing lab.client stays quick

        bar = tqdm(total=len(bodies), desc="requests", disable=not progress)
        failed = 0
        t0 = time.perf_counter()

        async def send(spec: RequestSpec, body: dict) -> RequestMetrics:
            if gate is None:
                return await _one(aclient, spec, body, path, t0)
            async with gate:
                return await _one(aclient, spec, body, path, t0)

        async def timed(spec: RequestSpec, body: dict) -> RequestMetrics:
            nonlocal failed
            delay = t0 + spec.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            m = await send(spec, body)
            # a tick per finished request, failures included: a long run against a slow server looked hung
            failed += not m.ok
            bar.update(1)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            return m

        try:
            metrics = await asyncio.gather(*(timed(spec, body) for spec, body in zip(workload, bodies, strict=True)))
        finally:
            bar.close()
        duration = time.perf_counter() - t0
    finally:
        if own:
            await aclient.close()
    return Result(requests=list(metrics), duration_s=duration,
                  label=label or f"http {redact_url(aclient.base_url)} ({model})")


def run_workload(client, workload: Workload, max_concurrency: int | None = None, **kw) -> Result:
    """`arun_workload` for plain code; in a notebook either works (this one on a helper thread)."""
    source = client

    async def go():
        # a fresh AsyncClient in this loop: an existing one's connections belong to another loop
        fresh = AsyncClient(**source.config())
        try:
            return await arun_workload(fresh, workload, max_concurrency, **kw)
        finally:
            await fresh.close()

    return run_sync(go)
