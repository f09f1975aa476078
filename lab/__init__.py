"""batching-lab: learn and experiment with LLM serving.

Submodules: `lab.engine` (the inference engine), `lab.server` (OpenAI-compatible HTTP server),
`lab.client` (httpx client), `lab.sim` (simulator), `lab.cost`, `lab.viz`, `lab.widgets`. The names
most notebooks need are re-exported here; the heavy ones (torch, FastAPI) load on first use.
"""

from lab._lazy import lazy_exports
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
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = ["RequestMetrics", "RequestSpec", "Result", "StepRecord", "Workload", "__version__", *_LAZY]
