"""starlette_statekit.StateKit on FastAPI and Starlette, against the suite's Redis and
moto S3, in-process (httpx.ASGITransport; the lifespan entered by hand where a
test needs it): settings and start-up checks, the dependencies, the lifespan, the
outage 503, uploads and their URLs (S3 presigned, file:// through the signed route),
health and readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.config import Config
from starlette.responses import JSONResponse
from starlette.routing import Route

from starlette_statekit import StateKit, blobs, cache, get_state, shared, shared_value, shared_values
from starlette_statekit.uploads import blob_url, save_upload
from statekit import AsyncCache, Cache
from statekit.blobs import AsyncBlobStore
from statekit.broadcast import Broadcaster, SharedValue
from statekit.broadcast.aio import AsyncBroadcaster
from statekit.errors import BackendUnavailable, ConfigError
from statekit.lifecycle import DrainState, set_drain_state
from statekit.phoenix import make_png

pytestmark = [pytest.mark.redis]

PNG = make_png(__import__("random").Random(3))


@pytest.fixture
def prefix() -> str:
    return "s" + uuid.uuid4().hex[:12]


@pytest.fixture(autouse=True)
def _no_statekit_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL", "STATEKIT_CACHE_URL", "STATEKIT_SESSION_URL",
                 "STATEKIT_BROADCAST_URL", "STATEKIT_KEY_PREFIX", "STATEKIT_SECRET_KEYS"):
        monkeypatch.delenv(name, raising=False)
    yield


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def options(**extra: Any) -> dict[str, Any]:
    """Sessions off: test_starlette_sessions.py and the example's test cover them."""
    return {"sessions_enabled": False, **extra}


def test_settings_come_from_keywords_then_config_then_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATEKIT_REDIS_URL", redis_url)
    monkeypatch.setenv("STATEKIT_KEY_PREFIX", "from-env")
    monkeypatch.setenv("STATEKIT_SECRET_KEYS", "env-key")
    kit = StateKit(config={"STATEKIT_KEY_PREFIX": "from-config", "STATEKIT_SECRET_KEYS": "config-key"},
                   secret_keys=["new", "old"], **options())
    settings = kit.settings()
    assert settings.key_prefix == "from-config"
    assert settings.secret_keys == ("new", "old")
    assert settings.broadcast_url == redis_url
    app = FastAPI()
    kit.init_app(app)
    assert get_state(app).features == ["cache", "blobs", "broadcast", "lifecycle"]
    with pytest.raises(ConfigError, match="already initialised"):
        kit.init_app(app)
    env_file = tmp_path / ".env"
    env_file.write_text("STATEKIT_KEY_PREFIX=from-dotenv\n")
    monkeypatch.delenv("STATEKIT_KEY_PREFIX")  # Starlette's Config prefers the environment
    assert StateKit(config=Config(env_file)).settings().key_prefix == "from-dotenv"  # Starlette's Config


def test_start_up_fails_loud_without_a_redis_url() -> None:
    with pytest.raises(ConfigError, match="STATEKIT_CACHE_ENABLED=0, STATEKIT_BROADCAST_ENABLED=0"):
        StateKit(FastAPI(), **options())
    app = Starlette()
    StateKit(app, **options(broadcast_enabled="0", cache_enabled="no"))  # nothing left that needs Redis
    with pytest.raises(AttributeError, match="not enabled"):
        get_state(app).broadcast  # noqa: B018
    with pytest.raises(RuntimeError, match="has not been initialised"):
        get_state(Starlette())
    with pytest.raises(ConfigError, match="sessions need signing keys"):
        StateKit(Starlette(), redis_url="redis://127.0.0.1:1/0")


def test_the_cache_dependency_shares_values_with_a_sync_cache(redis_url: str, prefix: str) -> None:
    app = FastAPI()
    StateKit(app, redis_url=redis_url, key_prefix=prefix, **options())
    computed: list[int] = []

    async def build() -> dict[str, int]:
        computed.append(1)
        return {"rows": 3}

    @app.get("/report")
    async def report(c: Annotated[AsyncCache, Depends(cache)]) -> Any:
        return await c.get_or_set("report", build, ttl=60)

    async def main(rows: int) -> None:
        async with app.router.lifespan_context(app):  # the lifespan closes the cache's connections
            async with client(app) as http:
                for _ in range(3):
                    assert (await http.get("/report")).json() == {"rows": rows}

    asyncio.run(main(3))
    assert computed == [1]
    sync = Cache(redis_url, prefix=prefix)
    assert sync.get("report") == {"rows": 3}
    sync.set("report", {"rows": 4})
    asyncio.run(main(4))
    assert computed == [1]  # the sync write is what the app serves now
    sync.close()


def test_shared_values_health_and_the_outage_page(redis_url: str, prefix: str) -> None:
    app = FastAPI()
    StateKit(app, redis_url=redis_url, key_prefix=prefix, **options())

    @app.get("/count")
    async def count(
        users: Annotated[int, Depends(shared("users_count", 0))],
        value: Annotated[SharedValue[Any], Depends(shared_value("users_count"))],
    ) -> dict[str, Any]:
        return {"users": users, "version": value.version}

    @app.get("/down")
    async def down() -> None:
        raise BackendUnavailable("redis://secret-host:6379 did not answer")

    Broadcaster(redis_url, key_prefix=prefix).publish("users_count", 42)

    async def main() -> None:
        async with client(app) as http:
            assert (await http.get("/count")).json() == {"users": 42, "version": 1}
            health = await http.get("/healthz")
            assert health.status_code == 200
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            outage = await http.get("/down")
            assert outage.status_code == 503
            assert outage.headers["retry-after"] == "5"
            assert "secret-host" not in outage.text and "Service Unavailable" in outage.text

    asyncio.run(main())


