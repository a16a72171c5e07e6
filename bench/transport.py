"""The Redis transport against its floor and its anchor (issue 17, point 1 and 6).

    .venv/bin/python bench/transport.py [--n 20000] [--rounds 5] [--no-gevent]
    .venv/bin/python bench/transport.py --before REV|PATH [--rounds 9] [--n 20000]

GET of a small value on loopback, one thread, against a private server started here,
interleaved rounds, median per call (wall and CPU time of this process):

* raw socket: a pre-packed ``GET`` on a blocking socket, one ``sendall`` and one
  ``recv`` (the floor; no parsing);
* redis-py pooled: ``client.get`` through the connection pool (the anchor);
* redis-py one connection: ``execute_command`` with ``single_connection_client``;
* Transport.command: statekit's per-thread pool connection;
* Cache.get: a hit through :class:`statekit.cache.Cache` (no near cache);
* the old hand-written client (``statekit.redis.fast``), while it is in the tree.

CPU time beside wall time: a client that spins for its reply wins an idle machine's
wall clock and pays in CPU that a busy server's other workers needed.

Targets: ``Cache.get`` <= 1.3x the raw socket and <= 0.7x redis-py pooled.

``--before`` pairs this checkout with another commit or checkout: *rounds* runs of one
round each per tree, each run a fresh process and server, alternated (before, now,
now, before, ...) so a drift of the machine's load hits both alike; it prints each
case's now/before ratio (the median of the pairs', wall and CPU) and each tree's
``Cache.get`` ratios to the floor and the anchor (medians of each run's own ratio).
On a shared machine prefer the CPU figures: the server's and the other processes'
load move the wall clock.
Then, under gevent, how long a paused Redis makes each transport path wait against
``socket_timeout`` (tests/test_redis_gevent.py checks the outcome; this prints the
time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _trees import commit  # noqa: E402


def _time(call: Callable[[], object], n: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def measure(n: int, rounds: int) -> tuple[dict[str, tuple[float, float]], str]:
    """Median (wall, CPU) microseconds per call of each case, and a line saying what ran."""
    import redis

    from statekit.cache import Cache
    from statekit.embedded import RedisServer
    from statekit.redis import create_client
    from statekit.redis.transport import Transport

    server = RedisServer()
    server.start()
    try:
        pooled = redis.Redis(port=server.port)
        pooled.set("bench", b"x" * 64)
        single = redis.Redis(port=server.port, single_connection_client=True)
        transport = Transport(create_client(server.url))
        cache = Cache(server.url, prefix="bench")
        cache.set("k", b"x" * 64)
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        packed = b"*2\r\n$3\r\nGET\r\n$5\r\nbench\r\n"
        reply_size = len(b"$64\r\n" + b"x" * 64 + b"\r\n")

        def raw() -> bytes:
            sock.sendall(packed)
            data = sock.recv(4096)
            while len(data) < reply_size:
                data += sock.recv(4096)
            return data

        cases: dict[str, Callable[[], object]] = {
            "raw socket": raw,
            "redis-py pooled": lambda: pooled.get("bench"),
            "redis-py one connection": lambda: single.execute_command("GET", "bench"),
            "Transport.command": lambda: transport.command(b"GET", "bench"),
            "Cache.get": lambda: cache.get("k"),
        }
        try:  # the hand-written client issue 17 replaces, while it is in the tree
            from statekit.redis.fast import FastTransport  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            pass
        else:
            old = FastTransport(create_client(server.url))
            cases["old fast path (fast.py)"] = lambda: old.fast_call(packed, read=True)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        load0 = os.getloadavg()[0]
        for call in cases.values():
            _time(call, n // 10)  # warm up
        for _ in range(rounds):
            for name, call in cases.items():
                results[name].append(_time(call, n))
        med = {name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
               for name, r in results.items()}
        about = (f"statekit {commit()}; {server.binary.flavor} {server.version}; load average {load0:.2f} "
                 f"at start, {os.getloadavg()[0]:.2f} at end, on {os.cpu_count()} CPUs; "
                 f"median of {rounds} x {n} calls (GET of 64 bytes)")
        return med, about
    finally:
        server.stop()


def _ratios(med: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``Cache.get`` against the floor and the anchor, wall and CPU."""
    got, cpu = med["Cache.get"]
    return {"floor": got / med["raw socket"][0], "anchor": got / med["redis-py pooled"][0],
            "cpu floor": cpu / med["raw socket"][1], "cpu anchor": cpu / med["redis-py pooled"][1],
            "transport floor": med["Transport.command"][0] / med["raw socket"][0],
            "transport anchor": med["Transport.command"][0] / med["redis-py pooled"][0]}


