"""The inference engine: paged KV cache, static and continuous batching, no HTTP and no plotting.

    from lab.engine import LLM, SamplingParams
    LLM().generate(["ROMEO:"], SamplingParams(max_tokens=64, temperature=0.8, seed=0))
"""

from lab.engine.config import EngineConfig
from lab.engine.engine import Engine, TokenEvent
from lab.engine.llm import LLM, RequestOutput, run_workload
from lab.engine.sequence import SamplingParams

__all__ = ["LLM", "Engine", "EngineConfig", "RequestOutput", "SamplingParams", "TokenEvent", "run_workload"]
