"""Review 15 (security): session carry-over attacked by a hostile user (the cookie) and
a hostile co-tenant of the old Redis (the value under the old key), on real servers:
a pickle that would run code never runs, opted in or not; the plain-data pickle
reader allocates and computes no more than its bytes; a value statekit cannot store is
a refusal, not a rejected cookie, and says why (a JSON number too long, a Timestamp
out of range, msgpack not installed). Flask-Session 0.8's datetimes (msgpack
Timestamps) are carried over as Flask-Session itself read them."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import struct
import sys
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import redis
from flask import Flask

from statekit.errors import SerializationError
from statekit.sessions import SessionStore
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis, loads_plain_pickle

SECRET = "review15-old-app-secret-0123456789"


class _Bomb:
    """A pickle that creates *path* when unpickled by ``pickle.loads``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def old(redis_url: str) -> Iterator[redis.Redis]:
    """The old Flask-Session Redis: another database of the test server."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2")
    yield client
    client.close()


def _store(redis_url: str) -> SessionStore:
    return SessionStore(redis_url, secret_keys=["k" * 32], user_key="_user_id",
                        key_prefix=f"review15-{uuid.uuid4().hex}")


@pytest.mark.redis
@pytest.mark.parametrize("plain_pickle", [False, True], ids=["pickle-off", "pickle-on"])
@pytest.mark.parametrize("use_signer", [False, True], ids=["plain-id", "signed-id"])
@pytest.mark.parametrize("where", ["top", "nested", "protocol0"])
def test_a_pickle_bomb_under_the_old_key_never_runs(redis_url: str, old: redis.Redis, tmp_path: Path,
                                                     use_signer: bool, plain_pickle: bool,
                                                     where: str) -> None:
    """The bomb (``os.system('touch ...')``) under ``session:<sid>`` and the cookie that
    names it (signed with the old app's key when the signer was on): a fresh session,
    counted as a refused carry-over; the file is never created, the old entry kept."""
    marker = tmp_path / "pwned"
    bomb: Any = {"top": _Bomb(marker), "nested": {"_user_id": "eve", "x": [_Bomb(marker)]},
                 "protocol0": {"_user_id": "eve", "x": _Bomb(marker)}}[where]
    sid = uuid.uuid4().hex
    old.set("session:" + sid, pickle.dumps(bomb, 0 if where == "protocol0" else 5))
    previous = FlaskSessionRedis(client=old, secret_keys=[SECRET], use_signer=use_signer,
                                 plain_pickle=plain_pickle)
    store = _store(redis_url)
    store.carry_over = CarryOver(previous)
    cookie = previous._signers[0].sign(sid).decode() if use_signer else sid
    session = store.open(cookie)
    assert session.new and dict(session) == {}
    assert not marker.exists()
    assert store.counters.get("carry_over_refused") == 1 and store.counters.get("carried_over") == 0
    assert old.exists("session:" + sid)


def test_a_memo_index_far_beyond_the_pickle_allocates_nothing() -> None:
    """``LONG_BINPUT 2**22`` in a 12-byte pickle: the unpickler grew its memo array to
    that index (8 bytes an entry, each one written: a 12-byte value of 2**30 took 1 GB
    and 0.7 s); the pickler numbers its memo 0, 1, 2..., so an index beyond the
    opcodes before it is refused before anything is unpickled."""
    tracemalloc.start()
    try:
        with pytest.raises(SerializationError, match="memo"):
            loads_plain_pickle(b"\x80\x02}r" + struct.pack("<I", 2**22) + b".")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@pytest.mark.parametrize("encoding", ["punycode", "idna", "utf-7", "rot13"])
@pytest.mark.parametrize("name", [b"bytes", b"bytearray"])
def test_bytes_through_a_codec_other_than_latin1_is_refused(name: bytes, encoding: str) -> None:
    """``bytes(text, 'punycode')`` is quadratic in the text (an 83 KB pickle took 19 s
    of CPU): the plain-data reader lets ``bytes`` and ``bytearray`` take a text only
    with latin-1, the one encoding protocols 0-2 write."""
    text = "\u0101" * 200
    data = (b"\x80\x02c__builtin__\n" + name + b"\nX" + struct.pack("<I", len(text.encode())) + text.encode()
            + b"X" + struct.pack("<I", len(encoding)) + encoding.encode() + b"\x86R.")
    with pytest.raises(SerializationError, match="refused"):
        loads_plain_pickle(data)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_bytes_and_bytearrays_of_every_protocol_still_load(protocol: int) -> None:
    value = {"b": b"\x00\xff", "a": bytearray(b"\x00\xffz"), "e": b"", "ea": bytearray()}
    assert loads_plain_pickle(pickle.dumps(value, protocol)) == value
    # Python 2's bytearray: bytearray(u'...', 'latin-1')
    assert loads_plain_pickle(b"c__builtin__\nbytearray\n(V\\u00ff\nVlatin-1\ntR.") == bytearray(b"\xff")


@pytest.mark.redis
@pytest.mark.parametrize("value", [msgpack.packb({"_user_id": "eve", "x": msgpack.ExtType(42, b"zz")}),
                                   b"\x82" + msgpack.packb("_user_id") + msgpack.packb("eve")
                                   + msgpack.packb("x") + b"\x91" * 900 + b"\x90"],
                         ids=["msgpack-ext", "msgpack-900-deep"])
def test_a_value_statekit_cannot_store_is_a_refusal_not_a_rejected_cookie(
        redis_url: str, old: redis.Redis, value: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A Flask-Session value that decodes but that statekit cannot store (a msgpack ext
    type, lists nested deeper than the session codec writes): the cookie verified and
    named an old session, so it is a refused carry-over (a fresh session, counted once),
    not a 'rejected session cookie: bad signature' counted in ``rejected_cookies``."""
    sid = uuid.uuid4().hex
    old.set("session:" + sid, value)
    store = _store(redis_url)
    store.carry_over = CarryOver(FlaskSessionRedis(client=old))
    with caplog.at_level(logging.WARNING):
        session = store.open(sid)
    assert session.new and dict(session) == {}
    assert store.counters.get("carry_over_refused") == 1 and store.counters.get("rejected_cookies") == 0
    assert "rejected session cookie" not in caplog.text
    assert old.exists("session:" + sid)


@pytest.mark.redis
@pytest.mark.parametrize("delete", [True, False], ids=["delete", "keep"])
def test_two_tabs_carry_one_old_cookie_over_into_one_session(redis_url: str, old: redis.Redis,
                                                             delete: bool) -> None:
    """Two requests with the same old cookie, both past the old-store read before
    either claims it: one statekit session (the loser's own is destroyed), counted
    once; the old entry deleted with ``delete=True``, left to expire otherwise."""
    sid = uuid.uuid4().hex
    old.set("session:" + sid, msgpack.packb({"_user_id": "alice", "cart": ["apple"]}))
    previous = FlaskSessionRedis(client=old)
    store = _store(redis_url)
    store.carry_over = CarryOver(previous, delete=delete)
    both_read = threading.Barrier(2, timeout=30)
    read = previous.read

    def read_together(cookie: str) -> Any:
        data = read(cookie)
        both_read.wait()
        return data

    previous.read = read_together  # type: ignore[method-assign]
    sessions: list[Any] = [None, None]

    def run(i: int) -> None:
        sessions[i] = store.open(sid)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(s is not None and dict(s) == {"_user_id": "alice", "cart": ["apple"]} for s in sessions)
    assert sessions[0].sid == sessions[1].sid
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]
    assert store.counters.get("carried_over") == 1
    assert old.exists("session:" + sid) == (not delete)


