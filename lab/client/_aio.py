"""Run a coroutine from plain code, whether or not an event loop is already running.

In a script we use `asyncio.run`; inside Jupyter (whose loop is running) we run it on a helper
thread with its own loop and block until it ends, so `run_batch(...)` works the same in both.
"""

from __future__ import annotations

import asyncio
import threading


def run_sync(make_coro):
    """Run `make_coro()` to completion and return its result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    loop = asyncio.new_event_loop()
    # created here, before the thread: a Ctrl-C at any moment finds a task to cancel (made on the
    # thread, a Ctrl-C just after start() cancelled nothing and the batch ran on unseen)
    task = loop.create_task(make_coro())
    box: dict = {}

    def target():
        asyncio.set_event_loop(loop)
        try:
            box["result"] = loop.run_until_complete(task)
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=target, name="lab-client-run-sync", daemon=True)
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)  # wake up regularly so a notebook interrupt reaches us
    except KeyboardInterrupt:
        try:
            loop.call_soon_threadsafe(task.cancel)  # runs as soon as the loop does, if it has not yet
        except RuntimeError:  # the loop is closed: the run had already ended
            pass
        if thread.ident is not None:
            thread.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]
