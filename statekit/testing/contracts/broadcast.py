"""The broadcast contract: what every backend of :mod:`statekit.broadcast` must do.

A backend's test module subclasses :class:`BroadcastContract` and provides the
``broadcast_url`` fixture (a URL of the backend, found by its scheme, with an empty
store); a backend that can be made unreachable also provides ``broadcast_outage``
(an :class:`Outage`), else the outage tests are skipped::

    from statekit.testing.contracts.broadcast import BroadcastContract

    class TestMyBackend(BroadcastContract):
        @pytest.fixture
        def broadcast_url(self, my_server) -> str:
            return f"mybackend://{my_server.address}"

The tests go through the public façade (:class:`~statekit.broadcast.Broadcaster`,
:class:`~statekit.broadcast.SharedValue`) and the backend's typed results
(:class:`~statekit.broadcast.protocol.BroadcastBackend`). Asynchronous outcomes are
awaited with :func:`~statekit.pytest_plugin.wait_for`; no test asserts a duration.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from ...broadcast import Broadcaster, SharedValue, current_run
from ...broadcast.protocol import ClaimStatus
from ...errors import BackendUnavailable, StaleToken
from ...pytest_plugin import wait_for

__all__ = ["BroadcastContract", "Outage"]


class Outage(Protocol):
    """Makes the backend of ``broadcast_url`` unreachable and brings it back, with
    its data (a paused or restarted server)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


