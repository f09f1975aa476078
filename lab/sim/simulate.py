"""`simulate(workload, config, step_model)`: the engine's scheduler in virtual time -> Result.

No threads, no sleeping: the clock jumps from step end to step end, and over idle gaps to the
next arrival. Outputs always run to `output_len` tokens (no model, so no end-of-sequence token).
"""

from __future__ import annotations

import math

from lab._checks import is_int
from lab.engine.config import EngineConfig, blocks_in_budget
from lab.metrics import Result
from lab.sim.cluster import ROUTERS, Router, make_router, run
from lab.sim.gpus import kv_block_bytes_per_gpu
from lab.sim.replica import Replica
from lab.workload import Workload


def simulate(
    workload: Workload,
    config: EngineConfig,
    step_model,
    *,
    replicas: int = 1,
    router: str | Router = "round_robin",
    progress: bool = False,
    record_steps: bool = True,
    label: str | None = None,
) -> Result:
    """Run `workload` on `replicas` simulated engines with `config`, each step lasting
    `step_model.step_time(shape)` seconds; one merged Result (steps carry their replica).

    `config.num_blocks=None` takes the KV capacity from the step model's GPU and model
    (`RooflineStepModel`), as the engine takes it from free memory; `record_steps=False` keeps no
    step trace (an hour of traffic is ~10^5-10^6 steps).
    """
    if not isinstance(workload, Workload):
        raise TypeError(f"workload: expected a lab.workload.Workload, got {type(workload).__name__}")
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config: expected an EngineConfig, got {type(config).__name__}")
    if isinstance(step_model, type):  # RooflineStepModel without (): failed later on a property or a missing argument
        raise TypeError(f"step_model: got the class {step_model.__name__}, not a model; "
                        f"make one, e.g. {step_model.__name__}(...)")
    if not callable(getattr(step_model, "step_time", None)):
        raise TypeError(
            "step_model: needs a step_time(BatchShape) -> seconds method "
            "(FittedStepModel, RooflineStepModel, ConstantStepModel)"
        )
    # is_int: a numpy integer (a sweep over np.arange) is a count too; a bool is not
    if not is_int(replicas) or replicas < 1:
        raise ValueError(f"replicas: must be an integer >= 1, got {replicas!r}")
    route = make_router(router)
    # as the engine (and vLLM): a config longer than the model's context is refused, not quietly capped,
    # which would hide that the limit asked for is not the one in force
    model_len = getattr(step_model, "max_model_len", None) or math.inf
    if config.max_model_len is not None and config.max_model_len > model_len:
        raise ValueError(f"max_model_len: {config.max_model_len} exceeds the step model's context "
                         f"({model_len} tokens); allowed: at most {model_len}, or None for the model's own")
    max_model_len = config.max_model_len or model_len
    num_blocks = _num_blocks(config, step_model, max_model_len)
    built = _replicas_to_build(replicas, router, len(workload))
    reps = [Replica(config, step_model, num_blocks, max_model_len, k, record_steps) for k in range(built)]
    run(workload, reps, route, progress)
    done = {rid: m for rep in reps for rid, m in rep.done.items()}
    requests = [done[spec.id] for spec in workload.requests]
    steps = reps[0].steps if built == 1 else sorted((s for rep in reps for s in rep.steps), key=_start)
    name = label or f"sim {config.policy}" + (f" x{replicas}" if replicas > 1 else "")
    return Result(requests, steps, label=name)


def _replicas_to_build(replicas: int, router, num_requests: int) -> int:
    """Replicas that can get a request. A built-in router never picks one past the request count
    (round robin deals them out in turn, least_outstanding takes the lowest idle index), so only those
    are built: --replicas 10**9 built engines that could never run, towards an out-of-memory kill.
    A router of one's own may pick any index: all of them."""
    if isinstance(router, str) or router in ROUTERS.values():
        return min(replicas, max(1, num_requests))
    return replicas


def _num_blocks(config: EngineConfig, step_model, max_model_len: float) -> int:
    if config.num_blocks is not None:
        return config.num_blocks
    if config.kv_cache_memory_gib is not None and hasattr(step_model, "model"):
        # per GPU, as vLLM's --kv-cache-memory: under tensor parallelism each GPU holds only its own
        # KV heads of every block, so the same budget holds more blocks
        tp = getattr(step_model, "tensor_parallel", 1)
        per_block = kv_block_bytes_per_gpu(step_model.model, config.block_size, tp)
        blocks = blocks_in_budget(config, per_block, "config.kv_cache_memory_gib", " per GPU")  # as the engine counts
    elif hasattr(step_model, "kv_cache_blocks"):
        blocks = step_model.kv_cache_blocks(config.block_size)
    elif config.kv_cache_memory_gib is not None:  # was told only that num_blocks is required
        raise ValueError(
            "config.kv_cache_memory_gib: needs a step model that knows the model's KV bytes per block "
            f"(a RooflineStepModel), not {type(step_model).__name__}; set EngineConfig(num_blocks=...) instead"
        )
    else:
        raise ValueError(
            "config.num_blocks: required with this step model (only a RooflineStepModel knows "
            "its GPU memory); set EngineConfig(num_blocks=...)"
        )
    if math.isfinite(max_model_len):  # as the engine: never more than every slot at full length needs
        blocks = min(blocks, config.max_num_seqs * -(-int(max_model_len) // config.block_size))
    return max(1, blocks)


def _start(step) -> float:
    return step.start_s
