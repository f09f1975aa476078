"""The inference engine: paged KV cache, static and continuous batching, no HTTP and no plotting.

    from lab.engine import LLM, SamplingParams
    LLM().generate(["ROMEO:"], SamplingParams(max_tokens=64, temperature=0.8, seed=0))
"""

from lab._lazy import lazy_exports

# name -> submodule, resolved on first use (PEP 562): the simulator imports the torch-free core
# (config, sequence, block_manager, scheduler) through this package and must not load torch with it
_LAZY = {
    "EngineConfig": "lab.engine.config", "SamplingParams": "lab.engine.sequence",
    "Engine": "lab.engine.engine", "TokenEvent": "lab.engine.engine",
    "LLM": "lab.engine.llm", "RequestOutput": "lab.engine.llm", "run_workload": "lab.engine.llm",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = list(_LAZY)
