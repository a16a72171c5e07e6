"""A FastAPI user's habits with ``starlette_statekit``, against the suite's Redis and
moto S3 (review 19): a sub-app mounted in a parent app (its lifespan, its drain under
plain uvicorn: :func:`~starlette_statekit.mounted_lifespan`); ``Vary: Cookie`` on a
response that read the session, as Starlette's own middleware sends it; users logged
in with Starlette's cookie sessions or starsessions on Redis kept logged in across the
switch (``carry_over=``); FastAPI's ``UploadFile``, whose body FastAPI reads before the
handler (:class:`~starlette_statekit.uploads.UploadLimitMiddleware`); and
``dependency_overrides`` of the shared-value dependencies.

Every process started here is stopped here, by pid; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import redis
from fastapi import Depends, FastAPI, Request, UploadFile
from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware
from starlette.responses import JSONResponse, Response

from starlette_statekit import StateKit, cache, get_state, mounted_lifespan, shared, shared_value
from starlette_statekit.sessions import StarletteCookieSessions, StarsessionsRedis
from starlette_statekit.uploads import UploadLimitMiddleware, save_upload
from statekit.broadcast.aio import AsyncBroadcaster
from statekit.embedded import free_port

pytestmark = [pytest.mark.redis]

#: a FastAPI parent without statekit that mounts a sub-app set up with StateKit(sub)
MOUNTED = textwrap.dedent(
    """
    import contextlib
    from fastapi import FastAPI
    from starlette_statekit import StateKit, mounted_lifespan

    sub = FastAPI()
    StateKit(sub, sessions_enabled=False, broadcast_enabled=False, blobs_enabled=False)

    @sub.get("/hello")
    async def hello():
        return {"hello": "sub"}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with mounted_lifespan(sub) as state:
            yield state

    app = FastAPI(lifespan=lifespan)
    app.mount("/sub", sub)
    """
)


def _get(port: int, path: str) -> int | None:
    """The status of GET *path* on a new connection, ``None`` when refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except ConnectionRefusedError:
        return None
    finally:
        conn.close()


def _until(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} within {seconds:g} s"
        time.sleep(0.05)


