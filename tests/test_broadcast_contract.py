"""The shipped broadcast contract (statekit.testing.contracts.broadcast) on every
built-in backend: redis:// on every server line, memory://, Redis Cluster and a
Sentinel URL."""

from __future__ import annotations

import uuid

import pytest

from statekit.embedded import RedisServer
from statekit.testing.contracts.broadcast import BroadcastContract, Outage


class ServerOutage:
    """The server killed (SIGKILL) and started again on its port, with its data
    (the retained values are saved first)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def begin(self) -> None:
        with self.server.client() as c:
            c.save()
        self.server.kill()

    def end(self) -> None:
        if not self.server.running:
            self.server.start()


@pytest.mark.redis
class TestRedisLines(BroadcastContract):
    @pytest.fixture
    def broadcast_url(self, redis_line_url: str) -> str:
        return redis_line_url

    @pytest.fixture
    def broadcast_outage(self, redis_line_server: RedisServer) -> Outage:
        return ServerOutage(redis_line_server)


class TestMemory(BroadcastContract):
    @pytest.fixture
    def broadcast_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"


@pytest.mark.redis
@pytest.mark.cluster
class TestCluster(BroadcastContract):
    @pytest.fixture
    def broadcast_url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url


@pytest.mark.redis
@pytest.mark.sentinel
class TestSentinel(BroadcastContract):
    @pytest.fixture
    def broadcast_url(self, sentinel_url: str) -> str:
        return sentinel_url
