"""Review of issue 17's Redis layer: the listener's pending() and the near cache from
many threads at once (one select.poll object was shared: "concurrent poll()
invocation"), and the transport's thread and fork behaviour."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
import redis
from test_redis_helpers import slow_script  # tests/ is on sys.path

from statekit.cache import Cache
from statekit.redis import create_client
from statekit.redis.transport import Transport

pytestmark = pytest.mark.redis


def _threads(work: Any, count: int) -> None:
    threads = [threading.Thread(target=work) for _ in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)


def test_near_cache_gets_from_threads_never_raise(redis_url: str) -> None:
    cache = Cache(redis_url, near_cache=True, namespace="review-poll")
    cache.set("hot", "v")
    assert cache.get("hot") == "v"
    got: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(2000):
            try:
                got.append(cache.get("hot"))
            except Exception as e:  # noqa: BLE001 - counted and asserted below
                errors.append(e)

    _threads(work, 4)
    assert errors == []
    assert got == ["v"] * 8000


def test_listener_pending_answers_from_many_threads(redis_url: str) -> None:
    cache = Cache(redis_url, near_cache=True, namespace="review-pending")
    cache.set("k", 1)
    cache.get("k")
    listener = cache._listener
    assert listener is not None and listener.connected.wait(10)
    answers: list[bool] = []
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(2000):
            try:
                answers.append(listener.pending())
            except Exception as e:  # noqa: BLE001 - counted and asserted below
                errors.append(e)

    _threads(work, 4)
    assert errors == [] and len(answers) == 8000


SLOW_SOURCE = slow_script(0.3).source


def test_fork_while_another_thread_waits_for_a_reply(redis_url: str) -> None:
    """The child never uses nor shuts down the parent's connections (the waiting
    thread's included); the parent's waiting thread gets its own reply."""
    from statekit.redis.scripts import Script

    sha = redis.Redis.from_url(redis_url).script_load(SLOW_SOURCE)
    slow = Script("slow", SLOW_SOURCE, sha.encode() if isinstance(sha, str) else sha)
    t = Transport(create_client(f"{redis_url}?socket_timeout=5"), what="test")
    parent_ids = {t.command("CLIENT", "ID")}
    started = threading.Event()
    out: list[Any] = []

    def waiting() -> None:
        parent_ids.add(t.command("CLIENT", "ID"))
        started.set()
        out.append(t.script(slow, [], [b"mine"]))
        out.append(t.command("CLIENT", "ID"))

    th = threading.Thread(target=waiting)
    th.start()
    assert started.wait(10)
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: new connections only, from this thread and a new one
        code = 1
        try:
            ids = [t.command("CLIENT", "ID")]
            helper = threading.Thread(target=lambda: ids.append(t.command("CLIENT", "ID")))
            helper.start()
            helper.join(10)
            os.write(wr, ",".join(str(i) for i in ids).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        child_ids = {int(i) for i in f.read().split(b",") if i}
    _, status = os.waitpid(pid, 0)
    th.join(10)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child_ids) == 2 and not child_ids & parent_ids
    assert out[0] == b"mine" and out[1] in parent_ids  # the parent's thread kept its connection
    assert t.command("CLIENT", "ID") in parent_ids


@pytest.mark.cluster
def test_a_lazy_cluster_used_by_a_second_thread_while_the_first_starts_it(
        redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second thread waits for the start instead of raising AttributeError
    (reported by the cache engineer: SharedValue on a cluster URL failed its first get)."""
    from redis.cluster import RedisCluster

    real = RedisCluster.__init__
    starting = threading.Event()

    def slow_init(self: Any, *args: Any, **kwargs: Any) -> None:
        starting.set()
        threading.Event().wait(0.3)  # let the second thread come in meanwhile
        real(self, *args, **kwargs)

    monkeypatch.setattr(RedisCluster, "__init__", slow_init)
    client: Any = create_client(redis_cluster_url)
    results: list[Any] = []

    def second() -> None:
        assert starting.wait(10)
        try:
            results.append(len(client.get_nodes()) > 0)
        except Exception as e:  # noqa: BLE001 - asserted below
            results.append(e)

    th = threading.Thread(target=second)
    th.start()
    assert client.ping() is True  # the first thread starts it
    th.join(10)
    assert results == [True]
    t = Transport(client)
    assert t.command("SET", "lazy:k", 1) in (True, b"OK") and t.command("GET", "lazy:k") == b"1"
