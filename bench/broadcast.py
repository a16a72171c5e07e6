"""Broadcast benchmark.

1. Fan-out latency: time from ``Broadcaster.publish`` being called to the value
   being applied in each of N worker processes (``SharedValue.on_change`` fires right
   after the local copy is replaced), p50/p99/max over all workers and publishes.
   Anchor: plain redis-py pub/sub, PUBLISH to ``get_message`` in N processes (the
   floor any Redis-based fan-out stands on).
2. ``SharedValue.get()`` ns/op against a dict lookup (the module-level dict it
   replaces) and a Redis ``GET`` per read (what a worker does without broadcast).

3. Leader takeover: two ``statekit broadcast`` processes, SIGKILL the leader, time
   until the other computes (should be within one lease period).

Targets (issue 6): fan-out p99 <= 2 ms to 8 workers on loopback; get() <= 100 ns.

With ``--before REV`` the fan-out is then measured now and at REV (a ``git
worktree``, e.g. 49db0e6, main before issue 17) in alternating subprocess runs
against the same server, and now / before is printed (target: unchanged within
noise; the anchor's own now / before ratio shows the noise). CPU per publish (the
publisher) and per message (each worker, idle time included: a spinning receiver
shows here) are printed beside the latencies.

Run: ``.venv/bin/python bench/broadcast.py [--workers 8] [--publishes 300] [--before 49db0e6]``
(a private redis-server is started and stopped; about 15 s, 60 s with ``--before``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _trees import alternate, before_tree, commit, print_pairs  # noqa: E402

from statekit.embedded import RedisServer  # noqa: E402


def _statekit_worker(url: str, ready: Any, done: Any, out: Any, prefix: str) -> None:
    from statekit.broadcast import SharedValue

    lat: list[float] = []
    versions: set[int] = set()
    sv = SharedValue("bench", default=None, url=url, key_prefix=prefix)

    def seen(value: Any, version: int) -> None:
        now = time.time()
        if value is not None and value.get("t"):
            lat.append(now - value["t"])
            versions.add(version)

    sv.on_change(seen)
    assert sv._hub is not None
    sv._hub.connected.wait(10)
    ready.put(1)
    cpu = time.process_time()
    done.wait(120)
    out.put((lat, len(versions), time.process_time() - cpu))


def _raw_worker(url: str, ready: Any, done: Any, out: Any, prefix: str) -> None:
    import redis

    lat: list[float] = []
    r = redis.Redis.from_url(url)
    p = r.pubsub(ignore_subscribe_messages=True)
    p.subscribe(f"{prefix}-raw")
    p.get_message(timeout=1)  # the subscribe confirmation
    ready.put(1)
    cpu = time.process_time()
    while not done.is_set():
        msg = p.get_message(timeout=0.5)
        if msg is not None:
            lat.append(time.time() - float(msg["data"]))
    out.put((lat, len(lat), time.process_time() - cpu))


def fanout(url: str, kind: str, workers: int, publishes: int, spacing: float, prefix: str = "bench"
           ) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    ready, out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    target = _raw_worker if kind == "raw" else _statekit_worker
    procs = [ctx.Process(target=target, args=(url, ready, done, out, prefix)) for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=30)
    if kind != "raw":
        from statekit.broadcast import Broadcaster

        b = Broadcaster(url, key_prefix=prefix)

        def send(i: int) -> None:
            b.publish("bench", {"t": time.time(), "i": i})
    else:
        import redis

        r = redis.Redis.from_url(url)

        def send(i: int) -> None:
            r.publish(f"{prefix}-raw", repr(time.time()))

    send_cpu = 0.0
    for i in range(publishes):
        cpu = time.process_time()
        send(i)
        send_cpu += time.process_time() - cpu
        time.sleep(spacing)
    time.sleep(0.5)
    done.set()
    lat: list[float] = []
    complete = 0
    worker_cpu = 0.0
    for _ in procs:
        samples, n, used = out.get(timeout=30)
        lat += samples
        complete += n == publishes
        worker_cpu += used
    for p in procs:
        p.join(10)
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    return {"p50": q[49] * 1000, "p99": q[98] * 1000, "max": lat[-1] * 1000,
            "samples": len(lat), "complete": complete, "publish_cpu_us": send_cpu / publishes * 1e6,
            "worker_cpu_us": worker_cpu / workers / publishes * 1e6}


TAKEOVER_JOBS = """
import os, time
import redis
from statekit.broadcast import Broadcaster

r = redis.Redis.from_url(os.environ["STATEKIT_REDIS_URL"])
broadcaster = Broadcaster(os.environ["STATEKIT_REDIS_URL"], key_prefix="bench-takeover")

@broadcaster.every(float(os.environ["BC_INTERVAL"]), name="job", lease=float(os.environ["BC_LEASE"]))
def job():
    r.rpush("takeover-calls", f"{os.getpid()} {time.time()!r}")
    return os.getpid()
