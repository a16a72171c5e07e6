"""statekit.sessions_carryover: the claim, the old-side delete, and plain-data pickle."""

from __future__ import annotations

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
from statekit.sessions_carryover import CarryOver, loads_plain_pickle

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
    import statekit.sessions_carryover as carryover

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
    url = "memory://carry" if store.engine.__class__.__name__ == "MemoryEngine" else None
    rotated = SessionStore(url, client=None if url else store.engine.client, secret_keys=["n" * 32, "k" * 32],
                           user_key="_user_id", key_prefix=store.key_prefix)
    rotated.carry_over = carry
    later = rotated.open("old-cookie")
    assert later.new and dict(later) == {}
    assert store.counters.get("carried_over") + rotated.counters.get("carried_over") == 1
