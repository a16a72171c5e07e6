"""The session middleware's near cache, on by default: where it turns on, and the
coherence it relies on. A browser's reads follow its own writes through the version
token; a write made by another process (which may send no token: a WSGI worker
without a near cache) must be read here as soon as it is done, because Redis queues
its invalidation to this process's listener before the writer gets its reply, and a
load checks the listener's socket (``pending()``) before it trusts a copy."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from starlette_statekit.sessions import NEAR_CACHE, SessionMiddleware
from statekit.sessions import AsyncSessionStore

pytestmark = [pytest.mark.redis]

KEY = "starlette-near-default-key"

#: another process writing sessions with the sync store and no near cache (as a Flask
#: worker does by default: it sends no version token), one write per line it reads
WRITER = textwrap.dedent('''
    import sys
    from statekit.sessions import SessionStore
    store = SessionStore(sys.argv[1], secret_keys=[sys.argv[2]], key_prefix=sys.argv[3])
    for line in sys.stdin:
        sid, value = line.split()
        session = store.load(sid)
        session["n"] = value
        store.save(session)
        print(session.version, flush=True)
''')


async def v_get(request: Request) -> Response:
    return JSONResponse(dict(request.session.items()))


async def v_set(request: Request) -> Response:
    request.session[request.path_params["key"]] = request.path_params["value"]
    return PlainTextResponse("ok")


def make_app(url: str, prefix: str, **options: Any) -> Starlette:
    return Starlette(routes=[Route("/get", v_get), Route("/set/{key}/{value}", v_set, methods=["POST"])],
                     middleware=[Middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix=prefix,
                                            **options)])


def middleware(app: Starlette) -> SessionMiddleware:
    """The app's session middleware (its stack is built by the first request)."""
    stack: Any = app.middleware_stack
    while not isinstance(stack, SessionMiddleware):
        stack = stack.app
    return stack


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
def prefix() -> str:
    return "snd" + uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def _no_statekit_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("STATEKIT_REDIS_URL", "STATEKIT_SESSION_URL", "STATEKIT_KEY_PREFIX", "STATEKIT_SECRET_KEYS"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_a_write_by_another_process_is_read_here_at_once(redis_line_url: str, prefix: str) -> None:
    """Each round: a read here (from this process's copy), then another process
    writes the session and says so, then at once a read here through the same
    browser's cookies: it must see that write, never the copy it had a moment ago."""
    rounds = 40
    app = make_app(redis_line_url, prefix)  # no near_cache=: the default

    async def main() -> tuple[bool, int, int, list[tuple[str, str]]]:
        async with client(app) as browser:
            assert (await browser.post("/set/n/start")).status_code == 200
            store = middleware(app).store
            sid = store.unsign(browser.cookies["session"])
            assert sid is not None

            async def hits_grow() -> bool:
                before = store.counters.get("near_hits")
                await browser.get("/get")
                return store.counters.get("near_hits") > before

            # the listener connects on first use: from then on reads are local
            for _ in range(200):
                if await hits_grow():
                    break
                await asyncio.sleep(0.02)
            writer = subprocess.Popen(  # noqa: S603 - our own script
                [sys.executable, "-c", WRITER, redis_line_url, KEY, prefix],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert writer.stdin is not None and writer.stdout is not None
            local, seen = 0, []
            try:
                for i in range(rounds):
                    local += await hits_grow()  # this process holds the copy now
                    writer.stdin.write(f"{sid} v{i}\n")
                    writer.stdin.flush()
                    writer.stdout.readline()  # the write is done
                    seen.append(((await browser.get("/get")).json()["n"], f"v{i}"))
            finally:
                writer.stdin.close()
                writer.wait(10)
                writer.stdout.close()
            return store.near_cache, store.counters.get("near_hits"), local, seen

    near, hits, local, seen = asyncio.run(main())
    assert near and hits > 0
    assert local >= rounds // 2, "the copies were not used: nothing was tested"
    assert [got for got, _ in seen] == [want for _, want in seen]


def test_the_default_is_on_where_it_can_run_and_off_elsewhere(redis_url: str, prefix: str) -> None:
    async def main() -> dict[str, bool]:
        out = {}
        for name, app in (("default", make_app(redis_url, prefix)),
                          ("off", make_app(redis_url, prefix, near_cache=0)),
                          ("memory", make_app("memory://near-default", prefix))):
            async with client(app) as c:
                assert (await c.post("/set/a/1")).status_code == 200
                sent = c.cookies.get("session_v") is not None
                store = middleware(app).store
                out[name] = store.near_cache and sent
                await store.aclose()
        return out

    assert asyncio.run(main()) == {"default": True, "off": False, "memory": False}
    assert NEAR_CACHE > 0


def test_a_ready_store_keeps_its_own_setting(redis_url: str, prefix: str) -> None:
    store = AsyncSessionStore(redis_url, secret_keys=[KEY], key_prefix=prefix)
    app = Starlette(routes=[Route("/set/{key}/{value}", v_set, methods=["POST"])],
                    middleware=[Middleware(SessionMiddleware, store=store)])

    async def main() -> bool:
        async with client(app) as c:
            assert (await c.post("/set/a/1")).status_code == 200
            return c.cookies.get("session_v") is None and not middleware(app).store.near_cache

    assert asyncio.run(main())


def test_cluster_urls_get_no_near_cache(prefix: str) -> None:
    """A Cluster URL turns the default off (the near cache needs one server for a
    session's tracking connection and the listener): building the middleware does
    not raise, and no listener is made."""
    mw = SessionMiddleware(PlainTextResponse("ok"), url="redis+cluster://127.0.0.1:7000", secret_key=KEY,
                           key_prefix=prefix)
    assert not mw.store.near_cache and mw.store.engine.listener is None
