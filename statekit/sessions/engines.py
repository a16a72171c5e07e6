"""Storage engines behind :class:`statekit.sessions.SessionStore` (private).

A session is one hash. Field names are ``d:<key>`` for session data and ``m:<x>``
for metadata: ``m:c`` created, ``m:s`` last seen, ``m:u`` user id, ``m:i`` idle
timeout override, ``m:v`` version, and ``m:a`` on a rotated-away session (a
tombstone alias holding the handle of the new session: the writes of requests that
loaded the session before the rotation follow it, a load never does). A hash without
``m:c`` is not a live session.

Every write checks ``m:c`` first and refuses to touch a hash that lost it (destroyed,
revoked, expired), so no write can bring a session back. On Redis the checks and the
writes run in one Lua script; on ``memory://`` under the store's lock.

On a standalone TCP or unix-socket Redis the engine's loads and scripts skip
redis-py's pool: they go through :class:`~statekit.redis.fast.FastTransport`
(one socket per thread, kernel-enforced timeouts, failures raise
:class:`~statekit.errors.BackendUnavailable`), the same code the cache uses. The
few multi-command paths (destroy with an index, Cluster's index updates, listing)
use redis-py pipelines.

Result codes shared by both engines: ``1`` done, ``0`` the session is gone, ``2`` the
session was rotated (the second item is the new handle), ``-1`` the key already exists.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.memory import MemoryStore
from ..cache.near import InvalidationListener, NearCache
from ..errors import BackendUnavailable, ConfigError, SessionError
from ..metrics import Counters
from ..redis import RedisClient, translate_errors
from ..redis.fast import (
    FastTransport,
    RedisReplyError,
    SharedConnection,
    _FastConnection,
    fast_params,
    script_sha,
)

__all__ = ["IndexOp", "MemoryEngine", "RedisEngine", "Result"]

Result = tuple[int, Any]

#: sessions make one or two calls per web request, so Redis has usually been idle
#: and answers late (see FastTransport's ``spin``); polling this long still costs
#: less than the thread's sleep and wake-up
SESSION_SPIN_SECONDS = 200e-6


@dataclass(frozen=True)
class IndexOp:
    """Keep a user's sorted-set index in step with a session write.

    ``add`` is the index to add ``member`` to (score ``score``), ``remove`` the index
    to drop ``old_member`` from; entries scored below ``cutoff`` are purged.
    """

    member: str
    score: float
    cutoff: float
    ttl_ms: int
    add: str | None = None
    remove: str | None = None
    old_member: str | None = None


_HEAD = """
local head = redis.call('HMGET', KEYS[1], 'm:c', 'm:a')
if head[2] then return {2, head[2]} end
if not head[1] then return {0, false} end
"""

_INDEX = """
local function index(i, first_key)
  local member, score, cutoff, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local old_member, has_add, has_rem = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local k = first_key
  if has_add == '1' then
    redis.call('ZADD', KEYS[k], score, member)
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', cutoff)
    redis.call('PEXPIRE', KEYS[k], ttl)
    k = k + 1
  end
  if has_rem == '1' then redis.call('ZREM', KEYS[k], old_member) end
end
"""

# KEYS: session [, add-index] [, remove-index]
# ARGV: create ('0' or the new session's m:c), ttl_ms, return the hash ('0'/'1'), nsets,
# k1, v1 ..., ndels, f1 ..., [index args]. Fields go in chunks of 1000 arguments (Lua's
# unpack fails past about 8000: a huge session). A create finding its own m:c is a retried
# create (a caller retrying a create whose reply was lost), not a collision. The
# closing HGETALL (near cache) also makes the calling connection track the key again:
# the write itself ended its tracking.
_WRITE = _INDEX + """
if ARGV[1] ~= '0' then
  local c = redis.call('HGET', KEYS[1], 'm:c')
  if c ~= ARGV[1] and redis.call('EXISTS', KEYS[1]) == 1 then return {-1, false} end
