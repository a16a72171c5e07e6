"""CPU per session request in process, now against another tree (issues 17 and 18).

No HTTP server: each measure is a loop in one process against a private Redis, so the
figures are statekit's CPU (and the client side of its Redis round trip) without
uvicorn's or gunicorn's. Measured, in CPU µs (``time.process_time``) and wall µs per
call, the median of *rounds* rounds of *n*:

* ``app write`` / ``app read``: ``POST /write`` and ``GET /read`` of
  ``sessions_asgi.py``'s FastAPI app through ``starlette_statekit``'s middleware with
  the near cache (the middleware's default), called as an ASGI callable, the browser's
  cookie and version token sent back;
* ``async open+save`` / ``sync open+save``: ``AsyncSessionStore`` / ``SessionStore``
  (near cache on) ``open`` of a signed cookie, one key changed, ``save``;
* ``bare app write`` / ``app write, engine stubbed``: a FastAPI write route without
  session middleware, and with statekit's over an engine that answers at once (no
  I/O): their difference is the middleware's and the store's own CPU.

Each rep runs the trees one after the other in fresh processes (interleaved, the
order alternating), so both meet the same load; ratios are medians of per-rep ratios.

Run: ``.venv/bin/python bench/sessions_inproc.py --before 4dcf5dc [--reps 5] [--n 500]
[--rounds 5]`` (``--before`` a commit, made a ``git worktree``, or a checkout's path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _trees import NOW, before_tree, commit, env_for  # noqa: E402

MEASURES = ("app write", "app read", "async open+save", "sync open+save", "bare app write",
            "app write, engine stubbed")


class StubEngine:
    """An async session engine that answers at once (no I/O): what is left of a
    request's CPU is statekit's middleware and store and the app's own."""

    near = True  # the adapters send the version token, as with the near cache

    def __init__(self) -> None:
        t = repr(time.time()).encode()
        self.raw = {"m:c": t, "m:s": t, "m:v": b"1", "d:user": b'"alice"', "d:cart": b'["apple","pear"]',
                    "d:n": b"0"}
        self.version = 1

    async def load(self, handle: str, min_version: int = 0) -> dict[str, bytes]:
        return self.raw

    async def write(self, handle: str, **_: Any) -> Any:
        from statekit.sessions.protocol import Result, Status

        self.version += 1
        return Result(Status.DONE, version=self.version)

    async def aclose(self) -> None:
        return None


async def _rounds(fn: Callable[[], Awaitable[Any]], n: int, rounds: int) -> tuple[float, float]:
    for _ in range(300):
        await fn()
    cpu, wall = [], []
    for _ in range(rounds):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await fn()
        cpu.append((time.process_time() - c0) / n * 1e6)
        wall.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(cpu), statistics.median(wall)


