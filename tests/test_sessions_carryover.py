"""statekit.sessions.carryover: the claim, the old-side delete, and plain-data pickle."""

from __future__ import annotations

import logging
import pickle
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit import metrics
from statekit.errors import SerializationError
from statekit.sessions import SessionStore
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis, loads_plain_pickle

pytestmark = pytest.mark.redis


class DictStore:
    """A previous store in a dict: cookie -> data."""

    name = "dict"

    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.reads = 0

    def read(self, cookie: str) -> Mapping[str, Any] | None:
        self.reads += 1
        return self.data.get(cookie)

    def forget(self, cookie: str) -> None:
        self.data.pop(cookie, None)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> SessionStore:
    url = "memory://carry" if request.param == "memory" else request.getfixturevalue("redis_url")
    s = SessionStore(url, secret_keys=["k" * 32], user_key="_user_id", key_prefix=f"carry-{uuid.uuid4().hex}")
    s.carry_over = CarryOver(DictStore({"old-cookie": {"_user_id": "alice", "cart": ["apple"]}}))
    return s


def test_carried_over_once_into_a_new_signed_session(store: SessionStore) -> None:
    s = store.open("old-cookie")
    assert dict(s) == {"_user_id": "alice", "cart": ["apple"]} and not s.new and s.send_cookie
    assert store.open(store.sign(s.sid)) == s  # the new cookie names it
    assert store.carry_over is not None and store.carry_over.previous.data == {}  # type: ignore[attr-defined]
    again = store.open("old-cookie")  # a parallel request within the alias window: the same session
    assert again.sid == s.sid
    assert store.counters.get("carried_over") == 1
    assert metrics.snapshot()["sessions"][store.key_prefix]["carried_over"] == 1  # exported as a counter
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]


def test_unknown_cookie_is_a_fresh_session(store: SessionStore) -> None:
    s = store.open("not-an-old-cookie")
    assert s.new and dict(s) == {}
    assert store.counters.get("rejected_cookies") == 1


def test_a_value_statekit_cannot_store_refuses_the_carry_over(store: SessionStore) -> None:
    assert store.carry_over is not None
    store.carry_over.previous.data["odd"] = {"x": object()}  # type: ignore[attr-defined]
    assert store.open("odd").new
    assert store.counters.get("carry_over_refused") == 1


