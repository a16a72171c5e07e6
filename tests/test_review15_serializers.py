"""Review 15 (security): the msgpack codec's read path against bytes a co-tenant of
the Redis wrote. Tuples, sets and frozensets are msgpack ext values holding a packed
list, each read by a nested ``unpackb`` with a C stack of its own (~40 KB): a value
of a few hundred bytes nesting 200 of them overflowed the thread's stack, and the
process died of SIGSEGV on ``Cache.get``. They run in a child process: a crash must
fail the test, not the test run. The web codec's statuses: a crafted one beyond HTTP
is a miss."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
import redis
from flask import Flask

from statekit.errors import SerializationError
from statekit.serializers import WebJSONSerializer

pytest.importorskip("msgpack")

#: the nested payload: 300 lists each holding a tuple of the next (ext code 6, a packed list)
_NESTED = """
import msgpack
body = msgpack.packb([1])
for _ in range(300):
    body = msgpack.packb([msgpack.ExtType(6, body)])
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(_NESTED) + textwrap.dedent(script), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_deeply_nested_ext_values_are_a_serialization_error() -> None:
    done = _run("""
        from statekit.errors import SerializationError
        from statekit.serializers import MsgpackSerializer
        print(len(body))
        try:
            MsgpackSerializer().loads(body)
        except SerializationError as e:
            print("SerializationError", e)
    """)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -11: SIGSEGV
    size, outcome = done.stdout.splitlines()
    assert int(size) < 2000 and outcome.startswith("SerializationError"), done.stdout


@pytest.mark.redis
def test_a_deeply_nested_cache_entry_is_a_miss(redis_url: str) -> None:
    """The entry a co-tenant wrote under a msgpack cache's key: a miss, counted as
    undecodable, as any entry the cache cannot decode; the worker lives on."""
    done = _run("""
        import sys
        import redis
        from statekit.cache import Cache
        cache = Cache(sys.argv[1], namespace="review15-nested", serializer="msgpack")
        cache.set("k", (1,))
        with redis.Redis.from_url(sys.argv[1]) as raw:
            names = [n for n in raw.scan_iter(match="*review15-nested*k") if not n.endswith(b"gen")]
            assert len(names) == 1, names
            raw.set(names[0], b"\\x01" + body)
        print(cache.get("k", "default"), cache.counters.get("undecodable"))
        cache.close()
    """, redis_url)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["default", "1"]


def test_nesting_the_codec_reads_is_the_nesting_it_writes() -> None:
    """What the codec refuses to read it refuses to write (a SerializationError naming
    the depth), so no stored value is one it cannot read back; 32 levels round-trip."""
    from statekit.errors import SerializationError
    from statekit.serializers import MsgpackSerializer

    codec = MsgpackSerializer()
    value: object = (1,)
    for i in range(31):
        value = (value,) if i % 2 else frozenset([value])
    assert codec.loads(codec.dumps(value)) == value
    with pytest.raises(SerializationError, match="nest at most 32 deep"):
        codec.dumps(((value,),))


# -- hash floods --------------------------------------------------------------------

#: ints, decimals and UUIDs hash alike in every process (str and bytes are seeded per
#: process): multiples of 2**61 - 1 all hash to 0
_P = 2**61 - 1
_FLOOD = 3000


def _json(value: object) -> bytes:
    import json

    return json.dumps(value).encode()


def _flooded_payloads() -> dict[str, tuple[str, bytes]]:
    import decimal
    import uuid

    import msgpack

    ints = [i * _P for i in range(_FLOOD)]
    ext = msgpack.ExtType
    return {
        "json-set": ("json", _json({"\x00": ["s", ints]})),
        "json-frozenset": ("json", _json({"\x00": ["fs", ints]})),
        "json-dict-keys": ("json", _json({"\x00": ["m", [[i, 0] for i in ints]]})),
        "json-set-of-uuids": ("json", _json({"\x00": ["s", [{"\x00": ["u", uuid.UUID(int=i).hex]}
                                                             for i in ints]]})),
        "msgpack-set-of-decimals": ("msgpack", msgpack.packb(ext(7, msgpack.packb(
            [ext(4, str(decimal.Decimal(i)).encode()) for i in ints])))),
        # map 32 of _FLOOD entries, the keys colliding UUIDs
        "msgpack-dict-uuid-keys": ("msgpack", b"\xdf" + _FLOOD.to_bytes(4, "big") + b"".join(
            msgpack.packb(ext(5, uuid.UUID(int=i).bytes)) + b"\x00" for i in ints)),
    }


