"""The cache on Redis Cluster (issue 19), side by side in one run.

    .venv/bin/python bench/cluster.py [--seconds 5] [--keys 10000]

1. Throughput of a get/set mix (90 % get, 10 % set, 10,000 keys of one namespace)
   from 2 processes, on a 1-master and on a 3-master embedded cluster, interleaved
   (1, 3, 1, 3 masters; the best round of each kept). Beside it the server-side CPU
   each master used (``INFO cpu``: ``used_cpu_user + used_cpu_sys``), which shows
   the spread; on a 2-core machine the ratio of throughputs is bounded by the client
   processes, not by Redis.
2. ``get_many(100)`` against 100 sequential ``get``s of the same keys on the 3-master
   cluster (median of many rounds; target <= 0.15x).
3. How long another process still serves a cleared namespace's values after
   ``clear()`` returned (documented bound on one host: none, see docs/cluster.md; a
   backend used without a listener: ``GENERATION_TTL``), over several clears.

Load average, and CPU time per operation beside wall time, are printed per section.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _trees import commit  # noqa: E402


def _server_cpu(cluster: Any) -> list[float]:
    out = []
    for node in cluster.nodes:
        with node.client() as r:
            info = r.info("cpu")
            out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def _mix_worker(url: str, keys: int, seconds: float, seed: int, start: Any, result: Any) -> None:
    from statekit.cache import Cache

    cache = Cache(url, prefix="mix")
    rnd = random.Random(seed)
    names = [f"user:{i}" for i in range(keys)]
    cache.get(names[0])  # connect, read the generation
    start.wait()
    ops = 0
    cpu = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            key = names[rnd.randrange(keys)]
            if rnd.random() < 0.1:
                cache.set(key, {"n": ops}, ttl=600)
            else:
                cache.get(key)
        ops += 100
    result.put((ops, time.process_time() - cpu))


def mix(cluster: Any, keys: int, seconds: float, procs: int = 2) -> dict[str, Any]:
    """Operations per second of *procs* processes on *cluster*, and CPU per master."""
    from statekit.cache import Cache

    Cache(cluster.url, prefix="mix").set_many({f"user:{i}": {"n": i} for i in range(keys)}, ttl=600)
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    result = ctx.Queue()
    workers = [ctx.Process(target=_mix_worker, args=(cluster.url, keys, seconds, i, start, result))
               for i in range(procs)]
    for w in workers:
        w.start()
    time.sleep(2.0)  # the workers import and connect
    before = _server_cpu(cluster)
    start.set()
    got = [result.get(timeout=seconds + 60) for _ in workers]
    after = _server_cpu(cluster)
    for w in workers:
        w.join(10)
        if w.is_alive():
            w.kill()  # one of ours, by its object
    ops = sum(g[0] for g in got)
    return {"ops_per_s": ops / seconds, "client_cpu_us_per_op": sum(g[1] for g in got) / ops * 1e6,
            "server_cpu_s": [a - b for a, b in zip(after, before, strict=True)], "ops": ops}


def bulk_vs_sequential(url: str, rounds: int = 200) -> dict[str, float]:
    """Median microseconds of get_many(100) and of 100 sequential gets, and CPU."""
    from statekit.cache import Cache

    cache = Cache(url, prefix="bulk")
    keys = [f"page:{i}" for i in range(100)]
    cache.set_many({k: {"k": k, "body": "x" * 100} for k in keys}, ttl=600)
    many: list[float] = []
    seq: list[float] = []
    cpu_many = cpu_seq = 0.0
    for _ in range(rounds):  # interleaved
        c0, t0 = time.process_time(), time.perf_counter()
        got = cache.get_many(keys)
        t1, c1 = time.perf_counter(), time.process_time()
        for k in keys:
            cache.get(k)
        t2, c2 = time.perf_counter(), time.process_time()
        assert len(got) == 100
        many.append(t1 - t0)
        seq.append(t2 - t1)
        cpu_many += c1 - c0
        cpu_seq += c2 - c1
    return {"get_many_us": statistics.median(many) * 1e6, "sequential_us": statistics.median(seq) * 1e6,
            "get_many_cpu_us": cpu_many / rounds * 1e6, "sequential_cpu_us": cpu_seq / rounds * 1e6}


def _stale_reader(url: str, near: bool, seconds: float, ready: Any, result: Any) -> None:
    from statekit.cache import Cache

    cache = Cache(url, prefix="stale", near_cache=near)
    if near:
        cache.near_ready(10)
    cache.get("k0")
    ready.set()
    seen: list[tuple[float, Any]] = []
    end = time.time() + seconds
    while time.time() < end:
        started = time.time()
        seen.append((started, cache.get("k0")))
    result.put(seen)


def staleness(url: str, near: bool, clears: int = 8) -> list[float]:
    """Milliseconds another process served a cleared value after clear() returned."""
    from statekit.cache import Cache

    cache = Cache(url, prefix="stale")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    result = ctx.Queue()
    window = clears * 1.0 + 1.0
    reader = ctx.Process(target=_stale_reader, args=(url, near, window, ready, result))
    cache.set("k0", "start", ttl=600)
    reader.start()
    ready.wait(30)
    marks: list[float] = []  # when clear() returned, per round
    for n in range(clears):
        cache.set("k0", f"v{n}", ttl=600)  # a value of its own per round: a read that
        # overlaps the next round's set is not taken for a stale one
        time.sleep(0.3 + random.random() * 0.5)  # noqa: S311 - any phase of the reader's GENERATION_TTL
        cache.clear()
        marks.append(time.time())
        time.sleep(0.7)
    seen = result.get(timeout=window + 60)
    reader.join(10)
    out = []
    for n, cleared in enumerate(marks):
        late = [t for t, value in seen if t >= cleared and value == f"v{n}"]
        out.append((max(late) - cleared) * 1e3 if late else 0.0)
    return out


def _section(title: str) -> tuple[float, float]:
    print(f"\n{title} (load average {os.getloadavg()[0]:.2f})", flush=True)
    return time.perf_counter(), time.process_time()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one throughput round")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds per cluster size")
    args = ap.parse_args(argv)
    from statekit.cache import redis as rediscache
    from statekit.embedded import RedisCluster

    print(f"statekit {commit()}; {os.cpu_count()} CPUs")
    one, three = RedisCluster(masters=1), RedisCluster(masters=3)
    one.start()
    try:
        three.start()
        try:
            wall, cpu = _section("1. get/set mix (90/10) from 2 processes")
            best: dict[int, dict[str, Any]] = {}
            for _ in range(args.rounds):
                for masters, cluster in ((1, one), (3, three)):
                    r = mix(cluster, args.keys, args.seconds)
                    if masters not in best or r["ops_per_s"] > best[masters]["ops_per_s"]:
                        best[masters] = r
            for masters, r in best.items():
                spread = ", ".join(f"{s:.2f}" for s in r["server_cpu_s"])
                total = sum(r["server_cpu_s"])
                print(f"{masters} master(s): {r['ops_per_s']:9,.0f} ops/s; client CPU "
                      f"{r['client_cpu_us_per_op']:.1f} us/op; server CPU per master [{spread}] s "
                      f"({total / r['ops'] * 1e6:.1f} us/op in Redis in all)")
            ratio = best[3]["ops_per_s"] / best[1]["ops_per_s"]
            print(f"3 / 1 masters: {ratio:.2f}x throughput (bounded by the 2 client processes on "
                  f"{os.cpu_count()} CPUs); the busiest master of 3 did "
                  f"{max(best[3]['server_cpu_s']) / sum(best[3]['server_cpu_s']):.0%} of the server work")
            print(f"(this section: {time.perf_counter() - wall:.1f} s wall, "
                  f"{time.process_time() - cpu:.1f} s CPU of this process)")

            _section("2. get_many(100) vs 100 sequential gets, 3 masters")
            b = bulk_vs_sequential(three.url)
            ratio = b["get_many_us"] / b["sequential_us"]
            print(f"get_many(100): {b['get_many_us']:8.0f} us ({b['get_many_cpu_us']:.0f} us CPU); "
                  f"100 x get: {b['sequential_us']:8.0f} us ({b['sequential_cpu_us']:.0f} us CPU); "
                  f"ratio {ratio:.3f} (target <= 0.15: {'met' if ratio <= 0.15 else 'MISSED'})")

            _section("3. a cleared value served by another process after clear() returned, 3 masters")
            for near in (False, True):
                ms = staleness(three.url, near)
                print(f"near_cache={near!s:5}: max {max(ms):6.1f} ms, median {statistics.median(ms):6.1f} ms "
                      f"over {len(ms)} clears (bound on one host: 0, clear() returns after its "
                      f"invalidation reached every listener; without a listener "
                      f"GENERATION_TTL = {rediscache.GENERATION_TTL * 1e3:.0f} ms)")
        finally:
            three.stop()
    finally:
        one.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
