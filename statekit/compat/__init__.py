"""Drop-in classes for other libraries' cache interfaces.

* :class:`statekit.compat.cachelib.StatekitCache` — a ``cachelib.BaseCache``, usable
  as Flask-Caching's ``CACHE_TYPE = "statekit.compat.cachelib.StatekitCache"``.

Each submodule imports its library only when imported itself.
"""

from __future__ import annotations

__all__: list[str] = []
