"""A JSON codec's payload with tagged types (bytes, tuples, datetimes, sets...) is read
by the C scanner with the codec's own tag hook (``Cache._loads``), not through the
codec's ``loads`` (its whitespace checks and a copy of the payload: ~1 us of a 64-byte
value's 2). Pinned: every tagged type reads back as the codec reads it, from a real
server too, with both JSON codecs; a payload the scanner does not read whole (padding,
trailing data) goes to the codec; one neither reads (a bad tag, bad base64, a hash
flood) is a miss counted ``undecodable``, as before."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
import redis

from statekit.cache import Cache
from statekit.serializers import JSONSerializer, WebJSONSerializer

pytestmark = pytest.mark.redis

VALUES: list[Any] = [
    b"x" * 64, b"", (1, "a", None), {1: "int key", (2, 3): "tuple key"},
    dt.datetime(2026, 12, 7, 19, 0, tzinfo=dt.timezone.utc), dt.date(2026, 1, 2), dt.time(3, 4, 5),
    dt.timedelta(days=1, seconds=2, microseconds=3), decimal.Decimal("1.10"), uuid.UUID(int=7),
    {1, 2, 3}, frozenset({"a"}), {"nested": [b"\x00\xff", {"t": (1,)}], "plain": 1.5},
    "text with \u0000 inside", {"\x00": "a key like the tag"},
]


@pytest.mark.parametrize("serializer", [JSONSerializer, WebJSONSerializer])
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_tagged_values_read_as_the_codec_reads_them(redis_url: str, serializer: type, value: Any) -> None:
    cache = Cache(redis_url, namespace=f"review17-tagged-{uuid.uuid4().hex}", serializer=serializer())
    try:
        body = cache._encode(value)
        assert body[0] == 1
        assert cache._loads(body, 1) == cache._codec.loads(body[1:]) == value
        assert type(cache._loads(body, 1)) is type(value)
        assert cache.set("k", value) and cache.get("k") == value
        assert cache.get_many(["k"]) == {"k": value}
        assert cache.stats()["undecodable"] == 0
    finally:
        cache.close()


def test_a_payload_the_scanner_does_not_read_whole_goes_to_the_codec() -> None:
    cache = Cache("memory://review17-tagged", prefix="x")
    # whitespace around the payload: the codec's loads() takes it, the scanner stops short
    padded = b'\x01 {"\\u0000":["b","eHg="]} '
    assert cache._loads(padded, 1) == b"xx"


@pytest.mark.parametrize("payload", [
    b'{"\\u0000":["nosuchtag",1]}', b'{"\\u0000":["b","not base64!"]}', b'{"\\u0000":["t"]}',
    b'{"\\u0000":["b","eHg="]} trailing', b'{"\\u0000":["dt","not a date"]}',
])
def test_an_undecodable_tagged_payload_is_a_counted_miss(redis_url: str, payload: bytes) -> None:
    cache = Cache(redis_url, namespace=f"review17-tagged-{uuid.uuid4().hex}")
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(cache.base + "0:k", b"\x01" + payload)
        assert cache.get("k", "default") == "default"
        assert cache.stats()["undecodable"] == 1 and cache.stats()["misses"] == 1
    finally:
        raw.close()
        cache.close()