def round_trips(n: int, rounds: int) -> None:
    med, about = measure(n, rounds)
    print(about)
    for name, (wall, cpu) in med.items():
        print(f"  {name:<24} {wall:7.1f} us wall {cpu:7.1f} us CPU")
    r = _ratios(med)
    floor_ok = "met" if r["floor"] <= 1.3 else "MISSED"
    anchor_ok = "met" if r["anchor"] <= 0.7 else "MISSED"
    print(f"  Cache.get = {r['floor']:.2f}x raw socket (target <= 1.3: {floor_ok}), "
          f"{r['anchor']:.2f}x redis-py pooled (target <= 0.7: {anchor_ok})")
    print(f"  Cache.get CPU = {r['cpu floor']:.2f}x raw socket's, {r['cpu anchor']:.2f}x redis-py pooled's")
    print(f"  Transport.command = {r['transport floor']:.2f}x raw socket, "
          f"{r['transport anchor']:.2f}x redis-py pooled")


def paired(before: str, n: int, rounds: int) -> None:
    """This checkout against *before*, alternated runs of one round each (see the
    module docstring)."""
    from _trees import NOW, alternate, before_tree, print_pairs

    with before_tree(before) as old:
        pairs = alternate(Path(__file__), old, ["--json", "--n", str(n), "--rounds", "1"], rounds)
    print(f"now: statekit {commit()}; before: {before}; {rounds} pairs of runs x {n} calls a case; "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    names = [k for k in pairs[0][0] if not k.startswith("ratio ")]
    fields = []
    for name in dict.fromkeys(k.rsplit(" ", 1)[0] for k in names):
        fields += [(f"{name} wall", f"{name} wall", "us"), (f"{name} CPU", f"{name} CPU", "us")]
    print_pairs(pairs, fields)
    for label, side in (("now", 0), ("before", 1)):
        got = {k: statistics.median(p[side][f"ratio {k}"] for p in pairs)
               for k in ("floor", "anchor", "cpu floor", "cpu anchor", "transport floor")}
        print(f"  {label} ({NOW if side == 0 else before}): Cache.get {got['floor']:.2f}x raw socket, "
              f"{got['anchor']:.2f}x redis-py pooled (wall); CPU {got['cpu floor']:.2f}x raw socket's, "
              f"{got['cpu anchor']:.2f}x pooled's; Transport.command {got['transport floor']:.2f}x "
              "raw socket")


def gevent_timeouts() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_redis_gevent import TIMEOUT, run_paused  # type: ignore[import-not-found]

    from statekit.embedded import RedisServer

    server = RedisServer()
    server.start()
    try:
        print(f"under gevent, Redis paused, socket_timeout={TIMEOUT} s:")
        for path in ("command", "script", "cache-get", "session-load", "broadcast-publish"):
            report = run_paused(server, path)
            elapsed = float(report["elapsed"])
            print(f"  {path:<18} waited {elapsed:.3f} s ({elapsed / TIMEOUT - 1:+.0%} over the timeout): "
                  f"{str(report['outcome'])[:60]}")
    finally:
        server.resume()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-gevent", action="store_true", help="skip the paused-Redis waits under gevent")
    parser.add_argument("--before", metavar="REV|PATH", help="pair this checkout with another (see above)")
    parser.add_argument("--json", action="store_true", help="one round's medians as JSON (for --before)")
    args = parser.parse_args()
    if args.json:
        med, about = measure(args.n, args.rounds)
        out = {f"{name} {kind}": value for name, (wall, cpu) in med.items()
               for kind, value in (("wall", wall), ("CPU", cpu))}
        out.update({f"ratio {k}": v for k, v in _ratios(med).items()})
        print(about, file=sys.stderr)
        print(json.dumps(out))
        return
    if args.before:
        paired(args.before, args.n, args.rounds)
    else:
        round_trips(args.n, args.rounds)
    if not args.no_gevent and not args.before:
        gevent_timeouts()


if __name__ == "__main__":
    main()
