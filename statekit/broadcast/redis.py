"""The Redis broadcast backend: four Lua scripts and one subscription (a pattern, or
sharded channels on a Cluster that has them).

Keys (all of one name share a hash tag, so the scripts are cluster-safe):
``<prefix>:bc:{<name>}`` (hash: epoch, version, updated_at, data, slot),
``...:lease`` (``owner|token``, expiring), ``...:fence`` (the fencing counter);
channel ``<prefix>:broadcast:<name>``, whose message is
``b"<epoch> <version> <ms> <payload>"`` (the whole record: fan-out costs no extra
round trip). The scripts are ``statekit/redis/scripts/broadcast_*.lua``; they are
the only implementation of each operation (``memory://`` runs them too).

**Sharded pub/sub on Cluster.** A plain ``PUBLISH`` on Redis Cluster is relayed to
every node over the cluster bus, so fan-out work grows with the cluster. Where the
servers have sharded pub/sub (Redis 7+, Valkey: ``SPUBLISH`` exists) a Cluster
backend publishes with ``SPUBLISH`` on ``<prefix>:broadcast:{<name>}`` (the state
key's hash tag: the publish script's keys and channel share a slot, and only that
shard's nodes carry the message), and :class:`ShardedSubscription` subscribes
(``SSUBSCRIBE``) to each name the hub holds (sharded pub/sub has no patterns).
Standalone, Sentinel and a Cluster without it (Redis 6.2) keep the pattern
subscription and ``PUBLISH``. During a rolling upgrade on such a Cluster, processes
of the older version get the new publishes only through the hub's periodic version
check (``CHECK_EVERY``), not by message, until they are replaced.

**The subscriber's connection** is its own, outside the URL's pool (as a near
cache's invalidation listener's): one more connection per process beside the
URL's ``max_connections`` (on a Cluster, one to each node it listens on beside each
node's ``max_connections``), held for as long as it listens. From the pool it held one
of them for good, and on a small pool the cache calls beside it waited for one and
failed.

Every Redis URL form works (standalone, TLS, unix socket, Sentinel, Cluster), or a
ready redis-py client. Errors follow the Redis layer's error map and retry rule
(:mod:`statekit.redis`): an outage is :class:`~statekit.errors.BackendUnavailable`
and a publish whose outcome is unknown is never sent again.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from ..config import DEFAULT_SOCKET_TIMEOUT
from ..errors import BackendUnavailable, StaleToken
from ..redis import PermissionRefused, get_client, is_cluster, translate_errors
from ..redis.scripts import Script, load
from ..redis.transport import Transport
from .protocol import Claim, ClaimStatus, Message, Record, Subscribed, SubscriptionRefused

__all__ = ["PING_EVERY", "PING_TIMEOUT", "RedisBackend", "RedisOps", "RedisSubscription", "ScriptCall",
           "ShardedSubscription", "channel", "parse_message", "shard_channel", "state_key"]

#: seconds without any traffic before a subscription sends a PING
PING_EVERY = 5.0
#: seconds a PING may stay unanswered before the connection is considered dead
PING_TIMEOUT = 3.0

_record_received: Any
_RECEIVE: Any
try:  # redis-py 7 and later: its pub/sub metrics (what get_message records)
    from redis.observability.attributes import PubSubDirection
    from redis.observability.recorder import record_pubsub_message as _record_received

    _RECEIVE = PubSubDirection.RECEIVE
except ImportError:  # pragma: no cover - redis-py 6
    _record_received = _RECEIVE = None

#: a script, its keys and its arguments: what :meth:`Transport.script` takes
ScriptCall = tuple[Script, list[str], list[Any]]

_STATUS = {0: ClaimStatus.HELD, 1: ClaimStatus.LEADER, 2: ClaimStatus.COMPUTE}


def state_key(prefix: str, name: str) -> str:
    """The Redis hash that retains the value of *name*."""
    return f"{prefix}:bc:{{{name}}}"


def channel(prefix: str, name: str) -> str:
    """The channel *name*'s publishes go out on."""
    return f"{prefix}:broadcast:{name}"


