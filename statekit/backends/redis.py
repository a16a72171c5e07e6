"""Redis clients from URLs: standalone, TLS, unix socket, Sentinel and Cluster.

Every client gets connect and socket timeouts and redis-py's ``Retry`` with
exponential backoff on connection errors and timeouts, so no call can hang. Clients
are shared per process through :func:`get_client`: one connection pool per URL, which
redis-py resets on its own in a forked child (gunicorn workers).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ..config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_TIMEOUT, BackendURL, parse_url
from ..errors import BackendUnavailable, ConfigError
from . import require

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    RedisClient: TypeAlias = "redis.Redis | RedisCluster"
else:
    RedisClient = Any

__all__ = [
    "RedisClient",
    "create_client",
    "get_client",
    "is_cluster",
    "translate_errors",
]

_clients: dict[tuple[int, str, tuple[tuple[str, Any], ...]], Any] = {}
_clients_lock = threading.Lock()


def _common_kwargs(parsed: BackendURL, overrides: dict[str, Any]) -> dict[str, Any]:
    redis_mod = require("redis", feature="redis:// URLs")
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    opts = dict(parsed.options)
    opts.update(overrides)
    retries = opts.pop("retries", 2)
    cap = opts.pop("retry_backoff_cap", 0.25)
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": opts.pop("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        "socket_timeout": opts.pop("socket_timeout", DEFAULT_SOCKET_TIMEOUT),
        "health_check_interval": opts.pop("health_check_interval", 30),
        "retry": Retry(ExponentialBackoff(cap=cap, base=0.02), retries),
        "retry_on_error": [redis_mod.ConnectionError, redis_mod.TimeoutError],
    }
    if parsed.username:
        kwargs["username"] = parsed.username
    if parsed.password:
        kwargs["password"] = parsed.password
    kwargs.update(opts)
    return kwargs


def create_client(url: str | BackendURL, **overrides: Any) -> RedisClient:
    """Create a new Redis client for a ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://`` or ``redis+cluster://`` URL.

    :param overrides: keyword arguments for the redis-py client, applied over the
        URL's options (``socket_timeout=None`` for a blocking pub/sub reader, say).
    """
    parsed = parse_url(url, kinds=("redis",)) if isinstance(url, str) else url
    if parsed.kind != "redis":
        raise ConfigError(f"{parsed.scheme}:// is not a Redis URL")
    kwargs = _common_kwargs(parsed, overrides)
    import redis

    if parsed.scheme == "redis+cluster":
        from redis.cluster import ClusterNode

        kwargs.pop("db", None)
        kwargs.pop("health_check_interval", None)
        kwargs.pop("retry_on_error", None)
        kwargs.pop("sentinel_password", None)
        return _lazy_cluster(
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.hosts],  # type: ignore[no-untyped-call]
            **kwargs,
        )
    if parsed.scheme == "redis+sentinel":
        from redis.sentinel import Sentinel

        sentinel_kwargs = {
            "socket_connect_timeout": kwargs["socket_connect_timeout"],
            "socket_timeout": kwargs["socket_timeout"],
        }
        sentinel_password = kwargs.pop("sentinel_password", None)
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        master: redis.Redis = sentinel.master_for(parsed.service, db=parsed.db)  # type: ignore[no-untyped-call]
        return master
    kwargs.pop("sentinel_password", None)
    if parsed.scheme == "unix":
        return redis.Redis(unix_socket_path=parsed.path, db=parsed.db, **kwargs)
    host, port = parsed.hosts[0]
    if parsed.scheme == "rediss":
        kwargs["ssl"] = True
    return redis.Redis(host=host, port=port, db=parsed.db, **kwargs)


_lazy_cluster_class: Any = None


def _lazy_cluster(**kwargs: Any) -> RedisClient:
    """A ``RedisCluster`` that contacts the cluster on first use, not when created.

    redis-py's ``RedisCluster()`` fetches the slot map in its constructor, so an app
    created while the cluster is away would fail to start (and gunicorn would give
    up on its workers). This one is created at once; its first command connects,
    and raises :class:`~statekit.errors.BackendUnavailable` (then again on the next
    command) until the cluster answers, like a standalone client."""
    global _lazy_cluster_class
    if _lazy_cluster_class is None:
        from redis.cluster import RedisCluster

        class LazyRedisCluster(RedisCluster):  # type: ignore[misc]
            def __init__(self, **kw: Any) -> None:  # noqa: D107 - see _lazy_cluster
                object.__setattr__(self, "_statekit_kwargs", kw)
                object.__setattr__(self, "_statekit_init_lock", threading.Lock())

            def __getattr__(self, name: str) -> Any:
                # only reached for attributes the real constructor would have set
                if name.startswith("_statekit_") or self.__dict__.get("_statekit_started"):
                    raise AttributeError(name)
                with self.__dict__["_statekit_init_lock"]:
                    if not self.__dict__.get("_statekit_started"):
                        self.__dict__["_statekit_started"] = True
                        try:
                            with translate_errors("connecting to the Redis Cluster"):
                                RedisCluster.__init__(self, **self.__dict__["_statekit_kwargs"])
                        except BaseException:  # start over on the next use
                            for key in [k for k in self.__dict__ if not k.startswith("_statekit_")]:
                                del self.__dict__[key]
                            self.__dict__["_statekit_started"] = False
                            raise
                return object.__getattribute__(self, name)

            def close(self) -> None:
                if self.__dict__.get("_statekit_started"):
                    super().close()

        _lazy_cluster_class = LazyRedisCluster
    client: RedisClient = _lazy_cluster_class(**kwargs)
    return client


def get_client(url: str, **overrides: Any) -> RedisClient:
    """Return this process's shared client for *url* (one pool per URL and options),
    creating it on first use. Safe to call from many threads; a forked child gets
    its own client."""
    key = (os.getpid(), url, tuple(sorted(overrides.items())))
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = create_client(url, **overrides)
    return client


def is_cluster(client: Any) -> bool:
    """Whether *client* is a ``RedisCluster`` (multi-key commands need hash tags)."""
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis not installed
        return False
    return isinstance(client, RedisCluster)


class translate_errors:
    """Context manager: turn redis-py connection errors and timeouts into
    :class:`~statekit.errors.BackendUnavailable` (keeping the original as the cause).

    Usage: ``with translate_errors("cache get"): client.get(key)``.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        import redis

        # CLUSTERDOWN / TRYAGAIN (a cluster that lost a master, or is resharding) and
        # READONLY (a failed-over master) are replies, not connection errors, but
        # they say the same thing: the backend cannot serve this call right now.
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) or isinstance(
            exc,
            (
                redis.exceptions.RedisClusterException,
                redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError,
                redis.exceptions.ReadOnlyError,
            ),
        ):
            raise BackendUnavailable(f"Redis unavailable during {self.what}: {exc}") from exc
        return False
