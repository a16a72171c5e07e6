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
:class:`_FastConnection`). The socket has the client's connect and read timeouts,
enforced by the kernel; a failure closes it and raises
:class:`~statekit.errors.BackendUnavailable`.
Sentinel, Cluster and TLS clients go through redis-py (its failover and
redirection handling).
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BackendUnavailable, ConfigError
from . import require
from .cachebase import CacheBackend
from .redis import RedisClient, is_cluster, translate_errors

__all__ = ["RedisCacheBackend", "RedisTransport", "make_reader", "pack_command"]

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
  local r = real(2)
  if redis.call('EXISTS', r) == 0 then
    if ARGV[5] ~= '1' then return false end
    local v = redis.call('INCRBY', r, ARGV[3])
    if ARGV[4] ~= '' then redis.call('PEXPIRE', r, ARGV[4]) end
    return v
  end
  return redis.call('INCRBY', r, ARGV[3])
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
SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest().encode()


def _pack_python(args: Sequence[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _value_error(message: str) -> Exception:
    low = message.lower()
    if "not an integer" in low or "overflow" in low:
        return ValueError(f"cache value is not an integer or would overflow: {message}")
    if "wrongtype" in low:
        return ValueError(f"cache key holds a value of another Redis type: {message}")
    return BackendUnavailable(f"Redis refused a cache command: {message}")


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound every send and receive on *sock* by *seconds*.

    On Linux the kernel enforces it (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking
    socket): a round trip is then two system calls, where Python's own socket
    timeout adds a ``poll()`` before each. A timeout raises ``BlockingIOError``."""
    seconds = max(seconds, 0.001)  # a zero timeval would mean "wait for ever"
    if sys.platform.startswith("linux"):
        tv = struct.pack("@ll", int(seconds), int((seconds % 1) * 1_000_000))
        try:
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            return
        except OSError:  # pragma: no cover - fall back to Python's timeout
            pass
    sock.settimeout(seconds)


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_perf = time.perf_counter
#: how long a call polls for the reply before it blocks (see _FastConnection)
SPIN_SECONDS = 60e-6


class _FastConnection:
    """One socket and one reply parser, used by one thread only.

    After sending a command it first polls the socket without blocking a few times
    (adaptive busy-polling): a Redis on the same host or LAN usually answers within
    those microseconds, and the thread is spared a sleep and a scheduler wake-up,
    which on virtual machines costs more than the round trip itself. After 16
    replies in a row slower than the spin (a distant Redis) it stops spinning, and
    probes again every 1024 calls."""

    __slots__ = ("calls", "misses", "reader", "sock", "spin")

    def __init__(self, params: Mapping[str, Any], reader_factory: Any) -> None:
        timeout = params.get("socket_connect_timeout") or params.get("socket_timeout") or 1.0
        path = params.get("path")
        try:
            if path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(path)
            else:
                sock = socket.create_connection((params["host"], params["port"]), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise BackendUnavailable(f"cannot connect to Redis: {e}") from e
        _set_timeout(sock, params.get("socket_timeout") or 1.0)
        self.sock = sock
        self.reader = reader_factory()
        self.spin = bool(_DONTWAIT)
        self.calls = self.misses = 0
        if params.get("password"):
            auth = ["AUTH", params["password"]]
            if params.get("username"):
                auth.insert(1, params["username"])
            self._checked(auth)
        if params.get("db"):
            self._checked(["SELECT", str(params["db"])])

    def _checked(self, args: list[str]) -> None:
        reply = self.call(_pack_python([a.encode() for a in args]))
        if isinstance(reply, Exception):
            self.close()
            raise BackendUnavailable(f"Redis refused {args[0]}: {reply}")

    def call(self, packed: bytes) -> Any:
        sock = self.sock
        sock.sendall(packed)
        reader = self.reader
        if self.spin:
            recv = sock.recv
            deadline = _perf() + SPIN_SECONDS
            while True:
                try:
                    data = recv(65536, _DONTWAIT)
                except BlockingIOError:
                    if _perf() < deadline:
                        continue
                    self.misses += 1  # the reply is slower than a spin
                    if self.misses >= 16:
                        self.spin = False
                        self.calls = 0
                    break
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                reader.feed(data)
                self.misses = 0
                break
        else:
            self.calls += 1
            if self.calls >= 1024 and _DONTWAIT:  # probe now and then: is Redis close again?
                self.spin = True
                self.misses = 8
        reply = reader.gets()
        while reply is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass

    def __del__(self) -> None:  # a thread that used the cache ended: no unclosed-socket warning
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()


class _PyReader:
    """A minimal RESP2 reader, used when hiredis is not installed."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def gets(self) -> Any:
        try:
            value, pos = self._parse(0)
        except IndexError:
            return False
        del self.buf[:pos]
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self.buf.index(b"\r\n", pos) if b"\r\n" in self.buf[pos:] else -1
        if end < 0:
            raise IndexError
        return bytes(self.buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Any, int]:
        if pos >= len(self.buf):
            raise IndexError
        line, nxt = self._line(pos)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest, nxt
        if kind == b"-":
            return _ReplyError(rest.decode(errors="replace")), nxt
        if kind == b":":
            return int(rest), nxt
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None, nxt
            if len(self.buf) < nxt + size + 2:
                raise IndexError
            return bytes(self.buf[nxt : nxt + size]), nxt + size + 2
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None, nxt
            items = []
            for _ in range(count):
                item, nxt = self._parse(nxt)
                items.append(item)
            return items, nxt
        raise BackendUnavailable(f"unexpected reply from Redis: {line[:40]!r}")


class _ReplyError(Exception):
    pass


def _pack_any(args: Sequence[Any]) -> bytes:
    return _pack_python([a if isinstance(a, bytes) else str(a).encode() for a in args])


try:
    import hiredis

    #: a RESP reply parser (``feed(bytes)``, ``gets()`` -> reply or ``False``)
    make_reader: Any = hiredis.Reader
    #: encode one command (a tuple of str/bytes/int) as RESP
    pack_command: Any = hiredis.pack_command
except ImportError:  # pragma: no cover - hiredis is optional (pip install 'statekit[hiredis]')
    make_reader = _PyReader
    pack_command = _pack_any


_transports: weakref.WeakSet[RedisTransport] = weakref.WeakSet()


def _after_fork() -> None:
    for t in list(_transports):
        t.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class RedisTransport:
    """The connections one :class:`~statekit.cache.Cache` family shares: a redis-py
    client, and on plain TCP/unix clients a per-thread fast socket."""

    def __init__(self, client: RedisClient, *, fast_path: bool = True) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self._check_encoding()
        self.fast_params = self._fast_params() if fast_path else None
        self._reader_factory: Any = make_reader
        self._pack: Any = pack_command
        self._local = threading.local()
        _transports.add(self)

    def _check_encoding(self) -> None:
        get_encoder = getattr(self.client, "get_encoder", None)
        if get_encoder is not None and get_encoder().decode_responses:
            raise ConfigError("the cache needs a Redis client with decode_responses=False")

    def _fast_params(self) -> dict[str, Any] | None:
        if self.cluster:
            return None
        import redis

        pool = getattr(self.client, "connection_pool", None)
        if pool is None or pool.connection_class not in (redis.Connection, redis.UnixDomainSocketConnection):
            return None
        kw = pool.connection_kwargs
        if kw.get("credential_provider") or kw.get("protocol") in (3, "3"):
            return None
        return {k: kw.get(k) for k in ("host", "port", "path", "db", "username", "password",
                                       "socket_timeout", "socket_connect_timeout")}

    def reset_after_fork(self) -> None:
        self._local = threading.local()

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

    def _fast(self) -> _FastConnection:
        conn: _FastConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self.fast_params is not None
            conn = self._local.conn = _FastConnection(self.fast_params, self._reader_factory)
        return conn

    def _drop_fast(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def run(self, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        """Run the cache script: one round trip."""
        if self.fast_params is not None:
            packed = self._pack((b"EVALSHA", SHA, len(keys), *keys, *args))
            reply = self.fast_call(packed)
            if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
                self.fast_call(self._pack((b"SCRIPT", b"LOAD", SCRIPT)))
                reply = self.fast_call(packed)
            if isinstance(reply, Exception):
                raise _value_error(str(reply))
            return reply
        return self._run_redis_py(keys, args)

    def command(self, *args: bytes | str | int) -> Any:
        """Run one plain Redis command: one round trip."""
        if self.fast_params is not None:
            reply = self.fast_call(self._pack(args))
            if isinstance(reply, Exception):
                raise _value_error(str(reply))
            return reply
        import redis

        client: Any = self.client
        name = args[0].decode() if isinstance(args[0], bytes) else args[0]
        with translate_errors("a cache call"):
            try:
                return client.execute_command(name, *args[1:])
            except redis.exceptions.ResponseError as e:
                if isinstance(e, redis.exceptions.ReadOnlyError):
                    raise BackendUnavailable(f"Redis is read-only (failover in progress?): {e}") from e
                raise _value_error(str(e)) from e

    def fast_call(self, packed: bytes) -> Any:
        """Send a packed command on this thread's socket and return the reply (an
        error reply is returned, not raised). A socket the server closed while idle
        is replaced once; any other failure raises BackendUnavailable."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                return conn.call(packed)
            except (ConnectionResetError, BrokenPipeError):
                self._drop_fast()  # stale socket (Redis restarted, idle timeout): one retry
            except OSError as e:
                self._drop_fast()
                raise BackendUnavailable(f"Redis did not answer a cache call in time: {e}") from e
        try:
            return self._fast().call(packed)
        except BackendUnavailable:
            self._drop_fast()
            raise
        except OSError as e:  # timeouts included: the reply stream is out of step
            self._drop_fast()
            raise BackendUnavailable(f"Redis unavailable during a cache call: {e}") from e

    def _run_redis_py(self, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        import redis

        with translate_errors("a cache call"):
            try:
                try:
                    return self.client.evalsha(SHA.decode(), len(keys), *keys, *args)
                except redis.exceptions.NoScriptError:
                    self.client.script_load(SCRIPT)
                    return self.client.evalsha(SHA.decode(), len(keys), *keys, *args)
            except redis.exceptions.ResponseError as e:
                if isinstance(e, redis.exceptions.ReadOnlyError):
                    raise BackendUnavailable(f"Redis is read-only (failover in progress?): {e}") from e
                raise _value_error(str(e)) from e

    def set_nx(self, key: str, value: str, ttl_ms: int) -> bool:
        return self.command(b"SET", key, value, b"PX", ttl_ms, b"NX") is not None

    def close(self) -> None:
        self._drop_fast()


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
