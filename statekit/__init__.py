"""statekit: make web app processes disposable.

Sessions, cached values, uploaded files and values every worker must see move out of
the process into Redis and S3, so any process can be killed, restarted or cloned.

Importing statekit is cheap and connects to nothing: the classes below are imported
on first use, and backends connect on their first call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import BackendURL, Settings, parse_url
from .errors import (
    BackendUnavailable,
    ConfigError,
    SerializationError,
    SignatureError,
    StatekitError,
)
from .serializers import JSONSerializer, MsgpackSerializer, Serializer, SignedPickleSerializer

if TYPE_CHECKING:
    pass

__version__ = "0.1.0.dev0"

# name -> module that defines it, imported on first attribute access
_LAZY: dict[str, str] = {}

__all__ = [
    "BackendURL",
    "BackendUnavailable",
    "ConfigError",
    "JSONSerializer",
    "MsgpackSerializer",
    "SerializationError",
    "Serializer",
    "Settings",
    "SignatureError",
    "SignedPickleSerializer",
    "StatekitError",
    "parse_url",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'statekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
