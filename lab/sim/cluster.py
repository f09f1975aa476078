"""Replicas behind a router, in one virtual clock: each arrival is routed when it arrives, each
replica steps when its previous step ends. With one replica this is the engine's run_workload loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tqdm.auto import tqdm

from lab._checks import is_int
from lab.sim.replica import Replica
from lab.workload import RequestSpec, Workload

Router = Callable[[list[Replica], RequestSpec, float], int]


def round_robin() -> Router:
    count = 0

    def route(replicas: list[Replica], spec: RequestSpec, now: float) -> int:
        nonlocal count
        count += 1
        return (count - 1) % len(replicas)

    return route


def least_outstanding() -> Router:
    """Fewest requests in flight at the arrival instant; ties go to the lowest index."""

    def route(replicas: list[Replica], spec: RequestSpec, now: float) -> int:
        loads = [r.outstanding_at(now) for r in replicas]
        return loads.index(min(loads))

    return route


ROUTERS: dict[str, Callable[[], Router]] = {
    "round_robin": round_robin,
    "least_outstanding": least_outstanding,
}


def make_router(router: str | Router) -> Router:
    if router in ROUTERS.values():  # lab.sim.least_outstanding itself, not yet called: make its router
        return router()
    if callable(router):
        return router
    if not isinstance(router, str):  # a list was "unhashable type: 'list'", naming nothing
        raise ValueError(f"router: expected a name ({', '.join(ROUTERS)}) or a function (replicas, spec, now) -> "
                         f"index, got {type(router).__name__}")
    if router not in ROUTERS:
        raise ValueError(f"router: unknown value {router!r}; allowed: {', '.join(ROUTERS)}")
    return ROUTERS[router]()


def run(workload: Workload, replicas: list[Replica], router: Router, progress: bool = False) -> None:
    """Advance every replica until the workload is done.

    Arrivals at or before a replica's next step time enter first, as the engine admits requests
    with arrival_s <= now before each step. `flush` (static stops waiting) once all have arrived.
    """
    reqs = workload.requests
    n, i = len(reqs), 0
    single = replicas[0] if len(replicas) == 1 else None
    with tqdm(total=n, desc=workload.name or "simulate", disable=not progress, mininterval=0.5) as bar:
        finished_before = 0
        while True:
            r = single or min(replicas, key=_next_t)
            t_arrival = reqs[i].arrival_s if i < n else math.inf
            if t_arrival <= r.next_t:
                if t_arrival == math.inf:
                    break
                k = router(replicas, reqs[i], t_arrival)
                if not is_int(k) or not 0 <= k < len(replicas):  # -1 would pick the last one silently
                    raise ValueError(f"router: returned {k!r} for request {reqs[i].id}; "
                                     f"allowed: a replica index 0..{len(replicas) - 1}")
                target = replicas[k]
                target.add(reqs[i], i)
                target.next_t = min(target.next_t, max(t_arrival, target.free_at))
                i += 1
                if i == n:  # flush turns on: a static replica waiting for a full batch goes now
                    for rep in replicas:
                        if rep.sched.has_unfinished():
                            rep.next_t = min(rep.next_t, max(t_arrival, rep.free_at))
                continue
            if r.step(r.next_t, i == n) and r.last_finished:
                done = sum(len(rep.done) for rep in replicas) if single is None else len(r.done)
                if done - finished_before >= 64 or done == n:
                    bar.update(done - finished_before)
                    finished_before = done
        bar.update(n - finished_before)
    stuck = [s.request_id for rep in replicas for s in list(rep.sched.waiting) + rep.sched.running]
    if stuck:
        raise RuntimeError(
            f"simulation stalled with {len(stuck)} requests unfinished (first: {stuck[0]}); "
            "the KV cache cannot hold the next request while nothing else runs"
        )


def _next_t(r: Replica) -> float:
    return r.next_t
