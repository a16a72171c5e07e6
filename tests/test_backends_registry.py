"""The backend registry (:func:`statekit.backends.load_backend`) and what a user sees
when a backend cannot be had: a built-in scheme is never taken over, a broken entry
point is a ConfigError naming it, memory:// without its extra names the pip line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from statekit import backends
from statekit.backends import load_backend
from statekit.errors import ConfigError

BUILTINS = {"file": "statekit.blobs.local:LocalBackend"}


class Good:
    """A backend class the tests register."""


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Register ``scheme -> value`` as another distribution's entry point would."""
    registered: list[EntryPoint] = []
    monkeypatch.setattr(backends, "_entry_points",
                        lambda capability: [ep for ep in registered if ep.group == f"statekit.{capability}"])

    def add(scheme: str, value: str, capability: str = "blobs") -> None:
        registered.append(EntryPoint(scheme, value, f"statekit.{capability}"))

    return add


class Outer:
    Good = Good


@pytest.mark.parametrize("value", [f"{__name__}:Good", f"{__name__}:Outer.Good", f"{__name__}:Good [gcs]"])
def test_an_entry_point_finds_its_class(register: Any, value: str) -> None:
    register("good", value)
    assert load_backend("blobs", "good", BUILTINS) is Good


def test_a_builtin_scheme_cannot_be_taken_over(register: Any) -> None:
    register("file", f"{__name__}:Good")
    from statekit.blobs.local import LocalBackend

    assert load_backend("blobs", "file", BUILTINS) is LocalBackend


PLUGINS = {
    "r2_plugin_empty": "",
    "r2_plugin_raises": "raise RuntimeError('a bug in the plugin')\n",
    "r2_plugin_needs": "import r2_missing_dependency  # noqa: F401\n",
}


@pytest.mark.parametrize(("value", "names"), [
    ("r2_plugin_empty:NoSuchClass", "NoSuchClass"),  # the class is not there
    ("r2_plugin_empty", "module:Class"),  # no ":Class" at all
    ("r2_not_installed.sub:Backend", "r2_not_installed"),  # the module is not installed
    ("r2_plugin_raises:Backend", "a bug in the plugin"),  # the module fails while importing
    ("r2_plugin_needs:Backend", "r2_missing_dependency"),  # it imports a package that is missing
])
def test_a_broken_entry_point_is_a_config_error_naming_it(
    register: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, value: str, names: str
) -> None:
    for module, source in PLUGINS.items():
        (tmp_path / f"{module}.py").write_text(source)
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    register("gcs", value)
    with pytest.raises(ConfigError) as info:
        load_backend("blobs", "gcs", BUILTINS)
    message = str(info.value)
    assert "gcs://" in message and repr(value) in message, message  # which scheme, which entry point
    assert names in message, message  # what is wrong with it
    assert "statekit[" not in message, message  # no statekit extra installs a third party's package


def test_memory_urls_without_the_memory_extra_name_the_pip_line() -> None:
    """In a process where fakeredis cannot be imported, every memory:// capability that
    runs on it fails at first use with the pip line; blobs (a dict store) and
    ``backends.memory.reset()`` still work."""
    code = textwrap.dedent("""
        import sys
        sys.modules["fakeredis"] = None  # as if the memory extra were not installed
        from statekit import Broadcaster, Cache, SessionStore, SharedValue
        from statekit.backends.memory import reset
        from statekit.blobs import BlobStore
        from statekit.errors import ConfigError
        for use in (lambda: Cache("memory://x").set("a", 1),
                    lambda: SessionStore("memory://x", secret_keys=["k" * 32]).load("nope"),
                    lambda: Broadcaster("memory://x").publish("n", 1),
                    lambda: SharedValue("n", url="memory://x").get()):
            try:
                use()
            except ConfigError as e:
                print("ERROR", e)
        print("BLOB", BlobStore("memory://x").put(b"abc").size)
        reset()
        print("RESET")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    errors = [line for line in out.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 4, out.stdout
    assert all("pip install 'statekit[memory]'" in line for line in errors), out.stdout
    assert "BLOB 3" in out.stdout and "RESET" in out.stdout


def test_reset_empties_every_memory_store() -> None:
    from statekit import Broadcaster, Cache
    from statekit.backends.memory import reset
    from statekit.blobs import BlobStore

    cache, blobs, bc = Cache("memory://r2reset"), BlobStore("memory://r2reset"), Broadcaster("memory://r2reset")
    cache.set("k", 1)
    key = blobs.put(b"abc").key
    bc.publish("n", 1)
    reset()
    assert cache.get("k") is None
    assert not blobs.exists(key)
    assert bc.retained("n") is None
