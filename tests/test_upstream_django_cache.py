"""Django's own cache tests (``tests/cache/tests.py`` of the installed Django's sdist)
run against ``django_statekit.cache.StatekitCache`` on the suite's private Redis.

``BaseCacheTests`` runs as Django runs it for its ``RedisCache`` (the ``cull``
caches excluded: culling is a bounded-memory backend's duty, Redis evicts by its
own policy); the middleware, ``cache_page``, template-response and ``utils`` test
cases, which Django runs on ``LocMemCache``, run with every cache they configure
moved to statekit (one namespace per ``LOCATION``, so their caches stay apart).
The tests run in a subprocess with Django's test settings of their own: Django's
``tests/`` directory is put first on ``sys.path``, which this process must not see.

Every test that is not run is listed in :data:`DESELECTED` with the reason, and
documented in docs/differences.md ("Django cache").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import upstream
from upstream import ROOT, run_django_tests

pytestmark = pytest.mark.redis

MODULE = "test_statekit_django_cache.py"

#: upstream tests statekit does not pass on purpose; each is a row in docs/differences.md
DESELECTED: dict[str, str] = {}

SETTINGS = """
SECRET_KEY = "django-upstream-cache-tests"
INSTALLED_APPS = [
    "django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions",
    "django.contrib.messages", "cache",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3"},
             "other": {"ENGINE": "django.db.backends.sqlite3"}}
CACHES = {"default": {"BACKEND": "django_statekit.cache.StatekitCache",
                      "LOCATION": __import__("os").environ["STATEKIT_UPSTREAM_REDIS_URL"]}}
ROOT_URLCONF = "urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [],
              "APP_DIRS": True, "OPTIONS": {"context_processors": [
                  "django.template.context_processors.request"]}}]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
LANGUAGE_CODE = "en"
"""


TESTS = """
import os

from django.test import TestCase, override_settings

from cache import tests as upstream

URL = os.environ["STATEKIT_UPSTREAM_REDIS_URL"]
STATEKIT = {"BACKEND": "django_statekit.cache.StatekitCache", "LOCATION": URL}


def on_statekit(case):
    # every cache the test case configures, moved to statekit; LocMemCache's
    # LOCATION (which keeps its stores apart) becomes a namespace
    caches = {}
    for alias, params in case._overridden_settings["CACHES"].items():
        location = params.get("LOCATION") or ""
        caches[alias] = {**params, **STATEKIT,
                         "OPTIONS": {"namespace": f"django-{location}" if location else "django"}}
    return override_settings(CACHES=caches)(type(f"Statekit{case.__name__}", (case,), {}))


@override_settings(CACHES=upstream.caches_setting_for_tests(base=STATEKIT,
                                                            exclude={"cull", "zero_cull"}))
class StatekitCacheTests(upstream.BaseCacheTests, TestCase):
    pass


for _case in (upstream.CacheUtils, upstream.PrefixedCacheUtils, upstream.CacheHEADTest,
              upstream.CacheI18nTest, upstream.PrefixedCacheI18nTest,
              upstream.CacheMiddlewareTest, upstream.TestWithTemplateResponse):
    _moved = on_statekit(_case)
    globals()[_moved.__name__] = _moved
del _case, _moved
"""


ASYNC_MODULE = "test_statekit_django_cache_async.py"

#: upstream tests the async run does not pass on purpose; each is named in docs/differences.md
ASYNC_DESELECTED: dict[str, str] = {
    f"StatekitAsyncCacheTests::{name}": "pickles a lazy QuerySet: its query runs on the event loop, "
    "which Django refuses (SynchronousOnlyOperation) without a thread hop"
    for name in ("test_cache_read_for_model_instance_with_deferred",
                 "test_cache_write_for_model_instance_with_deferred")
}

#: Django 5.2 ships async cache tests only for DummyCache (tests/cache/tests_async.py,
#: which asserts that nothing is stored); so BaseCacheTests runs a second time with
#: every sync method it calls sent to its async twin (``aget`` for ``get``, ...) on one
#: event loop: Django's whole generic suite then checks the native async methods
ASYNC_TESTS = """
import asyncio
import os
import threading

from django.test import TestCase, override_settings

from cache import tests as upstream
from django_statekit.cache import StatekitCache

URL = os.environ["STATEKIT_UPSTREAM_REDIS_URL"]
LOOP = asyncio.new_event_loop()
threading.Thread(target=LOOP.run_forever, name="statekit-async-cache", daemon=True).start()


def through_async(name):
    def method(self, *args, **kwargs):
        return asyncio.run_coroutine_threadsafe(getattr(self, "a" + name)(*args, **kwargs), LOOP).result(30)

    method.__name__ = name
    return method


class AsyncDrivenCache(StatekitCache):
    \"\"\"StatekitCache whose sync API runs its async methods.\"\"\"


for _name in ("add", "get", "set", "touch", "get_or_set", "delete", "get_many", "has_key", "incr",
              "decr", "set_many", "delete_many", "clear", "incr_version", "decr_version"):
    setattr(AsyncDrivenCache, _name, through_async(_name))

ASYNC = {"BACKEND": "test_statekit_django_cache_async.AsyncDrivenCache", "LOCATION": URL}


@override_settings(CACHES=upstream.caches_setting_for_tests(base=ASYNC, exclude={"cull", "zero_cull"}))
class StatekitAsyncCacheTests(upstream.BaseCacheTests, TestCase):
    pass
"""


def _run_async(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    return run_django_tests(tmp_path, SETTINGS, ASYNC_MODULE, ASYNC_TESTS, ASYNC_DESELECTED, redis_url)


def _run_sync(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    return run_django_tests(tmp_path, SETTINGS, MODULE, TESTS, DESELECTED, redis_url)


#: started at the session's start by the root conftest (upstream.start)
BACKGROUND = {"test_djangos_cache_suite_passes_through_the_async_methods": _run_async,
              "test_djangos_cache_suite_passes": _run_sync}


def test_djangos_cache_suite_passes_through_the_async_methods(tmp_path: Path, redis_url: str) -> None:
    report = upstream.report("test_djangos_cache_suite_passes_through_the_async_methods",
                             lambda: _run_async(tmp_path, redis_url))
    passed = _passed(report, ASYNC_MODULE, ASYNC_DESELECTED)
    print(f"Django's BaseCacheTests through the async methods: {passed} passed")
    assert passed >= 45  # 49 of BaseCacheTests (Django 5.2)


def _passed(report: dict[str, Any], module: str, deselected: dict[str, str]) -> int:
    """How many tests passed; none failed and the deselected ones were deselected."""
    outcomes = report["outcomes"]
    failed = {k: report["errors"].get(k, "") for k, v in outcomes.items() if v == "failed"}
    assert not failed, "\n\n".join(f"{k}\n{v}" for k, v in failed.items())
    assert sorted(report["deselected"]) == sorted(f"{module}::{n}" for n in deselected)
    return sum(1 for v in outcomes.values() if v == "passed")


def test_djangos_cache_suite_passes(tmp_path: Path, redis_url: str) -> None:
    report = upstream.report("test_djangos_cache_suite_passes", lambda: _run_sync(tmp_path, redis_url))
    assert _passed(report, MODULE, DESELECTED) >= 100


def test_deselected_tests_are_documented() -> None:
    differences = (ROOT / "docs" / "differences.md").read_text()
    section = differences.split("## Django cache", 1)[1].split("\n## ", 1)[0]
    for name in [*DESELECTED, *ASYNC_DESELECTED]:
        assert f"`{name.rsplit('::', 1)[-1]}`" in section, name
