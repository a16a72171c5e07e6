"""Async cache benchmark: statekit's AsyncCache vs raw redis-py asyncio, cashews,
aiocache and Django's async cache API (django-redis and Django's RedisCache through
Django's sync_to_async wrapper; StatekitCache and django-vcache natively), side by
side in one run, same private Redis, same values, on one event loop.

    .venv/bin/python bench/cache_async.py [--rounds 15] [--scale 1.0]
    .venv/bin/python bench/cache_async.py --lag 5 [--before REV|PATH]
    .venv/bin/python bench/cache_async.py --python /tmp/vcache-venv/bin/python [--rounds 15]

django-vcache (issue 18's async Django anchor: its own Rust driver, one multiplexed
connection per process, msgpack) is measured through Django's API on its backend
object (``aget``/``aset``) beside ``StatekitCache``'s, configured as its README does
(``BACKEND``, ``LOCATION``; a ``KEY_PREFIX`` of its own, as its msgpack entries would be
unreadable to the pickling backends on the shared keys), and with its opt-in
``CLIENT_SIDE_CACHE`` beside statekit's near cache. It needs Python >= 3.12 and this
venv runs 3.11: here its rows are skipped with a line saying so; ``--python PATH``
runs the whole benchmark under that interpreter (``bench/vcache-venv.sh`` builds one,
see ``bench/_vcache.py``).

Contestants run in interleaved rounds (A B C ... A B C ...) so load from other
processes hits all of them alike; the table shows the best and the median round
(microseconds per operation, wall and this process's CPU) and the ratio to the first
row. Two workloads: one task awaiting gets (or sets) one after another (latency), and
100 tasks awaiting gets at once (throughput of one loop: microseconds per get).

``StatekitCache`` stores with Django's codec, statekit's signed pickle (any object,
forged entries never unpickled); ``AsyncCache`` here with its default, JSON. The row
``AsyncCache.get, signed pickle`` (``StatekitCache``'s codec, no Django) splits the gap
between them: the targets print its paired share, the codec's and Django's layer's.

The near-cache contestant has a key prefix of its own: its invalidation listener
tracks its prefix (``BCAST``), so on the shared prefix every other contestant's write
would also cost this process an invalidation message to read and route (measured:
``AsyncCache.set`` 95 -> 142 µs); the row ``AsyncCache.set, near cache`` shows what a
write costs with that listener.

``--lag N``: loop lag under 200 concurrent gets (issue 18), N runs, each on a fresh
loop with no connection yet: ``AsyncCache`` and raw redis-py asyncio (a
``BlockingConnectionPool`` of the transport's limit), 5 batches each, a 1 ms
heartbeat task beside them; the heartbeat's worst lag in the first batch (the
connections opening) and over all batches, p90 and median, and the connections
opened. ``--before`` measures another tree in the same runs (interleaved). The
interpreter's full (generation 2) collections stall a loop too, whatever the client:
each run lists their pauses beside the worst lag of each batch.

``--set-paths``: the standalone set's one round trip written three ways on one
redis-py asyncio connection (hiredis), on every server line found: the cache script's
``EVALSHA`` (op ``set``: generation check, ``SET``, the key's single-flight lock
``DEL``; what ``AsyncCache.set`` sends), ``MULTI`` [``SET``, ``DEL`` lock, ``GET``
counter] ``EXEC`` (the transaction that could replace it: the lock removed atomically
with the write, the counter read in the same step), and a plain ``SET`` (what
django-vcache sends; no lock, no generation), each read through redis-py's
``Connection.read_response`` per reply and straight from its parser (the least a
transport could spend): wall and client CPU per call (rounds alternated, paired to the
script's), server time per call (``INFO commandstats``: ``EVALSHA``, ``MULTI`` +
``EXEC``, ``SET``).

Targets (issue 18): ``AsyncCache.get`` no slower than a raw redis-py asyncio ``GET``
and ahead of cashews, aiocache and django-vcache on the same work; ``AsyncCache.set`` ahead of
cashews and aiocache, as close to raw as it gets; 200 concurrent gets never block
the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "adapters", "django-statekit"))
sys.path.insert(0, os.path.dirname(__file__))

import _vcache  # noqa: E402
from _trees import before_tree, commit, env_for  # noqa: E402

VALUE = {"id": 12345, "name": "Ada Lovelace", "email": "ada@example.org", "tags": ["a", "b", "c"],
         "score": 98.5}
CONCURRENT = 100
DJANGO_CACHES = {"django_redis": "django_redis.cache.RedisCache",
                 "django": "django.core.cache.backends.redis.RedisCache",
                 "statekit": "django_statekit.cache.StatekitCache"}
#: django-vcache's aliases, where it runs: plain, and with its client-side cache
VCACHES: dict[str, dict[str, Any]] = {
    "vcache": {"KEY_PREFIX": "vcache"},
    "vcache_csc": {"KEY_PREFIX": "vcache-csc", "OPTIONS": {"CLIENT_SIDE_CACHE": {"ENABLED": True}}},
}
VC_GET, VC_GET_CSC = "django-vcache aget (native)", "django-vcache aget, client-side cache"
SIGNED_GET = "statekit AsyncCache.get, signed pickle"
VC_SET, VC_SET_CSC = "django-vcache aset (native)", "django-vcache aset, client-side cache"

Op = Callable[[], Awaitable[Any]]


class Row(NamedTuple):
    """A contestant's rounds (µs per operation), in the order they ran."""

    walls: list[float]
    cpus: list[float]

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


