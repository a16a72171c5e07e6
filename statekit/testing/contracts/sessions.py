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

An async engine (:class:`~statekit.sessions.protocol.AsyncSessionEngine`) passes
:class:`AsyncSessionEngineContract`: the same tests, each engine call run on one
background event loop, plus async-only checks; its subclass also provides the
``make_async_engine`` fixture (a callable: URL to a new async engine)::

    class TestAsyncSQLiteSessions(AsyncSessionEngineContract):
        @pytest.fixture
        def session_url(self, tmp_path) -> str:
            return f"sqlite://{tmp_path}/sessions.db"

        @pytest.fixture
        def make_async_engine(self):
            return lambda url: AsyncSQLiteEngine.from_url(url, key_prefix="statekit")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from ...errors import BackendUnavailable, SessionError
from ...pytest_plugin import run_threads, wait_for
from ...sessions import ENGINES, Session, SessionStore
from ...sessions.aio import AsyncSessionStore
from ...sessions.protocol import AsyncSessionEngine, IndexOp, NotSent, Status

__all__ = ["AsyncEngineFactory", "AsyncSessionEngineContract", "SessionEngineContract", "StoreFactory"]

StoreFactory = Callable[..., SessionStore]
#: ``make_async_engine(url)``: a new :class:`~statekit.sessions.protocol.AsyncSessionEngine` on *url*
AsyncEngineFactory = Callable[[str], Any]
KEYS = ["contract-key-0123456789"]
_T = TypeVar("_T")
#: the engine's coroutine methods the bridge runs (all of the protocol's but ``aclose``)
_ASYNC_METHODS = frozenset(name for name, f in vars(AsyncSessionEngine).items()
                           if inspect.iscoroutinefunction(f) and name != "aclose")
#: a bridged call that has not answered after this many seconds is a hung engine (a failure)
_HUNG_AFTER = 60.0


