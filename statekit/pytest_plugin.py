"""pytest fixtures that start a private Redis and S3 endpoint for your own tests.

Installed with statekit (a ``pytest11`` entry point), so every project that depends
on statekit can write::

    def test_upload(statekit_s3_url, statekit_redis_url):
        store = BlobStore(statekit_s3_url)
        ...

Servers are started on first use, once per test session, on free loopback ports,
and stopped at the end. ``statekit_redis_url`` empties the server before each test;
``statekit_s3_url`` gives each test a fresh bucket. Nothing runs unless a test asks.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from .embedded import RedisBinary, RedisServer, S3Server, find_redis_servers

__all__ = [
    "redis_command_calls",
    "run_threads",
    "server_lines",
    "statekit_redis_server",
    "statekit_redis_url",
    "statekit_s3_server",
    "statekit_s3_url",
    "wait_for",
]

T = TypeVar("T")


def wait_for(
    cond: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.01
) -> T:
    """Poll *cond* until it returns something truthy, and return that.

    For outcomes that arrive asynchronously: a shared value updated by the subscriber
    thread, a process that exits, a log line. After *timeout* seconds the test fails
    with an ``AssertionError`` naming *what*. The timeout is an upper bound for a
    failing test, not a speed claim: a passing test returns as soon as *cond* holds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_threads(target: Callable[[int], object], count: int, timeout: float = 60.0) -> None:
    """Run ``target(0)`` ... ``target(count - 1)`` at once, each in its own thread, and
    wait for all of them. The first exception a thread raised is raised here (the
    test fails on it rather than in a thread's log); a thread still running after
    *timeout* seconds fails the test."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + timeout
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    if any(th.is_alive() for th in threads):
        raise AssertionError(f"a thread was still running after {timeout}s")


def server_lines() -> list[RedisBinary]:
    """Every Redis / Valkey server line found (one binary per line), oldest first: run
    a contract suite on each. ``$STATEKIT_TEST_REDIS_LINES`` keeps the lines it names
    (``redis-6.2,valkey-9.1``); unset or ``all``, every line runs."""
    wanted = os.environ.get("STATEKIT_TEST_REDIS_LINES", "all")
    names = {name.strip() for name in wanted.split(",")}
    found = [b for b in find_redis_servers() if wanted == "all" or b.line in names]
    return sorted(found, key=lambda b: tuple(int(x) for x in b.version.split(".") if x.isdigit()))


def redis_command_calls(client: Any) -> dict[str, int]:
    """Calls per command since the server's last ``CONFIG RESETSTAT``, from ``INFO
    commandstats``, without the ones a test sends to count: ``INFO`` and ``CONFIG``.

    The same on every server line: Redis 6.2 reports a command once
    (``cmdstat_config``, ``cmdstat_script``), Redis 7 and Valkey once per subcommand
    (``cmdstat_config|resetstat``, ``cmdstat_script|load``); subcommands are summed
    under their command here. Commands run inside a Lua script count too.

    :param client: a redis-py client connected to the server.
    """
    calls: dict[str, int] = {}
    for key, stat in client.info("commandstats").items():
        command = str(key).removeprefix("cmdstat_").partition("|")[0]
        if command not in ("info", "config"):
            calls[command] = calls.get(command, 0) + int(stat["calls"])
    return calls


@pytest.fixture(scope="session")
def statekit_redis_server() -> Iterator[RedisServer]:
    """A private ``redis-server`` for the whole test session."""
    with RedisServer() as server:  # a failed start leaves nothing behind
        yield server


@pytest.fixture
def statekit_redis_url(statekit_redis_server: RedisServer) -> str:
    """The URL of the session's Redis, emptied (``FLUSHALL``) before the test."""
    if not statekit_redis_server.running:  # a fault test killed it: bring it back
        statekit_redis_server.start()
    with statekit_redis_server.client() as c:
        c.flushall()
    return statekit_redis_server.url


@pytest.fixture(scope="session")
def statekit_s3_server() -> Iterator[S3Server]:
    """A private S3 endpoint (moto's server over HTTP) for the whole test session."""
    with S3Server() as server:
        yield server


@pytest.fixture
def statekit_s3_url(statekit_s3_server: S3Server) -> str:
    """An ``s3://`` URL of a new, empty bucket on the session's endpoint."""
    if not statekit_s3_server.running:
        statekit_s3_server.start()
    return statekit_s3_server.create_bucket(f"t-{uuid.uuid4().hex[:20]}")