_P = 2**61 - 1  # ints that are multiples of it all hash to 0, in every process


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("kind", ["set", "frozenset", "dict-keys", "nested-dict-keys"])
def test_plain_pickle_of_values_sharing_one_hash_is_refused(kind: str, protocol: int) -> None:
    """Thousands of distinct ints with one hash as a set's members or a dict's keys:
    building it takes n**2/2 comparisons (a pickle of 1 MB: minutes of CPU on every
    request with the cookie). Every way a pickle has to build a dict or set (DICT,
    SETITEM, SETITEMS, ADDITEMS, FROZENSET, set() or frozenset() by REDUCE) counts
    the hashes of the keys it adds: more than a few shared is a refusal, before the
    dict or set grows."""
    ints = [i * _P for i in range(3000)]
    value: Any = {"set": lambda: set(ints), "frozenset": lambda: frozenset(ints),
                  "dict-keys": lambda: dict.fromkeys(ints, 0),
                  "nested-dict-keys": lambda: {"_user_id": "eve", "x": [dict.fromkeys(ints, "v")]}}[kind]()
    with pytest.raises(SerializationError, match="share"):
        loads_plain_pickle(pickle.dumps(value, protocol))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickle_of_large_sets_and_dicts_still_loads(protocol: int) -> None:
    value = {"s": set(range(-3000, 3000)), "f": frozenset(str(i) for i in range(3000)),
             "d": {i: [i] for i in range(3000)}, "t": {(i, -i): None for i in range(3000)},
             "alike": {-1, -2, _P, 2 * _P}}  # a few equal hashes, as any data may have
    assert loads_plain_pickle(pickle.dumps(value, protocol)) == value


