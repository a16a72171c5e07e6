"""Adversarial review of server-side sessions (helper S, thirteenth session): the
holes left by the twelfth, driven step by step (an engine wrapper that loses a
reply or pauses a call at a chosen point; no sleeps), sync and async.

* a save of a new session whose reply was lost (a timeout) raised "session id
  collision" when the request tried again: the retry sent another create time, so
  the engine saw another session's create. A retry must neither lose the session
  nor make a second one (the case with a key dropped and the user changed between
  is in the shipped contract).
* Redis Cluster, async: a request cancelled between the session script and the
  index update after it left the session unindexed (revoke_user missed it).
* async cancellation at every command of open, save, rotate and destroy (the
  claims held: all old or all new, indexed as stored, near copy equal to Redis).
* the carry-over: a 422-byte plain-data pickle whose lists share references
  expanded to 2**40 values when stored (a worker spinning forever); deep JSON raised
  RecursionError (a 500 on every request with that cookie); a request that found the
  carried session through the claim, or carried it itself, sent its cookie after a
  parallel login had rotated it (the browser logged out); an unsigned Flask-Session
  cookie naming a key of another type (WRONGTYPE) was a 500, not a fresh session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from test_broadcast_async import until  # tests/ is on sys.path

from statekit.errors import BackendUnavailable, SerializationError
from statekit.sessions import SessionStore
from statekit.sessions.aio import AsyncSessionStore
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis, loads_plain_pickle
from statekit.testing.contracts.sessions import _LosesReplies

pytestmark = pytest.mark.redis


class _LosesRepliesAsync(_LosesReplies):
    """:class:`_LosesReplies` for an async engine (its methods are coroutines, as the
    async store checks)."""

    async def _lossy(self, name: str, *args: Any, **kwargs: Any) -> Any:
        out = await getattr(self._engine, name)(*args, **kwargs)
        if self._lost(name):
            raise BackendUnavailable(f"simulated: the reply of {name} timed out")
        return out


def _lossy_method(name: str) -> Any:
    async def method(self: _LosesRepliesAsync, *args: Any, **kwargs: Any) -> Any:
        return await self._lossy(name, *args, **kwargs)

    return method


for _name in ("load", "write", "rotate", "incr", "destroy", "revoke_user", "list_user", "claim", "peek"):
    setattr(_LosesRepliesAsync, _name, _lossy_method(_name))


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[SessionStore]:
    url = "memory://review2" if request.param == "memory" else request.getfixturevalue("redis_url")
    base = SessionStore(url, secret_keys=["k"])
    yield SessionStore(engine=_LosesReplies(base.engine), secret_keys=["k"])
    base.close()


def _lose_next(store: SessionStore | AsyncSessionStore, *names: str) -> _LosesReplies:
    engine = store.engine
    assert isinstance(engine, _LosesReplies)
    engine.lose.update(names)
    return engine


def test_a_retried_save_of_a_new_session_after_a_lost_reply_stores_it_once(store: SessionStore) -> None:
    s = store.new()
    s["cart"] = ["apple"]
    s.user_id = "u"
    engine = _lose_next(store, "write")
    with pytest.raises(BackendUnavailable):
        store.save(s)
    assert engine.lost == ["write"] and s.new and s.maybe_stored
    assert store.save(s)  # the same create again: no collision
    assert not s.new and not s.maybe_stored
    loaded = store.load(s.sid)
    assert loaded is not None and dict(loaded) == {"cart": ["apple"]} and loaded.user_id == "u"
    assert loaded.created == s.created
    assert [i.handle for i in store.list_user_sessions("u")] == [s.handle]


@pytest.mark.parametrize("then", ["rotate", "destroy"])
def test_a_lost_create_then_rotated_or_destroyed_leaves_no_second_session(store: SessionStore,
                                                                          then: str) -> None:
    """A login (rotate) or logout (destroy) after a create whose reply was lost: the
    create may have landed under the first id, which no cookie will ever name."""
    s = store.new()
    s["cart"] = ["apple"]
    s.user_id = "u"
    _lose_next(store, "write")
    with pytest.raises(BackendUnavailable):
        store.save(s)
    first = s.handle
    if then == "rotate":
        store.rotate(s)
        assert store.save(s) and s.handle != first
        assert [i.handle for i in store.list_user_sessions("u")] == [s.handle]
    else:
        store.destroy(s)
        assert store.list_user_sessions("u") == []
    assert dict(store.engine.load(first)) == {}


def test_async_a_retried_save_of_a_new_session_after_a_lost_reply_stores_it_once(redis_url: str) -> None:
    async def main() -> None:
        async with AsyncSessionStore(redis_url, secret_keys=["k"]) as base:
            store = AsyncSessionStore(engine=_LosesRepliesAsync(base.engine), secret_keys=["k"])
            s = store.new()
            s["n"] = 1
            s.user_id = "u"
            _lose_next(store, "write")
            with pytest.raises(BackendUnavailable):
                await store.save(s)
            assert await store.incr(s, "n") == 2  # stores the new session first: the same create
            assert [i.handle for i in await store.list_user_sessions("u")] == [s.handle]
            loaded = await store.load(s.sid)
            assert loaded is not None and dict(loaded) == {"n": 2}

    asyncio.run(main())


@pytest.mark.parametrize("op", ["save", "rotate"])
def test_async_on_cluster_a_request_cancelled_after_its_session_script_still_indexes_it(
        redis_cluster_url: str, op: str) -> None:
    """Redis Cluster updates a user's index by a second call after the session script
    (another slot). A request cancelled between the two (its client went away) left
    the session stored but unindexed: revoke_user missed it."""

    async def main() -> None:
        async with AsyncSessionStore(redis_cluster_url, secret_keys=["k"]) as store:
            engine: Any = store.engine
            s = store.new()
            s["n"] = 1
            s.user_id = "u"
            if op == "rotate":
                assert await store.save(s)
            old = s.handle
            paused, gate = asyncio.Event(), asyncio.Event()
            real = engine._index_after

            async def index_after(*args: Any) -> None:
                paused.set()
                await gate.wait()
                await real(*args)

            engine._index_after = index_after
            try:
                task = asyncio.ensure_future(store.save(s) if op == "save" else store.rotate(s))
                await until(paused.is_set, "the index update after the save")
                task.cancel()
                gate.set()
                await asyncio.gather(task, return_exceptions=True)
            finally:
                engine._index_after = real
            assert task.cancelled()
            stored = old if op == "save" else (await engine.load(old))["m:a"].decode()
            assert "m:c" in await engine.load(stored)
            assert [i.handle for i in await store.list_user_sessions("u")] == [stored]
            assert await store.revoke_user("u") == 1
            assert dict(await engine.load(stored)) == {}

    asyncio.run(main())


class _PausesAt:
    """Wraps a loop's :class:`~statekit.redis.aio.AsyncTransport`: the *n*-th command
    or script pauses (forever: the test cancels it there), *before* it is sent or
    *after* Redis answered it (a reply the cancelled request never reads)."""

    def __init__(self, transport: Any, n: int, after: bool) -> None:
        self.transport, self.n, self.after = transport, n, after
        self.calls = 0
        self.paused = asyncio.Event()
        self.real = {name: getattr(transport, name) for name in ("command", "script")}
        for name, real in self.real.items():
            setattr(transport, name, self._wrap(real))

    def _wrap(self, real: Any) -> Any:
        async def call(*args: Any) -> Any:
            self.calls += 1
            hit = self.calls == self.n
            if hit and not self.after:
                self.paused.set()
                await asyncio.Event().wait()
            out = await real(*args)
            if hit:
                self.paused.set()
                await asyncio.Event().wait()
            return out

        return call

    def restore(self) -> None:
        for name, real in self.real.items():
            setattr(self.transport, name, real)


def _indexes_agree(redis_url: str, users: tuple[str, ...]) -> None:
    """Every live session is in the index of the user it stores and no other; an
    index entry names a live session of its user (or none: list_user skips it and
    the index's own expiry cleans it)."""
    import redis as redis_py

    from statekit.sessions.redis import RedisEngine

    layout = RedisEngine(redis_py.Redis.from_url(redis_url), "review2")
    client = layout.client
    try:
        stored = {}
        for key in client.scan_iter(match=b"review2:session:*"):
            fields = client.hgetall(key)
            if b"m:c" in fields and b"m:a" not in fields:
                stored[key.decode()[len("review2:session:"):]] = (fields.get(b"m:u") or b"").decode()
        for user in users:
            members = {m.decode() for m in client.zrange(layout.index_key(user), 0, -1)}
            assert {h for h, u in stored.items() if u == user} <= members, f"a session of {user} is unindexed"
            assert all(stored.get(m, user) == user for m in members), f"{user}'s index names another's"
    finally:
        layout.close()


@pytest.mark.parametrize("after", [False, True], ids=["before-sent", "reply-unread"])
@pytest.mark.parametrize("op", ["open", "create", "save", "login-as-w", "rotate", "destroy",
                                "destroy-through-alias"])
def test_async_a_request_cancelled_at_any_await_leaves_no_half_state(redis_url: str, op: str,
                                                                      after: bool) -> None:
    """A request cancelled (its client went away) at each command or script of load,
    save, rotate and destroy, before the command was sent or after Redis answered
    it, with the near cache on: the session is all old or all new, indexed under the
    user it stores and only there, and the near copy this process keeps is what Redis
    holds (a load through it equals a load without it)."""

    async def run(n: int) -> bool:
        opts: dict[str, Any] = {"secret_keys": ["k"], "key_prefix": "review2"}
        async with AsyncSessionStore(redis_url, near_cache=100, **opts) as store, \
                AsyncSessionStore(redis_url, **opts) as plain:
            base = await store.create({"a": 1, "b": 1}, user_id="u")
            s = await store.load(base.sid)
            assert s is not None
            if op == "destroy-through-alias":
                other = await plain.load(base.sid)
                assert other is not None
                await plain.rotate(other)
            transport = store.engine._lanes.current()
            pause = _PausesAt(transport, n, after)
            try:
                if op == "create":
                    s = store.new()
                    s.update({"a": 2, "b": 2})
                    s.user_id = "u"
                    work: Any = store.save(s)
                elif op in ("save", "login-as-w"):
                    s.update({"a": 2, "b": 2})
                    s.user_id = "w" if op == "login-as-w" else "u"
                    work = store.save(s)
                elif op == "rotate":
                    work = store.rotate(s)
                elif op == "open":
                    elsewhere = await plain.load(base.sid)  # changed by another process's request
                    assert elsewhere is not None
                    elsewhere.update({"a": 3, "b": 3})
                    assert await plain.save(elsewhere)
                    work = store.open(store.sign(base.sid))
                else:
                    work = store.destroy(s)
                task = asyncio.ensure_future(work)
                await asyncio.wait([task, asyncio.ensure_future(pause.paused.wait())],
                                   return_when=asyncio.FIRST_COMPLETED)
                reached = pause.paused.is_set()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            finally:
                pause.restore()
            for sid in {base.sid, s.sid}:
                near, fresh = await store.load(sid), await plain.load(sid)
                assert (near is None) == (fresh is None)
                if near is not None and fresh is not None:
                    assert dict(near) == dict(fresh) and near.version == fresh.version
                    assert fresh["a"] == fresh["b"], "half of a save"
            _indexes_agree(redis_url, ("u", "w"))
            await store.engine._lanes.current().client.flushdb()
            return reached

    async def main() -> int:
        n = 1
        while await run(n):
            n += 1
        return n

    assert asyncio.run(main()) > 1


def _shared_lists_pickle(levels: int) -> bytes:
    """A protocol-2 pickle of ``{"a": L}``: each level a list holding the one below
    twice (by memo reference), so *levels* levels expand to 2**levels strings."""
    body = b"X\x01\x00\x00\x00xq\x000"  # "x", memo 0
    for i in range(levels):
        body += b"](h" + bytes([i]) + b"h" + bytes([i]) + b"eq" + bytes([i + 1]) + b"0"
    return b"\x80\x02}X\x01\x00\x00\x00a" + body + b"h" + bytes([levels]) + b"s."


def test_a_plain_pickle_whose_shared_references_expand_is_refused() -> None:
    bomb = _shared_lists_pickle(40)
    assert len(bomb) < 500
    with pytest.raises(SerializationError, match="larger than"):
        loads_plain_pickle(bomb)
    assert loads_plain_pickle(_shared_lists_pickle(2)) == {"a": [["x", "x"], ["x", "x"]]}


def test_a_plain_pickle_of_itself_is_refused() -> None:
    loop = b"\x80\x02]q\x00h\x00a."  # a list holding itself
    with pytest.raises(SerializationError):
        loads_plain_pickle(loop)


def test_deeply_nested_old_json_is_refused_not_an_error() -> None:
    old = FlaskSessionRedis(client=object())
    with pytest.raises(SerializationError):
        old._decode(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


class _OneOldSession:
    name = "old"

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {"old-cookie": {"_user_id": "alice", "cart": ["apple"]}}

    def read(self, cookie: str) -> dict[str, Any] | None:
        return self.data.get(cookie)

    def forget(self, cookie: str) -> None:
        self.data.pop(cookie, None)


@pytest.fixture
def carrying(store: SessionStore) -> SessionStore:
    carrying = SessionStore(engine=store.engine, secret_keys=["k"], user_key="_user_id")
    carrying.carry_over = CarryOver(_OneOldSession())
    return carrying


@pytest.mark.parametrize("sender", ["carried it", "found the claim"])
def test_a_carried_session_rotated_by_a_parallel_login_does_not_send_its_cookie(carrying: SessionStore,
                                                                               sender: str) -> None:
    """A browser's first requests after the switch all carry the old cookie: A carries
    the session over (or finds it claimed), B, a login, finds the claim and rotates
    it. A's unchanged session must not send its cookie after that: it names a
    tombstone now, and would replace B's in the browser (logged out)."""
    first = carrying.open("old-cookie")
    a = first if sender == "carried it" else carrying.open("old-cookie")
    b = carrying.open("old-cookie")
    assert a.sid == b.sid == first.sid and a.send_cookie
    carrying.rotate(b)
    assert carrying.save(b) and b.send_cookie
    assert carrying.save(a)
    assert a.through_alias, "A sends the cookie of the rotated (logged-in) session's tombstone"


def test_a_claim_leading_to_a_rotated_session_gives_a_superseded_session(carrying: SessionStore) -> None:
    """C comes after B's login rotated the carried session (within the claim's
    window): a fresh session, marked superseded, so no cookie replaces B's."""
    b = carrying.open("old-cookie")
    carrying.rotate(b)
    assert carrying.save(b)
    c = carrying.open("old-cookie")
    assert c.new and c == {} and c.superseded


def test_an_old_cookie_naming_a_key_of_another_type_gives_a_fresh_session(redis_url: str) -> None:
    """Flask-Session without its signer: the cookie is the key's name, any text a
    client sends. One naming a key of another type (a hash of the old app's) made
    the read fail with WRONGTYPE: a 500 on every request with it."""
    import redis as redis_py

    old = redis_py.Redis.from_url(redis_url)
    store = SessionStore(redis_url, secret_keys=["k"], key_prefix="review2-carry")
    try:
        old.hset("session:not-a-session", "field", "value")
        store.carry_over = CarryOver(FlaskSessionRedis(client=old))
        fresh = store.open("not-a-session")
        assert fresh.new and fresh == {}
        assert old.hgetall("session:not-a-session") == {b"field": b"value"}  # left alone
    finally:
        store.close()
        old.close()


def test_revoke_user_keeps_the_session_rotated_while_it_runs(redis_url: str) -> None:
    """The device to keep logs in again (its session rotated) while revoke_user works
    through the user's other sessions batch by batch: the batches after the rotation
    keep the session its handle now names (else the kept device was logged out)."""
    from statekit.sessions.redis import REVOKE_BATCH, RedisEngine

    store = SessionStore(redis_url, secret_keys=["k"])
    other = SessionStore(redis_url, secret_keys=["k"])
    try:
        kept = store.create({"i": -1}, user_id="k")
        others = [store.create({"i": i}, user_id="k") for i in range(REVOKE_BATCH + 10)]
        here = store.load(kept.sid)
        assert here is not None
        engine = store.engine
        assert isinstance(engine, RedisEngine)
        real = engine._revoke_batch
        rotated: list[str] = []

        def batch(index_key: str, keep: str) -> tuple[int, int]:
            out = real(index_key, keep)
            if not rotated:  # between two batches: a login in another tab of the kept device
                login = other.load(kept.sid)
                assert login is not None
                other.rotate(login)
                rotated.append(login.sid)
            return out

        engine._revoke_batch = batch  # type: ignore[method-assign]
        assert store.revoke_user("k", except_session=here) == len(others)
        assert store.load(rotated[0]) == {"i": -1}
        assert store.load(others[-1].sid) is None
    finally:
        store.close()
        other.close()