class _FakeRedis:
    """An old Flask-Session Redis: key -> bytes."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


@pytest.mark.parametrize("value", [pickle.dumps({"_user_id": "bob"}), b"\x00not a known format"],
                         ids=["pickle", "unknown-format"])
def test_a_pickle_without_the_opt_in_is_refused_like_an_unknown_format(
        store: SessionStore, value: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """Flask-Session before 0.7's pickle under a signed id, ``plain_pickle`` off (the
    default): a fresh session, counted in ``carry_over_refused`` (not as a rejected
    cookie), one ``statekit.security`` record naming the setting to turn on."""
    old = _FakeRedis({"session:sid1": value})
    previous = FlaskSessionRedis(client=old, secret_keys=["old-secret"], use_signer=True)
    store.carry_over = CarryOver(previous)
    cookie = previous._signers[0].sign("sid1").decode()
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        s = store.open(cookie)
    assert s.new and dict(s) == {} and not s.send_cookie
    assert store.counters.get("carry_over_refused") == 1 and store.counters.get("carried_over") == 0
    assert store.counters.get("rejected_cookies") == 0
    refusals = [r for r in caplog.records if r.name == "statekit.security"]
    assert len(refusals) == 1
    assert "STATEKIT_SESSION_CARRY_OVER_PICKLE" in refusals[0].getMessage()  # what would read a pickle
    assert "session:sid1" in old.data  # nothing deleted


def test_a_pickle_with_the_opt_in_is_carried_over_as_plain_data(store: SessionStore) -> None:
    old = _FakeRedis({"session:sid1": pickle.dumps({"_user_id": "bob", "cart": ["fig"]}),
                      "session:sid2": pickle.dumps({"x": _Evil()})})
    previous = FlaskSessionRedis(client=old, secret_keys=["old-secret"], use_signer=True, plain_pickle=True)
    store.carry_over = CarryOver(previous)
    s = store.open(previous._signers[0].sign("sid1").decode())
    assert dict(s) == {"_user_id": "bob", "cart": ["fig"]} and s.send_cookie
    assert store.open(previous._signers[0].sign("sid2").decode()).new  # names code: refused, never run
    assert store.counters.get("carried_over") == 1 and store.counters.get("carry_over_refused") == 1
    assert list(old.data) == ["session:sid2"]


def test_a_pickle_under_an_unsigned_id_is_refused_even_opted_in(store: SessionStore) -> None:
    old = _FakeRedis({"session:sid1": pickle.dumps({"_user_id": "bob"})})
    store.carry_over = CarryOver(FlaskSessionRedis(client=old, plain_pickle=True))
    assert store.open("sid1").new
    assert store.counters.get("carry_over_refused") == 1 and "session:sid1" in old.data


class _Evil:
    def __reduce__(self) -> Any:
        return (exec, ("raise SystemExit('ran')",))


class _Plain:
    pass


def test_plain_pickle_only() -> None:
    data = {"a": [1, 2.5, "x", b"y", None, True], "t": (1, 2), "s": {1}}
    assert loads_plain_pickle(pickle.dumps(data)) == data
    huge = b"c__builtin__\nbytes\n(I1000000000000\ntR."  # bytes of a size: memory, not data
    rot13 = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    for bad in (pickle.dumps(_Evil()), pickle.dumps(_Plain()), pickle.dumps({"k": _Plain()}), b"garbage",
                huge, rot13):
        with pytest.raises(SerializationError):
            loads_plain_pickle(bad)


def test_plain_pickle_sets_no_attribute_of_the_names_it_allows() -> None:
    """BUILD on an allowed name (``_codecs.encode`` is a function of this process):
    refused before anything runs, and the function is left as it was."""
    import statekit.sessions.carryover as carryover

    before = dict(vars(carryover._latin1))
    for state in (b"}VX\nI1\ns", b"(N}VX\nI1\nst"):  # a dict state; (None, slot state)
        with pytest.raises(SerializationError, match="BUILD"):
            loads_plain_pickle(b"c_codecs\nencode\n" + state + b"b0(t.")
    assert vars(carryover._latin1) == before


@pytest.mark.parametrize("op", [b"\x8e", b"\x8d", b"\x96"], ids=["BINBYTES8", "BINUNICODE8", "BYTEARRAY8"])
def test_plain_pickle_allocates_no_size_beyond_its_data(op: bytes) -> None:
    """A length field asking for gigabytes in a pickle of a few bytes is refused
    before the unpickler allocates that buffer."""
    import struct
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(SerializationError):
            loads_plain_pickle(b"\x80\x05" + op + struct.pack("<Q", 2**31) + b"x.")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24


@pytest.mark.parametrize("bad", [b"(c__builtin__\nset\no.", b"c__builtin__\nset\n)\x81.",
                                 b"\x80\x02\x82\x01.", b"(I1\nP1\n.", b"I1\nQ."],
                         ids=["OBJ", "NEWOBJ", "EXT1", "PERSID", "BINPERSID"])
def test_plain_pickle_refuses_instances_extensions_and_persistent_ids(bad: bytes) -> None:
    with pytest.raises(SerializationError, match="refused: the pickle uses"):
        loads_plain_pickle(bad)


_plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.text(), inner)
    | st.frozensets(st.integers()) | st.sets(st.text()),
    max_leaves=20)


@given(_plain, st.integers(min_value=0, max_value=pickle.HIGHEST_PROTOCOL))
def test_plain_data_pickles_of_every_protocol_load(value: Any, protocol: int) -> None:
    assert loads_plain_pickle(pickle.dumps(value, protocol)) == value


def test_a_secret_key_rotation_does_not_carry_a_spent_cookie_over_again(store: SessionStore) -> None:
    """The old entry is left (``delete=False``, or Flask's cookie sessions, never
    deleted): after the carry-over and a logout, the app rotates its secret keys
    (a new key first, the old one still verifying). The old cookie stays spent: it
    is not carried over again (the logout is not undone)."""
    assert store.carry_over is not None
    carry = CarryOver(store.carry_over.previous, delete=False)
    store.carry_over = carry
    s = store.open("old-cookie")
    assert s.get("_user_id") == "alice"
    store.destroy(s)  # logout
    rotated = SessionStore(engine=store.engine, secret_keys=["n" * 32, "k" * 32], user_key="_user_id",
                           key_prefix=store.key_prefix)
    rotated.carry_over = carry
    later = rotated.open("old-cookie")
    assert later.new and dict(later) == {}
    assert store.counters.get("carried_over") + rotated.counters.get("carried_over") == 1
