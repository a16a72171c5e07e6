"""Sessions benchmark: statekit vs Flask-Session 0.8 (Redis) vs Flask's cookie sessions,
and statekit now vs statekit before the one-Redis-layer redesign (``--before``).

One Flask app, two routes: ``GET /read`` reads a session key, ``POST /write``
changes one key. Each session kind is measured

1. under Flask's test client, each kind in its own subprocess (its own tree on the
   import path), driven from here: microseconds and CPU microseconds
   (``time.process_time``) per request, Redis commands per request from ``INFO
   commandstats`` (which also counts the commands run inside a Lua script) and
   network round trips per request (counted in redis-py, where a script or pipeline
   is one, and in the old hand-written client where there is one);
2. under gunicorn (2 workers x 4 threads, gthread) on loopback, driven by a bounded
   number of keep-alive client threads for a fixed time, each a browser with its
   own session (``--shared-session``: all with one): requests per second, and CPU
   per request of the gunicorn master and workers (each thread's time on a CPU,
   ``/proc/<pid>/task/<tid>/schedstat``) and of Redis (``INFO cpu``). The servers
   run side by side, all the time.

Both parts run in ``--rounds`` short rounds (default 12): each round gives every kind
``--requests / rounds`` test-client requests, then ``--seconds / rounds`` of gunicorn
load, per route, one kind after another, so the total time does not depend on the
number of rounds. A now kind and its before kind run back to back, now first in even
rounds and before first in odd ones (ABBA over two rounds: a drift of the machine's
speed, or an advantage of going first or second, hits both alike); the other kinds
and the pairs take turns at the front. A ratio (now / before, statekit / Flask-Session)
is the median of the rounds' ratios, each of two figures measured moments apart, with
an interval from the rounds' order statistics (the k-th smallest to the k-th largest
ratio: the whole range up to 8 rounds, the 3rd to 10th of 12) that holds the median
ratio at 95 % or more whatever the noise's shape, the range, and the number of
rounds. The verdict on a target is ``met`` when the whole interval is on the right
side of it, ``MISSED`` when the whole interval is beyond it, and ``within noise`` when
it straddles it: this run cannot tell, more rounds (or a quieter machine) might.

``statekit-near`` is statekit with the session near cache on
(``STATEKIT_SESSION_NEAR_CACHE``): an unchanged session loads without Redis.
With ``--before REV`` (default in ``bench/run.py``: 49db0e6, main before issue 17)
the kinds ``statekit@before`` and ``statekit-near@before`` run the same app from a
``git worktree`` of REV (removed afterwards; or ``--before PATH`` of a ready
checkout), paired with their now kinds against the same Redis, and the run prints
now / before: time, req/s and CPU per request, each with its interval and verdict.

Targets: test-client time <= 1.15x cookie sessions (issue 4); gunicorn req/s >=
1.2x Flask-Session (issue 4); unmodified request = 1 Redis command, modified <= 2
(round trips); now no more than 5 % slower than before (issue 17): time <= 1.05x,
req/s >= 0.95x.

Run: ``.venv/bin/python bench/sessions.py [--requests 2000] [--seconds 6] [--rounds 12]
[--clients 8] [--threads 4] [--shared-session] [--no-gunicorn] [--before 49db0e6]``
(a private redis-server and the gunicorn processes are started and stopped;
about 60 s with the defaults, 90 s with ``--before``: the gunicorn part is
``--seconds`` x 2 routes x the kinds). Only the sessions feature of StateKit is
enabled.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
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
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).parent))

from _trees import NOW, before_tree, commit, env_for  # noqa: E402

from statekit.embedded import RedisServer, free_port  # noqa: E402

BASE_KINDS = ("cookie", "flask-session", "statekit", "statekit-near")
BEFORE_KINDS = ("statekit@before", "statekit-near@before")
#: the share of repeated runs whose interval may miss the median ratio (at most)
ALPHA = 0.05

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


def round_order(kinds: list[str], i: int) -> list[str]:
    """The order *kinds* run in, in round *i*: a kind with its ``@before`` kind is one
    unit, the two back to back, now first in even rounds and before first in odd ones
    (ABBA over two rounds); the units take turns at the front, moving every two rounds
    (so each place in the order sees both orders of a pair)."""
    units = [[k, f"{k}@before"] if f"{k}@before" in kinds else [k] for k in kinds if "@" not in k]
    if i % 2:
        units = [unit[::-1] for unit in units]
    shift = i // 2 % len(units)
    return [k for unit in units[shift:] + units[:shift] for k in unit]


class Spread(NamedTuple):
    """The median of a figure's per-round values (ratios), a distribution-free interval
    for it (the *k*-th smallest to the *k*-th largest value), the range and the number
    of rounds; *confidence*: the interval's coverage."""

    median: float
    low: float
    high: float
    least: float
    most: float
    rounds: int
    k: int
    confidence: float


