"""Review 15 carry-over follow-ups, on real servers: Flask-Session 0.8's datetimes
(msgpack Timestamps) carried over as Flask-Session itself read them; a value statekit
refuses says why (a JSON number too long, a Timestamp out of range, msgpack not
installed)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import struct
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import msgspec
import pytest
import redis
from flask import Flask

from statekit.errors import SerializationError
from statekit.sessions import SessionStore
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis

UTC = dt.timezone.utc


@pytest.fixture
def old(redis_url: str) -> Iterator[redis.Redis]:
    """The old Flask-Session Redis: another database of the test server."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2")
    yield client
    client.close()


def _store(redis_url: str) -> SessionStore:
    return SessionStore(redis_url, secret_keys=["k" * 32], user_key="_user_id",
                        key_prefix=f"review15b-{uuid.uuid4().hex}")


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
