"""docs/settings.md is generated from statekit.settings_reference, and that registry
names every setting the code reads: a setting added without an entry fails here.

What counts as "read" is found in the source with ast, not by importing it:

* a string constant that is a whole ``STATEKIT_*`` name, anywhere in statekit/ or the
  adapters (the readers pass names as literals: ``get_setting("STATEKIT_X")``,
  ``_config(app, "STATEKIT_X")``, ``env.get("STATEKIT_X")``);
* a name built at run time (``f"STATEKIT_CACHE_{name}"``): its constant head must be a
  declared family (``DYNAMIC``), and the names the known families make are checked;
* a Django setting read from ``settings``/``django_settings`` (``getattr(settings,
  "X")``, ``settings.X``), a Flask one read from ``app.config``, and an environment
  variable read through ``os.environ``/``os.getenv``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit.settings_reference import DYNAMIC, READERS, SETTINGS, main, render

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "statekit", *sorted((ROOT / "adapters").glob("*/*_statekit"))]
NAME = re.compile(r"^STATEKIT_[A-Z0-9_]*[A-Z0-9]$")
UPPER = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
HEAD = re.compile(r"^[A-Z][A-Z0-9_]*_$")
#: read through an API rather than by name -> how
INDIRECT = {"PERMANENT_SESSION_LIFETIME": "Flask's app.permanent_session_lifetime"}


def _files() -> Iterator[Path]:
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if path.name != "settings_reference.py":
                yield path


def _is_settings(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("settings", "django_settings")


def _is_app_config(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "config"


def _is_os_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def _const(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def scan(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(setting names read, heads of names built at run time) in *tree*."""
    names: set[str] = set()
    heads: set[str] = set()
    inside_fstring: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            first = _const(node.values[0]) if node.values else None
            if first is not None and HEAD.match(first) and len(node.values) > 1:
                heads.add(first)
            inside_fstring.update(id(v) for v in node.values)
        elif isinstance(node, ast.Call):
            func, args = node.func, node.args
            if (isinstance(func, ast.Name) and func.id == "getattr" and len(args) >= 2
                    and _is_settings(args[0])):
                names.add(str(_const(args[1])))
            elif isinstance(func, ast.Attribute) and func.attr == "get" and args and (
                    _is_app_config(func.value) or _is_os_environ(func.value)):
                names.add(str(_const(args[0])))
            elif (isinstance(func, ast.Attribute) and func.attr == "getenv" and args
                  and isinstance(func.value, ast.Name) and func.value.id == "os"):
                names.add(str(_const(args[0])))
        elif isinstance(node, ast.Subscript) and (_is_app_config(node.value) or _is_os_environ(node.value)):
            names.add(str(_const(node.slice)))
        elif isinstance(node, ast.Attribute) and _is_settings(node.value) and UPPER.match(node.attr):
            names.add(node.attr)
    for node in ast.walk(tree):
        value = _const(node) if isinstance(node, ast.Constant) else None
        if value is not None and id(node) not in inside_fstring and NAME.match(value):
            names.add(value)
    return {n for n in names if n != "None" and UPPER.match(n)}, heads


def read_by_code() -> tuple[dict[str, str], set[str]]:
    names: dict[str, str] = {}
    heads: set[str] = set()
    for path in _files():
        found, built = scan(ast.parse(path.read_text(), str(path)))
        for name in found:
            names.setdefault(name, str(path.relative_to(ROOT)))
        heads |= built
    return names, heads


def test_docs_settings_md_is_the_generated_text() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == render(), (
        "docs/settings.md is out of date: run python -m statekit.settings_reference")


def test_every_setting_the_code_reads_has_an_entry() -> None:
    names, heads = read_by_code()
    registered = {s.name for s in SETTINGS}
    missing = {name: where for name, where in names.items() if name not in registered}
    assert not missing, f"settings read without an entry in statekit/settings_reference.py: {missing}"
    assert heads <= set(DYNAMIC), f"names built from undeclared heads: {heads - set(DYNAMIC)}"
    # the registry lists only what the code reads (or builds): no stale entries
    built = {s.name for s in SETTINGS if any(s.name.startswith(h) for h in heads)}
    assert registered - set(names) - built - set(INDIRECT) == set()