@contextlib.contextmanager
def _plain_uvicorn(tmp_path: Path, source: str,
                   env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``uvicorn app:app`` (*source* in *tmp_path*) in a process of ours, until the block
    ends (then SIGKILL if it still runs)."""
    (tmp_path / "app.py").write_text(source)
    port = free_port()
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--app-dir", str(tmp_path)],
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        _until(lambda: proc.poll() is not None or _get(port, "/sub/healthz") == 200, 30, "uvicorn listening")
        assert proc.poll() is None, log.read_text()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(20)


def test_a_mounted_sub_app_drains_on_sigterm_under_plain_uvicorn(tmp_path: Path, redis_url: str) -> None:
    env = {"STATEKIT_REDIS_URL": redis_url, "STATEKIT_PRE_STOP_DELAY": "30"}
    with _plain_uvicorn(tmp_path, MOUNTED, env) as (proc, port):
        assert _get(port, "/sub/readyz") == 200
        proc.send_signal(signal.SIGTERM)
        # the drain: readiness 503 while uvicorn keeps accepting for the pre-stop delay
        _until(lambda: _get(port, "/sub/readyz") != 200, 20, "readiness change after SIGTERM")
        assert _get(port, "/sub/readyz") == 503, (tmp_path / "uvicorn.log").read_text()
        proc.send_signal(signal.SIGTERM)  # a second one stops at once
        proc.wait(20)


def _sub_app(redis_url: str, own: Any) -> tuple[FastAPI, AsyncBroadcaster]:
    """A FastAPI sub-app with a lifespan of its own (*own*) and ``StateKit(sub)`` with a
    broadcaster; sessions and blobs off."""
    broadcaster = AsyncBroadcaster(redis_url)
    sub = FastAPI(lifespan=own)
    StateKit(sub, redis_url=redis_url, broadcaster=broadcaster, sessions_enabled=False, blobs_enabled=False)
    return sub, broadcaster


def _parent(sub: FastAPI) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with mounted_lifespan(sub) as state:
            yield state

    parent = FastAPI(lifespan=lifespan)
    parent.mount("/sub", sub)
    return parent


def test_the_mounted_apps_lifespan_runs_whole(redis_url: str) -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        seen.append("sub started")
        yield {"db": "sub's pool"}
        seen.append("sub stopped")

    sub, broadcaster = _sub_app(redis_url, own)
    parent = _parent(sub)
    lifecycle = get_state(sub).lifecycle

    async def main() -> None:
        async with parent.router.lifespan_context(parent) as state:
            assert state == {"db": "sub's pool"}  # on to the requests, through the parent's
            assert seen == ["sub started"] and broadcaster.running
            # the checks ran as the lifespan started: the first probe's answer is ready
            assert lifecycle.reply_now(lifecycle.admit(lifecycle.ready_path)) is not None
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=parent),
                                         base_url="http://test") as client:
                assert (await client.get("/sub/readyz")).status_code == 200
        assert seen == ["sub started", "sub stopped"] and not broadcaster.running

    asyncio.run(main())


def test_a_mounted_app_whose_startup_fails_raises_its_error(redis_url: str) -> None:
    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        raise LookupError("no database")
        yield

    sub, broadcaster = _sub_app(redis_url, own)
    parent = _parent(sub)

    async def main() -> None:
        with pytest.raises(LookupError, match="no database"):
            async with parent.router.lifespan_context(parent):
                raise AssertionError("started")  # pragma: no cover
        assert not broadcaster.running  # StateKit's startup ran, then its shutdown

    asyncio.run(asyncio.wait_for(main(), 60))


# -- Vary: Cookie, as Starlette's own SessionMiddleware sends it ---------------------------


def _session_app(kind: str, redis_url: str) -> FastAPI:
    """*kind* ``"starlette"``: Starlette's cookie SessionMiddleware; ``"statekit"``:
    ``StateKit(app)``'s (the migration's before and after); else the caller's."""
    app = FastAPI()

    @app.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        return {"user": request.session.get("user")}

    @app.post("/login")
    async def login(request: Request) -> dict[str, Any]:
        request.session["user"] = "ada"
        return {"ok": True}

    @app.get("/plain")
    async def plain() -> Response:
        return JSONResponse({"public": True}, headers={"Vary": "Accept-Encoding",
                                                       "Cache-Control": "public, max-age=60"})

    @app.get("/greeting")
    async def greeting(request: Request) -> Response:
        user = request.session.get("user")
        return JSONResponse({"hello": user}, headers={"Vary": "Accept-Encoding",
                                                      "Cache-Control": "public, max-age=60"})

    if kind == "starlette":
        app.add_middleware(StarletteSessionMiddleware, secret_key="old-secret")
    elif kind == "statekit":
        StateKit(app, redis_url=redis_url, secret_keys=["k"], key_prefix="r19vary", cache_enabled=False,
                 broadcast_enabled=False, blobs_enabled=False, lifecycle_enabled=False)
    return app


@pytest.mark.parametrize("kind", ["starlette", "statekit"])
def test_a_response_that_read_the_session_varies_on_the_cookie(kind: str, redis_url: str) -> None:
    """A shared cache (a CDN, a proxy) must not give one user's page to another."""
    app = _session_app(kind, redis_url)

    async def main() -> dict[str, str | None]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            anonymous = await c.get("/me")
            logged_in = await c.post("/login")
            me = await c.get("/me")
            greeting = await c.get("/greeting")
            plain = await c.get("/plain")
            assert me.json() == {"user": "ada"} and greeting.json() == {"hello": "ada"}
            return {"anonymous": anonymous.headers.get("vary"), "login": logged_in.headers.get("vary"),
                    "me": me.headers.get("vary"), "greeting": greeting.headers.get("vary"),
                    "plain": plain.headers.get("vary")}

    assert asyncio.run(main()) == {"anonymous": "Cookie", "login": "Cookie", "me": "Cookie",
                                   "greeting": "Accept-Encoding, Cookie", "plain": "Accept-Encoding"}


