"""Review 19 follow-ups for the Starlette adapter: what the adapter opens, it closes
(real Redis; connections counted by the server's CLIENT LIST)."""

from __future__ import annotations

import asyncio
import time
import warnings

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from starlette_statekit import StateKit
from starlette_statekit.sessions import StarsessionsRedis
from statekit.sessions import SessionStore
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis

pytestmark = pytest.mark.redis


def _addr(client: redis.Redis) -> str:
    """The server's name (``addr`` in CLIENT LIST) of *client*'s pooled connection."""
    (conn,) = client.connection_pool._available_connections  # type: ignore[attr-defined]
    host, port = conn._sock.getsockname()
    return f"{host}:{port}"


def _wait_gone(monitor: redis.Redis, addr: str, what: str) -> None:
    """Until the server no longer lists the connection *addr* (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while any(c["addr"] == addr for c in monitor.client_list()):
        assert time.monotonic() < deadline, f"{what}: the connection {addr} is still open"
        time.sleep(0.02)


def test_session_store_close_closes_the_carry_overs_client(redis_url: str) -> None:
    monitor = redis.Redis.from_url(redis_url)
    with monitor:
        previous = FlaskSessionRedis(url=redis_url, key_prefix="r19fu:")
        store = SessionStore(redis_url, secret_keys=["k"], key_prefix="r19fu")
        store.carry_over = CarryOver(previous)
        assert dict(store.open("not-a-statekit-cookie")) == {}  # the old store read: it connected
        addr = _addr(previous.client)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            store.close()
        _wait_gone(monitor, addr, "after SessionStore.close()")
        mine = redis.Redis.from_url(redis_url)  # a client given is the caller's: left open
        with mine:
            given = FlaskSessionRedis(client=mine)
            CarryOver(given).close()
            assert mine.ping()


def test_shutdown_closes_the_session_store_and_the_carried_over_client(redis_url: str) -> None:
    async def touch(request: Request) -> JSONResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return JSONResponse({"n": request.session["n"]})

    app = Starlette(routes=[Route("/touch", touch)])
    previous = StarsessionsRedis(url=redis_url, prefix="r19fu-star.")
    StateKit(app, redis_url=redis_url, secret_keys=["k"], key_prefix="r19fu-star", cache_enabled=False,
             broadcast_enabled=False, blobs_enabled=False, lifecycle_enabled=False,
             session_options={"carry_over": previous})
    addrs: list[str] = []

    async def lifespan() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                # a cookie that is not statekit's: read in the old store (its client connects)
                response = await client.get("/touch", headers={"cookie": "session=an-old-starsessions-id"})
                assert response.json() == {"n": 1}
            addrs.append(_addr(previous.client))

    monitor = redis.Redis.from_url(redis_url)
    with monitor:
        # shutdown closes the store the middleware opened, which closes its carry-over
        asyncio.run(asyncio.wait_for(lifespan(), 60))
        _wait_gone(monitor, addrs[-1], "after the lifespan's shutdown")
        assert len(app.state.statekit.session_stores) == 1
