"""SessionStore: the shipped engine contract (statekit.testing.contracts.sessions) on
memory://, on redis:// of every server line and on a Sentinel URL (Cluster: in
test_sessions_cluster.py); store logic (cookies, codecs, timeouts, lazy decoding) on
memory://; Redis-only structure (round trips, layout, revoke_user in bounded
batches)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import statekit.sessions as sessions_mod
import statekit.sessions.redis as session_redis
from statekit.backends import memory
from statekit.embedded import free_port
from statekit.errors import ConfigError, InvalidKey, SerializationError
from statekit.pytest_plugin import redis_command_calls
from statekit.sessions import Session, SessionStore
from statekit.sessions.redis import RedisEngine
from statekit.testing import tampered
from statekit.testing.contracts.sessions import SessionEngineContract

KEYS = ["new-key-0123456789", "old-key-0123456789"]
StoreFactory = Callable[..., SessionStore]


class TestMemoryEngine(SessionEngineContract):
    @pytest.fixture
    def session_url(self) -> str:
        return f"memory://sessions-{uuid.uuid4().hex[:8]}"


@pytest.mark.redis
class TestRedisEngine(SessionEngineContract):
    @pytest.fixture
    def session_url(self, redis_line_url: str) -> str:
        return f"{redis_line_url}?socket_timeout=5"

    @pytest.fixture
    def unreachable_session_url(self) -> str:
        return f"redis://127.0.0.1:{free_port()}/0?socket_timeout=0.2&socket_connect_timeout=0.2"


@pytest.mark.redis
@pytest.mark.sentinel
class TestSentinelEngine(SessionEngineContract):
    @pytest.fixture
    def session_url(self, sentinel_url: str) -> str:
        return sentinel_url

    @pytest.fixture
    def unreachable_session_url(self) -> str:
        """Sentinels that are not there: the master cannot even be asked for."""
        return (f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster/0"
                "?socket_timeout=0.2&socket_connect_timeout=0.2")


@pytest.fixture
def backend_url() -> str:
    return f"memory://sessions-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_store(backend_url: str) -> StoreFactory:
    def make(**kw: Any) -> SessionStore:
        kw.setdefault("secret_keys", KEYS)
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
    cookie = {"tampered": tampered(good), "truncated": good[: len(good) // 2],
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



# -- engines by URL scheme ----------------------------------------------------------


def test_memory_reset_empties_memory_sessions(store: SessionStore) -> None:
    s = store.create({"a": 1})
    memory.reset()  # what users' tests call between tests
    assert store.load(s.sid) is None


def test_an_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no sessions backend for nosuch://.*statekit\.sessions"):
        SessionStore("nosuch://x", secret_keys=KEYS)


class _ToyEngine(RedisEngine):
    """A 'third-party' engine (here: RedisEngine on memory:// under another scheme)."""

    made: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str, counters: Any = None, **options: Any) -> RedisEngine:
        cls.made.append((url, options))
        return super().from_url("memory://toy", key_prefix=key_prefix, counters=counters)


def test_an_engine_registered_by_entry_point_serves_its_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import statekit.backends as backends

    ep = EntryPoint(name="toy", value=f"{__name__}:_ToyEngine", group="statekit.sessions")
    monkeypatch.setattr(backends, "_entry_points", lambda cap: [ep] if cap == "sessions" else [])
    store = SessionStore("toy://somewhere", secret_keys=KEYS, near_cache=5)
    assert isinstance(store.engine, _ToyEngine)
    assert _ToyEngine.made[-1] == ("toy://somewhere", {"near_cache": 5, "near_max_age": 60.0})
    s = store.create({"a": 1})
    assert store.load(s.sid) == {"a": 1}
    ready = SessionStore(secret_keys=KEYS, engine=store.engine)  # a ready engine instead of a URL
    assert ready.load(s.sid) == {"a": 1}


# -- lazy decoding --------------------------------------------------------------------


