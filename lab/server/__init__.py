"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) on the engine, with switchable fault injection.

    with serve(model="path/to/folder", api_keys=["sk-test"]) as server: ...  # server.url ends in /v1
"""

from lab._lazy import lazy_exports

# name -> submodule, resolved on first use (PEP 562): `batching-lab bench` reads the fault statuses
# for its options and must not load torch and the engine with them
_LAZY = {
    "ServerConfig": "lab.server.config", "FaultConfig": "lab.server.faults",
    "Server": "lab.server.background", "serve": "lab.server.background", "start_server": "lab.server.background",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = list(_LAZY)
