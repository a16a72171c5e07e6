"""starlette_statekit.sessions.SessionMiddleware in-process (httpx.ASGITransport), on
the suite's Redis: round trips, the signed id cookie, tampering, rotation with an old
cookie in flight, logout, the 503 of an outage (Redis paused) and the same session
afterwards, and 50 concurrent requests of one session each setting its own key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from starlette_statekit.sessions import (
    NEAR_CACHE,
    SessionMiddleware,
    destroy_session,
    get_session_store,
    incr_session,
    rotate_session,
)
from statekit.embedded import RedisServer
from statekit.sessions import AsyncSessionStore, SessionStore

pytestmark = [pytest.mark.redis]

KEY = "starlette-sessions-test-key"


@pytest.fixture(autouse=True)
def _no_statekit_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("STATEKIT_REDIS_URL", "STATEKIT_SESSION_URL", "STATEKIT_KEY_PREFIX", "STATEKIT_SECRET_KEYS"):
        monkeypatch.delenv(name, raising=False)
    yield


class Gate:
    """Holds the ``/held`` route after its session loaded until the test opens it."""

    def __init__(self) -> None:
        self.loaded = asyncio.Event()
        self.go = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0


async def v_get(request: StarletteRequest) -> Response:
    return JSONResponse(dict(request.session.items()))


async def v_set(request: StarletteRequest) -> Response:
    gate: Gate | None = getattr(request.app.state, "gate", None)
    if gate is not None:  # count the requests running together
        gate.in_flight += 1
        gate.most_in_flight = max(gate.most_in_flight, gate.in_flight)
        # a moment for another request to load meanwhile (one session's commands run
        # one at a time on its connection: the next load comes after this one's)
        for _ in range(100):
            if gate.most_in_flight > 1:
                break
            await asyncio.sleep(0.001)
        gate.in_flight -= 1
    request.session[request.path_params["key"]] = request.path_params["value"]
    return PlainTextResponse("ok")


async def v_held(request: StarletteRequest) -> Response:
    gate: Gate = request.app.state.gate
    gate.loaded.set()
    await gate.go.wait()
    request.session["held"] = "written"
    return PlainTextResponse("ok")


async def v_login(request: StarletteRequest) -> Response:
    await rotate_session(request)
    request.session["user"] = request.path_params["user"]
    return PlainTextResponse("ok")


async def v_logout(request: StarletteRequest) -> Response:
    await destroy_session(request)
    request.session["flash"] = "bye"
    return PlainTextResponse("ok")


async def v_incr(request: StarletteRequest) -> Response:
    return PlainTextResponse(str(await incr_session(request, "n")))


ROUTES = [Route("/get", v_get), Route("/set/{key}/{value}", v_set, methods=["POST"]),
          Route("/held", v_held, methods=["POST"]), Route("/login/{user}", v_login, methods=["POST"]),
          Route("/logout", v_logout, methods=["POST"]), Route("/incr", v_incr, methods=["POST"])]


def make_app(url: str, prefix: str, **options: Any) -> Starlette:
    app = Starlette(routes=ROUTES, middleware=[
        Middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix=prefix, **options)])
    app.state.gate = None
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
def prefix() -> str:
    return "st" + uuid.uuid4().hex[:10]


def sync_store(url: str, prefix: str) -> SessionStore:
    return SessionStore(url, secret_keys=[KEY], key_prefix=prefix)


def test_round_trip_with_a_signed_id_cookie_read_by_the_sync_store(redis_url: str, prefix: str) -> None:
    async def main() -> tuple[str, dict[str, Any], list[str]]:
        async with client(make_app(redis_url, prefix)) as c:
            first = await c.post("/set/color/blue")
            cookie = c.cookies["session"]
            await c.post("/set/size/L")
            again = await c.get("/get")
            sent = [first.headers.get("set-cookie", ""), again.headers.get("set-cookie", "")]
            return cookie, again.json(), sent

    cookie, data, set_cookies = asyncio.run(main())
    assert data == {"color": "blue", "size": "L"}
    assert "blue" not in cookie and "HttpOnly" in set_cookies[0].replace("httponly", "HttpOnly")
    assert set_cookies[1] == ""  # a read writes nothing and sends no cookie
    store = sync_store(redis_url, prefix)
    try:
        sid = store.unsign(cookie)
        assert sid is not None
        session = store.load(sid)
        assert session is not None and dict(session.items()) == {"color": "blue", "size": "L"}
    finally:
        store.close()


def test_a_session_written_by_the_sync_store_is_served_and_changed(redis_url: str, prefix: str) -> None:
    store = sync_store(redis_url, prefix)
    session = store.create({"from": "wsgi"})

    async def main() -> dict[str, Any]:
        async with client(make_app(redis_url, prefix)) as c:
            c.cookies.set("session", store.sign(session.sid))
            await c.post("/set/from-asgi/yes")
            return dict((await c.get("/get")).json())

    try:
        assert asyncio.run(main()) == {"from": "wsgi", "from-asgi": "yes"}
        reloaded = store.load(session.sid)
        assert reloaded is not None and reloaded["from-asgi"] == "yes"
    finally:
        store.close()


def test_a_tampered_cookie_gives_a_fresh_anonymous_session(redis_url: str, prefix: str) -> None:
    store = AsyncSessionStore(redis_url, secret_keys=[KEY], key_prefix=prefix)
    app = Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, store=store)])
    app.state.gate = None

    async def main() -> tuple[dict[str, Any], dict[str, Any], str | None]:
        async with client(app) as c:
            await c.post("/set/user/alice")
            good = c.cookies["session"]
            value, _, sig = good.rpartition(".")
            c.cookies.set("session", value + "." + ("A" if sig[0] != "A" else "B") + sig[1:])
            tampered = await c.get("/get")
            c.cookies.set("session", good[:-3])
            truncated = await c.get("/get")
            return tampered.json(), truncated.json(), tampered.headers.get("set-cookie")

    tampered, truncated, set_cookie = asyncio.run(main())
    assert tampered == {} and truncated == {} and set_cookie is None
    assert store.counters.get("rejected_cookies") == 2  # refused without a Redis call


def test_rotation_keeps_the_data_and_an_old_cookie_in_flight_writes_through(redis_url: str,
                                                                             prefix: str) -> None:
    app = make_app(redis_url, prefix, alias_window=30)

    async def main() -> dict[str, Any]:
        gate = app.state.gate = Gate()
        async with client(app) as c:
            await c.post("/set/cart/apple")
            old = c.cookies["session"]
            # a request of the same browser in flight: loaded with the old cookie
            tab = client(app)
            tab.cookies.set("session", old)
            held = asyncio.ensure_future(tab.post("/held"))
            await asyncio.wait_for(gate.loaded.wait(), 10)
            login = await c.post("/login/alice")
            new = c.cookies["session"]
            gate.go.set()
            held_response = await asyncio.wait_for(held, 10)
            await tab.aclose()
            after = (await c.get("/get")).json()
            c.cookies.set("session", old)
            old_now = await c.get("/get")
            return {"new_differs": new != old, "login_cookie": "set-cookie" in login.headers,
                    "held_status": held_response.status_code,
                    "held_cookies": held_response.headers.get_list("set-cookie"), "after": after,
                    "old_now": old_now.json(), "old_now_cookie": old_now.headers.get("set-cookie")}

    out = asyncio.run(main())
    assert out["new_differs"] and out["login_cookie"]
    # never the old cookie back; with the near cache (the default) the version token of
    # the new session the write went to, so this browser's next read sees it
    assert out["held_status"] == 200
    assert [v.split("=")[0] for v in out["held_cookies"]] == ["session_v"]
    assert out["after"] == {"cart": "apple", "user": "alice", "held": "written"}
    assert out["old_now"] == {} and out["old_now_cookie"] is None  # a tombstone: no fixation


def test_logout_deletes_the_session_and_keeps_what_was_set_after_it(redis_url: str, prefix: str) -> None:
    async def main() -> tuple[str, dict[str, Any], str]:
        async with client(make_app(redis_url, prefix)) as c:
            await c.post("/login/bob")
            before = c.cookies["session"]
            await c.post("/logout")
            after = c.cookies["session"]
            data = (await c.get("/get")).json()
            return before, data, after

    before, data, after = asyncio.run(main())
    assert data == {"flash": "bye"} and after != before
    store = sync_store(redis_url, prefix)
    try:
        sid = store.unsign(before)
        assert sid is not None and store.load(sid) is None
    finally:
        store.close()


def test_concurrent_increments_are_not_lost(redis_url: str, prefix: str) -> None:
    async def main() -> list[int]:
        async with client(make_app(redis_url, prefix)) as c:
            await c.post("/set/x/1")
            replies = await asyncio.gather(*(c.post("/incr") for _ in range(20)))
            return sorted(int(r.text) for r in replies)

    assert asyncio.run(main()) == list(range(1, 21))


def test_fifty_concurrent_requests_each_setting_its_own_key_lose_nothing(redis_url: str,
                                                                         prefix: str) -> None:
    app = make_app(redis_url, prefix)

    async def main() -> tuple[dict[str, Any], int, set[int]]:
        gate = app.state.gate = Gate()
        async with client(app) as c:
            await c.post("/set/start/0")
            replies = await asyncio.gather(*(c.post(f"/set/k{i}/{i}") for i in range(50)))
            data = (await c.get("/get")).json()
            return data, gate.most_in_flight, {r.status_code for r in replies}

    data, most_in_flight, statuses = asyncio.run(main())
    assert statuses == {200}
    lost = [i for i in range(50) if data.get(f"k{i}") != str(i)]
    assert lost == [] and data["start"] == "0"
    assert most_in_flight > 1  # the requests did overlap (each loaded before others saved)


def test_fastapi_request_session_is_the_server_side_session(redis_url: str, prefix: str) -> None:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, url=redis_url, secret_key=KEY, key_prefix=prefix)

    @app.post("/visit")
    async def visit(request: Request) -> dict[str, Any]:
        request.session["visits"] = request.session.get("visits", 0) + 1
        return {"visits": request.session["visits"], "store": type(get_session_store(request)).__name__}

    async def main() -> list[dict[str, Any]]:
        async with client(app) as c:
            return [(await c.post("/visit")).json() for _ in range(3)]

    assert asyncio.run(main()) == [{"visits": n, "store": "AsyncSessionStore"} for n in (1, 2, 3)]


def outage_url(server: RedisServer) -> str:
    """*server*'s URL for the outage tests: no retries, 2 s timeouts: a healthy server
    answers within them on a loaded machine (0.3 s now and then fired on one), and a
    stopped one fails for sure (paused: after 2 s; killed: refused at once)."""
    return server.url + "?socket_timeout=2&socket_connect_timeout=2&retries=0"


def test_outage_is_a_503_and_the_same_session_is_served_when_redis_returns(server: RedisServer,
                                                                           prefix: str) -> None:
    paused_redis = server  # the root conftest's module Redis that tests may pause
    app = make_app(outage_url(paused_redis), prefix, retry_after=7)

    async def main() -> dict[str, Any]:
        gate = app.state.gate = Gate()
        out: dict[str, Any] = {}
        async with client(app) as c:
            await c.post("/login/carol")
            cookie = c.cookies["session"]
            paused_redis.pause()
            try:
                load = await c.get("/get")
                write = await c.post("/set/cart/pear")
            finally:
                paused_redis.resume()
            out["load"] = (load.status_code, load.headers.get("retry-after"), load.headers.get("set-cookie"))
            out["write"] = (write.status_code, write.headers.get("set-cookie"))
            for _ in range(50):  # Redis answers again (a bounded wait)
                if (await c.get("/get")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
            # Redis stops between the load and the save: the app's answer becomes the 503
            held = asyncio.ensure_future(c.post("/held"))
            loaded = asyncio.ensure_future(gate.loaded.wait())
            await asyncio.wait({held, loaded}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            if not loaded.done():
                loaded.cancel()
                answer = held.result().status_code if held.done() else "none in 10 s"
                pytest.fail(f"the held request never loaded its session (answer: {answer})")
            paused_redis.pause()
            try:
                gate.go.set()
                saved = await asyncio.wait_for(held, 10)
            finally:
                paused_redis.resume()
            out["save"] = (saved.status_code, saved.headers.get("retry-after"), saved.text[:200])
            out["cookie_kept"] = c.cookies["session"] == cookie
            out["after"] = (await c.get("/get")).json()
        return out

    out = asyncio.run(main())
    assert out["load"] == (503, "7", None)
    assert out["write"] == (503, None)
    assert out["save"][:2] == (503, "7") and "ok" not in out["save"][2]
    assert out["cookie_kept"]
    # the same session: nothing lost. The save the 503 answered was sent before Redis
    # paused: its outcome was unknown, and Redis ran it (all of it) once resumed
    assert out["after"] in ({"user": "carol"}, {"user": "carol", "held": "written"})


def test_with_the_near_cache_reads_are_served_locally_and_follow_the_browsers_writes(
        redis_url: str, prefix: str) -> None:
    store = AsyncSessionStore(redis_url, secret_keys=[KEY], key_prefix=prefix, near_cache=100)
    app = Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, store=store)])
    app.state.gate = None

    async def main() -> dict[str, Any]:
        async with client(app) as c:
            wrote = await c.post("/set/color/blue")
            token = c.cookies.get("session_v")
            for _ in range(500):  # until the listener is up and a load kept a copy
                await c.get("/get")
                if store.counters.get("near_hits"):
                    break
                await asyncio.sleep(0.01)
            hits = store.counters.get("near_hits")
            read = (await c.get("/get")).json()
            served_locally = store.counters.get("near_hits") > hits
            await c.post("/set/color/green")  # the next read must see it: the token orders it
            after = (await c.get("/get")).json()
            await store.aclose()
            return {"token": token,
                    "token_header": any("session_v=" in v for v in wrote.headers.get_list("set-cookie")),
                    "read": read, "local": served_locally, "after": after}

    out = asyncio.run(main())
    assert out["token"] and out["token_header"] and out["local"]
    assert out["read"] == {"color": "blue"} and out["after"] == {"color": "green"}


# -- under `statekit serve` (uvicorn workers): the gunicorn session tests on ASGI --------

SERVED_APP = '''
import asyncio, os
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette_statekit.sessions import SessionMiddleware, get_session_store, incr_session, rotate_session

async def get(request):
    return JSONResponse(dict(request.session.items()))

async def start(request):
    request.session["owner"] = "me"
    return PlainTextResponse("ok")

async def own(request):  # read-modify-write of this client's own key
    key = request.path_params["key"]
    request.session[key] = request.session.get(key, 0) + 1
    return PlainTextResponse(str(request.session[key]))

async def mine(request):  # a load and a save some way apart: in flight at a login
    loaded = dict(request.session.items())
    await asyncio.sleep(0.005)
    key = request.path_params["key"]
    request.session[key] = request.session.get(key, 0) + 1
    return JSONResponse({"owner": loaded.get("owner"), "user": loaded.get("_user_id"),
                         "value": request.session[key]})

async def incr(request):
    return PlainTextResponse(str(await incr_session(request, "shared")))

async def login(request):
    await rotate_session(request)
    request.session["_user_id"] = request.path_params["user"]
    return PlainTextResponse("ok")

async def revoke(request):
    return PlainTextResponse(str(await get_session_store(request).revoke_user(request.path_params["user"])))

app = Starlette(routes=[
    Route("/get", get), Route("/start", start, methods=["POST"]), Route("/own/{key}", own, methods=["POST"]),
    Route("/mine/{key}", mine, methods=["POST"]), Route("/incr", incr, methods=["POST"]),
    Route("/login/{user}", login, methods=["POST"]), Route("/revoke/{user}", revoke, methods=["POST"]),
], middleware=[Middleware(SessionMiddleware, url=os.environ["SESSIONS_URL"], secret_key="served-sessions-key",
                          user_key="_user_id", alias_window=4, near_cache=int(os.environ["NEAR"]))])
'''


class Served:
    """The app above under ``statekit serve`` (2 uvicorn workers) on a free port."""

    def __init__(self, tmp: Path, url: str, near: int) -> None:
        import subprocess
        import sys

        from statekit.embedded import free_port

        (tmp / "served_sessions.py").write_text(SERVED_APP)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {**__import__("os").environ, "PYTHONPATH": str(tmp), "SESSIONS_URL": url, "NEAR": str(near)}
        self.proc = subprocess.Popen(  # noqa: S603 - our own command line
            [sys.executable, "-m", "statekit", "serve", "served_sessions:app", "--interface", "asgi",
             "--workers", "2", "--bind", f"127.0.0.1:{self.port}", "--pid", "", "--pre-stop-delay", "0",
             "--graceful-timeout", "5"], cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.tmp = tmp

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.base) as c:
            for _ in range(600):
                if self.proc.poll() is not None:
                    break
                try:
                    if (await c.get("/get")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        self.stop()
        raise AssertionError("the server did not start:\n" + (self.tmp / "serve.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except Exception:  # noqa: BLE001 - still running: kill the process we started
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(params=[pytest.param(0, id="plain", marks=pytest.mark.slow),
                        pytest.param(1000, id="near-cache")])
def served(request: pytest.FixtureRequest, tmp_path: Path, durable_redis: RedisServer) -> Iterator[Served]:
    """The near-cache variant runs in the suite (the in-process tests cover the plain
    store's logic); the plain one is ``slow`` (about 15 s more)."""
    # 2 s: concurrent clients all answer 200 on a loaded machine (0.5 s could fire on a
    # healthy server); the kill test's connections are refused at once
    s = Served(tmp_path, durable_redis.url + "?socket_timeout=2&socket_connect_timeout=2", request.param)
    try:
        asyncio.run(s.ready())
        yield s
    finally:
        s.stop()


async def _posts(base: str, cookie: str, paths: list[str], n: int) -> list[httpx.Response]:
    """Each path POSTed *n* times in turn by its own client, all clients at once."""
    async def one(path: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, cookies={"session": cookie}, timeout=15) as c:
            return [await c.post(path) for _ in range(n)]

    return [r for rs in await asyncio.gather(*(one(p) for p in paths)) for r in rs]


@pytest.mark.gunicorn
def test_served_concurrent_clients_lose_no_updates(served: Served) -> None:
    Out = tuple[str, list[httpx.Response], dict[str, Any], list[httpx.Response], dict[str, Any]]

    async def main() -> Out:
        async with httpx.AsyncClient(base_url=served.base, timeout=15) as c:
            cookie = str((await c.post("/start")).cookies["session"])
            own = await _posts(served.base, cookie, [f"/own/k{i}" for i in range(4)], 25)
            c.cookies.set("session", cookie)
            data = (await c.get("/get")).json()
            incr = await _posts(served.base, cookie, ["/incr"] * 4, 25)
            return cookie, own, data, incr, (await c.get("/get")).json()

    cookie, own, data, incr, after = asyncio.run(main())
    assert {r.status_code for r in own + incr} == {200}
    sent = {v.split(";")[0] for r in own for v in r.headers.get_list("set-cookie")
            if v.startswith("session=")}
    assert sent <= {f"session={cookie}"}  # a write may refresh the cookie's Max-Age, never change it
    assert {k: v for k, v in data.items() if k.startswith("k")} == {f"k{i}": 25 for i in range(4)}
    assert data["owner"] == "me" and after["shared"] == 100


@pytest.mark.gunicorn
def test_served_rotation_under_load(served: Served) -> None:
    """Clients keep sending the pre-login cookie while another request logs in: no
    request with the old cookie reads the logged-in state; every write of a request
    that loaded the session before the login lands in the new session."""
    async def main() -> tuple[str, str, dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
        async with httpx.AsyncClient(base_url=served.base, timeout=15) as c:
            old = (await c.post("/start")).cookies["session"]

            async def client(key: str) -> list[dict[str, Any]]:
                async with httpx.AsyncClient(base_url=served.base, cookies={"session": old}, timeout=15) as h:
                    out = []
                    for _ in range(25):
                        r = await h.post(f"/mine/{key}")
                        assert r.status_code == 200, r.text
                        out.append(r.json())
                    return out

            async def login() -> str:
                await asyncio.sleep(0.05)
                async with httpx.AsyncClient(base_url=served.base, cookies={"session": old}, timeout=15) as h:
                    return str((await h.post("/login/alice")).cookies["session"])

            keys = [f"k{i}" for i in range(4)]
            *runs, new = await asyncio.gather(*(client(k) for k in keys), login())
            c.cookies.set("session", new)
            data = (await c.get("/get")).json()
            c.cookies.set("session", old)
            old_now = (await c.get("/get")).json()
            return old, new, dict(zip(keys, runs, strict=True)), data, old_now

    old, new, results, data, old_now = asyncio.run(main())
    answers = [a for rs in results.values() for a in rs]
    assert new != old and all(a["user"] is None for a in answers)  # no fixation
    before = {k: [a for a in rs if a["owner"] == "me"] for k, rs in results.items()}
    after = [a for a in answers if a["owner"] is None]
    assert after and any(before.values()), "the rotation did not happen mid-run; nothing was tested"
    assert all(a["value"] == 1 for a in after)  # each a fresh session of its own
    assert data["_user_id"] == "alice" and data["owner"] == "me"
    for k, rs in before.items():  # every write of a request that loaded the session before
        assert [a["value"] for a in rs] == list(range(1, len(rs) + 1)) and data.get(k, 0) == len(rs)
    assert old_now == {}


@pytest.mark.gunicorn
def test_served_redis_stopped_mid_test(served: Served, durable_redis: RedisServer) -> None:
    async def main() -> tuple[list[httpx.Response], httpx.Response, str]:
        async with httpx.AsyncClient(base_url=served.base, timeout=15) as c:
            await c.post("/start")
            for _ in range(3):
                await c.post("/own/n")
            durable_redis.kill()
            down = [await c.get("/get"), await c.post("/own/n"), await c.post("/incr")]
            durable_redis.start()  # same port, AOF replayed
            back = await c.get("/get")
            return down, back, (await c.post("/own/n")).text

    down, back, next_write = asyncio.run(main())
    for r in down:
        assert (r.status_code, r.headers.get("retry-after"), r.headers.get("set-cookie")) == (503, "5", None)
    assert back.status_code == 200 and back.json() == {"owner": "me", "n": 3}
    assert "set-cookie" not in back.headers and next_write == "4"


# -- the near cache, on by default: where it turns on, and the coherence it relies on.
# A browser's reads follow its own writes made through any near-cache store by the
# version token the adapters send; a change made elsewhere is seen by a read here once
# its invalidation has reached this host, applied or not (a load checks the listener's
# socket, pending(), before it trusts a copy). Redis queues the invalidation in the
# pass that ran the write, not always before the writer's reply: a read started at
# that very moment, signalled by the writer over a pipe with no barrier, can still
# find the copy (seen once in 120 such rounds on Valkey 9.1), which is why the same
# browser relies on the token and not on the timing.

#: another process writing sessions with the sync store and no near cache of its own,
#: one write per line it reads; "barrier": then one PING on the writing connection
#: (Redis has written the write's invalidations when it answers), as logout, rotation
#: and revocation do; it prints the version the write made (a near-cache adapter's
#: version token)
WRITER = textwrap.dedent('''
    import sys
    from statekit.sessions import SessionStore
    store = SessionStore(sys.argv[1], secret_keys=[sys.argv[2]], key_prefix=sys.argv[3])
    for line in sys.stdin:
        sid, value, how = line.split()
        session = store.load(sid)
        session["n"] = value
        store.save(session)
        if how == "barrier":
            store.engine.transport.command(b"PING")
        print(session.version, flush=True)
''')


def middleware(app: Starlette) -> SessionMiddleware:
    """The app's session middleware (its stack is built by the first request)."""
    stack: Any = app.middleware_stack
    while not isinstance(stack, SessionMiddleware):
        stack = stack.app
    return stack


def test_a_write_by_another_process_is_read_here_at_once(redis_line_url: str, prefix: str) -> None:
    """Each round: a read here (from this process's copy), then another process
    writes the session and says so, then at once a read here: it must see that
    write, never the copy it had a moment ago. Odd rounds: the browser carries the
    version token of that write (as a near-cache adapter elsewhere sends it); even
    rounds: no new token, the writer's barrier (its invalidation is on its way to
    this host: pending() must keep the copy from being used until it is applied)."""
    # rounds until 20 of them read from the copy (a loaded machine's listener lags, and
    # a read while an invalidation is unread bypasses the copy), at most 160
    most, enough = 160, 20
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
                for i in range(most):
                    if local >= enough:
                        break
                    local += await hits_grow()  # this process holds the copy now
                    writer.stdin.write(f"{sid} v{i} {'token' if i % 2 else 'barrier'}\n")
                    writer.stdin.flush()
                    version = writer.stdout.readline().strip()  # the write is done
                    if i % 2:
                        browser.cookies.set("session_v", version)
                    seen.append(((await browser.get("/get")).json()["n"], f"v{i}"))
            finally:
                writer.stdin.close()
                writer.wait(10)
                writer.stdout.close()
            return store.near_cache, store.counters.get("near_hits"), local, seen

    near, hits, local, seen = asyncio.run(main())
    assert near and hits > 0
    assert local >= enough, f"the copies were used in {local} of {len(seen)} rounds: too few tested"
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
