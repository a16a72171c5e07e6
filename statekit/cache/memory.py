"""``memory://name``: the cache in one process, for users' unit tests.

Not a second implementation: the Redis backend itself over
:func:`statekit.redis.memory_client` (an in-process fakeredis server with Lua per
*name*), so ``memory://`` runs the same cache script and the same code as Redis.
Nothing is shared with other processes; :func:`statekit.redis.reset_memory` (and
:func:`statekit.backends.memory.reset`) empties every ``memory://`` store. There is
no near cache here: one process has nothing to keep coherent with.

:raises ConfigError: the ``memory`` extra (fakeredis with Lua) is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import parse_url
from ..redis import memory_client
from .redis import RedisCacheBackend, RedisTransport

if TYPE_CHECKING:
    from ..redis.tracking import InvalidationListener

__all__ = ["MemoryCacheBackend"]


class MemoryCacheBackend(RedisCacheBackend):
    """:class:`~statekit.cache.redis.RedisCacheBackend` on a ``memory://`` server."""

    @classmethod
    def from_url(cls, url: str, base: str, options: Mapping[str, Any]) -> MemoryCacheBackend:
        name = parse_url(url, kinds=("memory",)).name
        return cls(RedisTransport(memory_client(name)), base)

    def near_listener(self, prefix: str) -> InvalidationListener | None:
        return None
