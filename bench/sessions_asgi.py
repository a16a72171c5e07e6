"""ASGI sessions benchmark (issue 18): a FastAPI app under uvicorn with statekit's
Starlette session middleware (near cache off and on) vs Starlette's cookie
``SessionMiddleware`` vs starsessions with its Redis store, side by side in one run,
all against the same private Redis.

One FastAPI app, three routes: ``POST /start`` fills a session, ``GET /read`` reads
one key, ``POST /write`` changes one key. Each kind is served by its own uvicorn
process (one worker, loopback, access log off) and measured

1. **one request at a time**: one keep-alive raw-socket client (a browser: it sends
   back the near cache's version token once it got one), the kinds interleaved in
   rounds; per-request latency (p50, p99), the server's CPU per request (``/proc``)
   and Redis commands per request (``INFO commandstats``, counting those run inside
   a Lua script). Ratios to the cookie middleware are medians of per-round ratios;
2. **N at once** (``--clients``, each a browser with its own session): requests per
   second and CPU per request of uvicorn and of Redis, the load alternating between
   the kinds in short slices; ratios are medians of neighbouring slices' ratios;
3. **in process** (no HTTP server; the app called as an ASGI callable): the same
   read request with no session middleware, each middleware, and the parts of a
   statekit read alone (the cookie's signature check, ``store.open``, one raw
   redis-py asyncio round trip): where a session read's time goes. ``--profile``
   adds cProfile's top functions of statekit reads.

The cookie middleware re-signs and re-sends its cookie on every response (the
client keeps sending the first one, which stays valid); starsessions loads and
saves the session on every request (two Redis round trips); statekit loads once and
saves only what a request changed.

Targets (issue 18): statekit session read <= 1.15x the cookie middleware's time;
ahead of every other server-side store (starsessions here).

Run: ``.venv/bin/python bench/sessions_asgi.py [--requests 300] [--rounds 5]
[--clients 8] [--seconds 3] [--profile] [--before REV]`` (~50 s with the defaults, about
twice that under ``bench/run.py --busy``; a private redis-server and the uvicorn
processes are started and stopped). ``--before REV`` (a commit, or the path of a ready
checkout) adds ``statekit@before`` and ``statekit-near@before``: the same two kinds
served from that tree (a ``git worktree``), interleaved with the others in the same
run, so a change is measured against its parent on the same machine at the same load.

The kinds pass ``near_cache`` explicitly (0, 1000): ``statekit`` stays the plain store
whatever the middleware's default (the near cache, since the commit that made it so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import importlib
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _trees import NOW, before_tree, commit, env_for  # noqa: E402
from run import stop  # noqa: E402
from sessions import (  # noqa: E402
    _check_written,
    _commands,
    _cookie,
    _cpu_since,
    _exchange,
    _redis_cpu,
    _thread_cpu,
    load,
)

from statekit.embedded import RedisServer, free_port  # noqa: E402

KINDS = ("cookie", "starsessions", "statekit", "statekit-near")
SECRET = "bench-sessions-secret-0123456789"

APP = textwrap.dedent('''
    import os

    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse

    SECRET = "bench-sessions-secret-0123456789"


    def make(kind, url):
        app = FastAPI()

        @app.post("/start")
        async def start(request: Request):
            request.session["user"] = "alice"
            request.session["cart"] = ["apple", "pear"]
            request.session["n"] = 0
            return PlainTextResponse("ok")

        @app.get("/read")
        async def read(request: Request):
            session = request.scope.get("session")
            return PlainTextResponse(str(session.get("n", 0) if session is not None else 0))

        @app.post("/write")
        async def write(request: Request):
            request.session["n"] = request.session.get("n", 0) + 1
            return PlainTextResponse("ok")

        if kind == "cookie":
            from starlette.middleware.sessions import SessionMiddleware
            app.add_middleware(SessionMiddleware, secret_key=SECRET)
        elif kind.startswith("statekit"):
            from starlette_statekit.sessions import SessionMiddleware
            app.add_middleware(SessionMiddleware, url=url, secret_key=SECRET, key_prefix="bench-asgi",
                               near_cache=1000 if kind == "statekit-near" else 0)
        elif kind == "starsessions":
            from starsessions import SessionAutoloadMiddleware, SessionMiddleware
            from starsessions.stores.redis import RedisStore
            app.add_middleware(SessionAutoloadMiddleware)
            app.add_middleware(SessionMiddleware, store=RedisStore(url), cookie_https_only=False,
                               lifetime=14 * 86400)
        return app


    if os.environ.get("BENCH_KIND"):
        app = make(os.environ["BENCH_KIND"], os.environ["BENCH_REDIS"])
''')


def uvicorn(tmp: Path, module: str, source: str, env: dict[str, str], target: str = "app",
            probe: str = "/read") -> tuple[subprocess.Popen[bytes], int]:
    """Serve ``module:target`` (written from *source* into *tmp*) with uvicorn, one
    process on a free loopback port, access log off; return once *probe* answers."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{module}.py").write_text(source)
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - our own command line
        [sys.executable, "-m", "uvicorn", f"{module}:{target}", "--host", "127.0.0.1", "--port", str(port),
         "--app-dir", str(tmp), "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", probe)
            c.getresponse().read()
            c.close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"uvicorn {module}:{target} ({env.get('BENCH_KIND')}) did not start")


