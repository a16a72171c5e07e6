"""Redis cache backend: standalone, TLS, unix socket, Sentinel, Cluster, and
``memory://`` (the same code over fakeredis with Lua, see :mod:`.memory`).

**Generations.** :meth:`~RedisCacheBackend.clear` is one ``INCR`` of the namespace's
generation counter ``<prefix>:{<namespace>}:gen``; every value name carries the
generation it was written in (``<head><gen>:<key>``), so a clear makes the old
values unreachable at once, whatever their number, and a background thread
(:data:`sweeper`) removes them afterwards (``SCAN`` on every primary, ``UNLINK`` in
chunks of :data:`CHUNK`), also the ones stored with no TTL. A sweep cut short (the
process exited, Redis failed) is finished by the next clear of that namespace, in
any process.

**Standalone, Sentinel, memory://: exact.** The value names keep the namespace's
hash tag (head ``<prefix>:{<namespace>}:``, the layout statekit always used), and
the generation is checked in the same atomic step as the operation: reads are one
``MGET`` of the counter and the values (a mismatch is noticed and the read
repeated with the new generation), writes and compound operations run the cache
script (``statekit/redis/scripts/cache.lua``, by SHA) with the generation the names
carry and the counter as ``KEYS[1]``; the script refuses a stale generation
unapplied (``STALEGEN <current>``) and the call is repeated. No value of a cleared
generation is ever read after the ``INCR`` returned.

**Cluster: keys spread, generation kept current by invalidations.** On Redis
Cluster the value names hash on the whole name: head ``<prefix>:{}{<namespace>}:``
(an empty ``{}`` first: the Cluster spec then hashes the whole key, and the
namespace still ends at its ``}:``, so names of different namespaces never collide),
so a namespace's keys spread over every slot and every shard. A script may then only
touch keys of one slot, and the counter lives in another: the generation is passed
to the script as an argument **without** a check (a per-key check would need the
counter in every slot, and a clear would no longer be one command). Instead each
:class:`~statekit.cache.Cache` family keeps one invalidation listener
(:class:`statekit.redis.tracking.InvalidationListener`, on every node): without a
near cache it tracks only the generation counters (``CLIENT TRACKING ... BCAST
PREFIX <prefix>:{<namespace>}:gen`` per namespace, no value key, so it costs
nothing per write); with one it is the near cache's listener. The process trusts
the generation it read last only while that listener has stayed connected,
tracks the counter, has applied no counter invalidation since the read and has
none waiting (:meth:`~statekit.redis.tracking.InvalidationListener.pending`, one
zero-timeout ``poll``); otherwise it reads the counter again (one ``GET`` more).
Redis queues the invalidation to every listener while it executes the clearing
``INCR`` and writes it out in the same event-loop pass as the ``INCR``'s reply, but
not always before it; so :meth:`~RedisCacheBackend.clear` then reads the counter once
(a ``GET`` to the same node: the barrier), which Redis runs in a later pass, after
every listener's connection was written. When ``clear()`` returns, the invalidation
is therefore on its way to every listener ahead of anything the clearing process does
next: on one host (loopback) it is already in each listener's receive buffer, where
the reader's ``pending()`` sees it, so **a read that starts after ``clear()`` returned,
in any process, never serves the cleared generation**; across hosts the remaining
window is the difference between two network paths (the listener's, and the clearing
process's reply plus whatever message it sends next). Measured in
``tests/test_cache_cluster.py``: 0 old values after 200 clears, each followed at once
by a signal to another process that reads straight away, with and without a near
cache; a clear made by a plain ``INCR`` from another client (no barrier) can lose that
race, and was seen to. Standalone and Sentinel are exact (the script checks the counter).
A read already under way when the clear ran may still return old values, as
anywhere. While the listener is down (start-up, a reconnect, a failover; a
namespace the family opened later until the listener has reconnected to track its
counter, within half a second) every call reads the counter first. Only a backend used
without a :class:`~statekit.cache.Cache` (no listener) falls back to trusting the
counter for :data:`GENERATION_TTL` seconds (stale for at most that plus one round
trip after a clear elsewhere). A write made with a
stale generation lands in the old generation: unreachable, as if made just before
the clear; the sweep starts :data:`GENERATION_TTL` seconds after the clear so it
finds those too. Single-key operations (get, set, add, incr, touch, single-flight
locks) go to the key's own node; bulk calls group their keys by slot and send
each node its commands in one pipeline, all nodes at once (one round trip per
node, not per key; :func:`cluster_batch`). Named locks (:meth:`Cache.lock
<statekit.cache.Cache.lock>`) keep the namespace's hash tag: their names did not
change, so mutual exclusion holds while old and new versions run side by side.

**Migration from the single-slot Cluster layout** (``<prefix>:{<namespace>}:<gen>:<key>``,
statekit before issue 19): the new names are never read by the old code nor the
old names by the new, so no stale value can be served; the generation counter is
the same key, so a clear by either version empties both views. The old layout's
values expire with their TTL, and the sweep after the first clear removes the rest
(it matches both layouts).

**Bounded work.** A bulk call of more than :data:`CHUNK` keys is sent as several
calls of at most :data:`CHUNK` keys each (on Cluster, per slot), so no single
script or ``MGET`` blocks Redis for long; each is atomic, the whole call is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from binascii import crc_hqx as _crc16
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._fork import reset_in_child
from ..backends import require
from ..errors import BackendUnavailable, ConfigError, StatekitError
from ..redis import RedisClient, cluster_unapplied, key_slot, outcome_unknown, translate_errors
from ..redis.scripts import load
from ..redis.transport import Transport
from .plan import BATCH, CMD, RUN, SCAN, Plan, drive
from .protocol import CacheBackend, Stored, deadline

if TYPE_CHECKING:
    from ..redis.tracking import InvalidationListener
    from ..redis.transport import _Lane

__all__ = ["CHUNK", "GENERATION_TTL", "RedisCacheBackend", "RedisTransport", "cluster_batch", "sweep",
           "sweeper"]

#: the most keys one Redis call of a bulk operation or of a sweep carries
CHUNK = 500
#: seconds a backend on Redis Cluster with no invalidation listener trusts the namespace
#: generation it read last (how long after a clear elsewhere it may still read the old
#: generation; with a listener, the default, it reads the new one at once); the sweep
#: after a clear waits this long too
GENERATION_TTL = 0.5
SCRIPT = load("cache")
_log = logging.getLogger("statekit.cache")
_MISSING = Stored(None, None)
_TRIES = 5
_monotonic = time.monotonic
#: generation key -> clears made by this process (other backends of the same
#: namespace in this process read the counter again when it moved)
_epochs: dict[str, int] = {}


class StaleGeneration(StatekitError):
    """The cache script refused names of an older generation (nothing applied; the
    cache reads the new generation and repeats the call: callers never see it)."""

    def __init__(self, gen: bytes) -> None:
        super().__init__(f"the namespace is at generation {gen!r}")
        self.gen = gen


def _value_error(message: str) -> Exception:
    low = message.lower()
    if message.startswith("STALEGEN ") or ": STALEGEN " in message or "-STALEGEN " in message:
        return StaleGeneration(message.rpartition("STALEGEN ")[2].split()[0].encode())
    if "not an integer" in low or "overflow" in low:
        return ValueError(f"cache value is not an integer or would overflow: {message}")
    if "wrongtype" in low:
        return ValueError(f"cache key holds a value of another Redis type: {message}")
    return BackendUnavailable(f"Redis refused a cache command: {message}")


def _chunks(seq: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), CHUNK):
        yield seq[i:i + CHUNK]


def _on_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _ttl_arg(ttl_ms: int | None) -> bytes:
    return b"" if ttl_ms is None else str(ttl_ms).encode()


def _step(transport: RedisTransport, effect: tuple[Any, ...]) -> Any:
    """One effect of a backend plan on the sync transport."""
    kind = effect[0]
    if kind == CMD:
        return transport.command(*effect[1])
    if kind == RUN:
        return transport.run(effect[1], effect[2])
    if kind == SCAN:
        return scan_page(transport, *effect[1:])
    return cluster_batch(transport, effect[1], effect[2], read=effect[3])


def scan_targets(client: Any, cursors: Mapping[str, int] | None) -> list[tuple[str, Any, int]]:
    """Cluster: the (node name, node, cursor) of each primary a ``SCAN`` page still
    walks: every primary to begin (*cursors* ``None``), else the nodes of *cursors*.

    :raises BackendUnavailable: a node being walked left the cluster (its cursor
        means nothing elsewhere; the walk starts again)."""
    if cursors is None:
        return [(node.name, node, 0) for node in client.get_primaries()]
    targets = []
    for name, cursor in cursors.items():
        node = client.get_node(node_name=name)
        if node is None:
            raise BackendUnavailable(f"Redis Cluster node {name} left while its keys were scanned")
        targets.append((name, node, cursor))
    return targets


def scan_reply(out: dict[str, int], names: list[bytes], name: str, reply: Any) -> None:
    """Add one node's ``SCAN`` reply (cursor, names; or redis-py cluster's
    ``({node: cursor}, names)``) to *out* (the cursors still open) and *names*."""
    cursor, found = reply
    if isinstance(cursor, dict):
        (cursor,) = cursor.values()
    if int(cursor):
        out[name] = int(cursor)
    names.extend(found)


def scan_page(transport: RedisTransport, match: bytes, count: int,
              cursors: Mapping[str, int] | None) -> tuple[dict[str, int], list[bytes]]:
    """One ``SCAN MATCH match COUNT count`` page on every primary still walked (see the
    ``SCAN`` effect in :mod:`statekit.cache.plan`): standalone, one command through the
    transport; Cluster, one per primary (a read: nothing is written)."""
    out: dict[str, int] = {}
    names: list[bytes] = []
    if not transport.cluster:
        start = 0 if cursors is None else cursors[""]
        scan_reply(out, names, "", transport.command(b"SCAN", start, b"MATCH", match, b"COUNT", count))
        return out, names
    client: Any = transport.client
    with translate_errors("a cache scan"):
        for name, node, cursor in scan_targets(client, cursors):
            reply = client.scan(cursor=cursor, match=match, count=count, target_nodes=node)
            scan_reply(out, names, name, reply)
    return out, names


def _stored(flat: Sequence[Any]) -> Iterator[Stored]:
    """Parse the cache script's ``gett`` reply: (value, ttl ms) pairs."""
    for i in range(0, len(flat), 2):
        value, ttl = flat[i], flat[i + 1]
        yield _MISSING if value is None else Stored(value, None if ttl < 0 else int(ttl))