else
""" + _HEAD + """
end
local function chunked(cmd, first, last)
  for j = first, last, 1000 do
    redis.call(cmd, KEYS[1], unpack(ARGV, j, math.min(j + 999, last)))
  end
end
local i = 5
local n = tonumber(ARGV[4])
chunked('HSET', i, i + 2 * n - 1)
i = i + 2 * n
local d = tonumber(ARGV[i])
chunked('HDEL', i + 1, i + d)
i = i + 1 + d
local v = redis.call('HINCRBY', KEYS[1], 'm:v', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[i] then index(i, 2) end
if ARGV[3] == '1' then return {1, v, redis.call('HGETALL', KEYS[1])} end
return {1, v}
"""

# KEYS: claim; ARGV: value, ttl_ms. The value already there, or none after setting it
# (a carried-over session's claim: the first request to set it wins)
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: old, new [, add-index] [, remove-index]; ARGV: new handle, alias_ms, [index]
_ROTATE = _INDEX + _HEAD + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {-1, false} end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'm:a', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] then index(3, 3) end
return {1, 0}
"""

# KEYS: session [, index]; ARGV: member. An alias is deleted and its target returned
# (the caller deletes that too): a request that loaded the session before a rotation
# still ends it.
_DESTROY = """
local a = redis.call('HGET', KEYS[1], 'm:a')
redis.call('DEL', KEYS[1])
if a then return {2, a} end
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[1]) end
return {1, false}
"""

# KEYS: session; ARGV: field, amount, codec. Returns {1, new value, new version}.
# Lua numbers are doubles: the json path returns the new value as Redis's text
# (exact to 64 bits); the msgpack path, which must add in Lua, refuses results past
# 2^53 instead of storing a rounded one.
_INCR = _HEAD + """
if ARGV[3] == 'msgpack' then
  local cur = redis.call('HGET', KEYS[1], ARGV[1])
  local n = 0
  if cur then
    local b = string.byte(cur, 1)
    n = (b ~= 0xca and b ~= 0xcb) and cmsgpack.unpack(cur)  -- a float is no integer (Lua: a number)
  end
  if type(n) ~= 'number' then return redis.error_reply('ERR session value is not an integer') end
  n = n + tonumber(ARGV[2])
  if n ~= n or math.abs(n) >= 9007199254740992 then
    return redis.error_reply('ERR increment would reach 2^53 (msgpack codec)')
  end
  redis.call('HSET', KEYS[1], ARGV[1], cmsgpack.pack(n))
  return {1, n, redis.call('HINCRBY', KEYS[1], 'm:v', 1)}
end
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
return {1, redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HINCRBY', KEYS[1], 'm:v', 1)}
"""

# KEYS: index; ARGV: key prefix, member to keep. Standalone/Sentinel only: the
# session keys are computed from the index members, which Redis Cluster forbids.
_REVOKE = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local n = 0
for _, m in ipairs(members) do
  if m ~= ARGV[2] then
    n = n + redis.call('DEL', ARGV[1] .. m)
    redis.call('ZREM', KEYS[1], m)
  end
end
return n
"""

_WRITE_SHA, _ROTATE_SHA, _INCR_SHA, _REVOKE_SHA, _DESTROY_SHA = (
    script_sha(s) for s in (_WRITE, _ROTATE, _INCR, _REVOKE, _DESTROY))
_CLAIM_SHA = script_sha(_CLAIM)


def _index_args(op: IndexOp) -> list[bytes | str | int | float]:
    return [op.member, repr(op.score), repr(op.cutoff), op.ttl_ms, op.old_member or "",
            "1" if op.add else "0", "1" if op.remove else "0"]


def _index_keys(op: IndexOp) -> list[str]:
    return [k for k in (op.add, op.remove) if k]


def _pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    it = iter(flat)
    return {k.decode(): v for k, v in zip(it, it, strict=True)}


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class _TrackingTransport(FastTransport):
    """The fast path with Redis client-side caching, on one socket per process,
    shared by its threads and pipelined (:class:`~statekit.redis.fast.SharedConnection`).
    The socket runs ``CLIENT TRACKING on REDIRECT <listener> NOLOOP`` first, so Redis
    reports to the :class:`~statekit.cache.near.InvalidationListener` every later
    change, by another connection, of a key it read. One socket per process, not per
    thread: each tracking connection gets its own message for every change, and this
    process's own saves must not come back to it as invalidations. A socket whose
    setup failed, or that was set up for an earlier listener connection, never feeds
    the near cache."""

    def __init__(self, client: RedisClient, listener: InvalidationListener) -> None:
        super().__init__(client, what="session", spin=SESSION_SPIN_SECONDS)
        self.listener = listener
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        super().reset_after_fork()
        self._shared: SharedConnection | None = None
        self._open_lock = threading.Lock()

    def _current(self) -> SharedConnection | None:
        """The shared socket, unless it failed or belongs to an earlier listener
        connection (while the listener is down, the untracked socket serves; nothing
        is kept then)."""
        shared = self._shared
        if shared is None or shared.broken is not None:
            return None
        listener = self.listener
        if abs(shared.conn.tag) != listener.generation and listener.connected.is_set():
            return None
        return shared

    def _open(self) -> SharedConnection:
        shared = self._current()
        if shared is not None:
            return shared
        with self._open_lock:
            shared = self._current()
            if shared is not None:
                return shared
            # a replaced socket is not closed here: other threads may have commands in
            # flight on it; it closes when the last of them lets go of it
            assert self.fast_params is not None
            conn = _FastConnection(self.fast_params, self._reader_factory, self.spin)
            conn.tag = 0  # untracked: opened while the listener was down (generation >= 1 when up)
            # generation first, then the id: a newer id with an older generation only
            # makes the socket look stale (reopened), never the other way round
            listener = self.listener
            generation, client_id = listener.generation, listener.client_id
            if client_id is not None and listener.connected.is_set():
                try:
                    reply = conn.call(self._pack((b"CLIENT", b"TRACKING", b"on", b"REDIRECT",
                                                  client_id, b"NOLOOP")))
                except OSError as e:
                    conn.close()
                    raise BackendUnavailable(f"Redis unavailable during a session call: {e}") from e
                # refused (an ACL, a proxy): serve untracked until the listener reconnects,
                # instead of reopening on every call
                conn.tag = -generation if isinstance(reply, Exception) else generation
            shared = self._shared = SharedConnection(conn)
            return shared

    # FastTransport.fast_call (retry on a stale socket, errors as BackendUnavailable)
    # serves through these three
    _existing = _current
    _fast = _open

    def _drop_fast(self) -> None:
        """Nothing to drop: a failed SharedConnection is marked broken by itself (and
        replaced by :meth:`_open`), and an interrupted thread must not close the
        socket the other threads' commands are in flight on."""

    def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.close()

    def tracked(self) -> bool:
        """Whether the socket reports its reads to the live listener."""
        shared = self._shared
        if shared is None or shared.broken is not None:
            return False
        tag = shared.conn.tag
        return tag == self.listener.generation and tag > 0


class RedisEngine:
    """Sessions in Redis (standalone, Sentinel or Cluster).

    In Redis Cluster a session and its user index live in different slots, so the
    index is updated by a second call right after the session script, and
    :meth:`revoke_user` reads the index and then deletes (two calls, not atomic
    with a login or rotation happening at the same instant).

    With *near_cache* (a number of sessions), loads are served from a per-process
    copy of recently used sessions, kept coherent by Redis client-side caching
    (:class:`_TrackingTransport`); standalone Redis over TCP or a unix socket only.
    """

    def __init__(self, client: RedisClient, key_prefix: str, *, fast_path: bool = True,
                 near_cache: int = 0, near_max_age: float = 60.0, counters: Counters | None = None) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.near: NearCache[dict[str, bytes]] | None = None
        self.counters = counters or Counters("sessions", key_prefix)
        # load, save, rotate, incr and revoke: one command or script on this thread's
        # own socket (redis-py for Cluster/Sentinel/TLS); pipelines stay on redis-py
        self.transport: FastTransport
        if near_cache:
            params = fast_params(client)
            if params is None or not fast_path:
                raise ConfigError(
                    "the session near cache needs a standalone Redis over TCP or a unix socket "
                    "(not Cluster, Sentinel, TLS or RESP3)")
            self.listener = InvalidationListener(lambda: [dict(params)], f"{key_prefix}:session:",
                                                 bcast=False)
            self.near = NearCache(near_cache, near_max_age)
            self.listener.register(f"{key_prefix}:session:", self.near, whole_keys=True)
            self.transport = _TrackingTransport(client, self.listener)
            weakref.finalize(self, self.listener.stop)
        else:
            self.transport = FastTransport(client, fast_path=fast_path, what="session",
                                           spin=SESSION_SPIN_SECONDS)
        self.cluster = self.transport.cluster

    @property
    def near_hits(self) -> int:
        """Loads served from the near cache (the ``near_hits`` session counter)."""
        return self.counters.get("near_hits")

    def _tracked(self) -> bool:
        transport = self.transport
        return isinstance(transport, _TrackingTransport) and transport.tracked()

    @contextlib.contextmanager
    def _changing(self, key: str | None = None, *, stores: bool = False,
                  barrier: bool = True) -> Iterator[int]:
        """Around a change of *key* (of any session if ``None``) by this process,
        with the near cache on. With *stores*, yields the sequence number under which
        the block settles the key (:meth:`NearCache.settle`, keeping the value the
        change left), else ``-1``.

        Before the change, this process's copy is dropped. After it, the copy is
        dropped again (unless the block settled it): a load of this process that
        read the old value while the change was in flight must not keep it, and no
        invalidation will come for it (``NOLOOP``).

        With *barrier* (rotation, logout, revocation), a ``PING`` then waits until
        Redis has written the invalidations for the other processes: Redis writes
        the writer's reply before the invalidations of the same change (in one pass
        of its event loop), and reads a command only in a later pass. This makes a
        revoked session's copies go away before the revoking request answers
        (delivery by the kernel may still take a moment under load). Saves and
        ``incr`` skip it: the same user's next request is ordered after them by the
        version token (see :mod:`statekit.sessions`)."""
        near = self.near
        if near is None:
            yield -1
            return
        if key is None:
            near.flush()
        else:
            near.evict(key)
        seq = near.seq if stores and near.active and key is not None else -1
        try:
            yield seq
        except BaseException:
            # the change may have reached Redis (a reply that timed out) and no
            # invalidation will come for it (NOLOOP): refuse every copy of the key that
            # a load of this process read before, whatever the block did
            if key is None:
                near.flush()
            else:
                near.settle(key, None, -1)
            raise
        if key is None:
            near.flush()
        elif seq < 0:  # else the block settled the key itself (see _write)
            near.settle(key, None, -1)
        if barrier:
            self.transport.command(b"PING")

    def _index_after(self, op: IndexOp | None) -> None:
        if op is None:
            return
        pipe = self.client.pipeline(transaction=False)
        if op.add:
            pipe.zadd(op.add, {op.member: op.score})
            pipe.zremrangebyscore(op.add, "-inf", op.cutoff)
            pipe.pexpire(op.add, op.ttl_ms)
        if op.remove and op.old_member:
            pipe.zrem(op.remove, op.old_member)
        pipe.execute()

    def fetch(self, key: str, min_version: int = 0) -> dict[str, bytes]:
        """The session hash under *key* (``{}`` if none): from the near cache when it
        holds a copy of at least *min_version* that no invalidation has reached, else
        one ``HGETALL``. The returned dict is shared with the near cache: do not
        change it."""
        near = self.near
        seq = -1
        if near is not None:
            self.listener.ensure_running()
            if near.active:
                hit = near.data.get(key)
                if (hit is not None and hit[1] > time.monotonic() and not self.listener.pending()
                        and (not min_version or int(hit[0].get("m:v", b"0")) >= min_version)):
                    self.counters.incr("near_hits")
                    return hit[0]
                seq = near.seq
        raw = self.transport.command(b"HGETALL", key)
        if isinstance(raw, dict):  # through redis-py (its reply callback)
            return {_text(k): v for k, v in raw.items()}
        out = _pairs(raw)
        if near is not None and seq >= 0 and "m:c" in out and self._tracked():
            near.store(key, out, None, seq)
        return out

    def write(self, key: str, *, create: bool, sets: Mapping[str, bytes | str],
              dels: Sequence[str], ttl_ms: int, index: IndexOp | None) -> Result:
        if self.near is None:  # the usual path: nothing to keep coherent
            return self._write(key, create, sets, dels, ttl_ms, index, -1)
        with self._changing(key, stores=True, barrier=False) as seq:
            return self._write(key, create, sets, dels, ttl_ms, index, seq)

    def _write(self, key: str, create: bool, sets: Mapping[str, bytes | str], dels: Sequence[str],
               ttl_ms: int, index: IndexOp | None, seq: int) -> Result:
        args: list[bytes | str | int | float] = [sets["m:c"] if create else "0", ttl_ms,
                                                 "1" if seq >= 0 else "0", len(sets)]
        for f, v in sets.items():
            args += [f, v]
        args += [len(dels), *dels]
        keys = [key]
        if index is not None and not self.cluster:
            keys += _index_keys(index)
            args += _index_args(index)
        reply = self.transport.script(_WRITE_SHA, _WRITE, keys, args)
        code, extra = reply[0], reply[1]
        if code == 1 and self.cluster:
            with translate_errors("session save"):
                self._index_after(index)
        if seq >= 0 and self.near is not None:
            fresh = code == 1 and len(reply) > 2 and self._tracked()
            self.near.settle(key, _pairs(reply[2]) if fresh else None, seq)
        return int(code), _text(extra)

    def rotate(self, old: str, new: str, handle: str, alias_ms: int, index: IndexOp | None) -> Result:
        keys = [old, new]
        args: list[bytes | str | int | float] = [handle, alias_ms]
        if index is not None and not self.cluster:
            keys += _index_keys(index)
            args += _index_args(index)
        with self._changing(old):
            code, extra = self.transport.script(_ROTATE_SHA, _ROTATE, keys, args)
        if code == 1 and self.cluster:
            with translate_errors("session rotate"):
                self._index_after(index)
        return int(code), _text(extra)

    def incr(self, key: str, field: str, amount: int, codec: str) -> Result:
        try:
            with self._changing(key, barrier=False):
                reply = self.transport.script(_INCR_SHA, _INCR, [key], [field, amount, codec])
        except RedisReplyError as e:
            raise SessionError(f"cannot increment session key {field[2:]!r}: {e}") from e
        if reply[0] == 1:
            return 1, (int(reply[1]), int(reply[2]))
        return int(reply[0]), _text(reply[1])

    def peek(self, key: str) -> bytes | None:
        """The value of a plain key (a carry-over claim), or ``None``."""
        reply = self.transport.command(b"GET", key)
        return None if reply is None else _bytes(reply)

    def claim(self, key: str, value: bytes, ttl_ms: int) -> bytes | None:
        """Set *key* to *value* unless it is set: ``None`` if this call set it, else the
        value already there (one script: of concurrent calls, exactly one sets it)."""
        reply = self.transport.script(_CLAIM_SHA, _CLAIM, [key], [value, ttl_ms])
        return None if reply is None else _bytes(reply)

    def destroy(self, key: str, index_key: str | None, member: str) -> Result:
        """Delete the session under *key* and its *member* of *index_key*: ``(1, None)``;
        ``(2, handle)`` if *key* was a rotation alias (deleted; its target is not)."""
        keys = [key, index_key] if index_key and not self.cluster else [key]
        with self._changing(key):
            code, extra = self.transport.script(_DESTROY_SHA, _DESTROY, keys, [member])
            if code == 1 and index_key and self.cluster:
                with translate_errors("session destroy"):
                    self.client.zrem(index_key, member)
        return int(code), _text(extra)

    def revoke_user(self, index_key: str, keep: str, key_of: Callable[[str], str]) -> int:
        with self._changing():  # other processes' copies: Redis invalidates them
            return self._revoke_user(index_key, keep, key_of)

    def _revoke_user(self, index_key: str, keep: str, key_of: Callable[[str], str]) -> int:
        with translate_errors("session revoke"):
            if not self.cluster:
                return int(self.transport.script(_REVOKE_SHA, _REVOKE, [index_key],
                                                 [f"{self.key_prefix}:session:", keep]))
            members = [_text(m) for m in self.client.zrange(index_key, 0, -1)]
            doomed = [m for m in members if m != keep]
            if not doomed:
                return 0
            pipe = self.client.pipeline(transaction=False)
            for m in doomed:
                pipe.delete(key_of(m))
            pipe.zrem(index_key, *doomed)
            results = pipe.execute()
            return int(sum(results[:-1]))

    def list_user(self, index_key: str, cutoff: float,
                  key_of: Callable[[str], str]) -> list[tuple[str, dict[str, bytes]]]:
        with translate_errors("session list"):
            members = [_text(m) for m in self.client.zrangebyscore(index_key, cutoff, "+inf")]
            if not members:
                return []
            pipe = self.client.pipeline(transaction=False)
            for m in members:
                pipe.hmget(key_of(m), "m:c", "m:s", "m:u", "m:i")
            rows = pipe.execute()
        out = []
        for m, row in zip(members, rows, strict=True):
            if row[0] is not None:
                out.append((m, dict(zip(("m:c", "m:s", "m:u", "m:i"), row, strict=True))))
        return out


class MemoryEngine:
    """Sessions in a :class:`~statekit.backends.memory.MemoryStore` (one process):
    the same contract as :class:`RedisEngine`, made atomic by the store's lock."""

    def __init__(self, store: MemoryStore, key_prefix: str) -> None:
        self.store = store
        self.key_prefix = key_prefix

    #: no near cache here: the store is in this process already
    near_hits = 0

    def fetch(self, key: str, min_version: int = 0) -> dict[str, bytes]:
        return dict(self.store.get(key) or {})

    def peek(self, key: str) -> bytes | None:
        value = self.store.get(key)
        return None if value is None else bytes(value)

    def claim(self, key: str, value: bytes, ttl_ms: int) -> bytes | None:
        with self.store.lock:
            if self.store.add(key, value, ttl_ms / 1000):
                return None
            return bytes(self.store.get(key))

    def _head(self, key: str) -> tuple[dict[str, Any] | None, Result | None]:
        h = self.store.get(key)
        if h is not None and "m:a" in h:
            return None, (2, _text(h["m:a"]))
        if h is None or "m:c" not in h:
            return None, (0, None)
        return h, None

    def _index(self, op: IndexOp | None) -> None:
        if op is None:
            return
        if op.remove and op.old_member:
            idx = self.store.get(op.remove)
            if idx is not None:  # changed in place: keeps its expiry (as ZREM)
                idx.pop(op.old_member, None)
        if op.add:
            idx = self.store.get(op.add) or {}
            idx[op.member] = op.score
            idx = {m: s for m, s in idx.items() if s > op.cutoff}
            self.store.set(op.add, idx, op.ttl_ms / 1000)

    def write(self, key: str, *, create: bool, sets: Mapping[str, bytes | str],
              dels: Sequence[str], ttl_ms: int, index: IndexOp | None) -> Result:
        with self.store.lock:
            if create:
                found_h = self.store.get(key)
                if found_h is not None and found_h.get("m:c") != _bytes(sets["m:c"]):
                    return -1, None
                h: dict[str, bytes] = dict(found_h or {})
            else:
                found, res = self._head(key)
                if found is None:
                    assert res is not None
                    return res
                h = dict(found)
            for f, v in sets.items():
                h[f] = _bytes(v)
            for f in dels:
                h.pop(f, None)
            version = int(h.get("m:v", b"0")) + 1
            h["m:v"] = str(version).encode()
            self.store.set(key, h, ttl_ms / 1000)
            self._index(index)
            return 1, version

    def rotate(self, old: str, new: str, handle: str, alias_ms: int, index: IndexOp | None) -> Result:
        with self.store.lock:
            found, res = self._head(old)
            if found is None:
                assert res is not None
                return res
            if self.store.get(new) is not None:
                return -1, None
            ttl = self.store.ttl(old)
            self.store.set(new, found, ttl)
            self.store.set(old, {"m:a": handle.encode()}, alias_ms / 1000)
            self._index(index)
            return 1, 0

    def incr(self, key: str, field: str, amount: int, codec: str) -> Result:
        with self.store.lock:
            found, res = self._head(key)
            if found is None:
                assert res is not None
                return res
            cur = found.get(field)
            try:
                if codec == "msgpack":
                    import msgpack

                    n = msgpack.unpackb(cur) if cur is not None else 0
                    if type(n) is not int:  # bool or float: refused, as by the Redis script
                        raise TypeError(n)
                    n += amount
                    enc = msgpack.packb(n)
                    in_range = -(2**53) < n < 2**53  # as the Redis script: Lua adds in doubles
                else:
                    n = (int(cur) if cur is not None else 0) + amount
                    enc = str(n).encode()
                    in_range = -(2**63) <= n < 2**63  # as HINCRBY: signed 64 bits
            except (TypeError, ValueError) as e:
                raise SessionError(f"cannot increment session key {field[2:]!r}: not an integer") from e
            if not in_range:
                raise SessionError(f"cannot increment session key {field[2:]!r}: the result is out of range")
            h = dict(found)
            h[field] = enc
            version = int(h.get("m:v", b"0")) + 1
            h["m:v"] = str(version).encode()
            self.store.set(key, h, self.store.ttl(key))
            return 1, (n, version)

    def destroy(self, key: str, index_key: str | None, member: str) -> Result:
        with self.store.lock:
            h = self.store.get(key)
            self.store.delete(key)
            if h is not None and "m:a" in h:
                return 2, _text(h["m:a"])
            if index_key:
                idx = self.store.get(index_key)
                if idx:
                    idx.pop(member, None)
            return 1, None

    def revoke_user(self, index_key: str, keep: str, key_of: Callable[[str], str]) -> int:
        with self.store.lock:
            idx = self.store.get(index_key) or {}
            n = 0
            for m in [m for m in idx if m != keep]:
                n += self.store.delete(key_of(m))
                idx.pop(m)
            return n

    def list_user(self, index_key: str, cutoff: float,
                  key_of: Callable[[str], str]) -> list[tuple[str, dict[str, bytes]]]:
        with self.store.lock:
            idx = dict(self.store.get(index_key) or {})
            out = []
            for m, score in sorted(idx.items(), key=lambda kv: kv[1]):
                h = self.store.get(key_of(m))
                if score >= cutoff and h and "m:c" in h:
                    out.append((m, {f: h.get(f) for f in ("m:c", "m:s", "m:u", "m:i")}))
            return out


def now() -> float:
    """Wall-clock seconds (metadata is shared between machines)."""
    return time.time()