def serial(pid: int, port: int, method: str, route: str, cookie: str, n: int) -> tuple[list[float], float]:
    """*n* requests one at a time on one keep-alive connection: the latency of each
    (seconds) and the server process's CPU seconds per request. Like a browser, the
    client sends back the near cache's version token once it got one."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()

    def build(token: bytes | None) -> bytes:
        full = cookie + (f"; session_v={token.decode()}" if token else "")
        return (f"{method} {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {full}\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    request = build(None)
    out = []
    try:
        for _ in range(warmup(n)):  # warm up: the token, pools, code paths
            _, token = _exchange(sock, request, buf)
            if token is not None:
                request = build(token)
        cpu0 = _thread_cpu(pid)
        for _ in range(n):
            t0 = time.perf_counter()
            status, token = _exchange(sock, request, buf)
            out.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{route}: HTTP {status}")
            if token is not None:
                request = build(token)
        cpu = _cpu_since(pid, cpu0) / n
    finally:
        sock.close()
    return out, cpu


def warmup(n: int) -> int:
    """How many requests :func:`serial` sends before timing *n*."""
    return max(3, n // 10)


def pct(values: list[float], q: float) -> float:
    """The *q* quantile (0-1) of *values*."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_serial(servers: dict[str, tuple[int, int]], cookies: dict[str, str], r: Any,
               routes: list[tuple[str, str]], rounds: int, n: int) -> dict[str, dict[str, Any]]:
    """Every kind one request at a time, interleaved in *rounds* (rotating order):
    per kind and route the latencies, per-round medians, CPU, Redis commands, and
    connections opened and left open per request."""
    out: dict[str, dict[str, Any]] = {k: {} for k in servers}
    order = list(servers)
    for i in range(rounds):
        for method, route in routes:
            for kind in order[i % len(order):] + order[:i % len(order)]:
                r.config_resetstat()
                conns = r.info("stats")["total_connections_received"]
                held = r.info("clients")["connected_clients"]
                lat, cpu = serial(*servers[kind], method, route, cookies[kind], n)
                sent = n + warmup(n)
                cmds = _commands(r) / sent
                conns = (r.info("stats")["total_connections_received"] - conns) / sent
                held = (r.info("clients")["connected_clients"] - held) / sent
                row = out[kind]
                row.setdefault(f"{route}_lat", []).extend(lat)
                row.setdefault(f"{route}_rounds", []).append(statistics.median(lat))
                row.setdefault(f"{route}_cpu", []).append(cpu)  # CPU s per request, this round
                row.setdefault(f"{route}_cmds", []).append(cmds)
                row.setdefault(f"{route}_conns", []).append(conns)
                row.setdefault(f"{route}_held", []).append(held)
    return out


