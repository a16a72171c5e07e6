"""Redis cache backend: standalone, Sentinel and Cluster.

Every operation is one round trip. Reads are one ``MGET`` of the namespace's
generation counter and the keys qualified with the generation this process saw
last: the counter comes back atomically with the values, so a stale generation
(another process ran :meth:`clear`) is noticed and the read repeated with the new
one. Writes and compound operations run one Lua script (loaded once, called by SHA)
that reads the generation and applies the operation in the same atomic step. All
keys of a namespace share one hash tag (``<prefix>:{<namespace>}:...``), so bulk
operations are cluster-safe: on Redis Cluster a namespace lives in one slot, and
namespaces spread over the nodes.

Key layout inside a namespace base ``B = "<prefix>:{<namespace>}:"``:

* ``B + "gen"`` — the generation counter (``INCR`` by :meth:`clear`);
* ``B + "<gen>:<key>"`` — values (integers as decimal text, so ``INCRBY`` works);
* ``B + "lock:<name>"`` — locks (they survive :meth:`clear`).

On a plain TCP or unix-socket client the backend skips redis-py's connection
pool on the hot path: each thread keeps one dedicated socket with a hiredis
reply parser (when ``hiredis`` is installed), so a ``get`` costs one ``sendall``
and one ``recv``, and it polls briefly for the reply before blocking (see
:mod:`statekit.redis.fast`, shared with the session store). The socket
has the client's connect and read timeouts, enforced by the kernel; a failure
closes it and raises
:class:`~statekit.errors.BackendUnavailable`.
Sentinel, Cluster and TLS clients go through redis-py (its failover and
redirection handling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..backends import require
from ..errors import BackendUnavailable, ConfigError
from ..redis import RedisClient
from ..redis.fast import SPIN_SECONDS, FastTransport, make_reader, pack_command, script_sha
from ..redis.fast import _FastConnection as _FastConnection  # re-exported for tests
from ..redis.fast import _pack_any as _pack_any
from ..redis.fast import _PyReader as _PyReader
from .protocol import CacheBackend

__all__ = ["SPIN_SECONDS", "RedisCacheBackend", "RedisTransport", "make_reader", "pack_command"]

SCRIPT = """
local op = ARGV[1]
local n = tonumber(ARGV[2])
local g = redis.call('GET', KEYS[1]) or '0'
local function real(i)
  local k = KEYS[i]
  return string.sub(k, 1, n) .. g .. ':' .. string.sub(k, n + 1)
end
if op == 'g1' then
  return redis.call('GET', real(2))
elseif op == 'get' then
  local out = {}
  for i = 2, #KEYS do out[i - 1] = redis.call('GET', real(i)) end
  return out
elseif op == 'gett' then
  local out = {}
  for i = 2, #KEYS do
    local r = real(i)
    out[2 * i - 3] = redis.call('GET', r)
    out[2 * i - 2] = redis.call('PTTL', r)
  end
  return out
elseif op == 'set' then
  local ttl = ARGV[3]
  for i = 2, #KEYS do
    if ttl == '' then redis.call('SET', real(i), ARGV[i + 2])
    else redis.call('SET', real(i), ARGV[i + 2], 'PX', ttl) end
  end
  return #KEYS - 1
elseif op == 'add' then
  local r
  if ARGV[3] == '' then r = redis.call('SET', real(2), ARGV[4], 'NX')
  else r = redis.call('SET', real(2), ARGV[4], 'PX', ARGV[3], 'NX') end
  if r then return 1 end
  return 0
elseif op == 'del' then
  local c = 0
  for i = 2, #KEYS do c = c + redis.call('DEL', real(i)) end
  return c
elseif op == 'incr' then
  -- the result is read back as text: INCRBY's integer reply becomes a Lua double,
  -- which loses precision above 2^53
  local r = real(2)
  if redis.call('EXISTS', r) == 0 then
    if ARGV[5] ~= '1' then return false end
    redis.call('INCRBY', r, ARGV[3])
    if ARGV[4] ~= '' then redis.call('PEXPIRE', r, ARGV[4]) end
    return redis.call('GET', r)
  end
  redis.call('INCRBY', r, ARGV[3])
  return redis.call('GET', r)
elseif op == 'touch' then
  local r = real(2)
  if ARGV[3] == '' then
    if redis.call('EXISTS', r) == 1 then redis.call('PERSIST', r) return 1 end
    return 0
  end
  return redis.call('PEXPIRE', r, ARGV[3])
elseif op == 'ttl' then
  return redis.call('PTTL', real(2))
elseif op == 'unlock' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then return redis.call('DEL', KEYS[2]) end
  return 0
elseif op == 'extend' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then return redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
  return 0
