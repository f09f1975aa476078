"""ipywidgets playgrounds built from the runners and `lab.viz`: move a control, watch the figures change.

`batching_playground()` (simulator at once, the real engine on a button), `kv_cache_playground()`
(KV cache size, a shared prompt prefix and prefix caching, simulated at once), `faults_playground(server)`
(fault probabilities against a local server, retries, nothing lost) and `cost_playground()`.
Each returns a `Playground`: a VBox with `.controls`, `.figures` (FigureWidgets updated in place)
and `.results`, so code (and tests) can drive it as a user would.
"""

from lab.widgets._common import DEFAULT_STEP_COEF, Playground, replace_figure, summary_html
from lab.widgets.batching import batching_playground, playground_workload
from lab.widgets.costs import cost_playground
from lab.widgets.faults import faults_playground
from lab.widgets.kv_cache import kv_cache_playground, shared_prefix_workload

__all__ = [
    "DEFAULT_STEP_COEF", "Playground", "batching_playground", "cost_playground", "faults_playground",
    "kv_cache_playground", "playground_workload", "replace_figure", "shared_prefix_workload", "summary_html",
]
