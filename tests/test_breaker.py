"""statekit.breaker: a trial call that never reports back must not wedge the breaker."""

from __future__ import annotations

import pytest

from statekit.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from statekit.cache import Cache
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable


def test_a_lost_trial_call_is_replaced_after_reset_timeout() -> None:
    """The half-open trial's caller may never call success() or failure(): it raised
    something that is not an outage (a WRONGTYPE reply, a gevent Timeout) or its
    thread died. After another reset_timeout a new trial must be let through."""
    now = [0.0]
    b = CircuitBreaker(1, 1.0, clock=lambda: now[0])
    b.failure()
    assert b.state == OPEN
    now[0] = 1.0
    assert b.allow()  # the trial; its caller is never heard from again
    assert not b.allow()  # one trial at a time
    now[0] = 1.5
    assert not b.allow()
    now[0] = 2.0
    assert b.allow()  # the lost trial's slot is given to a new caller
    assert not b.allow()
    b.success()
    assert b.state == CLOSED and b.allow()


def test_trial_lease_survives_a_clock_that_goes_backwards() -> None:
    now = [10.0]
    b = CircuitBreaker(1, 1.0, clock=lambda: now[0])
    b.failure()
    now[0] = 11.0
    assert b.allow()
    now[0] = 5.0  # a clock stepped back does not hand out a second trial
    assert not b.allow()
    assert b.state == HALF_OPEN



def test_failures_of_calls_begun_before_the_breaker_opened_do_not_extend_it() -> None:
    """Five calls start while closed; two fail and open it; the other three time out
    later. They do not move the open time, count, or end the trial."""
    now = [0.0]
    b = CircuitBreaker(2, 1.0, clock=lambda: now[0])
    started = [b.epoch for _ in range(5)]
    b.failure(started[0])
    b.failure(started[1])
    assert b.state == OPEN and b.opened == 1
    now[0] = 0.9
    b.failure(started[2])
    now[0] = 1.0
    assert b.state == HALF_OPEN
    assert b.allow()  # the trial
    trial = b.epoch
    b.failure(started[3])  # not the trial's: it is still out
    assert not b.allow() and b.state == HALF_OPEN
    b.failure(trial)  # the trial's failure reopens, for a full reset_timeout
    assert b.state == OPEN and b.opened == 2
    now[0] = 1.9
    b.failure(started[4])
    now[0] = 2.0
    assert b.state == HALF_OPEN and b.allow()
    b.success()
    assert b.state == CLOSED
    b.failure(trial)  # from before it closed: not one of the new consecutive failures
    b.failure(b.epoch)
    assert b.state == CLOSED  # threshold 2: one failure counted
    b.failure(b.epoch)
    assert b.state == OPEN


def test_an_abandoned_trial_frees_its_place_at_once() -> None:
    """A trial that ends without an outcome (cancelled) lets the next caller try; a
    call of an earlier period that ends so frees nothing (the trial is still out), nor
    does a lost trial that was already replaced."""
    now = [0.0]
    b = CircuitBreaker(1, 1.0, clock=lambda: now[0])
    before = b.epoch
    b.failure(before)
    now[0] = 1.0
    assert b.allow()
    trial = b.epoch
    b.abandoned(before)
    assert not b.allow()
    b.abandoned(trial)
    assert b.allow()  # at once, not after another reset_timeout
    lost = b.epoch
    now[0] = 2.0
    assert b.allow()  # the lost trial is replaced
    b.abandoned(lost)
    assert not b.allow()
    assert b.state == HALF_OPEN


@pytest.mark.redis
def test_cache_recovers_after_a_trial_call_that_raised_a_value_error() -> None:
    """Redis comes back; the first call through the half-open breaker is an incr on
    a key of another type (ValueError, not an outage). The cache must not stay
    refused for the rest of the process."""
    now = [0.0]
    server = RedisServer()
    server.start()
    try:
        cache = Cache(server.url, on_error="raise", timeout=0.5, failure_threshold=1)
        cache.breaker = CircuitBreaker(1, 1.0, clock=lambda: now[0])
        cache.set("n", 1)
        server.kill()
        with pytest.raises(BackendUnavailable):
            cache.get("n")
        assert cache.breaker.state == OPEN
        server.start()  # same port, empty
        with server.client() as c:
            c.hset("statekit:{default}:0:h", "field", "1")
        now[0] = 1.0
        with pytest.raises(ValueError, match="another Redis type"):
            cache.incr("h")  # the trial call
        now[0] = 2.0
        assert cache.set("n", 5)
        assert cache.get("n") == 5
        assert cache.breaker.state == CLOSED
    finally:
        server.stop()