def test_the_names_built_at_run_time_have_entries() -> None:
    from flask_statekit import FEATURES
    from flask_statekit.cache import _OPTIONS
    from starlette_statekit import FEATURES as STARLETTE_FEATURES

    registered = {s.name for s in SETTINGS}
    made = {f"STATEKIT_{f.upper()}_ENABLED" for f in (*FEATURES, *STARLETTE_FEATURES)}
    made |= {f"STATEKIT_CACHE_{o}" for o in _OPTIONS}
    sessions = ast.parse((ROOT / "adapters/flask-statekit/flask_statekit/sessions.py").read_text())
    cookie = {str(_const(n.args[1])) for n in ast.walk(sessions) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Name) and n.func.id == "_cookie_option"}
    assert cookie, "no _cookie_option calls found: update this test"
    made |= {f"STATEKIT_SESSION_COOKIE_{c}" for c in cookie} | {f"SESSION_COOKIE_{c}" for c in cookie}
    assert made - registered == set()


def test_the_starlette_entries_are_what_the_starlette_adapter_reads() -> None:
    """``read_by`` names ``starlette`` exactly for the names starlette_statekit reads
    (literally, or as ``STATEKIT_<FEATURE>_ENABLED``): a name it starts reading, or
    stops reading, fails here until its entry says so."""
    from starlette_statekit import FEATURES

    package = ROOT / "adapters" / "starlette-statekit" / "starlette_statekit"
    read: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        read |= scan(ast.parse(path.read_text(), str(path)))[0]
    read |= {f"STATEKIT_{f.upper()}_ENABLED" for f in FEATURES}
    assert read == {s.name for s in SETTINGS if "starlette" in s.read_by}
    assert all(set(s.read_by) <= set(READERS) for s in SETTINGS)


def test_starlette_reads_keyword_then_config_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The order the reference states for the Starlette reader."""
    from starlette.config import Config

    from starlette_statekit import StateKit

    monkeypatch.setenv("STATEKIT_KEY_PREFIX", "from-env")
    monkeypatch.setenv("STATEKIT_REDIS_URL", "redis://env:6379/0")
    config = {"STATEKIT_KEY_PREFIX": "from-config", "STATEKIT_CACHE_URL": "redis://config:6379/0"}
    assert StateKit(config=config, key_prefix="from-keyword").settings().key_prefix == "from-keyword"
    settings = StateKit(config=config).settings()
    assert (settings.key_prefix, settings.cache_url, settings.session_url) == (
        "from-config", "redis://config:6379/0", "redis://env:6379/0")
    assert StateKit(config=Config(environ={"STATEKIT_KEY_PREFIX": "starlette-config"})).settings(
        ).key_prefix == "starlette-config"
    assert StateKit().settings().key_prefix == "from-env"


def test_a_setting_added_without_an_entry_fails() -> None:
    code = 'def f(app):\n    return _config(app, "STATEKIT_BRAND_NEW", 1), getattr(settings, "NEW_ONE", 0)\n'
    names, _ = scan(ast.parse(code))
    assert names == {"STATEKIT_BRAND_NEW", "NEW_ONE"}
    assert names.isdisjoint(s.name for s in SETTINGS)
    _, heads = scan(ast.parse('key = f"STATEKIT_NEWFAMILY_{name}"\n'))
    assert heads == {"STATEKIT_NEWFAMILY_"} and not heads <= set(DYNAMIC)


def test_every_entry_is_documented() -> None:
    seen: set[str] = set()
    for s in SETTINGS:
        assert s.name not in seen, f"{s.name} listed twice"
        seen.add(s.name)
        assert s.type and s.doc and s.read_by, s
        assert s.section in ("statekit", "framework", "other"), s
        assert s.env in ("", s.name), s


def test_generator_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "settings.md"
    assert main(["--check", str(target)]) == 1
    assert main([str(target)]) == 0
    assert target.read_text() == render()
    assert main(["--check", str(target)]) == 0
    proc = subprocess.run([sys.executable, "-m", "statekit.settings_reference", "-"], capture_output=True,
                          text=True, check=True)
    assert proc.stdout == render()