def _colliding_timestamps(count: int) -> list[msgpack.Timestamp]:
    """Timestamps that all hash alike: a Timestamp hashes as ``(seconds, nanoseconds)``,
    and the tuple hash (xxHash's round, 64-bit) is invertible: for each nanoseconds
    the seconds giving one chosen hash are solved, kept when they are an int's hash."""
    m = 2**64
    p1, p2, p5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
    i1, i2 = pow(p1, -1, m), pow(p2, -1, m)

    def rotr(x: int) -> int:
        return ((x >> 31) | (x << 33)) % m

    found: list[msgpack.Timestamp] = []
    acc2 = (12345 - (2 ^ p5 ^ 3527539)) % m
    ns = 0
    while len(found) < count:
        acc1 = (rotr(acc2 * i1 % m) - hash(ns) * p2) % m
        lane = ((rotr(acc1 * i1 % m) - p5) * i2) % m
        seconds = lane - m if lane >= 2**63 else lane
        if -_P < seconds < _P and hash(seconds) == seconds:
            found.append(msgpack.Timestamp(seconds, ns))
        ns += 1
    assert len({hash(t) for t in found}) == 1
    return found


@pytest.mark.redis
def test_a_flask_session_map_keyed_by_timestamps_sharing_one_hash_is_refused(
        redis_url: str, old: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Flask-Session's msgpack is read with any key (a dict of ints is a session's
    data): a map keyed by 3000 msgpack Timestamps with one hash (a co-tenant's write
    under the old key) is refused before the dict is built, not built in quadratic
    time (1 MB of them: about a minute, on every request with the cookie)."""
    keys = _colliding_timestamps(3000)
    sid = uuid.uuid4().hex
    value = (b"\x82" + msgpack.packb("_user_id") + msgpack.packb("eve") + msgpack.packb("x")
             + b"\xdf" + len(keys).to_bytes(4, "big") + b"".join(msgpack.packb(k) + b"\x00" for k in keys))
    old.set("session:" + sid, value)
    previous = FlaskSessionRedis(client=old)
    with pytest.raises(SerializationError, match="share"):
        previous.read(sid)
    store = _store(redis_url)
    store.carry_over = CarryOver(previous)
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        assert store.open(sid).new
    assert store.counters.get("carry_over_refused") == 1 and "hash flood" in caplog.text


@pytest.mark.redis
@pytest.mark.parametrize("fmt", ["json", "msgpack", "pickle"])
def test_an_old_session_over_the_size_read_is_refused(redis_url: str, old: redis.Redis, fmt: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """An old session of more than ``MAX_SESSION_BYTES`` (1 MB) is refused before it is
    decoded: the worst shapes cost up to ~0.4 s a MB to decode (the plain-data pickle
    reader; 100 MB: 40 s), on every request with a cookie naming it while it is
    refused. One of 1 MB is carried over."""
    from statekit.sessions import carryover

    def encode(data: dict[str, Any]) -> bytes:
        import json

        return {"json": lambda: json.dumps(data).encode(), "msgpack": lambda: msgpack.packb(data),
                "pickle": lambda: pickle.dumps(data, 2)}[fmt]()

    def sized(n: int) -> bytes:
        pad = 0
        while len(raw := encode({"_user_id": "eve", "pad": "p" * pad})) != n:
            pad += n - len(raw)  # the length fields grow with the pad: again, to the byte
        return raw

    big, fits = uuid.uuid4().hex, uuid.uuid4().hex
    old.set("session:" + big, sized(carryover.MAX_SESSION_BYTES + 1))
    old.set("session:" + fits, sized(carryover.MAX_SESSION_BYTES))
    assert old.strlen("session:" + big) == carryover.MAX_SESSION_BYTES + 1
    assert old.strlen("session:" + fits) == carryover.MAX_SESSION_BYTES
    previous = FlaskSessionRedis(client=old, secret_keys=[SECRET], use_signer=True, plain_pickle=True)
    store = _store(redis_url)
    store.carry_over = CarryOver(previous)
    sign = previous._signers[0].sign
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        assert store.open(sign(big).decode()).new
    assert store.counters.get("carry_over_refused") == 1 and "MAX_SESSION_BYTES" in caplog.text
    assert store.open(sign(fits).decode()).get("_user_id") == "eve"
    assert store.counters.get("carried_over") == 1


def test_plain_pickle_over_the_size_read_is_refused() -> None:
    from statekit.sessions import carryover

    with pytest.raises(SerializationError, match="MAX_SESSION_BYTES"):
        loads_plain_pickle(pickle.dumps(b"x" * carryover.MAX_SESSION_BYTES, 2))


def _shared_tuple(depth: int) -> bytes:
    """A pickle (protocol 2) of t0 = (), t(n+1) = (tn, tn) through the memo: 6 bytes a
    level, and hashing t(depth) hashes 2**depth tuples (a tuple's hash is not cached)."""
    data = b"\x80\x02)q\x00"
    for i in range(depth):
        data += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1])
    return data