@pytest.mark.parametrize("case", list(_flooded_payloads()))
def test_a_set_or_dict_of_values_sharing_one_hash_is_refused(case: str) -> None:
    """A set (a dict's keys) of thousands of distinct values with one hash costs n**2/2
    comparisons to build (1 MB of JSON, 40 000 ints: 10 s of CPU on a cache read): a
    payload giving more than a few members one hash is refused, a SerializationError
    (a miss for the cache), before the set or dict is built."""
    from statekit.errors import SerializationError
    from statekit.serializers import get_serializer

    codec_name, payload = _flooded_payloads()[case]
    with pytest.raises(SerializationError) as refused:
        get_serializer(codec_name).loads(payload)
    assert "share one hash" in f"{refused.value} {refused.value.__cause__}"  # the json codec's cause


@pytest.mark.parametrize("codec_name", ["json", "msgpack", "web-json"])
def test_large_sets_and_dicts_with_keys_of_every_kind_round_trip(codec_name: str) -> None:
    import decimal
    import uuid

    from statekit.serializers import WebJSONSerializer, get_serializer

    codec = WebJSONSerializer() if codec_name == "web-json" else get_serializer(codec_name)
    value = {"ints": set(range(-5000, 5000)), "by_id": {i: str(i) for i in range(10000)},
             "ids": frozenset(uuid.UUID(int=i) for i in range(2000)),
             "d": {decimal.Decimal(i) / 7: i for i in range(2000)}, "t": {(i, -i): 1 for i in range(2000)},
             "alike": {-1, -2, _P, 2 * _P, 1.5}}  # a few equal hashes: as any data may have
    assert codec.loads(codec.dumps(value)) == value


@pytest.mark.redis
def test_a_flooded_cache_entry_is_a_miss(redis_url: str) -> None:
    """A co-tenant's write under the default (JSON) cache's key: a miss, counted."""
    import redis

    from statekit.cache import Cache

    cache = Cache(redis_url, namespace="review15-flood")
    try:
        cache.set("k", {1, 2})
        with redis.Redis.from_url(redis_url) as raw:
            names = [n for n in raw.scan_iter(match="*review15-flood*k") if not n.endswith(b"gen")]
            assert len(names) == 1, names
            raw.set(names[0], b"\x01" + _flooded_payloads()["json-set"][1])
        assert cache.get("k", "default") == "default"
        assert cache.counters.get("undecodable") == 1
    finally:
        cache.close()


def test_a_second_read_for_non_str_keys_is_made_once_not_at_every_level() -> None:
    """A tuple holding a tuple ... each level also holding an int-keyed dict: the read
    again with keys counted (a payload with keys other than str) is one second read
    of the whole payload, not one at every ext level (which doubled the work per
    level: 18 levels, 126 bytes, took 0.9 s; 32 levels would take hours)."""
    import msgpack

    from statekit.serializers import MsgpackSerializer

    codec = MsgpackSerializer()
    calls = 0
    unpackb = msgpack.unpackb

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return unpackb(*args, **kwargs)

    body = msgpack.packb([0])
    for _ in range(20):
        body = msgpack.packb([msgpack.ExtType(6, body), {1: 0}])
    codec._msgpack = type("M", (), {"unpackb": staticmethod(counting)})()
    value = codec.loads(body)
    assert value[1] == {1: 0} and len(str(value)) > 20
    assert calls <= 2 * 21, calls  # each of the 21 bodies read at most twice


_HX = '{"\\u0000":["hx",[%s,"d",null]]}'
_RSP = '{"\\u0000":["rsp",[%s,[],{"\\u0000":["b",""]}]]}'


