"""Prometheus metrics for /metrics: engine gauges read at scrape time, token counters, and TTFT and
end-to-end latency histograms measured from the moment a request reaches the server.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lab.engine.async_engine import EngineStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self, stats: Callable[[], EngineStats]):
        # one registry per server, so two servers in one process (tests, notebooks) do not collide
        self.registry = r = CollectorRegistry()
        gauges = {
            "lab_num_requests_running": ("Requests in the running batch", "num_running"),
            "lab_num_requests_waiting": ("Requests queued for a batch slot", "num_waiting"),
            "lab_kv_blocks_used": ("KV cache blocks in use", "kv_blocks_used"),
            "lab_kv_blocks_total": ("KV cache blocks in all", "kv_blocks_total"),
        }
        for name, (doc, attr) in gauges.items():
            Gauge(name, doc, registry=r).set_function(lambda attr=attr: getattr(stats(), attr))
        self.prompt_tokens = Counter("lab_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.generation_tokens = Counter("lab_generation_tokens", "Tokens generated", registry=r)
        self.requests = Counter("lab_requests", "Requests finished, by finish reason", ["finish_reason"],
                                registry=r)
        self.errors = Counter("lab_http_errors", "Error answers, by status", ["status"], registry=r)
        self.ttft = Histogram("lab_time_to_first_token_seconds", "Time to first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.e2e = Histogram("lab_e2e_request_latency_seconds", "End-to-end request latency", registry=r,
                             buckets=LATENCY_BUCKETS)

    def finished(self, prompt_tokens: int, output_tokens: int, finish_reason: str | None,
                 e2e_s: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        self.requests.labels(finish_reason or "none").inc()
        self.e2e.observe(e2e_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ErrorCounter:
    """Counts every error answer in lab_http_errors_total by its status, whoever made it: a route's
    checks, FastAPI's 404 and 405, the request-id middleware's 500 for a bug. Added last, so outside the
    other middleware; a plain ASGI one for the reason lab/server/request_id.py gives. A stream that fails
    after its 200 is counted where its error event is sent (responses.py)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.errors = app, metrics.errors

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.errors.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
