"""Per-request and per-step measurements, and the `Result` every runner returns.

Engine, simulator and HTTP client all fill the same records, so one chart or table compares
them; `Result.summary()` reports what `vllm bench serve` reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise

import numpy as np

from lab._checks import is_finite

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestMetrics:
    """Times are seconds from the start of the run (wall clock or virtual)."""

    request_id: str
    arrival_s: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)  # one per output token, for ITL
    status: str = "ok"  # "ok", "error" or "aborted"
    finish_reason: str | None = None
    error: str | None = None
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def queue_s(self) -> float | None:
        if self.first_scheduled_s is None:
            return None
        return self.first_scheduled_s - self.arrival_s

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_s is None:
            return None
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        if self.finish_s is None:
            return None
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (vLLM's TPOT)."""
        if self.finish_s is None or self.first_token_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in pairwise(t)]

    def shifted(self, offset_s: float) -> RequestMetrics:
        """A copy with every time moved by `-offset_s` (to make times relative to a run start)."""

        def sh(t):
            return None if t is None else t - offset_s

        return replace(self, arrival_s=self.arrival_s - offset_s, first_scheduled_s=sh(self.first_scheduled_s),
                       first_token_s=sh(self.first_token_s), finish_s=sh(self.finish_s),
                       token_times_s=[t - offset_s for t in self.token_times_s])


@dataclass(slots=True)
class StepRecord:
    """One engine (or simulated) step: what ran, and the state around it."""

    step: int
    start_s: float
    duration_s: float
    prefill_tokens: int  # tokens computed for sequences still in (or recomputing) their prompt
    decode_seqs: int  # sequences that computed exactly one new token
    num_running: int
    num_waiting: int
    kv_blocks_used: int
    num_preempted: int = 0
    num_finished: int = 0
    context_tokens: int = 0  # total attended context over the batch (drives attention cost)
    idle_slots: int = 0  # of max_num_seqs, slots that computed nothing this step
    batch: list[tuple[str, int]] = field(default_factory=list)  # (request id, tokens computed)
    replica: int = 0  # which replica ran it, when a router spreads a workload over several
    computed: list[int] = field(default_factory=list)  # per batch entry: tokens in the KV cache before

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.batch)


def _stats(values, prefix: str) -> dict[str, float]:
    """mean, median, std and p90/p99 in ms, as `vllm bench serve` reports them (np.std: population)."""
    if isinstance(values, list):
        values = [v for v in values if v is not None]
    arr = np.asarray(values, dtype=float)
    keys = ["mean", "median", "std"] + [f"p{p}" for p in PERCENTILES if p != 50]
    if arr.size == 0:
        return {f"{k}_{prefix}_ms": float("nan") for k in keys}
    ms = arr * 1e3
    out = {f"mean_{prefix}_ms": float(ms.mean()), f"median_{prefix}_ms": float(np.median(ms)),
           f"std_{prefix}_ms": float(ms.std())}
    out.update({f"p{p}_{prefix}_ms": float(np.percentile(ms, p)) for p in PERCENTILES if p != 50})
    return out


@dataclass(slots=True)
class Result:
    """What a runner measured: one `RequestMetrics` per request, and the step trace if it has one."""

    requests: list[RequestMetrics]
    steps: list[StepRecord] = field(default_factory=list)
    duration_s: float | None = None
    label: str = ""

    @property
    def completed(self) -> list[RequestMetrics]:
        return [r for r in self.requests if r.ok]

    @property
    def span_s(self) -> float:
        """Benchmark duration: given, or first arrival to last finish."""
        if self.duration_s is not None:
            return self.duration_s
        finishes = [r.finish_s for r in self.requests if r.finish_s is not None]
        if not finishes:
            return 0.0
        return max(finishes) - min(r.arrival_s for r in self.requests)

    def summary(self, slo_ms: dict[str, float] | None = None) -> dict[str, float]:
        """What `vllm bench serve` prints (vllm/benchmarks/serve.py, calculate_metrics).

        Over completed requests only: TPOT excludes the first token and skips one-token outputs;
        ITL pools every gap between consecutive tokens. `slo_ms` maps "ttft" / "tpot" / "e2el" to
        limits in ms: goodput (= vLLM's request_goodput) is requests/s meeting all of them, a
        one-token output meeting any TPOT limit. Duration is first arrival to last finish.
        """
        done = self.completed
        if self.duration_s is not None and not is_finite(self.duration_s):
            raise ValueError(f"duration_s: must be a number of seconds > 0, or None, got {self.duration_s!r}")
        span = self.span_s or float("nan")
        # nothing completed is 0 per second, also when nothing finished at all (every request refused)
        per_s = 1 / span if done else 0.0
        out_tokens = sum(r.output_tokens for r in done)
        in_tokens = sum(r.prompt_tokens for r in done)
        s: dict[str, float] = {
            "completed": len(done),
            "failed": len(self.requests) - len(done),
            "duration_s": span,
            "total_input_tokens": in_tokens,
            "total_output_tokens": out_tokens,
            "request_throughput": len(done) * per_s,
            "output_throughput": out_tokens * per_s,
            "total_token_throughput": (in_tokens + out_tokens) * per_s,
        }
        s.update(_stats([r.ttft_s for r in done], "ttft"))
        s.update(_stats([r.tpot_s for r in done], "tpot"))
        gaps = [np.diff(r.token_times_s) for r in done if len(r.token_times_s) > 1]
        s.update(_stats(np.concatenate(gaps) if gaps else np.empty(0), "itl"))
        s.update(_stats([r.e2e_s for r in done], "e2el"))
        if slo_ms is not None:
            check_slos(slo_ms)
        if slo_ms:
            good = sum(1 for r in done if _meets(r, slo_ms))
            s["goodput"] = s["request_goodput"] = good * per_s
        if self.steps:
            s["wasted_slot_steps"] = sum(min(st.idle_slots, st.num_waiting) for st in self.steps)
        return s

    @classmethod
    def merge(cls, results: list[Result], label: str = "") -> Result:
        """One Result from several runs over the same clock (replicas behind a router)."""
        requests = [r for res in results for r in res.requests]
        steps = sorted((s for res in results for s in res.steps), key=lambda s: s.start_s)
        return cls(requests, steps, label=label)

    def to_frame(self):
        """One row per request; the same columns and dtypes whatever the rows (times float, NaN if unset)."""
        import pandas as pd

        rows = []
        for r in self.requests:
            row = asdict(r)
            row.pop("token_times_s")
            row.update(ttft_s=r.ttft_s, tpot_s=r.tpot_s, e2e_s=r.e2e_s, queue_s=r.queue_s)
            rows.append(row)
        # an all-None column would be dtype object (no .mean(), no plot); no rows, no columns at all
        # built as object, text columns stay so (str or None): pandas 3 inferred str for some rows and
        # object for others (no rows, or all None), with NaN or None for a missing value
        df = pd.DataFrame(rows, columns=_FRAME_COLUMNS, dtype=object)
        return df.astype({c: float for c in _FRAME_TIMES} | {c: "int64" for c in _FRAME_COUNTS})

    def steps_frame(self):
        """One row per step; the same columns with no steps (an HTTP run) as with some."""
        import pandas as pd

        rows = [{k: v for k, v in asdict(s).items() if k not in ("batch", "computed")} | {"num_tokens": s.num_tokens}
                for s in self.steps]
        df = pd.DataFrame(rows, columns=_STEP_COLUMNS)  # no rows: no columns, then all dtype object
        return df.astype({c: float if c in ("start_s", "duration_s") else "int64" for c in _STEP_COLUMNS})


