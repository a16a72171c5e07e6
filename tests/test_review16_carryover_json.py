"""Review 16: Flask-Session's JSON sessions carried over as Flask-Session itself reads
them. Flask-Session 0.8 (msgspec) writes a NaN or an infinite float as ``null`` and
refuses ``NaN``, ``Infinity``, ``-Infinity`` and numbers out of a float's range
(``1e999``) when it reads JSON (its own format, or the fallback of its msgpack format);
Python's ``json.loads`` reads them as floats. Such a value was never a Flask-Session
session: it is a refused carry-over. In msgpack, where msgspec writes and reads NaN and
infinities as floats, they are carried over."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator

import msgpack
import msgspec
import pytest
import redis

from statekit.errors import SerializationError
from statekit.sessions import SessionStore
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis

pytestmark = pytest.mark.redis


@pytest.fixture
def old(redis_url: str) -> Iterator[redis.Redis]:
    """The old Flask-Session Redis: another database of the test server."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2")
    yield client
    client.close()


def _store(redis_url: str, old: redis.Redis) -> SessionStore:
    store = SessionStore(redis_url, secret_keys=["k" * 32], user_key="_user_id",
                         key_prefix=f"review16-{uuid.uuid4().hex}")
    store.carry_over = CarryOver(FlaskSessionRedis(client=old))
    return store


#: JSON Python reads with a float msgspec refuses (non-standard constants, and numbers
#: that overflow a float), at the top, nested, and spelt as Python's json writes them
_NOT_FLASK_SESSION_JSON = [
    b'{"_user_id":"eve","x":NaN}',
    b'{"_user_id":"eve","x":Infinity}',
    b'{"_user_id":"eve","x":-Infinity}',
    b'{"_user_id":"eve","x":[1,{"y":NaN}]}',
    b'{"_user_id":"eve","x":1e999}',
    b'{"_user_id":"eve","x":-1E+400}',
    b'{"_user_id":"eve","x":1' + b"0" * 400 + b'.5}',
    json.dumps({"_user_id": "eve", "x": [math.inf, -math.inf, math.nan]}).encode(),
]


@pytest.mark.parametrize("raw", _NOT_FLASK_SESSION_JSON)
def test_json_flask_session_cannot_read_is_refused(redis_url: str, old: redis.Redis, raw: bytes) -> None:
    """Flask-Session's own reader (msgspec.json) refuses it and Python's json reads it;
    the carry-over refuses it: a fresh session counted in carry_over_refused, the old
    entry kept, and the reason says which value."""
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(raw)
    assert json.loads(raw)["_user_id"] == "eve"  # what the carry-over used to read
    sid = uuid.uuid4().hex
    old.set("session:" + sid, raw)
    try:
        with pytest.raises(SerializationError, match="JSON") as refused:
            FlaskSessionRedis(client=old).read(sid)
        assert "pickle" not in str(refused.value)
        store = _store(redis_url, old)
        session = store.open(sid)
        assert dict(session) == {}
        assert store.counters.get("carry_over_refused") == 1
        assert store.counters.get("carried_over") == 0
        assert old.exists("session:" + sid)
    finally:
        old.delete("session:" + sid)


def test_json_floats_flask_session_reads_are_carried_over(redis_url: str, old: redis.Redis) -> None:
    """Finite floats at a float's edges, underflow to 0 and big integers: msgspec reads
    them as Python's json does, and they are carried over."""
    raw = b'{"_user_id":"eve","f":[1.5,-0.0,5e-324,1.7976931348623157e308,-1e308,1e-999],"n":' + \
        b"9" * 40 + b"}"
    data = msgspec.json.decode(raw)
    assert json.loads(raw) == data
    sid = uuid.uuid4().hex
    old.set("session:" + sid, raw)
    try:
        store = _store(redis_url, old)
        session = store.open(sid)
        assert dict(session) == data
        assert store.counters.get("carried_over") == 1
    finally:
        old.delete("session:" + sid)


def test_msgpack_nan_and_infinities_msgspec_writes_are_carried_over(redis_url: str, old: redis.Redis) -> None:
    """Flask-Session 0.8's msgpack: msgspec writes NaN and the infinities as floats and
    reads them back; so does the carry-over."""
    raw = msgspec.msgpack.encode({"_user_id": "eve", "x": [math.nan, math.inf, -math.inf]})
    assert msgpack.unpackb(raw)["x"][1:] == [math.inf, -math.inf]
    sid = uuid.uuid4().hex
    old.set("session:" + sid, raw)
    try:
        store = _store(redis_url, old)
        session = store.open(sid)
        assert session["_user_id"] == "eve"
        nan, inf, minus_inf = session["x"]
        assert math.isnan(nan) and (inf, minus_inf) == (math.inf, -math.inf)
        assert store.counters.get("carried_over") == 1
    finally:
        old.delete("session:" + sid)
