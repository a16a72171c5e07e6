"""SessionStore on Redis Cluster: the shipped engine contract, and what is particular
to Cluster (a session's keys share a slot: the hash tag is kept across rotations;
user-index updates and revoke_user run as separate calls)."""

from __future__ import annotations

import pytest

from statekit.sessions import SessionStore
from statekit.sessions.redis import RedisEngine
from statekit.testing.contracts.sessions import SessionEngineContract

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


class TestClusterEngine(SessionEngineContract):
    @pytest.fixture
    def session_url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url


def test_a_session_keeps_its_slot_across_rotations(redis_cluster_url: str) -> None:
    store = SessionStore(redis_cluster_url, secret_keys=["cluster-key-0123456789"], alias_window=30)
    assert isinstance(store.engine, RedisEngine) and store.engine.cluster
    s = store.create({"cart": ["apple"]}, user_id="ann")
    old = s.sid
    store.rotate(s)
    assert s.sid[:4] == old[:4] and s.key.split("}")[0] == store._key(old).split("}")[0]
    assert store.load(s.sid) == {"cart": ["apple"]}
    assert store.load(old) is None  # a tombstone: never the rotated state
    [info] = store.list_user_sessions("ann")
    assert info.handle == store._handle(s.sid)