def _aged(rows: list[Stored], sent: float) -> list[Stored]:
    """*rows* with each TTL less the milliseconds since *sent* (rounded up, never
    below 0: a key that expired on the way has 0 left)."""
    spent = math.ceil((_monotonic() - sent) * 1000)
    return [row if row.ttl_ms is None else Stored(row.value, max(0, row.ttl_ms - spent)) for row in rows]


class RedisTransport(Transport):
    """The connections one :class:`~statekit.cache.Cache` family shares: the one
    Redis transport (:class:`statekit.redis.transport.Transport`, for concurrency and
    failure behaviour) with the cache's script and error mapping: an error reply of
    ``INCRBY`` on a non-integer or overflowing value is a ``ValueError``.

    :raises ConfigError: the client decodes responses (the cache stores bytes).
    """

    def __init__(self, client: RedisClient) -> None:
        # statekit's lazy Cluster client answers from its settings: asking its encoder
        # would connect it now (on an event loop's thread for an AsyncCache)
        settings = getattr(client, "__dict__", {}).get("_statekit_kwargs")
        if settings is not None:
            decodes = bool(settings.get("decode_responses"))
        else:
            get_encoder = getattr(client, "get_encoder", None)
            decodes = get_encoder is not None and get_encoder().decode_responses
        if decodes:
            raise ConfigError("the cache needs a Redis client with decode_responses=False")
        super().__init__(client, what="cache", reply_error=_value_error)

    def run(self, keys: Sequence[str | bytes], args: Sequence[bytes | str | int]) -> Any:
        """Run the cache script: one round trip (two more after a ``SCRIPT FLUSH``)."""
        return self.script(SCRIPT, keys, args)


