"""Django start-up (``StatekitConfig.ready``) fails loud on what would fail at the
first request: statekit's engine, cache or storage without a URL, a ``file://`` store
whose directory is missing, a backend whose extra is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from django_statekit.apps import check_settings
from statekit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
STORAGE = "django_statekit.storage.BlobStorage"
NO_URLS = dict(STATEKIT_REDIS_URL=None, STATEKIT_SESSION_URL=None, STATEKIT_CACHE_URL=None,
               STATEKIT_BLOBS_URL=None)


@pytest.fixture(autouse=True)
def _no_env_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NO_URLS:
        monkeypatch.delenv(name, raising=False)


def test_the_test_settings_pass() -> None:
    check_settings()  # what ready() ran at django.setup()


def test_session_engine_without_url(django_settings: Any) -> None:
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", **NO_URLS)
    with pytest.raises(ConfigError, match=r"SESSION_ENGINE.*STATEKIT_REDIS_URL.*Django's session engines"):
        check_settings()
    django_settings.set(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies")
    check_settings()  # Django's own sessions: nothing to check


@pytest.mark.parametrize("setting, value, message", [
    ("STATEKIT_SESSION_COOKIE_SECURE", "ture", "must be true or false"),
    ("STATEKIT_SESSION_RETRY_AFTER", "inf", "must be a finite number"),
])
def test_session_settings_read_per_response_are_checked_at_start(
        django_settings: Any, setting: str, value: str, message: str) -> None:
    """A typo in the cookie's Secure flag read as on (``not in ("0", "false", ...)``), a
    third parser; an infinite Retry-After raised ``OverflowError`` at the first 503."""
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_REDIS_URL="redis://127.0.0.1:1/0",
                        **{setting: value})
    with pytest.raises(ConfigError, match=f"{setting}='{value}' {message}"):
        check_settings()


def test_cache_without_url(django_settings: Any) -> None:
    django_settings.set(CACHES={"default": {"BACKEND": "django_statekit.cache.StatekitCache"}}, **NO_URLS)
    with pytest.raises(ConfigError, match=r"CACHES\['default'\].*LOCATION.*STATEKIT_REDIS_URL"):
        check_settings()


def test_storage_without_url_or_with_a_missing_root(django_settings: Any, tmp_path: Path) -> None:
    django_settings.set(STORAGES={"default": {"BACKEND": STORAGE}}, **NO_URLS)
    with pytest.raises(ConfigError, match=r"STORAGES\['default'\].*STATEKIT_BLOBS_URL"):
        check_settings()
    django_settings.set(STORAGES={"default": {"BACKEND": STORAGE,
                                              "OPTIONS": {"url": f"file://{tmp_path}/unmounted"}}})
    with pytest.raises(ConfigError, match=r"does not exist \(is the volume mounted\?\).*create=1"):
        check_settings()
    assert not (tmp_path / "unmounted").exists()
    django_settings.set(STORAGES={"default": {"BACKEND": STORAGE,
                                              "OPTIONS": {"url": f"file://{tmp_path}/new?create=1"}}})
    check_settings()
    assert (tmp_path / "new").is_dir()


START = textwrap.dedent("""
    import sys
    sys.modules[{blocked!r}] = None  # as if its extra were not installed
    import django
    from django.conf import settings
    settings.configure(
        SECRET_KEY="start-test-secret-0123456789abcdef",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.sessions", "django_statekit"],
        DATABASES={{}}, **{settings!r})
    try:
        django.setup()
    except Exception as e:
        print(type(e).__name__, e)
    else:
        print("started")
    from statekit.config import Settings
    from statekit.lifecycle import Lifecycle
    print(Lifecycle(Settings(**{lifecycle!r})).readiness())
""")


@pytest.mark.parametrize(("blocked", "settings", "lifecycle", "pip"), [
    ("boto3", {"STORAGES": {"default": {"BACKEND": STORAGE, "OPTIONS": {
        "url": "s3://bucket?endpoint_url=http://127.0.0.1:9&region=us-east-1"}}}},
     {"blobs_url": "s3://bucket?endpoint_url=http://127.0.0.1:9&region=us-east-1"}, "statekit[blobs]"),
    ("puremagic", {"STORAGES": {"default": {"BACKEND": STORAGE, "OPTIONS": {"url": "file:///tmp"}}}},
     {"blobs_url": "file:///tmp"}, "statekit[blobs]"),
    ("redis", {"SESSION_ENGINE": "django_statekit.sessions", "STATEKIT_REDIS_URL": "redis://127.0.0.1:9/0"},
     {"redis_url": "redis://127.0.0.1:9/0"}, "statekit[redis]"),
], ids=["s3-without-boto3", "file-without-puremagic", "sessions-without-redis"])
def test_missing_extra_fails_start_and_readiness(blocked: str, settings: dict[str, Any],
                                                  lifecycle: dict[str, str], pip: str) -> None:
    """The module made unimportable in a fresh interpreter (nothing uninstalled):
    ``django.setup()`` fails with the pip line, and ``/readyz`` reports it."""
    script = START.format(blocked=blocked, settings=settings, lifecycle=lifecycle)
    env_path = [str(ROOT / "adapters" / "django-statekit"), str(ROOT)]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": ":".join(env_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    started, readiness = out.stdout.splitlines()
    assert started.startswith("ConfigError ") and f"pip install '{pip}'" in started
    assert readiness.startswith("(503, ") and f"pip install '{pip}'" in readiness
