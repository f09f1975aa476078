"""Step-time models: how long one engine step takes, given the shape of its batch.

`FittedStepModel` learns from an engine run's step trace (non-negative least squares);
`RooflineStepModel` estimates from a GPU's bandwidth and FLOP/s and a model's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from lab._checks import is_finite
from lab.metrics import Result, StepRecord
from lab.sim.gpus import GPU, ModelShape, get_gpu, get_model, kv_cache_blocks, kv_heads_per_gpu


@dataclass(slots=True)
class BatchShape:
    """What a step computes. A decode is one token on top of a cached context (as the engine's
    model runner sorts them); everything else is a prefill chunk."""

    prefill_tokens: int = 0
    prefill_seqs: int = 0
    decode_seqs: int = 0
    context_tokens: int = 0  # attended context summed over the batch
    decode_context: int = 0  # of which, the decodes'
    max_decode_context: int = 0  # the engine pads decode attention to the longest one
    prefill_attention: int = 0  # causal query-key pairs of the prefill chunks

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


def batch_shape(seqs, num_new_tokens) -> BatchShape:
    """Shape of a scheduled batch, read before the scheduler advances `num_computed_tokens`."""
    s = BatchShape()
    for seq, n in zip(seqs, num_new_tokens, strict=True):
        _add(s, seq.num_computed_tokens, n)
    return s


def _add(s: BatchShape, cached: int, n: int) -> None:
    ctx = cached + n
    s.context_tokens += ctx
    if n == 1 and cached > 0:
        s.decode_seqs += 1
        s.decode_context += ctx
        if ctx > s.max_decode_context:
            s.max_decode_context = ctx
    else:
        s.prefill_tokens += n
        s.prefill_seqs += 1
        s.prefill_attention += n * cached + n * (n + 1) // 2


def _step_records(steps) -> list[StepRecord]:
    """A step trace as a list: `engine.trace`, `result.steps`, or the Result itself (as lab.viz takes it)."""
    if isinstance(steps, Result):
        return steps.steps
    # a Result's requests, or None, failed on "'RequestMetrics' object has no attribute 'replica'"
    if isinstance(steps, (list, tuple)) and all(isinstance(st, StepRecord) for st in steps):
        return list(steps)
    raise ValueError(f"steps: expected a list of StepRecord (llm.engine.trace, result.steps) or a Result, "
                     f"got {type(steps).__name__}")


def shapes_from_trace(steps: list[StepRecord]) -> list[BatchShape]:
    """Each step's shape: exact where the record lists `computed` (tokens cached before the step),
    else rebuilt by replaying the (request id, tokens) lists.

    Replaying cannot see preemption; a request that decoded and then computes several tokens again
    is taken as recomputing from zero (prefix-cache hits on recompute are missed). Without prompt
    lengths it cannot tell a 1-token prefill chunk (what was left of a token budget) from a decode
    either, so a larger chunk after one is taken as a recompute too. Engine traces list `computed`;
    only hand-made or older ones take this path.
    """
    steps = _step_records(steps)
    computed: dict[str, int] = {}
    last_n: dict[str, int] = {}
    shapes = []
    for st in steps:
        s = BatchShape()
        if len(st.computed) == len(st.batch) and st.batch:
            for (rid, n), cached in zip(st.batch, st.computed, strict=True):
                _add(s, cached, n)
                computed[rid], last_n[rid] = cached + n, n
            shapes.append(s)
            continue
        for rid, n in st.batch:
            cached = computed.get(rid, 0)
            if n > 1 and last_n.get(rid) == 1 and cached > 0:
                cached = 0  # preempted while decoding: recompute
            _add(s, cached, n)
            computed[rid], last_n[rid] = cached + n, n
        shapes.append(s)
    return shapes


FEATURES = (
    "const",
    "prefill_tokens",
    "prefill_seqs",
    "decode_seqs",
    "decode_context",
    "decode_padded",
    "prefill_attention",
)


def _row(s: BatchShape) -> list[float]:
    return [
        1.0,
        s.prefill_tokens,
        s.prefill_seqs,
        s.decode_seqs,
        s.decode_context,
        s.decode_seqs * s.max_decode_context,
        s.prefill_attention,
    ]


@dataclass(slots=True)
class FittedStepModel:
    """seconds = sum(coef[f] * feature f), every coefficient >= 0."""

    coef: dict[str, float]

    def __post_init__(self):
        if not isinstance(self.coef, Mapping):  # "const" was read as the features c, o, n, s, t
            raise ValueError(f"coef: expected a mapping of feature name to seconds per unit, e.g. "
                             f"{{'const': 0.004}}, got {type(self.coef).__name__}")
        unknown = set(self.coef) - set(FEATURES)
        if unknown:
            raise ValueError(f"coef: unknown feature(s) {sorted(unknown)}; allowed: {', '.join(FEATURES)}")
        # a negative or NaN coefficient makes steps run backwards in time, or every latency NaN
        bad = next((f for f, v in self.coef.items() if not is_finite(v, inclusive=True)), None)
        if bad is not None:
            raise ValueError(f"coef[{bad!r}]: must be a finite number >= 0 (seconds per unit), got {self.coef[bad]!r}")
        self.coef = {f: float(self.coef.get(f, 0.0)) for f in FEATURES}

    def step_time(self, s: BatchShape) -> float:
        c = self.coef
        return (
            c["const"]
            + c["prefill_tokens"] * s.prefill_tokens
            + c["prefill_seqs"] * s.prefill_seqs
            + c["decode_seqs"] * s.decode_seqs
            + c["decode_context"] * s.decode_context
            + c["decode_padded"] * s.decode_seqs * s.max_decode_context
            + c["prefill_attention"] * s.prefill_attention
        )

    @classmethod
    def fit(cls, steps: list[StepRecord], features: tuple[str, ...] = FEATURES) -> FittedStepModel:
        """Fit step-to-next-step time (the engine's loop overhead between steps included).

        `steps`: `llm.engine.trace`, `result.steps` or the Result. Steps that may be followed by an
        idle wait (nothing left running, and fewer waiting than a full batch) are left out. Slow
        outliers (the CPU busy elsewhere) are kept: they are part of the measured latencies the fit
        must predict.
        """
        if isinstance(features, str):  # "const" was read as the features c, o, n, s, t
            features = (features,)
        bad = set(features) - set(FEATURES)
        if bad:
            raise ValueError(f"features: unknown {sorted(bad)}; allowed: {', '.join(FEATURES)}")
        # a repeated feature's coefficient was overwritten by its twin's 0; () fitted an all-zero model
        if not features or len(set(features)) != len(features):
            raise ValueError(f"features: need one or more distinct names, got {tuple(features)!r}")
        rows, y = [], []
        for group in _by_replica(_step_records(steps)):  # a step's time runs to the next step of its own replica
            shapes = shapes_from_trace(group)
            for i, st in enumerate(group[:-1]):
                # nothing running but a full batch waiting: either policy steps again at once. A run of
                # one-token outputs finishes every step's batch, and was left with no steps to fit
                full_batch = st.idle_slots + len(st.batch)  # max_num_seqs
                if st.num_running > 0 or st.num_waiting >= full_batch:
                    rows.append(_row(shapes[i]))
                    y.append(group[i + 1].start_s - st.start_s)
        if len(y) < len(features) + 1:
            raise ValueError(
                f"steps: need at least {len(features) + 1} back-to-back steps to fit, got {len(y)}"
            )
        cols = [FEATURES.index(f) for f in features]
        w = _nnls(np.asarray(rows, dtype=float)[:, cols], np.asarray(y))
        return cls(dict(zip(features, w.tolist(), strict=True)))

    def predict(self, steps: list[StepRecord]) -> np.ndarray:
        """Predicted seconds for each step, in the order given (replicas replayed separately)."""
        steps = _step_records(steps)
        position = {id(st): i for i, st in enumerate(steps)}
        out = np.zeros(len(steps))
        for group in _by_replica(steps):
            for st, shape in zip(group, shapes_from_trace(group), strict=True):
                out[position[id(st)]] = self.step_time(shape)
        return out


def _by_replica(steps: list[StepRecord]) -> list[list[StepRecord]]:
    groups: dict[int, list[StepRecord]] = {}
    for st in steps:
        groups.setdefault(st.replica, []).append(st)
    return [sorted(g, key=lambda st: st.start_s) for g in groups.values()]


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of features: the best of the subsets whose plain
    least-squares solution is non-negative (that is where the NNLS optimum lies)."""
    k = X.shape[1]
    best, best_err = np.zeros(k), float(y @ y)
    for size in range(1, k + 1):
        for subset in combinations(range(k), size):
            sol, *_ = np.linalg.lstsq(X[:, subset], y, rcond=None)
            if (sol < 0).any():
                continue
            err = float(np.sum((y - X[:, subset] @ sol) ** 2))
            if err < best_err:
                best_err, best = err, np.zeros(k)
                best[list(subset)] = sol
    return best


@dataclass(slots=True)
class ConstantStepModel:
    """Every step takes `seconds`: for hand-computed examples."""

    seconds: float

    def __post_init__(self):
        if not is_finite(self.seconds):  # inf would end no step: the run stalls with a misleading KV error
            raise ValueError(f"seconds: must be a finite number > 0, got {self.seconds!r}")

    def step_time(self, s: BatchShape) -> float:
        return self.seconds


@dataclass(slots=True)
class RooflineStepModel:
    """max(FLOPs / peak, bytes / bandwidth) + a fixed per-step overhead.

    FLOPs: 2 x params per token plus attention (4 x heads x head_dim per layer per query-key pair),
    at the BF16 peak, or the FP8 peak for a model of 1-byte weights on a GPU that has one. Bytes: the
    weights once per step plus the KV of every attended token. The efficiencies are what real
    kernels reach of the peaks (assumed, typical of vLLM on Hopper); tensor parallelism splits
    both evenly and adds two all-reduces of the step's activations per layer, not overlapped
    (the embedding's and the logits' collectives are left out). An all-reduce of a B-byte message
    moves 2(tp-1)/tp x B bytes over one direction of the GPU's link, the faster of two ways, as
    vLLM picks a one-shot kernel for small messages and NCCL's ring for large ones:
    `allreduce_latency_s` + the bytes at `allreduce_efficiency` of the link (fitted to H100
    measurements of such a kernel in sgl-project/sglang#2904: 4-6 us up to 32 KB, 20-34 us at 1 MB
    for 2 to 8 GPUs; vLLM's own kernel measured 9-10 and 27-45 us there), or `ring_latency_s` + the
    bytes at `ring_efficiency` of the link (both assumed; the ring takes over at messages of about
    2.1 MB on 2 GPUs, 1.2 MB on 8). The kernel is used only over NVLink or on 2 GPUs, as in vLLM.
    Those measurements ran without CUDA graphs; vLLM decodes under them, where the kernel's fixed
    cost is lower, so decode steps' communication is likely overstated here.
    """

    gpu: str | GPU = "H100-SXM"
    model: str | ModelShape = "llama-3.1-8b"
    flops_efficiency: float = 0.6
    bandwidth_efficiency: float = 0.8
    overhead_s: float = 0.001  # scheduling, sampling, launches per step
    tensor_parallel: int = 1
    allreduce_latency_s: float = 5e-6
    allreduce_efficiency: float = 0.15
    ring_latency_s: float = 30e-6
    ring_efficiency: float = 0.8
    _k: tuple = field(init=False, repr=False, default=())

    def __setattr__(self, name, value):
        # the coefficients are worked out once, in __post_init__: a field changed afterwards (a notebook's
        # `m.gpu = "A100-80GB"`) left the step times of the old one beside the new one's KV cache.
        # Now a change is checked and recomputed, and a refused one leaves the model as it was
        if name == "_k" or not getattr(self, "_k", ()):  # during __init__
            object.__setattr__(self, name, value)
            return
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        try:
            self.__post_init__()
        except Exception:
            object.__setattr__(self, name, old)
            raise

    def __post_init__(self):
        object.__setattr__(self, "gpu", get_gpu(self.gpu))
        object.__setattr__(self, "model", get_model(self.model))
        for name in ("flops_efficiency", "bandwidth_efficiency", "allreduce_efficiency", "ring_efficiency"):
            value = getattr(self, name)
            if not is_finite(value) or value > 1:  # "0.6" was a TypeError naming neither field nor rule
                raise ValueError(f"{name}: must be a number in (0, 1], got {value!r}")
        if not is_finite(self.overhead_s, inclusive=True):  # NaN passed `< 0` and made every time NaN
            raise ValueError(f"overhead_s: must be a finite number >= 0, got {self.overhead_s!r}")
        for name in ("allreduce_latency_s", "ring_latency_s"):
            if not is_finite(getattr(self, name), inclusive=True):
                raise ValueError(f"{name}: must be a finite number >= 0, got {getattr(self, name)!r}")
        g, m, tp = self.gpu, self.model, self.tensor_parallel
        kv_share = kv_heads_per_gpu(m, tp) / m.kv_heads  # checks tp against the model's heads
        if tp > 1 and not g.link_gbps:
            raise ValueError(f"tensor_parallel: {g.name} has no link_gbps (GPU-to-GPU bandwidth) for its all-reduces")
        # fp8 weights (dtype_bytes 1) run on the FP8 tensor cores where the GPU has them
        peak = g.fp8_tflops if m.dtype_bytes == 1 and g.fp8_tflops else g.bf16_tflops
        flops = peak * 1e12 * self.flops_efficiency * tp
        bandwidth = g.bandwidth_gbps * 1e9 * self.bandwidth_efficiency * tp
        object.__setattr__(self, "_k", (
            2 * m.params / flops,
            4 * m.layers * m.query_heads * m.head_dim / flops,
            m.weight_bytes / bandwidth,
            # each GPU reads its own KV heads at its own bandwidth (copied heads are read on every GPU)
            m.kv_bytes_per_token * kv_share / (bandwidth / tp),
            *self._allreduce(),
        ))

    def _allreduce(self) -> tuple[float, ...]:
        """The step's 2 all-reduces per layer, (seconds, seconds per token) of each way; 0 on one GPU."""
        g, m, tp = self.gpu, self.model, self.tensor_parallel
        if tp == 1:
            return 0.0, 0.0, 0.0, 0.0
        one_way = g.link_gbps / 2 * 1e9
        activation_bytes = max(2, m.dtype_bytes)  # 16-bit under fp8 weights, 4 under fp32
        moved = 2 * m.layers * 2 * (tp - 1) / tp * m.hidden * activation_bytes  # per token
        ring = (2 * m.layers * self.ring_latency_s, moved / (one_way * self.ring_efficiency))
        if not g.nvlink and tp > 2:  # vLLM turns its one-shot kernel off on more than 2 PCIe GPUs
            return (*ring, *ring)
        return (2 * m.layers * self.allreduce_latency_s, moved / (one_way * self.allreduce_efficiency), *ring)

    def step_time(self, s: BatchShape) -> float:
        per_token, per_pair, weights, per_kv, shot, shot_per_token, ring, ring_per_token = self._k
        n = s.num_tokens
        compute = per_token * n + per_pair * (s.prefill_attention + s.decode_context)
        memory = weights + per_kv * s.context_tokens
        comm = min(shot + shot_per_token * n, ring + ring_per_token * n)
        return self.overhead_s + (compute if compute > memory else memory) + comm

    def kv_cache_blocks(self, block_size: int = 16, gpu_memory_utilization: float = 0.9) -> int:
        return kv_cache_blocks(
            self.gpu, self.model, block_size, gpu_memory_utilization, tensor_parallel=self.tensor_parallel
        )

    @property
    def max_model_len(self) -> int:
        return self.model.max_model_len