"""


def takeover(url: str, trials: int, interval: float, lease: float) -> list[float]:
    """Seconds from SIGKILL of the leader to the first computation by another process."""
    import os
    import signal
    import subprocess
    import tempfile

    import redis

    r = redis.Redis.from_url(url)
    tmp = tempfile.mkdtemp(prefix="bench-broadcast-")
    with open(os.path.join(tmp, "takeover_jobs.py"), "w") as f:
        f.write(TAKEOVER_JOBS)
    env = {**os.environ, "STATEKIT_REDIS_URL": url, "BC_INTERVAL": str(interval), "BC_LEASE": str(lease),
           "PYTHONPATH": os.pathsep.join([tmp, *sys.path])}

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "statekit", "broadcast", "takeover_jobs:broadcaster"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def calls() -> list[tuple[int, float]]:
        rows = (c.decode().split() for c in r.lrange("takeover-calls", 0, -1))
        return [(int(p), float(t)) for p, t in rows]

    procs = {p.pid: p for p in (spawn(), spawn())}
    delays = []
    try:
        for _ in range(trials):
            n = len(calls())
            deadline = time.monotonic() + 30
            while len(calls()) < n + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            leader = calls()[-1][0]
            procs.pop(leader).kill()
            killed = time.time()
            n = len(calls())
            while time.monotonic() < deadline + 30:
                new = [c for c in calls()[n:] if c[0] != leader]
                if new:
                    delays.append(new[0][1] - killed)
                    break
                time.sleep(0.005)
            p = spawn()
            procs[p.pid] = p
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(10)
    return delays


def get_speed(url: str) -> dict[str, float]:
    import redis

    from statekit.broadcast import Broadcaster, SharedValue

    Broadcaster(url, key_prefix="bench").publish("speed", 12345)
    sv = SharedValue("speed", url=url, key_prefix="bench")
    sv.get()
    d = {"speed": 12345}
    r = redis.Redis.from_url(url)
    r.set("speed", 12345)
    out = {}
    for label, stmt, env, n in [
        ("SharedValue.get()", "sv.get()", {"sv": sv}, 2_000_000),
        ("dict lookup d[k]", "d['speed']", {"d": d}, 2_000_000),
        ("Redis GET per read", "r.get('speed')", {"r": r}, 3_000),
    ]:
        best = min(timeit.repeat(stmt, globals=env, number=n, repeat=5)) / n
        out[label] = best * 1e9
    return out


FIELDS = [("statekit_p50", "statekit fan-out p50", "ms"), ("statekit_p99", "statekit fan-out p99", "ms"),
          ("raw_p99", "anchor redis-py pub/sub p99", "ms"),
          ("statekit_publish_cpu_us", "statekit publish CPU", "us"),
          ("statekit_worker_cpu_us", "statekit worker CPU per message", "us")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--publishes", type=int, default=300)
    parser.add_argument("--spacing", type=float, default=0.01, help="seconds between publishes")
    parser.add_argument("--takeovers", type=int, default=3, help="leader kills to time")
    parser.add_argument("--before", metavar="REV|PATH",
                        help="then fan-out now vs at this commit (a git worktree) or checkout, alternating")
    parser.add_argument("--pairs", type=int, default=3, help="before/now fan-out run pairs (--before)")
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.json:  # one fan-out run of each kind against --redis-url, as JSON (--before's runs)
        import json
        import os

        prefix = f"bench-{os.getpid()}"
        result = {}
        for kind in ("statekit", "raw"):
            for key, value in fanout(opts.redis_url, kind, opts.workers, opts.publishes, opts.spacing,
                                     prefix).items():
                result[f"{kind}_{key}"] = value
        print(json.dumps(result))
        return 0
    with RedisServer() as srv:
        print(f"{srv.binary.flavor} {srv.version} on loopback; statekit {commit()}; {opts.workers} worker "
              f"processes, {opts.publishes} publishes {opts.spacing * 1000:.0f} ms apart\n")
        rows = {kind: fanout(srv.url, kind, opts.workers, opts.publishes, opts.spacing)
                for kind in ("statekit", "raw")}
        print(f"{'fan-out publish -> seen':32} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'samples':>8} {'all seen':>9} {'pub CPU':>9} {'worker CPU/msg':>15}")
        for kind, label in (("statekit", "statekit SharedValue"), ("raw", "anchor: redis-py pub/sub")):
            r = rows[kind]
            print(f"{label:32} {r['p50']:8.3f} {r['p99']:8.3f} {r['max']:8.3f} {r['samples']:8.0f} "
                  f"{r['complete']:5.0f}/{opts.workers} {r['publish_cpu_us']:6.0f} us "
                  f"{r['worker_cpu_us']:12.0f} us")
        s, a = rows["statekit"], rows["raw"]
        print(f"{'ratio statekit / anchor':32} {s['p50'] / a['p50']:8.2f} {s['p99'] / a['p99']:8.2f}")
        print(f"target p99 <= 2 ms: {'met' if s['p99'] <= 2.0 else 'NOT met'}\n")

        speeds = get_speed(srv.url)
        base = speeds["dict lookup d[k]"]
        print(f"{'read':32} {'ns/op':>10} {'vs dict':>8}")
        for label, ns in speeds.items():
            print(f"{label:32} {ns:10.1f} {ns / base:8.2f}x")
        got = speeds["SharedValue.get()"]
        print(f"target get() <= 100 ns: {'met' if got <= 100 else 'NOT met'}\n")

        interval, lease = 0.2, 1.0
        delays = takeover(srv.url, opts.takeovers, interval, lease)
        print(f"leader SIGKILL -> another computes (interval {interval}s, lease {lease}s, "
              f"{len(delays)} trials): mean {statistics.mean(delays):.3f}s, max {max(delays):.3f}s, "
              f"max / lease {max(delays) / lease:.2f}")

        if opts.before:
            with before_tree(opts.before) as before:
                print(f"\nfan-out now ({commit()}) vs before ({commit(before)}), {opts.pairs} run pairs "
                      f"alternating, same server:")
                pairs = alternate(Path(__file__), before, [
                    "--redis-url", srv.url, "--workers", str(opts.workers),
                    "--publishes", str(opts.publishes), "--spacing", str(opts.spacing)], opts.pairs)
                ratios = print_pairs(pairs, FIELDS)
                noise = ratios["raw_p99"]
                print(f"  statekit p99 now/before {ratios['statekit_p99']:.2f}x; the anchor, unchanged code, "
                      f"{noise:.2f}x (noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