def test_drain_refuses_new_requests_with_connection_close(redis_url: str, prefix: str) -> None:
    app = FastAPI()
    StateKit(app, redis_url=redis_url, key_prefix=prefix, **options())

    @app.get("/")
    async def index() -> dict[str, bool]:
        return {"ok": True}

    state = DrainState()
    set_drain_state(state)
    try:
        async def main() -> None:
            async with client(app) as http:
                assert (await http.get("/")).status_code == 200
                state.start_drain()
                refused = await http.get("/")
                assert refused.status_code == 503 and refused.headers["connection"] == "close"
                assert "retry-after" in refused.headers
                assert (await http.get("/readyz")).status_code == 503
                assert (await http.get("/healthz")).status_code == 200

        asyncio.run(main())
    finally:
        set_drain_state(None)


def test_lifespan_loads_values_runs_the_broadcaster_and_stops_it(redis_url: str, prefix: str) -> None:
    broadcaster = AsyncBroadcaster(redis_url, key_prefix=prefix)
    counter = itertools.count(1)
    broadcaster.every(0.1, name="ticks")(lambda: next(counter))  # a plain job: run in a thread
    own: list[str] = []

    @contextlib.asynccontextmanager
    async def own_lifespan(app: Starlette) -> AsyncIterator[dict[str, bool]]:
        own.append("start")
        yield {"from_app": True}
        own.append("stop")

    Broadcaster(redis_url, key_prefix=prefix).publish("motd", "hello")

    async def motd(request: Request) -> JSONResponse:
        return JSONResponse({"motd": shared_values(request)["motd"]})

    app = Starlette(routes=[Route("/motd", motd)], lifespan=own_lifespan)
    StateKit(app, redis_url=redis_url, key_prefix=prefix, broadcaster=broadcaster,
             broadcast_defaults={"motd": "", "ticks": 0}, **options())
    values = get_state(app).broadcast

    async def main() -> None:
        async with app.router.lifespan_context(app) as lifespan_state:
            assert own == ["start"] and lifespan_state == {"from_app": True}
            assert "motd" in values and "ticks" in values  # loaded before serving
            assert values["motd"] == "hello"
            assert broadcaster.running
            await values.value("ticks").changed(timeout=10)
            async with client(app) as http:
                assert (await http.get("/motd")).json() == {"motd": "hello"}
        assert own == ["start", "stop"]
        assert not broadcaster.running

    asyncio.run(main())
    assert broadcaster.counters.get("computes") >= 1
    # stop() released the lease: another process leads at once
    claim = Broadcaster(redis_url, key_prefix=prefix).backend.claim("ticks", "other", 1000, -1)
    assert claim.status.value == "leader"


def test_uploads_to_s3_and_presigned_urls(redis_url: str, s3_url: str, prefix: str) -> None:
    app = FastAPI()
    StateKit(app, redis_url=redis_url, blobs_url=s3_url, key_prefix=prefix, blobs_max_size="64KiB",
             **options())

    @app.post("/photos")
    async def upload(request: Request) -> dict[str, str]:
        blob = await save_upload(request, "photo", allowed_types=["image/*"])
        return {"key": blob.key, "url": await blob_url(request, blob.key, expires=60)}

    async def main() -> None:
        async with client(app) as http:
            stored = await http.post("/photos", files={"photo": ("me.png", PNG, "image/png")})
            assert stored.status_code == 200, stored.text
            url = stored.json()["url"]
            assert url.startswith("http") and "Signature" in url
            async with httpx.AsyncClient() as s3:
                assert (await s3.get(url)).content == PNG
            store = get_state(app).blobs
            assert (await store.stat(stored.json()["key"])).content_type == "image/png"
            text = await http.post("/photos", files={"photo": ("me.png", b"not a picture", "image/png")})
            assert text.status_code == 415
            missing = await http.post("/photos", files={"other": ("me.png", PNG, "image/png")})
            assert missing.status_code == 400
            big = await http.post("/photos", files={"photo": ("big.png", PNG + b"\0" * 200_000, "image/png")})
            assert big.status_code == 413
            assert [b.key async for b in store.list()] == [stored.json()["key"]]

    asyncio.run(main())


def test_file_store_urls_are_served_by_the_signed_route(redis_url: str, tmp_path: Path, prefix: str) -> None:
    app = FastAPI()
    StateKit(app, redis_url=redis_url, blobs_url=f"file://{tmp_path}", key_prefix=prefix,
             secret_keys="test-key", **options())

    @app.post("/files")
    async def upload(request: Request, store: Annotated[AsyncBlobStore, Depends(blobs)]) -> dict[str, str]:
        assert store is get_state(request).blobs
        blob = await save_upload(request, "file")
        return {"url": await blob_url(request, blob.key, download_name="report.txt")}

    async def main() -> None:
        async with app.router.lifespan_context(app), client(app) as http:  # twice: a new store each time
            stored = await http.post("/files", files={"file": ("a.txt", b"hello file", "text/plain")})
            assert stored.status_code == 200, stored.text
            url = stored.json()["url"]
            assert url.startswith("/_statekit/blobs/")
            served = await http.get(url)
            assert served.status_code == 200 and served.content == b"hello file"
            assert served.headers["content-disposition"].endswith('"report.txt"')
            assert served.headers["x-content-type-options"] == "nosniff"
            assert (await http.get(url.replace("signature=", "signature=x"))).status_code == 403
            assert (await http.get("/_statekit/blobs/nope")).status_code in (403, 404)

    asyncio.run(main())
    asyncio.run(main())