class _LosesReplies:
    """A store's engine whose calls named in :attr:`lose` reach the engine, and whose
    replies are then lost (``BackendUnavailable``, as a timeout after the command was
    sent): each name once."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.lose: set[str] = set()
        self.lost: list[str] = []

    def _lost(self, name: str) -> bool:
        if name not in self.lose:
            return False
        self.lose.discard(name)
        self.lost.append(name)
        return True

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._engine, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            if self._lost(name):
                raise BackendUnavailable(f"simulated: the reply of {name} timed out")
            return out

        return call


class SessionEngineContract:
    """The session-engine contract suite (see the module docstring)."""

    @pytest.fixture
    def session_url(self) -> str:
        raise NotImplementedError("a SessionEngineContract subclass provides the session_url fixture")

    @pytest.fixture
    def unreachable_session_url(self) -> str:
        pytest.skip("this backend gave no unreachable_session_url: no outage tests")

    @pytest.fixture
    def open_store(self) -> StoreFactory:
        """``open_store(url, **kw)``: a store on the engine of *url*, not closed for the
        caller (:class:`AsyncSessionEngineContract` puts its async engine here)."""
        return SessionStore

    @pytest.fixture
    def make_store(self, session_url: str, open_store: StoreFactory) -> Iterator[StoreFactory]:
        """Stores on the backend under test (each with its own engine), closed after the test."""
        made: list[SessionStore] = []

        def make(**kw: Any) -> SessionStore:
            kw.setdefault("secret_keys", KEYS)
            store = open_store(session_url, **kw)
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
        value = {"when": dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc), "raw": b"\x00\x01",
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

    def test_a_save_retried_after_a_lost_create_stores_it_once(self, store: SessionStore) -> None:
        """A new session's save reaches the engine but its reply is lost; the request
        then drops a key and changes the user, and saves again: the store sends the
        same create (its ``m:c``) with the key deleted and the old user's index entry
        removed. One session, as the request holds it, indexed under its user only."""
        engine = _LosesReplies(store.engine)
        lossy = SessionStore(engine=engine, secret_keys=KEYS)
        s = lossy.new()
        s.update({"cart": ["apple"], "flash": "hi"})
        s.user_id = "u"
        engine.lose.add("write")
        with pytest.raises(BackendUnavailable):
            lossy.save(s)
        assert engine.lost == ["write"] and s.new
        del s["flash"]
        s.user_id = "w"
        assert lossy.save(s)  # no "session id collision"
        loaded = store.load(s.sid)
        assert loaded is not None and loaded == {"cart": ["apple"]} and loaded.user_id == "w"
        assert store.list_user_sessions("u") == [] and store.revoke_user("u") == 0
        assert [i.handle for i in store.list_user_sessions("w")] == [s.handle]

    def test_a_session_ends_with_its_ttl(self, store: SessionStore) -> None:
        """A hash lives *ttl_ms* after its last write (the store passes the idle
        timeout): an engine that kept it would keep every abandoned session, and a
        revoked user's index would name them forever."""
        handle = store._handle(store.new().sid)
        sets = {"m:c": b"1700000000.5", "m:s": b"1700000000.5", "d:a": b"1"}
        first = store.engine.write(handle, create=True, sets=sets, dels=[], ttl_ms=100, index=None)
        assert first.status is Status.DONE
        wait_for(lambda: not store.engine.load(handle), timeout=30, what="the session to expire")
        late = store.engine.write(handle, create=False, sets={"d:a": b"2"}, dels=[], ttl_ms=60_000,
                                  index=None)
        assert late.status is Status.GONE and dict(store.engine.load(handle)) == {}

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

    def test_an_expired_session_is_not_listed(self, store: SessionStore) -> None:
        """list_user gives live sessions only: a session that expired is left out
        although its index entry lives on (an index entry lasts the absolute lifetime,
        the session its idle timeout). An engine going by the index alone lists a
        user's long-gone devices."""
        live = store.create({"i": 1}, user_id="alice")
        handle = store._handle(store.new().sid)
        now = time.time()
        stamp = repr(now).encode()
        index = IndexOp(member=handle, score=now, cutoff=now - 3600, ttl_ms=3_600_000, add="alice")
        gone = store.engine.write(handle, create=True, sets={"m:c": stamp, "m:s": stamp, "m:u": b"alice"},
                                  dels=[], ttl_ms=100, index=index)
        assert gone.status is Status.DONE
        wait_for(lambda: not store.engine.load(handle), timeout=30, what="the session to expire")
        assert [h for h, _ in store.engine.list_user("alice", 0)] == [store._handle(live.sid)]
        assert [i.handle for i in store.list_user_sessions("alice")] == [store._handle(live.sid)]

    @pytest.mark.parametrize("given", ["session", "handle"])
    def test_revoke_user_keeps_the_session_its_except_session_was_rotated_to(
            self, store: SessionStore, given: str) -> None:
        """The request that logs the user out elsewhere loaded its session before
        another request of the same browser rotated it (a login in a second tab):
        the session to keep is the rotated one, which its handle now names (an
        alias). It was deleted: the very device meant to be kept was logged out."""
        kept = store.create({"i": 0}, user_id="k")
        other = store.create({"i": 1}, user_id="k")
        here = self.reopen(store, kept)
        store.rotate(kept)
        except_session = here if given == "session" else here.handle
        assert store.revoke_user("k", except_session=except_session) == 1
        assert store.load(kept.sid) == {"i": 0} and store.load(other.sid) is None
        assert [i.handle for i in store.list_user_sessions("k")] == [store._handle(kept.sid)]

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

    @pytest.mark.parametrize("late", ["save", "rotate", "logout", "login-as-w"])
    def test_a_late_request_of_the_previous_user_indexes_the_session_as_the_stored_users(
            self, store: SessionStore, late: str) -> None:
        """Request A loaded the session as user u; request B switched it to user v;
        then A saves or rotates it with an index operation made for u. The engine
        applies it for the stored user (:meth:`IndexOp.for_stored
        <statekit.sessions.protocol.IndexOp.for_stored>`): the session is listed and
        revoked as the user it holds, and no one else's (else revoke_user('v') missed
        the rotated session, and revoke_user('u') logged v out)."""
        s = store.create({"n": 1}, user_id="u")
        a, b = self.reopen(store, s), self.reopen(store, s)
        b.user_id = "v"
        assert store.save(b)
        owner = {"logout": None, "login-as-w": "w"}.get(late, "v")
        if late == "rotate":
            store.rotate(a)
        else:
            a["late"] = True
            a.user_id = owner if late != "save" else a.user_id
            assert store.save(a)
        for user in ("u", "v", "w"):
            mine = [store._handle(a.sid)] if user == owner else []
            assert [i.handle for i in store.list_user_sessions(user)] == mine, f"the index of {user}"
            if user != owner:
                assert store.revoke_user(user) == 0, f"revoke_user({user!r}) deleted {owner}'s session"
        assert store.load(a.sid) is not None
        if owner is not None:
            assert store.revoke_user(owner) == 1 and store.load(a.sid) is None

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
        assert store.revoke_session(store._handle(a.sid), "u") is True
        assert store.load(a.sid) is None and store.load(b.sid) is not None
        assert [i.handle for i in store.list_user_sessions("u")] == [store._handle(b.sid)]
        assert store.revoke_session(store._handle(a.sid), "u") is False  # gone already

    @pytest.mark.parametrize("caller", ["mallory", "", "0"])
    def test_revoke_session_deletes_only_a_session_of_the_user_given(self, store: SessionStore,
                                                                      caller: str) -> None:
        """A "sign out this device" view passes the signed-in user with the handle a
        form sent: another user's session, or an anonymous one, is left as it is
        (``False``), whatever the caller (an empty or a falsy-looking user id
        included: it is a user to check, not "no check")."""
        alice = store.create({"secret": 1}, user_id="alice")
        anonymous = store.create({"cart": 2})
        for victim in (alice, anonymous):
            assert store.revoke_session(store._handle(victim.sid), caller) is False
        assert store.load(alice.sid) == {"secret": 1} and store.load(anonymous.sid) == {"cart": 2}
        assert [i.handle for i in store.list_user_sessions("alice")] == [store._handle(alice.sid)]
        inflight = self.reopen(store, alice)
        inflight["more"] = 3
        assert store.save(inflight)

    @pytest.mark.parametrize("caller", ["alice", "bob"])
    def test_revoke_session_by_a_handle_rotated_since_checks_the_session_it_names(
            self, store: SessionStore, caller: str) -> None:
        """The handle was listed before its device logged in again (a rotation: it now
        names a tombstone alias): the session it leads to is the one revoked, it and
        its alias together, if it is the caller's; else neither changes (a request in
        flight at the rotation still writes through the alias)."""
        s = store.create({"a": 1}, user_id="alice")
        listed = store._handle(s.sid)
        inflight = self.reopen(store, s)
        store.rotate(s)
        assert store.save(s)
        mine = caller == "alice"
        assert store.revoke_session(listed, caller) is mine
        assert (store.load(s.sid) is None) is mine
        assert (dict(store.engine.load(listed)) == {}) is mine, "the alias"
        inflight["late"] = True
        assert store.save(inflight) is not mine
        listed_now = [i.handle for i in store.list_user_sessions("alice")]
        assert listed_now == ([] if mine else [store._handle(s.sid)])
        if not mine:
            assert store.load(s.sid) == {"a": 1, "late": True}

    def test_revoke_session_without_a_user_says_whether_it_deleted_one(self, store: SessionStore) -> None:
        """No user given (an administrator's revocation): whoever holds it, followed
        through its rotation aliases."""
        s = store.create({"a": 1}, user_id="alice")
        listed = store._handle(s.sid)
        store.rotate(s)
        anonymous = store.create({"b": 2})
        assert store.revoke_session(listed) is True and store.load(s.sid) is None
        assert store.revoke_session(store._handle(anonymous.sid)) is True
        assert store.load(anonymous.sid) is None
        assert store.revoke_session(listed) is False
        assert store.list_user_sessions("alice") == []

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

    def test_an_outage_is_backend_unavailable(self, unreachable_session_url: str,
                                              open_store: StoreFactory) -> None:
        store = open_store(unreachable_session_url, secret_keys=KEYS)
        try:
            cookie = store.sign(store.new().sid)
            with pytest.raises(BackendUnavailable):
                store.open(cookie)
            s = store.new()
            s["a"] = 1
            with pytest.raises(BackendUnavailable) as failed:
                store.save(s)
            # a create the engine tells was never sent (NotSent) is not maybe stored:
            # the adapters' 503 then sends no cookie naming it
            assert s.maybe_stored is not isinstance(failed.value, NotSent)
            with pytest.raises(BackendUnavailable):
                store.revoke_user("u")
            with pytest.raises(BackendUnavailable):
                store.list_user_sessions("u")
            assert store.open(None).new  # no cookie: no backend needed
        finally:
            store.close()

    def test_an_outage_with_the_anonymous_policy_is_read_only(self, unreachable_session_url: str,
                                                              open_store: StoreFactory) -> None:
        store = open_store(unreachable_session_url, secret_keys=KEYS, outage_policy="anonymous")
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


