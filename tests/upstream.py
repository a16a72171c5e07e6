"""The test suites of the libraries statekit replaces, taken from the sdists of the
installed versions at test time (never copied into this tree).

``upstream_source("django")`` downloads the sdist of the installed Django with pip
(once: it is kept under ``.venv/upstream-sdists/``, or ``$STATEKIT_UPSTREAM_DIR``),
unpacks it and returns the unpacked project's root, so a test can import
``tests/cache/tests.py`` from it and run its generic test cases against a statekit
adapter. A machine that cannot reach the package index skips those tests, with the
reason.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
_lock = threading.Lock()


def _cache_dir() -> Path:
    configured = os.environ.get("STATEKIT_UPSTREAM_DIR")
    return Path(configured) if configured else ROOT / ".venv" / "upstream-sdists"


def upstream_source(dist: str) -> Path:
    """The unpacked sdist of the installed version of *dist* (``django``,
    ``cachelib``, ``flask-caching``); skips the calling test when pip cannot fetch it."""
    version = importlib.metadata.version(dist)
    cache = _cache_dir()
    marker = cache / f"{dist}-{version}.unpacked"
    cache.mkdir(parents=True, exist_ok=True)
    # a lock file too: the pytest-xdist workers of one run may both ask first
    with _lock, open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return Path(marker.read_text())
        download = cache / f"{dist}-{version}-download"
        download.mkdir(exist_ok=True)
        result = subprocess.run(  # noqa: S603 - pip, with a pinned requirement
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--no-binary", ":all:", "-d", str(download),
             f"{dist}=={version}"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        archives = sorted(download.glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            pytest.skip(f"cannot download the {dist} {version} sdist: {result.stderr.strip()[-300:]}")
        target = cache / f"{dist}-{version}"
        with tarfile.open(archives[0]) as tar:
            tar.extractall(target, filter="data")
        (top,) = [p for p in target.iterdir() if p.is_dir()]
        marker.write_text(str(top))
        return top


_OUTCOMES_PLUGIN = '''
import json, os

_outcomes, _errors, _deselected = {}, {}, []


def pytest_deselected(items):
    _deselected.extend(item.nodeid for item in items)


def pytest_runtest_logreport(report):
    if report.failed:
        _outcomes[report.nodeid] = "failed"
        _errors[report.nodeid] = f"{report.when}: {str(report.longrepr)[-1500:]}"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session):
    with open(os.environ["UPSTREAM_OUTCOMES"], "w") as f:
        json.dump({"outcomes": _outcomes, "errors": _errors, "deselected": _deselected}, f)
'''


#: the conftest of a generated directory that runs Django's own test modules: Django's
#: tests/ on the path, this directory's ``statekit_settings``, the test databases made
DJANGO_CONFTEST = """
import os
import sys

sys.path.insert(0, os.environ["DJANGO_TESTS_DIR"])
os.environ["DJANGO_SETTINGS_MODULE"] = "statekit_settings"

import django  # noqa: E402

django.setup()

from django.test.utils import setup_databases, setup_test_environment  # noqa: E402

setup_test_environment()
setup_databases(verbosity=0, interactive=False)
"""


def run_pytest(directory: Path, args: list[str], *, env: dict[str, str] | None = None,
               timeout: float = 180) -> dict[str, Any]:
    """Run pytest in a subprocess with *directory* as its rootdir (its own conftest,
    none of this project's) and return ``{"outcomes": {nodeid: "passed" | "failed" |
    "skipped"}, "errors": {nodeid: text}, "deselected": [nodeid, ...]}``."""
    (directory / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider -p no:valkey -p _upstream_outcomes\n"
    )
    (directory / "_upstream_outcomes.py").write_text(_OUTCOMES_PLUGIN)
    report = directory / "outcomes.json"
    full_env = {**os.environ, **(env or {}), "UPSTREAM_OUTCOMES": str(report),
                "PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(  # noqa: S603 - this interpreter's pytest on a generated directory
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "--rootdir", str(directory), *args],
        cwd=directory, env=full_env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if not report.is_file():
        raise AssertionError(f"pytest did not finish:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def run_django_tests(tmp_path: Path, settings: str, module: str, tests: str,
                     deselected: Iterable[str], redis_url: str) -> dict[str, Any]:
    """Run the generated test *module* (text *tests*, importing Django's own test
    modules from the installed sdist) under *settings* in a subprocess, with each of
    *deselected* deselected; :func:`run_pytest`'s report."""
    tests_dir = upstream_source("django") / "tests"
    (tmp_path / "statekit_settings.py").write_text(settings)
    (tmp_path / "conftest.py").write_text(DJANGO_CONFTEST)
    (tmp_path / module).write_text(textwrap.dedent(tests))
    args = [module]
    for name in deselected:
        args += ["--deselect", f"{module}::{name}"]
    return run_pytest(tmp_path, args, env={"STATEKIT_UPSTREAM_REDIS_URL": redis_url,
                                           "DJANGO_TESTS_DIR": str(tests_dir)})


