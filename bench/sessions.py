"""Sessions benchmark: statekit vs Flask-Session 0.8 (Redis) vs Flask's cookie sessions,
and statekit now vs statekit before the one-Redis-layer redesign (``--before``).

One Flask app, two routes: ``GET /read`` reads a session key, ``POST /write``
changes one key. Each session kind is measured

1. under Flask's test client, each kind in its own subprocess (its own tree on the
   import path), driven in interleaved rounds from here: microseconds and CPU
   microseconds (``time.process_time``) per request, Redis commands per request from
   ``INFO commandstats`` (which also counts the commands run inside a Lua script)
   and network round trips per request (counted in redis-py, where a script or
   pipeline is one, and in the old hand-written client where there is one). The
   best round and the median of the per-round ratios are reported;
2. under gunicorn (2 workers x 4 threads, gthread) on loopback, driven by a bounded
   number of keep-alive client threads for a fixed time, each a browser with its
   own session (``--shared-session``: all with one): requests per second, and CPU
   per request of the gunicorn processes and of Redis (from ``/proc`` and ``INFO
   cpu``). The servers run side by side and the load alternates between them in
   short slices; the median slice is reported, and ratios are medians of
   neighbouring slices' ratios.

``statekit-near`` is statekit with the session near cache on
(``STATEKIT_SESSION_NEAR_CACHE``): an unchanged session loads without Redis.
With ``--before REV`` (default in ``bench/run.py``: 49db0e6, main before issue 17)
the kinds ``statekit@before`` and ``statekit-near@before`` run the same app from a
``git worktree`` of REV (removed afterwards; or ``--before PATH`` of a ready
checkout), interleaved with the others against the same Redis, and the run prints
now / before.

Targets: test-client time <= 1.15x cookie sessions (issue 4); gunicorn req/s >=
1.2x Flask-Session (issue 4); unmodified request = 1 Redis command, modified <= 2
(round trips); now no more than 5 % slower than before (issue 17): time <= 1.05x,
req/s >= 0.95x.

Run: ``.venv/bin/python bench/sessions.py [--requests 2000] [--seconds 6] [--clients 8]
[--threads 4] [--shared-session] [--no-gunicorn] [--before 49db0e6]``
(a private redis-server and the gunicorn processes are started and stopped;
about 90 s with the defaults, twice that with ``--before``). Only the sessions
feature of StateKit is enabled.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _trees import NOW, before_tree, commit, env_for  # noqa: E402

from statekit.embedded import RedisServer, free_port  # noqa: E402

BASE_KINDS = ("cookie", "flask-session", "statekit", "statekit-near")
BEFORE_KINDS = ("statekit@before", "statekit-near@before")

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




def _app_kind(kind: str) -> str:
    return kind.split("@", 1)[0]


class RoundTrips:
    """Count network round trips: redis-py's (a command, a pipeline or a script = one,
    which covers statekit's Transport) and those of the hand-written client statekit
    had before issue 17 (``statekit.backends.fastredis``, later
    ``statekit.redis.fast``: a thread's own socket, or the near cache's shared one)."""

    def __init__(self) -> None:
        import importlib

        import redis.connection

        targets: list[tuple[Any, str]] = [(redis.connection.AbstractConnection, "send_packed_command")]
        for name in ("statekit.backends.fastredis", "statekit.redis.fast"):
            try:
                fast = importlib.import_module(name)
            except ImportError:
                continue
            targets += [(fast._FastConnection, "call"), (fast.SharedConnection, "call")]
        self.count = 0
        self._patched = [(cls, name, getattr(cls, name)) for cls, name in targets]

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


def worker(kind: str, redis_url: str) -> None:
    """A test-client worker (a subprocess with its tree on the import path): reads
    ``{"route": ..., "n": ...}`` lines on stdin, answers one JSON line per batch."""
    import importlib

    os.environ["BENCH_KIND"] = _app_kind(kind)
    os.environ["BENCH_REDIS"] = redis_url
    with tempfile.TemporaryDirectory() as tmp:
        name = f"bench_sessions_app_{_app_kind(kind).replace('-', '_')}"
        (Path(tmp) / f"{name}.py").write_text(APP)
        sys.path.insert(0, tmp)
        app = importlib.import_module(name).app
        import statekit

        client = app.test_client()
        client.post("/start")
        print(json.dumps({"statekit": statekit.__file__}), flush=True)
        for line in sys.stdin:
            job = json.loads(line)
            method = client.get if job["route"] == "read" else client.post
            for _ in range(5):  # warm up (script cache, pools)
                method(f"/{job['route']}")
            print("{}", flush=True)  # warmed: the coordinator resets Redis's stats now
            sys.stdin.readline()
            with RoundTrips() as counter:
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(job["n"]):
                    resp = method(f"/{job['route']}")
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            if resp.status_code != 200:
                raise RuntimeError(f"{kind}: HTTP {resp.status_code}: {resp.data[:200]!r}")
            print(json.dumps({"us": elapsed / job["n"] * 1e6, "cpu": cpu / job["n"] * 1e6,
                              "trips": counter.count}), flush=True)


class Worker:
    def __init__(self, kind: str, tree: Path, redis_url: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(  # noqa: S603 - our own command line
            [sys.executable, __file__, "--worker", kind, "--redis-url", redis_url],
            env=env_for(tree), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=tempfile.gettempdir())
        hello = self._read()
        if not str(hello["statekit"]).startswith(str(tree)):
            raise RuntimeError(f"{kind}: imported statekit from {hello['statekit']}, not from {tree}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"test-client worker {self.kind} ended (exit {self.proc.wait(5)})")
        result: dict[str, Any] = json.loads(line)
        return result

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def batch(self, route: str, n: int, r: Any) -> tuple[dict[str, Any], int]:
        self._send(json.dumps({"route": route, "n": n}))
        self._read()  # warmed up
        r.config_resetstat()
        self._send("go")
        result = self._read()
        return result, _commands(r)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def test_client_runs(trees: dict[str, Path], redis_url: str, n: int, rounds: int = 20
                     ) -> tuple[dict[str, dict[str, float]], dict[tuple[str, str], list[float]]]:
    """Every kind under the test client, interleaved in *rounds* (the machine's noise
    then hits all kinds alike); the best round is reported (timeit's advice: the
    other rounds measure the neighbours, not the code), and the per-round times are
    returned for round-by-round ratios."""
    import redis

    r = redis.Redis.from_url(redis_url)
    workers = {kind: Worker(kind, tree, redis_url) for kind, tree in trees.items()}
    per = max(1, n // rounds)
    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    cmds: dict[tuple[str, str], int] = {}
    trips: dict[tuple[str, str], int] = {}
    try:
        for i in range(rounds):
            for route in ("read", "write"):
                order = list(workers)
                for kind in order[i % len(order):] + order[:i % len(order)]:
                    result, commands = workers[kind].batch(route, per, r)
                    times.setdefault((kind, route), []).append(result["us"])
                    cpus.setdefault((kind, route), []).append(result["cpu"])
                    cmds[kind, route] = cmds.get((kind, route), 0) + commands
                    trips[kind, route] = trips.get((kind, route), 0) + result["trips"]
    finally:
        for w in workers.values():
            w.close()
    out: dict[str, dict[str, float]] = {k: {} for k in trees}
    for (kind, route), ts in times.items():
        out[kind][f"{route}_us"] = min(ts)
        out[kind][f"{route}_us_median"] = statistics.median(ts)
        out[kind][f"{route}_cpu"] = statistics.median(cpus[kind, route])
        out[kind][f"{route}_cmds"] = cmds[kind, route] / (per * rounds)
        out[kind][f"{route}_trips"] = trips[kind, route] / (per * rounds)
    return out, times


def _gunicorn(tmp: Path, kind: str, tree: Path, redis_url: str, threads: int = 4
              ) -> tuple[subprocess.Popen[bytes], int]:
    tmp.mkdir(exist_ok=True)
    (tmp / "bench_sessions_app.py").write_text(APP)
    port = free_port()
    env = env_for(tree, BENCH_KIND=_app_kind(kind), BENCH_REDIS=redis_url)
    proc = subprocess.Popen(  # noqa: S603 - our own command line
        [str(Path(sys.executable).parent / "gunicorn"), "--workers", "2", "--threads", str(threads),
         "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp),
         "--log-level", "warning", "bench_sessions_app:app"],
        # run from tmp: gunicorn puts its working directory first on sys.path, so run
        # from a checkout's root it imported that checkout's statekit, not the tree's
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
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


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process *pid* and its children."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def _redis_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

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




def load(port: int, cookies: list[str], method: str, route: str, clients: int, seconds: float
         ) -> tuple[int, float]:
    """(requests, seconds) from *clients* keep-alive connections for *seconds*.

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
    return sum(counts), time.monotonic() - t0