@pytest.mark.parametrize("where", ["dict-key", "set-member", "frozenset-member"])
def test_plain_pickle_refuses_keys_that_cost_more_to_hash_than_its_size(where: str) -> None:
    """A tuple key sharing its halves through the memo, 22 levels (140 bytes): its hash
    is 4 million tuple hashes, 40 levels a day's CPU; ``_within`` refused it only once
    the dict was built. Every key's hash is charged as the tree it is (a shared part
    each time): more than the pickle's size allows is refused before hashing."""
    tail = {"dict-key": b"}h\x16K\x01s.", "set-member": b"\x8f(h\x16\x90.",
            "frozenset-member": b"(h\x16\x91."}[where]
    data = _shared_tuple(22) + tail
    with pytest.raises(SerializationError, match="hash"):
        loads_plain_pickle(data)


def test_plain_pickle_refuses_one_big_int_hashed_as_a_key_again_and_again() -> None:
    """An int of 100 KB (LONG4) in the memo, the key of 2000 dicts: each hash reads it
    whole (an int's hash is not cached), 200 MB of hashing from a 110 KB pickle; in
    1 MB, 50 000 dicts, it was a minute. Charged per use, it is refused."""
    big = (1 << (8 * 100_000 - 2)).to_bytes(100_000, "little")
    data = b"\x80\x02\x8b" + struct.pack("<i", len(big)) + big + b"q\x00]("
    data += b"}h\x00K\x01s" * 2000 + b"e."
    with pytest.raises(SerializationError, match="hash"):
        loads_plain_pickle(data)