def spread(values: list[float]) -> Spread:
    """The median of *values* with the interval from the k-th smallest to the k-th
    largest of them, k the largest for which the chance that the true median (of the
    distribution the values come from) lies outside is at most ``ALPHA``: it lies
    below the k-th smallest only if fewer than k values fell below it, each one with
    chance one half (binomial; no assumption on the noise's shape), and likewise
    above. For up to 8 values k is 1, the whole range (coverage 1 - 2 / 2**n: 97 % for
    6 rounds)."""
    xs = sorted(values)
    n = len(xs)

    def outside(k: int) -> float:  # P(the median is below the k-th smallest or above the k-th largest)
        return 2 * sum(math.comb(n, j) for j in range(k)) / (1 << n)

    k = 1
    while k + 1 <= n // 2 and outside(k + 1) <= ALPHA:
        k += 1
    return Spread(statistics.median(xs), xs[k - 1], xs[n - k], xs[0], xs[-1], n, k, 1 - outside(k))


def verdict(s: Spread, target: float, at_least: bool) -> str:
    """``met`` when *s*'s whole interval is on the target's side, ``MISSED`` when it is
    wholly beyond the target, ``within noise`` when it straddles it."""
    good, bad = (s.low >= target, s.high < target) if at_least else (s.high <= target, s.low > target)
    return "met" if good else "MISSED" if bad else "within noise"


def ratios(rounds: dict[str, dict[str, list[float]]], kind: str, other: str, figure: str) -> list[float]:
    """Round by round, *kind*'s *figure* over *other*'s, measured moments apart; a
    round where either has none (NaN: CPU per request of a round that served nothing)
    or both are 0 tells nothing and is left out; over 0 the ratio is infinite."""
    return [a / b if b else math.inf for a, b in zip(rounds[kind][figure], rounds[other][figure], strict=True)
            if not (math.isnan(a) or math.isnan(b) or a == b == 0)]


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


