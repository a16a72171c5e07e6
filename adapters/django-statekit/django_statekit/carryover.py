"""Keep users logged in across the switch to statekit sessions: the previous session
engine is read on a user's first request (see :mod:`statekit.sessions.carryover`).

::

    SESSION_ENGINE = "django_statekit.sessions"
    STATEKIT_SESSION_CARRY_OVER = "django.contrib.sessions.backends.db"   # the old engine

========================================  ==============================================
``STATEKIT_SESSION_CARRY_OVER``           off (default), or the previous
                                          ``SESSION_ENGINE``: ``...backends.db``,
                                          ``...backends.cached_db`` or ``...backends.cache``
                                          (Django's own cache backend for Redis, or
                                          django-redis's)
``STATEKIT_SESSION_CARRY_OVER_DELETE``    delete the old session once carried over (on)
``STATEKIT_SESSION_CARRY_OVER_CACHE_ALIAS``  the ``CACHES`` alias the old cache engine
                                          used (default ``SESSION_CACHE_ALIAS``)
``STATEKIT_SESSION_CARRY_OVER_PICKLE``    ``...backends.cache``: read its pickled
                                          sessions, as plain data only (off)
========================================  ==============================================

**db and cached_db** are read from the database table through Django's own engine:
the data is signed there (``SECRET_KEY``, then ``SECRET_KEY_FALLBACKS``), and a row
that does not verify, or has expired, gives a fresh session, as before. cached_db's
cache copy is not read (the table holds the same data, signed); its delete clears both.

**cache** stores the session dict as an unsigned pickle (Django's Redis cache and
django-redis's default serializer). It is refused unless
``STATEKIT_SESSION_CARRY_OVER_PICKLE = True``: the user gets a fresh session (counted
in ``carry_over_refused``, logged to ``statekit.security`` with the setting to turn
on), so with Django's Redis cache no session is carried over without it. On, it is read
raw and unpickled as plain data only
(:func:`statekit.sessions.carryover.loads_plain_pickle`: any pickle naming a class or
function is refused, never run); the old app unpickled the same bytes with full
pickle, so this adds no trust in the old cache. It is the one, opt-in, exception to
"no unsigned pickle on a read path": switch it off with the carry-over.
django-redis's JSON and msgpack serializers and its compressors are read with
django-redis's own code, without the opt-in; its zlib, gzip, lzma, lz4 and zstd
compressors' values are decompressed to 1 MB at most (``MAX_SESSION_BYTES``, as any old
session is read: more is refused; a compressed value of 1 MB can be 1 GB), and a zstd
frame declaring a window above 128 MB is refused. An app's own compressor
(``OPTIONS["COMPRESSOR"]``) is read with its own ``decompress``, which takes no size
limit: the memory and time it spends on a value are its own (the key is the cookie's
choice), and what it returns is refused above 1 MB. Another
serializer (an app's own) is refused at start-up (``ConfigError``): it may unpickle.
Other cache backends are refused at start-up (``ConfigError``): their values would go
through pickle. A cached session of more than 1 MB
(:data:`statekit.sessions.carryover.MAX_SESSION_BYTES`) is refused before it is decoded.

Once the old sessions have expired (``SESSION_COOKIE_AGE`` after the switch), set
``STATEKIT_SESSION_CARRY_OVER`` back to off.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any

from django.contrib.sessions.backends.base import SessionBase

from statekit.errors import BackendUnavailable, ConfigError, SerializationError
from statekit.redis import translate_errors
from statekit.sessions import carryover as core
from statekit.sessions.carryover import CarryOver, loads_plain_pickle

__all__ = ["DjangoSessions", "carry_over_for"]


@contextlib.contextmanager
def _old_store(what: str) -> Iterator[None]:
    """The error map for the previous store: Redis errors (the cache and cached_db
    engines) as :class:`~statekit.redis.translate_errors` maps them, and a database
    that cannot be reached or used now (``OperationalError``, ``InterfaceError``: the
    db and cached_db engines) as :class:`~statekit.errors.BackendUnavailable`, so the
    request gets the outage's 503 with the cookie kept, not a 500."""
    from django.db import InterfaceError, OperationalError

    try:
        with translate_errors(what):
            yield
    except (OperationalError, InterfaceError) as e:
        raise BackendUnavailable(f"{what}: the database: {e}") from e

_DB = "django.contrib.sessions.backends.db"
_CACHED_DB = "django.contrib.sessions.backends.cached_db"
_CACHE = "django.contrib.sessions.backends.cache"
#: the keys Django's engines make (32 of [a-z0-9]); a cookie outside this is no old key
_KEY_RE = re.compile(r"[A-Za-z0-9]{8,128}\Z")
#: the largest zstd window read (2**27: 128 MB), libzstd's default limit, pinned: a frame's
#: header may declare up to 2**31, allocated (as address space) before any output is made
_ZSTD_WINDOW_LOG_MAX = 27


