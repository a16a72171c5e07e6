"""statekit.metrics: thread-safe counters, snapshots, and the Prometheus collector."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from statekit.errors import ConfigError
from statekit.metrics import Counters, mark_process_dead, register_prometheus, snapshot


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
    assert register_prometheus(registry) is collector  # once per registry
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


# -- several processes: prometheus_client's multiprocess mode ------------------------

_CHILD = """
import sys
from statekit.metrics import Counters, flush
c = Counters("jobs", "t-mp", names=("runs",))
c.incr("runs", int(sys.argv[1]))
c.set_gauge("queue", float(sys.argv[1]))
flush()
print(__import__("os").getpid())
"""


def _sample(text: str, name: str, instance: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{name}{{instance="{instance}"}} '):
            return float(line.split()[-1])
    return None


def test_multiprocess_dir_adds_up_every_process(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two other processes wrote their counters; a scrape here reports the sum,
    gauges the largest of the living; an exited process's counters still count."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pids = [int(subprocess.run([sys.executable, "-c", _CHILD, str(n)], check=True, capture_output=True,
                               text=True, timeout=60).stdout) for n in (3, 4)]
    here = Counters("jobs", "t-mp", names=("runs",))
    here.incr("runs", 5)
    registry = CollectorRegistry()
    register_prometheus(registry)
    text = generate_latest(registry).decode()
    assert _sample(text, "statekit_jobs_runs_total", "t-mp") == 12.0
    assert _sample(text, "statekit_jobs_queue", "t-mp") == 4.0
    assert text.count('statekit_jobs_runs_total{instance="t-mp"}') == 1
    mark_process_dead(pids[1])  # its gauge goes, its counts stay
    text = generate_latest(registry).decode()
    assert _sample(text, "statekit_jobs_queue", "t-mp") == 3.0
    assert _sample(text, "statekit_jobs_runs_total", "t-mp") == 12.0
    # prometheus_client's own collector does not read statekit's files: no duplicates
    from prometheus_client.multiprocess import MultiProcessCollector

    both = CollectorRegistry()
    MultiProcessCollector(both)
    register_prometheus(both)
    assert generate_latest(both).decode().count('statekit_jobs_runs_total{instance="t-mp"}') == 1


def test_make_wsgi_app_single_process() -> None:
    c = Counters("jobs", "t-wsgi", names=("runs",))
    c.incr("runs", 2)
    from statekit.metrics import make_wsgi_app

    app = make_wsgi_app()
    out: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
                        lambda status, headers, exc_info=None: out.append(status)))
    assert out == ["200 OK"]
    assert _sample(body.decode(), "statekit_jobs_runs_total", "t-wsgi") == 2.0
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
                        lambda status, headers, exc_info=None: None))
    assert body.decode().count('statekit_jobs_runs_total{instance="t-wsgi"}') == 1


_SERVE_APP = """
import os
import time

from statekit.cache import Cache
from statekit.metrics import make_wsgi_app

cache = Cache("memory://serve-metrics", prefix="m")
metrics = make_wsgi_app()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/metrics":
        return metrics(environ, start_response)
    if path == "/dir":
        body = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").encode()
    else:
        cache.get("k")  # a miss, counted by the worker that served it
        if environ.get("QUERY_STRING") == "hold":
            time.sleep(0.05)  # holds a thread: a worker with all 4 busy accepts nothing
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _spread(port: int, workers: set[int], per_thread: int = 10) -> int:
    """Requests from 8 threads (a connection each) until every worker served some;
    how many were sent. Each request holds its server thread 50 ms, so 8 at once
    are more than one worker's 4 threads, and StatekitThreadWorker accepts only while
    a thread is free: the others go to another worker whatever the scheduler favours
    (with 4 quick requests one worker served 800 of them on a loaded machine)."""
    from test_lifecycle_helpers import request

    seen: set[int] = set()
    sent = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal sent
        for _ in range(per_thread):
            status, _, body = request(port, "/page?hold")
            assert status == 200
            with lock:
                sent += 1
                seen.add(int(body))

    for _ in range(20):
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if seen >= workers:
            return sent
    raise AssertionError(f"requests reached {seen}, not every worker of {workers}")


def _scraped(port: int) -> float | None:
    from test_lifecycle_helpers import request

    status, _, body = request(port, "/metrics")
    assert status == 200
    return _sample(body.decode(), "statekit_cache_misses_total", "m:default")