class BroadcastContract:
    """The broadcast contract suite (see the module docstring)."""

    @pytest.fixture
    def broadcast_url(self) -> str:
        raise NotImplementedError("a BroadcastContract subclass provides the broadcast_url fixture")

    @pytest.fixture
    def broadcast_outage(self) -> Outage | None:
        return None

    @pytest.fixture
    def prefix(self) -> str:
        # hubs (one per process, backend and prefix) outlive a test: a prefix each
        return "c" + uuid.uuid4().hex[:12]

    @pytest.fixture
    def broadcasters(self) -> Iterator[list[Broadcaster]]:
        made: list[Broadcaster] = []
        yield made
        for b in made:
            b.stop(5)

    @pytest.fixture
    def outage(self, broadcast_outage: Outage | None) -> Iterator[Outage]:
        if broadcast_outage is None:
            pytest.skip("this backend provides no broadcast_outage fixture")
        yield broadcast_outage
        broadcast_outage.end()  # whatever the test did

    # -- the backend's atomic operations ------------------------------------------
    def test_claim_renew_release_give_typed_results(self, broadcast_url: str, prefix: str) -> None:
        backend = Broadcaster(broadcast_url, key_prefix=prefix).backend
        first = backend.claim("job", "a", 10_000, 5)
        assert first.status is ClaimStatus.COMPUTE
        assert backend.claim("job", "a", 10_000, 5).status is ClaimStatus.LEADER  # slot taken
        assert backend.claim("job", "a", 10_000, 4).status is ClaimStatus.LEADER  # older slot
        held = backend.claim("job", "b", 10_000, 6)
        assert held.status is ClaimStatus.HELD and held.token == first.token
        assert 0 < held.lease_left_ms <= 10_000
        assert backend.renew("job", "a", first.token, 10_000)
        assert not backend.renew("job", "b", first.token, 10_000)
        assert not backend.release("job", "b", first.token)
        assert backend.release("job", "a", first.token)
        assert not backend.release("job", "a", first.token)
        second = backend.claim("job", "b", 10_000, 6)
        assert second.status is ClaimStatus.COMPUTE and second.token > first.token
        assert backend.claim("job", "b", 10_000, -1).status is ClaimStatus.LEADER  # lease only

    def test_every_slot_claimed_gets_a_new_token(self, broadcast_url: str, prefix: str) -> None:
        """A leader that claims the next slot gets a new fencing token although it held
        the lease: the previous slot's computation, paused past its timeout, then
        publishes with a stale token and is refused (it never overwrites the newer
        slot's value). A renewal and a lease-only claim keep the token."""
        b = Broadcaster(broadcast_url, key_prefix=prefix)
        backend = b.backend
        first = backend.claim("slots", b.owner, 10_000, 5)
        assert first.status is ClaimStatus.COMPUTE
        assert backend.renew("slots", b.owner, first.token, 10_000)
        assert backend.claim("slots", b.owner, 10_000, -1).token == first.token
        second = backend.claim("slots", b.owner, 10_000, 6)
        assert second.status is ClaimStatus.COMPUTE and second.token > first.token
        assert b.publish("slots", "slot 6", token=second.token) == 1
        with pytest.raises(StaleToken):
            b.publish("slots", "slot 5, late", token=first.token)
        assert b.retained("slots") == (1, "slot 6")

    def test_stale_token_is_refused_and_changes_nothing(self, broadcast_url: str, prefix: str) -> None:
        old = Broadcaster(broadcast_url, key_prefix=prefix)
        new = Broadcaster(broadcast_url, key_prefix=prefix)
        token = old.backend.claim("fenced", old.owner, 10_000, -1).token
        assert old.publish("fenced", "first", token=token) == 1
        old.backend.release("fenced", old.owner, token)
        current = new.backend.claim("fenced", new.owner, 10_000, -1).token
        assert current > token
        with pytest.raises(StaleToken):
            old.publish("fenced", "stale", token=token)
        assert new.retained("fenced") == (1, "first")
        assert new.publish("fenced", "current", token=current) == 2
        assert old.retained("fenced") == (2, "current")
        assert old.publish("fenced", "unfenced") == 3

    def test_paused_leader_publish_is_refused(
        self, broadcast_url: str, prefix: str, broadcasters: list[Broadcaster]
    ) -> None:
        release = threading.Event()
        started = threading.Event()
        old = Broadcaster(broadcast_url, key_prefix=prefix)
        new = Broadcaster(broadcast_url, key_prefix=prefix)
        broadcasters += [old, new]

        def slow() -> str:
            started.set()
            release.wait(10)
            return "old"

        old.every(0.1, name="job", lease=0.2, timeout=30)(slow)
        new.every(0.1, name="job", lease=0.2, timeout=30)(lambda: "new")
        old.run_pending()  # claims and starts computing; then "pauses": no renewals
        assert started.wait(5)
        wait_for(lambda: new.run_pending() and new.retained("job") is not None, what="new leader publishes")
        release.set()
        wait_for(lambda: old.counters.get("stale_tokens") == 1, what="old publish refused")
        # The polling above may start the new leader's job more than once (a new slot
        # every 0.1 s): once its last run is over, every version is one of its publishes.
        wait_for(lambda: new.jobs["job"].running == 0, what="new leader's run over")
        retained = new.retained("job")
        assert retained is not None
        version, value = retained
        assert value == "new"
        assert version == new.counters.get("publishes") >= 1
        assert old.counters.get("publishes") == 0

    # -- one computation per slot --------------------------------------------------
    def test_one_computation_per_slot_across_broadcasters(
        self, broadcast_url: str, prefix: str, broadcasters: list[Broadcaster]
    ) -> None:
        slots: list[tuple[int, int]] = []
        lock = threading.Lock()
        for i in range(3):
            b = Broadcaster(broadcast_url, key_prefix=prefix)
            broadcasters.append(b)

            def compute(i: int = i) -> int:
                run = current_run()
                assert run is not None
                with lock:
                    slots.append((run.slot, i))
                    return len(slots)

            b.every(0.2, name="tick", lease=1.0)(compute)
        sv = SharedValue("tick", default=0, url=broadcast_url, key_prefix=prefix)
        for b in broadcasters:
            b.start()
            b.start()  # idempotent
        wait_for(lambda: len(slots) >= 6, what="six computations")
        for b in broadcasters:
            b.stop(5)
        assert not any(b.running for b in broadcasters)
        seen = [s for s, _ in slots]
        assert len(seen) == len(set(seen)), slots
        assert sum(b.counters.get("computes") for b in broadcasters) == len(slots)
        final = broadcasters[0].retained("tick")
        assert final is not None
        wait_for(lambda: sv.version == final[0], what="final version seen")
        assert sv.get() == final[1]
        assert current_run() is None
        # stop() released the lease: a new claim by anyone leads at once
        claim = broadcasters[0].backend.claim("tick", "someone-else", 1000, -1)
        assert claim.status is ClaimStatus.LEADER

    def test_stop_releases_the_lease_so_another_takes_over(
        self, broadcast_url: str, prefix: str, broadcasters: list[Broadcaster]
    ) -> None:
        who: list[str] = []
        a = Broadcaster(broadcast_url, key_prefix=prefix)
        c = Broadcaster(broadcast_url, key_prefix=prefix)
        broadcasters += [a, c]
        for broadcaster, label in ((a, "a"), (c, "c")):
            def compute(label: str = label) -> str:
                who.append(label)
                return label

            broadcaster.every(0.1, name="job", lease=30)(compute)
        a.start()
        wait_for(lambda: "a" in who, what="a computes")
        c.start()
        a.stop(5)
        wait_for(lambda: "c" in who, what="c takes over long before the 30 s lease expires")
        assert c.counters.get("leader_acquired") == 1

    # -- retained values and fan-out -----------------------------------------------
    def test_late_shared_value_reads_the_retained_value(self, broadcast_url: str, prefix: str) -> None:
        b = Broadcaster(broadcast_url, key_prefix=prefix)
        never: SharedValue[Any] = SharedValue(
            "users_count", default="n/a", max_age=5, url=broadcast_url, key_prefix=prefix
        )
        assert never.get() == "n/a" and never.version == 0 and never.age is None and never.is_stale
        assert b.retained("users_count") is None
        assert b.publish("users_count", 41) == 1
        assert b.publish("users_count", {"n": 42, "t": (1, 2)}) == 2
        late: SharedValue[Any] = SharedValue("users_count", default=0, url=broadcast_url, key_prefix=prefix)
        assert late.get() == {"n": 42, "t": (1, 2)}
        assert late.version == 2 and late.age is not None and not late.is_stale
        assert b.retained("users_count") == (2, {"n": 42, "t": (1, 2)})
        assert b.backend.read(["users_count", "nothing"]).keys() == {"users_count"}
        assert b.backend.versions(["users_count", "nothing"])["users_count"][1] == 2

    def test_every_read_gives_the_latest_publish(self, broadcast_url: str, prefix: str) -> None:
        """A record read once answers nothing later: each read, versions() and
        retained() give the newest publish, whoever made it (a backend keeping what it
        read shows a value going backwards)."""
        reader = Broadcaster(broadcast_url, key_prefix=prefix)
        writer = Broadcaster(broadcast_url, key_prefix=prefix)
        for n in range(1, 4):
            assert writer.publish("counter", n) == n
            assert reader.retained("counter") == (n, n)
            assert reader.backend.read(["counter"])["counter"].version == n
            assert reader.backend.versions(["counter"])["counter"][1] == n

    def test_publish_reaches_every_subscriber(self, broadcast_url: str, prefix: str) -> None:
        values: list[SharedValue[Any]] = [
            SharedValue("motd", url=broadcast_url, key_prefix=prefix) for _ in range(3)
        ]
        other: SharedValue[str] = SharedValue("other", default="o", url=broadcast_url, key_prefix=prefix)
        got: list[tuple[Any, int]] = []
        def record(value: Any, version: int) -> None:
            got.append((value, version))

        def fail(value: Any, version: int) -> None:
            raise RuntimeError("a failing callback is logged, not fatal")

        values[0].on_change(record)
        values[1].on_change(fail)
        for v in values:
            assert v.get() is None
        hub = values[0]._hub
        assert hub is not None
        wait_for(hub.connected.is_set, what="the subscriber connected")
        b = Broadcaster(broadcast_url, key_prefix=prefix)
        for i in range(1, 6):
            version = b.publish("motd", {"text": f"hello {i}"})
            assert version == i
            wait_for(lambda: all(x.version == version for x in values), what=f"version {version}")  # noqa: B023
            assert all(x.get() == {"text": f"hello {i}"} for x in values)
        wait_for(lambda: len(got) == 5, what="five callbacks")
        assert got == [({"text": f"hello {i}"}, i) for i in range(1, 6)]
        assert other.get() == "o" and other.version == 0

    # -- outages -------------------------------------------------------------------
    def test_outage_keeps_last_value_and_loses_no_update(
        self, broadcast_url: str, prefix: str, outage: Outage, broadcasters: list[Broadcaster]
    ) -> None:
        b = Broadcaster(broadcast_url, key_prefix=prefix)
        broadcasters.append(b)
        b.publish("v", "before")
        sv: SharedValue[str] = SharedValue("v", url=broadcast_url, key_prefix=prefix)
        assert sv.get() == "before"
        b.every(0.1, name="job")(lambda: "computed")
        outage.begin()
        with pytest.raises(BackendUnavailable):
            b.publish("v", "during")
        first_use: SharedValue[str] = SharedValue("w", default="d", url=broadcast_url, key_prefix=prefix)
        assert first_use.get() == "d"  # the default, not an error
        b.run_pending()  # one scheduler pass: counted, not raised
        assert b.counters.get("backend_errors") >= 1
        assert sv.get() == "before"
        outage.end()
        b.start()
        wait_for(lambda: (b.retained("job") or (0, None))[1] == "computed", what="the job runs again")
        b.publish("v", "after")
        wait_for(lambda: sv.get() == "after", what="the subscriber reconnected")
        b.publish("w", "filled")
        wait_for(lambda: first_use.get() == "filled", what="a value first used during the outage")
