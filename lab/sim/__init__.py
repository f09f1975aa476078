"""The simulator: the engine's own scheduler and block manager in virtual time, with step-time
models (fitted from an engine trace, or a roofline for named GPUs) and replicas behind a router.
"""

from lab.sim.cluster import ROUTERS, least_outstanding, round_robin
from lab.sim.gpus import GPU, GPUS, MODELS, ModelShape, get_gpu, get_model, kv_cache_blocks, kv_heads_per_gpu
from lab.sim.simulate import simulate
from lab.sim.step_models import (
    FEATURES,
    BatchShape,
    ConstantStepModel,
    FittedStepModel,
    RooflineStepModel,
    batch_shape,
    shapes_from_trace,
)

__all__ = [
    "FEATURES",
    "GPU",
    "GPUS",
    "MODELS",
    "ROUTERS",
    "BatchShape",
    "ConstantStepModel",
    "FittedStepModel",
    "ModelShape",
    "RooflineStepModel",
    "batch_shape",
    "get_gpu",
    "get_model",
    "kv_cache_blocks",
    "kv_heads_per_gpu",
    "least_outstanding",
    "round_robin",
    "shapes_from_trace",
    "simulate",
]
