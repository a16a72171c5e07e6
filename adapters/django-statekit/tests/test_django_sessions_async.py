"""The Django session engine's async methods (aload, asave, acycle_key, aflush...):
native on AsyncSessionStore (no sync_to_async, the engine's calls on the event loop's
thread), sharing sessions with the sync methods, and under an async view."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import tests_django_urls
from django.contrib.sessions.backends import base
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient
from django.urls import path

from django_statekit.sessions import SessionStore, get_async_core_store

pytestmark = pytest.mark.redis


async def v_async_set(request: HttpRequest, key: str, value: str) -> HttpResponse:
    await request.session.aset(key, value)
    return HttpResponse("ok")


async def v_async_get(request: HttpRequest) -> HttpResponse:
    return JsonResponse(dict(await request.session.aitems()))


async def v_async_rotate(request: HttpRequest) -> HttpResponse:
    await request.session.acycle_key()
    return HttpResponse("ok")


tests_django_urls.urlpatterns += [
    path("sessions-async/set/<str:key>/<str:value>", v_async_set),
    path("sessions-async/get", v_async_get),
    path("sessions-async/rotate", v_async_rotate),
]


@pytest.fixture
def engine(django_settings: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The session engine on the suite's Redis; Django's sync_to_async fallbacks of
    SessionBase refuse to run; returns the threads the async engine's calls ran on."""
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=redis_url,
                        MIDDLEWARE=["django_statekit.middleware.SessionOutageMiddleware",
                                    "django.contrib.sessions.middleware.SessionMiddleware"])

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a session method hopped to a thread (sync_to_async)")

    monkeypatch.setattr(base, "sync_to_async", refuse)
    threads: list[int] = []
    engine = get_async_core_store().engine
    for name in ("load", "write", "rotate", "destroy", "incr"):
        method = getattr(engine, name)

        async def spy(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            threads.append(threading.get_ident())
            return await _method(*args, **kwargs)

        monkeypatch.setattr(engine, name, spy)
    return threads


def test_the_async_methods_run_on_the_loop_without_a_thread_hop(engine: list[int]) -> None:
    async def flow() -> dict[str, Any]:
        s = SessionStore()
        await s.aset("cart", ["apple"])
        await s.asave()
        key = str(s.session_key)
        again = SessionStore(key)
        loaded = await again.aget("cart")
        exists = await again.aexists(key)
        await again.acycle_key()
        await again.asave()
        rotated_key = str(again.session_key)
        count = await again.aincr("n", 2)  # type: ignore[attr-defined]
        created = SessionStore()
        await created.acreate()
        created_exists = await created.aexists(str(created.session_key))
        await created.adelete()
        await again.aflush()
        await SessionStore.aclear_expired()
        return {"loaded": loaded, "exists": exists, "old_exists": await SessionStore().aexists(key),
                "rotated": rotated_key != key, "count": count,
                "created": created_exists, "created_gone": not await SessionStore().aexists(
                    str(created.session_key)),
                "flushed": not await SessionStore().aexists(rotated_key), "loop": threading.get_ident()}

    out = asyncio.run(flow())
    loop = out.pop("loop")
    assert out == {"loaded": ["apple"], "exists": True, "old_exists": False, "rotated": True,
                   "count": 2, "created": True, "created_gone": True, "flushed": True}
    assert engine and set(engine) == {loop}  # every engine call on the loop's own thread


def test_sync_and_async_methods_share_one_session(engine: list[int]) -> None:
    sync = SessionStore()
    sync["from"] = "sync"
    sync.save()

    async def flow(key: str) -> dict[str, Any]:
        s = SessionStore(key)
        await s.aset("from-async", 1)
        await s.asave()
        return dict(await s.aitems())

    assert asyncio.run(flow(str(sync.session_key))) == {"from": "sync", "from-async": 1}
    assert dict(SessionStore(sync.session_key).items()) == {"from": "sync", "from-async": 1}


def test_async_views_under_asgi(engine: list[int]) -> None:
    """An async view's aset/aget/acycle_key (native) with Django's SessionMiddleware
    saving through the sync methods: one session."""

    async def flow() -> tuple[dict[str, Any], bool]:
        c = AsyncClient()
        await c.get("/sessions-async/set/color/blue")
        before = c.cookies["sessionid"].value
        await c.get("/sessions-async/rotate")
        await c.get("/sessions-async/set/size/L")
        data = (await c.get("/sessions-async/get")).json()
        return data, c.cookies["sessionid"].value != before

    data, rotated = asyncio.run(flow())
    assert data == {"color": "blue", "size": "L"} and rotated