def paired(ours: Row, theirs: Row) -> tuple[float, int, float]:
    """Round by round (each round runs both, moments apart): the median of the rounds'
    time ratios, the rounds *ours* was faster in, and the median CPU ratio."""
    ratios = [a / b for a, b in zip(ours.walls, theirs.walls, strict=True)]
    cpu = statistics.median(a / b for a, b in zip(ours.cpus, theirs.cpus, strict=True))
    return statistics.median(ratios), sum(r < 1 for r in ratios), cpu


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
                    concurrent: int = 1) -> dict[str, Row]:
    rows = {name: Row([], []) for name in contestants}
    for fn in contestants.values():  # warm up: connections, scripts, code paths
        await timed(fn, max(concurrent, n // 10), concurrent)
    for _ in range(rounds):
        for name, fn in contestants.items():
            wall, cpu = await timed(fn, n, concurrent)
            rows[name].walls.append(wall)
            rows[name].cpus.append(cpu)
    base = next(iter(rows.values()))
    print(f"\n{title:<44} {'best µs':>9}  ratio {'median µs':>10}  ratio {'CPU µs':>8}")
    for name, row in rows.items():
        print(f"  {name:<42} {row.best:>9.1f} {row.best / base.best:>6.2f} {row.median:>10.1f} "
              f"{row.median / base.median:>6.2f} {statistics.median(row.cpus):>8.1f}")
    return rows


async def bench(url: str, host: str, port: int, rounds: int, scale: float) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from aiocache import RedisCache as AioCache
    from cashews import Cache as Cashews
    from django.conf import settings
    from django.core.cache import caches

    from statekit.cache import AsyncCache

    raw = aioredis.Redis.from_url(url)
    sk = AsyncCache(url, namespace="bench")
    near = AsyncCache(url, prefix="bench-near", namespace="bench-near", near_cache=True)
    cashews = Cashews()
    cashews.setup(f"{url}?client_side=false", suppress=False)
    aio = AioCache(endpoint=host, port=port, namespace="aio")
    djr, djc, djs = caches["django_redis"], caches["django"], caches["statekit"]
    # AsyncCache with StatekitCache's codec (Django's: signed pickle): StatekitCache.aget
    # less this is Django's layer; this less AsyncCache.get (JSON) is the codec
    signed = AsyncCache(url, namespace="bench-signed", serializer=djs.statekit_async.serializer,
                        secret_keys=djs.statekit_async.secret_keys)
    vcache = [caches[alias] for alias in VCACHES if alias in settings.CACHES]

    await raw.set("raw:k", json.dumps(VALUE))
    await sk.set("k", VALUE)
    await signed.set("k", VALUE)
    await near.set("k", VALUE)
    assert await near.near_ready(10)
    await cashews.set("cashews:k", VALUE)
    await aio.set("k", VALUE)
    for c in (djr, djc, djs, *vcache):
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
        SIGNED_GET: lambda: signed.get("k"),
        "django StatekitCache.aget (native)": lambda: djs.aget("k"),
        "django-redis aget (sync_to_async)": lambda: djr.aget("k"),
        "django RedisCache aget (sync_to_async)": lambda: djc.aget("k"),
    }
    if vcache:
        vc, vcsc = vcache
        gets[VC_GET] = lambda: vc.aget("k")
        gets[VC_GET_CSC] = lambda: vcsc.aget("k")
    for fn in gets.values():
        assert await fn() == VALUE or fn is raw_get
    out: dict[str, Any] = {}
    out["get"] = await run_group("get, one task (µs per get)", gets, n, rounds)
    sets: dict[str, Op] = {
        "redis-py asyncio SET (json.dumps)": lambda: raw.set("raw:s", json.dumps(VALUE), ex=300),
        "statekit AsyncCache.set": lambda: sk.set("s", VALUE, ttl=300),
        "statekit AsyncCache.set, near cache": lambda: near.set("s", VALUE, ttl=300),
        "cashews (redis) set": lambda: cashews.set("cashews:s", VALUE, expire=300),
        "aiocache RedisCache set": lambda: aio.set("s", VALUE, ttl=300),
        "django StatekitCache.aset (native)": lambda: djs.aset("s", VALUE, 300),
        "django-redis aset (sync_to_async)": lambda: djr.aset("s", VALUE, 300),
    }
    if vcache:
        sets[VC_SET] = lambda: vc.aset("s", VALUE, 300)
        sets[VC_SET_CSC] = lambda: vcsc.aset("s", VALUE, 300)
    await raw.config_resetstat()
    out["set"] = await run_group("set, one task (µs per set)", sets, n, rounds)
    # the server's side of a set: statekit's EVALSHA of the cache script (its generation
    # check and SET included) against the plain SETs of the others (and the script's own)
    stats = await raw.info("commandstats")
    print("  server time per call (INFO commandstats, this group): " + ", ".join(
        f"{name.removeprefix('cmdstat_').upper()} {stats[name]['usec_per_call']:.2f} µs"
        for name in ("cmdstat_evalsha", "cmdstat_set", "cmdstat_get") if name in stats))
    concurrent = {k: v for k, v in gets.items() if "sync_to_async" not in k and k != SIGNED_GET}
    concurrent["django-redis aget (sync_to_async)"] = gets["django-redis aget (sync_to_async)"]
    out["concurrent"] = await run_group(f"get, {CONCURRENT} tasks at once (µs per get)", concurrent,
                                        int(5000 * scale), max(3, rounds // 3), CONCURRENT)
    await sk.aclose()
    await signed.aclose()
    await near.aclose()
    await raw.aclose()
    await aio.close()
    await cashews.close()
    return out


def django_cpu(gets: dict[str, Row]) -> str:
    """``StatekitCache.aget``'s CPU over ``AsyncCache.get``'s, split in two by the row
    between them (``AsyncCache`` with ``StatekitCache``'s signed-pickle codec): the
    codec, and Django's layer (the key made and checked, the ``aget`` frame). Medians of
    the rounds' differences (each round runs the three moments apart): the CPU column's
    medians, taken row by row, differ by several µs from load alone."""
    plain, signed, django = (gets[name].cpus for name in
                             ("statekit AsyncCache.get", SIGNED_GET, "django StatekitCache.aget (native)"))
    total = statistics.median(c - a for a, c in zip(plain, django, strict=True))
    codec = statistics.median(b - a for a, b in zip(plain, signed, strict=True))
    layer = statistics.median(c - b for b, c in zip(signed, django, strict=True))
    return (f"CPU per get, StatekitCache.aget - AsyncCache.get = {total:+.1f} µs (paired): the codec "
            f"(signed pickle - JSON) {codec:+.1f} µs, Django's layer (key, check, frame) {layer:+.1f} µs")


def vcache_targets(out: dict[str, Any]) -> None:
    """The lines comparing statekit with django-vcache (``< 1``: statekit ahead)."""
    rows = [("get", "django StatekitCache.aget (native)", VC_GET),
            ("get", "statekit AsyncCache.get", VC_GET),
            ("get", "statekit AsyncCache.get, near cache", VC_GET_CSC),
            ("set", "django StatekitCache.aset (native)", VC_SET),
            ("set", "statekit AsyncCache.set", VC_SET),
            ("set", "statekit AsyncCache.set, near cache", VC_SET_CSC),
            ("concurrent", "django StatekitCache.aget (native)", VC_GET),
            ("concurrent", "statekit AsyncCache.get", VC_GET),
            ("concurrent", "statekit AsyncCache.get, near cache", VC_GET_CSC)]
    print("\nstatekit / django-vcache, time per operation (< 1: statekit ahead); paired: the median"
          " of the rounds' ratios (each round runs both), the rounds statekit was faster in, CPU:")
    for group, ours, theirs in rows:
        a, b = out[group][ours], out[group][theirs]
        best, median = a.best / b.best, a.median / b.median
        in_pairs, faster, cpu = paired(a, b)
        where = f"{CONCURRENT} at once" if group == "concurrent" else "one task"
        verdict = "ahead" if best < 1 and median < 1 else "behind" if best > 1 and median > 1 else "mixed"
        print(f"  {where:<12} {ours:<36} / {theirs:<37} = {best:.2f} best, {median:.2f} median: {verdict}; "
              f"paired {in_pairs:.2f}, faster in {faster}/{len(a.walls)} rounds, CPU {cpu:.2f}")


LAG_BATCHES = 5


async def lag_one(url: str, contestant: str) -> dict[str, Any]:
    """One contestant of one ``--lag`` run, on this (fresh) loop."""
    import redis
    import redis.asyncio as aioredis

    from statekit.cache import AsyncCache
    from statekit.testing.loop import LoopLag

    admin = redis.Redis.from_url(url)

    def connections() -> int:
        return len(admin.client_list()) - 1

    before = await asyncio.to_thread(connections)
    close: list[Callable[[], Awaitable[Any]]] = []
    if contestant == "AsyncCache":
        cache = AsyncCache(url, namespace="lag")
        await cache.set_many({f"k{i}": i for i in range(200)})  # one connection, kept

        def get(i: int) -> Awaitable[Any]:
            return cache.get(f"k{i}")

        limit = cache._backend.transport.current().limit
        close.append(cache.aclose)
    else:
        probe = AsyncCache(url, namespace="lag")
        limit = (probe._backend or probe._connect()).transport.current().limit
        await probe.aclose()
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=limit)
        raw = aioredis.Redis(connection_pool=pool)
        await raw.mset({f"raw{i}": json.dumps(i) for i in range(200)})

        async def get(i: int) -> Any:
            return json.loads(await raw.get(f"raw{i}"))

        close += [raw.aclose, pool.aclose]
        before += 1  # the MSET's connection
    lags: list[float] = []
    worst: list[float] = []
    pauses: list[float] = []  # the interpreter's full collections: a lag no client causes
    started: list[float] = []

    def collecting(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                pauses.append(round((time.perf_counter() - started.pop()) * 1000, 1))

    gc.callbacks.append(collecting)
    for _ in range(LAG_BATCHES):
        async with LoopLag(0.001) as lag:
            results = await asyncio.gather(*(get(i) for i in range(200)))
        assert results == list(range(200))
        lags += lag.lags
        worst.append(lag.worst * 1000)
    gc.callbacks.remove(collecting)
    opened = await asyncio.to_thread(connections) - before
    for fn in close:
        await fn()
    admin.close()
    ordered = sorted(lags)
    return {"first_max": worst[0], "max": max(worst), "p90": ordered[int(len(ordered) * 0.9)] * 1000,
            "median": ordered[len(ordered) // 2] * 1000, "connections": opened, "limit": limit,
            "batches": [round(w, 1) for w in worst], "gc_pauses": pauses}


def lag_runs(url: str, runs: int, before: str | None) -> None:
    """``--lag``: each run a subprocess per tree and contestant (a fresh loop and
    process), the trees and contestants interleaved."""
    from _trees import NOW

    trees = [("now", NOW)]
    with before_tree(before) if before else _no_tree() as old:
        if old is not None:
            trees.append(("before", old))
        rows: dict[str, list[dict[str, Any]]] = {}
        for run in range(runs):
            load = open("/proc/loadavg").read().split()[0]  # noqa: SIM115
            for tree_name, tree in trees:
                for contestant in ("AsyncCache", "redis-py asyncio"):
                    if tree_name == "before" and contestant != "AsyncCache":
                        continue
                    out = subprocess.run([sys.executable, __file__, "--lag-one", url, contestant],  # noqa: S603
                                         env=env_for(tree), capture_output=True, text=True, check=True)
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    name = f"{contestant} ({tree_name}, {commit(tree)})"
                    rows.setdefault(name, []).append(row)
                    print(f"run {run + 1} load {load}  {name:<40} first batch max {row['first_max']:6.1f}"
                          f" ms, all: max {row['max']:6.1f} p90 {row['p90']:5.2f} median {row['median']:5.2f}"
                          f" ms, {row['connections']} connections (limit {row['limit']}); max per batch "
                          f"{row['batches']}, full GC pauses {row['gc_pauses']} ms")
    print(f"\nmedians over {runs} runs (ms; 200 concurrent gets x {LAG_BATCHES} batches, 1 ms heartbeat); "
          f"load {os.getloadavg()[0]:.2f}")
    for name, got in rows.items():
        med = {k: statistics.median(r[k] for r in got)
               for k in ("first_max", "max", "p90", "median", "connections")}
        span = f"{min(r['first_max'] for r in got):.1f}-{max(r['first_max'] for r in got):.1f}"
        print(f"  {name:<40} first batch max {med['first_max']:6.1f} (range {span}), all: max "
              f"{med['max']:6.1f} p90 {med['p90']:5.2f} median {med['median']:5.2f}; "
              f"{med['connections']:.0f} connections")


async def set_paths(binary: Any, rounds: int, n: int) -> None:
    """``--set-paths`` on one server line (see the module docstring)."""
    import redis.asyncio as aioredis
    from hiredis import pack_command as pack

    from statekit.cache.redis import SCRIPT
    from statekit.embedded import RedisServer

    server = RedisServer(binary)
    server.start()
    try:
        admin = aioredis.Redis.from_url(server.url)
        await admin.script_load(SCRIPT.source)
        gen, counter, name, lock = b"7", b"b:{ns}:gen", b"b:{ns}:7:k", b"b:{ns}:lock:sf:k"
        await admin.set(counter, gen)
        conn = aioredis.Connection(host="127.0.0.1", port=server.port)
        await conn.connect()
        write, parser = conn._writer.write, conn._parser
        value = json.dumps(VALUE).encode()
        script = pack((b"EVALSHA", SCRIPT.sha, 3, counter, name, lock, b"set", gen, b"300000", value))
        transaction = b"".join(pack(c) for c in ((b"MULTI",), (b"SET", name, value, b"PX", b"300000"),
                                                  (b"DEL", lock), (b"GET", counter), (b"EXEC",)))
        plain = pack((b"SET", name, value, b"PX", b"300000"))

        def one(packed: bytes, replies: int, read: Callable[[], Awaitable[Any]]) -> Op:
            async def op() -> Any:
                write(packed)
                for _ in range(replies - 1):
                    await read()
                return await read()
            return op

        paths: dict[str, Op] = {}
        for how, read in (("read_response", conn.read_response), ("parser", parser.read_response)):
            paths[f"EVALSHA cache script set ({how})"] = one(script, 1, read)
            paths[f"MULTI SET DEL GET EXEC ({how})"] = one(transaction, 5, read)
            paths[f"plain SET ({how})"] = one(plain, 1, read)
        assert await paths["EVALSHA cache script set (parser)"]() == 1
        assert (await paths["MULTI SET DEL GET EXEC (parser)"]())[2] == gen
        print(f"\n{server.binary.line} ({server.binary.source}); load {os.getloadavg()[0]:.2f}")
        rows = await run_group("set paths, one task (µs per set)", paths, n, rounds)
        base = rows["EVALSHA cache script set (parser)"]
        print("  paired to the script's set (parser), wall and client CPU; server time per call:")
        for path, op in paths.items():
            await admin.config_resetstat()
            for _ in range(n):
                await op()
            stats = await admin.info("commandstats")
            kinds = ("evalsha",) if "EVALSHA" in path else ("multi", "exec") if "MULTI" in path else ("set",)
            server_us = sum(stats.get(f"cmdstat_{k}", {}).get("usec", 0) for k in kinds) / n
            wall, _, cpu = paired(rows[path], base)
            print(f"  {path:<42} wall {wall:5.2f}, CPU {cpu:5.2f}, server {server_us:5.2f} µs")
        await conn.disconnect()
        await admin.aclose()
    finally:
        server.stop()


@contextlib.contextmanager
def _no_tree() -> Iterator[None]:
    yield None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    ap.add_argument("--lag", type=int, metavar="RUNS", help="loop lag under 200 concurrent gets, RUNS runs")
    ap.add_argument("--before", help="with --lag: also measure this commit or checkout")
    ap.add_argument("--lag-one", nargs=2, metavar=("URL", "CONTESTANT"), help=argparse.SUPPRESS)
    ap.add_argument("--set-paths", action="store_true",
                    help="the standalone set as the cache script, a MULTI/EXEC and a plain SET")
    ap.add_argument("--python", metavar="PATH",
                    help="run this benchmark under PATH (a Python >= 3.12 with django-vcache)")
    args = ap.parse_args(argv)
    if args.python:
        return _vcache.rerun(args.python, __file__, sys.argv[1:] if argv is None else argv)
    if args.lag_one:
        print(json.dumps(asyncio.run(lag_one(*args.lag_one))))
        return 0
    if args.set_paths:
        from statekit.embedded import find_redis_servers

        for binary in find_redis_servers():
            asyncio.run(set_paths(binary, args.rounds, int(3000 * args.scale)))
        return 0

    import django
    import redis
    from django.conf import settings

    from statekit.embedded import RedisServer

    server = RedisServer()
    server.start()
    url = server.url
    if args.lag:
        try:
            print(f"statekit {commit()}; server: {server.binary.flavor} {server.version}; "
                  f"load {os.getloadavg()[0]:.2f}")
            lag_runs(url, args.lag, args.before)
        finally:
            server.stop()
        return 0
    try:
        caches = {alias: {"BACKEND": backend, "LOCATION": url} for alias, backend in DJANGO_CACHES.items()}
        skipped = _vcache.missing()
        if not skipped:
            caches.update({alias: {"BACKEND": _vcache.BACKEND, "LOCATION": url, **conf}
                           for alias, conf in VCACHES.items()})
        settings.configure(SECRET_KEY="bench-async-secret-key-0123456789", INSTALLED_APPS=[],  # noqa: S106
                           CACHES=caches)
        django.setup()
        host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        print(f"statekit {commit()}; server: {server.binary.flavor} {server.version} on {url}; "
              f"Python {sys.version.split()[0]}, redis-py {redis.__version__}, hiredis parser: "
              f"{redis.utils.HIREDIS_AVAILABLE}, Django {django.__version__}"
              f"{'' if skipped else ', django-vcache ' + _vcache.version()}; "
              f"rounds={args.rounds}; load {os.getloadavg()[0]:.2f}")
        if skipped:
            print(skipped)
        out = asyncio.run(bench(url, host, int(port), args.rounds, args.scale))
        raw, sk = out["get"]["redis-py asyncio GET (+ json.loads)"], out["get"]["statekit AsyncCache.get"]
        in_pairs, faster, cpu = paired(sk, raw)
        print(f"\ntargets: AsyncCache.get / raw redis-py asyncio GET = {sk.best / raw.best:.2f} best, "
              f"{sk.median / raw.median:.2f} median, paired {in_pairs:.2f}, faster in {faster}/"
              f"{len(sk.walls)} rounds (target <= 1.0); CPU per get {statistics.median(sk.cpus):.1f} / "
              f"{statistics.median(raw.cpus):.1f} µs, paired {cpu:.2f}")
        print(f"         {django_cpu(out['get'])}")
        for rival in ("cashews (redis) get", "aiocache RedisCache get"):
            theirs = out["get"][rival]
            print(f"         AsyncCache.get / {rival} = {sk.best / theirs.best:.2f} best, "
                  f"{sk.median / theirs.median:.2f} median (target < 1.0)")
        c = out["concurrent"]
        ours = c["statekit AsyncCache.get"].best
        print(f"         {CONCURRENT} at once: AsyncCache.get / raw = "
              f"{ours / c['redis-py asyncio GET (+ json.loads)'].best:.2f} best; "
              f"/ cashews = {ours / c['cashews (redis) get'].best:.2f}; "
              f"/ aiocache = {ours / c['aiocache RedisCache get'].best:.2f}; "
              f"load {os.getloadavg()[0]:.2f}")
        if not skipped:
            vcache_targets(out)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
