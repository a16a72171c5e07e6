"""statekit: make web app processes disposable.

Sessions, cached values, uploaded files and values every worker must see move out of
the process into Redis and S3, so any process can be killed, restarted or cloned.

Importing statekit is cheap and connects to nothing: the classes below are imported
on first use, and backends connect on their first call. ``statekit.cache`` is both
the module that defines :class:`~statekit.cache.Cache` and the default cache, set up
on first use from ``STATEKIT_CACHE_URL`` / ``STATEKIT_REDIS_URL``::

    from statekit import cache
    cache.set("greeting", "hello", ttl=60)
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import BackendURL, Settings, parse_url
from .errors import (
    BackendUnavailable,
    ConfigError,
    SerializationError,
    SignatureError,
    StatekitError,
)
from .serializers import JSONSerializer, MsgpackSerializer, Serializer, SignedPickleSerializer

__version__ = "0.1.0.dev0"

# name -> module that defines it, imported on first attribute access
_LAZY: dict[str, str] = {
    "AsyncBlobStore": "statekit.blobs",
    "AsyncBroadcaster": "statekit.broadcast",
    "AsyncCache": "statekit.cache",
    "AsyncSessionStore": "statekit.sessions",
    "Blob": "statekit.blobs",
    "BlobStore": "statekit.blobs",
    "Broadcaster": "statekit.broadcast",
    "Cache": "statekit.cache",
    "CircuitBreaker": "statekit.breaker",
    "DrainState": "statekit.lifecycle",
    "Lifecycle": "statekit.lifecycle",
    "LifecycleMiddleware": "statekit.lifecycle",
    "PresignedUpload": "statekit.blobs",
    "Session": "statekit.sessions",
    "SessionInfo": "statekit.sessions",
    "SessionStore": "statekit.sessions",
    "SharedValue": "statekit.broadcast",
    "SharedValues": "statekit.broadcast",
    "get_drain_state": "statekit.lifecycle",
    "open_blob_store": "statekit.blobs",
}
# submodules reachable as attributes without an explicit import
_SUBMODULES = frozenset({"cache"})

__all__ = [
    "AsyncBlobStore",
    "AsyncBroadcaster",
    "AsyncCache",
    "AsyncSessionStore",
    "BackendURL",
    "BackendUnavailable",
    "Blob",
    "BlobStore",
    "Broadcaster",
    "Cache",
    "CircuitBreaker",
    "ConfigError",
    "DrainState",
    "JSONSerializer",
    "Lifecycle",
    "LifecycleMiddleware",
    "MsgpackSerializer",
    "PresignedUpload",
    "SerializationError",
    "Serializer",
    "Session",
    "SessionInfo",
    "SessionStore",
    "Settings",
    "SharedValue",
    "SharedValues",
    "SignatureError",
    "SignedPickleSerializer",
    "StatekitError",
    "cache",
    "get_drain_state",
    "open_blob_store",
    "parse_url",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"statekit.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'statekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
