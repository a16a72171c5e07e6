"""statekit.serializers: every codec round-trips every tagged type, names what it
cannot encode, and refuses attacker-written pickle bytecode without running it."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import pickle
import shlex
import threading
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit.errors import ConfigError, SerializationError, SignatureError, StatekitError
from statekit.serializers import (
    JSONSerializer,
    MsgpackSerializer,
    Serializer,
    SignedPickleSerializer,
    get_serializer,
)

KEY_OLD = "old-secret-key"
KEY_NEW = b"new-secret-key-\x00\xff"


def _codecs() -> list[Serializer]:
    return [JSONSerializer(), MsgpackSerializer(), SignedPickleSerializer([KEY_NEW, KEY_OLD])]


CODECS = _codecs()
CODEC_IDS = [c.name for c in CODECS]

# -- strategies -----------------------------------------------------------------------

# whole seconds: real zones have at most that (LMT +00:09:21); finer ones are refused
_offsets = st.integers(min_value=-86399, max_value=86399).map(
    lambda s: dt.timezone(dt.timedelta(seconds=s))
)
_tz = st.none() | _offsets | st.just(dt.timezone.utc)

_hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.datetimes(timezones=_tz)
    | st.dates()
    | st.times(timezones=_tz)
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.uuids()
)
_hashables = st.recursive(
    _hashable_scalars,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
VALUES = st.recursive(
    _hashables,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.just("\x00"), inner, max_size=4)
        | st.dictionaries(_hashables, inner, max_size=4)
        | st.sets(_hashables, max_size=4)
        | st.frozensets(_hashables, max_size=4)
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (a tuple must not come back as
    a list, bytes not as str, an aware datetime keeps its offset)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, (dt.datetime, dt.time)):
        return bool(a == b and a.utcoffset() == b.utcoffset())
    return bool(a == b)


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES)
def test_round_trip(codec: Serializer, value: Any) -> None:
    data = codec.dumps(value)
    assert isinstance(data, bytes)
    assert same(codec.loads(data), value)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize(
    "value",
    [
        {"\x00": ["b", "AAAA"]},  # looks like a tag: must come back as this very dict
        {"\x00": 1, "a": 2},
        {1: "int key", (1, "t"): "tuple key", None: "none key", b"k": "bytes key"},
        {frozenset({1, 2}): {dt.date(2024, 2, 29): decimal.Decimal("-0.00")}},
        [set(), frozenset(), (), [], {}, ""],
        (1, (2, (3, [4, {5: 6}]))),
        dt.datetime(2024, 3, 31, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=-9, minutes=-30))),
        dt.time(23, 59, 59, 999999, tzinfo=dt.timezone.utc),
        dt.timedelta(days=-3, microseconds=7),
        decimal.Decimal("1E+400"),
        decimal.Decimal("-Infinity"),
        uuid.UUID(int=0),
        b"\x00\xff" * 100,
        "\x00 nul and \u2603 snowman",
        2**63 - 1,
        -(2**63),
        float("inf"),
        -0.0,
    ],
    ids=repr,
)
def test_round_trip_edge_cases(codec: Serializer, value: Any) -> None:
    assert same(codec.loads(codec.dumps(value)), value)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_zoneinfo_keeps_the_instant(codec: Serializer) -> None:
    value = dt.datetime(2024, 7, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    back = codec.loads(codec.dumps(value))
    assert back == value
    assert back.utcoffset() == dt.timedelta(hours=2)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_bytearray_comes_back_as_bytes(codec: Serializer) -> None:
    back = codec.loads(codec.dumps(bytearray(b"abc")))
    assert back == b"abc"


@pytest.mark.redis
def test_json_integers_work_with_incrby(redis_url: str) -> None:
    from statekit.redis import create_client

    codec = JSONSerializer()
    client = create_client(redis_url)
    client.set("n", codec.dumps(41))
    client.incrby("n", 1)
    assert codec.loads(client.get("n")) == 42


# -- what cannot be encoded -----------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize("codec", CODECS[:2], ids=CODEC_IDS[:2])
@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (Opaque(), "test_serializers.Opaque"),
        ({"user": [1, {"deep": Opaque()}]}, "test_serializers.Opaque"),
        (object(), "'object'"),
        ({1, Opaque()}, "test_serializers.Opaque"),
        (lambda: 1, "'function'"),
        (1 + 2j, "'complex'"),
        (range(3), "'range'"),
    ],
)
def test_unserializable_names_the_type(codec: Serializer, value: Any, type_name: str) -> None:
    with pytest.raises(SerializationError, match=type_name) as e:
        codec.dumps(value)
    assert codec.name in str(e.value)
    assert isinstance(e.value, StatekitError)
    assert isinstance(e.value, TypeError)


@pytest.mark.parametrize("value", [lambda: 1, threading.Lock(), {"k": (x for x in ())}])
def test_signed_pickle_unpicklable_names_the_type(value: Any) -> None:
    with pytest.raises(SerializationError, match=r"signed-pickle codec"):
        SignedPickleSerializer([KEY_NEW]).dumps(value)


@pytest.mark.parametrize("codec", CODECS[:2], ids=CODEC_IDS[:2])
@pytest.mark.parametrize(
    "value",
    [dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
     dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=1, microseconds=500)))],
)
def test_sub_second_utc_offset_is_refused_not_mangled(codec: Serializer, value: Any) -> None:
    with pytest.raises(SerializationError, match="fraction of a second"):
        codec.dumps(value)


def test_msgpack_int_out_of_range() -> None:
    with pytest.raises(SerializationError, match="'int'"):
        MsgpackSerializer().dumps(2**64)


def test_json_recursion_is_a_serialization_error() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(SerializationError, match="'list'"):
        JSONSerializer().dumps(value)


# -- what cannot be decoded -----------------------------------------------------------

_PLAIN = (type(None), bool, int, float, str, bytes, dt.datetime, dt.date, dt.time, dt.timedelta,
          decimal.Decimal, uuid.UUID)


def _assert_plain(value: Any) -> None:
    """Whatever bytes a codec accepts decode to the tagged types only: no other class
    is ever built from stored bytes."""
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_plain(k)
            _assert_plain(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _assert_plain(item)
    else:
        assert type(value) in _PLAIN, type(value)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_another_error(codec: Serializer, data: bytes) -> None:
    try:
        value = codec.loads(data)
    except SerializationError:
        return
    _assert_plain(value)


_TAGS = st.sampled_from(["m", "t", "b", "dt", "d", "tm", "td", "dec", "u", "s", "fs", "??"])
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.builds(lambda tag, payload: {"\x00": [tag, payload]}, _TAGS, inner)
    ),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(doc=_JSONISH)
def test_json_crafted_tags_are_refused_cleanly(doc: Any) -> None:
    import json

    try:
        value = JSONSerializer().loads(json.dumps(doc).encode())
    except SerializationError:
        return
    _assert_plain(value)


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000, b'{"\\u0000":["td",[1e300,0,0]]}', b'{"\\u0000":["u",[1]]}',
     b'{"\\u0000":["zz",1]}', b'{"\\u0000":["m",[[[1],2]]]}', b"\xff\xfe"],
)
def test_json_malformed_payloads(data: bytes) -> None:
    with pytest.raises(SerializationError, match="json codec refused"):
        JSONSerializer().loads(data)


# -- attacker-written pickle ----------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickle bytecode that runs `touch marker` when unpickled, in several shapes."""
    body = pickle.dumps(_Exploit(marker))
    proto0 = b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    attacker = SignedPickleSerializer(["attacker-guess"]).dumps(_Exploit(marker))
    real_sig = SignedPickleSerializer([KEY_NEW]).dumps("harmless")[:32]
    return {
        "raw pickle": body,
        "protocol 0 pickle": proto0,
        "signed with a wrong key": attacker,
        "no signature": body,
        "truncated signature": attacker[:16] + body,
        "real signature of another value": real_sig + body,
        "signature only": attacker[:32],
        "empty": b"",
    }


