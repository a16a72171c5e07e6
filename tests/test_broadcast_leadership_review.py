"""Broadcast leadership and fencing, driven step by step (review of the scheduler,
the hub and the asyncio driver): each test pauses a thread or a task at a chosen
point (a gated backend call), then lets it go, and checks what Redis retains and
what workers show. No sleeps-and-hope: every wait is for an event the test sets.

What the shipped contract (statekit.testing.contracts.broadcast) and
test_broadcast*.py already cover (a paused leader of another process refused, one
computation per slot, stop releasing the lease, a missed message picked up after a
reconnect) is not repeated here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import test_broadcast  # tests/ is on sys.path
from test_broadcast_async import until

from statekit.broadcast import Broadcaster, SharedValue, state_key
from statekit.broadcast import hub as _hub
from statekit.broadcast.aio import AsyncBroadcaster
from statekit.errors import BroadcastError
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis

# test_broadcast's fixtures: a prefix per test, broadcasters stopped at the end
prefix, broadcasters = test_broadcast.prefix, test_broadcast.broadcasters


class Gated:
    """A backend whose first call of *method* stops at a gate: ``entered`` is set
    when the call arrives, and it goes on (to the real backend) once ``go`` is set.
    Every other call goes straight through."""

    event: Any = threading.Event

    def __init__(self, backend: Any, method: str) -> None:
        self._backend = backend
        self._method = method
        self.entered = self.event()
        self.go = self.event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._backend, name)
        return self._gated(real) if name == self._method else real

    def _gated(self, real: Any) -> Any:
        def gated(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                assert self.go.wait(10)
            return real(*args, **kwargs)

        return gated


# -- one process, two computations of one job ------------------------------------------
def test_a_timed_out_computation_paused_before_its_publish_never_overwrites_the_next_slot(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    """The leader keeps its lease and token from slot to slot. A computation that
    returned within its timeout, then paused (GC) before its publish reached Redis,
    is timed out by the scheduler, which starts the next slot's computation under
    the same lease; that one publishes; then the paused one resumes. Its publish
    must be refused: it carries the value of an older slot."""
    b = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(b)
    values = iter(["slot 1", "slot 2"])
    b.every(1, name="job", lease=30, timeout=1)(lambda: next(values))
    gate = Gated(b.backend, "publish")
    b._backend = gate  # type: ignore[assignment]
    t0 = time.time()
    b.run_pending(t0)  # claims slot 1, its computation stops at its publish
    assert gate.entered.wait(10)
    b.run_pending(t0 + 3)  # slot 1's run timed out: slot 2 is claimed and computed
    wait_for(lambda: b.counters.get("publishes") == 1, what="slot 2 published")
    assert b.retained("job") == (1, "slot 2")
    gate.go.set()  # the paused computation of slot 1 resumes
    wait_for(lambda: b.jobs["job"].running == 0, what="slot 1's run over")
    assert b.retained("job") == (1, "slot 2")
    assert b.counters.get("stale_tokens") == 1


@pytest.mark.parametrize("url", ["redis", "memory"])
def test_after_redis_lost_its_data_an_old_leaders_publish_is_refused(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster], url: str
) -> None:
    """Redis restarts without persistence while the leader (token 1, the first
    ever) is paused before its publish. The fencing counter starts over, another
    process claims the job, gets token 1 as well, computes and publishes. When the
    old leader resumes, its publish carries the older slot's value and must be
    refused, not accepted because the counter came back to the same number."""
    if url == "memory":
        redis_url = f"memory://{prefix}"
    old = Broadcaster(redis_url, key_prefix=prefix)
    new = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters += [old, new]
    old.every(1, name="job", lease=30)(lambda: "old leader")
    new.every(1, name="job", lease=30)(lambda: "new leader")
    gate = Gated(old.backend, "publish")
    old._backend = gate  # type: ignore[assignment]
    t0 = time.time()
    old.run_pending(t0)
    assert gate.entered.wait(10)
    client = new.backend.client  # type: ignore[attr-defined]
    client.delete(*(state_key(prefix, "job") + s for s in ("", ":lease", ":fence")))  # data lost
    new.run_pending(t0 + 1)
    wait_for(lambda: new.counters.get("publishes") == 1, what="the new leader published")
    gate.go.set()
    wait_for(lambda: old.jobs["job"].running == 0, what="the old leader's run over")
    assert new.retained("job") == (1, "new leader")
    assert old.counters.get("stale_tokens") == 1


# -- subscribers ----------------------------------------------------------------------
def test_a_retained_read_overtaken_by_a_refresh_does_not_take_the_copy_back(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    """The subscriber re-reads the retained value (it has just subscribed) and is
    paused after the read. Meanwhile a publish lands and a request thread's
    refresh() shows it. The subscriber's older read must not then replace the
    newer copy (the retained read is taken even when older only because the
    backend may have gone back in time): readers and on_change callbacks would see
    the version go 2, 1, 2."""
    publisher = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(publisher)
    publisher.publish("value", "first")
    sv: SharedValue[str] = SharedValue("value", url=redis_url, key_prefix=prefix)
    hub = _hub.get_hub(sv._hub_key, sv._prefix, sv._backend)
    read, read_done, go = hub.read, threading.Event(), threading.Event()

    def gated_read(names: Any) -> Any:
        records = read(names)
        if threading.current_thread() is hub._thread and not go.is_set():
            read_done.set()  # the subscriber's re-read is done; it offers it when let go
            assert go.wait(10)
        return records

    hub.read = gated_read  # type: ignore[method-assign]
    seen: list[int] = []
    try:
        sv.on_change(lambda _value, version: seen.append(version))  # loads: version 1
        assert read_done.wait(10)
        publisher.publish("value", "second")
        assert sv.refresh() == "second"
        go.set()
        wait_for(lambda: hub.counters.get("messages") >= 1, what="the publish's message handled")
        assert (sv.get(), sv.version) == ("second", 2)
        assert all(version >= 2 for version in seen), seen  # never back to 1 once it showed 2
    finally:
        go.set()
        hub.stop()


def test_a_refresh_that_read_before_redis_lost_its_data_does_not_bring_the_lost_value_back(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    """A request thread's refresh() reads version 2, then pauses. Redis loses its
    data, a new publish starts a new epoch and the subscriber shows it. The
    paused refresh's record (the old epoch: another epoch is always taken) must
    not replace it: the copy would show a value Redis no longer has until the next
    publish or check."""
    publisher = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(publisher)
    publisher.publish("value", "first")
    sv: SharedValue[str] = SharedValue("value", url=redis_url, key_prefix=prefix)
    assert sv.get() == "first"
    hub = sv._hub
    assert hub is not None
    read, read_done, go = hub.read, threading.Event(), threading.Event()
    try:
        wait_for(hub.connected.is_set, what="subscribed")
        publisher.publish("value", "second")
        wait_for(lambda: sv.version == 2, what="version 2 shown")

        def gated_read(names: Any) -> Any:
            records = read(names)
            if threading.current_thread().name == "refresh":
                read_done.set()
                assert go.wait(10)
            return records

        hub.read = gated_read  # type: ignore[method-assign]
        refresh = threading.Thread(target=sv.refresh, name="refresh")
        refresh.start()
        assert read_done.wait(10)
        publisher.backend.client.delete(state_key(prefix, "value"))  # type: ignore[attr-defined]
        publisher.publish("value", "after the loss")
        wait_for(lambda: sv.get() == "after the loss", what="the new epoch shown")
        go.set()
        refresh.join(10)
        assert not refresh.is_alive()
        assert (sv.get(), sv.version) == ("after the loss", 1)
    finally:
        go.set()
        hub.stop()


def test_a_value_older_code_published_is_never_served_and_not_fetched_again_and_again(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster], caplog: pytest.LogCaptureFixture
) -> None:
    """A process of another code version publishes a payload this worker's codec
    cannot decode. The worker keeps its last good value (no exception, no garbage,
    no callback), takes the next good publish, and its periodic check does not
    count that version as a missed message and fetch and log it again every
    CHECK_EVERY seconds for as long as it stays retained."""
    publisher = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(publisher)
    publisher.publish("value", "good")
    sv: SharedValue[str] = SharedValue("value", url=redis_url, key_prefix=prefix)
    assert sv.get() == "good"  # loaded, and the hub started
    hub = sv._hub
    assert hub is not None
    seen: list[int] = []
    try:
        wait_for(hub.connected.is_set, what="subscribed")
        # registered once the first value is in: the subscriber's first check may
        # still tell a callback of version 1 (it saw [1, 3] under load); count after it
        wait_for(lambda: sv.version == 1, what="the first value")
        sv.on_change(lambda _value, version: seen.append(version))
        messages = hub.counters.get("messages")
        publisher.backend.publish("value", b"\x80 not JSON", token=None, now_ms=int(time.time() * 1000))
        wait_for(lambda: hub.counters.get("messages") > messages, what="the message handled")
        assert (sv.get(), sv.version) == ("good", 1)
        logged = sum("not decodable" in r.getMessage() for r in caplog.records)
        assert logged >= 1
        missed = hub.counters.get("missed")
        hub.check()
        hub.check()
        assert hub.counters.get("missed") == missed
        assert sum("not decodable" in r.getMessage() for r in caplog.records) == logged
        publisher.publish("value", "good again")
        wait_for(lambda: sv.get() == "good again", what="the next good publish")
        assert sv.version == 3
        assert seen == [3]
    finally:
        hub.stop()


# -- asyncio: stop and cancellation --------------------------------------------------
class AsyncGated(Gated):
    """:class:`Gated` for an asyncio backend (the events are asyncio's)."""

    event = asyncio.Event

    def _gated(self, real: Any) -> Any:
        async def gated(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                await self.go.wait()
            return await real(*args, **kwargs)

        return gated


def _gate(broadcaster: AsyncBroadcaster, method: str) -> AsyncGated:
    """Put a gate on *broadcaster*'s backend for the running loop."""
    gate = AsyncGated(broadcaster.backend, method)
    broadcaster._backends.current = lambda: gate  # type: ignore[method-assign]
    return gate


def test_async_stop_while_a_claim_is_in_flight_leaves_no_computation_running(
    redis_url: str, prefix: str
) -> None:
    """stop() is called while the scheduler waits for its claim; the claim then
    says "compute". The computation it starts must be awaited (or cancelled) by
    stop() like any other: none may still run after stop() returned, on a backend
    whose connections stop() already gave back."""
    started = asyncio.Event()

    async def main() -> tuple[list[str], int]:
        b = AsyncBroadcaster(redis_url, key_prefix=prefix)

        @b.every(1, name="job", lease=30)
        async def job() -> str:
            started.set()
            await asyncio.Event().wait()  # a computation that never ends by itself
            return "never"

        gate = _gate(b, "claim")
        b.start()
        await until(gate.entered.is_set, "the claim at its gate")
        stopping = asyncio.create_task(b.stop(timeout=0.5))
        await asyncio.sleep(0)  # stop() has begun: it waits for the scheduler task
        gate.go.set()
        await until(started.is_set, "the claim's computation started")
        await stopping
        left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("statekit-broadcast")]
        return left, b.counters.get("publishes")

    left, publishes = asyncio.run(main())
    assert left == []
    assert publishes == 0


class Refusing(AsyncGated):
    """:class:`AsyncGated` whose *method* raises :class:`BroadcastError` (a reply
    error: an ACL that forbids the script, a key of the wrong type)."""

    def _gated(self, real: Any) -> Any:
        async def refused(*args: Any, **kwargs: Any) -> Any:
            raise BroadcastError("refused by the test")

        return refused


def test_async_stop_whose_release_fails_still_ends_the_running_computations(
    redis_url: str, prefix: str
) -> None:
    """The lease's release fails with something else than an outage (a reply
    error): stop() raises it, but only after it did the rest of its work (the
    running computations awaited or cancelled, the connections given back)."""
    started = asyncio.Event()

    async def main() -> list[str]:
        b = AsyncBroadcaster(redis_url, key_prefix=prefix)

        @b.every(1, name="job", lease=30)
        async def job() -> str:
            started.set()
            await asyncio.Event().wait()
            return "never"

        b.start()
        await until(started.is_set, "the computation started")
        backend = b.backend
        b._backends.current = lambda: Refusing(backend, "release")  # type: ignore[method-assign]
        with pytest.raises(BroadcastError):
            await b.stop(timeout=0.2)
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("statekit-broadcast")]

    assert asyncio.run(main()) == []