def run_concurrent(servers: dict[str, tuple[int, int]], cookies: dict[str, list[str]], r: Any,
                   routes: list[tuple[str, str]], clients: int, seconds: float, slices: int
                   ) -> dict[str, dict[str, Any]]:
    """Every kind under *clients* concurrent keep-alive clients, alternating in
    *slices* short slices: req/s per slice, CPU per request of the server and Redis."""
    out: dict[str, dict[str, Any]] = {k: {} for k in servers}
    order = list(servers)
    for kind, (_, port) in servers.items():
        load(port, cookies[kind], "GET", routes[0][1], clients, 0.3)  # warm up
    for i in range(slices):
        for method, route in routes:
            for kind in order[i % len(order):] + order[:i % len(order)]:
                pid, port = servers[kind]
                app0, redis0 = _thread_cpu(pid), _redis_cpu(r)
                count, took = load(port, cookies[kind], method, route, clients, seconds / slices)
                row = out[kind]
                row.setdefault(f"{route}_rps", []).append(count / took)
                w = row.setdefault(f"{route}_work", [0.0, 0.0, 0.0])
                w[0] += count
                w[1] += _cpu_since(pid, app0)
                w[2] += _redis_cpu(r) - redis0
    return out


def ratio(rows: dict[str, dict[str, Any]], kind: str, base: str, key: str) -> float:
    """The median of per-round (per-slice) ratios *kind* / *base* of *key*."""
    return float(statistics.median(a / b for a, b in zip(rows[kind][key], rows[base][key], strict=True)))


def report(serial_rows: dict[str, dict[str, Any]], conc: dict[str, dict[str, Any]], labels: dict[str, str],
           base: str, base_name: str, clients: int) -> None:
    """Print the figures of :func:`run_serial` and :func:`run_concurrent` for each
    kind in *labels* (kind -> row label): a Markdown table, the ratios to *base*,
    and the Redis connections opened and left open per request."""
    width = max(len(label) for label in labels.values())
    print("\none request at a time (µs; CPU of the uvicorn process per request) and N at once (req/s; "
          "CPU µs per request of uvicorn + Redis)\n")
    print("| kind | read p50 µs | read p99 µs | read CPU µs | write p50 µs | write p99 µs | write CPU µs "
          f"| read cmds | write cmds | {clients} at once: read req/s | write req/s "
          "| read CPU µs/req app+Redis | write CPU µs/req app+Redis |")
    print("|---" * 13 + "|")
    for kind, label in labels.items():
        s, c = serial_rows[kind], conc[kind]
        cells = []
        for route in ("/read", "/write"):
            cells += [f"{statistics.median(s[f'{route}_rounds']) * 1e6:.0f}",
                      f"{pct(s[f'{route}_lat'], 0.99) * 1e6:.0f}",
                      f"{statistics.fmean(s[f'{route}_cpu']) * 1e6:.0f}"]
        cells += [f"{statistics.median(s['/read_cmds']):.2f}", f"{statistics.median(s['/write_cmds']):.2f}"]
        cells += [f"{statistics.median(c['/read_rps']):.0f}", f"{statistics.median(c['/write_rps']):.0f}"]
        for route in ("/read", "/write"):
            served, app_cpu, redis_cpu = c[f"{route}_work"]
            cells.append(f"{app_cpu / served * 1e6:.0f} + {redis_cpu / served * 1e6:.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |")

    print(f"\nratios to {base_name} (median of per-round / per-slice ratios; time: lower is better, "
          "req/s: higher is better)")
    print(f"  {'':<{width}} {'read time':>10} {'write time':>11} {'read req/s':>11} {'write req/s':>12}")
    for kind, label in labels.items():
        if kind != base:
            print(f"  {label:<{width}} {ratio(serial_rows, kind, base, '/read_rounds'):>9.2f}x "
                  f"{ratio(serial_rows, kind, base, '/write_rounds'):>10.2f}x "
                  f"{ratio(conc, kind, base, '/read_rps'):>10.2f}x "
                  f"{ratio(conc, kind, base, '/write_rps'):>11.2f}x")

    print("\nRedis connections per request, one at a time, read / write: opened; still open after the round")
    for kind, label in labels.items():
        print(f"  {label:<{width}} " + "; ".join(
            f"{statistics.median(serial_rows[kind][f'/read_{k}']):.2f} / "
            f"{statistics.median(serial_rows[kind][f'/write_{k}']):.2f}" for k in ("conns", "held")))