def shard_channel(prefix: str, name: str) -> str:
    """The sharded channel of *name* on a Cluster with sharded pub/sub (the hash tag
    of its state key)."""
    return f"{prefix}:broadcast:{{{name}}}"


def parse_message(data: bytes) -> Record:
    """Split a published message ``b"<epoch> <version> <ms> <payload>"``.

    :raises ValueError: it is not one."""
    epoch, version, ms, payload = data.split(b" ", 3)
    return Record(epoch, int(version), int(ms), payload)


def _redis_py(cls: type, method: str) -> Any:
    """*method* of connection class *cls* if redis-py's own defines it: the first
    class of its MRO, past statekit's retry rule mixin, that defines it is redis-py's
    (not fakeredis's ``memory://`` connection); else ``None``."""
    for base in cls.__mro__:
        if method in vars(base) and not base.__module__.startswith("statekit."):
            return vars(base)[method] if base.__module__.startswith("redis.") else None
    return None


def _timed_reads(conn: Any) -> bool:
    """Whether *conn* is a redis-py socket connection whose reads take a timeout
    (``read_response(timeout=)``, the read redis-py's own ``get_message`` makes; not
    fakeredis's ``memory://`` connection, nor an older redis-py's)."""
    read = _redis_py(type(conn), "read_response")
    return read is not None and "timeout" in inspect.signature(read).parameters


def _listening(client: Any) -> Any:
    """A connection of its own for a subscriber of *client* (a server's, or a Cluster
    node's, ``redis.Redis``), made as a near cache's invalidation listener makes its
    (:func:`statekit.redis.tracking.endpoints_of`: the server, or the master Sentinel
    names now; TLS, credentials and timeouts of the client's connections; RESP2, no
    retry: a lost connection ends the subscription, and the hub subscribes again)."""
    from ..redis.tracking import endpoints_of, unpooled_connection

    with translate_errors("broadcast subscribe"):  # a Sentinel is asked for its master
        endpoint = endpoints_of(client)[0]
    # the client's socket timeout (its writes: a PING; reads take their own)
    return unpooled_connection(endpoint, endpoint.get("socket_timeout") or DEFAULT_SOCKET_TIMEOUT)


def _pubsub(client: Any, pattern: bytes | None = None) -> Any:
    """A redis-py ``PubSub`` of *client* that listens on connections of its own
    (:func:`_listening`), outside the client's pools (:mod:`statekit.redis.pubsub`;
    a Cluster's: one to the primary of *pattern*'s slot for a pattern, one to each
    node it subscribes on for sharded channels). A subscriber holds its connection
    for as long as it listens: taken from the pool, it held one of the URL's
    ``max_connections`` (a Cluster's: each node's) for good, beside the connections
    the transports keep (all but one), and the cache calls past those waited for the
    last one and failed. ``memory://``'s in-process client (not redis-py's sockets)
    keeps its own pubsub."""
    from redis.client import PubSub

    from ..redis.pubsub import OwnConnection, cluster_pubsub

    if not is_cluster(client):
        if _redis_py(client.connection_pool.connection_class, "_connect") is None:
            return client.pubsub()
        return PubSub(OwnConnection(client.connection_pool.get_encoder(), _listening(client)))
    if pattern is None:
        return cluster_pubsub(client, _listening)
    return cluster_pubsub(client, _listening, node=client.get_node_from_key(pattern))


def _refused(what: str, error: Exception) -> SubscriptionRefused:
    """The :class:`SubscriptionRefused` for the error reply (or the ACL refusal)
    *error* to a subscription's command."""
    if isinstance(error, PermissionRefused):
        return SubscriptionRefused(str(error))
    return SubscriptionRefused(f"Redis refused {what}: {error} (renamed or disabled? broadcast subscribes "
                               "with PSUBSCRIBE, on a Cluster with sharded pub/sub with SSUBSCRIBE)")


@contextlib.contextmanager
def _subscribing(what: str, client: Any) -> Iterator[None]:
    """The error map (:func:`~statekit.redis.translate_errors`) around a
    subscription's command, its error replies (an ACL's, a renamed command's) raised
    as :func:`_refused`. (:meth:`RedisSubscription.get`, run for every message, spells
    it out rather than make a generator per read.)"""
    import redis

    try:
        with translate_errors(what, client):
            yield
    except (PermissionRefused, redis.ResponseError) as e:
        raise _refused(what, e) from e


