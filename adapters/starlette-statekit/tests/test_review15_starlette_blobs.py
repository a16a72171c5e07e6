"""Starlette: blobs switched on without a store refuse to start, as cache, sessions and
broadcast without a Redis URL do (and as Flask does since b32a643).

``STATEKIT_BLOBS_ENABLED=1`` with no ``STATEKIT_BLOBS_URL`` started, and the first
upload failed ("no blob store"). Blobs are on by default only when a store is
configured (an app that sets no blob URL uses none, as before); switched on by name,
they need one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from starlette_statekit import StateKit, blob_store, get_state
from starlette_statekit.uploads import save_upload
from statekit.errors import ConfigError

NO_REDIS = {f"{f}_enabled": False for f in ("cache", "sessions", "broadcast")}
REFUSAL = ("StateKit: blobs enabled but no blob store is configured: set STATEKIT_BLOBS_URL "
           "(s3://bucket/prefix, file:///srv/uploads or memory://), or switch them off: "
           "STATEKIT_BLOBS_ENABLED=0")


@pytest.fixture(autouse=True)
def _no_blob_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("STATEKIT_BLOBS_URL", "STATEKIT_BLOBS_ENABLED", "STATEKIT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    yield


async def _upload(request: Request) -> PlainTextResponse:
    return PlainTextResponse((await save_upload(request, "file")).key)


def _app() -> Starlette:
    return Starlette(routes=[Route("/upload", _upload, methods=["POST"])])


@pytest.mark.parametrize("where", ["config", "environment", "option"])
def test_blobs_switched_on_without_a_store_refuse_to_start(monkeypatch: pytest.MonkeyPatch,
                                                           where: str) -> None:
    app = _app()
    config = {"STATEKIT_BLOBS_ENABLED": "1"} if where == "config" else None
    if where == "environment":
        monkeypatch.setenv("STATEKIT_BLOBS_ENABLED", "1")
    options: dict[str, Any] = {"blobs_enabled": True} if where == "option" else {}
    with pytest.raises(ConfigError) as raised:
        StateKit(app, config=config, **NO_REDIS, **options)
    assert str(raised.value) == REFUSAL
    assert getattr(app.state, "statekit", None) is None  # nothing wired


def test_blobs_switched_on_with_a_store_start() -> None:
    app = _app()
    StateKit(app, blobs_enabled="on", blobs_url="memory://review15-starlette", **NO_REDIS)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            resp = await client.post("/upload", files={"file": ("t.csv", b"a,b\n1,2\n", "text/csv")})
        assert resp.status_code == 200, resp.text
        assert await get_state(app).blobs.exists(resp.text)
        await get_state(app).shutdown()

    asyncio.run(run())


@pytest.mark.parametrize("setting", [None, ""])
def test_blobs_not_switched_on_without_a_store_start_without_them(setting: str | None) -> None:
    """Not set (or empty: not set), blobs are on only with a store: an app without a
    blob URL starts as before, and blob_store() says what to set."""
    app = _app()
    config = None if setting is None else {"STATEKIT_BLOBS_ENABLED": setting}
    StateKit(app, config=config, **NO_REDIS)
    assert "blobs" in get_state(app).features and get_state(app).blobs is None
    with pytest.raises(ConfigError, match="no blob store: set STATEKIT_BLOBS_URL"):
        blob_store(Request({"type": "http", "app": app}))


def test_blobs_switched_off_without_a_store_start_without_them() -> None:
    app = _app()
    StateKit(app, config={"STATEKIT_BLOBS_ENABLED": "0"}, **NO_REDIS)
    assert "blobs" not in get_state(app).features
    with pytest.raises(AttributeError, match="'blobs' is not enabled"):
        blob_store(Request({"type": "http", "app": app}))
