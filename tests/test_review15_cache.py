"""Review 15 of the cache and its circuit breaker, on real servers.

Found by this review (each test failed before its fix):

* ``CircuitBreaker.reset()`` closed the breaker without telling anyone: the
  ``breaker_state`` gauge the metrics exporters read stayed 2 (open) until the next
  transition or the cache's ``stats()``;
* a sync half-open trial interrupted (a signal handler's exception, as
  ``KeyboardInterrupt``) on any path but ``get``'s own kept its place until the plan
  it ran in was collected: with the exception kept (a framework's error report),
  every call was refused until another ``breaker_reset`` passed;
* the same for a compute interrupted inside get_or_set: its single-flight lock stayed
  held (extended by the lock keeper) and the next caller waited ``lock_wait``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from statekit.breaker import CLOSED, OPEN, CircuitBreaker
from statekit.cache import Cache
from statekit.embedded import RedisServer
from statekit.metrics import snapshot

pytestmark = pytest.mark.redis


# -- the breaker's gauge -----------------------------------------------------------------


def test_reset_reports_the_closed_breaker_to_the_gauge(redis_url: str) -> None:
    """An open breaker reset by hand: the exported ``breaker_state`` of the cache and
    of its namespace say closed (0) at once, as for a close by a successful trial."""
    root = Cache(redis_url, prefix="review15gauge", failure_threshold=2)
    users = root.namespace("users")
    try:
        root.breaker.failure()
        root.breaker.failure()
        assert root.breaker.state == OPEN
        exported = snapshot()["cache"]
        assert exported["review15gauge:default"]["breaker_state"] == 2
        assert exported["review15gauge:users"]["breaker_state"] == 2
        root.breaker.reset()
        exported = snapshot()["cache"]
        assert exported["review15gauge:default"]["breaker_state"] == 0  # was: 2
        assert exported["review15gauge:users"]["breaker_state"] == 0  # was: 2
        assert root.set("k", 1) and users.get("k") is None
    finally:
        root.close()


# -- an interrupted sync trial -------------------------------------------------------------


class _Interrupted(BaseException):
    """What a signal handler raises (as ``KeyboardInterrupt`` or a gevent ``Timeout``)."""


#: each path that can be the half-open trial, as a call on a cache holding "k" = "v"
#: (get: its own inlined path, fixed in session 14; the others: the plans' drive)
TRIALS: dict[str, Callable[[Cache], Any]] = {
    "get": lambda c: c.get("k"),
    "set": lambda c: c.set("x", 1),
    "add": lambda c: c.add("x", 1),
    "replace": lambda c: c.replace("x", "w"),
    "delete": lambda c: c.delete("x"),
    "incr": lambda c: c.incr("n"),
    "touch": lambda c: c.touch("k", 60),
    "persist": lambda c: c.persist("k"),
    "ttl": lambda c: c.ttl("k"),
    "has": lambda c: c.has("k"),
    "get_many": lambda c: c.get_many(["k", "x"]),
    "set_many": lambda c: c.set_many({"x": 1, "y": 2}),
    "delete_many": lambda c: c.delete_many(["x", "y"]),
    "clear": lambda c: c.namespace("other").clear(),
    "get_or_set": lambda c: c.get_or_set("g", lambda: "computed", ttl=60),
    "lock": lambda c: c.lock("l").acquire(blocking=False),
}


@pytest.mark.parametrize("path", list(TRIALS))
def test_an_interrupted_trial_on_any_path_frees_its_place_at_once(private_redis: RedisServer,
                                                                  path: str) -> None:
    """The half-open trial is interrupted while Redis hangs, and the exception is kept
    (as a framework keeps it for its error report): Redis back, the next call is the
    new trial and closes the breaker (was: refused, "circuit breaker is open", until
    another ``breaker_reset`` or until the kept exception was dropped)."""
    now = [0.0]
    breaker = CircuitBreaker(1, 1.0, clock=lambda: now[0])
    cache = Cache(private_redis.url, namespace="review15", timeout=60)
    cache.breaker = breaker

    def interrupt(*_: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        cache.set("k", "v")
        breaker.failure()  # (as a call of the current period that timed out)
        private_redis.pause()
        now[0] = 1.0
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(_Interrupted) as kept:
            TRIALS[path](cache)  # the trial: waits for the hung Redis until interrupted
        private_redis.resume()
        assert cache.get("k") == "v"  # was: BackendUnavailable, breaker open
        assert breaker.state == CLOSED
        assert kept.value is not None  # kept to here
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        private_redis.resume()
        cache.close()


def test_an_interrupted_compute_releases_its_single_flight_lock_at_once(redis_url: str) -> None:
    """get_or_set's compute is interrupted (the exception kept, as above): its
    single-flight lock is released then, not kept (and extended by the lock keeper)
    until the plan is collected, so the next caller computes at once instead of
    waiting ``lock_wait`` for a holder that is gone."""
    cache = Cache(redis_url, prefix="review15sf", lock_wait=30)

    def interrupted() -> str:
        raise _Interrupted

    try:
        with pytest.raises(_Interrupted) as kept:
            cache.get_or_set("g", interrupted, ttl=60)
        assert cache._be().lock_holder("sf:g") is None  # was: the interrupted caller's token
        assert cache.get_or_set("g", lambda: "v", ttl=60) == "v"
        assert cache.stats()["lock_waits"] == 0
        assert kept.value is not None  # kept to here
    finally:
        cache.close()


# -- a delete dropped in an outage (on_error="miss") ----------------------------------------


def test_a_delete_dropped_in_an_outage_is_not_done_later(redis_url: str) -> None:
    """What the docs say of ``on_error="miss"`` (as django-redis' IGNORE_EXCEPTIONS and
    cashews' suppress, statekit queues nothing): a delete refused by the open breaker
    answers ``False`` and counts as a dropped write; once Redis answers again the old
    value is still there, until its TTL."""
    now = [0.0]
    cache = Cache(redis_url, prefix="review15drop", on_error="miss")
    cache.breaker = CircuitBreaker(1, 1.0, clock=lambda: now[0])
    try:
        assert cache.set("k", "old", ttl=600)
        cache.breaker.failure()  # an outage opened it: calls are refused without I/O
        assert cache.delete("k") is False
        assert cache.stats()["dropped_writes"] == 1
        now[0] = 1.0  # the breaker lets a call through: Redis answers
        assert cache.get("k") == "old" and cache.breaker.state == CLOSED
        left = cache.ttl("k")
        assert left is not None and 0 < left <= 600
    finally:
        cache.close()
