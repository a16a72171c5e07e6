"""cachelib's own cache tests (``tests/common.py`` and the optional-method suites of
the installed cachelib's sdist) run against ``statekit.compat.cachelib.StatekitCache``
on the suite's private Redis.

They run as cachelib runs them for its ``RedisCache`` (``tests/test_redis_cache.py``):
every suite once without a key prefix and once with one, on the plain class and on a
subclass that sets a serializer of its own, plus its callable-key test. They run in a
subprocess: cachelib's modules import ``conftest`` by name, which must be theirs
(its ``xprocess`` server fixtures are not needed: the Redis is ours). Every test not
run is listed in :data:`DESELECTED`, and documented in docs/differences.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import upstream
from upstream import ROOT, run_pytest, upstream_source

pytestmark = pytest.mark.redis

MODULE = "test_statekit_cachelib.py"

#: upstream tests statekit does not pass on purpose; each is a row in docs/differences.md
DESELECTED: dict[str, str] = {}

CONFTEST = """
import importlib.util
import os
import sys
import types

# cachelib's conftest imports xprocess for the servers it starts; ours is started already
sys.modules["xprocess"] = types.SimpleNamespace(ProcessStarter=object)
_spec = importlib.util.spec_from_file_location(
    "cachelib_conftest", os.path.join(os.environ["CACHELIB_TESTS_DIR"], "conftest.py"))
_upstream = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_upstream)
sys.path.append(os.environ["CACHELIB_TESTS_DIR"])

TestData = _upstream.TestData
under_uwsgi = _upstream.under_uwsgi
key_prefix = _upstream.key_prefix


def pytest_configure(config):
    config.addinivalue_line("markers", "network: cachelib's marker for tests that need a server")
"""

TESTS = """
import ast
import os

import pytest
import test_redis_cache as upstream_redis
from clear import ClearTests
from common import CommonTests
from delete_many_with_prefix import DeleteManyWithPrefixTests
from has import HasTests
from serializer import SerializerTests

from statekit.compat.cachelib import StatekitCache

URL = os.environ["STATEKIT_UPSTREAM_REDIS_URL"]


class LiteralSerializer:
    # cachelib's CustomCache sets a serializer that eval()s; this one parses literals only
    def dumps(self, value):
        return repr(value).encode()

    def loads(self, bvalue):
        return None if bvalue is None else ast.literal_eval(bvalue.decode())


class CustomCache(StatekitCache):
    serializer = LiteralSerializer()


@pytest.fixture(autouse=True, params=[StatekitCache, CustomCache])
def cache_factory(request, key_prefix):
    def _factory(self, *args, **kwargs):
        kwargs.setdefault("key_prefix", key_prefix)
        cache = request.param(URL, *args, **kwargs)
        cache.clear()
        return cache

    request.cls.cache_factory = _factory


class TestStatekitCache(CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests,
                        SerializerTests):
    test_callable_key = upstream_redis.TestRedisCache.test_callable_key
"""


def _run(tmp_path: Path, redis_url: str) -> dict[str, dict[str, str]]:
    tests_dir = upstream_source("cachelib") / "tests"
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / MODULE).write_text(TESTS)
    args = [MODULE]
    for name in DESELECTED:
        args += ["--deselect", f"{MODULE}::{name}"]
    return run_pytest(tmp_path, args, env={"STATEKIT_UPSTREAM_REDIS_URL": redis_url,
                                           "CACHELIB_TESTS_DIR": str(tests_dir)})


#: started at the session's start by the root conftest (upstream.start)
BACKGROUND = {"test_cachelibs_suites_pass": _run}


def test_cachelibs_suites_pass(tmp_path: Path, redis_url: str) -> None:
    report = upstream.report("test_cachelibs_suites_pass", lambda: _run(tmp_path, redis_url))
    outcomes = report["outcomes"]
    failed = {k: report["errors"].get(k, "") for k, v in outcomes.items() if v != "passed"}
    assert not failed, "\n\n".join(f"{k}\n{v}" for k, v in failed.items())
    assert len(outcomes) >= 4 * 20, outcomes  # 2 classes x 2 prefixes x every test
    assert sorted(report["deselected"]) == sorted(f"{MODULE}::{n}" for n in DESELECTED)


def test_deselected_tests_are_documented() -> None:
    differences = (ROOT / "docs" / "differences.md").read_text()
    section = differences.split("## cachelib", 1)[1].split("\n## ", 1)[0]
    for name in DESELECTED:
        assert f"`{name.rsplit('::', 1)[-1].split('[')[0]}`" in section, name
