"""Review 17: the carry-over's decompression bounds, two loose ends of review 16.

a. zstd: a frame's header declares its window (windowLog 10 to 31). libzstd refuses a
   frame above its windowLogMax (default 27: a 128 MB window) before it allocates
   anything; the carry-over pins that limit, so a tiny frame declaring windowLog 31
   (a 2 GB window) is refused, not a 2 GB allocation, and what django-redis can write
   and read (its default limit is the same) is still carried over.
b. An app's own django-redis compressor (a dotted path in ``OPTIONS["COMPRESSOR"]``
   that is none of django-redis's): its ``decompress(bytes)`` has no size limit, so
   its memory and time cannot be bounded from outside; what it returns is refused
   above MAX_SESSION_BYTES, as a session stored so is, before any serializer reads it.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import time
import uuid
import zlib
from typing import Any

import pytest
import redis
from test_review16_carryover_compressors import (
    _COMPRESSORS,
    _django_redis_old,
    _get,
    _padded,
    _peak_rss,
    _peak_rss_reset,
)

from django_statekit.sessions import get_core_store
from statekit.sessions.carryover import MAX_SESSION_BYTES

pytestmark = pytest.mark.redis

_SERIALIZERS = ["pickle", "json"]


class AppCompressor:
    """An app's own django-redis compressor: zlib behind a marker byte, its decompress
    unbounded (django-redis's BaseCompressor interface: ``__init__(options)``)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def compress(self, value: bytes) -> bytes:
        return b"Z" + zlib.compress(value)

    def decompress(self, value: bytes) -> bytes:
        if not value.startswith(b"Z"):
            from django_redis.exceptions import CompressorError  # type: ignore[import-untyped]

            raise CompressorError("not compressed")
        return zlib.decompress(value[1:])


def _old(django_settings: Any, redis_url: str, compressor: str, serializer: str) -> redis.Redis:
    """The previous engine: django-redis's cache sessions with *compressor* (one of
    review 16's, or "app": :class:`AppCompressor`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(_COMPRESSORS, "app", f"{__name__}.AppCompressor")
        return _django_redis_old(django_settings, redis_url, compressor, serializer)


def _refused(old: redis.Redis, key: str, value: bytes, cookie: str) -> float:
    """*value* under *key*: the request naming it gets a fresh session, counted as a
    refusal, the old entry kept; returns the seconds the request took."""
    old.set(key, value)
    store = get_core_store()
    refused = store.counters.get("carry_over_refused")
    t0 = time.monotonic()
    assert _get(cookie) == {}
    took = time.monotonic() - t0
    assert store.counters.get("carry_over_refused") == refused + 1
    assert old.exists(key)  # refused: not deleted
    return took


# -- a. zstd's window ------------------------------------------------------------------

ZSTD = "zstd"


def _zstd_frame(window_log: int, blocks: int) -> bytes:
    """A zstd frame declaring a window of 2**window_log bytes and no content size, of
    *blocks* RLE blocks of 128 KB of zeros (4 bytes each): 100 MB in ~3 KB at 800."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, (window_log - 10) << 3])  # magic, descriptor, window
    block = 128 * 1024
    body = b"".join(((block << 3) | (1 << 1) | (i == blocks - 1)).to_bytes(3, "little") + b"\x00"
                    for i in range(blocks))
    return header + body


def test_the_crafted_frame_is_what_it_says() -> None:
    """The frame reads as zstd with its window's limit raised (and is too big otherwise)."""
    import pyzstd

    frame = _zstd_frame(31, 8)
    out = pyzstd.ZstdDecompressor(option={pyzstd.DParameter.windowLogMax: 31}).decompress(frame)
    assert out == bytes(8 * 128 * 1024)
    with pytest.raises(pyzstd.ZstdError, match="too much memory"):
        pyzstd.decompress(frame)


@pytest.mark.parametrize("serializer", _SERIALIZERS)
@pytest.mark.parametrize("window_log", [27, 31])
def test_a_zstd_frame_declaring_a_huge_window_is_refused_within_bounded_memory(
        django_settings: Any, redis_url: str, serializer: str, window_log: int) -> None:
    """~3 KB declaring a 128 MB (the most django-redis reads) or a 2 GB window, of 100 MB
    of zeros: a fresh session, counted, in bounded resident memory and time (27: cut at
    MAX_SESSION_BYTES + 1; 31: refused by the frame's header)."""
    cookie = "window" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    old = _old(django_settings, redis_url, ZSTD, serializer)
    try:
        rss_measured = _peak_rss_reset()
        rss_before = _peak_rss() if rss_measured else 0
        took = _refused(old, key, _zstd_frame(window_log, 800), cookie)
        if rss_measured:
            grown = _peak_rss() - rss_before
            assert grown < 48 * 2**20, f"the peak RSS grew by {grown} bytes"
        assert took < 5, f"{took:.2f} s"  # a few ms here; generous for a loaded machine
    finally:
        old.delete(key)
        old.close()


_ADDRESS_SPACE = textwrap.dedent("""
    import sys
    from django_redis.compressors.zstd import ZStdCompressor
    from django_statekit.carryover import _decompress
    sys.path.insert(0, {tests!r})
    from test_review17_carryover_bounds import _zstd_frame

    def vm_peak():
        for line in open("/proc/self/status"):
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    frame = _zstd_frame({window_log}, 8)
    before = vm_peak()
    out = _decompress(ZStdCompressor({{}}), frame)
    print(out == frame, len(out), vm_peak() - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmPeak in /proc")
@pytest.mark.parametrize("window_log", [28, 31])
def test_a_window_above_zstd_default_limit_is_never_allocated(window_log: int) -> None:
    """The window a frame declares is allocated (not touched: RSS stays small) before
    the output bound helps: with the limit raised to 31 these ~1 KB gave the process
    2 GB more address space (256 MB at 28; measured), which fails under an address-space
    limit (ulimit -v). At the pinned limit the frame is refused first: read as not
    compressed (then refused by the serializer), the address space unchanged. In a
    fresh process: VmPeak never goes down."""
    from pathlib import Path

    code = _ADDRESS_SPACE.format(tests=str(Path(__file__).parent), window_log=window_log)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    same, length, grown = out.stdout.split()
    assert same == "True", out.stdout  # refused: the raw bytes come back, not a session
    assert int(grown) < 64 * 2**20, f"the address space grew by {int(grown) >> 20} MB"


@pytest.mark.parametrize("serializer", _SERIALIZERS)
def test_a_zstd_session_django_redis_writes_is_still_carried_over(
        django_settings: Any, redis_url: str, serializer: str) -> None:
    """django-redis's ZStdCompressor at its most (level 22: windowLog 27 for large input)."""
    import pyzstd
    from django_redis.serializers.json import JSONSerializer  # type: ignore[import-untyped]

    old = _old(django_settings, redis_url, ZSTD, serializer)
    cookie = "zstd22" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    try:
        dumps = pickle.dumps if serializer == "pickle" else JSONSerializer({}).dumps
        data = _padded(dumps, MAX_SESSION_BYTES)
        old.set(key, pyzstd.compress(dumps(data), 22))
        assert _get(cookie) == data
        assert not old.exists(key)
    finally:
        old.delete(key)
        old.close()


# -- b. an app's own compressor ----------------------------------------------------------

APP_COMPRESSOR = "app"


@pytest.mark.parametrize("serializer", _SERIALIZERS)
def test_an_app_compressor_session_is_carried_over(django_settings: Any, redis_url: str,
                                                   serializer: str) -> None:
    """Read with the app's own decompress, as before: small, and of MAX_SESSION_BYTES."""
    from django_redis.serializers.json import JSONSerializer

    old = _old(django_settings, redis_url, APP_COMPRESSOR, serializer)
    keys = []
    try:
        dumps = pickle.dumps if serializer == "pickle" else JSONSerializer({}).dumps
        for data in ({"cart": ["apple"], "_auth_user_id": "1"}, _padded(dumps, MAX_SESSION_BYTES)):
            cookie = "appzip" + uuid.uuid4().hex
            keys.append(key := f":1:django.contrib.sessions.cache{cookie}")
            old.set(key, AppCompressor({}).compress(dumps(data)))
            assert _get(cookie) == data
            assert not old.exists(key)
    finally:
        old.delete(*keys)
        old.close()


@pytest.mark.parametrize("size", [MAX_SESSION_BYTES + 1, 8 * MAX_SESSION_BYTES])
def test_an_app_compressor_output_above_the_bound_is_refused(django_settings: Any, redis_url: str,
                                                             size: int) -> None:
    """JSON of MAX_SESSION_BYTES + 1 and of 8 MB, through the app's compressor: a fresh
    session, counted as a refusal, as a session stored at that size. Before, the
    decompressed bytes went to the JSON serializer at any size and were carried over."""
    from django_redis.serializers.json import JSONSerializer

    cookie = "appbomb" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    old = _old(django_settings, redis_url, APP_COMPRESSOR, "json")
    try:
        session = _padded(JSONSerializer({}).dumps, size)
        assert len(JSONSerializer({}).dumps(session)) == size
        _refused(old, key, AppCompressor({}).compress(JSONSerializer({}).dumps(session)), cookie)
    finally:
        old.delete(key)
        old.close()
