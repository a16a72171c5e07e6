"""Review of the async cache (issue 18): defects found by using it as Django,
uvicorn and plain asyncio users do, each reproduced against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from statekit.cache import AsyncCache
from statekit.cache import aio as cache_aio

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


DJANGO_GET_OR_SET_NOW = textwrap.dedent(
    '''
    import asyncio, json, sys, warnings
    import django
    from django.conf import settings

    warnings.simplefilter("error")
    settings.configure(SECRET_KEY="x" * 50, INSTALLED_APPS=[], CACHES={"default": {
        "BACKEND": "django_statekit.cache.StatekitCache", "LOCATION": sys.argv[1]}})
    django.setup()
    from django.core.cache import cache


    async def fetch():
        return "computed"


    async def main():
        return [repr(await cache.aget_or_set("review-now", fetch, timeout=0)),
                repr(await cache.aget_or_set("review-later", fetch, timeout=5)),
                repr(cache.get_or_set("review-now-sync", lambda: "computed", timeout=0))]


    print(json.dumps(asyncio.run(main())))
    '''
)


def test_django_aget_or_set_with_a_zero_timeout_awaits_its_default(tmp_path: Path, redis_url: str) -> None:
    """``await cache.aget_or_set(key, async_fn, timeout=0)`` (the documented "a
    default that is an async def is awaited") returned the coroutine object, never
    awaited: the zero-timeout path handed the default to Django's generic
    ``aget_or_set``, which only calls it."""
    script = tmp_path / "django_get_or_set_now.py"
    script.write_text(DJANGO_GET_OR_SET_NOW)
    out = subprocess.run([sys.executable, str(script), redis_url], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["'computed'"] * 3


class _LateReplies:
    """Replies read by redis-py's asyncio connections arrive late while *on* (the
    command was applied by Redis; the caller has not seen its reply yet), as on a
    slow network: a cancellation then lands between the command and its reply."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import Connection

        self.on = False
        self.skip = 0
        self.arrived: asyncio.Event | None = None
        original = Connection.read_response

        async def read_response(conn: Any, *args: Any, **kwargs: Any) -> Any:
            reply = await original(conn, *args, **kwargs)
            if self.on and self.skip:
                self.skip -= 1
            elif self.on:
                assert self.arrived is not None
                self.arrived.set()
                await asyncio.sleep(30)
            return reply

        monkeypatch.setattr(Connection, "read_response", read_response)

    def start(self, skip: int = 0) -> asyncio.Event:
        """Delay the reply after the next *skip* ones."""
        self.on, self.skip, self.arrived = True, skip, asyncio.Event()
        return self.arrived


async def _background_releases() -> None:
    """Wait until the lock releases the cache runs in the background after a
    cancellation (:func:`statekit.cache.aio._drop`) have ended, 10 s at most (a lock
    left held would be held for 30 s): each is a round trip to Redis, which a fixed
    sleep of 0.1 s did not always cover on a loaded machine (a release 0.3 s slower
    failed all three tests that slept)."""
    pending = set(cache_aio._dropping)
    if pending:
        _done, late = await asyncio.wait(pending, timeout=10)
        assert not late, "a background lock release did not end within 10 s"


async def _free(cache: Any, name: str) -> bool:
    """Whether another owner can take lock *name* right now."""
    other = cache.lock(name, timeout=5)
    taken = bool(await other.acquire(blocking=False))
    if taken:
        await other.release()
    return taken


