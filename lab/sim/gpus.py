"""Named GPUs (memory, bandwidth, dense BF16 and FP8 FLOP/s from NVIDIA's spec sheets) and model shapes,
and how many KV-cache blocks fit on a GPU once the weights are loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lab._checks import is_finite, is_int


@dataclass(frozen=True, slots=True)
class GPU:
    name: str
    memory_gb: float  # HBM / GDDR capacity as the spec sheet names it ("80GB")
    bandwidth_gbps: float  # memory bandwidth, GB/s
    bf16_tflops: float  # dense BF16 tensor-core peak (the sheets print 2x this "with sparsity")
    source: str
    # the total the driver reports (nvidia-smi "Memory-Usage" column): what vLLM's
    # gpu_memory_utilization takes a fraction of. An "80GB" H100 has 81,559 MiB = 85.5e9 bytes;
    # reading the sheet's figure as 80e9 bytes cost an 8B model's KV cache ~8% of its blocks
    memory_mib: int = 0
    # dense FP8 tensor-core peak, 0 where the GPU has none (an A100 runs fp8 weights through BF16 math)
    fp8_tflops: float = 0.0
    # GPU-to-GPU bandwidth, GB/s, both directions summed as the sheets print it (NVLink, else PCIe);
    # what tensor parallelism's all-reduces run over. 0: unknown, and tensor_parallel > 1 refused
    link_gbps: float = 0.0
    # GPUs joined all to all by NVLink (SXM boards). vLLM's one-shot all-reduce kernel needs it, or at
    # most two GPUs; more PCIe GPUs use NCCL's ring for every all-reduce
    nvlink: bool = False

    def __post_init__(self):
        # a hand-made GPU: 0 bandwidth was a ZeroDivisionError in RooflineStepModel, NaN gave NaN latencies
        for name in ("memory_gb", "bandwidth_gbps", "bf16_tflops"):
            if not is_finite(getattr(self, name)):
                raise ValueError(f"GPU.{name}: must be a finite number > 0, got {getattr(self, name)!r}")
        if not is_int(self.memory_mib) or self.memory_mib < 0:
            raise ValueError(f"GPU.memory_mib: must be an integer >= 0 (0: use memory_gb), got {self.memory_mib!r}")
        if not is_finite(self.fp8_tflops, inclusive=True):
            raise ValueError(f"GPU.fp8_tflops: must be a finite number >= 0 (0: no FP8), got {self.fp8_tflops!r}")
        if not is_finite(self.link_gbps, inclusive=True):
            raise ValueError(f"GPU.link_gbps: must be a finite number >= 0 (0: unknown), got {self.link_gbps!r}")
        if not isinstance(self.nvlink, bool):  # "no" is truthy: read as NVLink, picking the faster all-reduce
            raise ValueError(f"GPU.nvlink: must be True or False, got {self.nvlink!r}")

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20


# NVIDIA's spec sheets, seen 2026-11-23; they print BF16 and FP8 "with sparsity", dense is half of it.
# memory_mib: the total nvidia-smi prints for each card (H100 80GB HBM3 81559MiB, H200 143771MiB,
# A100-SXM4-80GB 81920MiB, L4 23034MiB), as seen in public nvidia-smi logs, 2026-11-24.
# link_gbps: the sheets' interconnect row, 2026-11-24. The H100 PCIe card takes PCIe Gen5's 128GB/s:
# its 600GB/s NVLink bridge joins pairs only, and tensor parallelism past 2 goes over PCIe.
H100 = "https://www.nvidia.com/en-us/data-center/h100/"
# fmt: off
GPUS: dict[str, GPU] = {g.name: g for g in [
    GPU("H100-SXM", 80, 3350, 989.5,
        H100 + " (SXM: 80GB, 3.35TB/s, BF16 1,979 / FP8 3,958 TFLOPS sparse, NVLink 900GB/s)", 81559, 1979, 900, True),
    GPU("H100-PCIe", 80, 2000, 756.5,
        H100 + " (PCIe: 80GB, 2TB/s, BF16 1,513 / FP8 3,026 TFLOPS sparse, PCIe Gen5 128GB/s)", 81559, 1513, 128),
    GPU("H200", 141, 4800, 989.5, "https://www.nvidia.com/en-us/data-center/h200/ "
        "(SXM: 141GB, 4.8TB/s, BF16 1,979 / FP8 3,958 TFLOPS sparse, NVLink 900GB/s)", 143771, 1979, 900, True),
    GPU("A100-80GB", 80, 2039, 312, "https://www.nvidia.com/en-us/data-center/a100/ "
        "(80GB SXM: 2,039GB/s, BF16 312 TFLOPS dense, NVLink 600GB/s)", 81920, 0.0, 600, True),
    GPU("L4", 24, 300, 121, "https://www.nvidia.com/en-us/data-center/l4/ "
        "(24GB, 300GB/s, BF16 242 / FP8 485 TFLOPS sparse, PCIe Gen4 x16 64GB/s)", 23034, 242.5, 64),
]}
# fmt: on


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    params: float  # parameter count
    layers: int
    hidden: int  # hidden_size, the model width
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2  # bf16 / fp16 weights and KV cache
    max_model_len: int = 8192  # max_position_embeddings: the context the simulator allows by default
    # num_attention_heads; 0 reads it as hidden / head_dim, true of Llama and Qwen2 but not of every
    # model (Qwen3-0.6B: hidden 1024, 16 heads of 128)
    heads: int = 0

    def __post_init__(self):
        for name in ("params", "dtype_bytes"):
            # finite too: inf params made every step last forever, and the run then stalled blaming the KV cache
            if not is_finite(getattr(self, name)):
                raise ValueError(f"ModelShape.{name}: must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("layers", "hidden", "kv_heads", "head_dim", "max_model_len"):
            # whole units, as in config.json: 1.5 layers or a context of 100.5 tokens were priced as given
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"ModelShape.{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if not is_int(self.heads) or self.heads < 0:
            raise ValueError(f"ModelShape.heads: must be an integer >= 0 (0: hidden / head_dim), got {self.heads!r}")
        if self.heads == 0 and self.hidden % self.head_dim:
            raise ValueError(
                f"ModelShape.heads: hidden {self.hidden} is not a multiple of head_dim {self.head_dim}; "
                "give heads (num_attention_heads in config.json)"
            )
        if self.query_heads % self.kv_heads:  # grouped-query attention shares each KV head by a whole group
            raise ValueError(f"ModelShape.heads: {self.query_heads} attention heads cannot share "
                             f"{self.kv_heads} KV heads evenly; check heads and kv_heads")

    @property
    def query_heads(self) -> int:
        """num_attention_heads: `heads`, or hidden / head_dim where it was left at 0 (derived on each read,
        so dataclasses.replace(shape, hidden=...) follows)."""
        return self.heads or self.hidden // self.head_dim

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer (the same sum as lab.engine.model_runner.kv_bytes_per_block)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


# config.json of each model on the Hugging Face Hub (meta-llama/Llama-3.1-8B, Qwen/Qwen2.5-*);
# parameter counts from the model cards.
# fmt: off
MODELS: dict[str, ModelShape] = {m.name: m for m in [
    ModelShape("qwen2.5-0.5b", 0.494e9, 24, 896, 2, 64, max_model_len=32768),
    ModelShape("qwen2.5-7b", 7.62e9, 28, 3584, 4, 128, max_model_len=32768),
    ModelShape("llama-3.1-8b", 8.03e9, 32, 4096, 8, 128, max_model_len=131072),
    ModelShape("llama-3.1-70b", 70.6e9, 80, 8192, 8, 128, max_model_len=131072),
]}
# fmt: on


def get_gpu(gpu: str | GPU) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    if gpu not in GPUS:
        raise ValueError(f"gpu: unknown name {gpu!r}; allowed: {', '.join(GPUS)}")
    return GPUS[gpu]


def get_model(model: str | ModelShape) -> ModelShape:
    if isinstance(model, ModelShape):
        return model
    if model not in MODELS:
        raise ValueError(f"model: unknown name {model!r}; allowed: {', '.join(MODELS)}")
    return MODELS[model]


def kv_heads_per_gpu(model: str | ModelShape, tensor_parallel: int) -> int:
    """KV heads each GPU holds under tensor parallelism, by vLLM's rule: the query heads split evenly,
    the KV heads too, or each GPU keeps a copy of one when there are fewer KV heads than GPUs."""
    m = get_model(model)
    if not is_int(tensor_parallel) or tensor_parallel < 1:  # numpy integers count, bools do not
        raise ValueError(f"tensor_parallel: must be an integer >= 1, got {tensor_parallel!r}")
    tp, query_heads = int(tensor_parallel), m.query_heads
    if query_heads % tp:
        raise ValueError(f"tensor_parallel: {m.name}'s {query_heads} attention heads cannot be split "
                         f"evenly over {tp} GPUs; use a divisor of {query_heads}")
    if m.kv_heads % tp and tp % m.kv_heads:
        raise ValueError(f"tensor_parallel: {m.name}'s {m.kv_heads} KV heads can be neither split over "
                         f"nor copied to {tp} GPUs; use a divisor or a multiple of {m.kv_heads}")
    return max(1, m.kv_heads // tp)


def kv_block_bytes_per_gpu(model: str | ModelShape, block_size: int, tensor_parallel: int = 1) -> float:
    """Bytes of one KV block on each GPU: its KV heads' share of the block (a whole copied head when
    there are fewer KV heads than GPUs)."""
    m = get_model(model)
    return m.kv_bytes_per_token * block_size * kv_heads_per_gpu(m, tensor_parallel) / m.kv_heads


def kv_cache_blocks(
    gpu: str | GPU,
    model: str | ModelShape,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    activation_gib: float = 1.0,
    tensor_parallel: int = 1,
) -> int:
    """KV blocks that fit: vLLM's rule, total memory x utilization minus weights minus activation peak.

    With tensor parallelism each GPU holds 1/tp of the weights and its KV heads' share of every block
    (a whole KV head when there are fewer KV heads than GPUs).
    """
    g, m = get_gpu(gpu), get_model(model)
    if not is_finite(gpu_memory_utilization) or gpu_memory_utilization > 1:  # "0.9" was a bare TypeError
        raise ValueError(f"gpu_memory_utilization: must be a number in (0, 1], got {gpu_memory_utilization!r}")
    if not is_int(block_size) or block_size < 1:  # 0 was a ZeroDivisionError
        raise ValueError(f"block_size: must be an integer >= 1, got {block_size!r}")
    if not is_finite(activation_gib, inclusive=True):  # NaN was "cannot convert float NaN to integer"
        raise ValueError(f"activation_gib: must be a finite number >= 0, got {activation_gib!r}")
    per_block = kv_block_bytes_per_gpu(m, block_size, tensor_parallel)
    memory = g.memory_bytes or g.memory_gb * 1e9  # a GPU made by hand may give only the sheet's figure
    weights, activation = m.weight_bytes / tensor_parallel, activation_gib * 2**30
    free = memory * gpu_memory_utilization - weights - activation
    blocks = int(free // per_block)
    if blocks < 1:
        raise ValueError(_no_room(g, m, block_size, gpu_memory_utilization, tensor_parallel, memory, weights,
                                  activation, per_block))
    return blocks


def _no_room(g: GPU, m: ModelShape, block_size: int, utilization: float, tp: int, memory: float, weights: float,
             activation: float, per_block: float) -> str:
    """Why not one KV block fits, naming the knob to turn: every case read "model: ... leaves no room",
    a --gpu-memory-utilization 0.2 or a --block-size 1000000 too."""
    per_gpu = " per GPU" if tp > 1 else ""
    free = memory * utilization - weights - activation
    if free >= per_block / block_size:  # a block of one token would fit: the block is what is too large
        return (f"block_size: one block of {block_size} tokens takes {per_block / 1e9:.3g} GB of KV cache{per_gpu}, "
                f"more than the {free / 1e9:.3g} GB left after the weights; at most "
                f"{int(free // (per_block / block_size))} tokens per block fit")
    if memory - weights - activation >= per_block:  # the whole GPU would hold a block: the share is too small
        needed = math.ceil((weights + activation + per_block) / memory * 100) / 100
        return (f"gpu_memory_utilization: {utilization:g} x {memory / 1e9:.3g} GB of {g.name} = "
                f"{utilization * memory / 1e9:.3g} GB is below the {weights / 1e9:.3g} GB of weights{per_gpu} + "
                f"{activation / 1e9:.2g} GB of activations, leaving no room for a KV cache; "
                f"{needed:.2f} or more leaves some")
    return (f"model: {m.name} ({m.weight_bytes / 1e9:.0f} GB of weights) leaves no room for a KV "
            f"cache on {tp} x {g.name} ({g.memory_gb:g} GB); use a larger GPU, or more of them (tensor_parallel)")