class AppliedThenGated(AsyncGated):
    """:class:`AsyncGated` whose first call reaches the backend (it is applied)
    and then stops before its reply is handed back: a reply in flight."""

    def _gated(self, real: Any) -> Any:
        async def gated(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            result = await real(*args, **kwargs)
            if self.calls == 1:
                self.entered.set()
                await self.go.wait()
            return result

        return gated


@pytest.mark.parametrize(("method", "leading"), [("claim", False), ("claim", True), ("renew", True)],
                         ids=["first-claim", "leader's-next-claim", "leader's-renewal"])
def test_async_scheduler_cancelled_while_a_lease_calls_reply_is_in_flight_releases_the_lease(
    redis_url: str, prefix: str, method: str, leading: bool
) -> None:
    """The scheduler task is cancelled (a task group closing, a lifespan cancelling
    it) while a claim or renewal the server applied has not answered yet: stop()
    must still release the lease, so another process leads at once, as documented."""

    async def main() -> int:
        first = AsyncBroadcaster(redis_url, key_prefix=prefix)
        second = AsyncBroadcaster(redis_url, key_prefix=prefix)
        # a claim every 0.2 s; or one claim, then a renewal every 0.1 s
        interval, lease = (0.2, 30) if method == "claim" else (60, 0.3)
        for b in (first, second):
            b.every(interval, name="job", lease=lease)(_one)
        if leading:  # it already leads: its next call of *method* is cut
            task = first.start()
            await until(lambda: first.counters.get("publishes"), "the first leader's publish")
            gate = _gate_applied(first, method)
        else:
            gate = _gate_applied(first, method)
            task = first.start()
        await until(gate.entered.is_set, f"the {method} at its gate")
        task.cancel()
        await asyncio.wait({task})
        await first.stop()
        await second.run_pending()
        await second.stop()
        return second.counters.get("leader_acquired")

    assert asyncio.run(main()) == 1


def _gate_applied(broadcaster: AsyncBroadcaster, method: str) -> AppliedThenGated:
    gate = AppliedThenGated(broadcaster.backend, method)
    broadcaster._backends.current = lambda: gate  # type: ignore[method-assign]
    return gate


async def _one() -> int:
    return 1
