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

django-vcache (the issue's other anchor: an async-native Django backend on its own
Rust driver, one multiplexed connection per process, msgpack) is the kind
``django-vcache``, configured as its README does (``BACKEND`` and ``LOCATION``; a
``KEY_PREFIX`` of its own, as its msgpack entries would be unreadable to the pickling
backends on the shared keys). It needs Python >= 3.12 and this venv runs 3.11: here
the kind is skipped with a line saying so; ``--python PATH`` runs the whole benchmark,
every kind in one run, under that interpreter (``bench/vcache-venv.sh`` builds one,
see ``bench/_vcache.py``). Its backend objects share one driver per process (a
module-level registry), so it has no ``-once`` variant. Measured at d0069d7 (five runs,
Python 3.12.1, django-vcache 3.2.0, load 2.4-5.9; bench/RESULTS.md, "Django ASGI
cache"): ``StatekitCache`` / django-vcache read time 0.82-1.20x (behind in 4 of 5),
write time 0.89-1.10x (level), read req/s at 8 clients 0.75-1.35x (ahead in 4 of 5),
write req/s 0.54-1.41x (behind in 3 of 5): statekit is not ahead of django-vcache here.

Run: ``.venv/bin/python bench/django_asgi.py [--requests 100] [--rounds 5]
[--clients 8] [--seconds 3] [--python /tmp/vcache-venv/bin/python]`` (~55 s with the
defaults, ~65 s with django-vcache).
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

import _vcache  # noqa: E402
from _trees import commit  # noqa: E402
from sessions_asgi import options, ratio, report, run_concurrent, run_serial, served  # noqa: E402

KINDS = ("none", "statekit", "statekit-once", "django", "django-once", "django-redis", "django-vcache")
LABELS = {"none": "no cache (floor)", "statekit": "StatekitCache (native aget/aset)",
          "statekit-once": "StatekitCache, one backend object",
          "django": "Django RedisCache (sync_to_async)", "django-once": "Django RedisCache, one object",
          "django-redis": "django-redis (sync_to_async)",
          "django-vcache": "django-vcache (native, Rust driver)"}

APP = textwrap.dedent('''
    import os

    import django
    from django.conf import settings

    KIND = os.environ["BENCH_KIND"].removesuffix("-once")
    BACKENDS = {"statekit": "django_statekit.cache.StatekitCache",
                "django": "django.core.cache.backends.redis.RedisCache",
                "django-redis": "django_redis.cache.RedisCache",
                "django-vcache": "django_vcache.backend.ValkeyCache",
                "none": "django.core.cache.backends.dummy.DummyCache"}
    # django-vcache's msgpack entries on the pickling backends' keys would read as errors there
    PREFIX = {"django-vcache": "vcache"}.get(KIND, "")
    settings.configure(DEBUG=False, SECRET_KEY="bench-django-asgi-secret-0123456789", ROOT_URLCONF=__name__,
                       ALLOWED_HOSTS=["*"], INSTALLED_APPS=[], MIDDLEWARE=[], USE_TZ=True,
                       CACHES={"default": {"BACKEND": BACKENDS[KIND], "KEY_PREFIX": PREFIX,
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
    ap = options(__doc__ or "", requests=100, seconds=3.0)
    ap.add_argument("--python", metavar="PATH",
                    help="run this benchmark, every kind, under PATH (a Python >= 3.12 with django-vcache)")
    args = ap.parse_args(argv)
    if args.python:
        return _vcache.rerun(args.python, __file__, sys.argv[1:] if argv is None else argv)
    import django
    import uvicorn as uv

    skipped = _vcache.missing()
    kinds = tuple(k for k in KINDS if not (skipped and k == "django-vcache"))
    labels = {k: LABELS[k] for k in kinds}
    vcache = "" if skipped else f", django-vcache {_vcache.version()}"
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    routes = [("GET", "/read"), ("POST", "/write")]
    with served(kinds, "bench_django_asgi_app", APP, target="application") as run:
        print(f"statekit {commit()}; {run.redis_name}; Python {sys.version.split()[0]}, Django "
              f"{django.__version__}{vcache}, uvicorn {uv.__version__} (one process per backend); "
              f"{args.rounds} rounds x {args.requests} requests one at a time, {args.clients} clients x "
              f"{args.seconds:g} s per backend and route; load average {load0:.2f} on {os.cpu_count()} CPUs",
              flush=True)
        if skipped:
            print(skipped, flush=True)
        servers = run.servers
        for kind, (_, port) in servers.items():
            body = _read_body(port)
            if body != b"12345":
                raise RuntimeError(f"{kind}: GET /read gave {body!r}, not the cached value: invalid run")
        cookies = dict.fromkeys(servers, "bench=1")
        serial_rows = run_serial(servers, cookies, run.r, routes, args.rounds, args.requests)
        conc = run_concurrent(servers, {k: [v] for k, v in cookies.items()}, run.r, routes, args.clients,
                              args.seconds, args.slices)

    report(serial_rows, conc, labels, "django", "Django's RedisCache", args.clients)
    print("\ncache's share of a request (time above the no-cache floor, one at a time, median of rounds):")
    floor = {route: statistics.median(serial_rows["none"][f"{route}_rounds"])
             for route in ("/read", "/write")}
    for kind in kinds[1:]:
        extra = [statistics.median(serial_rows[kind][f"{route}_rounds"]) - floor[route]
                 for route in ("/read", "/write")]
        print(f"  {LABELS[kind]:<40} read {extra[0] * 1e6:+.0f} µs, write {extra[1] * 1e6:+.0f} µs")
    print(f"\nStatekitCache / another backend: read (get) time, write (set) time one at a time; read req/s, "
          f"write req/s at {args.clients} clients (ahead: time < 1, req/s > 1)")
    pairs = [("statekit", other) for other in ("django", "django-once", "django-redis", "django-vcache")]
    pairs.append(("statekit-once", "django-vcache"))
    for kind, other in pairs:
        if other not in serial_rows:
            continue
        got = [ratio(serial_rows, kind, other, "/read_rounds"),
               ratio(serial_rows, kind, other, "/write_rounds"),
               ratio(conc, kind, other, "/read_rps"), ratio(conc, kind, other, "/write_rps")]
        ahead = [got[0] < 1, got[1] < 1, got[2] > 1, got[3] > 1]
        print(f"  {LABELS[kind]} / {LABELS[other]}: " + ", ".join(
            f"{g:.2f}x {'ahead' if a else 'behind'}" for g, a in zip(got, ahead, strict=True))
            + ("  ahead on every figure" if all(ahead) else ""))
    print(f"(load average {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
