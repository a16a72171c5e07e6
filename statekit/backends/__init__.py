"""Backends, selected by URL scheme and imported lazily.

Importing :mod:`statekit` never imports redis-py or boto3; the backend module for a
scheme is imported the first time a URL of that scheme is used, and a missing extra
is a :class:`~statekit.errors.ConfigError` that says which ``pip install`` fixes it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError

__all__ = ["EXTRAS", "require"]

#: distribution to import -> the extra that installs it
EXTRAS = {
    "redis": "redis",
    "boto3": "s3",
    "botocore": "s3",
    "msgpack": "msgpack",
    "puremagic": "blobs",
    "gunicorn": "server",
    "rich": "server",
    "moto": "embedded",
    "prometheus_client": "prometheus",
}


def require(module: str, *, feature: str) -> ModuleType:
    """Import *module* or raise a :class:`ConfigError` naming the extra to install.

    :param feature: what needs it, for the message (``"redis:// URLs"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise ConfigError(
            f"{feature} need the {top!r} package: pip install 'statekit[{extra}]'"
        ) from e
