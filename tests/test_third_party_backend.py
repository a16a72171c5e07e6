"""A backend added from outside the package, on the user's path.

``examples/sqlite_sessions`` is a distribution of its own: a session engine on
sqlite3 registered by the entry point ``sqlite`` in the group ``statekit.sessions``
(docs/backends.md walks through it). Its wheel and statekit's are built and installed,
not editable, with pytest, into a fresh venv (the helpers and the statekit wheel of
tests/test_user_path.py); then, as subprocesses in that venv:

* the example's own tests, which subclass the shipped contract, all pass;
* a ``SessionStore("sqlite://...")`` saves a session in one process and another
  process loads it, the engine found by its entry point only;
* docs/backends.md's ``python`` blocks run (with tests/test_docs.py's runner), so
  the guide shows what works.

Select them with ``-m userpath``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import upstream
from test_docs import _fences  # tests/ is on sys.path (rootdir-relative test modules)
from test_packaging import build_wheel, run_wheels
from test_user_path import Venv, make_venv

from statekit.testing.contracts.sessions import SessionEngineContract

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sqlite_sessions"
GUIDE = ROOT / "docs" / "backends.md"

pytestmark = [pytest.mark.userpath]


def _backend_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with the example's wheel and its test extra (pytest, statekit[msgpack]),
    statekit from its built wheel, and sybil for the guide."""
    wheels = run_wheels(tmp_path_factory)
    built = build_wheel(EXAMPLE, tmp_path_factory.mktemp("build-sqlite-sessions"))
    version = built.name.split("-")[1]
    venv = make_venv(tmp_path_factory.mktemp("backend-author") / "venv")
    venv.pip_install(["--find-links", str(built.parent), f"statekit-sqlite-sessions[test]=={version}",
                      "sybil"], wheels)
    return venv


#: built beside the suite from the session's start (conftest.py), like the user-path venv
BACKGROUND_FIXTURES = {"backend_venv": _backend_venv}


@pytest.fixture(scope="module")
def backend_venv(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """:func:`_backend_venv`, built in the background if conftest.py started it."""
    return upstream.report("backend_venv", lambda: _backend_venv(tmp_path_factory))


def contract_tests() -> list[str]:
    """The shipped contract's test names (each parametrised case counted once)."""
    return sorted(name for name in dir(SessionEngineContract) if name.startswith("test_"))


def test_the_example_passes_the_whole_shipped_contract(backend_venv: Venv, tmp_path: Path) -> None:
    project = tmp_path / "project"  # the tests and their pytest settings, not the source
    project.mkdir()
    shutil.copy(EXAMPLE / "pyproject.toml", project)
    shutil.copytree(EXAMPLE / "tests", project / "tests")
    result = backend_venv.run([str(backend_venv.bin / "pytest"), "-v", "-p", "no:cacheprovider"], project,
                              backend_venv.env(), timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = set(re.findall(r"::TestSQLiteSessions::(test_\w+)(?:\[[^\]]*\])? PASSED", output))
    assert passed == set(contract_tests()), output
    assert not re.search(r"\b(SKIPPED|FAILED|ERROR|XFAIL)\b", output), output


SAVE = """
import importlib.metadata, json, sys
from statekit.sessions import SessionStore

before = "statekit_sqlite_sessions" in sys.modules
store = SessionStore(sys.argv[1], secret_keys=["third-party"])
session = store.create({"cart": ["apple"], "n": 1}, user_id="alice")
session.incr("n", 41)
(ep,) = [e for e in importlib.metadata.entry_points(group="statekit.sessions") if e.name == "sqlite"]
print(json.dumps({"cookie": store.sign(session.sid), "imported_before": before,
                  "engine": type(store.engine).__module__ + ":" + type(store.engine).__qualname__,
                  "entry_point": ep.value, "engine_file": sys.modules[type(store.engine).__module__].__file__,
                  "statekit_file": sys.modules["statekit"].__file__}))
store.close()
"""

LOAD = """
import json, sys
from statekit.sessions import SessionStore

store = SessionStore(sys.argv[1], secret_keys=["third-party"])
loaded = store.open(sys.argv[2])
print(json.dumps({"new": loaded.new, "data": dict(loaded), "user": loaded.user_id,
                  "listed": [i.handle for i in store.list_user_sessions("alice")]}))
store.close()
"""


def test_a_store_finds_the_engine_by_its_entry_point(backend_venv: Venv, tmp_path: Path) -> None:
    """One process saves a session through the public API, another loads it from its
    cookie; neither imports the engine: the URL's scheme finds it."""
    db = tmp_path / "data" / "s.db"
    db.parent.mkdir()
    url = f"sqlite://{db}"
    env = backend_venv.env()
    saved = backend_venv.run([str(backend_venv.python), "-c", SAVE, url], tmp_path, env)
    assert saved.returncode == 0, saved.stderr
    info = json.loads(saved.stdout)
    assert info["imported_before"] is False
    assert info["engine"] == info["entry_point"] == "statekit_sqlite_sessions:SQLiteEngine"
    venv_root = str(backend_venv.root)
    assert info["engine_file"].startswith(venv_root) and info["statekit_file"].startswith(venv_root), info
    assert db.stat().st_size > 0
    loaded = backend_venv.run([str(backend_venv.python), "-c", LOAD, url, info["cookie"]], tmp_path, env)
    assert loaded.returncode == 0, loaded.stderr
    out = json.loads(loaded.stdout)
    assert out["new"] is False and out["data"] == {"cart": ["apple"], "n": 42} and out["user"] == "alice"
    assert len(out["listed"]) == 1


def test_the_guide_runs(backend_venv: Venv, tmp_path: Path) -> None:
    """docs/backends.md's ``python`` blocks, run by tests/test_docs.py's runner in the
    venv where the example is installed (its other blocks are shell commands and
    excerpts this module runs or checks by other means)."""
    text = GUIDE.read_text()
    blocks = _fences(text).count("python") + text.count("<!-- invisible-code-block: python")
    assert blocks >= 1
    result = backend_venv.run([str(backend_venv.python), str(ROOT / "tests" / "test_docs.py"), str(GUIDE)],
                              tmp_path, backend_venv.env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"{blocks} examples passed" in output, output


def test_the_session_url_setting_names_a_third_party_scheme(backend_venv: Venv, tmp_path: Path) -> None:
    """STATEKIT_SESSION_URL may name a scheme a registered engine serves (an unknown
    one stays a ConfigError at start: tests/test_config.py)."""
    code = ("from statekit.sessions import SessionStore\n"
            "print(SessionStore(secret_keys=['k']).create({'a': 1}).sid)")
    env = backend_venv.env(STATEKIT_SESSION_URL=f"sqlite://{tmp_path}/s.db")
    result = backend_venv.run([str(backend_venv.python), "-c", code], tmp_path, env)
    assert result.returncode == 0, result.stderr
