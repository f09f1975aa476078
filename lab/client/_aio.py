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
    box: dict = {}
    cancel = threading.Event()  # a Ctrl-C before the task exists: the thread cancels it as it makes it

    def target():
        asyncio.set_event_loop(loop)
        try:
            box["task"] = task = loop.create_task(make_coro())
            if cancel.is_set():
                task.cancel()
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
        # set first, then look: the thread makes the task, then looks; whichever comes second cancels it
        # (a Ctrl-C just after start() found no task, and the batch ran on unseen)
        cancel.set()
        if "task" in box:
            try:
                loop.call_soon_threadsafe(box["task"].cancel)
            except RuntimeError:  # the loop is closed: the run had already ended
                pass
        try:
            thread.join()
        except RuntimeError:  # start() itself was interrupted before the thread began
            pass
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]
