"""The retry rule's transaction flag (review 17, h10): worked out only for a send of
several commands (a pipeline, a transaction), not for each lone command. A wrong-node
reply after the first reply of a transaction (MULTI's +OK) applied nothing, so
NotApplied; after the first reply of a plain pipeline its first command was applied,
so never sent again; a lone command refused: nothing applied. Against a real server
made a replica (of a port that refuses connections): writes answered READONLY."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.redis import create_client, translate_errors

pytestmark = pytest.mark.redis


@pytest.fixture
def replica(private_redis: RedisServer) -> Iterator[RedisServer]:
    with socket.socket() as nowhere:  # bound, not listening: its connects are refused
        nowhere.bind(("127.0.0.1", 0))
        with redis.Redis.from_url(private_redis.url) as admin:
            admin.set("n", 1)
            admin.execute_command("REPLICAOF", "127.0.0.1", nowhere.getsockname()[1])
        try:
            yield private_redis
        finally:
            with redis.Redis.from_url(private_redis.url) as admin:
                admin.execute_command("REPLICAOF", "NO", "ONE")


def test_a_transaction_refused_after_multi_applied_nothing(replica: RedisServer) -> None:
    client = create_client(replica.url + "?socket_timeout=10&retries=0")
    pipe = client.pipeline(transaction=True)
    pipe.incr("n")
    with pytest.raises(BackendUnavailable, match="nothing applied"), translate_errors("a transaction"):
        pipe.execute()


def test_a_pipeline_refused_after_a_reply_is_not_sent_again(replica: RedisServer) -> None:
    client = create_client(replica.url + "?socket_timeout=10&retries=0")
    pipe = client.pipeline(transaction=False)
    pipe.get("n")
    pipe.incr("n")
    with pytest.raises(BackendUnavailable, match="not sent again"), translate_errors("a pipeline"):
        pipe.execute()
    # then a lone command on the same client: refused, nothing applied (no flag of
    # the pipeline's left behind)
    with pytest.raises(BackendUnavailable, match="nothing applied"), translate_errors("a command"):
        client.incr("n")
    assert client.get("n") == b"1"
