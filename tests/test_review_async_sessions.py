"""Review of the async sessions (issue 18): defects found by a reviewer, each
reproduced here against the suite's Redis (and moto S3 for the demo)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from test_examples_fastapi import demo_env  # noqa: F401 -- the demo's environment, a fixture

from statekit.sessions import AsyncSessionStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.usefixtures("demo_env")
def test_the_fastapi_demos_log_out_everywhere_logs_out_the_users_other_browsers() -> None:
    """The FastAPI demo's "log out everywhere" (revoke_user of the logged-in user)
    left every other browser of that user logged in: the demo keeps the user under
    ``_user_id`` but its session middleware had no ``user_key``, so no session was
    ever put in the user's index and revoke_user found none (0 revoked). The demo's
    own test used one cookie for both workers, which its destroy_session covers."""
    from examples.fastapi_app.main import create_app

    app = create_app()

    async def main() -> tuple[str | None, str | None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            laptop, phone = [await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://demo")) for _ in range(2)]
            for browser in (laptop, phone):
                assert (await browser.post("/api/login", data={"user": "ada"})).json()["user"] == "ada"
            await laptop.post("/logout-everywhere")
            return ((await laptop.get("/api/session")).json()["user"],
                    (await phone.get("/api/session")).json()["user"])

    laptop_user, phone_user = asyncio.run(main())
    assert laptop_user is None
    assert phone_user is None  # was "ada": the other browser stayed logged in


@pytest.mark.redis
def test_listing_a_users_sessions_works_after_a_burst_of_loads(redis_url: str) -> None:
    """After 64 or more session loads at once on one loop (a busy worker), every
    connection of the engine's pool was kept by its transport, and
    list_user_sessions (a redis-py pipeline on the same pool) raised
    BackendUnavailable ("Too many connections"): a false outage, a 503 for good while
    Redis was fine. It now goes through the transport's connections too."""
    store = AsyncSessionStore(redis_url, secret_keys=["review-key"], key_prefix="r" + uuid.uuid4().hex[:8])

    async def main() -> tuple[int, int, list[int]]:
        async with store:
            mine = [await store.create({"n": i}, user_id="ada") for i in range(3)]
            await asyncio.gather(*(store.load(mine[0].sid) for _ in range(200)))
            listed = await asyncio.gather(*(store.list_user_sessions("ada") for _ in range(20)))
            return len(listed[0]), await store.revoke_user("ada"), [len(x) for x in listed]

    count, revoked, every = asyncio.run(main())
    assert (count, revoked) == (3, 3)
    assert every == [3] * 20


DJANGO_ASYNC_VIEWS = r'''
import asyncio, json, os, sys
import django
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="review-django-async-near-cache-0123456789", ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions",
                    "django_statekit"],
    MIDDLEWARE=["django_statekit.middleware.SessionOutageMiddleware",
                "django.contrib.sessions.middleware.SessionMiddleware"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    ROOT_URLCONF=__name__, USE_TZ=True, SESSION_ENGINE="django_statekit.sessions",
    STATEKIT_SESSION_URL=os.environ["REVIEW_REDIS_URL"], STATEKIT_KEY_PREFIX=os.environ["REVIEW_PREFIX"],
    STATEKIT_SESSION_NEAR_CACHE="on", STATEKIT_SESSION_COOKIE_SECURE=False,
)
django.setup()
from django.http import HttpResponse
from django.test import AsyncClient
from django.urls import path


async def add(request, item):
    cart = await request.session.aget("cart", [])
    await request.session.aset("cart", [*cart, item])
    return HttpResponse("ok")


urlpatterns = [path("add/<str:item>", add)]


async def main():
    c = AsyncClient()
    tokens = []
    for item in ("apple", "pear", "plum"):
        response = await c.get(f"/add/{item}")
        tokens.append(response.cookies["sessionid_v"].value if "sessionid_v" in response.cookies else None)
    return tokens


print(json.dumps(asyncio.run(main())))
'''


@pytest.mark.redis
def test_a_django_async_views_change_sends_the_near_cache_version_token(redis_url: str,
                                                                       tmp_path: Path) -> None:
    """With STATEKIT_SESSION_NEAR_CACHE, SessionOutageMiddleware sends the session's
    version (``sessionid_v``) after each change, so the browser's next request never
    reads an older near copy. A session an async view loaded (aget/aset: the async
    store, which has no near cache of its own) got no token: the browser kept an older
    one while the session moved on, and its next request could read a copy from
    before its own write (a cart item gone, and written back without it). The token
    is now the sync store's answer, whichever store loaded the session."""
    script = tmp_path / "django_async_near.py"
    script.write_text(DJANGO_ASYNC_VIEWS)
    env = {**os.environ, "REVIEW_REDIS_URL": redis_url, "REVIEW_PREFIX": "r" + uuid.uuid4().hex[:8]}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "adapters" / "django-statekit"), str(ROOT)])
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    tokens = json.loads(done.stdout.strip().splitlines()[-1])
    assert tokens[0] is not None  # a new session: stored by the sync save
    assert tokens[1:] == [str(int(tokens[0]) + 1), str(int(tokens[0]) + 2)]  # was [None, None]