def _bounded(decompressor: Any, raw: bytes, errors: tuple[type[Exception], ...]) -> bytes:
    """*raw* through *decompressor* (one of ``decompress(data, max_length)`` and ``eof``:
    ``zlib.decompressobj``, ``lzma.LZMADecompressor``, ``lz4.frame.LZ4FrameDecompressor``,
    ``pyzstd.ZstdDecompressor``), to :data:`~statekit.sessions.carryover.MAX_SESSION_BYTES`
    at most; *raw* itself when it is not one whole compressed value (*errors*: what the
    decompressor raises for that; django-redis leaves small values uncompressed)."""
    try:
        out: bytes = decompressor.decompress(raw, core.MAX_SESSION_BYTES + 1)
    except errors + (EOFError,):
        return raw
    return core._size_checked(out) if decompressor.eof or len(out) > core.MAX_SESSION_BYTES else raw


def _decompress(compressor: Any, raw: bytes) -> bytes:
    """*raw* decompressed as django-redis's *compressor* would, to a bounded size:
    its own ``decompress`` has no limit (a zlib bomb of 1 MB is 1 GB in memory; 3 KB
    of zstd are 100 MB), and the key is the cookie's choice. zlib, gzip, lzma, lz4
    and zstd are read here within :data:`~statekit.sessions.carryover.MAX_SESSION_BYTES`,
    the first compressed stream or frame (the one django-redis writes), a zstd frame
    declaring a window above 128 MB refused first (:data:`_ZSTD_WINDOW_LOG_MAX`). The
    app's own compressor is read by its own ``decompress``, which takes no limit: the
    memory and time it spends cannot be bounded from here; what it returns is refused
    above the bound before any serializer reads it.
    :raises SerializationError: it decompresses beyond the bound."""
    import lzma
    import zlib

    from django_redis.compressors.gzip import GzipCompressor  # type: ignore[import-untyped]
    from django_redis.compressors.identity import IdentityCompressor  # type: ignore[import-untyped]
    from django_redis.compressors.lzma import LzmaCompressor  # type: ignore[import-untyped]
    from django_redis.compressors.zlib import ZlibCompressor  # type: ignore[import-untyped]

    method = type(compressor).decompress
    if method is IdentityCompressor.decompress:
        return raw
    if method is ZlibCompressor.decompress:
        return _bounded(zlib.decompressobj(), raw, (zlib.error,))
    if method is GzipCompressor.decompress:
        return _bounded(zlib.decompressobj(16 + zlib.MAX_WBITS), raw, (zlib.error,))
    if method is LzmaCompressor.decompress:
        return _bounded(lzma.LZMADecompressor(), raw, (lzma.LZMAError,))
    # lz4 and pyzstd are the app's install (django-redis's compressors import them)
    with contextlib.suppress(ImportError):
        from django_redis.compressors.lz4 import Lz4Compressor  # type: ignore[import-untyped]

        if method is Lz4Compressor.decompress:
            import lz4.frame  # type: ignore[import-untyped]

            return _bounded(lz4.frame.LZ4FrameDecompressor(), raw, (RuntimeError,))
    with contextlib.suppress(ImportError):
        from django_redis.compressors.zstd import ZStdCompressor  # type: ignore[import-untyped]

        if method is ZStdCompressor.decompress:
            import pyzstd

            # a frame declares its window (up to 2 GB), allocated before any output:
            # refused above 128 MB, libzstd's default limit, which django-redis reads with
            limit: dict[int, int] = {pyzstd.DParameter.windowLogMax: _ZSTD_WINDOW_LOG_MAX}
            return _bounded(pyzstd.ZstdDecompressor(option=limit), raw, (pyzstd.ZstdError,))
    try:
        out: bytes = compressor.decompress(raw)
    except Exception:  # noqa: BLE001 - django-redis leaves small values uncompressed
        return raw
    return core._size_checked(out)  # after the call: its own decompress takes no limit


def _django_redis_own(serializer: Any) -> bool:
    """*serializer* reads with django-redis's JSON or msgpack code (no pickle)."""
    from django_redis.serializers.json import JSONSerializer  # type: ignore[import-untyped]

    own = [JSONSerializer.loads]
    with contextlib.suppress(ImportError):  # msgpack is an extra of django-redis
        from django_redis.serializers.msgpack import MSGPackSerializer  # type: ignore[import-untyped]

        own.append(MSGPackSerializer.loads)
    return type(serializer).loads in own


