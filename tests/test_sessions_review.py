"""Review of issue 17's sessions rewrite: the msgpack increment in plain Lua against
msgpack-python byte for byte, increments of what is no integer, lazy decoding, and
revocation in batches; on memory:// and on Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import msgpack
import pytest

from statekit.errors import SessionError
from statekit.sessions import SessionStore

KEYS = ["new-key-0123456789", "old-key-0123456789"]

# every width and sign msgpack-python packs an integer in, at and around each boundary
BOUNDARIES = sorted({b + d for b in (0, 2**7, 2**8, 2**15, 2**16, 2**31, 2**32, 2**53, -32, -33,
                                     -(2**7), -(2**15), -(2**31), -(2**53))
                     for d in (-2, -1, 0, 1)})
HUGE = [2**63 - 1, 2**63 - 2, -(2**63), -(2**63) + 1, 2**64 - 1, 2**60]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def session_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://review-{uuid.uuid4().hex[:8]}"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def store(session_url: str) -> Iterator[SessionStore]:
    s = SessionStore(session_url, secret_keys=KEYS, codec="msgpack", key_prefix=f"r{uuid.uuid4().hex[:6]}")
    yield s
    s.close()


def _raw(store: SessionStore, handle: str, key: str) -> bytes:
    return bytes(store.engine.load(handle)["d:" + key])


@pytest.mark.parametrize("amount", [1, -1, 0])
def test_msgpack_incr_is_byte_identical_to_msgpack_python(store: SessionStore, amount: int) -> None:
    start = {f"v{i}": v for i, v in enumerate(BOUNDARIES)}
    s = store.create(start)
    for i, v in enumerate(BOUNDARIES):
        want = v + amount
        if abs(want) >= 2**53:  # the documented limit: refused, the value kept
            with pytest.raises(SessionError):
                s.incr(f"v{i}", amount)
            want = v
        else:
            assert s.incr(f"v{i}", amount) == want
        assert _raw(store, s.handle, f"v{i}") == msgpack.packb(want), (v, amount)


def test_msgpack_incr_jumps_across_every_width(store: SessionStore) -> None:
    s = store.create({"n": 0})
    total = 0
    for step in (127, 1, 127, 1, 65_280, 1, 2**32 - 65_536, 1, -(2**33), 2**33 - 33, -1, -95, -32_641, 1):
        total += step
        assert s.incr("n", step) == total
        assert _raw(store, s.handle, "n") == msgpack.packb(total), total


@pytest.mark.parametrize("value", HUGE)
def test_msgpack_incr_of_a_64_bit_value_is_refused_and_changes_nothing(store: SessionStore,
                                                                      value: int) -> None:
    s = store.create({"n": value})
    before = _raw(store, s.handle, "n")
    assert before == msgpack.packb(value)
    with pytest.raises(SessionError):
        s.incr("n", -1 if value > 0 else 1)
    assert _raw(store, s.handle, "n") == before


@pytest.mark.parametrize("amount", [2**53, -(2**53), 2**63 - 1, -(2**63)])
def test_msgpack_incr_by_a_huge_amount_is_refused(store: SessionStore, amount: int) -> None:
    s = store.create({"n": 0})
    with pytest.raises(SessionError):
        s.incr("n", amount)
    assert _raw(store, s.handle, "n") == msgpack.packb(0)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("amount", [1.5, 0.5, 2.0, float("nan"), float("inf"), True, "1"])
def test_incr_by_an_amount_that_is_no_integer_is_refused_and_changes_nothing(
        session_url: str, codec: str, amount: object) -> None:
    store = SessionStore(session_url, secret_keys=KEYS, codec=codec, key_prefix=f"r{uuid.uuid4().hex[:6]}")
    s = store.create({"n": 1})
    before = _raw(store, s.handle, "n")
    with pytest.raises((SessionError, TypeError, ValueError)):
        s.incr("n", amount)  # type: ignore[arg-type]
    assert _raw(store, s.handle, "n") == before
    assert store.open(store.sign(s.sid))["n"] == 1
    store.close()


# -- metadata no statekit wrote (a tampered or corrupted hash): never trusted ----------------


@pytest.mark.parametrize(("field", "bad"), [
    ("m:v", b"x"), ("m:v", b"1.5"), ("m:u", b"\xff\xfe"),  # raised ValueError / UnicodeDecodeError
    ("m:c", b"nan"), ("m:c", b"-inf"), ("m:s", b"inf"), ("m:s", b"nan"),  # never expired
])
def test_a_session_with_unreadable_metadata_is_treated_as_ended(session_url: str, field: str,
                                                                 bad: bytes) -> None:
    store = SessionStore(session_url, secret_keys=KEYS, key_prefix=f"r{uuid.uuid4().hex[:6]}")
    s = store.create({"a": 1}, user_id="ann")
    key = store.engine.key(s.handle)  # type: ignore[attr-defined]
    store.engine.client.hset(key, field, bad)  # type: ignore[attr-defined]
    loaded = store.open(store.sign(s.sid))
    assert loaded.new and dict(loaded) == {}  # a fresh session, not the unreadable one
    loaded["b"] = 2
    assert store.save(loaded) and loaded.sid != s.sid
    assert store.engine.client.hget(key, field) == bad  # type: ignore[attr-defined]  # left as it is
    assert [i.handle for i in store.list_user_sessions("ann")] == []
    store.close()


def test_an_unreadable_idle_override_falls_back_to_the_stores_idle_timeout(session_url: str) -> None:
    store = SessionStore(session_url, secret_keys=KEYS, key_prefix=f"r{uuid.uuid4().hex[:6]}",
                         idle_timeout=600)
    s = store.create({"a": 1})
    store.engine.client.hset(store.engine.key(s.handle), "m:i", b"nan")  # type: ignore[attr-defined]
    loaded = store.open(store.sign(s.sid))
    assert not loaded.new and loaded["a"] == 1
    assert loaded.idle_timeout is None or loaded.idle_timeout == 0
    loaded["a"] = 2
    assert store.save(loaded)  # raised "cannot convert float NaN to integer"
    store.close()
