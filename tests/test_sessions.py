"""Contract suite for statekit.sessions.SessionStore: Redis (two server lines) and memory://."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import statekit.sessions as sessions_mod
from statekit.embedded import RedisServer, free_port
from statekit.errors import BackendUnavailable, ConfigError, InvalidKey, SerializationError, SessionError
from statekit.pytest_plugin import redis_command_calls, server_lines
from statekit.sessions import Session, SessionStore
from statekit.sessions.protocol import Status

KEYS = ["new-key-0123456789", "old-key-0123456789"]
StoreFactory = Callable[..., SessionStore]


def _redis_lines() -> dict[str, Any]:
    """Every server line found (as the root conftest's redis_line_url)."""
    return {b.line: b for b in server_lines()}


_LINES = _redis_lines()
_servers: dict[str, RedisServer] = {}


@pytest.fixture(scope="module", autouse=True)
def _stop_line_servers() -> Iterator[None]:
    yield
    while _servers:
        _servers.popitem()[1].stop()


@pytest.fixture(params=["memory", *_LINES])
def backend_url(request: pytest.FixtureRequest) -> str:
    """memory:// and every Redis server line (the contract runs against each)."""
    if request.param == "memory":
        return f"memory://sessions-{uuid.uuid4().hex[:8]}"
    request.applymarker(pytest.mark.redis)
    server = _servers.get(request.param)
    if server is None or not server.running:
        server = _servers[request.param] = RedisServer(_LINES[request.param])
        server.start()
    with server.client() as c:
        c.flushall()
    return server.url


@pytest.fixture
def make_store(backend_url: str) -> StoreFactory:
    def make(**kw: Any) -> SessionStore:
        kw.setdefault("secret_keys", KEYS)
        if backend_url.startswith("redis"):
            return SessionStore(client=redis.Redis.from_url(backend_url, socket_timeout=5), **kw)
        return SessionStore(backend_url, **kw)

    return make


@pytest.fixture
def store(make_store: StoreFactory) -> SessionStore:
    return make_store()


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.t = time.time()
        monkeypatch.setattr(sessions_mod, "now", lambda: self.t)


def reopen(store: SessionStore, s: Session) -> Session:
    return store.open(store.sign(s.sid))


def test_roundtrip_tagged_values(store: SessionStore) -> None:
    s = store.new()
    assert s.new
    value = {"when": dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), "raw": b"\x00\x01",
             "pair": (1, 2), "tags": {"a"}}
    s["v"] = value
    s["n"] = 3
    assert store.save(s)
    assert not s.new
    loaded = reopen(store, s)
    assert not loaded.new
    assert loaded == {"v": value, "n": 3}


def test_empty_new_session_is_not_stored(store: SessionStore) -> None:
    s = store.new()
    assert store.save(s)
    assert store.load(s.sid) is None


def test_create_stores_now(store: SessionStore) -> None:
    s = store.create({"a": 1})
    assert store.load(s.sid) == {"a": 1}


def test_missing_session_gives_fresh_id(store: SessionStore) -> None:
    ghost = store.new()
    opened = store.open(store.sign(ghost.sid))
    assert opened.new and opened.sid != ghost.sid


def test_ids_are_256_bit_and_unique(store: SessionStore) -> None:
    ids = {store.new().sid for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 47 for i in ids)