# -- the migration: a user logged in with Starlette's cookie sessions stays logged in ------


def test_a_user_logged_in_with_starlettes_cookie_sessions_stays_logged_in(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    before = _session_app("starlette", redis_url)
    after = FastAPI()
    after.router.routes.extend(before.router.routes)  # the same routes, statekit's sessions
    StateKit(after, redis_url=redis_url, secret_keys=["new-key"], key_prefix="r19carry", cache_enabled=False,
             broadcast_enabled=False, blobs_enabled=False, lifecycle_enabled=False,
             session_options={"carry_over": StarletteCookieSessions("old-secret")})

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=before), base_url="http://test") as c:
            assert (await c.post("/login")).status_code == 200
            old = c.cookies["session"]
        forged = old[:-2] + ("AA" if not old.endswith("AA") else "BB")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=after), base_url="http://test") as c:
            first = await c.get("/me", headers={"cookie": f"session={old}"})
            assert first.json() == {"user": "ada"}  # still logged in
            new = first.cookies["session"]
            assert new != old
            again = await c.get("/me", headers={"cookie": f"session={new}"})
            assert again.json() == {"user": "ada"}  # now a statekit session
            # a browser's parallel first requests: the same session (claimed once)
            assert (await c.get("/me", headers={"cookie": f"session={old}"})).cookies["session"] == new
            forged_reply = await c.get("/me", headers={"cookie": f"session={forged}"})
            assert forged_reply.json() == {"user": None}  # a forged cookie carries nothing over

    with caplog.at_level(logging.WARNING, "statekit.security"):
        asyncio.run(main())
    assert "rejected" in caplog.text.lower() and caplog.text.lower().count("rejected") == 1, caplog.text


# -- FastAPI's UploadFile: the body is read before the handler -----------------------------

LIMIT = 2**20
BOUNDARY = "r19boundary"


def _multipart(size: int) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="photo"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + b"a" * size + f"\r\n--{BOUNDARY}--\r\n".encode()


def _upload_app(s3_url: str, redis_url: str, limited: bool) -> FastAPI:
    app = FastAPI()

    @app.post("/photo")
    async def photo(request: Request, photo: UploadFile) -> dict[str, Any]:  # FastAPI parses the form first
        return {"size": (await save_upload(request, upload=photo)).size}

    @app.post("/json")
    async def json_body(request: Request) -> dict[str, Any]:
        return {"size": len(await request.body())}

    StateKit(app, redis_url=redis_url, blobs_url=s3_url, blobs_max_size="1MiB", secret_keys=["k"],
             sessions_enabled=False, broadcast_enabled=False)
    if limited:
        app.add_middleware(UploadLimitMiddleware)
    return app


