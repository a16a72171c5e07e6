"""Broadcast leadership, second review: what the first one
(test_broadcast_leadership_review.py) noticed and left, driven step by step with
backends whose calls are cut or refused at a chosen point. No sleeps-and-hope.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import pytest
import test_broadcast  # tests/ is on sys.path
from test_broadcast_async import until

from statekit.broadcast import Broadcaster
from statekit.broadcast.aio import AsyncBroadcaster
from statekit.errors import BackendUnavailable, BroadcastError
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis

prefix, broadcasters = test_broadcast.prefix, test_broadcast.broadcasters


class ReplyLost:
    """A backend whose next call of *method* reaches the server (it is applied)
    and then fails as a lost reply does (:class:`BackendUnavailable`)."""

    def __init__(self, backend: Any, method: str) -> None:
        self._backend = backend
        self._method = method
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._backend, name)
        if name != self._method:
            return real

        def cut(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if self.armed:
                self.armed = False
                raise BackendUnavailable("reply lost (test)")
            return result

        return cut


def test_a_leaders_claim_whose_reply_was_lost_is_not_reported_as_a_lost_and_new_lease(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster], caplog: pytest.LogCaptureFixture
) -> None:
    """The leader's claim of its next slot is applied (a new fencing token) but its
    reply is lost. The next pass must learn that token, not renew with the old one,
    log "lease lost" and then "this process leads" again: nobody else ever held
    the lease, and leader_lost / leader_acquired would page an operator."""
    b = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(b)
    b.every(1, name="job", lease=30)(lambda: "value")
    t0 = math.floor(time.time()) + 0.1
    b.run_pending(t0)
    wait_for(lambda: b.counters.get("publishes") == 1, what="slot 1 published")
    first = b.jobs["job"].token
    b._backend = ReplyLost(b.backend, "claim")  # type: ignore[assignment]
    b.run_pending(t0 + 1)  # the next slot's claim: applied, its reply lost
    assert b.jobs["job"].unsure
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="statekit.broadcast"):
        b.run_pending(t0 + 1.6)  # past the retry
    assert b.counters.get("leader_lost") == 0
    assert b.counters.get("leader_acquired") == 1
    assert not [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()
                or "this process leads" in r.getMessage()]
    job = b.jobs["job"]
    assert job.token is not None and job.token > first  # the token the lost claim gave
    assert not job.unsure
    b.run_pending(t0 + 2)  # and it goes on leading: the next slot is computed
    wait_for(lambda: b.counters.get("publishes") == 2, what="slot 3 published")


class RefusedRelease:
    """An asyncio backend whose release of job *name* fails with a reply error
    (:class:`BroadcastError`: an ACL forbidding the script, a key of the wrong type)."""

    def __init__(self, backend: Any, name: str) -> None:
        self._backend = backend
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._backend, attr)

    async def release(self, name: str, owner: str, token: int) -> bool:
        if name == self._name:
            raise BroadcastError("refused by the test")
        result: bool = await self._backend.release(name, owner, token)
        return result


def test_a_release_refused_for_one_job_still_releases_the_jobs_after_it(redis_url: str, prefix: str) -> None:
    """stop() releases every job's lease so another process leads at once. A reply
    error on the first job's release is raised by stop(), but only after the other
    jobs' leases were released: they stayed held until they expired (30 s here)."""

    async def main() -> int:
        first = AsyncBroadcaster(redis_url, key_prefix=prefix)
        second = AsyncBroadcaster(redis_url, key_prefix=prefix)
        for b in (first, second):
            b.every(60, name="refused", lease=30)(_one)
            b.every(60, name="released", lease=30)(_one)
        first.start()
        await until(lambda: first.counters.get("publishes") >= 2, "both jobs published")
        backend = first.backend
        first._backends.current = lambda: RefusedRelease(backend, "refused")  # type: ignore[method-assign]
        with pytest.raises(BroadcastError):
            await first.stop()
        await first.stop()  # raised once: a second stop is quiet, as the thread broadcaster's
        await second.run_pending()
        leads = [name for name, job in second.jobs.items() if job.token is not None]
        await second.stop()
        assert leads == ["released"]
        return second.counters.get("leader_acquired")

    assert asyncio.run(main()) == 1


async def _one() -> int:
    return 1


class RefusedReleaseSync:
    """:class:`RefusedRelease` for the thread broadcaster's backend."""

    def __init__(self, backend: Any, name: str) -> None:
        self._backend = backend
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._backend, attr)

    def release(self, name: str, owner: str, token: int) -> bool:
        if name == self._name:
            raise BroadcastError("refused by the test")
        result: bool = self._backend.release(name, owner, token)
        return result


def test_the_thread_broadcasters_stop_raises_a_refused_release_after_releasing_the_rest(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    """As AsyncBroadcaster.stop() does: the error of a refused release reaches the
    caller of stop() (the master logs "broadcaster did not stop cleanly"), once the
    other leases were released. It was raised in the scheduler thread instead, an
    unhandled exception there, and stop() returned as if all went well."""
    b = Broadcaster(redis_url, key_prefix=prefix)
    other = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(other)
    for each in (b, other):
        each.every(60, name="refused", lease=30)(lambda: 1)
        each.every(60, name="released", lease=30)(lambda: 1)
    b.start()
    wait_for(lambda: b.counters.get("publishes") == 2, what="both jobs published")
    b._backend = RefusedReleaseSync(b.backend, "refused")  # type: ignore[assignment]
    with pytest.raises(BroadcastError):
        b.stop()
    assert not b.running
    b.stop()  # raised once: a second stop is quiet
    other.run_pending()
    assert [name for name, job in other.jobs.items() if job.token is not None] == ["released"]
