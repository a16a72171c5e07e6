"""How often a session near copy is bypassed with no invalidation waiting.

    .venv/bin/python bench/near_bypass.py [--threads 3] [--seconds 8] [--work-us 300] [--spin]

``InvalidationListener.pending()`` is true while any reply is unread on a listener
socket, the listener's own ``PONG`` included (it pings every second): loads then go
to Redis although their copy is good. Here *threads* threads load 50 sessions that
no other process changes, each load followed by *work_us* of CPU (``json.dumps``, or
pure Python with ``--spin``) holding the GIL, as request handlers do; every load
that is not a near hit was bypassed for that reason (nothing else invalidates or
expires the copies within the run). Prints one JSON line with the share bypassed,
the CPU per load and the load average.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from statekit.embedded import RedisServer
from statekit.sessions import SessionStore
from statekit.sessions.redis import RedisEngine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--work-us", type=float, default=300.0)
    parser.add_argument("--spin", action="store_true", help="pure-Python work instead of json.dumps")
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        store = SessionStore(server.url, secret_keys=["bench"], near_cache=1000)
        engine = store.engine
        assert isinstance(engine, RedisEngine) and engine.near is not None
        sids = [store.create({"user": i, "cart": list(range(20))}).sid for i in range(50)]
        for sid in sids:  # the listener connects on first use
            key = engine.key(store._handle(sid))
            deadline = time.monotonic() + 10
            while not (store.load(sid) is not None and key in engine.near.data):
                if time.monotonic() > deadline:
                    raise SystemExit("no near copy")
                time.sleep(0.01)
        before = store.counters.get("near_hits")
        loads = [0] * args.threads
        stop = time.monotonic() + args.seconds
        payload = {"x": list(range(200))}

        def worker(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                for sid in sids:
                    store.load(sid)
                    n += 1
                    end = time.perf_counter() + args.work_us / 1e6
                    while time.perf_counter() < end:
                        if args.spin:
                            sum(range(50))
                        else:
                            json.dumps(payload)
            loads[i] = n

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
        cpu = time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu = time.process_time() - cpu
        total, hits = sum(loads), store.counters.get("near_hits") - before
        print(json.dumps({"threads": args.threads, "work_us": args.work_us, "spin": args.spin,
                          "loads": total, "bypassed": total - hits,
                          "bypassed_pct": round(100 * (total - hits) / total, 3),
                          "cpu_us_per_load": round(cpu / total * 1e6, 1),
                          "loadavg": open("/proc/loadavg").read().split()[:3]}))
        store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
