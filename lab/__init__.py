"""batching-lab: learn and experiment with LLM serving.

Submodules: `lab.engine` (the inference engine), `lab.server` (OpenAI-compatible HTTP server),
`lab.client` (httpx client), `lab.sim` (simulator), `lab.cost`, `lab.viz`, `lab.widgets`. The names
most notebooks need are re-exported here; the heavy ones (torch, FastAPI) load on first use.
"""

from importlib import import_module

from lab.metrics import RequestMetrics, Result, StepRecord
from lab.workload import RequestSpec, Workload

__version__ = "0.1.0"

# name -> submodule; resolved lazily (PEP 562) so `import lab` stays fast and torch-free
_LAZY = {
    "LLM": "lab.engine", "SamplingParams": "lab.engine", "EngineConfig": "lab.engine",
    "serve": "lab.server", "FaultConfig": "lab.server",
    "Client": "lab.client", "AsyncClient": "lab.client", "run_batch": "lab.client",
    "simulate": "lab.sim",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["RequestMetrics", "RequestSpec", "Result", "StepRecord", "Workload", "__version__", *_LAZY]
