"""Counters every component keeps, readable from Python and, optionally, Prometheus.

Each component (a :class:`~statekit.cache.Cache`, a session store, a broadcaster)
owns a :class:`Counters` object registered under a component name and instance
label. :func:`snapshot` reads all of them; :func:`register_prometheus` exposes them
through ``prometheus_client`` (``pip install 'statekit[prometheus]'``) as
``statekit_<component>_<name>_total`` counters and ``statekit_<component>_<name>``
gauges, each labelled with ``instance``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from .backends import require

__all__ = ["Counters", "register_prometheus", "snapshot"]

_registry: weakref.WeakSet[Counters] = weakref.WeakSet()


class Counters:
    """Monotonic counters and point-in-time gauges of one component instance.

    ``incr`` is cheap (a dict update under a lock) and safe from any thread.

    :param component: ``"cache"``, ``"sessions"``, ``"broadcast"`` ...
    :param instance: tells instances of one component apart (a key prefix, a name).
    :param names: counters that exist from the start (reported as 0).
    """

    def __init__(self, component: str, instance: str = "default", names: tuple[str, ...] = ()) -> None:
        self.component = component
        self.instance = instance
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(names, 0)
        self._gauges: dict[str, float] = {}
        _registry.add(self)

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount

    def set_gauge(self, name: str, value: float) -> None:
        self._gauges[name] = value

    def get(self, name: str) -> int:
        return self._counts.get(name, 0)

    def as_dict(self) -> dict[str, float]:
        """Counters and gauges as one dict (a copy)."""
        with self._lock:
            out: dict[str, float] = dict(self._counts)
        out.update(self._gauges)
        return out

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def gauges(self) -> dict[str, float]:
        return dict(self._gauges)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def __repr__(self) -> str:
        return f"<Counters {self.component}[{self.instance}] {self.as_dict()}>"


def _merged() -> dict[tuple[str, str], tuple[dict[str, int], dict[str, float]]]:
    """Counters and gauges per (component, instance). Live objects that share both
    (two stores with one prefix in a process) are merged: counters add up, a gauge
    reports the largest value (the oldest age, the longest queue)."""
    merged: dict[tuple[str, str], tuple[dict[str, int], dict[str, float]]] = {}
    for c in list(_registry):
        counts, gauges = merged.setdefault((c.component, c.instance), ({}, {}))
        for name, value in c.counts().items():
            counts[name] = counts.get(name, 0) + value
        for name, gvalue in c.gauges().items():
            gauges[name] = max(gauges.get(name, gvalue), gvalue)
    return merged


def snapshot() -> dict[str, dict[str, dict[str, float]]]:
    """``{component: {instance: {name: value}}}`` for every live component."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (component, instance), (counts, gauges) in _merged().items():
        values: dict[str, float] = dict(counts)
        values.update(gauges)
        out.setdefault(component, {})[instance] = values
    return out


class _Collector:
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        for (component, instance), (counts, gauges) in _merged().items():
            for name, value in counts.items():
                fam_name = f"statekit_{component}_{name}"
                fam = families.get(fam_name)
                if fam is None:
                    fam = families[fam_name] = CounterMetricFamily(
                        fam_name, f"statekit {component} {name}", labels=["instance"]
                    )
                fam.add_metric([instance], value)
            for name, gvalue in gauges.items():
                fam_name = f"statekit_{component}_{name}"
                fam = families.get(fam_name)
                if fam is None:
                    fam = families[fam_name] = GaugeMetricFamily(
                        fam_name, f"statekit {component} {name}", labels=["instance"]
                    )
                fam.add_metric([instance], gvalue)
        yield from families.values()


def register_prometheus(registry: Any = None) -> Any:
    """Register a collector for every statekit counter with *registry*
    (``prometheus_client.REGISTRY`` by default) and return it."""
    prom = require("prometheus_client", feature="the Prometheus exporter")
    collector = _Collector()
    (registry or prom.REGISTRY).register(collector)
    return collector