class _LoopThread:
    """One event loop running in a daemon thread: :meth:`run` waits, from any thread,
    for a coroutine run there (``asyncio.run_coroutine_threadsafe``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="statekit-contract-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(_HUNG_AFTER)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"an async engine call hung (no answer in {_HUNG_AFTER:.0f} s)") from None

    def close(self) -> None:
        """Cancel what is left on the loop, stop it, join its thread and close it."""

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        try:
            self.run(drain())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(_HUNG_AFTER)
            self.loop.close()


class _SyncBridge:
    """An :class:`~statekit.sessions.protocol.AsyncSessionEngine` seen as a sync
    :class:`~statekit.sessions.protocol.SessionEngine`: each method runs the engine's
    coroutine on one :class:`_LoopThread` and waits for it, so calls from many
    threads become concurrent tasks of that one loop. :meth:`close` awaits
    ``aclose()`` there (once)."""

    def __init__(self, engine: Any, loop: _LoopThread) -> None:
        self.engine = engine
        self._loop = loop
        self._closed = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in _ASYNC_METHODS:
            raise AttributeError(name)
        method = getattr(self.engine, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs))

        return call

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.run(self.engine.aclose())


class AsyncSessionEngineContract(SessionEngineContract):
    """The contract suite for an :class:`~statekit.sessions.protocol.AsyncSessionEngine`:
    every test of :class:`SessionEngineContract`, each store on the async engine
    through a bridge that runs its coroutines on one background event loop (the
    suite's threads become concurrent tasks of that loop), plus async-only checks
    (its methods are coroutines, concurrent calls on one loop each get their own
    answer, a cancelled call leaves the engine usable, :class:`AsyncSessionStore`
    works on it). The loop and every engine are closed at teardown.

    Provide ``session_url`` (and optionally ``unreachable_session_url``) as for the
    sync suite, and ``make_async_engine``: a callable taking a URL and returning a new
    async engine on it (called on the suite's loop). By default it makes statekit's
    :class:`~statekit.sessions.redis.AsyncRedisEngine` for statekit's schemes.
    """

    @pytest.fixture
    def make_async_engine(self) -> AsyncEngineFactory:
        def make(url: str) -> Any:
            if url.partition("://")[0].lower() not in ENGINES:
                raise NotImplementedError("an AsyncSessionEngineContract subclass for another scheme "
                                          "provides the make_async_engine fixture")
            from ...sessions.redis import AsyncRedisEngine

            return AsyncRedisEngine.from_url(url, key_prefix="statekit")

        return make

    @pytest.fixture
    def engine_loop(self) -> Iterator[_LoopThread]:
        """The event loop every engine of the test runs on, closed after it."""
        loop = _LoopThread()
        yield loop
        loop.close()

    @pytest.fixture
    def open_store(self, make_async_engine: AsyncEngineFactory,
                   engine_loop: _LoopThread) -> Iterator[StoreFactory]:
        bridges: list[_SyncBridge] = []

        async def made(url: str) -> Any:
            return make_async_engine(url)

        def open_store(url: str, **kw: Any) -> SessionStore:
            bridge = _SyncBridge(engine_loop.run(made(url)), engine_loop)
            bridges.append(bridge)
            return SessionStore(engine=bridge, **kw)

        yield open_store
        for bridge in bridges:
            bridge.close()

    @staticmethod
    def async_engine(store: SessionStore) -> Any:
        """The async engine under *store* (a store of ``make_store``)."""
        bridge = store.engine
        assert isinstance(bridge, _SyncBridge)
        return bridge.engine

    # -- async only -------------------------------------------------------------------

    def test_the_engine_methods_are_coroutines(self, store: SessionStore) -> None:
        engine = self.async_engine(store)
        for name in sorted(_ASYNC_METHODS | {"aclose"}):
            assert inspect.iscoroutinefunction(getattr(engine, name)), f"{name} is not a coroutine function"

    def test_concurrent_loads_on_one_loop_each_get_their_answer(self, store: SessionStore,
                                                                 engine_loop: _LoopThread) -> None:
        """Loads of a session and of a missing handle at once on one loop: none gets
        another's reply."""
        engine = self.async_engine(store)
        s = store.create({"a": 1})
        live, ghost = store._handle(s.sid), store._handle(store.new().sid)

        async def loads() -> list[Any]:
            return await asyncio.gather(*(engine.load(ghost if i % 2 else live) for i in range(40)))

        answers = engine_loop.run(loads())
        assert all(dict(a) == {} for a in answers[1::2])
        assert all(a.get("d:a") == b"1" and "m:c" in a for a in answers[::2])

    def test_concurrent_writes_on_one_loop_merge(self, store: SessionStore, engine_loop: _LoopThread) -> None:
        engine = self.async_engine(store)
        s = store.create({"base": 0})
        handle = store._handle(s.sid)

        async def writes() -> list[Any]:
            return await asyncio.gather(*(
                engine.write(handle, create=False, sets={f"d:k{i}": str(i).encode()}, dels=[], ttl_ms=60_000,
                             index=None) for i in range(20)))

        results = engine_loop.run(writes())
        assert all(r.status is Status.DONE for r in results)
        assert len({r.version for r in results}) == 20
        assert store.load(s.sid) == {"base": 0, **{f"k{i}": i for i in range(20)}}

    def test_a_cancelled_call_leaves_the_engine_usable(self, store: SessionStore,
                                                       engine_loop: _LoopThread) -> None:
        """Loads cancelled in flight (a request that went away): the next calls on the
        loop get their own replies, never a late one."""
        engine = self.async_engine(store)
        s = store.create({"a": 1})
        other = store.create({"b": 2})

        async def cancel_then_load() -> list[Any]:
            answers = []
            for _ in range(10):
                task = asyncio.ensure_future(engine.load(store._handle(other.sid)))
                await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                answers.append(await engine.load(store._handle(s.sid)))
            return answers

        assert all(a.get("d:a") == b"1" and "d:b" not in a for a in engine_loop.run(cancel_then_load()))

    def test_the_async_store_runs_on_the_engine(self, store: SessionStore, engine_loop: _LoopThread) -> None:
        """:class:`AsyncSessionStore` on the engine (awaits, no bridge) and the bridged
        store read each other's sessions."""
        async_store = AsyncSessionStore(engine=self.async_engine(store), secret_keys=KEYS, alias_window=30)
        s = store.create({"from": "sync"})

        async def requests() -> Session:
            mine = await async_store.open(store.sign(s.sid))
            assert mine == {"from": "sync"}
            mine["async"] = True
            assert await async_store.save(mine)
            await async_store.rotate(mine)
            assert await async_store.incr(mine, "n") == 1
            return mine

        rotated = engine_loop.run(requests())
        assert store.load(rotated.sid) == {"from": "sync", "async": True, "n": 1}
        assert store.load(s.sid) is None

    def test_the_async_store_revokes_only_the_given_users_session(self, store: SessionStore,
                                                                  engine_loop: _LoopThread) -> None:
        """:meth:`AsyncSessionStore.revoke_session` checks the owner as the sync store
        does: another user's handle is ``False`` and that session still loads."""
        async_store = AsyncSessionStore(engine=self.async_engine(store), secret_keys=KEYS)
        alice = store.create({"a": 1}, user_id="alice")
        bob = store.create({"b": 2}, user_id="bob")

        async def revoke() -> list[bool]:
            return [await async_store.revoke_session(store._handle(alice.sid), "bob"),
                    await async_store.revoke_session(store._handle(bob.sid), "bob"),
                    await async_store.revoke_session(store._handle(bob.sid), "bob")]

        assert engine_loop.run(revoke()) == [False, True, False]
        assert store.load(alice.sid) == {"a": 1} and store.load(bob.sid) is None
