"""Counters every component keeps, readable from Python and, optionally, Prometheus.

Each component (a :class:`~statekit.cache.Cache`, a session store, a broadcaster)
owns a :class:`Counters` object registered under a component name and instance
label. :func:`snapshot` reads all of them; :func:`register_prometheus` exposes them
through ``prometheus_client`` (``pip install 'statekit[prometheus]'``) as
``statekit_<component>_<name>_total`` counters and ``statekit_<component>_<name>``
gauges, each labelled with ``instance``.

**Several processes** (gunicorn workers): counters live in each process, so a
scrape answered by one worker would see that worker only. When
``PROMETHEUS_MULTIPROC_DIR`` names a directory (prometheus_client's multiprocess
mode), every process also writes its values there, in prometheus_client's own file
format under a ``statekit/`` subdirectory, once a second, when it is scraped and
when it exits; the collector of :func:`register_prometheus` and :func:`make_wsgi_app`
then report the sum over every process, living or exited, so any worker answers for
the whole instance (another worker's last second may be missing). Gauges report the
largest value among living processes. A forked child's counters start at zero: what
a ``--preload`` master counted before forking is reported once, by the master.
``statekit serve`` sets the variable to a private directory it creates and removes
(a directory you set is kept, and you wipe it between runs as prometheus_client
asks), and tells this module when a worker
exits (:func:`mark_process_dead`). Your own prometheus_client metrics in the same
directory are collected by a ``MultiProcessCollector`` as usual (it does not read
the subdirectory, so nothing is reported twice); :func:`make_wsgi_app` includes them.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._fork import reset_in_child
from .backends import require

__all__ = [
    "Counters",
    "flush",
    "make_wsgi_app",
    "mark_process_dead",
    "multiprocess_dir",
    "register_prometheus",
    "snapshot",
]

_log = logging.getLogger("statekit.metrics")
_SUBDIR = "statekit"

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
        reset_in_child(self)
        if _exporter.thread is None:
            _exporter.ensure_running()

    def reset_after_fork(self) -> None:
        """In a forked child: counters start at zero (what the parent counted before
        the fork is the parent's: in multiprocess mode its own file reports it, and a
        child that started from it counted it again in every worker's file). Gauges
        keep their values. A new lock: one the parent's metrics thread held at fork
        would never be released here. Through :meth:`reset`, so a subclass that keeps
        some counts elsewhere (the cache's hottest ones) zeroes them too."""
        self._lock = threading.Lock()
        self.reset()

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


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` if it names a directory (multiprocess mode)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


class _Exporter:
    """Writes this process's values to ``<PROMETHEUS_MULTIPROC_DIR>/statekit/``
    (``counter_<pid>.db``, ``gauge_livemax_<pid>.db``, prometheus_client's mmap
    format), from one daemon thread every :attr:`interval` seconds. Only values that
    changed since the last write are written."""

    interval = 1.0

    def __init__(self) -> None:
        self.reset_after_fork()
        reset_in_child(self)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, Any] = {}  # file name -> MmapedDict
        self._written: dict[tuple[str, str], float] = {}
        self._keys: dict[tuple[str, str, str, bool], str] = {}
        self._pid = os.getpid()
        self._exited = False
        self.thread: threading.Thread | None = None
        self._warned = False
        if _registry and multiprocess_dir() is not None:  # a forked worker reports its own
            self.ensure_running()

    def ensure_running(self) -> None:
        if multiprocess_dir() is None or importlib.util.find_spec("prometheus_client") is None:
            return
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="statekit-metrics", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while multiprocess_dir() is not None:
            time.sleep(self.interval)
            self.flush_quietly()
        with self._lock:
            self.thread = None

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - metrics never break the app; said once
            if not self._warned:
                self._warned = True
                _log.warning("statekit metrics: cannot write to PROMETHEUS_MULTIPROC_DIR: %s", e)

    def _key(self, component: str, name: str, instance: str, counter: bool) -> str:
        key = self._keys.get((component, name, instance, counter))
        if key is None:
            mmap_key: Any = importlib.import_module("prometheus_client.mmap_dict").mmap_key
            family = f"statekit_{component}_{name}"
            sample = family + "_total" if counter else family
            try:
                key = mmap_key(family, sample, ["instance"], [instance], f"statekit {component} {name}")
            except TypeError:  # an older prometheus-client: no help text in the key
                key = mmap_key(family, sample, ["instance"], [instance])
            self._keys[(component, name, instance, counter)] = key
        return key

    def _write(self, folder: str, kind: str, key: str, value: float) -> None:
        name = os.path.join(folder, f"{kind}_{self._pid}.db")
        if self._written.get((name, key)) == value:
            return
        mmaped = self._files.get(name)
        if mmaped is None:
            mmap_dict: Any = importlib.import_module("prometheus_client.mmap_dict")
            mmaped = self._files[name] = mmap_dict.MmapedDict(name)
        try:
            mmaped.write_value(key, value, 0.0)
        except TypeError:  # an older prometheus-client: no timestamps
            mmaped.write_value(key, value)
        self._written[(name, key)] = value

    def _close_files(self) -> None:
        """Close the value files and forget what they hold (the caller holds the lock)."""
        for mmaped in self._files.values():
            with contextlib.suppress(Exception):
                mmaped.close()
        self._files, self._written = {}, {}

    def at_exit(self) -> None:
        """The last write, then the files closed (not left to the interpreter's teardown)."""
        self.flush_quietly()
        with self._lock:
            self._close_files()
            self._exited = True  # the daemon thread's next flush must not open them again

    def flush(self) -> None:
        if multiprocess_dir() is None:
            return
        with self._lock:
            # again under the lock: :func:`_remove_private_dir` unsets the variable under
            # it, then removes the directory; a flush that found it before must not make
            # it again while it is removed (the master's thread left it on the disk so)
            path = multiprocess_dir()
            if path is None or self._exited:
                return
            folder = os.path.join(path, _SUBDIR)
            if self._pid != os.getpid() or not os.path.isdir(folder):  # a new directory: new files
                self._close_files()  # (a forked child closes its copies of the parent's)
                self._pid = os.getpid()
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder)  # not the directory itself: one removed stays removed
            for (component, instance), (counts, gauges) in _merged().items():
                for name, value in counts.items():
                    self._write(folder, "counter", self._key(component, name, instance, True), value)
                for name, gvalue in gauges.items():
                    self._write(folder, "gauge_livemax", self._key(component, name, instance, False), gvalue)


_exporter = _Exporter()
atexit.register(_exporter.at_exit)


def flush() -> None:
    """Write this process's values to the multiprocess directory now (a no-op
    outside multiprocess mode). ``statekit serve`` calls it as a worker exits."""
    _exporter.flush_quietly()


def mark_process_dead(pid: int) -> None:
    """Forget the gauges of exited process *pid* (its counters still count), in
    statekit's files and in prometheus_client's own (its ``live*`` gauges). Call it
    from gunicorn's ``child_exit`` hook; ``statekit serve`` does."""
    path = multiprocess_dir()
    if path is None or importlib.util.find_spec("prometheus_client") is None:
        return
    multiprocess: Any = importlib.import_module("prometheus_client.multiprocess")
    multiprocess.mark_process_dead(pid, path)
    if os.path.isdir(os.path.join(path, _SUBDIR)):
        multiprocess.mark_process_dead(pid, os.path.join(path, _SUBDIR))


def _private_dir() -> str | None:
    """For ``statekit serve``'s master, before it forks: unless
    ``PROMETHEUS_MULTIPROC_DIR`` is set (then it is the user's: ``None``), set it to
    a new private directory and return it; the master removes it as it exits
    (:func:`_remove_private_dir`). A master re-executed by USR2 starts from
    gunicorn's original environment, so it makes its own. Without prometheus_client
    nothing is created.

    prometheus_client is imported here, in the master's main thread, before the
    exporter thread starts and before any signal arrives: imported for the first time
    by the exporter thread and, at once, by :func:`mark_process_dead` in a signal
    handler, one of them got the other's partially initialised module (``cannot
    import name 'Counter'``) and the master's SIGTERM ended in a traceback."""
    if importlib.util.find_spec("prometheus_client") is None:
        return None
    importlib.import_module("prometheus_client.multiprocess")  # and prometheus_client itself
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix="statekit-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    _exporter.ensure_running()
    return path


def _remove_private_dir(path: str | None) -> None:
    """Remove the master's private directory *path* (``on_exit``): the variable is
    unset and this process's files closed first, under the exporter's lock, so its
    thread's next flush writes nothing, and one under way ends before the removal."""
    if path:
        with _exporter._lock:
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == path:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            _exporter._close_files()
        shutil.rmtree(path, ignore_errors=True)


class _Collector:
    def collect(self) -> Iterator[Any]:
        path = multiprocess_dir()
        if path is not None:  # the whole instance: every process's files
            multiprocess: Any = importlib.import_module("prometheus_client.multiprocess")
            _exporter.flush_quietly()
            files = glob.glob(os.path.join(path, _SUBDIR, "*.db"))
            yield from multiprocess.MultiProcessCollector.merge(files, accumulate=True)
            return
        yield from self._local()

    def _local(self) -> Iterator[Any]:
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
    (``prometheus_client.REGISTRY`` by default) and return it. In multiprocess
    mode it reports the whole instance (see the module docstring)."""
    prom = require("prometheus_client", feature="the Prometheus exporter")
    registry = registry or prom.REGISTRY
    collector = _registered.get(registry)
    if collector is None:  # once per registry: twice would report every value twice
        collector = _registered[registry] = _Collector()
        registry.register(collector)
    return collector


_registered: weakref.WeakKeyDictionary[Any, _Collector] = weakref.WeakKeyDictionary()


def make_wsgi_app() -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app that answers a Prometheus scrape (mount it at ``/metrics``): the
    statekit counters and your own prometheus_client metrics. In multiprocess mode
    these are every process's (a ``MultiProcessCollector`` on the directory),
    otherwise this process's (``prometheus_client.REGISTRY``)."""
    prom: Any = require("prometheus_client", feature="the Prometheus exporter")
    multiprocess: Any = importlib.import_module("prometheus_client.multiprocess")

    def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # decided per scrape, as prometheus_client advises: the directory may be set
        # after this app was made (statekit serve sets it as the master starts)
        if multiprocess_dir() is None:
            registry = prom.REGISTRY
            register_prometheus(registry)
        else:
            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            register_prometheus(registry)
        result: Iterable[bytes] = prom.make_wsgi_app(registry)(environ, start_response)
        return result

    return metrics_app