@pytest.mark.parametrize("mangle", ["tampered", "truncated", "foreign", "oversized", "malformed", "garbage"])
def test_bad_cookie_gives_fresh_session(store: SessionStore, make_store: StoreFactory, mangle: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    s = store.create({"secret": "data"})
    good = store.sign(s.sid)
    cookie = {
        "tampered": good[:10] + ("A" if good[10] != "A" else "B") + good[11:],
        "truncated": good[:-5],
        "foreign": make_store(secret_keys=["someone-elses-key"]).sign(s.sid),
        "oversized": good + "x" * 300,
        "malformed": store.sign("not-an-id"),
        "garbage": "%%%.....",
    }[mangle]
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        opened = store.open(cookie)
    assert opened.new and opened.sid != s.sid and opened == {}
    assert any(r.name == "statekit.security" for r in caplog.records)
    assert cookie not in caplog.text


def test_secret_key_rotation(make_store: StoreFactory) -> None:
    old = make_store(secret_keys=["old-key-0123456789"])
    s = old.create({"a": 1})
    rotated = make_store(secret_keys=["new-key-0123456789", "old-key-0123456789"])
    assert rotated.open(old.sign(s.sid)) == {"a": 1}
    assert rotated.sign(s.sid) != old.sign(s.sid)
    assert make_store(secret_keys=["new-key-0123456789"]).open(rotated.sign(s.sid)) == {"a": 1}


def test_storage_key_reveals_no_cookie(store: SessionStore) -> None:
    s = store.create({"a": 1})
    key = store._key(s.sid)
    assert s.sid[4:] not in key and store.sign(s.sid) not in key


def test_concurrent_saves_of_different_keys_both_kept(store: SessionStore) -> None:
    s = store.create({"base": 0})
    a, b = reopen(store, s), reopen(store, s)
    a["a"] = 1
    b["b"] = 2
    del b["base"]
    assert store.save(a) and store.save(b)
    assert reopen(store, s) == {"a": 1, "b": 2}


def test_same_key_last_writer_wins_for_that_key_only(store: SessionStore) -> None:
    s = store.create({"k": 0, "other": "x"})
    a, b = reopen(store, s), reopen(store, s)
    a["k"] = "from-a"
    b["k"] = "from-b"
    b["new"] = True
    store.save(a)
    store.save(b)
    assert reopen(store, s) == {"k": "from-b", "other": "x", "new": True}


def test_in_place_change_needs_modified(store: SessionStore) -> None:
    s = store.create({"cart": []})
    s2 = reopen(store, s)
    s2["cart"].append("apple")
    s2.modified = True
    store.save(s2)
    assert reopen(store, s)["cart"] == ["apple"]


def test_value_changed_after_assignment_is_saved(store: SessionStore) -> None:
    s = store.create({"other": 1})
    s2 = reopen(store, s)
    s2["cart"] = []
    s2["cart"].append("pear")  # same request, after the assignment
    store.save(s2)
    assert reopen(store, s) == {"other": 1, "cart": ["pear"]}


def test_unserializable_value_fails_at_assignment(store: SessionStore) -> None:
    s = store.new()
    with pytest.raises(SerializationError, match=r"'bad'.*object"):
        s["bad"] = object()
    assert "bad" not in s


def test_unserializable_value_fails_at_save(store: SessionStore) -> None:
    s = store.create({"items": []})
    s["items"].append(threading.Lock())
    s.modified = True
    with pytest.raises(SerializationError, match=r"'items'.*list"):
        store.save(s)
    assert reopen(store, s) == {"items": []}


def test_non_string_key_is_refused(store: SessionStore) -> None:
    s = store.new()
    with pytest.raises(InvalidKey):
        s[1] = "x"  # type: ignore[index]


def test_destroyed_session_is_not_resurrected(store: SessionStore) -> None:
    s = store.create({"a": 1})
    inflight = reopen(store, s)
    store.destroy(s)
    inflight["a"] = 2
    assert store.save(inflight) is False
    assert store.load(s.sid) is None
    assert store.open(store.sign(s.sid)).new


def test_refresh_at_most_once_per_interval(make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    store = make_store(refresh_interval=60, idle_timeout=100)
    s = store.create({"a": 1})
    clock.t += 30
    store.save(reopen(store, s))
    assert store.counters.get("refreshes") == 0
    clock.t += 40  # 70 s after the write: refresh due
    store.save(reopen(store, s))
    assert store.counters.get("refreshes") == 1
    clock.t += 90  # 160 s after creation, 90 s after the refresh: still alive
    assert store.load(s.sid) == {"a": 1}


def test_idle_timeout_enforced_at_load(make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    store = make_store(idle_timeout=100, refresh_interval=10)
    s = store.create({"a": 1})
    clock.t += 101
    assert store.load(s.sid) is None
    assert store.counters.get("expired") == 1


def test_absolute_lifetime_enforced_at_load(make_store: StoreFactory,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    store = make_store(idle_timeout=100, absolute_lifetime=250, refresh_interval=10)
    s = store.create({"a": 1})
    for _ in range(4):  # active every 60 s: idle never reached
        clock.t += 60
        loaded = reopen(store, s)
        loaded["tick"] = clock.t
        store.save(loaded)
    assert store.load(s.sid) is not None
    clock.t += 20  # 260 s after creation
    assert store.load(s.sid) is None


def test_per_session_idle_override(make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    store = make_store(idle_timeout=1000)
    s = store.create({"a": 1})
    s.idle_timeout = 50
    store.save(s)
    clock.t += 60
    assert store.load(s.sid) is None


def test_atomic_incr_under_threads(store: SessionStore) -> None:
    s = store.create({})
    threads_n, per = 4, 50

    def work() -> None:
        mine = reopen(store, s)
        for _ in range(per):
            mine.incr("hits")

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert reopen(store, s)["hits"] == threads_n * per


def test_incr_then_save_keeps_counter(store: SessionStore) -> None:
    s = store.new()
    assert s.incr("n", 5) == 5
    other = reopen(store, s)
    other.incr("n")
    s["x"] = 1
    store.save(s)
    assert reopen(store, s) == {"n": 6, "x": 1}


def test_incr_on_non_integer_fails(store: SessionStore) -> None:
    s = store.create({"name": "bob"})
    with pytest.raises(SessionError):
        s.incr("name")


def test_incr_is_exact_to_64_bits(store: SessionStore) -> None:
    """Past 2^53 (where a Lua number, a double, rounds) and up to the end of 64
    bits; an overflow is refused and leaves the value."""
    s = store.create({"n": 2**53, "top": 2**63 - 2})
    assert s.incr("n") == 2**53 + 1 and reopen(store, s)["n"] == 2**53 + 1
    assert s.incr("top") == 2**63 - 1
    with pytest.raises(SessionError):
        s.incr("top")
    assert reopen(store, s)["top"] == 2**63 - 1


def test_incr_with_msgpack_refuses_what_a_double_would_round(make_store: StoreFactory) -> None:
    store = make_store(codec="msgpack")
    s = store.create({"n": 2**53 - 2})
    assert s.incr("n") == 2**53 - 1
    with pytest.raises(SessionError):
        s.incr("n")
    assert reopen(store, s)["n"] == 2**53 - 1


def test_rotation_moves_data_and_keeps_short_alias(make_store: StoreFactory) -> None:
    """The old id is a tombstone: a request in flight (loaded before the rotation)
    still writes into the new session; one that loads with the old id afterwards
    gets a fresh, empty session (no session fixation), and its writes stay there."""
    store = make_store(alias_window=0.5)
    s = store.create({"cart": ["apple"]})
    old_sid = s.sid
    inflight = reopen(store, s)  # loaded before the rotation
    store.rotate(s)
    assert s.rotated and s.sid != old_sid and s.sid[:4] == old_sid[:4]
    s["user"] = "alice"
    assert store.save(s)
    assert store.load(s.sid) == {"cart": ["apple"], "user": "alice"}
    late = store.open(store.sign(old_sid))  # loaded after the rotation: never the new state
    assert late.new and late == {} and late.sid != old_sid
    assert store.load(old_sid) is None
    late["late"] = 1
    assert store.save(late) and store.load(late.sid) == {"late": 1}
    inflight["inflight"] = 2
    assert store.save(inflight) and inflight.through_alias
    assert inflight.sid == old_sid and inflight == {"cart": ["apple"], "inflight": 2}
    assert store.load(s.sid) == {"cart": ["apple"], "user": "alice", "inflight": 2}
    assert store.load(old_sid) is None  # the in-flight write did not bring the old id back
    time.sleep(0.7)  # the alias expires in Redis (and in memory://)
    assert store.open(store.sign(old_sid)).new
    assert store.load(s.sid) == {"cart": ["apple"], "user": "alice", "inflight": 2}


def test_double_rotation_within_alias_window(make_store: StoreFactory) -> None:
    store = make_store(alias_window=30)
    s = store.create({"a": 1})
    first = s.sid
    inflight = reopen(store, s)
    store.rotate(s)
    middle = s.sid
    store.rotate(s)
    assert store.open(store.sign(first)).new and store.open(store.sign(middle)).new
    inflight["b"] = 2
    assert store.save(inflight)
    assert store.load(s.sid) == {"a": 1, "b": 2}


def test_rotating_a_revoked_session_does_not_revive_it(store: SessionStore) -> None:
    s = store.create({"secret": 1})
    s.user_id = "u1"
    store.save(s)
    stale = reopen(store, s)
    store.revoke_user("u1")
    store.rotate(stale)
    assert stale.new and stale == {}
    assert store.load(s.sid) is None


def test_user_index_list_and_revoke(store: SessionStore) -> None:
    mine = [store.create({"i": i}, user_id="alice") for i in range(3)]
    other = store.create({"i": 9}, user_id="bob")
    listed = store.list_user_sessions("alice")
    assert len(listed) == 3 and all(i.user_id == "alice" for i in listed)
    assert all(i.handle.startswith("{") for i in listed)
    inflight = reopen(store, mine[1])
    assert store.revoke_user("alice", except_session=mine[0]) == 2
    assert store.load(mine[0].sid) == {"i": 0}
    assert store.load(mine[1].sid) is None and store.load(mine[2].sid) is None
    inflight["again"] = True
    assert store.save(inflight) is False
    assert store.load(mine[1].sid) is None
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]
    assert store.load(other.sid) == {"i": 9}


def test_list_user_sessions_leaves_out_what_load_would_refuse(make_store: StoreFactory,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """After the idle timeout is lowered (a deploy), the list shows only sessions a
    load would still accept; their hashes live on until their TTL."""
    clock = Clock(monkeypatch)
    store = make_store(idle_timeout=1000)
    old = store.create({}, user_id="ida")
    clock.t += 600
    fresh = store.create({}, user_id="ida")
    stricter = make_store(idle_timeout=300)
    assert store.load(old.sid) is not None and stricter.load(old.sid) is None
    assert [i.handle for i in stricter.list_user_sessions("ida")] == [stricter._handle(fresh.sid)]
    assert len(store.list_user_sessions("ida")) == 2


def test_user_key_drives_index_and_rotation_keeps_it(make_store: StoreFactory) -> None:
    store = make_store(user_key="_user_id")
    s = store.create({"cart": 1})
    s["_user_id"] = 42
    store.rotate(s)
    store.save(s)
    [info] = store.list_user_sessions("42")
    assert info.handle == store._handle(s.sid)
    s.pop("_user_id")
    store.save(s)
    assert store.list_user_sessions("42") == []


def test_revoke_single_session_by_handle(store: SessionStore) -> None:
    a = store.create({}, user_id="u")
    b = store.create({}, user_id="u")
    store.revoke_session(store._handle(a.sid), "u")
    assert store.load(a.sid) is None and store.load(b.sid) is not None
    assert len(store.list_user_sessions("u")) == 1


def test_msgpack_codec(make_store: StoreFactory) -> None:
    store = make_store(codec="msgpack")
    s = store.create({"d": dt.date(2024, 1, 2), "b": b"x"})
    assert reopen(store, s) == {"d": dt.date(2024, 1, 2), "b": b"x"}
    assert s.incr("n", 2) == 2 and s.incr("n") == 3
    assert reopen(store, s)["n"] == 3


def test_config_errors(backend_url: str) -> None:
    with pytest.raises(ConfigError):
        SessionStore(backend_url)
    with pytest.raises(ConfigError):
        SessionStore(backend_url, secret_keys=KEYS, codec="signed-pickle")
    with pytest.raises(ConfigError):
        SessionStore(backend_url, secret_keys=KEYS, outage_policy="ignore")
    with pytest.raises(ConfigError):
        SessionStore(backend_url, secret_keys=KEYS, idle_timeout=0)


# -- Redis-only: command counts and outages -------------------------------------------


def _stats(r: redis.Redis) -> dict[str, int]:
    return redis_command_calls(r)


def _calls(r: redis.Redis) -> int:
    return sum(_stats(r).values())


def _client_calls(r: redis.Redis) -> dict[str, int]:
    """Commands the client sent (commandstats also counts those run inside scripts)."""
    top = ("hgetall", "evalsha", "eval", "script", "del", "zrem")
    return {k: v for k, v in _stats(r).items() if k in top}


@pytest.mark.redis
def test_round_trips_per_request(redis_line_url: str) -> None:
    r = redis.Redis.from_url(redis_line_url)
    store = SessionStore(client=redis.Redis.from_url(redis_line_url), secret_keys=KEYS)
    s = store.create({"a": 1})
    cookie = store.sign(s.sid)
    store.save(store.open(cookie))  # warm the script cache
    r.config_resetstat()
    store.save(store.open(cookie))
    assert _stats(r) == {"hgetall": 1}  # unmodified: the load only
    r.config_resetstat()
    s2 = store.open(cookie)
    s2["a"] = 2
    store.save(s2)
    assert _client_calls(r) == {"hgetall": 1, "evalsha": 1}  # modified: load + one script


@pytest.mark.redis
@pytest.mark.parametrize("mangle", ["tampered", "truncated", "foreign", "oversized"])
def test_bad_cookies_make_no_redis_calls(redis_line_url: str, mangle: str) -> None:
    r = redis.Redis.from_url(redis_line_url)
    store = SessionStore(client=redis.Redis.from_url(redis_line_url), secret_keys=KEYS)
    good = store.sign(store.create({"a": 1}).sid)
    cookie = {"tampered": good[:-3] + "abc", "truncated": good[: len(good) // 2],
              "foreign": SessionStore("memory://", secret_keys=["x"]).sign(store.new().sid),
              "oversized": good * 4}[mangle]
    r.config_resetstat()
    s = store.open(cookie)
    store.save(s)
    assert s.new and _calls(r) == 0


@pytest.mark.redis
def test_storage_layout_is_one_hash_with_metadata(redis_line_url: str) -> None:
    r = redis.Redis.from_url(redis_line_url)
    store = SessionStore(client=redis.Redis.from_url(redis_line_url), secret_keys=KEYS)
    s = store.create({"a": 1, "b": "x"}, user_id="u7")
    [key] = [k.decode() for k in r.keys("statekit:session:*")]
    assert r.type(key) == b"hash"
    fields = {k.decode() for k in r.hkeys(key)}
    assert fields == {"d:a", "d:b", "m:c", "m:s", "m:u", "m:v"}
    assert 0 < r.pttl(key) <= store.idle_timeout * 1000
    assert s.sid not in key


def _dead_store(**kw: Any) -> SessionStore:
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    return SessionStore(client=client, secret_keys=KEYS, **kw)


def test_outage_raises_backend_unavailable() -> None:
    store = _dead_store()
    cookie = store.sign(store.new().sid)
    with pytest.raises(BackendUnavailable):
        store.open(cookie)
    s = store.new()
    s["a"] = 1
    with pytest.raises(BackendUnavailable):
        store.save(s)
    assert store.open(None).new  # no cookie: no Redis needed


def test_outage_anonymous_mode_is_read_only() -> None:
    store = _dead_store(outage_policy="anonymous")
    sid = store.new().sid
    s = store.open(store.sign(sid))
    assert s.unavailable and s == {} and s.sid == sid
    with pytest.raises(BackendUnavailable):
        s["a"] = 1
    with pytest.raises(BackendUnavailable):
        store.rotate(s)
    assert store.save(s) is False


def test_retried_create_is_not_a_collision(store: SessionStore) -> None:
    handle = store._handle(store.new().sid)
    sets = {"m:c": b"1700000000.5", "m:s": b"1700000000.5", "d:a": b"1"}
    write = store.engine.write
    assert write(handle, create=True, sets=sets, dels=[], ttl_ms=60_000, index=None).status is Status.DONE
    assert write(handle, create=True, sets=sets, dels=[], ttl_ms=60_000, index=None).status is Status.DONE
    other = dict(sets, **{"m:c": b"1700000001.5"})
    assert write(handle, create=True, sets=other, dels=[], ttl_ms=60_000, index=None).status is Status.EXISTS


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)
_ops = st.lists(st.tuples(st.sampled_from(["set", "del"]), st.sampled_from("abcde"), _values), max_size=8)


@given(initial=st.dictionaries(st.sampled_from("abcde"), _values, max_size=5), ops=_ops, other=_ops)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_saves_merge_per_key(initial: dict[str, Any], ops: list[Any], other: list[Any]) -> None:
    """Two requests edit one session; the result is the initial data with each key
    last written by whichever request changed it (the second save wins on a tie)."""
    store = SessionStore(f"memory://prop-{uuid.uuid4().hex[:8]}", secret_keys=KEYS)
    s = store.create(initial)
    a, b = store.load(s.sid), store.load(s.sid)
    assert a is not None and b is not None
    expected = dict(initial)
    for req, req_ops in ((a, ops), (b, other)):
        changed: dict[str, Any] = {}
        for op, k, v in req_ops:
            if op == "set":
                req[k] = v
                changed[k] = v
            elif k in req:
                del req[k]
                changed[k] = None
        for k in changed:
            if (k in req) == (k in initial) and req.get(k) == initial.get(k):
                continue  # back to what it loaded: not a change, nothing written
            if k in req:
                expected[k] = req[k]
            else:
                expected.pop(k, None)
    store.save(a)
    store.save(b)
    assert store.load(s.sid) == expected


# -- review findings ---------------------------------------------------------------


def test_inflight_request_follows_two_rotations(make_store: StoreFactory) -> None:
    """A request that loaded the session before it was rotated twice (within the
    alias window) can still incr: the alias chain is followed as far as a save
    follows it. Its own rotation keeps the data it loaded, under a new session of
    its own: it never takes over the rotated session (that would give a
    pre-rotation cookie the new, logged-in state)."""
    store = make_store(alias_window=30)
    s = store.create({"n": 1}, user_id="rot2")
    s.idle_timeout = 600
    assert store.save(s)
    inflight, inflight2 = reopen(store, s), reopen(store, s)
    store.rotate(s)
    store.rotate(s)
    assert inflight.incr("n") == 2
    store.rotate(inflight2)
    assert inflight2.new and inflight2 == {"n": 1} and inflight2.sid != s.sid
    assert store.save(inflight2) and inflight2.send_cookie
    copy = store.load(inflight2.sid)
    assert copy == {"n": 1} and copy.idle_timeout == 600  # its idle timeout too
    assert store.load(s.sid) == {"n": 2}
    handles = {i.handle for i in store.list_user_sessions("rot2")}
    assert handles == {store._handle(s.sid), store._handle(inflight2.sid)}


def test_inflight_login_never_takes_over_the_rotated_session(make_store: StoreFactory) -> None:
    """Session fixation through a race: a request with the planted pre-login cookie,
    loaded before the victim's login, logs in (rotates) after it. It gets a session
    of its own with what it loaded; the victim's session and id are untouched."""
    store = make_store(alias_window=30)
    planted = store.create({"theme": "dark"})
    attacker = reopen(store, planted)  # in flight at the victim's login
    victim = reopen(store, planted)
    store.rotate(victim)
    victim.user_id = "victim"
    victim["secret"] = "victim's"
    assert store.save(victim)
    store.rotate(attacker)
    assert attacker == {"theme": "dark"} and attacker.user_id is None
    assert store.save(attacker)
    assert store.load(attacker.sid) == {"theme": "dark"}
    mine = store.load(victim.sid)
    assert mine == {"theme": "dark", "secret": "victim's"} and mine.user_id == "victim"
    assert [i.handle for i in store.list_user_sessions("victim")] == [store._handle(victim.sid)]


def test_inflight_rotation_after_revocation_gives_an_empty_session(make_store: StoreFactory) -> None:
    """The copy an in-flight rotation keeps is made only while the session lives: a
    session rotated and then revoked does not come back through an old request."""
    store = make_store(alias_window=30)
    s = store.create({"a": 1}, user_id="rv")
    inflight = reopen(store, s)
    store.rotate(s)
    assert store.revoke_user("rv") == 1
    store.rotate(inflight)
    assert inflight.new and inflight == {}
    store.save(inflight)
    assert store.load(inflight.sid) is None and store.load(s.sid) is None


def test_incr_after_assignment_in_same_request(store: SessionStore) -> None:
    s = store.create({"n": 1, "other": "x"})
    s2 = reopen(store, s)
    s2["n"] = 10
    assert s2.incr("n") == 11
    store.save(s2)
    assert reopen(store, s) == {"n": 11, "other": "x"}


def test_incr_after_deletion_in_same_request(store: SessionStore) -> None:
    s = store.create({"n": 5})
    s2 = reopen(store, s)
    del s2["n"]
    assert s2.incr("n") == 1
    store.save(s2)
    assert reopen(store, s) == {"n": 1}


def test_idle_override_shorter_than_refresh_interval_slides(make_store: StoreFactory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A session active more often than its idle timeout never expires, even when
    that timeout is shorter than refresh_interval."""
    clock = Clock(monkeypatch)
    store = make_store(refresh_interval=60, idle_timeout=1000)
    s = store.create({"a": 1})
    s.idle_timeout = 50
    store.save(s)
    for _ in range(5):  # a request every 20 s
        clock.t += 20
        store.save(reopen(store, s))
    assert store.load(s.sid) == {"a": 1}


def test_huge_session_saves(store: SessionStore) -> None:
    data = {f"k{i}": i for i in range(6000)}
    s = store.create(data)
    assert reopen(store, s) == data
    s2 = reopen(store, s)
    s2.clear()
    assert store.save(s2)
    assert store.load(s.sid) == {}


def test_destroy_by_request_loaded_before_rotation(make_store: StoreFactory) -> None:
    """Logout in a request that loaded the session before a concurrent rotation
    still ends the session (not just its alias)."""
    store = make_store(alias_window=30)
    s = store.create({"a": 1}, user_id="dr")
    inflight = reopen(store, s)
    store.rotate(s)
    store.destroy(inflight)
    assert store.load(s.sid) is None
    assert store.list_user_sessions("dr") == []


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_incr_refuses_floats_and_booleans(make_store: StoreFactory, codec: str) -> None:
    store = make_store(codec=codec)
    s = store.create({"f": 1.5, "whole": 2.0, "b": True})
    for key in ("f", "whole", "b"):
        with pytest.raises(SessionError):
            s.incr(key)
    assert reopen(store, s) == {"f": 1.5, "whole": 2.0, "b": True}
