"""Load generation over HTTP: replay a `Workload`'s arrivals as streaming requests, measure like `vllm bench serve`.

Each request is sent at its arrival time (optionally capped at `max_concurrency` in flight) to the
completions endpoint with max_tokens=output_len; TTFT, ITL, TPOT and E2EL come from chunk arrival times.
"""

from __future__ import annotations

import asyncio
import random
import time

from lab.client._aio import run_sync
from lab.client.client import AsyncClient
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


def request_body(spec: RequestSpec, model: str) -> dict:
    if spec.prompt is not None:
        prompt: str | list[int] = spec.prompt
    elif spec.prompt_token_ids is not None:
        prompt = list(spec.prompt_token_ids)  # OpenAI-compatible servers accept token ids as the prompt
    else:
        prompt = synthetic_prompt(spec.prompt_len or 1, seed=spec.id)
    body = {"model": model, "prompt": prompt, "max_tokens": spec.output_len, "temperature": spec.temperature,
            "top_p": spec.top_p, "stream": True}
    if spec.seed is not None:
        body["seed"] = spec.seed
    if spec.ignore_eos:
        body["extra_body"] = {"ignore_eos": True}  # vLLM's extension; fixes the output length
    return body


async def _one(client: AsyncClient, spec: RequestSpec, model: str, t0: float) -> RequestMetrics:
    send_t = time.perf_counter()
    # like vllm bench serve, latencies start when the request leaves (after any client-side queue)
    m = RequestMetrics(request_id=spec.id, arrival_s=send_t - t0, prompt_tokens=spec.prompt_len or 0)
    stream = None
    try:
        stream = await client._create("/completions", request_body(spec, model))
        async for _ in stream:
            pass
    except Exception as e:  # noqa: BLE001 - a failed request is a measurement, not a crash
        m.status, m.error = "error", f"{type(e).__name__}: {e}"
        m.retries = getattr(e, "retries_taken", 0)
        m.finish_s = time.perf_counter() - t0
        return m
    state = stream.state
    m.retries = stream.retries
    m.token_times_s = [t - t0 for t in state.token_times]
    first = state.token_times[0] if state.token_times else state.first_chunk_t
    m.first_token_s = None if first is None else first - t0
    m.finish_s = (stream.end_t or time.perf_counter()) - t0
    m.finish_reason = state.finish_reason
    if state.usage is not None:
        m.prompt_tokens = state.usage.prompt_tokens or m.prompt_tokens
        m.output_tokens = state.usage.completion_tokens
    else:  # no usage chunk: count chunks with text, one token each as servers usually stream them
        m.output_tokens = len(state.token_times)
    return m


async def arun_workload(client, workload: Workload, max_concurrency: int | None = None, *,
                        model: str | None = None, max_retries: int = 0, label: str | None = None) -> Result:
    """Replay `workload` against the server; one `RequestMetrics` per request, failures included.

    `model` defaults to the server's first model. Retries are off by default (`max_retries=0`) so
    latencies are those of single attempts, as in `vllm bench serve`.
    """
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
    own = not isinstance(client, AsyncClient)
    aclient = AsyncClient(**client.config()) if own else client
    try:
        aclient = aclient.with_options(max_retries=max_retries)
        if model is None:
            models = await aclient.models.list()
            if not models:
                raise ValueError(f"{aclient.base_url}/models lists no model; pass model=...")
            model = models[0].id
        gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        t0 = time.perf_counter()

        async def timed(spec: RequestSpec) -> RequestMetrics:
            delay = t0 + spec.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if gate is None:
                return await _one(aclient, spec, model, t0)
            async with gate:
                return await _one(aclient, spec, model, t0)

        metrics = await asyncio.gather(*(timed(spec) for spec in workload))
        duration = time.perf_counter() - t0
    finally:
        if own:
            await aclient.close()
    return Result(requests=list(metrics), duration_s=duration,
                  label=label or f"http {aclient.base_url} ({model})")


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
