"""`serve()`: the server in a background thread for notebooks and tests; port 0 picks a free port,
and leaving the `with` block stops uvicorn and the engine thread and releases the port.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import uvicorn

from lab._checks import is_int
from lab.engine import LLM
from lab.engine.async_engine import AsyncEngine
from lab.engine.loader import bundled_model_dir
from lab.server.app import ServerState, build_app
from lab.server.auth import mask
from lab.server.config import ServerConfig
from lab.server.faults import FaultConfig, FaultInjector, quiet_injected_cuts
from lab.server.metrics import ServerMetrics
from lab.server.ratelimit import RateLimiter

log = logging.getLogger("lab.server")
_SERVER_FIELDS = {f.name for f in fields(ServerConfig)}
START_TIMEOUT_S = 30.0
ENGINE_STOP_S = 10.0  # how long close() waits for the engine's step in flight, at least
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


class Server:
    """A running server: `.url` (ends in /v1), `.faults` (settable at run time), `.close()`."""

    def __init__(self, llm: LLM, config: ServerConfig, faults: FaultConfig | None, host: str, port: int,
                 log_level: str):
        self.llm, self.config = llm, config
        folder = Path(llm.model_path) if llm.model_path is not None else bundled_model_dir()
        self.model_name = config.served_model_name or folder.name
        _check_faults(faults)
        # everything that can refuse an argument, before the engine thread starts: a failure after
        # it left that thread driving the engine, so the LLM could never be served again
        injector = FaultInjector(faults)
        limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        self.engine = AsyncEngine(llm.engine, config.trace_limit).start()
        self._sock = None
        try:
            self.state = ServerState(self.engine, config, self.model_name, injector, limiter,
                                     ServerMetrics(lambda: self.engine.stats), int(time.time()),
                                     sampling_defaults=dict(llm.sampling_defaults))
            self.app = build_app(self.state)
            quiet_injected_cuts()
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self._sock.bind((host, port))
            except OSError as exc:
                raise OSError(_bind_error(exc, host, port)) from None
            self.host, self.port = host, self._sock.getsockname()[1]
            uv_config = uvicorn.Config(self.app, log_level=log_level, lifespan="off",
                                       timeout_graceful_shutdown=math.ceil(config.shutdown_timeout_s))
            self._uvicorn = uvicorn.Server(uv_config)
        except BaseException:
            self.engine.stop()
            if self._sock is not None:
                self._sock.close()
            raise
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self._sock]},
                                        name="lab-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        if config.api_keys:
            log.info("serving %s at %s (API keys: %s)", self.model_name, self.url,
                     ", ".join(mask(k) for k in config.api_keys))
        else:
            log.warning("serving %s at %s with no API keys: open to anyone who can reach it",
                        self.model_name, self.url)
        if self.state.sampling_defaults:  # vLLM says so too: a request's defaults are not OpenAI's here
            log.info("sampling defaults from the model's generation_config.json, for requests that leave "
                     "them out: %s", self.state.sampling_defaults)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def faults(self) -> FaultConfig | None:
        return self.state.faults.config

    @faults.setter
    def faults(self, config: FaultConfig | None) -> None:
        _check_faults(config)
        self.state.faults = FaultInjector(config)  # a fresh seeded generator: the same faults again

    def close(self) -> None:
        """New requests get 503; requests in flight end (aborted); then uvicorn and the engine stop."""
        self.state.shutting_down = True
        try:
            # a step can be long (a big prefill on a CPU): it gets the graceful timeout, and ENGINE_STOP_S at least
            self.engine.stop(max(ENGINE_STOP_S, self.config.shutdown_timeout_s))
        finally:
            # uvicorn and the port go whatever the engine did: an engine that did not stop in time raised
            # here before, and left the port answering 503 for the rest of the process
            self._uvicorn.should_exit = True
            if self._thread.is_alive():
                self._thread.join(self.config.shutdown_timeout_s + 5)
            self._sock.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bind_error(exc: OSError, host: str, port: int) -> str:
    # a name that does not resolve (999.1.1.1, a typo) or an address of another machine is the host's
    # fault; blaming the port sent the user to change the one thing that was right
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (f"host: cannot listen on {host} ({exc.strerror}); give an address of this machine, "
                f"such as 127.0.0.1, or 0.0.0.0 for every interface")
    return f"port: cannot listen on {host}:{port} ({exc.strerror}); pick another or 0"


def _check_faults(faults) -> None:
    if faults is not None and not isinstance(faults, FaultConfig):
        raise TypeError(f"faults: must be a FaultConfig or None, got {type(faults).__name__} "
                        "(FaultConfig(**fields) turns a dict into one)")


def start_server(model=None, port: int = 0, api_keys=None, faults: FaultConfig | None = None,
                 host: str = "127.0.0.1", *, llm: LLM | None = None, log_level: str = "warning",
                 device: str = "auto", dtype: str = "auto", seed: int = 0, **kwargs) -> Server:
    """Like `serve()` without the `with`: call `.close()` when done. Keyword arguments are
    `ServerConfig` fields (served_model_name, requests_per_minute, ...) or `EngineConfig` fields."""
    server_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _SERVER_FIELDS}
    if not is_int(port) or not 0 <= port <= 65535:
        raise ValueError(f"port: must be an integer in 0..65535 (0: pick a free port), got {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"host: must be an address or a name of this machine, such as '127.0.0.1' or "
                         f"'0.0.0.0', got {host!r}")
    # checked here: uvicorn refuses a bad level with a bare KeyError, and only after the engine started
    if not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS:
        raise ValueError(f"log_level: {log_level!r} is not a level; allowed: {', '.join(LOG_LEVELS)}")
    # not list(api_keys): a single key given as a string must stay one key, not one per character
    config = ServerConfig(api_keys=api_keys or [], **server_kwargs)
    if llm is None:
        llm = LLM(model=model, device=device, dtype=dtype, seed=seed, **kwargs)
    elif kwargs or model is not None:
        raise TypeError(f"serve: give either llm= or model/engine arguments, not both ({sorted(kwargs)})")
    return Server(llm, config, faults, host, port, log_level.lower())


@contextmanager
def serve(model=None, port: int = 0, api_keys=None, faults: FaultConfig | None = None,
          host: str = "127.0.0.1", **kwargs) -> Iterator[Server]:
    """`with serve(model=folder) as server: OpenAI(base_url=server.url, api_key=...)`."""
    server = start_server(model, port, api_keys, faults, host, **kwargs)
    try:
        yield server
    finally:
        server.close()
