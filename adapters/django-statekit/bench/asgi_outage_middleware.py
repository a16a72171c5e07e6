"""Django under ASGI: what ``SessionOutageMiddleware`` costs an async view, sync-only
(as before review 13) or sync and async capable (as shipped).

Django's ASGI handler (``get_asgi_application()``) is called in process, no HTTP
server: ``GET /read``, an ``async def`` view awaiting ``request.session.aget("cart")``
of a stored session, behind ``SessionOutageMiddleware`` then Django's
``SessionMiddleware``, against a private Redis. Two kinds, interleaved in rounds:

* ``sync-only``: the middleware with ``async_capable = False``: the code before the
  change (Django then runs it in a worker thread and the chain below it through
  ``async_to_sync``);
* ``async``: the middleware as shipped (on the event loop).

Printed: the median over rounds of wall and CPU time (this process) per request,
with the load average. Run::

    .venv/bin/python adapters/django-statekit/bench/asgi_outage_middleware.py \\
        [--requests 1000] [--rounds 5] [--clients 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

from django_statekit.middleware import SessionOutageMiddleware

urlpatterns: list[Any] = []
KINDS = {"sync-only": f"{__name__}.SyncOnly", "async": "django_statekit.middleware.SessionOutageMiddleware"}


class SyncOnly(SessionOutageMiddleware):
    """The middleware as it was before: Django runs it sync-only."""

    async_capable = False


async def read(request: HttpRequest) -> HttpResponse:
    return HttpResponse(await request.session.aget("cart"))


async def one(app: Any, cookie: bytes) -> None:
    """One ``GET /read`` through the ASGI application *app*."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/read", "raw_path": b"/read", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"bench"), (b"cookie", cookie)],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    received = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if received.is_set():  # the request is over: wait for the handler to stop listening
            await asyncio.Event().wait()
        received.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    body: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    if b"".join(body) != b"apple":
        raise RuntimeError(f"unexpected answer {body!r}")


async def timed(app: Any, cookie: bytes, requests: int, clients: int) -> tuple[float, float]:
    """Wall and CPU µs per request of *requests* requests from *clients* clients."""
    per = max(1, requests // clients)

    async def client() -> None:
        for _ in range(per):
            await one(app, cookie)

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    n = per * clients
    return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per kind and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients (one session)")
    args = ap.parse_args(argv)

    from statekit.embedded import RedisServer

    with RedisServer() as srv:
        settings.configure(
            DEBUG=False, SECRET_KEY="bench-" + "k" * 40, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,  # noqa: S106
            INSTALLED_APPS=["django.contrib.sessions"], USE_TZ=True,
            SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=srv.url,
            STATEKIT_SESSION_COOKIE_SECURE=False, MIDDLEWARE=[])
        django.setup()
        from django.core.asgi import get_asgi_application
        from django.test import override_settings

        from django_statekit.sessions import SessionStore

        urlpatterns.append(path("read", read))
        apps = {}
        for kind, middleware in KINDS.items():
            chain = [middleware, "django.contrib.sessions.middleware.SessionMiddleware"]
            with override_settings(MIDDLEWARE=chain):
                apps[kind] = get_asgi_application()
        stored = SessionStore()
        stored["cart"] = "apple"
        stored.save()
        cookie = f"sessionid={stored.session_key}".encode()

        async def rounds() -> dict[str, tuple[list[float], list[float]]]:
            out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in apps}
            for app in apps.values():  # warm up
                await timed(app, cookie, 200, args.clients)
            for _ in range(args.rounds):
                for kind, app in apps.items():
                    wall, cpu = await timed(app, cookie, args.requests, args.clients)
                    out[kind][0].append(wall)
                    out[kind][1].append(cpu)
            return out

        out = asyncio.run(rounds())
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"clients={args.clients} requests={args.requests} rounds={args.rounds} load={load}")
    for kind, (wall, cpu) in out.items():
        print(f"{kind:10s} wall/request median {statistics.median(wall):7.1f} µs, "
              f"CPU/request median {statistics.median(cpu):7.1f} µs "
              f"(wall {min(wall):.0f}-{max(wall):.0f}, CPU {min(cpu):.0f}-{max(cpu):.0f})")
    ratio = [statistics.median(out["async"][i]) / statistics.median(out["sync-only"][i]) for i in (0, 1)]
    print(f"async / sync-only: wall {ratio[0]:.2f}x, CPU {ratio[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