async def child(url: str, tmp: str, n: int, rounds: int) -> dict[str, tuple[float, float]]:
    """The measures of this process's statekit (the tree on its ``PYTHONPATH``)."""
    import importlib

    import sessions_asgi as sa

    from statekit.sessions import SessionStore
    from statekit.sessions.aio import AsyncSessionStore

    out: dict[str, tuple[float, float]] = {}
    Path(tmp, "bench_inproc_app.py").write_text(sa.APP)
    sys.path.insert(0, tmp)
    app = importlib.import_module("bench_inproc_app").make("statekit-near", url)
    jar: list[bytes] = []
    await sa._asgi(app, "POST", "/start", [], jar)()
    await sa._asgi(app, "POST", "/write", [(b"cookie", b"; ".join(jar))], jar)()
    cookies = dict(c.split(b"=", 1) for c in jar)  # the latest of each, as a browser keeps them
    headers = [(b"cookie", b"; ".join(k + b"=" + v for k, v in cookies.items()))]
    out["app write"] = await _rounds(sa._asgi(app, "POST", "/write", headers), n, rounds)
    out["app read"] = await _rounds(sa._asgi(app, "GET", "/read", headers), n, rounds)
    data = {"user": "alice", "cart": ["apple", "pear"], "n": 0}

    async with AsyncSessionStore(url, secret_keys=[sa.SECRET], key_prefix="bench-inproc-a", near_cache=1000,
                                 user_key="_user_id") as store:
        signed, token = store.sign((await store.create(data)).sid), [None]

        async def open_save() -> None:
            s = await store.open(signed, version_token=token[0])
            s["n"] += 1
            await store.save(s)
            token[0] = store.version_token(s, token[0]) or token[0]

        out["async open+save"] = await _rounds(open_save, n, rounds)
    sync = SessionStore(url, secret_keys=[sa.SECRET], key_prefix="bench-inproc-s", near_cache=1000,
                        user_key="_user_id")
    signed_sync, sync_token = sync.sign(sync.create(data).sid), [None]

    async def sync_open_save() -> None:
        s = sync.open(signed_sync, version_token=sync_token[0])
        s["n"] += 1
        sync.save(s)
        sync_token[0] = sync.version_token(s, sync_token[0]) or sync_token[0]

    out["sync open+save"] = await _rounds(sync_open_save, n, rounds)
    sync.close()

    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from starlette_statekit.sessions import SessionMiddleware

    async def write(request: Any) -> PlainTextResponse:  # a Starlette route: no FastAPI params
        if "session" in request.scope:
            request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse("ok")

    stub = AsyncSessionStore(secret_keys=[sa.SECRET], engine=StubEngine(), user_key="_user_id")
    cookie = [(b"cookie", f"session={stub.sign(stub._new_id())}; session_v=1".encode())]
    for name, wrapped in (("bare app write", False), ("app write, engine stubbed", True)):
        bare = FastAPI()
        bare.add_route("/write", write, methods=["POST"])
        if wrapped:
            bare.add_middleware(SessionMiddleware, store=stub)
        out[name] = await _rounds(sa._asgi(bare, "POST", "/write", cookie), n, rounds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--before", required=True, help="a commit or a checkout's path")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", nargs=2, metavar=("URL", "TMP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        for name, (cpu, wall) in asyncio.run(child(*args.child, args.n, args.rounds)).items():
            print(f"{name}\t{cpu:.1f}\t{wall:.1f}")
        return 0
    import tempfile

    from statekit.embedded import RedisServer

    with contextlib.ExitStack() as stack:
        trees = {"before": stack.enter_context(before_tree(args.before)), "now": NOW}
        server = stack.enter_context(RedisServer())
        print(f"now {commit()}, before {commit(trees['before'])}; {args.reps} reps x {args.rounds} rounds x "
              f"{args.n}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
        got: dict[str, list[dict[str, tuple[float, float]]]] = {"before": [], "now": []}
        for rep in range(args.reps):
            for name in ("before", "now") if rep % 2 == 0 else ("now", "before"):
                with tempfile.TemporaryDirectory() as tmp:
                    env = env_for(trees[name])
                    adapter = trees[name] / "adapters" / "starlette-statekit"
                    env["PYTHONPATH"] = os.pathsep.join((str(adapter), env["PYTHONPATH"]))
                    done = subprocess.run(
                        [sys.executable, __file__, "--before", "-", "--n", str(args.n), "--rounds",
                         str(args.rounds), "--child", server.url, tmp],
                        env=env, capture_output=True, text=True, timeout=600)
                if done.returncode:
                    raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
                rows = [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]
                got[name].append({m: (float(cpu), float(wall)) for m, cpu, wall in rows})
            print(f"  rep {rep + 1}: load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\n{'µs per call':<26} {'CPU before':>10} {'CPU now':>8} {'now/before (range)':>22} "
          f"{'wall before':>11} {'wall now':>9}")
    for m in MEASURES:
        b = [r[m][0] for r in got["before"]]
        n = [r[m][0] for r in got["now"]]
        ratios = [y / x for x, y in zip(b, n, strict=True)]
        print(f"{m:<26} {statistics.median(b):>10.1f} {statistics.median(n):>8.1f} "
              f"{statistics.median(ratios):>8.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
              f"{statistics.median(r[m][1] for r in got['before']):>11.0f} "
              f"{statistics.median(r[m][1] for r in got['now']):>9.0f}")
    print(f"(load average {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
