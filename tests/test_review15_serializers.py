"""Review 15 (security): the msgpack codec's read path against bytes a co-tenant of
the Redis wrote. Tuples, sets and frozensets are msgpack ext values holding a packed
list, each read by a nested ``unpackb`` with a C stack of its own (~40 KB): a value
of a few hundred bytes nesting 200 of them overflowed the thread's stack, and the
process died of SIGSEGV on ``Cache.get``. They run in a child process: a crash must
fail the test, not the test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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