def test_plain_pickle_charges_tuples_and_ints_as_data_does() -> None:
    value = {"k": {(i, (i, str(i)), 10**40 + i): i for i in range(2000)}, "s": {(1, 2), (3, (4, 5))},
             "f": frozenset({(1, 2)}), "big": {10**1000: 1}}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert loads_plain_pickle(pickle.dumps(value, protocol)) == value


UTC = dt.timezone.utc


def _flask_session_serializer() -> Any:
    """Flask-Session 0.8's own serializer, as its Redis interface makes it (msgpack)."""
    from flask_session.base import MsgSpecSerializer

    return MsgSpecSerializer(Flask("before"), "msgpack")


def _timestamp(seconds: int, nanoseconds: int) -> bytes:
    """A msgpack Timestamp (ext -1) in its 96-bit form, as the spec lays it out."""
    return b"\xc7\x0c\xff" + struct.pack(">Iq", nanoseconds, seconds)


def _session(value: bytes) -> bytes:
    """A Flask-Session msgpack map {"_user_id": "eve", "t": <value>}."""
    return b"\x82" + msgpack.packb("_user_id") + msgpack.packb("eve") + msgpack.packb("t") + value


@pytest.mark.redis
def test_flask_session_datetimes_are_carried_over_as_flask_session_read_them(
        redis_url: str, old: redis.Redis) -> None:
    """Flask-Session 0.8 (msgspec) writes an aware datetime as a msgpack Timestamp and
    reads it back as a datetime in UTC; naive datetimes, dates, times and timedeltas
    it writes as ISO text and reads back as text. A session holding them (the common
    ``session["last_seen"] = datetime.now(timezone.utc)``) was refused ('cannot store
    a Timestamp'): the user logged out at the switch. Carried over now, equal to what
    Flask-Session's own decode returns, at the top, nested and as keys, and stored:
    the next request reads the same datetimes from statekit."""
    serializer = _flask_session_serializer()
    data = {
        "_user_id": "alice",
        "last_seen": dt.datetime(2026, 12, 7, 14, 5, 9, 123456, tzinfo=UTC),
        "paris": dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "epoch_before": dt.datetime(1900, 1, 1, tzinfo=UTC),
        "naive": dt.datetime(2026, 12, 7, 14, 5, 9), "day": dt.date(2026, 12, 7),
        "at": dt.time(14, 5), "wait": dt.timedelta(minutes=5),
        "visits": [dt.datetime(2026, 1, 1, tzinfo=UTC), {"at": dt.datetime(2025, 1, 1, tzinfo=UTC)}],
        "by_day": {"first": dt.datetime(1, 1, 1, tzinfo=UTC), "last": dt.datetime.max.replace(tzinfo=UTC)},
    }
    raw = serializer.encode(data)
    expected = serializer.decode(raw)
    assert expected["last_seen"] == data["last_seen"] and expected["naive"] == "2026-12-07T14:05:09"
    sid = uuid.uuid4().hex
    old.set("session:" + sid, raw)
    assert FlaskSessionRedis(client=old).read(sid) == expected
    store = _store(redis_url)
    store.carry_over = CarryOver(FlaskSessionRedis(client=old))
    session = store.open(sid)
    assert not session.new and dict(session) == expected
    assert session["paris"].tzinfo is not None and session["paris"] == data["paris"]
    assert store.counters.get("carried_over") == 1 and store.counters.get("carry_over_refused") == 0
    again = store.load(session.sid)
    assert again is not None and dict(again) == expected


@pytest.mark.parametrize(("seconds", "nanoseconds"), [
    (0, 1500), (0, 2500), (0, 499), (0, 500), (0, 999_999_999), (-1, 999_999_500), (-1, 999_999_499),
    (253402300799, 999_999_499), (-62135596800, 999_999_999), (1_733_580_309, 123_456_789)])
def test_crafted_timestamps_read_as_msgspec_reads_them(old: redis.Redis, seconds: int,
                                                       nanoseconds: int) -> None:
    """Nanoseconds no Python datetime wrote (a crafted entry) are rounded to the
    microsecond as msgspec rounds them (half up), across the epoch and the ends of
    datetime's range: the value Flask-Session would have returned."""
    raw = _session(_timestamp(seconds, nanoseconds))
    sid = uuid.uuid4().hex
    old.set("session:" + sid, raw)
    assert FlaskSessionRedis(client=old).read(sid) == msgspec.msgpack.Decoder().decode(raw)


