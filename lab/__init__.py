"""batching-lab: learn and experiment with LLM serving.

Submodules: `lab.engine` (the inference engine), `lab.server` (OpenAI-compatible HTTP server),
`lab.client` (httpx client), `lab.sim` (simulator), `lab.cost`, `lab.viz`, `lab.widgets`.
"""

from lab.metrics import RequestMetrics, Result, StepRecord
from lab.workload import RequestSpec, Workload

__version__ = "0.1.0"
__all__ = ["RequestMetrics", "RequestSpec", "Result", "StepRecord", "Workload", "__version__"]
