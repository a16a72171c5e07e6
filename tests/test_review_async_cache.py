"""Review of the async cache (issue 18): defects found by using it as Django,
uvicorn and plain asyncio users do, each reproduced against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.redis

DJANGO_PER_REQUEST = textwrap.dedent(
    '''
    import asyncio, gc, json, sys
    import django
    from django.conf import settings

    URL = sys.argv[1]
    settings.configure(
        DEBUG=False, SECRET_KEY="x" * 50, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
        INSTALLED_APPS=[], MIDDLEWARE=[], DATABASES={},
        CACHES={"default": {"BACKEND": "django_statekit.cache.StatekitCache", "LOCATION": URL}},
    )
    django.setup()

    import redis
    from django.core.asgi import get_asgi_application
    from django.core.cache import cache, caches
    from django.http import HttpResponse
    from django.urls import path

    backends = set()


    async def view(request):
        backends.add(id(caches["default"]))
        n = await cache.aget("hits", 0)
        await cache.aset("hits", n + 1)
        return HttpResponse(str(n))


    urlpatterns = [path("", view)]
    app = get_asgi_application()
    unraisable = []
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))


    async def request():
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1),
                 "server": ("testserver", 80)}
        sent, first = [], [True]

        async def receive():
            if first and first.pop():
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], sent[1]["body"].decode()


    def clients():
        r = redis.Redis.from_url(URL)
        try:
            return len(r.client_list())
        finally:
            r.close()


    async def main():
        before = await asyncio.to_thread(clients)
        replies = []
        for _ in range(30):  # an ASGI server runs each request in a task of its own
            replies.append(await asyncio.create_task(request()))
        left = await asyncio.to_thread(clients) - before
        return {"replies": replies, "backends": len(backends), "left": left}


    out = asyncio.run(main())
    gc.collect()
    out["unraisable"] = unraisable
    print(json.dumps(out))
    '''
)


def test_django_asgi_requests_share_one_pool(tmp_path: Path, redis_url: str) -> None:
    """Django's cache handler is context-local: under ASGI every request gets a new
    StatekitCache. Each made its own AsyncCache, whose pool opened a Redis connection
    for that request and kept it open until garbage collection (30 requests: 30
    connections, each later closed by __del__ with a ResourceWarning). Found by
    serving Django's ASGI handler a request per task, as uvicorn does."""
    script = tmp_path / "django_per_request.py"
    script.write_text(DJANGO_PER_REQUEST)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, str(script), redis_url], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert [status for status, _ in r["replies"]] == [200] * 30
    assert [int(body) for _, body in r["replies"]] == list(range(30))  # one shared counter, in order
    assert r["backends"] > 1  # Django did make several backend objects (the case under test)
    print(f"Django backend objects for 30 ASGI requests: {r['backends']}; "
          f"Redis connections left open: {r['left']}")
    assert r["left"] <= 2
    assert r["unraisable"] == []
