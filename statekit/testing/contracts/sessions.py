"""The session-engine contract suite, shipped: every session engine passes it.

A backend's test module subclasses :class:`SessionEngineContract` and provides the
``session_url`` fixture: a URL of the backend (found by its scheme, built in or
registered in the entry-point group ``statekit.sessions``) whose store is empty. An
engine that can be unreachable also provides ``unreachable_session_url`` (a URL
that cannot be reached, with short timeouts), else the outage tests are skipped::

    import pytest
    from statekit.testing.contracts.sessions import SessionEngineContract

    class TestSQLiteSessions(SessionEngineContract):
        @pytest.fixture
        def session_url(self, tmp_path) -> str:
            return f"sqlite://{tmp_path}/sessions.db"

The tests go through :class:`~statekit.sessions.SessionStore`, as users do, and the
engine's typed results (:class:`~statekit.sessions.protocol.Result`). They cover
load and save with the per-key merge of concurrent requests, atomic increments,
rotation (the tombstone alias: requests in flight follow it, loads never do),
destroy, the per-user index (``list_user_sessions``, ``revoke_user`` of more
sessions than one batch, ``revoke_session``), the carry-over claims, and outages as
:class:`~statekit.errors.BackendUnavailable`. No test asserts a duration.
statekit runs it on ``memory://``, on ``redis://`` of every server line found, and
on Redis Cluster.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ...errors import BackendUnavailable, SessionError
from ...pytest_plugin import run_threads, wait_for
from ...sessions import Session, SessionStore
from ...sessions.protocol import Status

__all__ = ["SessionEngineContract", "StoreFactory"]

StoreFactory = Callable[..., SessionStore]
KEYS = ["contract-key-0123456789"]


class SessionEngineContract:
    """The session-engine contract suite (see the module docstring)."""

    @pytest.fixture
    def session_url(self) -> str:
        raise NotImplementedError("a SessionEngineContract subclass provides the session_url fixture")

    @pytest.fixture
    def unreachable_session_url(self) -> str:
        pytest.skip("this backend gave no unreachable_session_url: no outage tests")

    @pytest.fixture
    def make_store(self, session_url: str) -> Iterator[StoreFactory]:
        """Stores on the backend under test (each with its own engine), closed after the test."""
        made: list[SessionStore] = []

        def make(**kw: Any) -> SessionStore:
            kw.setdefault("secret_keys", KEYS)
            store = SessionStore(session_url, **kw)
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> SessionStore:
        return make_store(alias_window=30)

    @staticmethod
    def reopen(store: SessionStore, session: Session) -> Session:
        loaded = store.open(store.sign(session.sid))
        assert not loaded.new, "the session was stored and must load"
        return loaded

    # -- load and save ----------------------------------------------------------------

    def test_round_trip_of_tagged_values(self, store: SessionStore) -> None:
        s = store.new()
        value = {"when": dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), "raw": b"\x00\x01",
                 "pair": (1, 2), "tags": {"a"}, "none": None}
        s["v"] = value
        s["n"] = 3
        assert store.save(s) and not s.new and s.send_cookie
        assert self.reopen(store, s) == {"v": value, "n": 3}

    def test_empty_new_session_is_not_stored(self, store: SessionStore) -> None:
        s = store.new()
        assert store.save(s)
        assert store.load(s.sid) is None

    def test_unknown_id_gives_a_fresh_session(self, store: SessionStore) -> None:
        ghost = store.new()
        opened = store.open(store.sign(ghost.sid))
        assert opened.new and opened.sid != ghost.sid and opened == {}

    def test_saves_write_only_changes_and_merge_per_key(self, store: SessionStore) -> None:
        s = store.create({"base": 0, "k": 0, "other": "x"})
        a, b = self.reopen(store, s), self.reopen(store, s)
        a["a"] = 1
        a["k"] = "from-a"
        b["b"] = 2
        b["k"] = "from-b"
        del b["base"]
        assert store.save(a) and store.save(b)
        assert self.reopen(store, s) == {"a": 1, "b": 2, "k": "from-b", "other": "x"}

    def test_concurrent_requests_lose_no_key(self, store: SessionStore) -> None:
        """4 threads, each a request loop writing its own key 25 times on one session:
        every key ends at its last value (the writes of different keys merge)."""
        s = store.create({"shared": "kept"})
        rounds = 25

        def request_loop(i: int) -> None:
            for j in range(rounds):
                mine = self.reopen(store, s)
                mine[f"k{i}"] = j + 1
                assert store.save(mine)

        run_threads(request_loop, 4)
        final = self.reopen(store, s)
        assert final == {"shared": "kept", **{f"k{i}": rounds for i in range(4)}}
        assert final.version >= 1 + 4 * rounds

    def test_versions_grow_with_every_write(self, store: SessionStore) -> None:
        s = store.create({"a": 1})
        first = s.version
        s["a"] = 2
        assert store.save(s) and s.version > first
        assert self.reopen(store, s).version == s.version

    def test_huge_session(self, store: SessionStore) -> None:
        data = {f"k{i}": i for i in range(6000)}
        s = store.create(data)
        assert self.reopen(store, s) == data
        s2 = self.reopen(store, s)
        s2.clear()
        assert store.save(s2)
        assert store.load(s.sid) == {}

    def test_a_retried_create_is_not_a_collision(self, store: SessionStore) -> None:
        handle = store._handle(store.new().sid)
        sets = {"m:c": b"1700000000.5", "m:s": b"1700000000.5", "d:a": b"1"}

        def create(fields: dict[str, bytes]) -> Status:
            result = store.engine.write(handle, create=True, sets=fields, dels=[], ttl_ms=60_000, index=None)
            return result.status

        assert create(sets) is Status.DONE
        assert create(sets) is Status.DONE  # the same create again (its reply was lost)
        assert create(dict(sets, **{"m:c": b"1700000001.5"})) is Status.EXISTS

    def test_a_write_to_a_missing_session_changes_nothing(self, store: SessionStore) -> None:
        handle = store._handle(store.new().sid)
        result = store.engine.write(handle, create=False, sets={"d:a": b"1"}, dels=[], ttl_ms=60_000,
                                    index=None)
        assert result.status is Status.GONE
        assert dict(store.engine.load(handle)) == {}

    # -- increments -------------------------------------------------------------------

    def test_incr_is_atomic_under_threads(self, store: SessionStore) -> None:
        s = store.create({})

        def work(_: int) -> None:
            mine = self.reopen(store, s)
            for _ in range(25):
                mine.incr("hits")

        run_threads(work, 4)
        assert self.reopen(store, s)["hits"] == 100

    def test_incr_keeps_this_requests_own_change_of_the_key(self, store: SessionStore) -> None:
        s = store.create({"n": 1, "m": 5, "other": "x"})
        s2 = self.reopen(store, s)
        s2["n"] = 10
        assert s2.incr("n") == 11
        del s2["m"]
        assert s2.incr("m") == 1
        assert store.save(s2)
        assert self.reopen(store, s) == {"n": 11, "m": 1, "other": "x"}

    def test_incr_of_a_new_session_stores_it(self, store: SessionStore) -> None:
        s = store.new()
        assert s.incr("n", 5) == 5
        other = self.reopen(store, s)
        other.incr("n")
        s["x"] = 1
        assert store.save(s)
        assert self.reopen(store, s) == {"n": 6, "x": 1}

    def test_incr_is_exact_to_64_bits_with_json(self, make_store: StoreFactory) -> None:
        store = make_store()
        s = store.create({"n": 2**53, "top": 2**63 - 2})
        assert s.incr("n") == 2**53 + 1 and self.reopen(store, s)["n"] == 2**53 + 1
        assert s.incr("top") == 2**63 - 1
        with pytest.raises(SessionError):
            s.incr("top")
        assert self.reopen(store, s)["top"] == 2**63 - 1

    def test_incr_with_msgpack_refuses_what_a_double_would_round(self, make_store: StoreFactory) -> None:
        store = make_store(codec="msgpack")
        s = store.create({"n": 2**53 - 2, "neg": -300, "small": 0})
        assert s.incr("n") == 2**53 - 1
        with pytest.raises(SessionError):
            s.incr("n")
        assert s.incr("neg", -70_000) == -70_300 and s.incr("small", 2**40) == 2**40
        assert self.reopen(store, s) == {"n": 2**53 - 1, "neg": -70_300, "small": 2**40}

    @pytest.mark.parametrize("codec", ["json", "msgpack"])
    def test_incr_refuses_what_is_no_integer(self, make_store: StoreFactory, codec: str) -> None:
        store = make_store(codec=codec)
        s = store.create({"f": 1.5, "whole": 2.0, "b": True, "s": "bob"})
        for key in ("f", "whole", "b", "s"):
            with pytest.raises(SessionError):
                s.incr(key)
        assert self.reopen(store, s) == {"f": 1.5, "whole": 2.0, "b": True, "s": "bob"}

    # -- destroy and rotate -----------------------------------------------------------

    def test_a_destroyed_session_is_not_written_back(self, store: SessionStore) -> None:
        s = store.create({"a": 1})
        inflight = self.reopen(store, s)
        store.destroy(s)
        inflight["a"] = 2
        assert store.save(inflight) is False
        with pytest.raises(SessionError):
            inflight.incr("n")
        assert store.load(s.sid) is None

    def test_rotation_leaves_a_tombstone_alias(self, make_store: StoreFactory) -> None:
        """Requests in flight (loaded before the rotation) write into the new
        session; a load with the old id gets a fresh, empty session (no fixation)."""
        store = make_store(alias_window=30)
        s = store.create({"cart": ["apple"]})
        old_sid = s.sid
        inflight = self.reopen(store, s)
        store.rotate(s)
        assert s.rotated and s.send_cookie and s.sid != old_sid and s.sid[:4] == old_sid[:4]
        s["user"] = "alice"
        assert store.save(s)
        late = store.open(store.sign(old_sid))
        assert late.new and late.superseded and late == {} and late.sid != old_sid
        assert store.load(old_sid) is None
        inflight["inflight"] = 2
        assert store.save(inflight) and inflight.through_alias
        assert inflight.incr("hits") == 1
        assert store.load(s.sid) == {"cart": ["apple"], "user": "alice", "inflight": 2, "hits": 1}
        assert store.load(old_sid) is None  # the in-flight writes did not bring the old id back

    def test_the_alias_expires(self, make_store: StoreFactory) -> None:
        store = make_store(alias_window=0.2)
        s = store.create({"a": 1})
        old_sid = s.sid
        inflight = self.reopen(store, s)
        store.rotate(s)
        alias = store._handle(old_sid)
        wait_for(lambda: not store.engine.load(alias), timeout=30, what="the alias to expire")
        inflight["b"] = 2
        assert store.save(inflight) is False  # the alias is gone: nothing to follow
        assert store.load(s.sid) == {"a": 1}

    def test_double_rotation_is_followed(self, store: SessionStore) -> None:
        s = store.create({"a": 1})
        first = s.sid
        inflight = self.reopen(store, s)
        store.rotate(s)
        middle = s.sid
        store.rotate(s)
        assert store.open(store.sign(first)).new and store.open(store.sign(middle)).new
        inflight["b"] = 2
        assert store.save(inflight)
        assert store.load(s.sid) == {"a": 1, "b": 2}

    def test_an_inflight_rotation_never_takes_over_the_rotated_one(self, store: SessionStore) -> None:
        planted = store.create({"theme": "dark"})
        attacker = self.reopen(store, planted)  # in flight at the victim's login
        victim = self.reopen(store, planted)
        store.rotate(victim)
        victim.user_id = "victim"
        victim["secret"] = "victim's"  # noqa: S105 - data, not a password
        assert store.save(victim)
        store.rotate(attacker)
        assert attacker == {"theme": "dark"} and attacker.user_id is None and attacker.new
        assert store.save(attacker)
        assert store.load(attacker.sid) == {"theme": "dark"}
        mine = store.load(victim.sid)
        assert mine == {"theme": "dark", "secret": "victim's"} and mine.user_id == "victim"
        assert [i.handle for i in store.list_user_sessions("victim")] == [store._handle(victim.sid)]

    def test_rotating_a_revoked_session_does_not_revive_it(self, store: SessionStore) -> None:
        s = store.create({"secret": 1}, user_id="u1")
        stale = self.reopen(store, s)
        inflight = self.reopen(store, s)
        store.rotate(s)
        assert store.revoke_user("u1") == 1
        for request in (stale, inflight):
            store.rotate(request)
            assert request.new and request == {}
            store.save(request)
            assert store.load(request.sid) is None
        assert store.load(s.sid) is None

    def test_destroy_by_a_request_loaded_before_a_rotation(self, store: SessionStore) -> None:
        s = store.create({"a": 1}, user_id="dr")
        inflight = self.reopen(store, s)
        store.rotate(s)
        store.destroy(inflight)
        assert store.load(s.sid) is None
        assert store.list_user_sessions("dr") == []

    # -- the per-user index -----------------------------------------------------------

    def test_list_and_revoke_a_users_sessions(self, store: SessionStore) -> None:
        mine = [store.create({"i": i}, user_id="alice") for i in range(3)]
        other = store.create({"i": 9}, user_id="bob")
        listed = store.list_user_sessions("alice")
        assert sorted(i.handle for i in listed) == sorted(store._handle(s.sid) for s in mine)
        assert all(i.user_id == "alice" and i.created > 0 for i in listed)
        inflight = self.reopen(store, mine[1])
        assert store.revoke_user("alice", except_session=mine[0]) == 2
        assert store.load(mine[0].sid) == {"i": 0}
        assert store.load(mine[1].sid) is None and store.load(mine[2].sid) is None
        inflight["again"] = True
        assert store.save(inflight) is False
        assert [i.handle for i in store.list_user_sessions("alice")] == [store._handle(mine[0].sid)]
        assert store.load(other.sid) == {"i": 9}

    def test_revoke_user_of_many_sessions(self, store: SessionStore) -> None:
        """More sessions than any engine's batch: every one of them goes."""
        sessions = [store.create({"i": i}, user_id="many") for i in range(600)]
        keep = store._handle(sessions[7].sid)
        assert store.revoke_user("many", except_session=keep) == 599
        assert [i.handle for i in store.list_user_sessions("many")] == [keep]
        assert store.load(sessions[0].sid) is None and store.load(sessions[-1].sid) is None
        assert store.load(sessions[7].sid) == {"i": 7}

    def test_sessions_created_while_revoking_are_revoked(self, store: SessionStore) -> None:
        """A thread keeps logging the user in while revoke_user runs: whatever was
        created before revoke_user returned is gone, or was created after its end
        (then listed): no session of the user survives unlisted or half-revoked."""
        for i in range(300):
            store.create({"i": i}, user_id="busy")
        stop = threading.Event()
        created: list[Session] = []

        def login(_: int) -> None:
            while not stop.is_set() and len(created) < 2000:
                created.append(store.create({"late": True}, user_id="busy"))

        thread = threading.Thread(target=login, args=(0,))
        thread.start()
        try:
            store.revoke_user("busy")
        finally:
            stop.set()
            thread.join(30)
        listed = {i.handle for i in store.list_user_sessions("busy")}
        for s in created:
            assert (store.load(s.sid) is not None) == (store._handle(s.sid) in listed)
        assert store.revoke_user("busy") == len(listed)
        assert store.list_user_sessions("busy") == []

    def test_user_key_drives_the_index_and_rotation_keeps_it(self, make_store: StoreFactory) -> None:
        store = make_store(user_key="_user_id")
        s = store.create({"cart": 1})
        s["_user_id"] = 42
        store.rotate(s)
        store.save(s)
        [info] = store.list_user_sessions("42")
        assert info.handle == store._handle(s.sid) and info.user_id == "42"
        s.pop("_user_id")
        store.save(s)
        assert store.list_user_sessions("42") == []

    def test_revoke_one_session_by_handle(self, store: SessionStore) -> None:
        a = store.create({}, user_id="u")
        b = store.create({}, user_id="u")
        store.revoke_session(store._handle(a.sid), "u")
        assert store.load(a.sid) is None and store.load(b.sid) is not None
        assert [i.handle for i in store.list_user_sessions("u")] == [store._handle(b.sid)]

    # -- carry-over claims ------------------------------------------------------------

    def test_exactly_one_claim_wins(self, store: SessionStore) -> None:
        name = f"contract-claim-{uuid.uuid4().hex}"
        assert store.engine.peek(name) is None
        results: list[bytes | None] = [b"unset"] * 4

        def claim(i: int) -> None:
            results[i] = store.engine.claim(name, f"v{i}".encode(), 60_000)

        run_threads(claim, 4)
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1
        won = f"v{winners[0]}".encode()
        assert all(r == won for r in results if r is not None)
        assert store.engine.peek(name) == won

    # -- outages ----------------------------------------------------------------------

    def test_an_outage_is_backend_unavailable(self, unreachable_session_url: str) -> None:
        store = SessionStore(unreachable_session_url, secret_keys=KEYS)
        try:
            cookie = store.sign(store.new().sid)
            with pytest.raises(BackendUnavailable):
                store.open(cookie)
            s = store.new()
            s["a"] = 1
            with pytest.raises(BackendUnavailable):
                store.save(s)
            with pytest.raises(BackendUnavailable):
                store.revoke_user("u")
            with pytest.raises(BackendUnavailable):
                store.list_user_sessions("u")
            assert store.open(None).new  # no cookie: no backend needed
        finally:
            store.close()

    def test_an_outage_with_the_anonymous_policy_is_read_only(self, unreachable_session_url: str) -> None:
        store = SessionStore(unreachable_session_url, secret_keys=KEYS, outage_policy="anonymous")
        try:
            sid = store.new().sid
            s = store.open(store.sign(sid))
            assert s.unavailable and s == {} and s.sid == sid
            with pytest.raises(BackendUnavailable):
                s["a"] = 1
            with pytest.raises(BackendUnavailable):
                store.rotate(s)
            assert store.save(s) is False
        finally:
            store.close()
