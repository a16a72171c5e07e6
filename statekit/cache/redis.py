"""Redis cache backend: standalone, TLS, unix socket, Sentinel, Cluster, and
``memory://`` (the same code over fakeredis with Lua, see :mod:`.memory`).

Reads are one ``MGET`` of the namespace's generation counter and the keys
qualified with the generation this process saw last: the counter comes back
atomically with the values, so a stale generation (another process ran
:meth:`~RedisCacheBackend.clear`) is noticed and the read repeated with the new
one. Writes and compound operations run the cache script
(``statekit/redis/scripts/cache.lua``, called by SHA) that reads the generation and
applies the operation in the same atomic step. All keys of a namespace share one
hash tag (``<prefix>:{<namespace>}:...``), so bulk operations are cluster-safe: on
Redis Cluster a namespace lives in one slot, and namespaces spread over the nodes.

Key layout inside a namespace base ``B = "<prefix>:{<namespace>}:"``:

* ``B + "gen"`` — the generation counter (``INCR`` by :meth:`~RedisCacheBackend.clear`);
* ``B + "<gen>:<key>"`` — values (integers as decimal text, so ``INCRBY`` works);
* ``B + "lock:<name>"`` — locks (they survive a clear).

**Bounded work.** A bulk call of more than :data:`CHUNK` keys is sent as several
calls of at most :data:`CHUNK` keys each, so no single script or ``MGET`` blocks
Redis for long; each chunk is atomic, the whole call is not. After a clear, a
background thread (:data:`sweeper`) removes the older generations' keys with
``SCAN`` (on every primary of a cluster) and ``UNLINK`` in chunks of :data:`CHUNK`;
entries with no TTL would otherwise stay for ever. A sweep cut short (the process
exited, Redis failed) is finished by the next clear of that namespace, in any
process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._fork import reset_in_child
from ..backends import require
from ..errors import BackendUnavailable, ConfigError
from ..redis import RedisClient, translate_errors
from ..redis.scripts import load
from ..redis.transport import Transport
from .protocol import CacheBackend, Stored

if TYPE_CHECKING:
    from ..redis.tracking import InvalidationListener

__all__ = ["CHUNK", "RedisCacheBackend", "RedisTransport", "sweep", "sweeper"]

#: the most keys one Redis call of a bulk operation or of a sweep carries
CHUNK = 500
SCRIPT = load("cache")
_log = logging.getLogger("statekit.cache")
_MISSING = Stored(None, None)


def _value_error(message: str) -> Exception:
    low = message.lower()
    if "not an integer" in low or "overflow" in low:
        return ValueError(f"cache value is not an integer or would overflow: {message}")
    if "wrongtype" in low:
        return ValueError(f"cache key holds a value of another Redis type: {message}")
    return BackendUnavailable(f"Redis refused a cache command: {message}")


def _chunks(seq: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), CHUNK):
        yield seq[i:i + CHUNK]


def _ttl_arg(ttl_ms: int | None) -> bytes:
    return b"" if ttl_ms is None else str(ttl_ms).encode()


class RedisTransport(Transport):
    """The connections one :class:`~statekit.cache.Cache` family shares: the one
    Redis transport (:class:`statekit.redis.transport.Transport`, for concurrency and
    failure behaviour) with the cache's script and error mapping: an error reply of
    ``INCRBY`` on a non-integer or overflowing value is a ``ValueError``.

    :raises ConfigError: the client decodes responses (the cache stores bytes).
    """

    def __init__(self, client: RedisClient) -> None:
        get_encoder = getattr(client, "get_encoder", None)
        if get_encoder is not None and get_encoder().decode_responses:
            raise ConfigError("the cache needs a Redis client with decode_responses=False")
        super().__init__(client, what="cache", reply_error=_value_error)

    def run(self, keys: Sequence[str | bytes], args: Sequence[bytes | str | int]) -> Any:
        """Run the cache script: one round trip (two more after a ``SCRIPT FLUSH``)."""
        return self.script(SCRIPT, keys, args)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def sweep(backend: RedisCacheBackend, below: int) -> int:
    """Remove the keys of *backend*'s namespace whose generation is below *below*
    (unreachable since a clear): ``SCAN MATCH`` (on every primary of a cluster),
    then the cache script's ``sweep`` (``UNLINK``) per :data:`CHUNK` keys, which
    refuses if the generation counter is below *below* again (it was lost: those
    names are live). Returns how many keys were removed.

    :raises BackendUnavailable: Redis failed (what was removed stays removed).
    """
    client: Any = backend.transport.client
    head = backend.base.encode()
    size = len(head)
    removed = 0
    batch: list[bytes] = []

    def unlink() -> bool:
        nonlocal removed
        keys: list[str | bytes] = [backend._gen_key, *batch]
        done = int(backend.transport.run(keys, (b"sweep", backend._n, str(below))))
        batch.clear()
        removed += max(done, 0)
        return done >= 0

    with translate_errors("a cache sweep"):
        for key in client.scan_iter(match=_glob_escape(backend.base) + "[0-9]*", count=1000):
            gen, sep, _ = key[size:].partition(b":")
            if sep and gen.isdigit() and int(gen) < below:
                batch.append(key)
                if len(batch) == CHUNK and not unlink():
                    return removed
        if batch:
            unlink()
    return removed


class Sweeper:
    """One background thread per process that runs :func:`sweep` for the namespaces
    cleared here, one at a time; it starts on demand and ends when idle. A failed
    sweep is logged (WARNING) and left to the namespace's next clear."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[int, str], tuple[RedisCacheBackend, int]] = {}
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, backend: RedisCacheBackend, below: int) -> None:
        with self._lock:
            key = (id(backend.transport), backend.base)
            job = self._jobs.get(key)
            if job is None or job[1] < below:
                self._jobs[key] = (backend, below)
            self._idle.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="statekit-cache-sweep", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted sweep ran; ``False`` on timeout."""
        return self._idle.wait(timeout)

    def reset_after_fork(self) -> None:
        """In a forked child: no thread, no jobs (the parent's sweeper does its own)."""
        self._lock = threading.Lock()
        self._jobs = {}
        self._thread = None
        self._idle = threading.Event()
        self._idle.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._idle.set()
                    return
                _, (backend, below) = self._jobs.popitem()
            try:
                sweep(backend, below)
            except Exception as e:  # noqa: BLE001 - a background job: log, the next clear redoes it
                _log.warning("cache namespace %s: removing the keys of generations before %d failed "
                             "(the next clear retries): %s", backend.base, below, e)


#: the process's sweeper (see :class:`Sweeper`)
sweeper = Sweeper()
reset_in_child(sweeper)


class RedisCacheBackend(CacheBackend):
    """Cache backend for every Redis URL kind (see the module docstring)."""

    def __init__(self, transport: RedisTransport, base: str) -> None:
        self.transport = transport
        self.base = base
        self._gen_key = base + "gen"
        self._n = str(len(base.encode()))
        self._gen = b"0"  # the generation last seen; MGET checks it in the same step

    @classmethod
    def from_url(cls, url: str, base: str, options: Mapping[str, Any]) -> RedisCacheBackend:
        require("redis", feature="redis:// cache URLs")
        from ..redis import get_client

        overrides: dict[str, Any] = {}
        timeout = options.get("timeout")
        if timeout is not None:
            overrides = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        return cls.from_client(get_client(url, **overrides), base)

    @classmethod
    def from_client(cls, client: RedisClient, base: str) -> RedisCacheBackend:
        require("redis", feature="the Redis cache")
        return cls(RedisTransport(client), base)

    def namespace(self, base: str) -> RedisCacheBackend:
        return type(self)(self.transport, base)

    def near_listener(self, prefix: str) -> InvalidationListener | None:
        from ..redis.tracking import InvalidationListener

        return InvalidationListener(self.transport.client, prefix)  # Sentinel: it follows the master

    def _keys(self, keys: Sequence[str]) -> list[str]:
        b = self.base
        return [self._gen_key, *[b + k for k in keys]]

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """``MGET gen, <base><gen>:<key>...`` with the generation seen last time: the
        reply carries the current generation, read atomically with the values, so a
        mismatch (after a clear) is detected and the read repeated."""
        base = self.base
        for _ in range(3):
            gen = self._gen
            prefix = base + gen.decode() + ":"
            reply = self.transport.command(b"MGET", self._gen_key, *[prefix + k for k in keys])
            current = reply[0] or b"0"
            if current == gen:
                values: list[bytes | None] = reply[1:]
                return values
            self._gen = current
        result: list[bytes | None] = self.transport.run(self._keys(keys), (b"get", self._n))
        return result

    def get(self, key: str) -> bytes | None:
        return self._mget((key,))[0]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for chunk in _chunks(keys):
            out.extend(self._mget(chunk))
        return out

    def get_with_ttl(self, key: str) -> Stored:
        return self.get_many_with_ttl((key,))[0]

    def get_many_with_ttl(self, keys: Sequence[str]) -> list[Stored]:
        out: list[Stored] = []
        for chunk in _chunks(keys):
            flat = self.transport.run(self._keys(chunk), (b"gett", self._n))
            for i in range(0, len(flat), 2):
                value, ttl = flat[i], flat[i + 1]
                out.append(_MISSING if value is None else Stored(value, None if ttl < 0 else int(ttl)))
        return out

    def set_many(self, items: Mapping[str, bytes], ttl_ms: int | None) -> None:
        ttl = _ttl_arg(ttl_ms)
        pairs = list(items.items())
        for chunk in _chunks(pairs):
            self.transport.run(self._keys([k for k, _ in chunk]),
                               (b"set", self._n, ttl, *[v for _, v in chunk]))

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        self.transport.run((self._gen_key, self.base + key), (b"set", self._n, _ttl_arg(ttl_ms), value))

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        return bool(self.transport.run((self._gen_key, self.base + key),
                                       (b"add", self._n, _ttl_arg(ttl_ms), value)))

    def delete(self, key: str) -> bool:
        return self.delete_many((key,)) > 0

    def delete_many(self, keys: Sequence[str]) -> int:
        return sum(int(self.transport.run(self._keys(chunk), (b"del", self._n))) for chunk in _chunks(keys))

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        result = self.transport.run((self._gen_key, self.base + key),
                                    (b"incr", self._n, str(delta).encode(), _ttl_arg(ttl_ms),
                                     b"1" if create else b"0"))
        return None if result is None else int(result)

    def touch(self, key: str, ttl_ms: int | None) -> bool:
        return bool(self.transport.run((self._gen_key, self.base + key),
                                       (b"touch", self._n, _ttl_arg(ttl_ms))))

    def clear(self) -> None:
        """Bump the generation (O(1)), then let :data:`sweeper` remove the older
        generations' keys in the background."""
        gen = int(self.transport.command(b"INCR", self._gen_key))
        self._gen = str(gen).encode()
        sweeper.submit(self, gen)

    def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        reply = self.transport.command(b"SET", f"{self.base}lock:{name}", token, b"PX", ttl_ms, b"NX")
        return reply is not None

    def release_lock(self, name: str, token: str) -> bool:
        return bool(self.transport.run((self._gen_key, f"{self.base}lock:{name}"),
                                       (b"unlock", self._n, token.encode())))

    def extend_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(self.transport.run((self._gen_key, f"{self.base}lock:{name}"),
                                       (b"extend", self._n, token.encode(), str(ttl_ms).encode())))

    def close(self) -> None:
        self.transport.close()
