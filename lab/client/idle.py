"""The stream idle timeout: a stream whose server goes silent mid-answer is ended after `stream_idle_timeout`.

Until the first token the request's own read timeout governs (queue and prefill can take minutes, as in
openai-python); httpx has one read timeout for a whole body, so a watch shuts the socket down instead.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time


def socket_of(response):
    """The socket under `response`, when it is the response's alone (HTTP/1.x: an HTTP/2 connection carries
    other requests' streams too); None for a transport without one (httpx.MockTransport)."""
    if response.http_version not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    stream = response.extensions.get("network_stream")
    try:
        return None if stream is None else stream.get_extra_info("socket")
    except (AttributeError, NotImplementedError):  # a custom transport's stream may not know the question
        return None


def seconds_left(state, now: float) -> float:
    """Seconds before the stream counts as idle (<= 0: it does). Only a caller waiting on the server is
    counted: a slow reader finds the rest of the answer buffered, and that is no stall."""
    if not state.waiting or not state.generating:  # before the first token the read timeout governs
        return state.idle_timeout
    return state.last_event_t + state.idle_timeout - now


def cut(state, sock) -> None:
    """Mark the stream idle and shut its socket down, which ends a read blocked on it (as EOF or a read
    error, which the stream then reports as the idle timeout)."""
    state.idle_expired = True
    try:
        if isinstance(sock, socket.socket):
            # the plain socket's shutdown: an SSLSocket's own also drops its TLS object under the reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:
            sock.shutdown(socket.SHUT_RDWR)  # asyncio's TransportSocket
    except (OSError, AttributeError):  # already closed, or no such call: the read timeout still applies
        pass


class ThreadWatch:
    """For a blocking `Stream`: a daemon thread that sleeps until the stream's idle deadline."""

    __slots__ = ("_stop",)

    def __init__(self, state, sock):
        self._stop = threading.Event()
        # the thread holds the state and the socket, not the stream: a stream dropped unclosed is still
        # collected, and its __del__ stops the watch
        threading.Thread(target=self._run, args=(state, sock, self._stop), daemon=True,
                         name="lab-client-stream-idle").start()

    @staticmethod
    def _run(state, sock, stop: threading.Event) -> None:
        wait = state.idle_timeout
        while not stop.wait(wait):
            wait = seconds_left(state, time.perf_counter())
            if wait <= 0:
                cut(state, sock)
                return

    def stop(self) -> None:
        self._stop.set()


class LoopWatch:
    """For an `AsyncStream`: a timer on the event loop, re-armed to the deadline (not one per chunk)."""

    __slots__ = ("_loop", "_state", "_sock", "_handle")

    def __init__(self, state, sock):
        self._loop = asyncio.get_running_loop()
        self._state, self._sock = state, sock
        self._handle = self._loop.call_later(state.idle_timeout, self._check)

    def _check(self) -> None:
        left = seconds_left(self._state, time.perf_counter())
        if left <= 0:
            self._handle = None
            cut(self._state, self._sock)
        else:
            self._handle = self._loop.call_later(left, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def start_watch(state, response, *, blocking: bool):
    """A watch for this stream, or None where there is no idle timeout or no socket to shut."""
    # closed: a one-JSON-body answer, read whole; its connection is back in the pool, serving others
    if state.idle_timeout is None or state.done or response.is_closed:
        return None
    sock = socket_of(response)
    if sock is None:
        return None
    return ThreadWatch(state, sock) if blocking else LoopWatch(state, sock)