class DjangoSessions:
    """A previous Django session engine, read on first contact.

    :param engine: its dotted path (the old ``SESSION_ENGINE``).
    :param cache_alias: the ``CACHES`` alias of the ``cache`` engine.
    :param plain_pickle: read the ``cache`` engine's pickled sessions with
        :func:`~statekit.sessions.carryover.loads_plain_pickle`; off (the default),
        they are refused (``STATEKIT_SESSION_CARRY_OVER_PICKLE``).
    """

    def __init__(self, engine: str, *, cache_alias: str = "default", plain_pickle: bool = False) -> None:
        if engine not in (_DB, _CACHED_DB, _CACHE):
            raise ConfigError(f"STATEKIT_SESSION_CARRY_OVER={engine!r}: sessions can be carried over from "
                              f"{_DB!r}, {_CACHED_DB!r} or {_CACHE!r}")
        self.engine = engine
        self.name = f"Django ({engine.rsplit('.', 1)[-1]})"
        self.cache_alias = cache_alias
        self.plain_pickle = plain_pickle
        if engine == _CACHE:
            self._raw_reader()  # refuses an unsupported cache backend at start-up

    @staticmethod
    def _db(session_key: str) -> SessionBase:
        return import_module(_DB).SessionStore(session_key)  # type: ignore[no-any-return]

    def read(self, cookie: str) -> Mapping[str, Any] | None:
        if not _KEY_RE.match(cookie):
            return None
        if self.engine == _CACHE:
            data = self._read_cache(cookie)
        else:
            with _old_store("reading the previous session store"):
                data = self._db(cookie).load()  # Django verifies the signature (and the expiry)
        return data if isinstance(data, dict) and data else None

    def _unpickle(self, raw: bytes) -> Any:
        """The cache engine's pickle, as plain data, opted in only."""
        if not self.plain_pickle:
            raise SerializationError("an unsigned pickle (Django's cache engine) is read as plain data "
                                     "only with STATEKIT_SESSION_CARRY_OVER_PICKLE = True")
        return loads_plain_pickle(raw)

    def _raw_reader(self) -> tuple[Any, Any]:
        """``(get_raw(name), decode(raw))`` for the old cache: raw bytes, decoded without
        unpickling anything but plain data (opted in); ``decode`` raises
        :class:`~statekit.errors.SerializationError` for a value it refuses."""
        from django.core.cache import caches
        from django.core.cache.backends.redis import RedisCache

        cache = caches[self.cache_alias]
        if isinstance(cache, RedisCache):
            def get_raw(name: str) -> Any:
                key = cache.make_and_validate_key(name)
                return cache._cache.get_client(key).get(key)

            return get_raw, self._unpickle
        client = getattr(cache, "client", None)
        if client is not None and type(cache).__module__.startswith("django_redis"):
            from django_redis.serializers.pickle import PickleSerializer  # type: ignore[import-untyped]

            serializer = client._serializer
            if not isinstance(serializer, PickleSerializer) and not _django_redis_own(serializer):
                kind = type(serializer)
                raise ConfigError(f"STATEKIT_SESSION_CARRY_OVER: the cache {self.cache_alias!r} uses the "
                                  f"serializer {kind.__module__}.{kind.__qualname__}, not django-redis's "
                                  "pickle, JSON or msgpack one: its sessions cannot be read without "
                                  "running it (it may unpickle)")

            def get_raw_dr(name: str) -> Any:
                return client.get_client(write=False).get(client.make_key(name))

            def decode_dr(raw: bytes) -> Any:
                raw = _decompress(client._compressor, raw)
                if isinstance(client._serializer, PickleSerializer):
                    return self._unpickle(raw)
                try:
                    return client._serializer.loads(raw)
                except Exception as e:  # noqa: BLE001 - any value it cannot decode is one outcome
                    raise SerializationError(f"not {type(client._serializer).__name__} data: {e}") from e

            return get_raw_dr, decode_dr
        raise ConfigError(f"STATEKIT_SESSION_CARRY_OVER: the cache {self.cache_alias!r} "
                          f"({type(cache).__module__}.{type(cache).__qualname__}) is not Django's Redis "
                          "cache or django-redis: its sessions cannot be read without unpickling")

    def _read_cache(self, cookie: str) -> Any:
        from django.contrib.sessions.backends.cache import KEY_PREFIX

        get_raw, decode = self._raw_reader()
        with _old_store("reading the previous session store"):
            raw = get_raw(KEY_PREFIX + cookie)
        if raw is None:
            return None
        # a refusal (SerializationError) is counted and logged by CarryOver
        return decode(core._size_checked(raw))

    def forget(self, cookie: str) -> None:
        if not _KEY_RE.match(cookie):
            return
        with _old_store("deleting from the previous session store"):
            if self.engine == _CACHE:
                from django.contrib.sessions.backends.cache import KEY_PREFIX
                from django.core.cache import caches

                caches[self.cache_alias].delete(KEY_PREFIX + cookie)
            else:  # db, or cached_db: its row and its cache copy (a delete unpickles nothing)
                import_module(self.engine).SessionStore().delete(cookie)


def carry_over_for(engine: str | None, *, delete: bool, cache_alias: str,
                   lifetime: float, plain_pickle: bool = False) -> CarryOver | None:
    """The carry-over for the old *engine* (``None`` or off: none)."""
    if not engine or str(engine).strip().lower() in ("0", "off", "false", "no", "none"):
        return None
    previous = DjangoSessions(str(engine), cache_alias=cache_alias, plain_pickle=plain_pickle)
    return CarryOver(previous, delete=delete, claim_ttl=max(1.0, lifetime))