async def _per_call(fn: Callable[[], Awaitable[Any]], n: int, rounds: int = 5) -> float:
    """Best-of-*rounds* microseconds per await of *fn* (after a warm-up)."""
    for _ in range(max(10, n // 10)):
        await fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            await fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def _asgi(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]],
          seen: list[bytes] | None = None) -> Callable[[], Awaitable[Any]]:
    """One request through *app* as an ASGI callable (no server), checked for 200;
    the session cookies it sets are appended to *seen* (as a browser's ``Cookie``)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"bench"), *headers], "client": ("127.0.0.1", 1),
             "server": ("bench", 80)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call() -> None:
        status = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                if seen is not None:
                    seen.extend(v.split(b";", 1)[0] for k, v in message.get("headers", [])
                                if k == b"set-cookie" and v.startswith((b"session=", b"session_v=")))

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"{method} {path}: {status}")

    return call


#: the in-process rows of a near-cache write, and the same with the hash sent back
NEAR_SAVE, HASH_BACK = "store.open + save, near cache (median)", "  same, the hash sent back (before 5ad17f6)"


async def _near_saves(url: str, n: int, rounds: int = 12) -> dict[str, float]:
    """Microseconds per ``open`` (a near-cache hit) + ``save`` of one key, the median
    of *rounds* rounds of *n* interleaved with the same where the write script sends
    the hash back (the engine given no copy to go on from, as every near-cache write
    did before 5ad17f6)."""
    from statekit.sessions import redis as engine_module
    from statekit.sessions.aio import AsyncSessionStore

    layout = engine_module._Layout
    real = layout._near_base
    times: dict[str, list[float]] = {NEAR_SAVE: [], HASH_BACK: []}
    store = AsyncSessionStore(url, secret_keys=[SECRET], key_prefix="bench-asgi-near", near_cache=1000)
    async with store:
        signed = store.sign((await store.create({"user": "alice", "cart": ["apple", "pear"], "n": 0})).sid)

        async def open_save() -> None:
            session = await store.open(signed)
            session["n"] = session["n"] + 1
            await store.save(session)

        kinds = ((NEAR_SAVE, real), (HASH_BACK, lambda self, key, create: None))
        try:
            for _ in range(max(10, n // 10)):
                await open_save()
            for i in range(rounds):
                for name, base in kinds if i % 2 else kinds[::-1]:
                    layout._near_base = base  # type: ignore[method-assign,assignment]
                    t0 = time.perf_counter()
                    for _ in range(n):
                        await open_save()
                    times[name].append((time.perf_counter() - t0) / n * 1e6)
        finally:
            layout._near_base = real  # type: ignore[method-assign]
    return {name: statistics.median(values) for name, values in times.items()}


async def breakdown(tmp: Path, url: str, n: int, profile: bool) -> dict[str, float]:
    """In-process microseconds per session read and write (no HTTP server), and the
    parts of a read."""
    import redis.asyncio as aioredis
    from itsdangerous import TimestampSigner

    (tmp / "bench_asgi_inproc.py").write_text(APP)
    sys.path.insert(0, str(tmp))
    make = importlib.import_module("bench_asgi_inproc").make
    kinds = ("none", "cookie", "starsessions", "statekit", "statekit-near")
    apps = {kind: make(kind, url) for kind in kinds}
    out: dict[str, float] = {}
    calls = {}
    for kind, app in apps.items():
        headers = []
        if kind != "none":
            seen: list[bytes] = []
            await _asgi(app, "POST", "/start", [], seen)()
            headers = [(b"cookie", b"; ".join(seen))]
        calls[f"{kind} read"] = _asgi(app, "GET", "/read", headers)
        if kind != "none":
            calls[f"{kind} write"] = _asgi(app, "POST", "/write", headers)
    for _ in range(2):  # interleaved: take each kind's best over the passes
        for kind, call in calls.items():
            out[kind] = min(out.get(kind, float("inf")), await _per_call(call, n))

    from statekit.sessions.aio import AsyncSessionStore

    async with AsyncSessionStore(url, secret_keys=[SECRET], key_prefix="bench-asgi-parts") as store:
        session = await store.create({"user": "alice", "cart": ["apple", "pear"], "n": 0})
        signed = store.sign(session.sid)
        out["store.unsign"] = await _per_call(lambda: asyncio.sleep(0, store.unsign(signed)), n)
        out["store.open"] = await _per_call(lambda: store.open(signed), n)
    out.update(await _near_saves(url, n))
    raw = aioredis.Redis.from_url(url)
    out["redis-py asyncio HGETALL"] = await _per_call(lambda: raw.hgetall("bench-asgi-missing"), n)
    await raw.aclose()
    signer = TimestampSigner(SECRET)
    cookie = signer.sign(b"eyJ1c2VyIjogImFsaWNlIiwgImNhcnQiOiBbImFwcGxlIiwgInBlYXIiXSwgIm4iOiAwfQ==")
    out["itsdangerous unsign+sign"] = await _per_call(
        lambda: asyncio.sleep(0, (signer.unsign(cookie, max_age=86400), signer.sign(b"x" * 64))), n)
    out["asyncio.sleep(0) (subtracted above)"] = await _per_call(lambda: asyncio.sleep(0), n)
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            await calls["statekit read"]()
        prof.disable()
        print(f"\ncProfile of {n} statekit reads in process (top 15 by own time):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    for app in apps.values():  # the statekit middleware's store: give its connections back
        stack = getattr(app, "middleware_stack", None)
        while stack is not None:
            held = getattr(stack, "store", None)
            if held is not None and hasattr(held, "aclose"):
                await held.aclose()
            stack = getattr(stack, "app", None)
    return out


def options(doc: str, requests: int, seconds: float) -> argparse.ArgumentParser:
    """The command-line options of the ASGI benchmarks (their defaults differ)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=requests,
                    help="one-at-a-time requests per kind, route and round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved one-at-a-time rounds")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=seconds, help="concurrent load per kind and route")
    ap.add_argument("--slices", type=int, default=4, help="slices the concurrent load alternates in")
    return ap