def test_lock_acquire_cancelled_after_redis_granted_it_is_undone(redis_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``asyncio.wait_for(lock.acquire(), ...)`` or a cancelled request handler: the
    cancellation lands after Redis applied the SET NX but before its reply was read.
    The lock stayed held under a token nobody kept, for its whole timeout (30 s
    here), so every other owner was locked out. Found by cancelling random tasks of
    a mixed get_or_set/incr/set/``async with cache.lock()`` load: locks were left
    held after every task had ended."""
    late = _LateReplies(monkeypatch)

    async def body() -> tuple[bool, bool]:
        c = AsyncCache(redis_url, namespace="review-lock-a")
        try:
            await c.set("warm", 1)
            lock = c.lock("job", timeout=30)
            arrived = late.start()
            task = asyncio.create_task(lock.acquire())
            await asyncio.wait_for(arrived.wait(), 5)  # Redis granted it; the reply is "on the wire"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            late.on = False
            held = lock.locked()
            await _background_releases()  # the clean-up's own round trip
            return held, await _free(c, "job")
        finally:
            await c.aclose()

    held, free = asyncio.run(body())
    assert held is False
    assert free is True


def test_lock_release_cancelled_before_it_was_sent_is_still_done(monkeypatch: pytest.MonkeyPatch,
                                                                  redis_url: str) -> None:
    """The release of ``async with cache.lock()`` waits for a connection (every one
    of the loop's connections busy) and the task is cancelled there: the token was
    already forgotten and the release never sent, so the lock stayed held for its
    whole timeout."""
    late = _LateReplies(monkeypatch)

    async def body() -> bool:
        c = AsyncCache(redis_url + "?max_connections=1", namespace="review-lock-r")
        try:
            lock = c.lock("job", timeout=30)
            assert await lock.acquire()
            arrived = late.start()
            busy = asyncio.create_task(c.get("other"))  # holds the only connection
            await asyncio.wait_for(arrived.wait(), 5)
            late.on = False
            release = asyncio.create_task(lock.release())
            await asyncio.sleep(0.05)  # waiting for the connection: nothing sent yet
            release.cancel()
            busy.cancel()
            for task in (release, busy):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await _background_releases()
            return await _free(c, "job")
        finally:
            await c.aclose()

    assert asyncio.run(body()) is True


def test_get_or_set_cancelled_while_taking_its_lock_leaves_no_lock(redis_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A get_or_set of a missing key cancelled after Redis granted its single-flight
    lock but before the reply was read: the lock stayed held for lock_ttl, so every
    caller of that key in the meantime waited lock_wait before computing anyway."""
    late = _LateReplies(monkeypatch)
    computed: list[str] = []

    async def compute() -> str:
        computed.append("x")
        return "value"

    async def body() -> tuple[Any, float]:
        c = AsyncCache(redis_url, namespace="review-sf", lock_ttl=30, lock_wait=1)
        try:
            await c.set("warm", 1)
            arrived = late.start(skip=1)  # the read of the key answers; the lock's SET NX is late
            task = asyncio.create_task(c.get_or_set("report", compute))
            await asyncio.wait_for(arrived.wait(), 5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            late.on = False
            await _background_releases()
            value = await c.get_or_set("report", compute)
            return value, c.stats()["lock_waits"]
        finally:
            await c.aclose()

    value, waits = asyncio.run(body())
    assert value == "value" and computed == ["x"]
    assert waits == 0  # the next caller took the lock at once


def test_first_cluster_call_never_queries_the_topology_on_the_loop(redis_cluster_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call of an AsyncCache on Cluster built the generation listener,
    which started the sync Cluster client there: redis-py's blocking topology query
    (CLUSTER SLOTS over plain sockets, up to the socket timeout per startup node
    while a node hangs) ran on the event loop's thread. Found by recording the
    thread of redis-py's NodesManager.initialize during a first ``await get()``."""
    import threading
    import time

    import redis.cluster

    threads: list[str] = []
    initialize = redis.cluster.NodesManager.initialize

    def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return initialize(self, *args, **kwargs)

    monkeypatch.setattr(redis.cluster.NodesManager, "initialize", recorded)

    async def body() -> tuple[str, Any, float]:
        c = AsyncCache(redis_cluster_url + "?socket_timeout=2", namespace="review-topology")
        try:
            started = time.perf_counter()
            await c.set("k", "v")
            first = time.perf_counter() - started
            return threading.current_thread().name, await c.get("k"), first
        finally:
            await c.aclose()

    loop_thread, value, first = asyncio.run(body())
    print(f"first AsyncCache call on Cluster: {first * 1000:.1f} ms; sync topology queries by thread: "
          f"{threads}")
    assert value == "v"
    assert loop_thread not in threads


def test_one_cache_from_the_loops_of_many_threads(redis_url: str) -> None:
    """One AsyncCache used from event loops of several threads at once, each loop
    made and closed per call (async views of a threaded WSGI worker through
    async_to_sync, hand-made loops): PerLoop's table of loops was added to, swept
    and emptied by those threads without a lock, so calls failed with KeyError or
    'dictionary changed size during iteration' (5 runs of 16 threads x 60 calls: 5
    failed). Found with that load, the switch interval shortened to expose it."""
    import sys
    import threading

    c = AsyncCache(redis_url, namespace="review-threads")
    errors: list[str] = []
    results: list[Any] = []

    def worker() -> None:
        for _ in range(60):
            try:
                results.append(on_a_loop_of_its_own(c.get("k", "d")))
            except Exception as e:  # noqa: BLE001 - counted and shown below
                errors.append(repr(e))

    def on_a_loop_of_its_own(coro: Any) -> Any:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    on_a_loop_of_its_own(c.get("k", "d"))  # everything imported before the switches speed up
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)

        async def last() -> None:  # a new loop sweeps the sockets of the loops closed above
            await c.get("k", "d")
            await c.aclose()

        on_a_loop_of_its_own(last())
    assert errors == []
    assert results == ["d"] * 960