@pytest.mark.redis
@pytest.mark.parametrize(("value", "reason"), [
    (_timestamp(253402300800, 0), "out of"), (_timestamp(-62135596801, 999_999_999), "out of"),
    (_timestamp(253402300799, 999_999_500), "out of"), (_timestamp(0, 1_000_000_000), "nanoseconds"),
    (b"\xd6\xff\x00\x00", "msgpack"), (b"\x81" + _timestamp(2**40, 0) + b"\x01", "out of")],
    ids=["after-9999", "before-1", "rounded-past-9999", "nanoseconds", "short", "a-key"])
def test_a_timestamp_flask_session_could_not_read_is_refused_saying_why(
        redis_url: str, old: redis.Redis, value: bytes, reason: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A Timestamp msgspec refuses (out of datetime's range, or rounded past it; nanoseconds
    of a second or more; a malformed one): Flask-Session could not read the session
    either. A refused carry-over (a fresh session) whose reason is the Timestamp, not
    'not msgpack or JSON; a pickle...'."""
    raw = _session(value)
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.Decoder().decode(raw)
    sid = uuid.uuid4().hex
    old.set("session:" + sid, raw)
    with pytest.raises(SerializationError, match=reason) as refused:
        FlaskSessionRedis(client=old).read(sid)
    assert "pickle" not in str(refused.value)
    store = _store(redis_url)
    store.carry_over = CarryOver(FlaskSessionRedis(client=old))
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        assert store.open(sid).new
    assert store.counters.get("carry_over_refused") == 1 and reason in caplog.text


@pytest.mark.redis
def test_a_json_number_too_long_is_refused_saying_so(redis_url: str, old: redis.Redis,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A JSON session (Flask-Session's SESSION_SERIALIZATION_FORMAT = 'json') with an
    integer of 5000 digits: Python's json refuses it (int_max_str_digits), and the
    refusal said 'not msgpack or JSON; a pickle ... is read only under a signed id'.
    It names the number now; plain JSON sessions are read as before."""
    sid, fine = uuid.uuid4().hex, uuid.uuid4().hex
    old.set("session:" + sid, b'{"_user_id": "eve", "n": ' + b"1" * 5000 + b"}")
    old.set("session:" + fine, json.dumps({"_user_id": "eve", "n": 10**40}).encode())
    previous = FlaskSessionRedis(client=old)
    with pytest.raises(SerializationError, match="digits") as refused:
        previous.read(sid)
    assert "pickle" not in str(refused.value) and "JSON" in str(refused.value)
    assert previous.read(fine) == {"_user_id": "eve", "n": 10**40}
    store = _store(redis_url)
    store.carry_over = CarryOver(previous)
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        assert store.open(sid).new
    assert store.counters.get("carry_over_refused") == 1 and "digits" in caplog.text


def test_without_msgpack_json_is_read_and_msgpack_refused_saying_what_to_install(
        old: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """msgpack is statekit's extra: without it a JSON session is read as before, and a
    Flask-Session 0.8 msgpack session is refused naming the extra, not as 'not msgpack
    or JSON; a pickle...'."""
    json_sid, msgpack_sid = uuid.uuid4().hex, uuid.uuid4().hex
    old.set("session:" + json_sid, json.dumps({"_user_id": "eve"}).encode())
    old.set("session:" + msgpack_sid, _flask_session_serializer().encode({"_user_id": "eve"}))
    monkeypatch.setitem(sys.modules, "msgpack", None)  # import msgpack: ImportError
    previous = FlaskSessionRedis(client=old)
    assert previous.read(json_sid) == {"_user_id": "eve"}
    with pytest.raises(SerializationError, match=r"statekit\[msgpack\]"):
        previous.read(msgpack_sid)