def gunicorn_runs(tmp: Path, trees: dict[str, Path], redis_url: str, clients: int, seconds: float, *,
                  threads: int = 4, shared: bool = False, slices: int = 12) -> dict[str, dict[str, float]]:
    """All kinds served at once; the load alternates between them in short slices
    (in a rotating order) and the median slice is reported, so a noisy neighbour
    hits every kind alike. Ratios (``<route>_rps_vs_<kind>``) are the median of the
    ratios of neighbouring slices: this VM's speed drifts by tens of percent within
    a minute. CPU per request: the gunicorn master and workers (``/proc``) and Redis
    (``INFO cpu``), over all slices of a kind and route.

    Each client is one browser with its own session, unless *shared*: then all
    clients send one session's cookie (every write then changes the session the
    other worker holds). Afterwards each server-side kind must read back the count
    its write route left, so a run that lost its sessions fails instead of
    reporting numbers for session-less requests."""
    import redis

    r = redis.Redis.from_url(redis_url)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for kind, tree in trees.items():
            servers[kind] = _gunicorn(tmp / kind.replace("@", "-"), kind, tree, redis_url, threads)
        cookies = {kind: [_cookie(port) for _ in range(1 if shared else clients)]
                   for kind, (_, port) in servers.items()}
        rates: dict[tuple[str, str], list[float]] = {}
        work: dict[tuple[str, str], list[float]] = {}  # requests, app CPU s, Redis CPU s
        for kind, (_, port) in servers.items():
            load(port, cookies[kind], "GET", "/read", clients, 0.3)  # warm up
        order = list(servers)
        for i in range(slices):
            for route, method in (("read", "GET"), ("write", "POST")):
                for kind in order[i % len(order):] + order[:i % len(order)]:
                    proc, port = servers[kind]
                    app0, redis0 = _tree_cpu(proc.pid), _redis_cpu(r)
                    count, took = load(port, cookies[kind], method, f"/{route}", clients, seconds / slices)
                    w = work.setdefault((kind, route), [0.0, 0.0, 0.0])
                    w[0] += count
                    w[1] += _tree_cpu(proc.pid) - app0
                    w[2] += _redis_cpu(r) - redis0
                    rates.setdefault((kind, route), []).append(count / took)
        for kind, (_, port) in servers.items():
            if kind != "cookie":  # a cookie session's writes go back only in the response
                _check_written(port, cookies[kind][0], kind)
        out: dict[str, dict[str, float]] = {k: {} for k in trees}
        for (kind, route), rs in rates.items():
            out[kind][f"{route}_rps"] = statistics.median(rs)
            served, app_cpu, redis_cpu = work[kind, route]
            out[kind][f"{route}_app_cpu"] = app_cpu / served * 1e6
            out[kind][f"{route}_redis_cpu"] = redis_cpu / served * 1e6
            for other, label in (("flask-session", "flask-session"), ("cookie", "cookie"),
                                 (f"{kind}@before", "before")):
                if other in trees:
                    out[kind][f"{route}_rps_vs_{label}"] = statistics.median(
                        a / b for a, b in zip(rs, rates[other, route], strict=True))
        return out
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(15)