_FRAME_TIMES = ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "queue_s")
_FRAME_COUNTS = ("prompt_tokens", "output_tokens", "retries")
_FRAME_COLUMNS = [f for f in RequestMetrics.__dataclass_fields__ if f != "token_times_s"] + [
    "ttft_s", "tpot_s", "e2e_s", "queue_s"]
_STEP_COLUMNS = [f for f in StepRecord.__dataclass_fields__ if f not in ("batch", "computed")] + ["num_tokens"]


def check_slos(slo_ms: dict) -> None:
    """Goodput limits: keys ttft, tpot, e2el; values finite milliseconds > 0."""
    # summary(200) failed with "'int' object is not iterable", naming neither slo_ms nor its shape
    if not isinstance(slo_ms, Mapping):
        raise ValueError(f"slo_ms: must be a dict of limits in ms, like {{'ttft': 200, 'tpot': 50}}, got {slo_ms!r}")
    unknown = set(slo_ms) - {"ttft", "tpot", "e2el"}
    if unknown:
        raise ValueError(f"slo_ms: unknown keys {sorted(unknown)}; allowed: ttft, tpot, e2el")
    for key, limit in slo_ms.items():
        # NaN would pass every request (no comparison with it is true)
        if not is_finite(limit):
            raise ValueError(f"slo_ms[{key!r}]: must be a finite number of milliseconds > 0, got {limit!r}")


def _meets(r: RequestMetrics, slo_ms: dict[str, float]) -> bool:
    measured = {"ttft": r.ttft_s, "tpot": r.tpot_s, "e2el": r.e2e_s}
    for key, limit in slo_ms.items():
        value = measured[key]
        # vLLM's arithmetic (limit / 1000 >= seconds), so a request on the limit counts as there
        if value is not None and not limit / 1e3 >= value:
            return False
    return True


_SECTIONS = (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
             ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency"))


def format_summary(s: dict, title: str = "Serving Benchmark Result") -> str:
    """A `Result.summary()` laid out as `vllm bench serve` prints it."""
    lines = [f"{' ' + title + ' ':=^50}"]

    def row(name, value, fmt="{:.2f}"):
        lines.append(f"{name:<40}{fmt.format(value):>10}")

    row("Successful requests:", s["completed"], "{:d}")
    row("Failed requests:", s["failed"], "{:d}")
    row("Benchmark duration (s):", s["duration_s"])
    row("Total input tokens:", s["total_input_tokens"], "{:d}")
    row("Total generated tokens:", s["total_output_tokens"], "{:d}")
    row("Request throughput (req/s):", s["request_throughput"])
    if "goodput" in s:
        row("Request goodput (req/s):", s["goodput"])
    row("Output token throughput (tok/s):", s["output_throughput"])
    row("Total token throughput (tok/s):", s["total_token_throughput"])
    for key, name in _SECTIONS:
        lines.append(f"{name:-^50}")
        for stat in ("Mean", "Median", "P90", "P99"):
            row(f"{stat} {key.upper()} (ms):", s[f"{stat.lower()}_{key}_ms"])
    lines.append("=" * 50)
    return "\n".join(lines)


def json_ready(value):
    """`value` with every NaN or infinite float replaced by None, recursively, so that `json.dump`
    writes standard JSON: a summary has NaN where there is nothing to average (no request reached a
    second token), and Python would write a bare `NaN` that strict parsers (JavaScript's, jq) refuse."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
