"""Async cache benchmark: statekit's AsyncCache vs raw redis-py asyncio, cashews,
aiocache and Django's async cache API (django-redis and Django's RedisCache through
Django's sync_to_async wrapper; StatekitCache natively), side by side in one run,
same private Redis, same values, on one event loop.

    .venv/bin/python bench/cache_async.py [--rounds 15] [--scale 1.0]

Contestants run in interleaved rounds (A B C ... A B C ...) so load from other
processes hits all of them alike; the table shows the best and the median round
(microseconds per operation, wall and this process's CPU) and the ratio to the first
row. Two workloads: one task awaiting gets (or sets) one after another (latency), and
100 tasks awaiting gets at once (throughput of one loop: microseconds per get).

Targets (issue 18): ``AsyncCache.get`` no slower than a raw redis-py asyncio ``GET``
and ahead of cashews and aiocache on the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "adapters", "django-statekit"))
sys.path.insert(0, os.path.dirname(__file__))

from _trees import commit  # noqa: E402

VALUE = {"id": 12345, "name": "Ada Lovelace", "email": "ada@example.org", "tags": ["a", "b", "c"],
         "score": 98.5}
CONCURRENT = 100
DJANGO_CACHES = {"django_redis": "django_redis.cache.RedisCache",
                 "django": "django.core.cache.backends.redis.RedisCache",
                 "statekit": "django_statekit.cache.StatekitCache"}

Op = Callable[[], Awaitable[Any]]


async def timed(fn: Op, n: int, concurrent: int) -> tuple[float, float]:
    """(wall, CPU) microseconds per operation: *n* operations, *concurrent* at a time."""
    start, cpu = time.perf_counter(), time.process_time()
    if concurrent == 1:
        for _ in range(n):
            await fn()
    else:
        for _ in range(max(1, n // concurrent)):
            await asyncio.gather(*(fn() for _ in range(concurrent)))
        n = max(1, n // concurrent) * concurrent
    return (time.perf_counter() - start) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def run_group(title: str, contestants: dict[str, Op], n: int, rounds: int,
                    concurrent: int = 1) -> dict[str, tuple[float, float]]:
    walls: dict[str, list[float]] = {name: [] for name in contestants}
    cpus: dict[str, list[float]] = {name: [] for name in contestants}
    for fn in contestants.values():  # warm up: connections, scripts, code paths
        await timed(fn, max(concurrent, n // 10), concurrent)
    for _ in range(rounds):
        for name, fn in contestants.items():
            wall, cpu = await timed(fn, n, concurrent)
            walls[name].append(wall)
            cpus[name].append(cpu)
    best = {name: min(v) for name, v in walls.items()}
    median = {name: statistics.median(v) for name, v in walls.items()}
    base, mbase = next(iter(best.values())), next(iter(median.values()))
    print(f"\n{title:<44} {'best µs':>9}  ratio {'median µs':>10}  ratio {'CPU µs':>8}")
    for name in contestants:
        print(f"  {name:<42} {best[name]:>9.1f} {best[name] / base:>6.2f} {median[name]:>10.1f} "
              f"{median[name] / mbase:>6.2f} {statistics.median(cpus[name]):>8.1f}")
    return {name: (best[name], median[name]) for name in contestants}


async def bench(url: str, host: str, port: int, rounds: int, scale: float) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from aiocache import RedisCache as AioCache
    from cashews import Cache as Cashews
    from django.core.cache import caches

    from statekit.cache import AsyncCache

    raw = aioredis.Redis.from_url(url)
    sk = AsyncCache(url, namespace="bench")
    near = AsyncCache(url, namespace="bench-near", near_cache=True)
    cashews = Cashews()
    cashews.setup(f"{url}?client_side=false", suppress=False)
    aio = AioCache(endpoint=host, port=port, namespace="aio")
    djr, djc, djs = caches["django_redis"], caches["django"], caches["statekit"]

    import json

    await raw.set("raw:k", json.dumps(VALUE))
    await sk.set("k", VALUE)
    await near.set("k", VALUE)
    assert await near.near_ready(10)
    await cashews.set("cashews:k", VALUE)
    await aio.set("k", VALUE)
    for c in (djr, djc, djs):
        await c.aset("k", VALUE)

    async def raw_get() -> Any:
        return json.loads(await raw.get("raw:k"))

    n = int(2000 * scale)
    gets: dict[str, Op] = {
        "redis-py asyncio GET (+ json.loads)": raw_get,
        "statekit AsyncCache.get": lambda: sk.get("k"),
        "statekit AsyncCache.get, near cache": lambda: near.get("k"),
        "cashews (redis) get": lambda: cashews.get("cashews:k"),
        "aiocache RedisCache get": lambda: aio.get("k"),
        "django StatekitCache.aget (native)": lambda: djs.aget("k"),
        "django-redis aget (sync_to_async)": lambda: djr.aget("k"),
        "django RedisCache aget (sync_to_async)": lambda: djc.aget("k"),
    }
    for fn in gets.values():
        assert await fn() == VALUE or fn is raw_get
    out: dict[str, Any] = {}
    out["get"] = await run_group("get, one task (µs per get)", gets, n, rounds)
    sets: dict[str, Op] = {
        "redis-py asyncio SET (json.dumps)": lambda: raw.set("raw:s", json.dumps(VALUE), ex=300),
        "statekit AsyncCache.set": lambda: sk.set("s", VALUE, ttl=300),
        "cashews (redis) set": lambda: cashews.set("cashews:s", VALUE, expire=300),
        "aiocache RedisCache set": lambda: aio.set("s", VALUE, ttl=300),
        "django StatekitCache.aset (native)": lambda: djs.aset("s", VALUE, 300),
        "django-redis aset (sync_to_async)": lambda: djr.aset("s", VALUE, 300),
    }
    out["set"] = await run_group("set, one task (µs per set)", sets, n, rounds)
    concurrent = {k: v for k, v in gets.items() if "sync_to_async" not in k}
    concurrent["django-redis aget (sync_to_async)"] = gets["django-redis aget (sync_to_async)"]
    out["concurrent"] = await run_group(f"get, {CONCURRENT} tasks at once (µs per get)", concurrent,
                                        int(5000 * scale), max(3, rounds // 3), CONCURRENT)
    await sk.aclose()
    await near.aclose()
    await raw.aclose()
    await aio.close()
    await cashews.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    args = ap.parse_args(argv)

    import django
    import redis
    from django.conf import settings

    from statekit.embedded import RedisServer

    server = RedisServer()
    server.start()
    url = server.url
    try:
        caches = {alias: {"BACKEND": backend, "LOCATION": url} for alias, backend in DJANGO_CACHES.items()}
        settings.configure(SECRET_KEY="bench-async-secret-key-0123456789", INSTALLED_APPS=[],  # noqa: S106
                           CACHES=caches)
        django.setup()
        host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        print(f"statekit {commit()}; server: {server.binary.flavor} {server.version} on {url}; "
              f"redis-py {redis.__version__}, hiredis parser: {redis.utils.HIREDIS_AVAILABLE}; "
              f"rounds={args.rounds}; load {os.getloadavg()[0]:.2f}")
        out = asyncio.run(bench(url, host, int(port), args.rounds, args.scale))
        raw_best, raw_median = out["get"]["redis-py asyncio GET (+ json.loads)"]
        sk_best, sk_median = out["get"]["statekit AsyncCache.get"]
        print(f"\ntargets: AsyncCache.get / raw redis-py asyncio GET = {sk_best / raw_best:.2f} best, "
              f"{sk_median / raw_median:.2f} median (target <= 1.0)")
        for rival in ("cashews (redis) get", "aiocache RedisCache get"):
            best, median = out["get"][rival]
            print(f"         AsyncCache.get / {rival} = {sk_best / best:.2f} best, {sk_median / median:.2f} "
                  "median (target < 1.0)")
        c = out["concurrent"]
        print(f"         {CONCURRENT} at once: AsyncCache.get / raw = "
              f"{c['statekit AsyncCache.get'][0] / c['redis-py asyncio GET (+ json.loads)'][0]:.2f} best; "
              f"/ cashews = {c['statekit AsyncCache.get'][0] / c['cashews (redis) get'][0]:.2f}; "
              f"/ aiocache = {c['statekit AsyncCache.get'][0] / c['aiocache RedisCache get'][0]:.2f}; "
              f"load {os.getloadavg()[0]:.2f}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
