"""statekit.metrics: thread-safe counters, snapshots, and the Prometheus collector."""

from __future__ import annotations

import gc
import sys
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from statekit.errors import ConfigError
from statekit.metrics import Counters, register_prometheus, snapshot


def test_counters_basics() -> None:
    c = Counters("cache", "t-basics", names=("hits", "misses"))
    assert c.counts() == {"hits": 0, "misses": 0}
    c.incr("hits")
    c.incr("hits", 4)
    c.incr("errors")
    c.set_gauge("age_seconds", 1.5)
    assert c.get("hits") == 5
    assert c.get("never") == 0
    assert c.as_dict() == {"hits": 5, "misses": 0, "errors": 1, "age_seconds": 1.5}
    assert c.gauges() == {"age_seconds": 1.5}
    c.reset()
    assert c.counts() == {"hits": 0, "misses": 0, "errors": 0}
    assert "cache[t-basics]" in repr(c)


def test_copies_are_copies() -> None:
    c = Counters("cache", "t-copies", names=("hits",))
    c.counts()["hits"] = 99
    c.as_dict()["hits"] = 99
    c.gauges()["g"] = 1
    assert c.as_dict() == {"hits": 0}


def test_incr_from_many_threads_loses_nothing() -> None:
    c = Counters("cache", "t-threads")
    per_thread, threads = 5000, 8
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            c.incr("hits")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert c.get("hits") == per_thread * threads


def test_snapshot_lists_live_components_only() -> None:
    a = Counters("sessions", "t-snap-a", names=("loads",))
    b = Counters("broadcast", "t-snap-b")
    a.incr("loads", 2)
    b.set_gauge("age", 3.0)
    snap = snapshot()
    assert snap["sessions"]["t-snap-a"] == {"loads": 2}
    assert snap["broadcast"]["t-snap-b"] == {"age": 3.0}
    del b
    gc.collect()
    assert "t-snap-b" not in snapshot().get("broadcast", {})


def test_two_instances_with_one_label_add_up() -> None:
    """Two stores with the same prefix in one process must not hide each other."""
    one = Counters("cache", "t-dup")
    two = Counters("cache", "t-dup")
    one.incr("hits", 2)
    two.incr("hits", 3)
    two.incr("misses")
    assert snapshot()["cache"]["t-dup"] == {"hits": 5, "misses": 1}
    registry = CollectorRegistry()
    register_prometheus(registry)
    text = generate_latest(registry).decode()
    assert text.count('statekit_cache_hits_total{instance="t-dup"}') == 1
    assert 'statekit_cache_hits_total{instance="t-dup"} 5.0' in text


def test_prometheus_exposition() -> None:
    c = Counters("blobs", "t-prom", names=("puts", "aborts"))
    c.incr("puts", 7)
    c.set_gauge("last_put_age", 0.25)
    registry = CollectorRegistry()
    collector = register_prometheus(registry)
    assert collector is not None
    text = generate_latest(registry).decode()
    assert "# TYPE statekit_blobs_puts_total counter" in text or "# TYPE statekit_blobs_puts counter" in text
    assert 'statekit_blobs_puts_total{instance="t-prom"} 7.0' in text
    assert 'statekit_blobs_aborts_total{instance="t-prom"} 0.0' in text
    assert "# TYPE statekit_blobs_last_put_age gauge" in text
    assert 'statekit_blobs_last_put_age{instance="t-prom"} 0.25' in text
    c.incr("puts")
    assert 'statekit_blobs_puts_total{instance="t-prom"} 8.0' in generate_latest(registry).decode()


def test_prometheus_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"pip install 'statekit\[prometheus\]'"):
        register_prometheus(CollectorRegistry())
