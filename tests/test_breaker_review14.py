"""Review of the circuit breaker's timing (session 14), on real servers where an outage
is needed (a SIGSTOPped or killed Redis), the breaker's clock a list the test moves.

Found by this review (each test failed before its fix):

* failures of calls that began before the breaker opened (slow calls timing out one
  after the other) each moved its open time: with many calls in flight the breaker
  stayed open for ``breaker_reset`` after the last of them, not after it opened;
* a half-open trial whose task was cancelled (a client that went away), or a sync
  one interrupted (a signal, a gevent ``Timeout``), reported neither success nor
  failure: every other call was refused until another ``breaker_reset`` passed,
  although nobody was trying;
* a namespace of a cache shares its breaker but its stats said ``breaker_opened`` 0
  (only the root counted) and its ``breaker_state`` gauge stayed 0 (closed) for the
  metrics exporters until its ``stats()`` was called.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from statekit.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from statekit.cache import AsyncCache, Cache
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.metrics import snapshot
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis


def _clocked(threshold: int = 1) -> tuple[CircuitBreaker, list[float]]:
    """A breaker (``reset_timeout`` 1 s) whose clock is the returned list's first item."""
    now = [0.0]
    return CircuitBreaker(threshold, 1.0, clock=lambda: now[0]), now


# -- calls in flight when the breaker opened ------------------------------------------


def test_calls_in_flight_when_the_breaker_opened_do_not_keep_it_open(private_redis: RedisServer) -> None:
    """Four requests are waiting for a hung Redis (a long socket timeout) when a newer
    call times out and opens the breaker. The four fail later, one after the other
    (here: the server dies); the breaker still turns half-open ``breaker_reset`` after
    it opened, and the first call after that closes it. Their failures used to restart
    the open period each time."""
    breaker, now = _clocked()
    # no retries of redis-py's own: redis-py 8's default (10, with backoff, the connect
    # retried too) made the four calls try to reach the killed server for ~17 s before
    # they failed; when they fail does not matter here (the breaker's clock is `now`)
    slow = redis.Redis(port=private_redis.port, socket_timeout=60, retry=Retry(NoBackoff(), 0))
    hung = Cache(client=slow, namespace="review14")
    quick = Cache(client=redis.Redis(port=private_redis.port, socket_timeout=0.5), namespace="review14")
    hung.breaker = quick.breaker = breaker
    failed: list[BaseException] = []

    def call() -> None:
        try:
            hung.get("k")
        except BackendUnavailable as e:
            failed.append(e)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(4)]
    try:
        quick.set("k", "v")
        private_redis.pause()
        for t in threads:
            t.start()
        # each thread holds a connection of its own: its call is past the breaker
        wait_for(lambda: len(slow.connection_pool._in_use_connections) == 4, what="4 calls in flight")
        with pytest.raises(BackendUnavailable):
            quick.get("k")  # began after them, timed out first
        assert breaker.state == OPEN
        now[0] = 0.5
        private_redis.kill()  # the four fail now
        for t in threads:
            t.join(30)
        assert len(failed) == 4 and breaker.state == OPEN
        now[0] = 1.0  # breaker_reset after it opened
        assert breaker.state == HALF_OPEN  # was: open until 1.5
        private_redis.start()  # same port, empty
        assert quick.get("k", "gone") == "gone"  # the trial call
        assert breaker.state == CLOSED
    finally:
        private_redis.resume()
        for t in threads:
            t.join(30)
        hung.close()
        quick.close()


def test_async_calls_in_flight_when_the_breaker_opened_do_not_keep_it_open(
        private_redis: RedisServer) -> None:
    """The same through :class:`AsyncCache` (tasks of one loop)."""
    breaker, now = _clocked()

    async def body() -> None:
        hung = AsyncCache(private_redis.url, namespace="review14", timeout=60)
        quick = AsyncCache(private_redis.url, namespace="review14", timeout=0.5)
        hung.breaker = quick.breaker = breaker
        try:
            await quick.set("k", "v")
            await hung.get("k")  # connected
            private_redis.pause()
            calls = [asyncio.ensure_future(hung.get("k")) for _ in range(4)]
            await asyncio.sleep(0)  # each task ran to its first await: past the breaker
            with pytest.raises(BackendUnavailable):
                await quick.get("k")
            assert breaker.state == OPEN
            now[0] = 0.5
            private_redis.kill()
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
            assert all(isinstance(r, BackendUnavailable) for r in results), results
            now[0] = 1.0
            assert breaker.state == HALF_OPEN
            private_redis.start()
            assert await quick.get("k", "gone") == "gone"
            assert breaker.state == CLOSED
        finally:
            private_redis.resume()
            await hung.aclose()
            await quick.aclose()

    asyncio.run(body())


# -- a cancelled trial ------------------------------------------------------------------


def test_a_cancelled_async_trial_lets_the_next_call_try_at_once(private_redis: RedisServer) -> None:
    """The half-open trial's task is cancelled while Redis hangs (the client went
    away). Redis comes back at once: the next call is the new trial and succeeds. It
    used to be refused ("circuit breaker is open") until another ``breaker_reset``."""
    breaker, now = _clocked()

    async def body() -> None:
        cache = AsyncCache(private_redis.url, namespace="review14", timeout=0.5)
        cache.breaker = breaker
        try:
            await cache.set("k", "v")
            private_redis.pause()
            with pytest.raises(BackendUnavailable):
                await cache.get("k")
            assert breaker.state == OPEN
            now[0] = 1.0
            trial = asyncio.ensure_future(cache.get("k"))
            await asyncio.sleep(0)  # the trial is sent, Redis does not answer
            assert not breaker.allow()  # one trial at a time
            trial.cancel()
            with pytest.raises(asyncio.CancelledError):
                await trial
            private_redis.resume()
            assert await cache.get("k") == "v"  # was: BackendUnavailable, breaker open
            assert breaker.state == CLOSED
        finally:
            private_redis.resume()
            await cache.aclose()

    asyncio.run(body())


# the sync trial interrupted (get's own path and every other one): see
# tests/test_review15_cache.py::test_an_interrupted_trial_on_any_path_frees_its_place_at_once


# -- a namespace's stats ----------------------------------------------------------------


def test_a_namespace_reports_the_breaker_it_shares(private_redis: RedisServer) -> None:
    """A namespace shares its root's breaker (one Redis, one breaker): its stats and
    its exported metrics report it as the root's do, opened and state; its own
    errors stay its own. A namespace made while the breaker is open says so."""
    root = Cache(private_redis.url, prefix="review14ns", failure_threshold=1, timeout=0.5,
                 on_error="miss")
    users = root.namespace("users")
    try:
        assert users.set("k", 1)
        private_redis.kill()
        assert users.get("k", "default") == "default"  # the failure that opens the breaker
        exported = snapshot()["cache"]
        assert exported["review14ns:users"]["breaker_state"] == 2  # was: 0
        assert exported["review14ns:users"]["breaker_opened"] == 1  # was: 0
        assert exported["review14ns:default"]["breaker_opened"] == 1
        stats = users.stats()
        assert stats["breaker_state"] == 2 and stats["breaker_opened"] == 1  # was: 0 opened
        assert stats["errors"] == 1 and root.stats()["errors"] == 0
        late = root.namespace("late")
        assert snapshot()["cache"]["review14ns:late"]["breaker_state"] == 2  # was: 0
        assert late.stats()["breaker_opened"] == 0  # counted since it was made, as its other counters
    finally:
        root.close()

