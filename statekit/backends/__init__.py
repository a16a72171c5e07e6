"""Backends, selected by URL scheme and imported lazily.

Importing :mod:`statekit` never imports redis-py or boto3; the backend module for a
scheme is imported the first time a URL of that scheme is used, and a missing extra
is a :class:`~statekit.errors.ConfigError` that says which ``pip install`` fixes it.

Each capability (``cache``, ``sessions``, ``blobs``, ``broadcast``) keeps a table of
its built-in schemes; another distribution adds a scheme with an entry point in the
group ``statekit.<capability>`` (for example ``statekit.sessions``) whose name is the
scheme and whose value is ``"module:Class"``::

    [project.entry-points."statekit.sessions"]
    sqlite = "mypackage.sessions:SQLiteEngine"

:func:`load_backend` finds either. A built-in scheme cannot be replaced by an entry
point (a stray package must not take over ``redis://``).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

from ..errors import ConfigError

__all__ = ["EXTRAS", "load_backend", "require"]

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
    "fakeredis": "memory",
    "lupa": "memory",
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
            f"the {top!r} package is required for {feature}: pip install 'statekit[{extra}]'"
        ) from e


def load_backend(capability: str, scheme: str, builtins: dict[str, str]) -> Any:
    """The backend class for *scheme*: from *builtins* (``scheme -> "module:Class"``)
    or from an entry point in the group ``statekit.<capability>``.

    :raises ConfigError: no backend has that scheme (the message lists the known
        ones), or its module needs an extra that is not installed.
    """
    target = builtins.get(scheme)
    if target is not None:
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    for ep in _entry_points(capability):
        if ep.name == scheme:
            target = ep.value
            break
    if target is None:
        known = sorted(set(builtins) | {ep.name for ep in _entry_points(capability)})
        raise ConfigError(
            f"no {capability} backend for {scheme}:// URLs (known: "
            f"{', '.join(s + '://' for s in known)}; a package adds one with an entry point "
            f"in the group 'statekit.{capability}')"
        )
    return _load_entry_point(capability, scheme, target)


def _load_entry_point(capability: str, scheme: str, target: str) -> Any:
    """The object an entry point's *target* (``"module:Class"``) names; whatever
    goes wrong (a malformed value, a missing module or class, a plugin failing at
    import) is a :class:`ConfigError` naming the scheme and the entry point, never a
    traceback from inside the plugin nor a ``statekit[...]`` extra that does not exist."""
    where = f"the {capability} backend for {scheme}:// URLs (entry point {target!r} in the group " \
            f"'statekit.{capability}')"
    module, _, name = target.partition(":")
    module, name = module.strip(), name.partition("[")[0].strip()  # "mod:Class [extra]" as pip writes it
    if not module or not name:
        raise ConfigError(f"{where} is malformed: expected 'module:Class'")
    try:
        loaded = importlib.import_module(module)
    except ImportError as e:
        missing = e.name or module
        raise ConfigError(f"{where} cannot be imported: no module named {missing!r} "
                          "(install the package that provides it)") from e
    except Exception as e:
        raise ConfigError(f"{where} failed while importing: {type(e).__name__}: {e}") from e
    try:
        return functools.reduce(getattr, name.split("."), loaded)  # "module:Outer.Class" too
    except AttributeError:
        raise ConfigError(f"{where}: module {module!r} has no attribute {name!r}") from None


def _entry_points(capability: str) -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=f"statekit.{capability}"))