def test_only_the_values_read_are_decoded(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {f"k{i}": {"n": i} for i in range(1000)}
    s = store.create({**data, "_user_id": "7"})
    decoded: list[bytes] = []
    loads = store._loads
    monkeypatch.setattr(store, "_loads", lambda raw: decoded.append(raw) or loads(raw))
    loaded = reopen(store, s)
    assert len(decoded) == 1  # "_user_id" (the frameworks' own keys: at load)
    assert loaded["k3"] == {"n": 3} and loaded.get("k4") == {"n": 4} and "k5" in loaded
    assert len(decoded) == 3 and len(loaded) == 1001
    loaded["k9"] = "changed"
    assert store.save(loaded) and len(decoded) == 3  # a save compares only what was read
    loaded.modified = True  # "I changed values in place": compares every decoded key
    assert store.save(loaded) and len(decoded) == 3
    assert reopen(store, s) == {**data, "k9": "changed", "_user_id": "7"}


def test_every_way_of_reading_gives_decoded_values(store: SessionStore) -> None:
    s = store.create({"a": [1], "b": "x", "c": {"d": dt.date(2024, 1, 2)}})
    expected = {"a": [1], "b": "x", "c": {"d": dt.date(2024, 1, 2)}}
    for read in (dict, lambda x: {**x}, lambda x: dict(x.items()), lambda x: x.copy(),
                 lambda x: dict(zip(x.keys(), x.values(), strict=True)), lambda x: x | {}):
        assert read(reopen(store, s)) == expected
    assert reopen(store, s) == expected and reopen(store, s) == reopen(store, s)
    assert repr(reopen(store, s)) == repr(expected)
    popped = reopen(store, s)
    assert popped.pop("a") == [1] and popped.popitem() == ("c", {"d": dt.date(2024, 1, 2)})
    assert popped.setdefault("b") == "x"


def test_a_value_that_cannot_be_decoded_fails_where_it_is_read(store: SessionStore) -> None:
    s = store.create({"good": 1, "bad": 2})
    assert isinstance(store.engine, RedisEngine)
    store.engine.client.hset(store.engine.key(s.handle), "d:bad", b"\xff not json")
    loaded = reopen(store, s)
    assert loaded["good"] == 1
    with pytest.raises(SerializationError, match="'bad'"):
        loaded["bad"]
    loaded["good"] = 2
    assert store.save(loaded)  # the undecodable value is left as it is stored


# -- revoke_user in bounded batches ---------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def engine_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://revoke-{uuid.uuid4().hex[:8]}"
    request.applymarker(pytest.mark.redis)
    url: str = request.getfixturevalue("redis_url")
    return url


def _batches(store: SessionStore, monkeypatch: pytest.MonkeyPatch, size: int,
             between: Callable[[int], None] = lambda i: None) -> list[tuple[int, int]]:
    """Make revoke_user work in batches of *size*, call *between(i)* after batch i,
    and return what each batch reported (deleted, left)."""
    engine = store.engine
    assert isinstance(engine, RedisEngine)
    monkeypatch.setattr(session_redis, "REVOKE_BATCH", size)
    seen: list[tuple[int, int]] = []
    real = engine._revoke_batch

    def batch(index_key: str, keep: str) -> tuple[int, int]:
        seen.append(real(index_key, keep))
        between(len(seen))
        return seen[-1]

    monkeypatch.setattr(engine, "_revoke_batch", batch)
    return seen


def test_revoke_user_deletes_at_most_one_batch_per_call(engine_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(engine_url, secret_keys=KEYS)
    sessions = [store.create({"i": i}, user_id="big") for i in range(121)]
    seen = _batches(store, monkeypatch, 50)
    if engine_url.startswith("redis"):
        assert store.revoke_user("nobody") == 0  # the script is loaded now
        seen.clear()
        r = redis.Redis.from_url(engine_url)
        r.config_resetstat()
    assert store.revoke_user("big", except_session=sessions[0]) == 120
    assert seen == [(50, 70), (50, 20), (20, 0)]
    if engine_url.startswith("redis"):
        stats = redis_command_calls(r)
        assert stats["evalsha"] == 3 and stats["del"] == 120  # one script per batch
    assert [i.handle for i in store.list_user_sessions("big")] == [sessions[0].handle]


def test_revoke_user_deletes_sessions_created_between_batches(engine_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(engine_url, secret_keys=KEYS, alias_window=30)
    first = [store.create({"i": i}, user_id="ann") for i in range(30)]
    rotating = reopen(store, first[5])
    late: list[Session] = []

    def between(i: int) -> None:
        if i == 1:  # a login and a rotation while the revocation runs
            late.append(store.create({"late": True}, user_id="ann"))
            store.rotate(rotating)

    seen = _batches(store, monkeypatch, 10, between)
    assert store.revoke_user("ann") == 31
    assert len(seen) == 4
    assert all(store.load(s.sid) is None for s in [*first, *late, rotating])
    assert store.list_user_sessions("ann") == []