# -- Cluster: one pipeline per node, all nodes at once ---------------------------------


def cluster_batch(transport: RedisTransport, commands: Sequence[Sequence[Any]], slots: Sequence[int], *,
                  read: bool) -> list[Any]:
    """Run single-slot commands on a Redis Cluster: each node gets its commands in
    one pipeline, every node's pipeline is written before any reply is read (one
    round trip per node, the nodes working at once). Returns the replies in order.

    *commands* are argument tuples (``("MGET", k1, k2)``, ``("EVALSHA", <the cache
    script>, ...)``, ``("UNLINK", ...)``); *slots* gives each command's slot. A command
    a node refused unapplied (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``,
    ``NOSCRIPT``), or whose node could not be reached before anything was sent (a
    failover), is sent again alone through the transport (``RedisCluster`` follows
    ``MOVED``/``ASK`` and the script is loaded on ``NOSCRIPT``). A command
    whose outcome is unknown (sent, no reply) is sent again only when *read*, and
    never after a timeout.

    :raises BackendUnavailable: a node failed (after every node's replies were
        read: what was applied stays applied, and no write is sent twice).
    """
    import redis

    client: Any = transport.client
    error_cls = redis.ResponseError
    conn_errors = (redis.ConnectionError, redis.TimeoutError)
    results: list[Any] = [None] * len(commands)
    alone: list[int] = []
    unknown: list[tuple[int, Exception]] = []
    by_node: dict[str, tuple[Any, list[int]]] = {}
    with translate_errors("a cache call"):
        owners = client.nodes_manager.slots_cache  # replaced whole when redis-py refreshes it
        for i, slot in enumerate(slots):
            owner = owners.get(slot)
            if not owner:  # an uncovered slot: the lone path says why
                alone.append(i)
                continue
            node = owner[0]  # the primary
            by_node.setdefault(node.name, (node, []))[1].append(i)
    lanes: list[tuple[_Lane, list[int]]] = []
    for node, idx in by_node.values():
        try:
            client.get_redis_connection(node)  # made if redis-py has not yet
            lane = transport.node_lane(node)  # this thread's connection to the node
        except conn_errors:
            lane = None
        if lane is None:  # nothing sent: the cluster client finds the new node
            alone.extend(idx)
            continue
        lane.freshen()  # an earlier call cut between send and reply, closed while idle
        lanes.append((lane, idx))
    sent: list[tuple[_Lane, list[int]]] = []
    for lane, idx in lanes:
        conn, pack = lane.conn, lane.pack
        try:
            if pack is not None:  # hiredis: one C call per command, no encoder per argument
                packed = b"".join([pack(commands[i]) for i in idx])
                conn._statekit_batch = len(idx)  # what pack_commands() tells the rule
                conn.send_packed_command([packed])
            else:
                conn.send_packed_command(conn.pack_commands([commands[i] for i in idx]))
        except conn_errors as e:
            conn.disconnect()
            (unknown.extend((i, e) for i in idx) if outcome_unknown(e) else alone.extend(idx))
            continue
        sent.append((lane, idx))
    for lane, idx in sent:
        replies, failed = lane.conn.read_replies(len(idx))  # error replies as values
        lane.last = _monotonic()
        for i, reply in zip(idx, replies, strict=False):
            results[i] = reply
        if failed is not None:  # this one refused unapplied, or its outcome unknown; the
            n = len(replies)  # ones after it were sent: theirs is unknown
            (unknown.append((idx[n], failed)) if outcome_unknown(failed) else alone.append(idx[n]))
            unknown.extend((j, failed) for j in idx[n + 1:])
    for i, value in enumerate(results):
        if isinstance(value, error_cls):
            if cluster_unapplied(value):
                alone.append(i)
            else:
                raise transport._refused(value) from value
    for i, error in unknown:
        if not read or _timed_out(error):
            raise BackendUnavailable(f"a Redis Cluster node failed during a cache call; the outcome of "
                                     f"{len(unknown)} command(s) is unknown and they were not sent again: "
                                     f"{error}") from error
        alone.append(i)
    for i in sorted(alone):
        cmd = commands[i]
        if cmd[0] == b"EVALSHA":
            n = int(cmd[2])
            results[i] = transport.run(cmd[3:3 + n], cmd[3 + n:])
        else:
            results[i] = transport.command(*cmd)
    return results


# -- the sweep -------------------------------------------------------------------------


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def sweep(backend: RedisCacheBackend, below: int) -> int:
    """Remove the keys of *backend*'s namespace whose generation is below *below*
    (unreachable since a clear), in both layouts (see the module docstring): ``SCAN
    MATCH`` (on every primary of a cluster), then ``UNLINK`` per :data:`CHUNK` keys
    (on Cluster per slot, one pipeline per node). Each chunk is removed only while
    the generation counter is at least *below*: a counter that was lost
    (``FLUSHALL``, eviction) restarted below it, and those names may be live again.
    On standalone, Sentinel and ``memory://`` the check and the ``UNLINK`` are one
    step (the cache script's ``sweep``), so a counter lost and values written again
    between them cannot happen. On Cluster the counter lives in another slot than
    the names, so each chunk's check is a ``GET`` of the counter just before its
    ``UNLINK``s: a counter lost in between (a ``FLUSHALL`` during the sweep) can
    still cost the values written under the old names in that round trip. Returns
    how many keys were removed.

    :raises BackendUnavailable: Redis failed (what was removed stays removed).
    """
    transport = backend.transport
    removed = 0
    batch: list[str] = []

    def unlink() -> bool:
        nonlocal removed
        if transport.cluster:
            if int(transport.command(b"GET", backend._gen_key) or 0) < below:
                return False
            groups: dict[int, list[str]] = {}
            for key in batch:
                groups.setdefault(key_slot(key), []).append(key)
            slots = list(groups)
            unlinks = [(b"UNLINK", *groups[s]) for s in slots]
            gone = sum(int(n) for n in cluster_batch(transport, unlinks, slots, read=False))
        else:  # the check and the removal in one step: -1 when the counter is below
            gone = int(transport.run([backend._gen_key, *batch], (b"sweep", str(below).encode())))
            if gone < 0:
                return False
        removed += gone
        batch.clear()
        return True

    heads = dict.fromkeys((backend.head, backend.base))  # the layout in use, then the single-slot one
    with translate_errors("a cache sweep"):
        for head in heads:
            size = len(head.encode())
            match = (_glob_escape(head) + "[0-9]*").encode()
            cursors: dict[str, int] | None = None
            while cursors != {}:  # the pattern walk's pages (every primary of a cluster)
                cursors, names = scan_page(transport, match, 1000, cursors)
                for key in names:
                    gen, sep, _ = key[size:].partition(b":")
                    if sep and gen.isdigit() and int(gen) < below:
                        batch.append(key.decode("utf-8", "surrogateescape"))
                        if len(batch) == CHUNK and not unlink():
                            return removed
            if batch and not unlink():
                return removed
    return removed