@pytest.mark.parametrize("payload", [
    _HX % 10**30, _HX % 0, _HX % -5, _HX % 99, _HX % 600, _HX % "true",
    _RSP % '"1000000000000000000000000000000 X"', _RSP % '"0 x"', _RSP % '"abc"', _RSP % '"99 x"',
    _RSP % '"600 x"', _RSP % '"200 OK\\r\\nX-Injected: 1"', _RSP % '"-5 x"', _RSP % '"+200 OK"'])
def test_a_crafted_status_beyond_http_is_refused(payload: str) -> None:
    """A cached abort() (Flask-Caching raises it on a hit) or response with a status no
    server sends (outside 100-599, RFC 9110 15; or a reason with a line break): Flask
    answered '1000000000000000000000000000000 UNKNOWN', werkzeug's server sent that
    status line and gunicorn failed the request ('Invalid status'), for as long as the
    entry lived. A SerializationError now: a miss, the view runs."""
    with pytest.raises(SerializationError):
        WebJSONSerializer().loads(payload.encode())


@pytest.mark.parametrize("code", [100, 200, 302, 404, 418, 599])
def test_statuses_within_http_still_load(code: int) -> None:
    from werkzeug.exceptions import HTTPException

    exc = WebJSONSerializer().loads((_HX % code).encode())
    assert isinstance(exc, HTTPException) and exc.code == code
    assert exc.get_response().status_code == code
    response = WebJSONSerializer().loads((_RSP % f'"{code} Some\\tReason"').encode())
    assert response.status == f"{code} Some\tReason"
    assert WebJSONSerializer().loads((_RSP % f'"{code}"').encode()).status_code == code


@pytest.mark.redis
def test_a_cached_abort_with_a_crafted_code_is_a_miss_for_flask_caching(redis_url: str) -> None:
    """Through Flask-Caching's @cached view on statekit's cachelib backend (the documented
    configuration): an entry holding an abort() with code 10**30 (a store writer's) was
    raised on every hit, answered with the status 10**30; now a miss: the view runs
    and its own answer is served."""
    from flask_caching import Cache as FlaskCache

    calls: list[str] = []

    def page() -> str:
        calls.append("page")
        return "fresh"

    namespace = f"review15b-{uuid.uuid4().hex}"
    app = Flask("cached")
    fc = FlaskCache(app, config={"CACHE_TYPE": "statekit.compat.cachelib.StatekitCache",
                                 "CACHE_OPTIONS": {"url": redis_url, "namespace": namespace}})
    app.add_url_rule("/page", view_func=fc.cached(timeout=60)(page))
    client = app.test_client()
    assert client.get("/page").get_data() == b"fresh"
    admin = redis.Redis.from_url(redis_url)
    try:
        (key,) = list(admin.scan_iter(match=f"*{namespace}*"))
        admin.set(key, b"\x01" + (_HX % 10**30).encode())
        answer = client.get("/page")
    finally:
        admin.close()
    assert answer.status_code == 200 and answer.get_data() == b"fresh" and calls == ["page", "page"]


def test_an_abort_with_a_response_round_trips() -> None:
    """``abort(redirect(...))`` raises an HTTPException without a code that answers with
    its response (Flask-Caching caches it as any abort()): it was written, then refused
    on every read (a miss and an 'undecodable' entry each time, the view run again). It
    comes back now with its response; without one, a code is still required."""
    from flask import abort, redirect
    from werkzeug.exceptions import HTTPException

    codec = WebJSONSerializer()
    try:
        abort(redirect("/elsewhere", 302))
    except HTTPException as e:
        data = codec.dumps(e)
    back = codec.loads(data)
    assert isinstance(back, HTTPException) and back.code is None
    response = back.get_response()
    assert response.status_code == 302 and response.headers["Location"] == "/elsewhere"
    app = Flask("aborts")

    @app.get("/")
    def view() -> None:
        raise back

    answer = app.test_client().get("/")
    assert answer.status_code == 302 and answer.headers["Location"] == "/elsewhere"
    with pytest.raises(SerializationError):
        codec.loads(b'{"\\u0000":["hx",[null,"d",null]]}')
