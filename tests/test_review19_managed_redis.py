"""Review 19: statekit on a managed Redis or Valkey, whose ACL user is not ``default``
and may run only some commands.

* The ACL docs/backends.md lists (its ``sh`` block, built as printed) lets every
  capability work on every server line: cache, near cache, asyncio cache, sessions
  (with their near cache), broadcast (publish, subscribe, lease, fencing clock).
* A command the ACL refuses is a :class:`~statekit.redis.PermissionRefused` (a
  ``BackendUnavailable``) naming the command, the user and the list to grant, on the
  cache's, the sessions' and the redis-py paths alike.
* A refused broadcast subscription or near-cache listener says so once (no traceback
  per retry), naming the command, the user and what to grant; shared values still
  follow the publishes (re-read), and near caches serve from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from statekit.broadcast import Broadcaster, SharedValue
from statekit.broadcast import hub as hub_module
from statekit.broadcast.redis import RedisBackend
from statekit.cache import Cache
from statekit.cache.aio import AsyncCache
from statekit.embedded import RedisCluster, RedisServer
from statekit.pytest_plugin import wait_for
from statekit.redis import PermissionRefused
from statekit.sessions import SessionStore
from statekit.sessions.aio import AsyncSessionStore

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "backends.md"
PASSWORD = "s3cret-rotated-1"


def _documented_setusers() -> list[list[str]]:
    """The rules of each ``ACL SETUSER app`` of docs/backends.md's ACL section, in
    order (its ``sh`` blocks: the user, then Cluster's additions), the password
    placeholder replaced."""
    text = GUIDE.read_text()
    section = text[text.index("## The Redis ACL statekit's own backends need"):]
    out = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            at = [w.upper() for w in words].index("SETUSER")
            user, *rules = words[at + 1:]
            assert user == "app", command
            out.append([f">{PASSWORD}" if r == ">change-me" else r for r in rules])
    return out


def documented_acl() -> list[str]:
    """The rules of the documented user (standalone, Sentinel's master)."""
    rules = _documented_setusers()[0]
    assert f">{PASSWORD}" in rules, rules
    return rules


def _acl_url(server: RedisServer, *rules: str, user: str = "app") -> str:
    with server.client() as admin:
        admin.execute_command("ACL", "DELUSER", user)
        admin.execute_command("ACL", "SETUSER", user, *rules)
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.fixture
def acl_server(redis_line_server: RedisServer, redis_line_url: str) -> Iterator[RedisServer]:
    """The line's shared server, flushed; the tests' ACL users deleted after each."""
    yield redis_line_server
    with redis_line_server.client() as admin:
        admin.execute_command("ACL", "DELUSER", "app", "sub", "near", "track", "atrack")


def _exercise_cache(url: str) -> None:
    cache = Cache(url, namespace=f"n{uuid.uuid4().hex[:8]}")
    assert cache.set("a", 1) and cache.get("a") == 1
    assert cache.set_many({"b": 2, "c": 3}) and cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    assert cache.add("d", 4) and not cache.add("d", 5)
    assert cache.incr("n") == 1 and cache.incr("n", 2) == 3
    assert cache.touch("a", 60) and 0 < (cache.ttl("a") or 0) <= 60
    assert cache.get_or_set("g", lambda: 7) == 7
    with cache.lock("L", timeout=5):
        pass
    assert cache.delete("b") and cache.delete_many(["c", "d"]) == 2
    assert cache.clear() and cache.get("a") is None


def _exercise_near_cache(url: str) -> None:
    near = Cache(url, namespace=f"near{uuid.uuid4().hex[:8]}", near_cache=100)
    other = Cache(url, namespace=near.namespace_name)
    assert near.set("k", 1)
    assert near.near_ready(10), "the near cache's listener did not connect with the documented ACL"
    # the set's own invalidation may come after the first get kept a copy: get until one is served near
    wait_for(lambda: near.get("k") == 1 and near.stats()["near_hits"] >= 1, 10, "a near hit")
    other.set("k", 2)  # another process's write: invalidated here
    wait_for(lambda: near.get("k") == 2, 10, "the near copy invalidated")


async def _exercise_async_cache(url: str) -> None:
    cache = AsyncCache(url, namespace=f"a{uuid.uuid4().hex[:8]}")
    near = AsyncCache(url, namespace=f"an{uuid.uuid4().hex[:8]}", near_cache=100)
    try:
        assert await cache.set("a", 1) and await cache.get("a") == 1
        assert await cache.incr("n") == 1
        async with cache.lock("L", timeout=5):
            pass
        assert await cache.clear() and await cache.get("a") is None
        assert await near.set("k", 1) and await near.get("k") == 1 and await near.get("k") == 1
    finally:
        await cache.aclose()
        await near.aclose()


def _exercise_sessions(url: str, near: int) -> None:
    store = SessionStore(url, secret_keys=["k"], near_cache=near)
    try:
        session = store.create({"a": 1}, user_id="alice")
        loaded = store.load(session.sid)
        assert loaded is not None and loaded["a"] == 1
        loaded["b"] = 2
        assert store.save(loaded)
        assert store.incr(loaded, "count", 3) == 3
        rotated = store.rotate(loaded)
        again = store.load(rotated.sid)
        assert again is not None and dict(again) == {"a": 1, "b": 2, "count": 3}
        [info] = store.list_user_sessions("alice")
        assert store.revoke_session(info.handle, "alice")
        store.create({"x": 1}, user_id="bob")
        store.create({"y": 1}, user_id="bob")
        assert store.revoke_user("bob") == 2
        gone = store.create({"z": 1})
        store.destroy(gone)
        assert store.load(gone.sid) is None
    finally:
        store.close()


def _exercise_broadcast(url: str) -> None:
    name = f"v{uuid.uuid4().hex[:8]}"
    value = SharedValue(name, default="none", url=url)
    assert value.get() == "none"
    hub = value._hub
    assert hub is not None
    wait_for(hub.connected.is_set, 10, "the broadcast subscriber to subscribe with the documented ACL")
    Broadcaster(url).publish(name, "hello")
    wait_for(lambda: value.get() == "hello", 10, "the published value to arrive by message")
    backend = RedisBackend.from_url(url, prefix="statekit")
    try:  # a job's lease: claim (the fencing clock: TIME), renew, release
        claim = backend.claim(f"job{name}", "me", 5000, 1)
        assert claim.token > 0
        assert backend.renew(f"job{name}", "me", claim.token, 5000)
        assert backend.release(f"job{name}", "me", claim.token)
    finally:
        backend.close()


def test_the_documented_acl_lets_every_capability_work(acl_server: RedisServer) -> None:
    url = _acl_url(acl_server, *documented_acl())
    _exercise_cache(url)
    _exercise_near_cache(url)
    asyncio.run(_exercise_async_cache(url))
    _exercise_sessions(url, near=0)
    _exercise_sessions(url, near=100)
    _exercise_broadcast(url)


def test_the_documented_cluster_acl_lets_every_capability_work(redis_line_cluster: RedisCluster,
                                                                redis_line_cluster_url: str) -> None:
    """The user, and Cluster's additions (the sharded pub/sub line on Redis 7+ and
    Valkey only: Redis 6.2 has no such commands), on every node."""
    user, cluster_rules, sharded = _documented_setusers()
    sharded_line = int(redis_line_cluster.binary.version.split(".")[0]) >= 7
    try:
        for node in redis_line_cluster.nodes:
            with node.client() as admin:
                admin.execute_command("ACL", "SETUSER", "app", *user, *cluster_rules,
                                      *(sharded if sharded_line else []))
        url = redis_line_cluster_url.replace("redis+cluster://", f"redis+cluster://app:{PASSWORD}@")
        _exercise_cache(url)
        _exercise_near_cache(url)
        asyncio.run(_exercise_async_cache(url))
        _exercise_sessions(url, near=0)
        _exercise_broadcast(url)
    finally:
        for node in redis_line_cluster.nodes:
            with node.client() as admin:
                admin.execute_command("ACL", "DELUSER", "app")


def test_a_cluster_listener_refused_cluster_nodes_is_said_once(
        redis_line_cluster: RedisCluster, redis_line_cluster_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The documented user without ``cluster|nodes``: the near cache's listener cannot
    list the nodes to listen to. Before: silent, the near cache off."""
    caplog.set_level(logging.INFO, logger="statekit.redis")
    user, cluster_rules, _sharded = _documented_setusers()
    try:
        for node in redis_line_cluster.nodes:
            with node.client() as admin:
                admin.execute_command("ACL", "SETUSER", "app", *user,
                                      *[r for r in cluster_rules if r != "+cluster|nodes"])
        url = redis_line_cluster_url.replace("redis+cluster://", f"redis+cluster://app:{PASSWORD}@")
        near = Cache(url, namespace=f"near{uuid.uuid4().hex[:8]}", near_cache=100)
        assert near.set("k", 1) and near.get("k") == 1
        listener = near._listener
        assert listener is not None
        wait_for(lambda: listener.reconnects >= 3, 10, "the listener asking three times")
        assert not listener.connected.is_set() and near.get("k") == 1
        said = _records(caplog, "statekit.redis", "near cache off")
        assert len(said) == 1, [r.getMessage() for r in said]
        assert "CLUSTER NODES" in said[0].getMessage() and "docs/backends.md" in said[0].getMessage()
    finally:
        for node in redis_line_cluster.nodes:
            with node.client() as admin:
                admin.execute_command("ACL", "DELUSER", "app")


def test_a_refused_sharded_subscription_is_said_once(
        redis_line_cluster: RedisCluster, redis_line_cluster_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cluster with sharded pub/sub, the user without ``ssubscribe``: said once, the
    publish re-read. Before: the sharded subscription's first Subscribed (its own,
    before any SSUBSCRIBE) read as the refusal's end, so it was said every 2 s."""
    if int(redis_line_cluster.binary.version.split(".")[0]) < 7:
        pytest.skip("Redis 6.2: no sharded pub/sub")
    monkeypatch.setattr(hub_module, "BACKOFF_MAX", 0.1)
    caplog.set_level(logging.INFO, logger="statekit.broadcast")
    user, cluster_rules, _sharded = _documented_setusers()
    try:
        for node in redis_line_cluster.nodes:
            with node.client() as admin:
                admin.execute_command("ACL", "SETUSER", "app", *user, *cluster_rules, "+spublish")
        url = redis_line_cluster_url.replace("redis+cluster://", f"redis+cluster://app:{PASSWORD}@")
        _reread_while_refused(url, redis_line_cluster_url, "SSUBSCRIBE")
        said = _records(caplog, "statekit.broadcast", "refused")
        assert len(said) == 1 and "ssubscribe" in said[0].getMessage(), [r.getMessage() for r in said]
        assert not _records(caplog, "statekit.broadcast", "pushed again")
    finally:
        for node in redis_line_cluster.nodes:
            with node.client() as admin:
                admin.execute_command("ACL", "DELUSER", "app")


ALL_BUT = ("on", f">{PASSWORD}", "~*", "&*", "+@all")


def test_a_refused_command_names_itself_the_user_and_the_list(acl_server: RedisServer) -> None:
    url = _acl_url(acl_server, *ALL_BUT, "-evalsha", "-zrangebyscore")
    with pytest.raises(PermissionRefused) as refused:
        Cache(url).set("a", 1)
    message = str(refused.value)
    assert "'app'" in message and "evalsha" in message and "docs/backends.md" in message, message
    store = SessionStore(url, secret_keys=["k"])
    try:  # through redis-py's client (a pipeline, not the transport): was its bare NoPermissionError
        with pytest.raises(PermissionRefused, match="zrangebyscore") as refused:
            store.list_user_sessions("alice")
        assert "docs/backends.md" in str(refused.value)
    finally:
        store.close()


def _reread_while_refused(url: str, publish_url: str, command: str) -> None:
    """A shared value on *url*, whose subscription the server refuses: a publish (to
    *publish_url*) is read all the same, and the subscriber goes on asking (three more
    refusals counted)."""
    name = f"v{uuid.uuid4().hex[:8]}"
    value = SharedValue(name, default="none", url=url)
    assert value.get() == "none"
    hub = value._hub
    assert hub is not None
    Broadcaster(publish_url).publish(name, "hello")
    wait_for(lambda: value.get() == "hello", 10, f"the publish re-read while {command} is refused")
    start = hub.counters.get("errors")
    wait_for(lambda: hub.counters.get("errors") >= start + 3, 10, "three more refused subscriptions")


def _records(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and text in r.getMessage()]


def test_a_refused_broadcast_subscription_is_said_once_and_values_still_follow(
        acl_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a traceback (``broadcast subscriber failed``) every 2 s, and the shared
    value never left its first read."""
    monkeypatch.setattr(hub_module, "BACKOFF_MAX", 0.1)  # the refused thread's pace, for the test
    caplog.set_level(logging.INFO, logger="statekit.broadcast")
    url = _acl_url(acl_server, *ALL_BUT, "-psubscribe", user="sub")
    _reread_while_refused(url, f"redis://127.0.0.1:{acl_server.port}/0", "PSUBSCRIBE")
    said = _records(caplog, "statekit.broadcast", "refused")
    assert len(said) == 1, [r.getMessage() for r in said]
    message = said[0].getMessage()
    assert said[0].levelno == logging.ERROR and "psubscribe" in message and "'sub'" in message \
        and "docs/backends.md" in message, message
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_refused_near_cache_listener_is_said_once_and_reads_go_to_redis(
        acl_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Before: nothing said; the near cache stayed off in silence."""
    caplog.set_level(logging.INFO, logger="statekit.redis")
    url = _acl_url(acl_server, *ALL_BUT, "-client", user="near")
    near = Cache(url, namespace=f"near{uuid.uuid4().hex[:8]}", near_cache=100)
    assert near.set("k", 1) and near.get("k") == 1
    listener = near._listener
    assert listener is not None
    wait_for(lambda: listener.reconnects >= 3, 10, "the listener asking three times")
    assert not listener.connected.is_set() and near.get("k") == 1 and near.stats()["near_hits"] == 0
    said = _records(caplog, "statekit.redis", "near cache off")
    assert len(said) == 1, [r.getMessage() for r in said]
    message = said[0].getMessage()
    assert "CLIENT" in message and "'near'" in message and "docs/backends.md" in message, message


def test_a_refused_session_tracking_is_said_once_and_loads_go_to_redis(
        acl_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """CLIENT ID allowed, CLIENT TRACKING not: the session near cache's listener
    connects, each data connection's CLIENT TRACKING is refused and serves untracked.
    Before: silent."""
    caplog.set_level(logging.INFO, logger="statekit.redis")
    url = _acl_url(acl_server, *ALL_BUT, "-client", "+client|id", user="track")
    store = SessionStore(url, secret_keys=["k"], near_cache=100)
    try:
        session = store.create({"a": 1})

        def said() -> list[logging.LogRecord]:
            loaded = store.load(session.sid)
            assert loaded is not None and dict(loaded) == {"a": 1}
            return _records(caplog, "statekit.redis", "CLIENT TRACKING on its data connections")

        wait_for(said, 10, "the refused CLIENT TRACKING logged")
        for _ in range(16):  # sessions on the other connections (each refused too)
            other = store.create({"b": 1})
            assert store.load(other.sid) is not None
        [record] = said()
        message = record.getMessage()
        assert "'track'" in message and "client" in message and "docs/backends.md" in message, message
        assert store.engine.counters.get("near_hits") == 0
    finally:
        store.close()


def test_a_refused_session_tracking_is_said_once_on_asyncio_too(
        acl_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="statekit.redis")
    url = _acl_url(acl_server, *ALL_BUT, "-client", "+client|id", user="atrack")

    async def run() -> None:
        store = AsyncSessionStore(url, secret_keys=["k"], near_cache=100)
        try:
            session = await store.create({"a": 1})
            for _ in range(200):  # until the listener is up and a connection was refused (bounded)
                loaded = await store.load(session.sid)
                assert loaded is not None and dict(loaded) == {"a": 1}
                if _records(caplog, "statekit.redis", "CLIENT TRACKING on its data connections"):
                    break
                other = await store.create({"b": 1})  # and another connection
                await asyncio.sleep(0.05)
            for _ in range(16):
                other = await store.create({"b": 1})
                assert await store.load(other.sid) is not None
        finally:
            await store.aclose()

    asyncio.run(run())
    said = _records(caplog, "statekit.redis", "CLIENT TRACKING on its data connections")
    assert len(said) == 1 and "'atrack'" in said[0].getMessage(), [r.getMessage() for r in said]


def test_a_redirect_to_a_replaced_listener_connection_is_not_said_to_be_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    """The listener's logic only (no server): a data connection's REDIRECT that names
    a listener connection replaced meanwhile is a moment's race, not the server's
    set-up: nothing logged; an ACL's refusal after it still is, once."""
    import redis

    from statekit.redis.tracking import InvalidationListener

    caplog.set_level(logging.INFO, logger="statekit.redis")
    listener = InvalidationListener(lambda: [], "statekit:", bcast=False)
    conn = SimpleNamespace(username="app", credential_provider=None)
    listener.tracking_refused(conn, redis.ResponseError("The client ID you want redirect to does not exist"))
    assert not _records(caplog, "statekit.redis", "near cache off")
    for _ in range(2):
        listener.tracking_refused(conn, redis.exceptions.NoPermissionError(
            "User app has no permissions to run the 'client|tracking' command"))
    [said] = _records(caplog, "statekit.redis", "near cache off")
    assert "'app'" in said.getMessage() and "client|tracking" in said.getMessage()


#: what managed services rename away or disable (rename-command NAME "")
RENAMED = ("CLIENT", "PSUBSCRIBE", "CONFIG", "KEYS", "FLUSHDB", "FLUSHALL", "MONITOR", "INFO")


@pytest.fixture(scope="module")
def renamed_server() -> Iterator[RedisServer]:
    """A Redis (the preferred server) without the commands of :data:`RENAMED`."""
    server = RedisServer(args=[arg for name in RENAMED for arg in ("--rename-command", name, "")])
    server.start()
    yield server
    server.stop()


def test_renamed_commands_are_said_once_and_every_capability_still_works(
        renamed_server: RedisServer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CLIENT the near cache is off, said once (before: silent); without
    PSUBSCRIBE broadcast's subscription is refused, said once, and shared values are
    re-read (before: a traceback every 2 s, values never updated). The rest (database
    1: a SELECT without CONFIG) works."""
    monkeypatch.setattr(hub_module, "BACKOFF_MAX", 0.1)
    caplog.set_level(logging.INFO, logger="statekit")
    url = f"redis://127.0.0.1:{renamed_server.port}/1"
    _exercise_cache(url)
    asyncio.run(_exercise_async_cache(url))
    _exercise_sessions(url, near=100)
    near = Cache(url, namespace=f"near{uuid.uuid4().hex[:8]}", near_cache=100)
    assert near.set("k", 1) and near.get("k") == 1
    listener = near._listener
    assert listener is not None
    wait_for(lambda: listener.reconnects >= 3, 10, "the listener asking three times")
    _reread_while_refused(url, url, "PSUBSCRIBE")
    thread = listener._thread
    assert thread is not None

    def near_said() -> list[logging.LogRecord]:  # each store's listener says it once; by this one's
        # thread (an ended listener's thread may have had the same ident: those said it before)
        return [r for r in _records(caplog, "statekit.redis", "near cache off") if r.thread == thread.ident]

    wait_for(near_said, 10, "the listener's refusal logged")
    said_first = near_said()
    asked = listener.reconnects
    wait_for(lambda: listener.reconnects >= asked + 2, 10, "the listener asking twice more")
    assert near_said() == said_first, "said again at a retry"
    assert not listener.connected.is_set() and near.stats()["near_hits"] == 0
    message = said_first[-1].getMessage()
    assert "CLIENT ID" in message and "renamed or disabled" in message, message
    said = _records(caplog, "statekit.broadcast", "refused")
    assert len(said) == 1 and "PSUBSCRIBE" in said[0].getMessage(), [r.getMessage() for r in said]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_over_tls_the_documented_user_works_and_a_password_rotation_is_clear_and_cool(
        redis_server: RedisServer, redis_url: str, tmp_path: Path) -> None:
    """``rediss://`` (a TLS-terminating loopback proxy: no embedded server has TLS)
    with the documented user: every capability, the near cache's listener and the
    broadcast subscriber included. Then the password changes under the running app
    (``resetpass`` and its connections killed): a call is ``BackendUnavailable``
    naming authentication; the background connections back off (a hot loop would
    open hundreds of connections while the listener asks four times); the old
    password given back, everything serves again without a restart."""
    from test_redis_helpers import Proxy, self_signed  # tests/ is on sys.path

    from statekit.errors import BackendUnavailable

    cert, key = self_signed(tmp_path)
    proxy = Proxy(redis_server.port, tls=(cert, key))
    admin = redis_server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "tls", *documented_acl())
        url = f"rediss://tls:{PASSWORD}@127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}"
        _exercise_cache(url)
        _exercise_near_cache(url)
        _exercise_sessions(url, near=100)
        _exercise_broadcast(url)

        near = Cache(url, namespace=f"rot{uuid.uuid4().hex[:8]}", near_cache=100)
        assert near.set("k", 1) and near.near_ready(10)
        listener = near._listener
        assert listener is not None
        value = SharedValue(f"rot{uuid.uuid4().hex[:8]}", default=0, url=url)
        assert value.get() == 0 and value._hub is not None
        hub = value._hub
        wait_for(hub.connected.is_set, 10, "the subscriber over TLS")

        admin.execute_command("ACL", "SETUSER", "tls", "resetpass", ">rotated-2")
        admin.execute_command("CLIENT", "KILL", "USER", "tls")
        before = int(admin.info("stats")["total_connections_received"])
        asked = listener.reconnects
        with pytest.raises(BackendUnavailable, match="refused authentication"):
            near.get("k")
        wait_for(lambda: listener.reconnects >= asked + 4, 15, "the listener asking four times")
        opened = int(admin.info("stats")["total_connections_received"]) - before
        assert opened < 60, f"{opened} connections while the listener asked four times: a hot loop"

        admin.execute_command("ACL", "SETUSER", "tls", f">{PASSWORD}")  # the old one back
        wait_for(lambda: near.near_ready(0.1), 15, "the near cache on again")
        assert near.get("k") == 1
        wait_for(hub.connected.is_set, 15, "the subscriber subscribed again")
    finally:
        admin.execute_command("ACL", "DELUSER", "tls")
        admin.close()
        proxy.close()


def test_out_of_memory_writes_are_typed_and_lose_nothing(acl_server: RedisServer) -> None:
    """``maxmemory`` reached with ``noeviction``: a cache write is
    ``BackendUnavailable`` naming OOM (a miss-mode cache answers ``False``, its reads
    still served), a session save is ``NotSent`` (a 503, never a logout: the stored
    session keeps its data), a publish ``BackendUnavailable``. No defect: this pins it."""
    from statekit.errors import BackendUnavailable
    from statekit.sessions.protocol import NotSent

    url = _acl_url(acl_server, *documented_acl())
    cache = Cache(url, namespace="oom")
    missing = Cache(url, namespace="oom", on_error="miss")
    store = SessionStore(url, secret_keys=["k"])
    assert cache.set("a", 1)
    session = store.create({"cart": ["apple"]}, user_id="alice")
    admin = acl_server.client()
    policy = admin.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(max(1, int(admin.info("memory")["used_memory"]) // 2)))
        with pytest.raises(BackendUnavailable, match="OOM"):
            cache.set("b", 2)
        assert missing.set("b", 2) is False and missing.get("a") == 1 and cache.get("a") == 1
        loaded = store.load(session.sid)
        assert loaded is not None
        loaded["cart"] = ["apple", "pear"]
        with pytest.raises(NotSent, match="OOM"):
            store.save(loaded)
        with pytest.raises(BackendUnavailable, match="OOM"):
            Broadcaster(url).publish("motd", "hello")
    finally:
        admin.config_set("maxmemory", "0")
        admin.config_set("maxmemory-policy", policy)
        admin.close()
    again = store.load(session.sid)
    assert again is not None and again["cart"] == ["apple"] and again.user_id == "alice"
    store.close()