def _timed_out(error: BaseException | None) -> bool:
    import redis

    while error is not None:
        if isinstance(error, (redis.TimeoutError, TimeoutError)):
            return True
        error = error.__cause__
    return False


class Sweeper:
    """One background thread per process that runs :func:`sweep` for the namespaces
    cleared here, one at a time; it starts on demand and ends when idle. A failed
    sweep is logged (WARNING) and left to the namespace's next clear."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[int, str], tuple[RedisCacheBackend, int, float]] = {}
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, backend: RedisCacheBackend, below: int, delay: float = 0.0) -> None:
        """Sweep the generations of *backend*'s namespace below *below*, not before
        *delay* seconds from now."""
        with self._lock:
            key = (id(backend.transport), backend.base)
            job = self._jobs.get(key)
            if job is None or job[1] < below:
                self._jobs[key] = (backend, below, _monotonic() + delay)
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
                key = min(self._jobs, key=lambda k: self._jobs[k][2])
                backend, below, not_before = self._jobs[key]
                wait = not_before - _monotonic()
                if wait <= 0:
                    del self._jobs[key]
            if wait > 0:
                time.sleep(min(wait, 0.1))
                continue
            try:
                sweep(backend, below)
            except Exception as e:  # noqa: BLE001 - a background job: log, the next clear redoes it
                _log.warning("cache namespace %s: removing the keys of generations before %d failed "
                             "(the next clear retries): %s", backend.base, below, e)


#: the process's sweeper (see :class:`Sweeper`)
sweeper = Sweeper()
reset_in_child(sweeper)


class _RedisCachePlans:
    """What the sync and the async Redis cache backends share: the namespace's names,
    its generation state and every operation written once as a *plan* (a generator
    that yields the Redis calls it needs, see :func:`drive`); the sync backend runs
    them on a :class:`RedisTransport`, :class:`statekit.cache.aio.AsyncRedisCacheBackend`
    on an :class:`~statekit.redis.aio.AsyncTransport`."""

    def __init__(self, transport: Any, base: str) -> None:
        self.transport = transport
        self.base = base
        self.cluster: bool = transport.cluster
        #: where value names start: the namespace's hash tag, or on Cluster none
        self.head = base.replace("{", "{}{", 1) if self.cluster else base
        self._gen_key = base + "gen"
        self._gen = b"0"  # the generation last seen
        self._named = (b"0", self.head + "0:")  # a generation and its value names' start
        self._fresh_until = 0.0  # Cluster without a listener: trusted until then (monotonic seconds)
        self._epoch = 0  # _epochs[gen key] when the generation was read
        self._listener: InvalidationListener | None = None  # Cluster: keeps the generation current
        self._token: tuple[int, int] | None = None  # the listener's state the generation is trusted in
        #: the sync backend that removes the keys of cleared generations (:meth:`_swept`)
        self.sweeping: RedisCacheBackend | None = None

    def generation_listener(self) -> InvalidationListener | None:
        """Cluster: a listener that tracks only this namespace's generation counter
        (``BCAST PREFIX <prefix>:{<namespace>}:gen``, no value key; other namespaces
        of the family add theirs with :meth:`watch_generation`), for a cache without
        a near cache. ``None`` elsewhere (the script checks the generation there)."""
        return self._make_listener(self._gen_key) if self.cluster else None

    def watch_generation(self, listener: InvalidationListener) -> None:
        """Cluster: trust the generation read last only while *listener* is
        connected, tracks the counter and has applied every invalidation that reached
        it (see the module docstring)."""
        if self.cluster:
            listener.track(self._gen_key)
            self._listener = listener
            self._token = None

    def _make_listener(self, prefix: str) -> InvalidationListener:
        from ..redis.tracking import InvalidationListener

        client: Any = self.transport.client
        if self.cluster and _on_event_loop():  # an AsyncCache's first call: no blocking
            # topology query here; the listener's thread connects the lazy client
            from ..redis.tracking import CLUSTER_FOLLOW, endpoints_of

            return InvalidationListener(lambda: endpoints_of(client), prefix, follow=CLUSTER_FOLLOW)
        if self.cluster:  # statekit's lazy Cluster client connects here, not in the listener's thread
            with contextlib.suppress(Exception):  # (two threads starting it at once fail one of them)
                client.nodes_manager  # noqa: B018 - the attribute access is what starts it
        return InvalidationListener(client, prefix)  # it follows the nodes

    @property
    def near_bases(self) -> tuple[str, ...]:
        """The bases a near cache of this namespace is registered under: the
        namespace's (its generation counter) and, on Cluster, the value names' head."""
        return tuple(dict.fromkeys((self.base, self.head)))

    def generation_changed(self) -> None:
        """Read the generation counter again before the next call (Cluster; the
        near cache's listener calls it when the counter is invalidated)."""
        self._fresh_until = 0.0
        self._token = None

    # -- the generation ----------------------------------------------------------------

    def _generation(self) -> Plan[bytes]:
        """Cluster: the generation. With a listener (:meth:`watch_generation`), the
        one read last while the listener stayed connected and tracking the counter,
        no invalidation of a counter was applied since and none waits
        (:meth:`~statekit.redis.tracking.InvalidationListener.pending`); else the
        counter is read again. Without one, read again when older than
        :data:`GENERATION_TTL`. Always read again after a clear in this process."""
        epoch = _epochs.get(self._gen_key, 0)
        listener = self._listener
        if listener is not None:
            # pending() first: an invalidation the listener takes off its socket and
            # applies after it returned changes the token read next, while one applied
            # between reading the token and pending() would be seen by neither
            quiet = not listener.pending()
            token = (listener.generation, listener.counter_changes)
            if quiet and token == self._token and epoch == self._epoch and listener.connected.is_set():
                return self._gen
            listener.ensure_running()
            covered = listener.connected.is_set() and listener.covers(self._gen_key)
            self._gen = (yield (CMD, (b"GET", self._gen_key))) or b"0"
            self._epoch = epoch
            # trusted only if nothing changed while the GET was in flight (an
            # invalidation applied, a reconnect); one pending now is seen next call
            unchanged = token == (listener.generation, listener.counter_changes)
            self._token = token if covered and unchanged else None
            return self._gen
        if _monotonic() >= self._fresh_until or epoch != self._epoch:
            self._gen = (yield (CMD, (b"GET", self._gen_key))) or b"0"
            self._epoch = epoch
            self._fresh_until = _monotonic() + GENERATION_TTL
        return self._gen

    def _names(self, gen: bytes, keys: Sequence[str]) -> list[str]:
        named = self._named  # (one tuple: threads replace it whole)
        if named[0] is not gen:
            named = self._named = (gen, self.head + gen.decode() + ":")
        prefix = named[1]
        return [prefix + keys[0]] if len(keys) == 1 else [prefix + k for k in keys]

    def _run(self, op: bytes, keys: Sequence[str], args: Sequence[bytes | str], *last: str) -> Plan[Any]:
        """Run *op* of the cache script on *keys* (at most :data:`CHUNK`; on Cluster,
        one slot) in the current generation (see the module docstring); *last* are
        names outside the generations (a lock's), passed after them as they are."""
        if self.cluster:
            gen = yield from self._generation()
            return (yield (RUN, [*self._names(gen, keys), *last], (op, b"", *args)))
        for _ in range(_TRIES):
            gen = self._gen
            try:
                return (yield (RUN, [self._gen_key, *self._names(gen, keys), *last], (op, gen, *args)))
            except StaleGeneration as e:
                self._gen = e.gen
        raise BackendUnavailable(f"cache namespace {self.base} was cleared {_TRIES} times during one call")

    def _bulk(self, op: bytes, keys: Sequence[str], args: Sequence[bytes | str],
              per_key: Sequence[bytes] = (), *, read: bool = False,
              locks: bool = False) -> Plan[list[tuple[list[int], Any]]]:
        """*op* on many keys: per :data:`CHUNK` (standalone) or per slot, each node's
        share in one pipeline (Cluster). *per_key* are arguments that follow *keys*
        one for one (the values of a ``set``). With *locks* (a ``del``, a ``set`` but
        on Cluster) the keys' single-flight locks are removed too: in the same step, or
        on Cluster in the same pipelines, ahead of the values.
        Returns (the keys' indexes, the reply) per call."""
        if not self.cluster:
            out: list[tuple[list[int], Any]] = []
            for i in range(0, len(keys), CHUNK):
                chunk = keys[i:i + CHUNK]
                if op == b"mget":
                    reply = yield from self._mget(chunk)
                elif locks:  # a del counts the values; a set has one value per name
                    argv = (str(len(chunk)).encode(),) if op == b"del" else (*args, *per_key[i:i + CHUNK])
                    locked = [self._lock_key("sf:" + k) for k in chunk]
                    reply = yield from self._run(op, chunk, argv, *locked)
                else:
                    reply = yield from self._run(op, chunk, (*args, *per_key[i:i + CHUNK]))
                out.append((list(range(i, min(i + CHUNK, len(keys)))), reply))
            return out
        gen = yield from self._generation()
        names = [n.encode() for n in self._names(gen, keys)]  # packed as they are
        # the names start with an empty hash tag ("{}"): the Cluster hashes the whole name
        groups: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(_crc16(name, 0) & 16383, []).append(i)
        commands: list[tuple[Any, ...]] = self._lock_dels(keys) if locks else []
        slots: list[int] = [slot for slot, _ in commands]
        commands = [cmd for _, cmd in commands]
        ahead = len(commands)  # the locks' replies, not returned
        parts: list[list[int]] = []
        name_of = names.__getitem__
        for slot, idx in groups.items():
            # most slots hold one key of a call: no slicing, no comprehension per slot
            chunks = (idx,) if len(idx) <= CHUNK else [idx[c:c + CHUNK] for c in range(0, len(idx), CHUNK)]
            for part in chunks:
                if op == b"mget":
                    commands.append((b"MGET", *map(name_of, part)))
                else:
                    extra = list(map(per_key.__getitem__, part)) if per_key else ()
                    commands.append((b"EVALSHA", SCRIPT.sha, len(part), *map(name_of, part),
                                     op, b"", *args, *extra))
                slots.append(slot)
                parts.append(part)
        replies = yield (BATCH, commands, slots, read)
        return list(zip(parts, replies[ahead:], strict=True))

    def _lock_dels(self, keys: Sequence[str]) -> list[Any]:
        """Cluster: (slot, ``DEL``) commands that remove the single-flight locks of
        *keys*, sent ahead of the values' in the same pipelines (see :meth:`plan_delete`)."""
        groups: dict[int, list[bytes]] = {}
        for k in keys:
            name = self._lock_key("sf:" + k).encode()  # "{}" first: the whole name hashes
            groups.setdefault(_crc16(name, 0) & 16383, []).append(name)
        return [(slot, (b"DEL", *names[c:c + CHUNK]))
                for slot, names in groups.items() for c in range(0, len(names), CHUNK)]

    def _mget(self, keys: Sequence[str], tries: int = _TRIES) -> Plan[list[bytes | None]]:
        """Standalone: ``MGET gen, <head><gen>:<key>...`` with the generation seen
        last time: the reply carries the current generation, read atomically with
        the values, so a mismatch (after a clear) is detected and the read repeated
        (*tries* times in all)."""
        for _ in range(tries):
            gen = self._gen
            values = self._read_in(gen, (yield (CMD, self._mget_args(gen, keys))))
            if values is not None:
                return values
        raise BackendUnavailable(f"cache namespace {self.base} was cleared {_TRIES} times during one read")

    def _mget_args(self, gen: bytes, keys: Sequence[str]) -> tuple[bytes | str, ...]:
        """Standalone: the ``MGET`` of *keys* in generation *gen*, the counter first."""
        return (b"MGET", self._gen_key, *self._names(gen, keys))

    def _read_in(self, gen: bytes, reply: list[Any]) -> list[bytes | None] | None:
        """The values of :meth:`_mget_args`'s reply, or ``None`` when the counter it
        read is not *gen* (a clear: the generation seen is moved on, read again)."""
        current = reply[0] or b"0"
        if current == gen:
            values: list[bytes | None] = reply[1:]
            return values
        self._gen = current
        return None

    # -- the operations, as plans (see :func:`drive`) ------------------------------------

    def plan_get(self, key: str) -> Plan[bytes | None]:
        """:meth:`get` as a plan."""
        if self.cluster:
            gen = yield from self._generation()
            value: bytes | None = yield (CMD, (b"GET", self._names(gen, (key,))[0]))
            return value
        return (yield from self._mget((key,)))[0]

    def plan_get_many(self, keys: Sequence[str]) -> Plan[list[bytes | None]]:
        """:meth:`get_many` as a plan."""
        out: list[bytes | None] = [None] * len(keys)
        for part, reply in (yield from self._bulk(b"mget", keys, (), read=True)):
            for i, value in zip(part, reply, strict=True):
                out[i] = value
        return out

    def plan_get_many_with_ttl(self, keys: Sequence[str]) -> Plan[list[Stored]]:
        """:meth:`get_many_with_ttl` as a plan. Each TTL is what was left when Redis
        ran the read, less the time the reply took to come back (counted from
        before the send): the near cache counts a copy's deadline from when it
        stores it, and a reply delayed on the way (a loaded event loop, the network)
        must not keep a copy alive after the key expired in Redis."""
        sent = _monotonic()
        if not self.cluster or len(keys) == 1:
            out: list[Stored] = []
            for chunk in _chunks(keys):
                out.extend(_stored((yield from self._run(b"gett", chunk, ()))))
            return _aged(out, sent)
        rows: list[Stored] = [_MISSING] * len(keys)
        for part, reply in (yield from self._bulk(b"gett", keys, (), read=True)):
            for i, row in zip(part, _stored(reply), strict=True):
                rows[i] = row
        return _aged(rows, sent)

    def plan_set_many(self, items: Mapping[str, bytes], ttl_ms: int | None) -> Plan[None]:
        """:meth:`set_many` as a plan (the keys' single-flight locks too, as :meth:`plan_set`)."""
        yield from self._bulk(b"set", list(items), (_ttl_arg(ttl_ms),), list(items.values()),
                              locks=not self.cluster)

    def plan_set(self, key: str, value: bytes, ttl_ms: int | None) -> Plan[None]:
        """:meth:`set` as a plan. Standalone, Sentinel, ``memory://``: the key's
        single-flight lock goes in the same step, as :meth:`plan_delete`'s, so a value
        computed before this write is not stored over it. Cluster: the lock is in
        another slot (one round trip more on every ``set``): not removed, so there only
        a delete (or a clear) cancels a flight."""
        if self.cluster:
            yield from self._run(b"set", (key,), (_ttl_arg(ttl_ms), value))
        else:
            yield from self._run(b"set", (key,), (_ttl_arg(ttl_ms), value), self._lock_key("sf:" + key))

    def plan_set_if_locked(self, key: str, value: bytes, ttl_ms: int | None, lock: str, token: str,
                           gen: bytes | None = None, steal: bool = False) -> Plan[bool]:
        """:meth:`set` only while *token* holds the lock *lock*: the store of a
        single-flight *flight* (a leader, ``refresh()``, or with *steal* a caller that
        gave up waiting for *token*'s holder), whose value must not land when, since
        the flight began, the lease lapsed (the next leader stored a fresher value), a
        :meth:`delete` removed the lock, or, with *gen* (the generation the flight
        began in, :meth:`flight_generation`), a :meth:`clear` moved the namespace on.
        With *steal* the store also removes the lock, so the holder's own (slower,
        older) store is refused. ``False`` if refused.

        Standalone, Sentinel, ``memory://``: one step of the script (the lock shares
        the namespace's hash tag; the generation is checked in it, and a stale one is
        not moved to the new generation as other writes are). Cluster: the lock lives
        in another slot: it is read (``GET``) before the ``set`` and again after it
        (with *steal*: removed if still *token*'s), and a value whose lock was gone by
        then is taken back (deleted if it is still this value); a delete removes the
        lock before the value, so a value computed before it is gone, at the latest,
        two round trips after it landed (a leader paused between them, or whose take
        back failed, leaves it until its TTL). The value is written under *gen*'s names:
        after a clear, unreachable."""
        name = self._lock_key(lock)
        tok = token.encode()
        if self.cluster:
            if (yield (CMD, (b"GET", name))) != tok:
                return False
            if gen is None:
                gen = yield from self._generation()
            target = self._names(gen, (key,))
            yield (RUN, target, (b"set", b"", _ttl_arg(ttl_ms), value))
            held = ((yield (RUN, (name,), (b"unlock", b"", tok))) if steal
                    else (yield (CMD, (b"GET", name))) == tok)
            if held:
                return True
            with contextlib.suppress(BackendUnavailable):  # compare-and-delete of this value
                yield (RUN, target, (b"unlock", b"", value))
            return False
        args = (_ttl_arg(ttl_ms), value, tok, b"1" if steal else b"")
        if gen is None:
            return bool((yield from self._run(b"fset", (key,), args, name)))
        try:
            names = [self._gen_key, *self._names(gen, (key,)), name]
            return bool((yield (RUN, names, (b"fset", gen, *args))))
        except StaleGeneration as e:  # cleared since the flight began: not stored
            self._gen = e.gen
            return False

    def flight_generation(self) -> bytes:
        """The generation a flight starting now stores in (:meth:`plan_set_if_locked`):
        the one seen last (no I/O; a leader has just read its key). One older than the
        counter only costs that flight its store."""
        return self._gen

    def plan_read_generation(self) -> Plan[bytes]:
        """:meth:`flight_generation` for a flight that read nothing first
        (``refresh()``): the counter, read (on Cluster while the listener does not
        vouch for the one read last)."""
        if self.cluster:
            return (yield from self._generation())
        self._gen = (yield (CMD, (b"GET", self._gen_key))) or b"0"
        return self._gen

    def plan_lock_holder(self, name: str) -> Plan[str | None]:
        """The token that holds lock *name*, ``None`` if it is free."""
        token = yield (CMD, (b"GET", self._lock_key(name)))
        return None if token is None else bytes(token).decode()

    def plan_steal_lock(self, name: str, token: str, ttl_ms: int) -> Plan[bool]:
        """Take lock *name* for *token* whoever holds it (``refresh()``: the holder's
        store is then refused). Always ``True``."""
        yield (CMD, (b"SET", self._lock_key(name), token, b"PX", ttl_ms))
        return True

    def plan_add(self, key: str, value: bytes, ttl_ms: int | None) -> Plan[bool]:
        """:meth:`add` as a plan."""
        return bool((yield from self._run(b"add", (key,), (_ttl_arg(ttl_ms), value))))

    def plan_replace(self, key: str, value: bytes, ttl_ms: int | None, now: float) -> Plan[bool]:
        """:meth:`replace` as a plan: the script's ``set`` only over a value live at
        *now* (its ``xset``); when it stores, the key's single-flight lock goes with it
        as in :meth:`plan_set` (not on Cluster: another slot)."""
        args = (_ttl_arg(ttl_ms), value, repr(now))
        if self.cluster:
            return bool((yield from self._run(b"xset", (key,), args)))
        return bool((yield from self._run(b"xset", (key,), args, self._lock_key("sf:" + key))))

    def plan_delete(self, key: str) -> Plan[bool]:
        """:meth:`delete` as a plan: the key's single-flight lock goes with it, so a
        value computed before the delete is not stored after it
        (:meth:`plan_set_if_locked`). On Cluster the lock (another slot) goes first, one
        round trip more; :meth:`delete_many` sends the locks' removals ahead of the
        values' in the same pipelines (one round trip per node), so there a flight whose
        store and check both ran between the removal of its value and that of its lock
        (on another node: more than a round trip of skew between two nodes) keeps its
        value until its TTL."""
        lock = self._lock_key("sf:" + key)
        if self.cluster:
            yield (CMD, (b"DEL", lock))
            return int((yield from self._run(b"del", (key,), ()))) > 0
        return int((yield from self._run(b"del", (key,), (b"1",), lock))) > 0

    def plan_delete_many(self, keys: Sequence[str]) -> Plan[int]:
        """:meth:`delete_many` as a plan (the keys' single-flight locks too, as
        :meth:`plan_delete`)."""
        return sum(int(reply) for _, reply in (yield from self._bulk(b"del", keys, (), locks=True)))

    def plan_incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> Plan[int | None]:
        """:meth:`incr` as a plan."""
        result = yield from self._run(b"incr", (key,), (str(delta).encode(), _ttl_arg(ttl_ms),
                                                         b"1" if create else b"0"))
        return None if result is None else int(result)

    def plan_touch(self, key: str, ttl_ms: int | None, now: float, stale_ms: int) -> Plan[bool]:
        """:meth:`touch` as a plan (the script's ``touch``: a new lifetime for a value
        live at *now*, a get_or_set value's logical expiry moved with its TTL in the
        same step, its stale window kept or, if it kept none, *stale_ms*)."""
        return bool((yield from self._run(b"touch", (key,), (_ttl_arg(ttl_ms), repr(now),
                                                             deadline(now, ttl_ms), str(stale_ms)))))

    def plan_persist(self, key: str, now: float) -> Plan[bool]:
        """:meth:`persist` as a plan (the script's ``persist``: ``PERSIST`` of a value
        live at *now*, a get_or_set value's logical expiry removed in the same step)."""
        return bool((yield from self._run(b"persist", (key,), (repr(now),))))

    def plan_clear(self) -> Plan[None]:
        """:meth:`clear` as a plan."""
        gen = int((yield (CMD, (b"INCR", self._gen_key))))
        if self.cluster:
            # the barrier (see the module docstring): Redis writes the counter's
            # invalidation to every listener in the event-loop pass that ran the INCR,
            # not always before the INCR's reply; a command sent after that reply runs
            # in a later pass, so once its reply is here every listener's connection
            # has the invalidation (on loopback: in its receive buffer, where pending()
            # sees it). The clear has applied: a barrier that fails does not fail it
            with contextlib.suppress(BackendUnavailable):
                gen = max(gen, int((yield (CMD, (b"GET", self._gen_key))) or 0))
        _epochs[self._gen_key] = _epochs.get(self._gen_key, 0) + 1
        self._gen = str(gen).encode()
        self._epoch = _epochs[self._gen_key]
        self._fresh_until = _monotonic() + GENERATION_TTL
        self._swept(gen)

    def _swept(self, below: int) -> None:
        """Have the generations below *below* removed in the background (by
        :attr:`sweeping`, a sync backend of the namespace; without one the old
        generation's keys are left to expire, or to the next clear made elsewhere)."""
        if self.sweeping is not None:
            sweeper.submit(self.sweeping, below, GENERATION_TTL if self.cluster else 0.0)

    def plan_scan(self, pattern: str, state: tuple[bytes, dict[str, int]] | None,
                  count: int) -> Plan[tuple[tuple[bytes, dict[str, int]] | None, list[str]]]:
        """One page of the keys of this namespace's current generation that match the
        glob *pattern* (``SCAN MATCH`` on every primary, about *count* names per page
        and node; never ``KEYS``): ``(state, keys)``, *state* to pass to the next page,
        ``None`` when every primary was walked. The generation is the one current when
        the walk began (*state* ``None``; on standalone read with the first page's
        ``GET``): a walk that a clear overtook goes on listing the keys it began with,
        as any walk of a changing key space may. A key may be listed twice (``SCAN``'s
        guarantee), one written during the walk may or may not be."""
        if state is None:
            if self.cluster:
                gen = yield from self._generation()
            else:
                gen = (yield (CMD, (b"GET", self._gen_key))) or b"0"
            cursors = None
        else:
            gen, cursors = state
        head = self._names(gen, ("",))[0]
        left, found = yield (SCAN, (_glob_escape(head) + pattern).encode(), count, cursors)
        size = len(head.encode())
        return ((gen, left) if left else None), [n[size:].decode("utf-8", "surrogateescape") for n in found]

    def _lock_key(self, name: str) -> str:
        # single-flight locks spread with their keys; named locks keep their names
        return f"{self.head if name.startswith('sf:') else self.base}lock:{name}"

    def plan_acquire_lock(self, name: str, token: str, ttl_ms: int) -> Plan[bool]:
        """:meth:`acquire_lock` as a plan."""
        reply = yield (CMD, (b"SET", self._lock_key(name), token, b"PX", ttl_ms, b"NX"))
        return reply is not None and reply is not False

    def plan_release_lock(self, name: str, token: str) -> Plan[bool]:
        """:meth:`release_lock` as a plan."""
        return bool((yield (RUN, (self._lock_key(name),), (b"unlock", b"", token.encode()))))

    def plan_extend_lock(self, name: str, token: str, ttl_ms: int) -> Plan[bool]:
        """:meth:`extend_lock` as a plan."""
        return bool((yield (RUN, (self._lock_key(name),),
                            (b"extend", b"", token.encode(), str(ttl_ms).encode()))))


class RedisCacheBackend(_RedisCachePlans, CacheBackend):
    """Cache backend for every Redis URL kind (see the module docstring): the plans
    of :class:`_RedisCachePlans` run on the sync transport."""

    transport: RedisTransport

    def __init__(self, transport: RedisTransport, base: str) -> None:
        super().__init__(transport, base)
        self._do = functools.partial(_step, transport)
        self.sweeping = self

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
        return self._make_listener(prefix)

    def get(self, key: str) -> bytes | None:
        if not self.cluster:  # the plan's first try, without its generators (~1 us of CPU)
            gen = self._gen
            values = self._read_in(gen, self.transport.command(*self._mget_args(gen, (key,))))
            if values is not None:
                return values[0]
            return drive(self._mget((key,), _TRIES - 1), self._do)[0]  # (a clear: the plan)
        return drive(self.plan_get(key), self._do)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return drive(self.plan_get_many(keys), self._do)

    def get_with_ttl(self, key: str) -> Stored:
        return drive(self.plan_get_many_with_ttl((key,)), self._do)[0]

    def get_many_with_ttl(self, keys: Sequence[str]) -> list[Stored]:
        return drive(self.plan_get_many_with_ttl(keys), self._do)

    def set_many(self, items: Mapping[str, bytes], ttl_ms: int | None) -> None:
        drive(self.plan_set_many(items, ttl_ms), self._do)

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        drive(self.plan_set(key, value, ttl_ms), self._do)

    def set_if_locked(self, key: str, value: bytes, ttl_ms: int | None, lock: str, token: str,
                      gen: bytes | None = None, steal: bool = False) -> bool:
        return drive(self.plan_set_if_locked(key, value, ttl_ms, lock, token, gen, steal), self._do)

    def read_generation(self) -> bytes:
        return drive(self.plan_read_generation(), self._do)

    def lock_holder(self, name: str) -> str | None:
        return drive(self.plan_lock_holder(name), self._do)

    def steal_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        return drive(self.plan_steal_lock(name, token, ttl_ms), self._do)

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        return drive(self.plan_add(key, value, ttl_ms), self._do)

    def replace(self, key: str, value: bytes, ttl_ms: int | None, now: float) -> bool:
        return drive(self.plan_replace(key, value, ttl_ms, now), self._do)

    def delete(self, key: str) -> bool:
        return drive(self.plan_delete(key), self._do)

    def delete_many(self, keys: Sequence[str]) -> int:
        return drive(self.plan_delete_many(keys), self._do)

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        return drive(self.plan_incr(key, delta, ttl_ms, create=create), self._do)

    def touch(self, key: str, ttl_ms: int | None, now: float, stale_ms: int) -> bool:
        return drive(self.plan_touch(key, ttl_ms, now, stale_ms), self._do)

    def persist(self, key: str, now: float) -> bool:
        return drive(self.plan_persist(key, now), self._do)

    def clear(self) -> None:
        """Bump the generation (O(1), one command), then let :data:`sweeper` remove
        the older generations' keys in the background (on Cluster after
        :data:`GENERATION_TTL`, when no process writes to them any more)."""
        drive(self.plan_clear(), self._do)

    def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        return drive(self.plan_acquire_lock(name, token, ttl_ms), self._do)

    def release_lock(self, name: str, token: str) -> bool:
        return drive(self.plan_release_lock(name, token), self._do)

    def extend_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        return drive(self.plan_extend_lock(name, token, ttl_ms), self._do)

    def close(self) -> None:
        self.transport.close()