def _fmt(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="test-client requests per route")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved test-client rounds")
    ap.add_argument("--seconds", type=float, default=6.0, help="gunicorn load per route and kind")
    ap.add_argument("--clients", type=int, default=8, help="concurrent gunicorn clients")
    ap.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (gthread)")
    ap.add_argument("--shared-session", action="store_true",
                    help="all gunicorn clients share one session (default: one session per client)")
    ap.add_argument("--no-gunicorn", action="store_true")
    ap.add_argument("--before", metavar="REV|PATH",
                    help="also measure statekit at this commit (a git worktree) or checkout")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.redis_url)
        return 0

    with contextlib.ExitStack() as stack:
        trees = dict.fromkeys(BASE_KINDS, NOW)
        before = None
        if args.before:  # each before kind next to its now kind: neighbours in every round
            before = stack.enter_context(before_tree(args.before))
            trees = {}
            for kind in BASE_KINDS:
                trees[kind] = NOW
                if f"{kind}@before" in BEFORE_KINDS:
                    trees[f"{kind}@before"] = before
        server = stack.enter_context(RedisServer())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print(f"{server.binary.flavor} {server.version}; now = {commit()}"
              + (f", before = {commit(before)} ({args.before})" if before else "")
              + f"; {args.requests} test-client requests per route in {args.rounds} rounds; "
              f"gunicorn 2 workers x {args.threads} threads, {args.clients} clients x {args.seconds:g} s "
              f"per route, {'one shared session' if args.shared_session else 'one session per client'}; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
        results, rounds = test_client_runs(trees, server.url, args.requests, args.rounds)
        if not args.no_gunicorn:
            for kind, row in gunicorn_runs(tmp, trees, server.url, args.clients, args.seconds,
                                           threads=args.threads, shared=args.shared_session).items():
                results[kind].update(row)

    cols = [("read_us", "read µs"), ("read_cpu", "read CPU µs"), ("write_us", "write µs"),
            ("write_cpu", "write CPU µs"), ("read_trips", "read RTT"), ("write_trips", "write RTT"),
            ("write_cmds", "write cmds")]
    if not args.no_gunicorn:
        cols += [("read_rps", "gunicorn read req/s"), ("write_rps", "gunicorn write req/s"),
                 ("read_app_cpu", "read CPU µs/req app+Redis"),
                 ("write_app_cpu", "write CPU µs/req app+Redis")]
    print()
    print("| kind | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for kind in trees:
        row = results[kind]
        cells = []
        for c, _ in cols:
            cell = _fmt(row[c])
            if c.endswith("_app_cpu"):
                cell += f" + {_fmt(row[c.replace('_app_', '_redis_')])}"
            cells.append(cell)
        print(f"| {kind} | " + " | ".join(cells) + " |")
    ck, fs = results["cookie"], results["flask-session"]
    for name in ("statekit", "statekit-near"):
        sk = results[name]
        print()
        print(f"{name} / cookie time: read {sk['read_us'] / ck['read_us']:.2f}x, "
              f"write {sk['write_us'] / ck['write_us']:.2f}x   (target <= 1.15x)")
        print(f"{name} / Flask-Session time: read {sk['read_us'] / fs['read_us']:.2f}x, "
              f"write {sk['write_us'] / fs['write_us']:.2f}x")
        if not args.no_gunicorn:
            print(f"{name} / Flask-Session req/s: read {sk['read_rps_vs_flask-session']:.2f}x, "
                  f"write {sk['write_rps_vs_flask-session']:.2f}x   (target >= 1.2x; median of slice ratios)")
            print(f"{name} / cookie req/s: read {sk['read_rps_vs_cookie']:.2f}x, "
                  f"write {sk['write_rps_vs_cookie']:.2f}x")
        print(f"{name} Redis round trips/request: read {sk['read_trips']:.2f} (target 1), "
              f"write {sk['write_trips']:.2f} (target <= 2); commandstats incl. inside Lua: "
              f"read {sk['read_cmds']:.2f}, write {sk['write_cmds']:.2f}")
    if before is not None:
        print("\nnow / before (target: time <= 1.05x, req/s >= 0.95x; "
              "median of per-round and per-slice ratios)")
        for name in ("statekit", "statekit-near"):
            now, old = results[name], results[f"{name}@before"]
            parts = []
            for route in ("read", "write"):
                ratio = statistics.median(a / b for a, b in zip(
                    rounds[name, route], rounds[f"{name}@before", route], strict=True))
                ok = "met" if ratio <= 1.05 else "MISSED"
                parts.append(f"test-client {route} time {ratio:.2f}x ({ok}; best rounds "
                             f"{now[f'{route}_us']:.0f} / {old[f'{route}_us']:.0f} µs, CPU "
                             f"{now[f'{route}_cpu']:.0f} / {old[f'{route}_cpu']:.0f} µs)")
                if not args.no_gunicorn:
                    rps = now[f"{route}_rps_vs_before"]
                    ok = "met" if rps >= 0.95 else "MISSED"
                    parts.append(f"gunicorn {route} req/s {rps:.2f}x ({ok}; "
                                 f"{now[f'{route}_rps']:.0f} / {old[f'{route}_rps']:.0f}, CPU/req "
                                 f"{now[f'{route}_app_cpu']:.0f}+{now[f'{route}_redis_cpu']:.0f} / "
                                 f"{old[f'{route}_app_cpu']:.0f}+{old[f'{route}_redis_cpu']:.0f} µs)")
            print(f"  {name}:")
            for part in parts:
                print(f"    {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
