"""Near-cache scaling (issue 17, point 5): costs that grow with the work only.

    .venv/bin/python bench/scaling.py

1. Invalidation routing: one 100-key invalidation message applied by the listener
   with 1, 100, 1,000 and 10,000 registered namespaces (median of 200 runs); the
   ratio 10,000 / 1 must stay within 1 +- 0.2 (it was 124 ms / 21 us before).
2. Memory: 50 cache namespaces of 2,000 near-cached entries each are filled, then
   dropped; RSS before, filled and after ``gc.collect()`` (a private Redis started
   here), and the namespaces still registered with the listener (0 expected).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Any


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def invalidation_cost(count: int, runs: int = 200) -> float:
    """Median microseconds to apply one 100-key invalidation with *count* namespaces."""
    from statekit.cache.near import NearCache
    from statekit.redis.tracking import InvalidationListener

    listener = InvalidationListener(lambda: [], "app:")
    nears = [NearCache[Any](200) for _ in range(count)]
    for i, near in enumerate(nears):
        listener.register(f"app:{{ns{i}}}:", near)
        near.set_active(True)
    target = count // 2
    msg = [b"message", b"__redis__:invalidate", [f"app:{{ns{target}}}:0:k{k}".encode() for k in range(100)]]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        listener._handle(msg)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def dropped_namespaces() -> dict[str, float]:
    from statekit.cache import Cache
    from statekit.embedded import RedisServer

    server = RedisServer()
    server.start()
    try:
        root = Cache(server.url, prefix="scale", near_cache=4_000)
        assert root.near_ready()
        listener = root._listener
        assert listener is not None
        keys = [f"k{k}" for k in range(2_000)]
        gc.collect()
        base = _rss_mib()
        registered = listener.registered()
        for i in range(50):
            ns = root.namespace(f"n{i}")
            ns.set_many(dict.fromkeys(keys, "x" * 100))
            ns.get_many(keys)
            ns.get_many(keys)
            del ns
        # nothing holds the namespaces any more: their near caches went with them
        gc.collect()
        after = _rss_mib()
        kept = listener.registered() - registered
        # the same again, held: how much 50 x 2,000 entries weigh
        held = [root.namespace(f"h{i}") for i in range(50)]
        for ns in held:
            ns.set_many(dict.fromkeys(keys, "x" * 100))
            ns.get_many(keys)
            ns.get_many(keys)
        filled = _rss_mib()
        entries = sum(len(ns._near or ()) for ns in held)
        return {"baseline_mib": base, "after_drop_mib": after, "held_mib": filled,
                "held_entries": entries, "still_registered": kept}
    finally:
        server.stop()


def main() -> None:
    costs = {n: invalidation_cost(n) for n in (1, 100, 1_000, 10_000)}
    for n, us in costs.items():
        print(f"invalidation of 100 keys, {n:>6} namespaces: {us:8.1f} us")
    print(f"ratio 10,000 / 1 namespaces: {costs[10_000] / costs[1]:.2f} (target 0.8-1.2)")
    mem = dropped_namespaces()
    print(f"RSS baseline {mem['baseline_mib']:.1f} MiB; after 50 dropped namespaces of 2,000 entries "
          f"and gc: {mem['after_drop_mib']:.1f} MiB (+{mem['after_drop_mib'] - mem['baseline_mib']:.1f}); "
          f"still registered: {mem['still_registered']:.0f}")
    print(f"for scale, the same 50 namespaces held: {mem['held_mib']:.1f} MiB "
          f"({mem['held_entries']:.0f} near entries)")


if __name__ == "__main__":
    main()