def test_the_exploit_is_real(tmp_path: Path) -> None:
    """Guard: the payload does run code when handed to plain pickle, so the refusals
    below prove something."""
    marker = tmp_path / "pwned"
    pickle.loads(_payloads(marker)["raw pickle"])  # noqa: S301 - the point of the test
    assert marker.exists()


@pytest.mark.redis
@pytest.mark.parametrize("codec", _codecs(), ids=CODEC_IDS)
def test_attacker_pickle_in_redis_is_refused_without_running(
    codec: Serializer, redis_url: str, tmp_path: Path
) -> None:
    from statekit.redis import create_client

    marker = tmp_path / "pwned"
    client = create_client(redis_url)
    for name, payload in _payloads(marker).items():
        client.set(f"attack:{name}", payload)  # written by someone with Redis access
        stored = client.get(f"attack:{name}")
        with pytest.raises(SerializationError):
            codec.loads(stored)
        assert not marker.exists(), f"{codec.name} executed {name!r}"


def test_signed_pickle_refusals_are_signature_errors(tmp_path: Path) -> None:
    codec = SignedPickleSerializer([KEY_NEW, KEY_OLD])
    for name, payload in _payloads(tmp_path / "pwned").items():
        with pytest.raises(SignatureError):
            codec.loads(payload)
        assert not (tmp_path / "pwned").exists(), name


def test_signed_pickle_tampered_byte_is_refused() -> None:
    codec = SignedPickleSerializer([KEY_NEW])
    data = bytearray(codec.dumps({"user": 1}))
    for i in (0, 31, 32, len(data) - 1):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(SignatureError, match="failed signature verification|too short"):
            codec.loads(bytes(bad))