# -- upstream runs in the background ---------------------------------------------------
#
# An upstream suite is a subprocess that keeps one core busy for 20-25 s while this
# process waits. The root conftest starts the runs of the upstream tests that were
# collected (each module's ``BACKGROUND``: test name -> ``run(tmp_path, redis_url)``)
# when the session starts, one at a time on a Redis of their own, beside the rest of
# the suite; each test then takes its run's report (or runs it itself when it was not
# started, e.g. without the conftest).

_background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upstream")
_started: dict[str, Future[Any] | Path] = {}
T = TypeVar("T")

# -- once per run under pytest-xdist ---------------------------------------------------
#
# Under ``make test`` the suite runs in two pytest-xdist workers, each with its own
# session: without this, each would run every background run and build every venv.
# :func:`share` (the root conftest, in a worker) names the directory the workers
# share; a run is then claimed by the first worker to start it (an exclusively
# created file there), whose result -- a JSON report, a path, or a ``Venv`` -- it
# writes beside the claim; the other worker's test waits for that file.

_shared: Path | None = None


def share(directory: Path | None) -> None:
    """Run each background run once for the workers sharing *directory*."""
    global _shared
    _shared = directory


def _result_file(name: str) -> Path:
    assert _shared is not None
    return _shared / f"upstream-{name}.json"


def _claim(name: str) -> bool:
    """True if this worker is the one to run *name* (always, outside xdist)."""
    if _shared is None:
        return True
    try:
        os.close(os.open(_shared / f"upstream-{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if hasattr(value, "root") and isinstance(value.root, Path):  # a Venv
        return {"__object__": [type(value).__module__, type(value).__qualname__, str(value.root)]}
    raise TypeError(f"cannot share a {type(value).__name__} between workers")


def _decode(data: dict[str, Any]) -> Any:
    if "__path__" in data:
        return Path(data["__path__"])
    if "__object__" in data:
        module, qualname, root = data["__object__"]
        return getattr(importlib.import_module(module), qualname)(Path(root))
    return data


def _publish(name: str, run: Callable[[], T]) -> T:
    """``run()``; under xdist its outcome written for the other workers (whole: a
    worker waiting for the file never reads half of it)."""
    if _shared is None:
        return run()

    def write(outcome: str) -> None:
        part = _result_file(name).with_suffix(".part")
        part.write_text(outcome)
        os.replace(part, _result_file(name))

    try:
        result = run()
    except BaseException as e:  # noqa: BLE001 - pytest.skip's Skipped included: passed on as is
        write(json.dumps({"skip": str(e)} if isinstance(e, pytest.skip.Exception) else {"error": repr(e)}))
        raise
    write(json.dumps({"result": result}, default=_encode))
    return result


def _wait_shared(name: str, timeout: float) -> Any:
    path = _result_file(name)
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other worker's run {name} did not finish in {timeout} s")
        time.sleep(0.2)
    outcome = json.loads(path.read_text(), object_hook=_decode)
    if "skip" in outcome:
        pytest.skip(outcome["skip"])
    if "error" in outcome:
        raise AssertionError(f"the other worker's run {name} failed: {outcome['error']}")
    return outcome["result"]


def start(name: str, run: Callable[[], Any]) -> None:
    """Start the run *name* in the background (once; under xdist, once for all workers)."""
    if name not in _started:
        _started[name] = _background.submit(_publish, name, run) if _claim(name) else _result_file(name)


def report(name: str, run: Callable[[], T]) -> T:
    """The report of the run *name*: the background one if :func:`start` started it
    (in this worker or another), else ``run()`` now."""
    started = _started.pop(name, None)
    if isinstance(started, Path):
        result: T = _wait_shared(name, timeout=600)
        return result
    return started.result(timeout=600) if started is not None else run()


def once(name: str, run: Callable[[], T]) -> T:
    """``run()`` once for the run: under xdist the first worker to ask runs it, the
    others wait for its result (a path, or a JSON report)."""
    if _claim(name):
        return _publish(name, run)
    result: T = _wait_shared(name, timeout=600)
    return result


def stop_background() -> None:
    """Wait for the runs under way; drop the ones not started."""
    # under xdist a run this worker claimed may be another worker's to report: run it
    _background.shutdown(wait=True, cancel_futures=_shared is None)