@pytest.mark.gunicorn
def test_serve_scrape_of_any_worker_shows_the_instance(tmp_path: Any) -> None:
    """statekit serve, 2 workers: requests spread over both, then every scrape
    (whichever worker answers) reports their total; a worker that exits keeps its
    counts in; the private directory is gone once the server stops."""
    import signal

    from test_lifecycle_helpers import ServeProcess, request, wait_until

    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with ServeProcess(tmp_path, "--workers", "2", app_source=_SERVE_APP, env=env) as srv:
        srv.wait_ready(2)
        private = request(srv.port, "/dir")[2].decode()
        assert private and os.path.isdir(private)
        workers = set(srv.workers())
        sent = _spread(srv.port, workers)
        wait_until(lambda: _scraped(srv.port) == sent, 20, f"a scrape showing {sent} misses")
        assert [_scraped(srv.port) for _ in range(6)] == [sent] * 6  # any worker answers the same
        victim = sorted(workers)[0]
        sent += _spread(srv.port, workers)  # counts the workers may not have written yet
        os.kill(victim, signal.SIGTERM)  # a worker exits (max_requests, a reload): it writes them
        wait_until(lambda: len(srv.workers()) == 2 and victim not in srv.workers(), 30, "a replacement")
        srv.wait_ready(2)
        sent += _spread(srv.port, set(srv.workers()))
        wait_until(lambda: _scraped(srv.port) == sent, 20, f"a scrape showing {sent} misses")
        files = os.listdir(os.path.join(private, "statekit"))
        assert f"counter_{victim}.db" in files and f"gauge_livemax_{victim}.db" not in files
    assert not os.path.exists(private)


@pytest.mark.gunicorn
def test_serve_keeps_the_users_multiprocess_dir(tmp_path: Any) -> None:
    from test_lifecycle_helpers import ServeProcess, request, wait_until

    mine = tmp_path / "prom"
    mine.mkdir()
    with ServeProcess(tmp_path / "srv", "--workers", "2", app_source=_SERVE_APP,
                      env={"PROMETHEUS_MULTIPROC_DIR": str(mine)}) as srv:
        srv.wait_ready(2)
        assert request(srv.port, "/dir")[2].decode() == str(mine)
        sent = _spread(srv.port, set(srv.workers()))
        wait_until(lambda: _scraped(srv.port) == sent, 20, f"a scrape showing {sent} misses")
    assert mine.is_dir() and any(n.startswith("counter_") for n in os.listdir(mine / "statekit"))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except FileNotFoundError:
        return True


@pytest.mark.gunicorn
def test_serve_usr2_new_master_gets_its_own_dir(tmp_path: Any) -> None:
    """A USR2 re-exec starts from gunicorn's original environment: the new master
    makes its own directory; the old one removes its own as it exits."""
    import signal
    from pathlib import Path

    from test_lifecycle_helpers import ServeProcess, children, request, wait_until

    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0", app_source=_SERVE_APP, env=env)
    successor = 0
    try:
        srv.wait_ready(1)
        old_dir = request(srv.port, "/dir")[2].decode()
        srv.signal(signal.SIGUSR2)
        pidfile = Path(f"{srv.pidfile}.2")
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 20, "the new master")
        successor = int(pidfile.read_text())
        wait_until(lambda: len(children(successor)) == 1, 20, "the new master's worker")
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
        assert not os.path.exists(old_dir)
        new_dir = request(srv.port, "/dir")[2].decode()
        assert new_dir != old_dir and os.path.isdir(new_dir)
        sent = _spread(srv.port, set(children(successor)))
        wait_until(lambda: _scraped(srv.port) == sent, 20, f"a scrape showing {sent} misses")
    finally:
        srv.stop()
        if successor:
            os.kill(successor, signal.SIGTERM)
            wait_until(lambda: _gone(successor), 40, "the new master to exit")
    assert not os.path.exists(new_dir)


def test_serve_master_imports_prometheus_client_before_its_threads_and_signals(tmp_path: Path) -> None:
    """statekit serve's master (``_private_dir``, before it forks or starts the
    exporter thread) imports prometheus_client.multiprocess itself, in a fresh
    interpreter: a first import by the exporter thread racing one by ``child_exit``
    in a SIGTERM handler gave a partially initialised module and a traceback at
    shutdown (seen in a clean-clone run of the user-path serve test). Also when the
    user set PROMETHEUS_MULTIPROC_DIR (no private directory then)."""
    code = ("import sys, statekit.metrics as m\n"
            "path = m._private_dir()\n"
            "assert 'prometheus_client.multiprocess' in sys.modules, sorted(sys.modules)\n"
            "m._remove_private_dir(path)\n"
            "print('ok', path is None)\n")
    for env_dir, private in ((None, "False"), (str(tmp_path), "True")):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        if env_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = env_dir
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             timeout=60, check=True).stdout
        assert out.split() == ["ok", private]
