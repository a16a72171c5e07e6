"""Stampede protection across processes: 8 processes ask for the same missing key
whose computation takes 200 ms; the function runs once (counted in Redis)."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import pytest
import redis

from statekit.cache import Cache

pytestmark = pytest.mark.redis

WORKERS = 8


def _worker(url: str, barrier: Any, results: Any, use_decorator: bool) -> None:
    cache = Cache(url, namespace="stampede")
    counter = redis.Redis.from_url(url)

    def expensive() -> dict[str, Any]:
        counter.incr("stampede-runs")
        time.sleep(0.2)
        return {"answer": 42}

    barrier.wait(60)
    if use_decorator:
        fn = cache.cached(ttl=60, key="report")(expensive)
        value = fn()
    else:
        value = cache.get_or_set("report", expensive, ttl=60)
    results.put((value, cache.stats()["lock_waits"]))
    counter.close()


@pytest.mark.parametrize("use_decorator", [False, True], ids=["get_or_set", "cached"])
def test_eight_processes_compute_once(redis_url: str, use_decorator: bool) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(redis_url, barrier, results, use_decorator))
             for _ in range(WORKERS)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=90) for _ in range(WORKERS)]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert [v for v, _ in got] == [{"answer": 42}] * WORKERS
    with redis.Redis.from_url(redis_url) as r:
        assert int(r.get("stampede-runs") or 0) == 1
    assert sum(waits for _, waits in got) >= 1  # the others waited for the one computing
    assert all(p.exitcode == 0 for p in procs)
