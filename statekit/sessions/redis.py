"""Sessions in Redis or Valkey (standalone, Sentinel, Cluster), and ``memory://``:
the same engine over an in-process fakeredis server (:func:`statekit.redis.memory_client`),
so both run the very Lua scripts below and nothing is implemented twice.

Layout: session *handle* ``h`` is the hash ``<prefix>:session:<h>`` (fields as in
:mod:`statekit.sessions.protocol`); user ``u``'s index is the sorted set
``<prefix>:session-user:<sha256(u)[:32]>`` (members: handles, scores: last write).
Each atomic operation is one script, ``statekit/redis/scripts/session_<op>.lua``:
checking ``m:c``/``m:a`` and writing happen in one step, and on standalone and
Sentinel the user index is updated in the same script.

**Redis Cluster.** A session, its alias and its successor share a slot (the
handle's ``{tag}``), so write, rotate and incr stay single scripts; the user index
lives in the user's slot and is updated by a second call right after the session
script, and :meth:`RedisEngine.revoke_user` reads the index and then deletes (a
login at that very instant may escape it).

All commands and scripts go through :class:`~statekit.redis.transport.Transport`
(one connection per thread, or with the near cache one per key lane; redis-py's
parser, the retry rule and error map of :mod:`statekit.redis`); pipelines (Cluster
index updates, listings) through the redis-py client.

**Near cache** (``near_cache=N``; standalone or Sentinel): see "Near cache" in
:mod:`statekit.sessions`. Loads are served from a per-process copy that Redis
client-side caching keeps coherent: the transport's connections run ``CLIENT
TRACKING on REDIRECT`` to the :class:`~statekit.redis.tracking.InvalidationListener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._settle import settle
from ..cache.near import NearCache
from ..config import parse_url
from ..errors import BackendUnavailable, ConfigError, SessionError
from ..metrics import Counters
from ..redis import RedisClient, get_client, memory_client, outcome_unknown, translate_errors
from ..redis.scripts import Script, load
from ..redis.tracking import InvalidationListener
from ..redis.transport import RedisReplyError, Transport
from .protocol import DONE, EXISTS, GONE, IndexOp, NotSent, Result, Status

if TYPE_CHECKING:
    from ..redis.aio import AsyncTransport

__all__ = ["REVOKE_BATCH", "AsyncRedisEngine", "RedisEngine"]

#: sessions a single ``revoke_user`` script deletes at most: one batch holds Redis
#: about a millisecond (SLOWLOG: at most 0.98 ms during a revoke of 30,000 sessions,
#: on a loaded 2-core machine), so a user with tens of thousands of sessions never
#: stalls the other clients (one script for all of them held Redis 112 ms)
REVOKE_BATCH = 256

_WRITE, _ROTATE, _INCR, _DESTROY, _REVOKE, _CLAIM = (
    load(f"session_{name}") for name in ("write", "rotate", "incr", "destroy", "revoke", "claim"))
_META = ("m:c", "m:s", "m:u", "m:i", "m:v")
#: write or rotate script calls at most, each with the index of the user the last one
#: found stored (see :meth:`_Layout._index_again`)
_INDEX_TRIES = 4


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(reply: Any) -> bytes | None:
    return reply.encode() if isinstance(reply, str) else reply


def _listener(client: RedisClient, prefix: str) -> InvalidationListener:
    """The invalidation listener of a session near cache on *client*.

    :raises ConfigError: *client* cannot take one (Redis Cluster: a session's
        tracking connection and the listener must be on one server)."""
    from ..redis import is_cluster

    if is_cluster(client) or not hasattr(client, "connection_pool") or "fakeredis" in type(client).__module__:
        raise ConfigError("the session near cache needs a standalone or Sentinel Redis (not Cluster "
                          "or memory://)")
    return InvalidationListener(client, prefix, bcast=False)


def _version(raw: Mapping[str, bytes]) -> int:
    """The stored version of a session hash (``-1``: unreadable, no statekit wrote it)."""
    try:
        return int(raw.get("m:v") or 0)
    except ValueError:
        return -1


def _fields(raw: Any) -> dict[str, bytes]:
    """A hash reply (a RESP3 map or redis-py's callback: a dict; RESP2: a flat list)
    as a dict of field names to values."""
    if not isinstance(raw, dict):
        it = iter(raw)
        raw = dict(zip(it, it, strict=True))
    try:
        return {k.decode(): v for k, v in raw.items()}
    except AttributeError:  # a client with decode_responses
        return {_text(k): v for k, v in raw.items()}


def _loaded_user(index: IndexOp | None, changes_user: bool) -> str:
    """The user a write or rotate script checks the stored one against (``u<id>``,
    ``n`` for none, ``""``: no check, without an index operation): the user the
    request loaded, as the store's index operation implies it (it adds to that
    user's index unless the write changes the user, and then removes from it)."""
    if index is None:
        return ""
    user = index.remove if changes_user else index.add
    return "n" if user is None else "u" + user


def _result(reply: Sequence[Any]) -> Result:
    """A script's reply (``{1, ...}`` done, ``{0}`` gone, ``{2, handle}`` an alias,
    ``{-1}`` taken) as a :class:`~statekit.sessions.protocol.Result`."""
    code = reply[0]
    if code == 1:
        return Result(Status.DONE, version=int(reply[1])) if len(reply) > 1 else DONE
    if code == 2:
        return Result(Status.ROTATED, handle=_text(reply[1]))
    return GONE if code == 0 else EXISTS


class _Layout:
    """The key layout, script arguments and reply parsing both Redis engines share
    (the sync :class:`RedisEngine` and :class:`AsyncRedisEngine` differ only in
    awaiting their calls)."""

    key_prefix: str
    _session_prefix: str
    cluster: bool
    counters: Counters
    near: NearCache[dict[str, bytes]] | None
    listener: InvalidationListener | None

    def _names(self, key_prefix: str, counters: Counters | None) -> None:
        self.key_prefix = key_prefix
        self._session_prefix = f"{key_prefix}:session:"
        self.counters = counters or Counters("sessions", key_prefix)
        self.near = None
        self.listener = None

    def _near_setup(self, client: RedisClient, near_cache: int, near_max_age: float) -> None:
        """Turn the near cache on: its listener reads invalidations on *client*'s server."""
        listener = self.listener = _listener(client, self._session_prefix)
        self.near = NearCache(near_cache, near_max_age)
        listener.register(self._session_prefix, self.near, whole_keys=True)
        weakref.finalize(self, listener.stop_soon)  # not stop(): see stop_soon

    @property
    def near_hits(self) -> int:
        """Loads served from the near cache (the ``near_hits`` session counter)."""
        return self.counters.get("near_hits")

    def _near_copy(self, key: str, min_version: int) -> tuple[Mapping[str, bytes] | None, int]:
        """A load's near-cache step: the copy of *key* to serve (at least
        *min_version*, no invalidation pending), else ``None`` and the sequence number
        under which the load may keep what it reads (``-1``: keep nothing)."""
        near, listener = self.near, self.listener
        if near is None or listener is None:
            return None, -1
        listener.ensure_running()
        if not near.active:
            return None, -1
        hit = near.data.get(key)
        # looked up again after pending(): an invalidation the listener thread took
        # and applied between the first lookup and pending() is seen by neither
        if (hit is not None and hit[1] > time.monotonic() and not listener.pending()
                and near.data.get(key) is hit and (not min_version or _version(hit[0]) >= min_version)):
            self.counters.incr("near_hits")
            return hit[0], -1
        return None, near.seq

    def _near_keep(self, key: str, out: dict[str, bytes], seq: int, tracked: bool) -> None:
        """Keep what a load read (a live session, on a tracked connection)."""
        if self.near is not None and seq >= 0 and "m:c" in out and tracked:
            self.near.store(key, out, None, seq)

    def _near_base(self, key: str, create: bool) -> Mapping[str, bytes] | None:
        """The hash a write of *key* starts from, as far as this process knows, taken
        before :meth:`_changing` drops the copy: none for a create, else the near
        copy (``None``: no copy). See :meth:`_near_settle`."""
        if create:
            return {}
        hit = self.near.data.get(key) if self.near is not None else None
        return None if hit is None else hit[0]

    def _near_settle(self, key: str, result: Result, reply: Any, seq: int, tracked: bool,
                     base: Mapping[str, bytes] | None, sets: Mapping[str, bytes],
                     dels: Sequence[str]) -> None:
        """After a write under *seq*: keep the hash it left, or nothing. The script
        returns the hash unless the write took it from *base*'s version to the next
        (no other change between): the hash is then *base* with *sets* and *dels*
        applied, built here instead of sent back."""
        if seq >= 0 and self.near is not None:
            fresh: dict[str, bytes] | None = None
            if result.status is Status.DONE and tracked:
                if len(reply) > 2:
                    fresh = _fields(reply[2])
                elif base is not None:
                    fresh = {**base, **sets, "m:v": str(result.version).encode()}
                    for f in dels:
                        fresh.pop(f, None)
            self.near.settle(key, fresh, seq)

    def _barrier(self) -> None:
        """The sync engine's ``PING`` after a change (see :meth:`_changing`)."""
        raise NotImplementedError("_barrier")

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
        version token (see :mod:`statekit.sessions`). The async engine passes
        ``barrier=False`` and awaits its own ``PING`` after the block."""
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
            self._barrier()

    def key(self, handle: str) -> str:
        """The Redis key of session *handle*."""
        return self._session_prefix + handle

    def index_key(self, user: str) -> str:
        """The Redis key of *user*'s session index."""
        return f"{self.key_prefix}:session-user:{hashlib.sha256(user.encode()).hexdigest()[:32]}"

    def _index(self, op: IndexOp | None) -> tuple[list[str], list[bytes | str | int | float]]:
        """The keys and arguments a write or rotate script takes for *op*."""
        if op is None or self.cluster:
            return [], []
        keys = [self.index_key(u) for u in (op.add, op.remove) if u]
        return keys, [op.member, repr(op.score), repr(op.cutoff), op.ttl_ms, op.old_member or "",
                      "1" if op.add else "0", "1" if op.remove else "0"]

    def _write_call(self, key: str, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
                    ttl_ms: int, index: IndexOp | None, near: bool,
                    base: Mapping[str, bytes] | None = None) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the write script (*near*: keep the key tracked and
        reply with the hash unless the write went on from *base*, the caller's copy)."""
        held = ("-1" if base is None else _version(base)) if near else ""
        args: list[Any] = [sets["m:c"] if create else "0", ttl_ms, held, len(sets)]
        for f, v in sets.items():
            args += [f, v]
        args += [len(dels), *dels, "" if create else _loaded_user(index, "m:u" in sets or "m:u" in dels)]
        if index is None:  # (a session with no user, before and after: the usual save)
            return [key], args
        index_keys, index_args = self._index(index)
        return [key, *index_keys], args + index_args

    def _rotate_call(self, old: str, new: str, alias_ms: int,
                     index: IndexOp | None) -> tuple[list[str], list[Any]]:
        """The rotate script's keys and arguments (it checks the stored user: see
        :meth:`_index_again`)."""
        index_keys, index_args = self._index(index)
        keys = [self._session_prefix + old, self._session_prefix + new, *index_keys]
        return keys, [new, alias_ms, _loaded_user(index, False), *index_args]

    @staticmethod
    def _index_again(index: IndexOp | None, reply: Sequence[Any], tries: int,
                     changes_user: bool) -> IndexOp:
        """After a write or rotate script's refusal *reply* (``{3, user}``: its callers
        look at the reply's code first), the index operation to call it again with.
        The scripts refuse when the session's stored user is not the one the request
        loaded (another request changed it since): indexed for the loaded user, a
        rotated session escaped a ``revoke_user`` of the stored one, and a save put
        the session back in the index of a user it no longer belongs to (who then
        listed and revoked it).
        The new operation is :meth:`IndexOp.for_stored
        <statekit.sessions.protocol.IndexOp.for_stored>` of that user.

        :param changes_user: the write sets or deletes ``m:u`` (the user this request
            gives the session: the index it adds to stays).
        :raises SessionError: the user changed under every one of *tries* calls."""
        if tries <= 1 or index is None:
            raise SessionError("the session's user kept changing under this write; nothing was written")
        return index.for_stored(_text(reply[1]), changes_user)

    def _indexed_apart(self, op: IndexOp | None) -> bool:
        """Whether *op* is a second call after the session script (Redis Cluster)."""
        return op is not None and self.cluster and bool(op.add or op.remove)

    def _destroy_call(self, handle: str, user: str | None,
                      check_user: bool) -> tuple[list[str], list[str], str | None]:
        """The destroy script's keys and arguments (the owner it checks: ``u<id>``;
        ``n`` with no user, which no session matches; ``""`` for no check), and the
        index key a Cluster cleans up after it."""
        key = self._session_prefix + handle
        owner = ("n" if user is None else "u" + user) if check_user else ""
        index_key = self.index_key(user) if user else None
        if index_key and not self.cluster:
            return [key, index_key], [handle, owner], None
        return [key], [handle, owner], index_key

    def _queue_index(self, pipe: Any, op: IndexOp) -> None:
        """Redis Cluster: *op* queued on *pipe* (the index lives in another slot)."""
        if op.add:
            add = self.index_key(op.add)
            pipe.zadd(add, {op.member: op.score})
            pipe.zremrangebyscore(add, "-inf", op.cutoff)
            pipe.pexpire(add, op.ttl_ms)
        if op.remove and op.old_member:
            pipe.zrem(self.index_key(op.remove), op.old_member)

    def _queue_revoke(self, pipe: Any, index_key: str, members: Sequence[Any], keep: str) -> int:
        """Redis Cluster: one revoke batch of *members* queued on *pipe*; how many."""
        doomed = [m for m in map(_text, members) if m != keep][:REVOKE_BATCH]
        for m in doomed:
            pipe.delete(self._session_prefix + m)
        if doomed:
            pipe.zrem(index_key, *doomed)
        return len(doomed)

    def _queue_list(self, pipe: Any, members: Sequence[str]) -> None:
        for m in members:
            pipe.hmget(self._session_prefix + m, *_META)


def _incr_result(reply: Sequence[Any]) -> Result:
    if reply[0] != 1:
        return _result(reply)
    return Result(Status.DONE, value=int(reply[1]), version=int(reply[2]))


def _listing(members: Sequence[str], rows: Sequence[Any]) -> list[tuple[str, Mapping[str, bytes]]]:
    return [(m, {f: v for f, v in zip(_META, row, strict=True) if v is not None})
            for m, row in zip(members, rows, strict=True) if row[0] is not None]


async def _finish(step: Coroutine[Any, Any, None]) -> None:
    """Run *step* to its end even if the caller is cancelled meanwhile (its client
    went away; :func:`statekit._settle.settle`), then raise the first cancellation:
    *step* completes a change Redis has made already (Redis Cluster's index update
    after the session script), and left half-done the session would escape
    ``revoke_user``."""
    (await settle(asyncio.ensure_future(step))).result()


def _incr_refused(field: str, error: Exception) -> SessionError:
    return SessionError(f"cannot increment session key {field[2:]!r}: {error}")


class RedisEngine(_Layout):
    """The :class:`~statekit.sessions.protocol.SessionEngine` on a redis-py client
    (any kind: standalone, Sentinel, Cluster, or ``memory://``'s fakeredis).

    :param client: the redis-py client.
    :param key_prefix: first part of every key.
    :param near_cache: keep up to this many sessions in this process (0: off);
        standalone or Sentinel only (not Cluster, not ``memory://``).
    :param near_max_age: a near copy is used at most this many seconds.
    :param counters: the store's counters (``near_hits`` is counted there).
    """

    def __init__(self, client: RedisClient, key_prefix: str = "statekit", *, near_cache: int = 0,
                 near_max_age: float = 60.0, counters: Counters | None = None) -> None:
        self.client = client
        self._names(key_prefix, counters)
        if near_cache:
            self._near_setup(client, near_cache, near_max_age)
        #: loads, saves and every script: one round trip on this thread's connection
        #: (tracked by the listener with the near cache on); pipelines go through *client*
        self.transport = Transport(client, what="session", tracking=self.listener)
        self.cluster = self.transport.cluster

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str, counters: Counters | None = None,
                 near_cache: int = 0, near_max_age: float = 60.0) -> RedisEngine:
        """The engine for a Redis URL, or ``memory://name`` (an in-process fakeredis
        server per name; no near cache there: the data is in this process already)."""
        parsed = parse_url(url, kinds=("redis", "memory"))
        if parsed.kind == "memory":
            return cls(memory_client(parsed.name or "default"), key_prefix, counters=counters)
        return cls(get_client(url), key_prefix, near_cache=near_cache, near_max_age=near_max_age,
                   counters=counters)

    def _index_after(self, op: IndexOp | None, what: str) -> None:
        """Redis Cluster: *op* as a second call (the index lives in another slot)."""
        if op is None or not self._indexed_apart(op):
            return
        with translate_errors(what):
            pipe = self.client.pipeline(transaction=False)
            self._queue_index(pipe, op)
            pipe.execute()

    def _script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.transport.script(script, keys, args)

    def _tracked(self, key: str) -> bool:
        return self.transport.tracked(key)

    def _barrier(self) -> None:
        self.transport.command(b"PING")

    # -- the contract -----------------------------------------------------------------

    def load(self, handle: str, min_version: int = 0) -> Mapping[str, bytes]:
        """The session hash (``{}`` if none): from the near cache when it holds a copy
        of at least *min_version* that no invalidation has reached, else one
        ``HGETALL``. The returned dict is shared with the near cache: do not change it."""
        key = self._session_prefix + handle
        hit, seq = self._near_copy(key, min_version)
        if hit is not None:
            return hit
        out = _fields(self.transport.command(b"HGETALL", key))
        if seq >= 0:
            self._near_keep(key, out, seq, self._tracked(key))
        return out

    def write(self, handle: str, *, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
              ttl_ms: int, index: IndexOp | None) -> Result:
        key = self._session_prefix + handle
        if self.near is None:  # the usual path: nothing to keep coherent
            return self._write(key, create, sets, dels, ttl_ms, index, -1, None)
        base = self._near_base(key, create)
        with self._changing(key, stores=True, barrier=False) as seq:
            return self._write(key, create, sets, dels, ttl_ms, index, seq, base)

    def _as_stored(self, script: Script, call: Callable[[IndexOp | None], tuple[list[str], list[Any]]],
                   index: IndexOp | None, changes_user: bool) -> tuple[Any, IndexOp | None]:
        """Run the write or rotate *script* with the arguments ``call(index)`` until it
        is not refused for the stored user (:meth:`_index_again`): its reply and the
        index operation it applied."""
        for tries in range(_INDEX_TRIES, 0, -1):
            try:
                reply = self._script(script, *call(index))
            except BackendUnavailable as e:
                if outcome_unknown(e):  # the rule's mark of a command sent without a reply
                    raise
                raise NotSent(str(e)) from e
            if reply[0] != 3:
                return reply, index
            index = self._index_again(index, reply, tries, changes_user)
        raise AssertionError("unreachable: _index_again raises on the last try")

    def _write(self, key: str, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
               ttl_ms: int, index: IndexOp | None, seq: int, base: Mapping[str, bytes] | None) -> Result:
        reply, index = self._as_stored(
            _WRITE, lambda op: self._write_call(key, create, sets, dels, ttl_ms, op, seq >= 0, base),
            index, "m:u" in sets or "m:u" in dels)
        result = _result(reply)
        if self.cluster and result.status is Status.DONE:
            self._index_after(index, "session save")
        if seq >= 0:
            self._near_settle(key, result, reply, seq, self._tracked(key), base, sets, dels)
        return result

    def rotate(self, old: str, new: str, alias_ms: int, index: IndexOp | None) -> Result:
        with self._changing(self._session_prefix + old):
            reply, index = self._as_stored(_ROTATE, lambda op: self._rotate_call(old, new, alias_ms, op),
                                           index, False)
        result = _result(reply)
        if result.status is Status.DONE:
            self._index_after(index, "session rotate")
        return result

    def incr(self, handle: str, field: str, amount: int, codec: str) -> Result:
        key = self._session_prefix + handle
        try:
            with self._changing(key, barrier=False):
                reply = self._script(_INCR, [key], [field, amount, codec])
        except RedisReplyError as e:
            raise _incr_refused(field, e) from e
        return _incr_result(reply)

    def destroy(self, handle: str, user: str | None, check_user: bool = False) -> Result:
        keys, args, index_key = self._destroy_call(handle, user, check_user)
        with self._changing(keys[0]):
            result = _result(self._script(_DESTROY, keys, args))
            if result.status is not Status.ROTATED and index_key:
                with translate_errors("session destroy"):
                    self.client.zrem(index_key, handle)
        return result

    def revoke_user(self, user: str, keep: str) -> int:
        """Delete *user*'s sessions but *keep*, :data:`REVOKE_BATCH` at a time, until a
        batch finds no other session left in the index. Each batch is one script
        (standalone, Sentinel) that deletes its sessions and their index entries
        together, so no session is forgotten between batches; a session created (or
        rotated) while the batches run is in the index by then (the write adds it in
        the same script) and a later batch deletes it. It ends when a batch leaves
        the index holding nothing but *keep*: every session indexed before that
        instant is deleted. Each batch keeps the handles *keep*'s aliases lead to
        then (rotated by a login on the kept device meanwhile); on Redis Cluster
        only *keep* itself (a rotation of it while this runs logs that device out)."""
        index_key = self.index_key(user)
        total = 0
        with self._changing():  # other processes' copies: Redis invalidates them
            while True:
                deleted, left = self._revoke_batch(index_key, keep)
                total += deleted
                if left <= 0:
                    return total

    def _revoke_batch(self, index_key: str, keep: str) -> tuple[int, int]:
        """One batch: (sessions deleted, other members left in the index)."""
        with translate_errors("session revoke"):
            if not self.cluster:
                deleted, left = self._script(_REVOKE, [index_key], [self._session_prefix, keep, REVOKE_BATCH])
                return int(deleted), int(left)
            pipe = self.client.pipeline(transaction=False)
            if not self._queue_revoke(pipe, index_key, self.client.zrange(index_key, 0, REVOKE_BATCH), keep):
                return 0, 0
            results = pipe.execute()
            return int(sum(results[:-1])), 1  # once more: sessions indexed meanwhile

    def list_user(self, user: str, since: float) -> list[tuple[str, Mapping[str, bytes]]]:
        with translate_errors("session list"):
            members = [_text(m) for m in self.client.zrangebyscore(self.index_key(user), since, "+inf")]
            if not members:
                return []
            pipe = self.client.pipeline(transaction=False)
            self._queue_list(pipe, members)
            rows = pipe.execute()
        return _listing(members, rows)

    def claim(self, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        return _bytes(self._script(_CLAIM, [name], [value, ttl_ms]))

    def peek(self, name: str) -> bytes | None:
        return _bytes(self.transport.command(b"GET", name))

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self.transport.close()


class AsyncRedisEngine(_Layout):
    """The :class:`~statekit.sessions.protocol.AsyncSessionEngine` on redis-py's
    asyncio client: the keys, Lua scripts and replies of :class:`RedisEngine`, so a
    session written by either engine is read and written by the other; commands go
    through :class:`~statekit.redis.aio.AsyncTransport` (the same retry rule and
    error map).

    **Near cache** (``near_cache=N``, a URL of a standalone or Sentinel Redis): the
    sync engine's, shared: the same copies, checks and invalidation listener thread
    (:meth:`_Layout._near_copy`, :meth:`_Layout._changing`); the loop's connections
    run ``CLIENT TRACKING`` to that listener. A hit costs no await at all.

    **Event loops.** redis-py's asyncio connections belong to one loop, so the engine
    keeps one transport per running loop (made on first use there), on *url*'s shared
    client of that loop (:func:`~statekit.redis.aio.get_async_client`: one pool for
    the process's caches, session stores and broadcasters of the URL, whose
    ``max_connections`` bounds them together, as the sync engine's
    :func:`~statekit.redis.get_client`); :meth:`aclose` gives the current loop's
    connections back, the shared client staying open for the others (closed with its
    loop). A ready *client* is used as it is, on its own loop.

    :param client: a ``redis.asyncio`` client (or ``fakeredis.FakeAsyncRedis``), or
    :param url: a Redis URL (or ``memory://name``: the sync engine's server of that name).
    :param key_prefix: first part of every key.
    """

    def __init__(self, client: Any = None, key_prefix: str = "statekit", *, url: str | None = None,
                 counters: Counters | None = None, near_cache: int = 0, near_max_age: float = 60.0) -> None:
        if (client is None) == (url is None):
            raise ConfigError("AsyncRedisEngine takes a client or a url")
        self._names(key_prefix, counters)
        if near_cache:
            if url is None or parse_url(url, kinds=("redis", "memory")).kind != "redis":
                raise ConfigError("the async session near cache needs a Redis URL (not memory:// or client=)")
            # the listener thread reads invalidations with a sync client of the same server
            self._near_setup(get_client(url), near_cache, near_max_age)
        self._client = client
        self._url = url
        if client is not None:
            from redis.asyncio.cluster import RedisCluster

            self.cluster = isinstance(client, RedisCluster)
        else:
            self.cluster = parse_url(url or "", kinds=("redis", "memory")).scheme == "redis+cluster"
        from ..redis.aio import get_async_client, transports_per_loop

        # one transport per running loop, given back with the loop, on the URL's shared
        # client of that loop (one pool for the process's stores of the URL, as the sync
        # engine's get_client) or on the ready one; neither is closed by the engine
        self._lanes = transports_per_loop(
            lambda: client if client is not None else get_async_client(url or ""),
            owned=False, what="session", tracking=self.listener)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str, counters: Counters | None = None,
                 near_cache: int = 0, near_max_age: float = 60.0) -> AsyncRedisEngine:
        """The engine for a Redis URL or ``memory://name`` (no near cache there)."""
        return cls(key_prefix=key_prefix, url=url, counters=counters, near_cache=near_cache,
                   near_max_age=near_max_age)

    async def _transport(self) -> AsyncTransport:
        """This loop's transport (and client), made on first use."""
        return self._lanes.current()

    async def _index_after(self, transport: AsyncTransport, op: IndexOp | None, what: str) -> None:
        if op is None or not self._indexed_apart(op):
            return
        with translate_errors(what):
            pipe = transport.client.pipeline(transaction=False)
            self._queue_index(pipe, op)
            await pipe.execute()

    @staticmethod
    async def _unindex(transport: AsyncTransport, index_key: str, handle: str) -> None:
        """Redis Cluster: a destroyed session's index entry, removed after its script."""
        with translate_errors("session destroy"):
            await transport.client.zrem(index_key, handle)

    async def _ping(self, transport: AsyncTransport) -> None:
        """The barrier of :meth:`_Layout._changing`, awaited (with the near cache on)."""
        if self.near is not None:
            await transport.command(b"PING")

    async def load(self, handle: str, min_version: int = 0) -> Mapping[str, bytes]:
        key = self._session_prefix + handle
        hit, seq = self._near_copy(key, min_version)
        if hit is not None:
            return hit
        transport = await self._transport()
        out = _fields(await transport.command(b"HGETALL", key))
        if seq >= 0:
            self._near_keep(key, out, seq, transport.tracked(key))
        return out

    async def _as_stored(self, transport: AsyncTransport, script: Script,
                         call: Callable[[IndexOp | None], tuple[list[str], list[Any]]],
                         index: IndexOp | None, changes_user: bool, what: str) -> tuple[Any, Result]:
        """:meth:`RedisEngine._as_stored`, awaited, then the index update a Redis
        Cluster makes after the script: run to its end even if this request is
        cancelled meanwhile (:func:`_finish`). The script's reply and its result."""
        for tries in range(_INDEX_TRIES, 0, -1):
            try:
                reply = await transport.script(script, *call(index))
            except BackendUnavailable as e:
                from ..redis.aio import never_sent

                if not never_sent(e):
                    raise
                raise NotSent(str(e)) from e
            if reply[0] != 3:
                break
            index = self._index_again(index, reply, tries, changes_user)
        result = _result(reply)
        if result.status is Status.DONE and self._indexed_apart(index):
            await _finish(self._index_after(transport, index, what))
        return reply, result

    async def write(self, handle: str, *, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
                    ttl_ms: int, index: IndexOp | None) -> Result:
        transport = await self._transport()
        key = self._session_prefix + handle
        if self.near is None:  # the usual path: nothing to keep coherent (no _changing block)
            return await self._write(transport, key, create, sets, dels, ttl_ms, index, -1, None)
        base = self._near_base(key, create)
        with self._changing(key, stores=True, barrier=False) as seq:
            return await self._write(transport, key, create, sets, dels, ttl_ms, index, seq, base)

    async def _write(self, transport: AsyncTransport, key: str, create: bool, sets: Mapping[str, bytes],
                     dels: Sequence[str], ttl_ms: int, index: IndexOp | None, seq: int,
                     base: Mapping[str, bytes] | None) -> Result:
        reply, result = await self._as_stored(
            transport, _WRITE,
            lambda op: self._write_call(key, create, sets, dels, ttl_ms, op, seq >= 0, base),
            index, "m:u" in sets or "m:u" in dels, "session save")
        if seq >= 0:
            self._near_settle(key, result, reply, seq, transport.tracked(key), base, sets, dels)
        return result

    async def rotate(self, old: str, new: str, alias_ms: int, index: IndexOp | None) -> Result:
        transport = await self._transport()
        with self._changing(self._session_prefix + old, barrier=False):
            _, result = await self._as_stored(transport, _ROTATE,
                                              lambda op: self._rotate_call(old, new, alias_ms, op),
                                              index, False, "session rotate")
        await self._ping(transport)
        return result

    async def incr(self, handle: str, field: str, amount: int, codec: str) -> Result:
        transport = await self._transport()
        try:
            with self._changing(self.key(handle), barrier=False):
                reply = await transport.script(_INCR, [self.key(handle)], [field, amount, codec])
        except RedisReplyError as e:
            raise _incr_refused(field, e) from e
        return _incr_result(reply)

    async def destroy(self, handle: str, user: str | None, check_user: bool = False) -> Result:
        transport = await self._transport()
        keys, args, index_key = self._destroy_call(handle, user, check_user)
        with self._changing(keys[0], barrier=False):
            result = _result(await transport.script(_DESTROY, keys, args))
            if result.status is not Status.ROTATED and index_key:
                await _finish(self._unindex(transport, index_key, handle))
        await self._ping(transport)
        return result

    async def revoke_user(self, user: str, keep: str) -> int:
        """As :meth:`RedisEngine.revoke_user`: :data:`REVOKE_BATCH` at a time until a
        batch leaves nothing but *keep* in the index."""
        index_key = self.index_key(user)
        total = 0
        with self._changing(barrier=False):  # other processes' copies: Redis invalidates them
            while True:
                deleted, left = await self._revoke_batch(index_key, keep)
                total += deleted
                if left <= 0:
                    break
        await self._ping(await self._transport())
        return total

    async def _revoke_batch(self, index_key: str, keep: str) -> tuple[int, int]:
        transport = await self._transport()
        with translate_errors("session revoke"):
            if not self.cluster:
                deleted, left = await transport.script(_REVOKE, [index_key],
                                                       [self._session_prefix, keep, REVOKE_BATCH])
                return int(deleted), int(left)
            client = transport.client
            pipe = client.pipeline(transaction=False)
            if not self._queue_revoke(pipe, index_key, await client.zrange(index_key, 0, REVOKE_BATCH), keep):
                return 0, 0
            results = await pipe.execute()
            return int(sum(results[:-1])), 1  # once more: sessions indexed meanwhile

    async def list_user(self, user: str, since: float) -> list[tuple[str, Mapping[str, bytes]]]:
        transport = await self._transport()
        if transport.direct:
            # standalone, Sentinel: on the transport's connections, which may be every
            # connection of the client's pool (a pipeline on that pool then failed with
            # "Too many connections"); the hashes read at once under its bound
            found = await transport.command(b"ZRANGEBYSCORE", self.index_key(user), since, b"+inf")
            members = [_text(m) for m in found]
            rows = await asyncio.gather(*(transport.command(b"HMGET", self._session_prefix + m, *_META)
                                          for m in members))
            return _listing(members, rows)
        client = transport.client
        with translate_errors("session list"):
            members = [_text(m) for m in await client.zrangebyscore(self.index_key(user), since, "+inf")]
            if not members:
                return []
            pipe = client.pipeline(transaction=False)
            self._queue_list(pipe, members)
            rows = await pipe.execute()
        return _listing(members, rows)

    async def claim(self, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        transport = await self._transport()
        return _bytes(await transport.script(_CLAIM, [name], [value, ttl_ms]))

    async def peek(self, name: str) -> bytes | None:
        transport = await self._transport()
        return _bytes(await transport.command(b"GET", name))

    async def aclose(self) -> None:
        """Release this loop's connections (the client stays open: the URL's is
        shared, a given one the caller's); stop the near cache's listener (later loads
        ask Redis)."""
        if self.listener is not None:
            self.listener.stop()
        await self._lanes.aclose()