@dataclasses.dataclass
class Served:
    """What :func:`served` started: the private Redis (its URL, a client, a name for
    the header) and the uvicorn servers, kind -> (PID, port)."""

    url: str
    redis_name: str
    r: Any
    tmp: Path
    servers: dict[str, tuple[int, int]]


@contextlib.contextmanager
def served(kinds: tuple[str, ...], module: str, source: str, target: str = "app",
           trees: dict[str, Path] | None = None) -> Iterator[Served]:
    """A private redis-server and, for each of *kinds*, uvicorn serving
    ``module:target`` (*source*) with ``BENCH_KIND`` and ``BENCH_REDIS`` set;
    everything is stopped (by PID) afterwards. A kind ``<kind>@<name>`` is *kind*
    served from the tree ``trees[name]`` (statekit and the Starlette adapter
    imported from there); the others from this checkout."""
    import redis

    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RedisServer())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.callback(stop, procs)
        r = redis.Redis.from_url(server.url)
        stack.callback(r.close)
        servers: dict[str, tuple[int, int]] = {}
        for kind in kinds:
            base, _, name = kind.partition("@")
            tree = (trees or {})[name] if name else NOW
            env = env_for(tree, BENCH_KIND=base, BENCH_REDIS=server.url)
            adapter = tree / "adapters" / "starlette-statekit"
            env["PYTHONPATH"] = os.pathsep.join((str(adapter), env["PYTHONPATH"]))
            proc, port = uvicorn(tmp / kind, module, source, env, target=target)
            procs.append(proc)
            servers[kind] = proc.pid, port
        yield Served(server.url, f"{server.binary.flavor} {server.version}", r, tmp, servers)


