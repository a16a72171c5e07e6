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

import uuid
from collections.abc import Iterator

import pytest

from .embedded import RedisServer, S3Server

__all__ = [
    "statekit_redis_server",
    "statekit_redis_url",
    "statekit_s3_server",
    "statekit_s3_url",
]


@pytest.fixture(scope="session")
def statekit_redis_server() -> Iterator[RedisServer]:
    """A private ``redis-server`` for the whole test session."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def statekit_s3_url(statekit_s3_server: S3Server) -> str:
    """An ``s3://`` URL of a new, empty bucket on the session's endpoint."""
    if not statekit_s3_server.running:
        statekit_s3_server.start()
    return statekit_s3_server.create_bucket(f"t-{uuid.uuid4().hex[:20]}")
