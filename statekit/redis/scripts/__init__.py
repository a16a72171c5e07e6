"""The Lua scripts, one ``<name>.lua`` file each, shipped in the wheel.

Every atomic operation has exactly one implementation, its script: the Redis
backends and the ``memory://`` backends (fakeredis with Lua) run the same text.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["Script", "load"]


@dataclass(frozen=True)
class Script:
    """A Lua script: its *name* (the file's stem), *source* and the SHA1 Redis names
    it by (``EVALSHA``)."""

    name: str
    source: str
    sha: bytes


@functools.cache
def load(name: str) -> Script:
    """The script in ``statekit/redis/scripts/<name>.lua``."""
    source = resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()
    return Script(name, source, sha)
