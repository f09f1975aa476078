"""EngineConfig: every knob of the scheduler and KV cache, validated in one place.

The simulator builds the same config, so a what-if study uses exactly the engine's limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab._checks import is_finite, is_int

POLICIES = ("static", "continuous")


@dataclass(slots=True)
class EngineConfig:
    policy: str = "continuous"
    block_size: int = 16
    num_blocks: int | None = None  # None: derived from kv_cache_memory_gib; given, it wins (vLLM's override)
    kv_cache_memory_gib: float | None = None  # in the simulator with tensor parallelism: per GPU
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    static_batch_timeout_s: float = 0.5  # static: start a partial batch after this long
    # GPU only: decode-only steps replay CUDA graphs (lab.engine.cuda_graph). vLLM's default, off here:
    # steps that mix in a prefill still run eagerly, which favours static batching (docs/benchmarks.md)
    cuda_graphs: bool = False

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown value {self.policy!r}; allowed: {', '.join(POLICIES)}")
        self.block_size = _positive("block_size", self.block_size)
        self.max_num_seqs = _positive("max_num_seqs", self.max_num_seqs)
        self.max_num_batched_tokens = _positive("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.num_blocks is not None:
            self.num_blocks = _positive("num_blocks", self.num_blocks)
        if self.kv_cache_memory_gib is not None and not is_finite(self.kv_cache_memory_gib):
            raise ValueError(f"kv_cache_memory_gib: must be a finite number > 0, got {self.kv_cache_memory_gib!r}")
        if self.max_model_len is not None:
            self.max_model_len = _positive("max_model_len", self.max_model_len)
        if self.max_num_batched_tokens < self.max_num_seqs:
            # every running sequence must be able to decode one token per step
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs})"
            )
        if not is_finite(self.static_batch_timeout_s, inclusive=True):
            # NaN would never start a partial batch: a server (which never flushes) would hang
            raise ValueError(f"static_batch_timeout_s: must be a finite number >= 0, got {self.static_batch_timeout_s!r}")
        for name in ("enable_prefix_caching", "enable_chunked_prefill", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):  # "false" is a truthy string
                raise ValueError(f"{name}: must be True or False, got {getattr(self, name)!r}")


def _positive(name: str, value) -> int:
    # numpy integers too (a sweep over np.arange), stored as plain ints: json cannot write numpy ones
    if not is_int(value) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    return int(value)


def blocks_in_budget(config: EngineConfig, block_bytes: float, field: str = "kv_cache_memory_gib",
                     per: str = "") -> int:
    """The KV blocks of `block_bytes` that config.kv_cache_memory_gib holds, less the scratch block a
    CUDA-graph cache keeps; engine and simulator alike (there, bytes per GPU). A budget that holds no
    block is refused: rounding up to one block used memory nobody gave."""
    blocks = int(config.kv_cache_memory_gib * 2**30 // block_bytes) - config.cuda_graphs
    if blocks < 1:
        need = (1 + config.cuda_graphs) * block_bytes / 2**30
        raise ValueError(f"{field}: {config.kv_cache_memory_gib:g} GiB holds no KV block ({block_bytes:,.0f} bytes{per} "
                         f"for {config.block_size} tokens); allowed: at least {need:.3g} GiB")
    return blocks