@pytest.mark.parametrize("limited", [False, True], ids=["fastapi-alone", "UploadLimitMiddleware"])
def test_an_uploadfile_past_the_limit_is_refused_before_its_body_is_read(
        s3_url: str, redis_url: str, limited: bool) -> None:
    app = _upload_app(s3_url, redis_url, limited)
    read = [0]

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            read[0] += len(message.get("body", b""))
            return message

        await app(scope, counted, send)

    big = _multipart(8 * LIMIT)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length
        for i in range(0, len(big), 2**16):
            yield big[i:i + 2**16]

    async def main() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        transport = httpx.ASGITransport(app=counting)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            read[0] = 0
            reply = await c.post("/photo", content=big, headers=headers)
            seen["declared"] = (reply.status_code, read[0])
            read[0] = 0
            reply = await c.post("/photo", content=chunked(), headers=headers)
            seen["chunked"] = (reply.status_code, read[0] <= LIMIT + 2**16 + 2**16)  # + overhead, one chunk
            seen["chunked detail"] = reply.json()
            small = await c.post("/photo", content=_multipart(LIMIT // 2), headers=headers)
            seen["small"] = (small.status_code, small.json())
            seen["json"] = (await c.post("/json", content=b"x" * (2 * LIMIT))).json()
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 120))
    if not limited:  # FastAPI read (and spooled) all of it before save_upload refused it
        assert seen["declared"] == (413, len(big)) and seen["chunked"] == (413, False)
        return
    assert seen == {"declared": (413, 0), "chunked": (413, True),
                    "chunked detail": {"detail": f"upload larger than {LIMIT} bytes"},
                    "small": (200, {"size": LIMIT // 2}), "json": {"size": 2 * LIMIT}}


def test_a_user_logged_in_with_starsessions_on_redis_stays_logged_in(redis_url: str) -> None:
    from redis.asyncio import Redis as AsyncRedis
    from starsessions import SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarsessionsMiddleware
    from starsessions.stores.redis import RedisStore

    before = _session_app("statekit-less", redis_url)
    before.add_middleware(SessionAutoloadMiddleware)
    old_redis = AsyncRedis.from_url(redis_url)
    before.add_middleware(StarsessionsMiddleware, store=RedisStore(connection=old_redis, prefix="r19star."),
                          cookie_https_only=False, lifetime=3600)
    after = FastAPI()
    after.router.routes.extend(before.router.routes)
    previous = redis.Redis.from_url(redis_url)  # the old Redis: closed at the end (the url= one is never)
    StateKit(after, redis_url=redis_url, secret_keys=["new-key"], key_prefix="r19star", cache_enabled=False,
             broadcast_enabled=False, blobs_enabled=False, lifecycle_enabled=False,
             session_options={"carry_over": StarsessionsRedis(client=previous, prefix="r19star.")})

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=before), base_url="http://test") as c:
            assert (await c.post("/login")).status_code == 200
            old = c.cookies["session"]
            assert (await c.get("/me")).json() == {"user": "ada"}
        await old_redis.aclose()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=after), base_url="http://test") as c:
            first = await c.get("/me", headers={"cookie": f"session={old}"})
            assert first.json() == {"user": "ada"}  # still logged in
            new = first.cookies["session"]
            again = await c.get("/me", headers={"cookie": f"session={new}"})
            assert new != old and again.json() == {"user": "ada"}
            unknown = await c.get("/me", headers={"cookie": "session=0123456789abcdef"})
            assert unknown.json() == {"user": None}
        assert previous.get(f"r19star.{old}") is None  # the old entry deleted once carried over

    with contextlib.closing(previous):
        asyncio.run(asyncio.wait_for(main(), 60))


# -- dependency_overrides in tests ------------------------------------------------------------


def test_a_shared_value_dependency_can_be_overridden_in_tests(redis_url: str) -> None:
    """FastAPI finds an override by the dependency itself: ``shared("n", 0)`` written
    twice (the route, the test) must be one dependency."""
    app = FastAPI()
    StateKit(app, redis_url=redis_url, secret_keys=["k"], key_prefix="r19override", sessions_enabled=False,
             blobs_enabled=False, lifecycle_enabled=False)

    @app.get("/n")
    async def n(count: Annotated[int, Depends(shared("users_count", 0))],
                value: Annotated[Any, Depends(shared_value("users_count"))],
                c: Annotated[Any, Depends(cache)]) -> dict[str, Any]:
        return {"count": count, "value": value, "cache": c}

    app.dependency_overrides[shared("users_count", 0)] = lambda: 41
    app.dependency_overrides[shared_value("users_count")] = lambda: "a SharedValue"
    app.dependency_overrides[cache] = lambda: "a fake cache"

    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return (await c.get("/n")).json()

    assert asyncio.run(main()) == {"count": 41, "value": "a SharedValue", "cache": "a fake cache"}
    assert shared("users_count", 0) is not shared("users_count", False)  # another default
    assert shared("cart", []) is not shared("cart", [])  # an unhashable default: one each time