end
return redis.error_reply('statekit cache script: unknown op ' .. tostring(op))
"""
SHA = script_sha(SCRIPT)


def _value_error(message: str) -> Exception:
    low = message.lower()
    if "not an integer" in low or "overflow" in low:
        return ValueError(f"cache value is not an integer or would overflow: {message}")
    if "wrongtype" in low:
        return ValueError(f"cache key holds a value of another Redis type: {message}")
    return BackendUnavailable(f"Redis refused a cache command: {message}")


class RedisTransport(FastTransport):
    """The connections one :class:`~statekit.cache.Cache` family shares: a redis-py
    client, and on plain TCP/unix clients a per-thread fast socket (see
    :class:`~statekit.redis.fast.FastTransport` for concurrency and failure
    behaviour). Adds the cache script, the cache's error mapping and the near
    cache's invalidation endpoints.

    :raises ConfigError: the client decodes responses (the cache stores bytes).
    """

    def __init__(self, client: RedisClient, *, fast_path: bool = True) -> None:
        get_encoder = getattr(client, "get_encoder", None)
        if get_encoder is not None and get_encoder().decode_responses:
            raise ConfigError("the cache needs a Redis client with decode_responses=False")
        # this module's names, looked up now: tests swap them for the pure-Python ones
        super().__init__(client, fast_path=fast_path, what="cache",
                         reader_factory=make_reader, pack=pack_command)

    def reply_error(self, message: str) -> Exception:
        return _value_error(message)

    def endpoints(self) -> list[dict[str, Any]]:
        """Where the near cache's invalidation connection(s) must connect now."""
        import redis

        client: Any = self.client
        if self.cluster:
            kw = dict(client.nodes_manager.connection_kwargs)
            kw["ssl"] = bool(kw.get("ssl")) or issubclass(kw.get("connection_class", object),
                                                          redis.SSLConnection)
            return [{**kw, "host": n.host, "port": n.port} for n in client.get_primaries()]
        pool = client.connection_pool
        kw = dict(pool.connection_kwargs)
        kw["ssl"] = issubclass(pool.connection_class, redis.SSLConnection)
        if hasattr(pool, "get_master_address"):  # sentinel
            host, port = pool.get_master_address()
            kw.update(host=host, port=port)
        return [kw]

    def run(self, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        """Run the cache script: one round trip (two more after a ``SCRIPT FLUSH``)."""
        return self.script(SHA, SCRIPT, keys, args)

    def set_nx(self, key: str, value: str, ttl_ms: int) -> bool:
        return self.command(b"SET", key, value, b"PX", ttl_ms, b"NX") is not None


class RedisCacheBackend(CacheBackend):
    """Cache backend for every Redis URL kind (see the module docstring)."""

    def __init__(self, transport: RedisTransport, base: str) -> None:
        self.transport = transport
        self.base = base
        self._gen_key = base + "gen"
        self._n = str(len(base.encode()))
        self._gen = b"0"  # the generation last seen; MGET checks it in the same step

    @classmethod
    def from_client(cls, client: RedisClient, base: str, *, fast_path: bool = True) -> RedisCacheBackend:
        require("redis", feature="the Redis cache")
        return cls(RedisTransport(client, fast_path=fast_path), base)

    def namespace(self, base: str) -> RedisCacheBackend:
        return RedisCacheBackend(self.transport, base)

    def _keys(self, keys: Sequence[str]) -> list[str]:
        b = self.base
        return [self._gen_key, *[b + k for k in keys]]

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """``MGET gen, <base><gen>:<key>...`` with the generation seen last time: the
        reply carries the current generation, read atomically with the values, so a
        mismatch (after a :meth:`clear`) is detected and the read repeated."""
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
        if not keys:
            return []
        return self._mget(keys)

    def get_many_with_ttl(self, keys: Sequence[str]) -> list[tuple[bytes | None, int | None]]:
        if not keys:
            return []
        flat = self.transport.run(self._keys(keys), (b"gett", self._n))
        out: list[tuple[bytes | None, int | None]] = []
        for i in range(0, len(flat), 2):
            value, ttl = flat[i], flat[i + 1]
            out.append((value, None if value is None or ttl < 0 else int(ttl)))
        return out

    def set_many(self, items: Mapping[str, bytes], ttl_ms: int | None) -> None:
        if not items:
            return
        ttl = b"" if ttl_ms is None else str(ttl_ms).encode()
        self.transport.run(self._keys(list(items)), (b"set", self._n, ttl, *items.values()))

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        ttl = b"" if ttl_ms is None else str(ttl_ms).encode()
        self.transport.run((self._gen_key, self.base + key), (b"set", self._n, ttl, value))

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        ttl = b"" if ttl_ms is None else str(ttl_ms).encode()
        return bool(self.transport.run((self._gen_key, self.base + key), (b"add", self._n, ttl, value)))

    def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(self.transport.run(self._keys(keys), (b"del", self._n)))

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        ttl = b"" if ttl_ms is None else str(ttl_ms).encode()
        result = self.transport.run((self._gen_key, self.base + key),
                                    (b"incr", self._n, str(delta).encode(), ttl, b"1" if create else b"0"))
        return None if result is None else int(result)

    def touch(self, key: str, ttl_ms: int | None) -> bool:
        ttl = b"" if ttl_ms is None else str(ttl_ms).encode()
        return bool(self.transport.run((self._gen_key, self.base + key), (b"touch", self._n, ttl)))

    def ttl_ms(self, key: str) -> int | None:
        left = int(self.transport.run((self._gen_key, self.base + key), (b"ttl", self._n)))
        return None if left == -2 else left

    def clear(self) -> None:
        self._gen = str(self.transport.command(b"INCR", self._gen_key)).encode()

    def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        return self.transport.set_nx(f"{self.base}lock:{name}", token, ttl_ms)

    def release_lock(self, name: str, token: str) -> bool:
        return bool(self.transport.run((self._gen_key, f"{self.base}lock:{name}"),
                                       (b"unlock", self._n, token.encode())))

    def extend_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(self.transport.run((self._gen_key, f"{self.base}lock:{name}"),
                                       (b"extend", self._n, token.encode(), str(ttl_ms).encode())))

    def close(self) -> None:
        self.transport.close()
