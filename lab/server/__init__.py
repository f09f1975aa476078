"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) on the engine, with switchable fault injection.

    with serve(model="path/to/folder", api_keys=["sk-test"]) as server: ...  # server.url ends in /v1
"""

from lab.server.config import ServerConfig
from lab.server.faults import FaultConfig
from lab.server.serve import Server, serve, start_server

__all__ = ["FaultConfig", "Server", "ServerConfig", "serve", "start_server"]
