"""The public surface: ``statekit.__all__`` is complete and sorted, and every public
module under ``statekit/`` (found by walking the package, so new modules are covered
as they land) has a sorted ``__all__`` whose names resolve."""

from __future__ import annotations
import __future__

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import typing
from types import ModuleType

import pytest

import statekit


def isort_key(name: str) -> tuple[int, list[int | str]]:
    """ruff RUF022's "isort-style" order: SCREAMING_CASE, then CamelCase, then the
    rest, each in natural order."""
    if re.fullmatch(r"[A-Z0-9_]+", name) and re.search("[A-Z]", name):
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return kind, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def is_sorted(names: list[str]) -> bool:
    return names == sorted(names) or names == sorted(names, key=isort_key)


def _is_helper_import(name: str, value: object) -> bool:
    """``from typing import Any`` / ``from __future__ import annotations`` leave
    names behind that are not part of the API."""
    return getattr(typing, name, None) is value or isinstance(value, __future__._Feature)


def public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(statekit.__path__, "statekit."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue  # private modules and __main__ (which runs the CLI on import)
        names.append(info.name)
    return sorted(names)


PUBLIC_MODULES = public_modules()


def test_the_walk_finds_the_foundation() -> None:
    assert {
        "statekit.backends", "statekit.backends.memory", "statekit.redis", "statekit.cli",
        "statekit.config", "statekit.embedded", "statekit.errors", "statekit.metrics",
        "statekit.pytest_plugin", "statekit.serializers",
    } <= set(PUBLIC_MODULES)


def test_statekit_all_is_sorted_and_unique() -> None:
    assert is_sorted(list(statekit.__all__))
    assert len(set(statekit.__all__)) == len(statekit.__all__)


def test_statekit_all_resolves() -> None:
    for name in statekit.__all__:
        assert getattr(statekit, name) is not None, name
    assert set(statekit.__all__) <= set(dir(statekit))


def test_statekit_all_is_complete() -> None:
    missing = []
    for name in dir(statekit):
        if name.startswith("_"):
            continue
        value = getattr(statekit, name)
        if inspect.ismodule(value) or _is_helper_import(name, value):
            continue
        if name not in statekit.__all__:
            missing.append(name)
    assert missing == [], f"public names missing from statekit.__all__: {missing}"


def test_lazy_names_are_exported_and_resolve() -> None:
    lazy: dict[str, str] = getattr(statekit, "_LAZY", {})
    for name, module in lazy.items():
        assert name in statekit.__all__, name
        assert getattr(importlib.import_module(module), name) is getattr(statekit, name)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'not_a_thing'"):
        _ = statekit.not_a_thing  # type: ignore[attr-defined]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_module_all(module_name: str) -> None:
    module: ModuleType = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    names = list(module.__all__)
    assert is_sorted(names), f"{module_name}.__all__ is not sorted"
    assert len(set(names)) == len(names), f"{module_name}.__all__ has duplicates"
    unresolved = [n for n in names if not hasattr(module, n)]
    assert unresolved == [], f"{module_name}.__all__ names missing attributes: {unresolved}"


def test_importing_statekit_imports_no_backend_library() -> None:
    """Importing statekit is cheap and needs no extra: no redis, boto3 or msgpack."""
    code = (
        "import sys, statekit; "
        "print(','.join(m for m in ('redis', 'boto3', 'botocore', 'msgpack', 'moto') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
