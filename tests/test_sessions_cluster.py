"""SessionStore on Redis Cluster: a session's keys share a slot (hash tag kept across
rotations); user-index updates and revoke_user run as separate calls."""

from __future__ import annotations

import pytest

from statekit.sessions import SessionStore

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@pytest.fixture
def store(redis_cluster_url: str) -> SessionStore:
    return SessionStore(redis_cluster_url, secret_keys=["cluster-key-0123456789"], alias_window=30)


def test_lifecycle_on_cluster(store: SessionStore) -> None:
    assert store.engine.cluster  # type: ignore[union-attr]
    s = store.create({"cart": ["apple"]}, user_id="ann")
    again = store.open(store.sign(s.sid))
    again["more"] = 1
    assert store.save(again)
    assert again.incr("hits") == 1
    old = s.sid
    store.rotate(again)
    assert again.sid[:4] == old[:4] and again.key.split("}")[0] == store._key(old).split("}")[0]
    assert store.load(again.sid) == {"cart": ["apple"], "more": 1, "hits": 1}
    assert store.load(old) is None  # a tombstone: never the rotated state
    [info] = store.list_user_sessions("ann")
    assert info.handle == store._handle(again.sid)


def test_revoke_user_on_cluster(store: SessionStore) -> None:
    sessions = [store.create({"i": i}, user_id="bo") for i in range(5)]
    stale = store.open(store.sign(sessions[1].sid))
    assert store.revoke_user("bo", except_session=sessions[0]) == 4
    assert store.load(sessions[0].sid) == {"i": 0}
    assert all(store.load(s.sid) is None for s in sessions[1:])
    stale["x"] = 1
    assert store.save(stale) is False
    assert [i.user_id for i in store.list_user_sessions("bo")] == ["bo"]


def test_destroy_through_stale_key_on_cluster(store: SessionStore) -> None:
    s = store.create({"a": 1}, user_id="cy")
    inflight = store.open(store.sign(s.sid))  # loaded before the rotation
    store.rotate(s)
    store.destroy(inflight)
    assert store.load(s.sid) is None
    assert store.list_user_sessions("cy") == []
