"""Review of the cache's circuit breaker as the cache uses it, sync and async, on real
servers, each case driven step by step (the breaker's clock is a list the test moves;
a server told to refuse writes), never left to timing.

What the docs claim: a breaker counts consecutive failures (a timeout or connection
error, not a bad value), opens after ``failure_threshold`` of them and then fails
calls at once, without I/O, for ``breaker_reset`` seconds; then one trial call goes
through (one caller at a time), whose success closes it and whose failure reopens it.

Found by this review (each test failed before its fix):

* a Redis that refuses writes (``maxmemory`` with ``noeviction``: ``OOM``) but serves
  reads opened the breaker after ``failure_threshold`` writes, and from then on every
  read failed too, without being tried: an error reply is an answer, not an outage
  (failing fast saves no wait), so it no longer counts as a failure, and a half-open
  trial it answers closes the breaker;
* a half-open trial answered with an error reply of the command (``incr`` of a value
  that is not an integer: ``ValueError``) left the breaker half-open, every other call
  refused without I/O for another ``breaker_reset``, although Redis had answered;
* ``Lock.acquire`` went around the breaker: with the breaker open it still waited for
  Redis (a paused server: the socket timeout per attempt) and its failures were not
  counted.

Claims that held (checked here or already by tests/test_breaker.py): one trial at a
time among threads and among tasks (a second caller is refused without I/O while the
trial is out); a lost trial is replaced after another ``breaker_reset``; a failed trial
reopens for a full ``breaker_reset``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from statekit.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from statekit.cache import AsyncCache, Cache
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable

pytestmark = pytest.mark.redis


def _clocked(cache: Cache | AsyncCache, threshold: int = 2) -> list[float]:
    """Give *cache* a breaker whose clock is the returned list's first item."""
    now = [0.0]
    cache.breaker = CircuitBreaker(threshold, 1.0, clock=lambda: now[0])
    return now


@pytest.fixture
def full(private_redis: RedisServer) -> Iterator[RedisServer]:
    """A private Redis that refuses every write (``OOM``) until the test ends."""
    yield private_redis
    with private_redis.client() as c:
        c.config_set("maxmemory", 0)


def _refuse_writes(server: RedisServer) -> None:
    with server.client() as c:
        c.config_set("maxmemory-policy", "noeviction")
        c.config_set("maxmemory", 1)


def test_a_redis_that_refuses_writes_still_serves_reads(full: RedisServer) -> None:
    cache = Cache(full.url, namespace="breaker-oom", on_error="raise")
    _clocked(cache)
    try:
        assert cache.set("k", "v")
        _refuse_writes(full)
        for _ in range(3):
            with pytest.raises(BackendUnavailable, match="OOM"):
                cache.set("w", 1)
        assert cache.breaker.state == CLOSED
        assert cache.get("k") == "v"  # was: "circuit breaker is open"
        assert cache.get_many(["k"]) == {"k": "v"}
        assert cache.stats()["errors"] == 3
    finally:
        cache.close()


def test_an_async_cache_on_a_redis_that_refuses_writes_still_serves_reads(full: RedisServer) -> None:
    async def body() -> Any:
        cache = AsyncCache(full.url, namespace="breaker-aoom", on_error="miss")
        _clocked(cache)
        try:
            assert await cache.set("k", "v")
            _refuse_writes(full)
            for _ in range(3):
                assert await cache.set("w", 1) is False  # dropped (on_error="miss")
            return cache.breaker.state, await cache.get("k")
        finally:
            await cache.aclose()

    assert asyncio.run(body()) == (CLOSED, "v")


def test_a_trial_answered_with_an_error_reply_closes_the_breaker(redis_line_url: str) -> None:
    """The breaker is open (Redis was down); the trial is an incr of a value that is
    not an integer: Redis answered, so the next call goes through at once."""
    cache = Cache(redis_line_url, namespace="breaker-trial")
    now = _clocked(cache, threshold=1)
    try:
        cache.set("text", "not a number")
        cache.set("n", 1)
        cache.breaker.failure()  # as after a timeout
        assert cache.breaker.state == OPEN
        now[0] = 1.0
        with pytest.raises(ValueError):
            cache.incr("text")  # the trial
        assert cache.breaker.state == CLOSED
        assert cache.get("n") == 1  # was: refused until now[0] reached 2.0
    finally:
        cache.close()


def test_lock_acquire_goes_through_the_breaker(redis_line_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the breaker open, Lock.acquire fails at once, without asking Redis (a
    paused Redis made every attempt wait for the socket timeout)."""
    cache = Cache(redis_line_url, namespace="breaker-lock")
    _clocked(cache, threshold=1)
    try:
        cache.set("warm", 1)
        sent: list[Any] = []
        transport = cache._be().transport
        real = transport.command
        monkeypatch.setattr(transport, "command", lambda *a: sent.append(a) or real(*a))
        cache.breaker.failure()
        with pytest.raises(BackendUnavailable, match="circuit breaker is open"):
            cache.lock("job", timeout=10).acquire(blocking=False)
        assert sent == []
    finally:
        cache.close()


def test_lock_acquire_failures_count(private_redis: RedisServer) -> None:
    """A Lock.acquire that fails is a failure like any other call's: with
    failure_threshold=1 the next call fails at once."""
    cache = Cache(private_redis.url, namespace="breaker-lockfail", timeout=0.5)
    _clocked(cache, threshold=1)
    try:
        cache.set("warm", 1)
        private_redis.kill()
        with pytest.raises(BackendUnavailable):
            cache.lock("job", timeout=10).acquire(blocking=False)
        assert cache.breaker.state == OPEN
    finally:
        cache.close()


def test_one_trial_at_a_time_among_tasks(redis_line_url: str) -> None:
    """Half-open: while one task's trial is out (its reply not read yet), the other
    tasks' calls are refused without I/O; the trial's success closes the breaker."""

    async def body() -> tuple[list[str], str]:
        cache = AsyncCache(redis_line_url, namespace="breaker-tasks")
        now = _clocked(cache, threshold=1)
        try:
            await cache.set("k", "v")
            cache.breaker.failure()
            now[0] = 1.0
            trial = asyncio.ensure_future(cache.get("k"))
            await asyncio.sleep(0)  # the trial is sent, its reply not read yet
            assert cache.breaker.state == HALF_OPEN
            outcomes = []
            for result in await asyncio.gather(*(cache.get("k") for _ in range(5)), return_exceptions=True):
                outcomes.append("refused" if isinstance(result, BackendUnavailable) else repr(result))
            outcomes.append(await trial)
            return outcomes, cache.breaker.state
        finally:
            await cache.aclose()

    outcomes, state = asyncio.run(body())
    assert outcomes == ["refused"] * 5 + ["v"]
    assert state == CLOSED


def test_one_trial_at_a_time_among_threads(redis_line_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same among threads: the trial thread is held inside its Redis call."""
    cache = Cache(redis_line_url, namespace="breaker-threads")
    now = _clocked(cache, threshold=1)
    try:
        cache.set("k", "v")
        backend = cache._be()
        real = backend.get
        inside, go = threading.Event(), threading.Event()

        def held(key: str) -> Any:
            inside.set()
            assert go.wait(30)
            return real(key)

        monkeypatch.setattr(backend, "get", held)
        cache.breaker.failure()
        now[0] = 1.0
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(cache.get("k")))
        t.start()
        try:
            assert inside.wait(30)
            with pytest.raises(BackendUnavailable, match="circuit breaker is open"):
                cache.get("k")
        finally:
            go.set()
            t.join(30)
        assert got == ["v"] and cache.breaker.state == CLOSED
    finally:
        cache.close()
