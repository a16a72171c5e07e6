"""The sweep after a clear against a generation counter that is lost and restarts
(``FLUSHALL``/``FLUSHDB``, eviction) while the sweep runs.

The interleaving is forced, not left to timing: the transport of the sweeping backend
is wrapped so that the counter is lost and live values are written right after the
sweep's first Redis call that follows its ``SCAN``. Until the check and the removal were
one script, that first call was a ``GET`` of the counter and the ``UNLINK`` came after
it: the names the ``SCAN`` found (generation 0) were live again, written after the
flush, and the ``UNLINK`` removed them (a set that succeeded, then a get that missed:
Flask-Caching's ``test_generic_set_get``, run after another test's clear and a FLUSHDB).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from statekit.cache import Cache
from statekit.cache import redis as rediscache

pytestmark = pytest.mark.redis

KEYS = {"0": 0, "1": 1, "2": 4}


def test_a_counter_lost_between_the_sweeps_check_and_its_unlink_keeps_live_values(
        redis_line_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with redis.Redis.from_url(redis_line_url) as client:
        _race(redis_line_url, client.flushdb, monkeypatch)


def test_the_same_on_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.redis import memory_client

    _race("memory://sweep-race", memory_client("sweep-race").flushall, monkeypatch)


def _race(url: str, flush: Callable[[], object], monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear, then sweep by hand with the counter lost and live values written right
    after the sweep's first call to Redis; the live values must survive the sweep."""
    submitted: list[tuple[Any, int]] = []
    monkeypatch.setattr(rediscache.sweeper, "submit",
                        lambda backend, below, delay=0.0: submitted.append((backend, below)))
    old = Cache(url, prefix="race")
    old.set_many(KEYS, ttl=None)
    old.clear()  # generation 1; the sweep of generation 0 is run below, by hand
    (backend, below), = submitted
    assert below == 1
    new = Cache(url, prefix="race")  # the next test's cache (another family, as in the harness)
    done: list[str] = []

    def after_first_call(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            reply = real(*args)
            if not done and args[0] != b"SCAN":  # (the walk's pages go through the transport too)
                done.append("flushed")
                flush()  # the counter is gone: generation 0 is the current one again
                new.set_many(KEYS, ttl=None)  # live values, named as the swept ones were
            return reply
        return call

    transport = backend.transport
    for name in ("command", "run"):
        monkeypatch.setattr(transport, name, after_first_call(getattr(transport, name)))
    try:
        removed = rediscache.sweep(backend, below)
    finally:
        new.close()
        old.close()
    assert done == ["flushed"]
    assert removed == 3  # the cleared generation's values, before the flush
    check = Cache(url, prefix="race")
    try:
        assert check.get_many(list(KEYS)) == KEYS
    finally:
        check.close()
