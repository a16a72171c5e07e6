"""Pub/sub on connections of their own, outside a client's connection pools.

A subscriber holds its connection for as long as it listens. Taken from a pool, it
holds one of the URL's ``max_connections`` (a Cluster's: one of its node's) for good,
outside the turns the commands take (:class:`statekit.redis.ClusterGate`,
:class:`statekit.redis.aio._ClusterGate`): on a small pool the commands beside it
waited for that connection and failed (sync: "No connection available" after the
socket timeout; asyncio: "Too many connections" at once). So statekit's broadcast
subscribers (:func:`statekit.broadcast.redis._pubsub`) and the pubsub a Cluster
client of a URL with ``max_connections`` makes (``client.pubsub()``, sync and
asyncio) listen on connections of their own: one more connection per pubsub (a
Cluster's: per node it listens on) beside each node's ``max_connections``, closed
when the pubsub is closed.

redis-py's ``ClusterPubSub`` takes a node's pool in three places (the node it was
given, the node of its first channel, each node of its sharded channels): the
subclasses here give each of those pubsubs an :class:`OwnConnection` (sync) or
:class:`AsyncOwnConnection` instead, made by a *connect* callable, so the caller
says what kind of connection it listens on (a broadcast subscriber's: RESP2, no
retry; a client's pubsub: one its node's pool would make).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["AsyncOwnConnection", "OwnConnection", "async_cluster_pubsub", "cluster_pubsub", "pool_like"]


class OwnConnection:
    """The pool a redis-py ``PubSub`` takes its connection from: *conn*, a
    connection of its own (not made by any pool). Given back (``PubSub.reset``,
    ``close``), it is closed; asked again (a pubsub used after a reset), it
    connects again."""

    def __init__(self, encoder: Any, conn: Any) -> None:
        self._encoder = encoder
        self._conn = conn

    def get_encoder(self) -> Any:
        return self._encoder

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn

    def release(self, conn: Any) -> None:
        conn.disconnect()


class AsyncOwnConnection(OwnConnection):
    """:class:`OwnConnection` for a ``redis.asyncio`` ``PubSub``: connected when
    taken (as redis-py's node pool adapter does), closed when given back."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        conn = self._conn
        try:
            await conn.connect()
        except BaseException:
            await conn.disconnect()  # (a handshake that failed half way)
            raise
        return conn

    async def release(self, conn: Any) -> None:  # type: ignore[override]
        await conn.disconnect()


def pool_like(pool: Any) -> Any:
    """A connection made as *pool* (a node's, sync or asyncio; or a ``ClusterNode``
    of ``redis.asyncio``) makes its own: its class and options (TLS, credentials,
    protocol, timeouts, client name, retry), not counted by it."""
    return pool.connection_class(**pool.connection_kwargs)


_classes: dict[bool, Any] = {}


def _own_class(aio: bool) -> Any:
    """redis-py's ``ClusterPubSub`` (with *aio*: ``redis.asyncio``'s) whose pubsubs
    listen on connections of their own (module docstring). The pool the pubsub of
    the node it was given, or of its first channel's node, takes is set through
    ``connection_pool`` (the property turns it into one of its own, before any
    connection is taken); each node's pubsub of sharded channels gets one as it is
    made."""
    cls = _classes.get(aio)
    if cls is not None:
        return cls
    base: Any = importlib.import_module("redis.asyncio.cluster" if aio else "redis.cluster").ClusterPubSub
    own = AsyncOwnConnection if aio else OwnConnection

    class OwnClusterPubSub(base):  # type: ignore[misc]
        """A ``ClusterPubSub`` on connections of its own (:func:`cluster_pubsub`)."""

        _statekit_connect: Callable[[Any], Any]

        def __init__(self, redis_cluster: Any, *args: Any, statekit_connect: Callable[[Any], Any],
                     **kwargs: Any) -> None:
            self._statekit_connect = statekit_connect  # (read by the constructor's pool)
            super().__init__(redis_cluster, *args, **kwargs)

        def _statekit_own(self, node: Any) -> Any:
            """A pool of one connection of its own to *node*."""
            of = node if aio else self.cluster.get_redis_connection(node)
            encoder = self.cluster.encoder if aio else of.connection_pool.get_encoder()
            return own(encoder, self._statekit_connect(of))

        @property  # type: ignore[override]
        def connection_pool(self) -> Any:
            return self.__dict__.get("_statekit_pool")

        @connection_pool.setter
        def connection_pool(self, pool: Any) -> None:
            if pool is not None and not isinstance(pool, own):  # its node's (self.node)
                pool = self._statekit_own(self.node)
            self.__dict__["_statekit_pool"] = pool

        def _get_node_pubsub(self, node: Any) -> Any:
            made = node.name not in self.node_pubsub_mapping
            pubsub = super()._get_node_pubsub(node)
            if made:  # before its first command takes a connection
                pubsub.connection_pool = self._statekit_own(node)
            return pubsub

    cls = _classes[aio] = OwnClusterPubSub
    return cls


def cluster_pubsub(client: Any, connect: Callable[[Any], Any], **kwargs: Any) -> Any:
    """A redis-py ``ClusterPubSub`` of the sync Cluster *client* (*kwargs*: those of
    ``RedisCluster.pubsub``: ``node``, ``host`` and ``port``, ...) whose pubsubs
    listen on connections of their own, each ``connect(node_client)`` (the
    ``redis.Redis`` of the node: :func:`pool_like` of its pool, say)."""
    return _own_class(aio=False)(client, statekit_connect=connect, **kwargs)


def async_cluster_pubsub(client: Any, connect: Callable[[Any], Any], **kwargs: Any) -> Any:
    """:func:`cluster_pubsub` for a ``redis.asyncio`` Cluster *client* (a redis-py
    whose asyncio client has a ``ClusterPubSub``); *connect* is given the node's
    ``ClusterNode``."""
    return _own_class(aio=True)(client, statekit_connect=connect, **kwargs)