def test_client_runs(trees: dict[str, Path], redis_url: str, n: int, rounds: int,
                     per_round: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Every kind under the test client, *n* requests per route in *rounds* rounds
    (:func:`round_order`: a now kind and its before kind back to back). Returns the
    best round (timeit's advice: the other rounds measure the neighbours, not the
    code), the median CPU, commands and round trips per request; each round's time
    and CPU per request (``<route>_us``, ``<route>_cpu``) go to *per_round*[kind]."""
    import redis

    r = redis.Redis.from_url(redis_url)
    workers = {kind: Worker(kind, tree, redis_url) for kind, tree in trees.items()}
    per = max(1, n // rounds)
    cmds: dict[tuple[str, str], int] = {}
    trips: dict[tuple[str, str], int] = {}
    try:
        for i in range(rounds):
            for route in ("read", "write"):
                for kind in round_order(list(workers), i):
                    result, commands = workers[kind].batch(route, per, r)
                    per_round[kind].setdefault(f"{route}_us", []).append(result["us"])
                    per_round[kind].setdefault(f"{route}_cpu", []).append(result["cpu"])
                    cmds[kind, route] = cmds.get((kind, route), 0) + commands
                    trips[kind, route] = trips.get((kind, route), 0) + result["trips"]
    finally:
        for w in workers.values():
            w.close()
    out: dict[str, dict[str, float]] = {k: {} for k in trees}
    for (kind, route), total in cmds.items():
        times = per_round[kind][f"{route}_us"]
        out[kind][f"{route}_us"] = min(times)
        out[kind][f"{route}_us_median"] = statistics.median(times)
        out[kind][f"{route}_cpu"] = statistics.median(per_round[kind][f"{route}_cpu"])
        out[kind][f"{route}_cmds"] = total / (per * rounds)
        out[kind][f"{route}_trips"] = trips[kind, route] / (per * rounds)
    return out


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


def _thread_cpu(pid: int) -> dict[tuple[int, int], float]:
    """CPU seconds each thread of process *pid* and of its descendants has run so far,
    by (pid, tid): the first field of ``/proc/<pid>/task/<tid>/schedstat``, a thread's
    nanoseconds on a CPU (utime + stime of its ``stat`` on a kernel without it). A
    process's utime + stime counts clock ticks (10 ms): 3 processes' rounding was up to
    6 % of a 0.5 s round's CPU."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, int], float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            base = f"/proc/{p}/task/{task}"
            try:
                try:
                    with open(f"{base}/schedstat") as f:
                        out[p, int(task)] = int(f.read().split()[0]) / 1e9
                except FileNotFoundError:
                    with open(f"{base}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    out[p, int(task)] = (int(fields[11]) + int(fields[12])) / tick
                with open(f"{base}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
    return out


def _cpu_since(pid: int, before: dict[tuple[int, int], float]) -> float:
    """CPU seconds process *pid* and its descendants ran since *before*
    (:func:`_thread_cpu`): a thread started since counts whole, one that ended since
    is left out (gthread's threads live as long as their worker)."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in _thread_cpu(pid).items())


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




def load(port: int, cookies: list[str], method: str, route: str, clients: int, seconds: float,
         tokens: list[bytes | None] | None = None) -> tuple[int, float]:
    """(requests, seconds) from *clients* keep-alive connections for *seconds*.

    Each client is a raw socket sending one prebuilt request at a time (a few
    microseconds of client CPU per request, where ``http.client`` takes ~100: on a
    2-core machine the load generator shares the CPUs with the servers, so a
    heavier client would hide the servers' own differences). Like a browser, a
    client sends back the session's version token (near cache) once it got one;
    *tokens* (one per client) holds them from one call to the next. The clock starts
    when every client has connected: on a loaded machine starting the threads and
    connecting took longer than a 0.5 s round (a round of no requests)."""
    counts = [0] * clients
    errors: list[str] = []
    if tokens is None:
        tokens = [None] * clients
    started: list[float] = []
    ready = threading.Barrier(clients, action=lambda: started.append(time.monotonic()))

    def build(i: int, token: bytes | None) -> bytes:
        cookie = cookies[i % len(cookies)] + (f"; session_v={token.decode()}" if token else "")
        return (f"{method} {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    def run(i: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError as exc:
            errors.append(f"client {i} did not connect: {exc}")
            ready.abort()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        request = build(i, tokens[i])
        try:
            try:
                ready.wait(30)
            except threading.BrokenBarrierError:
                errors.append("the clients did not all connect within 30 s")
                return
            stop = started[0] + seconds
            while time.monotonic() < stop:
                status, token = _exchange(sock, request, buf)
                if status != 200:
                    errors.append(f"HTTP {status}")
                    return
                if token is not None:
                    tokens[i] = token
                    request = build(i, token)
                counts[i] += 1
        finally:
            sock.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    if errors:
        raise RuntimeError(f"{route}: {errors[0]}")
    if not started or any(t.is_alive() for t in threads):
        raise RuntimeError(f"{route}: the clients did not finish within {seconds + 60:g} s")
    return sum(counts), time.monotonic() - started[0]


def gunicorn_runs(tmp: Path, trees: dict[str, Path], redis_url: str, clients: int, seconds: float,
                  rounds: int, per_round: dict[str, dict[str, list[float]]], *,
                  threads: int = 4, shared: bool = False) -> dict[str, dict[str, float]]:
    """All kinds served at once; the load goes to one at a time, *seconds* / *rounds*
    per kind and route in each of *rounds* rounds (:func:`round_order`: a now kind
    and its before kind back to back, so a noisy neighbour or this VM's drifting
    speed hits both alike). Returns each kind's median round (req/s) and its CPU per
    request over all rounds: the gunicorn master and workers (:func:`_thread_cpu`)
    and Redis (``INFO cpu``); each round's req/s and CPU µs per request
    (``<route>_rps``, ``<route>_app_cpu``, ``<route>_redis_cpu``) go to
    *per_round*[kind].

    Each client is one browser with its own session, unless *shared*: then all
    clients send one session's cookie (every write then changes the session the
    other worker holds), and keeps the session's version token from one round to the
    next. Afterwards each server-side kind must read back the count its write route
    left, so a run that lost its sessions fails instead of reporting numbers for
    session-less requests."""
    import redis

    r = redis.Redis.from_url(redis_url)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for kind, tree in trees.items():
            servers[kind] = _gunicorn(tmp / kind.replace("@", "-"), kind, tree, redis_url, threads)
        cookies = {kind: [_cookie(port) for _ in range(1 if shared else clients)]
                   for kind, (_, port) in servers.items()}
        tokens: dict[str, list[bytes | None]] = {kind: [None] * clients for kind in servers}
        work: dict[tuple[str, str], list[float]] = {}  # requests, app CPU s, Redis CPU s
        for kind, (_, port) in servers.items():
            load(port, cookies[kind], "GET", "/read", clients, 0.3, tokens[kind])  # warm up
        for i in range(rounds):
            for route, method in (("read", "GET"), ("write", "POST")):
                for kind in round_order(list(servers), i):
                    proc, port = servers[kind]
                    app0, redis0 = _thread_cpu(proc.pid), _redis_cpu(r)
                    count, took = load(port, cookies[kind], method, f"/{route}", clients,
                                       seconds / rounds, tokens[kind])
                    app_cpu, redis_cpu = _cpu_since(proc.pid, app0), _redis_cpu(r) - redis0
                    w = work.setdefault((kind, route), [0.0, 0.0, 0.0])
                    w[0] += count
                    w[1] += app_cpu
                    w[2] += redis_cpu
                    figures = per_round[kind]
                    figures.setdefault(f"{route}_rps", []).append(count / took)
                    # a round that served nothing (a stalled server) has no CPU per request
                    figures.setdefault(f"{route}_app_cpu", []).append(
                        app_cpu / count * 1e6 if count else math.nan)
                    figures.setdefault(f"{route}_redis_cpu", []).append(
                        redis_cpu / count * 1e6 if count else math.nan)
        for kind, (_, port) in servers.items():
            if kind != "cookie":  # a cookie session's writes go back only in the response
                _check_written(port, cookies[kind][0], kind)
        out: dict[str, dict[str, float]] = {k: {} for k in trees}
        for (kind, route), (served, app_cpu, redis_cpu) in work.items():
            out[kind][f"{route}_rps"] = statistics.median(per_round[kind][f"{route}_rps"])
            out[kind][f"{route}_app_cpu"] = app_cpu / served * 1e6 if served else math.nan
            out[kind][f"{route}_redis_cpu"] = redis_cpu / served * 1e6 if served else math.nan
        return out
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(15)


def _fmt(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _ratio(s: Spread) -> str:
    return f"{s.median:.2f}x [{s.low:.2f}-{s.high:.2f}]"


#: the now / before figures: (figure, label, unit, target, at least); no target: information
PAIRED: list[tuple[str, str, str, float | None, bool]] = [
    ("read_us", "test-client read time", "µs", 1.05, False),
    ("read_cpu", "test-client read CPU", "µs", None, False),
    ("write_us", "test-client write time", "µs", 1.05, False),
    ("write_cpu", "test-client write CPU", "µs", None, False),
    ("read_rps", "gunicorn read req/s", "req/s", 0.95, True),
    ("read_app_cpu", "gunicorn read CPU/request, app (+ Redis)", "µs", None, False),
    ("write_rps", "gunicorn write req/s", "req/s", 0.95, True),
    ("write_app_cpu", "gunicorn write CPU/request, app (+ Redis)", "µs", None, False),
]


def print_now_before(per_round: dict[str, dict[str, list[float]]], rounds: int) -> None:
    """The now / before table: per figure, the median of the rounds' ratios, its
    interval (:func:`spread`), the range, the target and the verdict (:func:`verdict`),
    and the median round of each tree. The ratio of a CPU row is the app's (the test
    client's process, or gunicorn's master and workers); Redis's is shown beside it."""
    shape = spread([float(i) for i in range(rounds)])
    k = shape.k
    nth = f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"
    bounds = "the whole range" if shape.k == 1 else f"the {nth} smallest to the {nth} largest"
    print(f"\nnow / before, {rounds} paired rounds (now and before back to back, now first in "
          f"even rounds, before first in odd ones): the median of the rounds' ratios; interval: "
          f"{bounds} of the rounds' ratios, which holds the true median ratio {shape.confidence:.1%} "
          f"of the time; met / MISSED when the whole interval is on the target's side / beyond it, "
          f"within noise when it straddles it; now, before: the median round; rounds: those "
          f"that compare (not a round that served nothing: no CPU per request, req/s 0 on both "
          f"sides), k from their count")
    print("| kind | figure | now / before | interval | range | rounds | target | verdict | now | before |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("statekit", "statekit-near"):
        for figure, label, unit, target, at_least in PAIRED:
            if figure not in per_round[name]:
                continue
            cells = []
            for kind in (name, f"{name}@before"):
                cell = f"{_median(per_round[kind][figure]):.0f}"
                if figure.endswith("_app_cpu"):
                    cell += f" + {_median(per_round[kind][figure.replace('_app_', '_redis_')]):.0f}"
                cells.append(f"{cell} {unit}")
            goal = "(info)" if target is None else f"{'>=' if at_least else '<='} {target:.2f}x"
            paired = ratios(per_round, name, f"{name}@before", figure)
            if not paired:
                print(f"| {name} | {label} | - | - | - | 0 | {goal} | no round to compare | "
                      f"{cells[0]} | {cells[1]} |")
                continue
            s = spread(paired)
            judged = ""
            if target is not None:
                judged = verdict(s, target, at_least)
                if s.confidence < 1 - ALPHA:
                    judged = f"({judged}: too few rounds to judge, 6 or more)"
            print(f"| {name} | {label} | {s.median:.2f}x | {s.low:.2f}-{s.high:.2f}x | "
                  f"{s.least:.2f}-{s.most:.2f}x | {s.rounds} | {goal} | {judged} | {cells[0]} | {cells[1]} |")


def _median(values: list[float]) -> float:
    """The median of the rounds that have a value (NaN: a round that served nothing)."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="test-client requests per route and kind")
    ap.add_argument("--seconds", type=float, default=6.0, help="gunicorn load per route and kind")
    ap.add_argument("--rounds", type=int, default=12,
                    help="rounds the requests and seconds are split into (now and before back to "
                         "back in each, in alternating order); 6 or more")
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
    if args.rounds < 2:
        ap.error("--rounds: 2 or more (now first in one, before first in the next); 6 or more to judge")

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        trees = dict.fromkeys(BASE_KINDS, NOW)
        before = None
        if args.before:  # each before kind next to its now kind: back to back in every round
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
              + f"; {args.rounds} rounds; {args.requests} test-client requests per route; "
              f"gunicorn 2 workers x {args.threads} threads, {args.clients} clients x {args.seconds:g} s "
              f"per route, {'one shared session' if args.shared_session else 'one session per client'}; "
              f"load average {_load()} at start on {os.cpu_count()} CPUs", flush=True)
        per_round: dict[str, dict[str, list[float]]] = {kind: {} for kind in trees}
        results = test_client_runs(trees, server.url, args.requests, args.rounds, per_round)
        if not args.no_gunicorn:
            for kind, row in gunicorn_runs(tmp, trees, server.url, args.clients, args.seconds, args.rounds,
                                           per_round, threads=args.threads,
                                           shared=args.shared_session).items():
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
              f"write {sk['write_us'] / ck['write_us']:.2f}x   (target <= 1.15x; best rounds)")
        print(f"{name} / Flask-Session time: read {sk['read_us'] / fs['read_us']:.2f}x, "
              f"write {sk['write_us'] / fs['write_us']:.2f}x")
        if not args.no_gunicorn:
            def rps(other: str, route: str, name: str = name) -> str:
                paired = ratios(per_round, name, other, f"{route}_rps")
                return _ratio(spread(paired)) if paired else "- (no round to compare)"

            print(f"{name} / Flask-Session req/s: read {rps('flask-session', 'read')}, write "
                  f"{rps('flask-session', 'write')}   (target >= 1.2x; median of the rounds' ratios "
                  f"[interval])")
            print(f"{name} / cookie req/s: read {rps('cookie', 'read')}, write {rps('cookie', 'write')}")
        print(f"{name} Redis round trips/request: read {sk['read_trips']:.2f} (target 1), "
              f"write {sk['write_trips']:.2f} (target <= 2); commandstats incl. inside Lua: "
              f"read {sk['read_cmds']:.2f}, write {sk['write_cmds']:.2f}")
    if before is not None:
        print_now_before(per_round, args.rounds)
    print(f"\nload average {_load()} at end; {time.monotonic() - started:.0f} s")
    return 0


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
