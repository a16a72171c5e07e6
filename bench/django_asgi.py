"""Django ASGI cache benchmark (issue 18): an async Django view under uvicorn reading
and writing the cache, with django_statekit's ``StatekitCache`` (native ``aget`` /
``aset``) vs Django's ``RedisCache`` and django-redis (whose async methods are
Django's defaults: ``sync_to_async`` around the sync call, a thread hop per call),
side by side in one run, all against the same private Redis.

One Django project, no middleware, two ``async def`` views: ``GET /read`` awaits
``cache.aget`` of a small dict, ``POST /write`` awaits ``cache.aset`` of it. Each
backend is served by its own uvicorn process (one worker, loopback, access log off);
``none`` is the same project with views that do not touch the cache (the floor:
Django and uvicorn alone).

``django.core.cache.cache`` under ASGI is a new backend object per request (Django's
``CacheHandler`` keeps its objects in an ``asgiref.Local``, and each request runs
in its own context), so a backend that connects per object connects per request.
The ``-once`` kinds use one object for the process
(``caches.create_connection("default")`` at import) to show each backend's own cost
apart from that. Measured as in ``bench/sessions_asgi.py`` (whose
harness this reuses): one request at a time (p50, p99, the server's CPU and Redis
commands per request, interleaved rounds) and N concurrent clients (req/s, CPU per
request of uvicorn and Redis, alternating slices). Ratios to Django's ``RedisCache``
are medians of per-round / per-slice ratios.

django-vcache (the issue's other anchor) needs Python >= 3.12 and is not measured
on this venv's Python.

Run: ``.venv/bin/python bench/django_asgi.py [--requests 100] [--rounds 5]
[--clients 8] [--seconds 3]`` (~55 s with the defaults).
"""

from __future__ import annotations

import http.client
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _trees import commit  # noqa: E402
from sessions_asgi import options, ratio, report, run_concurrent, run_serial, served  # noqa: E402

KINDS = ("none", "statekit", "statekit-once", "django", "django-once", "django-redis")
LABELS = {"none": "no cache (floor)", "statekit": "StatekitCache (native aget/aset)",
          "statekit-once": "StatekitCache, one backend object",
          "django": "Django RedisCache (sync_to_async)", "django-once": "Django RedisCache, one object",
          "django-redis": "django-redis (sync_to_async)"}

APP = textwrap.dedent('''
    import os

    import django
    from django.conf import settings

    KIND = os.environ["BENCH_KIND"].removesuffix("-once")
    BACKENDS = {"statekit": "django_statekit.cache.StatekitCache",
                "django": "django.core.cache.backends.redis.RedisCache",
                "django-redis": "django_redis.cache.RedisCache",
                "none": "django.core.cache.backends.dummy.DummyCache"}
    settings.configure(DEBUG=False, SECRET_KEY="bench-django-asgi-secret-0123456789", ROOT_URLCONF=__name__,
                       ALLOWED_HOSTS=["*"], INSTALLED_APPS=[], MIDDLEWARE=[], USE_TZ=True,
                       CACHES={"default": {"BACKEND": BACKENDS[KIND],
                                           "LOCATION": os.environ["BENCH_REDIS"]}})
    django.setup()

    from django.core.asgi import get_asgi_application
    from django.core.cache import cache, caches
    from django.http import HttpResponse
    from django.urls import path

    if os.environ["BENCH_KIND"].endswith("-once"):  # one object for the process, not one per request
        cache = caches.create_connection("default")
    VALUE = {"id": 12345, "name": "Ada Lovelace", "email": "ada@example.org", "tags": ["a", "b", "c"],
             "score": 98.5}


    def reply(text):
        """A response with its Content-Length (what CommonMiddleware would add)."""
        return HttpResponse(text, headers={"Content-Length": str(len(text))})


    async def read(request):
        if KIND == "none":
            return reply(str(VALUE["id"]))
        value = await cache.aget("bench:k")
        if value is None:  # the first request fills it
            await cache.aset("bench:k", VALUE, None)
            return reply("miss")
        return reply(str(value["id"]))


    async def write(request):
        if KIND != "none":
            await cache.aset("bench:w", VALUE, 300)
        return reply("ok")


    urlpatterns = [path("read", read), path("write", write)]
    application = get_asgi_application()
''')


def _read_body(port: int) -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/read")
    body = c.getresponse().read()
    c.close()
    return body


def main(argv: list[str] | None = None) -> int:
    args = options(__doc__ or "", requests=100, seconds=3.0).parse_args(argv)
    import django
    import uvicorn as uv

    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    routes = [("GET", "/read"), ("POST", "/write")]
    with served(KINDS, "bench_django_asgi_app", APP, target="application") as run:
        print(f"statekit {commit()}; {run.redis_name}; Django {django.__version__}, "
              f"uvicorn {uv.__version__} (one process per backend); {args.rounds} rounds x "
              f"{args.requests} requests one at a time, {args.clients} clients x {args.seconds:g} s per "
              f"backend and route; load average {load0:.2f} on {os.cpu_count()} CPUs", flush=True)
        servers = run.servers
        for kind, (_, port) in servers.items():
            body = _read_body(port)
            if body != b"12345":
                raise RuntimeError(f"{kind}: GET /read gave {body!r}, not the cached value: invalid run")
        cookies = dict.fromkeys(servers, "bench=1")
        serial_rows = run_serial(servers, cookies, run.r, routes, args.rounds, args.requests)
        conc = run_concurrent(servers, {k: [v] for k, v in cookies.items()}, run.r, routes, args.clients,
                              args.seconds, args.slices)

    report(serial_rows, conc, LABELS, "django", "Django's RedisCache", args.clients)
    print("\ncache's share of a request (time above the no-cache floor, one at a time, median of rounds):")
    floor = {route: statistics.median(serial_rows["none"][f"{route}_rounds"])
             for route in ("/read", "/write")}
    for kind in KINDS[1:]:
        extra = [statistics.median(serial_rows[kind][f"{route}_rounds"]) - floor[route]
                 for route in ("/read", "/write")]
        print(f"  {LABELS[kind]:<40} read +{extra[0] * 1e6:.0f} µs, write +{extra[1] * 1e6:.0f} µs")
    print("\nStatekitCache (native aget/aset) / each other backend: read time, write time, read req/s, "
          "write req/s (ahead: time < 1, req/s > 1)")
    for other in ("django", "django-once", "django-redis"):
        got = [ratio(serial_rows, "statekit", other, "/read_rounds"),
               ratio(serial_rows, "statekit", other, "/write_rounds"),
               ratio(conc, "statekit", other, "/read_rps"), ratio(conc, "statekit", other, "/write_rps")]
        ahead = got[0] < 1 and got[1] < 1 and got[2] > 1 and got[3] > 1
        print(f"  / {LABELS[other]:<36} " + ", ".join(f"{g:.2f}x" for g in got)
              + f"  {'ahead' if ahead else 'NOT ahead on every figure'}")
    print(f"(load average {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