class RedisSubscription:
    """A redis-py ``PubSub`` pattern-subscribed to ``<prefix>:broadcast:*``
    (see :class:`~statekit.broadcast.protocol.Subscription`), on a connection of its
    own (:func:`_pubsub`).

    :meth:`get` reads the subscription's connection with
    ``read_response(timeout=...)``, the read ``PubSub.get_message`` itself ends in,
    without the readiness and closed-socket checks before it (four system calls of
    eight per message on redis-py 8, and its per-message dict): every worker
    process pays them for every publish, the fan-out's CPU on a busy host. A
    partial message left by the timeout stays in redis-py's parser for the next
    read, as in ``get_message``; a dropped connection raises, and the hub
    subscribes again (then re-reads every retained value). Each message is counted
    in redis-py's pub/sub metrics, as ``get_message`` counts it. A redis-py whose
    reads take no timeout (older releases), or another connection class
    (``memory://``'s), is read through ``PubSub.parse_response``."""

    def __init__(self, client: Any, prefix: str) -> None:
        import redis

        self._prefix = f"{prefix}:broadcast:".encode()
        self._names: dict[bytes, tuple[str, str]] = {}  # channel -> (name, channel as text)
        self._client = client  # whose ACL user a refusal names
        self._response_error = redis.ResponseError
        with _subscribing("broadcast subscribe", client):  # a Cluster may ask for its slots first
            self._pubsub = _pubsub(client, self._prefix + b"*")
            self._pubsub.psubscribe(self._prefix + b"*")
        self._timeout_error = redis.TimeoutError
        #: read the connection directly (see the class docstring)
        self.timed_reads = _timed_reads(self._pubsub.connection)
        self._last_rx = self._last_ping = time.monotonic()
        self._pinged = False

    def _read(self, timeout: float) -> Any:
        """The next raw reply within *timeout* seconds, or ``None``."""
        if not self.timed_reads:
            return self._pubsub.parse_response(block=False, timeout=timeout)
        try:
            return self._pubsub.connection.read_response(
                disconnect_on_error=False, push_request=True, timeout=timeout)
        except self._timeout_error:  # nothing (whole) within timeout
            return None

    def get(self, timeout: float) -> Message | Subscribed | None:
        try:  # the PSUBSCRIBE's confirmation, or its refusal (an ACL, a renamed command), is read here
            with translate_errors("broadcast subscriber", self._client):
                reply = self._read(timeout)
                now = time.monotonic()
                if reply is None:
                    if self._pinged and now - self._last_ping > PING_TIMEOUT:
                        raise BackendUnavailable("broadcast subscriber: Redis did not answer a PING")
                    if not self._pinged and now - self._last_rx > PING_EVERY:
                        self._pubsub.ping()
                        self._last_ping, self._pinged = now, True
                    return None
        except (PermissionRefused, self._response_error) as e:
            raise _refused("broadcast subscriber", e) from e
        self._last_rx, self._pinged = now, False
        # [b"pmessage", pattern, channel, data]; [b"psubscribe", pattern, count];
        # a PONG ([b"pong", b""], or b"PONG" on RESP3)
        kind = reply[0] if isinstance(reply, list) and reply else None
        if kind != b"pmessage":
            return Subscribed() if kind == b"psubscribe" else None
        chan: bytes = reply[2]
        known = self._names.get(chan)
        if known is None:
            known = (chan[len(self._prefix):].decode("utf-8", "replace"), chan.decode("utf-8", "replace"))
            if len(self._names) < 4096:
                self._names[chan] = known
        if _record_received is not None:
            _record_received(direction=_RECEIVE, channel=known[1])
        return Message(known[0], parse_message(reply[3]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pubsub.close()


class ShardedSubscription(RedisSubscription):
    """A :class:`RedisSubscription` on sharded channels: ``SSUBSCRIBE`` to the channel
    of each name given to :meth:`watch` (Redis 7+ / Valkey Cluster; redis-py's
    ``ClusterPubSub`` keeps one connection per node and follows slot moves). Its
    first event is :class:`Subscribed` at once: nothing is subscribed yet, so
    nothing can have been missed; a ``sunsubscribe``
    the server sends (the slot moved, the node failed over) is reported as
    :class:`Subscribed` too, so the hub re-reads every retained value."""

    def __init__(self, client: Any, prefix: str) -> None:  # nothing subscribed yet
        self._name_prefix = prefix
        self._client = client
        self._head = f"{prefix}:broadcast:{{".encode()
        self._pubsub = _pubsub(client)
        self._first = True

    def watch(self, names: Iterable[str]) -> None:
        """Subscribe to the sharded channels of *names* (the hub's thread calls it)."""
        with _subscribing("broadcast subscribe", self._client):
            self._pubsub.ssubscribe(*[shard_channel(self._name_prefix, n) for n in names])

    def get(self, timeout: float) -> Message | Subscribed | None:
        if self._first:
            self._first = False
            return Subscribed()
        if not self._pubsub.shard_channels:
            time.sleep(timeout)
            return None
        with _subscribing("broadcast subscriber", self._client):
            msg = self._pubsub.get_sharded_message(timeout=timeout)
        if msg is None:
            return None
        kind = msg["type"]
        if kind == "sunsubscribe":
            return Subscribed()
        if kind != "smessage":
            return None
        chan: bytes = msg["channel"]
        if not (chan.startswith(self._head) and chan.endswith(b"}")):
            return None
        return Message(chan[len(self._head):-1].decode("utf-8", "replace"), parse_message(msg["data"]))


class RedisOps:
    """The pure half of the Redis backend, shared by :class:`RedisBackend` and
    :class:`statekit.broadcast.aio.AsyncRedisBackend`: key names, each script's keys
    and arguments, and the parsing of its reply. The two only differ in how they
    send (a :class:`~statekit.redis.transport.Transport` or its asyncio twin)."""

    def __init__(self, client: Any, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._targets: dict[str, tuple[list[str], str]] = {}
        # an epoch per publish (used only when Redis has none): this object's random
        # base and a counter, cheaper than a uuid4 per call
        self._epochs = itertools.count()
        self._epoch_base = uuid.uuid4().hex[:8]
        self._sharded: bool | None = None  # found on first use: Cluster with SPUBLISH

    def _keys(self, name: str) -> tuple[str, str, str]:
        state = state_key(self.prefix, name)
        return state, state + ":lease", state + ":fence"

    def _claim_call(self, name: str, owner: str, lease_ms: int, slot: int) -> ScriptCall:
        return load("broadcast_claim"), list(self._keys(name)), [owner, lease_ms, slot]

    @staticmethod
    def _claimed(reply: Any) -> Claim:
        status, token, left = reply
        return Claim(_STATUS[int(status)], int(token), int(left))

    def _renew_call(self, name: str, owner: str, token: int, lease_ms: int) -> ScriptCall:
        return load("broadcast_renew"), [self._keys(name)[1]], [f"{owner}|{token}", lease_ms]

    def _release_call(self, name: str, owner: str, token: int) -> ScriptCall:
        return load("broadcast_release"), [self._keys(name)[1]], [f"{owner}|{token}"]

    @staticmethod
    def _has_spublish(reply: Any) -> bool:
        """Whether a ``COMMAND INFO SPUBLISH`` reply names the command."""
        return bool(reply) and reply[0] is not None

    def _publish_call(self, name: str, payload: bytes, token: int | None, now_ms: int) -> ScriptCall:
        """The publish script's call; :attr:`_sharded` must be known."""
        target = self._targets.get(name)
        if target is None:
            state, _, fence = self._keys(name)
            target = ([state, fence], shard_channel(self.prefix, name) if self._sharded
                      else channel(self.prefix, name))
            if len(self._targets) < 4096:
                self._targets[name] = target
        keys, chan = target
        args: list[str | bytes] = [
            "" if token is None else str(token), payload, str(now_ms),
            f"{self._epoch_base}{next(self._epochs):x}", chan, "s" if self._sharded else "",
        ]
        return load("broadcast_publish"), keys, args

    @staticmethod
    def _published(name: str, token: int | None, reply: Any) -> int:
        version, info = reply
        if version == -1:
            raise StaleToken(
                f"publish of {name!r} with fencing token {token} refused: the current token is {info}"
            )
        return int(version)

    def _hmget_pipeline(self, names: list[str], fields: tuple[str, ...]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hmget(state_key(self.prefix, name), *fields)
        return pipe

    @staticmethod
    def _records(names: list[str], rows: list[Any]) -> dict[str, Record]:
        out: dict[str, Record] = {}
        for name, (epoch, version, ms, data) in zip(names, rows, strict=True):
            if epoch is not None and version is not None and data is not None:
                out[name] = Record(epoch, int(version), int(ms or 0), data)
        return out

    @staticmethod
    def _versions(names: list[str], rows: list[Any]) -> dict[str, tuple[bytes, int]]:
        return {name: (epoch, int(version)) for name, (epoch, version) in zip(names, rows, strict=True)
                if epoch is not None and version is not None}


#: fields :meth:`RedisBackend.read` and :meth:`RedisBackend.versions` ask for
READ_FIELDS = ("epoch", "version", "updated_at", "data")
VERSION_FIELDS = ("epoch", "version")


class RedisBackend(RedisOps):
    """Broadcast on Redis (see the module docstring and
    :class:`~statekit.broadcast.protocol.BroadcastBackend`).

    :param client: a redis-py client (standalone, Sentinel or Cluster).
    :param prefix: the key prefix.
    """

    synchronous: ClassVar[bool] = False

    def __init__(self, client: Any, *, prefix: str) -> None:
        super().__init__(client, prefix=prefix)
        # the scripts: one redis-py connection per thread (fork-safe), every URL kind
        self._transport = Transport(client, what="broadcast")

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisBackend:
        return cls(get_client(url), prefix=prefix)

    def claim(self, name: str, owner: str, lease_ms: int, slot: int) -> Claim:
        return self._claimed(self._transport.script(*self._claim_call(name, owner, lease_ms, slot)))

    def renew(self, name: str, owner: str, token: int, lease_ms: int) -> bool:
        return bool(self._transport.script(*self._renew_call(name, owner, token, lease_ms)))

    def release(self, name: str, owner: str, token: int) -> bool:
        return bool(self._transport.script(*self._release_call(name, owner, token)))

    @property
    def sharded(self) -> bool:
        """Whether this backend uses sharded pub/sub: a Cluster whose servers have
        ``SPUBLISH`` (asked once, ``COMMAND INFO``)."""
        if self._sharded is None:
            sharded = False
            if self._transport.cluster:
                with translate_errors("broadcast set-up"):
                    sharded = self._has_spublish(self.client.execute_command(
                        "COMMAND INFO", "SPUBLISH", target_nodes=self.client.RANDOM))
            self._sharded = sharded
        return self._sharded

    def publish(self, name: str, payload: bytes, *, token: int | None, now_ms: int) -> int:
        self.sharded  # noqa: B018 - known before the call is built
        reply = self._transport.script(*self._publish_call(name, payload, token, now_ms))
        return self._published(name, token, reply)

    def _fetch(self, names: Iterable[str], fields: tuple[str, ...], what: str) -> tuple[list[str], list[Any]]:
        """``(names, rows)``: the *fields* of each name's state hash, one pipeline."""
        names = list(names)
        if not names:
            return names, []
        with translate_errors(what):
            return names, list(self._hmget_pipeline(names, fields).execute())

    def read(self, names: Iterable[str]) -> dict[str, Record]:
        return self._records(*self._fetch(names, READ_FIELDS, "broadcast read"))

    def versions(self, names: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        return self._versions(*self._fetch(names, VERSION_FIELDS, "broadcast check"))

    def subscribe(self, ready: Callable[[], object] | None = None) -> RedisSubscription:
        if self.sharded:
            return ShardedSubscription(self.client, self.prefix)
        return RedisSubscription(self.client, self.prefix)

    def close(self) -> None:
        self._transport.close()