def main(argv: list[str] | None = None) -> int:
    ap = options(__doc__ or "", requests=300, seconds=3.0)
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions of statekit reads")
    ap.add_argument("--before", metavar="REV",
                    help="also serve the statekit kinds from this commit (or checkout)")
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        trees = {"before": stack.enter_context(before_tree(args.before))} if args.before else {}
        return _main(args, trees)


def _main(args: argparse.Namespace, trees: dict[str, Path]) -> int:
    import uvicorn as uv

    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    routes = [("GET", "/read"), ("POST", "/write")]
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop_impl = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    kinds = KINDS + tuple(f"{k}@before" for k in KINDS if k.startswith("statekit") and trees)
    with served(kinds, "bench_asgi_sessions_app", APP, trees=trees) as run:
        if trees:
            print(f"before: {commit(trees['before'])} ({args.before})")
        print(f"statekit {commit()}; {run.redis_name}; uvicorn {uv.__version__} "
              f"(one process per kind, {loop_impl} loop, {http_impl}); "
              f"{args.rounds} rounds x {args.requests} requests one at a time, "
              f"{args.clients} clients x {args.seconds:g} s per kind and route; "
              f"load average {load0:.2f} on {os.cpu_count()} CPUs", flush=True)
        servers = run.servers
        first = {kind: _cookie(port) for kind, (_, port) in servers.items()}
        serial_rows = run_serial(servers, first, run.r, routes, args.rounds, args.requests)
        many = {kind: [_cookie(port) for _ in range(args.clients)] for kind, (_, port) in servers.items()}
        conc = run_concurrent(servers, many, run.r, routes, args.clients, args.seconds, args.slices)
        for kind, (_, port) in servers.items():
            if kind != "cookie":  # a cookie session's writes go back only in the response
                _check_written(port, first[kind], kind)
        parts = asyncio.run(breakdown(run.tmp, run.url, max(200, args.requests), args.profile))

    report(serial_rows, conc, {k: k for k in kinds}, "cookie", "Starlette's cookie SessionMiddleware",
           args.clients)

    print(f"\nin process, no HTTP server (µs per request, best of 10 x {max(200, args.requests)}; "
          "read / write, and over no session middleware):")
    base = parts["none read"]
    print(f"  {'app, no session middleware (read)':<44} {base:>7.1f}")
    for kind in KINDS:
        read, write = parts[f"{kind} read"], parts[f"{kind} write"]
        print(f"  {('app, ' + kind + ' session middleware'):<44} {read:>7.1f} / {write:>7.1f}  "
              f"(+{read - base:.0f} / +{write - base:.0f})")
    sleep0 = parts["asyncio.sleep(0) (subtracted above)"]
    for key in ("store.unsign", "itsdangerous unsign+sign"):
        print(f"  {key:<44} {parts[key] - sleep0:>7.1f}")
    for key in ("store.open", "redis-py asyncio HGETALL", NEAR_SAVE, HASH_BACK):
        print(f"  {key:<44} {parts[key]:>7.1f}")

    print("\ntargets")
    for kind in [k for k in kinds if k.startswith("statekit")]:
        read = ratio(serial_rows, kind, "cookie", "/read_rounds")
        print(f"  {kind} read time / cookie middleware      {read:.2f}x  target <= 1.15x  "
              f"{'met' if read <= 1.15 else 'MISSED'}")
        for other in ("starsessions",):
            t = ratio(serial_rows, kind, other, "/read_rounds")
            w = ratio(serial_rows, kind, other, "/write_rounds")
            rr = ratio(conc, kind, other, "/read_rps")
            wr = ratio(conc, kind, other, "/write_rps")
            ok = t < 1 and w < 1 and rr > 1 and wr > 1
            print(f"  {kind} / {other}: read time {t:.2f}x, write time {w:.2f}x, read req/s {rr:.2f}x, "
                  f"write req/s {wr:.2f}x  target: ahead  {'met' if ok else 'MISSED'}")
    print(f"(load average {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
