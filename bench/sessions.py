"""Sessions benchmark: statekit vs Flask-Session 0.8 (Redis) vs Flask's cookie sessions.

One Flask app, two routes: ``GET /read`` reads a session key, ``POST /write``
changes one key. Each session kind is measured

1. under Flask's test client (in-process, one session cookie): microseconds per
   request, Redis commands per request from ``INFO commandstats`` (which also counts
   the commands run inside a Lua script) and network round trips per request
   (counted in redis-py, where a script or pipeline is one). The kinds run
   interleaved in 20 rounds and the best round is reported;
2. under gunicorn (2 workers x 4 threads, gthread) on loopback, driven by a bounded
   number of keep-alive client threads for a fixed time, each a browser with its
   own session (``--shared-session``: all with one): requests per second. The
   servers run side by side and the load alternates between them in short
   slices; the median slice is reported, and ratios are medians of neighbouring
   slices' ratios.

``statekit-near`` is statekit with the session near cache on
(``STATEKIT_SESSION_NEAR_CACHE``): an unchanged session loads without Redis.

Targets (issue 4): test-client time <= 1.15x cookie sessions; gunicorn req/s >=
1.2x Flask-Session; unmodified request = 1 Redis command, modified <= 2 (round trips).

Run: ``.venv/bin/python bench/sessions.py [--requests 2000] [--seconds 6] [--clients 8]
[--threads 4] [--shared-session] [--no-gunicorn]``
(a private redis-server and the gunicorn processes are started and stopped;
about 90 s with the defaults). Only the sessions feature of StateKit is enabled.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from statekit.embedded import RedisServer, free_port

KINDS = ("cookie", "flask-session", "statekit", "statekit-near")

APP = textwrap.dedent('''
    import os
    from flask import Flask, session

    KIND = os.environ["BENCH_KIND"]
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "bench-sessions-secret-0123456789"
    if KIND == "flask-session":
        import redis
        from flask_session import Session
        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(os.environ["BENCH_REDIS"]))
        Session(app)
    elif KIND.startswith("statekit"):
        from flask_statekit import StateKit
        app.config.update(STATEKIT_SESSION_URL=os.environ["BENCH_REDIS"],
                          STATEKIT_SESSION_NEAR_CACHE=KIND == "statekit-near",
                          STATEKIT_SESSION_COOKIE_SECURE=False, STATEKIT_CACHE_ENABLED=False,
                          STATEKIT_BLOBS_ENABLED=False, STATEKIT_BROADCAST_ENABLED=False,
                          STATEKIT_LIFECYCLE_ENABLED=False)
        StateKit(app)

    @app.post("/start")
    def start():
        session["user"] = "alice"
        session["cart"] = ["apple", "pear"]
        session["n"] = 0
        return "ok"

    @app.get("/read")
    def read():
        return str(session.get("n", 0))

    @app.post("/write")
    def write():
        session["n"] = session.get("n", 0) + 1
        return "ok"
''')


class RoundTrips:
    """Count network round trips: redis-py's (a command, a pipeline or a script = one)
    and those of statekit's pool-free fast path (statekit.redis.fast: a
    thread's own socket, or the near cache's shared one)."""

    def __init__(self) -> None:
        import redis.connection

        from statekit.redis import fast as fastredis

        self.count = 0
        self._patched = [(cls, name, getattr(cls, name)) for cls, name in (
            (redis.connection.AbstractConnection, "send_packed_command"),
            (fastredis._FastConnection, "call"),
            (fastredis.SharedConnection, "call"),
        )]

    def __enter__(self) -> RoundTrips:
        for cls, name, orig in self._patched:
            setattr(cls, name, self._counting(orig))
        return self

    def _counting(self, orig: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return orig(*args, **kwargs)

        return counted

    def __exit__(self, *exc: object) -> None:
        for cls, name, orig in self._patched:
            setattr(cls, name, orig)


def _commands(r: Any) -> int:
    stats = r.info("commandstats")
    return int(sum(v["calls"] for k, v in stats.items()
                   if not k.startswith(("cmdstat_info", "cmdstat_config"))))


def _import_app(tmp: Path, kind: str, redis_url: str) -> Any:
    import importlib

    os.environ["BENCH_KIND"] = kind
    os.environ["BENCH_REDIS"] = redis_url
    name = f"bench_sessions_app_{kind.replace('-', '_')}"
    (tmp / f"{name}.py").write_text(APP)
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module(name).app
    finally:
        sys.path.remove(str(tmp))


def test_client_runs(tmp: Path, redis_url: str, n: int, rounds: int = 20) -> dict[str, dict[str, float]]:
    """Every kind under the test client, interleaved in *rounds* (the machine's noise
    then hits all kinds alike); the best round is reported (timeit's advice: the
    other rounds measure the neighbours, not the code)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    clients = {}
    for kind in KINDS:
        client = _import_app(tmp, kind, redis_url).test_client()
        client.post("/start")
        clients[kind] = client
    per = max(1, n // rounds)
    times: dict[tuple[str, str], list[float]] = {}
    cmds: dict[tuple[str, str], int] = {}
    trips: dict[tuple[str, str], int] = {}
    for _ in range(rounds):
        for route in ("read", "write"):
            for kind in KINDS:
                client = clients[kind]
                method = client.get if route == "read" else client.post
                for _ in range(5):  # warm up (script cache, pools)
                    method(f"/{route}")
                r.config_resetstat()
                with RoundTrips() as counter:
                    t0 = time.perf_counter()
                    for _ in range(per):
                        resp = method(f"/{route}")
                    elapsed = time.perf_counter() - t0
                assert resp.status_code == 200, resp.data
                times.setdefault((kind, route), []).append(elapsed / per * 1e6)
                cmds[kind, route] = cmds.get((kind, route), 0) + _commands(r)
                trips[kind, route] = trips.get((kind, route), 0) + counter.count
    out: dict[str, dict[str, float]] = {k: {} for k in KINDS}
    for (kind, route), ts in times.items():
        out[kind][f"{route}_us"] = min(ts)
        out[kind][f"{route}_cmds"] = cmds[kind, route] / (per * rounds)
        out[kind][f"{route}_trips"] = trips[kind, route] / (per * rounds)
    return out


def _gunicorn(tmp: Path, kind: str, redis_url: str, threads: int = 4) -> tuple[subprocess.Popen[bytes], int]:
    tmp.mkdir(exist_ok=True)
    (tmp / "bench_sessions_app.py").write_text(APP)
    port = free_port()
    env = dict(os.environ, BENCH_KIND=kind, BENCH_REDIS=redis_url)
    proc = subprocess.Popen(  # noqa: S603 - our own command line
        [str(Path(sys.executable).parent / "gunicorn"), "--workers", "2", "--threads", str(threads),
         "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp),
         "--log-level", "warning", "bench_sessions_app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/read")
            c.getresponse().read()
            c.close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gunicorn ({kind}) did not start")


def _cookie(port: int) -> str:
    """A new session's cookie (``session=...``), from the ``Set-Cookie`` headers of
    ``POST /start``: the session cookie, not the near cache's version token
    (``session_v``), which may come first."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("POST", "/start")
    resp = c.getresponse()
    resp.read()
    c.close()
    for header in resp.msg.get_all("Set-Cookie") or []:
        pair = header.split(";", 1)[0]
        if pair.startswith("session="):
            return pair
    raise RuntimeError(f"POST /start set no session cookie: {resp.msg.get_all('Set-Cookie')}")


def _check_written(port: int, cookie: str, kind: str) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/read", headers={"Cookie": cookie})
    body = c.getresponse().read()
    c.close()
    if not body.isdigit() or int(body) == 0:
        raise RuntimeError(f"{kind}: the session lost the writes (read {body!r}): benchmark invalid")


def _exchange(sock: socket.socket, request: bytes, buf: bytearray) -> tuple[int, bytes | None]:
    """Send one keep-alive request and read its response: the status code, and the
    session's version token if the response set one (a browser sends it back)."""
    sock.sendall(request)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            total = end + 4 + length
            if len(buf) >= total:
                status = int(buf[9:12])
                j = head.find(b"set-cookie: session_v=")
                token = head[j + 22:].split(b";", 1)[0] if j >= 0 else None
                del buf[:total]
                return status, token
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buf += data


def load(port: int, cookies: list[str], method: str, route: str, clients: int, seconds: float) -> float:
    """Requests per second from *clients* keep-alive connections for *seconds*.

    Each client is a raw socket sending one prebuilt request at a time (a few
    microseconds of client CPU per request, where ``http.client`` takes ~100: on a
    2-core machine the load generator shares the CPUs with the servers, so a
    heavier client would hide the servers' own differences). Like a browser, a
    client sends back the session's version token (near cache) once it got one."""
    counts = [0] * clients
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def build(i: int, token: bytes | None) -> bytes:
        cookie = cookies[i % len(cookies)] + (f"; session_v={token.decode()}" if token else "")
        return (f"{method} {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    def run(i: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        request = build(i, None)
        try:
            while time.monotonic() < stop:
                status, token = _exchange(sock, request, buf)
                if status != 200:
                    errors.append(str(status))
                    return
                if token is not None:
                    request = build(i, token)
                counts[i] += 1
        finally:
            sock.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    if errors:
        raise RuntimeError(f"{route}: HTTP {errors[0]}")
    return sum(counts) / (time.monotonic() - t0)


def gunicorn_runs(tmp: Path, redis_url: str, clients: int, seconds: float, *, threads: int = 4,
                  shared: bool = False, slices: int = 12) -> dict[str, dict[str, float]]:
    """All kinds served at once; the load alternates between them in short slices
    (in a rotating order) and the median slice is reported, so a noisy neighbour
    hits every kind alike. Ratios to Flask-Session are the median of the ratios of
    neighbouring slices (``<route>_rps_vs_fs``): this VM's speed drifts by tens of
    percent within a minute.

    Each client is one browser with its own session, unless *shared*: then all
    clients send one session's cookie (every write then changes the session the
    other worker holds). Afterwards each server-side kind must read back the count
    its write route left, so a run that lost its sessions fails instead of
    reporting numbers for session-less requests."""
    import statistics

    servers = {kind: _gunicorn(tmp / kind, kind, redis_url, threads) for kind in KINDS}
    try:
        cookies = {kind: [_cookie(port) for _ in range(1 if shared else clients)]
                   for kind, (_, port) in servers.items()}
        rates: dict[tuple[str, str], list[float]] = {}
        for kind, (_, port) in servers.items():
            load(port, cookies[kind], "GET", "/read", clients, 0.3)  # warm up
        order = list(servers)
        for i in range(slices):
            for route, method in (("read", "GET"), ("write", "POST")):
                for kind in order[i % len(order):] + order[:i % len(order)]:
                    port = servers[kind][1]
                    rps = load(port, cookies[kind], method, f"/{route}", clients, seconds / slices)
                    rates.setdefault((kind, route), []).append(rps)
        for kind, (_, port) in servers.items():
            if kind != "cookie":  # a cookie session's writes go back only in the response
                _check_written(port, cookies[kind][0], kind)
        out: dict[str, dict[str, float]] = {k: {} for k in KINDS}
        for (kind, route), rs in rates.items():
            out[kind][f"{route}_rps"] = statistics.median(rs)
            out[kind][f"{route}_rps_vs_fs"] = statistics.median(
                a / b for a, b in zip(rs, rates["flask-session", route], strict=True))
        return out
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(15)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="test-client requests per route")
    ap.add_argument("--seconds", type=float, default=6.0, help="gunicorn load per route and kind")
    ap.add_argument("--clients", type=int, default=8, help="concurrent gunicorn clients")
    ap.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (gthread)")
    ap.add_argument("--shared-session", action="store_true",
                    help="all gunicorn clients share one session (default: one session per client)")
    ap.add_argument("--no-gunicorn", action="store_true")
    args = ap.parse_args(argv)

    results: dict[str, dict[str, float]] = {}
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        print(f"redis {server.version}; {args.requests} test-client requests per route; "
              f"gunicorn 2 workers x {args.threads} threads, {args.clients} clients x {args.seconds:g} s "
              f"per route, {'one shared session' if args.shared_session else 'one session per client'}")
        results = test_client_runs(tmp, server.url, args.requests)
        if not args.no_gunicorn:
            for kind, row in gunicorn_runs(tmp, server.url, args.clients, args.seconds,
                                           threads=args.threads, shared=args.shared_session).items():
                results[kind].update(row)

    cols = [("read_us", "read µs"), ("write_us", "write µs"), ("read_cmds", "read cmds"),
            ("read_trips", "read RTT"), ("write_cmds", "write cmds"), ("write_trips", "write RTT")]
    if not args.no_gunicorn:
        cols += [("read_rps", "gunicorn read req/s"), ("write_rps", "gunicorn write req/s")]
    print()
    print("| kind | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for kind in KINDS:
        row = results[kind]
        print(f"| {kind} | " + " | ".join(f"{row[c]:.1f}" if row[c] >= 10 else f"{row[c]:.2f}"
                                          for c, _ in cols) + " |")
    ck, fs = results["cookie"], results["flask-session"]
    for name in ("statekit", "statekit-near"):
        sk = results[name]
        print()
        print(f"{name} / cookie time: read {sk['read_us'] / ck['read_us']:.2f}x, "
              f"write {sk['write_us'] / ck['write_us']:.2f}x   (target <= 1.15x)")
        print(f"{name} / Flask-Session time: read {sk['read_us'] / fs['read_us']:.2f}x, "
              f"write {sk['write_us'] / fs['write_us']:.2f}x")
        if not args.no_gunicorn:
            print(f"{name} / Flask-Session req/s: read {sk['read_rps_vs_fs']:.2f}x, "
                  f"write {sk['write_rps_vs_fs']:.2f}x   (target >= 1.2x; median of slice ratios)")
            print(f"{name} / cookie req/s: read {sk['read_rps'] / ck['read_rps']:.2f}x, "
                  f"write {sk['write_rps'] / ck['write_rps']:.2f}x")
        print(f"{name} Redis round trips/request: read {sk['read_trips']:.2f} (target 1), "
              f"write {sk['write_trips']:.2f} (target <= 2); commandstats incl. inside Lua: "
              f"read {sk['read_cmds']:.2f}, write {sk['write_cmds']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