def test_key_rotation(tmp_path: Path) -> None:
    before = SignedPickleSerializer([KEY_OLD])
    during = SignedPickleSerializer([KEY_NEW, KEY_OLD])
    after = SignedPickleSerializer([KEY_NEW])
    old_payload = before.dumps({"v": 1})
    assert during.loads(old_payload) == {"v": 1}  # the old key still verifies
    new_payload = during.dumps({"v": 2})
    assert new_payload[:32] != SignedPickleSerializer([KEY_OLD]).dumps({"v": 2})[:32]
    assert after.loads(new_payload) == {"v": 2}  # the new key signs
    with pytest.raises(SignatureError):
        before.loads(new_payload)
    with pytest.raises(SignatureError):
        after.loads(old_payload)  # the old key dropped: its payloads are refused


def test_signed_pickle_signature_valid_but_body_broken() -> None:
    codec = SignedPickleSerializer([KEY_NEW])
    import hashlib
    import hmac

    from statekit.serializers import _derive

    body = b"\x80\x05not a pickle"
    data = hmac.new(_derive(KEY_NEW), body, hashlib.sha256).digest() + body
    with pytest.raises(SerializationError, match="could not be unpickled"):
        codec.loads(data)


# -- get_serializer -------------------------------------------------------------------


def test_get_serializer_by_name() -> None:
    assert isinstance(get_serializer(), JSONSerializer)
    assert isinstance(get_serializer("json"), JSONSerializer)
    assert isinstance(get_serializer("msgpack"), MsgpackSerializer)
    signed = get_serializer("signed-pickle", secret_keys=["k"])
    assert isinstance(signed, SignedPickleSerializer)
    assert signed.loads(signed.dumps({1, 2})) == {1, 2}
    ready = MsgpackSerializer()
    assert get_serializer(ready) is ready


def test_get_serializer_accepts_a_duck_typed_codec() -> None:
    class Upper:
        name = "upper"

        def dumps(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    codec = Upper()
    assert get_serializer(codec) is codec


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("pickle", {}, r"unsigned pickle is not offered.*signed-pickle"),
        ("pickle", {"secret_keys": ["k"]}, r"unsigned pickle is not offered"),
        ("signed-pickle", {}, r"signed-pickle codec needs secret keys"),
        ("signed-pickle", {"secret_keys": []}, r"needs secret keys"),
        ("yaml", {}, r"unknown serializer 'yaml'; choose json, msgpack or signed-pickle"),
        ("JSON", {}, r"unknown serializer 'JSON'"),
        (42, {}, r"not a serializer: 42"),
    ],
)
def test_get_serializer_errors(spec: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_serializer(spec, **kwargs)


def test_signed_pickle_needs_a_non_empty_key() -> None:
    with pytest.raises(ConfigError, match="at least one secret key"):
        SignedPickleSerializer([])
    with pytest.raises(ConfigError, match="at least one secret key"):
        SignedPickleSerializer(["", b""])


@pytest.mark.parametrize("key", ["long-secret-key", b"long-secret-key"], ids=["str", "bytes"])
def test_one_key_given_as_a_string_is_one_key(key: str | bytes, tmp_path: Path) -> None:
    """A lone str is an iterable of one-character strings: it must not become the
    keys 'l', 'o', 'n'... (an attacker would sign with 'l' and run code)."""
    marker = tmp_path / "pwned"
    forged = SignedPickleSerializer(["l"]).dumps(_Exploit(marker))
    for codec in (SignedPickleSerializer(key), get_serializer("signed-pickle", secret_keys=key)):
        assert codec.loads(codec.dumps({"v": 1})) == {"v": 1}
        assert codec.dumps("x") == SignedPickleSerializer([key]).dumps("x")
        with pytest.raises(SignatureError):
            codec.loads(forged)
    assert not marker.exists()


@pytest.mark.redis
def test_cache_with_one_string_key_refuses_a_forged_pickle(redis_url: str, tmp_path: Path) -> None:
    from statekit.cache import Cache
    from statekit.redis import create_client

    cache = Cache(redis_url, serializer="signed-pickle", secret_keys="long-secret-key")
    cache.set("k", {"v": 1})
    client = create_client(redis_url)
    (redis_key,) = client.keys("*")
    marker = tmp_path / "pwned"
    client.set(redis_key, b"\x01" + SignedPickleSerializer(["l"]).dumps(_Exploit(marker)))
    assert cache.get("k", "dflt") == "dflt"  # refused before unpickling: a miss, not a 500
    assert not marker.exists()


def test_msgpack_recursion_is_a_serialization_error() -> None:
    value: Any = ()
    for _ in range(5000):
        value = (value,)
    with pytest.raises(SerializationError, match="'tuple'"):
        MsgpackSerializer().dumps(value)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("data", [None, "text", 5])
def test_loads_of_not_bytes_is_a_serialization_error(codec: Serializer, data: Any) -> None:
    with pytest.raises(SerializationError):
        codec.loads(data)
